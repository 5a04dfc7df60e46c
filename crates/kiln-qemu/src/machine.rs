//! Typed QEMU machine profiles and their rendering into an argument list.

use std::path::{Path, PathBuf};

use kiln_types::Arch;

use crate::{Argv, accel::Accel};

/// A device a machine adds, rendered by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// x86's exit device: a write of `v` to `iobase` exits QEMU with status `(v << 1) | 1`.
    DebugExit {
        /// I/O port base.
        iobase: u16,
        /// Width of the port region in bytes.
        iosize: u8,
    },
    /// The RISC-V `virt` machine's built-in `sifive_test` finisher: needs no flag.
    SifiveTest,
    /// Arm semihosting, through which a guest exits with a status code.
    Semihosting,
    /// Any other QEMU device, by its `-device` value (`virtio-rng-pci`, ...).
    Other(String),
}

/// QEMU's isa-debug-exit port when `iobase` is not given.
const DEBUG_EXIT_DEFAULT_IOBASE: u64 = 0x501;

impl Device {
    fn render(&self, argv: &mut Argv) {
        match self {
            Self::DebugExit { iobase, iosize } => {
                argv.pair("-device", format!("isa-debug-exit,iobase={iobase:#x},iosize={iosize:#04x}"));
            }
            // Built into `virt`; `Machine::argv` traces its writes.
            Self::SifiveTest => {}
            Self::Semihosting => {
                argv.pair("-semihosting-config", "enable=on,target=native");
            }
            Self::Other(device) => {
                argv.pair("-device", device);
            }
        }
    }

    /// Whether the user's `-device` value (from a profile's `devices` or `args`) is this
    /// device: the same driver and, for isa-debug-exit, the same I/O port (QEMU's default
    /// 0x501 when the value names none).
    pub fn is_given_by(&self, value: &str) -> bool {
        let mut properties = value.split(',');
        let driver = properties.next().unwrap_or_default().trim();
        match self {
            Self::DebugExit { iobase, .. } => {
                let given = properties
                    .filter_map(|property| property.trim().strip_prefix("iobase="))
                    .next_back()
                    .map_or(Some(DEBUG_EXIT_DEFAULT_IOBASE), parse_qemu_number);
                driver == "isa-debug-exit" && given == Some(u64::from(*iobase))
            }
            Self::Other(own) => own == value,
            // The board's own finisher and semihosting are not `-device`s.
            Self::SifiveTest | Self::Semihosting => false,
        }
    }

    /// Whether this device can end a run with a status (an exit device).
    pub fn is_exit_device(&self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// The QEMU exit statuses that mean "the guest passed" when this device ends the run.
    pub fn success_statuses(&self) -> &'static [i32] {
        match self {
            // The example kernels write 0x10: (0x10 << 1) | 1.
            Self::DebugExit { .. } => &[33],
            Self::SifiveTest | Self::Semihosting | Self::Other(_) => &[0],
        }
    }
}

/// A number as QEMU's integer properties take it: decimal, `0x` hex or `0` octal.
fn parse_qemu_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1
        && let Some(octal) = text.strip_prefix('0')
    {
        u64::from_str_radix(octal, 8).ok()
    } else {
        text.parse().ok()
    }
}

/// Firmware a machine boots through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// The machine's own default (SeaBIOS on x86, nothing on Arm `virt`).
    MachineDefault,
    /// `-bios default`: QEMU's bundled firmware for the machine (OpenSBI on RISC-V).
    Bundled,
    /// `-bios none`.
    None,
    /// A firmware file.
    File(PathBuf),
    /// A firmware file QEMU finds by name in its data directory (`-bios qboot.rom`).
    Named(String),
    /// UEFI (OVMF) in two pflash units: its code, read-only, and a variable store.
    Uefi(Ovmf),
}

/// OVMF, the UEFI firmware for x86_64 QEMU guests, as the host has it: see
/// [`crate::firmware::find_ovmf`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// The firmware code (`OVMF_CODE.fd`), mapped read-only.
    pub code: PathBuf,
    /// The host's variable store template (`OVMF_VARS.fd`): never written.
    pub vars_template: PathBuf,
    /// This boot's writable copy of the variable store (see [`Ovmf::copy_vars_into`]); without
    /// one the template is mapped with `snapshot=on`, so writes go to a temporary overlay.
    pub vars: Option<PathBuf>,
}

