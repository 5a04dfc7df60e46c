//! A persistent cache of file content hashes keyed by what `stat` says about each file, so
//! an unchanged tree is rehashed without reading it.
//!
//! An entry is trusted while the file's device, inode, size, mtime and ctime (in ns) are
//! unchanged. A file modified within [`RACY_WINDOW`] of the moment its hash was taken is never
//! cached: a later write in the same timestamp tick would leave the stamp unchanged (the
//! "racy git" problem), so such files are hashed again next time.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::StoreError;

/// Files modified this recently are not trusted to a stamp: a later write within the same
/// timestamp tick would leave it unchanged.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The file starts with this; a file without it (or of another version) is an empty cache.
const MAGIC: &[u8; 8] = b"KILNSC02";

/// What `stat` says about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileStamp {
    /// The stamp of the file at `path` (symlinks followed), if it exists.
    pub fn of_path(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|meta| Self::of(&meta))
    }

    /// Whether the file was modified within [`RACY_WINDOW`] of `now`.
    pub fn is_racy(&self, now: SystemTime) -> bool {
        let modified_at = UNIX_EPOCH + Duration::from_nanos(self.mtime_ns.max(0) as u64);
        now.duration_since(modified_at).map_or(true, |age| age < RACY_WINDOW)
    }

    /// The stamp as bytes, for digests of many stamps.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut bytes = [0; 40];
        for (chunk, value) in
            bytes.chunks_exact_mut(8).zip([self.dev, self.ino, self.size, self.mtime_ns as u64, self.ctime_ns as u64])
        {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// The stamp of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
        }
    }
}

/// The on-disk format, a flat list of fixed-layout records read by slicing:
/// `MAGIC`, then per file `u32 path length, path bytes, dev, ino, size (u64 LE), mtime ns,
/// ctime ns (i64 LE), 32-byte hash`. A serde format spent most of a warm rehash decoding
/// 20,000 hashes byte by byte; this one loads them in about a millisecond.
mod format {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::PathBuf};

    use super::{FileStamp, MAGIC};

    pub fn encode<'a>(entries: impl Iterator<Item = (&'a PathBuf, &'a FileStamp, &'a [u8; 32])>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (path, stamp, hash) in entries {
            let bytes = path.as_os_str().as_bytes();
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
            for value in [stamp.dev, stamp.ino, stamp.size] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            for value in [stamp.mtime_ns, stamp.ctime_ns] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.extend_from_slice(hash);
        }
        out
    }

    fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        let (head, tail) = bytes.split_at_checked(len)?;
        *bytes = tail;
        Some(head)
    }

    fn u64_at(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
    }

    /// The records, or `None` when the file is not a whole cache of this version.
    pub fn decode(mut bytes: &[u8]) -> Option<Vec<(PathBuf, FileStamp, [u8; 32])>> {
        if take(&mut bytes, MAGIC.len())? != MAGIC {
            return None;
        }
        let mut entries = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
            let path = PathBuf::from(OsStr::from_bytes(take(&mut bytes, len)?));
            let stamp = FileStamp {
                dev: u64_at(&mut bytes)?,
                ino: u64_at(&mut bytes)?,
                size: u64_at(&mut bytes)?,
                mtime_ns: u64_at(&mut bytes)? as i64,
                ctime_ns: u64_at(&mut bytes)? as i64,
            };
            let hash: [u8; 32] = take(&mut bytes, 32)?.try_into().ok()?;
            entries.push((path, stamp, hash));
        }
        Some(entries)
    }
}

/// File hashes remembered by stamp, loaded from and saved to one file.
#[derive(Debug)]
pub struct StatCache {
    file: PathBuf,
    known: HashMap<PathBuf, (FileStamp, [u8; 32])>,
    fresh: Mutex<Vec<(PathBuf, FileStamp, [u8; 32])>>,
}

impl StatCache {
    /// Loads the cache kept in `file`; a missing or unreadable file is an empty cache.
    pub fn load(file: impl Into<PathBuf>) -> Self {
        let file = file.into();
        let known = fs::read(&file)
            .ok()
            .and_then(|bytes| format::decode(&bytes))
            .map(|entries| entries.into_iter().map(|(path, stamp, hash)| (path, (stamp, hash))).collect())
            .unwrap_or_default();
        Self { file, known, fresh: Mutex::new(Vec::new()) }
    }

