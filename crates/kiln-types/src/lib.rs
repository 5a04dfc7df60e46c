//! Small I/O-free types shared by kiln's crates.

mod arch;
mod partition;
mod pool;
mod program;
mod repo;
mod secrets;
mod text;

pub use arch::{Arch, ParseArchError};
pub use partition::Partition;
pub use pool::PoolSize;
pub use program::find_program;
pub use repo::{ParseRepoError, Repo};
pub use secrets::{SECRET_VARIABLES, withhold_secrets};
pub use text::{cut, escape_untrusted, escape_untrusted_bytes};
