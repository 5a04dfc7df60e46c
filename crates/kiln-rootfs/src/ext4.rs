//! ext4 images without root: `mke2fs -d` from a staging directory, then one `debugfs` run
//! that makes owners and times fixed and adds device nodes, so the same tree gives the same
//! bytes.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
};

use crate::{
    errors::{Error, Result, io_error},
    listing::{EntryKind, ListingEntry},
    path,
    tool::{DEBUGFS, MKE2FS},
    tree::{Node, Tree},
};

/// Settings of [`write_ext4`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ext4Options {
    /// Image size in bytes; `None` sizes it from the tree (+30% and 4 MiB, at least 16 MiB).
    pub size: Option<u64>,
    /// Volume label (at most 16 bytes).
    pub label: Option<String>,
    /// Every inode's atime, mtime, ctime and crtime, and the file system's own timestamps
    /// (callers pass `SOURCE_DATE_EPOCH` or 0).
    pub mtime: u64,
}

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MIB: u64 = 1 << 20;

/// Writes `tree` as an ext4 image at `out` (replaced atomically; nothing is left at `out` on
/// error). Needs `mke2fs` and `debugfs` (e2fsprogs), no root.
///
/// Reproducible for the same tree, options and e2fsprogs version (and `mke2fs.conf`): the
/// UUID and directory hash seed are derived from the tree's listing, every inode is owned by
/// 0:0 with all four times set to `opts.mtime`, and e2fsprogs' own clock is pinned with
/// `E2FSPROGS_FAKE_TIME`. Character devices are created with debugfs. The staging
/// directory and the temporary image live beside `out`.
pub fn write_ext4(tree: &Tree, out: &Path, opts: &Ext4Options) -> Result<()> {
    for (path, _) in tree.entries() {
        if path.contains('\n') {
            return Err(Error::UnsupportedName {
                path: path.to_owned(),
                problem: "debugfs cannot name a path with a newline",
            });
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let listing = tree.listing()?;
    let uuid = uuid_of(&listing, opts);
    let inodes = listing.len() as u64 + 12;
    let size = opts.size.unwrap_or_else(|| auto_size(&listing, inodes));
    let inode_count = (inodes + inodes * 3 / 10 + 64).max(size / 16384);

    let staging = tempfile::Builder::new()
        .prefix(".kiln-ext4-staging-")
        .tempdir_in(parent)
        .map_err(io_error("create a staging directory in", parent))?;
    let staged = Staged { tree, dir: staging.path() };
    tree.write_dir(staging.path(), opts.mtime)?;

    let image = tempfile::Builder::new()
        .prefix(".kiln-ext4-")
        .suffix(".img")
        .tempfile_in(parent)
        .map_err(io_error("create a temporary image in", parent))?;
    image.as_file().set_len(size).map_err(io_error("size", image.path()))?;
    // E2FSPROGS_FAKE_TIME=0 means "the real clock", so an mtime of 0 pins the clock to 1 s.
    let env = [("E2FSPROGS_FAKE_TIME", opts.mtime.max(1).to_string())];
    let mut args: Vec<OsString> = ["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256"].map(OsString::from).into();
    args.extend(["-N".into(), inode_count.to_string().into(), "-U".into(), uuid.clone().into()]);
    args.extend(["-E".into(), format!("root_owner=0:0,hash_seed={uuid},nodiscard").into()]);
    if let Some(label) = &opts.label {
        args.extend(["-L".into(), label.into()]);
    }
    args.extend(["-d".into(), staging.path().into(), image.path().into()]);
    let hint = if opts.size.is_some() { "is the requested size large enough for the tree?" } else { "" };
    MKE2FS.run(&args, &env, hint)?;
    drop(staged);
    staging.close().map_err(io_error("remove the staging directory", parent))?;

    let commands = debugfs_commands(tree, opts.mtime);
    let script = tempfile::Builder::new()
        .prefix(".kiln-debugfs-")
        .tempfile_in(parent)
        .map_err(io_error("create a temporary file in", parent))?;
    fs::write(script.path(), commands).map_err(io_error("write", script.path()))?;
    let args: [&OsStr; 4] = ["-w".as_ref(), "-f".as_ref(), script.path().as_os_str(), image.path().as_os_str()];
    // debugfs -f exits 0 when a command fails and reports it on stderr after its banner.
    let ran = DEBUGFS.run(args, &env, "")?;
    let errors: Vec<&str> = ran.stderr.lines().filter(|l| !l.is_empty() && !l.starts_with("debugfs ")).collect();
    if !errors.is_empty() {
        return Err(Error::ToolReported { command: ran.command, stderr: errors.join("\n") });
    }
    image
        .as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_error("set the mode of", image.path()))?;
    image.persist(out).map_err(|e| Error::Io {
        action: "rename the finished image to",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// A staging tree whose read-only directories are made writable again before removal.
struct Staged<'a> {
    tree: &'a Tree,
    dir: &'a Path,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for (path, node) in self.tree.entries() {
            if let Node::Dir { mode } = node
                && mode & 0o700 != 0o700
            {
                let _ = fs::set_permissions(self.dir.join(&path[1..]), fs::Permissions::from_mode(0o755));
            }
        }
    }
}

/// Size in bytes from the tree: data blocks, directory blocks, long symlinks and inode
/// tables, +30% and 4 MiB for the journal and group metadata, rounded to MiB, at least 16 MiB.
fn auto_size(listing: &[ListingEntry], inodes: u64) -> u64 {
    let mut blocks = 1u64; // the root directory
    let mut dir_bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for entry in listing {
        let name_len = entry.path.rsplit('/').next().map_or(0, str::len) as u64;
        *dir_bytes.entry(path::parent(&entry.path)).or_default() += (8 + name_len).next_multiple_of(4);
        blocks += match entry.kind {
            EntryKind::File => entry.size.div_ceil(BLOCK),
            EntryKind::Symlink if entry.size >= 60 => 1,
            _ => 0,
        };
    }
    blocks += dir_bytes.values().map(|b| b.div_ceil(BLOCK)).sum::<u64>();
    blocks += listing.iter().filter(|e| e.kind == EntryKind::Dir).count() as u64;
    let data = blocks * BLOCK + inodes * INODE_SIZE;
    (data + data * 3 / 10 + 4 * MIB).next_multiple_of(MIB).max(16 * MIB)
}

/// A UUID (version 4 layout) from the listing and options, so equal trees get equal UUIDs.
fn uuid_of(listing: &[ListingEntry], opts: &Ext4Options) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kiln-rootfs ext4 uuid v1\0");
    hasher.update(format!("{:?}\0{}\0", opts.label, opts.mtime).as_bytes());
    for entry in listing {
        hasher.update(entry.to_string().as_bytes());
        hasher.update(b"\n");
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `"path"` in debugfs's command language, where `""` inside quotes is one `"`.
fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// The debugfs script: create device nodes, then pin owner and times of every inode.
fn debugfs_commands(tree: &Tree, mtime: u64) -> String {
    let mut script = String::new();
    for (path, node) in tree.entries() {
        if let Node::CharDevice { major, minor, .. } = node {
            let parent = path::parent(path);
            let name = &path[parent.len() + 1..];
            let parent = if parent.is_empty() { "/" } else { parent };
            let _ = writeln!(script, "cd {}\nmknod {} c {major} {minor}", quote(parent), quote(name));
        }
    }
    script.push_str("cd /\n");
    let all = ["/", "/lost+found"].into_iter().map(|p| (p, None)).chain(tree.entries().map(|(p, n)| (p, Some(n))));
    for (path, node) in all {
        let p = quote(path);
        if let Some(Node::CharDevice { mode, .. }) = node {
            let _ = writeln!(script, "sif {p} mode 0{:o}", 0o020000 | mode);
        }
        let _ = writeln!(script, "sif {p} uid 0\nsif {p} gid 0");
        for field in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(script, "sif {p} {field} @{mtime}\nsif {p} {field}_extra 0");
        }
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Data;

    #[test]
    fn quotes_debugfs_paths() {
        assert_eq!(quote("/a b"), "\"/a b\"");
        assert_eq!(quote("/q\"x"), "\"/q\"\"x\"");
    }

    #[test]
    fn uuid_is_well_formed_and_follows_content() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/a", 0o644, Data::from("1"))?;
        let opts = Ext4Options::default();
        let one = uuid_of(&tree.listing()?, &opts);
        assert_eq!(one.len(), 36);
        assert_eq!(&one[14..15], "4");
        assert_eq!(one, uuid_of(&tree.listing()?, &opts));
        tree.insert_file("/a", 0o644, Data::from("2"))?;
        assert_ne!(one, uuid_of(&tree.listing()?, &opts));
        Ok(())
    }

    #[test]
    fn auto_size_has_a_floor_and_grows_with_content() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/small", 0o644, Data::from("x"))?;
        assert_eq!(auto_size(&tree.listing()?, 13), 16 * MIB);
        tree.insert_file("/big", 0o644, Data::from(vec![0u8; 40 << 20]))?;
        let size = auto_size(&tree.listing()?, 14);
        assert!(size >= 52 * MIB && size.is_multiple_of(MIB), "{size}");
        Ok(())
    }

    #[test]
    fn script_creates_devices_and_pins_every_inode() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_char_device("/dev/console", 0o600, 5, 1)?;
        let script = debugfs_commands(&tree, 7);
        assert!(script.starts_with("cd \"/dev\"\nmknod \"console\" c 5 1\ncd /\n"), "{script}");
        assert!(script.contains("sif \"/dev/console\" mode 020600\n"), "{script}");
        assert!(script.contains("sif \"/lost+found\" crtime @7\n"), "{script}");
        Ok(())
    }
}
