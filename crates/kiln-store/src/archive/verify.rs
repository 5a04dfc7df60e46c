//! What import checks: each member's path, type and symlink target ([`Rejection`] lists
//! every refusal), and each staged entry against its closure and recorded output hash.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::File,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
};

use tar::EntryType;

use crate::{ClosureHash, EntryMeta, StoreError};

use super::{
    Failure, Kind, MAX_LINK_HOPS, MAX_LISTING_BYTES, MAX_META_BYTES, MAX_PATH_BYTES, MAX_PATH_COMPONENTS, Node,
    SYNC_THREADS, StagedEntry, join, shown,
};

/// Why an import refused an archive member.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The path starts with `/`.
    #[error("absolute paths are not allowed")]
    AbsolutePath,
    /// The path has a `..` component.
    #[error("`..` path components are not allowed")]
    ParentComponent,
    /// The path has an empty or `.` component.
    #[error("empty and `.` path components are not allowed")]
    EmptyComponent,
    /// The first path component is not a closure hash.
    #[error("paths must start with a closure hash (64 lowercase hexadecimal digits)")]
    NotAClosure,
    /// The path is neither `<closure>/meta.toml`, `<closure>/listing` nor `<closure>/out` or
    /// below it.
    #[error("only `<closure>/meta.toml`, `<closure>/listing` and `<closure>/out/...` may be in an archive")]
    UnexpectedPath,
    /// The member is not a regular file, a directory or a symlink.
    #[error("{kind} members are not allowed, only files, directories and symlinks")]
    UnsupportedType {
        /// What the member is, e.g. "hard link".
        kind: String,
    },
    /// The member has a type its place does not allow (`out` must be a directory, ...).
    #[error("this member must be {expected}")]
    WrongType {
        /// What it must be, e.g. "a directory".
        expected: &'static str,
    },
    /// A symlink's target is absolute.
    #[error("symlink target `{target}` is absolute")]
    AbsoluteLink {
        /// The target.
        target: String,
    },
    /// A symlink resolves to a place outside the entry's `out/` directory.
    #[error("symlink target `{target}` leads out of the entry's `out/` directory")]
    EscapingLink {
        /// The target.
        target: String,
    },
    /// Resolving a symlink passes through too many other symlinks (or a loop).
    #[error("symlink target `{target}` passes through more than 40 symlinks")]
    TooManyLinks {
        /// The target.
        target: String,
    },
    /// Resolving the entry's symlinks takes too many steps.
    #[error("resolving the entry's symlinks takes too many steps")]
    TooComplexLinks,
    /// The path or symlink target is too long.
    #[error("oversized header: the path is {len} bytes long, more than the limit of {MAX_PATH_BYTES}")]
    PathTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The path or symlink target has too many components.
    #[error("the path has {count} components, more than the limit of {MAX_PATH_COMPONENTS}")]
    TooManyComponents {
        /// How many it has.
        count: usize,
    },
    /// The member claims more data than allowed.
    #[error("oversized header: the member claims {size} bytes, more than the limit of {limit}")]
    Oversized {
        /// The size in the header.
        size: u64,
        /// The limit for this kind of member.
        limit: u64,
    },
    /// The path was already in the archive.
    #[error("the path appears twice in the archive")]
    Duplicate,
    /// A parent of the path is a file or a symlink, so writing the member would write through it.
    #[error("its parent `{parent}` is not a directory")]
    ParentNotDirectory {
        /// The parent, as written in the archive.
        parent: String,
    },
    /// The members of one entry are not next to each other.
    #[error("the members of one entry must be next to each other")]
    NotContiguous,
    /// An entry lacks `meta.toml` or `out`.
    #[error("the entry has no `{missing}`")]
    Incomplete {
        /// What is missing.
        missing: &'static str,
    },
    /// The header is malformed or unsupported.
    #[error("malformed header: {problem}")]
    BadHeader {
        /// What is wrong with it.
        problem: String,
    },
    /// The entry's `listing` cannot be read.
    #[error("the entry's listing is malformed: {problem}")]
    BadListing {
        /// What is wrong with it.
        problem: String,
    },
    /// An entry's members are not in the order export writes them.
    #[error("this member must come after the entry's `{expected}`")]
    OutOfOrder {
        /// What must come first.
        expected: &'static str,
    },
    /// The member is not in its entry's listing.
    #[error("the member is not in its entry's listing")]
    NotListed,
    /// The listing records the member as something else.
    #[error("the entry's listing records this member as {listed}")]
    ListedAs {
        /// What the listing says it is, e.g. "a directory".
        listed: &'static str,
    },
    /// A symlink's target is not the one listed.
    #[error("the entry's listing records the symlink target `{listed}`")]
    LinkMismatch {
        /// The listed target.
        listed: String,
    },
    /// A file member is longer or shorter than listed; none of its data was written.
    #[error("the member claims {size} bytes, but its entry's listing records {listed}")]
    SizeMismatch {
        /// The size in the member's header.
        size: u64,
        /// The size the listing records.
        listed: u64,
    },
    /// The listing records a path the archive does not hold.
    #[error("the entry's listing records this path, but the archive does not hold it")]
    MissingListed,
    /// A file's content does not have the hash its entry's listing records.
    #[error("its content does not have the hash its entry's listing records")]
    ContentMismatch,
}

