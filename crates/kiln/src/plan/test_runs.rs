//! The test binaries of `kind = "tests"` cases: which of them run (`CASE[TEST]`, `--test`) and
//! with which per-test settings. Binaries are known only once cargo has built them, so the plan
//! keeps the names as written, and [`TestPlan::resolve`] matches them to the built binaries.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    BootRules, Selection,
    binaries::{self, TestBinary},
};
use crate::config::{ArtifactKind, Case, CaseGuest, Config, ConfigError};

/// The per-test settings and the selection of one `kind = "tests"` case on one machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct TestPlan {
    /// `[case.NAME.test.TEST]` tables, each with its complete rules.
    pub tables: Vec<TestTable>,
    /// Only the binaries these name (`None`: every binary).
    pub only: Option<Vec<TestPick>>,
}

/// One `[case.NAME.test.TEST]` table.
#[derive(Clone, Debug)]
pub(crate) struct TestTable {
    /// `TEST` as written.
    pub name: String,
    /// Its key in Kiln.toml (`case.NAME.test.TEST`, unquoted), to find it for errors.
    pub key: String,
    /// Its table header as TOML writes it (`[case.k.test."k::bin/k"]`), for messages.
    pub header: String,
    /// The case's rules with the table's settings applied.
    pub rules: BootRules,
}

/// A test binary picked on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TestPick {
    /// The name as given (an id or a short form).
    pub name: String,
    /// How it was asked for (`tests[basic_boot]`, `--test basic_boot`), for errors.
    pub asked_as: String,
    /// From `--test`: it applies to every case, and may be absent from some.
    pub everywhere: bool,
}

/// A test name in Kiln.toml or on the command line that names no single built binary.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TestNameError {
    /// The Kiln.toml key of the per-test table, when the name is written there.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do, with the binaries that exist.
    pub help: String,
}

impl TestNameError {
    /// A `--test` name that no selected case has.
    pub(crate) fn unmatched(name: &str, binaries: &[TestBinary]) -> Self {
        let miss = binaries::find(binaries, name).err().unwrap_or(binaries::NameMiss::Unknown { near: None });
        Self {
            key: None,
            message: format!("`--test {name}`: no test binary of the selected cases is named `{name}`"),
            help: miss.help(binaries),
        }
    }
}

/// One test binary to boot, with its table's rules (the case's when it has none).
#[derive(Clone, Debug)]
pub(crate) struct TestBoot<'a> {
    /// Its index among the binaries resolved against.
    pub binary: usize,
    /// Its per-test rules.
    pub rules: Option<&'a BootRules>,
}

impl TestPlan {
    /// The binaries of case `case` to boot, in the order given, each with its table's rules.
    /// Every table and every pick must name exactly one binary; a `--test` pick may name
    /// none (another case may have it), and the ones that matched are added to
    /// `matched_everywhere`.
    pub(crate) fn resolve<'a>(
        &'a self,
        case: &str,
        binaries: &[TestBinary],
        matched_everywhere: &mut BTreeSet<String>,
    ) -> Result<Vec<TestBoot<'a>>, TestNameError> {
        let mut rules: BTreeMap<usize, &TestTable> = BTreeMap::new();
        for table in &self.tables {
            let index = binaries::find(binaries, &table.name).map_err(|miss| TestNameError {
                key: Some(table.key.clone()),
                message: format!("case `{case}`: {} (`{}`)", miss.message(&table.name), table.header),
                help: miss.help(binaries),
            })?;
            if let Some(earlier) = rules.insert(index, table) {
                return Err(TestNameError {
                    key: Some(table.key.clone()),
                    message: format!(
                        "`{}` and `{}` both set test binary `{}`",
                        earlier.header, table.header, binaries[index].id
                    ),
                    help: "keep one table per test binary".to_owned(),
                });
            }
        }
        let selected: BTreeSet<usize> = match &self.only {
            None => (0..binaries.len()).collect(),
            Some(picks) => {
                let mut selected = BTreeSet::new();
                for pick in picks {
                    match binaries::find(binaries, &pick.name) {
                        Ok(index) => {
                            selected.insert(index);
                            if pick.everywhere {
                                matched_everywhere.insert(pick.name.clone());
                            }
                        }
                        Err(binaries::NameMiss::Unknown { .. }) if pick.everywhere => {}
                        Err(miss) => {
                            return Err(TestNameError {
                                key: None,
                                message: format!("`{}`: case `{case}`: {}", pick.asked_as, miss.message(&pick.name)),
                                help: miss.help(binaries),
                            });
                        }
                    }
                }
                selected
            }
        };
        Ok(selected
            .into_iter()
            .map(|binary| TestBoot { binary, rules: rules.get(&binary).map(|t| &t.rules) })
            .collect())
    }
}

