//! `ci prune-caches`: the repository's Actions caches that kiln's action saved. Every cache of
//! a closed pull request goes (nothing restores a closed pull request's merge ref again), and of
//! the rest the newest N are kept per branch and key family (arch set, host, command); with
//! `--pr N` only that pull request's caches go, at once (kiln-prune.yml's `closed` trigger).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
};

use kiln_github::{CacheEntry, Client, PullState};

use crate::{
    cli::{CiArgs, CiCommand},
    cx::Cx,
    error::UsageError,
    exit_code,
};

/// Runs a `ci` subcommand.
pub(super) fn run(cx: &Cx, args: &CiArgs) -> anyhow::Result<u8> {
    match &args.command {
        CiCommand::PruneCaches { keep, dry_run, prefix, repository, pr } => {
            let prune = Prune { keep: *keep, dry_run: *dry_run, prefix: format!("{prefix}-"), pr: *pr };
            prune_caches(cx, &prune, repository.as_deref())
        }
    }
}

/// What `prune-caches` was asked to do.
struct Prune {
    /// How many caches to keep per branch and key family.
    keep: usize,
    /// Say what would go; delete nothing.
    dry_run: bool,
    /// The start of every key kiln's action writes (`cache-prefix` and a dash).
    prefix: String,
    /// Only this pull request's caches.
    pr: Option<u64>,
}

/// Why a cache goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// It belongs to a pull request that is closed.
    ClosedPull(u64),
    /// `--pr N` named its pull request.
    NamedPull(u64),
    /// Newer caches of its branch and key family are kept.
    Surplus,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClosedPull(number) => write!(f, "pull request #{number} is closed"),
            Self::NamedPull(number) => write!(f, "pull request #{number}, named by --pr"),
            Self::Surplus => f.write_str("newer caches of its branch and key family are kept"),
        }
    }
}

/// The family of a key kiln's action or kiln-prune.yml wrote: the key without its digests, or
/// `None` for a key of another shape.
/// - a store: `PREFIX-OS-ARCHES-kiln-v1-s1-HOST-VERB-` (then the closure digest, and a failed
///   run's `-incomplete-…`);
/// - kiln's own build: `PREFIX-tool-OS-HOST-` for the built tool and `PREFIX-tool-OS-HOST-deps-`
///   for its dependencies (the key's toolchain digest is left out, so a new toolchain's build
///   supersedes the old one's);
/// - kiln-prune.yml's build of the xtask: `PREFIX-prune-tool-OS-`.
fn family(key: &str) -> Option<String> {
    static SHAPES: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
        [
            r"^(?P<family>.+-kiln-v\d+-s\d+-[a-z0-9_]+-(?:test|build)-)[0-9a-f]{32}(?:-incomplete-.+)?$",
            r"^(?P<family>.+-tool-[A-Za-z]+-[a-z0-9_]+(?:-[a-z0-9_]+)*-)[0-9a-f]{12}-(?P<deps>deps-)?[0-9a-f]{20}$",
            r"^(?P<family>.+-prune-tool-[A-Za-z]+-)[0-9a-f]{64}$",
        ]
        .iter()
        .filter_map(|shape| regex::Regex::new(shape).ok())
        .collect()
    });
    SHAPES.iter().find_map(|shape| {
        let captures = shape.captures(key)?;
        let deps = captures.name("deps").map_or("", |m| m.as_str());
        Some(format!("{}{deps}", captures.name("family")?.as_str()))
    })
}

/// The git ref GitHub gives the caches of pull request `number`.
fn pull_ref(number: u64) -> String {
    format!("refs/pull/{number}/merge")
}

