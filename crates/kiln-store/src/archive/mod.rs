//! Export and import of store entries as one zstd-compressed tar stream.
//!
//! An archive holds, for each exported entry in closure order, `<closure>/meta.toml`, then
//! `<closure>/listing` (every path of the output tree with its type, content hash and size;
//! see `listing.rs`), then the directory `<closure>/out` and everything below it, depth first
//! with names sorted bytewise (the order [`hash_tree`] walks a tree in). Headers are
//! normalised: GNU format, modification time 0, owner and group 0 without names, mode 0o644 or
//! 0o755 for files (only the executable bit survives), 0o755 for directories and 0o777 for
//! symlinks. Exporting the same entries twice therefore gives the same bytes. The tar stream
//! is compressed with zstd at level 3, one worker per core, with a content checksum.
//!
//! Import treats the stream as hostile and bounds what it stages. Every member must be
//! `<closure>/meta.toml`, `<closure>/listing` (files, in that order, first) or a file,
//! directory or symlink at `<closure>/out/` or below, where `<closure>` is a canonical closure
//! hash; see [`Rejection`] for everything else that is refused. `meta.toml` is read into
//! memory and its derivation must have the entry's closure hash; the listing is read into
//! memory and must hash to the output hash `meta.toml` records, and what it promises must fit
//! in the import's byte budget (the free space of the store's file system less a margin, and
//! a limit: [`ImportLimits`]). Every member below `out/` is then held to the listing before
//! its data is read: one not listed, listed as another type, or claiming another size is
//! refused, so no byte past what the listing records is ever written. Files are hashed as
//! they are written. Members are extracted into a fresh staging directory under `<root>/tmp/`,
//! creating every directory itself and never writing through a symlink. When an entry's last
//! member has been read, a second thread syncs its files while the next entry is extracted.
//! Only when the whole stream has been read and every entry checked are the entries
//! published, each with one `rename`; an entry already in the store is left alone. Anything
//! else removes the staging directory, so a rejected archive leaves no trace in the store.
//!
//! [`hash_tree`]: crate::hash_tree

mod listing;
mod read;
#[cfg(test)]
mod tests;
mod verify;
mod write;

use std::{
    collections::HashMap,
    io,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
};

pub use read::{import, import_from_file, import_with_limits};
pub use verify::Rejection;
#[cfg(feature = "remote")]
pub(crate) use verify::{check_components, check_link_target};
pub use write::{export, export_to_file};

use crate::{ClosureHash, StoreError};

/// The longest path (and symlink target) an archive may hold, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most components a path (or symlink target) in an archive may have.
pub const MAX_PATH_COMPONENTS: usize = 256;
/// The largest file an archive may hold.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// The largest `meta.toml` an archive may hold.
pub const MAX_META_BYTES: u64 = 1 << 20;
/// The largest entry listing an archive may hold (some hundred thousand paths).
pub const MAX_LISTING_BYTES: u64 = 64 << 20;
/// How many zero bytes may follow the end-of-archive marker (tar tools pad to their record
/// size, 10 KiB for GNU tar); more is refused rather than read.
const MAX_TRAILING_ZEROS: u64 = 1 << 20;
/// What a file, directory or symlink costs the import's byte budget beyond its data: about
/// one block and one inode, so an archive of countless empty files is bounded too.
const NODE_COST: u64 = 4096;
/// How many symlinks resolving one symlink may pass through (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;
/// Path components resolving an entry's symlinks may look at: this many...
const LINK_STEPS_BASE: usize = 1 << 20;
/// ...plus this many per file, directory and symlink in the entry.
const LINK_STEPS_PER_NODE: usize = 64;

/// zstd level of exported archives (the `zstd` command's default).
const ZSTD_LEVEL: i32 = 3;
/// Size of the buffers between the file system, tar and zstd.
const IO_BUFFER: usize = 1 << 20;
/// Decompressed chunks in flight between the decompressing and the extracting thread.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Largest piece of a file handed to a writer thread at once.
const PIECE: usize = 1 << 20;
/// Pieces in flight between the extracting thread and the writer threads.
const PIECES_IN_FLIGHT: usize = 16;
/// Threads that sync an imported entry's files; they mostly wait for the disk.
const SYNC_THREADS: usize = 16;
/// While exporting to a file, written data is synced in the background every this many bytes.
const SYNC_EVERY: u64 = 64 << 20;
/// A tar block.
const BLOCK: usize = 512;
/// Zeros for padding and the end-of-archive marker.
static ZEROS: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// What an export wrote or an import published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// How many entries the archive holds. For an import this counts entries that were
    /// already in the store, too.
    pub entries: usize,
    /// Uncompressed bytes of the regular files in the archive (`meta.toml` files included).
    pub bytes: u64,
}

fn write_error(source: io::Error) -> StoreError {
    StoreError::ArchiveWrite { source }
}

fn corrupt(err: &io::Error) -> StoreError {
    StoreError::ArchiveCorrupt { message: err.to_string() }
}

fn corrupt_msg(message: &str) -> StoreError {
    StoreError::ArchiveCorrupt { message: message.to_owned() }
}

fn reject(member: &[u8], reason: Rejection) -> StoreError {
    StoreError::ArchiveRejected { member: shown(member), reason, entry: None }
}

/// Bytes from an archive as text for a message, escaped by kiln's one rule for untrusted
/// text ([`kiln_types::escape_untrusted_bytes`]): a member name can neither drive the
/// terminal nor start a line of its own (a GitHub Actions `::error` command, say).
pub(crate) fn shown(bytes: &[u8]) -> String {
    kiln_types::escape_untrusted_bytes(bytes).into_owned()
}

/// Bounds on what one import may stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// The most bytes the archive's entries may take on disk (their files' sizes plus
    /// 4 KiB per path).
    pub max_bytes: u64,
    /// Bytes of the store's file system that must stay free: the entries may take at most
    /// the free space at the start of the import less this.
    pub keep_free: u64,
}

impl Default for ImportLimits {
    /// At most [`MAX_FILE_BYTES`] (64 GiB), and 256 MiB kept free.
    fn default() -> Self {
        Self { max_bytes: MAX_FILE_BYTES, keep_free: 256 << 20 }
    }
}

fn compression_workers() -> u32 {
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    u32::try_from(cores.min(64)).unwrap_or(1)
}

/// Joins a scoped thread, passing its panic on.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The first error of any of import's threads; the others stop when they see it.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<StoreError>>,
}

impl Failure {
    fn record(&self, err: StoreError) {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(err);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn take(&self) -> Option<StoreError> {
        self.first.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What a thread returns once it saw another thread's failure (which is reported instead).
fn stopped() -> StoreError {
    corrupt_msg("import stopped after an earlier error")
}

/// What one staged path is.
enum Node {
    Dir,
    File,
    Symlink(Vec<u8>),
}

/// The kind of a member that may be extracted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// An entry extracted into the staging directory.
struct StagedEntry {
    closure: ClosureHash,
    hex: String,
    /// Its `meta.toml`, once read and checked.
    meta: Option<crate::EntryMeta>,
    /// Its listing, by path relative to the entry directory (`out/...`), once read.
    listing: Option<HashMap<Vec<u8>, listing::Listed>>,
    /// Paths that came as members of their own (directories may also be made as parents),
    /// so that no member comes twice.
    explicit: std::collections::HashSet<Vec<u8>>,
    /// Everything in the entry, by path relative to the entry directory (`meta.toml`, `out`,
    /// `out/...`).
    nodes: HashMap<Vec<u8>, Node>,
    /// Disconnects once every piece of the entry's files was written.
    written: mpsc::Receiver<()>,
}
