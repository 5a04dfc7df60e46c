//! JUnit XML of a run, for the test reporters CI systems read: one test suite, one test case per
//! case and machine, written with quick-xml's writer (it escapes; we only drop the terminal
//! escape sequences and control characters XML 1.0 cannot carry).

use std::time::Duration;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use crate::outcome::{CaseResult, CaseStatus, RunSummary};

/// Guest output without ANSI escape sequences (`ESC [ ... final`) or other control characters
/// but tab and newline: what a JUnit viewer can show and XML 1.0 can hold.
fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameter and intermediate bytes, then one final byte in '@'..='~'.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn seconds(time: Duration) -> String {
    format!("{:.3}", time.as_secs_f64())
}

/// Counts of one run, as JUnit's `tests`, `failures` and `errors` attributes.
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
}

impl Counts {
    fn of(summary: &RunSummary) -> Self {
        let failures = summary
            .results
            .iter()
            .filter(|r| matches!(r.status, CaseStatus::Failed | CaseStatus::UnexpectedPass))
            .count();
        let errors =
            summary.results.iter().filter(|r| matches!(r.status, CaseStatus::Error | CaseStatus::Interrupted)).count();
        Counts { tests: summary.results.len(), failures, errors }
    }

    fn attributes(&self, time: Duration) -> [(&'static str, String); 5] {
        [
            ("tests", self.tests.to_string()),
            ("skipped", "0".to_owned()),
            ("failures", self.failures.to_string()),
            ("errors", self.errors.to_string()),
            ("time", seconds(time)),
        ]
    }
}

type XmlWriter = Writer<Vec<u8>>;

fn element_with_text(writer: &mut XmlWriter, start: BytesStart<'_>, text: &str) -> std::io::Result<()> {
    let name = start.name().as_ref().to_vec();
    if text.is_empty() {
        return writer.write_event(Event::Empty(start));
    }
    writer.write_event(Event::Start(start))?;
    writer.write_event(Event::Text(BytesText::new(&xml_text(text))))?;
    writer.write_event(Event::End(BytesEnd::new(String::from_utf8_lossy(&name))))
}

fn testcase(writer: &mut XmlWriter, result: &CaseResult) -> std::io::Result<()> {
    let tail = result.tail.join("\n");
    let name = format!("{} ({})", result.machine, result.arch);
    let time = seconds(result.boot);
    let case = BytesStart::new("testcase").with_attributes([
        ("name", xml_text(&name).as_str()),
        ("classname", xml_text(&result.case).as_str()),
        ("time", time.as_str()),
    ]);
    writer.write_event(Event::Start(case))?;
    let detail = xml_text(&result.detail);
    match result.status {
        CaseStatus::Passed | CaseStatus::FailedAsExpected => {
            // A green run after failed attempts: each attempt as Maven Surefire's (and
            // cargo-nextest's) `flakyFailure`.
            for failed in &result.failed_attempts {
                let flaky = BytesStart::new("flakyFailure").with_attributes([("message", xml_text(failed).as_str())]);
                writer.write_event(Event::Empty(flaky))?;
            }
            element_with_text(writer, BytesStart::new("system-out"), &tail)?;
        }
        CaseStatus::Failed | CaseStatus::UnexpectedPass => {
            let failure = BytesStart::new("failure").with_attributes([("message", detail.as_str())]);
            element_with_text(writer, failure, &tail)?;
        }
        CaseStatus::Error | CaseStatus::Interrupted => {
            let error = BytesStart::new("error").with_attributes([("message", detail.as_str())]);
            writer.write_event(Event::Empty(error))?;
        }
    }
    writer.write_event(Event::End(BytesEnd::new("testcase")))
}

/// The run as a JUnit XML document.
pub(crate) fn render(summary: &RunSummary) -> anyhow::Result<String> {
    let counts = Counts::of(summary);
    let attributes = counts.attributes(summary.total);
    let attributes = || attributes.iter().map(|(key, value)| (*key, value.as_str()));
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 4);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let suites = BytesStart::new("testsuites").with_attributes([("name", "kiln")].into_iter().chain(attributes()));
    writer.write_event(Event::Start(suites))?;
    let suite = BytesStart::new("testsuite").with_attributes([("name", "kiln")].into_iter().chain(attributes()));
    writer.write_event(Event::Start(suite))?;
    for result in &summary.results {
        testcase(&mut writer, result)?;
    }
    writer.write_event(Event::End(BytesEnd::new("testsuite")))?;
    writer.write_event(Event::End(BytesEnd::new("testsuites")))?;
    let mut xml = String::from_utf8(writer.into_inner())?;
    xml.push('\n');
    Ok(xml)
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
            failed_attempts: Vec::new(),
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
            <testsuite name="kiln" tests="3" skipped="0" failures="1" errors="1" time="1.000">
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
