//! Booting guests under QEMU and judging them.
//!
//! A [`Machine`] is a typed QEMU profile; [`Machine::argv`] renders it, and nothing
//! downstream edits the list. [`boot`] runs one guest in its own process group, streams its
//! serial console, enforces the timeout and the no-output watchdog and returns a
//! [`BootOutcome`] that [`Judge`] turns into a [`Verdict`]. [`accel::choose`] decides between
//! KVM and TCG by booting a tiny guest, because an existing `/dev/kvm` is no proof that KVM
//! works.

pub mod accel;
mod argv;
mod boot;
mod errors;
mod finisher;
pub mod firmware;
mod machine;
mod process;
pub mod qmp;
mod verdict;

pub use argv::Argv;
pub use boot::{BootOutcome, BootRequest, Exit, SerialInput, SerialLine, boot, interactive};
pub use errors::QemuError;
pub use finisher::FinisherCommand;
pub use machine::{BootMethod, Console, Device, Firmware, LinuxBoot, Machine, MemoryBackend, Ovmf, Share};
pub use process::{Qemu, Terminal, exit_of, version};
pub use verdict::{FailReason, Judge, PassReason, Verdict};
