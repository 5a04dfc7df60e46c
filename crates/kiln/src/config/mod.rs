//! Kiln.toml: reading, validating and resolving the project's declaration.
//!
//! Reading goes raw → resolved: [`raw`] mirrors the file (with spans), [`Config`] holds
//! checked, typed values with defaults applied. Unknown keys are errors with the closest
//! valid key, and every error names file, line, column and key.

mod diagnostic;
mod fields;
mod images;
mod raw;
mod release;
mod store;

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use kiln_qemu::{BootMethod, Device, Firmware, Machine};
use kiln_types::Arch;
use regex::Regex;
use toml::Spanned;

pub use diagnostic::{ConfigError, ConfigErrorDetails, Source, closest as closest_name};
pub use images::{
    Compression, Fetch, FetchSource, HashAlgorithm, Kernel, KernelSource, Layer, LayerSource, NameTemplate, PinnedHash,
    Rootfs, RootfsFormat, RunSettings,
};
pub use raw::{ArtifactKind, Expect, ImageFormat};
use raw::{RawArtifact, RawCase, RawMachine, RawManifest, RawSize};
pub use release::ReleaseSettings;

/// The file name kiln looks for.
pub const FILE_NAME: &str = "Kiln.toml";

/// Default hard timeout of a case.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The resolved configuration of a project.
#[derive(Clone, Debug)]
pub struct Config {
    /// Absolute path of Kiln.toml.
    pub file: PathBuf,
    /// The directory holding it; relative paths in it are relative to this.
    pub root: PathBuf,
    /// Where the store lives.
    pub store_dir: PathBuf,
    /// `[store] remotes`, in the order they are asked (`KILN_REMOTES` replaces them).
    pub remotes: Vec<kiln_store::remote::RemoteSpec>,
    /// `[store] trusted-keys`: whose signatures entries from remotes must carry.
    pub trusted_keys: Vec<kiln_store::remote::PublicKey>,
    /// Artifacts by name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Machine profiles by name, the built-in one per architecture included.
    pub machines: BTreeMap<String, Machine>,
    /// Test cases by name.
    pub cases: BTreeMap<String, Case>,
    /// Pinned downloads and local files by name.
    pub fetches: BTreeMap<String, Fetch>,
    /// Linux kernels by name.
    pub kernels: BTreeMap<String, Kernel>,
    /// Rootfs recipes by name.
    pub rootfses: BTreeMap<String, Rootfs>,
    /// What `kiln run` boots.
    pub run: RunSettings,
    /// What `release` publishes.
    pub release: ReleaseSettings,
    /// The text it was read from, for errors found after reading (a wrong package name).
    pub source: Source,
}

/// A cargo package built for one target per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The artifact's name in Kiln.toml.
    pub name: String,
    /// The cargo package.
    pub package: String,
    /// The package's directory; cargo runs there, so its `.cargo/config.toml` applies.
    pub dir: PathBuf,
    /// The architectures it is built for.
    pub arches: Vec<Arch>,
    /// Target triple per architecture.
    pub targets: BTreeMap<Arch, String>,
    /// Cargo profile.
    pub profile: String,
    /// Cargo features.
    pub features: Vec<String>,
    /// Whether default features are off.
    pub no_default_features: bool,
    /// The binary target, when the package has several.
    pub bin: Option<String>,
    /// A binary, or every test binary.
    pub kind: ArtifactKind,
    /// `-Z build-std=...` crates (needs a nightly toolchain and `rust-src`).
    pub build_std: Option<Vec<String>>,
    /// `-Z build-std-features=...`.
    pub build_std_features: Vec<String>,
    /// Environment variables for cargo (closure inputs).
    pub env: BTreeMap<String, String>,
    /// Flags added to the project's own rustflags (never replacing them).
    pub rustflags: Vec<String>,
    /// ELF or raw binary.
    pub image: ImageFormat,
}

/// A test case: an artifact booted on machines and judged.
#[derive(Clone, Debug)]
pub struct Case {
    /// The case's name.
    pub name: String,
    /// What it boots.
    pub guest: CaseGuest,
    /// The machines it boots on (one or more per architecture).
    pub machines: Vec<String>,
    /// Serial line pattern that passes the case (required when set).
    pub success: Option<Regex>,
    /// Serial line pattern that fails the case at once.
    pub failure: Option<Regex>,
    /// QEMU exit statuses meaning success; `None` takes the exit device's.
    pub success_exit_codes: Option<Vec<i32>>,
    /// Whether the guest is expected to pass or fail.
    pub expect: Expect,
    /// Hard timeout.
    pub timeout: Duration,
    /// No-output watchdog.
    pub no_output_timeout: Option<Duration>,
    /// Stop the guest once the success marker appears.
    pub stop_on_success: bool,
}