pub(super) fn bad_header(problem: &str) -> Rejection {
    Rejection::BadHeader { problem: problem.to_owned() }
}

pub(super) fn member_kind(kind: EntryType) -> Result<Kind, Rejection> {
    let name = match kind.as_byte() {
        b'0' | b'\0' => return Ok(Kind::File),
        b'5' => return Ok(Kind::Dir),
        b'2' => return Ok(Kind::Symlink),
        b'1' => "hard link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "fifo",
        b'7' => "contiguous file",
        b'S' => "GNU sparse file",
        b'x' => "pax extended header",
        b'g' => "pax global header",
        b'D' => "GNU dump directory",
        b'M' => "GNU multi-volume continuation",
        b'N' => "GNU old long name",
        b'V' => "volume label",
        other => return Err(Rejection::UnsupportedType { kind: format!("type {:?}", char::from(other)) }),
    };
    Err(Rejection::UnsupportedType { kind: name.to_owned() })
}

/// Splits a member's path into its closure and the rest (empty for the entry directory),
/// rejecting anything but a canonical relative path.
pub(super) fn split_member(path: &[u8], is_dir: bool) -> Result<(ClosureHash, &[u8]), Rejection> {
    if path.len() > MAX_PATH_BYTES {
        return Err(Rejection::PathTooLong { len: path.len() });
    }
    if path.first() == Some(&b'/') {
        return Err(Rejection::AbsolutePath);
    }
    let path = match path.strip_suffix(b"/") {
        Some(trimmed) if is_dir => trimmed,
        Some(_) => return Err(bad_header("only a directory's path may end in `/`")),
        None => path,
    };
    if path.contains(&0) {
        return Err(bad_header("the path holds a NUL byte"));
    }
    check_components(path)?;
    let (first, rest) = match path.iter().position(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (path, &path[path.len()..]),
    };
    let closure = std::str::from_utf8(first).ok().and_then(|hex| hex.parse().ok()).ok_or(Rejection::NotAClosure)?;
    Ok((closure, rest))
}

pub(crate) fn check_components(path: &[u8]) -> Result<(), Rejection> {
    let count = path.split(|&b| b == b'/').count();
    if count > MAX_PATH_COMPONENTS {
        return Err(Rejection::TooManyComponents { count });
    }
    if path.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(Rejection::ParentComponent);
    }
    if path.split(|&b| b == b'/').any(|c| c.is_empty() || c == b".") {
        return Err(Rejection::EmptyComponent);
    }
    Ok(())
}

/// Checks where a member sits inside its entry (`rest` is its path below the entry directory).
pub(super) fn check_layout(rest: &[u8], kind: Kind, size: u64) -> Result<(), Rejection> {
    let expect = |wanted: Kind, expected: &'static str| {
        if kind == wanted { Ok(()) } else { Err(Rejection::WrongType { expected }) }
    };
    if rest.is_empty() || rest == b"out" {
        expect(Kind::Dir, "a directory")
    } else if rest == b"meta.toml" {
        expect(Kind::File, "a regular file")?;
        if size > MAX_META_BYTES {
            return Err(Rejection::Oversized { size, limit: MAX_META_BYTES });
        }
        Ok(())
    } else if rest == b"listing" {
        expect(Kind::File, "a regular file")?;
        if size > MAX_LISTING_BYTES {
            return Err(Rejection::Oversized { size, limit: MAX_LISTING_BYTES });
        }
        Ok(())
    } else if rest.starts_with(b"out/") {
        Ok(())
    } else {
        Err(Rejection::UnexpectedPath)
    }
}

