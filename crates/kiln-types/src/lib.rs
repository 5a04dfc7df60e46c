//! Small I/O-free types shared by kiln's crates.

mod arch;
mod repo;

pub use arch::{Arch, ParseArchError};
pub use repo::{ParseRepoError, Repo};
