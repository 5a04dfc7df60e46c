//! Test binaries' names: cargo-nextest's binary ids (`pkg`, `pkg::bin/name`, `pkg::name`),
//! and finding the binary a name written by a user means (the full id, or a short form).
//!
//! The id of a binary of `cargo test --no-run` is stable and unique in its package:
//! - a library's (or proc-macro's) unit tests: the package name (`tinyos`);
//! - an integration test (`tests/*.rs`, `[[test]]`): `pkg::target` (`tinyos::basic_boot`);
//! - anything else: `pkg::kind/target` (`tinyos::bin/tinyos`, `tinyos::example/demo`).
//!
//! A user may also write a short form: `kind/target` (`bin/tinyos`, `test/basic_boot`,
//! `lib/tinyos`) or the target name alone (`basic_boot`), when exactly one binary has it. A
//! name that is some binary's full id always means that binary.

use serde::{Deserialize, Serialize};

/// cargo-nextest's kind of the library's (and a proc-macro's) unit tests.
pub(crate) const LIB: &str = "lib";
/// The kind of a proc-macro crate's unit tests.
const PROC_MACRO: &str = "proc-macro";
/// The kind of an integration test.
const TEST: &str = "test";

/// One test binary of `cargo test --no-run`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct TestBinary {
    /// The binary id (`pkg`, `pkg::bin/name`, `pkg::name`, ...).
    pub id: String,
    /// The cargo package.
    pub package: String,
    /// `lib`, `proc-macro`, `bin`, `test`, `bench` or `example`.
    pub kind: String,
    /// The cargo target's name (`tinyos`, `basic_boot`).
    pub target: String,
}

impl TestBinary {
    /// The binary of `target` (whose cargo kinds are `target_kinds`, such as `["lib"]`,
    /// `["rlib", "staticlib"]` or `["test"]`) in `package`, named as cargo-nextest names it.
    pub(crate) fn new(package: &str, target_kinds: &[String], target: &str) -> Self {
        let is_lib =
            target_kinds.iter().any(|kind| matches!(kind.as_str(), "lib" | "rlib" | "dylib" | "cdylib" | "staticlib"));
        let kind =
            if is_lib { LIB.to_owned() } else { target_kinds.first().cloned().unwrap_or_else(|| TEST.to_owned()) };
        let id = match kind.as_str() {
            LIB | PROC_MACRO => package.to_owned(),
            TEST => format!("{package}::{target}"),
            other => format!("{package}::{other}/{target}"),
        };
        Self { id, package: package.to_owned(), kind, target: target.to_owned() }
    }

    /// The id as a file name (store entries, serial logs): `::` and `/` become `.`, since
    /// artifact uploads refuse `:` and a `/` would make a directory.
    pub(crate) fn file_name(&self) -> String {
        self.id.replace("::", ".").replace('/', ".")
    }

    /// Whether `name` is one of this binary's short forms: `kind/target`, or `target`.
    fn has_short_form(&self, name: &str) -> bool {
        name == self.target
            || name.strip_prefix(self.kind.as_str()).and_then(|rest| rest.strip_prefix('/')) == Some(&self.target)
    }
}

/// Why a name found no single binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NameMiss {
    /// No binary has this name; the closest id, when one is near.
    Unknown {
        /// The nearest binary id.
        near: Option<String>,
    },
    /// Several binaries have this short form: their ids.
    Ambiguous(Vec<String>),
}

impl NameMiss {
    /// What to do about it, with what exists in `binaries`.
    pub(crate) fn help(&self, binaries: &[TestBinary]) -> String {
        match self {
            Self::Unknown { near: Some(near) } => {
                format!("a test binary with a similar name exists: `{near}`; all of them: {}", list(binaries))
            }
            Self::Unknown { near: None } => format!("the test binaries are: {}", list(binaries)),
            Self::Ambiguous(ids) => format!("name one of them in full: {}", quoted(ids.iter().map(String::as_str))),
        }
    }

    /// The problem, for a name as it was written.
    pub(crate) fn message(&self, name: &str) -> String {
        match self {
            Self::Unknown { .. } => format!("no test binary is named `{name}`"),
            Self::Ambiguous(ids) => format!("`{name}` names {} test binaries", ids.len()),
        }
    }
}

/// The binaries' ids, quoted, for messages.
pub(crate) fn list(binaries: &[TestBinary]) -> String {
    quoted(binaries.iter().map(|b| b.id.as_str()))
}

fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

/// The index of the binary `name` means: the one whose id it is, else the only one with that
/// short form.
pub(crate) fn find(binaries: &[TestBinary], name: &str) -> Result<usize, NameMiss> {
    if let Some(index) = binaries.iter().position(|b| b.id == name) {
        return Ok(index);
    }
    let matches: Vec<usize> = (0..binaries.len()).filter(|&i| binaries[i].has_short_form(name)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => {
            let candidates = binaries.iter().flat_map(|b| [b.id.as_str(), b.target.as_str()]);
            let near = crate::config::closest_name(name, candidates)
                .and_then(|near| binaries.iter().find(|b| b.id == near || b.target == near))
                .map(|b| b.id.clone());
            Err(NameMiss::Unknown { near })
        }
        many => Err(NameMiss::Ambiguous(many.iter().map(|&i| binaries[i].id.clone()).collect())),
    }
}

