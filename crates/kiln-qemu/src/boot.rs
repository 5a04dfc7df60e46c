//! Running one guest: its own process group, a live serial stream, a hard timeout and a
//! no-output watchdog.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufWriter, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use regex::Regex;
use tokio::{
    io::AsyncReadExt,
    time::{Instant as TokioInstant, sleep_until},
};

use crate::{Argv, Judge, QemuError};

/// How many serial lines a [`BootOutcome`] keeps in memory; the log file has them all.
const TAIL_LINES: usize = 200;
/// A line longer than this is cut into pieces, so a guest that never prints a newline
/// cannot grow kiln's memory.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How much of QEMU's standard error is kept.
const MAX_STDERR_BYTES: usize = 16 * 1024;

/// Everything needed to boot one guest.
#[derive(Clone, Debug)]
pub struct BootRequest {
    /// The QEMU binary.
    pub program: String,
    /// Its arguments, rendered from a [`crate::Machine`].
    pub argv: Argv,
    /// Hard limit on the whole boot.
    pub timeout: Duration,
    /// Kill the guest when it prints nothing for this long.
    pub no_output_timeout: Option<Duration>,
    /// Stop the guest as soon as the success marker appears (for kernels that never exit).
    pub stop_on_success: bool,
    /// Where the full serial output is written.
    pub log_path: PathBuf,
    /// A line starting with this, then a number, is the guest command's exit status (a
    /// Linux guest under kiln's init); kiln then stops QEMU at once.
    pub exit_marker: Option<String>,
}

/// How the QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU exited with this status.
    Status(i32),
    /// QEMU was killed by a signal kiln did not send.
    Signal(i32),
    /// kiln killed it at the hard timeout.
    TimedOut(Duration),
    /// kiln killed it after this long without output.
    Silent(Duration),
    /// kiln stopped it after the success marker, as asked.
    StoppedOnSuccess,
    /// The guest's command reported this exit status through the exit marker; kiln
    /// stopped QEMU.
    GuestExited(i32),
}

/// What one boot produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    /// How QEMU ended.
    pub exit: Exit,
    /// Wall time from spawn to exit.
    pub duration: Duration,
    /// The last serial lines (bounded).
    pub tail: VecDeque<String>,
    /// The first line that matched the failure pattern.
    pub failure_line: Option<String>,
    /// Whether a line matched the success pattern.
    pub success_seen: bool,
    /// How many serial lines the guest printed.
    pub line_count: usize,
}

impl BootOutcome {
    /// An outcome with no output yet.
    pub fn new(exit: Exit) -> Self {
        Self {
            exit,
            duration: Duration::ZERO,
            tail: VecDeque::new(),
            failure_line: None,
            success_seen: false,
            line_count: 0,
        }
    }

    /// Records one serial line (ANSI escapes already stripped) and checks it against the markers.
    pub fn observe(&mut self, line: &str, judge: &Judge) {
        self.line_count += 1;
        if self.failure_line.is_none() && judge.is_failure_line(line) {
            self.failure_line = Some(line.to_owned());
        }
        if judge.is_success_line(line) {
            self.success_seen = true;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    /// The last non-empty line the guest printed.
    pub fn last_line(&self) -> Option<String> {
        self.tail.iter().rev().find(|l| !l.trim().is_empty()).cloned()
    }
}

/// Removes ANSI escape sequences, so markers match what a person sees.
fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    static ANSI: OnceLock<Option<Regex>> = OnceLock::new();
    match ANSI.get_or_init(|| Regex::new(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])").ok()) {
        Some(re) => re.replace_all(line, ""),
        None => std::borrow::Cow::Borrowed(line),
    }
}

/// Kills QEMU's whole process group when dropped, whatever path the boot took.
struct GroupGuard {
    pgid: Pid,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.pgid, Signal::SIGKILL);
    }
}

