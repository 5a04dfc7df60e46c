//! `ci prune-caches`: the repository's Actions caches that kiln's action saved, the newest N
//! kept per branch and key family (arch set, host, command), the rest deleted.

use std::{collections::BTreeMap, io::Write as _};

use crate::{
    cli::{CiArgs, CiCommand},
    cx::Cx,
    error::UsageError,
    exit_code,
};

/// Runs a `ci` subcommand.
pub(super) fn run(cx: &Cx, args: &CiArgs) -> anyhow::Result<u8> {
    match &args.command {
        CiCommand::PruneCaches { keep, dry_run, prefix, repository } => {
            prune_caches(cx, *keep, *dry_run, prefix, repository.as_deref())
        }
    }
}

/// The family of a key the action wrote: everything before the closure digest
/// (`PREFIX-OS-ARCHES-kiln-v1-s1-HOST-VERB-`), or `None` for a key of another shape.
fn family(key: &str) -> Option<&str> {
    let re =
        regex::Regex::new(r"^(.+-kiln-v\d+-s\d+-[a-z0-9_]+-(?:test|build)-)[0-9a-f]{32}(?:-incomplete-.+)?$").ok()?;
    re.captures(key).and_then(|c| c.get(1)).map(|m| m.as_str())
}

fn prune_caches(cx: &Cx, keep: usize, dry_run: bool, prefix: &str, repository: Option<&str>) -> anyhow::Result<u8> {
    let repository =
        crate::github::repository(repository, cx.config().release.repository.as_deref()).ok_or_else(|| {
            UsageError::new(
                "which repository's caches?",
                Some("pass `--repository owner/name` (GitHub Actions sets GITHUB_REPOSITORY)".to_owned()),
            )
        })?;
    if let Err(err) = repository.parse::<kiln_types::Repo>() {
        return Err(UsageError::new(err.to_string(), Some("pass `--repository owner/name`".to_owned())).into());
    }
    if crate::github::token().is_none() {
        return Err(crate::github::missing_token().into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = crate::github::client(&repository, true, Some(cx.printer().clone()))?;
        let caches = client.caches(&format!("{prefix}-")).await?;
        // Newest first within each (branch, family).
        let mut groups: BTreeMap<(String, String), Vec<&kiln_github::CacheEntry>> = BTreeMap::new();
        for cache in &caches {
            if let Some(family) = family(&cache.key) {
                let branch = cache.git_ref.clone().unwrap_or_default();
                groups.entry((branch, family.to_owned())).or_default().push(cache);
            }
        }
        let mut doomed = Vec::new();
        for entries in groups.values_mut() {
            entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
            doomed.extend(entries.iter().skip(keep).copied());
        }
        doomed.sort_by_key(|cache| cache.id);
        let mut out = std::io::stdout().lock();
        let mut freed = 0u64;
        for cache in &doomed {
            if !dry_run {
                client.delete_cache(cache.id).await?;
            }
            freed += cache.size;
            let verb = if dry_run { "would delete" } else { "deleted" };
            writeln!(
                out,
                "{verb} {} ({}, {})",
                cache.key,
                cache.git_ref.as_deref().unwrap_or("-"),
                crate::units::human_size(cache.size)
            )?;
        }
        let verb = if dry_run { "would free" } else { "freed" };
        writeln!(
            out,
            "{} of {} kiln caches {verb} {} (kept the newest {keep} per branch and key family)",
            doomed.len(),
            caches.len(),
            crate::units::human_size(freed)
        )?;
        anyhow::Ok(exit_code::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_cut_the_digest_and_an_incomplete_suffix() {
        let key = "kiln-Linux-riscv64-kiln-v1-s1-x86_64-test-0123456789abcdef0123456789abcdef";
        assert_eq!(family(key), Some("kiln-Linux-riscv64-kiln-v1-s1-x86_64-test-"));
        let red = format!("{key}-incomplete-42-1-deadbeef");
        assert_eq!(family(&red), family(key));
        assert_eq!(family("kiln-something-else"), None);
    }
}
