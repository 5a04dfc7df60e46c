//! JUnit XML of a run, for the test reporters CI systems read: one test suite, one test case per
//! case and machine, written with quick-xml's writer (it escapes; we only drop the terminal
//! escape sequences and control characters XML 1.0 cannot carry). [`merge`] joins the files of
//! a partitioned run's jobs into the file one unpartitioned run writes.

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
    document(&Counts::of(summary), summary.total, |writer| {
        for result in &summary.results {
            testcase(writer, result)?;
        }
        Ok(())
    })
}

/// The document around the test cases `body` writes.
fn document(
    counts: &Counts,
    time: Duration,
    body: impl FnOnce(&mut XmlWriter) -> std::io::Result<()>,
) -> anyhow::Result<String> {
    let attributes = counts.attributes(time);
    let attributes = || attributes.iter().map(|(key, value)| (*key, value.as_str()));
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 4);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let suites = BytesStart::new("testsuites").with_attributes([("name", "kiln")].into_iter().chain(attributes()));
    writer.write_event(Event::Start(suites))?;
    let suite = BytesStart::new("testsuite").with_attributes([("name", "kiln")].into_iter().chain(attributes()));
    writer.write_event(Event::Start(suite))?;
    body(&mut writer)?;
    writer.write_event(Event::End(BytesEnd::new("testsuite")))?;
    writer.write_event(Event::End(BytesEnd::new("testsuites")))?;
    let mut xml = String::from_utf8(writer.into_inner())?;
    xml.push('\n');
    Ok(xml)
}

/// One `<testcase>` of a JUnit file kiln wrote, kept as written.
#[derive(Debug)]
struct ParsedCase {
    /// Its `classname`: the case (with `[TEST]` for a test binary).
    classname: String,
    /// Its `name`: `MACHINE (ARCH)`.
    name: String,
    /// The element's text, from `<testcase` to `</testcase>`.
    xml: String,
    failed: bool,
    errored: bool,
}

impl ParsedCase {
    /// The case's name without a test binary's `[TEST]`.
    pub(crate) fn case(&self) -> &str {
        self.classname.split_once('[').map_or(&self.classname, |(case, _)| case)
    }

    /// The machine profile's name.
    pub(crate) fn machine(&self) -> &str {
        self.name.rsplit_once(" (").map_or(&self.name, |(machine, _)| machine)
    }
}

/// Why JUnit files could not be merged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MergeError {
    /// A file could not be read.
    #[error("cannot read the JUnit file `{path}`: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not a JUnit file as kiln writes them.
    #[error("`{path}` is not a JUnit file written by kiln's `test`: {problem}")]
    Garbled { path: std::path::PathBuf, problem: String },
    /// Two files hold the same case: two jobs ran it.
    #[error(
        "case `{classname}` on `{name}` is in both `{first}` and `{second}`: two jobs ran it (were they given the \
         same `--partition`, or files of two runs?)"
    )]
    Duplicate { classname: String, name: String, first: std::path::PathBuf, second: std::path::PathBuf },
}

