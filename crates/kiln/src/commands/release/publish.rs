//! Publishing staged release files: a draft first, its assets, the release published last.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;

use super::{BLAKE3SUMS, PROVENANCE, ReleaseFile, SHA256SUMS};
use crate::{cx::Cx, error::UsageError, exit_code};

/// What happens to one file of a draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Upload,
    Replace(u64),
    Keep,
}

/// Reads the files a `--out DIR` staged: every asset `SHA256SUMS` names, with its checksum
/// checked, and the three files that describe them.
pub(super) fn read_staged(dir: &Path) -> anyhow::Result<Vec<ReleaseFile>> {
    let read = |name: &str| -> anyhow::Result<ReleaseFile> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|err| {
            UsageError::new(
                format!("cannot read `{}` of the staged release: {err}", path.display()),
                Some("stage it first with `release --tag TAG --out DIR`".to_owned()),
            )
        })?;
        Ok(ReleaseFile { name: name.to_owned(), bytes })
    };
    let sums = read(SHA256SUMS)?;
    let mut files = Vec::new();
    for (number, line) in String::from_utf8_lossy(&sums.bytes).lines().enumerate() {
        let Some((sha256, name)) = line.split_once("  ") else {
            return Err(UsageError::new(
                format!("{}/{SHA256SUMS}:{}: not `SHA256  NAME`", dir.display(), number + 1),
                Some("stage the release again with `--out`".to_owned()),
            )
            .into());
        };
        if name.contains('/') || name.starts_with('.') || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(UsageError::new(
                format!(
                    "{}/{SHA256SUMS}:{}: `{}` is not an asset name",
                    dir.display(),
                    number + 1,
                    name.escape_debug()
                ),
                None,
            )
            .into());
        }
        let file = read(name)?;
        if file.sha256() != sha256 {
            return Err(UsageError::new(
                format!("`{name}` in {} does not have the SHA-256 its {SHA256SUMS} records", dir.display()),
                Some("something changed the staged files; stage the release again with `--out`".to_owned()),
            )
            .into());
        }
        files.push(file);
    }
    files.push(read(BLAKE3SUMS)?);
    files.push(sums);
    files.push(read(PROVENANCE)?);
    Ok(files)
}