/// Checks that no two binaries share an id or a file name; the error names both.
pub(crate) fn check_unique(binaries: &[TestBinary]) -> Result<(), String> {
    for (i, a) in binaries.iter().enumerate() {
        for b in &binaries[i + 1..] {
            if a.id == b.id {
                return Err(format!(
                    "two test binaries are both named `{}` ({} target `{}` and {} target `{}`)",
                    a.id, a.kind, a.target, b.kind, b.target
                ));
            }
            if a.file_name() == b.file_name() {
                return Err(format!(
                    "test binaries `{}` and `{}` would share the file name `{}`",
                    a.id,
                    b.id,
                    a.file_name()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(kinds: &[&str], target: &str) -> TestBinary {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        TestBinary::new("tinyos", &kinds, target)
    }

    /// The binaries of a package whose library and binary share its name.
    fn tinyos() -> Vec<TestBinary> {
        vec![
            binary(&["lib"], "tinyos"),
            binary(&["bin"], "tinyos"),
            binary(&["test"], "basic_boot"),
            binary(&["test"], "should_panic"),
            binary(&["example"], "demo"),
            binary(&["bench"], "basic_boot"),
        ]
    }

    #[test]
    fn ids_follow_cargo_nextest() {
        let ids: Vec<String> = tinyos().into_iter().map(|b| b.id).collect();
        assert_eq!(
            ids,
            [
                "tinyos",
                "tinyos::bin/tinyos",
                "tinyos::basic_boot",
                "tinyos::should_panic",
                "tinyos::example/demo",
                "tinyos::bench/basic_boot"
            ]
        );
        let staticlib = TestBinary::new("k-lib", &["rlib".to_owned(), "staticlib".to_owned()], "k_lib");
        assert_eq!((staticlib.id.as_str(), staticlib.kind.as_str()), ("k-lib", "lib"));
        let derive = TestBinary::new("k-derive", &["proc-macro".to_owned()], "k_derive");
        assert_eq!(derive.id, "k-derive");
    }

    #[test]
    fn lib_and_bin_of_one_name_get_distinct_ids_and_file_names() {
        let binaries = tinyos();
        assert_eq!(check_unique(&binaries), Ok(()));
        assert_eq!(binaries[0].file_name(), "tinyos");
        assert_eq!(binaries[1].file_name(), "tinyos.bin.tinyos");
        assert_eq!(binaries[2].file_name(), "tinyos.basic_boot");
    }

    #[test]
    fn a_remaining_collision_names_both() {
        let twice = vec![binary(&["test"], "boot"), binary(&["test"], "boot")];
        let err = check_unique(&twice).expect_err("same id");
        assert_eq!(err, "two test binaries are both named `tinyos::boot` (test target `boot` and test target `boot`)");
        // An integration test named like a binary's file name.
        let files = vec![binary(&["bin"], "x"), TestBinary::new("tinyos", &["test".to_owned()], "bin.x")];
        let err = check_unique(&files).expect_err("same file");
        assert_eq!(err, "test binaries `tinyos::bin/x` and `tinyos::bin.x` would share the file name `tinyos.bin.x`");
    }

    #[test]
    fn full_ids_and_unambiguous_short_forms_find_a_binary() {
        let binaries = tinyos();
        let id = |name: &str| find(&binaries, name).map(|i| binaries[i].id.as_str());
        assert_eq!(id("tinyos"), Ok("tinyos"), "a full id wins over the bin's target name");
        assert_eq!(id("tinyos::bin/tinyos"), Ok("tinyos::bin/tinyos"));
        assert_eq!(id("bin/tinyos"), Ok("tinyos::bin/tinyos"));
        assert_eq!(id("lib/tinyos"), Ok("tinyos"));
        assert_eq!(id("should_panic"), Ok("tinyos::should_panic"));
        assert_eq!(id("test/basic_boot"), Ok("tinyos::basic_boot"));
        assert_eq!(id("example/demo"), Ok("tinyos::example/demo"));
        assert_eq!(id("demo"), Ok("tinyos::example/demo"));
    }

    #[test]
    fn ambiguous_and_unknown_names_say_what_exists() {
        let binaries = tinyos();
        let ambiguous = find(&binaries, "basic_boot").expect_err("a test and a bench");
        assert_eq!(
            ambiguous,
            NameMiss::Ambiguous(vec!["tinyos::basic_boot".into(), "tinyos::bench/basic_boot".into()])
        );
        assert_eq!(ambiguous.message("basic_boot"), "`basic_boot` names 2 test binaries");
        assert_eq!(
            ambiguous.help(&binaries),
            "name one of them in full: `tinyos::basic_boot`, `tinyos::bench/basic_boot`"
        );
        let unknown = find(&binaries, "should_panik").expect_err("typo");
        assert_eq!(unknown, NameMiss::Unknown { near: Some("tinyos::should_panic".into()) });
        assert!(unknown.help(&binaries).starts_with(
            "a test binary with a similar name exists: `tinyos::should_panic`; all of them: `tinyos`, `tinyos::bin/tinyos`"
        ));
        assert_eq!(find(&binaries, "zzz"), Err(NameMiss::Unknown { near: None }));
    }
}
