//! Verdicts that cannot lie: a riscv64 kernel that panics and shuts down through SBI with
//! `SYSTEM_FAILURE` under QEMU's bundled OpenSBI fails although QEMU exits with status 0, and
//! the failure's detail (summary and JUnit) quotes the panic line and its message.

use kiln::xtask::CaseStatus;
use kiln_qemu::{FailReason, PassReason, Verdict};
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// What `cargo kiln init` should write for `tests/fixtures/os1k-rs`, with its one TODO (the
/// success line) filled in: the package from Cargo.toml, riscv64 from `build.target` in
/// `.cargo/config.toml`, the linker script named in its `rustflags`, and QEMU's `virt` with
/// `-bios default` from its cargo `runner` (kiln's built-in riscv64 machine).
const OS1K_INIT_KILN_TOML: &str = r#"
kiln-version = "0.1"

[artifact.os1k]
package = "os1k"
path = "."
# From build.target in .cargo/config.toml.
arches = ["riscv64"]
# Linker scripts found: kernel.ld. Keep passing them in .cargo/config.toml rustflags;
# kiln adds its own flags (`rustflags = [...]`) without replacing yours.

# The cargo runner boots `-machine virt -bios default`: kiln's built-in riscv64 machine.

[case.boot]
artifact = "os1k"
# The line your kernel prints when it has passed (a regular expression).
success = "^os1k: all kernel tests passed$"
timeout = "60s"
"#;

/// The failing variant, added by this test: the kernel's out-of-memory self-test, judged by
/// nothing but how the guest ends (no success or failure pattern).
const OS1K_OOM_VARIANT: &str = r#"
[artifact.os1k-oom]
package = "os1k"
path = "."
arches = ["riscv64"]
features = ["oom-test"]

[case.oom]
artifact = "os1k-oom"
timeout = "60s"
"#;

#[test]
fn an_sbi_system_failure_shutdown_fails_and_quotes_the_panic() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/os1k-rs"));
    std::fs::write(project.path().join("Kiln.toml"), format!("{OS1K_INIT_KILN_TOML}{OS1K_OOM_VARIANT}"))
        .expect("write Kiln.toml");

    let junit = project.path().join("junit.xml");
    let junit_arg = junit.to_str().expect("utf-8 path");
    let code = project.kiln(&["-q", "--accel", "tcg", "test", "--junit", junit_arg]);
    assert_eq!(code, kiln::exit_code::CASES_FAILED, "the out-of-memory kernel fails the run");

    let summary = project.test(&["-q", "--accel", "tcg"]);
    let boot = summary.get("boot", Arch::Riscv64).expect("boot ran");
    assert_eq!(boot.status, CaseStatus::Passed, "{}", boot.detail);
    assert_eq!(boot.verdict, Some(Verdict::Passed(PassReason::ExitStatus(0))), "SRST with no reason passes");

    let oom = summary.get("oom", Arch::Riscv64).expect("oom ran");
    assert_eq!(oom.status, CaseStatus::Failed, "{}", oom.detail);
    let Some(Verdict::Failed(FailReason::FinisherFailure { status: 0, panic_line: Some(panic), last_line })) =
        &oom.verdict
    else {
        panic!("SYSTEM_FAILURE must fail through the finisher, although QEMU says 0: {:?}", oom.verdict);
    };
    assert!(panic.starts_with("PANIC: panicked at src/memory.rs:"), "{panic}");
    assert!(panic.ends_with(": out of memory"), "the message line is joined: {panic}");
    assert_eq!(last_line.as_deref(), Some("shutting down"));
    assert!(oom.detail.contains(panic.as_str()), "the detail quotes the panic, not the last line: {}", oom.detail);
    assert!(oom.detail.contains("exit status 0"), "{}", oom.detail);
    assert!(oom.tail.iter().any(|line| line == "shutting down"), "the tail keeps every line");

    let report = std::fs::read_to_string(&junit).expect("the JUnit report");
    assert!(report.contains("out of memory"), "JUnit carries the panic message:\n{report}");
}
