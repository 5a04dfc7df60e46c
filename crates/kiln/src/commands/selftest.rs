//! `selftest`: provision everything the project's tests need, then run them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;

use crate::{
    cli::SelftestArgs,
    cx::Cx,
    exec, exit_code,
    plan::{Plan, Selection},
    provision,
};

/// Installs QEMU, firmware and rustup targets for every case and artifact, then runs
/// `cargo test --workspace` in the project root and passes its status through.
pub fn run(cx: &Cx, args: &SelftestArgs) -> anyhow::Result<u8> {
    let all = Selection::default();
    let plan = Plan::for_test(&cx.config, &all)?;
    let builds = Plan::for_build(&cx.config, &all).builds;
    let mut targets: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for step in &builds {
        targets.entry(step.artifact.dir.clone()).or_default().insert(step.triple.clone());
    }
    let mut missing: Vec<_> = plan.runs.iter().flat_map(|run| provision::check_machine(&run.machine)).collect();
    missing.extend(targets.iter().flat_map(|(dir, triples)| provision::check_targets(dir, triples)));
    provision::ensure(missing, cx.options.install, &cx.printer)?;

    cx.printer.status("Testing", &format!("cargo test --workspace in {}", cx.config.root.display()));
    let status = exec::tool_command("cargo", &cx.config.root)
        .args(["test", "--workspace"])
        .args(&args.cargo_args)
        .status()
        .context("failed to run `cargo test`")?;
    Ok(if status.success() { exit_code::SUCCESS } else { exit_code::CASES_FAILED })
}
