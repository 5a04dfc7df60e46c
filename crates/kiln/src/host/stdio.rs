//! kiln's own standard streams as a program run through it should see them: whether stdout
//! and stderr are one file (so the guest keeps one ordered stream), whether stdin is empty,
//! and dying by the signal that killed the guest's program, as the program itself would have.

use std::os::fd::AsFd;

/// Whether stdout and stderr are the same open file, or the same file opened twice: under
/// `2>&1`, a shared terminal, or one pipe. A guest program then gets one pipe for both, so
/// the order of its lines is the order it wrote them.
pub(crate) fn stdout_and_stderr_are_one_file() -> bool {
    let identity = |fd: std::os::fd::BorrowedFd<'_>| rustix::fs::fstat(fd).ok().map(|stat| (stat.st_dev, stat.st_ino));
    match (identity(std::io::stdout().as_fd()), identity(std::io::stderr().as_fd())) {
        (Some(out), Some(err)) => out == err,
        _ => false,
    }
}

/// Whether stdin is `/dev/null` (or closed): nothing to forward to a guest program.
pub(crate) fn stdin_is_null() -> bool {
    let Ok(stat) = rustix::fs::fstat(std::io::stdin().as_fd()) else { return true };
    let null = rustix::fs::stat("/dev/null").ok().map(|null| (null.st_dev, null.st_ino, null.st_rdev));
    null == Some((stat.st_dev, stat.st_ino, stat.st_rdev))
}

/// Bytes written to a Unix stream socket that its peer has not read yet (`SIOCOUTQ`), or
/// `None` when the kernel does not say.
pub(crate) fn unread_bytes(socket: &std::os::unix::net::UnixStream) -> Option<usize> {
    use std::os::fd::AsRawFd as _;
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `unread`.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unread) };
    (result == 0).then(|| usize::try_from(unread).unwrap_or(0))
}

/// Ends kiln by `signal`, the way the guest's program ended, so the caller (cargo, nextest, a
/// shell) sees a death by that signal and reports it as it would natively: output flushed,
/// the signal's default action restored and the signal raised. Returns the shell's status
/// for it (128 + the signal) only if the signal did not end the process (one whose default
/// action is to be ignored).
pub(crate) fn exit_by_signal(signal: i32) -> u8 {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: restoring a signal's default disposition and raising it in this process only
    // changes how this process ends; no Rust code runs in a handler.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_dies_by_the_signal_it_is_given() {
        use std::os::unix::process::ExitStatusExt as _;
        const NAME: &str = "host::stdio::tests::a_child_dies_by_the_signal_it_is_given";
        // The child is this test again, named twice: once to select it, once as the sign.
        if std::env::args().filter(|arg| arg == NAME).count() == 2 {
            exit_by_signal(libc::SIGABRT);
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", NAME, NAME, "--nocapture"])
            .status()
            .expect("run the child");
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    }
}
