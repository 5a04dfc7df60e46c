//! What a command's events add up to: how the store served each entry and how each case came
//! out. The summary event and the GitHub Action's outputs are both made from it, so they
//! cannot disagree.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use kiln_store::{BuildOutcome, ClosureHash};
use serde::Serialize;

use crate::{events::Event, outcome::CaseResult};

/// How the store served one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Built,
    Cached,
    Substituted,
    Failed,
}

/// Counts kept from the events of one command.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Each entry once, by closure (an entry used twice is counted once, by its last event).
    builds: HashMap<ClosureHash, Served>,
    /// Each judged run once, by `case/machine`: its verdict's `result`.
    cases: HashMap<String, &'static str>,
    /// Whether the command judges cases (a `test`), even when none ran.
    judges_cases: bool,
}

/// Entries by how the store served them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct BuildCounts {
    /// Built (or downloaded) in this run.
    pub built: usize,
    /// Found in the store.
    pub cached: usize,
    /// Taken from a remote store.
    pub substituted: usize,
    /// Failed to build.
    pub failed: usize,
}

/// Judged runs by result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CaseCounts {
    /// Every judged run (a case on a machine, or one test binary of it).
    pub total: usize,
    /// Green on the first attempt.
    pub passed: usize,
    /// Green after failed attempts.
    pub flaky: usize,
    /// Red.
    pub failed: usize,
}

/// The last event of a command: what it did and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Summary {
    /// The command (`test`, `build`).
    pub command: String,
    /// kiln's exit code.
    pub exit_code: u8,
    /// Wall time of the command.
    pub seconds: f64,
    /// Store entries by how they were served.
    pub builds: BuildCounts,
    /// Judged runs by result (`test` only).
    pub cases: Option<CaseCounts>,
    /// The JUnit file written, if any.
    pub junit: Option<PathBuf>,
    /// Why kiln stopped early (a build failure, a Kiln.toml error), rendered with its causes.
    pub error: Option<String>,
}

impl Summary {
    /// Whether every judged case is green (none counts as green).
    pub(crate) fn all_ok(&self) -> bool {
        self.cases.is_none_or(|cases| cases.failed == 0)
    }
}

/// Seconds with millisecond precision.
pub(crate) fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

/// How a verdict's `result` reads: green on the first attempt, green after failed ones, red.
pub(crate) fn result_name(result: &CaseResult) -> &'static str {
    if result.is_flaky() {
        "flaky"
    } else if result.status.is_ok() {
        "passed"
    } else {
        "failed"
    }
}

impl Tally {
    /// Counts an event.
    pub(crate) fn observe(&mut self, event: &Event<'_>) {
        match event {
            Event::BuildFinished { closure, outcome, .. } => {
                let served = match outcome {
                    BuildOutcome::Built { .. } => Served::Built,
                    BuildOutcome::Cached => Served::Cached,
                    BuildOutcome::Substituted { .. } => Served::Substituted,
                    // As the JSON stream says it: the entry is there, nothing ran.
                    _ => Served::Cached,
                };
                self.builds.insert(*closure, served);
            }
            Event::BuildFailed { closure, .. } => {
                self.builds.insert(*closure, Served::Failed);
            }
            Event::CaseStarted { .. } => self.judges_cases = true,
            Event::CaseFinished(result) => {
                self.judges_cases = true;
                self.cases.insert(result.label.clone(), result_name(result));
            }
            _ => {}
        }
    }

    /// Marks the command as one that judges cases, so its summary counts them (zero or more).
    pub(crate) fn expect_cases(&mut self) {
        self.judges_cases = true;
    }

    /// The counts so far as a summary.
    pub(crate) fn summary(
        &self,
        command: &str,
        exit_code: u8,
        junit: Option<PathBuf>,
        error: Option<String>,
        elapsed: Duration,
    ) -> Summary {
        let count = |served: Served| self.builds.values().filter(|s| **s == served).count();
        let builds = BuildCounts {
            built: count(Served::Built),
            cached: count(Served::Cached),
            substituted: count(Served::Substituted),
            failed: count(Served::Failed),
        };
        let cases = self.judges_cases.then(|| {
            let count = |result: &str| self.cases.values().filter(|r| **r == result).count();
            CaseCounts {
                total: self.cases.len(),
                passed: count("passed"),
                flaky: count("flaky"),
                failed: count("failed"),
            }
        });
        Summary { command: command.to_owned(), exit_code, seconds: seconds(elapsed), builds, cases, junit, error }
    }
}
