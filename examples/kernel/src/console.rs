//! A `core::fmt::Write` console over the board's serial port, and `println!`.

use core::fmt;

use crate::board;

/// The board's serial console.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        board::console_write(s.as_bytes());
        Ok(())
    }
}

/// Prints a formatted line to the serial console.
macro_rules! println {
    () => {
        $crate::board::console_write(b"\n")
    };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        // Writing to the console cannot fail.
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
pub(crate) use println;
