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
    #[error("the archive is rejected: member `{member}`: {reason}")]
    ArchiveRejected {
        /// The member's path inside the archive.
        member: String,
        /// Why it is refused.
        reason: crate::Rejection,
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
    /// An archived entry's output tree does not have the output hash its metadata records.
    #[error(
        "the archive is rejected: the output of entry `{closure}` hashes to {actual}, but its meta.toml records {recorded}"
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
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}
