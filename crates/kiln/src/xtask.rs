//! The facade a project's own `cargo xtask` calls.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     kiln::xtask::main()
//! }
//! ```

use std::{ffi::OsString, process::ExitCode};

use clap::Parser;

pub use crate::cli::{Cli, Command};
use crate::{commands::UsageError, config::ConfigError, exit_code};

/// Parses the process's arguments, runs the command, prints any error, and returns the exit
/// code. Never calls `process::exit`, never changes the working directory or environment.
pub fn main() -> ExitCode {
    run_args(std::env::args_os())
}

/// As [`main`], with explicit arguments (the first one is the program name).
pub fn run_args(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    ExitCode::from(run_args_to_code(args))
}

/// As [`run_args`], returning the numeric exit code (see [`crate::exit_code`]).
pub fn run_args_to_code(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    match Cli::try_parse_from(args) {
        Ok(cli) => run_to_code(cli),
        Err(err) => {
            let _ = err.print();
            if err.use_stderr() { exit_code::USAGE } else { exit_code::SUCCESS }
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    ExitCode::from(run_to_code(cli))
}

fn run_to_code(cli: Cli) -> u8 {
    match crate::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}", render_error(&err));
            error_exit_code(&err)
        }
    }
}

/// The exit code an error maps to.
pub fn error_exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<ConfigError>() || e.is::<UsageError>()) {
        exit_code::USAGE
    } else if err.chain().any(|e| matches!(e.downcast_ref(), Some(kiln_store::StoreError::Build { .. }))) {
        exit_code::CASES_FAILED
    } else {
        exit_code::INFRASTRUCTURE
    }
}

/// `error: …`, one `Caused by:` line per cause, then `help:` when known.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut text = format!("error: {err}");
    if let Some(usage) = err.downcast_ref::<UsageError>()
        && let Some(help) = &usage.help
    {
        text.push_str(&format!("\nhelp: {help}"));
    }
    for cause in err.chain().skip(1) {
        text.push_str(&format!("\nCaused by: {cause}"));
    }
    text
}
