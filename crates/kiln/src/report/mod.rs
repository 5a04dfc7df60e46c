//! Everything kiln tells people: status lines, live serial output, progress bars, the summary
//! table, JUnit and GitHub Actions output.
//!
//! The layers below only send [`Event`]s; the [`Printer`] decides how each looks, in one place
//! ([`Printer::report`]). stdout carries data (`config` output, `build`'s paths, or the JSON
//! event stream under `--message-format json`); people read stderr.

pub(crate) mod github;
pub(crate) mod json;
pub(crate) mod junit;
pub(crate) mod summary;
pub(crate) mod tally;

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kiln_store::BuildOutcome;

use crate::{
    env,
    events::{EntryKind, Event, Reporter},
    outcome::CaseStatus,
    units::{human_size, seconds},
};

/// How much kiln says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// Errors, alerts and the summary only.
    Quiet,
    /// Also the slow work that happens once (downloads, builds, making a snapshot): `run`'s
    /// default, so cargo's runner is silent on a warm run and not on the first one.
    Work,
    /// Status lines and serial output.
    Normal,
    /// Also QEMU command lines and closure hashes.
    Verbose,
}

/// What every printer of one command shares: the tally of its events, the JSON event stream
/// when `--message-format json` asked for it, the JUnit file written, and the start time.
#[derive(Debug)]
pub(crate) struct EventLog {
    tally: Mutex<tally::Tally>,
    json: Option<json::JsonLines>,
    junit: Mutex<Option<PathBuf>>,
    started: Instant,
}

impl EventLog {
    /// A log that writes the JSON stream to `json`, when given.
    pub(crate) fn new(json: Option<json::JsonLines>) -> Self {
        Self { tally: Mutex::new(tally::Tally::default()), json, junit: Mutex::new(None), started: Instant::now() }
    }

    /// The JSON stream, under `--message-format json`.
    pub(crate) fn json(&self) -> Option<&json::JsonLines> {
        self.json.as_ref()
    }

    fn observe(&self, event: &Event<'_>) {
        if let Ok(mut tally) = self.tally.lock() {
            tally.observe(event);
        }
        if let Some(json) = &self.json {
            json.event(event);
        }
    }

    /// The command judges cases: its summary counts them, even when none ran.
    pub(crate) fn expect_cases(&self) {
        if let Ok(mut tally) = self.tally.lock() {
            tally.expect_cases();
        }
    }

    /// Records the JUnit file the command wrote.
    pub(crate) fn record_junit(&self, path: PathBuf) {
        if let Ok(mut junit) = self.junit.lock() {
            *junit = Some(path);
        }
    }

    /// The summary of the events so far, for a command ending with `exit_code`.
    pub(crate) fn summary(&self, command: &str, exit_code: u8, error: Option<String>) -> tally::Summary {
        let junit = self.junit.lock().ok().and_then(|junit| junit.clone());
        match self.tally.lock() {
            Ok(tally) => tally.summary(command, exit_code, junit, error, self.started.elapsed()),
            Err(_) => tally::Tally::default().summary(command, exit_code, junit, error, self.started.elapsed()),
        }
    }
}

/// Writes status lines to stderr, one writer at a time.
#[derive(Debug)]
pub(crate) struct Printer {
    log: Arc<EventLog>,
    verbosity: Verbosity,
    prefix_serial: bool,
    stream_serial: bool,
    lock: Mutex<()>,
    progress: Mutex<Option<Progress>>,
    downloads: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

/// Progress bars while guests boot (a terminal outside CI only): one line per running guest
/// with its newest serial line, and a bar of finished boots.
#[derive(Debug)]
struct Progress {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    guests: HashMap<String, indicatif::ProgressBar>,
}

/// Whether bars may be drawn: a person at a terminal, outside CI.
fn attended() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && !env::in_ci()
}

impl Printer {
    /// A printer at the given verbosity.
    pub(crate) fn new(verbosity: Verbosity) -> Self {
        Self {
            log: Arc::new(EventLog::new(None)),
            verbosity,
            prefix_serial: false,
            stream_serial: true,
            lock: Mutex::new(()),
            progress: Mutex::new(None),
            downloads: Mutex::new(HashMap::new()),
        }
    }

    /// The printer, telling its events to `log` (which a command shares among its printers).
    pub(crate) fn with_log(self, log: Arc<EventLog>) -> Self {
        Self { log, ..self }
    }

