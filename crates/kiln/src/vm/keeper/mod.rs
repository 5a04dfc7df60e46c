//! The keeper: a background kiln process that holds restored guests and leases them over a
//! Unix socket. A pool keeps `size` guests ready; when a lease ends, the agent kills what
//! the leaseholder left running and roots the guest in a fresh sandbox (an overlay over the
//! guest's root, see `kiln_agent::Op::Sandbox`), and the guest waits for the next lease, up
//! to [`MAX_USES`] leases (a guest whose kernel cannot make sandboxes dies with its lease).
//! A pool exits after a spell without leases. A session holds one guest that every lease
//! shares in turn, and exits with its owner process or on `vm stop`. Every guest is a child
//! of the keeper with `PR_SET_PDEATHSIG`, so no guest outlives its keeper.

use std::{
    collections::VecDeque,
    os::fd::AsFd as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_qemu::Qemu;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};

mod registry;
mod spawn;

pub(crate) use registry::{
    KeeperInfo, keeper_running, pool_log, pool_socket, running_keepers, session_files, session_socket, status, stop,
};
pub(crate) use spawn::{KeeperRole, KeeperSpec, POOL_IDLE_TIMEOUT, default_owner};

use super::{
    SnapshotTarget,
    agent_client::AgentClient,
    lease::{Answer, Ask, KeeperStatus, send_answer},
    target::warm_up,
};
use crate::exec::Executor;

/// What a keeper keeps, with its limits.
#[derive(Clone, Debug)]
enum Kind {
    /// Idle guests for `run --pool`.
    Pool {
        /// How many idle guests to keep ready.
        size: usize,
        /// Exit after this long without a lease.
        idle_timeout: Duration,
    },
    /// One long-lived guest.
    Session {
        /// The process whose death ends the session.
        owner: Option<u32>,
    },
}

/// How many leases one pool guest serves before a fresh restore replaces it. A sandbox
/// resets the guest's files and processes, not what a program changed in the kernel itself
/// (a sysctl, a loaded module), so no guest serves forever.
pub(crate) const MAX_USES: u32 = 200;

/// How long the agent may take to end a lease's processes and make a fresh sandbox before
/// the guest is given up.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// A keeper's settings.
struct Keeper {
    /// Pool or session.
    kind: Kind,
    /// The socket to listen on.
    socket: PathBuf,
    /// What the guests are restored from.
    target: Arc<SnapshotTarget>,
    /// The snapshot's entry directory.
    entry: PathBuf,
    /// Written once the keeper listens, removed when it exits (for `vm ls`).
    info_file: Option<(PathBuf, String)>,
}

/// A keeper's claim on its socket: the lock it holds while it lives.
pub(crate) struct Claim {
    socket: PathBuf,
    _lock: registry::KeeperLock,
}

/// Claims the socket `spec` names for the project whose scratch directory is `work_dir`;
/// `None` when another keeper holds it (this one then leaves before doing any work).
pub(crate) fn claim(spec: &KeeperSpec, work_dir: &std::path::Path) -> anyhow::Result<Option<Claim>> {
    let socket = match &spec.role {
        KeeperRole::Pool { closure, .. } => {
            let closure: kiln_store::ClosureHash =
                closure.parse().map_err(|e| anyhow::anyhow!("the keeper's closure `{closure}`: {e:?}"))?;
            pool_socket(work_dir, &closure)?
        }
        KeeperRole::Session { name, .. } => session_socket(work_dir, name)?,
    };
    Ok(registry::take_keeper_lock(&socket)?.map(|lock| Claim { socket, _lock: lock }))
}

