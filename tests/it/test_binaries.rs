//! `kind = "tests"` on the `test-framework` fixture (tinyos, a RISC-V kernel with a custom test
//! framework): every test binary of `cargo test --no-run` boots under its cargo-nextest id, the
//! library's and the binary's unit tests (both called `tinyos`) included, each judged by its own
//! `[case.NAME.test.TEST]` table: a kernel that never exits, an expected failure and one that
//! needs console input. The `regress-14` feature breaks one of the library's unit tests.

use kiln::xtask::{CaseStatus, RunSummary};
use kiln_qemu::{FailReason, Verdict};
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// The Kiln.toml `cargo kiln init` should write for tinyos, with its TODOs filled in (the
/// `failure` pattern and the three per-test tables). See the report of issue 17 for what init
/// reads where.
const TINYOS_KILN_TOML: &str = r#"kiln-version = "0.1"

[artifact.tinyos]
package = "tinyos"
path = "."
# .cargo/config.toml: build.target = "riscv64gc-unknown-none-elf"
arches = ["riscv64"]
# .cargo/config.toml: [unstable] build-std
build-std = ["core", "compiler_builtins"]
build-std-features = ["compiler-builtins-mem"]
# #![test_runner] in src/lib.rs and a cargo `runner`: every test binary is a kernel.
kind = "tests"

[case.tests]
artifact = "tinyos"
# TODO filled in: the line test_panic_handler prints.
failure = '\[failed\]$'
timeout = "60s"

# TODO filled in: tests/idle.rs never exits.
[case.tests.test.idle]
success = "^tinyos: idle$"
stop-on-success = true
timeout = "30s"

# TODO filled in: tests/should_panic.rs must fail.
[case.tests.test.should_panic]
expect = "fail"

# TODO filled in: tests/console_echo.rs waits for a line.
[case.tests.test.console_echo]
input = "ping\r"
input-after = "^console_echo: type"
"#;

/// The failing variant: the same tests, built with the `align_up` bug of #14 back.
const REGRESSED: &str = r#"
[artifact.regressed]
package = "tinyos"
path = "."
arches = ["riscv64"]
build-std = ["core", "compiler_builtins"]
build-std-features = ["compiler-builtins-mem"]
kind = "tests"
features = ["regress-14"]

[case.regressed]
artifact = "regressed"
failure = '\[failed\]$'
"#;

fn result<'a>(summary: &'a RunSummary, case: &str) -> &'a kiln::xtask::CaseResult {
    summary.get(case, Arch::Riscv64).unwrap_or_else(|| {
        let ran: Vec<&str> = summary.results.iter().map(|r| r.case.as_str()).collect();
        panic!("{case} did not run; these did: {ran:?}")
    })
}

fn assert_status(summary: &RunSummary, case: &str, status: CaseStatus) {
    let result = result(summary, case);
    assert_eq!(result.status, status, "{case}: {}\n{}", result.detail, result.tail.join("\n"));
}

/// The failure marker line that failed `case`.
fn failure_line(summary: &RunSummary, case: &str) -> String {
    match &result(summary, case).verdict {
        Some(Verdict::Failed(FailReason::FailureMarker { line })) => line.clone(),
        other => panic!("{case} should fail on its marker, got {other:?}"),
    }
}

