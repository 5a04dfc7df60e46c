//! Store rows of `bench`: hashing a generated tree against `b3sum`, rehashing it with the
//! stat cache, and export + import against `tar -I 'zstd -T0'`, side by side in one run.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use kiln_store::{Derivation, SourceSet, StatCache, Store, hash_source_set};

use crate::cx::Cx;

/// The generated tree: many small files and a few large ones.
struct TreeShape {
    small_files: usize,
    large_files: usize,
    total_bytes: u64,
}

const SHAPE: TreeShape = TreeShape { small_files: 19_900, large_files: 100, total_bytes: 1 << 30 };

/// Fills `len` bytes that zstd cannot squeeze much (like compiled code and images).
fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Half the bytes repeat, so the tree compresses about as well as a build tree does.
        let word = if state % 4 < 2 { state } else { 0x6b69_6c6e_6b69_6c6e };
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes the tree and backdates it, so the stat cache may trust it.
fn generate(root: &Path) -> anyhow::Result<()> {
    let small_total: u64 = SHAPE.small_files as u64 * 8 * 1024;
    let large_each = ((SHAPE.total_bytes - small_total) / SHAPE.large_files as u64) as usize;
    let old = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..SHAPE.small_files + SHAPE.large_files {
        let dir = root.join(format!("dir{:03}", i % 200));
        fs::create_dir_all(&dir)?;
        let len = if i < SHAPE.small_files { 1024 + (i * 7919) % (14 * 1024) } else { large_each };
        let path = dir.join(format!("file{i:05}"));
        fs::write(&path, fill(i as u64, len))?;
        fs::File::options().write(true).open(&path)?.set_modified(old)?;
    }
    Ok(())
}

fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let started = Instant::now();
    let value = f()?;
    Ok((started.elapsed(), value))
}

fn run_shell(script: &str, dir: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("failed to run `{script}`"))?;
    if !status.success() {
        bail!("`{script}` failed with {status}");
    }
    Ok(started.elapsed())
}

