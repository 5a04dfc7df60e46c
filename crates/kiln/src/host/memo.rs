//! Answers of slow host commands (`qemu-system-* --version`, `rustc -vV`), remembered in the
//! user's cache under a stamp of everything that decides them: while the stamp is the same,
//! a run reads the answer instead of starting the program to ask.

use std::path::{Path, PathBuf};

/// `compute()`'s answer for `name` in the `kind` memo, unless the one remembered under the same
/// `stamp` can be read (no stamp: always asked). A missing cache directory or an unwritable memo
/// only costs the asking.
pub(crate) fn remembered(
    kind: &str,
    name: &str,
    stamp: Option<&str>,
    compute: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    remembered_in(super::user_cache_dir(), kind, name, stamp, compute)
}

fn remembered_in(
    cache: Option<PathBuf>,
    kind: &str,
    name: &str,
    stamp: Option<&str>,
    compute: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let memo = cache.map(|dir| dir.join(kind).join(name));
    if let (Some(stamp), Some(memo)) = (stamp, &memo)
        && let Ok(text) = std::fs::read_to_string(memo)
        && let Some((recorded, answer)) = text.split_once('\n')
        && recorded == stamp
    {
        return Ok(answer.to_owned());
    }
    let answer = compute()?;
    if let (Some(stamp), Some(memo)) = (stamp, memo) {
        remember(&memo, stamp, &answer);
    }
    Ok(answer)
}

/// Writes the memo through a temporary file and a rename, so a reader never sees half of it.
fn remember(memo: &Path, stamp: &str, answer: &str) {
    let Some(dir) = memo.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let temp = memo.with_extension(format!("{}.partial", std::process::id()));
    if std::fs::write(&temp, format!("{stamp}\n{answer}")).is_err() || std::fs::rename(&temp, memo).is_err() {
        let _ = std::fs::remove_file(&temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_asked_again_only_when_its_stamp_changes() {
        let cache = tempfile::tempdir().expect("tempdir");
        let ask = |stamp: Option<&str>, answer: &str| {
            let answer = answer.to_owned();
            remembered_in(Some(cache.path().to_owned()), "memo", "x", stamp, move || Ok(answer))
        };
        assert_eq!(ask(Some("one"), "first\nlines\n").expect("asked"), "first\nlines\n");
        assert_eq!(ask(Some("one"), "not asked").expect("asked"), "first\nlines\n");
        assert_eq!(ask(Some("two"), "second").expect("asked"), "second");
        assert_eq!(ask(None, "unstamped").expect("asked"), "unstamped");
        assert_eq!(ask(Some("two"), "not asked").expect("asked"), "second");
        let failed = remembered_in(Some(cache.path().to_owned()), "memo", "y", Some("s"), || anyhow::bail!("no"));
        assert!(failed.is_err());
        assert!(!cache.path().join("memo").join("y").exists());
    }
}
