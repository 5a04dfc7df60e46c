//! The Kiln.toml `init` writes: what the repository says, and a `TODO` with what to fill and
//! why wherever it says nothing (kiln refuses to run until they are filled).

use std::fmt::Write as _;

use kiln_types::Arch;

use super::detect::{Kernel, MakeCopy, Repository, arch_of, is_bootloader_0_9};
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

/// Whether the kernel is built the bootimage way: bootloader 0.9, or a
/// `[package.metadata.bootimage]` table.
fn uses_bootimage(kernel: &Kernel) -> bool {
    kernel.bootimage.is_some() || kernel.bootloader.as_deref().is_some_and(is_bootloader_0_9)
}

/// The disk images of a kernel that uses `bootloader_api` (the current bootloader): one
/// artifact per firmware, as the bootloader's template makes both `bios.img` and `uefi.img`.
const BOOTLOADER_FIRMWARES: [&str; 2] = ["bios", "uefi"];

/// The firmware the `cargo test` kernels of a `bootloader_api` kernel boot with: BIOS, which
/// reaches the kernel sooner than OVMF under emulation.
const BOOTLOADER_TESTS_FIRMWARE: &str = "bios";

/// One artifact `init` writes for a kernel.
struct ArtifactSpec {
    /// Its name in Kiln.toml (and its case's, when the repository has one kernel).
    name: String,
    /// The case's name when the repository has one kernel.
    single_case: String,
    /// `image = "bios"` / `"uefi"`, for a `bootloader_api` kernel.
    firmware: Option<&'static str>,
    /// Its `cargo test` kernels (`kind = "tests"`) rather than its binary.
    tests: bool,
}

/// The artifacts `init` writes for `kernel`: one, or for a `bootloader_api` kernel a BIOS and
/// a UEFI artifact (`NAME-bios`, `NAME-uefi`) and, when it has test targets, its test kernels
/// (`NAME-tests`, each a disk image of its own).
fn artifacts_of(kernel: &Kernel) -> Vec<ArtifactSpec> {
    if kernel.bootloader_api.is_none() {
        return vec![ArtifactSpec {
            name: kernel.package.clone(),
            single_case: "boot".to_owned(),
            firmware: None,
            tests: false,
        }];
    }
    let mut specs: Vec<ArtifactSpec> = BOOTLOADER_FIRMWARES
        .iter()
        .map(|firmware| ArtifactSpec {
            name: format!("{}-{firmware}", kernel.package),
            single_case: (*firmware).to_owned(),
            firmware: Some(*firmware),
            tests: false,
        })
        .collect();
    if kernel.has_tests {
        specs.push(ArtifactSpec {
            name: format!("{}-tests", kernel.package),
            single_case: "tests".to_owned(),
            firmware: Some(BOOTLOADER_TESTS_FIRMWARE),
            tests: true,
        });
    }
    specs
}

/// Whether its `cargo test` kernels are what the repository runs: it has test targets and
/// runs kernels through a cargo runner (`bootimage runner`, a QEMU script) or bootimage.
fn runs_test_kernels(repo: &Repository, kernel: &Kernel) -> bool {
    kernel.has_tests && (repo.cargo.runner.is_some() || uses_bootimage(kernel))
}

/// The QEMU arguments of bootimage's `test-args` that kiln does not do itself: it owns the
/// console (`-serial stdio`, `-display none`) and adds the x86 exit device at 0xf4.
pub(super) fn extra_test_args(args: &[String]) -> Vec<String> {
    let mut extra = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "-serial" | "-display" => {
                words.next();
            }
            "-nographic" => {}
            "-device" => match words.next() {
                Some(device) if device.starts_with("isa-debug-exit") && device.contains("iobase=0xf4") => {}
                Some(device) => extra.extend([word.clone(), device.clone()]),
                None => extra.push(word.clone()),
            },
            _ => extra.push(word.clone()),
        }
    }
    extra
}

/// A `[step.NAME]` init writes: the Makefile's `cp` that makes a linker script the rustflags
/// name but the repository does not hold.
struct CopyStep<'a> {
    /// The step's name.
    name: String,
    /// The copy, as the Makefile spells it.
    copy: &'a MakeCopy,
}

