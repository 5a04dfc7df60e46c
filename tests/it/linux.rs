//! Linux guests: reproducible rootfs images, Linux cases on x86_64 and aarch64, `kiln run`
//! as cargo's target runner, and fetches over HTTP.
//!
//! The Debian packages come from `.ci/fetch-debs` (run by `.ci/run`), referenced by path and
//! pinned by the SHA-256 of Debian's package index.

use std::path::PathBuf;

use kiln::xtask::CaseStatus;
use kiln_qemu::{FailReason, Verdict};
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// (fetch name, file name, sha256) of the packages `.ci/fetch-debs` downloads.
pub(crate) const DEBS: [(&str, &str, &str); 4] = [
    (
        "linux-x86_64",
        "linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb",
        "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791",
    ),
    (
        "linux-aarch64",
        "linux-image-6.1.0-50-arm64_6.1.176-1_arm64.deb",
        "914f75b57a8e165d85fb910c3e2dcc7000a05a9fea3f42f90b26e8dd590d5f06",
    ),
    (
        "busybox-x86_64",
        "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb",
        "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
    ),
    (
        "busybox-aarch64",
        "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb",
        "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5",
    ),
];

/// Where `.ci/fetch-debs` puts the packages.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/kiln-fixtures"))
}

/// A fixture package's path; fails the test with what to run when it is missing.
pub fn fixture(file: &str) -> PathBuf {
    let path = fixtures_dir().join(file);
    assert!(path.is_file(), "{} is missing: run `.ci/fetch-debs` (`.ci/run` does)", path.display());
    path
}

/// `[fetch]` tables for the fixture packages, by path.
pub fn fetch_tables() -> String {
    DEBS.iter()
        .map(|(name, file, sha256)| {
            format!("[fetch.{name}]\npath = {:?}\nsha256 = \"{sha256}\"\n\n", fixture(file).display().to_string())
        })
        .collect()
}

/// The example's Linux side, with the packages taken from the fixture directory.
pub(crate) fn linux_kiln_toml() -> String {
    let mut text = fetch_tables();
    text.push_str(
        r#"
[artifact.hello-linux]
package = "hello-linux"
path = "examples/linux/hello"
arches = ["x86_64", "aarch64"]
target.x86_64 = "x86_64-unknown-linux-musl"
target.aarch64 = "aarch64-unknown-linux-musl"

[kernel.debian]
deb = "linux-{arch}"

[rootfs.base]
layers = [
  { busybox = "busybox-{arch}" },
  { artifact = "hello-linux", dest = "/usr/bin/hello" },
  { text = "kiln was here\n", dest = "/etc/motd" },
]

# The same on a disk: ext4 converted to qcow2, booted through kiln's stub initramfs.
[rootfs.disk]
format = "qcow2"
layers = [
  { busybox = "busybox-{arch}" },
  { artifact = "hello-linux", dest = "/usr/bin/hello" },
  { deb = "busybox-{arch}", dest = "/opt/busybox-deb" },
]

[run]
kernel = "debian"
rootfs = "base"

[case.hello]
kernel = "debian"
rootfs = "base"
command = "hello && cat /etc/motd"
success = "^kiln was here$"

[case.exit3]
kernel = "debian"
rootfs = "base"
command = "hello --exit 3"
expect = "fail"

[case.panic]
kernel = "debian"
rootfs = "base"
command = "echo c > /proc/sysrq-trigger"
expect = "fail"

[case.disk]
kernel = "debian"
rootfs = "disk"
command = "hello && mount | grep ' on / ' && ls /opt/busybox-deb/bin"
success = "^/dev/vda on / type ext4"
"#,
    );
    text
}

