//! Remote stores: S3-compatible object storage, HTTP(S) servers and directories that hold
//! signed entries for many machines.
//!
//! The store asks [`Remotes`] (its [`Substituter`](crate::Substituter)) for an entry it lacks
//! before building it, and hands it every entry a run settles, which it pushes in the
//! background when pushing is on. A remote that fails to answer costs one notice and is left
//! alone for the rest of the process; an entry that fails verification costs one notice and
//! is built locally. The layout is in [`manifest`].
//!
//! Jobs that share a remote at the same time build each closure once: before building an
//! entry it lacks, a pushing job claims it on the remote, and the others wait for the entry
//! (see [`claim`]).

mod claim;
mod manifest;
mod open;
mod signing;
mod transfer;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, stream};
use object_store::ObjectStore;

pub use claim::{ClaimBody, ClaimTiming, claim_path};
pub use manifest::{Blob, MAX_MANIFEST_BYTES, Manifest, ManifestError, ManifestFile, ManifestKind, REMOTE_LAYOUT};
pub use open::OpenError;
pub use signing::{KeyError, PublicKey, SecretKey, Signature};
pub use transfer::{PushMode, PushTally};

use crate::{ClosureHash, Entry, store::Substitution};

/// How long one request to a remote may take, unless the remote says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many requests kiln has in flight to one remote at once.
pub const CONCURRENT_REQUESTS: usize = 8;

/// How much memory (MiB) the blobs being pushed to one remote may hold at once; a single
/// larger file is pushed alone.
pub const PUSH_MEMORY_MIB: u32 = 512;

/// One remote as Kiln.toml (or `KILN_REMOTES`) names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    /// `s3://bucket/prefix`, `http(s)://host/path` or `file:///path`.
    pub url: String,
    /// Push every entry a run uses to this remote.
    pub push: bool,
    /// For S3: the endpoint (MinIO, R2, a local server); default: AWS's, or `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// For S3: the region; default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// How long one request may take.
    pub timeout: Duration,
}

impl RemoteSpec {
    /// A remote at `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), push: false, endpoint: None, region: None, timeout: DEFAULT_TIMEOUT }
    }
}

/// Something about remotes that the user should hear (this crate never prints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteNotice {
    /// A remote failed to answer; it is not asked again in this process.
    Unreachable {
        /// The remote's URL.
        remote: String,
        /// What failed.
        message: String,
    },
    /// An entry on a remote failed verification and was not used.
    Refused {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// Why.
        reason: String,
    },
    /// An entry on a remote is unsigned or signed by no trusted key, and was not used.
    Untrusted {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// Who signed it, if anyone.
        reason: String,
    },
    /// A remote answered, but holds no kiln store (no layout marker): a wrong bucket, prefix
    /// or endpoint, or nothing pushed yet. It is not asked again in this process.
    NotAStore {
        /// The remote's URL.
        remote: String,
    },
    /// An entry fetched from a remote could not be written here.
    WriteFailed {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// What failed.
        message: String,
    },
    /// Another job claimed the build of an entry this one needs: this one waits for it.
    Waiting {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// Who claimed it.
        owner: String,
    },
    /// A claim stopped changing (its builder died): this job took it over and builds.
    TookOver {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// Who had claimed it.
        owner: String,
        /// How long it had not changed.
        silent: Duration,
    },
    /// This job waited as long as it may for an entry another job builds, and builds it too.
    WaitedTooLong {
        /// The remote's URL.
        remote: String,
        /// The entry.
        closure: ClosureHash,
        /// Who claimed it.
        owner: String,
    },
    /// Pushing an entry failed.
    PushFailed {
        /// The remote's URL.
        remote: String,
        /// The entry's name.
        name: String,
        /// What failed.
        message: String,
    },
}

