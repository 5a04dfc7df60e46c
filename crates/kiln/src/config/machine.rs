//! `[machine.NAME]`: a QEMU profile, over kiln's built-in one for its architecture.

use kiln_qemu::{BootMethod, Device, Firmware, Machine};
use kiln_types::Arch;

use super::{
    ConfigError, raw,
    raw::RawMachine,
    resolve::{Resolver, parse_size},
};

/// Which guest-size keys a `[machine.NAME]` table set itself. `run` sizes the others of a
/// built-in Linux profile (`linux-ARCH`) from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SizeKeys {
    /// `smp` (or another board, which keeps its own CPU count).
    pub smp: bool,
    /// `memory` (or another board, which keeps its own memory size).
    pub memory: bool,
}

/// The architecture a built-in profile's name says: `x86_64` or `linux-x86_64`.
fn builtin_arch(name: &str) -> Option<Arch> {
    name.strip_prefix("linux-").unwrap_or(name).parse::<Arch>().ok()
}

impl Resolver<'_> {
    /// A `[machine.NAME]` table over its base profile, and which size keys it set.
    pub(super) fn machine(&self, name: &str, raw: RawMachine) -> Result<(Machine, SizeKeys), ConfigError> {
        let key = |k: &str| format!("machine.{name}.{k}");
        let mut size_keys = SizeKeys { smp: raw.smp.is_some(), memory: raw.memory.is_some() };
        let arch = match (&raw.arch, builtin_arch(name)) {
            (Some(arch), Some(named)) if *arch.get_ref() != named => {
                return Err(self.error(
                    Some(arch.span()),
                    key("arch"),
                    format!("machine `{name}` is the built-in {named} profile but sets arch = \"{}\"", arch.get_ref()),
                ));
            }
            (Some(arch), _) => *arch.get_ref(),
            (None, Some(named)) => named,
            (None, None) => {
                return Err(self
                    .error(None, format!("machine.{name}"), format!("machine `{name}` does not say its architecture"))
                    .with_help("add `arch = \"x86_64\"` (or aarch64, riscv64) to the table"));
            }
        };
        // The built-in Linux profiles (`linux-ARCH`) are the base of their own overrides.
        let mut machine = if name == Machine::linux_default_for(arch).name {
            Machine::linux_default_for(arch)
        } else {
            Machine::default_for(arch)
        };
        machine.name = name.to_owned();
        if let Some(machine_type) = raw.machine
            && machine_type != machine.machine_type
        {
            // Another board fixes its own CPU and memory size: keep QEMU's defaults for it.
            machine.machine_type = machine_type;
            size_keys = SizeKeys { smp: true, memory: true };
            machine.cpu = None;
            machine.memory_mib = None;
            machine.smp = None;
        }
        if let Some(cpu) = raw.cpu {
            machine.cpu = Some(cpu);
        }
        if let Some(memory) = raw.memory {
            let mib = parse_size(memory.get_ref()).ok_or_else(|| {
                self.error(Some(memory.span()), key("memory"), "memory must be MiB or a size like \"256M\" or \"1G\"")
            })?;
            if mib == 0 {
                return Err(self
                    .error(Some(memory.span()), key("memory"), "a guest needs memory: 0 MiB is not a size")
                    .with_help("e.g. `memory = \"512M\"`, or leave it out for the machine's default"));
            }
            machine.memory_mib = Some(mib);
        }
        if let Some(smp) = raw.smp {
            if *smp.get_ref() == 0 {
                return Err(self
                    .error(Some(smp.span()), key("smp"), "a guest needs at least one CPU: `smp = 0`")
                    .with_help("e.g. `smp = 2`, or leave it out for the machine's default"));
            }
            machine.smp = Some(*smp.get_ref());
        }
        if let Some(firmware) = raw.firmware {
            machine.firmware = match firmware.as_str() {
                "default" => Firmware::Bundled,
                "none" => Firmware::None,
                "machine" => Firmware::MachineDefault,
                named if named.starts_with("qemu:") => Firmware::Named(named["qemu:".len()..].to_owned()),
                path => {
                    let file = self.root.join(path);
                    if !file.is_file() {
                        return Err(self
                            .error(None, key("firmware"), format!("firmware file `{}` does not exist", file.display()))
                            .with_help(
                                "give a path relative to Kiln.toml, or \"default\" (QEMU's bundled firmware), \"none\" or \"machine\"",
                            ));
                    }
                    Firmware::File(file)
                }
            };
        }
        if let Some(args) = raw.args {
            machine.extra_args = args;
        }
        if let Some(semihosting) = raw.semihosting {
            machine.devices.retain(|device| *device != Device::Semihosting);
            if semihosting {
                machine.devices.insert(0, Device::Semihosting);
            }
        }
        if let Some(devices) = raw.devices {
            machine.devices.extend(devices.into_iter().map(Device::Other));
        }
        if let Some(boot) = raw.boot {
            machine.boot = match boot {
                raw::RawBoot::Kernel => BootMethod::Kernel,
                raw::RawBoot::Disk => BootMethod::Disk,
            };
        }
        Ok((machine, size_keys))
    }
}