pub(crate) fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn rootfs_builds_are_byte_for_byte_reproducible_and_cached() {
    let project = Project::example(&linux_kiln_toml());
    let first = project.command(&["-q", "rootfs", "build"]).output().expect("kiln runs");
    assert!(first.status.success(), "{}", stderr_of(&first));
    let listed = stdout_of(&first);
    assert_eq!(listed.lines().count(), 4, "an initramfs and a qcow2 disk per arch: {listed}");

    // A second project (another checkout, another store) makes the same bytes.
    let other = Project::example(&linux_kiln_toml());
    let second = other.command(&["-q", "rootfs", "build"]).output().expect("kiln runs");
    assert!(second.status.success(), "{}", stderr_of(&second));
    let hashes = |text: &str| -> Vec<String> {
        text.lines().map(|line| line.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).collect()
    };
    assert_eq!(hashes(&listed), hashes(&stdout_of(&second)), "same BLAKE3 for the same recipe");

    // The same project again: a store hit.
    let again = project.command(&["rootfs", "build", "base"]).output().expect("kiln runs");
    let status = stderr_of(&again);
    assert!(status.contains("Cached rootfs base (x86_64)"), "{status}");
    assert!(!status.contains("Building rootfs"), "{status}");

    let show = project.command(&["rootfs", "show", "base", "--arch", "aarch64"]).output().expect("kiln runs");
    let files = stdout_of(&show);
    for expected in ["/bin/busybox", "/bin/sh -> busybox", "/usr/bin/hello", "/init", "/etc/passwd", "/etc/motd"] {
        assert!(files.contains(expected), "`rootfs show` lists {expected}: {files}");
    }

    let diff = project.command(&["rootfs", "diff", "base", "disk"]).output().expect("kiln runs");
    let changes = stdout_of(&diff);
    assert!(diff.status.success(), "{}", stderr_of(&diff));
    assert!(changes.contains("+ /opt/busybox-deb/bin/busybox ("), "{changes}");
    assert!(changes.contains("- /etc/motd (14 B)"), "{changes}");
    assert!(changes.lines().last().is_some_and(|l| l.starts_with("base -> disk (x86_64): ")), "{changes}");
}

#[test]
fn linux_cases_pass_fail_on_exit_status_and_quote_kernel_panics() {
    let project = Project::example(&linux_kiln_toml());
    let summary = project.test(&["-q", "--accel", "tcg"]);
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let hello = summary.get("hello", arch).expect("hello ran");
        assert_eq!(hello.status, CaseStatus::Passed, "hello on {arch}: {}", hello.detail);
        assert_eq!(hello.detail, "exit status 0");

        let exit3 = summary.get("exit3", arch).expect("exit3 ran");
        assert_eq!(exit3.status, CaseStatus::FailedAsExpected, "exit3 on {arch}: {}", exit3.detail);
        assert!(exit3.detail.starts_with("exit status 3 after `hello from kiln on"), "{}", exit3.detail);

        let panic = summary.get("panic", arch).expect("panic ran");
        assert_eq!(panic.status, CaseStatus::FailedAsExpected, "panic on {arch}: {}", panic.detail);
        let Some(Verdict::Failed(FailReason::FailureMarker { line })) = &panic.verdict else {
            panic!("the panic case on {arch} should fail on the panic line, got {:?}", panic.verdict);
        };
        assert!(line.contains("Kernel panic - not syncing: sysrq triggered crash"), "{line}");

        let disk = summary.get("disk", arch).expect("disk ran");
        assert_eq!(disk.status, CaseStatus::Passed, "disk on {arch}: {} {:?}", disk.detail, disk.tail);
    }
}

#[test]
fn cargo_test_runs_test_binaries_inside_an_aarch64_vm() {
    let project = Project::example(&linux_kiln_toml());
    let kiln = env!("CARGO_BIN_EXE_kiln-it");
    let cargo = |features: &[&str]| {
        let mut command = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .args(["test", "--target", "aarch64-unknown-linux-musl", "-p", "arch-tests"])
            .args(features)
            .current_dir(project.path().join("examples"))
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER", format!("{kiln} --accel tcg run --"))
            .env("CARGO_TARGET_DIR", project.path().join("target/cargo"))
            .env_remove("RUSTUP_TOOLCHAIN");
        command.output().expect("cargo runs")
    };
    let green = cargo(&[]);
    let out = stdout_of(&green);
    assert!(green.status.success(), "stdout:\n{out}\nstderr:\n{}", stderr_of(&green));
    for test in [
        "the_kernel_runs_the_architecture_we_were_built_for",
        "on_aarch64",
        "reads_a_fixture_from_the_package_directory",
    ] {
        assert!(out.contains(&format!("tests::{test} ... ok")), "{test} passed in the VM: {out}");
    }

    let red = cargo(&["--features", "fail"]);
    let out = stdout_of(&red);
    assert!(!red.status.success(), "a failing test fails cargo: {out}");
    assert!(out.contains("tests::fails_on_purpose ... FAILED"), "{out}");
    assert!(stderr_of(&red).contains("error: test failed"), "{}", stderr_of(&red));
}

#[test]
fn the_repository_kiln_toml_pins_the_same_packages_the_tests_use() {
    let text = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    for (name, _, sha256) in DEBS {
        let table = format!("[fetch.{name}]");
        let at = text.find(&table).unwrap_or_else(|| panic!("Kiln.toml declares {table}"));
        assert!(text[at..].contains(sha256), "{table} is pinned to {sha256}");
    }
}

