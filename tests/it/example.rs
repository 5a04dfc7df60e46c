//! The bundled example end to end: pass, expected failure, cache hits, selective rebuilds.

use kiln::xtask::CaseStatus;
use kiln_qemu::{FailReason, Verdict};
use kiln_store::BuildOutcome;
use kiln_types::Arch;

use crate::support::{Project, repo_root};

#[test]
fn bundled_example_passes_is_cached_and_rebuilds_only_what_changed() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("the repository's Kiln.toml");
    let project = Project::example(&kiln_toml);

    // The bare-metal cases; the Linux ones (which fetch Debian packages) have tests/it/linux.rs.
    let first = project.test(&["-q", "--accel", "tcg", "smoke", "panic"]);
    for arch in Arch::ALL {
        let smoke = first.get("smoke", arch).expect("smoke ran");
        assert_eq!(smoke.status, CaseStatus::Passed, "smoke on {arch}: {}", smoke.detail);
        assert!(smoke.built, "first run builds");
        let panic = first.get("panic", arch).expect("panic ran");
        assert_eq!(panic.status, CaseStatus::FailedAsExpected, "panic on {arch}: {}", panic.detail);
        let Some(Verdict::Failed(FailReason::FailureMarker { line })) = &panic.verdict else {
            panic!("panic on {arch} should fail on its marker, got {:?}", panic.verdict);
        };
        assert!(line.contains("deliberate panic to prove failures are caught"), "{line}");
        assert!(smoke.log.is_file(), "serial log written");
    }
    assert!(first.all_ok());

    let second = project.test(&["-q", "--accel", "tcg", "smoke", "panic"]);
    assert!(second.all_ok());
    assert!(second.results.iter().all(|r| !r.built), "second run builds nothing");

    // Only the aarch64 board changes: only aarch64 artifacts rebuild.
    project.touch_source("examples/boards/aarch64-virt/src/lib.rs", "// touched by a test");
    let kernels = |built: Vec<kiln::xtask::Built>| {
        built.into_iter().filter(|b| b.artifact.starts_with("hello") && b.artifact != "hello-linux")
    };
    let rebuilt = kernels(project.build());
    for built in rebuilt {
        let was_built = matches!(built.outcome, BuildOutcome::Built { .. });
        assert_eq!(was_built, built.arch == Arch::Aarch64, "{} ({}): {:?}", built.artifact, built.arch, built.outcome);
    }
    // A change to the kernel itself rebuilds every arch.
    project.touch_source("examples/kernel/src/main.rs", "// touched by a test");
    assert!(kernels(project.build()).all(|b| matches!(b.outcome, BuildOutcome::Built { .. })));
}

#[test]
fn exit_code_is_zero_when_green_and_one_when_a_case_fails() {
    let kiln_toml = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]

[artifact.failing]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["fail"]

[case.smoke]
artifact = "hello"
success = "all checks passed"

[case.fails]
artifact = "failing"

[case.marker-missing]
artifact = "hello"
success = "this line never appears"
"#;
    let project = Project::example(kiln_toml);
    assert_eq!(project.kiln(&["-q", "test", "smoke"]), kiln::exit_code::SUCCESS);
    let summary = project.test(&["-q"]);
    let fails = summary.get("fails", Arch::Riscv64).expect("ran");
    assert_eq!(
        fails.verdict,
        Some(Verdict::Failed(FailReason::ExitStatus {
            status: 1,
            last_line: Some("kiln-example: failing on purpose".into()),
            panic_line: None,
        }))
    );
    let missing = summary.get("marker-missing", Arch::Riscv64).expect("ran");
    assert!(
        matches!(missing.verdict, Some(Verdict::Failed(FailReason::MissingSuccessMarker { status: 0, .. }))),
        "exit 0 without the success marker is a failure: {:?}",
        missing.verdict
    );
    assert_eq!(project.kiln(&["-q", "test"]), kiln::exit_code::CASES_FAILED);
}

#[test]
fn two_checkouts_of_the_same_sources_have_the_same_closure_hashes() {
    let kiln_toml = "[artifact.hello]\npackage = \"hello-kernel\"\npath = \"examples/kernel\"\n";
    let a = Project::example(kiln_toml);
    let b = Project::example(kiln_toml);
    let closures = |project: &Project| {
        let cx = project.cx(&["-q"]);
        cx.closures(&[], &[]).expect("closures").into_iter().map(|(_, _, closure)| closure).collect::<Vec<_>>()
    };
    let (from_a, from_b) = (closures(&a), closures(&b));
    assert_eq!(from_a.len(), 3);
    assert_eq!(from_a, from_b);
}

#[test]
fn in_github_actions_a_failure_is_annotated_summarised_and_in_junit() {
    let kiln_toml = r#"
[artifact.failing]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["fail"]

[case.fails]
artifact = "failing"
"#;
    let project = Project::example(kiln_toml);
    let summary_file = project.path().join("summary.md");
    let junit = project.path().join("junit.xml");
    let output = project
        .command(&["-q", "--accel", "tcg", "test", "--junit", junit.to_str().expect("utf-8")])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary_file)
        .env("GITHUB_WORKSPACE", project.path())
        .output()
        .expect("kiln runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("::error file=Kiln.toml,line=8,title=fails/riscv64%3A exit status 1"), "{stderr}");
    assert!(stderr.contains("::group::fails/riscv64"), "{stderr}");
    let guard = stderr.lines().find_map(|l| l.strip_prefix("::stop-commands::")).expect("guest output is guarded");
    assert!(stderr.contains(&format!("::{guard}::")), "the guard is lifted again");
    let summary = std::fs::read_to_string(&summary_file).expect("job summary");
    assert!(summary.contains("| fails | riscv64 | riscv64 | ❌ failed |"), "{summary}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("failures=\"1\"") && xml.contains("kiln-example: failing on purpose"), "{xml}");
}