impl fmt::Display for RemoteNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { remote, message } => {
                write!(f, "remote {remote} failed ({message}); kiln goes on without it for the rest of this run")
            }
            Self::Refused { remote, closure, reason } => write!(
                f,
                "refused entry {} from {remote}: {reason}; building it locally (whoever pushed it can mend the \
                 remote with `cargo xtask store push --repair`)",
                closure.short()
            ),
            Self::Untrusted { remote, closure, reason } => write!(
                f,
                "refused entry {} from {remote}: {reason}; building it locally (if you trust its signer, add \
                 the signer's public key to `[store] trusted-keys`)",
                closure.short()
            ),
            Self::NotAStore { remote } => write!(
                f,
                "remote {remote} holds no kiln store (no `{REMOTE_LAYOUT}/layout.json`): check its bucket, prefix \
                 and endpoint, or push to it first; kiln goes on without it"
            ),
            Self::WriteFailed { remote, closure, message } => {
                write!(
                    f,
                    "could not write entry {} from {remote} here: {message}; building it locally",
                    closure.short()
                )
            }
            Self::Waiting { remote, closure, owner } => {
                write!(f, "for entry {}, which {owner} builds (its claim on {remote})", closure.short())
            }
            Self::TookOver { remote, closure, owner, silent } => write!(
                f,
                "the claim of {owner} on entry {} at {remote} has not changed for {}s (that job died?); building \
                 it here",
                closure.short(),
                silent.as_secs()
            ),
            Self::WaitedTooLong { remote, closure, owner } => write!(
                f,
                "waited too long for entry {} ({owner} claimed it on {remote}); building it here too",
                closure.short()
            ),
            Self::PushFailed { remote, name, message } => write!(f, "could not push {name} to {remote}: {message}"),
        }
    }
}

/// Where notices go.
pub type NoticeSink = Arc<dyn Fn(RemoteNotice) + Send + Sync>;

/// What a [`Remotes`] is made of.
pub struct RemotesConfig {
    /// The remotes, in the order they are asked.
    pub specs: Vec<RemoteSpec>,
    /// Keys whose signatures are accepted.
    pub trusted: Vec<PublicKey>,
    /// The key that signs pushed entries (needed to push).
    pub signing: Option<SecretKey>,
    /// Push to every remote, not only those marked `push`.
    pub push_all: bool,
    /// Where notices go.
    pub notice: NoticeSink,
}

/// One opened remote.
pub(crate) struct Remote {
    pub(crate) url: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    push: bool,
    down: AtomicBool,
    /// Blobs known to be on the remote (seen or uploaded by this process).
    pub(crate) present: Mutex<HashSet<[u8; 32]>>,
    /// Bounds the requests in flight.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// Bounds the memory of blobs being pushed, in MiB.
    pub(crate) memory: Arc<tokio::sync::Semaphore>,
    /// Bounds the blobs being compressed at once, across all remotes: pushes run in the
    /// background of builds and boots, and must leave them most of the CPUs.
    pub(crate) compressors: Arc<tokio::sync::Semaphore>,
    /// Whether the layout marker is known to be there (pushes write it once).
    pub(crate) layout_written: tokio::sync::OnceCell<()>,
    /// Whether the layout marker was found (readers check once).
    layout_found: std::sync::OnceLock<bool>,
    /// Whether the backend takes the conditional puts claims need.
    pub(crate) claims: claim::ClaimSupport,
}

impl Remote {
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// The remotes of a run, with the runtime their requests run on.
pub struct Remotes {
    remotes: Vec<Arc<Remote>>,
    trusted: Arc<Vec<PublicKey>>,
    signing: Option<Arc<SecretKey>>,
    push_all: bool,
    notice: NoticeSink,
    runtime: Option<tokio::runtime::Runtime>,
    pushes: Mutex<Vec<(String, tokio::task::JoinHandle<PushTally>)>>,
    queued: Mutex<HashSet<ClosureHash>>,
    background_off: AtomicBool,
    /// This process as the owner of build claims.
    owner: Arc<String>,
    claim_timing: ClaimTiming,
    /// The claims this process holds, with the task renewing each.
    held: Arc<Mutex<HashMap<ClosureHash, HeldClaim>>>,
}

/// A claim this process holds: where, and the task that renews it.
struct HeldClaim {
    remote: Arc<Remote>,
    renewer: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Remotes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remotes")
            .field("remotes", &self.remotes.iter().map(|r| &r.url).collect::<Vec<_>>())
            .field("trusted", &self.trusted)
            .field("push_all", &self.push_all)
            .finish_non_exhaustive()
    }
}

