//! GitHub Actions output: workflow commands (escaped as `@actions/core` escapes them), a
//! stop-commands guard around guest output, groups, error annotations and the job summary.

use std::{collections::BTreeMap, fmt::Write as _};

use kiln_qemu::accel::{Accel, AccelChoice};
use kiln_types::Arch;

use super::tally::Summary;
use crate::{
    env,
    outcome::{CaseStatus, RunSummary},
};

/// Whether kiln runs inside GitHub Actions.
pub(crate) fn active() -> bool {
    env::in_github_actions()
}

/// Escapes a command's message (`%`, CR, LF).
pub(crate) fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a command's property value (also `:` and `,`).
pub(crate) fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// A guard that stops GitHub from reading workflow commands in the text between its two
/// lines: guest output, archive member names, anything kiln did not write itself. Its token
/// comes from the operating system's randomness, so the guarded text cannot end it.
pub(crate) struct CommandGuard {
    token: String,
}

impl CommandGuard {
    /// A guard with a fresh token.
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self { token: crate::host::random_hex(16)? })
    }

    /// The line that starts the guard.
    pub(crate) fn start(&self) -> String {
        format!("::stop-commands::{}", self.token)
    }

    /// The line that ends it.
    pub(crate) fn end(&self) -> String {
        format!("::{}::", self.token)
    }
}

/// `::error file=...,line=...,title=...::message`.
pub(crate) fn error_annotation(file: &str, line: Option<usize>, title: &str, message: &str) -> String {
    let mut properties = format!("file={}", escape_property(file));
    if let Some(line) = line {
        let _ = write!(properties, ",line={line}");
    }
    let _ = write!(properties, ",title={}", escape_property(title));
    format!("::error {properties}::{}", escape_data(message))
}

/// Markdown for `GITHUB_STEP_SUMMARY`: a row per case and machine, then the store's use (the
/// counts of the summary event, `counts`).
pub(crate) fn job_summary(summary: &RunSummary, counts: &Summary) -> String {
    let mut out = String::from(
        "### kiln\n\n| case | machine | arch | result | boot | build | detail |\n|---|---|---|---|---|---|---|\n",
    );
    for result in &summary.results {
        let mark = match result.status {
            CaseStatus::Passed => "✅ passed",
            CaseStatus::FailedAsExpected => "✅ failed as expected",
            CaseStatus::Failed => "❌ failed",
            CaseStatus::UnexpectedPass => "❌ passed unexpectedly",
            CaseStatus::Error => "⚠️ error",
            CaseStatus::Interrupted => "⚠️ interrupted",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {mark} | {:.2}s | {} | {} |",
            cell(&result.case),
            cell(&result.machine),
            result.arch,
            result.boot.as_secs_f64(),
            result.provenance(),
            cell(&result.detail)
        );
    }
    let built = summary.results.iter().filter(|r| r.built).count();
    let _ = writeln!(
        out,
        "\n{} of {} boots used artifacts from the store; {built} were built in this run. The store served {} of {} \
         derivations (builds, fetches, kernels, images); {} were built.",
        summary.results.len() - built,
        summary.results.len(),
        counts.builds.cached + counts.builds.substituted,
        counts.builds.cached + counts.builds.substituted + counts.builds.built,
        counts.builds.built,
    );
    if let Some(line) = summary.store.remote_line() {
        let _ = writeln!(
            out,
            "\n{}",
            line.trim_start_matches("store: ").replace(" substituted", " derivations were substituted")
        );
    }
    out
}

/// The job summary's line on accelerators, and a `::warning::` for each architecture that runs
/// under TCG on a host of its own architecture (where KVM would make it several times faster):
/// emulation is said as loudly as KVM.
pub(crate) fn accel_report(choices: &BTreeMap<Arch, AccelChoice>, host: Option<Arch>) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let mut parts = Vec::new();
    for (arch, choice) in choices {
        let native = host == Some(*arch);
        let part = match choice.accel {
            Accel::Kvm => format!("{arch}: **KVM** ({})", cell(&choice.reason)),
            Accel::Tcg if native => {
                warnings.push(format!(
                    "::warning title={}::{}",
                    escape_property(&format!("kiln: {arch} guests run under TCG")),
                    escape_data(&format!("emulation, several times slower than KVM: {}", choice.reason))
                ));
                format!("{arch}: ⚠️ **TCG**, emulation, several times slower than KVM ({})", cell(&choice.reason))
            }
            Accel::Tcg => format!("{arch}: TCG ({})", cell(&choice.reason)),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return (String::new(), warnings);
    }
    (format!("\nAccelerator: {}.\n", parts.join("; ")), warnings)
}

/// `name=value` lines for `GITHUB_OUTPUT`, all from the summary event (`--message-format
/// json`'s last line): what the run built and found in the store, the JUnit file, and whether
/// every case passed.
pub(crate) fn step_outputs(summary: &Summary) -> String {
    format!(
        "built={}\ncached={}\njunit={}\npassed={}\n",
        summary.builds.built,
        summary.builds.cached,
        summary.junit.as_ref().map(|path| path.display().to_string()).unwrap_or_default(),
        summary.all_ok()
    )
}

