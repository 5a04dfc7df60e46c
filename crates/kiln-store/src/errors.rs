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
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}