impl Ovmf {
    /// File name of a boot's copy of the variable store.
    const VARS_COPY: &'static str = "OVMF_VARS.fd";

    /// Copies the variable store template into `dir` (a boot's scratch directory) and
    /// returns the firmware that uses the copy, so the guest may write its variables.
    pub fn copy_vars_into(&self, dir: &Path) -> std::io::Result<Self> {
        let copy = dir.join(Self::VARS_COPY);
        std::fs::copy(&self.vars_template, &copy)?;
        let mut permissions = std::fs::metadata(&copy)?.permissions();
        #[allow(clippy::permissions_set_readonly_false, reason = "the copy is this boot's own file")]
        permissions.set_readonly(false);
        std::fs::set_permissions(&copy, permissions)?;
        Ok(Self { vars: Some(copy), ..self.clone() })
    }

    fn render(&self, argv: &mut Argv) {
        let mut code = std::ffi::OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
        code.push(&self.code);
        argv.pair("-drive", code);
        let mut vars = std::ffi::OsString::from(match &self.vars {
            Some(_) => "if=pflash,format=raw,unit=1,file=",
            None => "if=pflash,format=raw,unit=1,snapshot=on,file=",
        });
        vars.push(self.vars.as_ref().unwrap_or(&self.vars_template));
        argv.pair("-drive", vars);
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// Serial on standard output for kiln to read; no monitor.
    Captured,
    /// Serial and monitor multiplexed on the terminal (Ctrl-A X quits, Ctrl-A C switches).
    Interactive,
}

/// How the guest image is handed to QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMethod {
    /// `-kernel IMAGE` (ELF or raw, as the machine's loader takes it).
    Kernel,
    /// `-drive format=raw,file=IMAGE,snapshot=on`: a disk image the firmware boots; writes
    /// go to a temporary overlay, so the store's copy never changes.
    Disk,
}

/// A host directory shared into a Linux guest over 9p.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share<'a> {
    /// The host directory.
    pub host: &'a Path,
    /// The 9p mount tag the guest mounts by.
    pub tag: String,
    /// Whether the guest may only read it.
    pub readonly: bool,
}

/// What a Linux boot adds to a machine profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot<'a> {
    /// The kernel image.
    pub kernel: &'a Path,
    /// The initramfs (several cpio archives may be concatenated in it).
    pub initrd: &'a Path,
    /// The whole kernel command line.
    pub cmdline: &'a str,
    /// Host files that receive the guest program's standard output and error, through two
    /// virtio consoles (`/dev/hvc0`, `/dev/hvc1`); `None` leaves everything on the serial line.
    pub program_output: Option<(&'a Path, &'a Path)>,
    /// A Unix socket (QEMU listens, and waits for one connection before the guest starts)
    /// behind the virtio port `kiln-stdin`: what the host writes there is the guest program's
    /// standard input, and closing the connection is its end of file.
    pub program_input: Option<&'a Path>,
    /// Host directories shared into the guest.
    pub shares: Vec<Share<'a>>,
    /// A disk image (`/dev/vda`) and its format (`raw`, `qcow2`); writes go to a temporary
    /// overlay, so the image never changes.
    pub disk: Option<(&'a Path, &'a str)>,
    /// A Unix socket (QEMU listens) behind the virtio port `kiln-agent`, for the guest agent.
    pub agent_socket: Option<&'a Path>,
    /// A Unix socket (QEMU listens) for QMP.
    pub qmp_socket: Option<&'a Path>,
    /// `-incoming`: load the guest's state from here instead of booting.
    pub incoming: Option<String>,
    /// The guest's memory as a memory backend object of its own (needs `memory_mib`).
    pub memory: Option<MemoryBackend<'a>>,
}

/// Guest memory as a memory backend object (`-object memory-backend-*,id=kiln-ram`), which
/// names the memory the same whatever backs it: a booted snapshot is saved with its memory
/// anonymous and restored with it mapped from a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBackend<'a> {
    /// Anonymous memory (`memory-backend-ram`).
    Anonymous,
    /// A file (`memory-backend-file`; QEMU creates it at the memory's size when missing).
    /// `shared`: the guest's writes reach the file; otherwise it is mapped copy-on-write
    /// and never changes.
    File {
        /// The file.
        path: &'a Path,
        /// Whether the guest's writes reach it.
        shared: bool,
    },
}

