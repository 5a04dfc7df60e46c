//! From configuration to plan: every build, fetch, kernel, rootfs and boot a command needs,
//! resolved for each architecture, so nothing after planning reads Kiln.toml by name.
//!
//! A [`Plan`] is complete: its [`BuildStep`]s carry the artifact's settings and triple, its
//! [`FetchStep`]s the pinned files the images read, its [`ImageStep`]s each kernel and rootfs
//! recipe with fetch names already resolved for the arch, and its [`CaseRun`]s the machine,
//! the guest (with the rootfs format and kernel command line), the judge and the limits.
//! `exec` realises the first three through the store; `boots` lowers the realised plan into
//! boots.

mod binaries;
mod cases;
mod images;
mod run;
mod test_runs;
#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use kiln_qemu::{Judge, Machine, SerialInput};
use kiln_types::Arch;

pub(crate) use binaries::{TestBinary, check_unique as check_test_binaries};
pub(crate) use run::{GuestSize, RunPlan, Warmth, WarmthAsked};
pub(crate) use test_runs::{TestNameError, TestPick, TestPlan, TestTable};

use crate::config::{Artifact, Config, ConfigError, Expect, Fetch, RootfsFormat};

/// Serial lines that mean a Linux guest's kernel failed; they fail a Linux case at once,
/// besides the case's own `failure` pattern. Only kernel messages count: they carry the
/// kernel's `[    1.234567] ` timestamp, which a program's own output does not.
pub(crate) const KERNEL_FAILURE: &str =
    r"^\[\s*\d+\.\d+\] (Kernel panic - not syncing|Oops(: |\[)|BUG: |Unable to handle kernel|general protection fault)";

/// Names one artifact built for one architecture.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BuildKey {
    /// Artifact name.
    pub artifact: String,
    /// Architecture.
    pub arch: Arch,
}

impl BuildKey {
    /// The name the store records this build under: `ARTIFACT-ARCH`.
    pub(crate) fn store_name(&self) -> String {
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
pub(crate) enum ImageKind {
    /// `[kernel.NAME]`.
    Kernel,
    /// `[rootfs.NAME]`.
    Rootfs,
}

impl ImageKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Rootfs => "rootfs",
        }
    }
}

/// Names one kernel or rootfs for one architecture.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ImageKey {
    /// Kernel or rootfs (kernels sort first).
    pub kind: ImageKind,
    /// Its name in Kiln.toml.
    pub name: String,
    /// Architecture.
    pub arch: Arch,
}

impl ImageKey {
    /// A kernel's key.
    pub(crate) fn kernel(name: &str, arch: Arch) -> Self {
        Self { kind: ImageKind::Kernel, name: name.to_owned(), arch }
    }

    /// A rootfs's key.
    pub(crate) fn rootfs(name: &str, arch: Arch) -> Self {
        Self { kind: ImageKind::Rootfs, name: name.to_owned(), arch }
    }

    /// The name the store records this image under: `kernel-NAME-ARCH` or `rootfs-NAME-ARCH`.
    pub(crate) fn store_name(&self) -> String {
        format!("{}-{}-{}", self.kind.as_str(), self.name, self.arch)
    }
}

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.kind.as_str(), self.name, self.arch)
    }
}

/// One cargo build.
#[derive(Clone, Debug)]
pub(crate) struct BuildStep {
    /// What it builds.
    pub key: BuildKey,
    /// The artifact's settings.
    pub artifact: Artifact,
    /// The target triple.
    pub triple: String,
    /// The project root (the directory of Kiln.toml); closure inputs are named relative to it.
    pub project_root: PathBuf,
}

/// One pinned file the images read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FetchStep {
    /// The `[fetch.NAME]` table, resolved.
    pub fetch: Fetch,
    /// Where it is declared (`Kiln.toml:12`), for errors.
    pub declared_at: String,
}

