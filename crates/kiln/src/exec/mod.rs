//! Realising a plan through the store: cargo builds, fetches, kernels, rootfs images and the
//! guest agent, each keyed by its closure hash, built only when the store (or a remote) lacks
//! it. The [`Executor`] holds what every build needs (the store, where events go, whether
//! installing host packages is allowed) and takes typed plan steps, never the configuration.
//!
//! [`Executor::entry`] is the one path from a derivation to a store entry: it waits for
//! another builder, runs the build, records the entry's use and name, and reports the outcome
//! (`Built`, `Cached`, `Substituted`, `Fetched`) through one event.

mod agent;
mod bootimage;
mod bootloader;
mod cargo;
pub(crate) mod cargo_json;
mod fetch;
mod image;
mod kernel;
mod metadata;
mod provision;
#[cfg(feature = "remote")]
pub(crate) mod remotes;
mod rootfs;
pub(crate) mod space;
mod step;
mod tool;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use kiln_qemu::{
    Machine,
    accel::{self, Accel, AccelChoice, AccelPolicy},
};
use kiln_store::{BuildOutcome, ClosureHash, Derivation, Entry, StatCache, Store};
use kiln_types::Arch;

pub(crate) use agent::{derivation as agent_derivation, realise as realise_agent};
pub(crate) use cargo::{BootImage, images_in};
pub(crate) use kernel::{KERNEL_FILE, SHARE_FILE};
#[cfg(feature = "init")]
pub(crate) use provision::toolchain_file;
pub(crate) use provision::{InstallMode, Missing, describe_fixes, floating_channel_warning, host_needs};
pub(crate) use rootfs::{RootfsFiles, assemble as assemble_rootfs, read_listing};
pub(crate) use tool::tool_command;

use crate::{
    config::{CommandStep, ImageFormat, RootfsFormat},
    events::{EntryKind, Event, Reporter},
    explain,
    guest::LinuxImages,
    plan::{BuildKey, BuildStep, FetchStep, ImageKey, ImageRecipe, ImageStep, LinuxGuest, Plan},
};

/// An artifact built for one architecture (or found in the store).
#[derive(Clone, Debug)]
pub(crate) struct BuiltArtifact {
    /// Its closure hash.
    pub closure: ClosureHash,
    /// The images to boot inside the store entry (one, or one per test binary).
    pub images: Vec<BootImage>,
    /// How the store served it.
    pub outcome: BuildOutcome,
    /// The kind of disk image its images are (booted with `-drive`, not `-kernel`), if any.
    pub disk: Option<ImageFormat>,
}

impl BuiltArtifact {
    /// The first (for `kind = "bin"`, the only) image.
    pub(crate) fn image(&self) -> &Path {
        self.images.first().map_or(Path::new(""), |image| &image.path)
    }
}

/// A kernel or rootfs in the store.
#[derive(Clone, Debug)]
pub(crate) struct RealisedImage {
    /// Its closure hash.
    pub closure: ClosureHash,
    /// The entry's output directory.
    pub dir: PathBuf,
    /// How the store served it.
    pub outcome: BuildOutcome,
}

/// A fetched file in the store.
#[derive(Clone, Debug)]
pub(crate) struct FetchedFile {
    /// The file.
    pub path: PathBuf,
    /// How the store served it.
    pub outcome: BuildOutcome,
}

/// A declared command step's outputs, in the store and put in place in the working tree.
#[derive(Clone, Debug)]
pub(crate) struct RealisedStep {
    /// Its closure hash.
    pub closure: ClosureHash,
    /// How the store served it.
    pub outcome: BuildOutcome,
}

/// Everything a plan needs, in the store.
#[derive(Debug, Default)]
pub(crate) struct Realised {
    /// Declared command steps by name.
    pub steps: BTreeMap<String, RealisedStep>,
    /// Artifacts by build.
    pub builds: BTreeMap<BuildKey, BuiltArtifact>,
    /// Fetched files by fetch name.
    pub fetches: BTreeMap<String, FetchedFile>,
    /// Kernels and rootfs images.
    pub images: BTreeMap<ImageKey, RealisedImage>,
}

