//! Kiln.toml: reading, validating and resolving the project's declaration.
//!
//! Reading goes raw → resolved: [`raw`] mirrors the file (with spans), [`Config`] holds
//! checked, typed values with defaults applied. One module per table resolves it
//! (`artifact`, `machine`, `case`, `fetch`, `kernel`, `rootfs`, `run`, `store`, `release`,
//! `step`);
//! `load` parses and collects unknown keys and TODOs, `spans` finds keys in the text.
//! Unknown keys are errors with the closest valid key, and every error names file, line,
//! column and key.

mod artifact;
mod builtin;
mod case;
mod case_tests;
mod diagnostic;
mod fetch;
mod fields;
mod kernel;
mod load;
mod machine;
mod raw;
mod release;
mod resolve;
mod rootfs;
mod run;
mod spans;
mod step;
mod step_inputs;
mod step_refs;
mod store;
mod todo;
mod version;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use kiln_qemu::Machine;

pub(crate) use builtin::{BUILTIN_ARCHES, runner_dir, write_runner_config};

pub(crate) use artifact::Artifact;
pub(crate) use case::{Case, CaseGuest};
pub(crate) use case_tests::TestSettings;
pub(crate) use diagnostic::{ConfigError, Source, closest as closest_name};
pub(crate) use fetch::{Fetch, FetchSource, HashAlgorithm, NameTemplate};
pub(crate) use kernel::{Kernel, KernelSource};
pub(crate) use machine::SizeKeys;
pub(crate) use raw::{ArtifactKind, Expect, ImageFormat};
pub(crate) use release::ReleaseSettings;
pub(crate) use rootfs::{Compression, LayerSource, Rootfs, RootfsFormat};
pub(crate) use run::RunSettings;
pub(crate) use step::{CommandStep, StepCommand};
pub(crate) use step_inputs::expand as expand_step_input;
pub(crate) use store::Remote;
pub(crate) use todo::todos_in_file;

/// The file name kiln looks for.
pub(crate) const FILE_NAME: &str = "Kiln.toml";

/// The resolved configuration of a project.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Absolute path of Kiln.toml.
    pub file: PathBuf,
    /// The directory holding it; relative paths in it are relative to this.
    pub root: PathBuf,
    /// Where the store lives.
    pub store_dir: PathBuf,
    /// `[store] remotes`, in the order they are asked (`KILN_REMOTES` replaces them).
    pub remotes: Vec<Remote>,
    /// `[store] trusted-keys` (`NAME:BASE64`): whose signatures entries from remotes must carry.
    pub trusted_keys: Vec<String>,
    /// Artifacts by name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Machine profiles by name, the built-in one per architecture included.
    pub machines: BTreeMap<String, Machine>,
    /// Which guest-size keys each `[machine.NAME]` table set itself (the built-in Linux
    /// profiles' other sizes are chosen from the host for `run`).
    pub size_keys: BTreeMap<String, SizeKeys>,
    /// Test cases by name.
    pub cases: BTreeMap<String, Case>,
    /// Pinned downloads and local files by name.
    pub fetches: BTreeMap<String, Fetch>,
    /// Linux kernels by name.
    pub kernels: BTreeMap<String, Kernel>,
    /// Rootfs recipes by name.
    pub rootfses: BTreeMap<String, Rootfs>,
    /// Declared command steps by name.
    pub steps: BTreeMap<String, CommandStep>,
    /// What `kiln run` boots.
    pub run: RunSettings,
    /// What `release` publishes.
    #[cfg_attr(not(feature = "github"), allow(dead_code))]
    pub release: ReleaseSettings,
    /// The text it was read from, for errors found after reading (a wrong package name).
    pub source: Source,
}

/// Which Kiln.toml a command reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConfigChoice {
    /// A file: named by `--config` or `KILN_CONFIG`, or found from the working directory.
    File(PathBuf),
    /// None anywhere, and the command may run on kiln's built-in runner guests.
    BuiltinRunner,
}