/// What a case boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseGuest {
    /// An artifact's binary, booted as the kernel.
    Artifact(String),
    /// A Linux kernel with a rootfs, running a command under kiln's init.
    Linux {
        /// The `[kernel.NAME]`.
        kernel: String,
        /// The `[rootfs.NAME]`.
        rootfs: String,
        /// The shell command the guest runs; its exit status is the verdict.
        command: String,
        /// Restore the booted snapshot and run the command through kiln's agent, instead of
        /// booting cold.
        snapshot: bool,
    },
}

impl Config {
    /// Finds Kiln.toml in `start` or its ancestors.
    pub fn discover(start: &Path) -> Result<PathBuf, ConfigError> {
        start.ancestors().map(|dir| dir.join(FILE_NAME)).find(|candidate| candidate.is_file()).ok_or_else(|| {
            ConfigError::whole_file(start.join(FILE_NAME), format!("no {FILE_NAME} in this directory or any parent"))
                .with_help("run kiln inside a project that has a Kiln.toml, pass `--config PATH`, or adopt kiln here with `cargo kiln init`")
        })
    }

    /// Reads and resolves `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::whole_file(&file, format!("cannot read {FILE_NAME}: {e}")))?;
        let shown = display_path(&file);
        Self::parse(Source { path: shown, text }, &file)
    }

    /// Resolves the text of a Kiln.toml whose absolute path is `file`.
    pub fn parse(source: Source, file: &Path) -> Result<Self, ConfigError> {
        let raw = deserialize(&source)?;
        let root = file.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        Resolver { source: &source, root: &root }.resolve(raw, file)
    }

    /// The 1-based line where a dotted key (`case.smoke`) is written, for annotations.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        key_span(&self.source.text, &path).map(|span| self.source.line_col(span.start).0)
    }

    /// The first case expected to pass: what `qemu` and `bench` boot when not told.
    pub fn first_passing_case(&self) -> Option<&Case> {
        self.cases.values().find(|case| case.expect == Expect::Pass)
    }

    /// An error about the value at a dotted key (`artifact.hello.package`), pointing at it.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let span = value_span(&self.source.text, &path).or_else(|| key_span(&self.source.text, &path));
        ConfigError::at(&self.source, span, Some(key.to_owned()), message)
    }
}

/// A table name or key as TOML writes it: bare when TOML allows, else quoted.
pub fn toml_key(text: &str) -> String {
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { text.to_owned() } else { toml::Value::String(text.to_owned()).to_string() }
}

/// `path` relative to the current directory when below it, for shorter messages.
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned))
        .unwrap_or_else(|| path.to_owned())
}

/// Parses the text, collecting every unknown key.
fn deserialize(source: &Source) -> Result<RawManifest, ConfigError> {
    let syntax_error = |e: toml::de::Error| {
        let key = e.span().and_then(|span| key_at(&source.text, span.start));
        ConfigError::at(source, e.span(), key, e.message().trim().to_owned())
    };
    let table = toml::de::DeTable::parse(&source.text).map_err(syntax_error)?;
    let open = todos(table.get_ref());
    if let Some((todo, rest)) = open.split_first() {
        let mut err = ConfigError::at(
            source,
            Some(todo.span.clone()),
            Some(todo.key.clone()),
            format!("Kiln.toml still has a value to fill in: {}", todo.text),
        )
        .with_help(
            "replace the TODO value (the comment above it says what goes there); `cargo kiln doctor` lists every TODO",
        );
        if !rest.is_empty() {
            let others: Vec<String> =
                rest.iter().map(|t| format!("`{}` (line {})", t.key, source.line_col(t.span.start).0)).collect();
            err = err.with_note(format!("also to fill in: {}", others.join(", ")));
        }
        return Err(err);
    }
    let mut unknown = Vec::new();
    let parsed: Result<RawManifest, _> = serde_ignored::deserialize(toml::de::Deserializer::from(table), |path| {
        unknown.push(path_segments(&path));
    });
    let raw = match parsed {
        Ok(raw) => raw,
        // A misspelled required key shows up as "missing field" after its misspelling was
        // seen as unknown: the unknown key, with its closest valid name, is the better message.
        Err(err) if !unknown.is_empty() && err.message().contains("missing field") => {
            return Err(unknown_key_error(source, &unknown[0]).with_note(err.message().trim().to_owned()));
        }
        Err(err) => return Err(syntax_error(err)),
    };
    if let Some(path) = unknown.first() {
        let mut err = unknown_key_error(source, path);
        if unknown.len() > 1 {
            let others: Vec<String> = unknown[1..]
                .iter()
                .map(|other| match key_span(&source.text, other) {
                    Some(span) => format!("`{}` (line {})", other.join("."), source.line_col(span.start).0),
                    None => format!("`{}`", other.join(".")),
                })
                .collect();
            err = err.with_note(format!("also unknown: {}", others.join(", ")));
        }
        return Err(err);
    }
    Ok(raw)
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = path_segments(parent);
            segments.push(index.to_string());
            segments
        }
        // `Spanned` values (the layers) show up as a private field name: not a Kiln.toml key.
        Path::Map { parent, key } if key.starts_with("$__serde_spanned") => path_segments(parent),
        Path::Map { parent, key } => {
            let mut segments = path_segments(parent);
            segments.push(key.clone());
            segments
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            path_segments(parent)
        }
    }
}