/// The pull request whose merge ref `git_ref` is (`refs/pull/7/merge` → 7).
fn pull_number(git_ref: &str) -> Option<u64> {
    let digits = git_ref.strip_prefix("refs/pull/")?.strip_suffix("/merge")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The caches that go, each with why: those on `closed` pull requests' refs, then of the
/// rest all but the newest `keep` per (ref, family). Keys of another shape are left alone
/// unless their pull request is closed.
fn doomed<'a>(caches: &'a [CacheEntry], closed: &BTreeSet<u64>, keep: usize) -> Vec<(&'a CacheEntry, Reason)> {
    let mut doomed = Vec::new();
    let mut groups: BTreeMap<(&str, String), Vec<&CacheEntry>> = BTreeMap::new();
    for cache in caches {
        let git_ref = cache.git_ref.as_deref().unwrap_or_default();
        match pull_number(git_ref) {
            Some(number) if closed.contains(&number) => doomed.push((cache, Reason::ClosedPull(number))),
            _ => {
                if let Some(family) = family(&cache.key) {
                    groups.entry((git_ref, family)).or_default().push(cache);
                }
            }
        }
    }
    for entries in groups.values_mut() {
        // Newest first.
        entries.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        doomed.extend(entries.iter().skip(keep).map(|cache| (*cache, Reason::Surplus)));
    }
    doomed.sort_by_key(|(cache, _)| cache.id);
    doomed
}

fn prune_caches(cx: &Cx, prune: &Prune, repository: Option<&str>) -> anyhow::Result<u8> {
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
        let (listed, doomed): (usize, Vec<(CacheEntry, Reason)>) = match prune.pr {
            Some(number) => {
                let caches = client.caches(&prune.prefix, Some(&pull_ref(number))).await?;
                (caches.len(), caches.into_iter().map(|cache| (cache, Reason::NamedPull(number))).collect())
            }
            None => {
                let caches = client.caches(&prune.prefix, None).await?;
                let closed = closed_pulls(&client, &caches).await?;
                let doomed = doomed(&caches, &closed, prune.keep);
                (caches.len(), doomed.into_iter().map(|(cache, reason)| (cache.clone(), reason)).collect())
            }
        };
        delete(&client, prune, listed, &doomed).await
    })
}

/// The pull requests that `caches` were saved for and that are closed now, asked of GitHub
/// one by one.
async fn closed_pulls(client: &Client, caches: &[CacheEntry]) -> anyhow::Result<BTreeSet<u64>> {
    let pulls: BTreeSet<u64> = caches.iter().filter_map(|c| c.git_ref.as_deref().and_then(pull_number)).collect();
    let mut closed = BTreeSet::new();
    for number in pulls {
        if client.pull_state(number).await? == PullState::Closed {
            closed.insert(number);
        }
    }
    Ok(closed)
}

