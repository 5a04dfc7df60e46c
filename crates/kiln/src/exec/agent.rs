//! `kiln-agent` built for a guest architecture, as a store entry: a static musl binary linked
//! with rust-lld, from the agent's source that came with this kiln.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kiln_store::{BuildOutcome, Derivation, InputHash, StatCache, Store};
use kiln_types::Arch;

use crate::{exec::tool_command, report::Printer};

/// The agent's file in its store entry.
pub const AGENT_FILE: &str = "kiln-agent";

/// The musl target the agent is built for on `arch`.
pub fn agent_triple(arch: Arch) -> anyhow::Result<&'static str> {
    match arch {
        Arch::X86_64 => Ok("x86_64-unknown-linux-musl"),
        Arch::Aarch64 => Ok("aarch64-unknown-linux-musl"),
        Arch::Riscv64 => {
            anyhow::bail!("kiln-agent is not built for riscv64: rustup has no riscv64gc-unknown-linux-musl target here")
        }
    }
}

/// The agent's derivation: its source, the compiler and the target.
pub fn derivation(arch: Arch) -> anyhow::Result<Derivation> {
    let source = Path::new(kiln_agent::SOURCE_DIR);
    let triple = agent_triple(arch)?;
    let mut drv = Derivation::new("kiln-agent");
    drv.setting("arch", arch.as_str());
    drv.setting("target", triple);
    drv.setting("linker", "rust-lld");
    let set = kiln_store::SourceSet::package_dir(source)
        .with_context(|| format!("cannot list the agent's source in `{}`", source.display()))?;
    drv.input("source", kiln_store::hash_source_set(&set, &StatCache::disabled())?);
    let rustc = tool_command("rustc", source).arg("-vV").output().context("cannot run `rustc -vV`")?;
    drv.input("rustc", InputHash::of_bytes(&rustc.stdout));
    Ok(drv)
}

/// The agent for `arch`, built once per source and compiler: its path and closure.
pub fn realise(
    store: &Store,
    arch: Arch,
    work_dir: &Path,
    printer: &Printer,
) -> anyhow::Result<(PathBuf, kiln_store::ClosureHash)> {
    let drv = derivation(arch)?;
    let triple = agent_triple(arch)?;
    let source = PathBuf::from(kiln_agent::SOURCE_DIR);
    let target_dir = work_dir.join("agent-target");
    let on_wait = || printer.status("Waiting", &format!("for another kiln building kiln-agent ({arch})"));
    let (entry, outcome) = store.build(&drv, &format!("kiln-agent-{arch}"), on_wait, |out| {
        printer.status("Building", &format!("kiln-agent ({arch}) for {triple}"));
        let linker = format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"));
        let output = tool_command("cargo", &source)
            .args(["build", "--release", "--quiet", "--bin", "kiln-agent", "--target", triple])
            .arg("--manifest-path")
            .arg(source.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target_dir)
            .env(linker, "rust-lld")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "building kiln-agent for {triple} failed:\n{}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        let built = target_dir.join(triple).join("release").join(AGENT_FILE);
        std::fs::copy(&built, out.join(AGENT_FILE)).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
        Ok(())
    })?;
    match &outcome {
        BuildOutcome::Built { duration, .. } => {
            printer.status("Built", &format!("kiln-agent ({arch}) in {}", crate::report::seconds(*duration)));
        }
        BuildOutcome::Substituted { .. } => {
            crate::cx::say_substituted(printer, &format!("kiln-agent ({arch})"), &entry.closure, &outcome);
        }
        BuildOutcome::Cached => {}
    }
    store.mark_used(&entry.closure)?;
    Ok((entry.out_dir().join(AGENT_FILE), entry.closure))
}