fn unknown_key_error(source: &Source, path: &[String]) -> ConfigError {
    let Some((key, parents)) = path.split_last() else {
        return ConfigError::whole_file(&source.path, "unknown key");
    };
    let valid: &[&str] = match parents.first().map(String::as_str) {
        None => fields::field_names::<RawManifest>(),
        Some("store") => fields::field_names::<raw::RawStore>(),
        Some("artifact") => fields::field_names::<RawArtifact>(),
        Some("machine") => fields::field_names::<RawMachine>(),
        Some("case") => fields::field_names::<RawCase>(),
        Some("fetch") => fields::field_names::<raw::RawFetch>(),
        Some("kernel") => fields::field_names::<raw::RawKernel>(),
        Some("rootfs") if parents.iter().any(|p| p == "layers") => fields::field_names::<raw::RawLayer>(),
        Some("rootfs") => fields::field_names::<raw::RawRootfs>(),
        Some("run") => fields::field_names::<raw::RawRun>(),
        Some(_) => &[],
    };
    let table = match parents {
        [] => "the top level".to_owned(),
        [rootfs, name, layers, index] if rootfs == "rootfs" && layers == "layers" => {
            let number = index.parse::<usize>().map_or_else(|_| index.clone(), |i| (i + 1).to_string());
            format!("layer {number} of `[rootfs.{name}]`")
        }
        _ => format!("`[{}]`", parents.join(".")),
    };
    // Keys inside arrays (a rootfs's layers) have no span of their own: point at the array.
    let span = (1..=path.len()).rev().find_map(|len| key_span(&source.text, &path[..len]));
    let err = ConfigError::at(source, span, Some(path.join(".")), format!("unknown key `{key}` in {table}"));
    match diagnostic::closest(key, valid.iter().copied()) {
        Some(near) => err.with_help(format!("a key with a similar name exists: `{near}`")),
        None if !valid.is_empty() => err.with_help(format!("valid keys here: {}", valid.join(", "))),
        None => err,
    }
}

/// A value still to be filled in: a string starting with `TODO` (as `cargo kiln init` writes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Todo {
    /// The dotted key.
    pub key: String,
    /// The value's text.
    pub text: String,
    /// Where the value is.
    pub span: Range<usize>,
}

fn todos(table: &toml::de::DeTable<'_>) -> Vec<Todo> {
    fn walk(value: &toml::Spanned<toml::de::DeValue<'_>>, key: String, found: &mut Vec<Todo>) {
        match value.get_ref() {
            toml::de::DeValue::String(text) if text.trim_start().starts_with("TODO") => {
                found.push(Todo { key, text: text.to_string(), span: value.span() });
            }
            toml::de::DeValue::Table(table) => {
                for (name, inner) in table.iter() {
                    walk(inner, format!("{key}.{}", name.get_ref()), found);
                }
            }
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{key}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (name, value) in table.iter() {
        walk(value, name.get_ref().to_string(), &mut found);
    }
    found.sort_by_key(|todo| todo.span.start);
    found
}

/// Every TODO value in a Kiln.toml, with its line, for `doctor` and `init`.
pub fn todos_in_file(file: &Path) -> Result<Vec<(Todo, usize)>, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::whole_file(file, format!("cannot read {FILE_NAME}: {e}")))?;
    let source = Source { path: file.to_owned(), text };
    let table = toml::de::DeTable::parse(&source.text)
        .map_err(|e| ConfigError::at(&source, e.span(), None, e.message().trim().to_owned()))?;
    Ok(todos(table.get_ref())
        .into_iter()
        .map(|todo| {
            let line = source.line_col(todo.span.start).0;
            (todo, line)
        })
        .collect())
}

