//! Export: entries written as one zstd-compressed tar stream with normalised headers, so the
//! same entries always give the same bytes.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    sync::mpsc,
    thread,
};

use tar::{EntryType, Header};

use crate::{
    ClosureHash, Entry, Store, StoreError,
    store::sync_dir,
    tree::{hash_nodes, list_tree},
};

use super::{
    ArchiveSummary, BLOCK, IO_BUFFER, SYNC_EVERY, ZEROS, ZSTD_LEVEL, compression_workers, join, listing, write_error,
};

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
        // The listing import holds every member to; it is the tree the output hash covers.
        let nodes = list_tree(&out)?;
        let actual = hash_nodes(&nodes);
        if actual.to_string() != entry.meta.output_hash {
            return Err(StoreError::ExportCorrupt {
                closure: entry.closure,
                recorded: entry.meta.output_hash.clone(),
                actual,
            });
        }
        let listing = listing::encode(&nodes);
        self.header(format!("{hex}/listing").as_bytes(), EntryType::Regular, listing.len() as u64, 0o644, None)?;
        self.put(&listing)?;
        self.pad(listing.len() as u64)?;
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
pub(super) fn set_field(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
    field[len..].fill(0);
}

// ---------------------------------------------------------------------------------------------
// Import: the staging directory and the decompressing thread.

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
