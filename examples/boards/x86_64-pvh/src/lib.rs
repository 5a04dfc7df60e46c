//! Board support for x86_64 booted by QEMU through the PVH entry point.
#![no_std]
// On other architectures this crate is empty, so whole-workspace builds still work.
#![cfg(target_arch = "x86_64")]

use core::arch::asm;

// QEMU finds the 32-bit entry point in the `.note.Xen` note (type 18,
// XEN_ELFNOTE_PHYS32_ENTRY) and starts `_start` in 32-bit protected mode
// with paging off. The boot code clears .bss, identity-maps the first GiB
// with 2 MiB pages, enables long mode, loads a 64-bit GDT, switches to a
// 64 KiB stack and calls `kernel_main`.
core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long _start

    .section .text.boot, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl $boot_pdpt + 3, boot_pml4
    movl $boot_pd + 3, boot_pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b

    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $2f

    .code64
2:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $__stack_top, %rsp
    xorl %ebp, %ebp
    call kernel_main
3:  cli
    hlt
    jmp 3b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .space 4096
boot_pdpt:
    .space 4096
boot_pd:
    .space 4096
    .balign 16
    .space 65536
__stack_top:
    "#,
    options(att_syntax)
);

/// The COM1 serial port.
const COM1: u16 = 0x3F8;
/// Line status register bit: the transmit holding register is empty.
const LSR_THRE: u8 = 1 << 5;
/// The I/O port of QEMU's isa-debug-exit device.
const DEBUG_EXIT: u16 = 0xF4;

/// Writes bytes to the board's serial console (polling, no init needed under QEMU).
pub fn console_write(bytes: &[u8]) {
    for &byte in bytes {
        // SAFETY: COM1 is a standard 16550 UART; port I/O touches no memory.
        unsafe {
            while inb(COM1 + 5) & LSR_THRE == 0 {}
            asm!("out dx, al", in("dx") COM1, in("al") byte, options(nomem, nostack, preserves_flags));
        }
    }
}

/// Leaves QEMU: `true` = the kernel passed, `false` = it failed.
pub fn exit(success: bool) -> ! {
    // QEMU exits with `(value << 1) | 1`: 33 for a pass and 3 for a failure.
    let value: u32 = if success { 0x10 } else { 0x01 };
    // SAFETY: writing to isa-debug-exit stops QEMU; port I/O touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") DEBUG_EXIT, in("eax") value, options(nomem, nostack, preserves_flags));
    }
    loop {
        // SAFETY: halting with interrupts off just stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port must be safe to read.
unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}
