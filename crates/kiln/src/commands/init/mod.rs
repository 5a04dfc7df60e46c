//! `cargo kiln init`: adopt kiln in an existing repository.
//!
//! Writes `xtask/` (a std-only bootstrap any cargo builds) with kiln's tool in `xtask/tool/`
//! (its own workspace, lock file and toolchain), the `cargo xtask` alias, a commented
//! Kiln.toml filled from what the repository already says (with `TODO:` values where it says
//! nothing; kiln refuses to run until they are filled), a CI workflow and a cache-pruning
//! workflow at the git root. It
//! never touches the kernel's manifests or lock file, never overwrites a file or a setting,
//! and running it twice changes nothing.

mod detect;
mod files;
mod kiln_toml;
mod runner;
mod workflow;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use self::detect::Repository;
use crate::layout::{TOOL_DIR, XTASK_DIR, depends_on_kiln};
use crate::{cli::InitArgs, error::UsageError, exec::tool_command, exit_code, report::Printer};

/// One change `init` makes.
enum Change {
    /// A new file.
    Create { path: PathBuf, text: String },
    /// An existing TOML file with a table or key added.
    Edit { path: PathBuf, text: String, what: String },
}

/// Runs `init`.
pub(crate) fn run(args: &InitArgs, printer: &Printer) -> anyhow::Result<u8> {
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let root = std::path::absolute(&root).unwrap_or(root);
    if !root.join("Cargo.toml").is_file() {
        return Err(UsageError::new(
            format!("`{}` has no Cargo.toml", root.display()),
            Some("run `cargo kiln init` at the root of a cargo project, or pass `--dir DIR`".to_owned()),
        )
        .into());
    }
    if args.runner {
        return runner::run(&root, args.dry_run, printer);
    }
    let repo = Repository::read(&root)?;
    let write_xtask = match xtask_state(&root) {
        XtaskState::Missing | XtaskState::Bootstrap => true,
        XtaskState::Kiln => false,
        XtaskState::Other => {
            printer.warn(
                "xtask/ exists and does not depend on kiln; init leaves it alone: add `kiln-xtask` to its \
                 [dependencies] and call `kiln::xtask::main()` from its main (or flatten `kiln::xtask::Command` \
                 into its clap enum), and give it the `cargo xtask` alias",
            );
            false
        }
    };
    let mut changes = Vec::new();
    if write_xtask {
        for (relative, text) in files::xtask_files(args.kiln_path.as_deref()) {
            let path = root.join(relative);
            if !path.exists() {
                changes.push(Change::Create { path, text });
            }
        }
    }
    let kiln_toml = root.join(crate::config::FILE_NAME);
    if !kiln_toml.exists() {
        changes.push(Change::Create { path: kiln_toml, text: kiln_toml::text(&repo) });
    }
    let workflow_root = repo.git_root.clone().unwrap_or_else(|| root.clone());
    let workflow = workflow_root.join(".github/workflows/kiln.yml");
    if !workflow.exists() {
        changes.push(Change::Create { path: workflow, text: workflow::text(repo.dir_in_git().as_deref()) });
    }
    let prune = workflow_root.join(".github/workflows").join(workflow::PRUNE_FILE);
    if !prune.exists() {
        if !write_xtask && !xtask_has_github(&root) {
            printer.warn(&format!(
                "{} runs `cargo xtask ci prune-caches`, which needs kiln's `github` feature: enable it on \
                 the kiln dependency of your xtask (`features = [\"github\"]`)",
                workflow::PRUNE_FILE
            ));
        }
        changes.push(Change::Create { path: prune, text: workflow::prune_text(repo.dir_in_git().as_deref()) });
    }
    for change in &changes {
        apply(change, &root, args.dry_run, printer)?;
    }
    let mut alias_changed = false;
    if write_xtask {
        let target = if args.dry_run { dry_run_target(&repo) } else { bootstrap_target(&repo, printer) };
        if let Some(change) = alias_change(&root, target.as_deref())? {
            apply(&change, &root, args.dry_run, printer)?;
            alias_changed = true;
        }
    }
    if changes.is_empty() && !alias_changed {
        printer.status("Unchanged", "kiln is already set up here; `cargo xtask doctor` lists what is left to do");
        return Ok(exit_code::SUCCESS);
    }
    if !args.dry_run {
        let todos = crate::config::todos_in_file(&root.join(crate::config::FILE_NAME)).unwrap_or_default();
        if todos.is_empty() {
            printer.always("next: `cargo xtask test` (the first run builds kiln's tool, about a minute)");
        } else {
            printer.always(&format!(
                "next: fill the {} TODO values in Kiln.toml (`cargo xtask doctor` lists them), then `cargo xtask test`",
                todos.len()
            ));
        }
    }
    Ok(exit_code::SUCCESS)
}

