//! What a repository already says about how it builds and boots its kernels: packages,
//! `rust-toolchain.toml`, `.cargo/config.toml` and `[package.metadata.bootimage]`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kiln_types::Arch;

use crate::exec::{cargo_json::DependencyKind, tool_command};

/// A repository, as `init` reads it.
pub(super) struct Repository {
    /// The directory with the Cargo.toml `init` adopts.
    pub root: PathBuf,
    /// The git work tree's root, when `root` is inside one.
    pub git_root: Option<PathBuf>,
    /// Packages with a binary or test target: the kernels.
    pub kernels: Vec<Kernel>,
    /// The pinned toolchain, when there is a toolchain file.
    pub toolchain: Option<Toolchain>,
    /// What the cargo configuration says.
    pub cargo: CargoConfig,
    /// Linker scripts in the repository, relative to `root`.
    pub linker_scripts: Vec<String>,
    /// The QEMU board the repository boots on, from a `qemu-system-*` command in its cargo
    /// runner, Makefile or shell scripts, when it is not kiln's default for the arch.
    pub board: Option<Board>,
    /// `cp FROM TO` lines in the Makefiles at the root, with their variables substituted.
    pub copies: Vec<MakeCopy>,
}

/// A `cp FROM TO` line of a Makefile recipe (a linker script made for the chosen board).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MakeCopy {
    /// The source, variables substituted (`src/linker-qemu.ld`).
    pub from: String,
    /// The destination, variables substituted (`src/linker.ld`).
    pub to: String,
    /// The line as written, without the recipe's `@`, `-` or `+` (`cp src/linker-$(BOARD).ld src/linker.ld`).
    pub written: String,
    /// The variables the line uses, with the values kiln substituted (`BOARD = qemu`).
    pub variables: Vec<(String, String)>,
    /// The Makefile.
    pub found_in: String,
}

/// The `cp FROM TO` lines of a Makefile's text (one file to one path; options such as `-f`
/// allowed, several sources not).
pub(super) fn copies_in(text: &str, found_in: &str) -> Vec<MakeCopy> {
    let joined = text.replace("\\\n", " ");
    let variables = make_variables(&joined);
    let expanded = expand_make_variables(&joined);
    let mut copies = Vec::new();
    for (written, line) in joined.lines().zip(expanded.lines()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = words.first() else { continue };
        if first.trim_start_matches(['@', '-', '+']) != "cp" {
            continue;
        }
        let paths: Vec<&str> = words[1..].iter().copied().filter(|w| !w.starts_with('-')).collect();
        let [from, to] = paths.as_slice() else { continue };
        if [from, to].iter().any(|p| p.contains('$') || p.contains('*')) {
            continue;
        }
        let written = written.trim().trim_start_matches(['@', '-', '+']).to_owned();
        let used = variables
            .iter()
            .filter(|(name, _)| written.contains(&format!("$({name})")) || written.contains(&format!("${{{name}}}")))
            .cloned()
            .collect();
        let clean = |p: &str| p.trim_start_matches("./").to_owned();
        copies.push(MakeCopy {
            from: clean(from),
            to: clean(to),
            written,
            variables: used,
            found_in: found_in.to_owned(),
        });
    }
    copies
}

/// A QEMU board read from the repository's own QEMU command.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Board {
    /// The guest architecture (from `qemu-system-ARCH`).
    pub arch: Arch,
    /// `-M`/`-machine`, without its options.
    pub machine: String,
    /// Whether the command enables semihosting.
    pub semihosting: bool,
    /// Where the command was found.
    pub found_in: String,
}

impl Board {
    fn clone_board(&self) -> Board {
        Board {
            arch: self.arch,
            machine: self.machine.clone(),
            semihosting: self.semihosting,
            found_in: self.found_in.clone(),
        }
    }
}

/// The board of one `qemu-system-ARCH ...` command line, when it names one.
pub(super) fn board_in(line: &str, found_in: &str) -> Option<Board> {
    let words: Vec<&str> = line.split_whitespace().collect();
    // A Makefile recipe may start with `@`, `-` or `+`.
    let program_of = |word: &str| word.trim_start_matches(['@', '-', '+']).rsplit('/').next().map(str::to_owned);
    let start = words.iter().position(|w| program_of(w).is_some_and(|p| p.starts_with("qemu-system-")))?;
    let program = program_of(words[start])?;
    let arch = match program.trim_start_matches("qemu-system-") {
        "x86_64" => Arch::X86_64,
        "aarch64" => Arch::Aarch64,
        "riscv64" => Arch::Riscv64,
        _ => return None,
    };
    let args = &words[start + 1..];
    let machine = args
        .windows(2)
        .find(|pair| pair[0] == "-M" || pair[0] == "-machine")
        .map(|pair| pair[1].split(',').next().unwrap_or_default().to_owned())?;
    let semihosting = args.iter().any(|w| w.starts_with("-semihosting"));
    Some(Board { arch, machine, semihosting, found_in: found_in.to_owned() })
}

