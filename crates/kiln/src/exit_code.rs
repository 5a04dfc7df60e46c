//! The exit codes of kiln's commands, documented in `--help`.

/// Everything passed.
pub const SUCCESS: u8 = 0;
/// A case failed (or passed when it was expected to fail), or a build failed.
pub const CASES_FAILED: u8 = 1;
/// The command line or Kiln.toml is wrong.
pub const USAGE: u8 = 2;
/// The host could not do the job: QEMU or firmware missing, the store unwritable, ...
pub const INFRASTRUCTURE: u8 = 3;
/// The run was interrupted (Ctrl-C); 128 + SIGINT, as shells report it.
pub const INTERRUPTED: u8 = 130;
