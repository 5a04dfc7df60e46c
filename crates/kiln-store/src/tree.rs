//! Canonical hashing of an output tree (encoding v1, specified in `docs/closure-hash.md`).
//!
//! Entries are sorted bytewise by their `/`-separated relative path; each records its type,
//! the executable bit, a symlink's target or a file's content hash. Modification times,
//! owners and other mode bits never enter the hash.

use std::{
    fs,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
};

use rayon::prelude::*;

use crate::{
    OutputHash, StoreError,
    derivation::{put_bytes, put_len},
    hash::TREE_CONTEXT,
    source::hash_file,
};

/// One path of a tree as the hash sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File { executable: bool, content: [u8; 32], size: u64 },
    Symlink { target: Vec<u8> },
}

/// Hashes the tree rooted at `root` (a directory) canonically.
pub fn hash_tree(root: &Path) -> Result<OutputHash, StoreError> {
    Ok(hash_nodes(&list_tree(root)?))
}

/// Every path below `root` with what the hash records of it, in the spec's order: bytewise
/// by the whole path (`foo`, `foo.rs`, `foo/x`), not depth first.
pub(crate) fn list_tree(root: &Path) -> Result<Vec<(PathBuf, Node)>, StoreError> {
    let mut paths = Vec::new();
    collect(root, PathBuf::new(), &mut paths)?;
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    paths.into_par_iter().map(|relative| node_for(&root.join(&relative)).map(|node| (relative, node))).collect()
}

/// The output hash of a listing in the spec's order (see [`list_tree`]).
pub(crate) fn hash_nodes(nodes: &[(PathBuf, Node)]) -> OutputHash {
    let mut hasher = blake3::Hasher::new_derive_key(TREE_CONTEXT);
    let mut buf = Vec::new();
    put_len(&mut buf, nodes.len());
    for (relative, node) in nodes {
        put_bytes(&mut buf, relative.as_os_str().as_bytes());
        match node {
            Node::Dir => buf.push(b'd'),
            Node::File { executable, content, .. } => {
                buf.push(if *executable { b'x' } else { b'f' });
                buf.extend_from_slice(content);
            }
            Node::Symlink { target } => {
                buf.push(b'l');
                put_bytes(&mut buf, target);
            }
        }
        hasher.update(&buf);
        buf.clear();
    }
    OutputHash::from_blake3(hasher.finalize())
}

/// A digest of what `stat` says about every path in the tree rooted at `root` (device, inode,
/// size, mtime, ctime), or `None` when a file changed within the racy window, so that a
/// write in the same timestamp tick cannot hide behind an unchanged digest.
pub fn stamp_tree(root: &Path) -> Result<Option<blake3::Hash>, StoreError> {
    let mut paths = Vec::new();
    collect(root, PathBuf::new(), &mut paths)?;
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let now = std::time::SystemTime::now();
    let mut hasher = blake3::Hasher::new();
    for relative in std::iter::once(PathBuf::new()).chain(paths) {
        let path = root.join(&relative);
        let meta = fs::symlink_metadata(&path).map_err(|e| StoreError::io("inspect", &path, e))?;
        let stamp = crate::FileStamp::of(&meta);
        if stamp.is_racy(now) {
            return Ok(None);
        }
        let mut buf = Vec::new();
        put_bytes(&mut buf, relative.as_os_str().as_bytes());
        buf.extend_from_slice(&stamp.to_bytes());
        buf.extend_from_slice(&meta.permissions().mode().to_le_bytes());
        hasher.update(&buf);
    }
    Ok(Some(hasher.finalize()))
}

/// Collects every relative path below `root`.
fn collect(root: &Path, relative: PathBuf, out: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    let dir = root.join(&relative);
    let names = fs::read_dir(&dir)
        .map_err(|e| StoreError::io("read directory", &dir, e))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::io("read directory", &dir, e))?;
    for name in names {
        let child = relative.join(&name);
        let meta =
            fs::symlink_metadata(root.join(&child)).map_err(|e| StoreError::io("inspect", &root.join(&child), e))?;
        out.push(child.clone());
        if meta.is_dir() {
            collect(root, child, out)?;
        }
    }
    Ok(())
}

fn node_for(path: &Path) -> Result<Node, StoreError> {
    let meta = fs::symlink_metadata(path).map_err(|e| StoreError::io("inspect", path, e))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        Ok(Node::Dir)
    } else if kind.is_symlink() {
        let target = fs::read_link(path).map_err(|e| StoreError::io("read symlink", path, e))?;
        Ok(Node::Symlink { target: target.into_os_string().as_bytes().to_vec() })
    } else if kind.is_file() {
        let executable = meta.permissions().mode() & 0o100 != 0;
        Ok(Node::File { executable, content: *hash_file(path)?.as_bytes(), size: meta.len() })
    } else {
        Err(StoreError::UnsupportedFileType { path: path.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn sample(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).expect("mkdir");
        fs::write(dir.join("bin/kernel"), b"\x7fELF").expect("write");
        fs::write(dir.join("README"), b"hello").expect("write");
        symlink("bin/kernel", dir.join("current")).expect("symlink");
    }

    #[test]
    fn ignores_mtimes_and_creation_order() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        sample(a.path());
        fs::write(b.path().join("README"), b"hello").expect("write");
        symlink("bin/kernel", b.path().join("current")).expect("symlink");
        fs::create_dir_all(b.path().join("bin")).expect("mkdir");
        fs::write(b.path().join("bin/kernel"), b"\x7fELF").expect("write");
        assert_eq!(hash_tree(a.path()).expect("hash"), hash_tree(b.path()).expect("hash"));
    }

    #[test]
    fn executable_bit_and_content_matter() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let before = hash_tree(dir.path()).expect("hash");
        let kernel = dir.path().join("bin/kernel");
        fs::set_permissions(&kernel, fs::Permissions::from_mode(0o755)).expect("chmod");
        let executable = hash_tree(dir.path()).expect("hash");
        assert_ne!(before, executable);
        fs::write(&kernel, b"\x7fELG").expect("write");
        assert_ne!(executable, hash_tree(dir.path()).expect("hash"));
    }
}
