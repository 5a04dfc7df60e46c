//! `--message-format json`: kiln's events as JSON lines on stdout, one object per line, each
//! with `format-version` and `type`. `docs/events.md` describes every kind and field; a test
//! below keeps the two in step.

use std::{collections::HashMap, io::Write, path::Path, sync::Mutex, time::Instant};

use kiln_store::{BuildOutcome, ClosureHash};
use kiln_types::Arch;
use serde::Serialize;

use super::tally::{Summary, result_name, seconds};
use crate::{
    events::{EntryKind, Event},
    outcome::CaseStatus,
};

/// The version every line carries. Within a version fields and event kinds are only added;
/// removing or renaming one, or changing what a value means, makes the next version.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// One line of the stream: the version, then the event.
#[derive(Debug, Serialize)]
struct Line<'a> {
    #[serde(rename = "format-version")]
    format_version: u32,
    #[serde(flatten)]
    record: Record<'a>,
}

/// The events of the stream, tagged by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "kebab-case")]
enum Record<'a> {
    /// The first line: which command runs.
    RunStarted { command: &'a str, kiln_version: &'a str },
    /// The store lacks an entry; its build (or download) starts.
    BuildStarted { name: &'a str, what: &'a str, kind: &'static str, closure: String },
    /// An entry is ready (built, fetched, found, substituted) or its build failed.
    BuildFinished {
        name: &'a str,
        what: &'a str,
        kind: &'static str,
        closure: String,
        outcome: &'static str,
        seconds: Option<f64>,
        from: Option<&'a str>,
        reason: Option<&'a str>,
    },
    /// The accelerator for an architecture was chosen.
    AccelChosen { arch: Arch, accel: &'static str, reason: &'a str },
    /// A boot started (one per attempt).
    BootStarted { case: &'a str, machine: &'a str, arch: Arch, accel: &'static str, command: &'a str },
    /// The guest printed a line.
    SerialLine { case: &'a str, machine: &'a str, arch: Arch, text: &'a str, bytes: Option<&'a [u8]> },
    /// A case on a machine was judged (once, after its last attempt).
    Verdict {
        case: &'a str,
        test: Option<&'a str>,
        machine: &'a str,
        arch: Arch,
        result: &'static str,
        status: &'static str,
        guest_verdict: Option<&'static str>,
        attempts: usize,
        failed_attempts: &'a [String],
        seconds: f64,
        reason: &'a str,
        log: &'a Path,
    },
    /// `build`: a bootable image in the store (what `build` prints on stdout in human mode).
    Artifact { name: &'a str, arch: Arch, closure: String, path: &'a Path },
    /// A warning kiln also shows people.
    Warning { message: &'a str },
    /// The last line: counts and the exit code.
    Summary(&'a Summary),
}

#[cfg(test)]
impl Record<'_> {
    /// Every `type`, in the order of [`Record`]: the reference test wants a sample of each.
    const KINDS: [&'static str; 10] = [
        "run-started",
        "build-started",
        "build-finished",
        "accel-chosen",
        "boot-started",
        "serial-line",
        "verdict",
        "artifact",
        "warning",
        "summary",
    ];

    /// Its `type`. A new kind does not compile until it is named here; add it to
    /// [`Record::KINDS`] too, and the reference test asks for its sample and its section.
    fn kind(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run-started",
            Self::BuildStarted { .. } => "build-started",
            Self::BuildFinished { .. } => "build-finished",
            Self::AccelChosen { .. } => "accel-chosen",
            Self::BootStarted { .. } => "boot-started",
            Self::SerialLine { .. } => "serial-line",
            Self::Verdict { .. } => "verdict",
            Self::Artifact { .. } => "artifact",
            Self::Warning { .. } => "warning",
            Self::Summary(_) => "summary",
        }
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Build => "build",
        EntryKind::Fetch => "fetch",
        EntryKind::Snapshot => "snapshot",
    }
}

fn status_name(status: CaseStatus) -> &'static str {
    match status {
        CaseStatus::Passed => "passed",
        CaseStatus::FailedAsExpected => "failed-as-expected",
        CaseStatus::Failed => "failed",
        CaseStatus::UnexpectedPass => "passed-unexpectedly",
        CaseStatus::Error => "error",
        CaseStatus::Interrupted => "interrupted",
    }
}

