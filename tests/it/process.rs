//! `kiln run` keeps a program's process semantics. `tests/fixtures/linecount` (a small CLI
//! crate: reads stdin, interleaves stdout and stderr lines, aborts on empty input with
//! `--check`, sends a statsd datagram to an unroutable address, and has doctests that write
//! into `.`) is built for x86_64-unknown-linux-musl, so the same binary runs natively here
//! and in x86_64 guests: under `kiln run` in each mode (plain, snapshot, pool) every run must
//! match the native run: status (a death by SIGABRT included), stdout, stderr, and their
//! order when they are one file. `cargo test` of the crate with kiln as its runner passes in
//! each mode (its integration tests find the crate's binary by cargo's `CARGO_BIN_EXE_*` path
//! and by their own path, write into `CARGO_TARGET_TMPDIR`, and read the build script's
//! `OUT_DIR` and variables), and what the doctests write into the package directory never
//! reaches the host.

use std::{
    io::{Read as _, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    linux::{linux_kiln_toml, stderr_of, stdout_of},
    support::{Project, copy_tree, repo_root},
};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// The fixture crate in a temp dir, with its release binary built for [`TARGET`].
fn linecount() -> (tempfile::TempDir, PathBuf) {
    let krate = tempfile::Builder::new().prefix("kiln-linecount-").tempdir().expect("tempdir");
    copy_tree(&repo_root().join("tests/fixtures/linecount"), krate.path());
    let built = cargo(krate.path()).args(["build", "--release", "--target", TARGET]).output().expect("cargo");
    assert!(built.status.success(), "{}", stderr_of(&built));
    let binary = krate.path().join("target").join(TARGET).join("release/linecount");
    (krate, binary)
}

fn cargo(dir: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}

/// How one run ended and what it wrote.
#[derive(Debug, PartialEq, Eq)]
struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `input` on stdin (`None`: /dev/null); `merged` gives it one pipe for
/// stdout and stderr, as `2>&1` does.
fn ran(command: Command, input: Option<&str>, merged: bool) -> Ran {
    ran_with_a_reader_after(command, input, merged, Duration::ZERO)
}

/// [`ran`], with a reader that starts reading the output `delay` after the start (a slow
/// reader, as `| (sleep 2; cat)` is): stdin is written meanwhile.
fn ran_with_a_reader_after(mut command: Command, input: Option<&str>, merged: bool, delay: Duration) -> Ran {
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut merged_reader = None;
    if merged {
        let (reader, writer) = std::io::pipe().expect("pipe");
        command.stdout(writer.try_clone().expect("dup")).stderr(writer);
        merged_reader = Some(reader);
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = command.spawn().expect("spawn");
    drop(command);
    let writer = input.map(|input| {
        let (mut stdin, input) = (child.stdin.take().expect("stdin"), input.to_owned());
        std::thread::spawn(move || stdin.write_all(input.as_bytes()).expect("write stdin"))
    });
    std::thread::sleep(delay);
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut reader) = merged_reader {
        reader.read_to_string(&mut stdout).expect("read");
    } else {
        // Both at once: a program that fills one pipe while the other is read would wait.
        let mut err = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            err.read_to_string(&mut text).expect("read");
            text
        });
        child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read");
        stderr = reader.join().expect("the stderr reader");
    }
    let status = child.wait().expect("wait");
    if let Some(writer) = writer {
        writer.join().expect("the stdin writer");
    }
    Ran { code: status.code(), signal: status.signal(), stdout, stderr }
}

