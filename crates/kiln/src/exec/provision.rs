//! Set-up is part of the product: find what the host lacks (QEMU, firmware, rustup
//! targets), name the exact package or command, and install it when allowed.

use std::{
    collections::BTreeSet,
    io::{BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use kiln_qemu::{Machine, QemuError, firmware};

use super::tool::tool_command;
use crate::{events::Reporter, plan};

/// Whether kiln may install what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InstallMode {
    /// Install without asking (`--yes`, or `CI=true`).
    Yes,
    /// Ask on the terminal.
    Ask,
    /// Never install; fail with the commands to run.
    Never,
}

impl InstallMode {
    /// Picks the mode from `--yes`, `CI` and whether a person is at the terminal.
    pub fn detect(yes: bool) -> Self {
        if yes || crate::env::in_ci() {
            Self::Yes
        } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            Self::Ask
        } else {
            Self::Never
        }
    }
}

/// Something the host lacks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Missing {
    /// A system package (named as on Debian/Ubuntu).
    Package {
        /// The Debian/Ubuntu package.
        package: &'static str,
        /// What needs it, e.g. "`qemu-system-riscv64`".
        needed_for: String,
    },
    /// A rustup target for the toolchain used in a directory.
    RustupTarget {
        /// The target triple.
        target: String,
        /// The directory whose toolchain needs it.
        dir: PathBuf,
    },
    /// The toolchain a `rust-toolchain(.toml)` file names.
    Toolchain {
        /// Its channel, e.g. `nightly-2026-08-01`.
        channel: String,
        /// The directory the file applies to.
        dir: PathBuf,
    },
    /// A rustup component (`rust-src` for `build-std`).
    Component {
        /// The component.
        component: String,
        /// The directory whose toolchain needs it.
        dir: PathBuf,
    },
}

impl Missing {
    fn describe(&self) -> String {
        match self {
            Self::Package { package, needed_for } => format!("package `{package}` (for {needed_for})"),
            Self::RustupTarget { target, .. } => format!("rustup target `{target}`"),
            Self::Toolchain { channel, .. } => format!("toolchain `{channel}` (from rust-toolchain file)"),
            Self::Component { component, .. } => format!("rustup component `{component}`"),
        }
    }
}

/// What `machine` needs on this host that is missing.
pub(crate) fn check_machine(machine: &Machine) -> Vec<Missing> {
    match firmware::check(machine) {
        Ok(()) => Vec::new(),
        Err(QemuError::QemuMissing { program, package }) => {
            vec![Missing::Package { package, needed_for: format!("`{program}`") }]
        }
        Err(QemuError::FirmwareMissing { file, package, .. }) if !package.contains(' ') => {
            vec![Missing::Package { package, needed_for: format!("firmware `{file}`") }]
        }
        Err(_) => Vec::new(),
    }
}

/// OVMF, when one of `builds` makes UEFI disk images and the host lacks it.
pub(crate) fn check_disk_firmware(builds: &[plan::BuildStep]) -> Vec<Missing> {
    let Some(step) = builds.iter().find(|step| step.artifact.image == crate::config::ImageFormat::Uefi) else {
        return Vec::new();
    };
    let needed_for = format!("the UEFI disk images of artifact `{}`", step.artifact.name);
    match firmware::find_ovmf(&needed_for) {
        Ok(_) => Vec::new(),
        Err(_) => vec![Missing::Package { package: firmware::OVMF_PACKAGE, needed_for }],
    }
}

/// The rustup targets among `targets` that the toolchain in `dir` lacks. Without rustup,
/// nothing is reported (cargo then names the problem itself).
pub(crate) fn check_targets(dir: &Path, targets: &BTreeSet<String>) -> Vec<Missing> {
    let output = tool_command("rustup", dir).args(["target", "list", "--installed"]).output();
    let Ok(output) = output else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    let installed: BTreeSet<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    targets
        .iter()
        .filter(|t| !installed.contains(*t) && !t.ends_with(".json"))
        .map(|t| Missing::RustupTarget { target: t.clone(), dir: dir.to_owned() })
        .collect()
}