/// A command that failed before it could report (a build error, a Kiln.toml error): an
/// `::error` annotation and a line in the job summary, so the failure shows on the run's page.
pub(crate) fn report_failure(rendered: &str) {
    let first = rendered.lines().next().unwrap_or(rendered).trim_start_matches("error: ");
    // On stderr, which the runner reads for commands too: stdout may be the JSON event stream.
    eprintln!("::error title={}::{}", escape_property("kiln"), escape_data(rendered));
    let text = format!("### kiln\n\n❌ kiln stopped before it could report: {}\n\n```\n{rendered}\n```\n", cell(first));
    let _ = append_summary(&text);
}

/// Appends `name=value` lines to the file `GITHUB_OUTPUT` names, when it is set.
pub(crate) fn append_outputs(lines: &str) -> std::io::Result<()> {
    append_to_runner_file(env::GITHUB_OUTPUT, lines)
}

/// Appends Markdown to the job summary (`GITHUB_STEP_SUMMARY`), when it is set.
pub(crate) fn append_summary(markdown: &str) -> std::io::Result<()> {
    append_to_runner_file(env::GITHUB_STEP_SUMMARY, markdown)
}

/// Appends to the file a runner variable names; nothing when the variable is unset.
fn append_to_runner_file(variable: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let Some(path) = env::var(variable) else { return Ok(()) };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {variable} `{path}`: {e}")))
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ").replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_the_toolkit() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_property("Kiln.toml:3,x"), "Kiln.toml%3A3%2Cx");
        assert_eq!(
            error_annotation("Kiln.toml", Some(12), "smoke/riscv64: failed", "panicked at a:1\nboom"),
            "::error file=Kiln.toml,line=12,title=smoke/riscv64%3A failed::panicked at a:1%0Aboom"
        );
    }

    #[test]
    fn guard_tokens_differ() {
        let (a, b) = (CommandGuard::new().expect("token"), CommandGuard::new().expect("token"));
        assert_ne!(a.start(), b.start());
        assert_eq!(a.start().len(), "::stop-commands::".len() + 32);
        assert_eq!(a.end(), format!("::{}::", a.token));
    }

    #[test]
    fn tcg_on_a_native_host_is_a_warning_and_kvm_is_said() {
        let choice = |accel, reason: &str| AccelChoice { accel, reason: reason.into() };
        let mut choices = BTreeMap::new();
        choices.insert(Arch::X86_64, choice(Accel::Tcg, "the KVM probe guest did not finish within 3s"));
        choices.insert(Arch::Riscv64, choice(Accel::Tcg, "riscv64 guest on x86_64 host needs emulation"));
        let (line, warnings) = accel_report(&choices, Some(Arch::X86_64));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("::warning title=kiln%3A x86_64 guests run under TCG::emulation"),
            "{warnings:?}"
        );
        assert!(line.contains("x86_64: ⚠️ **TCG**"), "{line}");
        assert!(line.contains("riscv64: TCG (riscv64 guest on x86_64 host needs emulation)"), "{line}");
        choices.insert(Arch::X86_64, choice(Accel::Kvm, "KVM probe guest ran in 0.10s (TCG 0.20s)"));
        let (line, warnings) = accel_report(&choices, Some(Arch::X86_64));
        assert!(warnings.is_empty());
        assert!(line.contains("x86_64: **KVM** (KVM probe guest ran in 0.10s (TCG 0.20s))"), "{line}");
        assert_eq!(accel_report(&BTreeMap::new(), None).0, "");
    }

    #[test]
    fn summary_cells_cannot_break_the_table() {
        let mut summary = RunSummary::default();
        summary.results.push(crate::outcome::CaseResult {
            label: "a/b".into(),
            case: "a|b".into(),
            test: None,
            line: None,
            machine: "m".into(),
            arch: kiln_types::Arch::X86_64,
            verdict: None,
            status: CaseStatus::Failed,
            boot: std::time::Duration::ZERO,
            built: true,
            substituted: false,
            log: "l".into(),
            detail: "line1\nline2 `x`".into(),
            tail: Vec::new(),
            failed_attempts: Vec::new(),
        });
        let counts = crate::report::tally::Tally::default().summary("test", 1, None, None, Default::default());
        let md = job_summary(&summary, &counts);
        assert!(md.contains("| a\\|b | m | x86_64 | ❌ failed | 0.00s | built | line1 line2 'x' |"), "{md}");
    }

    #[test]
    fn step_outputs_are_the_summary_events_values() {
        let mut summary =
            crate::report::tally::Tally::default().summary("test", 0, Some("j.xml".into()), None, Default::default());
        summary.builds.built = 2;
        summary.builds.cached = 5;
        summary.builds.substituted = 1;
        assert_eq!(step_outputs(&summary), "built=2\ncached=5\njunit=j.xml\npassed=true\n");
    }
}
