//! Every way a riscv64 kernel ends QEMU under the default firmware (QEMU's bundled OpenSBI),
//! booted for real: the SBI reset extension with and without a failure reason, the legacy SBI
//! shutdown, and writes to the sifive_test finisher. Only the failures may fail.
//!
//! The guests are a few RISC-V instructions, encoded below, loaded as a raw image at
//! 0x80200000 where OpenSBI enters them in S-mode. Each prints `k` on the UART first.

use std::time::Duration;

use kiln_qemu::{
    BootOutcome, BootRequest, Console, Exit, FailReason, FinisherCommand, Judge, Machine, PassReason, Verdict,
    accel::Accel,
};
use kiln_types::Arch;

const ZERO: u32 = 0;
const T0: u32 = 5;
const T1: u32 = 6;
const A0: u32 = 10;
const A1: u32 = 11;
const A6: u32 = 16;
const A7: u32 = 17;

fn lui(rd: u32, upper: u32) -> u32 {
    (upper << 12) | (rd << 7) | 0x37
}

fn addi(rd: u32, rs1: u32, imm: u32) -> u32 {
    ((imm & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

fn addiw(rd: u32, rs1: u32, imm: u32) -> u32 {
    ((imm & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x1b
}

/// `sb`/`sw rs2, 0(rs1)`.
fn store(width: u32, rs2: u32, rs1: u32) -> u32 {
    (rs2 << 20) | (rs1 << 15) | (width << 12) | 0x23
}

const ECALL: u32 = 0x0000_0073;
/// `j .`
const SPIN: u32 = 0x0000_006f;

/// `li rd, value` for a positive 32-bit value.
fn li(rd: u32, value: u32) -> [u32; 2] {
    [lui(rd, (value + 0x800) >> 12), addiw(rd, rd, value & 0xfff)]
}

/// Prints `k\n` on the NS16550 UART at 0x10000000, runs `exit`, then spins.
fn guest(exit: &[u32]) -> Vec<u8> {
    let mut code = vec![lui(T0, 0x10000), addi(T1, ZERO, u32::from(b'k')), store(0, T1, T0)];
    code.extend([addi(T1, ZERO, u32::from(b'\n')), store(0, T1, T0)]);
    code.extend_from_slice(exit);
    code.push(SPIN);
    code.iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// SBI `system_reset(SHUTDOWN, reason)` (extension "SRST", function 0).
fn sbi_reset(reason: u32) -> Vec<u32> {
    let mut code = li(A7, 0x5352_5354).to_vec();
    code.extend([addi(A6, ZERO, 0), addi(A0, ZERO, 0), addi(A1, ZERO, reason), ECALL]);
    code
}

/// The legacy SBI `shutdown` (extension 0x08).
fn sbi_legacy_shutdown() -> Vec<u32> {
    vec![addi(A7, ZERO, 8), ECALL]
}

/// A 32-bit write of `value` to the finisher at 0x100000.
fn finisher(value: u32) -> Vec<u32> {
    let mut code = vec![lui(T0, 0x100)];
    code.extend(li(T1, value));
    code.push(store(2, T1, T0));
    code
}

async fn boot(name: &str, exit: &[u32]) -> (BootOutcome, Verdict) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join(format!("{name}.bin"));
    std::fs::write(&kernel, guest(exit)).expect("write the guest");
    let machine = Machine::default_for(Arch::Riscv64);
    let request = BootRequest {
        program: Arch::Riscv64.qemu_binary().to_owned(),
        argv: machine.argv(&kernel, Accel::Tcg, Console::Captured),
        timeout: Duration::from_secs(30),
        no_output_timeout: None,
        stop_on_success: false,
        log_path: dir.path().join(format!("{name}.log")),
        exit_marker: None,
        input: None,
    };
    let judge = Judge {
        failure: None,
        success: None,
        success_statuses: machine.exit_device().expect("sifive_test").success_statuses().to_vec(),
        guest_reports_status: false,
    };
    let outcome = kiln_qemu::boot(&request, &judge, |_| {})
        .await
        .unwrap_or_else(|err| panic!("{name}: QEMU ran (install qemu-system-misc): {err}"));
    assert!(outcome.tail.iter().any(|line| line == "k"), "{name}: the guest ran: {:?}", outcome.tail);
    let verdict = judge.judge(&outcome);
    (outcome, verdict)
}

#[tokio::test]
async fn passing_shutdowns_pass() {
    for (name, exit) in [
        ("srst-no-reason", sbi_reset(0)),
        ("legacy-shutdown", sbi_legacy_shutdown()),
        ("finisher-pass", finisher(0x5555)),
    ] {
        let (outcome, verdict) = boot(name, &exit).await;
        assert_eq!(outcome.exit, Exit::Status(0), "{name}");
        assert_eq!(outcome.finisher, Some(FinisherCommand::Pass), "{name}: the trace showed the finisher");
        assert_eq!(verdict, Verdict::Passed(PassReason::ExitStatus(0)), "{name}");
    }
}

#[tokio::test]
async fn an_sbi_system_failure_fails_although_qemu_exits_with_status_zero() {
    let (outcome, verdict) = boot("srst-system-failure", &sbi_reset(1)).await;
    assert_eq!(outcome.exit, Exit::Status(0), "QEMU's status alone says pass");
    assert_eq!(outcome.finisher, Some(FinisherCommand::Fail { code: 0 }));
    assert!(matches!(verdict, Verdict::Failed(FailReason::FinisherFailure { status: 0, .. })), "{verdict:?}");
    assert!(verdict.describe().contains("after `k`"), "{}", verdict.describe());
}

#[tokio::test]
async fn finisher_failures_fail_with_or_without_a_code() {
    let (_, coded) = boot("finisher-fail-3", &finisher((3 << 16) | 0x3333)).await;
    assert!(matches!(coded, Verdict::Failed(FailReason::ExitStatus { status: 3, .. })), "{coded:?}");
    let (_, bare) = boot("finisher-fail-0", &finisher(0x3333)).await;
    assert!(matches!(bare, Verdict::Failed(FailReason::FinisherFailure { .. })), "{bare:?}");
}

#[test]
fn the_encoder_matches_the_assembler() {
    // `llvm-mc -triple=riscv64 -show-encoding`: lui t0, 65536 / addi t1, zero, 107 / sb t1, 0(t0)
    assert_eq!(lui(T0, 0x10000), 0x1000_02b7);
    assert_eq!(addi(T1, ZERO, 107), 0x06b0_0313);
    assert_eq!(store(0, T1, T0), 0x0062_8023);
    // lui a7, 341285 / addiw a7, a7, 852 (li a7, 0x53525354) / sw t1, 0(t0)
    assert_eq!(li(A7, 0x5352_5354), [0x5352_58b7, 0x3548_889b]);
    assert_eq!(store(2, T1, T0), 0x0062_a023);
}
