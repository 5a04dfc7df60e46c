//! Build claims on a shared remote, so that jobs running at the same time build each closure
//! once: before building an entry the remote lacks, a pushing job creates
//! `kiln-v1/claims/<closure>.json` with a conditional put (`If-None-Match: *` on S3); the job
//! that created it builds, renews it while it builds, and removes it once the entry is pushed
//! (or its build failed). A job that finds a claim waits for the entry to appear, then fetches
//! it. A claim that stops changing for a lease, as the waiter's own clock measures it (clocks of
//! two machines need not agree), belongs to a job that died: the waiter takes it over, with a
//! conditional update where the backend has one, and builds.
//!
//! Remotes without conditional puts (HTTP) take no claims: each job builds what it lacks.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion, path::Path as ObjectPath};

use crate::{
    ClosureHash,
    remote::{
        Remote,
        manifest::{REMOTE_LAYOUT, manifest_path},
        transfer::exists,
    },
};

/// The object that claims the build of `closure`.
pub fn claim_path(closure: &ClosureHash) -> ObjectPath {
    ObjectPath::from(format!("{REMOTE_LAYOUT}/claims/{closure}.json"))
}

/// How claims are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTiming {
    /// How often a builder rewrites its claim.
    pub renew: Duration,
    /// How long a claim may stay unchanged before a waiter takes it over.
    pub lease: Duration,
    /// How often a waiter looks for the entry.
    pub poll: Duration,
    /// The longest a waiter waits for a live claim before it builds the entry itself.
    pub wait_limit: Duration,
}

impl ClaimTiming {
    /// Renewed every 10 s, taken over after 60 s unchanged, polled every second, waited for
    /// at most two hours.
    pub const DEFAULT: Self = Self {
        renew: Duration::from_secs(10),
        lease: Duration::from_secs(60),
        poll: Duration::from_secs(1),
        wait_limit: Duration::from_secs(2 * 60 * 60),
    };
}