/// The cases the command line names, and the test binaries it picks in them.
pub(super) struct CaseSelection<'a> {
    selection: &'a Selection,
    /// Named cases: whether plainly (every test binary), and the `CASE[TEST]` picks.
    named: BTreeMap<String, (bool, Vec<String>)>,
}

/// Whether a case runs, and which of its test binaries.
pub(super) enum CaseWanted {
    /// Not selected.
    Skip,
    /// Selected; `only`: just these test binaries (`None`: all).
    Run {
        /// The picks that apply to the case.
        only: Option<Vec<TestPick>>,
    },
}

impl<'a> CaseSelection<'a> {
    /// Reads `CASE` and `CASE[TEST]` names; an unknown case is an error.
    pub(super) fn parse(config: &Config, selection: &'a Selection) -> Result<Self, ConfigError> {
        let mut named: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
        for name in &selection.names {
            let (case, pick) = match name.split_once('[') {
                Some((case, rest)) => match rest.strip_suffix(']') {
                    Some(test) if !test.is_empty() && !test.contains(['[', ']']) => (case, Some(test)),
                    _ => {
                        return Err(ConfigError::whole_file(
                            &config.file,
                            format!("cannot read `{name}` as CASE[TEST]"),
                        )
                        .with_help("write a case's name, or `CASE[TEST]` for one test binary of it"));
                    }
                },
                None => (name.as_str(), None),
            };
            if !config.cases.contains_key(case) {
                let err = ConfigError::whole_file(&config.file, format!("no case named `{case}`"));
                let known = config.cases.keys().map(String::as_str);
                return Err(match crate::config::closest_name(case, known) {
                    Some(near) => err.with_help(format!("a case with a similar name exists: `{near}`")),
                    None => err.with_help(format!(
                        "cases in this project: {}",
                        config.cases.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                });
            }
            let entry = named.entry(case.to_owned()).or_default();
            match pick {
                Some(test) => entry.1.push(test.to_owned()),
                None => entry.0 = true,
            }
        }
        Ok(Self { selection, named })
    }

    /// Whether `case` runs, and which of its test binaries.
    pub(super) fn wanted(&self, config: &Config, case: &Case) -> Result<CaseWanted, ConfigError> {
        let named = self.named.get(&case.name);
        if !self.named.is_empty() && named.is_none() {
            return Ok(CaseWanted::Skip);
        }
        let boots_tests = match &case.guest {
            CaseGuest::Artifact(artifact) => {
                config.artifacts.get(artifact).is_some_and(|a| a.kind == ArtifactKind::Tests)
            }
            CaseGuest::Linux { .. } => false,
        };
        let (plain, picks) = named.cloned().unwrap_or((true, Vec::new()));
        if !boots_tests {
            if let Some(test) = picks.first() {
                return Err(ConfigError::whole_file(
                    &config.file,
                    format!("`{}[{test}]`: case `{}` boots no test binaries", case.name, case.name),
                )
                .with_help("`CASE[TEST]` picks a test binary of a case whose artifact has `kind = \"tests\"`"));
            }
            if let Some(test) = self.selection.tests.first() {
                if named.is_some() {
                    return Err(ConfigError::whole_file(
                        &config.file,
                        format!("`--test {test}` picks test binaries, and case `{}` boots none", case.name),
                    )
                    .with_help("leave the case out, or drop `--test`"));
                }
                return Ok(CaseWanted::Skip);
            }
            return Ok(CaseWanted::Run { only: None });
        }
        let mut only: Option<Vec<TestPick>> = (!plain).then(|| {
            picks
                .iter()
                .map(|test| TestPick {
                    name: test.clone(),
                    asked_as: format!("{}[{test}]", case.name),
                    everywhere: false,
                })
                .collect()
        });
        if !self.selection.tests.is_empty() {
            let everywhere = self.selection.tests.iter().map(|test| TestPick {
                name: test.clone(),
                asked_as: format!("--test {test}"),
                everywhere: true,
            });
            only = Some(only.unwrap_or_default().into_iter().chain(everywhere).collect());
        }
        Ok(CaseWanted::Run { only })
    }
}