/// A QEMU profile: the machine, its CPU, memory, firmware, devices and extra arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The profile's name (the built-in one per arch is named after the arch).
    pub name: String,
    /// The guest architecture.
    pub arch: Arch,
    /// `-machine` type, e.g. `virt` or `q35`.
    pub machine_type: String,
    /// `-cpu` model; `None` keeps QEMU's default.
    pub cpu: Option<String>,
    /// Guest memory in MiB; `None` keeps the machine's default (some boards allow only one size).
    pub memory_mib: Option<u32>,
    /// Number of virtual CPUs; `None` keeps the machine's default.
    pub smp: Option<u32>,
    /// Firmware.
    pub firmware: Firmware,
    /// Devices the profile adds; the first one that can end a run is the exit device.
    pub devices: Vec<Device>,
    /// How the image is booted.
    pub boot: BootMethod,
    /// Extra arguments appended verbatim after everything kiln renders.
    pub extra_args: Vec<String>,
}

impl Machine {
    /// kiln's default profile for `arch`, chosen for fast boots under TCG.
    ///
    /// aarch64 uses `cortex-a57`: under TCG a Linux boot with `-cpu max` is about 6x slower.
    pub fn default_for(arch: Arch) -> Self {
        let (machine_type, cpu, firmware, devices) = match arch {
            Arch::X86_64 => {
                ("q35", None, Firmware::MachineDefault, vec![Device::DebugExit { iobase: 0xf4, iosize: 0x04 }])
            }
            Arch::Aarch64 => ("virt", Some("cortex-a57"), Firmware::MachineDefault, vec![Device::Semihosting]),
            Arch::Riscv64 => ("virt", None, Firmware::Bundled, vec![Device::SifiveTest]),
        };
        Self {
            name: arch.as_str().to_owned(),
            arch,
            machine_type: machine_type.to_owned(),
            cpu: cpu.map(str::to_owned),
            memory_mib: Some(128),
            smp: Some(1),
            firmware,
            devices,
            boot: BootMethod::Kernel,
            extra_args: Vec::new(),
        }
    }

    /// kiln's default profile for Linux guests on `arch` (named `linux-ARCH`): no exit
    /// device (kiln's init reports the command's status), room for a kernel and an initramfs.
    ///
    /// x86_64 uses `pc` with qboot, a firmware that only loads the kernel: under TCG it
    /// reaches the kernel about 0.5 s sooner than SeaBIOS on q35.
    pub fn linux_default_for(arch: Arch) -> Self {
        let mut machine = Self::default_for(arch);
        machine.name = format!("linux-{arch}");
        machine.devices.clear();
        machine.memory_mib = Some(512);
        if arch == Arch::X86_64 {
            machine.machine_type = "pc".to_owned();
            machine.firmware = Firmware::Named("qboot.rom".to_owned());
        }
        machine
    }

