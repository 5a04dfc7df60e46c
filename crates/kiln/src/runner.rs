//! Boots a plan's cases, several at once, and collects their results; every boot is told to
//! the reporter as events (started, serial lines, finished).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use kiln_qemu::{BootOutcome, BootRequest, Console, Exit, QemuError};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    boots::{ReadyBoot, ReadyRun},
    events::{BootRef, Event, Reporter},
    guest::{self, GuestIo},
    outcome::{CaseResult, CaseStatus},
    plan::CaseRun,
    vm::SnapshotTarget,
};

/// When a run that went wrong is booted again (`test --retries N`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// How many more attempts a run gets.
    pub retries: u32,
    /// Whether a guest's own failure is retried too (else only the machine's: QEMU killed
    /// by a signal from outside, or a guest that could not be started or restored).
    pub guest_failures: bool,
}

impl RetryPolicy {
    /// Whether `result` (after `failed` earlier attempts) gets another attempt.
    fn retries(&self, result: &CaseResult, failed: usize) -> bool {
        if failed as u64 >= u64::from(self.retries) {
            return false;
        }
        match result.status {
            CaseStatus::Error => true,
            CaseStatus::Failed => {
                let machine_died =
                    matches!(result.verdict, Some(kiln_qemu::Verdict::Failed(kiln_qemu::FailReason::Signal(_))));
                machine_died || self.guest_failures
            }
            _ => false,
        }
    }
}

/// Boots every run, at most `jobs` at a time, each retried as `retry` says; serial logs go
/// to `log_dir`.
pub(crate) fn run_all(
    runs: Vec<ReadyRun>,
    jobs: usize,
    retry: RetryPolicy,
    log_dir: &Path,
    reporter: Arc<dyn Reporter>,
) -> Vec<CaseResult> {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            return runs
                .into_iter()
                .map(|r| error_result(&r, log_dir, format!("cannot start the runtime: {e}")))
                .collect();
        }
    };
    runtime.block_on(async {
        let permits = Arc::new(Semaphore::new(jobs.max(1)));
        let mut set = JoinSet::new();
        let mut results: Vec<Option<CaseResult>> = vec![None; runs.len()];
        let pending: Vec<ReadyRun> = runs.clone();
        for (index, ready) in runs.into_iter().enumerate() {
            let permits = permits.clone();
            let reporter = reporter.clone();
            let log_dir = log_dir.to_owned();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (index, boot_with_retries(ready, &log_dir, retry, reporter.as_ref()).await)
            });
        }
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        loop {
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok((index, result))) => results[index] = Some(result),
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = &mut interrupt => {
                    // Dropping the boots kills their process groups.
                    set.shutdown().await;
                    reporter.warn("interrupted: the guests still running were stopped");
                    break;
                }
            }
        }
        results
            .into_iter()
            .zip(&pending)
            .map(|(result, ready)| {
                result.unwrap_or_else(|| {
                    let mut interrupted = error_result(ready, log_dir, "interrupted before it finished".to_owned());
                    interrupted.status = CaseStatus::Interrupted;
                    interrupted
                })
            })
            .collect()
    })
}

fn log_path(run: &CaseRun, log_dir: &Path) -> PathBuf {
    log_dir.join(run.log_file_name())
}

fn error_result(ready: &ReadyRun, log_dir: &Path, detail: String) -> CaseResult {
    CaseResult {
        label: ready.run.label(),
        case: ready.run.name(),
        test: ready.run.test.as_ref().map(|test| test.id.clone()),
        line: ready.run.line,
        machine: ready.run.machine.name.clone(),
        arch: ready.run.machine.arch,
        verdict: None,
        status: CaseStatus::Error,
        boot: std::time::Duration::ZERO,
        built: ready.built,
        substituted: ready.substituted,
        log: log_path(&ready.run, log_dir),
        detail,
        tail: Vec::new(),
        failed_attempts: Vec::new(),
    }
}

/// The argument list of a ready run, and for a Linux guest its exit marker; the scratch
/// directory holding a Linux guest's initramfs or a UEFI boot's variable store is kept until
/// the boot ends.
fn render(
    ready: &ReadyRun,
    log_dir: &Path,
) -> anyhow::Result<(kiln_qemu::Argv, Option<String>, Option<tempfile::TempDir>)> {
    let machine = &ready.run.machine;
    match &ready.boot {
        ReadyBoot::Kernel(kernel) => {
            let Some((machine, scratch)) = with_private_firmware(machine, log_dir)? else {
                return Ok((machine.argv(kernel, ready.accel, Console::Captured), None, None));
            };
            Ok((machine.argv(kernel, ready.accel, Console::Captured), None, Some(scratch)))
        }
        ReadyBoot::Snapshot { .. } => anyhow::bail!("a snapshot boot has no command line"),
        ReadyBoot::Linux(images) => {
            let scratch = tempfile::Builder::new().prefix("boot-").tempdir_in(log_dir)?;
            let initrd = scratch.path().join("initrd");
            images
                .compose_initrd(&guest::BootFiles { command: images.command.clone(), ..Default::default() }, &initrd)?;
            let nonce = guest::nonce()?;
            let argv = images.argv(machine, &initrd, &nonce, ready.accel, Console::Captured, GuestIo::default());
            Ok((argv, Some(guest::exit_marker(&nonce)), Some(scratch)))
        }
    }
}

