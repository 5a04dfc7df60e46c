//! The CI benchmark, end to end on a simulated fresh runner: kiln's own repository (its
//! `cargo xtask` and the bundled example) run through the action for x86_64 three times, each
//! on a new runner (no target directories, an empty `CARGO_HOME`, an empty kiln user cache),
//! with only the cache service carrying anything over: cold (empty cache: cargo's registry
//! downloaded, the xtask compiled, every kernel and image built), no change, and one edit of
//! the example kernel's source. The QEMU install step runs (it finds QEMU installed here and
//! says so; an apt install is not timed). Prints the three times and cold / no-change (the
//! goal is 5x or more); fails when the no-change run compiles or builds anything.
//!
//! Run it with `cargo bench -p kiln-integration-tests --bench ci`.

#[allow(dead_code)]
#[path = "../it/action_sim.rs"]
mod action_sim;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use action_sim::{Job, JobRun, LocalCache, action};
use support::{copy_tree, repo_root};

/// What a checkout of kiln holds that the xtask and the example need (the workspace's
/// members, its manifests and lock file, the alias, Kiln.toml and the example).
const CHECKOUT: &[&str] = &["Cargo.toml", "Cargo.lock", "Kiln.toml", ".cargo", "xtask", "crates", "tests", "examples"];

/// The workspace's files as a fresh checkout has them.
fn checkout(to: &Path) {
    for name in CHECKOUT {
        let from = repo_root().join(name);
        if from.is_dir() {
            copy_tree(&from, &to.join(name));
        } else {
            std::fs::copy(&from, to.join(name)).expect("copy a checkout file");
        }
    }
}

/// A new runner: the checkout stays; target directories, cargo's home and kiln's user cache go.
fn fresh_runner(repo: &Path, runner: &Path) {
    for dir in [repo.join("target"), repo.join("examples/target"), runner.to_owned()] {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(runner.join("cargo-home")).expect("CARGO_HOME");
    std::fs::create_dir_all(runner.join("cache")).expect("XDG_CACHE_HOME");
}

/// One job: the default inputs (`cargo xtask`, QEMU installed by the action, the tool and the
/// store cached), x86_64, a push to the default branch.
fn job(repo: &Path, runner: &Path, cache: &LocalCache, artifacts: &Path) -> (JobRun, Duration) {
    fresh_runner(repo, runner);
    let job = Job::with_inputs(&[("arch", "x86_64")])
        .env("CARGO_HOME", &runner.join("cargo-home").display().to_string())
        .env("XDG_CACHE_HOME", &runner.join("cache").display().to_string())
        .env("KILN_ACCEL", "tcg");
    let started = Instant::now();
    let run = action().run(repo, &job, cache, artifacts);
    let took = started.elapsed();
    assert!(!run.failed, "{}", run.log);
    (run, took)
}

/// One run's time and how its caches matched.
fn line(name: &str, run: &JobRun, took: Duration) -> String {
    format!(
        "{name:<16} {:>8.1}s  tool {:<7} store {:<7} built {:>2}  cached {:>2}  cache transfer {:.1}s",
        took.as_secs_f64(),
        run.outputs["tool-cache-hit"],
        run.outputs["cache-hit"],
        run.outputs["built"],
        run.outputs["cached"],
        run.cache_time.as_secs_f64()
    )
}

fn main() {
    let repo = tempfile::Builder::new().prefix("kiln-ci-bench-").tempdir().expect("tempdir");
    checkout(repo.path());
    let runner = tempfile::tempdir().expect("runner home");
    let runner = runner.path().join("runner");
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache::new(cache_dir.path());
    let artifacts = tempfile::tempdir().expect("artifacts");

    let (cold, cold_time) = job(repo.path(), &runner, &cache, artifacts.path());
    assert_eq!(cold.outputs["tool-cache-hit"], "miss", "{}", cold.log);
    let (warm, warm_time) = job(repo.path(), &runner, &cache, artifacts.path());
    assert_eq!(warm.outputs["tool-cache-hit"], "exact", "the tool is not compiled: {}", warm.log);
    assert_eq!(warm.outputs["cache-hit"], "exact", "{}", warm.log);
    assert_eq!(warm.outputs["built"], "0", "nothing is built: {}", warm.log);
    let source = repo.path().join("examples/kernel/src/main.rs");
    let mut text = std::fs::read_to_string(&source).expect("the example kernel");
    text.push_str("// edited in CI\n");
    std::fs::write(&source, text).expect("edit the example kernel");
    let (edit, edit_time) = job(repo.path(), &runner, &cache, artifacts.path());
    assert_eq!(edit.outputs["tool-cache-hit"], "exact", "a kernel edit is no tool edit: {}", edit.log);

    println!("simulated CI, kiln's repository, x86_64, each run on a fresh runner:");
    println!("{}", line("cold", &cold, cold_time));
    println!("{}", line("no change", &warm, warm_time));
    println!("{}", line("one kernel edit", &edit, edit_time));
    println!("cold / no change: {:.1}x (goal: 5x or more)", cold_time.as_secs_f64() / warm_time.as_secs_f64());
    let mut entries = cache.entries();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    for entry in entries {
        println!("cache entry {:>9.1} MiB  {}", entry.size as f64 / f64::from(1 << 20), entry.key);
    }
    for (name, run) in [("cold", &cold), ("no change", &warm), ("one kernel edit", &edit)] {
        let mut steps: Vec<&(String, Duration)> = run.step_times.iter().filter(|(_, t)| t.as_millis() >= 100).collect();
        steps.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        let steps: Vec<String> = steps.iter().map(|(step, t)| format!("{step} {:.1}s", t.as_secs_f64())).collect();
        println!("{name}: {}", steps.join(", "));
    }
    let qemu = cold.log.lines().find(|l| l.starts_with("QEMU for")).unwrap_or("QEMU install step: no line");
    println!("install step: {qemu} (preinstalled on this machine; an apt install is not timed)");
}