/// Boots a guest and judges nothing: returns what happened. `on_line` sees every serial line.
///
/// QEMU runs in its own process group with `PR_SET_PDEATHSIG`, so neither a timeout nor the
/// death of kiln itself leaves a QEMU behind.
pub async fn boot(
    request: &BootRequest,
    judge: &Judge,
    mut on_line: impl FnMut(&str),
) -> Result<BootOutcome, QemuError> {
    let log_file =
        File::create(&request.log_path).map_err(|source| QemuError::Log { path: request.log_path.clone(), source })?;
    let mut log = BufWriter::new(log_file);

    let mut command = guest_command(&request.program, &request.argv);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| spawn_error(&request.program, source))?;
    let guard = child.id().map(|pid| GroupGuard { pgid: Pid::from_raw(pid as i32) });
    let mut stdout = child.stdout.take().ok_or(QemuError::Io {
        doing: "reading QEMU's serial output",
        source: std::io::Error::other("stdout was not captured"),
    })?;
    let stderr_task = child.stderr.take().map(|mut stderr| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = MAX_STDERR_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });

    let deadline = TokioInstant::now() + request.timeout;
    let mut last_output = TokioInstant::now();
    let mut outcome = BootOutcome::new(Exit::Status(0));
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut stdout_open = true;

    let mut emit = |raw: &[u8], outcome: &mut BootOutcome, log: &mut BufWriter<File>| -> Result<(), QemuError> {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        log.write_all(text.as_bytes())
            .and_then(|()| log.write_all(b"\n"))
            .map_err(|source| QemuError::Log { path: request.log_path.clone(), source })?;
        let clean = strip_ansi(text);
        outcome.observe(&clean, judge);
        on_line(&clean);
        Ok(())
    };

    let exit = loop {
        let watchdog = request.no_output_timeout.map(|period| last_output + period);
        tokio::select! {
            read = stdout.read(&mut buf), if stdout_open => {
                let n = read.map_err(|source| QemuError::Io { doing: "reading QEMU's serial output", source })?;
                if n == 0 {
                    stdout_open = false;
                    if !pending.is_empty() {
                        emit(&pending, &mut outcome, &mut log)?;
                        pending.clear();
                    }
                    continue;
                }
                last_output = TokioInstant::now();
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    emit(&line[..line.len() - 1], &mut outcome, &mut log)?;
                }
                if pending.len() > MAX_LINE_BYTES {
                    emit(&pending, &mut outcome, &mut log)?;
                    pending.clear();
                }
                if outcome.failure_line.is_some() {
                    kill(&guard);
                    break None;
                }
                if let Some(status) = guest_status(request.exit_marker.as_deref(), &mut outcome) {
                    kill(&guard);
                    break Some(Exit::GuestExited(status));
                }
                if request.stop_on_success && outcome.success_seen {
                    kill(&guard);
                    break Some(Exit::StoppedOnSuccess);
                }
            }
            status = child.wait(), if !stdout_open => {
                let status = status.map_err(|source| QemuError::Io { doing: "waiting for QEMU", source })?;
                break Some(match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Status(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Signal(0),
                });
            }
            () = sleep_until(deadline) => {
                kill(&guard);
                break Some(Exit::TimedOut(request.timeout));
            }
            () = async {
                match watchdog {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                kill(&guard);
                break Some(Exit::Silent(request.no_output_timeout.unwrap_or_default()));
            }
        }
    };
    // Reap QEMU before the guard's final group kill so nothing is left behind.
    let reaped = child.wait().await.map_err(|source| QemuError::Io { doing: "waiting for QEMU", source })?;
    outcome.exit = exit.unwrap_or(match reaped.code() {
        Some(code) => Exit::Status(code),
        None => Exit::Signal(reaped.signal().unwrap_or(0)),
    });
    outcome.duration = started.elapsed();
    drop(guard);
    log.flush().map_err(|source| QemuError::Log { path: request.log_path.clone(), source })?;

    let stderr = match stderr_task {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    if let Exit::Status(status) = outcome.exit
        && outcome.line_count == 0
        && stderr.contains(&format!("{}:", request.program))
    {
        return Err(QemuError::QemuFailed { status, stderr: stderr.trim().to_owned() });
    }
    Ok(outcome)
}

/// The exit status in the newest serial lines, when they carry the exit marker. The marker
/// line and what came after it (the kernel powering off, read in the same chunk) leave the
/// tail, so the last line shown is the command's own.
fn guest_status(marker: Option<&str>, outcome: &mut BootOutcome) -> Option<i32> {
    let marker = marker?;
    let len = outcome.tail.len();
    let (index, status) = outcome.tail.iter().enumerate().skip(len.saturating_sub(4)).find_map(|(index, line)| {
        line.trim_start().strip_prefix(marker)?.trim().parse().ok().map(|status| (index, status))
    })?;
    outcome.tail.truncate(index);
    Some(status)
}

fn kill(guard: &Option<GroupGuard>) {
    if let Some(guard) = guard {
        let _ = nix::sys::signal::killpg(guard.pgid, Signal::SIGKILL);
    }
}

fn spawn_error(program: &str, source: std::io::Error) -> QemuError {
    if source.kind() == std::io::ErrorKind::NotFound {
        QemuError::QemuMissing { program: program.to_owned(), package: crate::firmware::qemu_package(program) }
    } else {
        QemuError::Spawn { program: program.to_owned(), source }
    }
}

/// A QEMU command that cannot outlive kiln: in its own process group (killed whole when
/// the value is dropped), and with `PR_SET_PDEATHSIG`, so the kernel kills it when the
/// thread that started it dies, even on SIGKILL.
pub fn guest_command(program: &str, argv: &Argv) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.args(argv.as_slice()).process_group(0).kill_on_drop(true);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(die_with_parent);
    }
    command
}

/// Asks the kernel to SIGKILL this child when the thread that spawned it dies, and exits
/// at once if that already happened.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe and take no pointers here.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() == 1 {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Runs QEMU with the terminal attached (serial and monitor multiplexed; Ctrl-A X quits)
/// and returns how it ended.
pub fn interactive(program: &str, argv: &Argv) -> Result<Exit, QemuError> {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(program);
    command.args(argv.as_slice());
    // SAFETY: as in `boot`, only async-signal-safe calls.
    unsafe {
        command.pre_exec(die_with_parent);
    }
    let status = command.status().map_err(|source| spawn_error(program, source))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Status(code),
        (None, signal) => Exit::Signal(signal.unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_commands_even_when_shutdown_lines_follow_the_exit_marker() {
        let judge = Judge { failure: None, success: None, success_statuses: vec![0], guest_reports_status: true };
        let mut outcome = BootOutcome::new(Exit::Status(0));
        for line in ["hello from the command", "KILN-EXIT n0nce 3", "[    3.46] reboot: Power down"] {
            outcome.observe(line, &judge);
        }
        assert_eq!(guest_status(Some("KILN-EXIT n0nce"), &mut outcome), Some(3));
        assert_eq!(outcome.last_line().as_deref(), Some("hello from the command"));
    }

    #[test]
    fn ansi_escapes_are_stripped() {
        assert_eq!(strip_ansi("\x1b[1;32mok\x1b[0m done"), "ok done");
    }
}