impl Remotes {
    /// Opens every remote (nothing is sent yet).
    pub fn open(config: RemotesConfig) -> Result<Self, OpenError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-remote")
            .enable_all()
            .build()
            .map_err(|e| OpenError::Runtime(e.to_string()))?;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let compressors = Arc::new(tokio::sync::Semaphore::new((cpus / 2).max(1)));
        // A remote that cannot even be opened (a missing directory, a backend that refuses its
        // settings) is one notice, like a remote that does not answer.
        let remotes = config
            .specs
            .iter()
            .filter_map(|spec| match open::object_store(spec, config.push_all || spec.push) {
                Ok(store) => Some((spec, store)),
                Err(error) => {
                    (config.notice)(RemoteNotice::Unreachable { remote: spec.url.clone(), message: error.to_string() });
                    None
                }
            })
            .map(|(spec, store)| {
                Arc::new(Remote {
                    url: spec.url.clone(),
                    store,
                    push: spec.push,
                    down: AtomicBool::new(false),
                    present: Mutex::new(HashSet::new()),
                    slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REQUESTS)),
                    memory: Arc::new(tokio::sync::Semaphore::new(PUSH_MEMORY_MIB as usize)),
                    compressors: compressors.clone(),
                    layout_written: tokio::sync::OnceCell::new(),
                    layout_found: std::sync::OnceLock::new(),
                    claims: claim::ClaimSupport::default(),
                })
            })
            .collect();
        Ok(Self {
            remotes,
            trusted: Arc::new(config.trusted),
            signing: config.signing.map(Arc::new),
            push_all: config.push_all,
            notice: config.notice,
            runtime: Some(runtime),
            pushes: Mutex::new(Vec::new()),
            queued: Mutex::new(HashSet::new()),
            background_off: AtomicBool::new(false),
            owner: Arc::new(claim::owner_name()),
            claim_timing: ClaimTiming::DEFAULT,
            held: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The same remotes with other claim timings (tests use short leases).
    pub fn with_claim_timing(mut self, timing: ClaimTiming) -> Self {
        self.claim_timing = timing;
        self
    }

    /// This process's name in the build claims it takes.
    pub fn claim_owner(&self) -> &str {
        &self.owner
    }

    /// The remotes' URLs, in order.
    pub fn urls(&self) -> Vec<&str> {
        self.remotes.iter().map(|r| r.url.as_str()).collect()
    }

    /// Whether the remote at `url` is one of these (a trailing `/` aside).
    pub fn has(&self, url: &str) -> bool {
        self.remotes.iter().any(|remote| same_url(&remote.url, url))
    }

    /// Whether entries are pushed to at least one remote.
    pub fn pushing(&self) -> bool {
        self.remotes.iter().any(|r| self.pushes_to(r))
    }

    /// Whether the entries a run uses go to `remote` (`--push`, or `push = true` on it).
    fn pushes_to(&self, remote: &Remote) -> bool {
        self.push_all || remote.push
    }

    /// Runs `future` to its end on the remotes' runtime, from any thread (also from inside
    /// another runtime: it runs on a thread of its own). A panic inside a backend becomes an
    /// error: a remote must never take the build down.
    fn block_on<F>(&self, future: F) -> Result<F::Output, String>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(runtime) = &self.runtime else { return Err("the remotes were closed".to_owned()) };
        std::thread::scope(|scope| {
            scope.spawn(|| runtime.block_on(future)).join().map_err(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                format!("the client failed: {message}")
            })
        })
    }

    fn report_message(&self, remote: &Remote, message: String) {
        if !remote.down.swap(true, Ordering::Relaxed) {
            (self.notice)(RemoteNotice::Unreachable { remote: remote.url.clone(), message });
        }
    }

    /// Whether `remote` holds a kiln store; checked once, a warning when it does not.
    fn readable(&self, remote: &Remote) -> bool {
        if remote.is_down() {
            return false;
        }
        *remote.layout_found.get_or_init(|| match self.block_on(transfer::has_layout(remote)) {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                // Not read from again; still pushed to, which starts the store there (and
                // then there is nothing to warn about).
                if !(self.signing.is_some() && self.pushes_to(remote)) {
                    (self.notice)(RemoteNotice::NotAStore { remote: remote.url.clone() });
                }
                false
            }
            Ok(Err(error)) => {
                self.report(remote, &error);
                false
            }
            Err(message) => {
                self.report_message(remote, message);
                false
            }
        })
    }

    fn report(&self, remote: &Remote, error: &object_store::Error) {
        self.report_message(remote, transfer::describe(error));
    }

    /// Looks `closure` up in each remote in order; the first verified copy is written into
    /// `out` (an empty directory).
    pub fn substitute(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        if self.trusted.is_empty() {
            return None;
        }
        self.remotes.iter().filter(|r| self.readable(r)).find_map(|remote| self.fetch_from(remote, closure, out))
    }

    /// Fetches `closure` from `remote` into `out`; a failure is a notice and leaves `out` empty.
    fn fetch_from(&self, remote: &Remote, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        match self.block_on(transfer::fetch(remote, closure, &self.trusted, out)) {
            Ok(Ok(Some(found))) => return Some(found),
            Ok(Ok(None)) => {}
            Ok(Err(transfer::FetchError::Remote(error))) => self.report(remote, &error),
            Ok(Err(transfer::FetchError::Refused(reason))) => {
                (self.notice)(RemoteNotice::Refused { remote: remote.url.clone(), closure: *closure, reason })
            }
            Ok(Err(transfer::FetchError::Untrusted(reason))) => {
                (self.notice)(RemoteNotice::Untrusted { remote: remote.url.clone(), closure: *closure, reason })
            }
            Ok(Err(transfer::FetchError::Local(message))) => {
                (self.notice)(RemoteNotice::WriteFailed { remote: remote.url.clone(), closure: *closure, message })
            }
            Err(message) => self.report_message(remote, message),
        }
        transfer::empty_dir(out);
        None
    }

    /// The remote build claims go to: the first one this process pushes to (with a key to
    /// sign with, background pushes on) whose backend takes conditional puts.
    fn claim_remote(&self) -> Option<&Arc<Remote>> {
        if self.signing.is_none() || self.background_off.load(Ordering::Relaxed) {
            return None;
        }
        self.remotes.iter().find(|r| self.pushes_to(r) && !r.is_down() && r.claims.supported())
    }

    /// [`Remotes::substitute`], for a caller that builds the entry when no remote has it: when
    /// another job claimed its build on the claim remote, waits for that job's entry and fetches
    /// it; else claims the build for this process, until the entry is pushed or
    /// [`Remotes::abandon`] is called.
    pub fn substitute_or_claim(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        if let Some(found) = self.substitute(closure, out) {
            return Some(found);
        }
        let remote = self.claim_remote()?;
        let url = remote.url.clone();
        let notice = self.notice.clone();
        let event = move |event: claim::ClaimEvent| {
            notice(match event {
                claim::ClaimEvent::Waiting { owner } => {
                    RemoteNotice::Waiting { remote: url.clone(), closure: *closure, owner }
                }
                claim::ClaimEvent::TookOver { owner, silent } => {
                    RemoteNotice::TookOver { remote: url.clone(), closure: *closure, owner, silent }
                }
            })
        };
        let timing = self.claim_timing;
        match self.block_on(claim::claim_or_wait(remote, closure, &self.owner, timing, &event)) {
            Ok(Ok(claim::Claimed::Mine(held))) => {
                self.hold(remote, closure, held);
                None
            }
            // Fetched from this remote whatever its layout marker said when first asked: the
            // marker may have been written since (by the job that built the entry).
            Ok(Ok(claim::Claimed::EntryThere)) => self.fetch_from(remote, closure, out),
            Ok(Ok(claim::Claimed::Unsupported)) => None,
            Ok(Ok(claim::Claimed::WaitedTooLong { owner })) => {
                (self.notice)(RemoteNotice::WaitedTooLong { remote: remote.url.clone(), closure: *closure, owner });
                None
            }
            Ok(Err(error)) => {
                self.report(remote, &error);
                None
            }
            Err(message) => {
                self.report_message(remote, message);
                None
            }
        }
    }

    /// Records a claim this process took, and starts renewing it.
    fn hold(&self, remote: &Arc<Remote>, closure: &ClosureHash, mut held: claim::Held) {
        let Some(runtime) = &self.runtime else { return };
        let (task_remote, closure_copy, lease, renew) =
            (remote.clone(), *closure, self.claim_timing.lease, self.claim_timing.renew);
        let renewer = runtime.spawn(async move {
            loop {
                tokio::time::sleep(renew).await;
                if !claim::renew(&task_remote, &closure_copy, &mut held, lease).await {
                    return;
                }
            }
        });
        if let Ok(mut claims) = self.held.lock() {
            claims.insert(*closure, HeldClaim { remote: remote.clone(), renewer });
        }
    }

    /// Gives up the claim on `closure` this process holds, if any (its build failed): a job
    /// waiting for it builds it then.
    pub fn abandon(&self, closure: &ClosureHash) {
        let Some(held) = self.held.lock().ok().and_then(|mut held| held.remove(closure)) else { return };
        held.renewer.abort();
        let owner = self.owner.clone();
        let _ = self.block_on(async move { claim::release(&held.remote, closure, &owner).await });
    }

    /// Stops background pushes for the rest of the process (commands that run programs, not
    /// builds, such as cargo's runner, should not wait for uploads).
    pub fn stop_background_pushes(&self) {
        self.background_off.store(true, Ordering::Relaxed);
    }

    /// Starts pushing `entry` in the background to every remote it goes to (once per
    /// process); [`Remotes::finish`] waits for it.
    pub fn push_in_background(&self, entry: &Entry) {
        let Some(key) = &self.signing else { return };
        if self.background_off.load(Ordering::Relaxed)
            || !self.pushing()
            || !self.queued.lock().is_ok_and(|mut queued| queued.insert(entry.closure))
        {
            return;
        }
        let Some(runtime) = &self.runtime else { return };
        for remote in self.remotes.iter().filter(|r| self.pushes_to(r)) {
            let task_url = remote.url.clone();
            let (remote, key, entry, notice) = (remote.clone(), key.clone(), entry.clone(), self.notice.clone());
            let (held, owner) = (self.held.clone(), self.owner.clone());
            let task = runtime.spawn(async move {
                let tally = transfer::push_noting(&remote, &entry, &key, &notice, PushMode::Missing).await;
                // The entry is there (or its push failed): a claim on this remote has done its work.
                let mine = held.lock().ok().and_then(|mut held| {
                    let on_this = held.get(&entry.closure).is_some_and(|h| Arc::ptr_eq(&h.remote, &remote));
                    if on_this { held.remove(&entry.closure) } else { None }
                });
                if let Some(mine) = mine {
                    mine.renewer.abort();
                    claim::release(&remote, &entry.closure, &owner).await;
                }
                tally
            });
            if let Ok(mut pushes) = self.pushes.lock() {
                pushes.push((task_url, task));
            }
        }
    }

    /// Pushes `entries` now to every remote, or to the one whose URL is `only`. Returns one
    /// tally per remote.
    pub fn push_to(&self, entries: &[Entry], only: Option<&str>, mode: PushMode) -> Vec<(String, PushTally)> {
        let Some(key) = &self.signing else { return Vec::new() };
        let targets: Vec<_> = self.remotes.iter().filter(|r| only.is_none_or(|url| same_url(&r.url, url))).collect();
        let pushed = self.block_on(async {
            let mut tallies = Vec::new();
            for remote in targets {
                let mut tally = PushTally::default();
                // Collected first: a lazily mapped stream of borrowing futures is not `Send`
                // for every lifetime, as the runtime's thread requires.
                let futures: Vec<_> =
                    entries.iter().map(|entry| transfer::push_noting(remote, entry, key, &self.notice, mode)).collect();
                let mut pushes = stream::iter(futures).buffer_unordered(CONCURRENT_REQUESTS);
                while let Some(one) = pushes.next().await {
                    tally.add(&one);
                }
                tallies.push((remote.url.clone(), tally));
            }
            tallies
        });
        pushed.unwrap_or_else(|message| {
            (self.notice)(RemoteNotice::Unreachable { remote: "the remotes".to_owned(), message });
            Vec::new()
        })
    }

    /// Waits for the background pushes, and gives up the claims of entries never pushed;
    /// returns what the pushes did per remote, in URL order.
    pub fn finish(&self) -> Vec<(String, PushTally)> {
        let tasks = self.pushes.lock().map(|mut pushes| std::mem::take(&mut *pushes)).unwrap_or_default();
        let finished = self.block_on(async {
            let mut tallies = std::collections::BTreeMap::<String, PushTally>::new();
            for (url, task) in tasks {
                if let Ok(one) = task.await {
                    tallies.entry(url).or_default().add(&one);
                }
            }
            let left: Vec<_> = self.held.lock().map(|mut held| held.drain().collect()).unwrap_or_default();
            for (closure, held) in left {
                held.renewer.abort();
                claim::release(&held.remote, &closure, &self.owner).await;
            }
            tallies.into_iter().collect()
        });
        finished.unwrap_or_default()
    }
}

