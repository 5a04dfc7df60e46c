//! Board support for QEMU's riscv64 `virt` machine, booted by OpenSBI into S-mode.
#![no_std]
// On other architectures this crate is empty, so whole-workspace builds still work.
#![cfg(target_arch = "riscv64")]

use core::ptr::{read_volatile, write_volatile};

// OpenSBI enters `_start` in S-mode with a0 = hart id and a1 = device tree.
// The boot code masks interrupts, turns on the FPU (the target uses hard
// floats), clears .bss, switches to a 64 KiB stack and calls `kernel_main`.
core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
_start:
    csrw sie, zero
    csrci sstatus, 2
    li t0, 0x2000
    csrs sstatus, t0
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 1b
2:  la sp, __stack_top
    call kernel_main
3:  wfi
    j 3b

    .section .bss.stack, "aw", @nobits
    .balign 16
    .space 65536
__stack_top:
    "#
);

/// Base address of the NS16550 UART.
const UART: usize = 0x1000_0000;
/// Line status register bit: the transmit holding register is empty.
const LSR_THRE: u8 = 1 << 5;
/// Address of QEMU's sifive_test device, which powers the machine off.
const TEST_DEVICE: usize = 0x10_0000;

/// Writes bytes to the board's serial console (polling, no init needed under QEMU).
pub fn console_write(bytes: &[u8]) {
    let thr = UART as *mut u8;
    let lsr = (UART + 5) as *const u8;
    for &byte in bytes {
        // SAFETY: the UART registers are mapped at these addresses on `virt`.
        unsafe {
            while read_volatile(lsr) & LSR_THRE == 0 {}
            write_volatile(thr, byte);
        }
    }
}

/// Leaves QEMU: `true` = the kernel passed, `false` = it failed.
pub fn exit(success: bool) -> ! {
    let value: u32 = if success { 0x5555 } else { (1 << 16) | 0x3333 };
    // SAFETY: the sifive_test device is mapped here; the write stops QEMU.
    unsafe { write_volatile(TEST_DEVICE as *mut u32, value) };
    // Should the device be unreachable, ask the SBI firmware to shut down.
    sbi_system_reset(if success { 0 } else { 1 });
    loop {
        // SAFETY: waiting for an interrupt has no memory effects.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

/// Calls the SBI system reset extension (SRST) to shut down with `reason`.
fn sbi_system_reset(reason: usize) {
    // SAFETY: an SBI call only returns if the firmware refused the request.
    unsafe {
        core::arch::asm!(
            "ecall",
            inlateout("a0") 0usize => _,
            inlateout("a1") reason => _,
            in("a6") 0usize,
            in("a7") 0x5352_5354usize,
            options(nostack),
        );
    }
}
