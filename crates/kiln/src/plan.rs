//! From configuration to plan: which artifacts to build for which arch, and which cases to
//! boot on which machines.

use std::collections::BTreeSet;

use kiln_qemu::{Judge, Machine};
use kiln_types::Arch;

use crate::config::{Artifact, Case, CaseGuest, Config, ConfigError, Expect, LayerSource};

/// Names one artifact built for one architecture.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildKey {
    /// Artifact name.
    pub artifact: String,
    /// Architecture.
    pub arch: Arch,
}

impl BuildKey {
    /// The name the store records this build under: `ARTIFACT-ARCH`.
    pub fn store_name(&self) -> String {
        format!("{}-{}", self.artifact, self.arch)
    }
}

impl std::fmt::Display for BuildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.artifact, self.arch)
    }
}

/// Whether an image is a kernel or a rootfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageKind {
    /// `[kernel.NAME]`.
    Kernel,
    /// `[rootfs.NAME]`.
    Rootfs,
}

/// Names one kernel or rootfs for one architecture.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageKey {
    /// Kernel or rootfs (kernels sort first).
    pub kind: ImageKind,
    /// Its name in Kiln.toml.
    pub name: String,
    /// Architecture.
    pub arch: Arch,
}

impl ImageKey {
    /// The name the store records this image under: `kernel-NAME-ARCH` or `rootfs-NAME-ARCH`.
    pub fn store_name(&self) -> String {
        let kind = match self.kind {
            ImageKind::Kernel => "kernel",
            ImageKind::Rootfs => "rootfs",
        };
        format!("{kind}-{}-{}", self.name, self.arch)
    }
}

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ImageKind::Kernel => "kernel",
            ImageKind::Rootfs => "rootfs",
        };
        write!(f, "{kind} {} ({})", self.name, self.arch)
    }
}

/// What a case boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guest {
    /// An artifact's binary as the kernel.
    Artifact(BuildKey),
    /// A Linux kernel and rootfs, running a command under kiln's init.
    Linux {
        /// The kernel.
        kernel: ImageKey,
        /// The rootfs.
        rootfs: ImageKey,
        /// The shell command.
        command: String,
        /// Run it on a restored snapshot through the agent.
        snapshot: bool,
    },
}

/// One cargo build.
#[derive(Clone, Debug)]
pub struct BuildStep {
    /// What it builds.
    pub key: BuildKey,
    /// The artifact's settings.
    pub artifact: Artifact,
    /// The target triple.
    pub triple: String,
    /// The project root (the directory of Kiln.toml); closure inputs are named relative to it.
    pub project_root: std::path::PathBuf,
}

/// One boot of one case on one machine.
#[derive(Clone, Debug)]
pub struct CaseRun {
    /// The case's name.
    pub case: String,
    /// The machine profile.
    pub machine: Machine,
    /// What it boots.
    pub guest: Guest,
    /// How it is judged.
    pub judge: Judge,
    /// Whether it is expected to pass.
    pub expect: Expect,
    /// Hard timeout.
    pub timeout: std::time::Duration,
    /// No-output watchdog.
    pub no_output_timeout: Option<std::time::Duration>,
    /// Stop once the success marker appears.
    pub stop_on_success: bool,
}

impl CaseRun {
    /// `case/machine`, the name reports and log files use.
    pub fn label(&self) -> String {
        format!("{}/{}", self.case, self.machine.name)
    }
}

/// What the user selected on the command line.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these architectures (all when empty).
    pub arches: Vec<Arch>,
    /// Only these cases (all when empty).
    pub cases: Vec<String>,
}

impl Selection {
    fn wants_arch(&self, arch: Arch) -> bool {
        self.arches.is_empty() || self.arches.contains(&arch)
    }
}

/// Builds and boots, in order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Builds, each once, sorted.
    pub builds: Vec<BuildStep>,
    /// Kernels and rootfs images (after the builds their layers use), sorted.
    pub images: Vec<ImageKey>,
    /// Boots.
    pub runs: Vec<CaseRun>,
}

impl Plan {
    /// Every selected artifact × arch, and no boots.
    pub fn for_build(config: &Config, selection: &Selection) -> Self {
        let keys = config
            .artifacts
            .values()
            .flat_map(|artifact| {
                artifact
                    .arches
                    .iter()
                    .filter(|arch| selection.wants_arch(**arch))
                    .map(|arch| BuildKey { artifact: artifact.name.clone(), arch: *arch })
            })
            .collect();
        Self { builds: build_steps(config, keys), images: Vec::new(), runs: Vec::new() }
    }

    /// Every selected kernel and rootfs (`names` empty: all), and the builds their layers use.
    pub fn for_images(config: &Config, selection: &Selection, kind: Option<ImageKind>, names: &[String]) -> Self {
        let mut images = BTreeSet::new();
        let wanted = |name: &String| names.is_empty() || names.contains(name);
        if kind != Some(ImageKind::Rootfs) {
            for kernel in config.kernels.values().filter(|k| wanted(&k.name)) {
                for arch in kernel.arches.iter().filter(|a| selection.wants_arch(**a)) {
                    images.insert(ImageKey { kind: ImageKind::Kernel, name: kernel.name.clone(), arch: *arch });
                }
            }
        }
        if kind != Some(ImageKind::Kernel) {
            for rootfs in config.rootfses.values().filter(|r| wanted(&r.name)) {
                for arch in rootfs.arches.iter().filter(|a| selection.wants_arch(**a)) {
                    images.insert(ImageKey { kind: ImageKind::Rootfs, name: rootfs.name.clone(), arch: *arch });
                }
            }
        }
        Self::with_images(config, BTreeSet::new(), images, Vec::new())
    }

