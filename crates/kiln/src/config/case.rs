//! `[case.NAME]`: what a test case boots, on which machines, and how it is judged.

use std::{collections::BTreeMap, time::Duration};

use kiln_qemu::Machine;
use kiln_types::Arch;
use regex::Regex;
use toml::Spanned;

use super::{
    Artifact, ArtifactKind, ConfigError, Kernel, Rootfs, RunSettings,
    case_tests::{CaseInput, TestSettings},
    diagnostic,
    raw::{Expect, RawCase},
    resolve::{Resolver, dedup},
};

/// Default hard timeout of a case.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A test case: an artifact booted on machines and judged.
#[derive(Clone, Debug)]
pub(crate) struct Case {
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
    /// What is typed on the guest's serial console.
    pub input: CaseInput,
    /// `[case.NAME.test.TEST]`: per-test settings (cases of a `kind = "tests"` artifact).
    pub tests: Vec<TestSettings>,
}

/// What a case boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CaseGuest {
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

impl Resolver<'_> {
    pub(super) fn case(
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
        let boots_tests = match &guest {
            CaseGuest::Artifact(artifact) => artifacts.get(artifact).is_some_and(|a| a.kind == ArtifactKind::Tests),
            CaseGuest::Linux { .. } => false,
        };
        let input = self.case_input(name, &raw, !linux)?;
        let tests = self.case_tests(name, &raw, boots_tests, &input)?;
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
            input,
            tests,
        })
    }

    /// What the case boots, the arches it can run on, and the name of what limits them.
    pub(super) fn case_guest(
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

    pub(super) fn check_run_names(
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
}

/// The built-in machine a case boots on when it names none.
fn default_machine(arch: Arch, linux: bool) -> String {
    if linux { Machine::linux_default_for(arch).name } else { arch.as_str().to_owned() }
}
