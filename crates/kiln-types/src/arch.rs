//! Guest architectures kiln can build for and boot.

use std::{fmt, str::FromStr};

/// A guest CPU architecture.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit x86 (`q35` machine, isa-debug-exit).
    #[value(name = "x86_64")]
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm (`virt` machine, semihosting exit).
    Aarch64,
    /// 64-bit RISC-V (`virt` machine, sifive_test exit).
    Riscv64,
}

impl Arch {
    /// Every architecture, in the order reports list them.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    /// The name used in Kiln.toml, on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The bare-metal Rust target triple for this architecture.
    pub fn bare_metal_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
            Arch::Riscv64 => "riscv64gc-unknown-none-elf",
        }
    }

    /// The QEMU system emulator binary for this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
            Arch::Riscv64 => "qemu-system-riscv64",
        }
    }

    /// The architecture of the machine kiln runs on, if kiln knows it.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            "riscv64" => Some(Arch::Riscv64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text did not name an architecture kiln knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseArchError(pub String);

impl fmt::Display for ParseArchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown architecture `{}` (expected one of: x86_64, aarch64, riscv64)", self.0)
    }
}

impl std::error::Error for ParseArchError {}

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL.into_iter().find(|arch| arch.as_str() == s).ok_or_else(|| ParseArchError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.as_str().parse::<Arch>(), Ok(arch));
            assert_eq!(arch.to_string(), arch.as_str());
        }
        assert!("x86-64".parse::<Arch>().is_err());
    }
}
