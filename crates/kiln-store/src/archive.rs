//! Export and import of store entries as one zstd-compressed tar stream.
//!
//! An archive holds, for each exported entry in closure order, `<closure>/meta.toml`, then the
//! directory `<closure>/out` and everything below it, depth first with names sorted bytewise
//! (the order [`hash_tree`] walks a tree in). Headers are normalised: GNU format, modification
//! time 0, owner and group 0 without names, mode 0o644 or 0o755 for files (only the executable
//! bit survives), 0o755 for directories and 0o777 for symlinks. Exporting the same entries
//! twice therefore gives the same bytes. The tar stream is compressed with zstd at level 3,
//! one worker per core, with a content checksum.
//!
//! Import treats the stream as hostile. Every member must be `<closure>/meta.toml` (a file),
//! `<closure>/out` (a directory) or a file, directory or symlink below `<closure>/out/`, where
//! `<closure>` is a canonical closure hash; see [`Rejection`] for everything else that is
//! refused. Members are extracted into a fresh staging directory under `<root>/tmp/`, creating
//! every directory itself and never writing through a symlink. When an entry's last member
//! has been read, a second thread checks that its recorded derivation has the entry's closure
//! hash and that its output tree has the recorded output hash, and syncs its files, while the
//! next entry is being extracted. Only when the whole stream has been read and every entry
//! verified are the entries published, each with one `rename`; an entry already in the store
//! is left alone. Anything else removes the staging directory, so a rejected archive leaves no
//! trace in the store.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use tar::{EntryType, Header};

use crate::{ClosureHash, Entry, EntryMeta, Store, StoreError, hash_tree, store::sync_dir};

/// The longest path (and symlink target) an archive may hold, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most components a path (or symlink target) in an archive may have.
pub const MAX_PATH_COMPONENTS: usize = 256;
/// The largest file an archive may hold.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// The largest `meta.toml` an archive may hold.
pub const MAX_META_BYTES: u64 = 1 << 20;
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
    /// The path is neither `<closure>/meta.toml` nor `<closure>/out` or below it.
    #[error("only `<closure>/meta.toml` and `<closure>/out/...` may be in an archive")]
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
}

/// Writes the given entries (all must be in the store) into `writer` as a zstd-compressed tar
/// stream. Closures are written sorted and once each.
pub fn export(store: &Store, closures: &[ClosureHash], writer: impl Write) -> Result<ArchiveSummary, StoreError> {
    let mut wanted = closures.to_vec();
    wanted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    wanted.dedup();
    let entries = wanted
        .iter()
        .map(|closure| store.lookup(closure)?.ok_or(StoreError::NotInStore { closure: *closure }))
        .collect::<Result<Vec<_>, _>>()?;

    let mut encoder = zstd::stream::write::Encoder::new(BufWriter::with_capacity(IO_BUFFER, writer), ZSTD_LEVEL)
        .map_err(write_error)?;
    encoder.multithread(compression_workers()).map_err(write_error)?;
    encoder.include_checksum(true).map_err(write_error)?;
    let mut tar =
        TarWriter { out: BufWriter::with_capacity(IO_BUFFER, encoder), scratch: vec![0; IO_BUFFER], bytes: 0 };
    for entry in &entries {
        tar.entry(entry)?;
    }
    tar.put(&ZEROS)?;
    let encoder = tar.out.into_inner().map_err(|e| write_error(e.into_error()))?;
    encoder.finish().map_err(write_error)?.into_inner().map_err(|e| write_error(e.into_error()))?;
    Ok(ArchiveSummary { entries: entries.len(), bytes: tar.bytes })
}

/// Exports the given entries into the file at `path`, atomically: the archive is written to a
/// temporary file in the same directory, synced, and renamed over `path`.
pub fn export_to_file(store: &Store, closures: &[ClosureHash], path: &Path) -> Result<ArchiveSummary, StoreError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".kiln-export.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| StoreError::io("create a temporary file in", dir, e))?;
    let file = temp.as_file();
    let (exported, synced) = thread::scope(|s| {
        let (kick, kicked) = mpsc::sync_channel::<()>(1);
        let syncer = s.spawn(move || -> io::Result<()> {
            while kicked.recv().is_ok() {
                file.sync_data()?;
            }
            Ok(())
        });
        let exported = export(store, closures, EagerlySynced { file, unsynced: 0, kick });
        (exported, join(syncer))
    });
    let summary = exported.map_err(|err| match err {
        StoreError::ArchiveWrite { source } => StoreError::io("write", temp.path(), source),
        other => other,
    })?;
    // An error seen by the background sync is not reported again by the next one.
    synced.and_then(|()| file.sync_all()).map_err(|e| StoreError::io("sync", temp.path(), e))?;
    // Temporary files are created 0600; an archive is meant to be shared.
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| StoreError::io("set permissions of", temp.path(), e))?;
    temp.persist(path).map_err(|e| StoreError::io("rename the archive to", path, e.error))?;
    sync_dir(dir)?;
    Ok(summary)
}

/// Reads an archive made by [`export`] and publishes its entries.
///
/// Nothing is published unless every member is acceptable, the stream is complete and every
/// entry verifies; entries already in the store are skipped and count as imported.
pub fn import(store: &Store, reader: impl Read) -> Result<ArchiveSummary, StoreError> {
    let _gc_guard = store.lock_shared_gc()?;
    let staging = Staging::create(store)?;
    let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(IO_BUFFER, reader))
        .map_err(|e| corrupt(&e))?;
    let root = staging.path.as_path();
    let failure = &Failure::default();
    let backlogs: &Vec<AtomicU64> = &(0..writer_threads()).map(|_| AtomicU64::new(0)).collect();
    let (bytes, verified) = thread::scope(|s| {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let (spare_tx, spare_rx) = mpsc::channel();
        let (entry_tx, entry_rx) = mpsc::channel();
        let mut queues = Vec::new();
        let mut writers = Vec::new();
        for backlog in backlogs {
            let (piece_tx, piece_rx) = mpsc::sync_channel(PIECES_IN_FLIGHT);
            queues.push(piece_tx);
            writers.push(s.spawn(move || write_pieces(piece_rx, backlog, failure)));
        }
        let writers_queues = WriterQueues { queues, backlogs };
        let verifier = s.spawn(move || verify_all(root, entry_rx, failure));
        let extractor = s.spawn(move || {
            let mut source = ChunkReader { chunks: chunk_rx, spare: spare_tx, chunk: Vec::new(), len: 0, pos: 0 };
            let extractor = Extractor::new(root, entry_tx, writers_queues, failure);
            extractor.run(&mut source).map_err(|err| failure.record(err)).unwrap_or(0)
        });
        pump(&mut decoder, &chunk_tx, &spare_rx);
        drop(chunk_tx);
        let bytes = join(extractor);
        writers.into_iter().for_each(join);
        let verified = join(verifier);
        (bytes, verified)
    });
    if let Some(err) = failure.take() {
        return Err(err);
    }

    let entries_dir = store.root().join("entries");
    let mut published = 0;
    let result = verified.iter().try_for_each(|closure| {
        if publish(store, root, closure)? {
            published += 1;
        }
        Ok(())
    });
    if published > 0 {
        sync_dir(&entries_dir)?;
    }
    result?;
    Ok(ArchiveSummary { entries: verified.len(), bytes })
}

/// Moves a verified entry from the staging directory into the store, unless the store has it
/// already; `true` when it was moved. Holds the closure's lock meanwhile, as a builder does, so
/// an import and a build of the same closure never both publish it.
fn publish(store: &Store, staging: &Path, closure: &ClosureHash) -> Result<bool, StoreError> {
    let hex = closure.to_string();
    let _lock = store.lock_closure(closure, || {})?;
    if store.lookup(closure)?.is_some() {
        return Ok(false);
    }
    let target = store.root().join("entries").join(&hex);
    fs::rename(staging.join(&hex), &target).map_err(|e| StoreError::io("publish entry", &target, e))?;
    Ok(true)
}

/// Imports the archive in the file at `path`; see [`import`].
pub fn import_from_file(store: &Store, path: &Path) -> Result<ArchiveSummary, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    import(store, file)
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
    StoreError::ArchiveRejected { member: lossy(member), reason }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

// ---------------------------------------------------------------------------------------------
// Export.

/// Writes tar members with normalised headers.
struct TarWriter<W: Write> {
    out: W,
    scratch: Vec<u8>,
    bytes: u64,
}

