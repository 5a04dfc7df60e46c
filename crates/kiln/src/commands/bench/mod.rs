//! `bench`: what users wait on, measured side by side with a baseline in one run. `boot`:
//! boot-to-verdict with kiln's machine profiles against naive QEMU command lines, and a warm
//! `test`'s overhead over its boots; `compile`, `linux`, `runner`, `store`, `warm`: see their modules.
//!
//! The naive command lines are what hand-written scripts run (`-cpu max`, the machine's
//! defaults); they are baselines to measure against, not how kiln boots.

mod compile;
mod linux;
#[cfg(feature = "remote")]
mod remote;
mod runner;
mod store;
mod warm;

#[cfg(feature = "testing")]
pub(crate) use warm::synthetic_crate;

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_qemu::{Argv, BootRequest, Console, Judge, accel::Accel};
use kiln_types::Arch;

use crate::{
    cli::{BenchArgs, BenchSuite, TestArgs},
    cx::Cx,
    error::UsageError,
    exit_code,
    plan::{Guest, Plan, Selection},
    report::{Printer, Verbosity},
};

/// What a hand-written script typically runs: `-cpu max`, the machine's default options.
fn naive_argv(arch: Arch, kernel: &Path) -> Argv {
    let mut argv = Argv::default();
    match arch {
        Arch::X86_64 => {
            argv.pair("-cpu", "max").pair("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04");
        }
        Arch::Aarch64 => {
            argv.pair("-machine", "virt").pair("-cpu", "max").arg("-semihosting");
        }
        Arch::Riscv64 => {
            argv.pair("-machine", "virt");
        }
    }
    argv.pair("-display", "none").pair("-serial", "stdio").pair("-kernel", kernel);
    argv
}

struct Measured {
    times: Vec<Duration>,
    failures: usize,
}

impl Measured {
    fn median(&self) -> Option<Duration> {
        let mut times = self.times.clone();
        times.sort();
        times.get(times.len() / 2).copied()
    }
}

/// One table row: what was measured on `arch`, kiln's median, the baseline's, their ratio.
fn row(out: &mut impl std::io::Write, arch: Arch, what: &str, ours: &Measured, base: &Measured) -> anyhow::Result<()> {
    let cell = |m: &Measured| match m.median() {
        Some(d) if m.failures == 0 => format!("{:.3}s", d.as_secs_f64()),
        Some(d) => format!("{:.3}s*", d.as_secs_f64()),
        None => "failed".to_owned(),
    };
    let ratio = match (ours.median(), base.median()) {
        (Some(k), Some(b)) if !k.is_zero() => format!("{:.2}x", b.as_secs_f64() / k.as_secs_f64()),
        _ => "-".to_owned(),
    };
    writeln!(out, "{:<8} {:<46} {:>9} {:>9} {:>7}", arch.as_str(), what, cell(ours), cell(base), ratio)?;
    Ok(())
}

/// Runs the selected benchmark suites and prints their tables on stdout.
pub(super) fn run(cx: &Cx, args: &BenchArgs) -> anyhow::Result<u8> {
    if args.suite.contains(&BenchSuite::Boot) {
        boot_rows(cx, args)?;
    }
    if args.suite.contains(&BenchSuite::Linux) {
        linux::run(cx, args)?;
    }
    if args.suite.contains(&BenchSuite::Store) {
        store::run(cx)?;
    }
    if args.suite.contains(&BenchSuite::Warm) {
        warm::run(cx, args)?;
    }
    if args.suite.contains(&BenchSuite::Runner) {
        runner::run(cx, args)?;
    }
    if args.suite.contains(&BenchSuite::Compile) {
        compile::run()?;
    }
    if args.suite.contains(&BenchSuite::Remote) {
        #[cfg(feature = "remote")]
        remote::run(cx, args)?;
        #[cfg(not(feature = "remote"))]
        return Err(crate::cx::remote_feature_missing().into());
    }
    Ok(exit_code::SUCCESS)
}