/// The linker scripts named in rustflags (as written) that are not in the repository.
fn missing_linker_scripts(repo: &Repository) -> Vec<&String> {
    repo.cargo.linker_scripts_in_flags.iter().filter(|script| !repo.root.join(script.as_str()).exists()).collect()
}

/// A step per missing linker script that a Makefile line copies from a file that exists.
fn copy_steps(repo: &Repository) -> Vec<CopyStep<'_>> {
    let mut steps = Vec::new();
    for script in missing_linker_scripts(repo) {
        let wanted = script.trim_start_matches("./");
        let Some(copy) = repo.copies.iter().find(|c| c.to == wanted && repo.root.join(&c.from).is_file()) else {
            continue;
        };
        let name =
            if steps.is_empty() { "linker-script".to_owned() } else { format!("linker-script-{}", steps.len() + 1) };
        steps.push(CopyStep { name, copy });
    }
    steps
}

/// The `[step.NAME]` tables of `steps`, each with where it comes from.
fn step_tables(text: &mut String, steps: &[CopyStep<'_>]) {
    for step in steps {
        let copy = step.copy;
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let values: Vec<String> = copy.variables.iter().map(|(name, value)| format!("{name} = {value}")).collect();
        let with = if values.is_empty() { String::new() } else { format!(" with {}", values.join(", ")) };
        let _ = writeln!(
            text,
            "# From `{}` in {}{with}: kiln runs it before building and caches",
            copy.written, copy.found_in
        );
        let _ = writeln!(
            text,
            "# its output (`cargo xtask` then needs no `make`). Another board: copy its script instead."
        );
        let _ = writeln!(text, "[step.{}]", toml_key(&step.name));
        let _ = writeln!(text, "command = [\"cp\", {}, {}]", quote(&copy.from), quote(&copy.to));
        let _ = writeln!(text, "inputs = [{}]", quote(&copy.from));
        let _ = writeln!(text, "outputs = [{}]\n", quote(&copy.to));
    }
}

fn artifact(text: &mut String, repo: &Repository, kernel: &Kernel, spec: &ArtifactSpec, steps: &[CopyStep<'_>]) {
    let firmware = spec.firmware;
    let _ = writeln!(text, "[artifact.{}]", toml_key(&spec.name));
    let _ = writeln!(text, "package = \"{}\"", kernel.package);
    let _ = writeln!(text, "path = \"{}\"", kernel.dir);
    let arches = arches(repo);
    if arches.is_empty() && firmware.is_some() {
        let _ = writeln!(text, "# bootloader_api kernels are x86_64 kernels, built for x86_64-unknown-none.");
        let _ = writeln!(text, "arches = [\"x86_64\"]");
        let _ = writeln!(text, "target.x86_64 = \"x86_64-unknown-none\"");
    } else if arches.is_empty() {
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
        let source = if repo.cargo.build_target.is_some() {
            "build.target in .cargo/config.toml"
        } else {
            "rust-toolchain.toml targets"
        };
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
        let mut parts = vec![format!("`{}`", toolchain.channel)];
        if !toolchain.components.is_empty() {
            parts.push(format!("components {}", toolchain.components.join(", ")));
        }
        let _ = writeln!(
            text,
            "# Built with {} from rust-toolchain.toml; kiln installs what is missing.",
            parts.join(" and ")
        );
    }
    if spec.tests {
        let _ = writeln!(
            text,
            "# `cargo test` kernels (tests/*.rs with their own entry_point!): each boots from its own disk image."
        );
        let _ = writeln!(text, "kind = \"tests\"");
    } else if firmware.is_none() && runs_test_kernels(repo, kernel) {
        let runner = repo.cargo.runner.as_deref().unwrap_or("bootimage runner");
        let _ = writeln!(
            text,
            "# `cargo test` kernels (runner `{runner}`): each test binary boots as its own run of the cases."
        );
        let _ = writeln!(text, "kind = \"tests\"");
    }
    if let (Some(firmware), Some(version)) = (firmware, &kernel.bootloader_api) {
        let _ = writeln!(
            text,
            "# bootloader_api {version}: a {} disk image, made with the bootloader crate of the same version.",
            firmware.to_uppercase()
        );
        let _ = writeln!(text, "image = \"{firmware}\"");
    } else if uses_bootimage(kernel) {
        let _ = writeln!(text, "# bootloader 0.9 (the bootimage way): each kernel becomes a BIOS disk image.");
        let _ = writeln!(text, "image = \"bootimage\"");
    } else if let Some(version) = &kernel.bootloader {
        let _ = writeln!(
            text,
            "# TODO(bootloader {version}): kiln makes bootloader 0.9 images (`image = \"bootimage\"`) and, for kernels\n\
             # that use bootloader_api 0.11 or newer, BIOS and UEFI images (`image = \"bios\"`, `\"uefi\"`); for this\n\
             # bootloader, add a [step] that runs your image builder, and boot its output (see docs/kiln-toml.md)."
        );
    }
    if let Some(build_std) = &repo.cargo.build_std {
        let _ = writeln!(
            text,
            "# .cargo/config.toml builds `{}` from source (build-std): kiln installs rust-src for it.",
            build_std.join(",")
        );
    }
    if !steps.is_empty() {
        let names: Vec<String> = steps.iter().map(|s| format!("\"{}\"", s.name)).collect();
        let made: Vec<&str> = steps.iter().map(|s| s.copy.to.as_str()).collect();
        let _ = writeln!(
            text,
            "# {} (named in rustflags) is made by the step(s) below, before every build.",
            made.join(", ")
        );
        let _ = writeln!(text, "steps = [{}]", names.join(", "));
    }
    for script in missing_linker_scripts(repo) {
        if steps.iter().any(|s| s.copy.to == script.trim_start_matches("./")) {
            continue;
        }
        let name = std::path::Path::new(script);
        let stem = name.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let sources: Vec<&String> = repo
            .linker_scripts
            .iter()
            .filter(|found| {
                let found = std::path::Path::new(found.as_str());
                found.parent() == name.parent()
                    && found.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{stem}-")))
            })
            .collect();
        let from = if sources.is_empty() {
            "a build step".to_owned()
        } else {
            sources.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or ")
        };
        let source = sources.first().map_or("TODO: the file it is made from", |s| s.as_str());
        let _ = writeln!(
            text,
            "# TODO: the rustflags name `{script}`, which is not in the repository: your build makes it from \
             {from}\n# first. Declare that as a step and name it here (see `[step.NAME]` in docs/kiln-toml.md):\n\
             # steps = [\"linker-script\"]\n# [step.linker-script]\n# command = [\"cp\", \"{source}\", \"{script}\"]\n\
             # inputs = [\"{source}\"]\n# outputs = [\"{script}\"]"
        );
    }
    let hashed: Vec<&str> = repo
        .cargo
        .linker_scripts_in_flags
        .iter()
        .map(String::as_str)
        .filter(|script| !steps.iter().any(|s| s.copy.to == script.trim_start_matches("./")))
        .collect();
    if !hashed.is_empty() {
        let _ = writeln!(
            text,
            "# Linker scripts in your rustflags ({}) are hashed with every build, and a change relinks.",
            hashed.join(", ")
        );
    }
    if !steps.is_empty() {
        let _ = writeln!(text, "# A change to a step's inputs runs it again and relinks the kernel.");
    }
    text.push('\n');
}

fn case(text: &mut String, repo: &Repository, kernel: &Kernel, name: &str, artifact: &str) {
    let _ = writeln!(text, "[case.{}]", toml_key(name));
    let _ = writeln!(text, "artifact = \"{}\"", toml_key(artifact));
    if let Some(board) = &repo.board {
        let _ = writeln!(text, "machines = [\"{}\"]", toml_key(&board.machine));
    }
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
    if kernel.bootimage.as_ref().and_then(|b| b.test_success_exit_code).is_none() {
        let _ = writeln!(text, "# A line that fails the case at once (case-insensitive).");
        let _ = writeln!(text, "failure = \"(?i)panicked at|kernel panic\"");
    }
    match kernel.bootimage.as_ref().and_then(|b| b.test_timeout) {
        Some(seconds) => {
            let _ =
                writeln!(text, "timeout = \"{seconds}s\"               # test-timeout in [package.metadata.bootimage]");
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
    let steps = copy_steps(repo);
    for kernel in &repo.kernels {
        for spec in artifacts_of(kernel) {
            artifact(&mut text, repo, kernel, &spec, &steps);
        }
    }
    // One kernel: its case is `boot`; several: one case each, named after the package. A
    // kernel with BIOS and UEFI images has a case for each (`bios`, `uefi`, or `NAME-bios`...).
    for kernel in &repo.kernels {
        for spec in artifacts_of(kernel) {
            let name = if repo.kernels.len() == 1 { &spec.single_case } else { &spec.name };
            case(&mut text, repo, kernel, name, &spec.name);
        }
    }
    if let Some(board) = &repo.board {
        let _ = writeln!(text, "# The board the repository's own QEMU command boots ({}).", board.found_in);
        let _ = writeln!(text, "[machine.{}]", toml_key(&board.machine));
        let _ = writeln!(text, "arch = \"{}\"", board.arch);
        let _ = writeln!(text, "machine = \"{}\"", board.machine);
        if board.semihosting {
            let _ = writeln!(text, "semihosting = true");
        }
        text.push('\n');
    }
    let extra: Vec<String> =
        repo.kernels.iter().filter_map(|k| k.bootimage.as_ref()).flat_map(|b| extra_test_args(&b.test_args)).collect();
    if !extra.is_empty() {
        let quoted: Vec<String> = extra.iter().map(|a| toml::Value::String(a.clone()).to_string()).collect();
        let _ = writeln!(text, "# test-args in [package.metadata.bootimage], less what kiln does itself.");
        let _ = writeln!(text, "[machine.x86_64]\nargs = [{}]\n", quoted.join(", "));
    }
    step_tables(&mut text, &steps);
    if repo.kernels.is_empty() {
        let _ = writeln!(text, "[case.boot]\nartifact = \"kernel\"");
        let _ = writeln!(text, "success = \"TODO: the line your kernel prints when it passes\"\ntimeout = \"60s\"");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel whose rustflags name `src/linker.ld`, which only a copy of
    /// `src/linker-qemu.ld` makes; with `makefile`, the copy is a Makefile line.
    fn repository(makefile: Option<&str>) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::create_dir_all(root.join(".cargo")).expect("mkdir");
        std::fs::write(root.join("Cargo.toml"), "[package]\nname = \"os\"\nversion = \"0.1.0\"\nedition = \"2021\"\n")
            .expect("write");
        std::fs::write(root.join("src/main.rs"), "fn main() {}\n").expect("write");
        std::fs::write(root.join("src/linker-qemu.ld"), "BASE_ADDRESS = 0x80200000;\n").expect("write");
        std::fs::write(
            root.join(".cargo/config.toml"),
            "[build]\ntarget = \"riscv64gc-unknown-none-elf\"\n[target.riscv64gc-unknown-none-elf]\n\
             rustflags = [\"-Clink-arg=-Tsrc/linker.ld\", \"-Cforce-frame-pointers=yes\"]\n",
        )
        .expect("write");
        if let Some(makefile) = makefile {
            std::fs::write(root.join("Makefile"), makefile).expect("write");
        }
        let repo = Repository::read(root).expect("read");
        (dir, repo)
    }

    #[test]
    fn a_makefile_copy_of_the_linker_script_becomes_a_step() {
        let make = "BOARD ?= qemu\nkernel:\n\t@cp src/linker-$(BOARD).ld src/linker.ld\n\t@cargo build --release\n";
        let (_dir, repo) = repository(Some(make));
        let text = text(&repo);
        assert!(text.contains("steps = [\"linker-script\"]\n"), "{text}");
        assert!(
            text.contains(
                "[step.linker-script]\ncommand = [\"cp\", \"src/linker-qemu.ld\", \"src/linker.ld\"]\n\
                 inputs = [\"src/linker-qemu.ld\"]\noutputs = [\"src/linker.ld\"]\n"
            ),
            "{text}"
        );
        assert!(!text.contains("TODO: the rustflags name"), "{text}");
    }

    #[test]
    fn without_a_makefile_line_a_todo_names_the_step_to_write() {
        let (_dir, repo) = repository(None);
        let text = text(&repo);
        assert!(!text.contains("\n[step."), "only a comment: {text}");
        assert!(text.contains("# TODO: the rustflags name `src/linker.ld`, which is not in the repository"), "{text}");
        assert!(text.contains("# command = [\"cp\", \"src/linker-qemu.ld\", \"src/linker.ld\"]"), "{text}");
    }
}
