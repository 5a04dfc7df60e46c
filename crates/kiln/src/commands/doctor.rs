//! `doctor`: what is left before `cargo xtask test` can pass here: TODO values in
//! Kiln.toml, and host tools (QEMU, firmware, toolchains, targets) with the command that
//! installs each.

use std::{collections::BTreeSet, path::PathBuf};

use crate::{
    cli::GlobalArgs,
    config::{self, Config},
    exec::{self as provision},
    exit_code,
    plan::{Plan, Selection},
    report::Printer,
};

/// Runs `doctor`; exit code 0 when nothing is left to do, 1 otherwise.
pub(super) fn run(global: &GlobalArgs, printer: &Printer) -> anyhow::Result<u8> {
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
    let builds = Plan::for_build(&config, &Selection::default()).builds;
    let missing = provision::host_needs(&plan.runs, &builds);
    let dirs: BTreeSet<&PathBuf> = builds.iter().map(|step| &step.artifact.dir).collect();
    for warning in dirs.into_iter().filter_map(|dir| provision::floating_channel_warning(dir)) {
        printer.warn(&warning);
    }
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
