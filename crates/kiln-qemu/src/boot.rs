//! Running one guest: a live serial stream, a hard timeout and a no-output watchdog, in a
//! [`Qemu`] process that cannot outlive kiln.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use regex::Regex;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    time::{Instant as TokioInstant, sleep_until},
};

use crate::{
    Argv, Judge, QemuError,
    finisher::{FinisherCommand, StderrLine, classify},
    process::{Qemu, Terminal, exit_of},
};

/// How many serial lines a [`BootOutcome`] keeps in memory; the log file has them all.
const TAIL_LINES: usize = 200;
/// A line longer than this is cut into pieces, so a guest that never prints a newline
/// cannot grow kiln's memory.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How much of QEMU's standard error is kept.
const MAX_STDERR_BYTES: usize = 16 * 1024;
/// How long kiln waits for the message line of a failure line that ends with `:` before it
/// stops the guest.
const FAILURE_MESSAGE_GRACE: Duration = Duration::from_millis(250);

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
    /// Text typed on the guest's serial console (QEMU's standard input, `-serial stdio`).
    pub input: Option<SerialInput>,
}

/// Text written to a guest's serial console once, at boot or when a line appears.
#[derive(Clone, Debug)]
pub struct SerialInput {
    /// The bytes to send, as written (a terminal's Enter is `\r`).
    pub text: String,
    /// Send once a serial line matches this (ANSI escapes removed); `None`: at boot. The
    /// guest reads what it is sent when it is ready, so input sent early is not lost.
    pub after: Option<Regex>,
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
    /// The first line that matched the failure pattern, joined with the next line when it
    /// ends with `:` (Rust prints `panicked at FILE:LINE:COL:` and the message below it).
    pub failure_line: Option<String>,
    /// The first line that matched the failure pattern or reads like a panic (`panicked at`,
    /// `PANIC`, `Kernel panic`), joined with the next line when it ends with `:`: what a
    /// failure's detail quotes instead of the last line.
    pub panic_line: Option<String>,
    /// Whether a line matched the success pattern.
    pub success_seen: bool,
    /// How many serial lines the guest printed.
    pub line_count: usize,
    /// The last command the guest (or its firmware) gave the sifive_test finisher, when
    /// QEMU's trace showed it (riscv64 machines with the finisher as exit device).
    pub finisher: Option<FinisherCommand>,
    /// The shutdown device OpenSBI's banner named (`Platform Shutdown Device : ...`).
    pub firmware_shutdown_device: Option<String>,
    /// The signal that killed the guest's command, when its exit marker said so
    /// (`KILN-EXIT nonce 134 signal 6`); [`Exit::GuestExited`] then holds 128 + the signal.
    pub guest_signal: Option<i32>,
    /// `failure_line` ends with `:` and waits for its message line.
    failure_open: bool,
    /// `panic_line` ends with `:` and waits for its message line.
    panic_open: bool,
}

/// Serial lines that read like a kernel panic, whatever the case's own failure pattern.
fn is_panic_line(line: &str) -> bool {
    static PANIC: OnceLock<Option<Regex>> = OnceLock::new();
    PANIC
        .get_or_init(|| Regex::new(r"(?i:panicked at)|\bPANIC\b|Kernel panic").ok())
        .as_ref()
        .is_some_and(|re| re.is_match(line))
}

/// Keeps the first line that `starts` an excerpt in `slot`; when that line ends with `:`, the
/// next line (its message) is appended to it.
fn excerpt(slot: &mut Option<String>, open: &mut bool, line: &str, starts: bool) {
    if *open {
        *open = false;
        let message = line.trim();
        if let Some(text) = slot
            && !message.is_empty()
        {
            text.push(' ');
            text.push_str(message);
        }
    } else if slot.is_none() && starts {
        *slot = Some(line.trim_end().to_owned());
        *open = line.trim_end().ends_with(':');
    }
}

impl BootOutcome {
    /// An outcome with no output yet.
    pub fn new(exit: Exit) -> Self {
        Self {
            exit,
            duration: Duration::ZERO,
            tail: VecDeque::new(),
            failure_line: None,
            panic_line: None,
            success_seen: false,
            line_count: 0,
            finisher: None,
            firmware_shutdown_device: None,
            guest_signal: None,
            failure_open: false,
            panic_open: false,
        }
    }

    /// Whether the failure line ends with `:` and its message line has not arrived yet.
    pub fn awaiting_failure_message(&self) -> bool {
        self.failure_open
    }