fn boot_rows(cx: &Cx, args: &BenchArgs) -> anyhow::Result<()> {
    let config = cx.config();
    let case = match &args.case {
        Some(name) => name.clone(),
        None => config
            .cases
            .values()
            .find(|c| {
                c.expect == crate::config::Expect::Pass && matches!(c.guest, crate::config::CaseGuest::Artifact(_))
            })
            .map(|c| c.name.clone())
            .ok_or_else(|| UsageError::new("no bare-metal case is expected to pass; name one with `--case`", None))?,
    };
    let plan = Plan::for_test(
        config,
        &Selection { arches: args.arch.clone(), names: vec![case.clone()], ..Selection::default() },
    )?;
    cx.executor().provision_machines(plan.runs.iter().map(|run| &run.machine))?;
    let built = cx.realise_builds(&plan)?;
    let accels = cx.accelerators(plan.runs.iter().map(|r| r.machine.arch));
    let scratch = tempfile::tempdir().context("cannot create a temp dir for serial logs")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let runs = usize::from(args.runs);

    let mut rows = Vec::new();
    for run in &plan.runs {
        let Some(artifact) = (match &run.guest {
            Guest::Artifact { build, .. } => built.get(build),
            Guest::Linux { .. } => None,
        }) else {
            continue;
        };
        let arch = run.machine.arch;
        let accel = accels.get(&arch).map_or(Accel::Tcg, |c| c.accel);
        let ours = run.machine.argv(artifact.image(), accel, Console::Captured);
        let naive = naive_argv(arch, artifact.image());
        let mut kiln = Measured { times: Vec::new(), failures: 0 };
        let mut hand = Measured { times: Vec::new(), failures: 0 };
        cx.printer().status("Benching", &format!("{} ({runs} boots each)", run.label()));
        for i in 0..runs {
            for (argv, measured) in [(&ours, &mut kiln), (&naive, &mut hand)] {
                let request = BootRequest {
                    program: arch.qemu_binary().to_owned(),
                    argv: argv.clone(),
                    timeout: run.rules.timeout,
                    no_output_timeout: run.rules.no_output_timeout,
                    stop_on_success: run.rules.stop_on_success,
                    log_path: scratch.path().join(format!("{arch}-{i}.log")),
                    exit_marker: None,
                    input: run.rules.input.clone(),
                };
                let judge = Judge { ..run.rules.judge.clone() };
                let outcome = runtime.block_on(kiln_qemu::boot(&request, &judge, |_| {}))?;
                if judge.judge(&outcome).is_pass() {
                    measured.times.push(outcome.duration);
                } else {
                    measured.failures += 1;
                }
            }
        }
        rows.push((arch, kiln, hand));
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "boot-to-verdict of case `{case}`, median of {runs} (TCG unless noted)")?;
    writeln!(out, "{:<10} {:>12} {:>12} {:>8}", "arch", "kiln", "naive", "ratio")?;
    for (arch, kiln, hand) in rows {
        let cell = |m: &Measured| match m.median() {
            Some(d) if m.failures == 0 => format!("{:.3}s", d.as_secs_f64()),
            Some(d) => format!("{:.3}s ({} failed)", d.as_secs_f64(), m.failures),
            None => "failed".to_owned(),
        };
        let ratio = match (kiln.median(), hand.median()) {
            (Some(k), Some(h)) if !k.is_zero() => {
                format!("{:.2}x", h.as_secs_f64() / k.as_secs_f64())
            }
            _ => "-".to_owned(),
        };
        writeln!(out, "{:<10} {:>12} {:>12} {:>8}", arch.as_str(), cell(&kiln), cell(&hand), ratio)?;
    }
    writeln!(out, "ratio = naive / kiln: how many times longer the naive command line takes")?;
    drop(out);
    let bare_metal: Vec<String> = config
        .cases
        .values()
        .filter(|c| matches!(c.guest, crate::config::CaseGuest::Artifact(_)))
        .map(|c| c.name.clone())
        .collect();
    warm_run_overhead(cx, args, runs, bare_metal)
}

/// Times a fully cached `test` (configuration, hashing, store look-ups, boots) against the
/// same boots alone, to show what kiln adds when nothing needs building.
fn warm_run_overhead(cx: &Cx, args: &BenchArgs, runs: usize, cases: Vec<String>) -> anyhow::Result<()> {
    let quiet = Cx::open(Some(&cx.config().file), Printer::new(Verbosity::Quiet), cx.options().clone())?;
    let test_args = TestArgs {
        cases: cases.clone(),
        arch: args.arch.clone(),
        junit: None,
        tests: Vec::new(),
        partition: None,
        retries: 0,
        retry_guest_failures: false,
    };
    let plan =
        Plan::for_test(quiet.config(), &Selection { arches: args.arch.clone(), names: cases, ..Selection::default() })?;
    let (ready, _) = quiet.prepare_boots(&plan)?;
    let log_dir = quiet.log_dir()?;
    let boots = ready.len();
    let mut whole = Vec::new();
    let mut alone = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        quiet.test(&test_args)?;
        whole.push(started.elapsed());
        let started = Instant::now();
        quiet.boot(ready.clone(), crate::runner::RetryPolicy::default(), &log_dir);
        alone.push(started.elapsed());
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (whole, alone) = (median(whole), median(alone));
    let overhead = (whole.as_secs_f64() / alone.as_secs_f64() - 1.0) * 100.0;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nwarm `test` with everything cached, median of {runs}, {boots} boots, -j {}", cx.options().jobs)?;
    writeln!(out, "{:<28} {:>8.3}s", "whole pipeline (in-process)", whole.as_secs_f64())?;
    writeln!(out, "{:<28} {:>8.3}s", "the same boots alone", alone.as_secs_f64())?;
    writeln!(out, "{:<28} {:>+8.1}%", "kiln's overhead", overhead)?;
    Ok(())
}