/// Deletes the doomed caches (or says it would), a line each on stdout, then the total.
async fn delete(client: &Client, prune: &Prune, total: usize, doomed: &[(CacheEntry, Reason)]) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let mut freed = 0u64;
    let mut closed_pull_caches = 0usize;
    for (cache, reason) in doomed {
        let mut verb = if prune.dry_run { "would delete" } else { "deleted" };
        if !prune.dry_run {
            match client.delete_cache(cache.id).await {
                Ok(()) => {}
                // Another run (the `closed` trigger and the daily one) got there first.
                Err(err) if err.status() == Some(404) => verb = "already gone:",
                Err(err) => return Err(err.into()),
            }
        }
        freed += cache.size;
        if matches!(reason, Reason::ClosedPull(_) | Reason::NamedPull(_)) {
            closed_pull_caches += 1;
        }
        writeln!(
            out,
            "{verb} {} ({}, {}): {reason}",
            kiln_types::escape_untrusted(&cache.key),
            kiln_types::escape_untrusted(cache.git_ref.as_deref().unwrap_or("-")),
            crate::units::human_size(cache.size)
        )?;
    }
    let verb = if prune.dry_run { "would free" } else { "freed" };
    let kept = match prune.pr {
        Some(number) => format!("only pull request #{number}'s"),
        None => format!(
            "{closed_pull_caches} of closed pull requests; kept the newest {} per branch and key family",
            prune.keep
        ),
    };
    writeln!(out, "{} of {total} kiln caches {verb} {} ({kept})", doomed.len(), crate::units::human_size(freed))?;
    Ok(exit_code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_cut_the_digest_and_an_incomplete_suffix() {
        let key = "kiln-Linux-riscv64-kiln-v1-s1-x86_64-test-0123456789abcdef0123456789abcdef";
        assert_eq!(family(key).as_deref(), Some("kiln-Linux-riscv64-kiln-v1-s1-x86_64-test-"));
        let red = format!("{key}-incomplete-42-1-deadbeef");
        assert_eq!(family(&red), family(key));
        assert_eq!(family("kiln-something-else"), None);
    }

    #[test]
    fn the_tools_builds_are_two_families_whatever_the_toolchain() {
        // As the action's tool-key.sh and kiln-prune.yml write them.
        let built = "kiln-tool-Linux-x86_64-unknown-linux-gnu-0f1e5974425d-d7591e8877421a3f8459";
        let deps = "kiln-tool-Linux-x86_64-unknown-linux-gnu-0f1e5974425d-deps-46325179e99b6a8e1cf1";
        let newer_rustc = "kiln-tool-Linux-x86_64-unknown-linux-gnu-aaaaaaaaaaaa-d7591e8877421a3f8459";
        assert_eq!(family(built).as_deref(), Some("kiln-tool-Linux-x86_64-unknown-linux-gnu-"));
        assert_eq!(family(deps).as_deref(), Some("kiln-tool-Linux-x86_64-unknown-linux-gnu-deps-"));
        assert_eq!(family(newer_rustc), family(built));
        let prune = format!("kiln-prune-tool-Linux-{}", "ab".repeat(32));
        assert_eq!(family(&prune).as_deref(), Some("kiln-prune-tool-Linux-"));
        assert_eq!(family("kiln-tool-Linux-x86_64-unknown-linux-gnu-0f1e5974425d-short"), None);
    }

    #[test]
    fn only_a_pull_requests_merge_ref_names_it() {
        assert_eq!(pull_number("refs/pull/17/merge"), Some(17));
        assert_eq!(pull_number(&pull_ref(3)), Some(3));
        for other in ["refs/heads/main", "refs/pull//merge", "refs/pull/1x/merge", "refs/pull/17/head", "refs/tags/v1"]
        {
            assert_eq!(pull_number(other), None, "{other}");
        }
    }

    #[test]
    fn a_closed_pull_requests_caches_all_go_and_the_rest_keep_the_newest() {
        let key = |n: u8| format!("kiln-Linux-x86_64-kiln-v1-s1-x86_64-test-{n:032x}");
        let cache = |id: i64, key: String, git_ref: &str, day: u8| CacheEntry {
            id,
            key,
            git_ref: Some(git_ref.to_owned()),
            created_at: format!("2026-11-{day:02}T00:00:00+00:00"),
            size: 1,
        };
        let caches = [
            cache(1, key(1), "refs/heads/main", 1),
            cache(2, key(2), "refs/heads/main", 2),
            cache(3, key(3), "refs/pull/5/merge", 3),
            cache(4, "kiln-tool-abc".to_owned(), "refs/pull/5/merge", 3),
            cache(5, key(5), "refs/pull/6/merge", 1),
            cache(6, key(6), "refs/pull/6/merge", 2),
        ];
        let closed = BTreeSet::from([5]);
        let gone: Vec<(i64, Reason)> =
            doomed(&caches, &closed, 1).into_iter().map(|(cache, reason)| (cache.id, reason)).collect();
        assert_eq!(
            gone,
            [(1, Reason::Surplus), (3, Reason::ClosedPull(5)), (4, Reason::ClosedPull(5)), (5, Reason::Surplus)]
        );
    }
}
