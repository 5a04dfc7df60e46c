//! What of the host a program under `run` sees at the same paths: its package, or the cargo
//! workspace the package is a member of (tests read the workspace's shared test data through
//! `CARGO_MANIFEST_DIR/..`), its working directory, and the binaries cargo names for an
//! integration test.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{env, guest};

/// A workspace with more files than this, or more bytes than a guest without 9p takes as a
/// copy, is left out: the guest sees the package only (every warm run links the files it sees
/// into the guest's inbox).
const WORKSPACE_FILES: usize = 10_000;

/// The working directory and the directories the guest must see at the same paths: the
/// package (cargo's `CARGO_MANIFEST_DIR`, else the working directory) or the workspace it is a
/// member of, and the working directory too when it lies outside them.
pub(super) fn package_dirs() -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let package = match env::var_os(env::CARGO_MANIFEST_DIR).map(PathBuf::from) {
        Some(package) => workspace_of(&package).filter(|root| small_enough(root)).unwrap_or(package),
        None => cwd.clone(),
    };
    let mut dirs = vec![package.clone()];
    if !cwd.starts_with(&package) {
        dirs.push(cwd.clone());
    }
    Ok((cwd, dirs))
}

/// The root of the cargo workspace `package` is a member of, when that is another directory:
/// the one its `package.workspace` names, else the nearest directory above it whose Cargo.toml
/// has a `[workspace]` table that does not exclude it (cargo's own search).
fn workspace_of(package: &Path) -> Option<PathBuf> {
    let manifest = read_manifest(package)?;
    if manifest.contains_key("workspace") {
        return None;
    }
    if let Some(root) = manifest.get("package").and_then(|p| p.get("workspace")).and_then(|w| w.as_str()) {
        return std::fs::canonicalize(package.join(root)).ok();
    }
    package.ancestors().skip(1).find_map(|dir| {
        let workspace = read_manifest(dir)?.get("workspace")?.clone();
        let relative = package.strip_prefix(dir).ok()?;
        let excluded = workspace
            .get("exclude")
            .and_then(|list| list.as_array())
            .is_some_and(|list| list.iter().filter_map(|path| path.as_str()).any(|path| relative.starts_with(path)));
        Some((!excluded).then(|| dir.to_owned()))
    })?
}

/// The Cargo.toml in `dir`, when there is one that parses.
fn read_manifest(dir: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(dir.join("Cargo.toml")).ok()?.parse().ok()
}

/// Whether the guest can be given all of `dir` as it is given a package: at most
/// [`WORKSPACE_FILES`] entries and [`guest::MAX_COPY_BYTES`] of files.
fn small_enough(dir: &Path) -> bool {
    let mut entries = 0;
    let mut bytes = 0;
    for entry in guest::package_walk(dir) {
        let Ok(entry) = entry else { return false };
        entries += 1;
        if entry.file_type().is_some_and(|kind| kind.is_file()) {
            bytes += entry.metadata().map_or(0, |meta| meta.len());
        }
        if entries > WORKSPACE_FILES || bytes > guest::MAX_COPY_BYTES {
            return false;
        }
    }
    true
}

/// The package's binaries that cargo names for the integration test `program`
/// (`CARGO_BIN_EXE_<name>`), which the test runs by their host paths: the guest gets them at the
/// same paths, whether the target directory lies inside the package (which the guest's view of
/// it leaves out) or outside it (a workspace's, or `CARGO_TARGET_DIR`).
///
/// Only those beside the program or its directory (a test binary is in the profile's `deps/`,
/// the binaries in the profile's directory): a variable a process further up left in the
/// environment names another build's.
pub(super) fn cargo_executables(program: &Path) -> Vec<PathBuf> {
    let Ok(program) = std::fs::canonicalize(program) else { return Vec::new() };
    let near: Vec<&Path> = program.ancestors().skip(1).take(2).collect();
    env::all()
        .filter(|(name, _)| name.starts_with(env::CARGO_BIN_EXE_PREFIX))
        .map(|(_, value)| PathBuf::from(value))
        .filter(|path| path.is_absolute() && path.is_file())
        .filter(|path| {
            let dir = std::fs::canonicalize(path).ok().and_then(|path| path.parent().map(Path::to_owned));
            dir.is_some_and(|dir| near.contains(&dir.as_path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    const PACKAGE: &str = "[package]\nname = \"p\"\nversion = \"0.1.0\"\n";

    #[test]
    fn a_member_sees_its_workspace_and_others_their_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(&root.join("Cargo.toml"), "[workspace]\nmembers = [\"crates/*\"]\nexclude = [\"fixtures\"]\n");
        write(&root.join("crates/a/Cargo.toml"), PACKAGE);
        write(&root.join("fixtures/b/Cargo.toml"), PACKAGE);
        write(&root.join("fixtures/c/Cargo.toml"), &format!("{PACKAGE}[workspace]\n"));
        write(&root.join("other/d/Cargo.toml"), &format!("{PACKAGE}workspace = \"../../crates\"\n"));
        write(&root.join("crates/Cargo.toml"), "[workspace]\n");

        assert_eq!(workspace_of(&root.join("crates/a")), Some(root.join("crates")), "the nearest workspace");
        assert_eq!(workspace_of(&root.join("fixtures/b")), None, "excluded");
        assert_eq!(workspace_of(&root.join("fixtures/c")), None, "its own workspace");
        let named = std::fs::canonicalize(root.join("crates")).expect("canonical");
        assert_eq!(workspace_of(&root.join("other/d")), Some(named), "package.workspace");
        assert_eq!(workspace_of(root), None, "the root is no member of another");
    }

    #[test]
    fn a_large_workspace_is_not_small_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("Cargo.toml"), "[workspace]\n");
        assert!(small_enough(dir.path()));
        for index in 0..=WORKSPACE_FILES {
            write(&dir.path().join(format!("data/{}/{index}", index % 100)), "");
        }
        assert!(!small_enough(dir.path()));
    }
}