/// The test cases and `time` of one JUnit file kiln wrote.
fn parse_file(path: &std::path::Path) -> Result<(Vec<ParsedCase>, Duration), MergeError> {
    use quick_xml::{Reader, events::attributes::Attribute};

    let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read { path: path.to_owned(), source })?;
    let garbled = |problem: String| MergeError::Garbled { path: path.to_owned(), problem };
    let attribute = |start: &BytesStart<'_>, key: &str| -> Result<Option<String>, MergeError> {
        let found: Option<Attribute<'_>> =
            start.try_get_attribute(key).map_err(|e| garbled(format!("attribute `{key}`: {e}")))?;
        found
            .map(|a| {
                a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                    .map(|v| v.into_owned())
                    .map_err(|e| garbled(format!("attribute `{key}`: {e}")))
            })
            .transpose()
    };
    let mut reader = Reader::from_str(&text);
    let mut path_of_elements: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    let mut time = Duration::ZERO;
    let mut open: Option<(usize, ParsedCase)> = None;
    let mut saw_root = false;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader
            .read_event()
            .map_err(|e| garbled(format!("malformed XML at byte {}: {e}", reader.error_position())))?;
        let after = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                let depth = path_of_elements.len();
                match (depth, name.as_str()) {
                    (0, "testsuites") => {
                        saw_root = true;
                        let seconds = attribute(start, "time")?.unwrap_or_default();
                        time = seconds
                            .parse::<f64>()
                            .ok()
                            .and_then(|s| Duration::try_from_secs_f64(s).ok())
                            .unwrap_or_default();
                    }
                    (0, other) => return Err(garbled(format!("its root element is `<{other}>`, not `<testsuites>`"))),
                    (1, "testsuite") => {}
                    (2, "testcase") => {
                        let (Some(classname), Some(case_name)) =
                            (attribute(start, "classname")?, attribute(start, "name")?)
                        else {
                            return Err(garbled("a `<testcase>` without `name` or `classname`".to_owned()));
                        };
                        let case = ParsedCase {
                            classname,
                            name: case_name,
                            xml: String::new(),
                            failed: false,
                            errored: false,
                        };
                        if matches!(event, Event::Empty(_)) {
                            cases.push(ParsedCase { xml: text[before..after].to_owned(), ..case });
                        } else {
                            open = Some((before, case));
                        }
                    }
                    (3, "failure") => {
                        if let Some((_, case)) = open.as_mut() {
                            case.failed = true;
                        }
                    }
                    (3, "error") => {
                        if let Some((_, case)) = open.as_mut() {
                            case.errored = true;
                        }
                    }
                    (1 | 2, other) => {
                        return Err(garbled(format!(
                            "an unexpected `<{other}>` inside `<{}>`",
                            path_of_elements.join("><")
                        )));
                    }
                    _ => {}
                }
                if matches!(event, Event::Start(_)) {
                    path_of_elements.push(name);
                }
            }
            Event::End(ref end) => {
                path_of_elements.pop();
                if path_of_elements.len() == 2
                    && end.name().as_ref() == b"testcase"
                    && let Some((start, case)) = open.take()
                {
                    cases.push(ParsedCase { xml: text[start..after].to_owned(), ..case });
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(garbled("it holds no `<testsuites>` element (empty or cut off?)".to_owned()));
    }
    if !path_of_elements.is_empty() {
        return Err(garbled(format!("it ends inside `<{}>` (cut off?)", path_of_elements.join("><"))));
    }
    Ok((cases, time))
}

/// What [`merge`] made.
#[derive(Debug)]
pub(crate) struct Merged {
    /// The merged document.
    pub(crate) xml: String,
    /// Test cases in it.
    pub(crate) tests: usize,
    /// Of them, failed.
    pub(crate) failures: usize,
    /// Of them, errors.
    pub(crate) errors: usize,
}