/// One run, attempted again while `retry` allows; the finished case is reported once.
async fn boot_with_retries(ready: ReadyRun, log_dir: &Path, retry: RetryPolicy, reporter: &dyn Reporter) -> CaseResult {
    let mut failed_attempts = Vec::new();
    let mut result = loop {
        let result = boot_one(ready.clone(), log_dir, reporter).await;
        if !retry.retries(&result, failed_attempts.len()) {
            break result;
        }
        reporter.warn(&format!(
            "{}: attempt {} failed ({}); trying again",
            result.label,
            failed_attempts.len() + 1,
            result.detail
        ));
        failed_attempts.push(result.detail);
    };
    result.failed_attempts = failed_attempts;
    reporter.report(Event::CaseFinished(&result));
    result
}

/// For a machine with UEFI firmware: the machine with its own writable copy of the firmware's
/// variable store, in a scratch directory under `dir` that lives as long as the boot.
pub(crate) fn with_private_firmware(
    machine: &kiln_qemu::Machine,
    dir: &Path,
) -> anyhow::Result<Option<(kiln_qemu::Machine, tempfile::TempDir)>> {
    let kiln_qemu::Firmware::Uefi(ovmf) = &machine.firmware else { return Ok(None) };
    let scratch = tempfile::Builder::new().prefix("boot-").tempdir_in(dir)?;
    let private = ovmf.copy_vars_into(scratch.path()).map_err(|err| {
        anyhow::anyhow!("cannot copy the UEFI variable store `{}`: {err}", ovmf.vars_template.display())
    })?;
    let mut machine = machine.clone();
    machine.firmware = kiln_qemu::Firmware::Uefi(private);
    Ok(Some((machine, scratch)))
}

async fn boot_one(ready: ReadyRun, log_dir: &Path, reporter: &dyn Reporter) -> CaseResult {
    if let ReadyBoot::Snapshot { target, entry, command } = &ready.boot {
        return snapshot_case(&ready, target, entry, command, log_dir, reporter).await;
    }
    let run = &ready.run;
    let label = run.label();
    let (argv, exit_marker, _scratch) = match render(&ready, log_dir) {
        Ok(rendered) => rendered,
        Err(err) => {
            return error_result(&ready, log_dir, format!("cannot prepare the boot: {err:#}"));
        }
    };
    let request = BootRequest {
        program: run.machine.arch.qemu_binary().to_owned(),
        argv,
        timeout: run.rules.timeout,
        no_output_timeout: run.rules.no_output_timeout,
        stop_on_success: run.rules.stop_on_success,
        log_path: log_path(run, log_dir),
        exit_marker,
        input: run.rules.input.clone(),
    };
    let command = format!("{} {}", request.program, request.argv.display());
    let name = run.name();
    let boot = BootRef { label: &label, case: &name, machine: &run.machine.name, arch: run.machine.arch };
    reporter.report(Event::CaseStarted { boot, accel: ready.accel, command: &command });
    let started = Instant::now();
    let outcome = kiln_qemu::boot(&request, &run.rules.judge, |line| {
        reporter.report(Event::SerialLine { boot, line: line.text, raw: line.raw_if_not_utf8() });
    })
    .await;
    match outcome {
        Ok(outcome) => {
            let verdict = run.rules.judge.judge(&outcome);
            let status = CaseStatus::from_verdict(&verdict, run.rules.expect);
            let mut detail = verdict.describe();
            if matches!(verdict, kiln_qemu::Verdict::TimedOut { .. })
                && outcome.success_seen
                && !run.rules.stop_on_success
            {
                detail.push_str(
                    " after its success marker appeared: set `stop-on-success = true` for kernels that never exit",
                );
            }
            // A pass by exit status alone, through a firmware that reports failures as passes.
            if verdict.is_pass()
                && run.rules.judge.success.is_none()
                && let Some(caveat) = outcome.pass_caveat()
            {
                detail.push_str(&format!(" ({caveat})"));
            }
            // A kernel that panics and then idles ends on the timeout; say what it printed.
            if matches!(verdict, kiln_qemu::Verdict::TimedOut { .. } | kiln_qemu::Verdict::Silent { .. })
                && let Some(panic) = &outcome.panic_line
            {
                detail.push_str(&format!(", after `{panic}`"));
            }
            CaseResult {
                label: label.clone(),
                case: run.name(),
                test: run.test.as_ref().map(|test| test.id.clone()),
                line: run.line,
                machine: run.machine.name.clone(),
                arch: run.machine.arch,
                detail,
                tail: outcome.tail.iter().rev().take(CaseResult::TAIL_LINES).rev().cloned().collect(),
                verdict: Some(verdict),
                status,
                boot: outcome.duration,
                built: ready.built,
                substituted: ready.substituted,
                log: request.log_path.clone(),
                failed_attempts: Vec::new(),
            }
        }
        Err(err) => {
            let mut result = error_result(&ready, log_dir, describe_qemu_error(&err));
            result.boot = started.elapsed();
            result
        }
    }
}

