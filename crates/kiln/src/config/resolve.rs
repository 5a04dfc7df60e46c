//! From the raw file to the resolved [`Config`]: the tables in dependency order, and the checks
//! every table shares (durations, patterns, sizes, architectures).

use std::{collections::BTreeMap, ops::Range, path::Path, time::Duration};

use kiln_qemu::Machine;
use kiln_types::Arch;
use regex::Regex;
use toml::Spanned;

use super::{
    Config, ConfigError, Source,
    raw::{RawManifest, RawSize},
    spans::key_span,
};

/// Resolves one Kiln.toml; each table's module adds its methods.
pub(super) struct Resolver<'a> {
    /// The text, for errors.
    pub(super) source: &'a Source,
    /// The directory of Kiln.toml.
    pub(super) root: &'a Path,
}

impl Resolver<'_> {
    pub(super) fn error(&self, span: Option<Range<usize>>, key: String, message: impl Into<String>) -> ConfigError {
        let span = span.or_else(|| {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            key_span(&self.source.text, &path)
        });
        ConfigError::at(self.source, span, Some(key), message)
    }

    pub(super) fn resolve(&self, raw: RawManifest, file: &Path) -> Result<Config, ConfigError> {
        if let Some(wanted) = &raw.kiln_version {
            self.check_version(wanted)?;
        }
        let store_dir = match &raw.store.path {
            Some(path) => self.root.join(path),
            None => self.root.join("target/kiln/store"),
        };
        let (remotes, trusted_keys) = self.store_remotes(&raw.store)?;
        let steps = self.steps(raw.step)?;
        self.check_step_artifacts(&steps, &raw.artifact.keys().cloned().collect())?;
        let mut artifacts = BTreeMap::new();
        for (name, artifact) in raw.artifact {
            let resolved = self.artifact(&name, artifact, &steps)?;
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
        let mut size_keys = BTreeMap::new();
        for (name, machine) in raw.machine {
            let (resolved, keys) = self.machine(&name, machine)?;
            size_keys.insert(name.clone(), keys);
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
            size_keys,
            cases,
            fetches,
            kernels,
            rootfses,
            steps,
            run,
            release,
            source: self.source.clone(),
        })
    }

    pub(super) fn regex(&self, pattern: Option<&Spanned<String>>, key: String) -> Result<Option<Regex>, ConfigError> {
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

    pub(super) fn positive_duration(
        &self,
        text: Option<&Spanned<String>>,
        key: String,
    ) -> Result<Option<Duration>, ConfigError> {
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

pub(super) fn dedup(mut arches: Vec<Arch>) -> Vec<Arch> {
    arches.sort();
    arches.dedup();
    arches
}

pub(super) fn parse_size(size: &RawSize) -> Option<u32> {
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