/// One kernel or rootfs for one architecture, with its recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageStep {
    /// Which image.
    pub key: ImageKey,
    /// How it is made.
    pub recipe: ImageRecipe,
}

/// How an image is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ImageRecipe {
    /// A Linux kernel.
    Kernel(KernelRecipe),
    /// A rootfs image.
    Rootfs(RootfsRecipe),
}

/// A kernel for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelRecipe {
    /// A Debian `linux-image-*` package, or a kernel image booted as it is.
    pub from: KernelFrom,
    /// The fetch that holds it (resolved for the arch).
    pub fetch: String,
    /// Modules shipped beside it besides kiln's own, which must exist.
    pub modules: Vec<String>,
}

/// What a kernel's fetch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelFrom {
    /// A Debian `linux-image-*` package: `/boot/vmlinuz-*` and its modules.
    Deb,
    /// A kernel image file, without modules.
    Image,
}

/// A rootfs for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RootfsRecipe {
    /// The image format.
    pub format: RootfsFormat,
    /// Whether kiln's `/init` is added.
    pub init: bool,
    /// Disk size in MiB for ext4 and qcow2.
    pub size_mib: Option<u32>,
    /// The layers, in order.
    pub layers: Vec<LayerStep>,
}

/// One rootfs layer with its inputs named for the arch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerStep {
    /// What it adds.
    pub source: LayerInput,
    /// Where in the rootfs.
    pub dest: String,
    /// Permission bits for single files.
    pub mode: Option<u32>,
}

/// Where a layer's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LayerInput {
    /// A static busybox from this fetch (a `.deb` or the binary).
    Busybox(String),
    /// This fetched Debian package's `data.tar`.
    Deb(String),
    /// This fetched tarball.
    Tarball(String),
    /// A directory of the project.
    Dir(PathBuf),
    /// A file of the project.
    File(PathBuf),
    /// The binary of this build.
    Artifact(BuildKey),
    /// A file with this text.
    Text(String),
}

/// A Linux kernel and rootfs booted together, with what the boot needs to know of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinuxGuest {
    /// The kernel.
    pub kernel: ImageKey,
    /// The rootfs.
    pub rootfs: ImageKey,
    /// How the rootfs is written (an initramfs, or a disk with a boot stub).
    pub format: RootfsFormat,
    /// The kernel's own command-line arguments.
    pub cmdline: Vec<String>,
}

/// What a case boots.
#[derive(Clone, Debug)]
pub(crate) enum Guest {
    /// An artifact's binary as the kernel (one boot per test binary for `kind = "tests"`).
    Artifact {
        /// The build.
        build: BuildKey,
        /// For a `kind = "tests"` artifact: the per-test settings and the selection.
        tests: Option<TestPlan>,
    },
    /// A Linux kernel and rootfs, running a command under kiln's init.
    Linux {
        /// The kernel and rootfs.
        guest: LinuxGuest,
        /// The shell command.
        command: String,
        /// Run it on a restored snapshot through the agent.
        snapshot: bool,
    },
}

/// How one boot is driven and judged: markers and exit statuses, the expectation, the limits
/// and what is typed on its console. A case has one; each of its per-test tables another.
#[derive(Clone, Debug)]
pub(crate) struct BootRules {
    /// How it is judged.
    pub judge: Judge,
    /// Whether it is expected to pass.
    pub expect: Expect,
    /// Hard timeout.
    pub timeout: Duration,
    /// No-output watchdog.
    pub no_output_timeout: Option<Duration>,
    /// Stop once the success marker appears.
    pub stop_on_success: bool,
    /// Text typed on the serial console.
    pub input: Option<SerialInput>,
}

