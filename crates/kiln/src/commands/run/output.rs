//! A cold run's program output: QEMU appends what the guest's virtio consoles receive to a
//! file, and a relay thread forwards the file to kiln's own stdout or stderr as it grows.
//!
//! A file, not a pipe: QEMU's virtio console drops whatever its backend does not take at
//! once (it cannot throttle a console without stalling the guest), so a pipe that a slow
//! reader let fill lost the middle of a program's output. A regular file takes every write;
//! the relay frees what it has forwarded, so the file holds only what is still to go.

use std::{
    io::{Read as _, Write},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

/// How long the relay waits before it looks at the file again when it had nothing new.
const POLL: Duration = Duration::from_millis(5);

/// Forwarded bytes are freed from the file in pieces of this size.
const FREE_EVERY: u64 = 1 << 20;

/// Creates the empty file at `path` and a thread that forwards what is appended to it to
/// `to` until `ended` is set and all of it is forwarded (or `to` refuses a write).
pub(super) fn relay(
    path: &Path,
    mut to: impl Write + Send + 'static,
    ended: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    std::fs::File::create(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    let mut from = std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    Ok(std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut forwarded, mut freed) = (0u64, 0u64);
        loop {
            // Read before the last look: bytes written before `ended` are taken.
            let last = ended.load(Ordering::Acquire);
            match from.read(&mut buf) {
                Ok(0) if last => break,
                Ok(0) => std::thread::sleep(POLL),
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                        break;
                    }
                    forwarded += n as u64;
                    if forwarded - freed >= FREE_EVERY {
                        free(&from, freed, forwarded - freed);
                        freed = forwarded;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = to.flush();
    }))
}

/// Frees `len` bytes of `file` from `offset` (a hole; the size stays). A file system that
/// cannot punch holes keeps them, which costs disk space and nothing else.
fn free(file: &std::fs::File, offset: u64, len: u64) {
    use rustix::fs::{FallocateFlags, fallocate};
    let _ = fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len);
}
