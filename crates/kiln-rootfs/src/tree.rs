//! The in-memory filesystem tree an image is written from, and its insertion rules.

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Read},
    ops::Bound,
    path::PathBuf,
    sync::Arc,
};

use crate::{
    errors::{Error, Result},
    path::{self, Key},
};

/// What an image will contain: rootfs-absolute, normalised paths mapped to nodes.
///
/// The root directory itself is implicit (mode 0755, owned by root). Entries are kept in
/// component-wise order, so a directory always comes directly before its subtree.
/// Every node is owned by uid 0 / gid 0 in the images written from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    nodes: BTreeMap<Key, Node>,
}

/// One entry of a [`Tree`]. Modes are permission bits only (`0o7777`, including setuid,
/// setgid and sticky); the file type is the variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Its contents.
        data: Data,
    },
    /// A symbolic link. Its target is stored as given and resolved only inside the guest.
    Symlink {
        /// The link target.
        target: String,
    },
    /// A character device node.
    CharDevice {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

impl Node {
    fn masked(self) -> Node {
        match self {
            Node::Dir { mode } => Node::Dir { mode: mode & 0o7777 },
            Node::File { mode, data } => Node::File { mode: mode & 0o7777, data },
            Node::CharDevice { mode, major, minor } => Node::CharDevice { mode: mode & 0o7777, major, minor },
            symlink @ Node::Symlink { .. } => symlink,
        }
    }

    /// A word for the node's kind, for messages: "directory", "file", "symlink" or
    /// "character device".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::CharDevice { .. } => "character device",
        }
    }
}

/// The contents of a regular file.
#[derive(Clone, PartialEq)]
pub enum Data {
    /// Bytes held in memory.
    Bytes(Arc<[u8]>),
    /// A host file, read only when the image is written (or listed).
    Host(PathBuf),
    /// An archive member too large to hold in memory, streamed to a temporary file that is
    /// deleted when the last tree holding it is dropped.
    Spilled(SpilledFile),
}

/// A temporary file holding one archive member's contents (see [`Data::Spilled`]).
#[derive(Clone)]
pub struct SpilledFile(Arc<tempfile::TempPath>);

impl SpilledFile {
    /// Takes over `file`: it is deleted when the last clone of this handle is dropped.
    pub(crate) fn new(file: tempfile::TempPath) -> Self {
        SpilledFile(Arc::new(file))
    }

    /// Where the contents are.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl PartialEq for SpilledFile {
    fn eq(&self, other: &Self) -> bool {
        self.path() == other.path()
    }
}

impl fmt::Debug for SpilledFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpilledFile").field(&self.path()).finish()
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Data::Host(path) => f.debug_tuple("Host").field(path).finish(),
            Data::Spilled(file) => file.fmt(f),
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(bytes: Vec<u8>) -> Self {
        Data::Bytes(bytes.into())
    }
}

impl From<&[u8]> for Data {
    fn from(bytes: &[u8]) -> Self {
        Data::Bytes(bytes.into())
    }
}

impl From<&str> for Data {
    fn from(text: &str) -> Self {
        Data::Bytes(text.as_bytes().into())
    }
}

impl Data {
    /// Opens the contents for reading, with their length at the time of opening.
    pub(crate) fn open(&self) -> Result<(u64, Box<dyn Read + '_>)> {
        match self {
            Data::Bytes(bytes) => Ok((bytes.len() as u64, Box::new(&bytes[..]))),
            Data::Host(_) | Data::Spilled(_) => {
                let path = self.file_path();
                let io = |source| Error::Io { action: "read", path: path.clone(), source };
                let file = fs::File::open(&path).map_err(io)?;
                let len = file.metadata().map_err(io)?.len();
                Ok((len, Box::new(file)))
            }
        }
    }

    /// Reads the whole contents into memory.
    pub(crate) fn read_all(&self) -> Result<Arc<[u8]>> {
        match self {
            Data::Bytes(bytes) => Ok(bytes.clone()),
            Data::Host(_) | Data::Spilled(_) => {
                let path = self.file_path();
                fs::read(&path).map(Arc::from).map_err(|source| Error::Io { action: "read", path, source })
            }
        }
    }

