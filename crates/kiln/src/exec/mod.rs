//! Executing a plan's builds through the store.

pub mod agent;
pub mod agent_client;
mod cargo;
pub mod fetch;
pub mod guest;
mod image;
pub mod linux;
mod metadata;
pub mod slots;
pub mod snapshot;

pub(crate) use cargo::tool_command;
pub use cargo::{BootImage, CargoHost, derivation_for, images_in, realise};
pub use image::raw_binary;
pub use linux::FetchedFiles;
pub use metadata::{MetadataAnswer, MetadataCache, run_cargo_metadata};
