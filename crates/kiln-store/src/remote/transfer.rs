//! Moving entries between the local store and a remote: fetch (verify everything before the
//! store publishes it) and push (blobs the remote lacks, then the signed manifest).

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use object_store::{ObjectStoreExt as _, PutPayload};

use crate::{
    ClosureHash, Entry, OutputHash,
    remote::{
        CONCURRENT_REQUESTS, NoticeSink, Remote, RemoteNotice,
        manifest::{
            Blob, MAX_MANIFEST_BYTES, Manifest, ManifestError, ManifestKind, REMOTE_LAYOUT, blob_path, layout_path,
            manifest_path,
        },
        signing::{PublicKey, SecretKey},
    },
    store::Substitution,
    tree::{Node, hash_nodes, list_tree},
};

/// The zstd level of blobs: fast to make, several times smaller for binaries and images.
const BLOB_LEVEL: i32 = 3;

/// Why a fetch did not produce an entry.
pub(crate) enum FetchError {
    /// The remote failed to answer.
    Remote(object_store::Error),
    /// What the remote holds failed verification.
    Refused(String),
    /// The entry is unsigned, or signed by no trusted key: a question of trust, which no
    /// repair answers.
    Untrusted(String),
    /// Writing the files here failed.
    Local(String),
}

/// One line for a remote's error: object_store's chain of causes, joined.
pub(crate) fn describe(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    // S3's XML bodies and the retry settings make some of these very long.
    const LIMIT: usize = 400;
    if text.len() > LIMIT {
        let cut = (0..=LIMIT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Empties a directory a failed fetch wrote into, so the next remote starts clean.
pub(crate) fn empty_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = crate::store::remove_tree(&entry.path());
        }
    }
}

/// Fetches the entry `closure` from `remote` into `out`: its manifest (signature, metadata and
/// listing checked), then every blob (its BLAKE3 checked), `CONCURRENT_REQUESTS` at a time.
/// `Ok(None)` when the remote does not have it. Compressed blobs are staged beside `out` and
/// gone when this returns.
pub(crate) async fn fetch(
    remote: &Remote,
    closure: &ClosureHash,
    trusted: &[PublicKey],
    out: &Path,
) -> Result<Option<Substitution>, FetchError> {
    let staging = out.with_file_name("incoming");
    let fetched = fetch_staged(remote, closure, trusted, out, &staging).await;
    let _ = crate::store::remove_tree(&staging);
    fetched
}

async fn fetch_staged(
    remote: &Remote,
    closure: &ClosureHash,
    trusted: &[PublicKey],
    out: &Path,
    staging: &Path,
) -> Result<Option<Substitution>, FetchError> {
    let started = std::time::Instant::now();
    let manifest = {
        let _slot = remote.slots.acquire().await;
        match remote.store.get(&manifest_path(closure)).await {
            Ok(found) if found.meta.size > MAX_MANIFEST_BYTES => {
                return Err(FetchError::Refused(format!("its manifest is {} bytes, over the limit", found.meta.size)));
            }
            Ok(found) => found.bytes().await.map_err(FetchError::Remote)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(FetchError::Remote(error)),
        }
    };
    let (manifest, meta) = Manifest::verified(&manifest, closure, trusted).map_err(|e| match e {
        ManifestError::Unsigned | ManifestError::Untrusted { .. } => FetchError::Untrusted(e.to_string()),
        e => FetchError::Refused(format!("its manifest: {e}")),
    })?;
    let local =
        |what: &str, path: &Path, e: std::io::Error| FetchError::Local(format!("{what} `{}`: {e}", path.display()));
    for file in &manifest.files {
        if let ManifestKind::Dir = file.kind {
            let path = out.join(&file.path);
            fs::create_dir_all(&path).map_err(|e| local("cannot create", &path, e))?;
        }
    }
    fs::create_dir_all(staging).map_err(|e| local("cannot create", staging, e))?;
    let blobs = manifest.blobs(out);
    let hashes: Vec<[u8; 32]> = blobs.iter().map(|blob| *blob.hash.as_bytes()).collect();
    let downloaded = stream::iter(blobs.into_iter().map(|blob| fetch_blob(remote, blob, staging)))
        .buffer_unordered(CONCURRENT_REQUESTS)
        .try_fold(0u64, |total, bytes| async move { Ok(total + bytes) })
        .await?;
    for file in &manifest.files {
        if let ManifestKind::Symlink { target } = &file.kind {
            let path = out.join(&file.path);
            symlink(target, &path).map_err(|e| local("cannot create symlink", &path, e))?;
        }
    }
    if let Ok(mut present) = remote.present.lock() {
        present.extend(hashes);
    }
    Ok(Some(Substitution {
        meta_text: manifest.meta,
        meta,
        from: remote.url.clone(),
        bytes: downloaded,
        duration: started.elapsed(),
    }))
}