fn guest_verdict_name(verdict: &kiln_qemu::Verdict) -> &'static str {
    match verdict {
        kiln_qemu::Verdict::Passed(_) => "passed",
        kiln_qemu::Verdict::Failed(_) => "failed",
        kiln_qemu::Verdict::TimedOut { .. } => "timed-out",
        kiln_qemu::Verdict::Silent { .. } => "silent",
        // A verdict kiln-qemu may add later: red, as every verdict but a pass.
        _ => "failed",
    }
}

/// Writes the stream: one JSON object per line, each line written whole and flushed.
pub(crate) struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
    /// When each running build started, for a failed build's seconds.
    build_starts: Mutex<HashMap<ClosureHash, Instant>>,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines").finish_non_exhaustive()
    }
}

impl JsonLines {
    /// A stream to `out`.
    pub(crate) fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(out), build_starts: Mutex::new(HashMap::new()) }
    }

    /// A stream to kiln's stdout.
    pub(crate) fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    fn write(&self, record: Record<'_>) {
        #[cfg(test)]
        assert!(Record::KINDS.contains(&record.kind()), "{} is missing from Record::KINDS", record.kind());
        let line = Line { format_version: FORMAT_VERSION, record };
        // Serialising these types cannot fail (string keys, finite numbers); a closed stdout
        // is not worth more than the human output on stderr says.
        let Ok(mut text) = serde_json::to_vec(&line) else { return };
        text.push(b'\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&text).and_then(|()| out.flush());
        }
    }

    /// The first line.
    pub(crate) fn run_started(&self, command: &str) {
        self.write(Record::RunStarted { command, kiln_version: env!("CARGO_PKG_VERSION") });
    }

    /// A bootable image `build` made or found.
    pub(crate) fn artifact(&self, name: &str, arch: Arch, closure: ClosureHash, path: &Path) {
        self.write(Record::Artifact { name, arch, closure: closure.to_string(), path });
    }

    /// The last line.
    pub(crate) fn summary(&self, summary: &Summary) {
        self.write(Record::Summary(summary));
    }

    /// The line of an event, when the stream carries its kind (status lines, download
    /// progress and `-v` details are for people only).
    pub(crate) fn event(&self, event: &Event<'_>) {
        match *event {
            Event::BuildStarted { name, what, closure, kind, .. } => {
                if let Ok(mut starts) = self.build_starts.lock() {
                    starts.insert(closure, Instant::now());
                }
                self.write(Record::BuildStarted { name, what, kind: kind_name(kind), closure: closure.to_string() });
            }
            Event::BuildFinished { name, what, kind, closure, outcome } => {
                if let Ok(mut starts) = self.build_starts.lock() {
                    starts.remove(&closure);
                }
                let (outcome, seconds, from) = match outcome {
                    BuildOutcome::Cached => ("cached", None, None),
                    BuildOutcome::Substituted { from, duration, .. } => {
                        ("substituted", Some(seconds(*duration)), Some(from.as_str()))
                    }
                    BuildOutcome::Built { duration, .. } => {
                        (if kind == EntryKind::Fetch { "fetched" } else { "built" }, Some(seconds(*duration)), None)
                    }
                    // A way of serving the store may add later: the entry is there, nothing ran.
                    _ => ("cached", None, None),
                };
                self.write(Record::BuildFinished {
                    name,
                    what,
                    kind: kind_name(kind),
                    closure: closure.to_string(),
                    outcome,
                    seconds,
                    from,
                    reason: None,
                });
            }
            Event::BuildFailed { name, what, kind, closure, error } => {
                let started = self.build_starts.lock().ok().and_then(|mut starts| starts.remove(&closure));
                self.write(Record::BuildFinished {
                    name,
                    what,
                    kind: kind_name(kind),
                    closure: closure.to_string(),
                    outcome: "failed",
                    seconds: started.map(|at| seconds(at.elapsed())),
                    from: None,
                    reason: Some(error),
                });
            }
            Event::AccelChosen { arch, choice } => {
                self.write(Record::AccelChosen { arch, accel: choice.accel.as_str(), reason: &choice.reason });
            }
            Event::CaseStarted { boot, accel, command } => self.write(Record::BootStarted {
                case: boot.case,
                machine: boot.machine,
                arch: boot.arch,
                accel: accel.as_str(),
                command,
            }),
            Event::SerialLine { boot, line, raw } => self.write(Record::SerialLine {
                case: boot.case,
                machine: boot.machine,
                arch: boot.arch,
                text: line,
                bytes: raw,
            }),
            Event::CaseFinished(result) => self.write(Record::Verdict {
                case: &result.case,
                test: result.test.as_deref(),
                machine: &result.machine,
                arch: result.arch,
                result: result_name(result),
                status: status_name(result.status),
                guest_verdict: result.verdict.as_ref().map(guest_verdict_name),
                attempts: result.failed_attempts.len() + 1,
                failed_attempts: &result.failed_attempts,
                seconds: seconds(result.boot),
                reason: &result.detail,
                log: &result.log,
            }),
            Event::Warning(message) | Event::Alert(message) => self.write(Record::Warning { message }),
            Event::Status { .. }
            | Event::Detail { .. }
            | Event::BuildWaiting { .. }
            | Event::BuildReason { .. }
            | Event::DownloadStarted { .. }
            | Event::DownloadProgress { .. }
            | Event::DownloadEnded { .. }
            | Event::Retrying { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Arc,
        time::Duration,
    };

    use super::*;
    use crate::{events::BootRef, outcome::CaseResult, report::tally::Tally};

    /// A `Write` whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn closure(byte: u8) -> ClosureHash {
        format!("{byte:02x}").repeat(32).parse().expect("closure hex")
    }

    fn result(failed_attempts: Vec<String>) -> CaseResult {
        CaseResult {
            label: "smoke/riscv64".into(),
            case: "smoke".into(),
            test: None,
            line: Some(3),
            machine: "riscv64".into(),
            arch: Arch::Riscv64,
            verdict: Some(kiln_qemu::Verdict::Passed(kiln_qemu::PassReason::SuccessMarker)),
            status: CaseStatus::Passed,
            boot: Duration::from_millis(1234),
            built: true,
            substituted: false,
            log: "target/kiln/logs/smoke.riscv64.log".into(),
            detail: "success marker seen".into(),
            tail: Vec::new(),
            failed_attempts,
        }
    }

    /// One line of every kind, with every optional field set, as a test run would write them.
    fn every_kind() -> Vec<serde_json::Value> {
        let out = Shared::default();
        let json = JsonLines::new(Box::new(out.clone()));
        json.run_started("test");
        let mut tally = Tally::default();
        let boot = BootRef { label: "smoke/riscv64", case: "smoke", machine: "riscv64", arch: Arch::Riscv64 };
        let choice =
            kiln_qemu::accel::AccelChoice { accel: kiln_qemu::accel::Accel::Tcg, reason: "no /dev/kvm".into() };
        let built = BuildOutcome::Built { duration: Duration::from_millis(2500), replaced: None };
        let substituted =
            BuildOutcome::Substituted { from: "s3://b/p".into(), duration: Duration::from_millis(300), bytes: 10 };
        let flaky = result(vec!["QEMU was killed by signal 9".into()]);
        let events = [
            Event::BuildStarted {
                name: "hello-riscv64",
                what: "hello (riscv64)",
                closure: closure(1),
                kind: EntryKind::Build,
                how: None,
            },
            Event::BuildFinished {
                name: "hello-riscv64",
                what: "hello (riscv64)",
                kind: EntryKind::Build,
                closure: closure(1),
                outcome: &built,
            },
            Event::BuildFinished {
                name: "fetch-busybox",
                what: "busybox",
                kind: EntryKind::Fetch,
                closure: closure(2),
                outcome: &substituted,
            },
            Event::BuildFailed {
                name: "bad-riscv64",
                what: "bad (riscv64)",
                kind: EntryKind::Build,
                closure: closure(3),
                error: "cargo build failed",
            },
            Event::AccelChosen { arch: Arch::Riscv64, choice: &choice },
            Event::CaseStarted { boot, accel: choice.accel, command: "qemu-system-riscv64 -machine virt" },
            Event::SerialLine { boot, line: "caf\u{fffd}", raw: Some(b"caf\xe9") },
            Event::CaseFinished(&flaky),
            Event::Warning("a warning"),
        ];
        for event in &events {
            tally.observe(event);
            json.event(event);
        }
        json.artifact("hello", Arch::Riscv64, closure(1), Path::new("/store/entries/x/out/hello"));
        json.summary(&tally.summary("test", 0, Some("target/kiln/junit.xml".into()), None, Duration::from_secs(3)));
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect()
    }

    /// `type` → its field names (nested objects as `parent.child`).
    fn fields_by_kind(lines: &[serde_json::Value]) -> BTreeMap<String, BTreeSet<String>> {
        fn keys(prefix: &str, value: &serde_json::Value, into: &mut BTreeSet<String>) {
            if let Some(object) = value.as_object() {
                for (key, value) in object {
                    let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    keys(&name, value, into);
                    into.insert(name);
                }
            }
        }
        let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in lines {
            let kind = line["type"].as_str().expect("type").to_owned();
            let fields = kinds.entry(kind).or_default();
            keys("", line, fields);
            // Every line has these two; the document describes them once, above the kinds.
            fields.remove("format-version");
            fields.remove("type");
        }
        kinds
    }

    #[test]
    fn every_line_is_versioned_and_bytes_that_are_not_utf8_survive() {
        let lines = every_kind();
        assert!(lines.iter().all(|line| line["format-version"] == FORMAT_VERSION), "{lines:?}");
        let serial = lines.iter().find(|l| l["type"] == "serial-line").expect("serial line");
        assert_eq!(serial["text"], "caf\u{fffd}");
        assert_eq!(serial["bytes"], serde_json::json!([0x63, 0x61, 0x66, 0xe9]));
        let finished: Vec<&str> = lines
            .iter()
            .filter(|l| l["type"] == "build-finished")
            .map(|l| l["outcome"].as_str().expect("outcome"))
            .collect();
        assert_eq!(finished, ["built", "substituted", "failed"]);
        let verdict = lines.iter().find(|l| l["type"] == "verdict").expect("verdict");
        assert_eq!(verdict["result"], "flaky");
        assert_eq!(verdict["attempts"], 2);
        assert_eq!(verdict["seconds"], 1.234);
        let summary = lines.last().expect("lines");
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["builds"], serde_json::json!({"built": 1, "cached": 0, "substituted": 1, "failed": 1}));
        assert_eq!(summary["cases"], serde_json::json!({"total": 1, "passed": 0, "flaky": 1, "failed": 0}));
    }

    /// Every kind and field in the stream is documented in docs/events.md, and the document
    /// names none that the stream lacks.
    #[test]
    fn the_reference_documents_every_event_and_field() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
        let doc = std::fs::read_to_string(&path).expect("docs/events.md");
        assert!(doc.contains(&format!("\"format-version\":{FORMAT_VERSION}")), "the document shows the version");
        let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in doc.lines() {
            if let Some(heading) = line.strip_prefix("### `") {
                current = heading.split('`').next().map(str::to_owned);
                documented.entry(current.clone().unwrap_or_default()).or_default();
            } else if line.starts_with("## ") {
                current = None;
            } else if let (Some(kind), Some(row)) = (&current, line.strip_prefix("| `")) {
                let field = row.split('`').next().unwrap_or_default().to_owned();
                documented.entry(kind.clone()).or_default().insert(field);
            }
        }
        let actual = fields_by_kind(&every_kind());
        let sampled: Vec<&str> = actual.keys().map(String::as_str).collect();
        let mut kinds = Record::KINDS.to_vec();
        kinds.sort_unstable();
        assert_eq!(sampled, kinds, "every_kind() writes one line of each kind");

        for (kind, fields) in &actual {
            let doc_fields = documented.get(kind).unwrap_or_else(|| panic!("docs/events.md has no `### `{kind}``"));
            let missing: Vec<&String> = fields.difference(doc_fields).collect();
            assert!(missing.is_empty(), "docs/events.md does not describe `{kind}`'s fields {missing:?}");
            let stale: Vec<&String> = doc_fields.difference(fields).collect();
            assert!(stale.is_empty(), "docs/events.md describes fields `{kind}` lacks: {stale:?}");
        }
        let unknown: Vec<&String> = documented.keys().filter(|kind| !actual.contains_key(*kind)).collect();
        assert!(unknown.is_empty(), "docs/events.md describes kinds the stream lacks: {unknown:?}");
    }
}
