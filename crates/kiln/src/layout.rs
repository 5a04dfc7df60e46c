//! Where a repository keeps its kiln xtask: a std-only bootstrap in `xtask/` and the tool
//! that depends on kiln in `xtask/tool/` (what `init` writes), or a classic xtask in `xtask/`
//! that depends on kiln itself.

use std::path::{Path, PathBuf};

/// The bootstrap package's directory, relative to the repository root.
pub(crate) const XTASK_DIR: &str = "xtask";
/// The tool package's directory, relative to the bootstrap's.
pub(crate) const TOOL_DIR: &str = "tool";
/// The tool's package and binary name.
pub(crate) const TOOL_PACKAGE: &str = "xtask-tool";

/// Whether a manifest depends on kiln (`kiln-xtask`, or renamed to `kiln`).
pub(crate) fn depends_on_kiln(manifest: &toml::Table) -> bool {
    manifest.get("dependencies").and_then(toml::Value::as_table).is_some_and(|deps| {
        deps.iter().any(|(name, spec)| {
            name == "kiln-xtask" || spec.get("package").and_then(toml::Value::as_str) == Some("kiln-xtask")
        })
    })
}

fn read_manifest(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse::<toml::Table>().ok()
}

/// The manifest of the package in `root` that depends on kiln: `xtask/tool/Cargo.toml`
/// (the bootstrap layout) or `xtask/Cargo.toml` (a classic xtask).
pub(crate) fn kiln_manifest(root: &Path) -> Option<PathBuf> {
    let xtask = root.join(XTASK_DIR);
    [xtask.join(TOOL_DIR).join("Cargo.toml"), xtask.join("Cargo.toml")]
        .into_iter()
        .find(|path| read_manifest(path).is_some_and(|manifest| depends_on_kiln(&manifest)))
}

/// The tool's `Cargo.toml`: kiln from crates.io, or from `kiln_path`, with `features`.
pub(crate) fn tool_manifest(kiln_path: Option<&Path>, features: &[&str]) -> String {
    let mut dependency = match kiln_path {
        Some(path) => format!("{{ path = {}", toml::Value::String(path.display().to_string())),
        None => format!("{{ version = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    if !features.is_empty() {
        let quoted: Vec<String> = features.iter().map(|f| format!("\"{f}\"")).collect();
        dependency.push_str(&format!(", features = [{}]", quoted.join(", ")));
    }
    dependency.push_str(" }");
    format!(
        "# kiln, as this repository's `cargo xtask` (../src/main.rs builds and starts it). Its own\n\
         # workspace and lock file: the kernel's workspace, toolchain and Cargo.lock never see it.\n\
         [package]\n\
         name = \"{TOOL_PACKAGE}\"\n\
         version = \"0.1.0\"\n\
         edition = \"2024\"\n\
         publish = false\n\
         \n\
         [dependencies]\n\
         # Features: \"remote\" (S3, HTTP and directory stores), \"github\" (`release`, `ci prune-caches`).\n\
         kiln-xtask = {dependency}\n\
         \n\
         [features]\n\
         # GitHub (`release`, `ci prune-caches`; octocrab) for the runs that need it: the bootstrap\n\
         # builds with `KILN_TOOL_FEATURES=github` (kiln-prune.yml sets it); a plain `cargo xtask`\n\
         # stays without. Declared here, Cargo.lock pins what it brings too.\n\
         github = [\"kiln-xtask/github\"]\n\
         \n\
         [workspace]\n\
         \n\
         # A tool, not the program under test: without debug info and incremental state its\n\
         # first build takes about a fifth less time.\n\
         [profile.dev]\n\
         debug = false\n\
         debug-assertions = false\n\
         overflow-checks = false\n\
         incremental = false\n"
    )
}

/// The tool's `main.rs`.
pub(crate) const TOOL_MAIN: &str = "\
//! This repository's `cargo xtask`: kiln's commands (`cargo xtask --help`).

fn main() -> std::process::ExitCode {
    kiln::xtask::main()
}
";