/// What is in `xtask/` already.
enum XtaskState {
    /// Nothing.
    Missing,
    /// kiln's bootstrap (possibly with files missing).
    Bootstrap,
    /// A classic xtask that depends on kiln.
    Kiln,
    /// Someone else's xtask.
    Other,
}

fn xtask_state(root: &Path) -> XtaskState {
    let xtask = root.join(XTASK_DIR);
    let Ok(text) = std::fs::read_to_string(xtask.join("Cargo.toml")) else {
        return XtaskState::Missing;
    };
    let Ok(manifest) = text.parse::<toml::Table>() else { return XtaskState::Other };
    if depends_on_kiln(&manifest) {
        XtaskState::Kiln
    } else if xtask.join(TOOL_DIR).is_dir() && text.contains("kiln's tool") {
        XtaskState::Bootstrap
    } else {
        XtaskState::Other
    }
}

/// Whether the repository's own xtask (one `init` does not write) builds kiln with its
/// `github` feature, which `ci prune-caches` needs.
fn xtask_has_github(root: &Path) -> bool {
    let Some(manifest) = crate::layout::kiln_manifest(root) else { return false };
    let Some(manifest) = std::fs::read_to_string(manifest).ok().and_then(|text| text.parse::<toml::Table>().ok())
    else {
        return false;
    };
    let dependencies = manifest.get("dependencies").and_then(toml::Value::as_table);
    dependencies.into_iter().flatten().any(|(name, spec)| {
        let is_kiln = name == "kiln-xtask" || spec.get("package").and_then(toml::Value::as_str) == Some("kiln-xtask");
        let features = spec.get("features").and_then(toml::Value::as_array);
        is_kiln && features.is_some_and(|list| list.iter().any(|f| f.as_str() == Some("github")))
    })
}

fn shown(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

fn apply(change: &Change, root: &Path, dry_run: bool, printer: &Printer) -> anyhow::Result<()> {
    match change {
        Change::Create { path, text } => {
            if dry_run {
                printer.always(&format!("would create {}:\n{text}", shown(path, root)));
                return Ok(());
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            write_new(path, text)?;
            printer.status("Created", &shown(path, root));
        }
        Change::Edit { path, text, what } => {
            if dry_run {
                printer.always(&format!("would edit {}: {what}", shown(path, root)));
                return Ok(());
            }
            let temp = path.with_extension("kiln-init.tmp");
            std::fs::write(&temp, text).with_context(|| format!("cannot write `{}`", temp.display()))?;
            std::fs::rename(&temp, path).with_context(|| format!("cannot replace `{}`", path.display()))?;
            printer.status("Edited", &format!("{}: {what}", shown(path, root)));
        }
    }
    Ok(())
}

/// Creates `path` with `text`, failing if it exists (never overwrites).
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create `{}` (kiln init never overwrites)", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write `{}`", path.display()))
}

/// What `--target` the alias would pass, for `--dry-run` (nothing is built then).
fn dry_run_target(repo: &Repository) -> Option<String> {
    repo.cargo.build_target.as_ref().map(|_| "host-tuple".to_owned())
}