/// The channel named by the `rust-toolchain(.toml)` file that applies in `dir`, with the file.
pub(crate) fn toolchain_file(dir: &Path) -> Option<(String, PathBuf)> {
    for ancestor in dir.ancestors() {
        let toml_file = ancestor.join("rust-toolchain.toml");
        if let Ok(text) = std::fs::read_to_string(&toml_file) {
            let channel = text
                .parse::<toml::Table>()
                .ok()
                .and_then(|table| table.get("toolchain")?.get("channel")?.as_str().map(str::to_owned))?;
            return Some((channel, toml_file));
        }
        let plain = ancestor.join("rust-toolchain");
        if let Ok(text) = std::fs::read_to_string(&plain) {
            let channel = match text.parse::<toml::Table>() {
                Ok(table) => table.get("toolchain")?.get("channel")?.as_str()?.to_owned(),
                Err(_) => text.trim().to_owned(),
            };
            return Some((channel, plain));
        }
    }
    None
}

/// Whether a cargo config file that applies in `dir` sets `[unstable] build-std` (cargo then
/// builds the standard library from source, which needs `rust-src`).
pub(crate) fn cargo_config_builds_std(dir: &Path) -> bool {
    dir.ancestors().any(|ancestor| {
        ["config.toml", "config"].iter().any(|name| {
            std::fs::read_to_string(ancestor.join(".cargo").join(name))
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
                .is_some_and(|table| table.get("unstable").is_some_and(|u| u.get("build-std").is_some()))
        })
    })
}

/// Whether a channel floats (moves from day to day), so builds with it are not reproducible.
pub(crate) fn is_floating(channel: &str) -> bool {
    matches!(channel, "nightly" | "beta") || channel.starts_with("nightly-x86") || channel.starts_with("beta-x86")
}

/// A warning when the toolchain file that applies in `dir` names a floating channel.
pub(crate) fn floating_channel_warning(dir: &Path) -> Option<String> {
    let (channel, file) = toolchain_file(dir)?;
    is_floating(&channel).then(|| {
        format!(
            "`{}` names the floating channel `{channel}`: builds are not reproducible; pin a date such as \
             `{channel}-2026-08-01`",
            file.display()
        )
    })
}

/// What the host lacks to build `builds` and boot `runs`: QEMU and firmware per machine; per
/// package directory its toolchain, or, once that is there, its targets, `rust-src` and for
/// bootloader images `llvm-tools` (bootloader 0.9's build script runs its `llvm-objcopy`).
pub(crate) fn host_needs(runs: &[plan::CaseRun], builds: &[plan::BuildStep]) -> Vec<Missing> {
    let mut missing: Vec<Missing> = runs.iter().flat_map(|run| check_machine(&run.machine)).collect();
    missing.extend(check_disk_firmware(builds));
    let mut targets: std::collections::BTreeMap<&Path, BTreeSet<String>> = std::collections::BTreeMap::new();
    for step in builds {
        targets.entry(step.artifact.dir.as_path()).or_default().insert(step.triple.clone());
    }
    for (dir, triples) in &targets {
        let toolchain = check_toolchain(dir);
        if toolchain.is_empty() {
            missing.extend(check_targets(dir, triples));
            let here = || builds.iter().filter(|s| s.artifact.dir == *dir);
            let disk_images = here().any(|s| s.artifact.image == crate::config::ImageFormat::Bootimage);
            if disk_images || here().any(|s| s.artifact.build_std.is_some()) || cargo_config_builds_std(dir) {
                missing.extend(check_component(dir, "rust-src"));
            }
            if disk_images {
                missing.extend(check_component(dir, "llvm-tools"));
            }
        }
        missing.extend(toolchain);
    }
    missing.sort();
    missing.dedup();
    missing
}

/// The toolchain the project's toolchain file names, when rustup lacks it.
pub(crate) fn check_toolchain(dir: &Path) -> Vec<Missing> {
    let Some((channel, _)) = toolchain_file(dir) else { return Vec::new() };
    let Ok(output) = tool_command("rustup", dir).args(["toolchain", "list"]).output() else {
        return Vec::new();
    };
    let listed = String::from_utf8_lossy(&output.stdout);
    let installed = listed.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == channel || name.starts_with(&format!("{channel}-"))
    });
    if installed { Vec::new() } else { vec![Missing::Toolchain { channel, dir: dir.to_owned() }] }
}

