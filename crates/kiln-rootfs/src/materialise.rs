//! Writing a tree out as a host directory (the staging tree `mke2fs -d` reads).

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use filetime::FileTime;

use crate::{
    errors::{Error, Result, io_error},
    tree::{Node, Tree, copy_exact},
};

impl Tree {
    /// Materialises the tree in `dir`, which must be empty or not yet exist: directories,
    /// files (with their modes) and symlinks. Character devices are skipped, since creating
    /// them needs root (ext4 images get them from [`crate::write_ext4`] itself).
    /// Every entry and `dir` itself get `mtime` as access and modification time (symlinks
    /// too, without following them); `dir` gets mode 0755. Owners are whoever runs this.
    pub fn write_dir(&self, dir: &Path, mtime: u64) -> Result<()> {
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::DirNotEmpty { dir: dir.to_path_buf() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_error("create", dir))?
            }
            Err(source) => return Err(Error::Io { action: "read", path: dir.to_path_buf(), source }),
        }
        let time = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut dirs: Vec<(PathBuf, u32)> = vec![(dir.to_path_buf(), 0o755)];
        for (path, node) in self.entries() {
            let host = dir.join(&path[1..]);
            match node {
                Node::Dir { mode } => {
                    fs::create_dir(&host).map_err(io_error("create", &host))?;
                    dirs.push((host, *mode));
                }
                Node::File { mode, data } => {
                    let mut file = fs::File::create_new(&host).map_err(io_error("create", &host))?;
                    let (len, mut reader) = data.open()?;
                    copy_exact(data, &mut reader, len, &mut file, "the staging directory")?;
                    file.set_permissions(fs::Permissions::from_mode(*mode))
                        .map_err(io_error("set the mode of", &host))?;
                    filetime::set_file_handle_times(&file, Some(time), Some(time))
                        .map_err(io_error("set the times of", &host))?;
                }
                Node::Symlink { target } => {
                    symlink(target, &host).map_err(io_error("create the symlink", &host))?;
                    filetime::set_symlink_file_times(&host, time, time).map_err(io_error("set the times of", &host))?;
                }
                Node::CharDevice { .. } => {}
            }
        }
        // Modes and times of directories last, children first: a read-only directory must not
        // stop its children being written, and writing a child changes its parent's mtime.
        for (host, mode) in dirs.iter().rev() {
            fs::set_permissions(host, fs::Permissions::from_mode(*mode)).map_err(io_error("set the mode of", host))?;
            filetime::set_file_times(host, time, time).map_err(io_error("set the times of", host))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::tree::Data;

    #[test]
    fn writes_files_dirs_and_symlinks_with_modes_and_times() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/bin/busybox", 0o755, Data::from("bb"))?;
        tree.insert_symlink("/bin/sh", "busybox")?;
        tree.insert_symlink("/dangling", "/nowhere")?;
        tree.insert_dir("/ro", 0o555)?;
        tree.insert_file("/ro/f", 0o400, Data::from("secret"))?;
        tree.insert_char_device("/dev/console", 0o600, 5, 1)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("root");
        tree.write_dir(&out, 1234)?;

        let meta = |p: &str| fs::symlink_metadata(out.join(p)).expect("stat");
        assert_eq!(fs::read(out.join("bin/busybox")).expect("read"), b"bb");
        assert_eq!(meta("bin/busybox").mode() & 0o7777, 0o755);
        assert_eq!(fs::read_link(out.join("bin/sh")).expect("readlink"), Path::new("busybox"));
        assert_eq!(meta("ro").mode() & 0o7777, 0o555);
        assert_eq!(meta("ro/f").mode() & 0o7777, 0o400);
        assert!(!out.join("dev/console").exists(), "devices are skipped");
        for p in ["bin", "bin/busybox", "bin/sh", "dangling", "ro", "ro/f", "dev"] {
            assert_eq!(meta(p).mtime(), 1234, "{p}");
        }
        assert_eq!(fs::metadata(&out).expect("stat").mtime(), 1234);

        let err = tree.write_dir(&out, 0).expect_err("not empty");
        assert!(matches!(err, Error::DirNotEmpty { .. }));
        // Let the temp dir be removed.
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o755)).expect("chmod");
        Ok(())
    }
}
