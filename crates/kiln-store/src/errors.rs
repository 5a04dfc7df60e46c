//! Errors of the store crate.

use std::{io, path::PathBuf};

use crate::ClosureHash;

/// Something went wrong reading or writing the store or a tree being hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("failed to {action} `{path}`")]
    Io {
        /// What kiln was doing, e.g. "open".
        action: &'static str,
        /// The path it was doing it to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A directory walk failed.
    #[error("failed to list the files under `{dir}`: {message}")]
    Walk {
        /// The directory being walked.
        dir: PathBuf,
        /// What the walker reported.
        message: String,
    },
    /// A tree holds something other than files, directories and symlinks.
    #[error("`{path}` is neither a file, a directory nor a symlink; the store only holds those")]
    UnsupportedFileType {
        /// The offending path.
        path: PathBuf,
    },
    /// An entry's metadata could not be read.
    #[error("store entry `{closure}` has unreadable metadata at `{path}`: {message}")]
    CorruptMeta {
        /// The entry.
        closure: ClosureHash,
        /// Its metadata file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// The step that produces an entry's output failed.
    #[error("building `{name}` failed")]
    Build {
        /// The name of the thing being built.
        name: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An entry asked to be exported is not in the store.
    #[error("store entry `{closure}` is not in the store, so it cannot be exported")]
    NotInStore {
        /// The missing entry.
        closure: ClosureHash,
    },
    /// Writing an archive stream failed.
    #[error("failed to write the archive")]
    ArchiveWrite {
        /// The error of the writer (or of the compressor).
        #[source]
        source: io::Error,
    },
    /// An archive stream cannot be read to its end: its compression or its tar framing is
    /// corrupt, or it is truncated.
    #[error("the archive is corrupt or truncated: {message}")]
    ArchiveCorrupt {
        /// What is wrong.
        message: String,
    },
    /// An archive holds a member that import refuses.
    #[error("the archive is rejected: member `{member}`{}: {reason}", of_entry(entry.as_deref()))]
    ArchiveRejected {
        /// The member's path inside the archive, control characters escaped.
        member: String,
        /// Why it is refused.
        reason: crate::Rejection,
        /// The name of the entry it belongs to (from its `meta.toml`, control characters
        /// escaped), when that was read.
        entry: Option<String>,
    },
    /// An archive's entries would take more than an import may stage.
    #[error(
        "the archive is rejected: with entry `{name}` ({closure}) it would take {}, more than the import limit of {}",
        human_bytes(*needed), human_bytes(*limit)
    )]
    ArchiveTooLarge {
        /// The entry that crossed the limit.
        closure: ClosureHash,
        /// Its name, control characters escaped.
        name: String,
        /// What the entries so far would take on disk (their files plus 4 KiB per path).
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// An archive's entries would not fit into the free space of the store's file system.
    #[error(
        "cannot import: with entry `{name}` ({closure}) the archive would take {}, but `{}` has {} free and {} must stay free; free some space (`store gc`) and import again",
        human_bytes(*needed), dir.display(), human_bytes(*free), human_bytes(*keep_free)
    )]
    ArchiveNoSpace {
        /// The entry that did not fit.
        closure: ClosureHash,
        /// Its name, control characters escaped.
        name: String,
        /// What the entries so far would take on disk.
        needed: u64,
        /// Free bytes when the import started.
        free: u64,
        /// Bytes kept free.
        keep_free: u64,
        /// Where the free space was measured.
        dir: PathBuf,
    },
    /// An entry to export no longer has the output its metadata records.
    #[error(
        "store entry `{closure}` is corrupt: its output hashes to {actual}, but its meta.toml records {recorded}; run `store verify --repair`, then export again"
    )]
    ExportCorrupt {
        /// The entry.
        closure: ClosureHash,
        /// The output hash its `meta.toml` records.
        recorded: String,
        /// What its output hashes to.
        actual: crate::OutputHash,
    },
    /// An archived entry's metadata describes a derivation with another closure hash.
    #[error(
        "the archive is rejected: entry `{dir}` holds the metadata of a derivation whose closure hash is {derivation}"
    )]
    ArchiveClosureMismatch {
        /// The closure the entry is filed under.
        dir: ClosureHash,
        /// The closure hash of the derivation in its `meta.toml`.
        derivation: ClosureHash,
    },
    /// An archived entry's listing (its output tree) does not have the output hash its
    /// metadata records.
    #[error(
        "the archive is rejected: the listing of entry `{closure}` hashes to {actual}, but its meta.toml records {recorded}"
    )]
    ArchiveOutputMismatch {
        /// The entry.
        closure: ClosureHash,
        /// The output hash its `meta.toml` records.
        recorded: String,
        /// The hash of the output tree in the archive.
        actual: crate::OutputHash,
    },
}

impl StoreError {
    /// Whether the error is about an archive being imported (corrupt, truncated, hostile or
    /// too large), not about the host: the input is to blame, and retrying will not help.
    pub fn is_bad_archive(&self) -> bool {
        matches!(
            self,
            Self::ArchiveCorrupt { .. }
                | Self::ArchiveRejected { .. }
                | Self::ArchiveClosureMismatch { .. }
                | Self::ArchiveOutputMismatch { .. }
                | Self::ArchiveTooLarge { .. }
                | Self::CorruptMeta { .. }
        )
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}

/// ` of entry `NAME`` when the entry's name is known.
fn of_entry(entry: Option<&str>) -> String {
    entry.map(|name| format!(" of entry `{name}`")).unwrap_or_default()
}

/// A byte count for people: `512 bytes`, `3.5 MiB`, `16.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
