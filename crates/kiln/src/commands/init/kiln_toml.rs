//! The Kiln.toml `init` writes: what the repository says, and a `TODO` with what to fill and
//! why wherever it says nothing (kiln refuses to run until they are filled).

use std::fmt::Write as _;

use kiln_types::Arch;

use super::detect::{Kernel, Repository, arch_of};
use crate::config::toml_key;

/// The architectures a kernel is built for, with the target each uses when it is not the
/// arch's default: from `build.target`, else from `rust-toolchain.toml` targets.
fn arches(repo: &Repository) -> Vec<(Arch, Option<String>)> {
    if let Some(target) = &repo.cargo.build_target {
        return repo.build_arch().map(|arch| vec![(arch, Some(target.clone()))]).unwrap_or_default();
    }
    let mut arches: Vec<(Arch, Option<String>)> = Vec::new();
    for target in repo.toolchain.iter().flat_map(|t| &t.targets) {
        if let Some(arch) = arch_of(target)
            && !arches.iter().any(|(a, _)| *a == arch)
            && target.contains("-none")
        {
            arches.push((arch, Some(target.clone())));
        }
    }
    arches
}

fn artifact(text: &mut String, repo: &Repository, kernel: &Kernel, name: &str) {
    let _ = writeln!(text, "[artifact.{}]", toml_key(name));
    let _ = writeln!(text, "package = \"{}\"", kernel.package);
    let _ = writeln!(text, "path = \"{}\"", kernel.dir);
    let arches = arches(repo);
    if arches.is_empty() {
        match &repo.cargo.build_target {
            Some(target) => {
                let _ = writeln!(text, "# build.target is `{target}`: kiln could not tell its architecture.");
            }
            None => {
                let _ = writeln!(text, "# Neither build.target nor rust-toolchain.toml targets name an architecture.");
            }
        }
        let _ = writeln!(text, "arches = [\"TODO: x86_64, aarch64 or riscv64\"]");
    } else {
        let source =
            if repo.cargo.build_target.is_some() { "build.target in .cargo/config.toml" } else { "rust-toolchain.toml targets" };
        let _ = writeln!(text, "# From {source}.");
        let list: Vec<String> = arches.iter().map(|(arch, _)| format!("\"{arch}\"")).collect();
        let _ = writeln!(text, "arches = [{}]", list.join(", "));
        for (arch, target) in &arches {
            if let Some(target) = target {
                let _ = writeln!(text, "target.{arch} = \"{target}\"");
            }
        }
    }
    if let Some(toolchain) = &repo.toolchain {
        let _ = writeln!(
            text,
            "# Built with `{}` from rust-toolchain; kiln installs it, its targets and components when missing.",
            toolchain.channel
        );
    }
    if let Some(build_std) = &repo.cargo.build_std {
        let _ = writeln!(
            text,
            "# .cargo/config.toml builds `{}` from source (build-std): kiln installs rust-src for it.",
            build_std.join(",")
        );
    }
    if !repo.cargo.linker_scripts_in_flags.is_empty() {
        let _ = writeln!(
            text,
            "# Linker scripts in your rustflags ({}) are hashed with every build, and a change relinks.",
            repo.cargo.linker_scripts_in_flags.join(", ")
        );
    }
    text.push('\n');
}

fn case(text: &mut String, kernel: &Kernel, name: &str) {
    let _ = writeln!(text, "[case.{}]", toml_key(name));
    let _ = writeln!(text, "artifact = \"{}\"", toml_key(name));
    match kernel.bootimage.as_ref().and_then(|b| b.test_success_exit_code) {
        Some(code) => {
            let _ = writeln!(text, "# test-success-exit-code in [package.metadata.bootimage].");
            let _ = writeln!(text, "success-exit-codes = [{code}]");
        }
        None => {
            let _ = writeln!(text, "# The line your kernel prints when it has passed (a regular expression); or");
            let _ = writeln!(text, "# `success-exit-codes = [N]` when it tells by QEMU's exit status instead.");
            let _ = writeln!(text, "success = \"TODO: the line your kernel prints when it passes\"");
            let _ = writeln!(text, "# stop-on-success = true            # for kernels that never exit");
        }
    }
    let _ = writeln!(text, "failure = \"(?i)panicked at|kernel panic\"");
    match kernel.bootimage.as_ref().and_then(|b| b.test_timeout) {
        Some(seconds) => {
            let _ = writeln!(text, "timeout = \"{seconds}s\"               # test-timeout in [package.metadata.bootimage]");
        }
        None => {
            let _ = writeln!(text, "timeout = \"60s\"");
        }
    }
    text.push('\n');
}

/// The Kiln.toml text for `repo`.
pub(super) fn text(repo: &Repository) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# kiln's declaration for this repository: what to build, how to boot it, how to judge it.");
    let _ = writeln!(text, "# `cargo xtask test` runs every case; `cargo xtask doctor` lists the TODOs left.");
    let version = env!("CARGO_PKG_VERSION").rsplit_once('.').map_or("0.1", |(v, _)| v);
    let _ = writeln!(text, "kiln-version = \"{version}\"\n");
    if repo.kernels.is_empty() {
        let _ = writeln!(text, "[artifact.kernel]");
        let _ = writeln!(text, "# No package with a binary target was found.");
        let _ = writeln!(text, "package = \"TODO: the cargo package of your kernel\"");
        let _ = writeln!(text, "path = \"TODO: its directory, relative to this file\"\n");
    }
    for kernel in &repo.kernels {
        artifact(&mut text, repo, kernel, &kernel.package);
    }
    for kernel in &repo.kernels {
        case(&mut text, kernel, &kernel.package);
    }
    if repo.kernels.is_empty() {
        let _ = writeln!(text, "[case.boot]\nartifact = \"kernel\"");
        let _ = writeln!(text, "success = \"TODO: the line your kernel prints when it passes\"\ntimeout = \"60s\"");
    }
    text
}