/// Publishes `files` as the release `tag`: creates (or finds) a draft, uploads what it lacks
/// or holds otherwise, then publishes it unless `draft`. A published release is never
/// changed: with the same assets there is nothing to do, with others it is an error.
pub(super) fn publish(
    cx: &Cx,
    repository: &str,
    tag: &str,
    files: Vec<ReleaseFile>,
    draft: bool,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if dry_run && crate::github::token().is_none() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "release {tag} of {repository} (dry run, no token: not compared with GitHub)")?;
        for file in &files {
            writeln!(out, "  publish  {:<40} {:>10}", file.name, crate::units::human_size(file.bytes.len() as u64))?;
        }
        return Ok(exit_code::SUCCESS);
    }
    runtime.block_on(async {
        let client = crate::github::client(repository, true, Some(cx.printer().clone()))?;
        let existing = client.release_by_tag(tag).await?;
        let assets = match &existing {
            Some(release) => client.assets(release.id).await?,
            None => Vec::new(),
        };
        let plan: Vec<(&ReleaseFile, Action)> = files
            .iter()
            .map(|file| {
                let digest = format!("sha256:{}", file.sha256());
                let action = match assets.iter().find(|a| a.name == file.name) {
                    Some(asset) if asset.digest.as_deref() == Some(digest.as_str()) => Action::Keep,
                    Some(asset) => Action::Replace(asset.id),
                    None => Action::Upload,
                };
                (file, action)
            })
            .collect();
        if let Some(release) = existing.as_ref().filter(|r| !r.draft) {
            // The provenance names the run that made it; only the assets and their sums count.
            let differing: Vec<&str> = plan
                .iter()
                .filter(|(file, action)| *action != Action::Keep && file.name != PROVENANCE)
                .map(|(file, _)| file.name.as_str())
                .collect();
            if differing.is_empty() {
                cx.printer().always(&format!(
                    "release {tag} is already published with these assets; nothing to do ({})",
                    release.html_url
                ));
                return Ok(exit_code::SUCCESS);
            }
            return Err(UsageError::new(
                format!(
                    "release {tag} is already published, and a published release is not changed (GitHub's \
                     immutable releases refuse it): {} differ from what this build made",
                    differing.join(", ")
                ),
                Some("publish under a new tag; a draft (`--draft`) can change until it is published".to_owned()),
            )
            .into());
        }
        if dry_run {
            let mut out = std::io::stdout().lock();
            let state = if existing.is_some() { "exists as a draft" } else { "would be created" };
            writeln!(out, "release {tag} of {repository} ({state}; dry run: nothing changed)")?;
            for (file, action) in &plan {
                let verb = match action {
                    Action::Upload => "upload",
                    Action::Replace(_) => "replace",
                    Action::Keep => "keep",
                };
                let size = crate::units::human_size(file.bytes.len() as u64);
                writeln!(out, "  {verb:<8} {:<40} {size:>10}", file.name)?;
            }
            return Ok(exit_code::SUCCESS);
        }
        let body = release_notes(&files);
        let release = match existing {
            Some(release) if release.body == body && release.name == tag => {
                cx.printer().status("Found", &format!("draft release {tag} ({})", release.html_url));
                release
            }
            Some(release) => {
                let updated = client.update_release(release.id, tag, &body, true).await?;
                cx.printer().status("Updating", &format!("draft release {tag} ({})", updated.html_url));
                updated
            }
            None => {
                let created = client.create_release(tag, tag, &body, true).await?;
                cx.printer().status("Created", &format!("draft release {tag} ({})", created.html_url));
                created
            }
        };
        let (mut uploaded, mut kept) = (0, 0);
        for (file, action) in plan {
            let size = crate::units::human_size(file.bytes.len() as u64);
            match action {
                Action::Keep => {
                    kept += 1;
                    cx.printer().verbose("Unchanged", &file.name);
                }
                // A draft is not public: the old asset goes first (names are unique).
                Action::Replace(id) => {
                    client.delete_asset(id).await?;
                    client.upload_asset(release.id, &file.name, file.bytes.clone()).await?;
                    uploaded += 1;
                    cx.printer().status("Replaced", &format!("{} ({size})", file.name));
                }
                Action::Upload => {
                    client.upload_asset(release.id, &file.name, file.bytes.clone()).await?;
                    uploaded += 1;
                    cx.printer().status("Uploaded", &format!("{} ({size})", file.name));
                }
            }
        }
        let release = if draft {
            release
        } else {
            let published = client
                .update_release(release.id, tag, &body, false)
                .await
                .with_context(|| format!("the assets are on the draft of {tag}, but publishing it failed"))?;
            cx.printer().status("Published", &format!("release {tag} ({})", published.html_url));
            published
        };
        let state = if draft { " (a draft)" } else { "" };
        cx.printer()
            .always(&format!("release {tag}{state}: {uploaded} uploaded, {kept} unchanged ({})", release.html_url));
        anyhow::Ok(exit_code::SUCCESS)
    })
}

/// The release's notes: what it holds, and how to check it.
fn release_notes(files: &[ReleaseFile]) -> String {
    let mut body = String::from(
        "Published by `cargo xtask release` (kiln). Check a download with `b3sum --check BLAKE3SUMS` or `sha256sum --check SHA256SUMS`; `provenance.json` gives each asset's closure hash, inputs and whether a second build reproduced it, and the commit and workflow run that made the release.\n\n| asset | size |\n| --- | --- |\n",
    );
    for file in files.iter().filter(|f| f.is_asset()) {
        body.push_str(&format!("| `{}` | {} |\n", file.name, crate::units::human_size(file.bytes.len() as u64)));
    }
    body
}
