//! Telling a build that failed for want of disk space from one that failed on its own: a
//! full disk is the host's problem (exit 3, with the file system named), not the project's.

use std::path::{Path, PathBuf};

/// Below this many free bytes a file system counts as full: a compiler or linker that
/// failed with less than this left most likely failed to write.
const NEARLY_FULL: u64 = 64 << 20;

/// A step failed and a file system it writes to is (nearly) full.
#[derive(Debug, thiserror::Error)]
#[error(
    "no space left on the file system holding `{}` ({} free), where {what} is written; free space there \
     (`cargo clean` in the project, `cargo xtask store gc`) and run again",
    path.display(),
    shown_bytes(*free)
)]
pub(crate) struct OutOfSpace {
    /// A directory on the full file system.
    pub path: PathBuf,
    /// Its free bytes when the step failed.
    pub free: u64,
    /// What the step writes there ("cargo's target directory").
    pub what: &'static str,
}

/// The first of `places` whose file system is (nearly) full, for a step that just failed.
/// A place that does not exist or cannot be measured is passed over.
pub(crate) fn full_file_system(places: &[(&Path, &'static str)]) -> Option<OutOfSpace> {
    places.iter().find_map(|(path, what)| {
        let free = free_bytes(path)?;
        (free < NEARLY_FULL).then(|| OutOfSpace { path: path.to_path_buf(), free, what })
    })
}

/// Free bytes for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|dir| dir.exists())?;
    let stats = rustix::fs::statvfs(existing).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

fn shown_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{} KiB", bytes / 1024),
        _ => format!("{} MiB", bytes >> 20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_with_room_is_not_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        let verdict = full_file_system(&[(dir.path(), "the test")]);
        assert_eq!(verdict.is_some(), free < NEARLY_FULL, "{verdict:?}");
        assert!(
            full_file_system(&[(Path::new("/no/such/dir/anywhere"), "x")]).is_none_or(|full| full.free < NEARLY_FULL)
        );
    }

    #[test]
    fn the_message_names_the_place_and_what_to_do() {
        let full = OutOfSpace { path: "/work/target".into(), free: 12 << 10, what: "cargo's target directory" };
        assert_eq!(
            full.to_string(),
            "no space left on the file system holding `/work/target` (12 KiB free), where cargo's target directory is \
             written; free space there (`cargo clean` in the project, `cargo xtask store gc`) and run again"
        );
    }
}