/// Merges the JUnit files of a partitioned run's jobs into the document one unpartitioned run
/// writes: the same test cases, each as its job wrote it, in the unpartitioned run's order
/// (`order` gives a case's place from its case and machine names; unknown ones go last, by
/// name), with the counts recomputed; `time` is the sum of the jobs' times. Two files holding
/// one case are an error (two jobs ran it).
pub(crate) fn merge(
    files: &[std::path::PathBuf],
    order: impl Fn(&str, &str) -> Option<usize>,
) -> Result<Merged, anyhow::Error> {
    let mut cases: Vec<ParsedCase> = Vec::new();
    let mut time = Duration::ZERO;
    let mut seen: std::collections::HashMap<(String, String), std::path::PathBuf> = Default::default();
    for file in files {
        let (parsed, file_time) = parse_file(file)?;
        time += file_time;
        for case in parsed {
            let key = (case.classname.clone(), case.name.clone());
            if let Some(first) = seen.get(&key) {
                return Err(MergeError::Duplicate {
                    classname: key.0,
                    name: key.1,
                    first: first.clone(),
                    second: file.clone(),
                }
                .into());
            }
            seen.insert(key, file.clone());
            cases.push(case);
        }
    }
    // Stable: the test binaries of one case and machine keep the order their job gave them.
    cases.sort_by_cached_key(|case| {
        let place = order(case.case(), case.machine());
        (place.is_none(), place, if place.is_none() { case.classname.clone() } else { String::new() })
    });
    let counts = Counts {
        tests: cases.len(),
        failures: cases.iter().filter(|c| c.failed).count(),
        errors: cases.iter().filter(|c| c.errored).count(),
    };
    let xml = document(&counts, time, |writer| {
        for case in &cases {
            // Each case as its job wrote it, at the depth the writer puts test cases.
            writer.get_mut().extend_from_slice(b"\n        ");
            writer.get_mut().extend_from_slice(case.xml.as_bytes());
        }
        Ok(())
    })?;
    Ok(Merged { xml, tests: counts.tests, failures: counts.failures, errors: counts.errors })
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

    /// The document without its `time` attributes (they differ between runs).
    fn without_times(xml: &str) -> String {
        regex::Regex::new(r#" time="[0-9.]+""#).expect("regex").replace_all(xml, "").into_owned()
    }

    fn on(case: &str, machine: &str, arch: Arch, status: CaseStatus, millis: u64) -> CaseResult {
        CaseResult {
            label: format!("{case}/{machine}"),
            machine: machine.to_owned(),
            arch,
            boot: Duration::from_millis(millis),
            failed_attempts: if case == "flaky" { vec!["QEMU died".to_owned()] } else { Vec::new() },
            ..result(case, status, "detail & <more>")
        }
    }

    #[test]
    fn merged_partitions_equal_the_unpartitioned_run_and_bad_inputs_are_named() {
        // An unpartitioned run's order: cases by name, each on its machines as declared
        // (`aarch64` before `x86_64` is not alphabetical by chance here: it is declared so).
        let all = vec![
            on("flaky", "x86_64", Arch::X86_64, CaseStatus::Passed, 10),
            on("panic", "x86_64", Arch::X86_64, CaseStatus::FailedAsExpected, 20),
            on("panic", "aarch64", Arch::Aarch64, CaseStatus::Failed, 30),
            on("smoke", "riscv64", Arch::Riscv64, CaseStatus::Error, 40),
            on("smoke", "x86_64", Arch::X86_64, CaseStatus::Passed, 50),
        ];
        let full = RunSummary { results: all.clone(), total: Duration::from_secs(9), ..RunSummary::default() };
        let shards = [vec![all[4].clone(), all[1].clone()], vec![all[2].clone()], vec![all[0].clone(), all[3].clone()]];
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<_> = shards
            .into_iter()
            .enumerate()
            .map(|(n, results)| {
                let path = dir.path().join(format!("junit-{n}.xml"));
                let summary = RunSummary { results, total: Duration::from_secs(3), ..RunSummary::default() };
                std::fs::write(&path, render(&summary).expect("render")).expect("write");
                path
            })
            .collect();
        let order = |case: &str, machine: &str| {
            ["flaky/x86_64", "panic/x86_64", "panic/aarch64", "smoke/riscv64", "smoke/x86_64"]
                .iter()
                .position(|label| *label == format!("{case}/{machine}"))
        };
        let merged = merge(&files, order).expect("merge");
        assert_eq!(without_times(&merged.xml), without_times(&render(&full).expect("render")));
        assert_eq!((merged.tests, merged.failures, merged.errors), (5, 1, 1));
        assert!(
            merged
                .xml
                .contains(r#"<testsuites name="kiln" tests="5" skipped="0" failures="1" errors="1" time="9.000">"#)
        );

        // Without a known order: by name, the cases of one job kept in its order.
        let unordered = merge(&files, |_, _| None).expect("merge");
        let names: Vec<_> = regex::Regex::new(r#"name="([^"]+)" classname="([^"]+)""#)
            .expect("regex")
            .captures_iter(&unordered.xml)
            .map(|c| format!("{}/{}", &c[2], &c[1]))
            .collect();
        assert_eq!(
            names,
            [
                "flaky/x86_64 (x86_64)",
                "panic/x86_64 (x86_64)",
                "panic/aarch64 (aarch64)",
                "smoke/x86_64 (x86_64)",
                "smoke/riscv64 (riscv64)"
            ]
        );

        let error = |files: &[std::path::PathBuf]| format!("{:#}", merge(files, order).expect_err("an error"));
        let twice = error(&[files[0].clone(), files[1].clone(), files[0].clone()]);
        assert!(
            twice.contains("case `smoke` on `x86_64 (x86_64)` is in both") && twice.contains("two jobs ran it"),
            "{twice}"
        );
        let missing = dir.path().join("junit-9.xml");
        assert!(
            error(std::slice::from_ref(&missing))
                .starts_with(&format!("cannot read the JUnit file `{}`", missing.display()))
        );
        let cut = dir.path().join("cut.xml");
        let text = std::fs::read_to_string(&files[0]).expect("read");
        std::fs::write(&cut, &text[..text.len() / 2]).expect("write");
        let garbled = error(std::slice::from_ref(&cut));
        assert!(
            garbled.starts_with(&format!("`{}` is not a JUnit file written by kiln's `test`", cut.display())),
            "{garbled}"
        );
        std::fs::write(&cut, "<html><body/></html>").expect("write");
        assert!(error(std::slice::from_ref(&cut)).contains("its root element is `<html>`, not `<testsuites>`"));
        std::fs::write(&cut, "").expect("write");
        assert!(error(&[cut]).contains("it holds no `<testsuites>` element"));
    }
}
