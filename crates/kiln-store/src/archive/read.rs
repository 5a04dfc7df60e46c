//! Import: a hostile stream extracted into a staging directory (one thread decompresses, one
//! extracts, several write files), each entry verified as it completes, and everything
//! published only when the whole stream verified.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use tar::{EntryType, Header};

use crate::{ClosureHash, Store, StoreError, store::sync_dir};

use super::{
    ArchiveSummary, BLOCK, CHUNKS_IN_FLIGHT, Failure, IO_BUFFER, ImportLimits, Kind, LINK_STEPS_BASE,
    LINK_STEPS_PER_NODE, MAX_FILE_BYTES, MAX_PATH_BYTES, MAX_TRAILING_ZEROS, NODE_COST, Node, PIECE, PIECES_IN_FLIGHT,
    StagedEntry, corrupt, corrupt_msg, join,
    listing::{self, Listed},
    reject, shown, stopped,
    verify::{
        Rejection, bad_header, check_layout, check_link_target, check_meta, member_kind, resolve_link, split_member,
        verify_all,
    },
};

/// Reads an archive made by [`export`] and publishes its entries, within the default
/// [`ImportLimits`].
///
/// Nothing is published unless every member is acceptable, the stream is complete and every
/// entry verifies; entries already in the store are skipped and count as imported.
///
/// [`export`]: crate::export
pub fn import(store: &Store, reader: impl Read) -> Result<ArchiveSummary, StoreError> {
    import_with_limits(store, reader, &ImportLimits::default())
}

/// [`import`] within the given limits: the archive's entries may take at most
/// `limits.max_bytes`, and at most the free space of the store's file system less
/// `limits.keep_free`. An archive promising more is refused before its files are written.
pub fn import_with_limits(
    store: &Store,
    reader: impl Read,
    limits: &ImportLimits,
) -> Result<ArchiveSummary, StoreError> {
    let _gc_guard = store.lock_shared_gc()?;
    let staging = Staging::create(store)?;
    let budget = Budget::measure(store.root().join("tmp"), limits)?;
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
            let extractor = Extractor::new(root, entry_tx, writers_queues, failure, budget);
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

fn writer_threads() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(2, 8)
}

/// Part of a regular file, written by one of the writer threads: page-cache writes (and
/// hashing) are what extraction spends its time on, and they scale with threads.
struct Piece {
    target: PieceTarget,
    data: Vec<u8>,
    /// The hash the file must have, when it is an output file; its pieces arrive in order at
    /// one writer, which hashes them as it writes.
    check: Option<Arc<ContentCheck>>,
    /// Whether this is the file's last piece, after which its hash is compared.
    last: bool,
    /// Dropped once the piece is written; the verifier waits for all of an entry's.
    _written: Option<mpsc::Sender<()>>,
}

/// A file's listed content hash and the hash of what was written of it so far.
struct ContentCheck {
    member: Vec<u8>,
    expected: [u8; 32],
    hasher: Mutex<blake3::Hasher>,
}

impl ContentCheck {
    fn new(member: &[u8], expected: [u8; 32]) -> Arc<Self> {
        Arc::new(Self { member: member.to_vec(), expected, hasher: Mutex::new(blake3::Hasher::new()) })
    }

    /// Hashes the next piece; after the last one, fails unless the file has its listed hash.
    fn update(&self, data: &[u8], last: bool) -> Result<(), StoreError> {
        let mut hasher = self.hasher.lock().unwrap_or_else(PoisonError::into_inner);
        hasher.update(data);
        if last && hasher.finalize().as_bytes() != &self.expected {
            return Err(reject(&self.member, Rejection::ContentMismatch));
        }
        Ok(())
    }
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
        if let Some(check) = &self.check {
            check.update(&self.data, self.last)?;
        }
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

/// How many bytes the entries of one import may still take on disk.
pub(super) struct Budget {
    /// `ImportLimits::max_bytes`.
    limit: u64,
    /// Free bytes of the store's file system when the import started.
    free: u64,
    /// `ImportLimits::keep_free`.
    keep_free: u64,
    /// Where `free` was measured.
    dir: PathBuf,
    /// What the entries so far take.
    spent: u64,
}

impl Budget {
    /// Measures the free space of the file system holding `dir` (the store's `tmp/`).
    fn measure(dir: PathBuf, limits: &ImportLimits) -> Result<Self, StoreError> {
        let stat =
            rustix::fs::statvfs(&dir).map_err(|e| StoreError::io("measure the free space of", &dir, e.into()))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        Ok(Self { limit: limits.max_bytes, free, keep_free: limits.keep_free, dir, spent: 0 })
    }

