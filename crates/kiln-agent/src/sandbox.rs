//! The sandbox a pool guest's leaseholders run in, one after another: a fresh root for each
//! (an overlay whose lower layer is the guest's own root and whose upper layer is a new
//! tmpfs), with every process of the previous leaseholder killed first. The agent chroots
//! itself into the sandbox, so every later request (files in, programs run) sees it; it
//! keeps a handle on the real root to leave it again. Also here: the writable views a run's
//! package directories get over the inbox share.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use kiln_agent::Reply;

/// Where the sandbox's tmpfs is mounted (in the real root).
const SANDBOX_DIR: &str = "/run/kiln-sandbox";

/// How long the previous leaseholder's processes may take to die.
const DEATH_DEADLINE: Duration = Duration::from_secs(2);

/// The agent's way back to the real root and to the guest's own namespaces.
pub(crate) struct Sandboxes {
    real_root: File,
    /// The guest's System V IPC namespace (shared memory, semaphores, message queues) and its
    /// host name's (UTS): each sandbox gets fresh ones, made from these.
    real_namespaces: [(File, libc::c_int); 2],
}

impl Sandboxes {
    /// Remembers the real root and namespaces; call before any sandbox is made, on the
    /// thread that serves requests (namespaces belong to a thread, and the threads that run
    /// programs are started from it).
    pub(crate) fn new() -> Result<Self, String> {
        let real_root = File::open("/").map_err(|e| format!("cannot open the root directory: {e}"))?;
        let namespace = |name: &str, kind| {
            let path = format!("/proc/thread-self/ns/{name}");
            File::open(&path).map(|file| (file, kind)).map_err(|e| format!("cannot open {path}: {e}"))
        };
        let real_namespaces = [namespace("ipc", libc::CLONE_NEWIPC)?, namespace("uts", libc::CLONE_NEWUTS)?];
        Ok(Self { real_root, real_namespaces })
    }

    /// Tears the previous sandbox down and enters a fresh one; call after
    /// [`kill_all_others`] and [`reap_all`].
    pub(crate) fn renew(&self) -> Result<(), String> {
        self.leave()?;
        // Nothing mounted there is not an error: the first sandbox has no predecessor.
        let _ = unmount(Path::new(SANDBOX_DIR));
        self.fresh_namespaces()?;
        let root = build()?;
        enter(&root)
    }

