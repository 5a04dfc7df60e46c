//! The facade a project's own `cargo xtask` calls. It is small and kept stable; the crates
//! behind it may move faster.
//!
//! The three-line `main`:
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     kiln::xtask::main()
//! }
//! ```
//!
//! Your own verbs beside kiln's, with plain clap:
//! ```no_run
//! use kiln::{clap::{self, Parser, Subcommand}, xshell::cmd, xtask::{Cx, GlobalArgs, Run}};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     global: GlobalArgs,
//!     #[command(subcommand)]
//!     command: Cmd,
//! }
//!
//! #[derive(Subcommand)]
//! enum Cmd {
//!     #[command(flatten)]
//!     Kiln(kiln::xtask::Command),
//!     /// Pack the kernel into a disk image: a custom step, cached in kiln's store.
//!     Pack,
//! }
//!
//! impl Run for Cmd {
//!     fn run(self, global: &GlobalArgs) -> kiln::anyhow::Result<u8> {
//!         match self {
//!             Cmd::Kiln(command) => command.run(global),
//!             Cmd::Pack => {
//!                 let cx = Cx::from_args(global)?;
//!                 // Every artifact on x86_64, built through the store (cached by closure).
//!                 let kernels = cx.build(&[], &[kiln::xtask::Arch::X86_64])?;
//!                 let mut step = cx.step("pack");
//!                 for built in &kernels {
//!                     step = step.input_build(built);
//!                 }
//!                 let (out, _) = step.build(|out| {
//!                     let sh = cx.shell()?;
//!                     let image = out.join("disk.img");
//!                     let kernels: Vec<_> = kernels.iter().flat_map(|b| b.images.clone()).collect();
//!                     cmd!(sh, "mkimage --out {image} {kernels...}").run()?;
//!                     Ok(())
//!                 })?;
//!                 println!("{}", out.join("disk.img").display());
//!                 Ok(kiln::exit_code::SUCCESS)
//!             }
//!         }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let cli = Cli::parse();
//!     kiln::xtask::run_with(&cli.global, cli.command)
//! }
//! ```

use std::{ffi::OsString, process::ExitCode};

use clap::Parser;

pub use kiln_qemu::{FailReason, PassReason, Verdict};
pub use kiln_store::{BuildOutcome, ClosureHash};
pub use kiln_types::Arch;

pub use crate::{
    cli::{
        AccelArg, ArtifactArg, BenchArgs, BenchSuite, BuildArgs, CiArgs, CiCommand, Cli, Command, ConfigArgs,
        GlobalArgs, KeyFor, MessageFormat, QemuArgs, ReleaseArgs, RootfsArg, RootfsArgs, RootfsCommand, RunArgs,
        SelftestArgs, StoreArgs, StoreCommand, TestArgs, VmArgs, VmCommand,
    },
    cx::{Built, Cx, Step},
    outcome::{CaseResult, CaseStatus, RunSummary, StoreUse},
};
use crate::{
    cli::{StandaloneCli, StandaloneCommand},
    commands::error_exit_code,
    error::UsageError,
    exit_code,
};

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
pub(crate) fn run_args_to_code(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    match Cli::try_parse_from(args) {
        Ok(cli) => run_to_code(cli),
        Err(err) => {
            let _ = err.print();
            if err.use_stderr() { exit_code::USAGE } else { exit_code::SUCCESS }
        }
    }
}

/// A command kiln can run: its own ([`Command`]) or yours. Return an exit code from
/// [`crate::exit_code`]; errors are rendered and mapped to codes by [`run_with`].
pub trait Run {
    /// Runs the command.
    fn run(self, global: &GlobalArgs) -> anyhow::Result<u8>;
}

impl Run for Command {
    fn run(self, global: &GlobalArgs) -> anyhow::Result<u8> {
        crate::commands::dispatch(global, self)
    }
}

/// Runs a command (kiln's or yours), prints any error, and returns the exit code.
pub fn run_with(global: &GlobalArgs, command: impl Run) -> ExitCode {
    ExitCode::from(finish(command.run(global)))
}

/// The exit code of a command's result; an error is printed first (a closed stdout is not
/// an error worth printing).
fn finish(result: anyhow::Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => exit_code::SUCCESS,
        Err(err) => {
            let rendered = render_error(&err);
            eprintln!("{rendered}");
            if crate::report::github::active() {
                crate::report::github::report_failure(&rendered);
            }
            error_exit_code(&err)
        }
    }
}

