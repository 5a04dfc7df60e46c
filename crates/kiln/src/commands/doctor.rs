//! `doctor`: what is left before `cargo xtask test` can pass here: TODO values in
//! Kiln.toml, and host tools (QEMU, firmware, toolchains, targets) with the command that
//! installs each.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    cli::GlobalArgs,
    config::{self, Config},
    exit_code,
    plan::{Plan, Selection},
    provision,
    report::Printer,
};

/// Runs `doctor`; exit code 0 when nothing is left to do, 1 otherwise.
pub fn run(global: &GlobalArgs, printer: &Printer) -> anyhow::Result<u8> {
    let file = match &global.config {
        Some(path) => path.clone(),
        None => Config::discover(&std::env::current_dir()?)?,
    };
    let mut problems = 0;
    let todos = config::todos_in_file(&file)?;
    for (todo, line) in &todos {
        problems += 1;
        printer.always(&format!("TODO {}:{line}: `{}`: {}", file.display(), todo.key, todo.text));
    }
    if !todos.is_empty() {
        printer.always("help: fill these in; the comment above each says what goes there");
        return Ok(exit_code::CASES_FAILED);
    }
    let config = Config::load(&file)?;
    let plan = Plan::for_test(&config, &Selection::default())?;
    let mut missing: Vec<provision::Missing> =
        plan.runs.iter().flat_map(|run| provision::check_machine(&run.machine)).collect();
    let builds = Plan::for_build(&config, &Selection::default()).builds;
    let mut targets: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for step in &builds {
        targets.entry(step.artifact.dir.clone()).or_default().insert(step.triple.clone());
    }
    for (dir, triples) in &targets {
        let toolchain = provision::check_toolchain(dir);
        if toolchain.is_empty() {
            missing.extend(provision::check_targets(dir, triples));
            if builds.iter().any(|s| s.artifact.dir == *dir && s.artifact.build_std.is_some()) {
                missing.extend(provision::check_rust_src(dir));
            }
        }
        missing.extend(toolchain);
        if let Some((channel, toolchain_file)) = provision::toolchain_file(dir)
            && provision::is_floating(&channel)
        {
            printer.always(&format!(
                "warning: `{}` names the floating channel `{channel}`; pin a dated one for reproducible builds",
                toolchain_file.display()
            ));
        }
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        printer.always(&format!(
            "ok: {} is complete and this host has everything its {} cases need",
            file.display(),
            plan.runs.len()
        ));
        return Ok(exit_code::SUCCESS);
    }
    problems += missing.len();
    for line in provision::describe_fixes(&missing) {
        printer.always(&line);
    }
    printer.always(&format!("{problems} things to fix; `cargo xtask test --yes` installs the missing ones"));
    Ok(exit_code::CASES_FAILED)
}
