//! `cargo kiln init`: adopt kiln in an existing repository.
//!
//! Writes `xtask/` (a three-line main over `kiln::xtask`), adds it to the workspace, adds the
//! `cargo xtask` alias, a commented Kiln.toml filled from what can be detected (with `TODO:`
//! values where detection fails; kiln refuses to run until they are filled) and a CI
//! workflow. It never overwrites a file or a setting, and running it twice changes nothing.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use kiln_types::Arch;

use crate::{
    cli::InitArgs,
    config::toml_key,
    error::UsageError,
    exec::{self as provision, tool_command},
    exit_code,
    report::Printer,
};

/// One change `init` makes.
enum Change {
    /// A new file.
    Create { path: PathBuf, text: String },
    /// An existing TOML file with a table or key added.
    Edit { path: PathBuf, text: String, what: String },
}

/// What was found in the repository.
struct Detected {
    /// Binary packages: (package name, directory relative to the root).
    kernels: Vec<(String, String)>,
    /// `build.target` from the cargo config.
    build_target: Option<String>,
    /// The toolchain channel from `rust-toolchain(.toml)`.
    toolchain: Option<String>,
    /// Linker scripts found in the repository.
    linker_scripts: Vec<String>,
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
    let detected = detect(&root)?;
    if let Ok(manifest) = std::fs::read_to_string(root.join("xtask/Cargo.toml"))
        && !manifest.parse::<toml::Table>().is_ok_and(|t| depends_on_kiln(&t))
    {
        printer.warn(
            "xtask/ exists and does not depend on kiln; init leaves it alone: add kiln to its \
             [dependencies] and call kiln::xtask from its main (or flatten kiln::xtask::Command into its clap enum)",
        );
    }
    let changes = plan_changes(&root, &detected, args)?;
    if changes.is_empty() {
        printer.status("Unchanged", "kiln is already set up here; `cargo kiln doctor` lists what is left to do");
        return Ok(exit_code::SUCCESS);
    }
    for change in &changes {
        match change {
            Change::Create { path, text } => {
                let shown = path.strip_prefix(&root).unwrap_or(path).display().to_string();
                if args.dry_run {
                    printer.always(&format!("would create {shown}:\n{text}"));
                    continue;
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
                }
                write_new(path, text)?;
                printer.status("Created", &shown);
            }
            Change::Edit { path, text, what } => {
                let shown = path.strip_prefix(&root).unwrap_or(path).display().to_string();
                if args.dry_run {
                    printer.always(&format!("would edit {shown}: {what}"));
                    continue;
                }
                let temp = path.with_extension("kiln-init.tmp");
                std::fs::write(&temp, text).with_context(|| format!("cannot write `{}`", temp.display()))?;
                std::fs::rename(&temp, path).with_context(|| format!("cannot replace `{}`", path.display()))?;
                printer.status("Edited", &format!("{shown}: {what}"));
            }
        }
    }
    if !args.dry_run {
        let todos = crate::config::todos_in_file(&root.join(crate::config::FILE_NAME)).unwrap_or_default();
        if todos.is_empty() {
            printer.always("next: `cargo xtask test`");
        } else {
            printer.always(&format!(
                "next: fill the {} TODO values in Kiln.toml (`cargo kiln doctor` lists them), then `cargo xtask test`",
                todos.len()
            ));
        }
    }
    Ok(exit_code::SUCCESS)
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

fn detect(root: &Path) -> anyhow::Result<Detected> {
    let output = tool_command("cargo", root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("failed to run `cargo metadata`")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed in `{}`: {}", root.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata = cargo_metadata::MetadataCommand::parse(String::from_utf8_lossy(&output.stdout).as_ref())?;
    let mut kernels = Vec::new();
    for package in &metadata.packages {
        if package.name.as_str() == "xtask" || !package.targets.iter().any(|t| t.is_bin()) {
            continue;
        }
        let dir = package.manifest_path.parent().map(|p| p.as_std_path().to_owned()).unwrap_or_default();
        let relative = dir.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default();
        kernels.push((package.name.to_string(), if relative.is_empty() { ".".to_owned() } else { relative }));
    }
    let build_target = ["config.toml", "config"].iter().find_map(|name| {
        let text = std::fs::read_to_string(root.join(".cargo").join(name)).ok()?;
        let table = text.parse::<toml::Table>().ok()?;
        table.get("build")?.get("target")?.as_str().map(str::to_owned)
    });
    let toolchain = provision::toolchain_file(root).map(|(channel, _)| channel);
    let mut linker_scripts = Vec::new();
    for entry in ignore::WalkBuilder::new(root).max_depth(Some(4)).build().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".ld") || name == "link.x" || name == "linker.x")
            && let Ok(relative) = entry.path().strip_prefix(root)
        {
            linker_scripts.push(relative.display().to_string());
        }
    }
    Ok(Detected { kernels, build_target, toolchain, linker_scripts })
}

