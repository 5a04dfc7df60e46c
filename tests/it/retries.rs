//! `test --retries`: a run whose machine failed (its QEMU killed from outside) is booted again
//! and reported flaky when the retry passes; a guest's own failure is retried only when asked.

use std::time::{Duration, Instant};

use crate::{
    linux::{linux_kiln_toml, stderr_of},
    support::Project,
};

/// The example's Linux side plus a case that fails on its own (exit status 3, expected to pass).
fn kiln_toml() -> String {
    linux_kiln_toml()
        + r#"
[case.fails]
kernel = "debian"
rootfs = "base"
command = "hello --exit 3"
"#
}

#[test]
fn a_machine_killed_from_outside_is_retried_and_reported_flaky_but_a_guest_failure_only_when_asked() {
    let project = Project::example(&kiln_toml());
    let built = project.command(&["-q", "--accel", "tcg", "build", "--arch", "x86_64"]).output().expect("kiln");
    assert!(built.status.success(), "{}", stderr_of(&built));

    // The first QEMU of the run is killed with SIGKILL as soon as it appears.
    let killer = {
        let project_dir = project.path().to_owned();
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(120) {
                let pids = crate::support::qemu_pids_mentioning(&project_dir);
                if let Some(pid) = pids.first() {
                    let pid = nix::unistd::Pid::from_raw(*pid as i32);
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill QEMU");
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    let junit = project.path().join("junit.xml");
    let output = project
        .command(&["--accel", "tcg", "test", "hello", "--arch", "x86_64", "--retries", "1", "--junit"])
        .arg(&junit)
        .output()
        .expect("kiln");
    assert!(killer.join().expect("killer"), "the first attempt's QEMU was found and killed");
    // The summary and the warnings are both on stderr.
    let err = stderr_of(&output);
    assert!(output.status.success(), "the retry passed:\n{err}");
    assert!(err.contains("attempt 1 failed (QEMU killed by signal 9); trying again"), "{err}");
    assert!(err.contains("passed (flaky)") && err.contains("1 flaky"), "{err}");
    assert!(err.contains("attempt 1 of 2: QEMU killed by signal 9"), "{err}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains(r#"<flakyFailure message="QEMU killed by signal 9"/>"#), "{xml}");

    // A guest's own failure: not retried by --retries alone, retried with --retry-guest-failures.
    let plain = project
        .command(&["--accel", "tcg", "test", "fails", "--arch", "x86_64", "--retries", "2"])
        .output()
        .expect("kiln");
    assert_eq!(plain.status.code(), Some(1), "{}", stderr_of(&plain));
    assert!(!stderr_of(&plain).contains("trying again"), "{}", stderr_of(&plain));
    let asked = project
        .command(&["--accel", "tcg", "test", "fails", "--arch", "x86_64", "--retries", "1", "--retry-guest-failures"])
        .output()
        .expect("kiln");
    assert_eq!(asked.status.code(), Some(1), "{}", stderr_of(&asked));
    assert!(stderr_of(&asked).contains("fails/linux-x86_64: attempt 1 failed (exit status 3"), "{}", stderr_of(&asked));
    assert!(stderr_of(&asked).contains("attempt 1 of 2: exit status 3"), "{}", stderr_of(&asked));
}