/// Downloads one blob to `staging` (never more than zstd's bound for its size), then
/// decompresses it into its first target while hashing, and copies it to the others.
/// Returns the bytes downloaded.
async fn fetch_blob(remote: &Remote, blob: Blob, staging: &Path) -> Result<u64, FetchError> {
    let Blob { hash, size, targets } = blob;
    let _slot = remote.slots.acquire().await;
    let found = match remote.store.get(&blob_path(&hash)).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(FetchError::Refused(format!("blob {hash} is missing")));
        }
        Err(error) => return Err(FetchError::Remote(error)),
    };
    let limit = compressed_limit(size);
    if found.meta.size > limit {
        return Err(FetchError::Refused(format!(
            "blob {hash} is {} bytes compressed, more than {size} bytes of content can take",
            found.meta.size
        )));
    }
    let compressed_path = staging.join(format!("{hash}.zst"));
    let local = |e: std::io::Error| FetchError::Local(format!("cannot write `{}`: {e}", compressed_path.display()));
    let mut file = tokio::fs::File::create(&compressed_path).await.map_err(local)?;
    let mut received = 0u64;
    let mut chunks = found.into_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(FetchError::Remote)?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(FetchError::Refused(format!("blob {hash} is longer than its size allows")));
        }
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(local)?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(local)?;
    drop(file);
    tokio::task::spawn_blocking(move || {
        let written = unpack_blob(&compressed_path, &hash, size, &targets);
        let _ = fs::remove_file(&compressed_path);
        written
    })
    .await
    .map_err(|e| FetchError::Local(e.to_string()))??;
    Ok(received)
}

/// The most bytes zstd may take for `size` bytes of content, with room for frame headers.
fn compressed_limit(size: u64) -> u64 {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    u64::try_from(zstd::zstd_safe::compress_bound(size)).unwrap_or(u64::MAX).saturating_add(4096)
}

/// Decompresses a staged blob into its first target (never past its declared size), checks
/// its length and hash, and copies it to the other targets.
fn unpack_blob(
    compressed: &Path,
    hash: &blake3::Hash,
    size: u64,
    targets: &[(PathBuf, bool)],
) -> Result<(), FetchError> {
    let Some((first, _)) = targets.first() else { return Ok(()) };
    let local = |path: &Path, e: std::io::Error| FetchError::Local(format!("cannot write `{}`: {e}", path.display()));
    let input = fs::File::open(compressed).map_err(|e| local(compressed, e))?;
    let decoder = zstd::stream::Decoder::new(input).map_err(|e| FetchError::Refused(format!("blob {hash}: {e}")))?;
    let mut reader = decoder.take(size.saturating_add(1));
    let mut output = fs::File::create(first).map_err(|e| local(first, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|e| FetchError::Refused(format!("blob {hash} does not decompress: {e}")))?;
        if read == 0 {
            break;
        }
        length += read as u64;
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read]).map_err(|e| local(first, e))?;
    }
    let actual = hasher.finalize();
    if length != size {
        return Err(FetchError::Refused(format!(
            "blob {hash} holds {} bytes, not the {size} its manifest says: tampered or corrupt",
            if length > size { format!("more than {size}") } else { length.to_string() }
        )));
    }
    if actual != *hash {
        return Err(FetchError::Refused(format!(
            "blob {hash} holds other content (its BLAKE3 is {actual}): tampered or corrupt"
        )));
    }
    drop(output);
    for (path, executable) in targets.iter().skip(1) {
        fs::copy(first, path).map_err(|e| local(path, e))?;
        set_mode(path, *executable).map_err(|e| local(path, e))?;
    }
    set_mode(first, targets[0].1).map_err(|e| local(first, e))
}