    /// One kernel and one rootfs (for `run`), and the builds the rootfs's layers use.
    pub fn for_linux(config: &Config, kernel: &ImageKey, rootfs: &ImageKey) -> Self {
        Self::with_images(config, BTreeSet::new(), [kernel.clone(), rootfs.clone()].into(), Vec::new())
    }

    /// Everything Kiln.toml declares: every artifact, kernel and rootfs on every arch.
    pub fn everything(config: &Config) -> Self {
        let all = Selection::default();
        let builds = Self::for_build(config, &all).builds.into_iter().map(|b| b.key).collect();
        let images = Self::for_images(config, &all, None, &[]).images.into_iter().collect();
        Self::with_images(config, builds, images, Vec::new())
    }

    fn with_images(
        config: &Config,
        mut keys: BTreeSet<BuildKey>,
        images: BTreeSet<ImageKey>,
        runs: Vec<CaseRun>,
    ) -> Self {
        for image in &images {
            let Some(rootfs) = config.rootfses.get(&image.name).filter(|_| image.kind == ImageKind::Rootfs) else {
                continue;
            };
            for layer in &rootfs.layers {
                if let LayerSource::Artifact(artifact) = &layer.source {
                    keys.insert(BuildKey { artifact: artifact.clone(), arch: image.arch });
                }
            }
        }
        Self { builds: build_steps(config, keys), images: images.into_iter().collect(), runs }
    }

    /// Every selected case × machine, and the builds they need.
    pub fn for_test(config: &Config, selection: &Selection) -> Result<Self, ConfigError> {
        for wanted in &selection.cases {
            if !config.cases.contains_key(wanted) {
                let message = format!("no case named `{wanted}`");
                let err = ConfigError::whole_file(&config.file, message);
                let known = config.cases.keys().map(String::as_str);
                return Err(match crate::config::closest_name(wanted, known) {
                    Some(near) => err.with_help(format!("a case with a similar name exists: `{near}`")),
                    None => err.with_help(format!(
                        "cases in this project: {}",
                        config.cases.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                });
            }
        }
        let mut runs = Vec::new();
        for case in config.cases.values() {
            if !selection.cases.is_empty() && !selection.cases.contains(&case.name) {
                continue;
            }
            for machine_name in &case.machines {
                let Some(machine) = config.machines.get(machine_name) else {
                    continue;
                };
                if !selection.wants_arch(machine.arch) {
                    continue;
                }
                runs.push(case_run(case, machine));
            }
        }
        let mut keys = BTreeSet::new();
        let mut images = BTreeSet::new();
        for run in &runs {
            match &run.guest {
                Guest::Artifact(key) => {
                    keys.insert(key.clone());
                }
                Guest::Linux { kernel, rootfs, .. } => {
                    images.insert(kernel.clone());
                    images.insert(rootfs.clone());
                }
            }
        }
        Ok(Self::with_images(config, keys, images, runs))
    }
}

fn build_steps(config: &Config, keys: BTreeSet<BuildKey>) -> Vec<BuildStep> {
    keys.into_iter()
        .filter_map(|key| {
            let artifact = config.artifacts.get(&key.artifact)?;
            let triple = artifact.targets.get(&key.arch)?.clone();
            Some(BuildStep { artifact: artifact.clone(), triple, key, project_root: config.root.clone() })
        })
        .collect()
}

/// Serial lines that mean a Linux guest's kernel failed; they fail a Linux case at once,
/// besides the case's own `failure` pattern. Only kernel messages count: they carry the
/// kernel's `[    1.234567] ` timestamp, which a program's own output does not.
pub const KERNEL_FAILURE: &str =
    r"^\[\s*\d+\.\d+\] (Kernel panic - not syncing|Oops(: |\[)|BUG: |Unable to handle kernel|general protection fault)";

fn case_run(case: &Case, machine: &Machine) -> CaseRun {
    let arch = machine.arch;
    let (guest, failure) = match &case.guest {
        CaseGuest::Artifact(artifact) => {
            (Guest::Artifact(BuildKey { artifact: artifact.clone(), arch }), case.failure.clone())
        }
        CaseGuest::Linux { kernel, rootfs, command, snapshot } => {
            let guest = Guest::Linux {
                kernel: ImageKey { kind: ImageKind::Kernel, name: kernel.clone(), arch },
                rootfs: ImageKey { kind: ImageKind::Rootfs, name: rootfs.clone(), arch },
                command: command.clone(),
                snapshot: *snapshot,
            };
            let pattern = match &case.failure {
                Some(own) => format!("(?:{})|(?:{KERNEL_FAILURE})", own.as_str()),
                None => KERNEL_FAILURE.to_owned(),
            };
            (guest, regex::Regex::new(&pattern).ok().or_else(|| case.failure.clone()))
        }
    };
    let linux = matches!(guest, Guest::Linux { .. });
    let success_statuses = case.success_exit_codes.clone().unwrap_or_else(|| match machine.exit_device() {
        Some(device) if !linux => device.success_statuses().to_vec(),
        _ => vec![0],
    });
    CaseRun {
        case: case.name.clone(),
        machine: machine.clone(),
        guest,
        judge: Judge { failure, success: case.success.clone(), success_statuses, guest_reports_status: linux },
        expect: case.expect,
        timeout: case.timeout,
        no_output_timeout: case.no_output_timeout,
        stop_on_success: case.stop_on_success,
    }
}
