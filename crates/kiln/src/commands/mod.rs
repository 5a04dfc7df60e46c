//! One module per verb, each a leaf: no command imports another, and nothing below imports
//! a command. [`dispatch`] builds the context and runs one.

mod bench;
mod build;
#[cfg(feature = "github")]
mod ci;
mod config;
mod doctor;
#[cfg(feature = "init")]
mod init;
mod qemu;
#[cfg(feature = "github")]
mod release;
mod report;
mod rootfs;
mod run;
mod selftest;
mod store;
mod test;
mod vm;

#[cfg(feature = "testing")]
pub(crate) use bench::synthetic_crate;
#[cfg(feature = "init")]
pub(crate) use init::run as init;

/// `init` in a kiln built without it (a repository's own xtask): where to find it.
#[cfg(not(feature = "init"))]
pub(crate) fn init(_: &crate::cli::InitArgs, _: &Printer) -> anyhow::Result<u8> {
    Err(crate::error::UsageError::new(
        "`init` is not part of this kiln (a repository's xtask is built without it)",
        Some("use the standalone tool: `cargo install cargo-kiln`, then `cargo kiln init`".to_owned()),
    )
    .into())
}

use std::sync::Arc;

use crate::{
    cli::{Command, GlobalArgs, MessageFormat, StoreCommand, VmCommand},
    cx::{Cx, Options, verbosity},
    error::UsageError,
    exit_code,
    report::{EventLog, Printer, Verbosity, json::JsonLines},
};

/// Runs one of kiln's commands with the global options; returns the exit code. Under
/// `--message-format json` the event stream opens with `run-started` and ends with `summary`,
/// whatever happens in between (a Kiln.toml error too).
pub(crate) fn dispatch(global: &GlobalArgs, command: Command) -> anyhow::Result<u8> {
    let name = match &command {
        Command::Test(_) => "test",
        Command::Build(_) => "build",
        _ if global.message_format == MessageFormat::Json => {
            return Err(UsageError::with_help(
                "`--message-format json` is for `test` and `build`",
                "drop it, or run `test` or `build` with it",
            )
            .into());
        }
        _ => "",
    };
    let json = (global.message_format == MessageFormat::Json).then(JsonLines::stdout);
    if let Some(json) = &json {
        json.run_started(name);
    }
    let log = Arc::new(EventLog::new(json));
    if matches!(command, Command::Test(_)) {
        log.expect_cases();
    }
    let result = run(global, command, log.clone());
    if let Some(json) = log.json() {
        let summary = match &result {
            Ok(code) => log.summary(name, *code, None),
            Err(err) => log.summary(name, error_exit_code(err), Some(format!("{err:#}"))),
        };
        json.summary(&summary);
    }
    result
}

/// The exit code an error maps to.
pub(crate) fn error_exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<crate::config::ConfigError>() || e.is::<UsageError>()) {
        exit_code::USAGE
    } else if err.chain().any(is_out_of_space) {
        exit_code::INFRASTRUCTURE
    } else if err.chain().any(|e| matches!(e.downcast_ref(), Some(kiln_store::StoreError::Build { .. }))) {
        exit_code::CASES_FAILED
    } else {
        exit_code::INFRASTRUCTURE
    }
}

/// Whether an error says a disk is full: the host's problem even inside a build step.
fn is_out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<crate::exec::space::OutOfSpace>()
        || err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
}

/// Runs one command, its printers telling `log`.
fn run(global: &GlobalArgs, command: Command, log: Arc<EventLog>) -> anyhow::Result<u8> {
    match &command {
        Command::Doctor => return doctor::run(global, &Printer::new(verbosity(global))),
        // A keeper builds its context from the spec its starter wrote.
        Command::Vm(args) if matches!(args.command, VmCommand::Keep { .. }) => return vm::run_keeper(&args.command),
        _ => {}
    }
    let mut options = Options::from_args(global);
    // `store push` pushes whatever `--push` says: it opens the remotes for pushing.
    options.push |= matches!(&command, Command::Store(args) if matches!(args.command, StoreCommand::Push { .. }));
    if let Command::Build(args) = &command {
        options.explain = args.explain;
    }
    // As cargo's runner, kiln says nothing but the slow work of a first run (downloads, the
    // agent's build, the snapshot) unless asked: the program's output is the output.
    let verbosity = match &command {
        Command::Run(_) if global.verbose == 0 && !global.quiet => Verbosity::Work,
        Command::Run(_) if global.verbose == 0 => Verbosity::Quiet,
        _ => verbosity(global),
    };
    // `run` and `vm` run programs: without a Kiln.toml they use kiln's built-in guests, so
    // `runner = "kiln run --"` is all a crate needs. The other commands need a project.
    let printer = Printer::new(verbosity).with_log(log);
    let cx = if matches!(command, Command::Run(_) | Command::Vm(_)) {
        Cx::open_or_builtin(global.config.as_deref(), printer, options)?
    } else {
        Cx::open(global.config.as_deref(), printer, options)?
    };
    // cargo's runner and warm guests run programs; they must not wait for uploads.
    if matches!(command, Command::Run(_) | Command::Vm(_)) && !global.push {
        cx.stop_background_pushes();
    }
    // In GitHub Actions nothing kiln relays (guest output, archive member and file names)
    // may be read as a workflow command: every command but `test`, which guards its boots
    // itself and writes its annotations after them, runs inside a stop-commands guard.
    let guard = (crate::report::github::active() && !matches!(command, Command::Test(_)))
        .then(crate::report::github::CommandGuard::new)
        .transpose()?;
    if let Some(guard) = &guard {
        cx.printer().always(&guard.start());
    }
    let result = match command {
        Command::Build(args) => build::run(&cx, &args),
        Command::Test(args) => test::run(&cx, &args),
        Command::Qemu(args) => qemu::run(&cx, &args),
        Command::Bench(args) => bench::run(&cx, &args),
        Command::Config(_) => config::run(&cx),
        Command::Selftest(args) => selftest::run(&cx, &args),
        Command::Store(args) => store::run(&cx, &args.command),
        Command::Run(args) => run::run(&cx, &args),
        Command::Rootfs(args) => rootfs::run(&cx, &args.command),
        Command::Vm(args) => vm::run(&cx, &args),
        Command::Report(args) => report::run(&cx, &args.command),
        #[cfg(feature = "github")]
        Command::Release(args) => release::run(&cx, &args),
        #[cfg(feature = "github")]
        Command::Ci(args) => ci::run(&cx, &args),
        #[cfg(not(feature = "github"))]
        Command::Release(_) | Command::Ci(_) => Err(crate::error::UsageError::with_help(
            "this kiln was built without its `github` feature, which `release` and `ci` need",
            "enable it in your xtask's Cargo.toml (`features = [\"github\"]` on the kiln dependency)",
        )
        .into()),
        Command::Doctor => Ok(crate::exit_code::SUCCESS),
    };
    cx.finish_pushes();
    if let Some(guard) = &guard {
        cx.printer().always(&guard.end());
    }
    result
}
