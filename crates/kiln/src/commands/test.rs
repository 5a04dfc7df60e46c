//! `test`: build, boot and judge every selected case on every selected machine.

use std::{
    collections::BTreeMap,
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
    config::{ArtifactKind, Compression, RootfsFormat},
    cx::{Cx, RealisedImage},
    exec, exit_code,
    plan::{Guest, ImageKey, Plan, Selection},
    report::{CaseResult, RunSummary, StoreUse, github, junit},
    runner::{self, LinuxImages, ReadyBoot, ReadyRun},
    vm::{SnapshotTarget, target::LinuxTarget},
};

/// Runs the cases and returns their results (see [`print_summary`]).
pub fn run(cx: &Cx, args: &TestArgs) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let (ready, log_dir, store) = prepare_counting(cx, args)?;
    // In GitHub Actions nothing a guest prints may be read as a workflow command.
    let guard = github::active().then(github::stop_token);
    if let Some(token) = &guard {
        cx.printer.always(&format!("::stop-commands::{token}"));
    }
    let results = boot(cx, ready, &log_dir);
    if let Some(token) = &guard {
        cx.printer.always(&format!("::{token}::"));
    }
    let summary = RunSummary { results, store, total: started.elapsed(), log_dir };
    report_to_ci(cx, args, &summary)?;
    Ok(summary)
}

/// The JUnit file (with `--junit`, or by default in CI) and, in GitHub Actions, a group of
/// serial output and an error annotation per failed case, and the job summary.
fn report_to_ci(cx: &Cx, args: &TestArgs, summary: &RunSummary) -> anyhow::Result<()> {
    let junit = args.junit.clone().or_else(|| crate::env::in_ci().then(|| cx.work_dir().join("junit.xml")));
    if let Some(path) = junit {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, junit::render(summary)).with_context(|| format!("cannot write `{}`", path.display()))?;
        cx.printer.verbose("JUnit", &path.display().to_string());
    }
    if !github::active() {
        return Ok(());
    }
    let file =
        cx.config.file.strip_prefix(std::env::var("GITHUB_WORKSPACE").unwrap_or_default()).unwrap_or(&cx.config.file);
    let file = file.display().to_string();
    for result in &summary.results {
        let token = github::stop_token();
        cx.printer.always(&format!(
            "::group::{} {}",
            github::escape_data(&result.label),
            github::escape_data(&result.detail)
        ));
        cx.printer.always(&format!("::stop-commands::{token}"));
        for line in serial_lines(result) {
            cx.printer.always(&line);
        }
        cx.printer.always(&format!("::{token}::"));
        cx.printer.always("::endgroup::");
        if !result.status.is_ok() {
            let case = result.case.split('[').next().unwrap_or(&result.case);
            let line = cx.config.line_of(&format!("case.{case}"));
            let last = &result.tail[result.tail.len().saturating_sub(8)..];
            let message = format!("{}\n{}", result.detail, last.join("\n"));
            cx.printer.always(&github::error_annotation(
                &file,
                line,
                &format!("{}: {}", result.label, result.detail),
                &message,
            ));
        }
    }
    let junit = args.junit.clone().unwrap_or_else(|| cx.work_dir().join("junit.xml"));
    github::append_outputs(&github::step_outputs(summary, &junit))?;
    github::append_summary(&github::job_summary(summary))?;
    Ok(())
}

/// Lines of a case's serial log shown in its group: all of them up to a bound (the log file
/// has everything), else the kept tail.
fn serial_lines(result: &CaseResult) -> Vec<String> {
    const MAX_LINES: usize = 2000;
    match std::fs::read_to_string(&result.log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(MAX_LINES);
            let mut shown: Vec<String> = lines[skipped..].iter().map(|l| (*l).to_owned()).collect();
            if skipped > 0 {
                shown.insert(0, format!("... {skipped} earlier lines are in the serial log"));
            }
            shown
        }
        Err(_) => result.tail.clone(),
    }
}

/// Everything before the boots: plan, host check, builds, accelerators.
pub fn prepare(cx: &Cx, args: &TestArgs) -> anyhow::Result<(Vec<ReadyRun>, PathBuf)> {
    prepare_counting(cx, args).map(|(ready, log_dir, _)| (ready, log_dir))
}