    /// New IPC and UTS namespaces, copied from the guest's own (not from the previous
    /// sandbox's, whose host name a leaseholder may have changed): a shared memory segment
    /// or a host name one run leaves is not the next run's.
    fn fresh_namespaces(&self) -> Result<(), String> {
        let mut kinds = 0;
        for (file, kind) in &self.real_namespaces {
            // SAFETY: setns takes a namespace descriptor this value owns.
            if unsafe { libc::setns(file.as_raw_fd(), *kind) } != 0 {
                return Err(format!("cannot return to the guest's namespaces: {}", std::io::Error::last_os_error()));
            }
            kinds |= kind;
        }
        // SAFETY: unshare only detaches this thread from its namespaces.
        if unsafe { libc::unshare(kinds) } != 0 {
            return Err(format!(
                "cannot make the sandbox's IPC and UTS namespaces: {} (does the guest's kernel have CONFIG_IPC_NS and CONFIG_UTS_NS?)",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Back to the real root.
    fn leave(&self) -> Result<(), String> {
        // SAFETY: fchdir takes a descriptor this value owns.
        if unsafe { libc::fchdir(self.real_root.as_raw_fd()) } != 0 {
            return Err(format!("cannot return to the real root: {}", std::io::Error::last_os_error()));
        }
        enter(Path::new("."))
    }
}

/// Makes `path` a writable view of `lower`: an overlay whose upper and work directories are
/// on a tmpfs of its own (under `/run`, in the sandbox when there is one, so it goes with it).
pub(crate) fn writable_view(lower: &Path, path: &Path) -> Result<Reply, String> {
    static VIEWS: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(format!("/run/kiln-view-{}", VIEWS.fetch_add(1, Ordering::Relaxed)));
    overlay_on_tmpfs(lower, &dir, path)?;
    Ok(Reply::default())
}

/// Mounts at `mount_point` (made when missing) an overlay of `lower` whose upper and work
/// directories are on a new tmpfs at `dir`. Directories of the lower layer can be renamed, as on any filesystem
/// (`redirect_dir=on`; without it, rename fails with EXDEV, which few programs handle);
/// a kernel that does not know the option gets the overlay without it.
fn overlay_on_tmpfs(lower: &Path, dir: &Path, mount_point: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    mount(Some("tmpfs"), dir, Some("tmpfs"), 0, "mode=755")?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for made in [&upper, &work] {
        std::fs::create_dir(made).map_err(|e| format!("cannot create {}: {e}", made.display()))?;
    }
    // The mount point may be on that tmpfs (the sandbox's root is).
    std::fs::create_dir_all(mount_point).map_err(|e| format!("cannot create {}: {e}", mount_point.display()))?;
    let layers = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    mount(Some("overlay"), mount_point, Some("overlay"), 0, &format!("{layers},redirect_dir=on"))
        .or_else(|_| mount(Some("overlay"), mount_point, Some("overlay"), 0, &layers))
        .map_err(|e| format!("{e} (does the guest's kernel have overlayfs?)"))
}

/// chroot into `root` and make it the working directory.
fn enter(root: &Path) -> Result<(), String> {
    let path = c_path(root)?;
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    if unsafe { libc::chroot(path.as_ptr()) } != 0 {
        return Err(format!("cannot enter {}: {}", root.display(), std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| format!("cannot change to the sandbox's root: {e}"))
}

/// Makes a fresh sandbox and returns its root: a tmpfs at [`SANDBOX_DIR`] holding the
/// overlay's upper and work directories and its mount point; the real root's mounts bound in
/// at their paths, except tmpfs ones, which are made anew and empty (what is in a tmpfs is a
/// previous run's state), and `/dev`, which gets an overlay of its own.
fn build() -> Result<PathBuf, String> {
    let dir = Path::new(SANDBOX_DIR);
    let root = dir.join("root");
    overlay_on_tmpfs(Path::new("/"), dir, &root)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("cannot read the mounts: {e}"))?;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(point), Some(kind), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = unescape(point);
        if point == "/" || Path::new(&point).starts_with(dir) {
            continue;
        }
        let target = root.join(point.trim_start_matches('/'));
        // The directory exists in the lower layer, or in a filesystem bound in before.
        let _ = std::fs::create_dir_all(&target);
        if kind == "tmpfs" {
            let mode = options.split(',').find(|option| option.starts_with("mode=")).unwrap_or("mode=755");
            mount(Some(source), &target, Some("tmpfs"), 0, mode)?;
        } else if kind == "devtmpfs" {
            // The guest's device nodes reach through; a file a run makes in /dev stays in its
            // sandbox.
            let (upper, work) = (dir.join("dev-upper"), dir.join("dev-work"));
            for made in [&upper, &work] {
                std::fs::create_dir(made).map_err(|e| format!("cannot create {}: {e}", made.display()))?;
            }
            let layers = format!("lowerdir={point},upperdir={},workdir={}", upper.display(), work.display());
            mount(Some("overlay"), &target, Some("overlay"), 0, &layers)
                .or_else(|_| mount(Some(&point), &target, None, libc::MS_BIND, ""))?;
        } else {
            mount(Some(&point), &target, None, libc::MS_BIND, "")?;
        }
    }
    Ok(root)
}

/// Sends SIGKILL to every process but init and the agent (kernel threads ignore it). The
/// first call also makes the agent its descendants' reaper: a process whose parent dies (a
/// daemon that left its session) becomes the agent's child, so [`reap_all`] can wait for
/// every one of them.
pub(crate) fn kill_all_others() -> Result<(), String> {
    // SAFETY: prctl with these arguments only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("cannot make the agent its descendants' reaper: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: kill(-1) signals every process this one may signal except init and itself;
    // the caller makes sure this runs inside a guest.
    if unsafe { libc::kill(-1, libc::SIGKILL) } != 0 {
        let err = std::io::Error::last_os_error();
        // ESRCH: there was nobody to kill.
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(format!("cannot end the previous run's processes: {err}"));
        }
    }
    Ok(())
}

/// Waits for and reaps every child the agent has left (after [`kill_all_others`], and once
/// the threads that wait for their own programs are done), within [`DEATH_DEADLINE`].
pub(crate) fn reap_all() -> Result<(), String> {
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            // ECHILD: no child left.
            -1 => return Ok(()),
            0 if started.elapsed() > DEATH_DEADLINE => {
                return Err(format!("a process of the previous run did not die within {}s", DEATH_DEADLINE.as_secs()));
            }
            0 => std::thread::sleep(Duration::from_millis(1)),
            _ => {}
        }
    }
}

/// Unmounts `path` and everything below it.
fn unmount(path: &Path) -> Result<(), String> {
    let target = c_path(path)?;
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!("cannot unmount {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// mount(2), with the error naming the source and the target.
pub(crate) fn mount(
    source: Option<&str>,
    target: &Path,
    kind: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |text: &str| CString::new(text).map_err(|_| format!("`{text}` holds a NUL byte"));
    let source = source.map(c).transpose()?;
    let kind = kind.map(c).transpose()?;
    let (target_c, data) = (c_path(target)?, c(data)?);
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let status = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            kind.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ptr().cast(),
        )
    };
    if status != 0 {
        return Err(format!(
            "cannot mount {} at {}: {}",
            source.as_ref().map_or("(bind)".into(), |s| s.to_string_lossy()),
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| format!("`{}` holds a NUL byte", path.display()))
}

/// A mount point as `/proc/self/mounts` writes it, with `\040`-style octal escapes undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mount_points_lose_their_octal_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\09"), r"/odd\09");
    }
}
