//! Everything kiln tells people: status lines, live serial output, the summary table.
//!
//! The runner only emits [`Event`]s; this module decides how they look. stdout carries data
//! (`config` output); people read stderr.

pub mod github;
pub mod junit;
mod summary;

use std::{io::Write, sync::Mutex, time::Duration};

pub use summary::{CaseResult, CaseStatus, RunSummary, StoreUse};

/// How much kiln says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors and the summary only.
    Quiet,
    /// Status lines and serial output.
    Normal,
    /// Also QEMU command lines and closure hashes.
    Verbose,
}

/// Something the runner did that people may want to see.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A boot started.
    CaseStarted {
        /// `case/machine`.
        label: &'a str,
        /// The rendered QEMU command line.
        command: &'a str,
    },
    /// The guest printed a line.
    SerialLine {
        /// `case/machine`.
        label: &'a str,
        /// The line, ANSI escapes removed.
        line: &'a str,
    },
    /// A boot ended.
    CaseFinished(&'a CaseResult),
}

/// Writes status lines to stderr, one writer at a time.
#[derive(Debug)]
pub struct Printer {
    verbosity: Verbosity,
    prefix_serial: bool,
    stream_serial: bool,
    lock: Mutex<()>,
    progress: Mutex<Option<Progress>>,
}

/// Progress bars while guests boot (a terminal outside CI only): one line per running guest
/// with its newest serial line, and a bar of finished boots.
#[derive(Debug)]
struct Progress {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    guests: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Printer {
    /// A printer at the given verbosity.
    pub fn new(verbosity: Verbosity) -> Self {
        Self { verbosity, prefix_serial: false, stream_serial: true, lock: Mutex::new(()), progress: Mutex::new(None) }
    }

    /// A new printer with the same settings.
    pub fn clone_settings(&self) -> Self {
        Self {
            verbosity: self.verbosity,
            prefix_serial: self.prefix_serial,
            stream_serial: self.stream_serial,
            lock: Mutex::new(()),
            progress: Mutex::new(None),
        }
    }

    /// Shows progress bars for `boots` guests, when stderr is a terminal outside CI and kiln
    /// is not quiet; otherwise every event stays a plain line.
    pub fn start_progress(&self, boots: usize) {
        use std::io::IsTerminal as _;
        if self.verbosity != Verbosity::Normal || !std::io::stderr().is_terminal() || crate::env::in_ci() {
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
            *progress = Some(Progress { multi, overall, guests: std::collections::HashMap::new() });
        }
    }

    /// Removes the progress bars.
    pub fn finish_progress(&self) {
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
    pub fn set_prefix_serial(&mut self, prefix: bool) {
        self.prefix_serial = prefix;
    }

    /// Whether serial lines are printed as they come (off in GitHub Actions, where each
    /// case's output is shown once, in its own group, after the boots).
    pub fn set_stream_serial(&mut self, stream: bool) {
        self.stream_serial = stream;
    }

    /// The verbosity.
    pub fn verbosity(&self) -> Verbosity {
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
            Event::CaseStarted { label, .. } => {
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
            Event::SerialLine { label, line } => {
                if let Some(bar) = progress.guests.get(*label) {
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
        }
    }

    /// A cargo-style status line: a right-aligned verb, then the message.
    pub fn status(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write(&format!("{verb:>12} {message}"));
        }
    }

    /// A status line shown only with `-v`.
    pub fn verbose(&self, verb: &str, message: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.write(&format!("{verb:>12} {message}"));
        }
    }

    /// A warning; shown unless `-q`.
    pub fn warn(&self, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.write(&format!("warning: {message}"));
        }
    }

    /// Text that is always shown (the summary).
    pub fn always(&self, text: &str) {
        self.write(text);
    }

    /// Shows one runner event.
    pub fn event(&self, event: Event<'_>) {
        if self.progress_event(&event) {
            return;
        }
        match event {
            Event::CaseStarted { label, command } => {
                self.status("Booting", label);
                self.verbose("Running", command);
            }
            Event::SerialLine { label, line } => {
                if self.verbosity >= Verbosity::Normal && self.stream_serial {
                    if self.prefix_serial {
                        self.write(&format!("[{label}] {line}"));
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

/// A duration as `1.23s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// A count of store entries: `1 entry`, `3 entries`.
pub fn entries(count: usize) -> String {
    if count == 1 { "1 entry".to_owned() } else { format!("{count} entries") }
}

/// A byte count as `12.3 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{size:.1} {}", UNITS[unit]) }
}