fn has(program: &str) -> bool {
    crate::host::find_program(program).is_some()
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// Runs the store rows and prints them on stdout.
pub(super) fn run(cx: &Cx) -> anyhow::Result<()> {
    let scratch_root = cx.work_dir().join("bench");
    // An interrupted run leaves its gigabytes behind: sweep them first.
    if let Ok(old) = fs::read_dir(&scratch_root) {
        for entry in old.flatten() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    fs::create_dir_all(&scratch_root)?;
    let scratch = tempfile::Builder::new().prefix("store-").tempdir_in(&scratch_root)?;
    let tree = scratch.path().join("tree");
    cx.printer().status(
        "Generating",
        &format!("{} files, {} MiB", SHAPE.small_files + SHAPE.large_files, SHAPE.total_bytes >> 20),
    );
    generate(&tree)?;
    let bytes = kiln_store::tree_size(&tree)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nstore: a tree of {} files, {} MiB", SHAPE.small_files + SHAPE.large_files, bytes >> 20)?;

    // Cold hashing: no stat cache; both sides read from the page cache (warmed first).
    let hash_tree = |cache: &StatCache| -> anyhow::Result<kiln_store::InputHash> {
        let set = SourceSet::package_dir(&tree)?;
        Ok(hash_source_set(&set, cache)?)
    };
    hash_tree(&StatCache::disabled())?;
    let (kiln_cold, _) = time(|| hash_tree(&StatCache::disabled()))?;
    let b3sum = if has("b3sum") {
        run_shell("find . -type f -print0 | xargs -0 b3sum > /dev/null", &tree)?;
        Some(run_shell("find . -type f -print0 | xargs -0 b3sum > /dev/null", &tree)?)
    } else {
        None
    };
    writeln!(out, "{:<34} {:>9} {:>12} {:>9}", "", "kiln", "baseline", "ratio")?;
    match b3sum {
        Some(b3) => writeln!(
            out,
            "{:<34} {:>8.0}M {:>11.0}M {:>8.2}x",
            "cold hash, MiB/s (vs b3sum)",
            mib_per_s(bytes, kiln_cold),
            mib_per_s(bytes, b3),
            b3.as_secs_f64() / kiln_cold.as_secs_f64()
        )?,
        None => writeln!(
            out,
            "{:<34} {:>8.0}M {:>12} {:>9}",
            "cold hash, MiB/s (vs b3sum)",
            mib_per_s(bytes, kiln_cold),
            "no b3sum",
            "-"
        )?,
    }

    // Warm rehash: the stat cache knows every file.
    let cache_file = scratch.path().join("stat-cache");
    let cache = StatCache::load(&cache_file);
    hash_tree(&cache)?;
    cache.save()?;
    let (warm, _) = time(|| {
        let cache = StatCache::load(&cache_file);
        let hash = hash_tree(&cache)?;
        cache.save()?;
        Ok(hash)
    })?;
    let git_status = if has("git") {
        run_shell(
            "git init -q . && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm bench --no-gpg-sign",
            &tree,
        )?;
        run_shell("git status --porcelain > /dev/null", &tree)?;
        Some(run_shell("git status --porcelain > /dev/null", &tree)?)
    } else {
        None
    };
    match git_status {
        Some(git) => writeln!(
            out,
            "{:<34} {:>8.0}ms {:>10.0}ms {:>8.2}x",
            "warm rehash (vs git status)",
            warm.as_secs_f64() * 1000.0,
            git.as_secs_f64() * 1000.0,
            git.as_secs_f64() / warm.as_secs_f64()
        )?,
        None => writeln!(out, "{:<34} {:>8.0}ms", "warm rehash", warm.as_secs_f64() * 1000.0)?,
    }
    let _ = fs::remove_dir_all(tree.join(".git"));

    // Export + import of a store holding the tree, against tar with multithreaded zstd.
    let store = Store::open(scratch.path().join("store-a"))?;
    let mut closures = Vec::new();
    let mut derivations = Vec::new();
    for part in 0..10 {
        let mut drv = Derivation::new("bench");
        drv.setting("part", part.to_string());
        derivations.push(drv.clone());
        let (entry, _) = store.build(
            &drv,
            &format!("part-{part}"),
            || {},
            |out_dir| {
                for i in (part..200).step_by(10) {
                    let from = tree.join(format!("dir{i:03}"));
                    let to = out_dir.join(format!("dir{i:03}"));
                    fs::create_dir_all(&to)?;
                    for file in fs::read_dir(&from)? {
                        let file = file?;
                        fs::copy(file.path(), to.join(file.file_name()))?;
                    }
                }
                Ok(())
            },
        )?;
        closures.push(entry.closure);
    }
    let archive = scratch.path().join("store.tar.zst");
    let (export_took, _) = time(|| Ok(kiln_store::export_to_file(&store, &closures, &archive)?))?;
    let store_b = Store::open(scratch.path().join("store-b"))?;
    let (import_took, _) = time(|| Ok(kiln_store::import_from_file(&store_b, &archive)?))?;
    let kiln_size = fs::metadata(&archive)?.len();
    let kiln_total = export_took + import_took;
    let entries_dir: PathBuf = store.root().join("entries");
    if has("zstd") && has("tar") {
        let tarball = scratch.path().join("baseline.tar.zst");
        let create = run_shell(
            &format!("tar -I 'zstd -T0' -cf {} -C {} .", tarball.display(), entries_dir.display()),
            scratch.path(),
        )?;
        let unpack_dir = scratch.path().join("unpacked");
        fs::create_dir_all(&unpack_dir)?;
        let extract = run_shell(
            &format!("tar -I 'zstd -T0' -xf {} -C {}", tarball.display(), unpack_dir.display()),
            scratch.path(),
        )?;
        let tar_size = fs::metadata(&tarball)?.len();
        let tar_total = create + extract;
        writeln!(
            out,
            "{:<34} {:>8.2}s {:>11.2}s {:>8.2}x",
            "export+import (vs tar+zstd -T0)",
            kiln_total.as_secs_f64(),
            tar_total.as_secs_f64(),
            tar_total.as_secs_f64() / kiln_total.as_secs_f64()
        )?;
        writeln!(
            out,
            "{:<34} {:>8}M {:>11}M {:>8.2}x",
            "  archive size",
            kiln_size >> 20,
            tar_size >> 20,
            kiln_size as f64 / tar_size as f64
        )?;
        writeln!(
            out,
            "{:<34} {:>8.2}s {:>11.2}s",
            "  export / import alone",
            export_took.as_secs_f64(),
            import_took.as_secs_f64()
        )?;
    } else {
        writeln!(out, "{:<34} {:>8.2}s {:>12}", "export+import", kiln_total.as_secs_f64(), "no zstd/tar")?;
    }
    hit_rows(&mut out, &store, &derivations, bytes, scratch.path())?;
    writeln!(out, "ratios: baseline time / kiln time (above 1 means kiln is faster); size: kiln / baseline")?;
    Ok(())
}

/// What a store hit costs now that every hit is checked against its name (the recorded
/// derivation hashes to the entry's closure, the output to its recorded hash): per hit,
/// against reading the entry's metadata alone. A hit whose files kiln has seen is checked
/// from their stamps; the first hit after a CI cache restore (new inodes) rehashes the output.
fn hit_rows(
    out: &mut impl std::io::Write,
    store: &Store,
    derivations: &[Derivation],
    bytes: u64,
    scratch: &Path,
) -> anyhow::Result<()> {
    let hits = |store: &Store| -> anyhow::Result<Duration> {
        let (took, ()) = time(|| {
            for drv in derivations {
                let (_, outcome) = store.build(drv, "bench", || {}, |_| Err("a bench hit must not build".into()))?;
                if !matches!(outcome, kiln_store::BuildOutcome::Cached) {
                    bail!("the bench entry was not a hit: {outcome:?}");
                }
            }
            Ok(())
        })?;
        Ok(took / derivations.len() as u32)
    };
    let lookups = |store: &Store| -> anyhow::Result<Duration> {
        let (took, ()) = time(|| {
            for drv in derivations {
                store.lookup(&drv.closure_hash())?.context("the bench entry is missing")?;
            }
            Ok(())
        })?;
        Ok(took / derivations.len() as u32)
    };
    hits(store)?;
    let checked = hits(store)?;
    let unchecked = lookups(store)?;
    let files = (SHAPE.small_files + SHAPE.large_files) / derivations.len();
    writeln!(
        out,
        "{:<34} {:>7.0}us {:>10.0}us {:>8.2}x",
        "store hit, checked (vs lookup)",
        checked.as_secs_f64() * 1e6,
        unchecked.as_secs_f64() * 1e6,
        unchecked.as_secs_f64() / checked.as_secs_f64()
    )?;
    writeln!(
        out,
        "{:<34} {:>7.1}us",
        format!("  per output file ({files} a hit)"),
        checked.as_secs_f64() * 1e6 / files as f64
    )?;
    let restored_root = scratch.join("store-restored");
    run_shell(&format!("cp -r {} {}", store.root().display(), restored_root.display()), scratch)?;
    let restored = Store::open(&restored_root)?;
    let first = hits(&restored)?;
    let per_entry = bytes / derivations.len() as u64;
    writeln!(
        out,
        "{:<34} {:>8.2}s {:>11} {:>9}",
        format!("  first hit after a restore ({} MiB)", per_entry >> 20),
        first.as_secs_f64(),
        "",
        ""
    )?;
    let again = hits(&restored)?;
    writeln!(out, "{:<34} {:>7.0}us", "  and every hit after it", again.as_secs_f64() * 1e6)?;
    Ok(())
}