#[test]
fn every_test_binary_is_a_case_with_its_own_settings() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/test-framework"));
    let kiln_toml = project.path().join("Kiln.toml");
    std::fs::write(&kiln_toml, format!("{TINYOS_KILN_TOML}{REGRESSED}")).expect("write Kiln.toml");

    let summary = project.test(&["-q", "--accel", "tcg", "tests"]);
    let mut names: Vec<&str> = summary.results.iter().map(|r| r.case.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "tests[tinyos::basic_boot]",
            "tests[tinyos::bin/tinyos]",
            "tests[tinyos::console_echo]",
            "tests[tinyos::idle]",
            "tests[tinyos::should_panic]",
            "tests[tinyos]",
        ],
        "the lib and the bin unit tests (both `tinyos`) run under distinct names"
    );
    for passing in ["tests[tinyos]", "tests[tinyos::bin/tinyos]", "tests[tinyos::basic_boot]"] {
        assert_status(&summary, passing, CaseStatus::Passed);
        assert!(matches!(result(&summary, passing).verdict, Some(Verdict::Passed(_))));
    }
    // The library's tests and the binary's are different kernels.
    let lib_log = std::fs::read_to_string(&result(&summary, "tests[tinyos]").log).expect("lib log");
    let bin_log = std::fs::read_to_string(&result(&summary, "tests[tinyos::bin/tinyos]").log).expect("bin log");
    assert!(lib_log.contains("mm::tests::align_up_keeps_aligned_addresses...\t[ok]"), "{lib_log}");
    assert!(bin_log.contains("Hello World!") && bin_log.contains("trivial_assertion...\t[ok]"), "{bin_log}");
    let log_names: Vec<String> = summary
        .results
        .iter()
        .map(|r| r.log.file_name().expect("a file").to_string_lossy().into_owned())
        .filter(|name| name.contains("tinyos]") || name.contains("bin."))
        .collect();
    assert!(log_names.contains(&"tests[tinyos].riscv64.log".to_owned()), "{log_names:?}");
    assert!(log_names.contains(&"tests[tinyos.bin.tinyos].riscv64.log".to_owned()), "{log_names:?}");

    // Never exits: passes on its own marker, stopped at once.
    assert_status(&summary, "tests[tinyos::idle]", CaseStatus::Passed);
    // Must fail, and fails on the panic handler's line.
    assert_status(&summary, "tests[tinyos::should_panic]", CaseStatus::FailedAsExpected);
    assert_eq!(failure_line(&summary, "tests[tinyos::should_panic]"), "should_panic::should_fail...\t[failed]");
    // Passes only with the line typed after its prompt.
    assert_status(&summary, "tests[tinyos::console_echo]", CaseStatus::Passed);
    let echo = &result(&summary, "tests[tinyos::console_echo]").tail;
    assert!(echo.iter().any(|line| line == "console_echo: pong [ok]"), "{echo:?}");

    // The failing variant, two binaries picked with `--test` (an id and a short form): only the
    // library's unit tests fail, on the test the regression breaks.
    let regressed = project.test(&["-q", "--accel", "tcg", "regressed", "--test", "tinyos,basic_boot"]);
    let names: Vec<&str> = regressed.results.iter().map(|r| r.case.as_str()).collect();
    assert_eq!(names, ["regressed[tinyos]", "regressed[tinyos::basic_boot]"]);
    assert_status(&regressed, "regressed[tinyos]", CaseStatus::Failed);
    assert_eq!(
        failure_line(&regressed, "regressed[tinyos]"),
        "tinyos::mm::tests::align_up_keeps_aligned_addresses...\t[failed]"
    );
    assert_status(&regressed, "regressed[tinyos::basic_boot]", CaseStatus::Passed);

    // `CASE[TEST]` with a short form boots that one binary (the build is cached).
    let one = project.test(&["-q", "--accel", "tcg", "tests[bin/tinyos]"]);
    let names: Vec<&str> = one.results.iter().map(|r| r.case.as_str()).collect();
    assert_eq!(names, ["tests[tinyos::bin/tinyos]"]);

    // Names that find no binary are errors listing what exists.
    let output = project.command(&["-q", "--accel", "tcg", "test", "tests[idel]"]).output().expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(i32::from(kiln::exit_code::USAGE)), "{text}");
    assert!(text.contains("`tests[idel]`: case `tests`: no test binary is named `idel`"), "{text}");
    assert!(text.contains("a test binary with a similar name exists: `tinyos::idle`"), "{text}");
    assert!(text.contains("`tinyos::bin/tinyos`"), "{text}");

    std::fs::write(&kiln_toml, format!("{TINYOS_KILN_TOML}\n[case.tests.test.idel]\nexpect = \"fail\"\n"))
        .expect("write Kiln.toml");
    let output = project.command(&["-q", "--accel", "tcg", "test"]).output().expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(i32::from(kiln::exit_code::USAGE)), "{text}");
    assert!(text.contains("key `case.tests.test.idel`"), "{text}");
    assert!(text.contains("no test binary is named `idel` (`[case.tests.test.idel]`)"), "{text}");
    assert!(text.contains("a test binary with a similar name exists: `tinyos::idle`"), "{text}");
}