/// One boot of one case on one machine.
#[derive(Clone, Debug)]
pub(crate) struct CaseRun {
    /// The case's name.
    pub case: String,
    /// The test binary it boots, for a `kind = "tests"` artifact (set when lowered).
    pub test: Option<TestBinary>,
    /// The line of `[case.NAME]` in Kiln.toml, for annotations.
    pub line: Option<usize>,
    /// The machine profile.
    pub machine: Machine,
    /// What it boots.
    pub guest: Guest,
    /// How it is driven and judged.
    pub rules: BootRules,
}

impl CaseRun {
    /// The case's name, with `[TEST]` (the binary id) after it for a test binary.
    pub(crate) fn name(&self) -> String {
        match &self.test {
            Some(test) => format!("{}[{}]", self.case, test.id),
            None => self.case.clone(),
        }
    }

    /// `case/machine` (`case[test]/machine`), the name reports use.
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.name(), self.machine.name)
    }

    /// The serial log's file name: `CASE.MACHINE.log`, or `CASE[TEST].MACHINE.log` with the
    /// test binary's file-safe name.
    pub(crate) fn log_file_name(&self) -> String {
        match &self.test {
            Some(test) => format!("{}[{}].{}.log", self.case, test.file_name(), self.machine.name),
            None => format!("{}.{}.log", self.case, self.machine.name),
        }
    }
}

/// What the user selected on the command line.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    /// Only these architectures (all when empty).
    pub arches: Vec<Arch>,
    /// Only these cases or artifacts (all when empty); for `test`, `CASE[TEST]` selects one
    /// test binary of a case.
    pub names: Vec<String>,
    /// For `test`: only these test binaries, in every case (`--test`).
    pub tests: Vec<String>,
    /// For `test`: only this shard of the case runs (`--partition`).
    pub partition: Option<kiln_types::Partition>,
}

impl Selection {
    /// Everything on these architectures.
    pub(crate) fn arches(arches: &[Arch]) -> Self {
        Self { arches: arches.to_vec(), ..Self::default() }
    }

    fn wants_arch(&self, arch: Arch) -> bool {
        self.arches.is_empty() || self.arches.contains(&arch)
    }

    fn wants_name(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n == name)
    }
}

/// Builds, fetches, images and boots, each in the order it is done.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Builds, each once, sorted.
    pub builds: Vec<BuildStep>,
    /// Files the images read, each once, sorted by name.
    pub fetches: Vec<FetchStep>,
    /// Kernels and rootfs images (after the builds their layers use), sorted.
    pub images: Vec<ImageStep>,
    /// Boots.
    pub runs: Vec<CaseRun>,
}

impl Plan {
    /// Every selected artifact × arch (`selection.names`: artifact names), and no boots.
    pub(crate) fn for_build(config: &Config, selection: &Selection) -> Self {
        let keys = build_keys(config, selection);
        Self::assemble(config, keys, BTreeSet::new(), Vec::new())
    }

    /// Every selected kernel and rootfs (`names` empty: all; `kind`: only that kind), and the
    /// builds their layers use.
    pub(crate) fn for_images(config: &Config, selection: &Selection, kind: Option<ImageKind>) -> Self {
        let mut images = BTreeSet::new();
        if kind != Some(ImageKind::Rootfs) {
            for kernel in config.kernels.values().filter(|k| selection.wants_name(&k.name)) {
                for arch in kernel.arches.iter().filter(|a| selection.wants_arch(**a)) {
                    images.insert(ImageKey::kernel(&kernel.name, *arch));
                }
            }
        }
        if kind != Some(ImageKind::Kernel) {
            for rootfs in config.rootfses.values().filter(|r| selection.wants_name(&r.name)) {
                for arch in rootfs.arches.iter().filter(|a| selection.wants_arch(**a)) {
                    images.insert(ImageKey::rootfs(&rootfs.name, *arch));
                }
            }
        }
        Self::assemble(config, BTreeSet::new(), images, Vec::new())
    }