    /// Kernel arguments that make a Linux boot faster under emulation on this machine: no
    /// crypto self-tests, no speculation mitigations, and on x86 a trusted TSC and no probing
    /// for a PS/2 keyboard and mouse.
    ///
    /// On arm64, `kpti=0` too: a kernel with KASLR keeps kernel page-table isolation on
    /// whatever `mitigations=off` says, and under TCG each kernel entry and exit then changes
    /// the translation tables, which costs QEMU its whole software TLB. Measured on the
    /// Debian 6.1 kernel: a `write(2)` takes 20 µs with it and 1.9 µs without.
    pub fn linux_fast_boot_args(&self) -> &'static [&'static str] {
        match self.arch {
            Arch::X86_64 => &[
                "cryptomgr.notests",
                "mitigations=off",
                "tsc=reliable",
                "no_timer_check",
                "i8042.noaux",
                "i8042.nokbd",
                "i8042.nopnp",
            ],
            Arch::Aarch64 => &["cryptomgr.notests", "mitigations=off", "kpti=0"],
            Arch::Riscv64 => &["cryptomgr.notests", "mitigations=off"],
        }
    }

    /// The guest's serial console device name, for the kernel's `console=`.
    pub fn linux_console(&self) -> &'static str {
        match self.arch {
            Arch::Aarch64 => "ttyAMA0",
            Arch::X86_64 | Arch::Riscv64 => "ttyS0",
        }
    }

    /// Renders the argument list that boots a Linux kernel with an initramfs, headless.
    pub fn linux_argv(&self, boot: &LinuxBoot<'_>, accel: Accel, console: Console) -> Argv {
        let mut argv = self.base_argv(accel, console, boot.memory);
        argv.pair("-kernel", boot.kernel).pair("-initrd", boot.initrd).pair("-append", boot.cmdline);
        if let Some((image, format)) = boot.disk {
            // On PCI, as the other virtio devices: `if=virtio` would be virtio-mmio on Arm.
            let mut drive = std::ffi::OsString::from(format!("if=none,id=kiln-disk,format={format},snapshot=on,file="));
            drive.push(image);
            argv.pair("-drive", drive).pair("-device", "virtio-blk-pci,drive=kiln-disk");
        }
        if boot.program_output.is_some() || boot.program_input.is_some() || boot.agent_socket.is_some() {
            argv.pair("-device", "virtio-serial-pci,id=kiln-serial");
        }
        if let Some(socket) = boot.agent_socket {
            let mut chardev = std::ffi::OsString::from("socket,id=kiln-agent,server=on,wait=off,path=");
            chardev.push(socket);
            argv.pair("-chardev", chardev);
            argv.pair("-device", "virtserialport,chardev=kiln-agent,name=kiln-agent");
        }
        if let Some((stdout, stderr)) = boot.program_output {
            for (id, path) in [("kiln-stdout", stdout), ("kiln-stderr", stderr)] {
                let mut chardev = std::ffi::OsString::from(format!("file,id={id},append=on,path="));
                chardev.push(path);
                argv.pair("-chardev", chardev);
                argv.pair("-device", format!("virtconsole,chardev={id},name={id}"));
            }
        }
        if let Some(socket) = boot.program_input {
            let mut chardev = std::ffi::OsString::from("socket,id=kiln-stdin,server=on,wait=on,path=");
            chardev.push(socket);
            argv.pair("-chardev", chardev);
            argv.pair("-device", "virtserialport,chardev=kiln-stdin,name=kiln-stdin");
        }
        for (index, share) in boot.shares.iter().enumerate() {
            let mut fsdev = std::ffi::OsString::from(format!(
                "local,id=kiln-share{index},security_model=none{},path=",
                if share.readonly { ",readonly=on" } else { "" }
            ));
            fsdev.push(share.host);
            argv.pair("-fsdev", fsdev);
            argv.pair("-device", format!("virtio-9p-pci,fsdev=kiln-share{index},mount_tag={}", share.tag));
        }
        for device in self.devices_to_render() {
            device.render(&mut argv);
        }
        if let Some(socket) = boot.qmp_socket {
            let mut qmp = std::ffi::OsString::from("unix:");
            qmp.push(socket);
            qmp.push(",server=on,wait=off");
            argv.pair("-qmp", qmp);
        }
        if let Some(incoming) = &boot.incoming {
            argv.pair("-incoming", incoming);
        }
        for extra in &self.extra_args {
            argv.arg(extra);
        }
        argv
    }

    /// The `-device` values the user gave: the profile's `devices` beyond kiln's own, and
    /// every `-device VALUE` in its `args`.
    pub fn user_device_values(&self) -> impl Iterator<Item = &str> {
        let listed = self.devices.iter().filter_map(|device| match device {
            Device::Other(value) => Some(value.as_str()),
            _ => None,
        });
        let in_args = self
            .extra_args
            .windows(2)
            .filter(|pair| pair[0] == "-device" || pair[0] == "--device")
            .map(|pair| pair[1].as_str());
        listed.chain(in_args)
    }

    /// kiln's own devices (the profile's exit device) that the user's `devices` or `args`
    /// already carry. They are rendered once, as the user wrote them: a bootimage-style
    /// `test-args` line with `-device isa-debug-exit,iobase=0xf4,...` keeps working, and
    /// kiln does not put a second device on the same port.
    pub fn devices_given_by_user(&self) -> Vec<&Device> {
        let semihosting_in_args =
            self.extra_args.iter().any(|arg| arg == "-semihosting" || arg == "-semihosting-config");
        self.devices
            .iter()
            .filter(|device| !matches!(device, Device::Other(_)))
            .filter(|device| {
                (**device == Device::Semihosting && semihosting_in_args)
                    || self.user_device_values().any(|value| device.is_given_by(value))
            })
            .collect()
    }

    /// The devices kiln renders: all of the profile's, less kiln's own that the user gave.
    fn devices_to_render(&self) -> impl Iterator<Item = &Device> {
        let given = self.devices_given_by_user();
        self.devices.iter().filter(move |device| !given.iter().any(|g| std::ptr::eq(*g, *device)))
    }

    /// The device that reports the guest's result through QEMU's exit status, if any.
    pub fn exit_device(&self) -> Option<&Device> {
        self.devices.iter().find(|device| device.is_exit_device())
    }

    /// Renders the argument list that boots `kernel` headless with the given console.
    pub fn argv(&self, kernel: &Path, accel: Accel, console: Console) -> Argv {
        let mut argv = self.base_argv(accel, console, None);
        for device in self.devices_to_render() {
            device.render(&mut argv);
        }
        // A sifive_test failure with code 0 exits QEMU with status 0, so kiln reads the
        // finisher's command from QEMU's trace of MMIO writes on standard error. Only a
        // captured kernel boot reads standard error (and judges by the exit device); Linux
        // guests report their status through kiln's agent and run untraced.
        if console == Console::Captured && self.exit_device() == Some(&Device::SifiveTest) {
            argv.pair("-trace", crate::finisher::TRACE_EVENT);
        }
        match self.boot {
            BootMethod::Kernel => argv.pair("-kernel", kernel),
            BootMethod::Disk => {
                let mut drive = std::ffi::OsString::from("format=raw,snapshot=on,file=");
                drive.push(kernel);
                argv.pair("-drive", drive)
            }
        };
        for extra in &self.extra_args {
            argv.arg(extra);
        }
        argv
    }

    /// The machine, CPU, memory, firmware and console: what every boot starts with.
    fn base_argv(&self, accel: Accel, console: Console, memory: Option<MemoryBackend<'_>>) -> Argv {
        let mut argv = Argv::default();
        let memory = memory.zip(self.memory_mib);
        let backend = if memory.is_some() { ",memory-backend=kiln-ram" } else { "" };
        argv.pair("-machine", format!("{},accel={}{backend}", self.machine_type, accel.as_str()));
        if let Some(cpu) = &self.cpu {
            argv.pair("-cpu", cpu);
        }
        if let Some(memory) = self.memory_mib {
            argv.pair("-m", format!("{memory}M"));
        }
        match memory {
            None => {}
            Some((MemoryBackend::Anonymous, size)) => {
                argv.pair("-object", format!("memory-backend-ram,id=kiln-ram,size={size}M"));
            }
            Some((MemoryBackend::File { path, shared }, size)) => {
                let shared = if shared { "on" } else { "off" };
                let mut object = std::ffi::OsString::from(format!(
                    "memory-backend-file,id=kiln-ram,size={size}M,share={shared},mem-path="
                ));
                object.push(path);
                argv.pair("-object", object);
            }
        }
        if let Some(smp) = self.smp {
            argv.pair("-smp", smp.to_string());
        }
        match &self.firmware {
            Firmware::MachineDefault => {}
            Firmware::Bundled => {
                argv.pair("-bios", "default");
            }
            Firmware::None => {
                argv.pair("-bios", "none");
            }
            Firmware::File(path) => {
                argv.pair("-bios", path);
            }
            Firmware::Named(name) => {
                argv.pair("-bios", name);
            }
            Firmware::Uefi(ovmf) => ovmf.render(&mut argv),
        }
        argv.arg("-nodefaults").pair("-display", "none").arg("-no-reboot");
        match console {
            Console::Captured => argv.pair("-monitor", "none").pair("-serial", "stdio"),
            Console::Interactive => argv.pair("-serial", "mon:stdio"),
        };
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(arch: Arch) -> String {
        Machine::default_for(arch).argv(Path::new("/k"), Accel::Tcg, Console::Captured).display()
    }

    #[test]
    fn x86_64_default_argv() {
        assert_eq!(
            rendered(Arch::X86_64),
            "-machine q35,accel=tcg -m 128M -smp 1 -nodefaults -display none -no-reboot -monitor none \
             -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel /k"
        );
    }

    #[test]
    fn aarch64_default_argv() {
        assert_eq!(
            rendered(Arch::Aarch64),
            "-machine virt,accel=tcg -cpu cortex-a57 -m 128M -smp 1 -nodefaults -display none -no-reboot \
             -monitor none -serial stdio -semihosting-config enable=on,target=native -kernel /k"
        );
    }

    #[test]
    fn riscv64_default_argv() {
        assert_eq!(
            rendered(Arch::Riscv64),
            "-machine virt,accel=tcg -m 128M -smp 1 -bios default -nodefaults -display none -no-reboot \
             -monitor none -serial stdio -trace memory_region_ops_write -kernel /k"
        );
    }

    fn x86_with(devices: &[&str], args: &[&str]) -> Machine {
        let mut machine = Machine::default_for(Arch::X86_64);
        machine.devices.extend(devices.iter().map(|d| Device::Other((*d).to_owned())));
        machine.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        machine
    }

    fn debug_exits(machine: &Machine) -> usize {
        let argv = machine.argv(Path::new("/k"), Accel::Tcg, Console::Captured).display();
        argv.matches("isa-debug-exit").count()
    }

    #[test]
    fn an_exit_device_the_user_already_gives_is_rendered_once() {
        // bootimage's `test-args`, translated into `args`.
        let from_args = x86_with(&[], &["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-display", "none"]);
        assert_eq!(from_args.devices_given_by_user(), vec![&Device::DebugExit { iobase: 0xf4, iosize: 4 }]);
        assert_eq!(debug_exits(&from_args), 1);
        let argv = from_args.argv(Path::new("/k"), Accel::Tcg, Console::Captured).display();
        assert!(argv.ends_with("-kernel /k -device isa-debug-exit,iobase=0xf4,iosize=0x04 -display none"), "{argv}");
        // Listed in `devices`, with the port in decimal and another width: the same port.
        let listed = x86_with(&["isa-debug-exit,iosize=0x01,iobase=244"], &[]);
        assert_eq!(debug_exits(&listed), 1);
        assert_eq!(listed.exit_device(), Some(&Device::DebugExit { iobase: 0xf4, iosize: 4 }), "still the exit device");
    }

    #[test]
    fn an_exit_device_on_another_port_is_a_second_device() {
        for (devices, args) in [
            (vec!["isa-debug-exit,iobase=0x501,iosize=2"], vec![]),
            // No iobase: QEMU's default port 0x501.
            (vec![], vec!["-device", "isa-debug-exit"]),
            (vec!["virtio-rng-pci"], vec!["-device", "virtio-rng-pci"]),
        ] {
            let machine = x86_with(&devices, &args);
            assert!(machine.devices_given_by_user().is_empty(), "{devices:?} {args:?}");
            let expected = usize::from(devices.iter().chain(&args).any(|d| d.starts_with("isa-debug-exit"))) + 1;
            assert_eq!(debug_exits(&machine), expected, "{devices:?} {args:?}");
        }
    }

    #[test]
    fn semihosting_in_args_replaces_kilns() {
        let mut machine = Machine::default_for(Arch::Aarch64);
        machine.extra_args = vec!["-semihosting-config".into(), "enable=on,target=native,chardev=serial0".into()];
        assert_eq!(machine.devices_given_by_user(), vec![&Device::Semihosting]);
        let argv = machine.argv(Path::new("/k"), Accel::Tcg, Console::Captured).display();
        assert_eq!(argv.matches("-semihosting-config").count(), 1, "{argv}");
    }

    #[test]
    fn qemu_numbers_read_like_qemu_reads_them() {
        assert_eq!(parse_qemu_number("0xf4"), Some(0xf4));
        assert_eq!(parse_qemu_number("0XF4"), Some(0xf4));
        assert_eq!(parse_qemu_number("244"), Some(244));
        assert_eq!(parse_qemu_number("0364"), Some(0xf4));
        assert_eq!(parse_qemu_number("0"), Some(0));
        assert_eq!(parse_qemu_number("port"), None);
    }

    #[test]
    fn disk_boot_uses_a_snapshot_drive_and_board_defaults_drop_memory() {
        let mut machine = Machine::default_for(Arch::X86_64);
        machine.boot = BootMethod::Disk;
        machine.memory_mib = None;
        machine.devices.push(Device::Other("virtio-rng-pci".into()));
        let argv = machine.argv(Path::new("/img"), Accel::Tcg, Console::Captured).display();
        assert!(argv.ends_with("-device virtio-rng-pci -drive format=raw,snapshot=on,file=/img"), "{argv}");
        assert!(!argv.contains("-m "), "{argv}");
        assert_eq!(machine.exit_device(), Some(&Device::DebugExit { iobase: 0xf4, iosize: 4 }));
    }

    #[test]
    fn linux_argv_has_kernel_initrd_consoles_and_read_only_shares() {
        let boot = LinuxBoot {
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "console=ttyS0 quiet",
            program_output: Some((Path::new("/proc/1/fd/1"), Path::new("/proc/1/fd/2"))),
            program_input: Some(Path::new("/tmp/stdin.sock")),
            shares: vec![Share { host: Path::new("/pkg"), tag: "kiln0".into(), readonly: true }],
            disk: Some((Path::new("/rootfs.qcow2"), "qcow2")),
            agent_socket: None,
            qmp_socket: None,
            incoming: None,
            memory: None,
        };
        let argv = Machine::linux_default_for(Arch::X86_64).linux_argv(&boot, Accel::Tcg, Console::Captured);
        let argv = argv.display();
        assert!(argv.starts_with("-machine pc,accel=tcg -m 512M -smp 1 -bios qboot.rom"), "{argv}");
        assert!(argv.contains("-kernel /k -initrd /i -append console=ttyS0 quiet"), "{argv}");
        assert!(argv.contains("-chardev file,id=kiln-stdout,append=on,path=/proc/1/fd/1"), "{argv}");
        assert!(argv.contains("-device virtconsole,chardev=kiln-stderr,name=kiln-stderr"), "{argv}");
        assert!(argv.contains("-chardev socket,id=kiln-stdin,server=on,wait=on,path=/tmp/stdin.sock"), "{argv}");
        assert!(argv.contains("-device virtserialport,chardev=kiln-stdin,name=kiln-stdin"), "{argv}");
        assert!(argv.contains("-fsdev local,id=kiln-share0,security_model=none,readonly=on,path=/pkg"), "{argv}");
        assert!(argv.contains("-device virtio-9p-pci,fsdev=kiln-share0,mount_tag=kiln0"), "{argv}");
        assert!(argv.contains("-drive if=none,id=kiln-disk,format=qcow2,snapshot=on,file=/rootfs.qcow2"), "{argv}");
        assert!(argv.contains("-device virtio-blk-pci,drive=kiln-disk"), "{argv}");
        assert!(!argv.contains("isa-debug-exit"), "Linux guests report through kiln's init: {argv}");

        // A long-running guest's every MMIO write would fill its log: Linux boots are not traced.
        let mut riscv = Machine::linux_default_for(Arch::Riscv64);
        riscv.devices.push(Device::SifiveTest);
        let argv = riscv.linux_argv(&boot, Accel::Tcg, Console::Captured).display();
        assert!(!argv.contains("-trace"), "{argv}");
    }

    #[test]
    fn guest_memory_is_one_named_backend_anonymous_or_a_file() {
        let boot = |shared| LinuxBoot {
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "quiet",
            program_output: None,
            program_input: None,
            shares: Vec::new(),
            disk: None,
            agent_socket: None,
            qmp_socket: None,
            incoming: None,
            memory: Some(if shared {
                MemoryBackend::Anonymous
            } else {
                MemoryBackend::File { path: Path::new("/snap/ram"), shared }
            }),
        };
        let machine = Machine::linux_default_for(Arch::Aarch64);
        let saving = machine.linux_argv(&boot(true), Accel::Tcg, Console::Captured).display();
        assert!(
            saving.starts_with("-machine virt,accel=tcg,memory-backend=kiln-ram -cpu cortex-a57 -m 512M"),
            "{saving}"
        );
        assert!(saving.contains("-object memory-backend-ram,id=kiln-ram,size=512M"), "{saving}");
        let restoring = machine.linux_argv(&boot(false), Accel::Tcg, Console::Captured).display();
        assert!(
            restoring.contains("-object memory-backend-file,id=kiln-ram,size=512M,share=off,mem-path=/snap/ram"),
            "{restoring}"
        );
    }

    #[test]
    fn interactive_console_replaces_serial_and_monitor() {
        let argv =
            Machine::default_for(Arch::Riscv64).argv(Path::new("/k"), Accel::Tcg, Console::Interactive).display();
        assert!(argv.contains("-serial mon:stdio"), "{argv}");
        assert!(!argv.contains("-monitor none"), "{argv}");
        assert!(!argv.contains("-trace"), "trace lines would land on the user's terminal: {argv}");
    }
}
