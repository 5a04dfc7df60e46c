//! `build`: build every selected artifact through the store.

use std::io::Write;

use crate::{
    cli::BuildArgs,
    cx::Cx,
    exit_code,
    plan::{Plan, Selection},
    report::github,
};

/// Builds and prints `ARTIFACT ARCH PATH` per bootable image on stdout.
pub(super) fn run(cx: &Cx, args: &BuildArgs) -> anyhow::Result<u8> {
    let plan = Plan::for_build(cx.config(), &Selection::arches(&args.arch));
    if plan.builds.is_empty() {
        let arches: std::collections::BTreeSet<String> =
            cx.config().artifacts.values().flat_map(|a| a.arches.iter().map(ToString::to_string)).collect();
        let arches: Vec<String> = arches.into_iter().collect();
        return Err(crate::error::UsageError::with_help(
            "no artifact matches the selection",
            if arches.is_empty() {
                "declare one under `[artifact.NAME]` in Kiln.toml".to_owned()
            } else {
                format!("the artifacts are built for {}", arches.join(", "))
            },
        )
        .into());
    }
    let built = cx.realise_builds(&plan)?;
    if github::active() {
        // The summary event's counts: every derivation, as `test` counts them.
        let counts = cx.printer().log().summary("build", exit_code::SUCCESS, None);
        github::append_outputs(&github::step_outputs(&counts))?;
    }
    if let Some(json) = cx.printer().log().json() {
        for (key, artifact) in &built {
            for image in &artifact.images {
                json.artifact(&key.artifact, key.arch, artifact.closure, &image.path);
            }
        }
        return Ok(exit_code::SUCCESS);
    }
    let mut stdout = std::io::stdout().lock();
    for (key, artifact) in &built {
        for image in &artifact.images {
            writeln!(stdout, "{} {} {}", key.artifact, key.arch, image.path.display())?;
        }
    }
    Ok(exit_code::SUCCESS)
}
