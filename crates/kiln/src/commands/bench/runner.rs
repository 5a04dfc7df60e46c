//! `bench --suite runner`: `kiln run` as cargo's target runner against user-mode QEMU
//! (`qemu-aarch64`, installed here like any host tool), side by side in one run on aarch64:
//! a trivial program (pooled, from a snapshot, booting cold); a program making 100,000
//! `write(2)`s (pooled), what a syscall costs in the guest; `cargo test` of a doctest-heavy
//! crate (100 doctests and 10 integration-test binaries) through the pool and through
//! snapshots; and `cargo nextest run`, one process per test, of a crate with 300 tests through
//! a pool sized from nextest's `-j`. Trivial runs give the median of `--runs`; whole cargo
//! runs the median of up to three, the baseline's likewise.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_types::Arch;

use super::Measured;
use crate::{
    cli::BenchArgs,
    cx::Cx,
    exec::{Missing, tool_command},
    plan::{Plan, Selection},
};

/// The triple every row builds for.
const TRIPLE: &str = "aarch64-unknown-linux-musl";

/// Runs the runner rows.
pub(super) fn run(cx: &Cx, args: &BenchArgs) -> anyhow::Result<()> {
    if !args.arch.is_empty() && !args.arch.contains(&Arch::Aarch64) {
        cx.printer().status("Skipping", "the runner suite: it measures aarch64 programs");
        return Ok(());
    }
    if !cx.config().kernels.values().any(|kernel| kernel.arches.contains(&Arch::Aarch64)) {
        cx.printer().status("Skipping", "the runner suite: Kiln.toml declares no Linux kernel for aarch64");
        return Ok(());
    }
    install_baselines(cx)?;
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n`kiln run` as cargo's runner against qemu-user (aarch64, TCG; -j {jobs})")?;
    writeln!(out, "{:<50} {:>9} {:>10} {:>8} {:>7}", "what", "kiln", "qemu-user", "kiln/qu", "goal")?;

    let program = trivial_program(cx)?;
    let empty = tempfile::tempdir()?;
    let runs = usize::from(args.runs);
    let qemu_user = || {
        let mut command = Command::new("qemu-aarch64");
        command.arg(&program);
        Ok(command)
    };
    let user_mode = measure(runs, qemu_user, empty.path(), false)?;
    let pooled = measure(runs, || kiln_run(cx, &["--pool", "1"], &program), empty.path(), true)?;
    stop_pools(cx)?;
    let snapshot = measure(runs, || kiln_run(cx, &["--snapshot"], &program), empty.path(), false)?;
    let cold = measure(runs, || kiln_run(cx, &[], &program), empty.path(), false)?;
    let trivial = "`kiln run` trivial program";
    line(&mut out, &format!("{trivial}, pooled"), &pooled, &user_mode, Goal::Seconds(0.1))?;
    line(&mut out, &format!("{trivial}, from a snapshot"), &snapshot, &user_mode, Goal::Seconds(0.3))?;
    line(&mut out, &format!("{trivial}, booting cold"), &cold, &user_mode, Goal::None)?;

    // What a syscall costs: under TCG the guest kernel's side runs emulated, where qemu-user
    // runs it natively.
    let syscalls = CargoCrate::new("kiln-syscalls-", |dir| syscalls_crate(dir, SYSCALLS))?;
    syscalls
        .run(&["build", "--quiet", "--release", "--target", TRIPLE], "qemu-aarch64")
        .context("building the syscall program")?;
    let program = syscalls.dir.path().join("target").join(TRIPLE).join("release/kiln-syscalls");
    let user_mode = measure(
        runs,
        || {
            let mut command = Command::new("qemu-aarch64");
            command.arg(&program);
            Ok(command)
        },
        empty.path(),
        false,
    )?;
    let pooled = measure(runs, || kiln_run(cx, &["--pool", "1"], &program), empty.path(), true)?;
    stop_pools(cx)?;
    line(&mut out, &format!("{SYSCALLS} write(2)s of one byte, pooled"), &pooled, &user_mode, Goal::None)?;

    // Whole `cargo` runs: the median of up to three (the first pooled one starts the pool).
    let samples = runs.min(CARGO_SAMPLES);
    let doctests = CargoCrate::new("kiln-doctests-", |dir| super::warm::synthetic_crate(dir, 100, 10))?;
    let test = ["test", "--quiet", "--target", TRIPLE];
    doctests.run(&test, "qemu-aarch64").context("building the doctest crate")?;
    let user_mode = doctests.measured(samples, &test, "qemu-aarch64")?;
    let pool_runner = runner_line(cx, &["--pool", &jobs.to_string()])?;
    let pooled = doctests.measured(samples, &test, &pool_runner)?;
    stop_pools(cx)?;
    let snapshot = doctests.measured(samples, &test, &runner_line(cx, &["--snapshot"])?)?;
    let what = "cargo test, 100 doctests + 10 test binaries";
    line(&mut out, &format!("{what}, pool"), &pooled, &user_mode, Goal::Ratio(2.0))?;
    line(&mut out, &format!("{what}, snapshot"), &snapshot, &user_mode, Goal::Ratio(3.0))?;

    let many = CargoCrate::new("kiln-many-tests-", |dir| many_tests_crate(dir, 240, 60))?;
    let jobs_arg = jobs.to_string();
    let nextest = ["nextest", "run", "--target", TRIPLE, "-j", &jobs_arg, "--no-fail-fast"];
    many.run(&nextest, "qemu-aarch64").context("building the 300-test crate")?;
    let user_mode = many.measured(samples, &nextest, "qemu-aarch64")?;
    let pooled = many.measured(samples, &nextest, &pool_runner)?;
    stop_pools(cx)?;
    line(&mut out, "cargo nextest run, 300 tests, pool of -j", &pooled, &user_mode, Goal::Ratio(3.0))?;
    writeln!(out, "kiln/qu = kiln's time / qemu-user's; goal: kiln's time, or that ratio")?;
    Ok(())
}