/// [`prepare`], also saying how the store served the derivations.
fn prepare_counting(cx: &Cx, args: &TestArgs) -> anyhow::Result<(Vec<ReadyRun>, PathBuf, StoreUse)> {
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
    let realised = cx.realise_plan(&plan)?;
    let accels = cx.accelerators(plan.runs.iter().map(|r| r.machine.arch));
    let log_dir = cx.work_dir().join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create `{}`", log_dir.display()))?;
    let mut ready = Vec::new();
    let mut snapshots: BTreeMap<(String, String, String), (Arc<SnapshotTarget>, PathBuf)> = BTreeMap::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for run in &plan.runs {
        let accel = accels.get(&run.machine.arch).map_or(Accel::Tcg, |c| c.accel);
        match &run.guest {
            Guest::Artifact(key) => {
                let Some(artifact) = realised.builds.get(key) else { continue };
                let per_test = cx.config.artifacts.get(&key.artifact).is_some_and(|a| a.kind == ArtifactKind::Tests);
                for image in &artifact.images {
                    let mut run = run.clone();
                    if per_test {
                        run.case = format!("{}[{}]", run.case, image.name);
                    }
                    ready.push(ReadyRun {
                        run,
                        boot: ReadyBoot::Kernel(image.path.clone()),
                        built: matches!(artifact.outcome, BuildOutcome::Built { .. }),
                        substituted: matches!(artifact.outcome, BuildOutcome::Substituted { .. }),
                        accel,
                    });
                }
            }
            Guest::Linux { kernel, rootfs, command, snapshot } => {
                let (Some(k), Some(r)) = (realised.images.get(kernel), realised.images.get(rootfs)) else { continue };
                let images = linux_images(cx, kernel, k, rootfs, r, command.clone());
                let built = [k, r].iter().any(|i| matches!(i.outcome, BuildOutcome::Built { .. }));
                let substituted = [k, r].iter().any(|i| matches!(i.outcome, BuildOutcome::Substituted { .. }));
                let boot = if *snapshot {
                    // One snapshot per kernel, rootfs and machine, made (or found) before the boots.
                    let key = (kernel.name.clone(), rootfs.name.clone(), run.machine.name.clone());
                    let (target, entry) = match snapshots.get(&key) {
                        Some(found) => found.clone(),
                        None => {
                            let linux = LinuxTarget {
                                images: LinuxImages { command: String::new(), ..images },
                                kernel: k.closure,
                                rootfs: r.closure,
                                kernel_dir: k.dir.clone(),
                                rootfs_dir: r.dir.clone(),
                                kernel_name: kernel.name.clone(),
                                rootfs_name: rootfs.name.clone(),
                                machine: run.machine.clone(),
                                accel,
                            };
                            let target = Arc::new(SnapshotTarget::new(cx, linux)?);
                            let entry = target.entry(cx, &runtime)?;
                            snapshots.insert(key, (target.clone(), entry.clone()));
                            (target, entry)
                        }
                    };
                    ReadyBoot::Snapshot { target, entry, command: command.clone() }
                } else {
                    ReadyBoot::Linux(images)
                };
                ready.push(ReadyRun { run: run.clone(), boot, built, substituted, accel });
            }
        }
    }
    Ok((ready, log_dir, realised.store_use()))
}

/// The store paths of a kernel and rootfs, for booting them.
pub fn linux_images(
    cx: &Cx,
    kernel_key: &ImageKey,
    kernel: &RealisedImage,
    rootfs_key: &ImageKey,
    rootfs: &RealisedImage,
    command: String,
) -> LinuxImages {
    let format =
        cx.config.rootfses.get(&rootfs_key.name).map_or(RootfsFormat::Initramfs(Compression::Gzip), |r| r.format);
    let image = rootfs.dir.join(format.file_name());
    let (initramfs, disk) = match format {
        RootfsFormat::Initramfs(_) => (image, None),
        RootfsFormat::Ext4 => (rootfs.dir.join(exec::linux::DISK_BOOT_FILE), Some((image, "raw"))),
        RootfsFormat::Qcow2 => (rootfs.dir.join(exec::linux::DISK_BOOT_FILE), Some((image, "qcow2"))),
    };
    LinuxImages {
        kernel: kernel.dir.join(exec::linux::KERNEL_FILE),
        modules: kernel.dir.join(exec::linux::MODULES_FILE),
        rootfs: initramfs,
        disk,
        cmdline: cx.config.kernels.get(&kernel_key.name).map(|k| k.cmdline.clone()).unwrap_or_default(),
        command,
    }
}

/// Boots prepared runs, `-j` at a time.
pub fn boot(cx: &Cx, ready: Vec<ReadyRun>, log_dir: &Path) -> Vec<CaseResult> {
    let mut printer = cx.printer.clone_settings();
    printer.set_prefix_serial(ready.len() > 1);
    printer.set_stream_serial(!github::active());
    printer.start_progress(ready.len());
    let printer = Arc::new(printer);
    let results = runner::run_all(ready, cx.options.jobs, log_dir, printer.clone());
    printer.finish_progress();
    results
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
