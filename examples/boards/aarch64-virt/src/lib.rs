//! Board support for QEMU's aarch64 `virt` machine, entered at EL1 with the MMU off.
#![no_std]
// On other architectures this crate is empty, so whole-workspace builds still work.
#![cfg(target_arch = "aarch64")]

use core::ptr::{read_volatile, write_volatile};

// QEMU enters `_start` at EL1 with the MMU off. The boot code parks every
// core but the first, enables FP/SIMD (Rust code uses those registers),
// clears .bss, switches to a 64 KiB stack and calls `kernel_main`.
core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
_start:
    mrs x0, mpidr_el1
    tst x0, #0xff
    b.ne 3f
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    adrp x0, __bss_start
    add x0, x0, :lo12:__bss_start
    adrp x1, __bss_end
    add x1, x1, :lo12:__bss_end
1:  cmp x0, x1
    b.hs 2f
    str xzr, [x0], #8
    b 1b
2:  adrp x0, __stack_top
    add x0, x0, :lo12:__stack_top
    mov sp, x0
    bl kernel_main
3:  wfe
    b 3b

    .section .bss.stack, "aw", @nobits
    .balign 16
    .space 65536
__stack_top:
    "#
);

/// Base address of the PL011 UART; the data register is at offset 0.
const UART: usize = 0x0900_0000;
/// Flag register bit: the transmit FIFO is full.
const FR_TXFF: u32 = 1 << 5;

/// Writes bytes to the board's serial console (polling, no init needed under QEMU).
pub fn console_write(bytes: &[u8]) {
    let data = UART as *mut u32;
    let flags = (UART + 0x18) as *const u32;
    for &byte in bytes {
        // SAFETY: the PL011 registers are mapped at these addresses on `virt`.
        unsafe {
            while read_volatile(flags) & FR_TXFF != 0 {}
            write_volatile(data, u32::from(byte));
        }
    }
}

/// Leaves QEMU: `true` = the kernel passed, `false` = it failed.
pub fn exit(success: bool) -> ! {
    // The SYS_EXIT parameter block: ADP_Stopped_ApplicationExit and the exit code.
    let block: [u64; 2] = [0x2_0026, if success { 0 } else { 1 }];
    // SAFETY: a semihosting SYS_EXIT call only reads the block and stops QEMU.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            inlateout("x0") 0x18u64 => _,
            in("x1") block.as_ptr(),
            options(nostack),
        );
    }
    loop {
        // SAFETY: waiting for an event has no memory effects.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}
