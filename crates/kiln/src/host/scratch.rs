//! Scratch directories that do not outlive their owner. Each lives in this user's private
//! `$TMPDIR/kiln-UID/scratch/`, named `KIND-PID-RANDOM`; it is removed when dropped (and the
//! commands that boot guests drop it on SIGINT and SIGTERM too), and one whose owner is gone
//! (killed with SIGKILL, say) is swept when the next one is made.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A new scratch directory for `kind` (`run`, `vm`, `snap`), after sweeping those of dead
/// owners.
pub(crate) fn scratch_dir(kind: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = base_dir()?;
    sweep(&base);
    tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", std::process::id()))
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a scratch directory in `{}`", base.display()))
}

/// `$TMPDIR/kiln-UID`: this user's scratch directories and lock files, which no guest is
/// shown.
pub(crate) fn user_temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-{}", rustix::process::getuid().as_raw()))
}

/// `$TMPDIR/kiln-UID/scratch`, private to this user.
fn base_dir() -> anyhow::Result<PathBuf> {
    let user = user_temp_dir();
    let base = user.join("scratch");
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create `{}`", base.display()))?;
    std::fs::set_permissions(&user, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot make `{}` private", user.display()))?;
    Ok(base)
}

/// Removes the scratch directories in `base` whose owner process no longer runs. Best effort:
/// one that cannot be removed now is tried again next time.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = owner_of(&name.to_string_lossy()) else { continue };
        if !process_runs(owner) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The owner's pid in a scratch directory's name `KIND-PID-RANDOM`.
fn owner_of(name: &str) -> Option<i32> {
    let mut parts = name.splitn(3, '-');
    let (_kind, pid, _random) = (parts.next()?, parts.next()?, parts.next()?);
    pid.parse().ok()
}

fn process_runs(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { return false };
    // EPERM: it runs, as another user's process.
    !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_read_from_the_name() {
        assert_eq!(owner_of("run-1234-a1B2c3"), Some(1234));
        assert_eq!(owner_of("vm-77-x-y"), Some(77));
        assert_eq!(owner_of("run-notapid-x"), None);
        assert_eq!(owner_of("stray"), None);
    }

    #[test]
    fn a_dead_owners_directory_is_swept_and_a_live_ones_kept() {
        let base = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        let dead_dir = base.path().join(format!("run-{dead}-abc"));
        let live_dir = base.path().join(format!("run-{}-def", std::process::id()));
        let stray = base.path().join("not-ours");
        for dir in [&dead_dir, &live_dir, &stray] {
            std::fs::create_dir_all(dir.join("inside")).expect("mkdir");
        }
        sweep(base.path());
        assert!(!dead_dir.exists(), "a dead owner's directory is swept");
        assert!(live_dir.exists() && stray.exists(), "a live owner's directory and other names stay");
    }
}