/// Whether two remote URLs name the same place (a trailing `/` aside).
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl crate::Substituter for Remotes {
    fn substitute(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        Remotes::substitute(self, closure, out)
    }

    fn substitute_or_claim(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        Remotes::substitute_or_claim(self, closure, out)
    }

    fn abandoned(&self, closure: &ClosureHash) {
        self.abandon(closure);
    }

    fn settled(&self, entry: &Entry) {
        self.push_in_background(entry);
    }
}

impl Drop for Remotes {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;
    use crate::{BuildOutcome, Derivation, Store};

    fn remotes(
        dir: &Path,
        trusted: Vec<PublicKey>,
        signing: Option<SecretKey>,
    ) -> (Arc<Remotes>, Arc<Mutex<Vec<RemoteNotice>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let remotes = Remotes::open(RemotesConfig {
            specs: vec![RemoteSpec::new(format!("file://{}", dir.display()))],
            trusted,
            signing,
            push_all: true,
            notice: Arc::new(move |notice| sink.lock().expect("notices").push(notice)),
        })
        .expect("open");
        (Arc::new(remotes), notices)
    }

    #[test]
    fn entries_round_trip_through_a_file_remote_and_untrusted_ones_are_built() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote_dir = dir.path().join("remote");
        let key = SecretKey::generate("ci-1").expect("key");
        let public = key.public();
        let store_a = Store::open(dir.path().join("a")).expect("store a");
        let mut drv = Derivation::new("test");
        drv.setting("tag", "round-trip");
        let (entry, _) = store_a
            .build(
                &drv,
                "thing",
                || {},
                |out| {
                    fs::create_dir_all(out.join("bin"))?;
                    fs::create_dir_all(out.join("empty"))?;
                    fs::write(out.join("bin/tool"), b"#!/bin/sh\necho hi\n")?;
                    fs::set_permissions(out.join("bin/tool"), fs::Permissions::from_mode(0o755))?;
                    fs::write(out.join("a.txt"), b"same")?;
                    fs::write(out.join("b.txt"), b"same")?;
                    std::os::unix::fs::symlink("bin/tool", out.join("current"))?;
                    Ok(())
                },
            )
            .expect("build");