/// `component` (`rust-src` for `build-std`, `llvm-tools`), when the toolchain in `dir` lacks it.
pub(crate) fn check_component(dir: &Path, component: &str) -> Vec<Missing> {
    let output = tool_command("rustup", dir).args(["component", "list", "--installed"]).output();
    let Ok(output) = output else { return Vec::new() };
    if !output.status.success() {
        return Vec::new();
    }
    let has = String::from_utf8_lossy(&output.stdout).lines().any(|l| l.starts_with(component));
    if has { Vec::new() } else { vec![Missing::Component { component: component.to_owned(), dir: dir.to_owned() }] }
}

/// One line per missing thing, then the commands that install them.
pub(crate) fn describe_fixes(missing: &[Missing]) -> Vec<String> {
    let mut lines: Vec<String> = missing.iter().map(|m| format!("missing: {}", m.describe())).collect();
    lines.push("install them with:".to_owned());
    lines.extend(install_commands(missing).into_iter().map(|c| format!("    {}", c.shown)));
    lines
}

/// Installs what is missing, or fails with the exact commands that would.
pub(crate) fn ensure(missing: Vec<Missing>, mode: InstallMode, reporter: &dyn Reporter) -> anyhow::Result<()> {
    let missing: Vec<Missing> = missing.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let commands = install_commands(&missing);
    if mode != InstallMode::Never {
        reporter.status("Missing", &missing.iter().map(Missing::describe).collect::<Vec<_>>().join(", "));
    }
    let proceed = match mode {
        InstallMode::Yes => true,
        InstallMode::Never => false,
        InstallMode::Ask => {
            let mut stderr = std::io::stderr();
            let _ = writeln!(stderr, "kiln can run:");
            for command in &commands {
                let _ = writeln!(stderr, "    {}", command.shown);
            }
            let _ = write!(stderr, "Install them now? [Y/n] ");
            let _ = stderr.flush();
            let mut answer = String::new();
            // End of input or a read error is a "no": only a person's Enter or `y` installs.
            match std::io::stdin().lock().read_line(&mut answer) {
                Ok(0) | Err(_) => false,
                Ok(_) => matches!(answer.trim(), "" | "y" | "Y" | "yes"),
            }
        }
    };
    if !proceed {
        let list = commands.iter().map(|c| format!("    {}", c.shown)).collect::<Vec<_>>().join("\n");
        bail!(
            "the host lacks {}\nhelp: install them with:\n{list}\nor rerun with `--yes` to let kiln install them",
            missing.iter().map(Missing::describe).collect::<Vec<_>>().join(", ")
        );
    }
    let had_qemu_img = crate::host::find_program("qemu-img").is_some();
    for command in &commands {
        reporter.status("Installing", &command.shown);
        // Through `tool_command`, so the toolchain `cargo xtask` runs on does not stand in
        // for the project's own (rustup sets RUSTUP_TOOLCHAIN for the xtask).
        let status = tool_command(&command.program, &command.dir)
            .args(&command.args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("failed to run `{}`", command.shown))?;
        if !status.success() {
            bail!("`{}` failed with {status}; run it by hand to see why", command.shown);
        }
    }
    // Debian's qemu-system packages can replace a newer qemu-utils; put qemu-img back.
    if had_qemu_img && crate::host::find_program("qemu-img").is_none() {
        for command in apt_commands(&["qemu-utils"], false) {
            let _ = tool_command(&command.program, &command.dir).args(&command.args).status();
        }
    }
    Ok(())
}

struct InstallCommand {
    program: String,
    args: Vec<String>,
    dir: PathBuf,
    shown: String,
}

