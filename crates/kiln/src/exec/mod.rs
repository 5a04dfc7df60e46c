//! Executing a plan's builds through the store.

mod cargo;
mod metadata;

pub(crate) use cargo::tool_command;
pub use cargo::{CargoHost, derivation_for, realise};
pub use metadata::{MetadataAnswer, MetadataCache, run_cargo_metadata};
