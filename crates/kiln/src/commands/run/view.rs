//! What of the host a program under `run` sees at the same paths: its package, or the cargo
//! workspace the package is a member of (tests read the workspace's shared test data through
//! `CARGO_MANIFEST_DIR/..`), its working directory, and what it needs of cargo's target
//! directory (itself, so `current_exe()` names its host path, the binaries cargo names for an
//! integration test, `CARGO_TARGET_TMPDIR`, the build script's `OUT_DIR`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    env,
    guest::{self, CopyKind},
    vm::program::View,
};

/// The most entries a warm guest's view of one directory holds (each is linked into the
/// guest's inbox at every run). A workspace with more is left out (the guest sees the package
/// only); a run that needs more of another directory boots a fresh guest, which shares it
/// whole.
pub(super) const VIEW_ENTRIES: usize = 10_000;

/// The directories a program under `run` sees at the same paths, and why some were left out.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The working directory.
    pub cwd: PathBuf,
    /// The package (cargo's `CARGO_MANIFEST_DIR`, else the working directory) or the
    /// workspace it is a member of, and the working directory too when it lies outside them.
    pub package_dirs: Vec<PathBuf>,
    /// What the program needs of cargo's target directories.
    pub target: TargetParts,
    /// What was left out and why (said under `-v`).
    pub notes: Vec<String>,
}

/// What the guest of `program` sees at the same paths as the host.
pub(super) fn seen(program: &Path) -> anyhow::Result<Seen> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut notes = Vec::new();
    let package = match env::var_os(env::CARGO_MANIFEST_DIR).map(PathBuf::from) {
        Some(package) => match workspace_of(&package) {
            Some(root) if small_enough(&root) => root,
            Some(root) => {
                notes.push(format!(
                    "the guest sees the package `{}` but not its workspace `{}`: it holds more than {VIEW_ENTRIES} \
                     entries or {} (files a test reads outside the package: `[run] files`)",
                    package.display(),
                    root.display(),
                    crate::units::human_size(guest::MAX_COPY_BYTES),
                ));
                package
            }
            None => package,
        },
        None => cwd.clone(),
    };
    let mut package_dirs = vec![package.clone()];
    if !cwd.starts_with(&package) {
        package_dirs.push(cwd.clone());
    }
    package_dirs.retain(|dir| {
        let guests = guest_owned(dir);
        if guests {
            notes.push(format!("the guest shows its own `{}`, not the host's", dir.display()));
        }
        !guests
    });
    let target = target_parts(program);
    Ok(Seen { cwd, package_dirs, target, notes })
}

/// Directories of the guest's own system that no host directory covers: the program runs in
/// the guest's when the working directory is one of them (or `/`).
const GUEST_SYSTEM_DIRS: &[&str] =
    &["/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/proc", "/sys", "/dev", "/run", "/kiln"];

/// Whether `dir` is `/` or lies in the guest's own system directories.
fn guest_owned(dir: &Path) -> bool {
    dir == Path::new("/") || GUEST_SYSTEM_DIRS.iter().any(|system| dir.starts_with(system))
}

/// The views a warm guest gets of what `seen` names, and the executables it gets one by one;
/// `Err` says which directory holds more than a warm guest is given.
pub(super) fn warm_views(seen: &Seen) -> Result<(Vec<View>, Vec<PathBuf>), String> {
    let too_big = |dir: &Path| format!("`{}` holds more than {VIEW_ENTRIES} entries", dir.display());
    let mut views = Vec::new();
    for dir in &seen.package_dirs {
        let entries = tree_entries(dir, VIEW_ENTRIES).ok_or_else(|| too_big(dir))?;
        views.push(View { dir: dir.clone(), entries });
    }
    if let Some(dir) = seen.target.too_big.first() {
        return Err(too_big(dir));
    }
    views.extend(seen.target.dirs.iter().cloned());
    Ok((views, seen.target.loose.clone()))
}

