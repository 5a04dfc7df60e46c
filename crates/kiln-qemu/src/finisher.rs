//! The riscv64 `virt` machine's sifive_test finisher: what a write to it means, and reading
//! those writes from QEMU's trace, because QEMU's exit status alone cannot tell a failure
//! with code 0 from a pass.
//!
//! OpenSBI up to 1.2 resets through this device and turns an SBI `system_reset(SHUTDOWN,
//! SYSTEM_FAILURE)` into `FINISHER_FAIL` with code 0, and QEMU exits with the code: status 0,
//! the same as a pass. kiln therefore asks QEMU to trace MMIO writes
//! (`-trace memory_region_ops_write`, on standard error) and reads the finisher's last command.

/// The trace event that shows every MMIO write with its value and memory region.
pub(crate) const TRACE_EVENT: &str = "memory_region_ops_write";

/// The finisher's memory region (`TYPE_SIFIVE_TEST`) as a trace line names it.
const REGION_FIELD: &str = "name 'riscv.sifive.test'";

/// A command written to the sifive_test finisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinisherCommand {
    /// `0x5555`: the guest passed; QEMU exits with status 0.
    Pass,
    /// `(code << 16) | 0x3333`: the guest failed; QEMU exits with status `code`, so code 0
    /// reads as a pass from the status alone.
    Fail {
        /// The code in the upper 16 bits.
        code: u16,
    },
    /// `0x7777`: the guest asked for a reset (with `-no-reboot`, QEMU exits with status 0).
    Reset,
}

impl FinisherCommand {
    /// The command a value written to the finisher encodes, if it is one QEMU acts on.
    pub fn from_value(value: u64) -> Option<Self> {
        let code = ((value >> 16) & 0xffff) as u16;
        match value & 0xffff {
            0x5555 => Some(Self::Pass),
            0x3333 => Some(Self::Fail { code }),
            0x7777 => Some(Self::Reset),
            _ => None,
        }
    }
}

/// One line QEMU printed on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StderrLine {
    /// A traced write that gave the finisher a command.
    Finisher(FinisherCommand),
    /// Another traced MMIO write (the UART, virtio, ...): not worth keeping.
    OtherWrite,
    /// Anything else: QEMU's own messages, kept for error reports.
    Message,
}

/// Reads one line of QEMU's standard error. A trace line looks like
/// `memory_region_ops_write cpu 0 mr 0x55.. addr 0x100000 value 0x3333 size 2 name 'riscv.sifive.test'`
/// (newer QEMUs may prefix `PID@SECONDS.MICROS:`).
pub(crate) fn classify(line: &str) -> StderrLine {
    let Some(at) = line.find(TRACE_EVENT) else {
        return StderrLine::Message;
    };
    let fields = &line[at + TRACE_EVENT.len()..];
    // Every MMIO write is traced (each byte to the UART, too): skip the others cheaply.
    if !fields.contains(REGION_FIELD) {
        return StderrLine::OtherWrite;
    }
    let mut words = fields.split_whitespace();
    let value = words
        .by_ref()
        .skip_while(|word| *word != "value")
        .nth(1)
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok());
    match value.and_then(FinisherCommand::from_value) {
        Some(command) => StderrLine::Finisher(command),
        None => StderrLine::OtherWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finisher_values_decode_to_commands() {
        assert_eq!(FinisherCommand::from_value(0x5555), Some(FinisherCommand::Pass));
        assert_eq!(FinisherCommand::from_value(0x3333), Some(FinisherCommand::Fail { code: 0 }));
        assert_eq!(FinisherCommand::from_value((3 << 16) | 0x3333), Some(FinisherCommand::Fail { code: 3 }));
        assert_eq!(FinisherCommand::from_value(0x7777), Some(FinisherCommand::Reset));
        assert_eq!(FinisherCommand::from_value(0x1234), None);
    }

    #[test]
    fn trace_lines_of_qemu_7_2_and_later_are_read() {
        let fail = "memory_region_ops_write cpu 0 mr 0x5621b5b6ebf0 addr 0x100000 value 0x3333 size 2 name 'riscv.sifive.test'";
        assert_eq!(classify(fail), StderrLine::Finisher(FinisherCommand::Fail { code: 0 }));
        let stamped = "12345@1700000000.000001:memory_region_ops_write cpu 0 mr 0x1 addr 0x0 value 0x5555 size 4 name 'riscv.sifive.test'";
        assert_eq!(classify(stamped), StderrLine::Finisher(FinisherCommand::Pass));
        let uart = "memory_region_ops_write cpu 0 mr 0x1 addr 0x10000000 value 0x58 size 1 name 'serial'";
        assert_eq!(classify(uart), StderrLine::OtherWrite);
        assert_eq!(classify("qemu-system-riscv64: -kernel k: could not load kernel"), StderrLine::Message);
    }
}