/// Runs the keeper `spec` describes until its time is up: makes (or finds) the snapshot of
/// `target`, checks that it is the one a pool was asked for, and serves leases.
pub(crate) fn keep(executor: &Executor, spec: &KeeperSpec, claim: Claim, target: SnapshotTarget) -> anyhow::Result<()> {
    let work_dir = executor.work_dir();
    let closure = target.closure();
    let (kind, name, owner) = match &spec.role {
        KeeperRole::Pool { size, closure: wanted } => {
            if *wanted != closure.to_string() {
                anyhow::bail!("the snapshot changed since this pool was asked for (now {closure}); not starting");
            }
            let kind = Kind::Pool { size: (*size).max(1), idle_timeout: POOL_IDLE_TIMEOUT };
            (kind, format!("pool-{}-{}", spec.arch, closure.short()), None)
        }
        KeeperRole::Session { name, owner } => (Kind::Session { owner: *owner }, name.clone(), *owner),
    };
    let info_file = match &spec.role {
        KeeperRole::Pool { .. } => registry::pool_info_file(work_dir, &name),
        KeeperRole::Session { name, .. } => session_files(work_dir, name).info,
    };
    let info = KeeperInfo {
        kind: match kind {
            Kind::Pool { .. } => "pool",
            Kind::Session { .. } => "session",
        }
        .to_owned(),
        name,
        arch: spec.arch.to_string(),
        keeper_pid: std::process::id(),
        owner,
        socket: claim.socket.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let entry = target.entry(executor, &runtime)?;
    drop(runtime);
    let keeper = Keeper {
        kind,
        socket: claim.socket.clone(),
        target: Arc::new(target),
        entry,
        info_file: Some((info_file, serde_json::to_string(&info)?)),
    };
    let served = keeper.serve();
    drop(claim);
    served
}

/// A restored, warmed guest whose agent connection is ready to hand out.
struct Ready {
    qemu: Qemu,
    agent: std::os::unix::net::UnixStream,
    scratch: tempfile::TempDir,
    inbox: Option<PathBuf>,
    /// Whether the agent runs in a sandbox, so the guest can be renewed for another lease.
    sandboxed: bool,
    /// Leases served so far.
    uses: u32,
}

enum Event {
    Restored(anyhow::Result<Ready>),
    Asked(UnixStream, Ask),
    /// A leaseholder let its guest go; a pool's guest is being renewed when `renewing`.
    Released {
        /// Whether the guest is being renewed for the next lease.
        renewing: bool,
    },
    /// A released guest is done with: a session's guest comes back, and a pool's renewed one.
    LeaseEnded {
        /// The guest, when it serves on.
        back: Option<Ready>,
        /// Whether the pool counted on it coming back.
        promised: bool,
    },
}

/// Restores a guest and readies it while it waits: its inbox mounted, rooted in a sandbox
/// when `sandbox` (a pool's guest), and warmed up, so a lease starts with the program.
async fn restore_ready(target: Arc<SnapshotTarget>, entry: PathBuf, sandbox: bool) -> anyhow::Result<Ready> {
    let mut guest = target.restore(&entry).await?;
    if guest.inbox.is_some() {
        // Before the sandbox, which binds the guest's mounts in.
        guest
            .agent
            .mount_9p(super::snapshot::INBOX_TAG, super::snapshot::INBOX_GUEST_PATH)
            .await
            .context("the restored guest did not mount its inbox")?;
    }
    let sandboxed = sandbox
        && match guest.agent.request(kiln_agent::Op::Sandbox).await {
            Ok(_) => true,
            Err(err) => {
                log(&format!("a guest cannot make sandboxes, so it serves one lease only: {err:#}"));
                false
            }
        };
    warm_up(&mut guest.agent).await.context("the restored guest did not warm up")?;
    let agent = guest.agent.into_std()?;
    Ok(Ready { qemu: guest.qemu, agent, scratch: guest.scratch, inbox: guest.inbox, sandboxed, uses: 0 })
}

/// Readies a pool guest whose lease ended for the next one: the host side of its inbox
/// emptied, and the agent asked for a fresh sandbox, which ends everything the leaseholder
/// left running. `None` (the guest dies) when any of that fails.
async fn renew(mut ready: Ready) -> Option<Ready> {
    if ready.qemu.exited() {
        return None;
    }
    if let Some(inbox) = &ready.inbox
        && let Err(err) = empty_dir(inbox)
    {
        log(&format!("a guest is given up: cannot empty its inbox: {err:#}"));
        return None;
    }
    let asked = async {
        let stream = ready.agent.try_clone()?;
        stream.set_nonblocking(true)?;
        let mut agent = AgentClient::from_stream(tokio::net::UnixStream::from_std(stream)?).with_fresh_ids()?;
        // A leaseholder that died mid-request leaves half a line; this ends it.
        agent.end_line().await?;
        agent.request(kiln_agent::Op::Sandbox).await?;
        agent.into_std()
    };
    match tokio::time::timeout(RENEW_DEADLINE, asked).await {
        Ok(Ok(_stream)) => Some(ready),
        Ok(Err(err)) => {
            log(&format!("a guest is given up: no fresh sandbox: {err:#}"));
            None
        }
        Err(_) => {
            log(&format!("a guest is given up: no fresh sandbox within {}s", RENEW_DEADLINE.as_secs()));
            None
        }
    }
}

/// Removes everything in `dir`, leaving it empty.
fn empty_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))? {
        let path = entry?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove `{}`", path.display()))?;
    }
    Ok(())
}