        let (pusher, notices) = remotes(&remote_dir, vec![public.clone()], Some(key));
        let tally = pusher.push_to(std::slice::from_ref(&entry), None, PushMode::Missing);
        assert_eq!(tally[0].1.entries_pushed, 1);
        assert_eq!(tally[0].1.blobs_uploaded, 2, "identical files share a blob");
        assert_eq!(pusher.push_to(std::slice::from_ref(&entry), None, PushMode::Missing)[0].1.entries_present, 1);
        assert!(notices.lock().expect("notices").is_empty());

        let (puller, _) = remotes(&remote_dir, vec![public], None);
        let store_b = Store::open(dir.path().join("b")).expect("store b").with_substituter(puller);
        let (got, outcome) = store_b.build(&drv, "thing", || {}, |_| Err("must not build".into())).expect("substitute");
        assert!(matches!(outcome, BuildOutcome::Substituted { .. }), "{outcome:?}");
        assert_eq!(got.meta.output_hash, entry.meta.output_hash);
        assert_eq!(store_b.check(&got).expect("check"), None);
        let tool = got.out_dir().join("bin/tool");
        assert_ne!(fs::metadata(&tool).expect("tool").permissions().mode() & 0o100, 0, "still executable");
        assert_eq!(fs::read_link(got.out_dir().join("current")).expect("link"), Path::new("bin/tool"));
        assert!(got.out_dir().join("empty").is_dir());

