//! Warm guests: cases and runs on restored snapshots, run pools, sessions, and what is left
//! behind when kiln is killed.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kiln::xtask::CaseStatus;
use kiln_qemu::{FailReason, Verdict};
use kiln_types::Arch;

use crate::{
    linux::{fixture, linux_kiln_toml, stderr_of, stdout_of},
    support::Project,
};

/// A static aarch64 busybox from the fixture package, unpacked into `dir`.
fn busybox(dir: &Path) -> PathBuf {
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(fixture("busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"))
        .arg(dir)
        .status()
        .expect("dpkg-deb");
    assert!(status.success());
    dir.join("bin/busybox")
}

/// Waits up to `limit` for `done`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn warm_kiln_toml() -> String {
    linux_kiln_toml()
        + r#"
[case.warm-hello]
kernel = "debian"
rootfs = "base"
command = "hello && cat /etc/motd"
success = "^kiln was here$"
snapshot = true

[case.warm-exit3]
kernel = "debian"
rootfs = "base"
command = "hello --exit 3"
expect = "fail"
snapshot = true

[case.warm-panic]
kernel = "debian"
rootfs = "base"
command = "echo c > /proc/sysrq-trigger"
expect = "fail"
snapshot = true
"#
}

#[test]
fn snapshot_cases_run_through_the_agent_and_a_panic_still_fails_its_case() {
    let project = Project::example(&warm_kiln_toml());
    let summary = project.test(&["-q", "--accel", "tcg", "warm-hello", "warm-exit3", "warm-panic"]);
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let hello = summary.get("warm-hello", arch).expect("warm-hello ran");
        assert_eq!(hello.status, CaseStatus::Passed, "warm-hello on {arch}: {} {:?}", hello.detail, hello.tail);
        let log = std::fs::read_to_string(&hello.log).expect("the case has a log");
        assert!(log.contains(&format!("hello from kiln on {arch}")), "{log}");

        let exit3 = summary.get("warm-exit3", arch).expect("warm-exit3 ran");
        assert_eq!(exit3.status, CaseStatus::FailedAsExpected, "{}", exit3.detail);
        assert!(exit3.detail.starts_with("exit status 3 after `hello from kiln on"), "{}", exit3.detail);

        let panic = summary.get("warm-panic", arch).expect("warm-panic ran");
        let Some(Verdict::Failed(FailReason::FailureMarker { line })) = &panic.verdict else {
            panic!("warm-panic on {arch} should fail on the panic line, got {:?} {}", panic.verdict, panic.detail);
        };
        assert!(line.contains("Kernel panic - not syncing: sysrq triggered crash"), "{line}");
    }
    assert!(wait_for(Duration::from_secs(5), || project.live_qemu_pids().is_empty()), "no guest outlives `test`");
}

