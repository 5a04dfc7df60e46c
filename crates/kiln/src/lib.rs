//! kiln: build kernels and images for many architectures, boot them in QEMU, judge them,
//! and keep every result in a content-addressed store keyed by closure hashes.
//!
//! Data flows one way: [`config`] → [`plan`] → [`exec`] (through the store) → [`runner`] →
//! [`report`]. Only this crate reads Kiln.toml, prints, or picks exit codes; the leaf crates
//! (`kiln-store`, `kiln-qemu`) take typed values. Projects call [`xtask::main`] from their
//! own `cargo xtask`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod cx;
pub mod env;
pub mod exec;
pub mod exit_code;
pub mod explain;
pub mod github;
pub mod plan;
pub mod provision;
pub mod remote;
pub mod report;
pub mod runner;
pub mod vm;
pub mod xtask;

pub use anyhow;
pub use clap;
pub use xshell;
