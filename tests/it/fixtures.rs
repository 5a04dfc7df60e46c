//! The fixture repositories under tests/fixtures, each adopted with `cargo kiln init` plus a
//! few Kiln.toml lines: they pass, and their failing variants fail with the right reason.

use kiln::xtask::{CaseStatus, RunSummary};
use kiln_qemu::{FailReason, Verdict};
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// Copies a fixture, appends `extra` to its Kiln.toml and runs every case.
fn run_fixture(name: &str, extra: &str) -> RunSummary {
    let project = Project::copy_of(&repo_root().join("tests/fixtures").join(name));
    let kiln_toml = project.path().join("Kiln.toml");
    let mut text = std::fs::read_to_string(&kiln_toml).expect("the fixture's Kiln.toml");
    text.push_str(extra);
    std::fs::write(&kiln_toml, text).expect("write Kiln.toml");
    project.test(&["-q", "--accel", "tcg"])
}

fn failure_line(summary: &RunSummary, case: &str, arch: Arch) -> String {
    let result = summary.get(case, arch).unwrap_or_else(|| panic!("{case} ran"));
    assert_eq!(result.status, CaseStatus::Failed, "{case}: {}", result.detail);
    match &result.verdict {
        Some(Verdict::Failed(FailReason::FailureMarker { line })) => line.clone(),
        other => panic!("{case} should fail on its marker, got {other:?}"),
    }
}

fn assert_passed(summary: &RunSummary, case: &str, arch: Arch) {
    let result = summary.get(case, arch).unwrap_or_else(|| panic!("{case} ran"));
    assert_eq!(result.status, CaseStatus::Passed, "{case}: {}", result.detail);
}

#[test]
fn nightly_build_std_and_a_json_target() {
    let summary = run_fixture(
        "nightly-buildstd",
        r#"
[artifact.failing]
package = "nightly-buildstd"
path = "."
arches = ["riscv64"]
target.riscv64 = "riscv64-kiln.json"
build-std = ["core", "compiler_builtins"]
build-std-features = ["compiler-builtins-mem"]
features = ["fail"]

[case.fails]
artifact = "failing"
success = "^nightly-buildstd: ok$"
failure = "failing"
"#,
    );
    assert_passed(&summary, "boot", Arch::Riscv64);
    assert_eq!(failure_line(&summary, "fails", Arch::Riscv64), "nightly-buildstd: failing");
}

#[test]
fn raw_binary_on_raspi3b_exits_through_semihosting() {
    let summary = run_fixture(
        "raw-semihosting",
        r#"
[artifact.failing]
package = "raw-semihosting"
path = "."
arches = ["aarch64"]
image = "raw"
features = ["fail"]

[case.fails]
artifact = "failing"
machines = ["pi3"]
"#,
    );
    assert_passed(&summary, "boot", Arch::Aarch64);
    let fails = summary.get("fails", Arch::Aarch64).expect("ran");
    assert_eq!(
        fails.verdict,
        Some(Verdict::Failed(FailReason::ExitStatus {
            status: 1,
            last_line: Some("raw-semihosting: failing".into()),
            panic_line: None
        }))
    );
}

#[test]
fn x86_test_kernels_from_cargo_test_pass_with_status_33() {
    let summary = run_fixture(
        "x86-tests",
        r#"
[artifact.failing]
package = "x86-tests"
path = "."
arches = ["x86_64"]
kind = "tests"
features = ["fail"]

[case.fails]
artifact = "failing"
failure = "panicked at"
"#,
    );
    for test in ["boot[x86-tests::boot]", "boot[x86-tests::memory]", "boot[x86-tests::fmt]"] {
        assert_passed(&summary, test, Arch::X86_64);
    }
    assert_passed(&summary, "fails[x86-tests::boot]", Arch::X86_64);
    let line = failure_line(&summary, "fails[x86-tests::memory]", Arch::X86_64);
    assert!(line.starts_with("panicked at tests/memory.rs"), "{line}");
}

#[test]
fn a_kernel_that_never_exits_passes_on_its_marker() {
    let summary = run_fixture(
        "never-exits",
        r#"
[artifact.failing]
package = "never-exits"
path = "."
arches = ["riscv64"]
features = ["fail"]

[case.fails]
artifact = "failing"
success = "ALL TESTS PASSED"
failure = "TEST FAILED"
stop-on-success = true
timeout = "30s"
"#,
    );
    assert_passed(&summary, "boot", Arch::Riscv64);
    assert_eq!(failure_line(&summary, "fails", Arch::Riscv64), "never-exits: TEST FAILED: something broke");
}