        let stranger = SecretKey::generate("other").expect("key").public();
        let (distrusting, notices) = remotes(&remote_dir, vec![stranger], None);
        let store_c = Store::open(dir.path().join("c")).expect("store c").with_substituter(distrusting);
        let (_, outcome) =
            store_c.build(&drv, "thing", || {}, |out| Ok(fs::write(out.join("local"), "x")?)).expect("build");
        assert!(matches!(outcome, BuildOutcome::Built { .. }));
        let notices = notices.lock().expect("notices");
        assert!(
            matches!(&notices[..], [RemoteNotice::Untrusted { reason, .. }] if reason.contains("signed only by `ci-1`")),
            "{notices:?}"
        );
        assert_eq!(fs::read_dir(dir.path().join("c/tmp")).expect("tmp").count(), 0, "nothing left behind");
    }

    /// Claim timings short enough for a unit test.
    const QUICK: ClaimTiming = ClaimTiming {
        renew: Duration::from_millis(100),
        lease: Duration::from_millis(600),
        poll: Duration::from_millis(50),
        wait_limit: Duration::from_secs(30),
    };

    fn claiming(dir: &Path, key: &SecretKey) -> (Arc<Remotes>, Arc<Mutex<Vec<RemoteNotice>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let remotes = Remotes::open(RemotesConfig {
            specs: vec![RemoteSpec::new(format!("file://{}", dir.display()))],
            trusted: vec![key.public()],
            signing: Some(SecretKey::parse(&key.to_secret_text()).expect("key")),
            push_all: true,
            notice: Arc::new(move |notice| sink.lock().expect("notices").push(notice)),
        })
        .expect("open")
        .with_claim_timing(QUICK);
        (Arc::new(remotes), notices)
    }

    fn derivation(tag: &str) -> Derivation {
        let mut drv = Derivation::new("test");
        drv.setting("tag", tag);
        drv
    }

    #[test]
    fn two_machines_building_one_closure_at_once_build_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote_dir = dir.path().join("remote");
        let key = SecretKey::generate("ci").expect("key");
        let builds = std::sync::atomic::AtomicUsize::new(0);
        let drv = derivation("claimed");
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let machines: Vec<_> = (0..2)
                .map(|n| {
                    let (remotes, notices) = claiming(&remote_dir, &key);
                    let store =
                        Store::open(dir.path().join(format!("m{n}"))).expect("store").with_substituter(remotes.clone());
                    let (drv, builds) = (&drv, &builds);
                    scope.spawn(move || {
                        // The second machine asks while the first builds.
                        std::thread::sleep(Duration::from_millis(200 * n));
                        let (entry, outcome) = store
                            .build(
                                drv,
                                "thing",
                                || {},
                                |out| {
                                    builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    std::thread::sleep(Duration::from_millis(800));
                                    Ok(fs::write(out.join("file"), "made once")?)
                                },
                            )
                            .expect("build");
                        remotes.finish();
                        assert_eq!(fs::read_to_string(entry.out_dir().join("file")).expect("file"), "made once");
                        (outcome, notices.lock().expect("notices").clone())
                    })
                })
                .collect();
            machines.into_iter().map(|m| m.join().expect("machine")).collect()
        });
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1, "{outcomes:?}");
        assert!(matches!(outcomes[0].0, BuildOutcome::Built { .. }), "{outcomes:?}");
        assert!(matches!(outcomes[1].0, BuildOutcome::Substituted { .. }), "{outcomes:?}");
        assert!(
            matches!(&outcomes[1].1[..], [RemoteNotice::Waiting { owner, .. }] if owner.contains(&format!("pid {}", std::process::id()))),
            "{outcomes:?}"
        );
        let claim = remote_dir.join(claim_path(&drv.closure_hash()).to_string());
        assert!(!claim.exists(), "the claim is gone once the entry is pushed");
    }

    #[test]
    fn a_claim_that_stops_changing_is_taken_over_and_a_failed_build_hands_its_claim_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote_dir = dir.path().join("remote");
        let key = SecretKey::generate("ci").expect("key");

        // A claim left by a job that died: never renewed.
        let drv = derivation("orphaned");
        let claim = remote_dir.join(claim_path(&drv.closure_hash()).to_string());
        fs::create_dir_all(claim.parent().expect("parent")).expect("mkdir");
        let dead = ClaimBody {
            owner: "runner-7 pid 1 dead".to_owned(),
            closure: drv.closure_hash().to_string(),
            claimed: 1,
            expires: 61,
            renewals: 0,
        };
        fs::write(&claim, serde_json::to_vec(&dead).expect("json")).expect("write claim");
        let (remotes, notices) = claiming(&remote_dir, &key);
        let store = Store::open(dir.path().join("a")).expect("store").with_substituter(remotes.clone());
        let started = std::time::Instant::now();
        let (_, outcome) = store.build(&drv, "thing", || {}, |out| Ok(fs::write(out.join("f"), "x")?)).expect("build");
        assert!(matches!(outcome, BuildOutcome::Built { .. }), "{outcome:?}");
        assert!(started.elapsed() >= QUICK.lease, "waited a lease first: {:?}", started.elapsed());
        remotes.finish();
        let notices = notices.lock().expect("notices").clone();
        assert!(
            matches!(&notices[..], [RemoteNotice::Waiting { .. }, RemoteNotice::TookOver { owner, .. }] if owner == "runner-7 pid 1 dead"),
            "{notices:?}"
        );
        assert!(!claim.exists(), "released after the push");

        // A build that fails gives its claim up at once: the waiting machine builds.
        let drv = derivation("fails first");
        let builds = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<_> = std::thread::scope(|scope| {
            let machines: Vec<_> = (0..2u64)
                .map(|n| {
                    let (remotes, _) = claiming(&remote_dir, &key);
                    let store =
                        Store::open(dir.path().join(format!("f{n}"))).expect("store").with_substituter(remotes.clone());
                    let (drv, builds) = (&drv, &builds);
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(200 * n));
                        let started = std::time::Instant::now();
                        let result = store.build(
                            drv,
                            "thing",
                            || {},
                            |out| {
                                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(500));
                                if n == 0 {
                                    Err("the first machine's build fails".into())
                                } else {
                                    Ok(fs::write(out.join("f"), "y")?)
                                }
                            },
                        );
                        remotes.finish();
                        (result.map(|(_, outcome)| outcome).map_err(|e| e.to_string()), started.elapsed())
                    })
                })
                .collect();
            machines.into_iter().map(|m| m.join().expect("machine")).collect()
        });
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2, "{results:?}");
        assert!(results[0].0.as_ref().is_err_and(|e| e.contains("building `thing` failed")), "{results:?}");
        assert!(matches!(results[1].0, Ok(BuildOutcome::Built { .. })), "{results:?}");
        assert!(results[1].1 < QUICK.lease + Duration::from_millis(1500), "not held up by a lease: {results:?}");
    }
}