impl<W: Write> TarWriter<W> {
    fn put(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(data).map_err(write_error)
    }

    fn pad(&mut self, len: u64) -> Result<(), StoreError> {
        let partial = (len % BLOCK as u64) as usize;
        if partial == 0 { Ok(()) } else { self.put(&ZEROS[..BLOCK - partial]) }
    }

    fn entry(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let hex = entry.closure.to_string();
        self.file(format!("{hex}/meta.toml").as_bytes(), &entry.dir.join("meta.toml"), Some(0o644))?;
        let out = entry.out_dir();
        let meta = fs::symlink_metadata(&out).map_err(|e| StoreError::io("inspect", &out, e))?;
        if !meta.is_dir() {
            return Err(StoreError::UnsupportedFileType { path: out });
        }
        let mut member = format!("{hex}/out").into_bytes();
        self.dir(&member)?;
        self.tree(&out, &mut member)
    }

    /// Writes everything below `dir`, whose member name is `member`.
    fn tree(&mut self, dir: &Path, member: &mut Vec<u8>) -> Result<(), StoreError> {
        let mut children = Vec::new();
        for child in fs::read_dir(dir).map_err(|e| StoreError::io("read directory", dir, e))? {
            let child = child.map_err(|e| StoreError::io("read directory", dir, e))?;
            let kind = child.file_type().map_err(|e| StoreError::io("inspect", &child.path(), e))?;
            children.push((child.file_name(), kind));
        }
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let base = member.len();
        for (name, kind) in children {
            member.truncate(base);
            member.push(b'/');
            member.extend_from_slice(name.as_bytes());
            let path = dir.join(&name);
            if kind.is_dir() {
                self.dir(member)?;
                self.tree(&path, member)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| StoreError::io("read symlink", &path, e))?;
                self.header(member, EntryType::Symlink, 0, 0o777, Some(target.as_os_str().as_bytes()))?;
            } else if kind.is_file() {
                self.file(member, &path, None)?;
            } else {
                return Err(StoreError::UnsupportedFileType { path });
            }
        }
        member.truncate(base);
        Ok(())
    }

    fn dir(&mut self, member: &[u8]) -> Result<(), StoreError> {
        let mut name = member.to_vec();
        name.push(b'/');
        self.header(&name, EntryType::Directory, 0, 0o755, None)
    }

    /// Writes a regular file; its mode is `mode`, or 0o644/0o755 after its executable bit.
    fn file(&mut self, member: &[u8], path: &Path, mode: Option<u32>) -> Result<(), StoreError> {
        let mut file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| StoreError::io("inspect", path, e))?;
        let executable = meta.permissions().mode() & 0o100 != 0;
        let mode = mode.unwrap_or(if executable { 0o755 } else { 0o644 });
        let size = meta.len();
        self.header(member, EntryType::Regular, size, mode, None)?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(self.scratch.len(), |left| left.min(self.scratch.len()));
            let got = match file.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    let shrank = io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being exported");
                    return Err(StoreError::io("read", path, shrank));
                }
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read", path, e)),
            };
            self.out.write_all(&self.scratch[..got]).map_err(write_error)?;
            left -= got as u64;
        }
        self.bytes += size;
        self.pad(size)
    }

    /// Writes one header, preceded by GNU long-name records when the path or link target
    /// does not fit.
    fn header(
        &mut self,
        member: &[u8],
        kind: EntryType,
        size: u64,
        mode: u32,
        link: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let name_field = 100;
        if member.len() > name_field {
            self.long_record(EntryType::GNULongName, member)?;
        }
        if let Some(link) = link
            && link.len() > name_field
        {
            self.long_record(EntryType::GNULongLink, link)?;
        }
        let mut header = normalised_header(kind, size, mode);
        set_field(&mut header.as_old_mut().name, member);
        if let Some(link) = link {
            set_field(&mut header.as_old_mut().linkname, link);
        }
        header.set_cksum();
        self.put(header.as_bytes())
    }

    fn long_record(&mut self, kind: EntryType, data: &[u8]) -> Result<(), StoreError> {
        let size = data.len() as u64 + 1;
        let mut header = normalised_header(kind, size, 0o644);
        set_field(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_cksum();
        self.put(header.as_bytes())?;
        self.put(data)?;
        self.put(&[0])?;
        self.pad(size)
    }
}

fn normalised_header(kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Copies as much of `value` as fits into a NUL-padded header field.
fn set_field(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
    field[len..].fill(0);
}

// ---------------------------------------------------------------------------------------------
// Import: the staging directory and the decompressing thread.

/// A staging directory under `<root>/tmp/`, removed with everything in it when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(store: &Store) -> Result<Self, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = store.root().join("tmp");
        loop {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = tmp.join(format!("import.{}.{nanos}.{n}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("create directory", &path, e)),
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.path);
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

/// Writes data to a file and, every [`SYNC_EVERY`] bytes, asks a helper thread to sync what was
/// written so far, so the final sync of a large archive has little left to do.
struct EagerlySynced<'a> {
    file: &'a File,
    unsynced: u64,
    kick: mpsc::SyncSender<()>,
}

impl Write for EagerlySynced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            // A sync still running will see this data too.
            let _ = self.kick.try_send(());
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn writer_threads() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(2, 8)
}

/// Part of a regular file, written by one of the writer threads: page-cache writes are what
/// extraction spends its time on, and they scale with threads.
struct Piece {
    target: PieceTarget,
    data: Vec<u8>,
    /// Dropped once the piece is written; the verifier waits for all of an entry's.
    _written: Option<mpsc::Sender<()>>,
}

enum PieceTarget {
    /// A whole file, created by the writer.
    NewFile { path: PathBuf, executable: bool },
    /// Part of a larger file the extractor created.
    At { file: Arc<(File, PathBuf)>, offset: u64 },
}

impl Piece {
    /// The work a piece stands for: its bytes, and creating a file for a whole one.
    fn cost(&self) -> u64 {
        let create = match self.target {
            PieceTarget::NewFile { .. } => 4096,
            PieceTarget::At { .. } => 0,
        };
        self.data.len() as u64 + create
    }

    fn write(&self) -> Result<(), StoreError> {
        match &self.target {
            PieceTarget::NewFile { path, executable } => {
                create_file(path, *executable)?.write_all(&self.data).map_err(|e| StoreError::io("write", path, e))
            }
            PieceTarget::At { file, offset } => {
                file.0.write_all_at(&self.data, *offset).map_err(|e| StoreError::io("write", &file.1, e))
            }
        }
    }
}

/// Creates a file that must not exist yet (`create_new` never follows a symlink). It is
/// created read-only, as the store keeps it; the returned handle may still write it.
fn create_file(path: &Path, executable: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o555 } else { 0o444 })
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))
}

/// A writer thread: writes pieces until the extractor is done, or skips them after a failure.
fn write_pieces(pieces: mpsc::Receiver<Piece>, backlog: &AtomicU64, failure: &Failure) {
    for piece in pieces {
        if !failure.failed()
            && let Err(err) = piece.write()
        {
            failure.record(err);
        }
        backlog.fetch_sub(piece.cost(), Ordering::Relaxed);
    }
}

/// The queues of the writer threads. All pieces of one file go to one writer (writes to one
/// file take its inode's lock, so they would only wait for each other); each file goes to the
/// writer with the least work queued.
struct WriterQueues<'a> {
    queues: Vec<mpsc::SyncSender<Piece>>,
    backlogs: &'a [AtomicU64],
}

impl WriterQueues<'_> {
    fn least_busy(&self) -> usize {
        (0..self.backlogs.len()).min_by_key(|&i| self.backlogs[i].load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn send(&self, writer: usize, piece: Piece) -> Result<(), StoreError> {
        let (Some(queue), Some(backlog)) = (self.queues.get(writer), self.backlogs.get(writer)) else {
            return Err(stopped());
        };
        backlog.fetch_add(piece.cost(), Ordering::Relaxed);
        queue.send(piece).map_err(|_| stopped())
    }
}

/// A decompressed piece of the tar stream.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// Decompresses the stream into chunks for the extracting thread until the stream ends, fails
/// (the error is passed on) or the extractor stops listening.
fn pump(decoder: &mut impl Read, chunks: &mpsc::SyncSender<io::Result<Chunk>>, spare: &mpsc::Receiver<Vec<u8>>) {
    loop {
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0; IO_BUFFER]);
        let mut len = 0;
        let mut failure = None;
        while len < buf.len() {
            match decoder.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let full = len == buf.len();
        if len > 0 && chunks.send(Ok(Chunk { buf, len })).is_err() {
            return;
        }
        if let Some(e) = failure {
            let _ = chunks.send(Err(e));
            return;
        }
        if !full {
            return;
        }
    }
}

