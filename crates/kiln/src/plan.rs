//! From configuration to plan: which artifacts to build for which arch, and which cases to
//! boot on which machines.

use std::collections::BTreeSet;

use kiln_qemu::{Judge, Machine};
use kiln_types::Arch;

use crate::config::{Artifact, Case, Config, ConfigError, Expect};

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
    /// The build whose output it boots.
    pub build: BuildKey,
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
        Self { builds: build_steps(config, keys), runs: Vec::new() }
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
        let keys = runs.iter().map(|run| run.build.clone()).collect();
        Ok(Self { builds: build_steps(config, keys), runs })
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

fn case_run(case: &Case, machine: &Machine) -> CaseRun {
    let success_statuses = case
        .success_exit_codes
        .clone()
        .unwrap_or_else(|| machine.exit_device().map_or_else(|| vec![0], |device| device.success_statuses().to_vec()));
    CaseRun {
        case: case.name.clone(),
        machine: machine.clone(),
        build: BuildKey { artifact: case.artifact.clone(), arch: machine.arch },
        judge: Judge { failure: case.failure.clone(), success: case.success.clone(), success_statuses },
        expect: case.expect,
        timeout: case.timeout,
        no_output_timeout: case.no_output_timeout,
        stop_on_success: case.stop_on_success,
    }
}
