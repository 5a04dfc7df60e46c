//! kiln's example kernel: greets over serial, checks itself and tells QEMU the verdict.
#![no_std]
#![no_main]

mod console;

use core::fmt::{self, Write as _};
use core::hint::black_box;
use core::panic::PanicInfo;

use console::println;

#[cfg(target_arch = "x86_64")]
use board_x86_64_pvh as board;

#[cfg(target_arch = "aarch64")]
use board_aarch64_virt as board;

#[cfg(target_arch = "riscv64")]
use board_riscv64_virt as board;

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
compile_error!("hello-kernel supports only x86_64, aarch64 and riscv64");

/// The architecture this kernel was built for.
const ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64"
} else if cfg!(target_arch = "aarch64") {
    "aarch64"
} else {
    "riscv64"
};

/// The kernel's entry point, called by the board's boot code on a fresh stack.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main() -> ! {
    println!("hello from kiln's example kernel on {ARCH}");

    if cfg!(feature = "panic") {
        println!("kiln-example: panicking on purpose");
        panic!("deliberate panic to prove failures are caught");
    }
    if cfg!(feature = "fail") {
        println!("kiln-example: failing on purpose");
        board::exit(false);
    }
    if cfg!(feature = "hang") {
        println!("kiln-example: hanging on purpose");
        loop {
            core::hint::spin_loop();
        }
    }

    // `&` rather than `&&`, so that every check runs and reports.
    let passed = report("arithmetic", check_arithmetic()) & report("fmt", check_fmt());
    if passed {
        println!("kiln-example: all checks passed");
    } else {
        println!("kiln-example: some checks failed");
    }
    board::exit(passed)
}

/// Prints the outcome of the check `name` and passes `ok` through.
fn report(name: &str, ok: bool) -> bool {
    println!(
        "kiln-example: check {name}: {}",
        if ok { "ok" } else { "FAILED" }
    );
    ok
}

/// Sums a series and computes a Fibonacci number through values the optimiser cannot see.
fn check_arithmetic() -> bool {
    let n = black_box(100u64);
    let sum: u64 = (1..=n).sum();
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..black_box(50) {
        (a, b) = (b, a.wrapping_add(b));
    }
    sum == 5050 && a == 12_586_269_025 && black_box(-7i64) * 6 == -42
}

/// Formats integers in a few styles into a stack buffer and compares the text.
fn check_fmt() -> bool {
    let mut buf = Buffer {
        bytes: [0; 64],
        len: 0,
    };
    let written = write!(
        buf,
        "{:#x} {} {:>5} {:08b}",
        black_box(255),
        black_box(-42),
        "kiln",
        black_box(5u8)
    );
    written.is_ok() && buf.as_bytes() == b"0xff -42  kiln 00000101"
}

/// A fixed-size text buffer that formatted output can be written into.
struct Buffer {
    bytes: [u8; 64],
    len: usize,
}

impl Buffer {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for Buffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Reports the panic on the console and tells QEMU the kernel failed.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    match info.location() {
        Some(loc) => println!(
            "panicked at {}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => println!("panicked: {}", info.message()),
    }
    board::exit(false)
}