/// Builds the bootstrap the way the alias will, with the repository's own toolchain: a check
/// that `cargo xtask` works here, and the probe for `--target`. With `build.target` set, the
/// bootstrap is built for the host: `host-tuple` where this cargo knows it, else the host's
/// triple (`cargo xtask doctor` warns when another host uses the repository).
fn bootstrap_target(repo: &Repository, printer: &Printer) -> Option<String> {
    let build = |target: Option<&str>| -> Result<(), String> {
        let mut cargo = tool_command("cargo", &repo.root);
        cargo.args(["build", "--quiet", "--manifest-path", &format!("{XTASK_DIR}/Cargo.toml")]);
        if let Some(target) = target {
            cargo.args(["--target", target]);
        }
        cargo.args(["--config", files::BOOTSTRAP_RUSTFLAGS]);
        match cargo.output() {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            Err(err) => Err(format!("cannot run cargo: {err}")),
        }
    };
    let channel = repo.toolchain.as_ref().map_or("the default toolchain".to_owned(), |t| format!("`{}`", t.channel));
    let result = match &repo.cargo.build_target {
        None => build(None).map(|()| None),
        Some(_) => match build(Some("host-tuple")) {
            Ok(()) => Ok(Some("host-tuple".to_owned())),
            Err(_) => match host_triple(&repo.root) {
                Some(host) => build(Some(&host)).map(|()| Some(host)),
                None => Err("`rustc -vV` names no host".to_owned()),
            },
        },
    };
    match result {
        Ok(target) => {
            printer.status("Checked", &format!("`cargo xtask` builds its bootstrap with {channel}"));
            target
        }
        Err(message) => {
            printer.warn(&format!(
                "the bootstrap in xtask/ did not build with {channel} (the alias is written anyway; \
                 `cargo xtask doctor` checks it again):\n{message}"
            ));
            repo.cargo.build_target.as_ref().map(|_| host_triple(&repo.root).unwrap_or_else(|| "host-tuple".to_owned()))
        }
    }
}

/// The host triple of the repository's own toolchain.
fn host_triple(root: &Path) -> Option<String> {
    let output = tool_command("rustc", root).arg("-vV").output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.lines().find_map(|line| line.strip_prefix("host: ")).map(str::to_owned)
}

/// Adds the `cargo xtask` alias unless there is one.
fn alias_change(root: &Path, host_target: Option<&str>) -> anyhow::Result<Option<Change>> {
    let alias = files::alias(host_target);
    let mut array = toml_edit::Array::new();
    for word in &alias {
        array.push(word.as_str());
    }
    let path = root.join(".cargo/config.toml");
    let (mut doc, existed) = match std::fs::read_to_string(&path) {
        Ok(text) => (
            text.parse::<toml_edit::DocumentMut>().with_context(|| format!("cannot parse `{}`", path.display()))?,
            true,
        ),
        Err(_) if !root.join(".cargo/config").exists() => (toml_edit::DocumentMut::new(), false),
        Err(_) => bail!(
            "`{}` uses the old name `.cargo/config`: rename it to `.cargo/config.toml` (cargo reads both) and run init again",
            root.display()
        ),
    };
    let aliases = doc.entry("alias").or_insert(toml_edit::table());
    let Some(aliases) = aliases.as_table_mut() else {
        bail!("`alias` in `{}` is not a table; add `xtask = {array}` by hand", path.display());
    };
    if aliases.contains_key("xtask") {
        return Ok(None);
    }
    aliases.insert("xtask", toml_edit::value(array));
    if existed {
        Ok(Some(Change::Edit { path, text: doc.to_string(), what: "added the `xtask` alias".to_owned() }))
    } else {
        Ok(Some(Change::Create { path, text: doc.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_keeps_the_kernels_flags_and_target_out_of_the_bootstrap() {
        let alias = files::alias(Some("host-tuple"));
        assert_eq!(alias[..4], ["run", "--quiet", "--manifest-path", "xtask/Cargo.toml"]);
        assert!(alias.windows(2).any(|w| w == ["--target", "host-tuple"]));
        assert_eq!(alias.last().map(String::as_str), Some("--"));
        assert!(!files::alias(None).iter().any(|word| word == "--target"));
    }

    #[test]
    fn the_bootstrap_names_the_tool_and_kilns_minimum_rust() {
        let main = files::bootstrap_main();
        assert!(main.contains(&format!("const TOOL: &str = \"{}\"", crate::layout::TOOL_PACKAGE)));
        assert!(!main.contains('@'), "every placeholder is filled");
    }
}