impl ConfigChoice {
    /// `--config` (`given`), else `KILN_CONFIG` (`from_env`, relative to `start`), else the
    /// nearest Kiln.toml from `start` up, else the built-in runner guests when
    /// `builtin_allowed` (`run`, `vm`). A file named but missing is an error naming who named it.
    pub(crate) fn choose(
        given: Option<&Path>,
        from_env: Option<&std::ffi::OsStr>,
        start: &Path,
        builtin_allowed: bool,
    ) -> Result<Self, ConfigError> {
        if let Some(given) = given {
            return Ok(Self::File(given.to_owned()));
        }
        if let Some(named) = from_env.filter(|value| !value.is_empty()) {
            let file = start.join(named);
            if !file.is_file() {
                return Err(ConfigError::whole_file(
                    &file,
                    format!("KILN_CONFIG names `{}`, which is not a file", file.display()),
                )
                .with_help("point KILN_CONFIG at a project's Kiln.toml, or unset it"));
            }
            return Ok(Self::File(file));
        }
        match Config::discover(start) {
            Ok(file) => Ok(Self::File(file)),
            Err(_) if builtin_allowed => Ok(Self::BuiltinRunner),
            Err(err) => Err(err),
        }
    }
}

/// The scratch directory of the project rooted at `root`: caches, logs, keepers' sockets.
pub(crate) fn work_dir(root: &Path) -> PathBuf {
    root.join("target/kiln")
}

impl Config {
    /// Finds Kiln.toml in `start` or its ancestors.
    pub(crate) fn discover(start: &Path) -> Result<PathBuf, ConfigError> {
        start.ancestors().map(|dir| dir.join(FILE_NAME)).find(|candidate| candidate.is_file()).ok_or_else(|| {
            ConfigError::whole_file(start.join(FILE_NAME), format!("no {FILE_NAME} in this directory or any parent"))
                .with_help("run kiln inside a project that has a Kiln.toml, pass `--config PATH` (or set KILN_CONFIG), or adopt kiln here with `cargo kiln init`")
        })
    }

    /// Reads and resolves `file`.
    pub(crate) fn load(file: &Path) -> Result<Self, ConfigError> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let source = Source::read(&file, display_path(&file))?;
        Self::parse(source, &file)
    }

    /// Resolves the text of a Kiln.toml whose absolute path is `file`.
    pub(crate) fn parse(source: Source, file: &Path) -> Result<Self, ConfigError> {
        let raw = load::deserialize(&source)?;
        let root = file.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        resolve::Resolver { source: &source, root: &root }.resolve(raw, file)
    }

    /// The 1-based line where a dotted key (`case.smoke`) is written, for annotations.
    pub(crate) fn line_of(&self, key: &str) -> Option<usize> {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        spans::key_span(&self.source.text, &path).map(|span| self.source.line_col(span.start).0)
    }

    /// The first case expected to pass: what `qemu` and `bench` boot when not told.
    pub(crate) fn first_passing_case(&self) -> Option<&Case> {
        self.cases.values().find(|case| case.expect == Expect::Pass)
    }

    /// An error about the value at a dotted key (`artifact.hello.package`), pointing at it.
    pub(crate) fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let span = spans::value_span(&self.source.text, &path).or_else(|| spans::key_span(&self.source.text, &path));
        ConfigError::at(&self.source, span, Some(key.to_owned()), message)
    }
}

/// A table name or key as TOML writes it: bare when TOML allows, else quoted.
pub(crate) fn toml_key(text: &str) -> String {
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { text.to_owned() } else { toml::Value::String(text.to_owned()).to_string() }
}

/// `path` relative to the current directory when below it, for shorter messages.
pub(super) fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned))
        .unwrap_or_else(|| path.to_owned())
}

#[cfg(test)]
mod tests;