/// The extractor's view of the decompressed stream.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Chunk>>,
    spare: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    len: usize,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.chunk, chunk.buf);
                    if !used.is_empty() {
                        let _ = self.spare.send(used);
                    }
                    self.len = chunk.len;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvError) => return Ok(&[]),
            }
        }
        Ok(&self.chunk[self.pos..self.len])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.len);
    }
}

// ---------------------------------------------------------------------------------------------
// Import: reading tar members into the staging directory.

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
    /// Everything in the entry, by path relative to the entry directory (`meta.toml`, `out`,
    /// `out/...`).
    nodes: HashMap<Vec<u8>, Node>,
    /// Disconnects once every piece of the entry's files was written.
    written: mpsc::Receiver<()>,
}

struct Extractor<'a> {
    root: &'a Path,
    finished_tx: mpsc::Sender<StagedEntry>,
    writers: WriterQueues<'a>,
    failure: &'a Failure,
    current: Option<StagedEntry>,
    /// Cloned into every piece of the current entry.
    current_written: Option<mpsc::Sender<()>>,
    finished: HashSet<ClosureHash>,
    bytes: u64,
}

impl<'a> Extractor<'a> {
    fn new(
        root: &'a Path,
        finished_tx: mpsc::Sender<StagedEntry>,
        writers: WriterQueues<'a>,
        failure: &'a Failure,
    ) -> Self {
        Self {
            root,
            finished_tx,
            writers,
            failure,
            current: None,
            current_written: None,
            finished: HashSet::new(),
            bytes: 0,
        }
    }

    fn send(&self, writer: usize, target: PieceTarget, data: Vec<u8>) -> Result<(), StoreError> {
        if self.failure.failed() {
            return Err(stopped());
        }
        self.writers.send(writer, Piece { target, data, _written: self.current_written.clone() })
    }

    /// Extracts every member; returns the bytes of regular files read.
    fn run(mut self, src: &mut impl BufRead) -> Result<u64, StoreError> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0; BLOCK];
        loop {
            if self.failure.failed() {
                return Err(stopped());
            }
            if !read_block(src, &mut block)? {
                return Err(corrupt_msg("the tar stream ends without its end-of-archive marker"));
            }
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() {
                    return Err(reject(b"././@LongLink", bad_header("a long-name record is followed by no member")));
                }
                break;
            }
            let header = Header::from_byte_slice(&block);
            let name = header.path_bytes().into_owned();
            if !checksum_matches(&block) {
                return Err(StoreError::ArchiveCorrupt {
                    message: format!("the header of `{}` has a wrong checksum", lossy(&name)),
                });
            }
            if header.as_gnu().is_none() && header.as_ustar().is_none() {
                return Err(reject(&name, bad_header("neither a GNU nor a ustar header")));
            }
            let size = header.entry_size().map_err(|e| reject(&name, bad_header(&e.to_string())))?;
            let kind = header.entry_type();
            if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                let slot = if kind.is_gnu_longname() { &mut long_name } else { &mut long_link };
                if slot.is_some() {
                    return Err(reject(&name, bad_header("two long-name records for one member")));
                }
                // The record holds the path and a NUL.
                if size > MAX_PATH_BYTES as u64 + 1 {
                    let len = usize::try_from(size - 1).unwrap_or(usize::MAX);
                    return Err(reject(&name, Rejection::PathTooLong { len }));
                }
                let mut data = vec![0; size as usize];
                read_exact(src, &mut data, &name)?;
                skip_padding(src, size, &name)?;
                while data.last() == Some(&0) {
                    data.pop();
                }
                *slot = Some(data);
                continue;
            }
            let path = long_name.take().unwrap_or(name);
            let link = long_link.take().or_else(|| header.link_name_bytes().map(Cow::into_owned));
            let mode = header.mode().map_err(|e| reject(&path, bad_header(&e.to_string())))?;
            self.member(src, &path, kind, size, mode, link)?;
        }
        drain(src)?;
        self.finish_current()?;
        Ok(self.bytes)
    }

    fn member(
        &mut self,
        src: &mut impl BufRead,
        path: &[u8],
        kind: EntryType,
        size: u64,
        mode: u32,
        link: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let kind = member_kind(kind).map_err(|reason| reject(path, reason))?;
        if size > MAX_FILE_BYTES {
            return Err(reject(path, Rejection::Oversized { size, limit: MAX_FILE_BYTES }));
        }
        if kind != Kind::File && size != 0 {
            return Err(reject(path, bad_header("a directory or symlink carries data")));
        }
        let (closure, rest) = split_member(path, kind == Kind::Dir).map_err(|reason| reject(path, reason))?;
        check_layout(rest, kind, size).map_err(|reason| reject(path, reason))?;
        let target = match kind {
            Kind::Symlink => {
                let target = link.unwrap_or_default();
                check_link_target(rest, &target).map_err(|reason| reject(path, reason))?;
                Some(target)
            }
            Kind::File | Kind::Dir => None,
        };
        self.enter(closure)?;
        let Some(entry) = self.current.as_mut() else {
            return Err(stopped());
        };
        let entry_dir = self.root.join(&entry.hex);
        if rest.is_empty() {
            return Ok(()); // The entry directory itself, which `enter` made.
        }
        // Parents, made here unless the archive made them.
        for (i, _) in rest.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let parent = &rest[..i];
            match entry.nodes.get(parent) {
                Some(Node::Dir) => {}
                Some(_) => return Err(reject(path, Rejection::ParentNotDirectory { parent: lossy(parent) })),
                None => {
                    make_dir(&entry_dir.join(OsStr::from_bytes(parent)))?;
                    entry.nodes.insert(parent.to_vec(), Node::Dir);
                }
            }
        }
        match entry.nodes.get(rest) {
            Some(Node::Dir) if kind == Kind::Dir => return Ok(()),
            Some(_) => return Err(reject(path, Rejection::Duplicate)),
            None => {}
        }
        let dest = entry_dir.join(OsStr::from_bytes(rest));
        let node = match (kind, target) {
            (Kind::Dir, _) => {
                make_dir(&dest)?;
                Node::Dir
            }
            (Kind::Symlink, Some(target)) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)
                    .map_err(|e| StoreError::io("create symlink", &dest, e))?;
                Node::Symlink(target)
            }
            (Kind::Symlink, None) => return Err(reject(path, bad_header("a symlink without a target"))),
            (Kind::File, _) => Node::File,
        };
        entry.nodes.insert(rest.to_vec(), node);
        if kind == Kind::File {
            self.file(src, path, dest, size, mode & 0o100 != 0)?;
        }
        Ok(())
    }

    /// Hands a file's data to the writer threads: whole when it is small, else in pieces of a
    /// file created here.
    fn file(
        &mut self,
        src: &mut impl BufRead,
        member: &[u8],
        dest: PathBuf,
        size: u64,
        executable: bool,
    ) -> Result<(), StoreError> {
        let piece_len = |left: u64| usize::try_from(left).map_or(PIECE, |left| left.min(PIECE));
        let writer = self.writers.least_busy();
        if size <= PIECE as u64 {
            let data = read_vec(src, piece_len(size), member)?;
            self.send(writer, PieceTarget::NewFile { path: dest, executable }, data)?;
        } else {
            let file = Arc::new((create_file(&dest, executable)?, dest));
            let mut offset = 0;
            while offset < size {
                let data = read_vec(src, piece_len(size - offset), member)?;
                let len = data.len() as u64;
                self.send(writer, PieceTarget::At { file: Arc::clone(&file), offset }, data)?;
                offset += len;
            }
        }
        skip_padding(src, size, member)?;
        self.bytes += size;
        Ok(())
    }

    /// Makes `closure` the entry being extracted, handing the previous one to the verifier.
    fn enter(&mut self, closure: ClosureHash) -> Result<(), StoreError> {
        if self.current.as_ref().is_some_and(|entry| entry.closure == closure) {
            return Ok(());
        }
        self.finish_current()?;
        let hex = closure.to_string();
        if self.finished.contains(&closure) {
            return Err(reject(hex.as_bytes(), Rejection::NotContiguous));
        }
        let dir = self.root.join(&hex);
        DirBuilder::new().mode(0o755).create(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        let (written_tx, written) = mpsc::channel();
        self.current_written = Some(written_tx);
        self.current = Some(StagedEntry { closure, hex, nodes: HashMap::new(), written });
        Ok(())
    }

    /// Checks that the entry being extracted is whole and its symlinks stay inside it, and
    /// hands it to the verifier.
    fn finish_current(&mut self) -> Result<(), StoreError> {
        let Some(entry) = self.current.take() else { return Ok(()) };
        self.current_written = None;
        let member = |rest: &[u8]| [entry.hex.as_bytes(), b"/", rest].concat();
        if !matches!(entry.nodes.get(&b"meta.toml"[..]), Some(Node::File)) {
            return Err(reject(&member(b""), Rejection::Incomplete { missing: "meta.toml" }));
        }
        if !matches!(entry.nodes.get(&b"out"[..]), Some(Node::Dir)) {
            return Err(reject(&member(b""), Rejection::Incomplete { missing: "out/" }));
        }
        let mut links: Vec<_> = entry
            .nodes
            .iter()
            .filter_map(|(key, node)| match node {
                Node::Symlink(target) => Some((key, target)),
                _ => None,
            })
            .collect();
        links.sort();
        let mut budget = LINK_STEPS_BASE + LINK_STEPS_PER_NODE * entry.nodes.len();
        for (key, target) in links {
            resolve_link(&entry.nodes, key, target, &mut budget).map_err(|reason| reject(&member(key), reason))?;
        }
        self.finished.insert(entry.closure);
        // Only fails when the verifier stopped, after an error that import reports instead.
        self.finished_tx.send(entry).map_err(|_| stopped())
    }
}

