//! `build`: build every selected artifact through the store.

use std::io::Write;

use crate::{
    cli::BuildArgs,
    cx::Cx,
    exit_code,
    plan::{Plan, Selection},
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
    if crate::report::github::active() {
        let fresh = built.values().filter(|a| matches!(a.outcome, kiln_store::BuildOutcome::Built { .. })).count();
        crate::report::github::append_outputs(&format!("built={fresh}\ncached={}\n", built.len() - fresh))?;
    }
    let mut stdout = std::io::stdout().lock();
    for (key, artifact) in &built {
        for image in &artifact.images {
            writeln!(stdout, "{} {} {}", key.artifact, key.arch, image.path.display())?;
        }
    }
    Ok(exit_code::SUCCESS)
}
