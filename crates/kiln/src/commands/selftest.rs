//! `selftest`: provision everything the project's tests need, then run them.

use std::io::Write as _;

use anyhow::Context as _;

use crate::{
    cli::SelftestArgs,
    cx::Cx,
    exec::{self, InstallMode},
    exit_code,
    plan::{Plan, Selection},
};

/// The project's own set-up script for its tests (kiln's repository: the pinned Debian
/// packages, image tools, schema checker), run when present.
const SETUP_SCRIPT: &str = ".ci/setup";

/// Runs `.ci/setup` when the project has one: with installs allowed (`--yes`, CI), or after
/// saying what it is for; without them, names it instead.
fn run_setup_script(cx: &Cx) -> anyhow::Result<()> {
    let script = cx.config().root.join(SETUP_SCRIPT);
    if !script.is_file() {
        return Ok(());
    }
    if cx.options().install == InstallMode::Never {
        cx.printer().warn(&format!(
            "not running `{SETUP_SCRIPT}` (it installs packages; pass --yes); tests that need its downloads will fail"
        ));
        return Ok(());
    }
    cx.printer().status("Preparing", &format!("{SETUP_SCRIPT} (test packages and downloads)"));
    // As every tool kiln runs: without the RUSTUP_TOOLCHAIN that rustup's proxy set for
    // `cargo xtask`, so toolchain files in the project decide which toolchain gets installed.
    let status = exec::tool_command("bash", cx.root())
        .arg(&script)
        .status()
        .with_context(|| format!("cannot run `{}`", script.display()))?;
    if !status.success() {
        anyhow::bail!("`{SETUP_SCRIPT}` failed ({status}); run it by hand to see why");
    }
    Ok(())
}

/// Installs QEMU, firmware, toolchains and rustup targets for every case and artifact, runs
/// the project's `.ci/setup`, then runs `cargo test --workspace` in the project root and
/// passes its status through.
pub(super) fn run(cx: &Cx, args: &SelftestArgs) -> anyhow::Result<u8> {
    let all = Selection::default();
    let plan = Plan::for_test(cx.config(), &all)?;
    let builds = Plan::for_build(cx.config(), &all).builds;
    let missing = exec::host_needs(&plan.runs, &builds);
    cx.executor().ensure(missing)?;
    run_setup_script(cx)?;

    cx.printer().status("Testing", &format!("cargo test --workspace in {}", cx.config().root.display()));
    let mut child = exec::tool_command("cargo", cx.root())
        .args(["test", "--workspace"])
        .args(&args.cargo_args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to run `cargo test`")?;
    let stdout = child.stdout.take().context("cargo test's output was not captured")?;
    let mut totals = Totals::default();
    let mut out = std::io::stdout().lock();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("failed to read cargo test's output")?;
        totals.add(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait().context("failed to wait for cargo test")?;
    // One closing line over every test binary, so a reader of the log (or CI) need not
    // add up the per-binary lines, the last of which is often an empty doc-test run.
    writeln!(out, "selftest: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored)?;
    Ok(if status.success() { exit_code::SUCCESS } else { exit_code::CASES_FAILED })
}

/// Test counts summed over libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of a `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else { continue };
            let Ok(count) = count.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_libtest_result_lines() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 42 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.49s");
        totals.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add("running 3 tests");
        assert_eq!(totals, Totals { passed: 45, failed: 2, ignored: 1 });
    }
}
