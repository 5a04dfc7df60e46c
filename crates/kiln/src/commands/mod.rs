//! One module per verb; `run` dispatches.

mod bench;
mod bench_linux;
mod bench_store;
mod bench_warm;
mod build;
mod ci;
mod config;
mod doctor;
pub mod init;

pub use bench_warm::synthetic_crate;
mod qemu;
mod release;
mod rootfs;
mod run;
mod run_snapshot;
mod selftest;
mod store;
mod store_remote;
pub mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Context as _;
use kiln_qemu::accel::{Accel, AccelPolicy};

use crate::{
    cli::{AccelArg, Cli, Command, GlobalArgs},
    config::Config,
    cx::{Cx, Options},
    provision::InstallMode,
    report::{Printer, Verbosity},
};

/// A mistake on the command line (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: Option<String>,
}

impl UsageError {
    pub(crate) fn new(message: impl Into<String>, help: Option<String>) -> Self {
        Self { message: message.into(), help }
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    run_command(&cli.global, cli.command)
}

/// Runs one of kiln's commands with the global options.
pub fn run_command(global: &GlobalArgs, command: Command) -> anyhow::Result<u8> {
    if let Command::Doctor = command {
        return doctor::run(global, &Printer::new(verbosity(global)));
    }
    // `store push` pushes whatever `--push` says: it opens the remotes for pushing.
    let pushing = global.push
        || matches!(&command, Command::Store(args) if matches!(args.command, crate::cli::StoreCommand::Push { .. }));
    let mut cx = match &command {
        // As cargo's runner, kiln says nothing unless asked: the program's output is the output.
        Command::Run(_) if global.verbose == 0 => context_with(global, Verbosity::Quiet, pushing)?,
        _ => context_with(global, verbosity(global), pushing)?,
    };
    if let Command::Build(args) = &command {
        cx.options.explain = args.explain;
    }
    // cargo's runner and warm guests run programs; they must not wait for uploads.
    if let (Command::Run(_) | Command::Vm(_), Some(remotes)) = (&command, &cx.remotes)
        && !global.push
    {
        remotes.stop_background_pushes();
    }
    let result = match command {
        Command::Build(args) => build::run(&cx, &args),
        Command::Test(args) => test::run(&cx, &args).map(|summary| {
            test::print_summary(&cx, &summary);
            test::exit_code(&summary)
        }),
        Command::Qemu(args) => qemu::run(&cx, &args),
        Command::Bench(args) => bench::run(&cx, &args),
        Command::Config(_) => config::run(&cx),
        Command::Selftest(args) => selftest::run(&cx, &args),
        Command::Store(args) => store::run(&cx, &args.command),
        Command::Run(args) => run::run(&cx, &args),
        Command::Rootfs(args) => rootfs::run(&cx, &args.command),
        Command::Vm(args) => vm::run(&cx, &args),
        Command::Release(args) => release::run(&cx, &args),
        Command::Ci(args) => ci::run(&cx, &args),
        Command::Doctor => Ok(crate::exit_code::SUCCESS),
    };
    cx.finish_pushes();
    result
}

/// The verbosity the global options ask for.
pub fn verbosity(global: &GlobalArgs) -> Verbosity {
    if global.quiet {
        Verbosity::Quiet
    } else if global.verbose > 0 {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    }
}

/// Loads Kiln.toml and opens the store for the global options.
pub fn context(global: &GlobalArgs) -> anyhow::Result<Cx> {
    context_with(global, verbosity(global), global.push)
}

fn context_with(global: &GlobalArgs, verbosity: Verbosity, push: bool) -> anyhow::Result<Cx> {
    let file = match &global.config {
        Some(path) => path.clone(),
        None => {
            let cwd: PathBuf = std::env::current_dir().context("cannot read the current directory")?;
            Config::discover(&cwd)?
        }
    };
    let config = Config::load(&file)?;
    let jobs = global.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), usize::from);
    let accel = match global.accel {
        AccelArg::Auto => AccelPolicy::Auto,
        AccelArg::Kvm => AccelPolicy::Force(Accel::Kvm),
        AccelArg::Tcg => AccelPolicy::Force(Accel::Tcg),
    };
    let options = Options { jobs, install: InstallMode::detect(global.yes), accel, explain: false, push };
    Cx::new(config, Printer::new(verbosity), options)
}
