//! kiln's integration tests: each copies the bundled example to a temp dir and runs the real
//! pipeline (cargo, the store, QEMU) against it.

mod config_errors;
mod example;
mod store;
mod support;
mod timeouts;
