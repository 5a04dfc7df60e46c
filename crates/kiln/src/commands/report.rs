//! `report merge`: one JUnit file from the files of a partitioned run's jobs, equal to the
//! file an unpartitioned run writes (timings aside), and in GitHub Actions a job summary line.

use std::collections::HashMap;

use anyhow::Context as _;

use crate::{cli::ReportCommand, cx::Cx, error::UsageError, exit_code, report::github, report::junit};

/// Runs a `report` subcommand; returns the exit code.
pub(super) fn run(cx: &Cx, command: &ReportCommand) -> anyhow::Result<u8> {
    match command {
        ReportCommand::Merge { files, out } => merge(cx, files, out.as_deref()),
    }
}

fn merge(cx: &Cx, files: &[std::path::PathBuf], out: Option<&std::path::Path>) -> anyhow::Result<u8> {
    // An unpartitioned run boots the cases in name order, each on its machines in the order
    // Kiln.toml lists them.
    let mut places: HashMap<(&str, &str), usize> = HashMap::new();
    for (case_name, case) in &cx.config().cases {
        for machine in &case.machines {
            let next = places.len();
            places.entry((case_name.as_str(), machine.as_str())).or_insert(next);
        }
    }
    let merged =
        junit::merge(files, |case, machine| places.get(&(case, machine)).copied()).map_err(|error| {
            match error.downcast::<junit::MergeError>() {
                Ok(bad_input) => {
                    let help = match bad_input {
                        junit::MergeError::Read { .. } => {
                            "pass the files the jobs' `test --junit PATH` wrote (did each job \
                                                       upload its file?)"
                        }
                        junit::MergeError::Garbled { .. } => "pass the JUnit files kiln's `test` wrote, whole",
                        junit::MergeError::Duplicate { .. } => {
                            "pass each job's file once; give each job its own shard: `--partition hash:K/N`, K = 1..N"
                        }
                    };
                    UsageError::with_help(bad_input.to_string(), help).into()
                }
                Err(other) => other,
            }
        })?;
    match out {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            // Written whole, then renamed: a failed write leaves no half file.
            let temp = path.with_extension("xml.partial");
            std::fs::write(&temp, &merged.xml).with_context(|| format!("cannot write `{}`", temp.display()))?;
            std::fs::rename(&temp, path).with_context(|| format!("cannot write `{}`", path.display()))?;
        }
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(merged.xml.as_bytes())?;
        }
    }
    let line = format!(
        "{} JUnit files: {} test cases, {} failed, {} errors{}",
        files.len(),
        merged.tests,
        merged.failures,
        merged.errors,
        out.map(|p| format!(" into {}", p.display())).unwrap_or_default()
    );
    cx.printer().status("Merged", &line);
    if github::active() {
        let passed = merged.tests - merged.failures - merged.errors;
        github::append_summary(&format!(
            "### kiln: merged test report\n\n{} test cases from {} jobs: {passed} passed, {} failed, {} errors\n",
            merged.tests,
            files.len(),
            merged.failures,
            merged.errors
        ))?;
    }
    Ok(if merged.failures + merged.errors > 0 { exit_code::CASES_FAILED } else { exit_code::SUCCESS })
}