fn bad_header(problem: &str) -> Rejection {
    Rejection::BadHeader { problem: problem.to_owned() }
}

fn member_kind(kind: EntryType) -> Result<Kind, Rejection> {
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
fn split_member(path: &[u8], is_dir: bool) -> Result<(ClosureHash, &[u8]), Rejection> {
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
fn check_layout(rest: &[u8], kind: Kind, size: u64) -> Result<(), Rejection> {
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
    } else if rest.starts_with(b"out/") {
        Ok(())
    } else {
        Err(Rejection::UnexpectedPath)
    }
}

/// Checks a symlink's target by itself: relative, bounded, and not leaving `out/` when
/// resolved lexically from the link's own directory. (`rest` is `out/.../name`.)
pub(crate) fn check_link_target(rest: &[u8], target: &[u8]) -> Result<(), Rejection> {
    let shown = || lossy(target);
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
        return Err(Rejection::AbsoluteLink { target: shown() });
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
            b".." if depth == 0 => return Err(Rejection::EscapingLink { target: shown() }),
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
fn resolve_link(
    nodes: &HashMap<Vec<u8>, Node>,
    key: &[u8],
    target: &[u8],
    budget: &mut usize,
) -> Result<(), Rejection> {
    let escaping = || Rejection::EscapingLink { target: lossy(target) };
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
                            return Err(Rejection::TooManyLinks { target: lossy(target) });
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

fn make_dir(path: &Path) -> Result<(), StoreError> {
    DirBuilder::new().mode(0o755).create(path).map_err(|e| StoreError::io("create directory", path, e))
}

fn checksum_matches(block: &[u8; BLOCK]) -> bool {
    let Ok(recorded) = Header::from_byte_slice(block).cksum() else { return false };
    let sum: u32 = block[..148].iter().chain(&block[156..]).map(|&b| u32::from(b)).sum();
    sum + 8 * u32::from(b' ') == recorded
}

/// Reads one block; `false` when the stream ends before it.
fn read_block(src: &mut impl BufRead, block: &mut [u8; BLOCK]) -> Result<bool, StoreError> {
    let mut filled = 0;
    while filled < BLOCK {
        let available = src.fill_buf().map_err(|e| corrupt(&e))?;
        if available.is_empty() {
            if filled == 0 {
                return Ok(false);
            }
            return Err(corrupt_msg("the tar stream ends inside a header"));
        }
        let n = available.len().min(BLOCK - filled);
        block[filled..filled + n].copy_from_slice(&available[..n]);
        src.consume(n);
        filled += n;
    }
    Ok(true)
}

fn truncated_in(member: &[u8]) -> StoreError {
    StoreError::ArchiveCorrupt { message: format!("the tar stream ends inside `{}`", lossy(member)) }
}

fn read_exact(src: &mut impl BufRead, buf: &mut [u8], member: &[u8]) -> Result<(), StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        let available = src.fill_buf().map_err(|e| corrupt(&e))?;
        if available.is_empty() {
            return Err(truncated_in(member));
        }
        let n = available.len().min(buf.len() - filled);
        buf[filled..filled + n].copy_from_slice(&available[..n]);
        src.consume(n);
        filled += n;
    }
    Ok(())
}

/// Reads the next `len` bytes of the stream.
fn read_vec(src: &mut impl BufRead, len: usize, member: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let available = src.fill_buf().map_err(|e| corrupt(&e))?;
        if available.is_empty() {
            return Err(truncated_in(member));
        }
        let n = available.len().min(len - data.len());
        data.extend_from_slice(&available[..n]);
        src.consume(n);
    }
    Ok(data)
}

fn skip_padding(src: &mut impl BufRead, size: u64, member: &[u8]) -> Result<(), StoreError> {
    let partial = (size % BLOCK as u64) as usize;
    if partial != 0 {
        let mut padding = [0; BLOCK];
        read_exact(src, &mut padding[..BLOCK - partial], member)?;
    }
    Ok(())
}

