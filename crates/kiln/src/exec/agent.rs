//! `kiln-agent` built for a guest architecture, as a store entry: a static musl binary linked
//! with rust-lld, from the agent's source that came with this kiln.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kiln_store::{Derivation, InputHash, StatCache};
use kiln_types::Arch;

use super::{Executor, tool::tool_command};
use crate::events::EntryKind;

/// The agent's file in its store entry.
pub(crate) const AGENT_FILE: &str = "kiln-agent";

/// The musl target the agent is built for on `arch`.
pub(crate) fn agent_triple(arch: Arch) -> anyhow::Result<&'static str> {
    match arch {
        Arch::X86_64 => Ok("x86_64-unknown-linux-musl"),
        Arch::Aarch64 => Ok("aarch64-unknown-linux-musl"),
        Arch::Riscv64 => {
            anyhow::bail!("kiln-agent is not built for riscv64: rustup has no riscv64gc-unknown-linux-musl target here")
        }
    }
}

/// The agent's derivation: its source, the compiler and the target.
pub(crate) fn derivation(arch: Arch) -> anyhow::Result<Derivation> {
    let source = Path::new(kiln_agent::SOURCE_DIR);
    let triple = agent_triple(arch)?;
    let mut drv = Derivation::new("kiln-agent");
    drv.setting("arch", arch.as_str());
    drv.setting("target", triple);
    drv.setting("linker", "rust-lld");
    let set = kiln_store::SourceSet::package_dir(source)
        .with_context(|| format!("cannot list the agent's source in `{}`", source.display()))?;
    drv.input("source", kiln_store::hash_source_set(&set, &StatCache::disabled())?);
    drv.input("rustc", InputHash::of_bytes(super::tool::rustc_version(source)?.as_bytes()));
    Ok(drv)
}

/// The agent for `arch`, built once per source and compiler: its path and closure.
pub(crate) fn realise(executor: &Executor, arch: Arch) -> anyhow::Result<(PathBuf, kiln_store::ClosureHash)> {
    let drv = derivation(arch)?;
    let triple = agent_triple(arch)?;
    let source = PathBuf::from(kiln_agent::SOURCE_DIR);
    let target_dir = executor.work_dir().join("agent-target");
    let what = format!("kiln-agent ({arch})");
    let how = format!("for {triple}");
    let (entry, _) =
        executor.entry(&drv, &format!("kiln-agent-{arch}"), &what, EntryKind::Build, Some(&how), |out| {
            let linker = format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"));
            let output = tool_command("cargo", &source)
                .args(["build", "--release", "--quiet", "--bin", "kiln-agent", "--target", triple])
                .arg("--manifest-path")
                .arg(source.join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target_dir)
                .env(linker, "rust-lld")
                .output()
                .context("cannot run cargo")?;
            if !output.status.success() {
                anyhow::bail!(
                    "building kiln-agent for {triple} failed:\n{}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let built = target_dir.join(triple).join("release").join(AGENT_FILE);
            std::fs::copy(&built, out.join(AGENT_FILE)).with_context(|| format!("cannot copy {}", built.display()))?;
            Ok(())
        })?;
    Ok((entry.out_dir().join(AGENT_FILE), entry.closure))
}
