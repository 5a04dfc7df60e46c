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
    let written = project.init_with_this_kiln();
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

/// What `cargo kiln init` writes for tests/fixtures/bootloader-011 (the current bootloader's
/// template): the kernel package `kernel` depends on `bootloader_api`, so it gets a BIOS and a
/// UEFI artifact and a case for each, and, since it has a test target (`tests/boot_info.rs`,
/// `harness = false`), an artifact of its `cargo test` kernels; rust-toolchain.toml's
/// `targets` give the target; the host package `os` (bootloader as a build-dependency, QEMU in
/// its `main`) is no kernel.
const BOOTLOADER_011_KILN_TOML: &str = r#"
[artifact.kernel-bios]
package = "kernel"
path = "kernel"
arches = ["x86_64"]
target.x86_64 = "x86_64-unknown-none"
image = "bios"

[artifact.kernel-uefi]
package = "kernel"
path = "kernel"
arches = ["x86_64"]
target.x86_64 = "x86_64-unknown-none"
image = "uefi"

[artifact.kernel-tests]
package = "kernel"
path = "kernel"
arches = ["x86_64"]
target.x86_64 = "x86_64-unknown-none"
kind = "tests"
image = "bios"

[case.bios]
artifact = "kernel-bios"

[case.uefi]
artifact = "kernel-uefi"

[case.tests]
artifact = "kernel-tests"
"#;

/// The one TODO init leaves, as its user fills it: the kernel says it passed by writing 0x10
/// to the isa-debug-exit port, so QEMU exits with (0x10 << 1) | 1.
const BOOTLOADER_011_SUCCESS_TODO: (&str, &str) =
    ("success = \"TODO: the line your kernel prints when it passes\"", "success-exit-codes = [33]");

/// The failing variant: the kernel's `fail-on-boot` feature panics right after boot.
const BOOTLOADER_011_FAILING: &str = r#"
[artifact.failing-bios]
package = "kernel"
path = "kernel"
arches = ["x86_64"]
image = "bios"
features = ["fail-on-boot"]

[artifact.failing-uefi]
package = "kernel"
path = "kernel"
arches = ["x86_64"]
image = "uefi"
features = ["fail-on-boot"]

[case.failing-bios]
artifact = "failing-bios"
success-exit-codes = [33]
timeout = "60s"

[case.failing-uefi]
artifact = "failing-uefi"
success-exit-codes = [33]
timeout = "60s"
"#;

#[test]
fn bootloader_0_11_kernels_boot_from_bios_and_uefi_disk_images() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/bootloader-011"));
    let written = project.init_with_this_kiln();
    for line in BOOTLOADER_011_KILN_TOML.lines().filter(|line| !line.is_empty()) {
        assert!(
            written.lines().any(|l| l.trim_start().starts_with(line)),
            "init's Kiln.toml lacks `{line}`:\n{written}"
        );
    }
    assert!(!written.contains("[artifact.os]"), "the host package is no kernel:\n{written}");
    let (todo, filled) = BOOTLOADER_011_SUCCESS_TODO;
    assert_eq!(written.matches(todo).count(), 3, "one TODO per case:\n{written}");
    let filled = written.replace(todo, filled);
    assert!(!filled.contains("\"TODO"), "nothing else is left to fill:\n{filled}");
    std::fs::write(project.path().join("Kiln.toml"), format!("{filled}{BOOTLOADER_011_FAILING}"))
        .expect("write Kiln.toml");

    let ovmf = kiln_qemu::firmware::find_ovmf("the test").expect("OVMF is installed (apt-get install ovmf)");
    let vars_before = std::fs::read(&ovmf.vars_template).expect("OVMF's variable store");
    let summary = project.test(&["-q", "--accel", "tcg"]);
    for case in ["bios", "uefi"] {
        let result = summary.get(case, Arch::X86_64).unwrap_or_else(|| panic!("{case} ran"));
        assert_eq!(result.status, CaseStatus::Passed, "{case}: {}", result.detail);
        let log = std::fs::read_to_string(&result.log).expect("the case's log");
        assert!(log.contains("Hello World!") && log.contains("kernel: all done"), "{case}'s kernel ran:\n{log}");
    }
    // The test kernel boots from a disk image of its own, as its own run of the case.
    let test_kernel = summary.get("tests[kernel::boot_info]", Arch::X86_64).expect("tests[kernel::boot_info] ran");
    assert_eq!(test_kernel.status, CaseStatus::Passed, "{}", test_kernel.detail);
    let log = std::fs::read_to_string(&test_kernel.log).expect("the test kernel's log");
    assert!(log.contains("boot_info::kernel_image...\t[ok]"), "the test kernel ran:\n{log}");
    for case in ["failing-bios", "failing-uefi"] {
        let result = summary.get(case, Arch::X86_64).unwrap_or_else(|| panic!("{case} ran"));
        assert_eq!(result.status, CaseStatus::Failed, "{case}: {}", result.detail);
        let log = std::fs::read_to_string(&result.log).expect("the case's log");
        assert!(log.contains("the kernel was built with `fail-on-boot`"), "{case} failed by its panic:\n{log}");
        // The panic line (init's `failure` pattern), or the exit status 35 right after it.
        assert!(
            matches!(&result.verdict, Some(Verdict::Failed(_))) && result.detail.contains("fail-on-boot"),
            "{case} fails by its panic, not a hang: {:?}, {}",
            result.verdict,
            result.detail
        );
    }
    assert_eq!(
        std::fs::read(&ovmf.vars_template).expect("OVMF's variable store"),
        vars_before,
        "each UEFI boot writes its own copy of the variable store"
    );

    // Unchanged sources: the kernels and their disk images come from the store.
    let again = project.test(&["-q", "--accel", "tcg", "bios", "uefi"]);
    assert_eq!(again.store.built, 0, "nothing is rebuilt: {:?}", again.store);
    for case in ["bios", "uefi"] {
        let result = again.get(case, Arch::X86_64).unwrap_or_else(|| panic!("{case} ran again"));
        assert_eq!(result.status, CaseStatus::Passed, "{case}: {}", result.detail);
    }
}