    /// Takes `cost` bytes for the entry `closure` named `name`, or fails naming the bound it
    /// would cross.
    fn spend(&mut self, closure: ClosureHash, name: &str, cost: u64) -> Result<(), StoreError> {
        let needed = self.spent.saturating_add(cost);
        if needed > self.limit {
            return Err(StoreError::ArchiveTooLarge {
                closure,
                name: shown(name.as_bytes()),
                needed,
                limit: self.limit,
            });
        }
        if needed > self.free.saturating_sub(self.keep_free) {
            return Err(StoreError::ArchiveNoSpace {
                closure,
                name: shown(name.as_bytes()),
                needed,
                free: self.free,
                keep_free: self.keep_free,
                dir: self.dir.clone(),
            });
        }
        self.spent = needed;
        Ok(())
    }
}

struct Extractor<'a> {
    root: &'a Path,
    finished_tx: mpsc::Sender<StagedEntry>,
    writers: WriterQueues<'a>,
    failure: &'a Failure,
    budget: Budget,
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
        budget: Budget,
    ) -> Self {
        Self {
            root,
            finished_tx,
            writers,
            failure,
            budget,
            current: None,
            current_written: None,
            finished: HashSet::new(),
            bytes: 0,
        }
    }

    fn send(
        &self,
        writer: usize,
        target: PieceTarget,
        data: Vec<u8>,
        check: Option<&Arc<ContentCheck>>,
        last: bool,
    ) -> Result<(), StoreError> {
        if self.failure.failed() {
            return Err(stopped());
        }
        let piece = Piece { target, data, check: check.cloned(), last, _written: self.current_written.clone() };
        self.writers.send(writer, piece)
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
                    message: format!("the header of `{}` has a wrong checksum", shown(&name)),
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
            self.member(src, &path, kind, size, mode, link).map_err(|err| self.naming_entry(err))?;
        }
        drain(src)?;
        self.finish_current()?;
        Ok(self.bytes)
    }

    /// Adds the human name of the entry being extracted to a rejection, once its metadata
    /// was read.
    fn naming_entry(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::ArchiveRejected { member, reason, entry: None } => {
                let entry = self.current.as_ref().and_then(|e| e.meta.as_ref()).map(|meta| shown(meta.name.as_bytes()));
                StoreError::ArchiveRejected { member, reason, entry }
            }
            other => other,
        }
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
        match rest {
            b"meta.toml" => return self.meta(src, path, size),
            b"listing" => return self.listing(src, path, size),
            _ => {}
        }
        let Some(entry) = self.current.as_mut() else {
            return Err(stopped());
        };
        // The entry directory and `out` once each; anything else once, and only as listed.
        if !entry.explicit.insert(rest.to_vec()) {
            return Err(reject(path, Rejection::Duplicate));
        }
        if rest.is_empty() {
            return Ok(()); // The entry directory itself, which `enter` made.
        }
        if entry.meta.is_none() {
            return Err(reject(path, Rejection::Incomplete { missing: "meta.toml" }));
        }
        let Some(listing) = &entry.listing else {
            return Err(reject(path, Rejection::Incomplete { missing: "listing" }));
        };
        let entry_dir = self.root.join(&entry.hex);
        // Parents, made here unless the archive made them, and listed as directories.
        for (i, _) in rest.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let parent = &rest[..i];
            match entry.nodes.get(parent) {
                Some(Node::Dir) => {}
                Some(_) => return Err(reject(path, Rejection::ParentNotDirectory { parent: shown(parent) })),
                None => {
                    let parent_member = [entry.hex.as_bytes(), b"/", parent].concat();
                    match listing.get(parent) {
                        Some(Listed::Dir) => {}
                        Some(other) => {
                            return Err(reject(&parent_member, Rejection::ListedAs { listed: other.describe() }));
                        }
                        None => return Err(reject(&parent_member, Rejection::NotListed)),
                    }
                    make_dir(&entry_dir.join(OsStr::from_bytes(parent)))?;
                    entry.nodes.insert(parent.to_vec(), Node::Dir);
                }
            }
        }
        match entry.nodes.get(rest) {
            Some(Node::Dir) if kind == Kind::Dir => return Ok(()), // Made as a parent before.
            Some(_) => return Err(reject(path, Rejection::Duplicate)),
            None => {}
        }
        let executable = mode & 0o100 != 0;
        let content = if rest == b"out" {
            None
        } else {
            Some(
                held_to_listing(listing, rest, kind, size, executable, target.as_deref())
                    .map_err(|r| reject(path, r))?,
            )
        };
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
            let check = content.flatten().map(|hash| ContentCheck::new(path, hash));
            self.file(src, path, dest, size, executable, check)?;
        }
        Ok(())
    }

    /// Reads `meta.toml` into memory, checks it names the entry's derivation, and writes it.
    fn meta(&mut self, src: &mut impl BufRead, path: &[u8], size: u64) -> Result<(), StoreError> {
        let Some(entry) = self.current.as_mut() else {
            return Err(stopped());
        };
        if entry.meta.is_some() {
            return Err(reject(path, Rejection::Duplicate));
        }
        if !entry.explicit.iter().all(|rest| rest.is_empty()) {
            return Err(reject(path, bad_header("`meta.toml` must be the entry's first member")));
        }
        // At most MAX_META_BYTES (check_layout).
        let text = read_vec(src, size as usize, path)?;
        skip_padding(src, size, path)?;
        let meta = check_meta(entry.closure, &entry.hex, &text)?;
        let dest = self.root.join(&entry.hex).join("meta.toml");
        entry.nodes.insert(b"meta.toml".to_vec(), Node::File);
        entry.meta = Some(meta);
        let writer = self.writers.least_busy();
        self.send(writer, PieceTarget::NewFile { path: dest, executable: false }, text, None, true)?;
        self.bytes += size;
        Ok(())
    }

    /// Reads the entry's listing into memory, checks it hashes to the output hash `meta.toml`
    /// records, and takes what it promises from the budget. It is not written.
    fn listing(&mut self, src: &mut impl BufRead, path: &[u8], size: u64) -> Result<(), StoreError> {
        let Some(entry) = self.current.as_mut() else {
            return Err(stopped());
        };
        let Some(meta) = &entry.meta else {
            return Err(reject(path, Rejection::OutOfOrder { expected: "meta.toml" }));
        };
        if entry.listing.is_some() {
            return Err(reject(path, Rejection::Duplicate));
        }
        // At most MAX_LISTING_BYTES (check_layout).
        let bytes = read_vec(src, size as usize, path)?;
        skip_padding(src, size, path)?;
        let listing = listing::decode(&bytes).map_err(|reason| reject(path, reason))?;
        if listing.output_hash.to_string() != meta.output_hash {
            return Err(StoreError::ArchiveOutputMismatch {
                closure: entry.closure,
                recorded: meta.output_hash.clone(),
                actual: listing.output_hash,
            });
        }
        // meta.toml, the entry directory and `out`, and every listed path.
        let nodes = listing.nodes.len() as u64 + 3;
        let cost = listing.file_bytes.saturating_add(NODE_COST.saturating_mul(nodes)).saturating_add(size);
        self.budget.spend(entry.closure, &meta.name, cost)?;
        let by_path = listing.nodes.into_iter().map(|(path, listed)| ([b"out/", &path[..]].concat(), listed)).collect();
        entry.listing = Some(by_path);
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
        check: Option<Arc<ContentCheck>>,
    ) -> Result<(), StoreError> {
        let piece_len = |left: u64| usize::try_from(left).map_or(PIECE, |left| left.min(PIECE));
        let writer = self.writers.least_busy();
        let check = check.as_ref();
        if size <= PIECE as u64 {
            let data = read_vec(src, piece_len(size), member)?;
            self.send(writer, PieceTarget::NewFile { path: dest, executable }, data, check, true)?;
        } else {
            let file = Arc::new((create_file(&dest, executable)?, dest));
            let mut offset = 0;
            while offset < size {
                let data = read_vec(src, piece_len(size - offset), member)?;
                let len = data.len() as u64;
                let last = offset + len == size;
                self.send(writer, PieceTarget::At { file: Arc::clone(&file), offset }, data, check, last)?;
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
        self.current = Some(StagedEntry {
            closure,
            hex,
            nodes: HashMap::new(),
            written,
            meta: None,
            listing: None,
            explicit: HashSet::new(),
        });
        Ok(())
    }

    /// Checks that the entry being extracted is whole (everything listed is there) and its
    /// symlinks stay inside it, and hands it to the verifier.
    fn finish_current(&mut self) -> Result<(), StoreError> {
        let Some(entry) = self.current.take() else { return Ok(()) };
        self.current_written = None;
        let member = |rest: &[u8]| [entry.hex.as_bytes(), b"/", rest].concat();
        if entry.meta.is_none() {
            return Err(reject(&member(b""), Rejection::Incomplete { missing: "meta.toml" }));
        }
        let Some(listing) = &entry.listing else {
            return Err(reject(&member(b""), Rejection::Incomplete { missing: "listing" }));
        };
        if !matches!(entry.nodes.get(&b"out"[..]), Some(Node::Dir)) {
            return Err(reject(&member(b""), Rejection::Incomplete { missing: "out/" }));
        }
        // Every extracted path below `out/` was listed, so equal counts mean all were there.
        let below_out = entry.nodes.keys().filter(|key| key.starts_with(b"out/")).count();
        if below_out != listing.len() {
            let mut missing: Vec<&Vec<u8>> = listing.keys().filter(|key| !entry.nodes.contains_key(*key)).collect();
            missing.sort();
            let first = missing.first().map(|key| key.as_slice()).unwrap_or(b"out/");
            return Err(reject(&member(first), Rejection::MissingListed));
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

/// Holds a member below `out/` to its entry's listing before any of its data is read: listed,
/// as the same type, with the same executable bit, target or size. Returns a file's listed
/// content hash.
fn held_to_listing(
    listing: &HashMap<Vec<u8>, Listed>,
    rest: &[u8],
    kind: Kind,
    size: u64,
    executable: bool,
    target: Option<&[u8]>,
) -> Result<Option<[u8; 32]>, Rejection> {
    let listed = listing.get(rest).ok_or(Rejection::NotListed)?;
    let mismatch = || Rejection::ListedAs { listed: listed.describe() };
    match (listed, kind) {
        (Listed::Dir, Kind::Dir) => Ok(None),
        (Listed::Symlink { target: listed }, Kind::Symlink) => {
            if target == Some(listed.as_slice()) {
                Ok(None)
            } else {
                Err(Rejection::LinkMismatch { listed: shown(listed) })
            }
        }
        (Listed::File { executable: listed_exec, content, size: listed_size }, Kind::File) => {
            if *listed_exec != executable {
                return Err(mismatch());
            }
            if *listed_size != size {
                return Err(Rejection::SizeMismatch { size, listed: *listed_size });
            }
            Ok(Some(*content))
        }
        _ => Err(mismatch()),
    }
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
    StoreError::ArchiveCorrupt { message: format!("the tar stream ends inside `{}`", shown(member)) }
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
/// after the end-of-archive marker; only zeros may follow the marker, and at most
/// [`MAX_TRAILING_ZEROS`] of them (a stream of zeros is a cheap way to keep import busy).
fn drain(src: &mut impl BufRead) -> Result<(), StoreError> {
    let mut seen: u64 = 0;
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
        seen += n as u64;
        if seen > MAX_TRAILING_ZEROS {
            return Err(corrupt_msg(&format!(
                "more than {} KiB of zeros follow the end-of-archive marker",
                MAX_TRAILING_ZEROS >> 10
            )));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import: verification and syncing.