impl Realised {
    /// How many derivations were built now, found, and substituted from remotes.
    pub(crate) fn store_use(&self) -> crate::outcome::StoreUse {
        let outcomes: Vec<&BuildOutcome> = self
            .steps
            .values()
            .map(|s| &s.outcome)
            .chain(self.builds.values().map(|b| &b.outcome))
            .chain(self.images.values().map(|i| &i.outcome))
            .chain(self.fetches.values().map(|f| &f.outcome))
            .collect();
        let built = outcomes.iter().filter(|o| matches!(o, BuildOutcome::Built { .. })).count();
        let substituted_from: BTreeSet<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                BuildOutcome::Substituted { from, .. } => Some(from.clone()),
                _ => None,
            })
            .collect();
        let substituted = outcomes.iter().filter(|o| matches!(o, BuildOutcome::Substituted { .. })).count();
        crate::outcome::StoreUse { built, cached: outcomes.len() - built - substituted, substituted, substituted_from }
    }

    /// The store paths of a Linux guest's kernel and rootfs, ready to boot `command`.
    pub(crate) fn linux_images(&self, guest: &LinuxGuest, command: &str) -> anyhow::Result<LinuxImages> {
        let (Some(kernel), Some(rootfs)) = (self.images.get(&guest.kernel), self.images.get(&guest.rootfs)) else {
            anyhow::bail!("{} or {} was not built", guest.kernel, guest.rootfs);
        };
        Ok(linux_images(guest, kernel, rootfs, command))
    }

    /// Whether any of these outcomes was a build now, or a substitution.
    pub(crate) fn provenance<'a>(outcomes: impl IntoIterator<Item = &'a BuildOutcome>) -> (bool, bool) {
        let outcomes: Vec<&BuildOutcome> = outcomes.into_iter().collect();
        (
            outcomes.iter().any(|o| matches!(o, BuildOutcome::Built { .. })),
            outcomes.iter().any(|o| matches!(o, BuildOutcome::Substituted { .. })),
        )
    }
}

/// What rootfs builds read from a realised plan: fetched files by fetch name, and artifact
/// binaries by build.
pub(crate) fn rootfs_files(realised: &Realised) -> (BTreeMap<String, PathBuf>, BTreeMap<BuildKey, PathBuf>) {
    let fetched = realised.fetches.iter().map(|(name, file)| (name.clone(), file.path.clone())).collect();
    let binaries = realised.builds.iter().map(|(key, built)| (key.clone(), built.image().to_owned())).collect();
    (fetched, binaries)
}

/// The store paths of a kernel and rootfs entry, for booting them.
pub(crate) fn linux_images(
    guest: &LinuxGuest,
    kernel: &RealisedImage,
    rootfs: &RealisedImage,
    command: &str,
) -> LinuxImages {
    let image = rootfs.dir.join(guest.format.file_name());
    let boot_stub = rootfs.dir.join(rootfs::DISK_BOOT_FILE);
    let (initramfs, disk) = match guest.format {
        RootfsFormat::Initramfs(_) => (image, None),
        RootfsFormat::Ext4 => (boot_stub, Some((image, "raw"))),
        RootfsFormat::Qcow2 => (boot_stub, Some((image, "qcow2"))),
    };
    LinuxImages {
        kernel: kernel.dir.join(KERNEL_FILE),
        modules: kernel.dir.join(kernel::MODULES_FILE),
        rootfs: initramfs,
        disk,
        cmdline: guest.cmdline.clone(),
        command: command.to_owned(),
    }
}

/// An artifact's package is not a local package of its cargo workspace; the caller points at
/// the Kiln.toml key.
#[derive(Debug, thiserror::Error)]
#[error("no package named `{package}` in the cargo workspace at `{workspace}`")]
pub(crate) struct UnknownPackage {
    /// The artifact.
    pub artifact: String,
    /// The package it names.
    pub package: String,
    /// The workspace cargo found.
    pub workspace: String,
    /// The local packages there.
    pub local: Vec<String>,
}

/// How the executor works.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Whether missing host packages may be installed.
    pub install: InstallMode,
    /// Say which inputs changed for each build that runs (`build --explain`).
    pub explain: bool,
    /// Pass `--quiet` to cargo.
    pub quiet_cargo: bool,
    /// The project's scratch directory (`target/kiln`): caches, the agent's target directory.
    pub work_dir: PathBuf,
}

/// Builds what the store lacks, and says what it did.
#[derive(Debug)]
pub(crate) struct Executor {
    store: Store,
    reporter: Arc<dyn Reporter>,
    settings: Settings,
    /// The command steps realised by this executor (each runs or is put in place once).
    steps: Mutex<BTreeMap<String, RealisedStep>>,
    #[cfg(feature = "remote")]
    remotes: Option<Arc<kiln_store::remote::Remotes>>,
}

impl Executor {
    /// An executor over `store`; its events go to `reporter`.
    pub(crate) fn new(store: Store, reporter: Arc<dyn Reporter>, settings: Settings) -> Self {
        Self {
            store,
            reporter,
            settings,
            steps: Mutex::new(BTreeMap::new()),
            #[cfg(feature = "remote")]
            remotes: None,
        }
    }

    /// An executor like this one over another store, without remote stores.
    #[cfg(feature = "github")]
    pub(crate) fn with_store(&self, store: Store) -> Self {
        Self::new(store, self.reporter.clone(), self.settings.clone())
    }

    /// The same executor, substituting from and pushing to `remotes`.
    #[cfg(feature = "remote")]
    pub(crate) fn with_remotes(mut self, remotes: Arc<kiln_store::remote::Remotes>) -> Self {
        self.store = self.store.with_substituter(remotes.clone());
        self.remotes = Some(remotes);
        self
    }