/// What a program under `run` needs of cargo's target directories, which the view of its
/// package leaves out: the program itself (so `current_exe()` and paths found from it, as
/// `assert_cmd` and ripgrep's tests find the package's binaries, are the host's), the
/// executables beside it (the binaries cargo names for it, `CARGO_BIN_EXE_<name>`, and the
/// other ones `cargo build` left in the profile's directory), the target directory's `tmp/`
/// (an integration test's `CARGO_TARGET_TMPDIR`), and the build script's `OUT_DIR`.
#[derive(Debug, Default)]
pub(super) struct TargetParts {
    /// Each target directory (cargo marks it with `CACHEDIR.TAG`; a `--target` build has one
    /// per triple) and the entries below it the guest gets.
    pub dirs: Vec<View>,
    /// Executables outside any target directory (the program among them when it is).
    pub loose: Vec<PathBuf>,
    /// Directories among them that hold more than [`VIEW_ENTRIES`].
    pub too_big: Vec<PathBuf>,
}

impl TargetParts {
    /// The target directory holding `path`, if any.
    pub fn dir_of(&self, path: &Path) -> Option<&View> {
        self.dirs.iter().find(|view| path.starts_with(&view.dir))
    }
}

/// What `program` needs of cargo's target directories.
fn target_parts(program: &Path) -> TargetParts {
    let mut parts = TargetParts::default();
    let mut executables = vec![program.to_owned()];
    for executable in cargo_executables(program).into_iter().chain(profile_executables(program)) {
        if !executables.contains(&executable) {
            executables.push(executable);
        }
    }
    for executable in executables {
        match target_dir(&executable) {
            Some(root) => parts_in(&mut parts, &root).push((executable, CopyKind::File)),
            None => parts.loose.push(executable),
        }
    }
    let roots: Vec<PathBuf> = parts.dirs.iter().map(|view| view.dir.clone()).collect();
    let out_dir = env::var_os(env::OUT_DIR).map(PathBuf::from).filter(|dir| dir.is_absolute() && dir.is_dir());
    let trees = roots.into_iter().map(|root| root.join("tmp")).chain(out_dir).filter(|dir| dir.is_dir());
    for tree in trees {
        let Some(root) = target_dir(&tree) else { continue };
        match tree_entries(&tree, VIEW_ENTRIES) {
            Some(entries) => parts_in(&mut parts, &root).extend(entries),
            None => parts.too_big.push(tree),
        }
    }
    parts
}

/// The executables `cargo build` left in the profile's directory of `program` (its own, or
/// the one above `deps/` for a test binary), where tests find a workspace's binaries from
/// their own path. None for a program in no cargo target directory: the other executables
/// of `/tmp` or `~/bin` are not its build's.
fn profile_executables(program: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if target_dir(program).is_none() {
        return Vec::new();
    }
    let Some(mut profile) = program.parent().map(Path::to_owned) else { return Vec::new() };
    if profile.ends_with("deps") {
        profile.pop();
    }
    let Ok(entries) = std::fs::read_dir(&profile) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0))
        .map(|entry| entry.path())
        .collect()
}

/// The entries of the view of the target directory `root`, made when missing.
fn parts_in<'a>(parts: &'a mut TargetParts, root: &Path) -> &'a mut Vec<(PathBuf, CopyKind)> {
    let index = match parts.dirs.iter().position(|view| view.dir == root) {
        Some(index) => index,
        None => {
            parts.dirs.push(View { dir: root.to_owned(), entries: Vec::new() });
            parts.dirs.len() - 1
        }
    };
    &mut parts.dirs[index].entries
}

/// The cargo target directory `path` lies in: the nearest directory above it that cargo
/// marked as one ([`guest::is_cargo_target_dir`]).
fn target_dir(path: &Path) -> Option<PathBuf> {
    path.ancestors().skip(1).find(|dir| guest::is_cargo_target_dir(dir)).map(Path::to_owned)
}

