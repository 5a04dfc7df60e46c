//! Turning what a boot produced into a verdict.

use std::time::Duration;

use regex::Regex;

use crate::{
    FinisherCommand,
    boot::{BootOutcome, Exit},
};

/// How a case decides pass or fail.
#[derive(Clone, Debug)]
pub struct Judge {
    /// A serial line matching this fails the case at once (checked before `success`).
    pub failure: Option<Regex>,
    /// The guest must print a line matching this to pass.
    pub success: Option<Regex>,
    /// Exit statuses that mean the guest passed: QEMU's (from the exit device), or the
    /// guest command's when `guest_reports_status` is set.
    pub success_statuses: Vec<i32>,
    /// The guest reports its command's exit status on the serial line (a Linux guest under
    /// kiln's init); QEMU ending without that report is a failure.
    pub guest_reports_status: bool,
}

/// Why a case passed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassReason {
    /// QEMU exited with a success status (and the success marker, if any, was seen).
    ExitStatus(i32),
    /// The success marker appeared and kiln stopped the guest, as the case asked.
    SuccessMarker,
}

/// Why a case failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// A serial line matched the failure pattern.
    FailureMarker {
        /// The line, joined with the next one when it ends with `:` (Rust's `panicked at
        /// FILE:LINE:COL:` followed by the message).
        line: String,
    },
    /// QEMU exited with a status that is not a success status.
    ExitStatus {
        /// QEMU's status.
        status: i32,
        /// The last line the guest printed, for context.
        last_line: Option<String>,
        /// The first line that read like a panic, with its message: quoted instead of the
        /// last line.
        panic_line: Option<String>,
    },
    /// The guest told the sifive_test finisher it failed with code 0 (what OpenSBI up to
    /// 1.2 writes for an SBI `system_reset(SHUTDOWN, SYSTEM_FAILURE)`), which QEMU reports
    /// as exit status 0, the same as a pass.
    FinisherFailure {
        /// QEMU's status.
        status: i32,
        /// The last line the guest printed, for context.
        last_line: Option<String>,
        /// The first line that read like a panic, with its message.
        panic_line: Option<String>,
    },
    /// QEMU exited with a success status, but the success marker never appeared.
    MissingSuccessMarker {
        /// QEMU's status.
        status: i32,
        /// The pattern that was expected.
        pattern: String,
    },
    /// QEMU was killed by a signal kiln did not send.
    Signal(i32),
    /// QEMU ended before the guest reported its command's exit status.
    NoStatusReport {
        /// QEMU's status.
        qemu_status: i32,
        /// The last line the guest printed, for context.
        last_line: Option<String>,
        /// The first line that read like a panic, with its message.
        panic_line: Option<String>,
    },
}

/// The judgement of one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The guest passed.
    Passed(PassReason),
    /// The guest failed.
    Failed(FailReason),
    /// The hard timeout expired; the guest was killed.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The guest printed nothing for too long; it was killed.
    Silent {
        /// The watchdog period.
        after: Duration,
    },
}

impl Verdict {
    /// Whether this verdict is a pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Self::Passed(_))
    }

    /// One line describing the verdict, for summaries.
    pub fn describe(&self) -> String {
        match self {
            Self::Passed(PassReason::ExitStatus(status)) => format!("exit status {status}"),
            Self::Passed(PassReason::SuccessMarker) => "success marker seen".to_owned(),
            Self::Failed(FailReason::FailureMarker { line }) => line.clone(),
            Self::Failed(FailReason::ExitStatus { status, last_line, panic_line }) => {
                match panic_line.as_ref().or(last_line.as_ref()) {
                    Some(line) => format!("exit status {status} after {}", quoted(line)),
                    None => format!("exit status {status}, no output"),
                }
            }
            Self::Failed(FailReason::FinisherFailure { status, last_line, panic_line }) => {
                let failed = format!(
                    "the guest reported failure to the sifive_test finisher (FINISHER_FAIL, code 0: an SBI \
                     system-failure shutdown), which QEMU reports as exit status {status}"
                );
                match panic_line.as_ref().or(last_line.as_ref()) {
                    Some(line) => format!("{failed}, after {}", quoted(line)),
                    None => format!("{failed}, without any output"),
                }
            }
            Self::Failed(FailReason::MissingSuccessMarker { status, pattern }) => {
                // The pattern is the project's own (Kiln.toml), quoted as written.
                format!("exit status {status} but {} never appeared", code_span(pattern))
            }
            Self::Failed(FailReason::Signal(signal)) => format!("QEMU killed by signal {signal}"),
            Self::Failed(FailReason::NoStatusReport { qemu_status, last_line, panic_line }) => {
                match panic_line.as_ref().or(last_line.as_ref()) {
                    Some(line) => format!(
                        "the guest stopped (QEMU status {qemu_status}) without reporting the command's exit status, after {}",
                        quoted(line)
                    ),
                    None => format!("the guest stopped (QEMU status {qemu_status}) without any output"),
                }
            }
            Self::TimedOut { after } => format!("timed out after {}s", after.as_secs_f64()),
            Self::Silent { after } => format!("no output for {}s", after.as_secs_f64()),
        }
    }
}