fn install_commands(missing: &[Missing]) -> Vec<InstallCommand> {
    let packages: Vec<&'static str> = missing
        .iter()
        .filter_map(|m| match m {
            Missing::Package { package, .. } => Some(*package),
            Missing::RustupTarget { .. } | Missing::Toolchain { .. } | Missing::Component { .. } => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut commands = Vec::new();
    if !packages.is_empty() {
        commands.extend(system_package_commands(&packages));
    }
    for m in missing {
        if let Missing::Toolchain { channel, dir } = m {
            commands.push(InstallCommand {
                program: "rustup".into(),
                args: vec!["toolchain".into(), "install".into()],
                dir: dir.clone(),
                shown: format!("(cd {} && rustup toolchain install)  # installs {channel}", dir.display()),
            });
        }
    }
    for m in missing {
        match m {
            Missing::RustupTarget { target, dir } => commands.push(InstallCommand {
                program: "rustup".into(),
                args: vec!["target".into(), "add".into(), target.clone()],
                dir: dir.clone(),
                shown: format!("rustup target add {target}"),
            }),
            Missing::Component { component, dir } => commands.push(InstallCommand {
                program: "rustup".into(),
                args: vec!["component".into(), "add".into(), component.clone()],
                dir: dir.clone(),
                shown: format!("(cd {} && rustup component add {component})", dir.display()),
            }),
            Missing::Package { .. } | Missing::Toolchain { .. } => {}
        }
    }
    commands
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn system_package_commands(packages: &[&'static str]) -> Vec<InstallCommand> {
    if crate::host::find_program("apt-get").is_some() {
        return apt_commands(packages, true);
    }
    let (manager, install): (&str, &[&str]) = if crate::host::find_program("dnf").is_some() {
        ("dnf", &["install", "-y"])
    } else if crate::host::find_program("pacman").is_some() {
        ("pacman", &["-S", "--needed", "--noconfirm"])
    } else if crate::host::find_program("brew").is_some() {
        ("brew", &["install"])
    } else {
        ("apt-get", &["install", "-y", "--no-install-recommends"])
    };
    let names: BTreeSet<&str> = packages.iter().map(|p| translate(manager, p)).collect();
    let mut args: Vec<String> = install.iter().map(|s| (*s).to_owned()).collect();
    args.extend(names.iter().map(|s| (*s).to_owned()));
    vec![privileged(manager, args)]
}

/// The package name on another manager for a Debian package name.
fn translate(manager: &str, debian: &'static str) -> &'static str {
    match (manager, debian) {
        ("brew", _) => "qemu",
        ("dnf" | "pacman", "qemu-system-arm") => "qemu-system-aarch64",
        ("dnf" | "pacman", "qemu-system-misc") => "qemu-system-riscv",
        ("dnf", "seabios") => "seabios-bin",
        _ => debian,
    }
}

fn apt_commands(packages: &[&'static str], update: bool) -> Vec<InstallCommand> {
    let mut commands = Vec::new();
    if update {
        commands.push(privileged("apt-get", vec!["update".into()]));
    }
    let mut args = vec!["install".to_owned(), "-y".into(), "--no-install-recommends".into()];
    args.extend(packages.iter().map(|p| (*p).to_owned()));
    commands.push(privileged("apt-get", args));
    commands
}

fn privileged(program: &str, args: Vec<String>) -> InstallCommand {
    let (program, args) = if is_root() || program == "brew" {
        (program.to_owned(), args)
    } else {
        let mut with_sudo = vec![program.to_owned()];
        with_sudo.extend(args);
        ("sudo".to_owned(), with_sudo)
    };
    let shown = std::iter::once(program.clone()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
    InstallCommand { program, args, dir: PathBuf::from("/"), shown }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_install_lists_each_package_once() {
        let missing = vec![
            Missing::Package { package: "qemu-system-misc", needed_for: "`qemu-system-riscv64`".into() },
            Missing::Package { package: "qemu-system-misc", needed_for: "firmware".into() },
            Missing::RustupTarget { target: "aarch64-unknown-none".into(), dir: "/".into() },
        ];
        let shown: Vec<String> = install_commands(&missing).into_iter().map(|c| c.shown).collect();
        assert!(shown.iter().any(|s| s.ends_with("install -y --no-install-recommends qemu-system-misc")), "{shown:?}");
        assert_eq!(shown.last().map(String::as_str), Some("rustup target add aarch64-unknown-none"));
    }
}