/// A Linux case on a restored snapshot: the command runs through the agent, its output
/// lines are the case's "serial" lines (judged and logged), its status the guest's. The
/// kernel's console (a panic, say) is read from QEMU's log when the agent goes away.
async fn snapshot_case(
    ready: &ReadyRun,
    target: &SnapshotTarget,
    entry: &Path,
    command: &str,
    log_dir: &Path,
    reporter: &dyn Reporter,
) -> CaseResult {
    use std::io::Write as _;
    let run = &ready.run;
    let label = run.label();
    let log = log_path(run, log_dir);
    let started = Instant::now();
    let mut outcome = BootOutcome::new(Exit::Status(0));
    let mut log_file = match std::fs::File::create(&log) {
        Ok(file) => std::io::BufWriter::new(file),
        Err(err) => return error_result(ready, log_dir, format!("cannot create {}: {err}", log.display())),
    };
    let shown = format!("restore {} and run `{command}` through kiln-agent", entry.display());
    let name = run.name();
    let boot = BootRef { label: &label, case: &name, machine: &run.machine.name, arch: run.machine.arch };
    reporter.report(Event::CaseStarted { boot, accel: ready.accel, command: &shown });
    let mut guest = match target.restore(entry).await {
        Ok(guest) => guest,
        Err(err) => return error_result(ready, log_dir, format!("the snapshot could not be restored: {err:#}")),
    };
    let env = guest::agent_env();
    let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
    let mut pending = [Vec::new(), Vec::new()];
    let mut on_line = |line: &str, raw: &[u8], outcome: &mut BootOutcome| {
        let _ = writeln!(log_file, "{line}");
        outcome.observe(line, &run.rules.judge);
        let raw = std::str::from_utf8(raw).is_err().then_some(raw);
        reporter.report(Event::SerialLine { boot, line, raw });
    };
    let exec = guest.agent.exec(argv, env, Some("/".to_owned()), |is_stderr, bytes| {
        let buffer = &mut pending[usize::from(is_stderr)];
        buffer.extend_from_slice(bytes);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            on_line(text.trim_end_matches(['\n', '\r']), &line[..end], &mut outcome);
        }
    });
    let ended = tokio::time::timeout(run.rules.timeout, exec).await;
    for rest in pending.iter().filter(|rest| !rest.is_empty()) {
        on_line(String::from_utf8_lossy(rest).trim_end(), rest, &mut outcome);
    }
    outcome.exit = match ended {
        Ok(Ok(status)) => Exit::GuestExited(status.shell_status()),
        Err(_) => Exit::TimedOut(run.rules.timeout),
        Ok(Err(err)) => {
            // The agent went away: the kernel's console says why (a panic is the case's failure).
            drop(guest.qemu);
            let console = std::fs::read_to_string(guest.scratch.path().join(crate::vm::snapshot::CONSOLE_FILE))
                .unwrap_or_default();
            let heading = "--- the guest's console after the restore ---";
            on_line(heading, heading.as_bytes(), &mut outcome);
            for line in console.lines() {
                let line = line.trim_end_matches('\r');
                on_line(line, line.as_bytes(), &mut outcome);
            }
            if outcome.failure_line.is_none() {
                let mut result = error_result(ready, log_dir, format!("the guest agent went away: {err:#}"));
                result.boot = started.elapsed();
                result.tail = outcome.tail.iter().rev().take(CaseResult::TAIL_LINES).rev().cloned().collect();
                return result;
            }
            Exit::Signal(9)
        }
    };
    let _ = log_file.flush();
    outcome.duration = started.elapsed();
    let verdict = run.rules.judge.judge(&outcome);
    CaseResult {
        label: label.clone(),
        case: run.name(),
        test: None,
        line: run.line,
        machine: run.machine.name.clone(),
        arch: run.machine.arch,
        detail: verdict.describe(),
        tail: outcome.tail.iter().rev().take(CaseResult::TAIL_LINES).rev().cloned().collect(),
        status: CaseStatus::from_verdict(&verdict, run.rules.expect),
        verdict: Some(verdict),
        boot: outcome.duration,
        built: ready.built,
        substituted: ready.substituted,
        log,
        failed_attempts: Vec::new(),
    }
}

fn describe_qemu_error(err: &QemuError) -> String {
    match err {
        QemuError::QemuMissing { program, package } => {
            format!("`{program}` is not installed (Debian/Ubuntu package `{package}`)")
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}
