//! Errors of the QEMU crate.

use std::{io, path::PathBuf};

/// Booting could not be attempted or QEMU itself failed (as opposed to the guest failing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// The QEMU binary is not on `PATH`.
    #[error("`{program}` was not found on PATH")]
    QemuMissing {
        /// The binary, e.g. `qemu-system-riscv64`.
        program: String,
        /// The Debian/Ubuntu package that provides it.
        package: &'static str,
    },
    /// A firmware file the machine needs is missing.
    #[error("firmware `{file}` for {machine} was not found in QEMU's data directories ({searched})")]
    FirmwareMissing {
        /// The file name QEMU looks for.
        file: String,
        /// The machine that needs it.
        machine: String,
        /// Where kiln looked.
        searched: String,
        /// The Debian/Ubuntu package that provides it.
        package: &'static str,
    },
    /// QEMU could not be started.
    #[error("failed to start `{program}`")]
    Spawn {
        /// The binary.
        program: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// QEMU rejected its arguments or failed before the guest ran.
    #[error("QEMU failed before the guest printed anything (exit status {status}): {stderr}")]
    QemuFailed {
        /// QEMU's exit status.
        status: i32,
        /// The end of QEMU's standard error.
        stderr: String,
    },
    /// A log file could not be written.
    #[error("failed to write the serial log `{path}`")]
    Log {
        /// The log path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// QEMU's monitor (QMP) refused a command or broke off.
    #[error("QEMU's monitor: {doing}: {message}")]
    Qmp {
        /// The command or step.
        doing: String,
        /// QEMU's error description, or what went wrong on the socket.
        message: String,
    },
    /// Another I/O failure while supervising QEMU.
    #[error("I/O error while {doing}")]
    Io {
        /// What kiln was doing.
        doing: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}