    /// Everything Kiln.toml declares: every artifact, kernel and rootfs on every arch.
    pub(crate) fn everything(config: &Config) -> Self {
        let all = Selection::default();
        let builds = build_keys(config, &all);
        let images = Self::for_images(config, &all, None).images.into_iter().map(|step| step.key).collect();
        Self::assemble(config, builds, images, Vec::new())
    }

    /// Every selected case × machine (`selection.names`: case names, or `CASE[TEST]`; and
    /// `selection.tests`), and what they need.
    pub(crate) fn for_test(config: &Config, selection: &Selection) -> Result<Self, ConfigError> {
        let wanted = test_runs::CaseSelection::parse(config, selection)?;
        let mut runs = Vec::new();
        for case in config.cases.values() {
            let test_runs::CaseWanted::Run { only } = wanted.wanted(config, case)? else { continue };
            for machine_name in &case.machines {
                let Some(machine) = config.machines.get(machine_name) else { continue };
                if selection.wants_arch(machine.arch) {
                    runs.push(cases::case_run(config, case, machine, only.clone()));
                }
            }
        }
        // Before the builds are gathered: a shard builds only what its own runs boot.
        if let Some(partition) = &selection.partition {
            runs = partition.select(runs, CaseRun::label);
        }
        let mut builds = BTreeSet::new();
        let mut images = BTreeSet::new();
        for run in &runs {
            match &run.guest {
                Guest::Artifact { build, .. } => {
                    builds.insert(build.clone());
                }
                Guest::Linux { guest, .. } => {
                    images.insert(guest.kernel.clone());
                    images.insert(guest.rootfs.clone());
                }
            }
        }
        Ok(Self::assemble(config, builds, images, runs))
    }

    /// The plan of `builds`, `images` (with the builds their layers use and the files they
    /// read) and `runs`.
    fn assemble(
        config: &Config,
        mut builds: BTreeSet<BuildKey>,
        images: BTreeSet<ImageKey>,
        runs: Vec<CaseRun>,
    ) -> Self {
        let images: Vec<ImageStep> = images.into_iter().filter_map(|key| images::image_step(config, key)).collect();
        let mut fetches = BTreeSet::new();
        for step in &images {
            match &step.recipe {
                ImageRecipe::Kernel(kernel) => {
                    fetches.insert(kernel.fetch.clone());
                }
                ImageRecipe::Rootfs(rootfs) => {
                    for layer in &rootfs.layers {
                        match &layer.source {
                            LayerInput::Busybox(fetch) | LayerInput::Deb(fetch) | LayerInput::Tarball(fetch) => {
                                fetches.insert(fetch.clone());
                            }
                            LayerInput::Artifact(build) => {
                                builds.insert(build.clone());
                            }
                            LayerInput::Dir(_) | LayerInput::File(_) | LayerInput::Text(_) => {}
                        }
                    }
                }
            }
        }
        let fetches = fetches
            .into_iter()
            .filter_map(|name| {
                let fetch = config.fetches.get(&name)?.clone();
                let declared_at = match config.line_of(&format!("fetch.{name}")) {
                    Some(line) => format!("{}:{line}", config.file.display()),
                    None => config.file.display().to_string(),
                };
                Some(FetchStep { fetch, declared_at })
            })
            .collect();
        Self { builds: build_steps(config, builds), fetches, images, runs }
    }

    /// The step of one image, when the plan holds it.
    pub(crate) fn image_step(&self, key: &ImageKey) -> Option<&ImageStep> {
        self.images.iter().find(|step| step.key == *key)
    }
}

/// Every selected artifact × arch (`selection.names`: artifact names).
fn build_keys(config: &Config, selection: &Selection) -> BTreeSet<BuildKey> {
    config
        .artifacts
        .values()
        .filter(|artifact| selection.wants_name(&artifact.name))
        .flat_map(|artifact| {
            artifact
                .arches
                .iter()
                .filter(|arch| selection.wants_arch(**arch))
                .map(|arch| BuildKey { artifact: artifact.name.clone(), arch: *arch })
        })
        .collect()
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
