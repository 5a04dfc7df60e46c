//! JUnit XML of a run, for the test reporters CI systems read.

use std::fmt::Write as _;

use super::{CaseResult, CaseStatus, RunSummary};

/// Escapes text for an XML attribute or element.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

fn testcase(out: &mut String, result: &CaseResult) {
    let _ = write!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
        xml(&result.case),
        xml(&format!("{} ({})", result.machine, result.arch)),
        result.boot.as_secs_f64()
    );
    let tail = xml(&result.tail.join("\n"));
    match result.status {
        CaseStatus::Passed | CaseStatus::FailedAsExpected => {
            let _ = writeln!(out, ">\n      <system-out>{tail}</system-out>\n    </testcase>");
        }
        CaseStatus::Failed | CaseStatus::UnexpectedPass => {
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}\">{tail}</failure>\n    </testcase>",
                xml(&result.detail)
            );
        }
        CaseStatus::Error | CaseStatus::Interrupted => {
            let _ = writeln!(out, ">\n      <error message=\"{}\"/>\n    </testcase>", xml(&result.detail));
        }
    }
}

/// The run as a JUnit XML document: one test suite, one test case per case and machine.
pub fn render(summary: &RunSummary) -> String {
    let tests = summary.results.len();
    let failures =
        summary.results.iter().filter(|r| matches!(r.status, CaseStatus::Failed | CaseStatus::UnexpectedPass)).count();
    let errors =
        summary.results.iter().filter(|r| matches!(r.status, CaseStatus::Error | CaseStatus::Interrupted)).count();
    let time = summary.total.as_secs_f64();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"kiln\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">"
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"kiln\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">"
    );
    for result in &summary.results {
        testcase(&mut out, result);
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
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
            machine: "riscv64".to_owned(),
            arch: Arch::Riscv64,
            verdict: None,
            status,
            boot: Duration::from_millis(80),
            built: false,
            substituted: false,
            log: "log".into(),
            detail: detail.to_owned(),
            tail: vec!["a <b> & \"c\"".to_owned(), "\u{1b}[0m".to_owned()],
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
        let xml = render(&summary);
        assert!(xml.contains("<testsuites name=\"kiln\" tests=\"3\" failures=\"1\" errors=\"1\""), "{xml}");
        assert!(xml.contains("<failure message=\"panicked at &lt;x&gt;\">a &lt;b&gt; &amp; &quot;c&quot;"), "{xml}");
        assert!(xml.contains("\\u{1b}[0m"), "control characters are spelled out: {xml}");
        assert!(xml.contains("<error message=\"QEMU missing\"/>"), "{xml}");
    }
}
