//! The context every command works in: configuration, store, printer and options, plus
//! the building blocks the commands share (realising builds, checking the host).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use kiln_qemu::accel::{self, AccelChoice, AccelPolicy};
use kiln_store::{BuildOutcome, ClosureHash, Derivation, StatCache, Store};
use kiln_types::Arch;

use crate::{
    config::Config,
    exec::{self, CargoHost},
    plan::{BuildKey, BuildStep, CaseRun, ImageKey, ImageKind, Plan},
    provision::{self, InstallMode},
    report::Printer,
};

/// Options that apply to every command.
#[derive(Clone, Debug)]
pub struct Options {
    /// Parallel guests.
    pub jobs: usize,
    /// Whether missing host packages may be installed.
    pub install: InstallMode,
    /// KVM or TCG.
    pub accel: AccelPolicy,
    /// Say why each build that runs is needed (`build --explain`).
    pub explain: bool,
    /// Push what the command builds or uses to every remote (`--push`).
    pub push: bool,
}

/// An artifact built for one architecture (or found in the store).
#[derive(Clone, Debug)]
pub struct BuiltArtifact {
    /// Its closure hash.
    pub closure: ClosureHash,
    /// The images to boot inside the store entry (one, or one per test binary).
    pub images: Vec<exec::BootImage>,
    /// Whether it was built now.
    pub outcome: BuildOutcome,
}

impl BuiltArtifact {
    /// The first (for `kind = "bin"`, the only) image.
    pub fn image(&self) -> &std::path::Path {
        self.images.first().map_or(std::path::Path::new(""), |image| &image.path)
    }
}

/// A kernel or rootfs in the store.
#[derive(Clone, Debug)]
pub struct RealisedImage {
    /// Its closure hash.
    pub closure: ClosureHash,
    /// The entry's output directory.
    pub dir: PathBuf,
    /// Whether it was built now.
    pub outcome: BuildOutcome,
}

/// The binary of every artifact built for `arch`, by artifact name (what rootfs layers use).
pub fn binaries_for(builds: &BTreeMap<BuildKey, BuiltArtifact>, arch: Arch) -> BTreeMap<String, PathBuf> {
    builds
        .iter()
        .filter(|(key, _)| key.arch == arch)
        .map(|(key, built)| (key.artifact.clone(), built.image().to_owned()))
        .collect()
}

/// Everything a plan needs, in the store.
#[derive(Debug, Default)]
pub struct Realised {
    /// Artifacts by build.
    pub builds: BTreeMap<BuildKey, BuiltArtifact>,
    /// Kernels and rootfs images.
    pub images: BTreeMap<ImageKey, RealisedImage>,
    /// How each fetch was served.
    pub fetches: Vec<BuildOutcome>,
}

impl Realised {
    /// How many derivations were built now and how many came from the store.
    pub fn store_use(&self) -> crate::report::StoreUse {
        let outcomes: Vec<&BuildOutcome> = self
            .builds
            .values()
            .map(|b| &b.outcome)
            .chain(self.images.values().map(|i| &i.outcome))
            .chain(&self.fetches)
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
        crate::report::StoreUse { built, cached: outcomes.len() - built - substituted, substituted, substituted_from }
    }
}

/// A command's context.
#[derive(Debug)]
pub struct Cx {
    /// The resolved Kiln.toml.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// Where status lines go.
    pub printer: Arc<Printer>,
    /// Global options.
    pub options: Options,
    /// The remote stores the store substitutes from and pushes to, when there are any.
    pub remotes: Option<Arc<kiln_store::remote::Remotes>>,
}

impl Cx {
    /// The context for the global options: finds and loads Kiln.toml, opens the store.
    pub fn from_args(global: &crate::cli::GlobalArgs) -> anyhow::Result<Self> {
        crate::commands::context(global)
    }

    /// The project root: the directory holding Kiln.toml.
    pub fn root(&self) -> &std::path::Path {
        &self.config.root
    }

