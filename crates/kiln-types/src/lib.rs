//! Small I/O-free types shared by kiln's crates.

mod arch;

pub use arch::{Arch, ParseArchError};
