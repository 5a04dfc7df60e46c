//! An entry's listing: every path of its output tree with its type, and for a file its
//! content hash and size, written into an archive between `meta.toml` and `out/`.
//!
//! The listing hashes to the output hash (it holds exactly what the tree hash covers, plus
//! sizes, which the content hashes pin), so import checks it against `meta.toml` before it
//! writes any file, and then holds every member to it as it streams: a member not listed,
//! listed as another type, or longer than listed is refused before its data is written, and
//! a file's content is hashed as it is written.
//!
//! Encoding (little-endian u64 lengths, as in the tree hash of `docs/closure-hash.md`):
//!
//! ```text
//! "kiln-listing-v1\n"  count:u64
//! count × ( path_len:u64 path  tag:u8  payload )
//!   tag `d`: no payload          tag `f` / `x` (executable): blake3:[u8; 32] size:u64
//!   tag `l`: target_len:u64 target
//! ```
//!
//! Paths are relative to `out/`, sorted bytewise, each once.

use std::{os::unix::ffi::OsStrExt, path::PathBuf};

use crate::{
    OutputHash,
    derivation::{put_bytes, put_len},
    tree::{Node, hash_nodes},
};

use super::{
    MAX_FILE_BYTES, MAX_PATH_BYTES,
    verify::{Rejection, check_components, check_link_target},
};

/// The first bytes of every listing.
const MAGIC: &[u8] = b"kiln-listing-v1\n";

/// One listed path, as import holds members to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Listed {
    Dir,
    File { executable: bool, content: [u8; 32], size: u64 },
    Symlink { target: Vec<u8> },
}

impl Listed {
    /// What the listing says the path is, for messages.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Self::Dir => "a directory",
            Self::File { executable: true, .. } => "an executable file",
            Self::File { executable: false, .. } => "a non-executable file",
            Self::Symlink { .. } => "a symlink",
        }
    }
}

/// Encodes a tree listing (in [`crate::tree::list_tree`]'s order).
pub(super) fn encode(nodes: &[(PathBuf, Node)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    put_len(&mut out, nodes.len());
    for (path, node) in nodes {
        put_bytes(&mut out, path.as_os_str().as_bytes());
        match node {
            Node::Dir => out.push(b'd'),
            Node::File { executable, content, size } => {
                out.push(if *executable { b'x' } else { b'f' });
                out.extend_from_slice(content);
                out.extend_from_slice(&size.to_le_bytes());
            }
            Node::Symlink { target } => {
                out.push(b'l');
                put_bytes(&mut out, target);
            }
        }
    }
    out
}

/// A decoded listing: the paths (relative to `out/`) in order, what the tree hash makes of
/// them, and the bytes of regular files it promises.
pub(super) struct Listing {
    pub(super) nodes: Vec<(Vec<u8>, Listed)>,
    pub(super) output_hash: OutputHash,
    pub(super) file_bytes: u64,
}

/// Decodes and checks a listing: well formed, paths canonical, sorted and unique, symlinks
/// staying inside `out/`, sizes within [`MAX_FILE_BYTES`].
pub(super) fn decode(bytes: &[u8]) -> Result<Listing, Rejection> {
    let mut reader = Reader { bytes, pos: 0 };
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(bad("it does not start with `kiln-listing-v1`"));
    }
    let count = reader.u64()?;
    // Every record takes at least 9 bytes (a length and a tag).
    if count > (bytes.len() / 9) as u64 {
        return Err(bad("it claims more paths than it has bytes for"));
    }
    let mut nodes: Vec<(Vec<u8>, Listed)> = Vec::with_capacity(count as usize);
    let mut file_bytes: u64 = 0;
    for _ in 0..count {
        let path = reader.bytes_with_len()?;
        if path.len() > MAX_PATH_BYTES {
            return Err(Rejection::PathTooLong { len: path.len() });
        }
        check_components(path)?;
        if path.contains(&0) {
            return Err(bad("a path holds a NUL byte"));
        }
        if nodes.last().is_some_and(|(previous, _)| previous.as_slice() >= path) {
            return Err(bad("its paths are not sorted bytewise or appear twice"));
        }
        let listed = match reader.u8()? {
            b'd' => Listed::Dir,
            tag @ (b'f' | b'x') => {
                let content: [u8; 32] = reader.take(32)?.try_into().map_err(|_| bad("a short content hash"))?;
                let size = reader.u64()?;
                if size > MAX_FILE_BYTES {
                    return Err(Rejection::Oversized { size, limit: MAX_FILE_BYTES });
                }
                file_bytes = file_bytes.saturating_add(size);
                Listed::File { executable: tag == b'x', content, size }
            }
            b'l' => {
                let target = reader.bytes_with_len()?.to_vec();
                check_link_target(&[b"out/", path].concat(), &target)?;
                Listed::Symlink { target }
            }
            other => return Err(bad(&format!("unknown node type {:?}", char::from(other)))),
        };
        nodes.push((path.to_vec(), listed));
    }
    if reader.pos != bytes.len() {
        return Err(bad("bytes follow its last path"));
    }
    let tree: Vec<(PathBuf, Node)> = nodes
        .iter()
        .map(|(path, listed)| {
            let node = match listed {
                Listed::Dir => Node::Dir,
                Listed::File { executable, content, size } => {
                    Node::File { executable: *executable, content: *content, size: *size }
                }
                Listed::Symlink { target } => Node::Symlink { target: target.clone() },
            };
            (PathBuf::from(std::ffi::OsStr::from_bytes(path)), node)
        })
        .collect();
    Ok(Listing { output_hash: hash_nodes(&tree), nodes, file_bytes })
}

fn bad(problem: &str) -> Rejection {
    Rejection::BadListing { problem: problem.to_owned() }
}

/// Reads a listing front to back, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], Rejection> {
        let end =
            self.pos.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or_else(|| bad("it is cut short"))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, Rejection> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Rejection> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| bad("it is cut short"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn bytes_with_len(&mut self) -> Result<&'a [u8], Rejection> {
        let len = self.u64()?;
        // Longer than any allowed path: refused without reading it.
        if len > MAX_PATH_BYTES as u64 {
            return Err(Rejection::PathTooLong { len: usize::try_from(len).unwrap_or(usize::MAX) });
        }
        self.take(len as usize)
    }
}
