//! kiln's integration tests: each copies the bundled example to a temp dir and runs the real
//! pipeline (cargo, the store, QEMU) against it.

mod action;
mod action_sim;
mod adoption;
mod bootloader;
mod closures;
mod config_errors;
mod events;
mod example;
mod fixtures;
mod github_fake;
mod linux;
mod linux_fetch;
mod partition;
mod process;
mod prune_caches;
mod release;
mod remote;
mod retries;
mod runner;
mod servers;
mod steps;
mod store;
mod support;
mod test_binaries;
mod timeouts;
mod trust;
mod verdicts;
mod warm;
