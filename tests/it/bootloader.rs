//! Kernels booted through the `bootloader` crate's disk images: a blog_os-style repository
//! (bootloader 0.9, `bootimage`, `cargo test` kernels exiting through isa-debug-exit).

use kiln::xtask::CaseStatus;
use kiln_qemu::{FailReason, Verdict};
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// The Kiln.toml `cargo kiln init` should write for tests/fixtures/blog-os, from its
/// Cargo.toml (`bootloader = "0.9"`, `[package.metadata.bootimage]`), its
/// `.cargo/config.toml` (`build.target`, `unstable.build-std`) and its tests.
const BLOG_OS_KILN_TOML: &str = r#"
kiln-version = "0.1"

[artifact.blog_os]
package = "blog_os"
path = "."
# build.target = "x86_64-blog_os.json" in .cargo/config.toml
arches = ["x86_64"]
target.x86_64 = "x86_64-blog_os.json"
# `cargo test`: every test kernel boots as its own run of the cases (bootimage's test runner).
kind = "tests"
# bootloader 0.9 and [package.metadata.bootimage]: each kernel becomes a BIOS disk image.
image = "bootimage"

[case.boot]
artifact = "blog_os"
# test-success-exit-code = 33 in [package.metadata.bootimage]
success-exit-codes = [33]
# test-timeout = 300 in [package.metadata.bootimage]
timeout = "300s"
"#;

/// The failing variant: the `failing-test` feature adds a test to basic_boot that fails.
const FAILING_VARIANT: &str = r#"
[artifact.failing]
package = "blog_os"
path = "."
arches = ["x86_64"]
target.x86_64 = "x86_64-blog_os.json"
kind = "tests"
image = "bootimage"
features = ["failing-test"]

[case.failing]
artifact = "failing"
success-exit-codes = [33]
timeout = "300s"
"#;

#[test]
fn blog_os_test_kernels_boot_from_bootloader_0_9_disk_images() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/blog-os"));
    // Adopted with `cargo kiln init` and nothing filled by hand: init reads bootloader 0.9,
    // the `bootimage runner` and `[package.metadata.bootimage]`.
    let kiln_path = repo_root().join("crates/kiln");
    let init = project
        .command_in_dir(&["init", "--kiln-path", kiln_path.to_str().expect("utf-8")])
        .output()
        .expect("init runs");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let written = std::fs::read_to_string(project.path().join("Kiln.toml")).expect("init wrote Kiln.toml");
    for line in BLOG_OS_KILN_TOML.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        assert!(
            written.lines().any(|l| l.trim_start().starts_with(line)),
            "init's Kiln.toml lacks `{line}`:\n{written}"
        );
    }
    assert!(!written.contains("\"TODO"), "nothing is left to fill:\n{written}");
    std::fs::write(project.path().join("Kiln.toml"), format!("{written}{FAILING_VARIANT}")).expect("write Kiln.toml");
    let summary = project.test(&["-q", "--accel", "tcg"]);
    // The lib's and the bin's unit-test kernels share the name `blog_os`: both run.
    for test in
        ["blog_os::basic_boot", "blog_os::should_panic", "blog_os::panic_message", "blog_os", "blog_os::bin/blog_os"]
    {
        let case = format!("boot[{test}]");
        let result = summary.get(&case, Arch::X86_64).unwrap_or_else(|| panic!("{case} ran"));
        assert_eq!(result.status, CaseStatus::Passed, "{case}: {}", result.detail);
    }
    let passing = summary.get("failing[blog_os::should_panic]", Arch::X86_64).expect("failing[should_panic] ran");
    assert_eq!(passing.status, CaseStatus::Passed, "the feature changes basic_boot only: {}", passing.detail);
    let failed = summary.get("failing[blog_os::basic_boot]", Arch::X86_64).expect("failing[basic_boot] ran");
    assert_eq!(failed.status, CaseStatus::Failed, "{}", failed.detail);
    // The panic handler prints the panic and writes 0x11: QEMU exits with (0x11 << 1) | 1.
    assert!(
        matches!(&failed.verdict, Some(Verdict::Failed(FailReason::ExitStatus { status: 35, .. }))),
        "failing[basic_boot] should fail with exit status 35, got {:?}",
        failed.verdict
    );
    let log = std::fs::read_to_string(&failed.log).expect("the case's log");
    assert!(log.contains("this test fails on purpose"), "the panic is in the log:\n{log}");

    // Unchanged sources: the kernels and their disk images come from the store.
    let again = project.test(&["-q", "--accel", "tcg", "boot"]);
    assert_eq!(again.store.built, 0, "nothing is rebuilt: {:?}", again.store);
    let result = again.get("boot[blog_os::basic_boot]", Arch::X86_64).expect("boot[basic_boot] ran again");
    assert_eq!(result.status, CaseStatus::Passed, "{}", result.detail);
}
