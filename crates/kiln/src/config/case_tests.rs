//! `[case.NAME.test.TEST]`: what one test binary of a `kind = "tests"` artifact changes of its
//! case's settings, and the console input of a case.
//!
//! Which binary `TEST` names is only known once cargo has built them, so the names are kept
//! as written; the plan carries them, and the boots match them to the built binaries.

use std::time::Duration;

use regex::Regex;
use toml::Spanned;

use super::{
    ConfigError,
    raw::{Expect, RawCase, RawTestSettings},
    resolve::Resolver,
};

/// One `[case.NAME.test.TEST]` table: every key it sets replaces the case's.
#[derive(Clone, Debug)]
pub(crate) struct TestSettings {
    /// `TEST` as written: a binary id or a short form.
    pub name: String,
    /// `success`: `Some(None)` when set to `""` (no success marker for this test).
    pub success: Option<Option<Regex>>,
    /// `failure`: `Some(None)` when set to `""`.
    pub failure: Option<Option<Regex>>,
    /// `success-exit-codes`.
    pub success_exit_codes: Option<Vec<i32>>,
    /// `expect`.
    pub expect: Option<Expect>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `no-output-timeout`.
    pub no_output_timeout: Option<Duration>,
    /// `stop-on-success`.
    pub stop_on_success: Option<bool>,
    /// `input`: `Some(None)` when set to `""` (no input for this test).
    pub input: Option<Option<String>>,
    /// `input-after`.
    pub input_after: Option<Regex>,
}

/// What a case types on the guest's serial console: the text, and the line it waits for.
#[derive(Clone, Debug, Default)]
pub(crate) struct CaseInput {
    /// `input`.
    pub text: Option<String>,
    /// `input-after`.
    pub after: Option<Regex>,
}

impl Resolver<'_> {
    /// A case's `input` and `input-after`; `bare_metal` says whether the case boots an artifact
    /// (a Linux case's command reads no console).
    pub(super) fn case_input(&self, name: &str, raw: &RawCase, bare_metal: bool) -> Result<CaseInput, ConfigError> {
        let key = |k: &str| format!("case.{name}.{k}");
        if !bare_metal && let Some(input) = raw.input.as_ref().or(raw.input_after.as_ref()) {
            let field = if raw.input.is_some() { "input" } else { "input-after" };
            return Err(self
                .error(Some(input.span()), key(field), format!("`{field}` applies to cases that boot an artifact"))
                .with_help("a Linux case's command reads no console input; give the command its input instead"));
        }
        let text = raw.input.as_ref().map(|t| t.get_ref().clone()).filter(|t| !t.is_empty());
        let after = self.regex(raw.input_after.as_ref(), key("input-after"))?;
        if text.is_none()
            && let Some(after) = &raw.input_after
        {
            return Err(self
                .error(
                    Some(after.span()),
                    key("input-after"),
                    "`input-after` says when to send `input`, which is not set",
                )
                .with_help("add `input = \"...\"`, the text to type once that line appears"));
        }
        Ok(CaseInput { text, after })
    }

    /// The `[case.NAME.test.TEST]` tables of a case, checked against the case's own settings
    /// (`success` for `stop-on-success`, `input` for `input-after`).
    pub(super) fn case_tests(
        &self,
        name: &str,
        raw: &RawCase,
        boots_tests: bool,
        input: &CaseInput,
    ) -> Result<Vec<TestSettings>, ConfigError> {
        if !boots_tests && let Some(first) = raw.test.keys().next() {
            return Err(self
                .error(
                    None,
                    format!("case.{name}.test.{first}"),
                    format!("`[case.{name}.test.{first}]` sets a test binary's settings, but case `{name}` boots no test binaries"),
                )
                .with_help("per-test tables apply to cases whose artifact has `kind = \"tests\"`"));
        }
        raw.test.iter().map(|(test, settings)| self.test_settings(name, raw, test, settings, input)).collect()
    }

    fn test_settings(
        &self,
        case: &str,
        raw_case: &RawCase,
        test: &str,
        raw: &RawTestSettings,
        input: &CaseInput,
    ) -> Result<TestSettings, ConfigError> {
        let key = |k: &str| format!("case.{case}.test.{test}.{k}");
        if test.trim().is_empty() {
            return Err(self
                .error(None, format!("case.{case}.test"), "a per-test table needs the test's name")
                .with_help("write `[case.NAME.test.TEST]` with a test binary's name, such as `basic_boot`"));
        }
        let pattern = |value: Option<&Spanned<String>>, field: &str| -> Result<Option<Option<Regex>>, ConfigError> {
            match value {
                Some(text) if text.get_ref().is_empty() => Ok(Some(None)),
                Some(_) => Ok(Some(self.regex(value, key(field))?)),
                None => Ok(None),
            }
        };
        let settings = TestSettings {
            name: test.to_owned(),
            success: pattern(raw.success.as_ref(), "success")?,
            failure: pattern(raw.failure.as_ref(), "failure")?,
            success_exit_codes: raw.success_exit_codes.clone(),
            expect: raw.expect,
            timeout: self.positive_duration(raw.timeout.as_ref(), key("timeout"))?,
            no_output_timeout: self.positive_duration(raw.no_output_timeout.as_ref(), key("no-output-timeout"))?,
            stop_on_success: raw.stop_on_success,
            input: raw.input.as_ref().map(|text| Some(text.get_ref().clone()).filter(|t| !t.is_empty())),
            input_after: self.regex(raw.input_after.as_ref(), key("input-after"))?,
        };
        let has_success = match &settings.success {
            Some(own) => own.is_some(),
            None => raw_case.success.is_some(),
        };
        if settings.stop_on_success.unwrap_or(raw_case.stop_on_success) && !has_success {
            let field = if settings.stop_on_success.is_some() { "stop-on-success" } else { "success" };
            return Err(self
                .error(None, key(field), format!("test `{test}` stops on success but has no `success` pattern"))
                .with_help(
                    "set `success = \"...\"` in this table (or the case), the line the test prints when it has passed",
                ));
        }
        let has_input = match &settings.input {
            Some(own) => own.is_some(),
            None => input.text.is_some(),
        };
        if !has_input && let Some(after) = &raw.input_after {
            return Err(self
                .error(
                    Some(after.span()),
                    key("input-after"),
                    "`input-after` says when to send `input`, which is not set",
                )
                .with_help("add `input = \"...\"` to this table or the case"));
        }
        Ok(settings)
    }
}