#[test]
fn run_passes_the_exit_status_through_and_keeps_redirected_output_in_order() {
    let project = Project::example(&linux_kiln_toml());
    let built = project.command(&["-q", "--accel", "tcg", "build", "--arch", "x86_64,aarch64"]).output().expect("kiln");
    assert!(built.status.success(), "{}", stderr_of(&built));
    let kiln = env!("CARGO_BIN_EXE_kiln-it");
    for line in stdout_of(&built).lines().filter(|l| l.starts_with("hello-linux ")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (arch, program) = (fields[1], fields[2]);
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        // A shell writing to the same file before and after: kiln's output must land between.
        let script = format!(
            "{{ echo BEFORE; '{kiln}' --accel tcg run -- '{program}' --exit 7; echo \"status $?\"; echo AFTER; }} >'{}' 2>'{}'",
            out.display(),
            err.display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(project.path().join("examples/linux/hello"))
            .status()
            .expect("sh");
        assert!(status.success());
        let text = std::fs::read_to_string(&out).expect("out");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{arch}: {text}\nstderr: {}", std::fs::read_to_string(&err).unwrap_or_default());
        assert_eq!(lines[0], "BEFORE");
        assert!(lines[1].starts_with(&format!("hello from kiln on {arch} (Linux 6.1.0-50-")), "{arch}: {text}");
        assert_eq!(lines[2..], ["status 7", "AFTER"], "{arch}: the program's status is kiln's");
    }
}

#[test]
fn run_on_a_snapshot_restores_a_fresh_guest_each_time() {
    let project = Project::example(&linux_kiln_toml());
    // A static aarch64 busybox from the fixture package, as the program to run.
    let unpacked = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(fixture("busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"))
        .arg(unpacked.path())
        .status()
        .expect("dpkg-deb");
    assert!(status.success());
    let busybox = unpacked.path().join("bin/busybox");
    let run = |script: &str| {
        project
            .command(&["--accel", "tcg", "run", "--snapshot", "--"])
            .arg(&busybox)
            .args(["sh", "-c", script])
            .current_dir(project.path().join("examples/linux/hello"))
            .output()
            .expect("kiln")
    };
    let first = run("test -e /tmp/leak && echo leaked; touch /tmp/leak; uname -m; echo to-stderr >&2; exit 5");
    assert_eq!(first.status.code(), Some(5), "{}", stderr_of(&first));
    assert_eq!(stdout_of(&first), "aarch64\n");
    assert!(stderr_of(&first).contains("to-stderr"), "{}", stderr_of(&first));
    let snapshots = || {
        let ls = project.command(&["store", "ls"]).output().expect("kiln");
        stdout_of(&ls).lines().filter(|l| l.contains("snapshot-aarch64")).count()
    };
    assert_eq!(snapshots(), 1, "the first run makes the snapshot");

    let second = run("test -e /tmp/leak && echo leaked; cat src/main.rs | head -1");
    assert_eq!(second.status.code(), Some(0), "{}", stderr_of(&second));
    let out = stdout_of(&second);
    assert!(!out.contains("leaked"), "each run gets a fresh copy: {out}");
    assert!(out.starts_with("//! Runs inside kiln's example Linux guest"), "the package directory is there: {out}");
    assert_eq!(snapshots(), 1, "the second run restores the same snapshot");

    // A guest that dies under its program fails the run with the console's last words. What
    // the program wrote is relayed by the agent as it comes; a crash in the same instant can
    // beat the relay (a host's own crash loses unflushed output too), so the program waits a
    // moment before it crashes the guest.
    let panicked = run("echo before; sleep 1; echo c > /proc/sysrq-trigger; sleep 10");
    assert_eq!(panicked.status.code(), Some(3), "{}", stderr_of(&panicked));
    assert_eq!(stdout_of(&panicked), "before\n");
    let err = stderr_of(&panicked);
    assert!(err.contains("did not finish in the aarch64 guest") && err.contains("Kernel panic"), "{err}");

    // A snapshot whose saved state changed is caught by its hash before use and made again.
    let entry = project.path().join("target/kiln/store/entries");
    let state = std::fs::read_dir(&entry)
        .expect("entries")
        .map(|e| e.expect("entry").path().join("out/state"))
        .find(|state| state.is_file())
        .expect("a snapshot's state");
    let mut perms = std::fs::metadata(&state).expect("state").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&state, perms).expect("chmod");
    let mut bytes = std::fs::read(&state).expect("read state");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&state, bytes).expect("corrupt state");
    let third = run("uname -m");
    assert_eq!(third.status.code(), Some(0), "{}", stderr_of(&third));
    assert_eq!(stdout_of(&third), "aarch64\n");
    assert!(
        stderr_of(&third).contains(
            "of the aarch64 snapshot: its output no longer has the hash recorded when it was built; it was made again"
        ),
        "{}",
        stderr_of(&third)
    );
}