/// qemu-user (the baseline) and cargo-nextest (the nextest row's test runner), installed
/// when missing.
fn install_baselines(cx: &Cx) -> anyhow::Result<()> {
    if crate::host::find_program("qemu-aarch64").is_none() {
        cx.executor().ensure(vec![Missing::Package {
            package: "qemu-user",
            needed_for: "`qemu-aarch64`, the user-mode baseline of `bench --suite runner`".to_owned(),
        }])?;
    }
    if crate::host::find_program("cargo-nextest").is_none() {
        cx.printer().status("Installing", "cargo-nextest (cargo install --locked), the nextest row's test runner");
        let status = tool_command("cargo", Path::new("."))
            .args(["install", "--locked", "--quiet", "cargo-nextest"])
            .status()
            .context("cannot run `cargo install cargo-nextest`")?;
        anyhow::ensure!(status.success(), "`cargo install --locked cargo-nextest` failed; install it and run again");
    }
    Ok(())
}

/// How many times a whole `cargo test` or `cargo nextest run` row is timed, at most.
const CARGO_SAMPLES: usize = 3;

/// What a row is held to.
enum Goal {
    None,
    /// kiln's time at most this many seconds.
    Seconds(f64),
    /// kiln's time at most this multiple of qemu-user's.
    Ratio(f64),
}

/// One row: kiln's median, qemu-user's, kiln's over qemu-user's, and the goal with whether it
/// was met.
fn line(out: &mut impl std::io::Write, what: &str, kiln: &Measured, base: &Measured, goal: Goal) -> anyhow::Result<()> {
    let cell = |m: &Measured| match m.median() {
        Some(d) if m.failures == 0 => format!("{:.3}s", d.as_secs_f64()),
        Some(d) => format!("{:.3}s*", d.as_secs_f64()),
        None => "failed".to_owned(),
    };
    let (kiln_s, base_s) = (kiln.median().map(|d| d.as_secs_f64()), base.median().map(|d| d.as_secs_f64()));
    let ratio = match (kiln_s, base_s) {
        (Some(k), Some(b)) if b > 0.0 => Some(k / b),
        _ => None,
    };
    let mark = |met: bool| if met { "" } else { " (missed)" };
    let goal = match (goal, kiln_s, ratio) {
        (Goal::None, ..) => "-".to_owned(),
        (Goal::Seconds(limit), Some(k), _) => format!("<={limit}s{}", mark(k <= limit)),
        (Goal::Ratio(limit), _, Some(r)) => format!("<={limit}x{}", mark(r <= limit)),
        (Goal::Seconds(limit), None, _) => format!("<={limit}s (failed)"),
        (Goal::Ratio(limit), _, None) => format!("<={limit}x (failed)"),
    };
    let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
    writeln!(out, "{what:<50} {:>9} {:>10} {ratio:>8} {goal:>7}", cell(kiln), cell(base))?;
    Ok(())
}