fn set_mode(path: &Path, executable: bool) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }))
}

/// Whether the object at `location` exists (one HEAD, within the remote's request bound).
pub(crate) async fn exists(remote: &Remote, location: &object_store::path::Path) -> Result<bool, object_store::Error> {
    let _slot = remote.slots.acquire().await;
    match remote.store.head(location).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Whether `remote` holds a kiln store: its `kiln-v1/layout.json` is there.
pub(crate) async fn has_layout(remote: &Remote) -> Result<bool, object_store::Error> {
    exists(remote, &layout_path()).await
}

/// Writes `kiln-v1/layout.json` unless it is there.
async fn ensure_layout(remote: &Remote) -> Result<(), PushError> {
    if has_layout(remote).await.map_err(PushError::Remote)? {
        return Ok(());
    }
    let _slot = remote.slots.acquire().await;
    let marker = format!("{{\"layout\":\"{REMOTE_LAYOUT}\"}}\n");
    remote.store.put(&layout_path(), PutPayload::from(marker)).await.map_err(PushError::Remote)?;
    Ok(())
}

/// What pushing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushTally {
    /// Entries whose manifest was uploaded.
    pub entries_pushed: usize,
    /// Entries the remote had already.
    pub entries_present: usize,
    /// Entries that failed.
    pub entries_failed: usize,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs the remote had already.
    pub blobs_present: usize,
    /// Compressed bytes uploaded.
    pub bytes_uploaded: u64,
    /// Bytes of the files those blobs hold.
    pub bytes_read: u64,
}

impl PushTally {
    /// Adds another tally.
    pub fn add(&mut self, other: &Self) {
        self.entries_pushed += other.entries_pushed;
        self.entries_present += other.entries_present;
        self.entries_failed += other.entries_failed;
        self.blobs_uploaded += other.blobs_uploaded;
        self.blobs_present += other.blobs_present;
        self.bytes_uploaded += other.bytes_uploaded;
        self.bytes_read += other.bytes_read;
    }
}

/// Why a push failed.
enum PushError {
    Remote(object_store::Error),
    Local(String),
}

/// How to push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PushMode {
    /// Skip entries whose manifest is there and blobs that are there.
    #[default]
    Missing,
    /// Upload every blob and the manifest again, whatever the remote holds (mends a remote
    /// whose blobs were lost or damaged).
    Repair,
}

/// Pushes one entry, turning a failure into a notice (and a remote failure into the remote
/// being left alone for the rest of the run).
pub(crate) async fn push_noting(
    remote: &Remote,
    entry: &Entry,
    key: &Arc<SecretKey>,
    notice: &NoticeSink,
    mode: PushMode,
) -> PushTally {
    if remote.is_down() {
        return PushTally { entries_failed: 1, ..PushTally::default() };
    }
    match push(remote, entry, key, mode).await {
        Ok(tally) => tally,
        Err(error) => {
            let message = match error {
                PushError::Remote(error) => {
                    if remote.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        return PushTally { entries_failed: 1, ..PushTally::default() };
                    }
                    describe(&error)
                }
                PushError::Local(message) => message,
            };
            notice(RemoteNotice::PushFailed { remote: remote.url.clone(), name: entry.meta.name.clone(), message });
            PushTally { entries_failed: 1, ..PushTally::default() }
        }
    }
}