fn log(message: &str) {
    eprintln!("[{}] {message}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
}

impl Keeper {
    /// Serves leases until the keeper's time is up (see [`Kind`]).
    fn serve(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let result = runtime.block_on(self.serve_async());
        if let Some((file, _)) = &self.info_file {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_file(&self.socket);
        result
    }

    async fn serve_async(&self) -> anyhow::Result<()> {
        let (events, mut incoming) = mpsc::unbounded_channel();
        let mut idle: VecDeque<Ready> = VecDeque::new();
        if let Kind::Session { .. } = self.kind {
            idle.push_back(restore_ready(self.target.clone(), self.entry.clone(), false).await?);
        }
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket)
            .with_context(|| format!("cannot listen on `{}`", self.socket.display()))?;
        if let Some((file, text)) = &self.info_file {
            std::fs::write(file, text).with_context(|| format!("cannot write `{}`", file.display()))?;
        }
        log(&format!("listening on {}", self.socket.display()));
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut waiters: VecDeque<UnixStream> = VecDeque::new();
        let mut leased = 0usize;
        // Released pool guests being renewed in a fresh sandbox.
        let mut renewing = 0usize;
        // Restores in flight: a pool drained by `-j` concurrent runs refills them all at once.
        let mut restoring = 0usize;
        // Leased pool guests that come back renewed when their lease ends.
        let mut returning = 0usize;
        // Leases served by guests that served one before.
        let mut reused = 0u64;
        let mut failures = 0;
        let mut idle_since = Instant::now();
        loop {
            if let Kind::Pool { size, .. } = self.kind {
                // All missing guests at once; after a failed restore, one at a time until
                // one succeeds.
                let missing = size.saturating_sub(idle.len() + restoring + returning);
                let starts = if failures == 0 { missing } else { missing.min(usize::from(restoring == 0)) };
                for _ in 0..starts {
                    restoring += 1;
                    let (target, entry, events) = (self.target.clone(), self.entry.clone(), events.clone());
                    tokio::spawn(async move {
                        let _ = events.send(Event::Restored(restore_ready(target, entry, true).await));
                    });
                }
            }
            // A waiting client gets a guest as soon as one is back (or restored).
            while !waiters.is_empty() && !idle.is_empty() {
                if let (Some(client), Some(ready)) = (waiters.pop_front(), idle.pop_front()) {
                    let used = ready.uses > 0;
                    match self.grant(client, ready, &events) {
                        Ok(promised) => {
                            leased += 1;
                            returning += usize::from(promised);
                            reused += u64::from(used);
                            idle_since = Instant::now();
                        }
                        Err(ready) => idle.push_front(*ready),
                    }
                }
            }
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let events = events.clone();
                    tokio::spawn(async move {
                        let mut reader = BufReader::new(stream);
                        let mut line = String::new();
                        let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
                        if let (Ok(Ok(n)), Ok(ask)) = (read, serde_json::from_str::<Ask>(&line))
                            && n > 0
                        {
                            let _ = events.send(Event::Asked(reader.into_inner(), ask));
                        }
                    });
                }
                Some(event) = incoming.recv() => match event {
                    Event::Restored(Ok(ready)) => {
                        restoring = restoring.saturating_sub(1);
                        failures = 0;
                        idle.push_back(ready);
                        // The idle spell starts when a guest is ready: a pool whose restores
                        // took long (a loaded host) still waits its whole spell for a run.
                        idle_since = Instant::now();
                    }
                    Event::Restored(Err(err)) => {
                        restoring = restoring.saturating_sub(1);
                        failures += 1;
                        log(&format!("a restore failed: {err:#}"));
                        anyhow::ensure!(failures < 3, "three restores in a row failed; the last: {err:#}");
                    }
                    Event::Released { renewing: renewed } => {
                        leased = leased.saturating_sub(1);
                        renewing += usize::from(renewed);
                    }
                    Event::LeaseEnded { back, promised } => {
                        if promised {
                            returning = returning.saturating_sub(1);
                            renewing = renewing.saturating_sub(1);
                        }
                        idle_since = Instant::now();
                        if let Some(ready) = back {
                            idle.push_front(ready);
                        }
                    }
                    // A pool with no guest idle or on its way answers at once; otherwise the
                    // client is granted one at the top of the loop, in the order asked (a
                    // guest being renewed or restored is worth waiting for: the client waits
                    // a few seconds, then restores one itself).
                    Event::Asked(client, Ask::Lease) => {
                        let pool = matches!(self.kind, Kind::Pool { .. });
                        if pool && idle.is_empty() && restoring + returning == 0 {
                            let _ = send_answer(client.as_fd(), &Answer::Busy, None);
                        } else {
                            waiters.push_back(client);
                        }
                    }
                    Event::Asked(client, Ask::Status) => {
                        let status = KeeperStatus {
                            kind: match self.kind { Kind::Pool { .. } => "pool", Kind::Session { .. } => "session" }.to_owned(),
                            arch: self.target.arch().to_string(),
                            pid: std::process::id(),
                            idle: idle.len(),
                            leased,
                            renewing,
                            reused,
                        };
                        let _ = send_answer(client.as_fd(), &Answer::Status(status), None);
                    }
                    Event::Asked(client, Ask::Stop) => {
                        let _ = send_answer(client.as_fd(), &Answer::Stopping, None);
                        log("stopping: asked to");
                        return Ok(());
                    }
                },
                _ = tick.tick() => {
                    let before = idle.len();
                    idle.retain_mut(|ready| !ready.qemu.exited());
                    if idle.len() < before {
                        log("an idle guest died; it is dropped");
                        if matches!(self.kind, Kind::Session { .. }) && leased == 0 {
                            anyhow::bail!("the session's guest died (its console log is gone with it)");
                        }
                    }
                    match self.kind {
                    Kind::Pool { idle_timeout, .. }
                        if leased + renewing + restoring == 0 && waiters.is_empty() && idle_since.elapsed() > idle_timeout =>
                    {
                        log(&format!("stopping: no lease for {}s", idle_timeout.as_secs()));
                        return Ok(());
                    }
                    Kind::Session { owner: Some(owner) } if !process_alive(owner) => {
                        log(&format!("stopping: the owner (process {owner}) is gone"));
                        return Ok(());
                    }
                    _ => {}
                    }
                },
                _ = terminate.recv() => {
                    log("stopping: terminated");
                    return Ok(());
                }
            }
        }
    }

    /// Hands `ready` to `client`; the lease ends when the client's connection closes. A
    /// session's guest comes back then, and a pool's is renewed for the next lease (or dies:
    /// one without a sandbox, or one that served [`MAX_USES`] leases). Says whether the guest
    /// is to come back, or returns it if the client is gone already.
    fn grant(
        &self,
        client: UnixStream,
        mut ready: Ready,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<bool, Box<Ready>> {
        let console = ready.scratch.path().join(super::snapshot::CONSOLE_FILE);
        let answer = Answer::Granted {
            qemu_pid: ready.qemu.pid().unwrap_or(0),
            console,
            inbox: ready.inbox.clone(),
            inbox_mounted: ready.inbox.is_some(),
        };
        if send_answer(client.as_fd(), &answer, Some(ready.agent.as_fd())).is_err() {
            return Err(Box::new(ready));
        }
        let session = matches!(self.kind, Kind::Session { .. });
        let renewable = !session && ready.sandboxed && ready.uses + 1 < MAX_USES;
        if !session {
            ready.uses += 1;
        }
        let events = events.clone();
        tokio::spawn(async move {
            let mut client = client;
            let mut buf = [0u8; 64];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = events.send(Event::Released { renewing: !session && renewable });
            let back = match (session, renewable) {
                (true, _) => Some(ready),
                (false, true) => renew(ready).await,
                // A pool guest that is not renewed dies here, with its lease.
                (false, false) => None,
            };
            let _ = events.send(Event::LeaseEnded { back, promised: renewable });
        });
        Ok(renewable)
    }
}

/// Whether a process exists (signal 0 reaches it).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(errno) => errno == rustix::io::Errno::PERM,
    }
}