/// `runs` timed runs of the command `make` gives, in `dir` with stdout discarded; with
/// `pause`, a pause before each so a pool refills, as it does between a developer's runs.
fn measure(
    runs: usize,
    make: impl Fn() -> anyhow::Result<Command>,
    dir: &Path,
    pause: bool,
) -> anyhow::Result<Measured> {
    let mut measured = Measured { times: Vec::new(), failures: 0 };
    // One run first, not timed: it starts a pool, or makes the snapshot.
    let _ = make()?.current_dir(dir).stdout(std::process::Stdio::null()).status();
    for _ in 0..runs {
        if pause {
            std::thread::sleep(Duration::from_millis(2500));
        }
        let started = Instant::now();
        let status = make()?
            .current_dir(dir)
            .env_remove(crate::env::CARGO_MANIFEST_DIR)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot start the program")?;
        if status.success() { measured.times.push(started.elapsed()) } else { measured.failures += 1 }
    }
    Ok(measured)
}

/// `kiln [global] run EXTRA -- PROGRAM`, for this project.
fn kiln_run(cx: &Cx, extra: &[&str], program: &Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
    let mut command = Command::new(exe);
    command.arg("--config").arg(&cx.config().file).args(["-q", "run"]).args(extra).arg("--").arg(program);
    Ok(command)
}

/// The runner line cargo gets: this kiln, this project, `run EXTRA --`.
fn runner_line(cx: &Cx, extra: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
    Ok(format!("{} --config {} -q run {} --", exe.display(), cx.config().file.display(), extra.join(" ")))
}

pub(super) fn stop_pools(cx: &Cx) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
    Command::new(exe)
        .arg("--config")
        .arg(&cx.config().file)
        .args(["-q", "vm", "stop", "--pools"])
        .status()
        .context("cannot stop the run pools")?;
    Ok(())
}

/// A static aarch64 Linux program of this project (the example's `hello-linux`).
fn trivial_program(cx: &Cx) -> anyhow::Result<PathBuf> {
    let name = cx
        .config()
        .artifacts
        .values()
        .find(|a| a.targets.get(&Arch::Aarch64).is_some_and(|t| t.contains("linux-musl")))
        .map(|a| a.name.clone())
        .ok_or_else(|| anyhow::anyhow!("Kiln.toml has no aarch64 linux-musl artifact for the trivial-program rows"))?;
    let plan = Plan::for_build(
        cx.config(),
        &Selection { arches: vec![Arch::Aarch64], names: vec![name], ..Selection::default() },
    );
    let built = cx.realise_builds(&plan)?;
    built.values().next().map(|b| b.image().to_owned()).context("the trivial program was not built")
}

/// A generated crate in a temporary directory, with its own target directory.
struct CargoCrate {
    dir: tempfile::TempDir,
}

impl CargoCrate {
    fn new(prefix: &str, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        write(dir.path())?;
        Ok(Self { dir })
    }