impl Default for ClaimTiming {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a claim object holds (JSON).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ClaimBody {
    /// Who builds: host, process id and a random tag.
    pub owner: String,
    /// The closure.
    pub closure: String,
    /// When it was claimed (Unix seconds, the owner's clock).
    pub claimed: u64,
    /// Until when the owner promises to renew it (Unix seconds, the owner's clock; informative:
    /// waiters judge a claim by whether it changes).
    pub expires: u64,
    /// How often it was renewed; each renewal changes the object.
    pub renewals: u64,
}

impl ClaimBody {
    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// This process as a claim owner: `pid PID on HOST (TAG)`.
pub(crate) fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let mut tag = [0u8; 4];
    let _ = getrandom::fill(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("pid {} on {host} ({tag})", std::process::id())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a remote's backend takes conditional puts; cleared the first time it says no.
#[derive(Debug)]
pub(crate) struct ClaimSupport {
    create: AtomicBool,
    update: AtomicBool,
}

impl Default for ClaimSupport {
    fn default() -> Self {
        Self { create: AtomicBool::new(true), update: AtomicBool::new(true) }
    }
}

impl ClaimSupport {
    pub(crate) fn supported(&self) -> bool {
        self.create.load(Ordering::Relaxed)
    }
}

/// A claim this process holds.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) body: ClaimBody,
    /// The version it last wrote (for a conditional renewal).
    pub(crate) version: UpdateVersion,
}

/// How [`claim_or_wait`] ended.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// This process holds the claim and builds.
    Mine(Held),
    /// The entry is on the remote now: fetch it.
    EntryThere,
    /// The backend takes no conditional puts: build without a claim.
    Unsupported,
    /// Waited `wait_limit` for a claim that stayed live: build without a claim.
    WaitedTooLong {
        /// Who held it.
        owner: String,
    },
}

/// Something a claim did that the user should hear of.
#[derive(Debug)]
pub(crate) enum ClaimEvent {
    /// Another job builds the entry; this one waits.
    Waiting { owner: String },
    /// A claim stopped changing; this job took it over.
    TookOver { owner: String, silent: Duration },
}

/// Claims `closure` on `remote`, or waits for whoever claimed it; `event` hears of waits and
/// takeovers.
pub(crate) async fn claim_or_wait(
    remote: &Remote,
    closure: &ClosureHash,
    owner: &str,
    timing: ClaimTiming,
    event: &(dyn Fn(ClaimEvent) + Send + Sync),
) -> Result<Claimed, object_store::Error> {
    let path = claim_path(closure);
    let started = Instant::now();
    let mut said_waiting = false;
    loop {
        let body = ClaimBody {
            owner: owner.to_owned(),
            closure: closure.to_string(),
            claimed: unix_now(),
            expires: unix_now() + timing.lease.as_secs(),
            renewals: 0,
        };
        match put(remote, &path, &body, PutMode::Create).await {
            Ok(version) => {
                // The entry may have been pushed (and its claim removed) since this process
                // looked for it.
                if exists(remote, &manifest_path(closure)).await? {
                    release(remote, closure, owner).await;
                    return Ok(Claimed::EntryThere);
                }
                return Ok(Claimed::Mine(Held { body, version }));
            }
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(object_store::Error::NotImplemented { .. }) => {
                remote.claims.create.store(false, Ordering::Relaxed);
                return Ok(Claimed::Unsupported);
            }
            Err(error) => return Err(error),
        }
        // Someone holds it: watch it until the entry appears, the claim goes (a failed build:
        // claim again), or it stops changing (a dead builder: take it over).
        let mut seen: Option<(Bytes, Option<String>)> = None;
        let mut unchanged_since = Instant::now();
        loop {
            if exists(remote, &manifest_path(closure)).await? {
                return Ok(Claimed::EntryThere);
            }
            let current = {
                let _slot = remote.slots.acquire().await;
                match remote.store.get(&path).await {
                    Ok(found) => {
                        let e_tag = found.meta.e_tag.clone();
                        let version = found.meta.version.clone();
                        Some((found.bytes().await?, e_tag, version))
                    }
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(error) => return Err(error),
                }
            };
            let Some((bytes, e_tag, version)) = current else { break };
            let holder = serde_json::from_slice::<ClaimBody>(&bytes)
                .map(|b| b.owner)
                .unwrap_or_else(|_| "an unreadable claim".to_owned());
            if !said_waiting {
                said_waiting = true;
                event(ClaimEvent::Waiting { owner: holder.clone() });
            }
            let key = (bytes, e_tag.clone());
            if seen.as_ref() != Some(&key) {
                seen = Some(key);
                unchanged_since = Instant::now();
            } else if unchanged_since.elapsed() >= timing.lease {
                if let Some(held) =
                    take_over(remote, &path, closure, owner, timing, UpdateVersion { e_tag, version }).await?
                {
                    event(ClaimEvent::TookOver { owner: holder, silent: unchanged_since.elapsed() });
                    if exists(remote, &manifest_path(closure)).await? {
                        release(remote, closure, owner).await;
                        return Ok(Claimed::EntryThere);
                    }
                    return Ok(Claimed::Mine(held));
                }
                // Another waiter took it over first: watch the new claim.
                seen = None;
            }
            if started.elapsed() >= timing.wait_limit {
                return Ok(Claimed::WaitedTooLong { owner: holder });
            }
            tokio::time::sleep(timing.poll).await;
        }
    }
}

/// Replaces a stale claim with this process's: a conditional update on the version seen
/// where the backend has one (only one waiter wins), else delete and create (two waiters may
/// then both build: correct, only slower). `None` when another waiter won.
async fn take_over(
    remote: &Remote,
    path: &ObjectPath,
    closure: &ClosureHash,
    owner: &str,
    timing: ClaimTiming,
    seen: UpdateVersion,
) -> Result<Option<Held>, object_store::Error> {
    let body = ClaimBody {
        owner: owner.to_owned(),
        closure: closure.to_string(),
        claimed: unix_now(),
        expires: unix_now() + timing.lease.as_secs(),
        renewals: 0,
    };
    if remote.claims.update.load(Ordering::Relaxed) && seen.e_tag.is_some() {
        match put(remote, path, &body, PutMode::Update(seen)).await {
            Ok(version) => return Ok(Some(Held { body, version })),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => return Ok(None),
            Err(object_store::Error::NotImplemented { .. }) => remote.claims.update.store(false, Ordering::Relaxed),
            Err(error) => return Err(error),
        }
    }
    {
        let _slot = remote.slots.acquire().await;
        match remote.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    match put(remote, path, &body, PutMode::Create).await {
        Ok(version) => Ok(Some(Held { body, version })),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Rewrites a held claim (the object changes, so waiters see its builder is alive); `false`
/// when the claim is no longer this process's (another job took it over).
pub(crate) async fn renew(remote: &Remote, closure: &ClosureHash, held: &mut Held, lease: Duration) -> bool {
    held.body.renewals += 1;
    held.body.expires = unix_now() + lease.as_secs();
    let path = claim_path(closure);
    let conditional = remote.claims.update.load(Ordering::Relaxed) && held.version.e_tag.is_some();
    let mode = if conditional { PutMode::Update(held.version.clone()) } else { PutMode::Overwrite };
    match put(remote, &path, &held.body, mode).await {
        Ok(version) => {
            held.version = version;
            true
        }
        Err(object_store::Error::Precondition { .. }) => false,
        Err(object_store::Error::NotImplemented { .. }) => {
            remote.claims.update.store(false, Ordering::Relaxed);
            true
        }
        // A failed renewal is retried at the next one; the lease allows several.
        Err(_) => true,
    }
}

/// Removes `closure`'s claim if `owner` still holds it.
pub(crate) async fn release(remote: &Remote, closure: &ClosureHash, owner: &str) {
    let path = claim_path(closure);
    let _slot = remote.slots.acquire().await;
    let ours = match remote.store.get(&path).await {
        Ok(found) => found
            .bytes()
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ClaimBody>(&bytes).ok())
            .is_some_and(|body| body.owner == owner),
        Err(_) => false,
    };
    if ours {
        let _ = remote.store.delete(&path).await;
    }
}

async fn put(
    remote: &Remote,
    path: &ObjectPath,
    body: &ClaimBody,
    mode: PutMode,
) -> Result<UpdateVersion, object_store::Error> {
    let _slot = remote.slots.acquire().await;
    let result = remote.store.put_opts(path, PutPayload::from(body.bytes()), PutOptions::from(mode)).await?;
    Ok(UpdateVersion { e_tag: result.e_tag, version: result.version })
}
