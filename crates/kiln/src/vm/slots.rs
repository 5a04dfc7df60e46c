//! A bound on the guests `run` starts at once on this host: cargo and nextest may call the
//! runner for many test binaries together, and more emulated guests than cores only make
//! each slower. A run holds one of N lock files (N = the number of CPUs) while its guest
//! runs; when all are held it waits for one.

use std::{fs::File, path::Path};

use anyhow::Context as _;

use crate::host::lock_file;

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    _file: File,
}

/// Takes a free slot in `dir`, waiting when all `count` are held.
pub(crate) fn acquire(dir: &Path, count: usize, on_wait: impl FnOnce()) -> anyhow::Result<Slot> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let count = count.max(1);
    let open = |index: usize| lock_file(&dir.join(format!("{index}.lock")));
    for index in 0..count {
        let file = open(index)?;
        if file.try_lock().is_ok() {
            return Ok(Slot { _file: file });
        }
    }
    on_wait();
    // All held: queue on one of them, spread by process id.
    let file = open(std::process::id() as usize % count)?;
    file.lock().context("cannot wait for a free guest slot")?;
    Ok(Slot { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path(), 2, || panic!("a slot is free")).expect("slot");
        let second = acquire(dir.path(), 2, || panic!("a slot is free")).expect("slot");
        drop(first);
        let third = acquire(dir.path(), 2, || panic!("the first slot was freed")).expect("slot");
        drop((second, third));
    }
}