/// Pushes one entry: nothing when its manifest is there; else the blobs the remote lacks,
/// `CONCURRENT_REQUESTS` at a time, then the signed manifest.
async fn push(remote: &Remote, entry: &Entry, key: &SecretKey, mode: PushMode) -> Result<PushTally, PushError> {
    let mut tally = PushTally::default();
    remote.layout_written.get_or_try_init(|| ensure_layout(remote)).await?;
    if mode == PushMode::Missing && exists(remote, &manifest_path(&entry.closure)).await.map_err(PushError::Remote)? {
        tally.entries_present = 1;
        return Ok(tally);
    }
    let (dir, closure) = (entry.dir.clone(), entry.closure);
    let (nodes, meta_text) = tokio::task::spawn_blocking(move || {
        let nodes = list_tree(&dir.join("out")).map_err(|e| PushError::Local(e.to_string()))?;
        let meta_path = dir.join("meta.toml");
        let meta_text = fs::read_to_string(&meta_path)
            .map_err(|e| PushError::Local(format!("cannot read `{}`: {e}", meta_path.display())))?;
        Ok::<_, PushError>((nodes, meta_text))
    })
    .await
    .map_err(|e| PushError::Local(e.to_string()))??;
    let output: OutputHash = hash_nodes(&nodes);
    if output.to_string() != entry.meta.output_hash {
        return Err(PushError::Local(format!(
            "the local entry {} no longer matches its recorded hash; run `cargo xtask store verify --repair`",
            closure.short()
        )));
    }
    let manifest = Manifest::of_entry(&closure, &meta_text, &output, &nodes, key).map_err(PushError::Local)?;
    let mut blobs: std::collections::BTreeMap<[u8; 32], (PathBuf, u64)> = Default::default();
    for (path, node) in &nodes {
        if let Node::File { content, size, .. } = node {
            blobs.entry(*content).or_insert_with(|| (entry.out_dir().join(path), *size));
        }
    }
    let results: Vec<Option<(u64, u64)>> =
        stream::iter(blobs.into_iter().map(|(hash, (path, size))| push_blob(remote, hash, path, size, mode)))
            .buffer_unordered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
    for result in results {
        match result {
            Some((compressed, read)) => {
                tally.blobs_uploaded += 1;
                tally.bytes_uploaded += compressed;
                tally.bytes_read += read;
            }
            None => tally.blobs_present += 1,
        }
    }
    let json = serde_json::to_vec(&manifest).map_err(|e| PushError::Local(e.to_string()))?;
    tally.bytes_uploaded += json.len() as u64;
    let _slot = remote.slots.acquire().await;
    remote.store.put(&manifest_path(&closure), PutPayload::from(Bytes::from(json))).await.map_err(PushError::Remote)?;
    tally.entries_pushed = 1;
    Ok(tally)
}

/// Uploads one blob unless the remote has it; returns (compressed, original) bytes sent.
/// Its content and compressed copy are held in memory, within the remote's memory budget.
async fn push_blob(
    remote: &Remote,
    hash: [u8; 32],
    path: PathBuf,
    size: u64,
    mode: PushMode,
) -> Result<Option<(u64, u64)>, PushError> {
    let location = blob_path(&blake3::Hash::from(hash));
    if mode == PushMode::Missing {
        if remote.present.lock().is_ok_and(|present| present.contains(&hash)) {
            return Ok(None);
        }
        if exists(remote, &location).await.map_err(PushError::Remote)? {
            if let Ok(mut present) = remote.present.lock() {
                present.insert(hash);
            }
            return Ok(None);
        }
    }
    let _memory = remote.memory.acquire_many(memory_permits(size)).await;
    let compressor = remote.compressors.acquire().await;
    let (compressed, read) = tokio::task::spawn_blocking(move || {
        let content =
            fs::read(&path).map_err(|e| PushError::Local(format!("cannot read `{}`: {e}", path.display())))?;
        if *blake3::hash(&content).as_bytes() != hash {
            return Err(PushError::Local(format!("`{}` changed while it was pushed", path.display())));
        }
        let compressed = zstd::bulk::compress(&content, BLOB_LEVEL).map_err(|e| PushError::Local(e.to_string()))?;
        Ok((compressed, content.len() as u64))
    })
    .await
    .map_err(|e| PushError::Local(e.to_string()))??;
    drop(compressor);
    let _slot = remote.slots.acquire().await;
    let sent = compressed.len() as u64;
    remote.store.put(&location, PutPayload::from(Bytes::from(compressed))).await.map_err(PushError::Remote)?;
    if let Ok(mut present) = remote.present.lock() {
        present.insert(hash);
    }
    Ok(Some((sent, read)))
}

/// The permits of the memory budget (MiB) a blob of `size` bytes takes while it is pushed: its
/// content and its compressed copy, at most the whole budget.
fn memory_permits(size: u64) -> u32 {
    let mib = size.saturating_mul(2) >> 20;
    u32::try_from(mib.clamp(1, u64::from(super::PUSH_MEMORY_MIB))).unwrap_or(super::PUSH_MEMORY_MIB)
}
