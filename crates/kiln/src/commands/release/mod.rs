//! `release --tag TAG`: publishes what `[release]` names (artifacts, kernels, rootfs images,
//! for every arch they are built for) as the assets of a GitHub release, with `BLAKE3SUMS`,
//! `SHA256SUMS` and `provenance.json`.
//!
//! Two stages, which a workflow can run as two steps so that only the second sees a token:
//! - [`stage`] (`--out DIR`) builds every asset from source in an empty store (a cached or
//!   restored store is never trusted for what is published), compares each output hash with
//!   the project store's entry for the same closure (reproducibility, proven per asset), and
//!   writes the files.
//! - [`publish`] (`--publish DIR`) checks the staged files against their `SHA256SUMS`, puts
//!   them on a draft release, and publishes it last, so a published release is never empty
//!   or half uploaded (GitHub's immutable releases allow no change after that). A re-run of a
//!   failed release finishes the draft; a published release with the same assets is left as
//!   it is.

mod publish;
mod stage;

use std::path::PathBuf;

use crate::{cli::ReleaseArgs, cx::Cx, error::UsageError, exit_code};

/// The files that describe a release rather than being one of its assets.
const SHA256SUMS: &str = "SHA256SUMS";
const BLAKE3SUMS: &str = "BLAKE3SUMS";
const PROVENANCE: &str = "provenance.json";

/// One file of a release.
#[derive(Clone, Debug)]
struct ReleaseFile {
    name: String,
    bytes: Vec<u8>,
}

impl ReleaseFile {
    /// Whether it is one of the release's assets (not a checksum or provenance file).
    fn is_asset(&self) -> bool {
        ![SHA256SUMS, BLAKE3SUMS, PROVENANCE].contains(&self.name.as_str())
    }

    fn sha256(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `release`.
pub(super) fn run(cx: &Cx, args: &ReleaseArgs) -> anyhow::Result<u8> {
    let settings = &cx.config().release;
    if settings.is_empty() {
        return Err(UsageError::new(
            "Kiln.toml's `[release]` names nothing to publish",
            Some("add `[release]` with `artifacts = [...]`, `kernels = [...]` and/or `rootfs = [...]`".to_owned()),
        )
        .into());
    }
    let repository = crate::github::repository(None, cx.config().release.repository.as_deref()).ok_or_else(|| {
        UsageError::new(
            "which repository should the release be in?",
            Some("set `[release] repository = \"owner/name\"` (GitHub Actions sets GITHUB_REPOSITORY)".to_owned()),
        )
    })?;
    // Everything that can be checked without building is checked first.
    if args.tag.trim().is_empty() || args.tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            UsageError::new(format!("`{}` is not a tag", args.tag), Some("e.g. `--tag v1.2.0`".to_owned())).into()
        );
    }
    if let Err(err) = repository.parse::<kiln_types::Repo>() {
        return Err(UsageError::new(
            err.to_string(),
            Some("set `[release] repository` or GITHUB_REPOSITORY".to_owned()),
        )
        .into());
    }
    let publishing = args.out.is_none();
    if publishing && !args.dry_run && crate::github::token().is_none() {
        return Err(crate::github::missing_token().into());
    }
    let dir: PathBuf = match (&args.out, &args.publish) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => cx.root().join("target/kiln/release").join(&args.tag),
    };
    if args.publish.is_none() {
        let mode = match (args.from_cache, args.verify_reproducible) {
            (true, _) => stage::Mode::FromCache,
            (false, true) => stage::Mode::VerifyReproducible,
            (false, false) => stage::Mode::FromSource,
        };
        stage::stage(cx, &repository, &args.tag, mode, &dir)?;
    }
    if !publishing {
        cx.printer().always(&format!(
            "staged release {} in {}; publish it with `release --tag {} --publish {}`",
            args.tag,
            dir.display(),
            args.tag,
            dir.display()
        ));
        return Ok(exit_code::SUCCESS);
    }
    let files = publish::read_staged(&dir)?;
    publish::publish(cx, &repository, &args.tag, files, args.draft, args.dry_run)
}
