//! kiln's integration tests: each copies the bundled example to a temp dir and runs the real
//! pipeline (cargo, the store, QEMU) against it.

mod adoption;
mod config_errors;
mod example;
mod fixtures;
mod store;
mod support;
mod timeouts;