#[test]
fn a_program_behaves_under_kiln_run_as_it_does_natively() {
    let project = Project::example(&linux_kiln_toml());
    let (krate, binary) = linecount();
    // `--history history` renames the crate's own `history/` directory (rename(2) of a
    // directory of the package directory: EXDEV on an overlay without redirect_dir).
    // The history directory is in the crate's `.gitignore` (the guest sees it all the same),
    // and `LINECOUNT_TOTALS` is a variable of the user's (the guest gets it).
    let runs: [(&[&str], Option<&str>, bool, &str); 7] = [
        (&["--verbose"], Some("one two\nthree\n\nfour five six\n"), true, ""),
        (&["--verbose"], Some("one two\nthree\n"), false, ""),
        (&["--check"], None, false, ""),
        (&["--check"], None, true, ""),
        (&["--statsd", "192.0.2.1:8125"], Some("x y\n"), false, ""),
        (&["--history", "history"], Some("x y\n"), false, ""),
        (&[], Some("x y\n"), false, "json"),
    ];
    for mode in [&[][..], &["--snapshot"][..], &["--pool", "1"][..]] {
        for (args, input, merged, totals) in runs {
            // The guest first: the native run appends to the host's history, the guest's never.
            let mut kiln = project.command(&["-q", "--accel", "tcg", "run"]);
            kiln.args(mode).arg("--").arg(&binary).args(args).current_dir(krate.path()).env("LINECOUNT_TOTALS", totals);
            let guest = ran(kiln, input, merged);
            let mut native = Command::new(&binary);
            native.args(args).current_dir(krate.path()).env("LINECOUNT_TOTALS", totals);
            let native = ran(native, input, merged);
            assert_eq!(
                guest, native,
                "linecount {args:?} (stdin {input:?}, merged {merged}, LINECOUNT_TOTALS={totals:?}) under `kiln run {mode:?}`"
            );
        }
    }
    // 5 MB of output, 5000 lines on each stream, read only after 6 s (the guest boots in about 2): nothing is lost while
    // the reader lags (a fresh guest's virtio consoles dropped what a full pipe refused).
    let big: String = (0..5000).map(|i| format!("{i} {}\n", "x".repeat(1000))).collect();
    for merged in [false, true] {
        let mut native = Command::new(&binary);
        native.arg("--verbose").current_dir(krate.path());
        let native = ran_with_a_reader_after(native, Some(&big), merged, Duration::from_secs(6));
        let mut kiln = project.command(&["-q", "--accel", "tcg", "run", "--pool", "0", "--"]);
        kiln.arg(&binary).arg("--verbose").current_dir(krate.path());
        let guest = ran_with_a_reader_after(kiln, Some(&big), merged, Duration::from_secs(6));
        assert_eq!(native.stdout.lines().count(), if merged { 10_001 } else { 5001 });
        assert!(
            guest == native,
            "a slow reader of `linecount --verbose` (merged {merged}) got {} lines of stdout, {} of stderr; natively {} and {}",
            guest.stdout.lines().count(),
            guest.stderr.lines().count(),
            native.stdout.lines().count(),
            native.stderr.lines().count()
        );
    }

    let mut check = Command::new(&binary);
    check.arg("--check");
    assert_eq!(ran(check, None, false).signal, Some(6), "the native run the guest's is compared with dies by SIGABRT");

    // The crate's own tests with kiln as the runner: the doctests write `.linecount-cache`
    // into the package directory, which is writable in the guest and unchanged on the host;
    // `tests/cli.rs` runs the crate's binary by the path cargo gives it
    // (`CARGO_BIN_EXE_linecount`) and by the test's own path (`current_exe()`, as ripgrep's
    // tests find `rg`), writes into `CARGO_TARGET_TMPDIR`, reads its build script's `OUT_DIR`
    // and the variable the script set; in a target directory inside the package (which the
    // guest's view of the package leaves out) and outside it (as a workspace's is).
    let kiln = env!("CARGO_BIN_EXE_kiln-it");
    let config = project.path().join("Kiln.toml");
    let outside = tempfile::tempdir().expect("tempdir");
    for (mode, target_dir) in
        [("", outside.path()), ("--snapshot", &krate.path().join("target")), ("--pool 1", outside.path())]
    {
        let output = cargo(krate.path())
            .args(["test", "--target", TARGET])
            .env("CARGO_TARGET_DIR", target_dir)
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUNNER",
                format!("{kiln} --config {} --accel tcg run {mode} --", config.display()),
            )
            .output()
            .expect("cargo");
        let out = stdout_of(&output);
        assert!(output.status.success(), "`kiln run {mode}`: stdout:\n{out}\nstderr:\n{}", stderr_of(&output));
        assert_eq!(
            (out.matches("test result: ok. 2 passed").count(), out.matches("test result: ok. 5 passed").count()),
            (2, 1),
            "the unit tests, the doctests and the command-line tests ran: {out}"
        );
        assert!(!krate.path().join(".linecount-cache").exists(), "`kiln run {mode}` wrote to the host's package dir");
    }
    let stop = project.command(&["vm", "stop", "--pools"]).output().expect("kiln");
    assert!(stop.status.success(), "{}", stderr_of(&stop));
}

/// The scratch directories of `kiln run` processes with this pid.
fn scratch_of(pid: u32) -> Vec<PathBuf> {
    let base = std::env::temp_dir().join(format!("kiln-{}", nix::unistd::getuid())).join("scratch");
    let prefix = format!("run-{pid}-");
    std::fs::read_dir(&base)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_run_stopped_by_a_signal_leaves_no_scratch_directory() {
    let project = Project::example(&linux_kiln_toml());
    let (krate, binary) = linecount();
    use nix::sys::signal::Signal;
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL] {
        // linecount reads stdin until it ends: a pipe kept open keeps it running.
        let mut kiln = project.command(&["-q", "--accel", "tcg", "run", "--", &binary.display().to_string()]);
        let mut child = kiln
            .current_dir(krate.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kiln");
        let started = Instant::now();
        while scratch_of(child.id()).is_empty() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!scratch_of(child.id()).is_empty(), "the run made its scratch directory");
        // Let the guest boot, so the signal lands while QEMU runs.
        std::thread::sleep(Duration::from_secs(2));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(signal as i32), "kiln dies by the signal it got");
        if signal != Signal::SIGKILL {
            assert!(scratch_of(child.id()).is_empty(), "{signal}: the scratch directory is removed");
            continue;
        }
        assert!(!scratch_of(child.id()).is_empty(), "SIGKILL leaves it, until the next run");
        let next = project
            .command(&["-q", "--accel", "tcg", "run", "--", &binary.display().to_string()])
            .current_dir(krate.path())
            .stdin(Stdio::null())
            .output()
            .expect("kiln");
        assert!(next.status.success(), "{}", stderr_of(&next));
        assert!(scratch_of(child.id()).is_empty(), "the next run swept the killed run's scratch directory");
    }
}