/// A Makefile with its simple variables (`NAME = value`, `:=`, `?=`, `+=`) substituted into
/// `$(NAME)` and `${NAME}`, the way the tutorials' Makefiles spell their QEMU command
/// (`$(QEMU_BINARY) -M $(QEMU_MACHINE_TYPE)`). Conditionals are ignored: the first value
/// assigned wins.
pub(super) fn expand_make_variables(text: &str) -> String {
    let variables = make_variables(text);
    let mut expanded = text.to_owned();
    // Values may name other variables: a few rounds resolve the usual nesting.
    for _ in 0..4 {
        for (name, value) in &variables {
            expanded = expanded.replace(&format!("$({name})"), value).replace(&format!("${{{name}}}"), value);
        }
    }
    expanded
}

/// A Makefile's simple variables with the first value each is given (`BOARD ?= qemu`).
fn make_variables(text: &str) -> Vec<(String, String)> {
    let mut variables: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        for operator in [":=", "?=", "+=", "="] {
            if let Some((name, value)) = line.split_once(operator)
                && !name.trim().is_empty()
                && name.trim().chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                let name = name.trim().to_owned();
                if !variables.iter().any(|(known, _)| *known == name) {
                    variables.push((name, value.trim().to_owned()));
                }
                break;
            }
        }
    }
    variables
}

/// The first board named by a QEMU command in the runner, a Makefile or a shell script at the
/// root, unless it is kiln's default machine for its arch.
fn board(root: &Path, runner: Option<&str>) -> Option<Board> {
    let mut sources: Vec<(String, String)> =
        runner.map(|r| (".cargo/config.toml runner".to_owned(), r.to_owned())).into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in
            names.into_iter().filter(|n| n == "Makefile" || n == "makefile" || n.ends_with(".mk") || n.ends_with(".sh"))
        {
            if let Ok(text) = std::fs::read_to_string(root.join(&name)) {
                let text = text.replace("\\\n", " ");
                let text = if name.ends_with(".sh") { text } else { expand_make_variables(&text) };
                sources.push((name, text));
            }
        }
    }
    let default = |arch: Arch| match arch {
        Arch::X86_64 => ["q35", "pc"].as_slice(),
        Arch::Aarch64 | Arch::Riscv64 => ["virt"].as_slice(),
    };
    let boards: Vec<Board> = sources
        .iter()
        .flat_map(|(found_in, text)| text.lines().filter_map(move |line| board_in(line, found_in)))
        .collect();
    let mut first = boards.iter().find(|board| !default(board.arch).contains(&board.machine.as_str()))?.clone_board();
    // A variable's definition names the board; the recipe that uses it adds the options.
    first.semihosting = boards.iter().any(|b| b.arch == first.arch && b.machine == first.machine && b.semihosting);
    Some(first)
}

/// The Makefiles at the root (`Makefile`, `makefile`, `*.mk`), by name, sorted.
fn makefiles(root: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| n == "Makefile" || n == "makefile" || n.ends_with(".mk"))
        .filter_map(|name| std::fs::read_to_string(root.join(&name)).ok().map(|text| (name, text)))
        .collect()
}

/// One kernel package.
pub(super) struct Kernel {
    /// The cargo package name.
    pub package: String,
    /// Its directory relative to the root (`.` for the root).
    pub dir: String,
    /// Whether it has integration tests (`tests/*.rs`) or test kernels to run.
    pub has_tests: bool,
    /// `[package.metadata.bootimage]`, for kernels built the bootimage way.
    pub bootimage: Option<Bootimage>,
    /// Whether it depends on the `bootloader` crate (and which major version).
    pub bootloader: Option<String>,
    /// Whether it depends on `bootloader_api` (the current bootloader's kernel side), and its
    /// version requirement.
    pub bootloader_api: Option<String>,
}

/// `[package.metadata.bootimage]`, as `cargo bootimage` reads it.
#[derive(Default)]
pub(super) struct Bootimage {
    /// `test-args`: QEMU arguments for test kernels.
    pub test_args: Vec<String>,
    /// `test-success-exit-code`: QEMU's exit status that means a test kernel passed.
    pub test_success_exit_code: Option<i64>,
    /// `test-timeout`: seconds.
    pub test_timeout: Option<i64>,
}

