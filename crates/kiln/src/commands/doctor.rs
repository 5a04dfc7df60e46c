//! `doctor`: what is left before `cargo xtask test` can pass here: TODO values in
//! Kiln.toml, how the xtask is set up (kept apart from the kernel's workspace, the alias, a
//! toolchain new enough for kiln), and host tools (QEMU, firmware, toolchains, targets) with
//! the command that installs each.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::layout::{TOOL_DIR, XTASK_DIR};
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
    let root = file.parent().map(Path::to_owned).unwrap_or_default();
    for problem in xtask_problems(&root) {
        problems += 1;
        printer.always(&format!("xtask: {problem}"));
    }
    let config = Config::load(&file)?;
    let plan = Plan::for_test(&config, &Selection::default())?;
    let builds = Plan::for_build(&config, &Selection::default()).builds;
    let missing = provision::host_needs(&plan.runs, &builds);
    let dirs: BTreeSet<&PathBuf> = builds.iter().map(|step| &step.artifact.dir).collect();
    for warning in dirs.into_iter().filter_map(|dir| provision::floating_channel_warning(dir)) {
        printer.warn(&warning);
    }
    if missing.is_empty() && problems == 0 {
        printer.always(&format!(
            "ok: {} is complete and this host has everything its {} need",
            file.display(),
            crate::units::plural(plan.runs.len(), "case run", "case runs")
        ));
        return Ok(exit_code::SUCCESS);
    }
    problems += missing.len();
    for line in provision::describe_fixes(&missing) {
        printer.always(&line);
    }
    let install = if missing.is_empty() { "" } else { "; `cargo xtask test --yes` installs the missing ones" };
    printer.always(&format!("{problems} things to fix{install}"));
    Ok(exit_code::CASES_FAILED)
}

/// What is wrong with how `root`'s xtask is set up, each with what to do.
fn xtask_problems(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let xtask = root.join(XTASK_DIR);
    if !xtask.join("Cargo.toml").is_file() {
        return problems;
    }
    let bootstrap = xtask.join(TOOL_DIR).join("Cargo.toml").is_file();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    if lock.contains("name = \"kiln-xtask\"") {
        problems.push(
            "the kernel's Cargo.lock pins kiln: the xtask is a member of the kernel's workspace, so the \
             kernel's toolchain must build kiln; `cargo kiln init` on a fresh checkout writes an xtask kept apart"
                .to_owned(),
        );
    }
    if bootstrap {
        let manifest = std::fs::read_to_string(xtask.join("Cargo.toml")).unwrap_or_default();
        if !manifest.parse::<toml::Table>().is_ok_and(|t| t.contains_key("workspace")) {
            problems.push(format!(
                "`{}` has no `[workspace]` table: it would join the kernel's workspace; add an empty `[workspace]`",
                xtask.join("Cargo.toml").display()
            ));
        }
        problems.extend(tool_toolchain_problem(&xtask.join(TOOL_DIR)));
    }
    let config = std::fs::read_to_string(root.join(".cargo/config.toml")).unwrap_or_default();
    let alias = config.parse::<toml::Table>().ok().and_then(|t| t.get("alias")?.get("xtask").cloned());
    match alias {
        None => problems.push(format!(
            "no `cargo xtask` alias in `{}`; `cargo kiln init` adds it",
            root.join(".cargo/config.toml").display()
        )),
        Some(alias) => {
            let words: Vec<String> = match alias {
                toml::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                other => other.as_str().unwrap_or_default().split_whitespace().map(str::to_owned).collect(),
            };
            let host = host_triple(root);
            if let Some(target) = words.windows(2).find(|w| w[0] == "--target").map(|w| w[1].clone())
                && target != "host-tuple"
                && host.as_ref().is_some_and(|host| *host != target)
            {
                problems.push(format!(
                    "the `cargo xtask` alias builds for `{target}`, and this host is `{}`: change it to this \
                     host's triple (this repository's cargo does not know `host-tuple`)",
                    host.unwrap_or_default()
                ));
            }
        }
    }
    problems
}

/// `host` and `release` of `rustc -vV`, with `toolchain` when given.
fn rustc_fields(dir: &Path, toolchain: Option<&str>) -> Option<(String, String)> {
    let mut rustc = provision::tool_command("rustc", dir);
    rustc.arg("-vV");
    if let Some(toolchain) = toolchain {
        rustc.env("RUSTUP_TOOLCHAIN", toolchain);
    }
    let output = rustc.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
    Some((field("host:")?, field("release:")?))
}

fn host_triple(dir: &Path) -> Option<String> {
    rustc_fields(dir, None).map(|(host, _)| host)
}

/// Whether the toolchain `xtask/tool/rust-toolchain.toml` names is there and new enough.
fn tool_toolchain_problem(tool: &Path) -> Option<String> {
    let file = tool.join("rust-toolchain.toml");
    let channel = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("toolchain")?.get("channel")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "stable".to_owned());
    let Some((_, release)) = rustc_fields(tool, Some(&channel)) else {
        return Some(format!(
            "kiln's tool builds with `{channel}` ({}), which is not installed: `rustup toolchain install {channel} --profile minimal`",
            file.display()
        ));
    };
    let minimum = semver::Version::parse(&format!("{}.0", env!("CARGO_PKG_RUST_VERSION"))).ok()?;
    let found = semver::Version::parse(release.split('-').next().unwrap_or_default()).ok()?;
    (found < minimum).then(|| {
        format!("kiln needs Rust {minimum} or newer and `{channel}` is {found}: `rustup update {channel}`, or name a newer one in {}", file.display())
    })
}