    /// The remote stores, when there are any.
    #[cfg(feature = "remote")]
    pub(crate) fn remotes(&self) -> Option<&Arc<kiln_store::remote::Remotes>> {
        self.remotes.as_ref()
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Where events go.
    pub(crate) fn reporter(&self) -> &dyn Reporter {
        self.reporter.as_ref()
    }

    /// The project's scratch directory.
    pub(crate) fn work_dir(&self) -> &Path {
        &self.settings.work_dir
    }

    /// Installs (or names) what the host lacks.
    pub(crate) fn ensure(&self, missing: Vec<Missing>) -> anyhow::Result<()> {
        provision::ensure(missing, self.settings.install, self.reporter())
    }

    /// The store entry of `drv`, running `build` (into the directory it is given) when neither
    /// the store nor a remote has it. `name` is what the store records it under (for `why`
    /// and `--explain`), `what` how people call it; the outcome is reported once, here.
    pub(crate) fn entry(
        &self,
        drv: &Derivation,
        name: &str,
        what: &str,
        kind: EntryKind,
        how: Option<&str>,
        build: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Entry, BuildOutcome)> {
        let closure = drv.closure_hash();
        self.reporter.detail("Closure", &format!("{what} {closure}"));
        let on_wait = || self.reporter.report(Event::BuildWaiting { what });
        let built = self.store.build(drv, name, on_wait, |out| {
            self.reporter.report(Event::BuildStarted { name, what, closure, kind, how });
            if self.settings.explain && kind == EntryKind::Build {
                for line in explain::changes(&self.store, name, drv) {
                    self.reporter.report(Event::BuildReason { line: &line });
                }
            }
            // The whole chain, typed: the exit code tells a full disk from a failed build by it.
            build(out).map_err(Into::into)
        });
        let (entry, outcome) = match built {
            Ok(built) => built,
            Err(err) => {
                // Kept typed: the exit code tells a full disk from a failed build by it.
                let err = anyhow::Error::from(err);
                self.reporter.report(Event::BuildFailed { name, what, kind, closure, error: &format!("{err:#}") });
                return Err(err);
            }
        };
        self.reporter.report(Event::BuildFinished { name, what, kind, closure: entry.closure, outcome: &outcome });
        self.store.mark_used(&entry.closure)?;
        self.store.record_name(name, &entry.closure)?;
        Ok((entry, outcome))
    }

    /// Realises a plan: its builds, then the fetches, kernels and rootfs images.
    pub(crate) fn realise(&self, plan: &Plan) -> anyhow::Result<Realised> {
        let mut realised = Realised {
            builds: self.realise_builds(&plan.builds)?,
            fetches: self.realise_fetches(&plan.fetches)?,
            images: BTreeMap::new(),
            steps: BTreeMap::new(),
        };
        realised.steps = self.realised_steps();
        let artifact_closures = realised.builds.iter().map(|(key, built)| (key.clone(), built.closure)).collect();
        let (fetched, binaries) = rootfs_files(&realised);
        let mut images = BTreeMap::new();
        for (step, drv) in plan.images.iter().zip(image_derivations(&plan.images, &plan.fetches, &artifact_closures)?) {
            let key = &step.key;
            let what = key.to_string();
            let (entry, outcome) =
                self.entry(&drv, &key.store_name(), &what, EntryKind::Build, None, |out| match &step.recipe {
                    ImageRecipe::Kernel(kernel) => {
                        let file = fetched
                            .get(&kernel.fetch)
                            .ok_or_else(|| anyhow::anyhow!("`{}` was not fetched", kernel.fetch))?;
                        kernel::build_kernel(&key.name, kernel, key.arch, file, out)
                    }
                    ImageRecipe::Rootfs(rootfs) => {
                        let files = rootfs::RootfsFiles { fetched: &fetched, binaries: &binaries };
                        let assembled = rootfs::assemble(&key.name, rootfs, key.arch, &files)?;
                        for note in &assembled.notes {
                            self.reporter.status("Unpacked", note);
                        }
                        rootfs::write_rootfs(&key.name, rootfs, &assembled.tree, out)
                    }
                })?;
            images.insert(key.clone(), RealisedImage { closure: entry.closure, dir: entry.out_dir(), outcome });
        }
        realised.images = images;
        Ok(realised)
    }

    /// Fetches (or finds in the store) every file of `fetches`.
    pub(crate) fn realise_fetches(&self, fetches: &[FetchStep]) -> anyhow::Result<BTreeMap<String, FetchedFile>> {
        let mut fetched = BTreeMap::new();
        for step in fetches {
            let fetch = &step.fetch;
            let (path, outcome) = fetch::realise(self, fetch)
                .with_context(|| format!("`[fetch.{}]` at {}", fetch.name, step.declared_at))?;
            fetched.insert(fetch.name.clone(), FetchedFile { path, outcome });
        }
        Ok(fetched)
    }

    /// Builds every step that the store lacks and returns all of them.
    pub(crate) fn realise_builds(&self, steps: &[BuildStep]) -> anyhow::Result<BTreeMap<BuildKey, BuiltArtifact>> {
        self.realise_command_steps(steps)?;
        let derivations = self.step_derivations(steps)?;
        let mut missing_targets: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        // Directories whose toolchain builds disk images: a package's (bootloader 0.9) or a
        // bootloader image builder's.
        let mut missing_disks = BTreeSet::new();
        for (step, drvs) in steps.iter().zip(&derivations) {
            if self.store.lookup(&drvs.cargo.closure_hash())?.is_none() {
                let targets = missing_targets.entry(step.artifact.dir.clone()).or_default();
                // With `-Z build-std` (from Kiln.toml or the package's cargo config) cargo
                // builds the standard library itself: the target's rustup component is not
                // needed (dated nightlies often lack it).
                if step.artifact.build_std.is_none() && !provision::cargo_config_builds_std(&step.artifact.dir) {
                    targets.insert(step.triple.clone());
                }
            }
            if let Some((maker, disk)) = &drvs.disk
                && self.store.lookup(&disk.closure_hash())?.is_none()
            {
                missing_disks.insert(match maker {
                    DiskMaker::Bootimage(_) => step.artifact.dir.clone(),
                    DiskMaker::Bootloader { builder, .. } => builder.dir.clone(),
                });
            }
        }
        let mut missing: Vec<Missing> =
            missing_targets.iter().flat_map(|(dir, targets)| provision::check_targets(dir, targets)).collect();
        for step in steps.iter().filter(|s| s.artifact.build_std.is_some()) {
            if missing_targets.contains_key(&step.artifact.dir) {
                missing.extend(provision::check_component(&step.artifact.dir, "rust-src"));
            }
        }
        for dir in &missing_disks {
            missing.extend(provision::check_component(dir, "rust-src"));
            missing.extend(provision::check_component(dir, "llvm-tools"));
        }
        self.ensure(missing)?;
        if !missing_targets.is_empty() {
            self.warn_environment_rustflags(missing_targets.keys());
        }
        let mut built = BTreeMap::new();
        // Each image builder's program, built (or found up to date) once per run.
        let mut builder_programs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        for (step, drvs) in steps.iter().zip(&derivations) {
            let what = step.key.to_string();
            let how = format!("for {}", step.triple);
            let (entry, outcome) =
                self.entry(&drvs.cargo, &step.key.store_name(), &what, EntryKind::Build, Some(&how), |out| {
                    cargo::cargo_build(step, out, self.settings.quiet_cargo)
                })?;
            let kernels = images_in(&entry, step.artifact.image, step.artifact.kind)?;
            if let (Some(image_step), Some(drv)) = (&step.artifact.image_step, &drvs.image) {
                let image = self.realise_image_step(step, image_step, drv, &kernels, &outcome)?;
                built.insert(step.key.clone(), image);
                continue;
            }
            let artifact = match &drvs.disk {
                None => BuiltArtifact { closure: entry.closure, images: kernels, outcome, disk: None },
                Some((maker, drv)) => {
                    let what = match maker {
                        DiskMaker::Bootimage(_) => format!("{} disk images", step.key),
                        DiskMaker::Bootloader { firmware, .. } => {
                            format!("{} {} disk images", step.key, firmware.as_str().to_uppercase())
                        }
                    };
                    let how = format!("with bootloader {}", maker.version());
                    let name = disk_image_entry_name(step);
                    let (disks, disk_outcome) =
                        self.entry(drv, &name, &what, EntryKind::Build, Some(&how), |out| match maker {
                            DiskMaker::Bootimage(bootloader) => bootimage::build(
                                bootloader,
                                &kernels,
                                &step.artifact.dir,
                                self.work_dir(),
                                out,
                                self.settings.quiet_cargo,
                            ),
                            DiskMaker::Bootloader { builder, firmware } => {
                                let program = match builder_programs.get(&builder.dir) {
                                    Some(program) => program.clone(),
                                    None => {
                                        let program = builder.build(self.settings.quiet_cargo)?;
                                        builder_programs.insert(builder.dir.clone(), program.clone());
                                        program
                                    }
                                };
                                bootloader::make_images(&program, &builder.version, *firmware, &kernels, out)
                            }
                        })?;
                    // Built now when either half was: the boots then count as fresh.
                    let outcome = if matches!(outcome, BuildOutcome::Built { .. }) { outcome } else { disk_outcome };
                    let images = bootimage::images_in(&disks.out_dir(), &kernels)?;
                    BuiltArtifact { closure: disks.closure, images, outcome, disk: Some(step.artifact.image) }
                }
            };
            built.insert(step.key.clone(), artifact);
        }
        Ok(built)
    }

    /// Runs (or finds) the `image-step` of a build on its binary; its first output is what boots.
    fn realise_image_step(
        &self,
        build: &BuildStep,
        image_step: &CommandStep,
        drv: &Derivation,
        kernels: &[BootImage],
        cargo_outcome: &BuildOutcome,
    ) -> anyhow::Result<BuiltArtifact> {
        let binary = kernels.first().with_context(|| format!("{} built no binary", build.key))?;
        let substitutions = vec![
            (format!("artifact:{}", build.artifact.name), binary.path.display().to_string()),
            ("arch".to_owned(), build.key.arch.as_str().to_owned()),
        ];
        let what = format!("step {} ({})", image_step.name, build.key.arch);
        let name = format!("{}-{}", image_step.store_name(), build.key.arch);
        let how = format!("on {}", build.key);
        let root = &build.project_root;
        let (entry, outcome) = self.entry(drv, &name, &what, EntryKind::Build, Some(&how), |out| {
            step::run_with(image_step, root, out, &substitutions)
        })?;
        step::place_outputs(image_step, root, &entry.out_dir())?;
        let outcome = if matches!(cargo_outcome, BuildOutcome::Built { .. }) { cargo_outcome.clone() } else { outcome };
        Ok(BuiltArtifact { closure: entry.closure, images: step_images(&entry, image_step)?, outcome, disk: None })
    }

    /// Each step's final derivation: the cargo build's, or for disk images (`image =
    /// "bootimage"`, `"bios"`, `"uefi"`) the images' (whose closure holds the cargo build's);
    /// its entry's name is [`final_entry_name`].
    pub(crate) fn derivations(&self, steps: &[BuildStep]) -> anyhow::Result<Vec<Derivation>> {
        Ok(self.step_derivations(steps)?.iter().map(|d| d.last().clone()).collect())
    }

    /// Computes each step's derivations. The cargo and rustc queries behind them run at once,
    /// one per package directory and target, since they dominate a fully cached run.
    fn step_derivations(&self, steps: &[BuildStep]) -> anyhow::Result<Vec<StepDerivations>> {
        let dirs: BTreeSet<&PathBuf> = steps.iter().map(|s| &s.artifact.dir).collect();
        self.provision_toolchains(&dirs)?;
        fn query(step: &BuildStep) -> metadata::MetadataQuery<'_> {
            metadata::MetadataQuery {
                dir: step.artifact.dir.as_path(),
                triple: step.triple.as_str(),
                env: &step.artifact.env,
            }
        }
        let queries: BTreeSet<metadata::MetadataQuery<'_>> = steps.iter().map(query).collect();
        let cache = metadata::MetadataCache::new(self.work_dir().join("cache/cargo-metadata"));
        let (hosts, answers) = std::thread::scope(|scope| {
            let hosts: Vec<_> =
                dirs.iter().map(|dir| (*dir, scope.spawn(move || cargo::CargoHost::probe(dir)))).collect();
            let answers: Vec<_> = queries
                .iter()
                .map(|query| {
                    let cache = &cache;
                    (*query, scope.spawn(move || cache.get(*query)))
                })
                .collect();
            let hosts = hosts
                .into_iter()
                .map(|(dir, handle)| Ok((dir, join(handle)??)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>();
            let answers = answers
                .into_iter()
                .map(|(key, handle)| Ok((key, join(handle)??)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>();
            anyhow::Ok((hosts?, answers?))
        })?;
        let mut parsed = BTreeMap::new();
        for (query, answer) in answers {
            let rustc = &hosts[&query.dir.to_path_buf()].rustc_version;
            let json = match answer.cached_with_rustc {
                Some(cached) if cached == *rustc => answer.json,
                Some(_) => {
                    let fresh = metadata::run_cargo_metadata(query)?;
                    cache.store(query, &fresh, rustc);
                    fresh
                }
                None => {
                    cache.store(query, &answer.json, rustc);
                    answer.json
                }
            };
            let metadata = metadata::MetadataAnswer { json, cached_with_rustc: None }.parse()?;
            parsed.insert(query, metadata);
        }
        for step in steps {
            check_package(step, &parsed[&query(step)])?;
        }
        // The bootloader image builders (`image = "bios"` / `"uefi"`): written, their
        // toolchain installed and asked for its version before any closure is computed.
        let builders = steps
            .iter()
            .map(|step| {
                let Some(firmware) = bootloader::DiskFirmware::of(step.artifact.image) else { return Ok(None) };
                let artifact = &step.artifact;
                let version = bootloader::bootloader_api_version(
                    &parsed[&query(step)],
                    &artifact.package,
                    &artifact.name,
                    firmware,
                )?;
                let toolchain = artifact.bootloader_toolchain.as_deref();
                Ok(Some((bootloader::Builder::new(version, toolchain, &self.builders_cache()), firmware)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let builder_dirs: BTreeSet<&PathBuf> = builders.iter().flatten().map(|(builder, _)| &builder.dir).collect();
        let mut builder_rustc = BTreeMap::new();
        if !builder_dirs.is_empty() {
            for (builder, _) in builders.iter().flatten() {
                builder.write_project()?;
            }
            self.provision_toolchains(&builder_dirs)?;
            for (builder, _) in builders.iter().flatten() {
                if !builder_rustc.contains_key(&builder.dir) {
                    builder_rustc.insert(builder.dir.clone(), builder.rustc_version()?);
                }
            }
        }
        let stat_cache = StatCache::load(self.work_dir().join("cache/stat-cache"));
        let command_steps = self.command_step_closures(steps, &stat_cache)?;
        let derivations = steps
            .iter()
            .zip(builders)
            .map(|(step, builder)| {
                let host = &hosts[&step.artifact.dir];
                let metadata = &parsed[&query(step)];
                let cargo = cargo::derivation_for(step, host, metadata, &command_steps, &stat_cache)
                    .with_context(|| format!("cannot compute the closure of {}", step.key))?;
                let disk = if let Some((builder, firmware)) = builder {
                    let rustc = builder_rustc.get(&builder.dir).map_or("", String::as_str);
                    let drv = bootloader::derivation(cargo.closure_hash(), &builder, firmware, rustc);
                    Some((DiskMaker::Bootloader { builder, firmware }, drv))
                } else if step.artifact.image == ImageFormat::Bootimage {
                    let bootloader =
                        bootimage::Bootloader::of_package(metadata, &step.artifact.package, &step.artifact.name)?;
                    let drv =
                        bootimage::derivation(cargo.closure_hash(), &bootloader, &host.rustc_version, &stat_cache)
                            .with_context(|| format!("cannot compute the closure of {}'s disk images", step.key))?;
                    Some((DiskMaker::Bootimage(bootloader), drv))
                } else {
                    None
                };
                let image = match &step.artifact.image_step {
                    Some(image_step) => Some(step::image_derivation(
                        image_step,
                        &step.project_root,
                        &command_steps,
                        (&step.artifact.name, cargo.closure_hash()),
                        step.key.arch,
                        &stat_cache,
                    )?),
                    None => None,
                };
                Ok(StepDerivations { cargo, disk, image })
            })
            .collect();
        if let Err(err) = stat_cache.save() {
            self.reporter.detail("Warning", &format!("the stat cache was not saved: {err}"));
        }
        derivations
    }

    /// Every closure a plan needs (builds, fetches, kernels, rootfs images), without building.
    pub(crate) fn closures(&self, plan: &Plan) -> anyhow::Result<Vec<(String, ClosureHash)>> {
        let derivations = self.step_derivations(&plan.builds)?;
        let mut closures = Vec::new();
        let stat_cache = StatCache::load(self.work_dir().join("cache/stat-cache"));
        for (name, (closure, _)) in self.command_step_closures(&plan.builds, &stat_cache)? {
            closures.push((format!("step-{name}"), closure));
        }
        let mut artifacts = BTreeMap::new();
        for (step, drvs) in plan.builds.iter().zip(&derivations) {
            closures.push((step.key.store_name(), drvs.cargo.closure_hash()));
            if let Some((_, disk)) = &drvs.disk {
                closures.push((disk_image_entry_name(step), disk.closure_hash()));
            }
            if let Some(image) = &drvs.image {
                closures.push((final_entry_name(step), image.closure_hash()));
            }
            artifacts.insert(step.key.clone(), drvs.last().closure_hash());
        }
        for step in &plan.fetches {
            closures.push((format!("fetch-{}", step.fetch.name), fetch::derivation(&step.fetch).closure_hash()));
        }
        for (step, drv) in plan.images.iter().zip(image_derivations(&plan.images, &plan.fetches, &artifacts)?) {
            closures.push((step.key.store_name(), drv.closure_hash()));
        }
        Ok(closures)
    }

    /// Runs (or finds in the store and puts in place) every command step the builds need,
    /// each once, each after the steps it names.
    fn realise_command_steps(&self, builds: &[BuildStep]) -> anyhow::Result<()> {
        let Some(root) = builds.first().map(|b| b.project_root.clone()) else { return Ok(()) };
        let stat_cache = StatCache::load(self.work_dir().join("cache/stat-cache"));
        let mut closures: BTreeMap<String, (ClosureHash, Vec<PathBuf>)> = BTreeMap::new();
        for command in command_steps_of(builds) {
            let known = self.steps.lock().map_err(|_| anyhow::anyhow!("a step panicked"))?.get(&command.name).cloned();
            if let Some(done) = known {
                closures.insert(command.name.clone(), (done.closure, command.outputs.clone()));
                continue;
            }
            let drv = step::derivation(&command, &root, &closures, &stat_cache)?;
            let what = format!("step {}", command.name);
            let how = match &command.command {
                crate::config::StepCommand::Argv(argv) => format!("`{}`", argv.join(" ")),
                crate::config::StepCommand::Script(_) => "its script".to_owned(),
            };
            let (entry, outcome) =
                self.entry(&drv, &command.store_name(), &what, EntryKind::Build, Some(&how), |out| {
                    step::run(&command, &root, out)
                })?;
            step::place_outputs(&command, &root, &entry.out_dir())?;
            closures.insert(command.name.clone(), (entry.closure, command.outputs.clone()));
            self.steps
                .lock()
                .map_err(|_| anyhow::anyhow!("a step panicked"))?
                .insert(command.name.clone(), RealisedStep { closure: entry.closure, outcome });
        }
        if let Err(err) = stat_cache.save() {
            self.reporter.detail("Warning", &format!("the stat cache was not saved: {err}"));
        }
        Ok(())
    }

    /// The closure (and outputs) of every command step the builds need, without running any.
    fn command_step_closures(
        &self,
        builds: &[BuildStep],
        stat_cache: &StatCache,
    ) -> anyhow::Result<BTreeMap<String, (ClosureHash, Vec<PathBuf>)>> {
        let mut closures = BTreeMap::new();
        let Some(root) = builds.first().map(|b| b.project_root.clone()) else { return Ok(closures) };
        for command in command_steps_of(builds) {
            let closure = step::derivation(&command, &root, &closures, stat_cache)?.closure_hash();
            closures.insert(command.name.clone(), (closure, command.outputs.clone()));
        }
        Ok(closures)
    }

    /// The command steps this executor has realised, by name.
    pub(crate) fn realised_steps(&self) -> BTreeMap<String, RealisedStep> {
        self.steps.lock().map(|steps| steps.clone()).unwrap_or_default()
    }

    /// Checks (and, when allowed, installs) what these machines need on this host.
    pub(crate) fn provision_machines<'a>(&self, machines: impl IntoIterator<Item = &'a Machine>) -> anyhow::Result<()> {
        self.ensure(machines.into_iter().flat_map(provision::check_machine).collect())
    }

    /// Checks (and, when allowed, installs) the firmware the disk images of `builds` boot
    /// with: OVMF for UEFI images.
    pub(crate) fn provision_disk_firmware(&self, builds: &[BuildStep]) -> anyhow::Result<()> {
        self.ensure(provision::check_disk_firmware(builds))
    }

    /// Chooses the accelerator for each architecture and says why, once per arch.
    pub(crate) fn accelerators(
        &self,
        arches: impl IntoIterator<Item = Arch>,
        policy: AccelPolicy,
    ) -> BTreeMap<Arch, AccelChoice> {
        let cache_dir = crate::host::user_cache_dir().unwrap_or_else(|| self.work_dir().join("host"));
        let arches: BTreeSet<Arch> = arches.into_iter().collect();
        arches
            .into_iter()
            .map(|arch| {
                let choice = accel::choose(arch, policy, &cache_dir);
                self.reporter.report(Event::AccelChosen { arch, choice: &choice });
                (arch, choice)
            })
            .collect()
    }

    /// The accelerator for one architecture.
    pub(crate) fn accelerator(&self, arch: Arch, policy: AccelPolicy) -> Accel {
        self.accelerators([arch], policy).get(&arch).map_or(Accel::Tcg, |choice| choice.accel)
    }

    /// Where the bootloader image builders live: kiln's per-user cache (so each is built once
    /// per machine), else the project's work directory.
    fn builders_cache(&self) -> PathBuf {
        crate::host::user_cache_dir().unwrap_or_else(|| self.work_dir().join("cache"))
    }

    /// Warns when `RUSTFLAGS` is set while the project's cargo config has rustflags: cargo
    /// then drops the config's flags (linker scripts among them), which breaks kernel links.
    fn warn_environment_rustflags<'a>(&self, dirs: impl Iterator<Item = &'a PathBuf>) {
        let Some(variable) =
            [crate::env::CARGO_ENCODED_RUSTFLAGS, crate::env::RUSTFLAGS].into_iter().find(|v| crate::env::is_set(v))
        else {
            return;
        };
        for dir in dirs {
            let configured = dir.ancestors().any(|ancestor| {
                std::fs::read_to_string(ancestor.join(".cargo/config.toml"))
                    .is_ok_and(|text| text.contains("rustflags"))
            });
            if configured {
                self.reporter.warn(&format!(
                    "{variable} is set, so cargo ignores the rustflags in `{}`'s cargo config (linker scripts among \
                     them); to add flags, use `rustflags = [...]` in the artifact's Kiln.toml table instead",
                    dir.display()
                ));
                return;
            }
        }
    }

    /// Installs (when allowed) the toolchains that `rust-toolchain` files name, and warns
    /// about floating channels. Current rustup no longer installs them by itself.
    fn provision_toolchains(&self, dirs: &BTreeSet<&PathBuf>) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for dir in dirs {
            if let Some(warning) = provision::floating_channel_warning(dir) {
                self.reporter.warn(&warning);
            }
            missing.extend(provision::check_toolchain(dir));
        }
        self.ensure(missing)
    }
}

/// What boots from an `image-step`'s entry: its first output.
fn step_images(entry: &Entry, image_step: &CommandStep) -> anyhow::Result<Vec<BootImage>> {
    let output = image_step.outputs.first().context("a step without outputs")?;
    let path = entry.out_dir().join(output);
    let name = output.file_name().map_or_else(|| output.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(vec![BootImage { name, path, test: None }])
}

/// The images to boot in the entry of [`Executor::derivations`]'s derivation of `step`.
pub(crate) fn final_images(entry: &Entry, step: &BuildStep) -> anyhow::Result<Vec<BootImage>> {
    match &step.artifact.image_step {
        Some(image_step) => step_images(entry, image_step),
        None => images_in(entry, step.artifact.image, step.artifact.kind),
    }
}

/// The command steps of `builds`, each once, each after the steps it names.
fn command_steps_of(builds: &[BuildStep]) -> Vec<CommandStep> {
    let mut ordered: Vec<CommandStep> = Vec::new();
    for build in builds {
        for command in &build.artifact.steps {
            if !ordered.iter().any(|known| known.name == command.name) {
                ordered.push(command.clone());
            }
        }
    }
    ordered
}

/// The name the store records the disk images of a disk image step under (`NAME-bootimage`,
/// `NAME-bios`, `NAME-uefi`; the cargo build's entry keeps the step's own name).
fn disk_image_entry_name(step: &BuildStep) -> String {
    format!("{}-{}", step.key.store_name(), format!("{:?}", step.artifact.image).to_lowercase())
}

/// The name the store records the entry of [`Executor::derivations`]'s derivation of `step`
/// under: the disk images' for a disk image kind, else the cargo build's.
pub(crate) fn final_entry_name(step: &BuildStep) -> String {
    if let Some(image_step) = &step.artifact.image_step {
        format!("{}-{}", image_step.store_name(), step.key.arch)
    } else if step.artifact.image.is_disk() {
        disk_image_entry_name(step)
    } else {
        step.key.store_name()
    }
}

/// A build step's derivations: the cargo build, and the disk images made around it.
struct StepDerivations {
    /// The cargo build's.
    cargo: Derivation,
    /// For a disk image kind: what makes the images, and their derivation.
    disk: Option<(DiskMaker, Derivation)>,
    /// For an `image-step`: the step's derivation for this build.
    image: Option<Derivation>,
}

impl StepDerivations {
    /// The derivation whose entry holds what boots.
    fn last(&self) -> &Derivation {
        self.image.as_ref().or(self.disk.as_ref().map(|(_, disk)| disk)).unwrap_or(&self.cargo)
    }
}

/// What makes a step's disk images.
enum DiskMaker {
    /// bootloader 0.9, built around each kernel (`image = "bootimage"`).
    Bootimage(bootimage::Bootloader),
    /// The current bootloader crate's images, made by kiln's builder (`image = "bios"`,
    /// `"uefi"`).
    Bootloader {
        /// The builder of the kernel's bootloader version.
        builder: bootloader::Builder,
        /// Which images it makes.
        firmware: bootloader::DiskFirmware,
    },
}

impl DiskMaker {
    /// The bootloader's version.
    fn version(&self) -> String {
        match self {
            Self::Bootimage(bootloader) => bootloader.version.clone(),
            Self::Bootloader { builder, .. } => builder.version.to_string(),
        }
    }
}

/// The derivations of the images, given the fetches they read and the closures of the
/// artifacts their layers use.
pub(crate) fn image_derivations(
    images: &[ImageStep],
    fetches: &[FetchStep],
    artifacts: &BTreeMap<BuildKey, ClosureHash>,
) -> anyhow::Result<Vec<Derivation>> {
    let fetches: BTreeMap<String, ClosureHash> =
        fetches.iter().map(|step| (step.fetch.name.clone(), fetch::derivation(&step.fetch).closure_hash())).collect();
    images
        .iter()
        .map(|step| {
            let key = &step.key;
            Ok(match &step.recipe {
                ImageRecipe::Kernel(kernel) => kernel::kernel_derivation(kernel, key.arch, &fetches),
                ImageRecipe::Rootfs(rootfs) => {
                    let inputs = rootfs::RootfsInputs { fetches: &fetches, artifacts };
                    rootfs::rootfs_derivation(rootfs, key.arch, &inputs)
                        .with_context(|| format!("cannot compute the closure of {key}"))?
                }
            })
        })
        .collect()
}

/// An [`UnknownPackage`] error when the artifact's package is not a local package of the
/// cargo workspace.
fn check_package(step: &BuildStep, metadata: &cargo_json::Metadata) -> anyhow::Result<()> {
    let artifact = &step.artifact;
    let local: Vec<String> =
        metadata.packages.iter().filter(|p| p.source.is_none()).map(|p| p.name.to_string()).collect();
    if local.contains(&artifact.package) {
        return Ok(());
    }
    Err(UnknownPackage {
        artifact: artifact.name.clone(),
        package: artifact.package.clone(),
        workspace: metadata.workspace_root.display().to_string(),
        local,
    }
    .into())
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> anyhow::Result<T> {
    handle.join().map_err(|_| anyhow::anyhow!("a cargo query panicked"))
}
