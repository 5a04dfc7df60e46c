//! Hashing the source files a step reads.

use std::{
    fs,
    io::Read,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
};

use rayon::prelude::*;

use crate::{
    InputHash, StatCache, StoreError,
    derivation::{put_bytes, put_len},
    hash::TREE_CONTEXT,
};

/// Files above this size are hashed with several threads over a memory map.
const PARALLEL_HASH_THRESHOLD: u64 = 4 << 20;

/// A set of source files, relative to a base directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSet {
    /// The directory the files are relative to.
    pub base: PathBuf,
    /// Relative paths of the files, sorted bytewise.
    pub files: Vec<PathBuf>,
}

impl SourceSet {
    /// Lists the files of a package directory the way a build sees them: `.gitignore` and
    /// `.ignore` files inside it are respected, `target/` directories and nested packages
    /// (directories with their own `Cargo.toml`) are left out, as are a top-level `.github/`,
    /// `.cargo/` (its config files are inputs of their own) and `Kiln.toml`; symlinks are
    /// followed.
    pub fn package_dir(dir: &Path) -> Result<Self, StoreError> {
        Self::package_dir_within(dir, dir)
    }

    /// As [`SourceSet::package_dir`], also respecting the `.gitignore` files of the directories
    /// between `dir` and `boundary` (the project root). Ignore files above the boundary, git's
    /// global excludes and `.git/info/exclude` never count: they differ between machines and
    /// checkouts, and would change the hash.
    pub fn package_dir_within(dir: &Path, boundary: &Path) -> Result<Self, StoreError> {
        let root = dir.to_owned();
        let mut builder = ignore::WalkBuilder::new(dir);
        builder
            .hidden(false)
            .parents(false)
            .git_global(false)
            .git_exclude(false)
            .require_git(false)
            .follow_links(true)
            .threads(rayon::current_num_threads());
        if dir.starts_with(boundary) {
            for ancestor in dir.ancestors().skip(1) {
                if !ancestor.starts_with(boundary) {
                    break;
                }
                let ignore_file = ancestor.join(".gitignore");
                if ignore_file.is_file() {
                    builder.add_ignore(ignore_file);
                }
            }
        }
        let walker = builder
            .filter_entry({
                let root = root.clone();
                move |entry| {
                    let path = entry.path();
                    if path == root {
                        return true;
                    }
                    let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
                    let name = entry.file_name();
                    let at_top = path.parent() == Some(root.as_path());
                    // Never sources of a build: build output, version control, CI workflows,
                    // cargo's own config (a separate input), and kiln's declaration.
                    if is_dir
                        && (name == "target" || name == ".git" || (at_top && (name == ".github" || name == ".cargo")))
                    {
                        return false;
                    }
                    if at_top && name == "Kiln.toml" {
                        return false;
                    }
                    !(is_dir && path.join("Cargo.toml").exists())
                }
            })
            .build_parallel();
        let found = std::sync::Mutex::new(Vec::new());
        let failure = std::sync::Mutex::new(None);
        walker.run(|| {
            Box::new(|entry| {
                match entry {
                    Ok(entry) => {
                        if entry.file_type().is_some_and(|t| t.is_file() || t.is_symlink())
                            && let Ok(relative) = entry.path().strip_prefix(&root)
                            && let Ok(mut found) = found.lock()
                        {
                            found.push(relative.to_owned());
                        }
                    }
                    Err(err) => {
                        if let Ok(mut failure) = failure.lock() {
                            failure.get_or_insert(err.to_string());
                        }
                        return ignore::WalkState::Quit;
                    }
                }
                ignore::WalkState::Continue
            })
        });
        if let Some(message) = failure.into_inner().ok().flatten() {
            return Err(StoreError::Walk { dir: dir.to_owned(), message });
        }
        let mut files = found.into_inner().unwrap_or_default();
        files.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        Ok(Self { base: root, files })
    }
}