    /// The file holding the contents (`<memory>` for bytes held in memory), for messages.
    fn file_path(&self) -> PathBuf {
        match self {
            Data::Bytes(_) => PathBuf::from("<memory>"),
            Data::Host(path) => path.clone(),
            Data::Spilled(file) => file.path().to_owned(),
        }
    }
}

/// Copies exactly `len` bytes of `data` (opened as `reader`) to `out`; fails if a host file
/// is shorter or longer than it was when measured.
pub(crate) fn copy_exact(
    data: &Data,
    reader: &mut dyn Read,
    len: u64,
    out: &mut dyn io::Write,
    what: &'static str,
) -> Result<()> {
    let host_path = || data.file_path();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    loop {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)).max(1);
        let n = match reader.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::Io { action: "read", path: host_path(), source }),
        };
        if n == 0 {
            break;
        }
        if n as u64 > left {
            return Err(Error::HostFileChanged { path: host_path(), expected: len });
        }
        out.write_all(&buf[..n]).map_err(|source| Error::Write { what, source })?;
        left -= n as u64;
    }
    if left != 0 {
        return Err(Error::HostFileChanged { path: host_path(), expected: len });
    }
    Ok(())
}

impl Tree {
    /// An empty tree (only the implicit root directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (the implicit root not counted).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds a directory, creating missing parents with mode 0755. Over an existing directory
    /// it keeps the children and takes the new mode; over a file, symlink or device it
    /// replaces that node.
    pub fn insert_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Node::Dir { mode })
    }

    /// Adds a regular file, creating missing parents with mode 0755 and replacing an earlier
    /// non-directory at the same path.
    pub fn insert_file(&mut self, path: &str, mode: u32, data: Data) -> Result<()> {
        self.insert(path, Node::File { mode, data })
    }

    /// Adds a symlink. The target is not checked here (it is resolved only in the guest);
    /// archives are checked before they reach this call.
    pub fn insert_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Node::Symlink { target: target.to_owned() })
    }

    /// Adds a character device node.
    pub fn insert_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, Node::CharDevice { mode, major, minor })
    }

    /// Inserts `node` at `path` following the rules of the `insert_*` methods: parents are
    /// created, never followed through symlinks, and a directory is never silently replaced.
    /// Modes are cut to their permission bits (`0o7777`).
    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let node = node.masked();
        let path = path::normalise(path).map_err(|problem| Error::InvalidPath { path: path.to_owned(), problem })?;
        let new = node.kind_name();
        if let Node::Symlink { target } = &node
            && (target.is_empty() || target.contains('\0'))
        {
            return Err(Error::InvalidSymlinkTarget { path });
        }
        let mut missing = Vec::new();
        for ancestor in path::ancestors(&path) {
            match self.nodes.get(&Key(ancestor.to_owned())) {
                None => missing.push(ancestor),
                Some(Node::Dir { .. }) => {}
                Some(Node::Symlink { .. }) => {
                    return Err(Error::ThroughSymlink { path: path.clone(), new, symlink: ancestor.to_owned() });
                }
                Some(other) => {
                    return Err(Error::ParentNotDirectory {
                        path: path.clone(),
                        new,
                        parent: ancestor.to_owned(),
                        parent_kind: other.kind_name(),
                    });
                }
            }
        }
        let key = Key(path.clone());
        if let (Some(Node::Dir { .. }), false) = (self.nodes.get(&key), matches!(node, Node::Dir { .. })) {
            return Err(Error::ReplacesDirectory { path, new });
        }
        for ancestor in missing {
            self.nodes.insert(Key(ancestor.to_owned()), Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(key, node);
        Ok(())
    }

    /// The node at `path`, if any (`None` also for invalid paths and the root).
    pub fn get(&self, path: &str) -> Option<&Node> {
        let path = path::normalise(path).ok()?;
        self.nodes.get(&Key(path))
    }

    /// Removes the node at `path` and, for a directory, everything under it.
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let path = path::normalise(path).ok()?;
        let key = Key(path);
        let prefix = format!("{}/", key.0);
        let below: Vec<Key> = self
            .nodes
            .range((Bound::Excluded(&key), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.0.starts_with(&prefix))
            .cloned()
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
        self.nodes.remove(&key)
    }

    /// Every entry as (`/a/b`, node), parents before children, siblings by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.0.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_creates_parents_and_orders_parents_first() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/usr/bin/x", 0o755, "x".into())?;
        tree.insert_file("usr-x", 0o644, "y".into())?;
        tree.insert_dir("/usr", 0o700)?;
        let got: Vec<&str> = tree.entries().map(|(p, _)| p).collect();
        assert_eq!(got, ["/usr", "/usr/bin", "/usr/bin/x", "/usr-x"]);
        assert_eq!(tree.get("/usr"), Some(&Node::Dir { mode: 0o700 }));
        assert_eq!(tree.get("usr/bin/"), Some(&Node::Dir { mode: 0o755 }));
        Ok(())
    }

    #[test]
    fn later_insertions_replace_earlier_ones_but_not_directories() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/a", 0o644, "1".into())?;
        tree.insert_symlink("/a", "b")?;
        assert_eq!(tree.get("/a"), Some(&Node::Symlink { target: "b".into() }));
        tree.insert_dir("/a", 0o755)?;
        tree.insert_file("/a/f", 0o644, "1".into())?;
        let err = tree.insert_file("/a", 0o644, "2".into()).expect_err("must fail");
        assert!(matches!(err, Error::ReplacesDirectory { .. }), "{err}");
        assert!(err.to_string().contains("`/a`"), "{err}");
        assert!(tree.get("/a/f").is_some());
        Ok(())
    }

    #[test]
    fn never_inserts_through_a_symlink() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_symlink("/etc", "/etc")?;
        let err = tree.insert_file("/etc/passwd", 0o644, "root".into()).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "cannot put a file at `/etc/passwd`: `/etc` is a symlink and kiln never writes through \
             symlinks; put it under the symlink's target instead"
        );
        let err = tree.insert_dir("/etc/x/y", 0o755).expect_err("must fail");
        assert!(matches!(err, Error::ThroughSymlink { .. }));
        assert!(tree.get("/etc/x").is_none(), "a failed insert leaves no parents behind");
        Ok(())
    }

    #[test]
    fn empty_symlink_targets_are_errors() {
        let err = Tree::new().insert_symlink("/l", "").expect_err("empty target");
        assert!(matches!(err, Error::InvalidSymlinkTarget { .. }), "{err}");
    }

    #[test]
    fn parent_that_is_a_file_is_an_error() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/a", 0o644, "1".into())?;
        let err = tree.insert_file("/a/b", 0o644, "2".into()).expect_err("must fail");
        assert!(matches!(err, Error::ParentNotDirectory { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn invalid_paths_are_errors() {
        let mut tree = Tree::new();
        let err = tree.insert_dir("/a/../b", 0o755).expect_err("must fail");
        assert_eq!(err.to_string(), "invalid rootfs path `/a/../b`: path leaves the rootfs (`..`)");
        assert!(tree.insert_dir("/", 0o755).is_err());
    }

    #[test]
    fn remove_takes_the_subtree_only() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/a/b/c", 0o644, "1".into())?;
        tree.insert_file("/a-b", 0o644, "1".into())?;
        tree.insert_file("/ab", 0o644, "1".into())?;
        assert_eq!(tree.remove("/a"), Some(Node::Dir { mode: 0o755 }));
        let got: Vec<&str> = tree.entries().map(|(p, _)| p).collect();
        assert_eq!(got, ["/a-b", "/ab"]);
        assert_eq!(tree.remove("/nope"), None);
        Ok(())
    }

    #[test]
    fn modes_keep_only_permission_bits() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/f", 0o104755, "x".into())?;
        assert!(matches!(tree.get("/f"), Some(Node::File { mode: 0o4755, .. })));
        Ok(())
    }
}