/// The entries [`guest::package_walk`] gives of `dir` (those it cannot read left out), or
/// `None` when there are more than `limit`.
fn tree_entries(dir: &Path, limit: usize) -> Option<Vec<(PathBuf, CopyKind)>> {
    let mut entries = Vec::new();
    for entry in guest::package_walk(dir).flatten() {
        if let Ok(Some(copy)) = guest::package_entry(&entry) {
            entries.push(copy);
        }
        if entries.len() > limit {
            return None;
        }
    }
    Some(entries)
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
/// [`VIEW_ENTRIES`] entries and [`guest::MAX_COPY_BYTES`] of files.
fn small_enough(dir: &Path) -> bool {
    let mut entries = 0;
    let mut bytes = 0;
    for entry in guest::package_walk(dir) {
        let Ok(entry) = entry else { return false };
        entries += 1;
        if entry.file_type().is_some_and(|kind| kind.is_file()) {
            bytes += entry.metadata().map_or(0, |meta| meta.len());
        }
        if entries > VIEW_ENTRIES || bytes > guest::MAX_COPY_BYTES {
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
fn cargo_executables(program: &Path) -> Vec<PathBuf> {
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
    fn a_program_s_target_directory_is_the_nearest_one_cargo_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        write(&target.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n");
        write(&target.join(".rustc_info.json"), "{}");
        write(&target.join("aarch64-unknown-linux-musl/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n");
        let triple = target.join("aarch64-unknown-linux-musl");
        assert_eq!(target_dir(&triple.join("debug/deps/t-0123")), Some(triple.clone()), "a --target build's own");
        assert_eq!(target_dir(&target.join("debug/deps/t-0123")), Some(target.clone()));
        assert_eq!(target_dir(&dir.path().join("bin/tool")), None, "not in a target directory");
        let old = dir.path().join("old-cargo");
        write(&old.join(".rustc_info.json"), "{}");
        assert_eq!(target_dir(&old.join("debug/t")), Some(old.clone()), "cargo before CACHEDIR.TAG");
    }

    #[test]
    fn only_a_program_in_a_target_directory_brings_its_profile_s_executables() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let executable = |path: &Path| {
            write(path, "");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        let target = dir.path().join("target");
        write(&target.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n");
        let test = target.join("debug/deps/cli-0123");
        executable(&test);
        executable(&target.join("debug/tool"));
        write(&target.join("debug/tool.d"), "");
        let parts = target_parts(&test);
        let entries: Vec<&PathBuf> = parts.dirs.iter().flat_map(|view| &view.entries).map(|(path, _)| path).collect();
        assert!(entries.contains(&&target.join("debug/tool")), "a workspace binary beside it: {entries:?}");
        assert!(!entries.contains(&&target.join("debug/tool.d")), "not executable: {entries:?}");

        let loose = dir.path().join("downloads/prog");
        executable(&loose);
        executable(&dir.path().join("downloads/installer"));
        let parts = target_parts(&loose);
        assert_eq!(parts.loose, [loose], "the program alone, not its neighbours");
    }

    #[test]
    fn a_tree_is_listed_as_a_host_program_sees_it_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join(".hidden/file"), "");
        write(&dir.path().join(".gitignore"), "*.local\n");
        write(&dir.path().join("fixture.local"), "");
        write(&dir.path().join(".git/HEAD"), "");
        write(&dir.path().join("build-out/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n");
        write(&dir.path().join("build-out/debug/big"), "");
        let entries = tree_entries(dir.path(), 10).expect("small");
        let mut names: Vec<String> = entries
            .iter()
            .map(|(path, _)| path.strip_prefix(dir.path()).expect("below").to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["", ".gitignore", ".hidden", ".hidden/file", "fixture.local"], "no .git, no target dir");
        assert!(tree_entries(dir.path(), 3).is_none());
    }

    #[test]
    fn the_guest_keeps_its_own_root_and_system_directories() {
        assert!(guest_owned(Path::new("/")));
        assert!(guest_owned(Path::new("/usr/local/src")));
        assert!(!guest_owned(Path::new("/usrdata")));
        assert!(!guest_owned(Path::new("/tmp")));
        assert!(!guest_owned(Path::new("/home/me/crate")));
    }

    #[test]
    fn a_large_workspace_is_not_small_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("Cargo.toml"), "[workspace]\n");
        assert!(small_enough(dir.path()));
        for index in 0..=VIEW_ENTRIES {
            write(&dir.path().join(format!("data/{}/{index}", index % 100)), "");
        }
        assert!(!small_enough(dir.path()));
    }
}