    /// A new printer with the same settings and the same event log.
    pub(crate) fn clone_settings(&self) -> Self {
        Self {
            log: self.log.clone(),
            prefix_serial: self.prefix_serial,
            stream_serial: self.stream_serial,
            ..Self::new(self.verbosity)
        }
    }

    /// The event log this printer tells.
    pub(crate) fn log(&self) -> &EventLog {
        &self.log
    }

    /// Shows progress bars for `boots` guests, when stderr is a terminal outside CI and kiln
    /// is not quiet; otherwise every event stays a plain line.
    pub(crate) fn start_progress(&self, boots: usize) {
        if self.verbosity != Verbosity::Normal || !attended() {
            return;
        }
        let multi = indicatif::MultiProgress::new();
        let overall = multi.add(indicatif::ProgressBar::new(boots as u64));
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} {elapsed}")
        {
            overall.set_style(style.progress_chars("=> "));
        }
        overall.set_prefix("Booting");
        if let Ok(mut progress) = self.progress.lock() {
            *progress = Some(Progress { multi, overall, guests: HashMap::new() });
        }
    }

    /// Removes the progress bars.
    pub(crate) fn finish_progress(&self) {
        if let Ok(mut progress) = self.progress.lock()
            && let Some(progress) = progress.take()
        {
            for bar in progress.guests.values() {
                bar.finish_and_clear();
            }
            progress.overall.finish_and_clear();
        }
    }

    /// Prefix serial lines with `[case/machine]` (when several guests run at once).
    pub(crate) fn set_prefix_serial(&mut self, prefix: bool) {
        self.prefix_serial = prefix;
    }

    /// Whether serial lines are printed as they come (off in GitHub Actions, where each
    /// case's output is shown once, in its own group, after the boots).
    pub(crate) fn set_stream_serial(&mut self, stream: bool) {
        self.stream_serial = stream;
    }

    /// The verbosity.
    pub(crate) fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    fn write(&self, text: &str) {
        let _guard = self.lock.lock();
        if let Ok(progress) = self.progress.lock()
            && let Some(progress) = progress.as_ref()
        {
            let _ = progress.multi.println(text);
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{text}");
    }

    /// Updates the progress bars for an event; true when the bars show it instead of a line.
    fn progress_event(&self, event: &Event<'_>) -> bool {
        let Ok(mut progress) = self.progress.lock() else { return false };
        let Some(progress) = progress.as_mut() else { return false };
        match event {
            Event::CaseStarted { boot, .. } => {
                let label = boot.label;
                let bar = progress.multi.insert_before(&progress.overall, indicatif::ProgressBar::new_spinner());
                if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {wide_msg}")
                {
                    bar.set_style(style);
                }
                bar.set_prefix(label.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                progress.guests.insert(label.to_string(), bar);
                true
            }
            Event::SerialLine { boot, line, .. } => {
                if let Some(bar) = progress.guests.get(boot.label) {
                    bar.set_message(line.to_string());
                }
                true
            }
            Event::CaseFinished(result) => {
                if let Some(bar) = progress.guests.remove(&result.label) {
                    bar.finish_and_clear();
                }
                progress.overall.inc(1);
                false
            }
            _ => false,
        }
    }

    /// A cargo-style status line: a right-aligned verb, then the message.
    pub(crate) fn status(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write(&format!("{verb:>12} {message}"));
        }
    }

    /// A status line about slow work (a download, a build, a fresh guest where a warm one was
    /// asked for), shown unless `-q`.
    pub(crate) fn work(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Work {
            self.write(&format!("{verb:>12} {message}"));
        }
    }

    /// A status line shown only with `-v`.
    pub(crate) fn verbose(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.write(&format!("{verb:>12} {message}"));
        }
    }

    /// A warning; shown unless `-q`.
    pub(crate) fn warn(&self, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write(&format!("warning: {message}"));
        }
    }

    /// Text that is always shown (the summary, alerts).
    pub(crate) fn always(&self, text: &str) {
        self.write(text);
    }

    /// The line of a store entry that is ready: built now, found, or substituted.
    fn build_finished(&self, what: &str, kind: EntryKind, closure: &kiln_store::ClosureHash, outcome: &BuildOutcome) {
        match outcome {
            // Fetches and snapshots that were already there are not worth a line each.
            BuildOutcome::Cached if kind == EntryKind::Build => {
                self.status("Cached", &format!("{what} {}", closure.short()))
            }
            BuildOutcome::Cached => {}
            BuildOutcome::Substituted { from, duration, bytes } => self.status(
                "Substituted",
                &format!("{what} {} from {from} ({} in {})", closure.short(), human_size(*bytes), seconds(*duration)),
            ),
            BuildOutcome::Built { duration, replaced } => {
                if let Some(damage) = replaced {
                    // Said even with `-q`: a store entry changed under kiln.
                    self.always(&format!(
                        "warning: refused the store entry {} of {what}: {damage}; it was made again",
                        closure.short()
                    ));
                }
                match kind {
                    EntryKind::Build => {
                        self.status("Built", &format!("{what} {} in {}", closure.short(), seconds(*duration)))
                    }
                    EntryKind::Fetch => self.status("Fetched", &format!("{what} in {}", seconds(*duration))),
                    EntryKind::Snapshot => self.status("Saved", &format!("{what} in {}", seconds(*duration))),
                }
            }
            other => self.status("Ready", &format!("{what} {} ({other:?})", closure.short())),
        }
    }

    /// A download's bar on a terminal, or one line.
    fn download_started(&self, name: &str, total: Option<u64>) {
        if self.verbosity < Verbosity::Normal || !attended() {
            let size = total.map(|t| format!(" ({})", human_size(t))).unwrap_or_default();
            self.work("Fetching", &format!("{name}{size}"));
            return;
        }
        let bar = match total {
            Some(total) => indicatif::ProgressBar::new(total),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12.cyan.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_prefix("Fetching");
        bar.set_message(name.to_owned());
        if let Ok(mut downloads) = self.downloads.lock() {
            downloads.insert(name.to_owned(), bar);
        }
    }
}

