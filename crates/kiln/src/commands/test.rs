//! `test`: build, boot and judge every selected case on every selected machine; print the
//! summary table, write JUnit, and in GitHub Actions annotate and summarise.

use anyhow::Context as _;

use crate::{
    cli::TestArgs,
    cx::Cx,
    env, exit_code,
    outcome::{CaseResult, RunSummary},
    report::{github, junit, summary},
};

/// Runs the cases, reports them, and returns the exit code.
pub(super) fn run(cx: &Cx, args: &TestArgs) -> anyhow::Result<u8> {
    let summary = cx.test(args)?;
    let code = exit_code(&summary);
    report_to_ci(cx, args, &summary, code)?;
    cx.printer().always(&summary::render(&summary));
    if !summary.all_ok() {
        cx.printer().always(&format!("serial logs: {}", summary.log_dir.display()));
    }
    Ok(code)
}

/// The JUnit file (with `--junit`, or by default in CI) and, in GitHub Actions, a group of
/// serial output and an error annotation per failed case, the job summary, and the step's
/// outputs (from the summary event, as `--message-format json` ends with it).
fn report_to_ci(cx: &Cx, args: &TestArgs, summary: &RunSummary, code: u8) -> anyhow::Result<()> {
    let junit = args.junit.clone().or_else(|| env::in_ci().then(|| cx.work_dir().join("junit.xml")));
    if let Some(path) = junit {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, junit::render(summary)?).with_context(|| format!("cannot write `{}`", path.display()))?;
        cx.printer().verbose("JUnit", &path.display().to_string());
        cx.printer().log().record_junit(path);
    }
    if !github::active() {
        return Ok(());
    }
    let file = &cx.config().file;
    let workspace = env::var(env::GITHUB_WORKSPACE).unwrap_or_default();
    let file = file.strip_prefix(workspace).unwrap_or(file).display().to_string();
    for result in &summary.results {
        let guard = github::CommandGuard::new()?;
        cx.printer().always(&format!(
            "::group::{} {}",
            github::escape_data(&result.label),
            github::escape_data(&result.detail)
        ));
        cx.printer().always(&guard.start());
        for line in serial_lines(result) {
            cx.printer().always(&line);
        }
        cx.printer().always(&guard.end());
        cx.printer().always("::endgroup::");
        if !result.status.is_ok() {
            let last = &result.tail[result.tail.len().saturating_sub(8)..];
            let message = format!("{}\n{}", result.detail, last.join("\n"));
            cx.printer().always(&github::error_annotation(
                &file,
                result.line,
                &format!("{}: {}", result.label, result.detail),
                &message,
            ));
        }
    }
    let counts = cx.printer().log().summary("test", code, None);
    github::append_outputs(&github::step_outputs(&counts))?;
    let (accel_line, warnings) = github::accel_report(&cx.chosen_accelerators(), kiln_types::Arch::host());
    for warning in warnings {
        cx.printer().always(&warning);
    }
    github::append_summary(&format!("{}{accel_line}", github::job_summary(summary, &counts)))?;
    Ok(())
}

/// Lines of a case's serial log shown in its group: all of them up to a bound (the log file
/// has everything), else the kept tail.
fn serial_lines(result: &CaseResult) -> Vec<String> {
    const MAX_LINES: usize = 2000;
    match std::fs::read_to_string(&result.log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(MAX_LINES);
            let mut shown: Vec<String> = lines[skipped..].iter().map(|l| (*l).to_owned()).collect();
            if skipped > 0 {
                shown.insert(0, format!("... {skipped} earlier lines are in the serial log"));
            }
            shown
        }
        Err(_) => result.tail.clone(),
    }
}

/// The exit code for a finished run.
fn exit_code(summary: &RunSummary) -> u8 {
    if summary.interrupted() {
        exit_code::INTERRUPTED
    } else if summary.has_errors() {
        exit_code::INFRASTRUCTURE
    } else if summary.all_ok() {
        exit_code::SUCCESS
    } else {
        exit_code::CASES_FAILED
    }
}