/// The standalone `cargo kiln` (also callable as `kiln`): kiln's commands plus `init`. Inside
/// a repository whose xtask depends on kiln it hands over to `cargo xtask`.
pub fn standalone_main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // `cargo kiln ARGS` runs `cargo-kiln kiln ARGS`.
    if args.get(1).is_some_and(|arg| arg == "kiln") {
        args.remove(1);
    }
    let cli = match StandaloneCli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { exit_code::USAGE } else { exit_code::SUCCESS });
        }
    };
    let printer = crate::report::Printer::new(crate::cx::verbosity(&cli.global));
    match cli.command {
        StandaloneCommand::Init(init) => ExitCode::from(finish(crate::commands::init(&init, &printer))),
        StandaloneCommand::Kiln(command) => {
            if !cli.no_delegate
                && let Some(root) = delegate_root(&cli.global)
            {
                printer.status(
                    "Delegating",
                    &format!(
                        "to `cargo xtask` in {}: its xtask depends on kiln (`--no-delegate` runs this cargo-kiln)",
                        root.display()
                    ),
                );
                let forwarded = forwarded_args(&args[1..]);
                return match std::process::Command::new("cargo")
                    .arg("xtask")
                    .args(forwarded)
                    .current_dir(&root)
                    .status()
                {
                    Ok(status) => ExitCode::from(status.code().map_or(exit_code::INFRASTRUCTURE, |c| c as u8)),
                    Err(err) => {
                        eprintln!("error: failed to run `cargo xtask`: {err}");
                        ExitCode::from(exit_code::INFRASTRUCTURE)
                    }
                };
            }
            run_with(&cli.global, command)
        }
    }
}

/// The arguments for the repository's `cargo xtask`: without `--no-delegate`, and with a
/// `--config` path made absolute (the xtask runs at the repository root).
fn forwarded_args(args: &[OsString]) -> Vec<OsString> {
    let mut forwarded = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--no-delegate" {
            continue;
        }
        if arg == "--config" {
            forwarded.push(arg.clone());
            if let Some(path) = iter.next() {
                forwarded.push(std::path::absolute(path).map_or_else(|_| path.clone(), |p| p.into_os_string()));
            }
            continue;
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            let absolute = std::path::absolute(path).map_or_else(|_| path.into(), |p| p.display().to_string());
            forwarded.push(format!("--config={absolute}").into());
            continue;
        }
        forwarded.push(arg.clone());
    }
    forwarded
}

/// The repository root when its own xtask depends on kiln and has the `cargo xtask` alias.
fn delegate_root(global: &GlobalArgs) -> Option<std::path::PathBuf> {
    let start = match &global.config {
        Some(file) => std::path::absolute(file).ok()?.parent()?.to_owned(),
        None => std::env::current_dir().ok()?,
    };
    start.ancestors().find_map(|dir| {
        let depends = crate::layout::kiln_manifest(dir).is_some();
        let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).ok()?;
        let aliased = config.parse::<toml::Table>().ok()?.get("alias").and_then(|a| a.get("xtask")).is_some();
        (depends && aliased).then(|| dir.to_owned())
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    ExitCode::from(run_to_code(cli))
}

/// Whether the error is a closed stdout (`kiln ... | head`): not worth a message.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

fn run_to_code(cli: Cli) -> u8 {
    finish(crate::commands::dispatch(&cli.global, cli.command))
}

/// `error: …`, one `Caused by:` line per cause, then `help:` when known.
fn render_error(err: &anyhow::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn build_failure(source: Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error {
        kiln_store::StoreError::Build { name: "hello (x86_64)".into(), source }.into()
    }

    #[test]
    fn a_full_disk_inside_a_build_is_the_hosts_problem() {
        let full = crate::exec::space::OutOfSpace { path: "/t".into(), free: 0, what: "cargo's target directory" };
        let cargo_failed = anyhow::Error::new(full).context("`cargo build` for hello failed with exit status: 101");
        assert_eq!(error_exit_code(&build_failure(cargo_failed.into())), exit_code::INFRASTRUCTURE);
        let write_failed = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(error_exit_code(&build_failure(Box::new(write_failed))), exit_code::INFRASTRUCTURE);
        let compile_error = anyhow::anyhow!("`cargo build` for hello failed with exit status: 101");
        assert_eq!(error_exit_code(&build_failure(compile_error.into())), exit_code::CASES_FAILED);
    }
}
