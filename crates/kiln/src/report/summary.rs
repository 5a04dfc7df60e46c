//! The table that ends a `test` run: a row per case and machine, then the counts.

use crate::{
    outcome::{CaseResult, CaseStatus, RunSummary},
    units::seconds,
};

/// The summary table and its closing count line.
pub(crate) fn render(summary: &RunSummary) -> String {
    let headers = ["case", "machine", "arch", "result", "boot", "build", "detail"];
    let rows: Vec<[String; 7]> = summary
        .results
        .iter()
        .map(|r| {
            [
                r.case.clone(),
                r.machine.clone(),
                r.arch.to_string(),
                if r.is_flaky() { format!("{} (flaky)", r.status.label()) } else { r.status.label().to_owned() },
                seconds(r.boot),
                r.provenance().to_owned(),
                attempts_detail(r),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = String::new();
    out.push_str(&line(headers));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
        out.push('\n');
    }
    let passed = summary.results.iter().filter(|r| r.status.is_ok()).count();
    let failed = summary.results.len() - passed;
    let expected = summary.results.iter().filter(|r| r.status == CaseStatus::FailedAsExpected).count();
    let flaky = summary.results.iter().filter(|r| r.is_flaky()).count();
    out.push_str(&format!("summary: {passed} passed, {failed} failed"));
    if flaky > 0 {
        out.push_str(&format!(", {flaky} flaky"));
    }
    if expected > 0 {
        out.push_str(&format!(" ({expected} of the passed failed as expected)"));
    }
    out.push_str(&format!(" in {}", seconds(summary.total)));
    if let Some(line) = summary.store.remote_line() {
        out.push('\n');
        out.push_str(&line);
    }
    out
}

/// A result's detail, with why each earlier attempt failed when it was retried.
fn attempts_detail(result: &CaseResult) -> String {
    let mut detail = result.detail.clone();
    for (number, failed) in result.failed_attempts.iter().enumerate() {
        detail.push_str(&format!("; attempt {} of {}: {failed}", number + 1, result.failed_attempts.len() + 1));
    }
    detail
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kiln_types::Arch;

    use super::*;
    use crate::outcome::StoreUse;

    fn result(case: &str, arch: Arch, status: CaseStatus, built: bool, detail: &str) -> CaseResult {
        CaseResult {
            label: format!("{case}/{arch}"),
            case: case.to_owned(),
            test: None,
            line: None,
            machine: arch.to_string(),
            arch,
            verdict: None,
            status,
            boot: Duration::from_millis(110),
            built,
            substituted: false,
            log: "log".into(),
            detail: detail.to_owned(),
            tail: Vec::new(),
            failed_attempts: Vec::new(),
        }
    }

    #[test]
    fn the_table_lines_up_and_counts_expected_failures_as_passed() {
        let summary = RunSummary {
            results: vec![
                result(
                    "panic",
                    Arch::X86_64,
                    CaseStatus::FailedAsExpected,
                    false,
                    "panicked at kernel/src/main.rs:45:9",
                ),
                result("smoke", Arch::Riscv64, CaseStatus::Passed, true, "exit status 0"),
                result("hang", Arch::Aarch64, CaseStatus::Failed, false, "timed out after 3s"),
            ],
            total: Duration::from_millis(2350),
            ..RunSummary::default()
        };
        insta::assert_snapshot!(render(&summary), @r"
        case   machine  arch     result              boot   build   detail
        panic  x86_64   x86_64   failed as expected  0.11s  cached  panicked at kernel/src/main.rs:45:9
        smoke  riscv64  riscv64  passed              0.11s  built   exit status 0
        hang   aarch64  aarch64  FAILED              0.11s  cached  timed out after 3s
        summary: 2 passed, 1 failed (1 of the passed failed as expected) in 2.35s
        ");
    }

    #[test]
    fn a_run_green_after_a_failed_attempt_is_flaky_and_says_why_it_was_retried() {
        let mut flaky = result("smoke", Arch::X86_64, CaseStatus::Passed, false, "exit status 33");
        flaky.failed_attempts.push("QEMU killed by signal 9".to_owned());
        let summary = RunSummary { results: vec![flaky], total: Duration::from_millis(1000), ..RunSummary::default() };
        insta::assert_snapshot!(render(&summary), @r"
        case   machine  arch    result          boot   build   detail
        smoke  x86_64   x86_64  passed (flaky)  0.11s  cached  exit status 33; attempt 1 of 2: QEMU killed by signal 9
        summary: 1 passed, 0 failed, 1 flaky in 1.00s
        ");
    }

    #[test]
    fn a_remote_that_served_entries_gets_its_own_line() {
        let summary = RunSummary {
            results: vec![result("smoke", Arch::X86_64, CaseStatus::Passed, false, "exit status 33")],
            store: StoreUse {
                built: 0,
                cached: 2,
                substituted: 14,
                substituted_from: ["s3://kiln-cache/ci".to_owned()].into(),
            },
            total: Duration::from_secs(13),
            ..RunSummary::default()
        };
        let text = render(&summary);
        assert!(text.ends_with("store: 14 substituted from s3://kiln-cache/ci, 2 cached, 0 built"), "{text}");
    }
}