    /// An empty cache that is never saved.
    pub fn disabled() -> Self {
        Self { file: PathBuf::new(), known: HashMap::new(), fresh: Mutex::new(Vec::new()) }
    }

    /// How many files the cache knows.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether the cache knows no file.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The content hash of `path` (absolute), from the cache when its stamp is unchanged,
    /// else by reading it.
    pub fn hash_file(&self, path: &Path, meta: &fs::Metadata) -> Result<[u8; 32], StoreError> {
        let stamp = FileStamp::of(meta);
        if let Some((known, hash)) = self.known.get(path)
            && *known == stamp
        {
            return Ok(*hash);
        }
        let started = SystemTime::now();
        let hash = *crate::hash_file(path)?.as_bytes();
        if !stamp.is_racy(started)
            && let Ok(mut fresh) = self.fresh.lock()
        {
            fresh.push((path.to_owned(), stamp, hash));
        }
        Ok(hash)
    }

    /// Writes the cache back (atomically) when it learnt something. Entries of files that no
    /// longer exist are dropped.
    pub fn save(self) -> Result<(), StoreError> {
        if self.file.as_os_str().is_empty() {
            return Ok(());
        }
        let fresh = self.fresh.into_inner().unwrap_or_default();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut known = self.known;
        known.retain(|path, _| path.exists());
        for (path, stamp, hash) in fresh {
            known.insert(path, (stamp, hash));
        }
        let bytes = format::encode(known.iter().map(|(path, (stamp, hash))| (path, stamp, hash)));
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        }
        let temp = self.file.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&temp, bytes).map_err(|e| StoreError::io("write", &temp, e))?;
        fs::rename(&temp, &self.file).map_err(|e| StoreError::io("replace", &self.file, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options().write(true).open(path).and_then(|f| f.set_modified(old)).expect("set mtime");
    }

    #[test]
    fn unchanged_files_come_from_the_cache_and_changes_are_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.rs");
        let cache_file = dir.path().join("cache/stat");
        fs::write(&file, "one").expect("write");
        age(&file);

        let cache = StatCache::load(&cache_file);
        let meta = fs::metadata(&file).expect("stat");
        assert_eq!(cache.hash_file(&file, &meta).expect("hash"), *blake3::hash(b"one").as_bytes());
        cache.save().expect("save");

        let cache = StatCache::load(&cache_file);
        assert_eq!(cache.len(), 1);
        // Same stamp: the cached hash is returned without reading (proved by a lying entry).
        let mut lying = StatCache::load(&cache_file);
        if let Some(entry) = lying.known.get_mut(&file) {
            entry.1 = [7; 32];
        }
        assert_eq!(lying.hash_file(&file, &meta).expect("hash"), [7; 32]);

        fs::write(&file, "two").expect("write");
        age(&file);
        let meta = fs::metadata(&file).expect("stat");
        assert_eq!(cache.hash_file(&file, &meta).expect("hash"), *blake3::hash(b"two").as_bytes());
    }

    #[test]
    fn format_round_trips_and_rejects_truncation() {
        let stamp = FileStamp { dev: 1, ino: 2, size: 3, mtime_ns: -4, ctime_ns: 5 };
        let path = PathBuf::from("/a/b.rs");
        let bytes = format::encode([(&path, &stamp, &[9u8; 32])].into_iter());
        assert_eq!(format::decode(&bytes), Some(vec![(path, stamp, [9; 32])]));
        assert_eq!(format::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(format::decode(b"KILNSC01"), None);
    }

    #[test]
    fn racily_new_files_are_not_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("new.rs");
        fs::write(&file, "fresh").expect("write");
        let cache_file = dir.path().join("stat");
        let cache = StatCache::load(&cache_file);
        cache.hash_file(&file, &fs::metadata(&file).expect("stat")).expect("hash");
        cache.save().expect("save");
        assert!(StatCache::load(&cache_file).is_empty());
    }
}