    /// Records one serial line (ANSI escapes already stripped) and checks it against the markers.
    pub fn observe(&mut self, line: &str, judge: &Judge) {
        self.line_count += 1;
        let failure = judge.is_failure_line(line);
        excerpt(&mut self.failure_line, &mut self.failure_open, line, failure);
        excerpt(&mut self.panic_line, &mut self.panic_open, line, failure || is_panic_line(line));
        if self.firmware_shutdown_device.is_none()
            && let Some(device) = line.strip_prefix("Platform Shutdown Device")
            && let Some(device) = device.trim_start().strip_prefix(':')
        {
            self.firmware_shutdown_device = Some(device.trim().to_owned());
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

    /// Why a pass through the sifive_test finisher proves less than it seems: the firmware
    /// shuts down through another device (OpenSBI's `syscon-poweroff`, which writes the same
    /// pass for every SBI shutdown, the failing ones too).
    pub fn pass_caveat(&self) -> Option<String> {
        match (&self.finisher, &self.firmware_shutdown_device) {
            (Some(FinisherCommand::Pass), Some(device)) if device != "sifive_test" => Some(format!(
                "the firmware shuts down through `{device}`, which reports an SBI system-failure shutdown as a \
                 pass too: give the case a `success` or `failure` pattern, or a `firmware` that reports failures"
            )),
            _ => None,
        }
    }

    /// What a failure's detail quotes: the panic (or failure-marker) line with its message,
    /// else the last line.
    pub fn quoted_line(&self) -> Option<String> {
        self.panic_line.clone().or_else(|| self.last_line())
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

/// One line of the guest's serial output, as [`boot`]'s callback sees it.
#[derive(Clone, Copy, Debug)]
pub struct SerialLine<'a> {
    /// The line as people read it: decoded as UTF-8 (a byte that is not becomes U+FFFD), a
    /// trailing CR and ANSI escape sequences removed. Markers are matched against this.
    pub text: &'a str,
    /// The bytes the guest sent, without the newline: what `text` lost, when it lost something.
    pub raw: &'a [u8],
}

impl SerialLine<'_> {
    /// The raw bytes when they are not valid UTF-8 (so `text` replaced some), else `None`.
    pub fn raw_if_not_utf8(&self) -> Option<&[u8]> {
        std::str::from_utf8(self.raw).is_err().then_some(self.raw)
    }
}

/// Boots a guest and judges nothing: returns what happened. `on_line` sees every serial line.
///
/// QEMU runs in its own process group with `PR_SET_PDEATHSIG`, so neither a timeout nor the
/// death of kiln itself leaves a QEMU behind.
pub async fn boot(
    request: &BootRequest,
    judge: &Judge,
    mut on_line: impl FnMut(SerialLine<'_>),
) -> Result<BootOutcome, QemuError> {
    let log_file =
        File::create(&request.log_path).map_err(|source| QemuError::Log { path: request.log_path.clone(), source })?;
    let mut log = BufWriter::new(log_file);

    let started = Instant::now();
    let stdin = if request.input.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut qemu =
        Qemu::spawn(&request.program, &request.argv, Terminal::Detached, [stdin, Stdio::piped(), Stdio::piped()])?;
    // Kept open until the boot ends, so the console never reads an end of input mid-boot.
    let mut console_in = ConsoleInput::new(request.input.as_ref(), qemu.take_stdin());
    console_in.at_boot();
    let mut stdout = qemu.take_stdout().ok_or(QemuError::Io {
        doing: "reading QEMU's serial output",
        source: std::io::Error::other("stdout was not captured"),
    })?;
    let stderr_task = qemu.take_stderr().map(|stderr| tokio::spawn(read_stderr(stderr)));

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
        console_in.observe(&clean);
        on_line(SerialLine { text: &clean, raw });
        Ok(())
    };

    // Set when a failure line waits for its message line; the guest is stopped then.
    let mut failure_grace: Option<TokioInstant> = None;
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
                    if !outcome.awaiting_failure_message() {
                        qemu.kill();
                        break None;
                    }
                    failure_grace.get_or_insert_with(|| TokioInstant::now() + FAILURE_MESSAGE_GRACE);
                }
                if let Some(status) = guest_status(request.exit_marker.as_deref(), &mut outcome) {
                    qemu.kill();
                    break Some(Exit::GuestExited(status));
                }
                if request.stop_on_success && outcome.success_seen {
                    qemu.kill();
                    break Some(Exit::StoppedOnSuccess);
                }
            }
            status = qemu.wait(), if !stdout_open => {
                break Some(exit_of(status?));
            }
            () = async {
                match failure_grace {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                qemu.kill();
                break None;
            }
            () = sleep_until(deadline) => {
                qemu.kill();
                break Some(Exit::TimedOut(request.timeout));
            }
            () = async {
                match watchdog {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                qemu.kill();
                break Some(Exit::Silent(request.no_output_timeout.unwrap_or_default()));
            }
        }
    };
    // Reap QEMU, then drop it: the drop kills what is left of its process group.
    let reaped = qemu.wait().await?;
    drop(console_in);
    outcome.exit = exit.unwrap_or(exit_of(reaped));
    outcome.duration = started.elapsed();
    drop(qemu);
    log.flush().map_err(|source| QemuError::Log { path: request.log_path.clone(), source })?;