/// The pinned toolchain from `rust-toolchain.toml` (or the older `rust-toolchain`).
pub(super) struct Toolchain {
    /// `channel`, such as `nightly-2022-10-01`.
    pub channel: String,
    /// `targets` it lists.
    pub targets: Vec<String>,
    /// `components` it lists.
    pub components: Vec<String>,
}

/// What `.cargo/config.toml` (at the root or above it) says.
#[derive(Default)]
pub(super) struct CargoConfig {
    /// `build.target`: a triple or a JSON target file.
    pub build_target: Option<String>,
    /// `unstable.build-std`.
    pub build_std: Option<Vec<String>>,
    /// A `target.*.runner`.
    pub runner: Option<String>,
    /// Linker scripts named in rustflags (`-T FILE`), as written.
    pub linker_scripts_in_flags: Vec<String>,
}

impl Repository {
    /// Reads the repository at `root`.
    pub(super) fn read(root: &Path) -> anyhow::Result<Repository> {
        let git_root = root.ancestors().find(|dir| dir.join(".git").exists()).map(Path::to_owned);
        let kernels = kernels(root)?;
        let toolchain = toolchain(root);
        let cargo = cargo_config(root, git_root.as_deref());
        let mut linker_scripts = Vec::new();
        for entry in ignore::WalkBuilder::new(root).max_depth(Some(4)).build().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".ld") || name == "link.x" || name == "linker.x")
                && let Ok(relative) = entry.path().strip_prefix(root)
            {
                linker_scripts.push(relative.display().to_string());
            }
        }
        linker_scripts.sort();
        let board = board(root, cargo.runner.as_deref());
        let copies = makefiles(root).iter().flat_map(|(name, text)| copies_in(text, name)).collect();
        Ok(Repository { root: root.to_owned(), git_root, kernels, toolchain, cargo, linker_scripts, board, copies })
    }

    /// The architecture of `build.target`, when it names one: from the triple, or from the
    /// `arch` of a JSON target file.
    pub(super) fn build_arch(&self) -> Option<Arch> {
        let target = self.cargo.build_target.as_deref()?;
        arch_of(target).or_else(|| {
            let spec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(self.root.join(target)).ok()?).ok()?;
            arch_of(spec.get("arch")?.as_str()?)
        })
    }

    /// The root relative to the git root (`None` when they are the same or there is no git).
    pub(super) fn dir_in_git(&self) -> Option<String> {
        let relative = self.root.strip_prefix(self.git_root.as_ref()?).ok()?;
        (!relative.as_os_str().is_empty()).then(|| relative.display().to_string())
    }
}

/// The architecture a target triple (or JSON target file name) is for.
pub(super) fn arch_of(target: &str) -> Option<Arch> {
    let name = Path::new(target).file_stem()?.to_string_lossy().into_owned();
    if name.starts_with("arm64") {
        return Some(Arch::Aarch64);
    }
    Arch::ALL.into_iter().find(|arch| name.starts_with(arch.as_str()))
}

fn metadata(root: &Path, toolchain: Option<&str>) -> anyhow::Result<std::process::Output> {
    let mut command = tool_command("cargo", root);
    command.args(["metadata", "--format-version", "1", "--no-deps"]);
    if let Some(toolchain) = toolchain {
        command.env("RUSTUP_TOOLCHAIN", toolchain);
    }
    command.output().context("failed to run `cargo metadata`")
}

