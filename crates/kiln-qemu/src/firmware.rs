//! Finding QEMU and the firmware files a machine needs, and naming the packages that
//! provide them.

use std::path::{Path, PathBuf};

use kiln_types::Arch;

use crate::{Firmware, Machine, QemuError};

/// Directories QEMU's distributions install firmware into.
const DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/share/qemu-efi-aarch64",
    "/usr/local/share/qemu",
    "/opt/homebrew/share/qemu",
    "/usr/share/edk2/ovmf",
];

/// The Debian/Ubuntu package that provides a QEMU binary.
pub fn qemu_package(program: &str) -> &'static str {
    match program {
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        "qemu-system-riscv64" => "qemu-system-misc",
        _ => "qemu-system",
    }
}

/// Finds `program` on `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    kiln_types::find_program(program)
}

/// A file a machine needs from the host, and the package that provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The file name QEMU looks for.
    pub file: &'static str,
    /// The Debian/Ubuntu package that provides it.
    pub package: &'static str,
}

/// The firmware files `machine` needs that QEMU loads by name.
pub fn requirements(machine: &Machine) -> Vec<Requirement> {
    match (machine.arch, &machine.firmware) {
        (Arch::X86_64, Firmware::MachineDefault) => vec![
            Requirement { file: "bios-256k.bin", package: "seabios" },
            Requirement { file: "pvh.bin", package: "qemu-system-data" },
        ],
        (_, Firmware::Named(name)) if name == "qboot.rom" => {
            vec![Requirement { file: "qboot.rom", package: "qemu-system-data" }]
        }
        (Arch::Riscv64, Firmware::Bundled) => {
            vec![Requirement { file: "opensbi-riscv64-generic-fw_dynamic.bin", package: "qemu-system-data" }]
        }
        _ => Vec::new(),
    }
}

/// Checks that QEMU and every firmware file `machine` needs exist on this host.
pub fn check(machine: &Machine) -> Result<(), QemuError> {
    let program = machine.arch.qemu_binary();
    if find_program(program).is_none() {
        return Err(QemuError::QemuMissing { program: program.to_owned(), package: qemu_package(program) });
    }
    if let Firmware::File(path) = &machine.firmware
        && !path.is_file()
    {
        return Err(QemuError::FirmwareMissing {
            file: path.display().to_string(),
            machine: machine.name.clone(),
            searched: "the path given in Kiln.toml".to_owned(),
            package: "the package that ships this firmware",
        });
    }
    if let Firmware::Named(name) = &machine.firmware
        && !DATA_DIRS.iter().any(|dir| Path::new(dir).join(name).is_file())
    {
        return Err(QemuError::FirmwareMissing {
            file: name.clone(),
            machine: machine.name.clone(),
            searched: DATA_DIRS.join(", "),
            package: "qemu-system-data",
        });
    }
    for requirement in requirements(machine) {
        let found = DATA_DIRS.iter().any(|dir| Path::new(dir).join(requirement.file).is_file());
        if !found {
            return Err(QemuError::FirmwareMissing {
                file: requirement.file.to_owned(),
                machine: machine.name.clone(),
                searched: DATA_DIRS.join(", "),
                package: requirement.package,
            });
        }
    }
    Ok(())
}
