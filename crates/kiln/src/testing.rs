//! What kiln's own integration tests need beyond the library surface. Behind the `testing`
//! feature, which only kiln's test package enables; not for users, and free to change.

use std::path::Path;

/// Writes the crate `bench --suite warm` tests through `kiln run`: `doctests` documented
/// functions with a doctest each, and `test_binaries` integration-test files.
pub fn synthetic_crate(dir: &Path, doctests: usize, test_binaries: usize) -> anyhow::Result<()> {
    crate::commands::synthetic_crate(dir, doctests, test_binaries)
}