/// The architecture a target triple (or JSON target file name) is for.
fn arch_of(target: &str) -> Option<Arch> {
    let name = Path::new(target).file_stem()?.to_string_lossy().into_owned();
    Arch::ALL.into_iter().find(|arch| name.starts_with(arch.as_str()))
}

fn plan_changes(root: &Path, detected: &Detected, args: &InitArgs) -> anyhow::Result<Vec<Change>> {
    let mut changes = Vec::new();
    let xtask = root.join("xtask");
    if !xtask.join("Cargo.toml").exists() {
        let dependency = match &args.kiln_path {
            Some(path) => format!("kiln-xtask = {{ path = {} }}", toml::Value::String(path.display().to_string())),
            None => format!("kiln-xtask = \"{}\"", env!("CARGO_PKG_VERSION")),
        };
        changes.push(Change::Create {
            path: xtask.join("Cargo.toml"),
            text: format!(
                "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                 # kiln pinned by this repository's Cargo.lock, so the tool and the project never drift apart.\n\
                 [dependencies]\n{dependency}\n"
            ),
        });
    }
    if !xtask.join("src/main.rs").exists() {
        changes.push(Change::Create {
            path: xtask.join("src/main.rs"),
            text: "//! This repository's `cargo xtask`: kiln's commands (`cargo xtask --help`).\n\n\
                   fn main() -> std::process::ExitCode {\n    kiln::xtask::main()\n}\n"
                .to_owned(),
        });
    }
    if let Some(change) = workspace_change(root)? {
        changes.push(change);
    }
    if let Some(change) = alias_change(root, detected.build_target.is_some())? {
        changes.push(change);
    }
    let kiln_toml = root.join(crate::config::FILE_NAME);
    if !kiln_toml.exists() {
        changes.push(Change::Create { path: kiln_toml, text: kiln_toml_text(detected) });
    }
    let workflow = root.join(".github/workflows/kiln.yml");
    if !workflow.exists() {
        changes.push(Change::Create { path: workflow, text: WORKFLOW.to_owned() });
    }
    Ok(changes)
}

/// Adds `xtask` to the workspace, turning a single package into a workspace where needed.
fn workspace_change(root: &Path) -> anyhow::Result<Option<Change>> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("cannot parse `{}`", path.display()))?;
    let what = match doc.get_mut("workspace").and_then(|w| w.as_table_mut()) {
        Some(workspace) => {
            let members = workspace.entry("members").or_insert(toml_edit::value(toml_edit::Array::new()));
            let Some(members) = members.as_array_mut() else {
                bail!("`workspace.members` in `{}` is not an array; add \"xtask\" to it by hand", path.display());
            };
            let listed = members.iter().any(|m| m.as_str().is_some_and(|m| m == "xtask" || m == "*"));
            if listed {
                return Ok(None);
            }
            members.push("xtask");
            "added \"xtask\" to workspace.members".to_owned()
        }
        None => {
            let mut workspace = toml_edit::Table::new();
            let mut members = toml_edit::Array::new();
            members.push("xtask");
            workspace.insert("members", toml_edit::value(members));
            doc.insert("workspace", toml_edit::Item::Table(workspace));
            "made the package a workspace with member \"xtask\"".to_owned()
        }
    };
    let mut what = what;
    if add_store_profile(&mut doc) {
        what.push_str("; kiln-store and kiln-rootfs built optimised in dev builds (their hashing loops are hot)");
    }
    Ok(Some(Change::Edit { path, text: doc.to_string(), what }))
}

/// Adds `[profile.dev.package.kiln-store]` and `kiln-rootfs` with `opt-level = 2` unless a
/// profile for them exists; unoptimised, hashing a large tree takes several times longer.
fn add_store_profile(doc: &mut toml_edit::DocumentMut) -> bool {
    let profile = doc.entry("profile").or_insert(toml_edit::table());
    let Some(profile) = profile.as_table_mut() else { return false };
    profile.set_implicit(true);
    let dev = profile.entry("dev").or_insert(toml_edit::table());
    let Some(dev) = dev.as_table_mut() else { return false };
    dev.set_implicit(true);
    let package = dev.entry("package").or_insert(toml_edit::table());
    let Some(package) = package.as_table_mut() else { return false };
    package.set_implicit(true);
    if package.contains_key("kiln-store") || package.contains_key("*") {
        return false;
    }
    for crate_name in ["kiln-store", "kiln-rootfs"] {
        let mut optimised = toml_edit::Table::new();
        optimised.insert("opt-level", toml_edit::value(2));
        package.insert(crate_name, toml_edit::Item::Table(optimised));
    }
    true
}

