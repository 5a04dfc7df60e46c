//! `test`: build, boot and judge every selected case on every selected machine.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use kiln_qemu::accel::Accel;
use kiln_store::BuildOutcome;

use crate::{
    cli::TestArgs,
    commands::UsageError,
    config::ArtifactKind,
    cx::Cx,
    exit_code,
    plan::{Plan, Selection},
    report::{CaseResult, RunSummary},
    runner::{self, ReadyRun},
};

/// Runs the cases and returns their results (see [`print_summary`]).
pub fn run(cx: &Cx, args: &TestArgs) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let (ready, log_dir) = prepare(cx, args)?;
    let results = boot(cx, ready, &log_dir);
    Ok(RunSummary { results, total: started.elapsed(), log_dir })
}

/// Everything before the boots: plan, host check, builds, accelerators.
pub fn prepare(cx: &Cx, args: &TestArgs) -> anyhow::Result<(Vec<ReadyRun>, PathBuf)> {
    let selection = Selection { arches: args.arch.clone(), cases: args.cases.clone() };
    let plan = Plan::for_test(&cx.config, &selection)?;
    if plan.runs.is_empty() {
        return Err(UsageError::new(
            "no case matches the selection",
            Some("check `--arch` and the case names against `cargo xtask config`".to_owned()),
        )
        .into());
    }
    cx.provision_machines(&plan.runs)?;
    let built = cx.realise(&plan.builds)?;
    let accels = cx.accelerators(plan.runs.iter().map(|r| r.machine.arch));
    let log_dir = cx.work_dir().join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create `{}`", log_dir.display()))?;
    let mut ready = Vec::new();
    for run in &plan.runs {
        let Some(artifact) = built.get(&run.build) else { continue };
        let per_test = cx.config.artifacts.get(&run.build.artifact).is_some_and(|a| a.kind == ArtifactKind::Tests);
        let accel = accels.get(&run.machine.arch).map_or(Accel::Tcg, |c| c.accel);
        for image in &artifact.images {
            let mut run = run.clone();
            if per_test {
                run.case = format!("{}[{}]", run.case, image.name);
            }
            ready.push(ReadyRun {
                run,
                kernel: image.path.clone(),
                built: matches!(artifact.outcome, BuildOutcome::Built { .. }),
                accel,
            });
        }
    }
    Ok((ready, log_dir))
}

/// Boots prepared runs, `-j` at a time.
pub fn boot(cx: &Cx, ready: Vec<ReadyRun>, log_dir: &Path) -> Vec<CaseResult> {
    let mut printer = cx.printer.clone_settings();
    printer.set_prefix_serial(ready.len() > 1);
    runner::run_all(ready, cx.options.jobs, log_dir, Arc::new(printer))
}

/// Prints the summary table, and where the serial logs are when something failed.
pub fn print_summary(cx: &Cx, summary: &RunSummary) {
    cx.printer.always(&summary.render());
    if !summary.all_ok() {
        cx.printer.always(&format!("serial logs: {}", summary.log_dir.display()));
    }
}

/// The exit code for a finished run.
pub fn exit_code(summary: &RunSummary) -> u8 {
    if summary.interrupted() {
        exit_code::INTERRUPTED
    } else if summary.has_errors() {
        exit_code::INFRASTRUCTURE
    } else if summary.all_ok() {
        exit_code::SUCCESS
    } else {
        exit_code::CASES_FAILED
    }
}
