//! The simulated CI benchmark: the bundled example's x86_64 job run twice by the action on a
//! fresh runner (empty target directories), the second restoring the first's store, against
//! caching cargo's target directories the naive way (tar | zstd). Run it with
//! `cargo bench -p kiln-integration-tests --bench ci`; it prints the timings, and fails when
//! the second run builds anything.

#[allow(dead_code)]
#[path = "../it/action_sim.rs"]
mod action_sim;
#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::{process::Command, time::Instant};

use action_sim::{LocalCache, fresh_runner, run, untar};
use support::{Project, repo_root};

fn main() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache { dir: cache_dir.path().to_owned() };
    let artifacts = tempfile::tempdir().expect("artifacts");
    // x86_64: the bare-metal and the Linux cases, so the store holds a kernel and a rootfs.
    let x86 = [("arch", "x86_64")];
    fresh_runner(&project);
    let started = Instant::now();
    let first = run(&project, &cache, artifacts.path(), &x86);
    let first_time = started.elapsed();
    // What a cache of cargo's target directories (the naive way) would move instead.
    let naive = tempfile::tempdir().expect("naive");
    let started = Instant::now();
    let archive = naive.path().join("target.tar.zst");
    let status = Command::new("tar")
        .args(["-I", "zstd -T0", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(project.path())
        .args(["target", "examples/target"])
        .status()
        .expect("tar");
    assert!(status.success());
    untar(&archive, &naive.path().join("out"));
    let naive_time = started.elapsed();
    let naive_size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    fresh_runner(&project);
    let started = Instant::now();
    let second = run(&project, &cache, artifacts.path(), &x86);
    let second_time = started.elapsed();
    let store_size =
        cache.archive(&first.outputs["cache-key"]).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    println!(
        "simulated CI (x86_64, bundled example): first run {:.2}s (built {}), second run {:.2}s (built {}), ratio {:.1}x",
        first_time.as_secs_f64(),
        first.outputs["built"],
        second_time.as_secs_f64(),
        second.outputs["built"],
        first_time.as_secs_f64() / second_time.as_secs_f64()
    );
    println!(
        "cache: kiln store restore+save {:.2}s in the first run, restore {:.2}s in the second; archive {} KiB",
        first.cache_time.as_secs_f64(),
        second.cache_time.as_secs_f64(),
        store_size / 1024
    );
    println!(
        "naive: tar|zstd of target/ and examples/target, save+restore {:.2}s; archive {} KiB",
        naive_time.as_secs_f64(),
        naive_size / 1024
    );
}
