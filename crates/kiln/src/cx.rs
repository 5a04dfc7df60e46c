//! The context every command works in: the resolved Kiln.toml, the printer, the global
//! options and the executor (the store and what builds into it), and the steps that need all
//! of them: planning a command's work from the configuration, realising it, and lowering it
//! into boots. [`Cx`] and [`Step`] are part of kiln's library surface (`kiln::xtask`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use kiln_qemu::accel::{Accel, AccelChoice, AccelPolicy};
use kiln_store::{BuildOutcome, ClosureHash, Derivation, StatCache, Store};
use kiln_types::Arch;

use crate::{
    boots::{self, ReadyRun},
    cli::{AccelArg, GlobalArgs, TestArgs},
    config::{BUILTIN_ARCHES, Config, ConfigChoice, ConfigError},
    env,
    error::UsageError,
    events::{EntryKind, Reporter},
    exec::{self, Executor, InstallMode, Realised, UnknownPackage},
    outcome::{CaseResult, RunSummary},
    plan::{GuestSize, Plan, RunPlan, Selection, TestNameError, WarmthAsked},
    report::{Printer, Verbosity, github},
    runner,
    vm::{
        LinuxTarget,
        keeper::{KeeperRole, KeeperSpec},
    },
};

/// Options that apply to every command.
#[derive(Clone, Debug)]
pub(crate) struct Options {
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

impl Options {
    /// The options the global arguments ask for.
    pub(crate) fn from_args(global: &GlobalArgs) -> Self {
        let jobs = global.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), usize::from);
        let accel = match global.accel {
            AccelArg::Auto => AccelPolicy::Auto,
            AccelArg::Kvm => AccelPolicy::Force(Accel::Kvm),
            AccelArg::Tcg => AccelPolicy::Force(Accel::Tcg),
        };
        Self { jobs, install: InstallMode::detect(global.yes), accel, explain: false, push: global.push }
    }
}

/// The verbosity the global options ask for.
pub(crate) fn verbosity(global: &GlobalArgs) -> Verbosity {
    if global.quiet {
        Verbosity::Quiet
    } else if global.verbose > 0 {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    }
}

/// A command's context: a project's Kiln.toml, its store, and how kiln was asked to work.
#[derive(Debug)]
pub struct Cx {
    config: Config,
    printer: Arc<Printer>,
    options: Options,
    executor: Executor,
    /// Whether the configuration is kiln's built-in runner guests (no project named one).
    builtin_runner: bool,
    /// The accelerator chosen per architecture so far, for the job summary.
    accels: std::sync::Mutex<std::collections::BTreeMap<Arch, AccelChoice>>,
}

/// An artifact built for one architecture, or found in the store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Built {
    /// The artifact's name in Kiln.toml.
    pub artifact: String,
    /// The architecture.
    pub arch: Arch,
    /// The closure hash naming its store entry.
    pub closure: ClosureHash,
    /// Its bootable images in the store (one, or one per test binary for `kind = "tests"`).
    pub images: Vec<PathBuf>,
    /// Whether it was built now, found, or substituted from a remote.
    pub outcome: BuildOutcome,
}

impl Cx {
    /// The context for the global options: finds and loads Kiln.toml, opens the store.
    pub fn from_args(global: &GlobalArgs) -> anyhow::Result<Self> {
        Self::open(global.config.as_deref(), Printer::new(verbosity(global)), Options::from_args(global))
    }

    /// The context for the Kiln.toml at `file`, else the one `KILN_CONFIG` names, else the
    /// one found from the current directory up.
    pub(crate) fn open(file: Option<&Path>, printer: Printer, options: Options) -> anyhow::Result<Self> {
        Self::open_choosing(file, false, printer, options)
    }

    /// As [`Cx::open`], on kiln's built-in runner guests when no Kiln.toml is named or found
    /// (`run` and `vm`: cargo's runner in a crate that is not a kiln project).
    pub(crate) fn open_or_builtin(file: Option<&Path>, printer: Printer, options: Options) -> anyhow::Result<Self> {
        Self::open_choosing(file, true, printer, options)
    }

