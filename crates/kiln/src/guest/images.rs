//! A Linux kernel and rootfs in the store, ready to boot: the per-boot initramfs and QEMU's
//! arguments for one boot of them.

use std::path::{Path, PathBuf};

use kiln_qemu::{Console, accel::Accel};

use super::{BootFiles, cmdline, compose_initrd};

/// The store paths of a Linux boot.
#[derive(Clone, Debug)]
pub(crate) struct LinuxImages {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The kernel's modules archive.
    pub modules: PathBuf,
    /// The initramfs: the rootfs itself, or for a disk rootfs the stub that mounts it.
    pub rootfs: PathBuf,
    /// A disk rootfs and its QEMU format.
    pub disk: Option<(PathBuf, &'static str)>,
    /// The kernel's own command-line arguments.
    pub cmdline: Vec<String>,
    /// The shell command to run.
    pub command: String,
}

/// What a Linux boot connects besides the console: the program's stdout and stderr (host
/// files behind two virtio consoles) and 9p shares.
#[derive(Clone, Debug, Default)]
pub(crate) struct GuestIo<'a> {
    /// Host files for the program's stdout and stderr.
    pub program_output: Option<(&'a Path, &'a Path)>,
    /// The socket the program's stdin comes through (kiln connects and writes).
    pub program_input: Option<&'a Path>,
    /// Host directories shared read-only.
    pub shares: Vec<kiln_qemu::Share<'a>>,
    /// The guest agent's socket.
    pub agent_socket: Option<&'a Path>,
    /// QMP's socket.
    pub qmp_socket: Option<&'a Path>,
    /// Load the guest's state instead of booting (`-incoming`).
    pub incoming: Option<String>,
    /// The guest's memory as a backend object of its own.
    pub memory: Option<kiln_qemu::MemoryBackend<'a>>,
}

impl LinuxImages {
    /// Writes one boot's initramfs to `initrd`: the rootfs (or a disk's boot stub), the
    /// kernel's modules and the per-boot archive of `files`.
    pub(crate) fn compose_initrd(&self, files: &BootFiles<'_>, initrd: &Path) -> anyhow::Result<()> {
        compose_initrd(&self.rootfs, &self.modules, files, initrd)
    }

    /// QEMU's arguments for one boot of these images on `machine` with this nonce.
    pub(crate) fn argv(
        &self,
        machine: &kiln_qemu::Machine,
        initrd: &Path,
        nonce: &str,
        accel: Accel,
        console: Console,
        io: GuestIo<'_>,
    ) -> kiln_qemu::Argv {
        let cmdline = cmdline(machine, nonce, &self.cmdline);
        let boot = kiln_qemu::LinuxBoot {
            kernel: &self.kernel,
            initrd,
            cmdline: &cmdline,
            program_output: io.program_output,
            program_input: io.program_input,
            shares: io.shares,
            disk: self.disk.as_ref().map(|(path, format)| (path.as_path(), *format)),
            agent_socket: io.agent_socket,
            qmp_socket: io.qmp_socket,
            incoming: io.incoming,
            memory: io.memory,
        };
        machine.linux_argv(&boot, accel, console)
    }
}