/// Reads the stream to its end, so a truncated or corrupt compressed stream is noticed even
/// after the end-of-archive marker; only zeros may follow the marker.
fn drain(src: &mut impl BufRead) -> Result<(), StoreError> {
    loop {
        let available = src.fill_buf().map_err(|e| corrupt(&e))?;
        if available.is_empty() {
            return Ok(());
        }
        if available.iter().any(|&b| b != 0) {
            return Err(corrupt_msg("data follows the end-of-archive marker"));
        }
        let n = available.len();
        src.consume(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Import: verification and syncing.

/// Verifies and syncs staged entries as the extractor finishes them, once their files are
/// written; stops at the first failure.
fn verify_all(root: &Path, entries: mpsc::Receiver<StagedEntry>, failure: &Failure) -> Vec<ClosureHash> {
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
    to_sync.push(dir.clone());
    thread::scope(|s| {
        let syncing = s.spawn(|| sync_all(&to_sync));
        let checked = check_entry(&dir, entry);
        let synced = join(syncing);
        checked.and(synced)
    })
}

/// Checks a staged entry against its `meta.toml`.
fn check_entry(dir: &Path, entry: &StagedEntry) -> Result<(), StoreError> {
    let meta_member = PathBuf::from(format!("{}/meta.toml", entry.hex));
    let text = fs::read_to_string(dir.join("meta.toml")).map_err(|e| StoreError::CorruptMeta {
        closure: entry.closure,
        path: meta_member.clone(),
        message: e.to_string(),
    })?;
    let meta: EntryMeta = toml::from_str(&text).map_err(|e| StoreError::CorruptMeta {
        closure: entry.closure,
        path: meta_member,
        message: e.to_string(),
    })?;
    let described = meta.derivation.closure_hash();
    if described != entry.closure {
        return Err(StoreError::ArchiveClosureMismatch { dir: entry.closure, derivation: described });
    }
    let actual = hash_tree(&dir.join("out"))?;
    if actual.to_string() != meta.output_hash {
        return Err(StoreError::ArchiveOutputMismatch { closure: entry.closure, recorded: meta.output_hash, actual });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, process::Command, time::Instant};

    use super::*;
    use crate::Derivation;

    /// A temporary store, removed (read-only directories included) when dropped.
    struct TestStore {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl TestStore {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path().join("store")).expect("open store");
            Self { dir, store }
        }

        fn build(&self, tag: &str, fill: impl FnOnce(&Path) -> io::Result<()>) -> Entry {
            let (entry, _) = self.store.build(&derivation(tag), tag, || {}, |out| Ok(fill(out)?)).expect("build");
            entry
        }

        fn import(&self, archive: &[u8]) -> Result<ArchiveSummary, StoreError> {
            import(&self.store, archive)
        }

        /// Nothing visible was written: no entries and no leftovers in `tmp/`.
        fn assert_untouched(&self) {
            for sub in ["entries", "tmp"] {
                let left: Vec<_> = fs::read_dir(self.store.root().join(sub))
                    .expect("read_dir")
                    .map(|e| e.expect("entry").file_name())
                    .collect();
                assert!(left.is_empty(), "{sub}/ holds {left:?}");
            }
        }

        /// Imports `archive`, expects it to be refused without a trace, and returns the error.
        fn expect_refused(&self, archive: &[u8]) -> StoreError {
            let err = self.import(archive).expect_err("the archive must be refused");
            self.assert_untouched();
            err
        }
    }

    impl Drop for TestStore {
        fn drop(&mut self) {
            let _ = crate::store::remove_tree(self.dir.path());
        }
    }

    fn derivation(tag: &str) -> Derivation {
        let mut drv = Derivation::new("archive-test");
        drv.setting("tag", tag);
        drv
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    /// Bytes that compress somewhat, like build outputs.
    fn filler(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = if state % 4 < 2 { state } else { 0x6b69_6c6e_6b69_6c6e };
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    const LONG_NAME: &str =
        "a-directory-name-that-is-long-enough-to-need-a-gnu-long-name-record-in-any-tar-header-at-all";

    /// Three entries: a tree with every kind of node, one with a file larger than a chunk,
    /// one with an empty output.
    fn sample() -> (TestStore, Vec<ClosureHash>) {
        let store = TestStore::new();
        let rich = store.build("rich", |out| {
            fs::write(out.join("README"), "hello")?;
            fs::create_dir_all(out.join("bin"))?;
            fs::write(out.join("bin/kernel"), b"\x7fELF")?;
            fs::set_permissions(out.join("bin/kernel"), fs::Permissions::from_mode(0o755))?;
            symlink("bin/kernel", out.join("current"))?;
            fs::create_dir_all(out.join("nested/deep/er"))?;
            fs::write(out.join("nested/deep/er/file"), "deep")?;
            symlink("../../README", out.join("nested/deep/readme"))?;
            fs::create_dir_all(out.join("empty"))?;
            fs::write(out.join("a.txt"), "sorts before a/")?;
            fs::create_dir_all(out.join("a"))?;
            fs::write(out.join("a/b"), "sorts after a.txt")?;
            let long = out.join(LONG_NAME).join(LONG_NAME);
            fs::create_dir_all(&long)?;
            fs::write(long.join("file"), "far away")?;
            symlink(format!("{LONG_NAME}/{LONG_NAME}/file"), out.join("long-link"))?;
            Ok(())
        });
        let big = store.build("big", |out| {
            fs::write(out.join("big.bin"), filler(7, 3 * IO_BUFFER + 123))?;
            fs::write(out.join("small"), "small")
        });
        let empty = store.build("empty", |_| Ok(()));
        (store, vec![rich.closure, big.closure, empty.closure])
    }

    fn export_bytes(store: &Store, closures: &[ClosureHash]) -> Vec<u8> {
        let mut out = Vec::new();
        export(store, closures, &mut out).expect("export");
        out
    }

    /// An entry built elsewhere, to put into crafted archives.
    struct Good {
        closure: ClosureHash,
        hex: String,
        meta: Vec<u8>,
        output_hash: String,
    }

    const GOOD_CONTENT: &[u8] = b"good content";

    fn good(tag: &str) -> Good {
        let source = TestStore::new();
        let entry = source.build(tag, |out| fs::write(out.join("file"), GOOD_CONTENT));
        let meta = fs::read(entry.dir.join("meta.toml")).expect("read meta");
        Good { closure: entry.closure, hex: entry.closure.to_string(), meta, output_hash: entry.meta.output_hash }
    }

    /// Builds tar streams member by member with the `tar` crate, bypassing its path checks.
    struct Craft {
        tar: tar::Builder<Vec<u8>>,
    }

    impl Craft {
        fn new() -> Self {
            Self { tar: tar::Builder::new(Vec::new()) }
        }

        fn raw(&mut self, path: &[u8], kind: EntryType, mode: u32, size: u64, link: &[u8], data: &[u8]) -> &mut Self {
            if path.len() > 100 {
                let mut record = path.to_vec();
                record.push(0);
                self.raw(b"././@LongLink", EntryType::GNULongName, 0o644, record.len() as u64, b"", &record);
            }
            if link.len() > 100 {
                let mut record = link.to_vec();
                record.push(0);
                self.raw(b"././@LongLink", EntryType::GNULongLink, 0o644, record.len() as u64, b"", &record);
            }
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(size);
            header.set_mtime(0);
            set_field(&mut header.as_old_mut().name, path);
            set_field(&mut header.as_old_mut().linkname, link);
            header.set_cksum();
            self.tar.append(&header, data).expect("append");
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.raw(path.as_bytes(), EntryType::Regular, 0o644, data.len() as u64, b"", data)
        }

        fn dir(&mut self, path: &str) -> &mut Self {
            self.raw(path.as_bytes(), EntryType::Directory, 0o755, 0, b"", b"")
        }

        fn link(&mut self, path: &str, target: &str) -> &mut Self {
            self.raw(path.as_bytes(), EntryType::Symlink, 0o777, 0, target.as_bytes(), b"")
        }

        /// A whole entry whose `out/file` holds `content`.
        fn entry(&mut self, good: &Good, content: &[u8]) -> &mut Self {
            let hex = &good.hex;
            self.file(&format!("{hex}/meta.toml"), &good.meta)
                .dir(&format!("{hex}/out"))
                .file(&format!("{hex}/out/file"), content)
        }

        fn finish(self) -> Vec<u8> {
            let tar = self.tar.into_inner().expect("finish tar");
            zstd::encode_all(&tar[..], 3).expect("compress")
        }
    }

    fn rejection(err: &StoreError) -> &Rejection {
        match err {
            StoreError::ArchiveRejected { reason, .. } => reason,
            other => panic!("expected a rejected member, got {other:?}: {other}"),
        }
    }

    fn rejected_member(err: &StoreError) -> &str {
        match err {
            StoreError::ArchiveRejected { member, .. } => member,
            other => panic!("expected a rejected member, got {other:?}: {other}"),
        }
    }

    #[test]
    fn round_trip_keeps_entries_identical() {
        let (a, closures) = sample();
        let archive = export_bytes(&a.store, &closures);
        let b = TestStore::new();
        let summary = b.import(&archive).expect("import");
        assert_eq!(summary.entries, 3);
        let exported = export(&a.store, &closures, io::sink()).expect("export");
        assert_eq!(summary, exported);
        assert!(summary.bytes > 3 * IO_BUFFER as u64, "{summary:?}");

        for closure in &closures {
            let from = a.store.lookup(closure).expect("lookup").expect("in A");
            let to = b.store.lookup(closure).expect("lookup").expect("in B");
            assert_eq!(
                fs::read(from.dir.join("meta.toml")).expect("meta A"),
                fs::read(to.dir.join("meta.toml")).expect("meta B")
            );
            let hash = hash_tree(&to.out_dir()).expect("hash");
            assert_eq!(hash, hash_tree(&from.out_dir()).expect("hash"));
            assert_eq!(hash.to_string(), to.meta.output_hash);
            assert!(b.store.verify(&to).expect("verify"));
            assert_eq!(mode(&to.dir.join("meta.toml")) & 0o222, 0);
        }
        let rich = b.store.lookup(&closures[0]).expect("lookup").expect("rich").out_dir();
        assert_ne!(mode(&rich.join("bin/kernel")) & 0o100, 0, "exec bit lost");
        assert_eq!(mode(&rich.join("README")) & 0o111, 0);
        assert_eq!(fs::read_link(rich.join("current")).expect("link"), Path::new("bin/kernel"));
        assert_eq!(fs::read_link(rich.join("nested/deep/readme")).expect("link"), Path::new("../../README"));
        assert_eq!(fs::read_to_string(rich.join("current")).expect("follow"), "\x7fELF");
        assert_eq!(
            fs::read_to_string(rich.join(LONG_NAME).join(LONG_NAME).join("file")).expect("long path"),
            "far away"
        );
        assert!(rich.join("empty").is_dir());
        for path in [rich.join("bin/kernel"), rich.join("README")] {
            assert_eq!(mode(&path) & 0o222, 0, "{} is writable", path.display());
        }
        for path in [rich.clone(), rich.join("bin"), rich.join("empty")] {
            assert_ne!(mode(&path) & 0o200, 0, "directories stay removable: {}", path.display());
        }
        let big = b.store.lookup(&closures[1]).expect("lookup").expect("big").out_dir();
        assert_eq!(fs::read(big.join("big.bin")).expect("read"), filler(7, 3 * IO_BUFFER + 123));
        assert_eq!(fs::read_dir(b.store.root().join("tmp")).expect("tmp").count(), 0);
    }

    #[test]
    fn export_is_deterministic() {
        let (a, closures) = sample();
        let first = export_bytes(&a.store, &closures);
        let mut reversed = closures.clone();
        reversed.reverse();
        reversed.push(closures[0]);
        assert_eq!(first, export_bytes(&a.store, &reversed));
        // A store that imported them holds the same entries with other inodes and mtimes, and
        // exports the same bytes.
        let b = TestStore::new();
        b.import(&first).expect("import");
        assert_eq!(first, export_bytes(&b.store, &closures));
    }

    #[test]
    fn export_headers_are_normalised_and_ordered() {
        let (a, closures) = sample();
        let rich = closures[0].to_string();
        let archive = export_bytes(&a.store, &closures[..1]);
        let tar = zstd::decode_all(&archive[..]).expect("decompress");
        let mut listing = Vec::new();
        for member in tar::Archive::new(&tar[..]).entries().expect("entries") {
            let member = member.expect("member");
            let header = member.header();
            assert_eq!(header.mtime().expect("mtime"), 0);
            assert_eq!((header.uid().expect("uid"), header.gid().expect("gid")), (0, 0));
            assert_eq!(header.username_bytes(), Some(&b""[..]));
            assert!(header.as_gnu().is_some());
            let path = String::from_utf8(member.path_bytes().into_owned()).expect("utf-8");
            let path = path.strip_prefix(&format!("{rich}/")).expect("under the closure").to_owned();
            listing.push((path, header.entry_type(), header.mode().expect("mode")));
        }
        let long_dir = format!("out/{LONG_NAME}");
        let expected = [
            ("meta.toml".to_owned(), EntryType::Regular, 0o644),
            ("out/".to_owned(), EntryType::Directory, 0o755),
            ("out/README".to_owned(), EntryType::Regular, 0o644),
            ("out/a/".to_owned(), EntryType::Directory, 0o755),
            ("out/a/b".to_owned(), EntryType::Regular, 0o644),
            // `-` sorts before `.`.
            (format!("{long_dir}/"), EntryType::Directory, 0o755),
            (format!("{long_dir}/{LONG_NAME}/"), EntryType::Directory, 0o755),
            (format!("{long_dir}/{LONG_NAME}/file"), EntryType::Regular, 0o644),
            ("out/a.txt".to_owned(), EntryType::Regular, 0o644),
            ("out/bin/".to_owned(), EntryType::Directory, 0o755),
            ("out/bin/kernel".to_owned(), EntryType::Regular, 0o755),
            ("out/current".to_owned(), EntryType::Symlink, 0o777),
            ("out/empty/".to_owned(), EntryType::Directory, 0o755),
            ("out/long-link".to_owned(), EntryType::Symlink, 0o777),
            ("out/nested/".to_owned(), EntryType::Directory, 0o755),
            ("out/nested/deep/".to_owned(), EntryType::Directory, 0o755),
            ("out/nested/deep/er/".to_owned(), EntryType::Directory, 0o755),
            ("out/nested/deep/er/file".to_owned(), EntryType::Regular, 0o644),
            ("out/nested/deep/readme".to_owned(), EntryType::Symlink, 0o777),
        ];
        assert_eq!(listing, expected);
    }

    #[test]
    fn export_of_a_missing_entry_fails_before_writing() {
        let (a, mut closures) = sample();
        let missing = derivation("never built").closure_hash();
        closures.push(missing);
        let mut out = Vec::new();
        let err = export(&a.store, &closures, &mut out).expect_err("must fail");
        assert!(matches!(err, StoreError::NotInStore { closure } if closure == missing), "{err:?}");
        assert!(out.is_empty());
    }

    #[test]
    fn file_round_trip_replaces_the_archive_atomically() {
        let (a, closures) = sample();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.tar.zst");
        fs::write(&path, "old").expect("write");
        let exported = export_to_file(&a.store, &closures, &path).expect("export");
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("read_dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["store.tar.zst"]);
        assert_eq!(fs::read(&path).expect("read"), export_bytes(&a.store, &closures));
        let b = TestStore::new();
        assert_eq!(import_from_file(&b.store, &path).expect("import"), exported);
        let missing = import_from_file(&b.store, &dir.path().join("nope")).expect_err("missing file");
        assert!(matches!(missing, StoreError::Io { action: "open", .. }), "{missing:?}");
    }

    #[test]
    fn importing_existing_entries_is_idempotent() {
        let (a, closures) = sample();
        let archive = export_bytes(&a.store, &closures);
        // Into the store the entries came from.
        assert_eq!(a.import(&archive).expect("import into the source").entries, 3);
        // Twice into a fresh store.
        let b = TestStore::new();
        let first = b.import(&archive).expect("first import");
        let meta = b.store.root().join("entries").join(closures[0].to_string()).join("meta.toml");
        let before = fs::read(&meta).expect("meta");
        assert_eq!(b.import(&archive).expect("second import"), first);
        assert_eq!(fs::read(&meta).expect("meta"), before);
        for store in [&a, &b] {
            assert_eq!(fs::read_dir(store.store.root().join("entries")).expect("entries").count(), 3);
            assert_eq!(fs::read_dir(store.store.root().join("tmp")).expect("tmp").count(), 0);
            for closure in &closures {
                let entry = store.store.lookup(closure).expect("lookup").expect("present");
                assert!(store.store.verify(&entry).expect("verify"));
            }
        }
    }

    #[test]
    fn rejects_parent_components() {
        let g = good("parent");
        let store = TestStore::new();
        for path in ["../evil".to_owned(), format!("{}/out/../../evil", g.hex), format!("{}/../x", g.hex)] {
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).file(&path, b"evil");
            let err = store.expect_refused(&craft.finish());
            assert_eq!(rejection(&err), &Rejection::ParentComponent, "{path}");
            assert_eq!(rejected_member(&err), path);
            assert!(err.to_string().contains(&path), "{err}");
        }
        assert!(!store.dir.path().join("evil").exists());
    }

    #[test]
    fn rejects_absolute_paths() {
        let g = good("absolute");
        let store = TestStore::new();
        let target = store.dir.path().join("planted");
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(target.to_str().expect("utf-8"), b"evil");
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::AbsolutePath);
        assert!(!target.exists());
        let mut craft = Craft::new();
        craft.file(&format!("/{}/meta.toml", g.hex), &g.meta);
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::AbsolutePath);
    }

    #[test]
    fn rejects_symlinks_to_absolute_targets() {
        let g = good("abs-link");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).link(&format!("{}/out/passwd", g.hex), "/etc/passwd");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::AbsoluteLink { target: "/etc/passwd".to_owned() });
        assert_eq!(rejected_member(&err), format!("{}/out/passwd", g.hex));
    }

    #[test]
    fn rejects_symlinks_leaving_out() {
        let g = good("escape");
        let store = TestStore::new();
        for (link, target) in
            [("out/a", "../../../x"), ("out/a", ".."), ("out/d/e/l", "../../../meta.toml"), ("out/l", "x/../..")]
        {
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).link(&format!("{}/{link}", g.hex), target);
            let err = store.expect_refused(&craft.finish());
            assert_eq!(rejection(&err), &Rejection::EscapingLink { target: target.to_owned() }, "{link} -> {target}");
        }
        // Staying inside is fine, however deep the detour.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).link(&format!("{}/out/d/e/l", g.hex), "../../file");
        let err = store.expect_refused(&craft.finish());
        // (It only fails verification: the link is not part of the recorded output.)
        assert!(matches!(err, StoreError::ArchiveOutputMismatch { .. }), "{err:?}");
    }

    #[test]
    fn rejects_symlink_chains_that_leave_out_once_followed() {
        let g = good("chain");
        let store = TestStore::new();
        let hex = &g.hex;
        // Lexically `a/b/..` is `a`, but `a/b` is a link to `..` (that is `out`), and `out/..`
        // is the entry directory.
        let mut craft = Craft::new();
        craft
            .entry(&g, GOOD_CONTENT)
            .dir(&format!("{hex}/out/a"))
            .link(&format!("{hex}/out/a/b"), "..")
            .link(&format!("{hex}/out/c"), "a/b/..");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::EscapingLink { target: "a/b/..".to_owned() });
        assert_eq!(rejected_member(&err), format!("{hex}/out/c"));
        // A loop is refused too.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).link(&format!("{hex}/out/x"), "y").link(&format!("{hex}/out/y"), "x");
        let err = store.expect_refused(&craft.finish());
        assert!(matches!(rejection(&err), Rejection::TooManyLinks { .. }), "{err:?}");
    }

    #[test]
    fn rejects_hard_links_devices_and_other_member_types() {
        let g = good("types");
        let store = TestStore::new();
        let path = format!("{}/out/odd", g.hex);
        let cases = [
            (EntryType::Link, "hard link"),
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
            (EntryType::GNUSparse, "GNU sparse file"),
            (EntryType::XHeader, "pax extended header"),
            (EntryType::XGlobalHeader, "pax global header"),
        ];
        for (kind, name) in cases {
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).raw(path.as_bytes(), kind, 0o644, 0, b"file", b"");
            let err = store.expect_refused(&craft.finish());
            assert_eq!(rejection(&err), &Rejection::UnsupportedType { kind: name.to_owned() });
            assert_eq!(rejected_member(&err), path);
        }
    }

    #[test]
    fn rejects_top_directories_that_are_not_closures() {
        let g = good("names");
        let store = TestStore::new();
        for top in ["not-a-hash".to_owned(), g.hex.to_uppercase(), g.hex[..63].to_owned(), format!("{}0", g.hex)] {
            let mut craft = Craft::new();
            craft.file(&format!("{top}/meta.toml"), &g.meta).dir(&format!("{top}/out"));
            let err = store.expect_refused(&craft.finish());
            assert_eq!(rejection(&err), &Rejection::NotAClosure, "{top}");
        }
        let mut craft = Craft::new();
        craft.file("meta.toml", &g.meta);
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::NotAClosure);
    }

    #[test]
    fn rejects_members_beside_meta_and_out() {
        let g = good("beside");
        let store = TestStore::new();
        for path in ["extra", "out.txt", "meta.toml.bak", "tmp/file"] {
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).file(&format!("{}/{path}", g.hex), b"x");
            assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::UnexpectedPath, "{path}");
        }
        let mut craft = Craft::new();
        craft.file(&format!("{}/meta.toml", g.hex), &g.meta).link(&format!("{}/out", g.hex), "/tmp");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::WrongType { expected: "a directory" });
    }

    #[test]
    fn rejects_writing_through_symlinks_and_duplicates() {
        let g = good("through");
        let store = TestStore::new();
        let hex = &g.hex;
        let mut craft = Craft::new();
        craft
            .entry(&g, GOOD_CONTENT)
            .link(&format!("{hex}/out/link"), ".")
            .file(&format!("{hex}/out/link/planted"), b"x");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::ParentNotDirectory { parent: "out/link".to_owned() });
        // A file where a directory should be.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&format!("{hex}/out/file/below"), b"x");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::ParentNotDirectory { parent: "out/file".to_owned() });
        // The same path twice, whatever the types.
        for second in [EntryType::Regular, EntryType::Symlink, EntryType::Directory] {
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).raw(format!("{hex}/out/file").as_bytes(), second, 0o644, 0, b"x", b"");
            assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::Duplicate, "{second:?}");
        }
        // Members of one entry split by another entry's.
        let other = good("other");
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).entry(&other, GOOD_CONTENT).file(&format!("{hex}/out/late"), b"x");
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::NotContiguous);
    }

    #[test]
    fn rejects_oversized_headers() {
        let g = good("oversized");
        let store = TestStore::new();
        let hex = &g.hex;
        // A file claiming more than the limit; no data follows, and none is read.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).raw(
            format!("{hex}/out/huge").as_bytes(),
            EntryType::Regular,
            0o644,
            1 << 40,
            b"",
            b"",
        );
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::Oversized { size: 1 << 40, limit: MAX_FILE_BYTES });
        assert!(err.to_string().contains("oversized header"), "{err}");
        // Long-name records longer than any allowed path; the path is not read.
        for len in [MAX_PATH_BYTES + 1, 100_000] {
            let long = format!("{hex}/out/{}", "y".repeat(len - 69));
            let mut craft = Craft::new();
            craft.entry(&g, GOOD_CONTENT).file(&long, b"x");
            let err = store.expect_refused(&craft.finish());
            assert_eq!(rejection(&err), &Rejection::PathTooLong { len });
            assert_eq!(rejected_member(&err), "././@LongLink");
        }
        // A long path under the limit is fine (it only fails verification). (Near the limit,
        // the path in the staging directory would exceed the kernel's own limit.)
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&format!("{hex}/out/{}z", format!("{}/", "y".repeat(199)).repeat(10)), b"x");
        assert!(matches!(store.expect_refused(&craft.finish()), StoreError::ArchiveOutputMismatch { .. }));
        // Symlink targets have the same limit.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).link(&format!("{hex}/out/l"), &"t".repeat(MAX_PATH_BYTES + 1));
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::PathTooLong { len: MAX_PATH_BYTES + 1 });
        // Too many components.
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&format!("{hex}/out/{}z", "z/".repeat(300)), b"x");
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::TooManyComponents { count: 303 });
        // A meta.toml far larger than any real one.
        let mut craft = Craft::new();
        craft.raw(format!("{hex}/meta.toml").as_bytes(), EntryType::Regular, 0o644, 2 << 20, b"", b"");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::Oversized { size: 2 << 20, limit: MAX_META_BYTES });
    }

    #[test]
    fn rejects_incomplete_entries() {
        let g = good("incomplete");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft.dir(&format!("{}/out", g.hex)).file(&format!("{}/out/file", g.hex), GOOD_CONTENT);
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "meta.toml" });
        let mut craft = Craft::new();
        craft.file(&format!("{}/meta.toml", g.hex), &g.meta);
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "out/" });
    }

    #[test]
    fn rejects_tampered_content_naming_both_hashes() {
        let g = good("tampered");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft.entry(&g, b"evil content");
        let err = store.expect_refused(&craft.finish());
        let tampered = tempfile::tempdir().expect("tempdir");
        fs::write(tampered.path().join("file"), b"evil content").expect("write");
        let actual_hash = hash_tree(tampered.path()).expect("hash");
        match &err {
            StoreError::ArchiveOutputMismatch { closure, recorded, actual } => {
                assert_eq!(*closure, g.closure);
                assert_eq!(recorded, &g.output_hash);
                assert_eq!(*actual, actual_hash);
            }
            other => panic!("expected an output mismatch, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&g.output_hash) && message.contains(&actual_hash.to_string()), "{message}");
        // The executable bit is part of the output too.
        let mut craft = Craft::new();
        let hex = &g.hex;
        craft.file(&format!("{hex}/meta.toml"), &g.meta).dir(&format!("{hex}/out")).raw(
            format!("{hex}/out/file").as_bytes(),
            EntryType::Regular,
            0o755,
            GOOD_CONTENT.len() as u64,
            b"",
            GOOD_CONTENT,
        );
        assert!(matches!(store.expect_refused(&craft.finish()), StoreError::ArchiveOutputMismatch { .. }));
    }

    #[test]
    fn rejects_metadata_of_another_derivation() {
        let one = good("one");
        let two = good("two");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft
            .file(&format!("{}/meta.toml", two.hex), &one.meta)
            .dir(&format!("{}/out", two.hex))
            .file(&format!("{}/out/file", two.hex), GOOD_CONTENT);
        let err = store.expect_refused(&craft.finish());
        assert!(
            matches!(err, StoreError::ArchiveClosureMismatch { dir, derivation } if dir == two.closure && derivation == one.closure),
            "{err:?}"
        );
        let mut craft = Craft::new();
        craft.file(&format!("{}/meta.toml", one.hex), b"not = [toml").dir(&format!("{}/out", one.hex));
        assert!(matches!(store.expect_refused(&craft.finish()), StoreError::CorruptMeta { .. }));
    }

    #[test]
    fn rejects_truncated_and_corrupt_streams() {
        let (a, closures) = sample();
        let archive = export_bytes(&a.store, &closures);
        let store = TestStore::new();
        for cut in [0, 10, archive.len() / 3, archive.len() / 2, archive.len() - 5, archive.len() - 1] {
            let err = store.expect_refused(&archive[..cut]);
            assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "cut at {cut}: {err:?}");
        }
        let mut flipped = archive.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        store.expect_refused(&flipped);
        let mut trailing = archive.clone();
        trailing.extend_from_slice(b"garbage");
        assert!(matches!(store.expect_refused(&trailing), StoreError::ArchiveCorrupt { .. }));
        assert!(matches!(store.expect_refused(b"not zstd at all"), StoreError::ArchiveCorrupt { .. }));
    }

    #[test]
    fn rejects_tar_streams_without_their_end() {
        let g = good("no-end");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT);
        // A complete zstd frame around a tar stream cut after its last member...
        let tar = craft.tar.get_ref().clone();
        let err = store.expect_refused(&zstd::encode_all(&tar[..], 3).expect("compress"));
        assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
        // ...or inside one, or with junk after the end-of-archive marker.
        let err = store.expect_refused(&zstd::encode_all(&tar[..tar.len() - 700], 3).expect("compress"));
        assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
        let mut junk = craft.tar.into_inner().expect("finish");
        junk.extend_from_slice(&[1; BLOCK]);
        let err = store.expect_refused(&zstd::encode_all(&junk[..], 3).expect("compress"));
        assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
        // And a header whose checksum does not match.
        let mut tar = tar.clone();
        tar[0] ^= 1;
        let err = store.expect_refused(&zstd::encode_all(&tar[..], 3).expect("compress"));
        assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
    }

    #[test]
    fn one_bad_entry_keeps_the_good_one_out() {
        let good_one = good("fine");
        let bad_one = good("spoilt");
        let store = TestStore::new();
        let mut craft = Craft::new();
        craft.entry(&good_one, GOOD_CONTENT).entry(&bad_one, b"spoilt content");
        let err = store.expect_refused(&craft.finish());
        assert!(matches!(err, StoreError::ArchiveOutputMismatch { closure, .. } if closure == bad_one.closure));
        assert!(store.store.lookup(&good_one.closure).expect("lookup").is_none());
        // And a structural rejection after the good entry.
        let mut craft = Craft::new();
        craft.entry(&good_one, GOOD_CONTENT).link(&format!("{}/out/x", bad_one.hex), "/etc/passwd");
        store.expect_refused(&craft.finish());
        // The same good entry alone is accepted.
        let mut craft = Craft::new();
        craft.entry(&good_one, GOOD_CONTENT);
        assert_eq!(store.import(&craft.finish()).expect("import").entries, 1);
        let entry = store.store.lookup(&good_one.closure).expect("lookup").expect("published");
        assert!(store.store.verify(&entry).expect("verify"));
    }

    #[test]
    fn symlink_resolution_follows_links_and_is_bounded() {
        let nodes: HashMap<Vec<u8>, Node> = [
            (&b"out"[..], Node::Dir),
            (b"out/a", Node::Dir),
            (b"out/a/up", Node::Symlink(b"..".to_vec())),
            (b"out/f", Node::File),
        ]
        .into_iter()
        .map(|(key, node)| (key.to_vec(), node))
        .collect();
        let resolve = |key: &[u8], target: &[u8]| resolve_link(&nodes, key, target, &mut 1000);
        let escaping = |target: &str| Err(Rejection::EscapingLink { target: target.to_owned() });
        assert_eq!(resolve(b"out/l", b"a/up/a/up/f"), Ok(()));
        assert_eq!(resolve(b"out/a/b/l", b"../../a/./up//f"), Ok(()));
        assert_eq!(resolve(b"out/l", b"a/up/.."), escaping("a/up/.."));
        assert_eq!(resolve(b"out/a/l", b"up/../a"), escaping("up/../a"));
        assert_eq!(resolve(b"out/a/l", b"../.."), escaping("../.."));
        // The kernel stops at a file or a missing name (ENOTDIR, ENOENT).
        assert_eq!(resolve(b"out/l", b"f/../.."), Ok(()));
        assert_eq!(resolve(b"out/l", b"missing/../.."), Ok(()));
        let mut budget = 3;
        assert_eq!(resolve_link(&nodes, b"out/l", b"a/up/a/up/f", &mut budget), Err(Rejection::TooComplexLinks));
    }

    #[test]
    fn member_paths_are_checked_component_by_component() {
        let hex = derivation("x").closure_hash().to_string();
        let ok = |path: &str, dir| split_member(path.as_bytes(), dir).map(|(_, rest)| lossy(rest));
        assert_eq!(ok(&format!("{hex}/out/a/b"), false), Ok("out/a/b".to_owned()));
        assert_eq!(ok(&format!("{hex}/out/"), true), Ok("out".to_owned()));
        assert_eq!(ok(&format!("{hex}/"), true), Ok(String::new()));
        assert_eq!(ok(&format!("{hex}/out/a/"), false), Err(bad_header("only a directory's path may end in `/`")));
        assert_eq!(ok(&format!("{hex}//out"), false), Err(Rejection::EmptyComponent));
        assert_eq!(ok(&format!("{hex}/./out"), false), Err(Rejection::EmptyComponent));
        assert_eq!(ok(&format!("./{hex}/out"), false), Err(Rejection::EmptyComponent));
        assert_eq!(ok("", false), Err(Rejection::EmptyComponent));
        assert_eq!(check_link_target(b"out/a/l", b"../b/./c//d"), Ok(()));
        assert_eq!(
            check_link_target(b"out/l", b"a/../../b"),
            Err(Rejection::EscapingLink { target: "a/../../b".to_owned() })
        );
        assert_eq!(check_link_target(b"out/l", b""), Err(bad_header("a symlink without a target")));
    }

    /// Times export + import of a generated ~200 MiB store against `tar -I 'zstd -T0'`.
    /// Run with `cargo test -p kiln-store --lib archive -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: slow, and needs tar and zstd"]
    fn bench_against_tar_and_zstd() {
        // `KILN_ARCHIVE_BENCH_FULL=1` uses the shape of `cargo xtask bench`: 1 GiB in 20,000
        // files and 10 entries; the default is a fifth of that.
        let full = std::env::var_os("KILN_ARCHIVE_BENCH_FULL").is_some();
        let (small, large, large_len, parts) = if full { (19_900, 100, 9_106_000, 10) } else { (4000, 20, 9 << 20, 4) };
        let a = TestStore::new();
        let mut closures = Vec::new();
        for part in 0..parts {
            let entry = a.build(&format!("bench-{part}"), |out| {
                for i in (part..small + large).step_by(parts) {
                    let dir = out.join(format!("dir{:03}", i % 200));
                    fs::create_dir_all(&dir)?;
                    let len = if i < small { 1024 + (i * 7919) % (14 * 1024) } else { large_len };
                    fs::write(dir.join(format!("file{i:05}")), filler(i as u64, len))?;
                }
                Ok(())
            });
            closures.push(entry.closure);
        }
        let scratch = tempfile::tempdir().expect("tempdir");
        let archive = scratch.path().join("kiln.tar.zst");
        let started = Instant::now();
        let exported = export_to_file(&a.store, &closures, &archive).expect("export");
        let export_took = started.elapsed();
        let b = TestStore::new();
        let started = Instant::now();
        import_from_file(&b.store, &archive).expect("import");
        let import_took = started.elapsed();
        let kiln_size = fs::metadata(&archive).expect("stat").len();

        let tarball = scratch.path().join("baseline.tar.zst");
        let entries = a.store.root().join("entries");
        let run = |script: String| {
            let started = Instant::now();
            let status = Command::new("sh").args(["-c", &script]).status().expect("sh");
            assert!(status.success(), "{script}");
            started.elapsed()
        };
        let create = run(format!("tar -I 'zstd -T0' -cf {} -C {} .", tarball.display(), entries.display()));
        let unpacked = scratch.path().join("unpacked");
        fs::create_dir_all(&unpacked).expect("mkdir");
        let extract = run(format!("tar -I 'zstd -T0' -xf {} -C {}", tarball.display(), unpacked.display()));
        let tar_size = fs::metadata(&tarball).expect("stat").len();
        let _ = crate::store::remove_tree(&unpacked);
        eprintln!(
            "{} MiB in {} entries\nkiln: export {:.2}s + import {:.2}s = {:.2}s, {} bytes\n\
             tar:  create {:.2}s + extract {:.2}s = {:.2}s, {} bytes",
            exported.bytes >> 20,
            exported.entries,
            export_took.as_secs_f64(),
            import_took.as_secs_f64(),
            (export_took + import_took).as_secs_f64(),
            kiln_size,
            create.as_secs_f64(),
            extract.as_secs_f64(),
            (create + extract).as_secs_f64(),
            tar_size,
        );
    }
}
