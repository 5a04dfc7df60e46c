//! Adding host files and directories to a tree, by reference: contents are read only when an
//! image is written.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{
    errors::{Error, Result},
    path,
    tree::{Data, Tree},
};

impl Tree {
    /// Adds one host file at `dest` as [`Data::Host`], with `mode` or else the host file's
    /// permission bits. A symlink `src` is followed (the caller named the file).
    pub fn add_host_file(&mut self, src: &Path, dest: &str, mode: Option<u32>) -> Result<()> {
        let src = absolute(src)?;
        let meta =
            fs::metadata(&src).map_err(|source| Error::Io { action: "read metadata of", path: src.clone(), source })?;
        if !meta.is_file() {
            return Err(Error::HostInput { path: src, problem: "is not a regular file" });
        }
        let mode = mode.unwrap_or(meta.permissions().mode());
        self.insert_file(dest, mode, Data::Host(src))
    }

    /// Adds the host directory `src` and everything under it at `dest` (`"/"` merges it into
    /// the root). Modes are kept; symlinks stay symlinks with their targets unchanged (they are
    /// the caller's own, so they are not checked the way archive members are); files become
    /// [`Data::Host`] references; character devices are kept; block devices, fifos and sockets
    /// are skipped.
    pub fn add_host_dir(&mut self, src: &Path, dest: &str) -> Result<()> {
        let src = absolute(src)?;
        let dest = path::normalise_allow_root(dest)
            .map_err(|problem| Error::InvalidPath { path: dest.to_owned(), problem })?;
        let top =
            fs::metadata(&src).map_err(|source| Error::Io { action: "read metadata of", path: src.clone(), source })?;
        if !top.is_dir() {
            return Err(Error::HostInput { path: src, problem: "is not a directory" });
        }
        for entry in walkdir::WalkDir::new(&src).follow_links(false).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let path = e.path().map_or_else(|| src.clone(), Path::to_path_buf);
                Error::Io { action: "walk", path, source: e.into() }
            })?;
            let host = entry.path();
            let rel = host.strip_prefix(&src).unwrap_or(host);
            let Some(rel) = rel.to_str() else {
                return Err(Error::HostInput { path: host.to_path_buf(), problem: "has a name that is not UTF-8" });
            };
            let target = format!("{dest}/{rel}");
            if rel.is_empty() && dest.is_empty() {
                continue; // the root itself is implicit
            }
            let meta = entry.metadata().map_err(|e| Error::Io {
                action: "read metadata of",
                path: host.to_path_buf(),
                source: e.into(),
            })?;
            let mode = meta.permissions().mode();
            let kind = meta.file_type();
            if kind.is_dir() {
                self.insert_dir(&target, mode)?;
            } else if kind.is_file() {
                self.insert_file(&target, mode, Data::Host(host.to_path_buf()))?;
            } else if kind.is_symlink() {
                let link = fs::read_link(host).map_err(|source| Error::Io {
                    action: "read the symlink",
                    path: host.to_path_buf(),
                    source,
                })?;
                let Some(link) = link.to_str() else {
                    return Err(Error::HostInput {
                        path: host.to_path_buf(),
                        problem: "is a symlink whose target is not UTF-8",
                    });
                };
                self.insert_symlink(&target, link)?;
            } else if kind.is_char_device() {
                let (major, minor) = split_dev(meta.rdev());
                self.insert_char_device(&target, mode, major, minor)?;
            }
        }
        Ok(())
    }
}

fn absolute(src: &Path) -> Result<PathBuf> {
    std::path::absolute(src).map_err(|source| Error::Io { action: "resolve", path: src.to_path_buf(), source })
}

/// Splits a Linux `dev_t` into (major, minor), as glibc's `major()`/`minor()` do.
fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::tree::Node;

    #[test]
    fn host_dir_keeps_modes_and_symlinks_and_refers_to_files() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).expect("mkdir");
        fs::write(root.join("bin/tool"), "#!/bin/sh\n").expect("write");
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o750)).expect("chmod");
        fs::write(root.join("data"), "x").expect("write");
        fs::set_permissions(root.join("data"), fs::Permissions::from_mode(0o640)).expect("chmod");
        symlink("../../../anywhere", root.join("bin/link")).expect("symlink");

        let mut tree = Tree::new();
        tree.add_host_dir(root, "/opt/app")?;
        assert_eq!(tree.get("/opt"), Some(&Node::Dir { mode: 0o755 }));
        assert!(
            matches!(tree.get("/opt/app/bin/tool"), Some(Node::File { mode: 0o750, data: Data::Host(p) }) if p == &root.join("bin/tool"))
        );
        assert!(matches!(tree.get("/opt/app/data"), Some(Node::File { mode: 0o640, .. })));
        assert_eq!(tree.get("/opt/app/bin/link"), Some(&Node::Symlink { target: "../../../anywhere".into() }));

        let mut merged = Tree::new();
        merged.add_host_dir(root, "/")?;
        assert!(merged.get("/bin/tool").is_some());
        Ok(())
    }

    #[test]
    fn host_file_takes_mode_override() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "x").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut tree = Tree::new();
        tree.add_host_file(&file, "/a", None)?;
        tree.add_host_file(&file, "/b", Some(0o755))?;
        assert!(matches!(tree.get("/a"), Some(Node::File { mode: 0o600, .. })));
        assert!(matches!(tree.get("/b"), Some(Node::File { mode: 0o755, .. })));
        let err = tree.add_host_file(dir.path(), "/c", None).expect_err("a directory is not a file");
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
        Ok(())
    }

    #[test]
    fn splits_dev_numbers() {
        // /dev/null is 1:3, /dev/ttyS0 4:64; a large minor uses the high bits.
        assert_eq!(split_dev(0x0103), (1, 3));
        assert_eq!(split_dev(0x0440), (4, 64));
        assert_eq!(split_dev((1 << 8) | 0x34 | (0x1200 << 12)), (1, 0x1234));
    }
}