/// The spans of the key at `path` and of its value, found by walking the parsed document.
fn entry_spans(text: &str, path: &[String]) -> Option<(Range<usize>, Range<usize>)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let (last, parents) = path.split_last()?;
    for segment in parents {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == segment.as_str())?;
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    table.iter().find(|(k, _)| k.get_ref().as_ref() == last.as_str()).map(|(k, v)| (k.span(), v.span()))
}

/// The span of the key at `path`.
fn key_span(text: &str, path: &[String]) -> Option<Range<usize>> {
    entry_spans(text, path).map(|(key, _)| key)
}

/// The span of the value at `path`.
fn value_span(text: &str, path: &[String]) -> Option<Range<usize>> {
    entry_spans(text, path).map(|(_, value)| value)
}

/// The dotted key whose value contains byte `offset`, for errors that only carry a span.
fn key_at(text: &str, offset: usize) -> Option<String> {
    // Table spans cover only their headers, so every table is searched and leaf values
    // are matched by span.
    fn search(table: &toml::de::DeTable<'_>, offset: usize, prefix: &mut Vec<String>) -> Option<String> {
        for (key, value) in table.iter() {
            prefix.push(key.get_ref().to_string());
            if let toml::de::DeValue::Table(inner) = value.get_ref()
                && let Some(found) = search(inner, offset, prefix)
            {
                return Some(found);
            }
            if value.span().contains(&offset) || key.span().contains(&offset) {
                return Some(prefix.join("."));
            }
            prefix.pop();
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    search(doc.get_ref(), offset, &mut Vec::new())
}

struct Resolver<'a> {
    source: &'a Source,
    root: &'a Path,
}

impl Resolver<'_> {
    fn error(&self, span: Option<Range<usize>>, key: String, message: impl Into<String>) -> ConfigError {
        let span = span.or_else(|| {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            key_span(&self.source.text, &path)
        });
        ConfigError::at(self.source, span, Some(key), message)
    }

    fn resolve(&self, raw: RawManifest, file: &Path) -> Result<Config, ConfigError> {
        if let Some(wanted) = &raw.kiln_version {
            self.check_version(wanted)?;
        }
        let store_dir = match &raw.store.path {
            Some(path) => self.root.join(path),
            None => self.root.join("target/kiln/store"),
        };
        let (remotes, trusted_keys) = self.store_remotes(&raw.store)?;
        let mut artifacts = BTreeMap::new();
        for (name, artifact) in raw.artifact {
            let resolved = self.artifact(&name, artifact)?;
            artifacts.insert(name, resolved);
        }
        let mut machines: BTreeMap<String, Machine> =
            Arch::ALL.into_iter().map(|arch| (arch.as_str().to_owned(), Machine::default_for(arch))).collect();
        for arch in Arch::ALL {
            let linux = Machine::linux_default_for(arch);
            machines.insert(linux.name.clone(), linux);
        }
        let mut fetches = BTreeMap::new();
        for (name, fetch) in raw.fetch {
            let resolved = self.fetch(&name, fetch)?;
            fetches.insert(name, resolved);
        }
        let mut kernels = BTreeMap::new();
        for (name, kernel) in raw.kernel {
            let resolved = self.kernel(&name, kernel, &fetches)?;
            kernels.insert(name, resolved);
        }
        let mut rootfses = BTreeMap::new();
        for (name, rootfs) in raw.rootfs {
            let resolved = self.rootfs(&name, rootfs, &fetches, &artifacts)?;
            rootfses.insert(name, resolved);
        }
        let run = self.run_settings(raw.run)?;
        let release = self.release_settings(raw.release, &artifacts, &kernels, &rootfses)?;
        self.check_run_names(&run, &kernels, &rootfses)?;
        for (name, machine) in raw.machine {
            let resolved = self.machine(&name, machine)?;
            machines.insert(name, resolved);
        }
        let mut cases = BTreeMap::new();
        for (name, case) in raw.case {
            let resolved = self.case(&name, case, &artifacts, &machines, &kernels, &rootfses)?;
            cases.insert(name, resolved);
        }
        Ok(Config {
            file: file.to_owned(),
            root: self.root.to_owned(),
            store_dir,
            remotes,
            trusted_keys,
            artifacts,
            machines,
            cases,
            fetches,
            kernels,
            rootfses,
            run,
            release,
            source: self.source.clone(),
        })
    }

    fn check_version(&self, wanted: &Spanned<String>) -> Result<(), ConfigError> {
        let ours = env!("CARGO_PKG_VERSION");
        let parse = |v: &str| -> Option<Vec<u64>> { v.trim().split('.').map(|p| p.parse().ok()).collect() };
        let key = "kiln-version".to_owned();
        let Some(want) = parse(wanted.get_ref()) else {
            return Err(self
                .error(Some(wanted.span()), key, format!("`{}` is not a version", wanted.get_ref()))
                .with_help("write a version such as \"0.1\""));
        };
        let have = parse(ours).unwrap_or_default();
        let compatible = match (want.first(), have.first()) {
            // 0.x: the minor version is the compatibility boundary, as in Cargo.
            (Some(0), Some(0)) => want.get(1) == have.get(1) && want[1..] <= have[1..],
            (Some(w), Some(h)) => w == h && want <= have,
            _ => false,
        };
        if compatible {
            return Ok(());
        }
        let newer = want > have;
        let err = self.error(
            Some(wanted.span()),
            key,
            format!("this project asks for kiln {} but this is kiln {ours}", wanted.get_ref()),
        );
        Err(if newer {
            err.with_help(format!(
                "update kiln to {} or newer: set `kiln = \"{}\"` in your xtask's Cargo.toml and run `cargo update -p kiln`",
                wanted.get_ref(),
                wanted.get_ref()
            ))
        } else {
            err.with_help(
                "this kiln is newer than the project expects: update `kiln-version` after checking the changelog",
            )
        })
    }

    fn artifact(&self, name: &str, raw: RawArtifact) -> Result<Artifact, ConfigError> {
        let key = |k: &str| format!("artifact.{name}.{k}");
        let dir = match &raw.path {
            Some(path) if path.get_ref() == "." || path.get_ref().is_empty() => self.root.to_owned(),
            Some(path) => self.root.join(path.get_ref()),
            None => self.root.to_owned(),
        };
        if !dir.join("Cargo.toml").is_file() {
            let span = raw.path.as_ref().map(Spanned::span);
            return Err(self
                .error(span, key("path"), format!("no Cargo.toml in `{}`", dir.display()))
                .with_help("set `path` to the directory of the cargo package, relative to Kiln.toml"));
        }
        let arches = match &raw.arches {
            Some(list) if list.get_ref().is_empty() => {
                return Err(self
                    .error(Some(list.span()), key("arches"), "`arches` is empty")
                    .with_help("list at least one of x86_64, aarch64, riscv64, or remove the key for all three"));
            }
            Some(list) => dedup(list.get_ref().clone()),
            None => Arch::ALL.to_vec(),
        };
        let mut targets = BTreeMap::new();
        for arch in &arches {
            let triple = raw.target.get(arch).cloned().unwrap_or_else(|| arch.bare_metal_triple().to_owned());
            let custom_target_file = triple.ends_with(".json");
            if !custom_target_file && !triple.starts_with(arch.as_str()) {
                return Err(self
                    .error(
                        None,
                        key(&format!("target.{arch}")),
                        format!("target `{triple}` is not a target for {arch}"),
                    )
                    .with_help(format!("use a {arch} triple such as `{}`", arch.bare_metal_triple())));
            }
            targets.insert(*arch, triple);
        }
        Ok(Artifact {
            name: name.to_owned(),
            package: raw.package.into_inner(),
            dir,
            arches,
            targets,
            profile: raw.profile.unwrap_or_else(|| "release".to_owned()),
            features: raw.features,
            no_default_features: raw.no_default_features,
            bin: raw.bin,
            kind: raw.kind,
            build_std: raw.build_std,
            build_std_features: raw.build_std_features,
            env: raw.env,
            rustflags: raw.rustflags,
            image: raw.image,
        })
    }

    fn machine(&self, name: &str, raw: RawMachine) -> Result<Machine, ConfigError> {
        let key = |k: &str| format!("machine.{name}.{k}");
        let arch = match (&raw.arch, name.parse::<Arch>()) {
            (Some(arch), Ok(named)) if *arch.get_ref() != named => {
                return Err(self.error(
                    Some(arch.span()),
                    key("arch"),
                    format!("machine `{name}` is the built-in {named} profile but sets arch = \"{}\"", arch.get_ref()),
                ));
            }
            (Some(arch), _) => *arch.get_ref(),
            (None, Ok(named)) => named,
            (None, Err(_)) => {
                return Err(self
                    .error(None, format!("machine.{name}"), format!("machine `{name}` does not say its architecture"))
                    .with_help("add `arch = \"x86_64\"` (or aarch64, riscv64) to the table"));
            }
        };
        // The built-in Linux profiles (`linux-ARCH`) are the base of their own overrides.
        let mut machine = if name == Machine::linux_default_for(arch).name {
            Machine::linux_default_for(arch)
        } else {
            Machine::default_for(arch)
        };
        machine.name = name.to_owned();
        if let Some(machine_type) = raw.machine
            && machine_type != machine.machine_type
        {
            // Another board fixes its own CPU and memory size: keep QEMU's defaults for it.
            machine.machine_type = machine_type;
            machine.cpu = None;
            machine.memory_mib = None;
            machine.smp = None;
        }
        if let Some(cpu) = raw.cpu {
            machine.cpu = Some(cpu);
        }
        if let Some(memory) = raw.memory {
            machine.memory_mib = Some(parse_size(memory.get_ref()).ok_or_else(|| {
                self.error(Some(memory.span()), key("memory"), "memory must be MiB or a size like \"256M\" or \"1G\"")
            })?);
        }
        if let Some(smp) = raw.smp {
            machine.smp = Some(smp.max(1));
        }
        if let Some(firmware) = raw.firmware {
            machine.firmware = match firmware.as_str() {
                "default" => Firmware::Bundled,
                "none" => Firmware::None,
                "machine" => Firmware::MachineDefault,
                named if named.starts_with("qemu:") => Firmware::Named(named["qemu:".len()..].to_owned()),
                path => {
                    let file = self.root.join(path);
                    if !file.is_file() {
                        return Err(self
                            .error(None, key("firmware"), format!("firmware file `{}` does not exist", file.display()))
                            .with_help(
                                "give a path relative to Kiln.toml, or \"default\" (QEMU's bundled firmware), \"none\" or \"machine\"",
                            ));
                    }
                    Firmware::File(file)
                }
            };
        }
        if let Some(args) = raw.args {
            machine.extra_args = args;
        }
        if let Some(semihosting) = raw.semihosting {
            machine.devices.retain(|device| *device != Device::Semihosting);
            if semihosting {
                machine.devices.insert(0, Device::Semihosting);
            }
        }
        if let Some(devices) = raw.devices {
            machine.devices.extend(devices.into_iter().map(Device::Other));
        }
        if let Some(boot) = raw.boot {
            machine.boot = match boot {
                raw::RawBoot::Kernel => BootMethod::Kernel,
                raw::RawBoot::Disk => BootMethod::Disk,
            };
        }
        Ok(machine)
    }

    fn case(
        &self,
        name: &str,
        raw: RawCase,
        artifacts: &BTreeMap<String, Artifact>,
        machines: &BTreeMap<String, Machine>,
        kernels: &BTreeMap<String, Kernel>,
        rootfses: &BTreeMap<String, Rootfs>,
    ) -> Result<Case, ConfigError> {
        let key = |k: &str| format!("case.{name}.{k}");
        let (guest, available, owner) = self.case_guest(name, &raw, artifacts, kernels, rootfses)?;
        let linux = matches!(guest, CaseGuest::Linux { .. });
        let machine_names = match (&raw.machines, &raw.arches) {
            (Some(list), _) => {
                let mut names = Vec::new();
                for machine in list {
                    let Some(found) = machines.get(machine.get_ref()) else {
                        let err = self.error(
                            Some(machine.span()),
                            key("machines"),
                            format!("unknown machine `{}` in case `{name}`", machine.get_ref()),
                        );
                        return Err(
                            match diagnostic::closest(machine.get_ref(), machines.keys().map(String::as_str)) {
                                Some(near) => err.with_help(format!("a machine with a similar name exists: `{near}`")),
                                None => err.with_help("declare it under `[machine.NAME]`"),
                            },
                        );
                    };
                    if !available.contains(&found.arch) {
                        return Err(self.error(
                            Some(machine.span()),
                            key("machines"),
                            format!(
                                "machine `{}` is {} but {owner} is not built for {}",
                                found.name, found.arch, found.arch
                            ),
                        ));
                    }
                    names.push(found.name.clone());
                }
                names
            }
            (None, Some(arches)) => {
                for arch in arches.get_ref() {
                    if !available.contains(arch) {
                        return Err(self
                            .error(Some(arches.span()), key("arches"), format!("{owner} is not built for {arch}"))
                            .with_help(format!("add {arch} to the `arches` of {owner}")));
                    }
                }
                dedup(arches.get_ref().clone()).iter().map(|a| default_machine(*a, linux)).collect()
            }
            (None, None) => available.iter().map(|a| default_machine(*a, linux)).collect(),
        };
        if matches!(guest, CaseGuest::Linux { snapshot: true, .. }) {
            let (field, set) = if raw.stop_on_success {
                ("stop-on-success", true)
            } else {
                ("no-output-timeout", raw.no_output_timeout.is_some())
            };
            if set {
                return Err(self
                    .error(None, key(field), format!("`{field}` does not apply to a case with `snapshot = true`"))
                    .with_help("its command runs through kiln's agent and ends with its exit status; use `timeout`"));
            }
        }
        if raw.stop_on_success && raw.success.is_none() {
            return Err(self
                .error(None, key("stop-on-success"), "`stop-on-success` needs a `success` pattern to stop on")
                .with_help("add `success = \"...\"`, the line your kernel prints when it has passed"));
        }
        Ok(Case {
            name: name.to_owned(),
            guest,
            machines: machine_names,
            success: self.regex(raw.success.as_ref(), key("success"))?,
            failure: self.regex(raw.failure.as_ref(), key("failure"))?,
            success_exit_codes: raw.success_exit_codes,
            expect: raw.expect,
            timeout: self.positive_duration(raw.timeout.as_ref(), key("timeout"))?.unwrap_or(DEFAULT_TIMEOUT),
            no_output_timeout: self.positive_duration(raw.no_output_timeout.as_ref(), key("no-output-timeout"))?,
            stop_on_success: raw.stop_on_success,
        })
    }

    /// What the case boots, the arches it can run on, and the name of what limits them.
    fn case_guest(
        &self,
        name: &str,
        raw: &RawCase,
        artifacts: &BTreeMap<String, Artifact>,
        kernels: &BTreeMap<String, Kernel>,
        rootfses: &BTreeMap<String, Rootfs>,
    ) -> Result<(CaseGuest, Vec<Arch>, String), ConfigError> {
        let key = |k: &str| format!("case.{name}.{k}");
        let lookup = |field: &str, value: &Spanned<String>, known: Vec<&str>, table: &str| {
            let err = self.error(
                Some(value.span()),
                key(field),
                format!("unknown {table} `{}` in case `{name}`", value.get_ref()),
            );
            let article = if table.starts_with('a') { "an" } else { "a" };
            match diagnostic::closest(value.get_ref(), known) {
                Some(near) => err.with_help(format!("{article} {table} with a similar name exists: `{near}`")),
                None => err.with_help(format!("declare it under `[{table}.NAME]`")),
            }
        };
        match (&raw.artifact, &raw.kernel, &raw.rootfs, &raw.command) {
            (Some(artifact), None, None, None) => {
                if let Some(snapshot) = &raw.snapshot {
                    return Err(self
                        .error(
                            Some(snapshot.span()),
                            key("snapshot"),
                            "`snapshot` applies to Linux cases (kernel, rootfs, command) only",
                        )
                        .with_help("remove it: a bare-metal kernel boots cold"));
                }
                let Some(found) = artifacts.get(artifact.get_ref()) else {
                    return Err(lookup(
                        "artifact",
                        artifact,
                        artifacts.keys().map(String::as_str).collect(),
                        "artifact",
                    ));
                };
                let owner = format!("artifact `{}`", found.name);
                Ok((CaseGuest::Artifact(found.name.clone()), found.arches.clone(), owner))
            }
            (None, Some(kernel), Some(rootfs), Some(command)) => {
                let Some(k) = kernels.get(kernel.get_ref()) else {
                    return Err(lookup("kernel", kernel, kernels.keys().map(String::as_str).collect(), "kernel"));
                };
                let Some(r) = rootfses.get(rootfs.get_ref()) else {
                    return Err(lookup("rootfs", rootfs, rootfses.keys().map(String::as_str).collect(), "rootfs"));
                };
                if !r.init {
                    return Err(self
                        .error(
                            Some(rootfs.span()),
                            key("rootfs"),
                            format!("rootfs `{}` has no kiln init to run a case's command", r.name),
                        )
                        .with_help("remove `init = false` from the rootfs"));
                }
                let available: Vec<Arch> = k.arches.iter().copied().filter(|a| r.arches.contains(a)).collect();
                if available.is_empty() {
                    return Err(self.error(
                        Some(rootfs.span()),
                        key("rootfs"),
                        format!("kernel `{}` and rootfs `{}` share no architecture", k.name, r.name),
                    ));
                }
                let snapshot = raw.snapshot.as_ref().is_some_and(|s| *s.get_ref());
                if snapshot && !matches!(r.format, crate::config::RootfsFormat::Initramfs(_)) {
                    let span = raw.snapshot.as_ref().map(Spanned::span);
                    return Err(self
                        .error(
                            span,
                            key("snapshot"),
                            format!("rootfs `{}` is a disk image; snapshots are made of initramfs rootfs only", r.name),
                        )
                        .with_help("drop `snapshot = true`, or give the rootfs `format = \"initramfs\"`"));
                }
                let guest = CaseGuest::Linux {
                    kernel: k.name.clone(),
                    rootfs: r.name.clone(),
                    command: command.get_ref().clone(),
                    snapshot,
                };
                Ok((guest, available, format!("kernel `{}` with rootfs `{}`", k.name, r.name)))
            }
            (Some(artifact), ..) => Err(self
                .error(
                    Some(artifact.span()),
                    key("artifact"),
                    format!("case `{name}` names an artifact and a Linux guest"),
                )
                .with_help("a case boots either `artifact` or `kernel` + `rootfs` + `command`")),
            (None, None, None, None) => Err(self
                .error(None, format!("case.{name}"), format!("case `{name}` says nothing to boot"))
                .with_help("add `artifact = \"NAME\"`, or `kernel`, `rootfs` and `command` for a Linux guest")),
            (None, ..) => {
                let missing: Vec<&str> = [
                    ("kernel", raw.kernel.is_none()),
                    ("rootfs", raw.rootfs.is_none()),
                    ("command", raw.command.is_none()),
                ]
                .into_iter()
                .filter_map(|(k, missing)| missing.then_some(k))
                .collect();
                Err(self
                    .error(None, format!("case.{name}"), format!("Linux case `{name}` lacks {}", missing.join(" and ")))
                    .with_help("a Linux case needs `kernel`, `rootfs` and `command`"))
            }
        }
    }

    fn check_run_names(
        &self,
        run: &RunSettings,
        kernels: &BTreeMap<String, Kernel>,
        rootfses: &BTreeMap<String, Rootfs>,
    ) -> Result<(), ConfigError> {
        if let Some(kernel) = &run.kernel
            && !kernels.contains_key(kernel)
        {
            return Err(self.error(None, "run.kernel".to_owned(), format!("unknown kernel `{kernel}`")));
        }
        if let Some(rootfs) = &run.rootfs
            && !rootfses.contains_key(rootfs)
        {
            return Err(self.error(None, "run.rootfs".to_owned(), format!("unknown rootfs `{rootfs}`")));
        }
        Ok(())
    }

    fn regex(&self, pattern: Option<&Spanned<String>>, key: String) -> Result<Option<Regex>, ConfigError> {
        pattern
            .map(|p| {
                Regex::new(p.get_ref()).map_err(|e| {
                    let reason = e.to_string().lines().last().unwrap_or_default().trim_start_matches("error: ").to_owned();
                    self.error(Some(p.span()), key, format!("invalid regular expression `{}`: {reason}", p.get_ref())).with_help(
                        "patterns use the `regex` crate's syntax; escape literal characters such as `(` with `\\\\`",
                    )
                })
            })
            .transpose()
    }

    fn positive_duration(&self, text: Option<&Spanned<String>>, key: String) -> Result<Option<Duration>, ConfigError> {
        let Some(text) = text else { return Ok(None) };
        let help = "write a duration such as \"30s\", \"2m\" or \"1m 30s\"";
        match humantime::parse_duration(text.get_ref()) {
            Ok(duration) if duration.is_zero() => {
                Err(self.error(Some(text.span()), key, "a timeout of zero would fail every boot").with_help(help))
            }
            Ok(duration) => Ok(Some(duration)),
            Err(e) => Err(self
                .error(Some(text.span()), key, format!("invalid duration `{}`: {e}", text.get_ref()))
                .with_help(help)),
        }
    }
}

/// The built-in machine a case boots on when it names none.
fn default_machine(arch: Arch, linux: bool) -> String {
    if linux { Machine::linux_default_for(arch).name } else { arch.as_str().to_owned() }
}

fn dedup(mut arches: Vec<Arch>) -> Vec<Arch> {
    arches.sort();
    arches.dedup();
    arches
}

fn parse_size(size: &RawSize) -> Option<u32> {
    match size {
        RawSize::Mib(mib) => Some(*mib),
        RawSize::Text(text) => {
            let text = text.trim();
            let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
            let number: u32 = number.parse().ok()?;
            match unit.trim().trim_end_matches(['b', 'B']).to_ascii_uppercase().as_str() {
                "" | "M" | "MI" => Some(number),
                "G" | "GI" => number.checked_mul(1024),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
