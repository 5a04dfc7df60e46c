//! JUnit XML of a run, for the test reporters CI systems read: one test suite, one test case per
//! case and machine, written by quick-junit.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::outcome::{CaseResult, CaseStatus, RunSummary};

fn testcase(result: &CaseResult) -> TestCase {
    let tail = result.tail.join("\n");
    let status = match result.status {
        CaseStatus::Passed | CaseStatus::FailedAsExpected => TestCaseStatus::success(),
        CaseStatus::Failed | CaseStatus::UnexpectedPass => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(result.detail.as_str()).set_description(tail.as_str());
            status
        }
        CaseStatus::Error | CaseStatus::Interrupted => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(result.detail.as_str());
            status
        }
    };
    let mut case = TestCase::new(format!("{} ({})", result.machine, result.arch), status);
    case.set_classname(result.case.as_str()).set_time(result.boot);
    if result.status.is_ok() {
        case.set_system_out(tail);
    }
    case
}

/// The run as a JUnit XML document.
pub(crate) fn render(summary: &RunSummary) -> anyhow::Result<String> {
    let mut suite = TestSuite::new("kiln");
    suite.set_time(summary.total);
    suite.add_test_cases(summary.results.iter().map(testcase));
    let mut report = Report::new("kiln");
    report.set_time(summary.total).add_test_suite(suite);
    Ok(report.to_string()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kiln_types::Arch;

    use super::*;

    fn result(case: &str, status: CaseStatus, detail: &str) -> CaseResult {
        CaseResult {
            label: format!("{case}/riscv64"),
            case: case.to_owned(),
            test: None,
            line: None,
            machine: "riscv64".to_owned(),
            arch: Arch::Riscv64,
            verdict: None,
            status,
            boot: Duration::from_millis(80),
            built: false,
            substituted: false,
            log: "log".into(),
            detail: detail.to_owned(),
            tail: vec!["a <b> & \"c\"".to_owned(), "\u{1b}[0mdone".to_owned()],
        }
    }

    #[test]
    fn failures_and_errors_are_counted_and_text_is_escaped() {
        let summary = RunSummary {
            results: vec![
                result("smoke", CaseStatus::Passed, "exit status 0"),
                result("panic", CaseStatus::Failed, "panicked at <x>"),
                result("gone", CaseStatus::Error, "QEMU missing"),
            ],
            total: Duration::from_secs(1),
            log_dir: "logs".into(),
            ..RunSummary::default()
        };
        let xml = render(&summary).expect("xml");
        // Escaped text, ANSI escapes stripped, one test case per case and machine.
        insta::assert_snapshot!(xml, @r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites name="kiln" tests="3" skipped="0" failures="1" errors="1" time="1.000">
            <testsuite name="kiln" tests="3" skipped="0" errors="1" failures="1" time="1.000">
                <testcase name="riscv64 (riscv64)" classname="smoke" time="0.080">
                    <system-out>a &lt;b&gt; &amp; &quot;c&quot;
        done</system-out>
                </testcase>
                <testcase name="riscv64 (riscv64)" classname="panic" time="0.080">
                    <failure message="panicked at &lt;x&gt;">a &lt;b&gt; &amp; &quot;c&quot;
        done</failure>
                </testcase>
                <testcase name="riscv64 (riscv64)" classname="gone" time="0.080">
                    <error message="QEMU missing"/>
                </testcase>
            </testsuite>
        </testsuites>
        "#);
    }
}