/// Checks a symlink's target by itself: relative, bounded, and not leaving `out/` when
/// resolved lexically from the link's own directory. (`rest` is `out/.../name`.)
pub(crate) fn check_link_target(rest: &[u8], target: &[u8]) -> Result<(), Rejection> {
    let printed = || shown(target);
    if target.is_empty() {
        return Err(bad_header("a symlink without a target"));
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(Rejection::PathTooLong { len: target.len() });
    }
    if target.contains(&0) {
        return Err(bad_header("the symlink target holds a NUL byte"));
    }
    if target.first() == Some(&b'/') {
        return Err(Rejection::AbsoluteLink { target: printed() });
    }
    let count = target.split(|&b| b == b'/').count();
    if count > MAX_PATH_COMPONENTS {
        return Err(Rejection::TooManyComponents { count });
    }
    // Depth of the link's directory below `out`.
    let mut depth = rest.iter().filter(|&&b| b == b'/').count().saturating_sub(1);
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if depth == 0 => return Err(Rejection::EscapingLink { target: printed() }),
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Resolves the symlink `key` (below `out/`) as the kernel would, following the entry's other
/// symlinks, and fails if that ever leaves `out/`. A chain such as `out/a/b -> ..` plus
/// `out/c -> a/b/..` stays inside lexically but not once `a/b` is followed. Every component
/// looked at spends one step of `budget`, so hostile archives cannot make this slow.
pub(super) fn resolve_link(
    nodes: &HashMap<Vec<u8>, Node>,
    key: &[u8],
    target: &[u8],
    budget: &mut usize,
) -> Result<(), Rejection> {
    let escaping = || Rejection::EscapingLink { target: shown(target) };
    // The directory reached so far, `out/...`, and where each of its components starts.
    let mut dir = key.to_vec();
    let mut starts: Vec<usize> = Vec::new();
    for (i, &b) in key.iter().enumerate() {
        if b == b'/' {
            starts.push(i);
        }
    }
    // The link's own directory.
    if let Some(last) = starts.pop() {
        dir.truncate(last);
    }
    let mut pending: Vec<&[u8]> = target.split(|&b| b == b'/').rev().collect();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        *budget = budget.checked_sub(1).ok_or(Rejection::TooComplexLinks)?;
        match component {
            b"" | b"." => {}
            b".." => match starts.pop() {
                Some(start) => dir.truncate(start),
                // `dir` is `out` itself: its parent is outside the output tree.
                None => return Err(escaping()),
            },
            name => {
                starts.push(dir.len());
                dir.push(b'/');
                dir.extend_from_slice(name);
                match nodes.get(&dir) {
                    Some(Node::Dir) => {}
                    // Resolution ends here: at a file, or nowhere (ENOENT, ENOTDIR).
                    Some(Node::File) | None => return Ok(()),
                    Some(Node::Symlink(next)) => {
                        if let Some(start) = starts.pop() {
                            dir.truncate(start);
                        }
                        hops += 1;
                        if hops > MAX_LINK_HOPS {
                            return Err(Rejection::TooManyLinks { target: shown(target) });
                        }
                        if next.first() == Some(&b'/') {
                            return Err(escaping());
                        }
                        pending.extend(next.split(|&b| b == b'/').rev());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Syncs staged entries as the extractor finishes them, once their files are written (and
/// hashed by the writers); stops at the first failure. Everything else was checked as the
/// entry streamed: its listing against `meta.toml`, each member against its listing.
pub(super) fn verify_all(root: &Path, entries: mpsc::Receiver<StagedEntry>, failure: &Failure) -> Vec<ClosureHash> {
    let mut verified = Vec::new();
    for entry in entries {
        // Nobody sends: this returns when the last piece's sender is gone.
        let _ = entry.written.recv();
        if failure.failed() {
            break;
        }
        if let Err(err) = verify_entry(root, &entry) {
            failure.record(err);
            break;
        }
        verified.push(entry.closure);
    }
    verified
}

fn verify_entry(root: &Path, entry: &StagedEntry) -> Result<(), StoreError> {
    let dir = root.join(&entry.hex);
    let mut to_sync = Vec::with_capacity(entry.nodes.len() + 1);
    for (key, node) in &entry.nodes {
        let path = dir.join(OsStr::from_bytes(key));
        match node {
            // Files are read-only like the store's own; directories stay writable so that
            // `rm -rf target` and `cargo clean` work for people who are not root.
            Node::Dir => to_sync.push(path),
            Node::File => to_sync.push(path),
            Node::Symlink(_) => {}
        }
    }
    to_sync.push(dir);
    sync_all(&to_sync)
}

/// Reads an entry's `meta.toml` (held in memory, at most [`MAX_META_BYTES`]) and checks that
/// its derivation has the entry's closure hash, before anything below `out/` is read.
pub(super) fn check_meta(closure: ClosureHash, hex: &str, text: &[u8]) -> Result<EntryMeta, StoreError> {
    let corrupt =
        |message: String| StoreError::CorruptMeta { closure, path: PathBuf::from(format!("{hex}/meta.toml")), message };
    let text = std::str::from_utf8(text).map_err(|e| corrupt(e.to_string()))?;
    let meta: EntryMeta = toml::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let described = meta.derivation.closure_hash();
    if described != closure {
        return Err(StoreError::ArchiveClosureMismatch { dir: closure, derivation: described });
    }
    Ok(meta)
}

/// Syncs files and directories, several at a time.
fn sync_all(paths: &[PathBuf]) -> Result<(), StoreError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Result<(), StoreError> {
        while !failed.load(Ordering::Relaxed) {
            let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
            if let Err(e) = File::open(path).and_then(|f| f.sync_all()) {
                failed.store(true, Ordering::Relaxed);
                return Err(StoreError::io("sync", path, e));
            }
        }
        Ok(())
    };
    thread::scope(|s| {
        let helpers: Vec<_> = (1..SYNC_THREADS.min(paths.len())).map(|_| s.spawn(worker)).collect();
        let mine = worker();
        helpers.into_iter().map(join).fold(mine, Result::and)
    })
}