/// Hashes a source set: the tree encoding over its files alone, so moving the checkout
/// elsewhere does not change the hash. Unchanged files come from `cache`.
pub fn hash_source_set(set: &SourceSet, cache: &StatCache) -> Result<InputHash, StoreError> {
    let hashes = set
        .files
        .par_iter()
        .map(|relative| {
            let path = set.base.join(relative);
            // The compiler reads through symlinks, so their targets' content is hashed; only a
            // dangling link is entered by its target text.
            match fs::metadata(&path) {
                Ok(meta) => {
                    let kind = if meta.permissions().mode() & 0o100 != 0 { b'x' } else { b'f' };
                    Ok((kind, cache.hash_file(&path, &meta)?))
                }
                Err(_) => {
                    let target = fs::read_link(&path).map_err(|e| StoreError::io("read symlink", &path, e))?;
                    Ok((b'l', *blake3::hash(target.as_os_str().as_bytes()).as_bytes()))
                }
            }
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut hasher = blake3::Hasher::new_derive_key(TREE_CONTEXT);
    let mut buf = Vec::new();
    put_len(&mut buf, set.files.len());
    for (relative, (kind, content)) in set.files.iter().zip(hashes) {
        put_bytes(&mut buf, relative.as_os_str().as_bytes());
        buf.push(kind);
        buf.extend_from_slice(&content);
        hasher.update(&buf);
        buf.clear();
    }
    Ok(InputHash(*hasher.finalize().as_bytes()))
}

/// BLAKE3 of one file's content; large files are hashed with several threads.
pub fn hash_file(path: &Path) -> Result<blake3::Hash, StoreError> {
    let mut file = fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let len = file.metadata().map_err(|e| StoreError::io("inspect", path, e))?.len();
    let mut hasher = blake3::Hasher::new();
    if len >= PARALLEL_HASH_THRESHOLD {
        hasher.update_mmap_rayon(path).map_err(|e| StoreError::io("read", path, e))?;
    } else {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).map_err(|e| StoreError::io("read", path, e))?;
        hasher.update(&buf);
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_dir_skips_target_nested_packages_and_ignored_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("src")).expect("mkdir");
        fs::create_dir_all(root.join("target/debug")).expect("mkdir");
        fs::create_dir_all(root.join("nested/src")).expect("mkdir");
        fs::write(root.join("Cargo.toml"), "[package]").expect("write");
        fs::write(root.join("src/main.rs"), "fn main() {}").expect("write");
        fs::write(root.join("target/debug/out"), "x").expect("write");
        fs::write(root.join("nested/Cargo.toml"), "[package]").expect("write");
        fs::write(root.join(".gitignore"), "*.log\n").expect("write");
        fs::write(root.join("build.log"), "x").expect("write");
        let set = SourceSet::package_dir(root).expect("walk");
        let names: Vec<_> = set.files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(names, [".gitignore", "Cargo.toml", "src/main.rs"]);
    }

    #[test]
    fn symlinked_sources_are_hashed_by_their_targets_content() {
        let outside = tempfile::tempdir().expect("tempdir");
        let target = outside.path().join("console.rs");
        fs::write(&target, "pub fn a() {}").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(&target, dir.path().join("console.rs")).expect("symlink");
        let hash = || {
            hash_source_set(&SourceSet::package_dir(dir.path()).expect("walk"), &StatCache::disabled()).expect("hash")
        };
        let before = hash();
        fs::write(&target, "compile_error!(\"changed\");").expect("write");
        assert_ne!(before, hash(), "an edit behind a symlink changes the hash");
    }

    #[test]
    fn ignore_files_above_the_boundary_and_global_excludes_do_not_count() {
        let outer = tempfile::tempdir().expect("tempdir");
        fs::write(outer.path().join(".gitignore"), "*.x\n").expect("write");
        let project = outer.path().join("project");
        let package = project.join("kernel");
        fs::create_dir_all(&package).expect("mkdir");
        fs::write(package.join("link.x"), "ENTRY(_start)").expect("write");
        let set = SourceSet::package_dir_within(&package, &project).expect("walk");
        assert_eq!(set.files, [PathBuf::from("link.x")], "a .gitignore above the project is not read");
        fs::write(project.join(".gitignore"), "*.x\n").expect("write");
        let set = SourceSet::package_dir_within(&package, &project).expect("walk");
        assert!(set.files.is_empty(), "the project's own .gitignore is read");
    }

    #[test]
    fn source_hash_follows_content_not_location() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        for dir in [a.path(), b.path()] {
            fs::write(dir.join("lib.rs"), "pub fn f() {}").expect("write");
        }
        let hash = |dir: &Path| {
            hash_source_set(&SourceSet::package_dir(dir).expect("walk"), &StatCache::disabled()).expect("hash")
        };
        assert_eq!(hash(a.path()), hash(b.path()));
        fs::write(b.path().join("lib.rs"), "pub fn g() {}").expect("write");
        assert_ne!(hash(a.path()), hash(b.path()));
    }
}