    fn open_choosing(file: Option<&Path>, builtin: bool, printer: Printer, options: Options) -> anyhow::Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let named = env::var_os(env::KILN_CONFIG);
        let (file, builtin_runner) = match ConfigChoice::choose(file, named.as_deref(), &cwd, builtin)? {
            ConfigChoice::File(file) => (file, false),
            ConfigChoice::BuiltinRunner => (crate::config::write_runner_config()?, true),
        };
        let mut cx = Self::open_file(&file, printer, options)?;
        cx.builtin_runner = builtin_runner;
        Ok(cx)
    }

    /// The context for the Kiln.toml at `file`.
    fn open_file(file: &Path, printer: Printer, options: Options) -> anyhow::Result<Self> {
        let config = Config::load(file)?;
        let store_dir = env::var_os(env::KILN_STORE).map_or_else(|| config.store_dir.clone(), PathBuf::from);
        let store =
            Store::open(&store_dir).with_context(|| format!("cannot open the store at `{}`", store_dir.display()))?;
        let printer = Arc::new(printer);
        let reporter: Arc<dyn Reporter> = printer.clone();
        let settings = exec::Settings {
            install: options.install,
            explain: options.explain,
            quiet_cargo: printer.verbosity() < Verbosity::Normal,
            work_dir: crate::config::work_dir(&config.root),
        };
        let executor = Executor::new(store, reporter.clone(), settings);
        #[cfg(feature = "remote")]
        let executor = match exec::remotes::open(&config.remotes, &config.trusted_keys, &reporter, options.push)? {
            Some(remotes) => executor.with_remotes(remotes),
            None => executor,
        };
        #[cfg(not(feature = "remote"))]
        {
            if options.push {
                return Err(remote_feature_missing().into());
            }
            if !config.remotes.is_empty() || env::non_empty(env::KILN_REMOTES).is_some() {
                // Said even with `-q`, as every remote warning is.
                reporter.alert(
                    "remote stores are named (Kiln.toml or KILN_REMOTES), but this kiln was built without its \
                     `remote` feature, so everything is built locally; to use them, enable it in your xtask's \
                     Cargo.toml (`features = [\"remote\"]` on the kiln dependency)",
                );
            }
        }
        Ok(Self { config, printer, options, executor, builtin_runner: false, accels: Default::default() })
    }

    /// The same context over another store, without remote stores (`release` builds in an
    /// empty one).
    #[cfg(feature = "github")]
    pub(crate) fn with_store(&self, store: Store) -> Self {
        Self {
            config: self.config.clone(),
            printer: self.printer.clone(),
            options: self.options.clone(),
            executor: self.executor.with_store(store),
            builtin_runner: self.builtin_runner,
            accels: Default::default(),
        }
    }

    /// The project root: the directory holding Kiln.toml.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// An xshell `Shell` whose working directory is the project root (the process's own
    /// working directory is left alone). The secrets kiln withholds from every child
    /// ([`kiln_types::SECRET_VARIABLES`]) are set empty in it (xshell cannot unset).
    pub fn shell(&self) -> anyhow::Result<xshell::Shell> {
        let shell = xshell::Shell::new()?;
        shell.change_dir(&self.config.root);
        for name in kiln_types::SECRET_VARIABLES {
            if crate::env::var_os(name).is_some() {
                shell.set_var(name, "");
            }
        }
        Ok(shell)
    }

    /// A custom build step, keyed and cached in the store like a cargo build: name its
    /// inputs, then [`Step::build`] runs your closure only when the store lacks the result.
    pub fn step(&self, name: &str) -> Step<'_> {
        let mut derivation = Derivation::new("custom");
        derivation.setting("name", name);
        Step { cx: self, name: name.to_owned(), derivation }
    }

    /// Builds Kiln.toml's artifacts through the store (the named ones, or all when `names` is
    /// empty; on `arches`, or every arch each is built for when empty). A build the store
    /// already holds costs a hash of its inputs, not a cargo run.
    pub fn build(&self, names: &[&str], arches: &[Arch]) -> anyhow::Result<Vec<Built>> {
        let plan = self.build_plan(names, arches)?;
        let built = self.realise_builds(&plan)?;
        Ok(built
            .into_iter()
            .map(|(key, artifact)| Built {
                artifact: key.artifact,
                arch: key.arch,
                closure: artifact.closure,
                images: artifact.images.into_iter().map(|image| image.path).collect(),
                outcome: artifact.outcome,
            })
            .collect())
    }

    /// The closure hashes the artifacts' builds have now (as [`Cx::build`] selects them),
    /// without building anything.
    pub fn closures(&self, names: &[&str], arches: &[Arch]) -> anyhow::Result<Vec<(String, Arch, ClosureHash)>> {
        let plan = self.build_plan(names, arches)?;
        let derivations = self.with_config_errors(self.executor.derivations(&plan.builds))?;
        Ok(plan
            .builds
            .iter()
            .zip(derivations)
            .map(|(step, drv)| (step.key.artifact.clone(), step.key.arch, drv.closure_hash()))
            .collect())
    }

    /// Builds, boots and judges the cases `args` selects, as `cargo xtask test` does, and
    /// returns their results (the summary table is not printed).
    pub fn test(&self, args: &TestArgs) -> anyhow::Result<RunSummary> {
        let started = Instant::now();
        let selection = Selection {
            arches: args.arch.clone(),
            names: args.cases.clone(),
            tests: args.tests.clone(),
            partition: args.partition,
        };
        let plan = Plan::for_test(&self.config, &selection)?;
        if let Some(partition) = args.partition {
            let all = Plan::for_test(&self.config, &Selection { partition: None, ..selection.clone() })?.runs.len();
            self.printer.status("Partition", &format!("{partition}: {} of {all} case runs", plan.runs.len()));
            if plan.runs.is_empty() && all > 0 {
                // With more shards than runs, some shards are empty: nothing to do is no error.
                let log_dir = self.log_dir()?;
                return Ok(RunSummary {
                    results: Vec::new(),
                    store: Default::default(),
                    total: started.elapsed(),
                    log_dir,
                });
            }
        }
        if plan.runs.is_empty() {
            return Err(UsageError::with_help(
                "no case matches the selection",
                "check `--arch` and the case names against `cargo xtask config`",
            )
            .into());
        }
        let (ready, store) = self.prepare_boots(&plan)?;
        let log_dir = self.log_dir()?;
        // In GitHub Actions nothing a guest prints may be read as a workflow command.
        let guard = github::active().then(github::CommandGuard::new).transpose()?;
        if let Some(guard) = &guard {
            self.printer.always(&guard.start());
        }
        let retry = runner::RetryPolicy { retries: args.retries, guest_failures: args.retry_guest_failures };
        let results = self.boot(ready, retry, &log_dir);
        if let Some(guard) = &guard {
            self.printer.always(&guard.end());
        }
        Ok(RunSummary { results, store, total: started.elapsed(), log_dir })
    }

    /// The artifacts `names` (all when empty) on `arches` (all when empty).
    fn build_plan(&self, names: &[&str], arches: &[Arch]) -> anyhow::Result<Plan> {
        for name in names {
            if !self.config.artifacts.contains_key(*name) {
                let known = self.config.artifacts.keys().map(String::as_str);
                let help = match crate::config::closest_name(name, known) {
                    Some(near) => format!("an artifact with a similar name exists: `{near}`"),
                    None => {
                        format!("artifacts: {}", self.config.artifacts.keys().cloned().collect::<Vec<_>>().join(", "))
                    }
                };
                return Err(UsageError::with_help(format!("no artifact named `{name}` in Kiln.toml"), help).into());
            }
        }
        let selection = Selection {
            arches: arches.to_vec(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Selection::default()
        };
        Ok(Plan::for_build(&self.config, &selection))
    }

    /// The resolved Kiln.toml.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Where status lines go.
    pub(crate) fn printer(&self) -> &Arc<Printer> {
        &self.printer
    }

    /// The global options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The executor: the store and what builds into it.
    pub(crate) fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        self.executor.store()
    }

    /// kiln's scratch directory for this project (logs, caches, keepers' files).
    pub(crate) fn work_dir(&self) -> PathBuf {
        crate::config::work_dir(&self.config.root)
    }

    /// Whether this context runs on kiln's built-in runner guests (no Kiln.toml was found).
    pub(crate) fn is_builtin_runner(&self) -> bool {
        self.builtin_runner
    }

    /// The directory of serial logs, created.
    pub(crate) fn log_dir(&self) -> anyhow::Result<PathBuf> {
        let log_dir = self.work_dir().join("logs");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create `{}`", log_dir.display()))?;
        Ok(log_dir)
    }

    /// Turns what the layers below found wrong in Kiln.toml's values into Kiln.toml errors
    /// pointing at the key: a `package` cargo does not know, a per-test table whose name finds
    /// no test binary (a name from the command line is a usage error).
    pub(crate) fn with_config_errors<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let result = result.map_err(|err| match err.downcast::<TestNameError>() {
            Ok(TestNameError { key: Some(key), message, help }) => {
                anyhow::Error::from(self.config.error_at(&key, message).with_help(help))
            }
            Ok(TestNameError { key: None, message, help }) => UsageError::with_help(message, help).into(),
            Err(other) => other,
        });
        result.map_err(|err| match err.downcast::<UnknownPackage>() {
            Ok(unknown) => {
                let error =
                    self.config.error_at(&format!("artifact.{}.package", unknown.artifact), unknown.to_string());
                let near = crate::config::closest_name(&unknown.package, unknown.local.iter().map(String::as_str));
                let error: ConfigError = match near {
                    Some(near) => error.with_help(format!("a package with a similar name exists: `{near}`")),
                    None => error.with_help(format!("packages there: {}", unknown.local.join(", "))),
                };
                error.into()
            }
            Err(other) => other,
        })
    }

    /// Builds the plan's cargo builds through the store.
    pub(crate) fn realise_builds(
        &self,
        plan: &Plan,
    ) -> anyhow::Result<std::collections::BTreeMap<crate::plan::BuildKey, exec::BuiltArtifact>> {
        self.with_config_errors(self.executor.realise_builds(&plan.builds))
    }

    /// Realises a plan: builds, fetches, kernels and rootfs images.
    pub(crate) fn realise(&self, plan: &Plan) -> anyhow::Result<Realised> {
        self.with_config_errors(self.executor.realise(plan))
    }

    /// Every closure a plan needs, without building.
    pub(crate) fn closures_of(&self, plan: &Plan) -> anyhow::Result<Vec<(String, ClosureHash)>> {
        self.with_config_errors(self.executor.closures(plan))
    }

    /// The accelerator per architecture, chosen and said once each.
    pub(crate) fn accelerators(
        &self,
        arches: impl IntoIterator<Item = Arch>,
    ) -> std::collections::BTreeMap<Arch, AccelChoice> {
        let chosen = self.executor.accelerators(arches, self.options.accel);
        if let Ok(mut accels) = self.accels.lock() {
            accels.extend(chosen.iter().map(|(arch, choice)| (*arch, choice.clone())));
        }
        chosen
    }

    /// Every accelerator this context chose so far, per architecture.
    pub(crate) fn chosen_accelerators(&self) -> std::collections::BTreeMap<Arch, AccelChoice> {
        self.accels.lock().map(|accels| accels.clone()).unwrap_or_default()
    }

    /// Everything before a plan's boots: the host checked, the plan realised, accelerators
    /// chosen, booted snapshots made; with how the store served the derivations.
    pub(crate) fn prepare_boots(&self, plan: &Plan) -> anyhow::Result<(Vec<ReadyRun>, crate::outcome::StoreUse)> {
        self.executor.provision_machines(plan.runs.iter().map(|run| &run.machine))?;
        self.executor.provision_disk_firmware(&plan.builds)?;
        let realised = self.realise(plan)?;
        let accels = self.accelerators(plan.runs.iter().map(|run| run.machine.arch));
        let ready = self.with_config_errors(boots::lower(&self.executor, plan, &realised, &accels))?;
        Ok((ready, realised.store_use()))
    }

    /// Boots prepared runs, `-j` at a time, with their events shown.
    pub(crate) fn boot(&self, ready: Vec<ReadyRun>, retry: runner::RetryPolicy, log_dir: &Path) -> Vec<CaseResult> {
        let mut printer = self.printer.clone_settings();
        printer.set_prefix_serial(ready.len() > 1);
        printer.set_stream_serial(!github::active());
        printer.start_progress(ready.len());
        let printer = Arc::new(printer);
        let results = runner::run_all(ready, self.options.jobs, retry, log_dir, printer.clone());
        printer.finish_progress();
        results
    }

    /// The Linux guest that runs programs of `arch`, realised, with its plan.
    pub(crate) fn linux_target(
        &self,
        arch: Arch,
        kernel: Option<&str>,
        rootfs: Option<&str>,
        asked: WarmthAsked,
        timeout: Option<std::time::Duration>,
    ) -> anyhow::Result<(RunPlan, LinuxTarget)> {
        if self.builtin_runner {
            self.builtin_guest_for(arch)?;
        }
        let size = GuestSize::of_this_host();
        let run = RunPlan::new(&self.config, arch, kernel, rootfs, asked, timeout, size)?;
        self.executor.provision_machines([&run.machine])?;
        let realised = self.realise(&run.plan)?;
        let accel = self.executor.accelerator(arch, self.options.accel);
        let target = LinuxTarget::of(&run, &realised, accel)?;
        Ok((run, target))
    }

    /// Says which built-in guest runs a program of `arch`, or that there is none.
    fn builtin_guest_for(&self, arch: Arch) -> anyhow::Result<()> {
        if !BUILTIN_ARCHES.contains(&arch) {
            let builtin = BUILTIN_ARCHES.map(|arch| arch.as_str()).join(" and ");
            return Err(UsageError::with_help(
                format!("no Kiln.toml here, and kiln has no built-in {arch} guest (it has {builtin} guests)"),
                format!(
                    "write a Kiln.toml with a {arch} `[fetch]` kernel and busybox, a `[kernel.NAME]`, a \
                     `[rootfs.NAME]` and a `[run]` table (docs/kiln-toml.md; `{}` is the built-in one to start \
                     from), and point KILN_CONFIG at it or pass `--config PATH`",
                    self.config.file.display()
                ),
            )
            .into());
        }
        self.printer.status(
            "Guest",
            &format!(
                "kiln's built-in {arch} guest (Debian's kernel and busybox; no Kiln.toml here or above, no \
                 KILN_CONFIG): {}",
                self.config.file.display()
            ),
        );
        Ok(())
    }

    /// The spec of a keeper for `target`: this project, and every setting that enters the
    /// snapshot's closure.
    pub(crate) fn keeper_spec(&self, target: &LinuxTarget, role: KeeperRole) -> KeeperSpec {
        KeeperSpec {
            config: self.config.file.clone(),
            jobs: self.options.jobs,
            accel: target.accel,
            arch: target.machine.arch,
            kernel: target.kernel_name.clone(),
            rootfs: target.rootfs_name.clone(),
            role,
        }
    }

    /// Waits for the pushes the command started, and says what they did.
    pub(crate) fn finish_pushes(&self) {
        #[cfg(feature = "remote")]
        if let Some(remotes) = self.executor.remotes() {
            exec::remotes::finish(remotes, self.executor.reporter());
        }
    }

    /// Stops pushing in the background (cargo's runner and warm guests must not wait on
    /// uploads).
    pub(crate) fn stop_background_pushes(&self) {
        #[cfg(feature = "remote")]
        if let Some(remotes) = self.executor.remotes() {
            remotes.stop_background_pushes();
        }
    }
}

