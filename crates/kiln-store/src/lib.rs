//! kiln's content-addressed store.
//!
//! A [`Derivation`] describes one build step and names every input it depends on; its
//! [`ClosureHash`] names the store entry that holds the step's output. The output tree's own
//! [`OutputHash`] is recorded beside it and checked again on demand. The encodings behind both
//! hashes are specified in `docs/closure-hash.md`.

mod archive;
mod derivation;
mod errors;
mod hash;
#[cfg(feature = "remote")]
pub mod remote;
mod source;
mod stat_cache;
mod store;
mod tree;

pub use archive::{
    ArchiveSummary, ImportLimits, MAX_FILE_BYTES, MAX_LISTING_BYTES, MAX_META_BYTES, MAX_PATH_BYTES,
    MAX_PATH_COMPONENTS, Rejection, export, export_to_file, import, import_from_file, import_with_limits,
};
pub use derivation::{Derivation, InputHash};
pub use errors::StoreError;
pub use hash::{ClosureHash, OutputHash, ParseHashError};
pub use source::{SourceSet, hash_file, hash_source_set};
pub use stat_cache::{FileStamp, RACY_WINDOW, StatCache};
pub use store::{
    BuildOutcome, Damage, Entry, EntryMeta, GcReport, STORE_FORMAT, Store, Substituter, Substitution, tree_size,
};
pub use tree::hash_tree;
