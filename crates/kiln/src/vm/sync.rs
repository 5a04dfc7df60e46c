//! Workspace sync into a session guest by BLAKE3 manifest: the host's files (what `.gitignore`
//! keeps, `.git` left out) are compared with the guest's listing of the same directory, so
//! only new and changed files travel; files the previous sync put there and the host no
//! longer has are removed from the guest. Guest paths equal host paths.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt as _,
    path::Path,
};

use anyhow::Context as _;
use kiln_agent::ListEntry;

use super::agent_client::AgentClient;

/// Directories a sync never descends into, on either side.
const SKIPPED_DIRS: &[&str] = &[".git", "target"];

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    /// Files and links written into the guest.
    pub put: Vec<String>,
    /// Paths removed from the guest.
    pub removed: Vec<String>,
    /// Files already equal.
    pub unchanged: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// The host side's manifest of `root`: path → entry, as the agent lists the guest.
pub(crate) fn host_manifest(root: &Path) -> anyhow::Result<BTreeMap<String, ListEntry>> {
    let mut manifest = BTreeMap::new();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .parents(false)
        .require_git(false)
        .filter_entry(|entry| !(entry.depth() > 0 && SKIPPED_DIRS.iter().any(|skip| entry.file_name() == *skip)))
        .build();
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk `{}`", root.display()))?;
        let Some(kind) = entry.file_type() else { continue };
        let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let Some(path) = relative.to_str().map(str::to_owned) else {
            anyhow::bail!("`{}` is not UTF-8; kiln syncs UTF-8 paths only", entry.path().display());
        };
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())
                .with_context(|| format!("cannot read the link `{}`", entry.path().display()))?;
            let hash = format!("link:{}", target.display());
            manifest.insert(path.clone(), ListEntry { path, mode: 0, hash });
        } else if kind.is_file() {
            let meta = std::fs::metadata(entry.path())
                .with_context(|| format!("cannot inspect `{}`", entry.path().display()))?;
            let hash = kiln_store::hash_file(entry.path())
                .with_context(|| format!("cannot hash `{}`", entry.path().display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            manifest.insert(path.clone(), ListEntry { path, mode, hash: hash.to_hex().to_string() });
        }
    }
    Ok(manifest)
}

/// Makes the guest's `root` match the host's: puts what differs, removes what the previous
/// sync (`previous`, paths) put there and the host no longer has. Returns what it did.
pub(crate) async fn sync(
    agent: &mut AgentClient,
    root: &Path,
    host: &BTreeMap<String, ListEntry>,
    previous: &BTreeSet<String>,
) -> anyhow::Result<SyncReport> {
    let root_text = root.to_str().context("the sync root is not UTF-8")?.to_owned();
    let skip = SKIPPED_DIRS.iter().map(|s| (*s).to_owned()).collect();
    let guest: BTreeMap<String, ListEntry> =
        agent.list(&root_text, skip).await?.into_iter().map(|entry| (entry.path.clone(), entry)).collect();
    let mut report = SyncReport::default();
    for (path, entry) in host {
        if guest.get(path) == Some(entry) {
            report.unchanged += 1;
            continue;
        }
        let guest_path = format!("{root_text}/{path}");
        if let Some(target) = entry.hash.strip_prefix("link:") {
            agent.symlink(&guest_path, target).await?;
        } else {
            let bytes = std::fs::read(root.join(path)).with_context(|| format!("cannot read `{path}`"))?;
            report.bytes += bytes.len() as u64;
            agent.put(&guest_path, entry.mode, &bytes).await?;
        }
        report.put.push(path.clone());
    }
    report.removed =
        previous.iter().filter(|path| !host.contains_key(*path) && guest.contains_key(*path)).cloned().collect();
    if !report.removed.is_empty() {
        agent.remove(&root_text, report.removed.clone()).await?;
    }
    Ok(report)
}
