//! What kiln's own integration tests need beyond the library surface. Behind the `testing`
//! feature, which only kiln's test package enables; not for users, and free to change.

use std::path::Path;

/// Writes the crate `bench --suite warm` tests through `kiln run`: `doctests` documented
/// functions with a doctest each, and `test_binaries` integration-test files.
pub fn synthetic_crate(dir: &Path, doctests: usize, test_binaries: usize) -> anyhow::Result<()> {
    crate::commands::synthetic_crate(dir, doctests, test_binaries)
}

/// As [`crate::xtask::run_args`], returning the numeric exit code, so tests can run kiln in
/// process and compare codes.
pub fn run_args_to_code(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) -> u8 {
    crate::xtask::run_args_to_code(args)
}