#[test]
fn pooled_runs_reuse_warm_guests_in_fresh_sandboxes_and_the_pool_stops_with_its_guests() {
    let project = Project::example(&linux_kiln_toml());
    let unpacked = tempfile::tempdir().expect("tempdir");
    let busybox = busybox(unpacked.path());
    let run = |script: &str| {
        project
            .command(&["--accel", "tcg", "run", "--pool", "1", "--"])
            .arg(&busybox)
            .args(["sh", "-c", script])
            .current_dir(project.path().join("examples/linux/hello"))
            .output()
            .expect("kiln")
    };
    // Each run leaves a file in /tmp, one in the package directory, one in /dev, a tmpfs
    // file, a process
    // that left its session (`sleep $n`, so that this script's own command line does not
    // match), a POSIX message queue (System V IPC's namespace) and a host name; the next run
    // on the same (renewed) guest sees none of them.
    let script = "for f in /tmp/leak leak /dev/shm/leak /dev/leak; do test -e $f && echo leaked $f; touch $f; done; \
                  ps | grep -q '[s]leep 300' && echo leaked process; \
                  n=300; setsid sleep $n </dev/null >/dev/null 2>&1 & \
                  mkdir -p /run/mq && mount -t mqueue mq /run/mq || echo no mqueue; \
                  test -e /run/mq/leak && echo leaked message queue; touch /run/mq/leak; \
                  test \"$(hostname)\" = leak && echo leaked host name; hostname leak; \
                  uname -m; cat src/main.rs | head -1; exit 4";
    // The first run starts the keeper under `flock`, as CI scripts serialise cargo: the lock
    // is free once the run ends, though the keeper lives on.
    let lock = project.path().join("ci.lock");
    for round in 0..4 {
        let out = if round == 0 {
            let kiln = project.command(&["--accel", "tcg", "run", "--pool", "1", "--"]);
            Command::new("flock")
                .arg(&lock)
                .arg(kiln.get_program())
                .args(kiln.get_args())
                .arg(&busybox)
                .args(["sh", "-c", script])
                .current_dir(project.path().join("examples/linux/hello"))
                .output()
                .expect("flock")
        } else {
            run(script)
        };
        if round == 0 {
            let free = Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().expect("flock");
            assert!(free.success(), "the lock is free after the run: the keeper holds nothing its starter inherited");
        }
        assert_eq!(out.status.code(), Some(4), "round {round}: {}", stderr_of(&out));
        let text = stdout_of(&out);
        assert!(text.starts_with("aarch64\n//! Runs inside kiln's example Linux guest"), "round {round}: {text}");
        assert!(
            !text.contains("leaked") && !text.contains("no mqueue"),
            "round {round}: every run gets a clean guest: {text}"
        );
        if round == 0 {
            // The first run started the keeper; give it the time to have a guest ready.
            let ready = wait_for(Duration::from_secs(120), || {
                let ls = project.command(&["vm", "ls"]).output().expect("kiln");
                stdout_of(&ls).contains("1 idle")
            });
            if !ready {
                let log =
                    std::fs::read_to_string(project.path().join("target/kiln/vm/pool-aarch64.log")).unwrap_or_default();
                panic!("the pool keeper has no idle guest after 120 s; its log:\n{log}");
            }
        }
    }
    let listed = stdout_of(&project.command(&["vm", "ls"]).output().expect("kiln"));
    // The project's pool (the built-in runner's, which this host's user may have running, are
    // listed after it, marked).
    let ls = listed.lines().find(|line| !line.ends_with("(built-in runner guests)")).unwrap_or_default();
    assert!(ls.starts_with("pool ") && ls.contains("aarch64"), "{listed}");
    // Rounds 1 to 3 were leased from the pool's one guest, renewed after each lease.
    let reused = ls.split(", ").find_map(|part| part.strip_suffix(" leases on reused guests"));
    let reused: u32 = reused.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no reuse count in {ls}"));
    assert!(reused >= 2, "the pool renews its guest instead of restoring one per run: {ls}");
    // A guest being renewed is not counted as leased.
    assert!(ls.contains(" 0 leased, "), "no run holds a guest now: {ls}");
    assert!(
        project.path().join("examples/linux/hello").join("leak").symlink_metadata().is_err(),
        "a guest's writes into the package directory never reach the host"
    );
    // Stopping the pool under a run ends the run, which says why.
    let mut long_run = project
        .command(&["--accel", "tcg", "run", "--pool", "1", "--"])
        .arg(&busybox)
        .args(["sleep", "300"])
        .current_dir(project.path().join("examples/linux/hello"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln");
    let leased = wait_for(Duration::from_secs(60), || {
        stdout_of(&project.command(&["vm", "ls"]).output().expect("kiln")).contains(" 1 leased, ")
    });
    assert!(leased, "the long run leased the pool's guest");
    let stop = project.command(&["vm", "stop", "--pools"]).output().expect("kiln");
    assert!(stop.status.success(), "{}", stderr_of(&stop));
    if !wait_for(Duration::from_secs(30), || long_run.try_wait().is_ok_and(|status| status.is_some())) {
        let _ = long_run.kill();
        panic!("the run did not end within 30 s of its pool's stop");
    }
    let long_run = long_run.wait_with_output().expect("kiln");
    assert_eq!(long_run.status.code(), Some(3), "{}", stderr_of(&long_run));
    assert!(stderr_of(&long_run).contains("its pool stopped during the run"), "{}", stderr_of(&long_run));
    assert!(wait_for(Duration::from_secs(5), || project.live_qemu_pids().is_empty()), "the pool's guests die with it");
}

/// A program that leaves a daemon holding its stdout and stderr (a `setsid` in the
/// background, as a test that starts a server does) ends when it ends, in every mode, with its
/// status; the host's package directory stays as it was after a rename in the guest (busybox
/// `mv` would copy where rename(2) fails: `process::` checks rename(2) itself); a restored
/// guest's clock is the host's.
#[test]
fn a_run_ends_with_its_program_whatever_it_leaves_running_on_a_guest_with_the_host_s_clock() {
    let project = Project::example(&linux_kiln_toml());
    let unpacked = tempfile::tempdir().expect("tempdir");
    let busybox = busybox(unpacked.path());
    let package = tempfile::tempdir().expect("package");
    std::fs::create_dir_all(package.path().join("testdata/nested")).expect("mkdir");
    std::fs::write(package.path().join("testdata/nested/input.txt"), "fixture\n").expect("write");
    let script = "mv testdata testdata.old && cat testdata.old/nested/input.txt && mkdir testdata; \
                  echo before; setsid sleep 600 & echo after; date +%s; exit 5";
    for mode in [&[][..], &["--snapshot"][..], &["--pool", "1"][..]] {
        let out = project
            .command(&["--accel", "tcg", "run", "--timeout", "120s"])
            .args(mode)
            .arg("--")
            .arg(&busybox)
            .args(["sh", "-c", script])
            .current_dir(package.path())
            .stdin(Stdio::null())
            .output()
            .expect("kiln");
        assert_eq!(out.status.code(), Some(5), "`kiln run {mode:?}`: {}", stderr_of(&out));
        let text = stdout_of(&out);
        let (said, clock) = text.rsplit_once("after\n").unwrap_or_default();
        assert_eq!(said, "fixture\nbefore\n", "`kiln run {mode:?}`: {text}{}", stderr_of(&out));
        // A restored guest's clock is the host's, not the time its snapshot was saved.
        let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let guest: u64 = clock.trim().parse().unwrap_or_else(|_| panic!("`kiln run {mode:?}`: no clock in {text}"));
        assert!(guest.abs_diff(host) < 60, "`kiln run {mode:?}`: the guest's clock says {guest}, the host's {host}");
        assert!(
            package.path().join("testdata/nested/input.txt").is_file(),
            "the host's package directory is untouched"
        );
        assert!(!package.path().join("testdata.old").exists(), "the rename stayed in the guest");
        assert!(!stderr_of(&out).contains("cannot map"), "restores map the snapshot's memory: {}", stderr_of(&out));
    }
    // The snapshot's memory, mapped by every restore: a sparse file of the guest's memory size
    // (1 GiB) of which only what the booted guest uses takes disk space.
    let mapped: Vec<_> = std::fs::read_dir(project.path().join("target/kiln/snapshots"))
        .expect("the mapped memories' directory")
        .flatten()
        .map(|dir| dir.path().join("memory"))
        .collect();
    assert_eq!(mapped.len(), 1, "{mapped:?}");
    let meta = std::fs::metadata(&mapped[0]).expect("the mapped memory");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(meta.len(), 1 << 30, "{}", mapped[0].display());
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "{} is not sparse: {} bytes on disk",
        mapped[0].display(),
        meta.blocks() * 512
    );
    // A trial restore with short stand-ins for the kernel (arm64's 32 MB Image) and the
    // initramfs worked, so restores pass those instead of the whole files.
    let stub = mapped[0].with_file_name("kernel-stub");
    assert!(std::fs::metadata(&stub).is_ok_and(|meta| meta.len() <= 1 << 20), "{}", stub.display());
    let stop = project.command(&["vm", "stop", "--pools"]).output().expect("kiln");
    assert!(stop.status.success(), "{}", stderr_of(&stop));
}

#[test]
fn a_package_directory_of_many_files_is_a_writable_view_in_snapshot_and_pool_runs() {
    let project = Project::example(&linux_kiln_toml());
    let unpacked = tempfile::tempdir().expect("tempdir");
    let busybox = busybox(unpacked.path());
    // A package as a crate with test data has it: more files than kiln puts one by one, a
    // subdirectory, a relative symlink, an executable script, a name with a space.
    let package = tempfile::tempdir().expect("package");
    let dir = package.path();
    for i in 0..24 {
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    std::fs::create_dir_all(dir.join("data/deep")).expect("mkdir");
    std::fs::write(dir.join("data/deep/with space.txt"), "spaced\n").expect("write");
    std::os::unix::fs::symlink("data/deep", dir.join("link")).expect("symlink");
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho script ran\n").expect("write");
    std::fs::set_permissions(dir.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let script = "cat f7.txt; cat 'link/with space.txt'; ./run.sh; echo changed > f3.txt; cat f3.txt; \
                  rm f5.txt; mkdir -p new && echo made > new/file; ls f*.txt | wc -l";
    for mode in [&["--snapshot"][..], &["--pool", "1"], &["--pool", "1"]] {
        let out = project
            .command(&["--accel", "tcg", "run"])
            .args(mode)
            .arg("--")
            .arg(&busybox)
            .args(["sh", "-c", script])
            .current_dir(dir)
            .output()
            .expect("kiln");
        assert!(out.status.success(), "{mode:?}: {}", stderr_of(&out));
        assert_eq!(
            stdout_of(&out),
            "file 7\nspaced\nscript ran\nchanged\n23\n",
            "{mode:?}: the guest sees the package and may write to it"
        );
    }
    // The host's package is as it was.
    assert_eq!(std::fs::read_to_string(dir.join("f3.txt")).expect("f3"), "file 3\n");
    assert!(dir.join("f5.txt").exists() && !dir.join("new").exists(), "no guest write reaches the host");
    let _ = project.command(&["vm", "stop", "--pools"]).output();
}

#[test]
fn sigkill_of_kiln_in_the_middle_of_eight_runs_leaves_no_qemu() {
    let project = Project::example(&linux_kiln_toml());
    let unpacked = tempfile::tempdir().expect("tempdir");
    let busybox = busybox(unpacked.path());
    // Make the snapshot first, so the eight runs only restore.
    let warm = project
        .command(&["--accel", "tcg", "run", "--snapshot", "--"])
        .arg(&busybox)
        .arg("true")
        .output()
        .expect("kiln");
    assert!(warm.status.success(), "{}", stderr_of(&warm));
    let mut children: Vec<_> = (0..8)
        .map(|_| {
            project
                .command(&["--accel", "tcg", "-j", "8", "run", "--snapshot", "--"])
                .arg(&busybox)
                .args(["sh", "-c", "echo started; sleep 600"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("kiln")
        })
        .collect();
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line, "started\n", "every run reached its program");
    }
    assert_eq!(project.live_qemu_pids().len(), 8, "eight guests run");
    for child in &mut children {
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }
    let gone = wait_for(Duration::from_secs(5), || project.live_qemu_pids().is_empty());
    assert!(gone, "QEMU processes left after SIGKILL: {:?}", project.live_qemu_pids());
}

#[test]
fn a_session_shares_state_syncs_deletions_and_ends_with_its_owner() {
    let project = Project::example(&linux_kiln_toml());
    let kiln = |args: &[&str]| {
        let output = project.command(args).output().expect("kiln");
        (output.status.code(), stdout_of(&output), stderr_of(&output))
    };
    let mut owner = Command::new("sleep").arg("600").spawn().expect("sleep");
    let owner_pid = owner.id().to_string();
    let (code, _, err) =
        kiln(&["--accel", "tcg", "vm", "start", "-n", "dev", "--arch", "aarch64", "--owner", &owner_pid]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Started session `dev` (aarch64"), "{err}");

    let (code, _, err) = kiln(&["vm", "exec", "-n", "dev", "--", "sh", "-c", "echo kept > /tmp/state"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = kiln(&["vm", "exec", "-n", "dev", "--", "cat", "/tmp/state"]);
    assert_eq!((code, out.as_str()), (Some(0), "kept\n"), "the second exec sees the first one's file: {err}");
    let (code, _, _) = kiln(&["vm", "exec", "-n", "dev", "--", "sh", "-c", "exit 6"]);
    assert_eq!(code, Some(6), "exec passes the status through");

    // Standard input goes along, and Ctrl-C stops the command in the guest, not just kiln.
    let mut cat = project
        .command(&["vm", "exec", "-n", "dev", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kiln");
    std::io::Write::write_all(cat.stdin.as_mut().expect("stdin"), b"piped in\n").expect("write");
    drop(cat.stdin.take());
    assert_eq!(stdout_of(&cat.wait_with_output().expect("cat")), "piped in\n");
    let mut looping = project
        .command(&["vm", "exec", "-n", "dev", "--", "sh", "-c", "echo looping; while true; do sleep 0.2; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kiln");
    let mut line = String::new();
    BufReader::new(looping.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line, "looping\n");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(looping.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let status = looping.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "the command died of the forwarded SIGINT");
    let (_, ps, _) = kiln(&["vm", "exec", "-n", "dev", "--", "ps", "-o", "args"]);
    assert!(!ps.contains("while true"), "nothing of it is left in the guest: {ps}");

    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path();
    std::fs::create_dir_all(root.join("src/deep")).expect("mkdir");
    std::fs::write(root.join("src/deep/gone.txt"), "doomed\n").expect("write");
    std::fs::write(root.join("keep.txt"), "v1\n").expect("write");
    std::os::unix::fs::symlink("keep.txt", root.join("link")).expect("symlink");
    let root_text = root.to_string_lossy().into_owned();
    let (code, _, err) = kiln(&["vm", "sync", "-n", "dev", &root_text]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("3 put"), "{err}");
    let listing = format!("cd {root_text} && find . -type f -o -type l | sort && cat link");
    let (_, out, _) = kiln(&["vm", "exec", "-n", "dev", "--", "sh", "-c", &listing]);
    assert_eq!(out, "./keep.txt\n./link\n./src/deep/gone.txt\nv1\n");

    std::fs::remove_file(root.join("src/deep/gone.txt")).expect("rm");
    std::fs::write(root.join("keep.txt"), "v2\n").expect("write");
    let (code, _, err) = kiln(&["vm", "sync", "-n", "dev", &root_text]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Removed src/deep/gone.txt") && err.contains("1 put") && err.contains("1 removed"), "{err}");
    let (_, out, _) = kiln(&["vm", "exec", "-n", "dev", "--", "sh", "-c", &listing]);
    assert_eq!(out, "./keep.txt\n./link\nv2\n", "the deletion reached the guest, emptied directories too");
    let (code, _, err) = kiln(&["vm", "sync", "-n", "dev", &root_text]);
    assert!(code == Some(0) && err.contains("0 put") && err.contains("2 unchanged"), "{err}");

    let mut shell = project
        .command(&["vm", "shell", "-n", "dev"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln");
    std::io::Write::write_all(shell.stdin.as_mut().expect("stdin"), b"cat /tmp/state\necho $((6 * 7))\nexit 5\n")
        .expect("write");
    let output = shell.wait_with_output().expect("shell");
    assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
    let out = stdout_of(&output);
    assert!(out.contains("kept") && out.contains("42"), "{out}");

    let (_, ls, _) = kiln(&["vm", "ls"]);
    assert!(ls.starts_with("session  dev"), "{ls}");
    let (code, _, err) = kiln(&["vm", "stop", "-n", "dev"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(wait_for(Duration::from_secs(5), || project.live_qemu_pids().is_empty()), "stop kills the guest");
    // Nothing running: an empty list on stdout, and stderr says so (a user cache of its own,
    // so no built-in runner pool of this host's user is listed).
    let no_cache = tempfile::tempdir().expect("tempdir");
    let listed = project.command(&["vm", "ls"]).env("XDG_CACHE_HOME", no_cache.path()).output().expect("kiln");
    assert!(stdout_of(&listed).is_empty(), "{}", stdout_of(&listed));
    assert!(stderr_of(&listed).contains("no sessions or pools are running"), "{}", stderr_of(&listed));
    let (code, _, err) = kiln(&["vm", "exec", "-n", "dev", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no session `dev` is running"), "{err}");

    // A session dies with its owner.
    let (code, _, err) =
        kiln(&["--accel", "tcg", "vm", "start", "-n", "owned", "--arch", "aarch64", "--owner", &owner_pid]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(project.live_qemu_pids().len(), 1);
    owner.kill().expect("kill the owner");
    owner.wait().expect("wait");
    assert!(
        wait_for(Duration::from_secs(10), || project.live_qemu_pids().is_empty()),
        "the session ends with its owner"
    );
}

#[test]
fn a_crates_doctests_and_test_binaries_pass_through_kiln_run() {
    let project = Project::example(&linux_kiln_toml());
    let krate = tempfile::Builder::new().prefix("kiln-doctests-").tempdir().expect("tempdir");
    kiln::testing::synthetic_crate(krate.path(), 100, 10).expect("crate");
    let kiln = env!("CARGO_BIN_EXE_kiln-it");
    let config = project.path().join("Kiln.toml");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--target", "aarch64-unknown-linux-musl"])
        .current_dir(krate.path())
        .env("CARGO_TARGET_DIR", krate.path().join("target"))
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER",
            format!("{kiln} --config {} --accel tcg run --pool 2 --", config.display()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .expect("cargo");
    let out = stdout_of(&output);
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{}", stderr_of(&output));
    assert!(out.contains("test result: ok. 100 passed"), "the doctests ran (in aarch64 guests): {out}");
    assert_eq!(out.matches("test adds_in_the_guest ... ok").count(), 10, "{out}");
    // What remains is the pool's idle guests, which stop with it.
    let stop = project.command(&["vm", "stop", "--pools"]).output().expect("kiln");
    assert!(stop.status.success(), "{}", stderr_of(&stop));
    assert!(wait_for(Duration::from_secs(5), || project.live_qemu_pids().is_empty()), "no VM is left");
}