    let (stderr, finisher) = match stderr_task {
        Some(task) => task.await.unwrap_or_default(),
        None => (String::new(), None),
    };
    outcome.finisher = finisher;
    if let Exit::Status(status) = outcome.exit
        && outcome.line_count == 0
        && stderr.contains(&format!("{}:", request.program))
    {
        return Err(QemuError::QemuFailed { status, stderr: stderr.trim().to_owned() });
    }
    Ok(outcome)
}

/// Reads QEMU's standard error to its end: keeps QEMU's own messages (bounded) for error
/// reports and the last command traced to the sifive_test finisher; other traced writes are
/// dropped as they arrive.
async fn read_stderr(stderr: tokio::process::ChildStderr) -> (String, Option<FinisherCommand>) {
    let mut reader = BufReader::new(stderr);
    let mut kept = Vec::new();
    let mut finisher = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match classify(&String::from_utf8_lossy(&line)) {
            StderrLine::Finisher(command) => finisher = Some(command),
            StderrLine::OtherWrite => {}
            StderrLine::Message => {
                let room = MAX_STDERR_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&line[..line.len().min(room)]);
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), finisher)
}

/// The console input of one boot: written once, by a task of its own (a guest that reads
/// slowly must not stall the serial loop), when its trigger line appears or at boot.
struct ConsoleInput<'a> {
    input: Option<&'a SerialInput>,
    stdin: Option<tokio::process::ChildStdin>,
    writer: Option<tokio::task::JoinHandle<Option<tokio::process::ChildStdin>>>,
}

impl<'a> ConsoleInput<'a> {
    fn new(input: Option<&'a SerialInput>, stdin: Option<tokio::process::ChildStdin>) -> Self {
        Self { input, stdin, writer: None }
    }

    /// Sends input that waits for no line.
    fn at_boot(&mut self) {
        if self.input.is_some_and(|input| input.after.is_none()) {
            self.send();
        }
    }

    /// Sends the input when `line` is its trigger.
    fn observe(&mut self, line: &str) {
        if self.input.and_then(|input| input.after.as_ref()).is_some_and(|after| after.is_match(line)) {
            self.send();
        }
    }

    fn send(&mut self) {
        let (Some(input), Some(mut stdin)) = (self.input.take(), self.stdin.take()) else { return };
        let text = input.text.clone().into_bytes();
        self.writer = Some(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            // A guest that ended first closed the pipe; its verdict says what happened.
            let written = stdin.write_all(&text).await.and(stdin.flush().await);
            written.ok().map(|()| stdin)
        }));
    }
}

impl Drop for ConsoleInput<'_> {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

/// The exit status in the newest serial lines, when they carry the exit marker. The marker
/// line and what came after it (the kernel powering off, read in the same chunk) leave the
/// tail, so the last line shown is the command's own.
fn guest_status(marker: Option<&str>, outcome: &mut BootOutcome) -> Option<i32> {
    let marker = marker?;
    let len = outcome.tail.len();
    let (index, status, signal) =
        outcome.tail.iter().enumerate().skip(len.saturating_sub(4)).find_map(|(index, line)| {
            let (status, signal) = parse_status(line.trim_start().strip_prefix(marker)?)?;
            Some((index, status, signal))
        })?;
    outcome.tail.truncate(index);
    outcome.guest_signal = signal;
    Some(status)
}

