//! Where keepers are found: their socket names (short, private to the user), the lock each
//! holds while it lives, the info file `vm ls` reads, and asking one to stop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_store::ClosureHash;
use serde::{Deserialize, Serialize};

use crate::{
    host::lock_file,
    vm::lease::{self, Answer, Ask, KeeperStatus},
};

/// What `vm ls` shows of a keeper (written by it while it listens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeeperInfo {
    /// `session` or `pool`.
    pub kind: String,
    /// The session's name, or `pool-ARCH-CLOSURE`.
    pub name: String,
    /// The guest architecture.
    pub arch: String,
    /// The keeper's process id.
    pub keeper_pid: u32,
    /// The process whose exit ends a session.
    pub owner: Option<u32>,
    /// Where it listens.
    pub socket: PathBuf,
}

/// The directory of keeper sockets: short paths (a Unix socket path has 108 bytes), private
/// to this user.
fn socket_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kiln-{}", rustix::process::getuid().as_raw()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot make `{}` private", dir.display()))?;
    Ok(dir)
}

/// The socket of a keeper named by `parts` (the work directory and a session's name, say).
fn socket_path(kind: &str, parts: &[&[u8]]) -> anyhow::Result<PathBuf> {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hex = hasher.finalize().to_hex();
    Ok(socket_dir()?.join(format!("{kind}-{}.sock", &hex[..16])))
}

/// The socket of the session `name` of the project whose scratch directory is `work_dir`.
pub(crate) fn session_socket(work_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    socket_path("vm", &[work_dir.as_os_str().as_encoded_bytes(), name.as_bytes()])
}

/// The socket of the run pool of snapshot `closure` for this project.
pub(crate) fn pool_socket(work_dir: &Path, closure: &ClosureHash) -> anyhow::Result<PathBuf> {
    socket_path("pool", &[work_dir.as_os_str().as_encoded_bytes(), closure.as_bytes()])
}

/// The files of session `name`: its info file, its keeper's log, and what `vm sync` put.
pub(crate) fn session_files(work_dir: &Path, name: &str) -> SessionFiles {
    let dir = work_dir.join("vm");
    SessionFiles {
        info: dir.join(format!("{name}.json")),
        log: dir.join(format!("{name}.log")),
        synced: dir.join(format!("{name}.synced")),
    }
}

/// A session's files in the project's `target/kiln/vm`.
#[derive(Clone, Debug)]
pub(crate) struct SessionFiles {
    /// What `vm ls` reads.
    pub info: PathBuf,
    /// The keeper's messages.
    pub log: PathBuf,
    /// The paths each `vm sync` root put, so a deletion on the host removes them.
    pub synced: PathBuf,
}

/// The info file of a pool keeper.
pub(crate) fn pool_info_file(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("vm").join(format!("{name}.json"))
}

/// The log of the pool keeper for `arch`.
pub(crate) fn pool_log(work_dir: &Path, arch: &str) -> PathBuf {
    work_dir.join("vm").join(format!("pool-{arch}.log"))
}

/// The lock file beside a keeper's socket, which the keeper holds while it lives.
pub(crate) fn keeper_lock(socket: &Path) -> anyhow::Result<std::fs::File> {
    lock_file(&socket.with_extension("lock"))
}

/// Whether a keeper holds the lock beside `socket` (it may still be starting).
pub(crate) fn keeper_running(socket: &Path) -> anyhow::Result<bool> {
    Ok(keeper_lock(socket)?.try_lock().is_err())
}

/// The keepers of the project whose scratch directory is `work_dir` that are running.
pub(crate) fn running_keepers(work_dir: &Path) -> anyhow::Result<Vec<KeeperInfo>> {
    let dir = work_dir.join("vm");
    let mut keepers = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(info) = serde_json::from_slice::<KeeperInfo>(&std::fs::read(&path)?) else { continue };
        if keeper_running(&info.socket)? {
            keepers.push(info);
        }
    }
    keepers.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(keepers)
}

/// What the keeper at `socket` holds, when it answers.
pub(crate) fn status(socket: &Path) -> Option<KeeperStatus> {
    let stream = lease::connect(socket)?;
    match lease::ask(&stream, &Ask::Status, Some(Duration::from_secs(5))).ok()? {
        (Answer::Status(status), _) => Some(status),
        _ => None,
    }
}

/// Asks the keeper at `socket` to stop, and waits (up to 10 s) until it has let go of its lock:
/// its guests are dead then. `false` when no keeper listened there.
pub(crate) fn stop(socket: &Path) -> anyhow::Result<bool> {
    let Some(stream) = lease::connect(socket) else { return Ok(false) };
    lease::ask(&stream, &Ask::Stop, Some(Duration::from_secs(10)))?;
    let started = Instant::now();
    while keeper_running(socket)? && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}
