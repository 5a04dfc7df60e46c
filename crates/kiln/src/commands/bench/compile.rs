//! Compile rows of `bench`: the cold build of the xtask `init` generates, with kiln's default
//! features and with all of them, in seconds and crates compiled. Sources already downloaded
//! are used (this measures compiling, not the network); nothing else is shared, not even a
//! target directory.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    exec::tool_command,
    layout::{TOOL_MAIN, TOOL_PACKAGE, tool_manifest},
};

/// One cold build of a generated tool: how long, and how many crates cargo compiled.
struct ColdBuild {
    time: Duration,
    crates: usize,
}

/// Writes the tool `init` generates (against this kiln's sources) into `dir` and builds it
/// with a fresh target directory.
fn cold_build(dir: &Path, kiln: &Path, features: &[&str]) -> anyhow::Result<ColdBuild> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), tool_manifest(Some(kiln), features))?;
    std::fs::write(dir.join("src/main.rs"), TOOL_MAIN)?;
    // The lock file of kiln's own workspace pins the same versions a user's first build
    // resolves today, without asking the network.
    let lock = kiln.join("../../Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).context("cannot copy kiln's Cargo.lock")?;
    }
    let started = Instant::now();
    let mut cargo = tool_command("cargo", dir)
        .args(["build", "--offline", "--message-format=json-render-diagnostics"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run cargo")?;
    let mut packages = BTreeSet::new();
    if let Some(stdout) = cargo.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if matches!(message["reason"].as_str(), Some("compiler-artifact" | "build-script-executed"))
                && let Some(id) = message["package_id"].as_str()
            {
                packages.insert(id.to_owned());
            }
        }
    }
    let status = cargo.wait()?;
    let time = started.elapsed();
    if !status.success() {
        bail!("the generated xtask in `{}` did not build (`cargo build` there shows why)", dir.display());
    }
    // The tool itself is not a dependency.
    let crates = packages.iter().filter(|id| !id.contains(TOOL_PACKAGE)).count();
    Ok(ColdBuild { time, crates })
}

/// Prints the compile rows.
pub(super) fn run() -> anyhow::Result<()> {
    let kiln = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !kiln.join("Cargo.toml").is_file() {
        bail!("`bench --suite compile` builds against kiln's sources, and `{}` is gone", kiln.display());
    }
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<8} {:<46} {:>9} {:>9}", "", "cold build of the xtask `init` writes", "time", "crates")?;
    for (name, features) in
        [("default features", &[][..]), ("all features (remote, github)", &["remote", "github"][..])]
    {
        let build = cold_build(&scratch.path().join(name.replace([' ', '(', ')', ','], "-")), kiln, features)?;
        writeln!(out, "{:<8} {:<46} {:>8.1}s {:>9}", "host", name, build.time.as_secs_f64(), build.crates)?;
    }
    Ok(())
}
