//! A tree's listing: one line of facts per entry, for `rootfs show` and `rootfs diff`, and its
//! stored form, a tab-separated line per entry (`path kind mode size blake3 [target]`) that a
//! rootfs's store entry keeps beside the image.

use std::fmt;

use crate::{
    errors::Result,
    tree::{Node, Tree},
};

/// The kind of a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One entry of [`Tree::listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingEntry {
    /// Rootfs-absolute path, e.g. `/bin/busybox`.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o777` for symlinks).
    pub mode: u32,
    /// Content length for files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// BLAKE3 of the content (files) or of the target (symlinks).
    pub hash: Option<blake3::Hash>,
    /// A symlink's target.
    pub target: Option<String>,
}

impl ListingEntry {
    /// The entry as one tab-separated line: `path kind mode size blake3 [target]`, the mode in
    /// octal, tabs, newlines and backslashes in the path and target escaped.
    pub fn to_tsv(&self) -> String {
        let kind = match self.kind {
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::File => "file".to_owned(),
            EntryKind::Symlink => "symlink".to_owned(),
            EntryKind::CharDevice { major, minor } => format!("char:{major}:{minor}"),
        };
        let hash = self.hash.map(|h| h.to_hex().to_string()).unwrap_or_default();
        let mut line = format!("{}\t{kind}\t{:o}\t{}\t{hash}", escape(&self.path), self.mode, self.size);
        if let Some(target) = &self.target {
            line.push('\t');
            line.push_str(&escape(target));
        }
        line
    }

    /// Reads a line written by [`ListingEntry::to_tsv`]; `None` when it is not one.
    pub fn from_tsv(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let path = unescape(fields.next()?);
        let kind = match fields.next()? {
            "dir" => EntryKind::Dir,
            "file" => EntryKind::File,
            "symlink" => EntryKind::Symlink,
            // Listings written before device numbers were recorded say only `char`.
            "char" => EntryKind::CharDevice { major: 0, minor: 0 },
            other => {
                let (major, minor) = other.strip_prefix("char:")?.split_once(':')?;
                EntryKind::CharDevice { major: major.parse().ok()?, minor: minor.parse().ok()? }
            }
        };
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        let size = fields.next()?.parse().ok()?;
        let hash = match fields.next()? {
            "" => None,
            hex => Some(blake3::Hash::from_hex(hex).ok()?),
        };
        let target = fields.next().map(unescape);
        Some(Self { path, kind, mode, size, hash, target })
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n")
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

impl fmt::Display for ListingEntry {
    /// `drwxr-xr-x        0 /etc`, `lrwxrwxrwx 7 /bin/sh -> busybox`-like, with the hash last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EntryKind::Dir => 'd',
            EntryKind::File => '-',
            EntryKind::Symlink => 'l',
            EntryKind::CharDevice { .. } => 'c',
        };
        write!(f, "{kind}{} {:>10} {}", mode_string(self.mode), self.size, self.path)?;
        if let EntryKind::CharDevice { major, minor } = self.kind {
            write!(f, " {major}:{minor}")?;
        }
        if let Some(hash) = self.hash {
            write!(f, " {hash}")?;
        }
        Ok(())
    }
}

/// `rwsr-xr-x`-style permission text, including setuid, setgid and sticky bits.
fn mode_string(mode: u32) -> String {
    let mut out = String::with_capacity(9);
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => special_char,
            (false, true) => special_char.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

impl Tree {
    /// Lists every entry in tree order with its kind, mode, size and content hash. Host files
    /// are read (and hashed) now.
    pub fn listing(&self) -> Result<Vec<ListingEntry>> {
        self.entries()
            .map(|(path, node)| {
                let target = match node {
                    Node::Symlink { target } => Some(target.clone()),
                    _ => None,
                };
                let (kind, mode, size, hash) = match node {
                    Node::Dir { mode } => (EntryKind::Dir, *mode, 0, None),
                    Node::File { mode, data } => {
                        let mut hasher = blake3::Hasher::new();
                        let (len, mut reader) = data.open()?;
                        crate::tree::copy_exact(data, &mut reader, len, &mut hasher, "the listing hash")?;
                        (EntryKind::File, *mode, len, Some(hasher.finalize()))
                    }
                    Node::Symlink { target } => {
                        (EntryKind::Symlink, 0o777, target.len() as u64, Some(blake3::hash(target.as_bytes())))
                    }
                    Node::CharDevice { mode, major, minor } => {
                        (EntryKind::CharDevice { major: *major, minor: *minor }, *mode, 0, None)
                    }
                };
                Ok(ListingEntry { path: path.to_owned(), kind, mode, size, hash, target })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Data;

    #[test]
    fn lists_files_symlinks_and_devices() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("f");
        std::fs::write(&host, "abc").expect("write");
        let mut tree = Tree::new();
        tree.insert_file("/bin/a", 0o4755, Data::from("abc"))?;
        tree.add_host_file(&host, "/bin/b", Some(0o644))?;
        tree.insert_symlink("/bin/sh", "a")?;
        tree.insert_char_device("/dev/console", 0o600, 5, 1)?;
        let listing = tree.listing()?;
        let lines: Vec<String> = listing.iter().map(ToString::to_string).collect();
        let abc = blake3::hash(b"abc");
        assert_eq!(
            lines,
            [
                "drwxr-xr-x          0 /bin".to_owned(),
                format!("-rwsr-xr-x          3 /bin/a {abc}"),
                format!("-rw-r--r--          3 /bin/b {abc}"),
                format!("lrwxrwxrwx          1 /bin/sh {}", blake3::hash(b"a")),
                "drwxr-xr-x          0 /dev".to_owned(),
                "crw-------          0 /dev/console 5:1".to_owned(),
            ]
        );
        Ok(())
    }

    #[test]
    fn the_stored_form_reads_back_the_same() -> Result<()> {
        let mut tree = Tree::new();
        tree.insert_file("/odd\tname\nwith\\breaks", 0o755, Data::from("x"))?;
        tree.insert_symlink("/bin/sh", "busy\tbox")?;
        tree.insert_char_device("/dev/null", 0o666, 1, 3)?;
        for entry in tree.listing()? {
            let line = entry.to_tsv();
            assert!(!line.contains('\n'), "{line:?}");
            assert_eq!(ListingEntry::from_tsv(&line), Some(entry), "{line:?}");
        }
        let old = ListingEntry::from_tsv("/dev/console\tchar\t600\t0\t").expect("an older listing's line");
        assert_eq!(old.kind, EntryKind::CharDevice { major: 0, minor: 0 });
        assert_eq!(ListingEntry::from_tsv("/x\tfifo\t644\t0\t"), None);
        Ok(())
    }
}
