//! The keeper: a background kiln process that holds restored guests and leases them over a
//! Unix socket. A pool keeps `size` idle guests ready, kills each one when its lease ends,
//! and exits after a spell without leases; a session holds one guest that every lease
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
}

enum Event {
    Restored(anyhow::Result<Ready>),
    Asked(UnixStream, Ask),
    /// A lease ended; a session's guest comes back.
    LeaseEnded(Option<Ready>),
}

/// Restores a guest and readies it while it waits: warmed up, its inbox mounted, so a lease
/// starts with the program.
async fn restore_ready(target: Arc<SnapshotTarget>, entry: PathBuf) -> anyhow::Result<Ready> {
    let mut guest = target.restore(&entry).await?;
    warm_up(&mut guest.agent).await.context("the restored guest did not warm up")?;
    if guest.inbox.is_some() {
        guest
            .agent
            .mount_9p(super::snapshot::INBOX_TAG, super::snapshot::INBOX_GUEST_PATH)
            .await
            .context("the restored guest did not mount its inbox")?;
    }
    let agent = guest.agent.into_std()?;
    Ok(Ready { qemu: guest.qemu, agent, scratch: guest.scratch, inbox: guest.inbox })
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
            idle.push_back(restore_ready(self.target.clone(), self.entry.clone()).await?);
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
        // Restores in flight: a pool drained by `-j` concurrent runs refills them all at once.
        let mut restoring = 0usize;
        let mut failures = 0;
        let mut last_lease = Instant::now();
        loop {
            if let Kind::Pool { size, .. } = self.kind {
                // All missing guests at once; after a failed restore, one at a time until
                // one succeeds.
                let missing = size.saturating_sub(idle.len() + restoring);
                let starts = if failures == 0 { missing } else { missing.min(usize::from(restoring == 0)) };
                for _ in 0..starts {
                    restoring += 1;
                    let (target, entry, events) = (self.target.clone(), self.entry.clone(), events.clone());
                    tokio::spawn(async move {
                        let _ = events.send(Event::Restored(restore_ready(target, entry).await));
                    });
                }
            }
            // A waiting session client gets the guest as soon as it is back.
            while !waiters.is_empty() && !idle.is_empty() {
                if let (Some(client), Some(ready)) = (waiters.pop_front(), idle.pop_front()) {
                    match self.grant(client, ready, &events) {
                        None => leased += 1,
                        Some(ready) => idle.push_front(ready),
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
                    }
                    Event::Restored(Err(err)) => {
                        restoring = restoring.saturating_sub(1);
                        failures += 1;
                        log(&format!("a restore failed: {err:#}"));
                        anyhow::ensure!(failures < 3, "three restores in a row failed; the last: {err:#}");
                    }
                    Event::LeaseEnded(back) => {
                        leased = leased.saturating_sub(1);
                        last_lease = Instant::now();
                        if let Some(ready) = back {
                            idle.push_front(ready);
                        }
                    }
                    Event::Asked(client, Ask::Lease) => match idle.pop_front() {
                        Some(ready) => match self.grant(client, ready, &events) {
                            None => { leased += 1; last_lease = Instant::now(); }
                            Some(ready) => idle.push_front(ready),
                        },
                        None if matches!(self.kind, Kind::Pool { .. }) => {
                            let _ = send_answer(client.as_fd(), &Answer::Busy, None);
                        }
                        None => waiters.push_back(client),
                    },
                    Event::Asked(client, Ask::Status) => {
                        let status = KeeperStatus {
                            kind: match self.kind { Kind::Pool { .. } => "pool", Kind::Session { .. } => "session" }.to_owned(),
                            arch: self.target.arch().to_string(),
                            pid: std::process::id(),
                            idle: idle.len(),
                            leased,
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
                    Kind::Pool { idle_timeout, .. } if leased == 0 && last_lease.elapsed() > idle_timeout => {
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

    /// Hands `ready` to `client`; the lease ends when the client's connection closes. A pool
    /// guest dies then; a session guest comes back. Returns the guest if the client is gone
    /// already.
    fn grant(&self, client: UnixStream, ready: Ready, events: &mpsc::UnboundedSender<Event>) -> Option<Ready> {
        let console = ready.scratch.path().join(super::snapshot::CONSOLE_FILE);
        let answer = Answer::Granted {
            qemu_pid: ready.qemu.pid().unwrap_or(0),
            console,
            inbox: ready.inbox.clone(),
            inbox_mounted: ready.inbox.is_some(),
        };
        if send_answer(client.as_fd(), &answer, Some(ready.agent.as_fd())).is_err() {
            return Some(ready);
        }
        let session = matches!(self.kind, Kind::Session { .. });
        let events = events.clone();
        tokio::spawn(async move {
            let mut client = client;
            let mut buf = [0u8; 64];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            // A pool guest dies here, with its lease.
            let back = if session { Some(ready) } else { None };
            let _ = events.send(Event::LeaseEnded(back));
        });
        None
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
