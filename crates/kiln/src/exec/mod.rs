//! Executing a plan's builds through the store.

mod cargo;

pub(crate) use cargo::tool_command;
pub use cargo::{CargoHost, cargo_metadata, derivation_for, realise};