/// The error for a command that needs remote stores in a kiln built without them.
#[cfg(not(feature = "remote"))]
pub(crate) fn remote_feature_missing() -> UsageError {
    UsageError::with_help(
        "this kiln was built without its `remote` feature, which remote stores need",
        "enable it in your xtask's Cargo.toml (`features = [\"remote\"]` on the kiln dependency)",
    )
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
    pub fn input_file(mut self, name: &str, path: &Path) -> anyhow::Result<Self> {
        let hash = kiln_store::hash_file(path).with_context(|| format!("cannot hash `{}`", path.display()))?;
        self.derivation.input(format!("file:{name}"), kiln_store::InputHash(*hash.as_bytes()));
        Ok(self)
    }

    /// A directory the step reads (hashed like a package's sources, .gitignore respected).
    pub fn input_dir(mut self, name: &str, dir: &Path) -> anyhow::Result<Self> {
        let set = kiln_store::SourceSet::package_dir(dir)?;
        let hash = kiln_store::hash_source_set(&set, &StatCache::disabled())?;
        self.derivation.input(format!("source:{name}"), hash);
        Ok(self)
    }

    /// An artifact the step reads, as [`Cx::build`] returned it: its closure is an input.
    pub fn input_build(mut self, built: &Built) -> Self {
        self.derivation.input(
            format!("entry:{}-{}", built.artifact, built.arch),
            kiln_store::InputHash::of_closure(built.closure),
        );
        self
    }

    /// Another store entry the step reads, by its closure.
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
    pub fn build(self, build: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<(PathBuf, BuildOutcome)> {
        let (entry, outcome) =
            self.cx.executor.entry(&self.derivation, &self.name, &self.name, EntryKind::Build, None, build)?;
        Ok((entry.out_dir(), outcome))
    }
}