    /// An xshell `Shell` whose working directory is the project root (the process's own
    /// working directory is left alone).
    pub fn shell(&self) -> anyhow::Result<xshell::Shell> {
        let shell = xshell::Shell::new()?;
        shell.change_dir(&self.config.root);
        Ok(shell)
    }

    /// A custom build step, keyed and cached in the store like a cargo build: name its
    /// inputs, then [`Step::build`] runs your closure only when the store lacks the result.
    pub fn step(&self, name: &str) -> Step<'_> {
        let mut derivation = Derivation::new("custom");
        derivation.setting("name", name);
        Step { cx: self, name: name.to_owned(), derivation }
    }

    /// Opens the store the configuration names (or `KILN_STORE`).
    pub fn new(config: Config, printer: Printer, options: Options) -> anyhow::Result<Self> {
        let store_dir =
            std::env::var_os(crate::env::KILN_STORE).map_or_else(|| config.store_dir.clone(), PathBuf::from);
        let mut store =
            Store::open(&store_dir).with_context(|| format!("cannot open the store at `{}`", store_dir.display()))?;
        let printer = Arc::new(printer);
        let remotes = crate::remote::open(&config, &printer, options.push)?;
        if let Some(remotes) = &remotes {
            store = store.with_substituter(remotes.clone());
        }
        Ok(Self { config, store, printer, options, remotes })
    }

    /// Waits for the pushes the command started, and says what they did.
    pub fn finish_pushes(&self) {
        if let Some(remotes) = &self.remotes {
            crate::remote::finish(remotes, &self.printer);
        }
    }

    /// kiln's scratch directory for this project (logs, probe cache).
    pub fn work_dir(&self) -> PathBuf {
        self.config.root.join("target/kiln")
    }

    /// Computes each step's derivation. The cargo and rustc queries behind them run at once,
    /// one per package directory and target, since they dominate a fully cached run.
    pub fn derivations(&self, steps: &[BuildStep]) -> anyhow::Result<Vec<Derivation>> {
        let dirs: BTreeSet<&PathBuf> = steps.iter().map(|s| &s.artifact.dir).collect();
        self.provision_toolchains(&dirs)?;
        let queries: BTreeSet<(&PathBuf, &str)> = steps.iter().map(|s| (&s.artifact.dir, s.triple.as_str())).collect();
        let cache = exec::MetadataCache::new(self.work_dir().join("cache/cargo-metadata"));
        let (hosts, answers) = std::thread::scope(|scope| {
            let hosts: Vec<_> = dirs.iter().map(|dir| (*dir, scope.spawn(move || CargoHost::probe(dir)))).collect();
            let answers: Vec<_> = queries
                .iter()
                .map(|(dir, triple)| {
                    let cache = &cache;
                    ((*dir, *triple), scope.spawn(move || cache.get(dir, triple)))
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
        let mut metadata = BTreeMap::new();
        for ((dir, triple), answer) in answers {
            let rustc = &hosts[dir].rustc_version;
            let json = match answer.cached_with_rustc {
                Some(cached) if cached == *rustc => answer.json,
                Some(_) => {
                    let fresh = exec::run_cargo_metadata(dir, triple)?;
                    cache.store(dir, triple, &fresh, rustc);
                    fresh
                }
                None => {
                    cache.store(dir, triple, &answer.json, rustc);
                    answer.json
                }
            };
            let parsed = exec::MetadataAnswer { json, cached_with_rustc: None }.parse()?;
            metadata.insert((dir, triple), parsed);
        }
        for step in steps {
            self.check_package(step, &metadata[&(&step.artifact.dir, step.triple.as_str())])?;
        }
        let stat_cache = StatCache::load(self.work_dir().join("cache/stat-cache"));
        let derivations = steps
            .iter()
            .map(|step| {
                let host = &hosts[&step.artifact.dir];
                let metadata = &metadata[&(&step.artifact.dir, step.triple.as_str())];
                exec::derivation_for(step, host, metadata, &stat_cache)
                    .with_context(|| format!("cannot compute the closure of {}", step.key))
            })
            .collect();
        if let Err(err) = stat_cache.save() {
            self.printer.verbose("Warning", &format!("the stat cache was not saved: {err}"));
        }
        derivations
    }

    /// Warns when `RUSTFLAGS` is set while the project's cargo config has rustflags: cargo
    /// then drops the config's flags (linker scripts among them), which breaks kernel links.
    fn warn_environment_rustflags<'a>(&self, dirs: impl Iterator<Item = &'a PathBuf>) {
        let Some(variable) =
            ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS"].into_iter().find(|v| std::env::var_os(v).is_some())
        else {
            return;
        };
        for dir in dirs {
            let configured = dir.ancestors().any(|ancestor| {
                std::fs::read_to_string(ancestor.join(".cargo/config.toml"))
                    .is_ok_and(|text| text.contains("rustflags"))
            });
            if configured {
                self.printer.warn(&format!(
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
                self.printer.warn(&warning);
            }
            missing.extend(provision::check_toolchain(dir));
        }
        provision::ensure(missing, self.options.install, &self.printer)
    }

    /// A Kiln.toml error (exit code 2, pointing at the key) when the artifact's package is not
    /// a local package of the cargo workspace.
    fn check_package(&self, step: &BuildStep, metadata: &cargo_metadata::Metadata) -> anyhow::Result<()> {
        let artifact = &step.artifact;
        let local: Vec<&str> =
            metadata.packages.iter().filter(|p| p.source.is_none()).map(|p| p.name.as_str()).collect();
        if local.contains(&artifact.package.as_str()) {
            return Ok(());
        }
        let err = self.config.error_at(
            &format!("artifact.{}.package", artifact.name),
            format!("no package named `{}` in the cargo workspace at `{}`", artifact.package, metadata.workspace_root),
        );
        Err(match crate::config::closest_name(&artifact.package, local.iter().copied()) {
            Some(near) => err.with_help(format!("a package with a similar name exists: `{near}`")),
            None => err.with_help(format!("packages there: {}", local.join(", "))),
        }
        .into())
    }

    /// Builds every step that the store lacks and returns all of them.
    pub fn realise(&self, steps: &[BuildStep]) -> anyhow::Result<BTreeMap<BuildKey, BuiltArtifact>> {
        let derivations = self.derivations(steps)?;
        let mut missing_targets: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for (step, drv) in steps.iter().zip(&derivations) {
            if self.store.lookup(&drv.closure_hash())?.is_none() {
                missing_targets.entry(step.artifact.dir.clone()).or_default().insert(step.triple.clone());
            }
        }
        let mut missing: Vec<_> =
            missing_targets.iter().flat_map(|(dir, targets)| provision::check_targets(dir, targets)).collect();
        for step in steps.iter().filter(|s| s.artifact.build_std.is_some()) {
            if missing_targets.contains_key(&step.artifact.dir) {
                missing.extend(provision::check_rust_src(&step.artifact.dir));
            }
        }
        provision::ensure(missing, self.options.install, &self.printer)?;

        if !missing_targets.is_empty() {
            self.warn_environment_rustflags(missing_targets.keys());
        }
        let quiet = self.printer.verbosity() < crate::report::Verbosity::Normal;
        let mut built = BTreeMap::new();
        for (step, drv) in steps.iter().zip(&derivations) {
            let closure = drv.closure_hash();
            self.printer.verbose("Closure", &format!("{} {closure}", step.key));
            let on_wait = || self.printer.status("Waiting", &format!("for another kiln building {}", step.key));
            let on_build = || {
                self.printer.status("Building", &format!("{} for {}", step.key, step.triple));
                if self.options.explain {
                    for line in crate::explain::changes(&self.store, &step.key.store_name(), drv) {
                        self.printer.status("Because", &line);
                    }
                }
            };
            let (_, outcome, images) = exec::realise(&self.store, step, drv, quiet, on_wait, on_build)?;
            match &outcome {
                BuildOutcome::Cached => self.printer.status("Cached", &format!("{} {}", step.key, closure.short())),
                BuildOutcome::Substituted { .. } => {
                    say_substituted(&self.printer, &step.key.to_string(), &closure, &outcome)
                }
                BuildOutcome::Built { duration, replaced_corrupt } => {
                    if *replaced_corrupt {
                        self.printer.warn(&format!(
                            "the store entry of {} no longer matched its recorded hash; it was rebuilt",
                            step.key
                        ));
                    }
                    self.printer.status(
                        "Built",
                        &format!("{} {} in {}", step.key, closure.short(), crate::report::seconds(*duration)),
                    );
                }
            }
            let name = step.key.store_name();
            self.store.mark_used(&closure)?;
            self.store.record_name(&name, &closure)?;
            built.insert(step.key.clone(), BuiltArtifact { closure, images, outcome });
        }
        Ok(built)
    }

    /// Realises a plan: its builds, then the fetches, kernels and rootfs images.
    pub fn realise_plan(&self, plan: &Plan) -> anyhow::Result<Realised> {
        let builds = self.realise(&plan.builds)?;
        let artifact_closures = builds.iter().map(|(key, built)| (key.clone(), built.closure)).collect();
        let (fetched, fetches) = self.fetch_counting(&plan.images)?;
        let mut images = BTreeMap::new();
        for (key, drv) in self.image_derivations(&plan.images, &artifact_closures)? {
            let closure = drv.closure_hash();
            let name = key.store_name();
            let on_wait = || self.printer.status("Waiting", &format!("for another kiln building {key}"));
            let build = |out: &std::path::Path| -> anyhow::Result<()> {
                self.printer.status("Building", &key.to_string());
                match key.kind {
                    ImageKind::Kernel => {
                        let kernel = &self.config.kernels[&key.name];
                        let template = match &kernel.source {
                            crate::config::KernelSource::Deb(t) | crate::config::KernelSource::Image(t) => t,
                        };
                        let (_, file) = &fetched[&template.for_arch(key.arch)];
                        exec::linux::build_kernel(kernel, key.arch, file, out)
                    }
                    ImageKind::Rootfs => {
                        let rootfs = &self.config.rootfses[&key.name];
                        let binaries = binaries_for(&builds, key.arch);
                        let files = exec::linux::RootfsFiles { fetched: &fetched, binaries: &binaries };
                        let tree = exec::linux::assemble(rootfs, key.arch, &files)?;
                        exec::linux::write_rootfs(rootfs, &tree, out)
                    }
                }
            };
            let (entry, outcome) = self.store.build(&drv, &name, on_wait, |out| {
                build(out).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { format!("{e:#}").into() })
            })?;
            match &outcome {
                BuildOutcome::Cached => self.printer.status("Cached", &format!("{key} {}", closure.short())),
                BuildOutcome::Substituted { .. } => {
                    say_substituted(&self.printer, &key.to_string(), &closure, &outcome)
                }
                BuildOutcome::Built { duration, .. } => self
                    .printer
                    .status("Built", &format!("{key} {} in {}", closure.short(), crate::report::seconds(*duration))),
            }
            self.store.mark_used(&closure)?;
            self.store.record_name(&name, &closure)?;
            images.insert(key, RealisedImage { closure, dir: entry.out_dir(), outcome });
        }
        Ok(Realised { builds, images, fetches })
    }

    /// Fetches (or finds in the store) every file the images read.
    pub fn fetch_for(&self, images: &[ImageKey]) -> anyhow::Result<exec::FetchedFiles> {
        Ok(self.fetch_counting(images)?.0)
    }

    fn fetch_counting(&self, images: &[ImageKey]) -> anyhow::Result<(exec::FetchedFiles, Vec<BuildOutcome>)> {
        let mut fetched = exec::FetchedFiles::new();
        let mut outcomes = Vec::new();
        for name in self.fetches_of(images) {
            let fetch = &self.config.fetches[&name];
            let (path, outcome) = exec::fetch::realise(&self.store, fetch, &self.printer).map_err(|err| match self
                .config
                .line_of(&format!("fetch.{name}"))
            {
                Some(line) => err.context(format!("`[fetch.{name}]` at {}:{line}", self.config.file.display())),
                None => err,
            })?;
            fetched.insert(name, (exec::fetch::derivation(fetch).closure_hash(), path));
            outcomes.push(outcome);
        }
        Ok((fetched, outcomes))
    }

    /// The fetch names the images read, sorted.
    fn fetches_of(&self, images: &[ImageKey]) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for key in images {
            match key.kind {
                ImageKind::Kernel => {
                    if let Some(kernel) = self.config.kernels.get(&key.name) {
                        let (crate::config::KernelSource::Deb(t) | crate::config::KernelSource::Image(t)) =
                            &kernel.source;
                        names.insert(t.for_arch(key.arch));
                    }
                }
                ImageKind::Rootfs => {
                    for layer in self.config.rootfses.get(&key.name).map(|r| r.layers.as_slice()).unwrap_or_default() {
                        use crate::config::LayerSource;
                        if let LayerSource::Busybox(t) | LayerSource::Deb(t) | LayerSource::Tarball(t) = &layer.source {
                            names.insert(t.for_arch(key.arch));
                        }
                    }
                }
            }
        }
        names
    }

    /// The derivations of the images, given the closures of the artifacts their layers use.
    pub fn image_derivations(
        &self,
        images: &[ImageKey],
        artifacts: &BTreeMap<BuildKey, ClosureHash>,
    ) -> anyhow::Result<Vec<(ImageKey, Derivation)>> {
        let fetches: BTreeMap<String, ClosureHash> = self
            .config
            .fetches
            .iter()
            .map(|(name, fetch)| (name.clone(), exec::fetch::derivation(fetch).closure_hash()))
            .collect();
        images
            .iter()
            .map(|key| {
                let drv = match key.kind {
                    ImageKind::Kernel => {
                        exec::linux::kernel_derivation(&self.config.kernels[&key.name], key.arch, &fetches)
                    }
                    ImageKind::Rootfs => {
                        let artifacts: BTreeMap<String, ClosureHash> = artifacts
                            .iter()
                            .filter(|(build, _)| build.arch == key.arch)
                            .map(|(build, closure)| (build.artifact.clone(), *closure))
                            .collect();
                        let inputs = exec::linux::RootfsInputs { fetches: &fetches, artifacts: &artifacts };
                        exec::linux::rootfs_derivation(&self.config.rootfses[&key.name], key.arch, &inputs)
                            .with_context(|| format!("cannot compute the closure of {key}"))?
                    }
                };
                Ok((key.clone(), drv))
            })
            .collect()
    }

    /// Every closure a plan needs (builds, fetches, kernels, rootfs images), without building.
    pub fn plan_closures(&self, plan: &Plan) -> anyhow::Result<Vec<(String, ClosureHash)>> {
        let derivations = self.derivations(&plan.builds)?;
        let mut closures = Vec::new();
        let mut artifacts = BTreeMap::new();
        for (step, drv) in plan.builds.iter().zip(&derivations) {
            artifacts.insert(step.key.clone(), drv.closure_hash());
            closures.push((step.key.store_name(), drv.closure_hash()));
        }
        for name in self.fetches_of(&plan.images) {
            closures
                .push((format!("fetch-{name}"), exec::fetch::derivation(&self.config.fetches[&name]).closure_hash()));
        }
        for (key, drv) in self.image_derivations(&plan.images, &artifacts)? {
            closures.push((key.store_name(), drv.closure_hash()));
        }
        Ok(closures)
    }

    /// Checks (and, when allowed, installs) what the runs' machines need on this host.
    pub fn provision_machines<'a>(&self, runs: impl IntoIterator<Item = &'a CaseRun>) -> anyhow::Result<()> {
        let missing = runs.into_iter().flat_map(|run| provision::check_machine(&run.machine)).collect();
        provision::ensure(missing, self.options.install, &self.printer)
    }

    /// Chooses the accelerator for each architecture and says why, once per arch.
    pub fn accelerators(&self, arches: impl IntoIterator<Item = Arch>) -> BTreeMap<Arch, AccelChoice> {
        let cache_dir = user_cache_dir().unwrap_or_else(|| self.work_dir().join("host"));
        let arches: BTreeSet<Arch> = arches.into_iter().collect();
        arches
            .into_iter()
            .map(|arch| {
                let choice = accel::choose(arch, self.options.accel, &cache_dir);
                let accel = choice.accel.as_str().to_uppercase();
                self.printer.status("Accel", &format!("{arch}: {accel}; {}", choice.reason));
                (arch, choice)
            })
            .collect()
    }
}

/// `Substituted hello (x86_64) 1a2b3c4d from s3://b/p (1.2 MiB in 0.31s)`.
pub(crate) fn say_substituted(printer: &Printer, what: &str, closure: &ClosureHash, outcome: &BuildOutcome) {
    if let BuildOutcome::Substituted { from, duration, bytes } = outcome {
        printer.status(
            "Substituted",
            &format!(
                "{what} {} from {from} ({} in {})",
                closure.short(),
                crate::report::human_size(*bytes),
                crate::report::seconds(*duration)
            ),
        );
    }
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> anyhow::Result<T> {
    handle.join().map_err(|_| anyhow::anyhow!("a cargo query panicked"))
}

/// `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`: what every project on this host shares (the
/// KVM probe's verdict, downloads by hash).
pub(crate) fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".cache"))
    })?;
    Some(base.join("kiln"))
}