fn kernels(root: &Path) -> anyhow::Result<Vec<Kernel>> {
    // The repository's own toolchain first; when it is not installed yet, any stable cargo
    // reads the manifests as well (`--no-deps` resolves nothing).
    let mut output = metadata(root, None)?;
    if !output.status.success() {
        output = metadata(root, Some("stable"))?;
    }
    if !output.status.success() {
        bail!("`cargo metadata` failed in `{}`: {}", root.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata = crate::exec::cargo_json::Metadata::parse(String::from_utf8_lossy(&output.stdout).as_ref())?;
    let mut kernels = Vec::new();
    for package in &metadata.packages {
        let dir = package.manifest_path.parent().map(Path::to_owned).unwrap_or_default();
        if dir.starts_with(root.join(super::XTASK_DIR)) || !package.targets.iter().any(|t| t.is_bin() || t.is_test()) {
            continue;
        }
        // The host package of the bootloader's template (its `build.rs` makes the disk images
        // with `bootloader` as a build-dependency, its `main` runs QEMU) is no kernel.
        if package.dependencies.iter().any(|dep| {
            dep.name == "bootloader" && dep.kind == DependencyKind::Build && !is_bootloader_0_9(requirement(&dep.req))
        }) {
            continue;
        }
        let relative = dir.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default();
        let bootimage = package.metadata.get("bootimage").map(|table| Bootimage {
            test_args: strings(table.get("test-args")),
            test_success_exit_code: table.get("test-success-exit-code").and_then(serde_json::Value::as_i64),
            test_timeout: table.get("test-timeout").and_then(serde_json::Value::as_i64),
        });
        let dependency = |name: &str| {
            package
                .dependencies
                .iter()
                .find(|dep| dep.name == name && dep.kind != DependencyKind::Development)
                .map(|dep| requirement(&dep.req).to_owned())
        };
        let (bootloader, bootloader_api) = (dependency("bootloader"), dependency("bootloader_api"));
        kernels.push(Kernel {
            package: package.name.to_string(),
            dir: if relative.is_empty() { ".".to_owned() } else { relative },
            has_tests: package.targets.iter().any(|t| t.is_test()) || bootimage.is_some(),
            bootimage,
            bootloader,
            bootloader_api,
        });
    }
    Ok(kernels)
}

/// A version requirement without its operator (`^0.9` → `0.9`).
fn requirement(req: &str) -> &str {
    req.trim_start_matches(['^', '=', '~', ' '])
}

/// Whether a `bootloader` version (requirement) is 0.9 or older: the bootimage way.
pub(super) fn is_bootloader_0_9(version: &str) -> bool {
    let mut parts = version.split('.');
    let (major, minor) = (parts.next(), parts.next().and_then(|minor| minor.parse::<u64>().ok()));
    major == Some("0") && minor.is_some_and(|minor| minor <= 9)
}

fn strings(value: Option<&serde_json::Value>) -> Vec<String> {
    value
        .and_then(serde_json::Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn toolchain(root: &Path) -> Option<Toolchain> {
    let (channel, file) = crate::exec::toolchain_file(root)?;
    let table = std::fs::read_to_string(file).ok()?.parse::<toml::Table>().ok();
    let list = |key: &str| -> Vec<String> {
        table
            .as_ref()
            .and_then(|t| t.get("toolchain")?.get(key)?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    Some(Toolchain { channel, targets: list("targets"), components: list("components") })
}

/// The cargo configuration files that apply at `root`, nearest first (as cargo merges them),
/// up to the git root.
fn config_files(root: &Path, git_root: Option<&Path>) -> Vec<toml::Table> {
    let mut tables = Vec::new();
    for dir in root.ancestors() {
        for name in ["config.toml", "config"] {
            if let Some(table) =
                std::fs::read_to_string(dir.join(".cargo").join(name)).ok().and_then(|t| t.parse().ok())
            {
                tables.push(table);
                break;
            }
        }
        if Some(dir) == git_root {
            break;
        }
    }
    tables
}

fn cargo_config(root: &Path, git_root: Option<&Path>) -> CargoConfig {
    let mut config = CargoConfig::default();
    for table in config_files(root, git_root) {
        let build = table.get("build");
        if config.build_target.is_none() {
            config.build_target = build.and_then(|b| b.get("target")?.as_str().map(str::to_owned));
        }
        if config.build_std.is_none() {
            config.build_std = table.get("unstable").and_then(|u| u.get("build-std")).map(|v| match v {
                toml::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                other => other.as_str().map(|s| s.split(',').map(str::to_owned).collect()).unwrap_or_default(),
            });
        }
        let mut flag_lists: Vec<&toml::Value> = build.and_then(|b| b.get("rustflags")).into_iter().collect();
        if let Some(targets) = table.get("target").and_then(toml::Value::as_table) {
            for target in targets.values() {
                if config.runner.is_none() {
                    config.runner = target.get("runner").map(|runner| match runner {
                        toml::Value::Array(items) => {
                            items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(" ")
                        }
                        other => other.as_str().unwrap_or_default().to_owned(),
                    });
                }
                flag_lists.extend(target.get("rustflags"));
            }
        }
        for flags in flag_lists {
            config.linker_scripts_in_flags.extend(linker_scripts_in(flags));
        }
    }
    config
}

/// The `-T FILE` linker scripts in one rustflags value (a list or a space-separated string).
fn linker_scripts_in(flags: &toml::Value) -> Vec<String> {
    let words: Vec<String> = match flags {
        toml::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        other => other.as_str().unwrap_or_default().split_whitespace().map(str::to_owned).collect(),
    };
    let mut scripts = Vec::new();
    let mut words = words.iter().peekable();
    while let Some(word) = words.next() {
        let word = word.trim_start_matches("-C").trim_start_matches("link-arg=").trim_start_matches("link-args=");
        if let Some(script) = word.strip_prefix("-T") {
            if script.is_empty() {
                if let Some(next) = words.next_if(|next| !next.starts_with('-')) {
                    scripts.push(next.to_owned());
                }
            } else {
                scripts.push(script.to_owned());
            }
        }
    }
    scripts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootloader_0_9_and_older_is_the_bootimage_way() {
        for old in ["0.9", "0.9.35", "0.8.0", "0.4"] {
            assert!(is_bootloader_0_9(old), "{old}");
        }
        for new in ["0.10", "0.11.17", "0.11", "1.0", "*"] {
            assert!(!is_bootloader_0_9(new), "{new}");
        }
        assert_eq!(requirement("^0.11.17"), "0.11.17");
        assert_eq!(requirement("=0.9.35"), "0.9.35");
    }

    #[test]
    fn a_makefile_cp_line_is_read_with_the_board_it_copies_for() {
        let make = "BOARD ?= qemu\nSBI ?= opensbi\n\nkernel:\n\t@echo Platform: $(BOARD)\n\t@cp src/linker-$(BOARD).ld src/linker.ld\n\
                    \t@cargo build --release\n\t@rm src/linker.ld\n\ninstall:\n\tcp a b c/\n\tcp -r ./out ./dist\n";
        let copies = copies_in(make, "Makefile");
        assert_eq!(
            copies[0],
            MakeCopy {
                from: "src/linker-qemu.ld".into(),
                to: "src/linker.ld".into(),
                written: "cp src/linker-$(BOARD).ld src/linker.ld".into(),
                variables: vec![("BOARD".into(), "qemu".into())],
                found_in: "Makefile".into(),
            }
        );
        assert_eq!(copies.len(), 2, "several sources are not one copy: {copies:?}");
        assert_eq!((copies[1].from.as_str(), copies[1].to.as_str()), ("out", "dist"));
    }

    #[test]
    fn arch_comes_from_triples_and_json_targets() {
        assert_eq!(arch_of("riscv64gc-unknown-none-elf"), Some(Arch::Riscv64));
        assert_eq!(arch_of("targets/x86_64-kernel.json"), Some(Arch::X86_64));
        assert_eq!(arch_of("aarch64-unknown-none-softfloat"), Some(Arch::Aarch64));
        assert_eq!(arch_of("thumbv7em-none-eabihf"), None);
    }

    #[test]
    fn the_board_comes_from_a_qemu_command_line() {
        let make = "\t$(QEMU_BINARY) qemu-system-aarch64 -M raspi3b -serial stdio -display none -semihosting -kernel $(KERNEL_BIN)";
        assert_eq!(
            board_in(make, "Makefile"),
            Some(Board {
                arch: Arch::Aarch64,
                machine: "raspi3b".into(),
                semihosting: true,
                found_in: "Makefile".into()
            })
        );
        let runner = "qemu-system-riscv64 -machine virt,aclint=on -bios default -kernel";
        assert_eq!(board_in(runner, "runner").map(|b| b.machine), Some("virt".to_owned()));
        assert_eq!(board_in("cargo build --release", "Makefile"), None);
        let makefile = "QEMU_BINARY = qemu-system-aarch64\nQEMU_MACHINE_TYPE = raspi3b\n\
                        EXEC_QEMU = $(QEMU_BINARY) -M $(QEMU_MACHINE_TYPE)\nqemu:\n\t@$(EXEC_QEMU) -semihosting -kernel k\n";
        let expanded = expand_make_variables(makefile);
        assert!(
            expanded.lines().any(|line| board_in(line, "Makefile").is_some_and(|b| b.machine == "raspi3b")),
            "{expanded}"
        );
    }

    #[test]
    fn linker_scripts_come_from_every_rustflags_spelling() {
        let list: toml::Value = toml::Value::Array(vec![
            "-Clink-arg=-Tsrc/linker.ld".into(),
            "-C".into(),
            "link-arg=-Tkernel.ld".into(),
            "-Cforce-frame-pointers=yes".into(),
        ]);
        assert_eq!(linker_scripts_in(&list), ["src/linker.ld", "kernel.ld"]);
        let string = toml::Value::String("-C link-arg=-T -C link-arg=boot.ld".into());
        assert_eq!(linker_scripts_in(&string), Vec::<String>::new(), "a split -T over two -C is not guessed");
    }
}
