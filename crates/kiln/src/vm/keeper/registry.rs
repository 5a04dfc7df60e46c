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

/// The lock file beside a keeper's socket, which the keeper holds while it lives and removes
/// when it ends, so lock files do not pile up one per snapshot ever pooled.
fn keeper_lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// The keeper lock beside `socket`, held: `None` when a live keeper holds it. A lock taken on
/// a file that its keeper removed on the way out (the path now names another file, or none) is
/// let go and taken again on the file the path names.
pub(crate) fn take_keeper_lock(socket: &Path) -> anyhow::Result<Option<KeeperLock>> {
    use std::os::unix::fs::MetadataExt as _;
    let path = keeper_lock_path(socket);
    loop {
        let file = lock_file(&path)?;
        if file.try_lock().is_err() {
            return Ok(None);
        }
        let locked = file.metadata().with_context(|| format!("cannot read `{}`", path.display()))?;
        match std::fs::metadata(&path) {
            Ok(named) if (named.dev(), named.ino()) == (locked.dev(), locked.ino()) => {
                return Ok(Some(KeeperLock { path, _file: file }));
            }
            _ => continue,
        }
    }
}

/// A keeper's lock, removed (while still held) when dropped.
#[derive(Debug)]
pub(crate) struct KeeperLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for KeeperLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a keeper holds the lock beside `socket` (it may still be starting). Asking creates
/// no file: no lock file, no keeper.
pub(crate) fn keeper_running(socket: &Path) -> anyhow::Result<bool> {
    let path = keeper_lock_path(socket);
    match std::fs::File::open(&path) {
        Ok(file) => Ok(file.try_lock().is_err()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot open `{}`", path.display())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keeper_lock_is_held_once_and_its_file_goes_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("pool-x.sock");
        assert!(!keeper_running(&socket).expect("asked"), "no file, no keeper");
        assert!(!keeper_lock_path(&socket).exists(), "asking creates nothing");
        let lock = take_keeper_lock(&socket).expect("taken").expect("free");
        assert!(keeper_running(&socket).expect("asked"));
        assert!(take_keeper_lock(&socket).expect("asked").is_none(), "held by the first");
        drop(lock);
        assert!(!keeper_lock_path(&socket).exists(), "the lock file went with its keeper");
        assert!(!keeper_running(&socket).expect("asked"));
        let again = take_keeper_lock(&socket).expect("taken").expect("free again");
        drop(again);
    }
}
