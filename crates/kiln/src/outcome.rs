//! What a run produced: a result per case and machine, and how the store served it. Plain
//! data, part of kiln's library surface; `report` decides how it looks.

use std::{path::PathBuf, time::Duration};

use kiln_qemu::Verdict;
use kiln_types::Arch;

use crate::config::Expect;

/// How a case came out, with its expectation applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaseStatus {
    /// Expected to pass and passed.
    Passed,
    /// Expected to fail and failed.
    FailedAsExpected,
    /// Expected to pass and failed (or timed out, or went silent).
    Failed,
    /// Expected to fail but passed.
    UnexpectedPass,
    /// kiln could not boot it (QEMU missing or rejecting its arguments).
    Error,
    /// The run was interrupted before this case finished.
    Interrupted,
}

impl CaseStatus {
    /// Applies the expectation to a verdict.
    pub(crate) fn from_verdict(verdict: &Verdict, expect: Expect) -> Self {
        match (verdict, expect) {
            (Verdict::Passed(_), Expect::Pass) => Self::Passed,
            (Verdict::Passed(_), Expect::Fail) => Self::UnexpectedPass,
            (Verdict::Failed(_), Expect::Fail) => Self::FailedAsExpected,
            _ => Self::Failed,
        }
    }

    /// Whether the case is green.
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Passed | Self::FailedAsExpected)
    }

    /// How the summary table names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::FailedAsExpected => "failed as expected",
            Self::Failed => "FAILED",
            Self::UnexpectedPass => "PASSED UNEXPECTEDLY",
            Self::Error => "ERROR",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The result of one case on one machine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CaseResult {
    /// `case/machine`.
    pub label: String,
    /// The case (with `[TEST]` after it for each test binary of a `kind = "tests"` artifact:
    /// its binary id, such as `tests[tinyos::bin/tinyos]`).
    pub case: String,
    /// The test binary's id (`tinyos`, `tinyos::bin/tinyos`, `tinyos::basic_boot`), for a
    /// `kind = "tests"` artifact.
    pub test: Option<String>,
    /// The line of `[case.NAME]` in Kiln.toml.
    pub line: Option<usize>,
    /// The machine profile's name.
    pub machine: String,
    /// The architecture.
    pub arch: Arch,
    /// The verdict, when the guest ran.
    pub verdict: Option<Verdict>,
    /// The verdict with the expectation applied.
    pub status: CaseStatus,
    /// Wall time of the boot.
    pub boot: Duration,
    /// Whether its artifact was built in this run or came from the store.
    pub built: bool,
    /// Whether it came from a remote store in this run.
    pub substituted: bool,
    /// The serial log.
    pub log: PathBuf,
    /// One line saying why (the panic line, the exit status, the error).
    pub detail: String,
    /// The last serial lines (at most [`CaseResult::TAIL_LINES`]).
    pub tail: Vec<String>,
    /// Why each earlier attempt failed, when the run was retried (`test --retries`); a
    /// result that is green after failed attempts is flaky.
    pub failed_attempts: Vec<String>,
}

impl CaseResult {
    /// How many of the last serial lines a result keeps for reports.
    pub const TAIL_LINES: usize = 20;

    /// Green, but only after failed attempts.
    pub fn is_flaky(&self) -> bool {
        self.status.is_ok() && !self.failed_attempts.is_empty()
    }

    /// Where what it booted came from: `built`, `substituted` (from a remote) or `cached`.
    pub fn provenance(&self) -> &'static str {
        if self.built {
            "built"
        } else if self.substituted {
            "substituted"
        } else {
            "cached"
        }
    }
}

/// How the store served a run's derivations (builds, fetches, kernels, rootfs images).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreUse {
    /// Built (or fetched) in this run.
    pub built: usize,
    /// Found in the store.
    pub cached: usize,
    /// Fetched from remote stores in this run.
    pub substituted: usize,
    /// The remotes they came from.
    pub substituted_from: std::collections::BTreeSet<String>,
}

impl StoreUse {
    /// `store: 14 substituted from s3://b/p, 2 cached, 0 built`, when a remote served something.
    pub(crate) fn remote_line(&self) -> Option<String> {
        (self.substituted > 0).then(|| {
            let from: Vec<&str> = self.substituted_from.iter().map(String::as_str).collect();
            format!(
                "store: {} substituted from {}, {} cached, {} built",
                self.substituted,
                from.join(" and "),
                self.cached,
                self.built
            )
        })
    }
}

/// All results of a run.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunSummary {
    /// Results in plan order.
    pub results: Vec<CaseResult>,
    /// What the store had and what was built.
    pub store: StoreUse,
    /// Wall time of the whole command.
    pub total: Duration,
    /// Where the serial logs are.
    pub log_dir: PathBuf,
}

impl RunSummary {
    /// The result for a case on an architecture.
    pub fn get(&self, case: &str, arch: Arch) -> Option<&CaseResult> {
        self.results.iter().find(|r| r.case == case && r.arch == arch)
    }

    /// Whether every case is green.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|r| r.status.is_ok())
    }

    /// Whether the run was interrupted.
    pub fn interrupted(&self) -> bool {
        self.results.iter().any(|r| r.status == CaseStatus::Interrupted)
    }

    /// Whether some case could not be booted at all.
    pub fn has_errors(&self) -> bool {
        self.results.iter().any(|r| r.status == CaseStatus::Error)
    }
}
