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
        manifest::{Blob, MAX_MANIFEST_BYTES, Manifest, ManifestKind, blob_path, manifest_path},
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
/// `Ok(None)` when the remote does not have it.
pub(crate) async fn fetch(
    remote: &Remote,
    closure: &ClosureHash,
    trusted: &[PublicKey],
    out: &Path,
) -> Result<Option<Substitution>, FetchError> {
    let started = std::time::Instant::now();
    let manifest = match remote.store.get(&manifest_path(closure)).await {
        Ok(found) if found.meta.size > MAX_MANIFEST_BYTES => {
            return Err(FetchError::Refused(format!("its manifest is {} bytes, over the limit", found.meta.size)));
        }
        Ok(found) => found.bytes().await.map_err(FetchError::Remote)?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(FetchError::Remote(error)),
    };
    let (manifest, meta) = Manifest::verified(&manifest, closure, trusted)
        .map_err(|e| FetchError::Refused(format!("its manifest: {e}")))?;
    let local =
        |what: &str, path: &Path, e: std::io::Error| FetchError::Local(format!("{what} `{}`: {e}", path.display()));
    for file in &manifest.files {
        if let ManifestKind::Dir = file.kind {
            let path = out.join(&file.path);
            fs::create_dir_all(&path).map_err(|e| local("cannot create", &path, e))?;
        }
    }
    let blobs = manifest.blobs(out);
    let hashes: Vec<[u8; 32]> = blobs.iter().map(|blob| *blob.hash.as_bytes()).collect();
    let downloaded = stream::iter(blobs.into_iter().map(|blob| fetch_blob(remote, blob)))
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

/// Downloads one blob and writes it to `targets`; returns the bytes downloaded.
async fn fetch_blob(remote: &Remote, blob: Blob) -> Result<u64, FetchError> {
    let Blob { hash, size, targets } = blob;
    let _slot = remote.slots.acquire().await;
    let bytes = match remote.store.get(&blob_path(&hash)).await {
        Ok(found) => found.bytes().await.map_err(FetchError::Remote)?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(FetchError::Refused(format!("blob {hash} is missing")));
        }
        Err(error) => return Err(FetchError::Remote(error)),
    };
    let compressed = bytes.len() as u64;
    tokio::task::spawn_blocking(move || write_blob(&bytes, &hash, size, &targets))
        .await
        .map_err(|e| FetchError::Local(e.to_string()))??;
    Ok(compressed)
}

/// Decompresses a blob (never past its declared size), checks its hash and writes it to
/// every path that holds it.
fn write_blob(
    compressed: &[u8],
    hash: &blake3::Hash,
    size: u64,
    targets: &[(PathBuf, bool)],
) -> Result<(), FetchError> {
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
    let decoder =
        zstd::stream::Decoder::new(compressed).map_err(|e| FetchError::Refused(format!("blob {hash}: {e}")))?;
    decoder
        .take(size + 1)
        .read_to_end(&mut content)
        .map_err(|e| FetchError::Refused(format!("blob {hash} does not decompress: {e}")))?;
    let actual = blake3::hash(&content);
    if content.len() as u64 != size || actual != *hash {
        return Err(FetchError::Refused(format!(
            "blob {hash} holds other content (BLAKE3 {actual}, {} bytes): tampered or corrupt",
            content.len()
        )));
    }
    for (path, executable) in targets {
        let local = |e: std::io::Error| FetchError::Local(format!("cannot write `{}`: {e}", path.display()));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(local)?;
        }
        let mut file = fs::File::create(path).map_err(local)?;
        file.write_all(&content).map_err(local)?;
        let mode = if *executable { 0o755 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(local)?;
    }
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

/// Pushes one entry, turning a failure into a notice (and a remote failure into the remote
/// being left alone for the rest of the run).
pub(crate) async fn push_noting(
    remote: &Remote,
    entry: &Entry,
    key: &Arc<SecretKey>,
    notice: &NoticeSink,
) -> PushTally {
    if remote.down.load(std::sync::atomic::Ordering::Relaxed) {
        return PushTally { entries_failed: 1, ..PushTally::default() };
    }
    match push(remote, entry, key).await {
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
async fn push(remote: &Remote, entry: &Entry, key: &SecretKey) -> Result<PushTally, PushError> {
    let mut tally = PushTally::default();
    match remote.store.head(&manifest_path(&entry.closure)).await {
        Ok(_) => {
            tally.entries_present = 1;
            return Ok(tally);
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => return Err(PushError::Remote(error)),
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
    let mut blobs: std::collections::BTreeMap<[u8; 32], PathBuf> = Default::default();
    for (path, node) in &nodes {
        if let Node::File { content, .. } = node {
            blobs.entry(*content).or_insert_with(|| entry.out_dir().join(path));
        }
    }
    let results: Vec<Option<(u64, u64)>> =
        stream::iter(blobs.into_iter().map(|(hash, path)| push_blob(remote, hash, path)))
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
    remote.store.put(&manifest_path(&closure), PutPayload::from(Bytes::from(json))).await.map_err(PushError::Remote)?;
    tally.entries_pushed = 1;
    Ok(tally)
}

/// Uploads one blob unless the remote has it; returns (compressed, original) bytes sent.
async fn push_blob(remote: &Remote, hash: [u8; 32], path: PathBuf) -> Result<Option<(u64, u64)>, PushError> {
    if remote.present.lock().is_ok_and(|present| present.contains(&hash)) {
        return Ok(None);
    }
    let _slot = remote.slots.acquire().await;
    let location = blob_path(&blake3::Hash::from(hash));
    match remote.store.head(&location).await {
        Ok(_) => {
            if let Ok(mut present) = remote.present.lock() {
                present.insert(hash);
            }
            return Ok(None);
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => return Err(PushError::Remote(error)),
    }
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
    let sent = compressed.len() as u64;
    remote.store.put(&location, PutPayload::from(Bytes::from(compressed))).await.map_err(PushError::Remote)?;
    if let Ok(mut present) = remote.present.lock() {
        present.insert(hash);
    }
    Ok(Some((sent, read)))
}
