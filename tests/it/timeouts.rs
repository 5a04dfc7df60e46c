//! Guests that hang are killed at their timeout, and no QEMU outlives the run.

use std::time::Duration;

use kiln::xtask::CaseStatus;
use kiln_qemu::Verdict;
use kiln_types::Arch;

use crate::support::Project;

const KILN_TOML: &str = r#"
[artifact.hang]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64", "x86_64"]
features = ["hang"]

[case.hang]
artifact = "hang"
success = "never printed"
timeout = "3s"

[case.silent]
artifact = "hang"
success = "never printed"
timeout = "60s"
no-output-timeout = "1s"
"#;

#[test]
fn hanging_guest_is_killed_at_its_timeout_and_leaves_no_qemu() {
    let project = Project::example(KILN_TOML);
    let summary = project.test(&["--accel", "tcg", "-q"]);
    for arch in [Arch::Riscv64, Arch::X86_64] {
        let hang = summary.get("hang", arch).expect("hang ran");
        assert_eq!(hang.verdict, Some(Verdict::TimedOut { after: Duration::from_secs(3) }), "{arch}");
        assert_eq!(hang.status, CaseStatus::Failed);
        assert!(hang.boot < Duration::from_secs(20), "killed promptly: {:?}", hang.boot);
        let silent = summary.get("silent", arch).expect("silent ran");
        assert_eq!(silent.verdict, Some(Verdict::Silent { after: Duration::from_secs(1) }), "{arch}");
        let log = std::fs::read_to_string(&hang.log).expect("serial log");
        assert!(log.contains("kiln-example: hanging on purpose"), "{log}");
    }
    assert!(project.live_qemu_pids().is_empty(), "orphan QEMU: {:?}", project.live_qemu_pids());
}

#[test]
fn killing_kiln_with_sigkill_takes_its_qemu_down() {
    let project = Project::example(
        r#"
[artifact.hang]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["hang"]

[case.hang]
artifact = "hang"
timeout = "10m"
"#,
    );
    let mut kiln = project.command(&["-q", "--accel", "tcg", "test"]).spawn().expect("kiln starts");
    let started = std::time::Instant::now();
    while project.live_qemu_pids().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(300), "QEMU never started");
        assert!(kiln.try_wait().expect("poll kiln").is_none(), "kiln ended before QEMU started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(kiln.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL kiln");
    kiln.wait().expect("reap kiln");
    let killed = std::time::Instant::now();
    while !project.live_qemu_pids().is_empty() {
        assert!(killed.elapsed() < Duration::from_secs(10), "orphan QEMU: {:?}", project.live_qemu_pids());
        std::thread::sleep(Duration::from_millis(50));
    }
}