    /// `cargo ARGS` with `runner` as the target's runner; fails with cargo's output.
    fn run(&self, args: &[&str], runner: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = tool_command("cargo", self.dir.path())
            .args(args)
            .env("CARGO_TARGET_DIR", self.dir.path().join("target"))
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER", runner)
            .output()
            .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            anyhow::bail!(
                "`cargo {}` with the runner `{runner}` failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(elapsed)
    }

    /// `samples` timed `cargo ARGS`, as a row cell (a failure is shown, with cargo's output
    /// on stderr, and the other rows still run).
    fn measured(&self, samples: usize, args: &[&str], runner: &str) -> anyhow::Result<Measured> {
        let mut measured = Measured { times: Vec::new(), failures: 0 };
        for _ in 0..samples {
            match self.run(args, runner) {
                Ok(elapsed) => measured.times.push(elapsed),
                Err(err) => {
                    eprintln!("{err:#}");
                    measured.failures += 1;
                    break;
                }
            }
        }
        Ok(measured)
    }
}

/// How many `write(2)`s the syscall row's program makes.
const SYSCALLS: usize = 100_000;

/// Writes a crate named `kiln-syscalls` into `dir`: a program that writes one byte to
/// `/dev/null` `count` times, each a `write(2)` of its own.
fn syscalls_crate(dir: &Path, count: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create `{}`", dir.display()))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"kiln-syscalls\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n",
    )
    .with_context(|| format!("cannot write `{}`", dir.join("Cargo.toml").display()))?;
    let main = format!(
        "//! Generated by `kiln bench`: one `write(2)` per byte.\n\
         use std::io::Write as _;\n\n\
         fn main() {{\n    \
             let mut null = std::fs::OpenOptions::new().write(true).open(\"/dev/null\").unwrap();\n    \
             for _ in 0..{count} {{\n        null.write_all(b\"x\").unwrap();\n    }}\n\
         }}\n"
    );
    std::fs::write(dir.join("src/main.rs"), main).with_context(|| format!("cannot write `{}`", dir.display()))
}

/// Writes a crate named `kiln-many-tests` into `dir`: `unit` unit tests in the library and
/// `integration` tests in one integration-test file, each doing a little of what real suites
/// do (a file written and read back in a directory of its own, a thread, the environment).
pub(crate) fn many_tests_crate(dir: &Path, unit: usize, integration: usize) -> anyhow::Result<()> {
    let write = |relative: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))
    };
    write(
        "Cargo.toml",
        "[package]\nname = \"kiln-many-tests\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n",
    )?;
    let mut lib = String::from(
        "//! Generated by `kiln bench`: many small tests, one process each under nextest.\n\n\
         use std::path::PathBuf;\n\n\
         /// Writes `len` bytes of `byte` into a fresh directory, reads them back and sums them\n\
         /// on another thread.\n\
         pub fn round_trip(tag: &str, byte: u8, len: usize) -> u64 {\n    \
             let dir: PathBuf = std::env::temp_dir().join(format!(\"kiln-many-{}-{tag}\", std::process::id()));\n    \
             std::fs::create_dir_all(&dir).unwrap();\n    \
             let file = dir.join(\"data\");\n    \
             std::fs::write(&file, vec![byte; len]).unwrap();\n    \
             let read = std::fs::read(&file).unwrap();\n    \
             std::fs::remove_dir_all(&dir).unwrap();\n    \
             std::thread::spawn(move || read.iter().map(|b| u64::from(*b)).sum()).join().unwrap()\n\
         }\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n",
    );
    for i in 0..unit {
        lib.push_str(&format!(
            "    #[test]\n    fn unit_{i}() {{\n        assert_eq!(round_trip(\"u{i}\", {b}, 4096), 4096 * {b});\n        \
             assert!(std::env::var(\"CARGO_PKG_NAME\").is_ok() || std::env::var(\"PATH\").is_ok());\n    }}\n\n",
            b = i % 256
        ));
    }
    lib.push_str("}\n");
    write("src/lib.rs", &lib)?;
    let mut tests = String::from("use kiln_many_tests::round_trip;\n\n");
    for i in 0..integration {
        tests.push_str(&format!(
            "#[test]\nfn integration_{i}() {{\n    assert_eq!(round_trip(\"i{i}\", {b}, 65536), 65536 * {b});\n}}\n\n",
            b = i % 256
        ));
    }
    write("tests/api.rs", &tests)?;
    Ok(())
}