/// Guest text quoted in a verdict: control characters escaped, a long line cut, and in a
/// code span that its own backticks cannot end (Markdown's double backticks when it has any).
fn quoted(text: &str) -> String {
    let shown = kiln_types::escape_untrusted(text);
    code_span(&kiln_types::cut(&shown, 300))
}

/// `text` in a code span that its own backticks cannot end.
fn code_span(text: &str) -> String {
    if text.contains('`') { format!("`` {text} ``") } else { format!("`{text}`") }
}

impl Judge {
    /// Whether `line` is a failure marker; checked by the boot loop on every line.
    pub fn is_failure_line(&self, line: &str) -> bool {
        self.failure.as_ref().is_some_and(|re| re.is_match(line))
    }

    /// Whether `line` is a success marker.
    pub fn is_success_line(&self, line: &str) -> bool {
        self.success.as_ref().is_some_and(|re| re.is_match(line))
    }

    /// Judges a finished boot.
    pub fn judge(&self, outcome: &BootOutcome) -> Verdict {
        if let Some(line) = &outcome.failure_line {
            return Verdict::Failed(FailReason::FailureMarker { line: line.clone() });
        }
        match outcome.exit {
            Exit::TimedOut(after) => Verdict::TimedOut { after },
            Exit::Silent(after) => Verdict::Silent { after },
            Exit::Signal(signal) => Verdict::Failed(FailReason::Signal(signal)),
            Exit::StoppedOnSuccess => Verdict::Passed(PassReason::SuccessMarker),
            Exit::Status(qemu_status) if self.guest_reports_status => Verdict::Failed(FailReason::NoStatusReport {
                qemu_status,
                last_line: outcome.last_line(),
                panic_line: outcome.panic_line.clone(),
            }),
            // QEMU cannot tell this failure from a pass by its status: both are 0.
            Exit::Status(status @ 0) if outcome.finisher == Some(FinisherCommand::Fail { code: 0 }) => {
                Verdict::Failed(FailReason::FinisherFailure {
                    status,
                    last_line: outcome.last_line(),
                    panic_line: outcome.panic_line.clone(),
                })
            }
            Exit::Status(status) | Exit::GuestExited(status) => {
                if !self.success_statuses.contains(&status) {
                    return Verdict::Failed(FailReason::ExitStatus {
                        status,
                        last_line: outcome.last_line(),
                        panic_line: outcome.panic_line.clone(),
                    });
                }
                match &self.success {
                    Some(pattern) if !outcome.success_seen => Verdict::Failed(FailReason::MissingSuccessMarker {
                        status,
                        pattern: pattern.as_str().to_owned(),
                    }),
                    _ => Verdict::Passed(PassReason::ExitStatus(status)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_status_is_judged_and_a_missing_report_fails() {
        let judge = Judge { failure: None, success: None, success_statuses: vec![0], guest_reports_status: true };
        let three = judge.judge(&outcome(Exit::GuestExited(3), &["hello"], &judge));
        assert_eq!(three.describe(), "exit status 3 after `hello`");
        assert!(judge.judge(&outcome(Exit::GuestExited(0), &[], &judge)).is_pass());
        let silent = judge.judge(&outcome(Exit::Status(0), &["init: oops"], &judge));
        assert!(matches!(silent, Verdict::Failed(FailReason::NoStatusReport { qemu_status: 0, .. })), "{silent:?}");
    }

    fn outcome(exit: Exit, lines: &[&str], judge: &Judge) -> BootOutcome {
        let mut outcome = BootOutcome::new(exit);
        for line in lines {
            outcome.observe(line, judge);
        }
        outcome
    }

    fn judge() -> Judge {
        Judge {
            failure: Some(Regex::new("panicked at").expect("regex")),
            success: Some(Regex::new("^all checks passed$").expect("regex")),
            success_statuses: vec![0],
            guest_reports_status: false,
        }
    }

    #[test]
    fn exit_zero_without_success_marker_fails() {
        let judge = judge();
        let verdict = judge.judge(&outcome(Exit::Status(0), &["booting"], &judge));
        assert!(matches!(verdict, Verdict::Failed(FailReason::MissingSuccessMarker { status: 0, .. })));
    }

    #[test]
    fn failure_marker_wins_over_success() {
        let judge = judge();
        let verdict =
            judge.judge(&outcome(Exit::Status(0), &["all checks passed", "panicked at src/main.rs:3:5: boom"], &judge));
        assert_eq!(
            verdict,
            Verdict::Failed(FailReason::FailureMarker { line: "panicked at src/main.rs:3:5: boom".into() })
        );
    }

    #[test]
    fn anchored_success_marker_needs_the_whole_line() {
        let judge = judge();
        let fails = judge.judge(&outcome(Exit::Status(0), &["not all checks passed"], &judge));
        assert!(!fails.is_pass());
        let passes = judge.judge(&outcome(Exit::Status(0), &["all checks passed"], &judge));
        assert_eq!(passes, Verdict::Passed(PassReason::ExitStatus(0)));
    }

    fn plain(success_statuses: Vec<i32>) -> Judge {
        Judge { failure: None, success: None, success_statuses, guest_reports_status: false }
    }

    #[test]
    fn the_detail_quotes_the_panic_line_and_its_message_not_the_last_line() {
        let judge = plain(vec![0]);
        let lines = [
            "booting",
            "panicked at src/main.rs:12:5:",
            "index out of bounds: the len is 3 but the index is 7",
            "sepc=0x80200abc scause=0x2",
            "shutting down",
        ];
        let verdict = judge.judge(&outcome(Exit::Status(1), &lines, &judge));
        assert_eq!(
            verdict.describe(),
            "exit status 1 after `panicked at src/main.rs:12:5: index out of bounds: the len is 3 but the index is 7`"
        );
        let Verdict::Failed(FailReason::ExitStatus { last_line, .. }) = verdict else { panic!("{verdict:?}") };
        assert_eq!(last_line.as_deref(), Some("shutting down"), "the last line is still there");
    }

    #[test]
    fn recognised_panic_lines_and_only_the_first_one_is_quoted() {
        for (line, quoted) in [
            ("PANIC: kernel.c:42: out of memory", "PANIC: kernel.c:42: out of memory"),
            (
                "[kernel] Panicked at src/main.rs:40 Shutdown machine!",
                "[kernel] Panicked at src/main.rs:40 Shutdown machine!",
            ),
            ("[    0.52] Kernel panic - not syncing: VFS", "[    0.52] Kernel panic - not syncing: VFS"),
        ] {
            let judge = plain(vec![33]);
            let verdict = judge.judge(&outcome(Exit::Status(35), &["ok", line, "panicked at again", "halt"], &judge));
            assert_eq!(verdict.describe(), format!("exit status 35 after `{quoted}`"));
        }
        let ticks = Verdict::Failed(FailReason::ExitStatus {
            status: 1,
            last_line: Some("error: `foo` failed\x1b[0m".to_owned()),
            panic_line: None,
        });
        assert_eq!(ticks.describe(), "exit status 1 after `` error: `foo` failed\\x1b[0m ``");
        let pattern =
            Verdict::Failed(FailReason::MissingSuccessMarker { status: 0, pattern: r"^\[kernel\] Hi$".into() });
        assert_eq!(
            pattern.describe(),
            r"exit status 0 but `^\[kernel\] Hi$` never appeared",
            "as written in Kiln.toml"
        );
        let judge = plain(vec![33]);
        let calm = judge.judge(&outcome(Exit::Status(35), &["no panic here", "last words"], &judge));
        assert_eq!(calm.describe(), "exit status 35 after `last words`");
    }

    #[test]
    fn a_failure_marker_ending_with_a_colon_takes_its_message_line() {
        let judge = Judge { failure: Some(Regex::new("TEST FAILED").expect("regex")), ..plain(vec![0]) };
        let verdict = judge.judge(&outcome(Exit::Status(0), &["TEST FAILED:", "  the sum is 54", "more"], &judge));
        assert_eq!(verdict, Verdict::Failed(FailReason::FailureMarker { line: "TEST FAILED: the sum is 54".into() }));
    }

    #[test]
    fn a_finisher_failure_with_code_zero_fails_although_qemu_says_zero() {
        let judge = plain(vec![0]);
        let lines = ["PANIC: panicked at src/main.rs:7:5:", "page allocator ran dry", "shutting down"];
        let mut failed = outcome(Exit::Status(0), &lines, &judge);
        failed.finisher = Some(FinisherCommand::Fail { code: 0 });
        let verdict = judge.judge(&failed);
        assert!(matches!(verdict, Verdict::Failed(FailReason::FinisherFailure { status: 0, .. })), "{verdict:?}");
        assert!(verdict.describe().ends_with("after `PANIC: panicked at src/main.rs:7:5: page allocator ran dry`"));

        let mut passed = outcome(Exit::Status(0), &["all good"], &judge);
        passed.finisher = Some(FinisherCommand::Pass);
        assert_eq!(judge.judge(&passed), Verdict::Passed(PassReason::ExitStatus(0)));
        // A code QEMU does pass on is judged by the status as before.
        let mut coded = outcome(Exit::Status(3), &["bad"], &judge);
        coded.finisher = Some(FinisherCommand::Fail { code: 3 });
        assert!(matches!(judge.judge(&coded), Verdict::Failed(FailReason::ExitStatus { status: 3, .. })));
        // Without a trace (another exit device, or QEMU without the log trace backend) status 0 passes.
        assert!(judge.judge(&outcome(Exit::Status(0), &["fine"], &judge)).is_pass());
    }

    #[test]
    fn other_status_fails_with_the_last_line() {
        let judge = Judge { failure: None, success: None, success_statuses: vec![33], guest_reports_status: false };
        let verdict = judge.judge(&outcome(Exit::Status(3), &["a", "b"], &judge));
        assert_eq!(
            verdict,
            Verdict::Failed(FailReason::ExitStatus { status: 3, last_line: Some("b".into()), panic_line: None })
        );
    }
}