/// A custom step under construction; see [`Cx::step`].
#[must_use]
pub struct Step<'a> {
    cx: &'a Cx,
    name: String,
    derivation: Derivation,
}

impl Step<'_> {
    /// A setting that changes the output (a version, a flag).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.derivation.setting(name, value);
        self
    }

    /// A file the step reads.
    pub fn input_file(mut self, name: &str, path: &std::path::Path) -> anyhow::Result<Self> {
        let hash = kiln_store::hash_file(path).with_context(|| format!("cannot hash `{}`", path.display()))?;
        self.derivation.input(format!("file:{name}"), kiln_store::InputHash(*hash.as_bytes()));
        Ok(self)
    }

    /// A directory the step reads (hashed like a package's sources, .gitignore respected).
    pub fn input_dir(mut self, name: &str, dir: &std::path::Path) -> anyhow::Result<Self> {
        let set = kiln_store::SourceSet::package_dir(dir)?;
        let hash = kiln_store::hash_source_set(&set, &StatCache::disabled())?;
        self.derivation.input(format!("source:{name}"), hash);
        Ok(self)
    }

    /// Another store entry the step reads (a built artifact).
    pub fn input_entry(mut self, name: &str, closure: ClosureHash) -> Self {
        self.derivation.input(format!("entry:{name}"), kiln_store::InputHash::of_closure(closure));
        self
    }

    /// The step's closure hash, as its inputs stand now.
    pub fn closure(&self) -> ClosureHash {
        self.derivation.closure_hash()
    }

    /// Returns the step's output directory in the store, running `build` (which writes into
    /// the directory it is given) only when the store lacks it.
    pub fn build(
        self,
        build: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<(PathBuf, BuildOutcome)> {
        let on_wait = || self.cx.printer.status("Waiting", &format!("for another kiln running {}", self.name));
        let (entry, outcome) = self.cx.store.build(&self.derivation, &self.name, on_wait, |out| {
            build(out).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
        })?;
        self.cx.store.mark_used(&entry.closure)?;
        self.cx.store.record_name(&self.name, &entry.closure)?;
        match &outcome {
            BuildOutcome::Cached => {
                self.cx.printer.status("Cached", &format!("{} {}", self.name, entry.closure.short()))
            }
            BuildOutcome::Substituted { .. } => say_substituted(&self.cx.printer, &self.name, &entry.closure, &outcome),
            BuildOutcome::Built { duration, .. } => self.cx.printer.status(
                "Built",
                &format!("{} {} in {}", self.name, entry.closure.short(), crate::report::seconds(*duration)),
            ),
        }
        Ok((entry.out_dir(), outcome))
    }
}