impl Reporter for Printer {
    fn report(&self, event: Event<'_>) {
        self.log.observe(&event);
        if self.progress_event(&event) {
            return;
        }
        match event {
            Event::Status { verb, message } => self.status(verb, message),
            Event::Detail { verb, message } => self.verbose(verb, message),
            Event::Warning(message) => self.warn(message),
            Event::Alert(message) => self.always(&format!("warning: {message}")),
            Event::BuildWaiting { what } => self.work("Waiting", &format!("for another kiln building {what}")),
            Event::BuildStarted { what, kind, how, .. } => match (kind, how) {
                // A download speaks for itself (a bar or a `Fetching` line).
                (EntryKind::Fetch, _) => {}
                (EntryKind::Snapshot, Some(how)) => self.work("Snapshot", how),
                (_, Some(how)) => self.work("Building", &format!("{what} {how}")),
                (_, None) => self.work("Building", what),
            },
            Event::BuildReason { line } => self.status("Because", line),
            Event::BuildFinished { what, kind, closure, outcome, .. } => {
                self.build_finished(what, kind, &closure, outcome);
            }
            // The error itself ends the command and is printed then.
            Event::BuildFailed { .. } => {}
            Event::DownloadStarted { name, total } => self.download_started(name, total),
            Event::DownloadProgress { name, received } => {
                if let Ok(downloads) = self.downloads.lock()
                    && let Some(bar) = downloads.get(name)
                {
                    bar.set_position(received);
                }
            }
            Event::DownloadEnded { name } => {
                if let Ok(mut downloads) = self.downloads.lock()
                    && let Some(bar) = downloads.remove(name)
                {
                    bar.finish_and_clear();
                }
            }
            Event::Retrying { message, .. } => self.status("Retrying", message),
            Event::AccelChosen { arch, choice } => {
                self.status("Accel", &format!("{arch}: {}; {}", choice.accel.as_str().to_uppercase(), choice.reason));
            }
            Event::CaseStarted { boot, command, .. } => {
                self.status("Booting", boot.label);
                self.verbose("Running", command);
            }
            Event::SerialLine { boot, line, .. } => {
                if self.verbosity >= Verbosity::Normal && self.stream_serial {
                    if self.prefix_serial {
                        self.write(&format!("[{}] {line}", boot.label));
                    } else {
                        self.write(line);
                    }
                }
            }
            Event::CaseFinished(result) => {
                let verb = match result.status {
                    CaseStatus::Passed => "Passed",
                    CaseStatus::FailedAsExpected => "Failed (ok)",
                    CaseStatus::Failed | CaseStatus::UnexpectedPass => "FAILED",
                    CaseStatus::Error => "ERROR",
                    CaseStatus::Interrupted => "Interrupted",
                };
                self.status(verb, &format!("{} in {} ({})", result.label, seconds(result.boot), result.detail));
            }
        }
    }
}
