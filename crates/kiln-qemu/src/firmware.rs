//! Finding QEMU and the firmware files a machine needs, and naming the packages that
//! provide them.

use std::path::{Path, PathBuf};

use kiln_types::Arch;

use crate::{Firmware, Machine, Ovmf, QemuError};

/// Directories QEMU's distributions install firmware into.
const DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/share/qemu-efi-aarch64",
    "/usr/local/share/qemu",
    "/opt/homebrew/share/qemu",
    "/usr/share/edk2/ovmf",
];

/// Where distributions install OVMF's code and variable store, in order of preference:
/// Debian and Ubuntu (4 MiB, then 2 MiB builds), Fedora, Arch, QEMU's own bundle.
const OVMF_PAIRS: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
    ("/usr/share/qemu/edk2-x86_64-code.fd", "/usr/share/qemu/edk2-i386-vars.fd"),
    ("/opt/homebrew/share/qemu/edk2-x86_64-code.fd", "/opt/homebrew/share/qemu/edk2-i386-vars.fd"),
];

/// The Debian/Ubuntu package that provides OVMF.
pub const OVMF_PACKAGE: &str = "ovmf";

/// OVMF (UEFI for x86_64 guests) as this host has it: the first code and variable store pair
/// of [`OVMF_PAIRS`] that exists, or an error naming the package that provides it. `who`
/// names what needs it in the error.
pub fn find_ovmf(who: &str) -> Result<Ovmf, QemuError> {
    find_ovmf_in(OVMF_PAIRS, who)
}

fn find_ovmf_in(pairs: &[(&str, &str)], who: &str) -> Result<Ovmf, QemuError> {
    pairs
        .iter()
        .find(|(code, vars)| Path::new(code).is_file() && Path::new(vars).is_file())
        .map(|(code, vars)| Ovmf { code: PathBuf::from(code), vars_template: PathBuf::from(vars), vars: None })
        .ok_or_else(|| QemuError::FirmwareMissing {
            file: "OVMF_CODE.fd and OVMF_VARS.fd (UEFI)".to_owned(),
            machine: who.to_owned(),
            searched: pairs.iter().map(|(code, _)| *code).collect::<Vec<_>>().join(", "),
            package: OVMF_PACKAGE,
        })
}

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
    if let Firmware::Uefi(ovmf) = &machine.firmware
        && let Some(missing) = [&ovmf.code, &ovmf.vars_template].into_iter().find(|file| !file.is_file())
    {
        return Err(QemuError::FirmwareMissing {
            file: missing.display().to_string(),
            machine: machine.name.clone(),
            searched: "the path kiln found it at before".to_owned(),
            package: OVMF_PACKAGE,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovmf_is_the_first_complete_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"fd").expect("write");
            path.display().to_string()
        };
        let (lone_code, code, vars) = (file("lone_CODE.fd"), file("OVMF_CODE.fd"), file("OVMF_VARS.fd"));
        let absent = dir.path().join("absent.fd").display().to_string();
        let pairs = [(lone_code.as_str(), absent.as_str()), (code.as_str(), vars.as_str())];
        let ovmf = find_ovmf_in(&pairs, "artifact `os`").expect("the second pair is complete");
        assert_eq!(
            (ovmf.code.display().to_string(), ovmf.vars_template.display().to_string()),
            (code.clone(), vars.clone())
        );
        assert_eq!(ovmf.vars, None, "no boot's copy yet");

        let err = find_ovmf_in(&pairs[..1], "artifact `os`").expect_err("no complete pair");
        assert!(matches!(&err, QemuError::FirmwareMissing { package: "ovmf", .. }), "{err:?}");
        assert!(err.to_string().contains("artifact `os`"), "{err}");
    }

    #[test]
    fn a_boot_writes_its_own_copy_of_the_variable_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = dir.path().join("OVMF_VARS.fd");
        std::fs::write(&template, b"vars").expect("write");
        let mut permissions = std::fs::metadata(&template).expect("metadata").permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&template, permissions).expect("read-only template");
        let ovmf = Ovmf { code: dir.path().join("OVMF_CODE.fd"), vars_template: template.clone(), vars: None };
        let scratch = tempfile::tempdir().expect("scratch");
        let booted = ovmf.copy_vars_into(scratch.path()).expect("copy");
        let copy = booted.vars.clone().expect("a copy");
        assert!(copy.starts_with(scratch.path()));
        std::fs::write(&copy, b"written by the guest").expect("the copy is writable");
        assert_eq!(std::fs::read(&template).expect("read"), b"vars", "the template is untouched");

        let mut machine = Machine::default_for(Arch::X86_64);
        machine.firmware = Firmware::Uefi(booted);
        let argv = machine.argv(Path::new("/uefi.img"), crate::accel::Accel::Tcg, crate::Console::Captured).display();
        let code = format!("-drive if=pflash,format=raw,unit=0,readonly=on,file={}", ovmf.code.display());
        let vars = format!("-drive if=pflash,format=raw,unit=1,file={}", copy.display());
        assert!(argv.contains(&code) && argv.contains(&vars), "{argv}");
        assert!(!argv.contains(&template.display().to_string()), "{argv}");

        machine.firmware = Firmware::Uefi(ovmf);
        let argv = machine.argv(Path::new("/uefi.img"), crate::accel::Accel::Tcg, crate::Console::Captured).display();
        assert!(argv.contains("unit=1,snapshot=on,file="), "without a copy the template is never written: {argv}");
    }
}
