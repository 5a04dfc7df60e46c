//! kiln: build kernels and images for many architectures, boot them in QEMU, judge them,
//! and keep every result in a content-addressed store keyed by closure hashes.
//!
//! The library surface is [`xtask`] (what a project's own `cargo xtask` calls: `main`, your
//! own verbs beside kiln's, [`xtask::Cx`] for custom steps) and [`exit_code`]; everything else
//! is private to the crate and may change in any release.
//!
//! Inside, data flows one way and every module imports only from the layers below it
//! (`ARCHITECTURE.md` has the table, and `tidy.rs` checks it):
//! `config` → `plan` → `exec` (through the store) → `vm` → `boots` → `runner` → `report`, with
//! `cx` tying them together for `commands`, which `xtask` dispatches.
//!
//! Cargo features: `remote` (remote stores: S3, HTTP, directories), `github` (`release`,
//! `ci prune-caches`, `github-release` fetches). Without them the build is much smaller.

mod boots;
mod cli;
mod commands;
mod config;
mod cx;
mod env;
mod error;
mod events;
mod exec;
pub mod exit_code;
mod explain;
#[cfg(feature = "github")]
mod github;
mod guest;
mod host;
mod layout;
mod outcome;
mod plan;
mod report;
mod runner;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tidy;
mod units;
mod vm;
pub mod xtask;

pub use anyhow;
pub use clap;
pub use xshell;