/// `STATUS` or `STATUS signal N` after an exit marker.
fn parse_status(text: &str) -> Option<(i32, Option<i32>)> {
    let mut words = text.split_whitespace();
    let status = words.next()?.parse().ok()?;
    let signal = match (words.next(), words.next()) {
        (Some("signal"), Some(number)) => Some(number.parse().ok()?),
        (None, _) => None,
        _ => return None,
    };
    words.next().is_none().then_some((status, signal))
}

/// Runs QEMU with the terminal attached (serial and monitor multiplexed; Ctrl-A X quits)
/// and returns how it ended.
pub async fn interactive(program: &str, argv: &Argv) -> Result<Exit, QemuError> {
    let mut qemu =
        Qemu::spawn(program, argv, Terminal::Attached, [Stdio::inherit(), Stdio::inherit(), Stdio::inherit()])?;
    Ok(exit_of(qemu.wait().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_marker_may_name_the_signal_that_killed_the_command() {
        assert_eq!(parse_status("3"), Some((3, None)));
        assert_eq!(parse_status(" 134 signal 6 "), Some((134, Some(6))));
        assert_eq!(parse_status("134 signal"), None);
        assert_eq!(parse_status("134 signal 6 more"), None);
        assert_eq!(parse_status("x"), None);
        let mut outcome = BootOutcome::new(Exit::Status(0));
        outcome.tail.extend(["hello".to_owned(), "KILN-EXIT n 139 signal 11".to_owned()]);
        assert_eq!(guest_status(Some("KILN-EXIT n "), &mut outcome), Some(139));
        assert_eq!(outcome.guest_signal, Some(11));
        assert_eq!(outcome.tail, ["hello"]);
    }

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

    /// A shell stands in for QEMU: what it reads on standard input is what a guest reads on
    /// its serial console.
    fn shell_boot(script: &str, input: Option<SerialInput>) -> BootOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut argv = Argv::default();
        argv.arg("-c").arg(script);
        let request = BootRequest {
            program: "sh".to_owned(),
            argv,
            timeout: Duration::from_secs(10),
            no_output_timeout: None,
            stop_on_success: false,
            log_path: dir.path().join("log"),
            exit_marker: None,
            input,
        };
        let judge = Judge { failure: None, success: None, success_statuses: vec![0], guest_reports_status: false };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(boot(&request, &judge, |_| {})).expect("boot")
    }

    #[test]
    fn input_is_sent_once_when_its_line_appears() {
        // Nothing to read before the prompt; after the second prompt nothing more comes, and
        // the console is still open (a closed one would end the `read` at once).
        let script = r#"
            timeout 0.5 sh -c 'read x && echo early $x'
            echo login:
            read name
            echo hello $name
            echo login:
            timeout 0.5 sh -c 'read y && echo again $y' || echo nothing more
        "#;
        let input = SerialInput { text: "kiln\n".to_owned(), after: Some(Regex::new("^login:$").expect("regex")) };
        let outcome = shell_boot(script, Some(input));
        let lines: Vec<&str> = outcome.tail.iter().map(String::as_str).collect();
        assert_eq!(lines, ["login:", "hello kiln", "login:", "nothing more"]);
    }

    #[test]
    fn input_without_a_trigger_is_sent_at_boot() {
        let input = SerialInput { text: "ping\n".to_owned(), after: None };
        let outcome = shell_boot("read word; echo \"got $word\"", Some(input));
        assert_eq!(outcome.last_line().as_deref(), Some("got ping"));
        assert_eq!(outcome.exit, Exit::Status(0));
    }

    #[test]
    fn a_pass_through_a_firmware_that_cannot_report_failure_carries_a_caveat() {
        let judge = Judge { failure: None, success: None, success_statuses: vec![0], guest_reports_status: false };
        let mut old = BootOutcome::new(Exit::Status(0));
        old.observe("Platform Shutdown Device  : sifive_test", &judge);
        old.finisher = Some(FinisherCommand::Pass);
        assert_eq!(old.firmware_shutdown_device.as_deref(), Some("sifive_test"));
        assert_eq!(old.pass_caveat(), None);
        let mut new = BootOutcome::new(Exit::Status(0));
        new.observe("Platform Shutdown Device    : syscon-poweroff", &judge);
        assert_eq!(new.pass_caveat(), None, "no finisher write seen");
        new.finisher = Some(FinisherCommand::Pass);
        assert!(new.pass_caveat().is_some_and(|c| c.contains("`syscon-poweroff`")));
    }

    #[test]
    fn ansi_escapes_are_stripped() {
        assert_eq!(strip_ansi("\x1b[1;32mok\x1b[0m done"), "ok done");
    }
}