/// Adds the `cargo xtask` alias; with `build.target` set it builds the xtask for the host.
fn alias_change(root: &Path, has_build_target: bool) -> anyhow::Result<Option<Change>> {
    let alias = if has_build_target { "run --package xtask --target host-tuple --" } else { "run --package xtask --" };
    let path = root.join(".cargo/config.toml");
    if !path.exists() {
        return Ok(Some(Change::Create { path, text: format!("[alias]\nxtask = \"{alias}\"\n") }));
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("cannot parse `{}`", path.display()))?;
    let aliases = doc.entry("alias").or_insert(toml_edit::table());
    let Some(aliases) = aliases.as_table_mut() else {
        bail!("`alias` in `{}` is not a table; add `xtask = \"{alias}\"` by hand", path.display());
    };
    if aliases.contains_key("xtask") {
        return Ok(None);
    }
    aliases.insert("xtask", toml_edit::value(alias));
    Ok(Some(Change::Edit { path, text: doc.to_string(), what: "added the `xtask` alias".to_owned() }))
}

fn kiln_toml_text(detected: &Detected) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# kiln's declaration for this repository: what to build, how to boot it, how to judge it.");
    let _ = writeln!(text, "# `cargo xtask test` runs every case; `cargo kiln doctor` lists the TODOs left.");
    let _ =
        writeln!(text, "kiln-version = \"{}\"\n", env!("CARGO_PKG_VERSION").rsplit_once('.').map_or("0.1", |(v, _)| v));
    if detected.kernels.is_empty() {
        let _ = writeln!(text, "[artifact.kernel]");
        let _ = writeln!(text, "# No package with a binary target was found.");
        let _ = writeln!(text, "package = \"TODO: the cargo package of your kernel\"");
        let _ = writeln!(text, "path = \"TODO: its directory, relative to this file\"\n");
    }
    let arch = detected.build_target.as_deref().and_then(arch_of);
    for (package, dir) in &detected.kernels {
        let _ = writeln!(text, "[artifact.{}]", toml_key(package));
        let _ = writeln!(text, "package = \"{package}\"");
        let _ = writeln!(text, "path = \"{dir}\"");
        match (&detected.build_target, arch) {
            (Some(target), Some(arch)) => {
                let _ = writeln!(text, "# From build.target in .cargo/config.toml.");
                let _ = writeln!(text, "arches = [\"{arch}\"]");
                let _ = writeln!(text, "target.{arch} = \"{target}\"");
            }
            (Some(target), None) => {
                let _ = writeln!(text, "# build.target is `{target}`: kiln could not tell its architecture.");
                let _ = writeln!(text, "arches = [\"TODO: x86_64, aarch64 or riscv64\"]");
            }
            (None, _) => {
                let _ = writeln!(text, "# No build.target found: which architectures does this kernel support?");
                let _ = writeln!(text, "arches = [\"TODO: x86_64, aarch64 or riscv64\"]");
            }
        }
        if let Some(channel) = &detected.toolchain {
            let _ = writeln!(text, "# Built with `{channel}` from rust-toolchain; kiln installs it when missing.");
        }
        if !detected.linker_scripts.is_empty() {
            let _ = writeln!(
                text,
                "# Linker scripts found: {}. Keep passing them in .cargo/config.toml rustflags;\n\
                 # kiln adds its own flags (`rustflags = [...]`) without replacing yours.",
                detected.linker_scripts.join(", ")
            );
        }
        let _ = writeln!(text, "# build-std = [\"core\", \"alloc\"]   # with a nightly toolchain");
        let _ = writeln!(text, "# image = \"raw\"                    # for boards that load flat binaries\n");
    }
    let first = detected.kernels.first().map_or("kernel".to_owned(), |(package, _)| toml_key(package));
    let _ = writeln!(text, "[case.boot]");
    let _ = writeln!(text, "artifact = \"{first}\"");
    let _ = writeln!(text, "# The line your kernel prints when it has passed (a regular expression).");
    let _ = writeln!(text, "success = \"TODO: the line your kernel prints when it passes\"");
    let _ = writeln!(text, "# failure = \"panicked at\"          # a line that fails the case at once");
    let _ = writeln!(text, "# success-exit-codes = [33]         # x86 isa-debug-exit: (code << 1) | 1");
    let _ = writeln!(text, "# stop-on-success = true            # for kernels that never exit");
    let _ = writeln!(text, "timeout = \"60s\"");
    text
}

const WORKFLOW: &str = "\
# Written by `cargo kiln init`: builds, boots and judges every Kiln.toml case on each push.
name: kiln
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      # kiln installs QEMU, firmware, toolchains and targets it needs (CI=true: no prompt).
      - run: cargo xtask test
";

/// Whether a manifest depends on kiln (`kiln-xtask`, or renamed to `kiln`).
pub(crate) fn depends_on_kiln(manifest: &toml::Table) -> bool {
    manifest.get("dependencies").and_then(toml::Value::as_table).is_some_and(|deps| {
        deps.iter().any(|(name, spec)| {
            name == "kiln-xtask" || spec.get("package").and_then(toml::Value::as_str) == Some("kiln-xtask")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_comes_from_triples_and_json_targets() {
        assert_eq!(arch_of("riscv64gc-unknown-none-elf"), Some(Arch::Riscv64));
        assert_eq!(arch_of("targets/x86_64-kernel.json"), Some(Arch::X86_64));
        assert_eq!(arch_of("thumbv7em-none-eabihf"), None);
    }
}
