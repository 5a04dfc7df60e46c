//! Starting a keeper: the [`KeeperSpec`] that says everything it needs to make the snapshot
//! its starter made, and the background process that runs it.
//!
//! The spec travels as one JSON argument of the hidden `vm keep` command, and carries every
//! setting that enters the snapshot's closure (the accelerator the starter chose among them),
//! so a keeper restores exactly the snapshot it was started for, or refuses.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use kiln_qemu::accel::Accel;
use kiln_types::Arch;
use serde::{Deserialize, Serialize};

use super::process_alive;

/// How long a pool keeper lingers without runs.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a keeper keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum KeeperRole {
    /// Idle guests for `run --pool`, of the snapshot with this closure.
    Pool {
        /// How many idle guests to keep ready.
        size: usize,
        /// The snapshot's closure, as the starter computed it.
        closure: String,
    },
    /// One long-lived guest for the session `name`.
    Session {
        /// The session's name.
        name: String,
        /// The process whose exit ends the session.
        owner: Option<u32>,
    },
}

/// Everything a keeper process needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeeperSpec {
    /// The project's Kiln.toml.
    pub config: PathBuf,
    /// Guests booting at once.
    pub jobs: usize,
    /// The accelerator the starter chose: it enters the snapshot's closure.
    pub accel: Accel,
    /// The guest architecture.
    pub arch: Arch,
    /// The `[kernel.NAME]`.
    pub kernel: String,
    /// The `[rootfs.NAME]`.
    pub rootfs: String,
    /// Pool or session.
    pub role: KeeperRole,
}

impl KeeperSpec {
    /// Reads the spec `vm keep --spec` was given.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text).context("`vm keep --spec` takes the JSON kiln writes when it starts a keeper")
    }

    /// Starts `kiln vm keep --spec JSON` in the background, in a process group of its own and
    /// detached from kiln's standard streams (its messages go to `log`).
    pub(crate) fn spawn(&self, log: &Path) -> anyhow::Result<Child> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open `{}`", log.display()))?;
        let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
        let mut command = Command::new(exe);
        kiln_types::withhold_secrets(&mut command);
        command
            .args(["vm", "keep", "--spec"])
            .arg(serde_json::to_string(self)?)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0);
        // The keeper outlives the command that started it: it must not hold what that
        // command inherited (a `flock` wrapper's lock, a CI step's pipes), or whoever waits
        // for those waits for the keeper too.
        // SAFETY: the closure makes async-signal-safe system calls only (close_range, fcntl).
        unsafe {
            command.pre_exec(|| {
                close_inherited_fds_on_exec();
                Ok(())
            });
        }
        command.spawn().context("cannot start kiln's keeper process")
    }
}

/// Marks every descriptor above stderr close-on-exec (in a child between fork and exec).
fn close_inherited_fds_on_exec() {
    // SAFETY: plain system calls on descriptor numbers; no memory is touched.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
            // Kernels before 5.11: one by one, up to a limit no inherited descriptor passes.
            for fd in 3..4096 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// The owner `vm start` ties a session to by default: the leader of kiln's session (the
/// terminal's shell), else the shell that ran `cargo xtask` (the nearest ancestor that is
/// not cargo, rustup or kiln itself).
pub(crate) fn default_owner() -> Option<u32> {
    let own = std::process::id();
    if let Ok(leader) = rustix::process::getsid(None)
        && let Ok(leader) = u32::try_from(leader.as_raw_pid())
        && leader > 1
        && leader != own
        && process_alive(leader)
    {
        return Some(leader);
    }
    parent_shell()
}

fn parent_shell() -> Option<u32> {
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..8 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let own = std::env::current_exe().ok().and_then(|e| e.file_name().map(|n| n.to_string_lossy().into_owned()));
        if !matches!(name, "cargo" | "rustup") && Some(name) != own.as_deref() {
            return Some(pid);
        }
        pid = rest.split_whitespace().nth(1)?.parse().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_its_trip_through_the_command_line() {
        let spec = KeeperSpec {
            config: "/p/Kiln.toml".into(),
            jobs: 2,
            accel: Accel::Kvm,
            arch: Arch::Aarch64,
            kernel: "debian".into(),
            rootfs: "base".into(),
            role: KeeperRole::Pool { size: 2, closure: "ab".repeat(32) },
        };
        let text = serde_json::to_string(&spec).expect("json");
        assert_eq!(KeeperSpec::parse(&text).expect("parse"), spec);
        assert!(KeeperSpec::parse("{}").is_err());
    }
}
