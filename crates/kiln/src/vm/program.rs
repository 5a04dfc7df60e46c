//! One program run in a warm guest: a fresh copy of the booted snapshot, restored here or
//! leased from a pool keeper that holds warm ones. The program and the package directories
//! reach the guest through its 9p inbox (the package directories as writable overlays over
//! their linked copies there), or, where that costs more or the kernel has no 9p, through the
//! guest agent, as `[run] files` do; the program runs and its output streams back. A restored guest is thrown away after the
//! run; a leased one goes back to its keeper, which renews it in a fresh sandbox.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::{
    SnapshotTarget,
    agent_client::AgentClient,
    keeper::{self, KeeperRole, KeeperSpec},
    lease, snapshot,
};
use crate::{exec::Executor, guest::CopyKind, plan::KERNEL_FAILURE};

/// A program and what it runs with.
#[derive(Debug)]
pub(crate) struct Program<'a> {
    /// The executable on the host.
    pub path: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Its working directory (the same path in the guest).
    pub cwd: PathBuf,
    /// Directories the guest sees at the same paths, writable there, never written back: the
    /// package, what the program needs of cargo's target directory. A program among their
    /// entries runs from its host path.
    pub views: Vec<View>,
    /// Host files and directories copied in at the same paths.
    pub copies: Vec<(PathBuf, CopyKind)>,
    /// Executables in no view that the program runs by their host paths (cargo's
    /// `CARGO_BIN_EXE_*`), at the same paths in the guest.
    pub executables: Vec<PathBuf>,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// How long it may run.
    pub timeout: Duration,
    /// Whether kiln's stdin is forwarded to it (else it reads an empty stdin).
    pub forward_stdin: bool,
    /// Whether its stderr joins its stdout in one ordered stream (kiln's stdout and stderr
    /// are one file).
    pub merge_output: bool,
}

/// A directory the guest sees at its host path, writable there and never written back, made
/// of these host entries below it (the rest of the host directory is not there).
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// The directory, at the same path in the guest.
    pub dir: PathBuf,
    /// Its files, symlinks and directories the guest gets (the directories holding them are
    /// made).
    pub entries: Vec<(PathBuf, CopyKind)>,
}

/// The largest program sent through the agent when the guest has an inbox share: below it,
/// sending costs less than mounting the share (measured under TCG: a 570 KiB program is sent
/// in about 25 ms, a mount takes 30 to 60 ms).
const PUT_LIMIT: u64 = 1 << 20;

/// The most package files put through the agent into a guest whose inbox is not mounted yet;
/// more go through the inbox (a put costs a few milliseconds under TCG, the mount 30 to 60).
const PUT_FILES: usize = 16;

/// How a program's run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this status.
    Exited(u8),
    /// A signal killed it.
    Signaled(i32),
    /// It did not finish: the guest died or the time ran out; the message says why.
    GuestFailed(String),
}

/// Runs `program` on a guest restored from `target`'s snapshot: leased from the pool of
/// `pool` warm guests when `pool > 0` (started from `spec` when none runs), else restored here.
pub(crate) fn run(
    executor: &Executor,
    target: SnapshotTarget,
    pool: usize,
    spec: impl FnOnce(KeeperRole) -> KeeperSpec,
    program: Program<'_>,
) -> anyhow::Result<Ended> {
    let arch = target.arch();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let name = program.path.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
    // The guest: leased warm from the pool's keeper, or restored here. Both die with their
    // holder (the lease's end, or QEMU's process group).
    let leased = if pool > 0 { lease_from_pool(executor, &target, pool, spec)? } else { None };
    let (mut agent, console, inbox, inbox_mounted, lease, _restored) = match leased {
        Some(lease) => {
            let _enter = runtime.enter();
            lease.agent.set_nonblocking(true)?;
            let stream = tokio::net::UnixStream::from_std(lease.agent.try_clone()?)?;
            let (console, inbox, mounted) = (lease.console.clone(), lease.inbox.clone(), lease.inbox_mounted);
            // A renewed guest's connection served earlier leaseholders.
            let agent = AgentClient::from_stream(stream).with_fresh_ids()?;
            (agent, console, inbox, mounted, Some(lease), None)
        }
        None => {
            let guest = target.restore_or_remake(executor, &runtime)?;
            let console = guest.scratch.path().join(snapshot::CONSOLE_FILE);
            (guest.agent, console, guest.inbox, false, None, Some((guest.qemu, guest.scratch)))
        }
    };
    let views = joined(program.views);
    let work = async {
        let mut size = 0;
        for path in std::iter::once(program.path).chain(program.executables.iter().map(PathBuf::as_path)) {
            size += std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?.len();
        }
        let package_files: usize =
            views.iter().flat_map(|view| &view.entries).filter(|(_, kind)| *kind != CopyKind::Dir).count();
        let program_in_view = views
            .iter()
            .flat_map(|view| &view.entries)
            .any(|(path, kind)| path == program.path && *kind == CopyKind::File);
        // Through the inbox share when the guest has one and it is mounted, or mounting it
        // costs less than sending: a large program (a debug test binary is mostly debug info
        // the guest never reads) or many package files. A directory of its own: a renewed
        // guest's 9p cache may still know the names earlier leaseholders used.
        let through_inbox = match &inbox {
            Some(inbox) if inbox_mounted || size > PUT_LIMIT || package_files > PUT_FILES => {
                let token = crate::host::random_hex(8)?;
                let host = inbox.join(&token);
                std::fs::create_dir(&host)
                    .with_context(|| format!("cannot create a directory in the guest's inbox `{}`", inbox.display()))?;
                if !inbox_mounted {
                    agent.mount_9p(snapshot::INBOX_TAG, snapshot::INBOX_GUEST_PATH).await?;
                }
                Some((host, format!("{}/{token}", snapshot::INBOX_GUEST_PATH)))
            }
            _ => None,
        };
        let guest_program = match &through_inbox {
            _ if program_in_view => program.path.to_string_lossy().into_owned(),
            Some((host, guest)) => {
                link_or_copy(program.path, &host.join(&name))?;
                format!("{guest}/{name}")
            }
            None => {
                let guest_program = format!("/kiln/bin/{name}");
                let bytes =
                    std::fs::read(program.path).with_context(|| format!("cannot read `{}`", program.path.display()))?;
                agent.put(&guest_program, 0o755, &bytes).await?;
                guest_program
            }
        };
        let mut argv = vec![guest_program];
        argv.extend(program.args.iter().cloned());
        for (index, view) in views.iter().enumerate() {
            match &through_inbox {
                // Nothing below it: nothing to show (the working directory is made).
                _ if view.entries.iter().all(|(path, _)| *path == view.dir) => {}
                Some((host, guest)) => {
                    let name = format!("view{index}");
                    link_tree(&view.dir, &view.entries, &host.join(&name))?;
                    agent.writable_view(&format!("{guest}/{name}"), &view.dir.to_string_lossy()).await?;
                }
                None => put_copies(&mut agent, &view.entries).await?,
            }
        }
        for (index, executable) in program.executables.iter().enumerate() {
            let at = executable.to_string_lossy();
            match &through_inbox {
                // Linked into a directory of its own (its file name kept), pointed at from its path.
                Some((host, guest)) => {
                    let file_name = executable.file_name().map_or_else(|| "program".into(), |n| n.to_string_lossy());
                    let dir = format!("bin{index}");
                    std::fs::create_dir(host.join(&dir))
                        .with_context(|| format!("cannot create a directory in `{}`", host.display()))?;
                    link_or_copy(executable, &host.join(&dir).join(&*file_name))?;
                    agent.symlink(&at, &format!("{guest}/{dir}/{file_name}")).await?;
                }
                None => {
                    let bytes =
                        std::fs::read(executable).with_context(|| format!("cannot read `{}`", executable.display()))?;
                    agent.put(&at, 0o755, &bytes).await?;
                }
            }
        }
        put_copies(&mut agent, &program.copies).await?;
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let input = program.forward_stdin.then(tokio::io::stdin);
        let cwd = Some(program.cwd.to_string_lossy().into_owned());
        let status = agent
            .exec_program(argv, program.env.clone(), cwd, input, program.merge_output, |is_stderr, bytes| {
                let _ = if is_stderr { stderr.write_all(bytes) } else { stdout.write_all(bytes) };
            })
            .await?;
        let _ = stdout.flush();
        anyhow::Ok(status)
    };
    let outcome = runtime.block_on(async { tokio::time::timeout(program.timeout, work).await });
    // The connection is closed before the lease ends, so the keeper renewing the guest is its
    // only user.
    drop(agent);
    // A run whose guest went away while its pool stopped is told so: the console would only
    // say that the kernel was killed.
    let pool_stopped =
        matches!(outcome, Ok(Err(_))) && lease.as_ref().is_some_and(|lease| lease.keeper_gone(KEEPER_GONE));
    drop(lease);
    Ok(match outcome {
        Ok(Ok(kiln_agent::ExitStatus::Signal(signal))) => Ended::Signaled(signal),
        Ok(Ok(kiln_agent::ExitStatus::Code(code))) => {
            Ended::Exited(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX))
        }
        Ok(Err(err)) if pool_stopped => Ended::GuestFailed(format!(
            "`{name}` did not finish in the {arch} guest: its pool stopped during the run (`kiln vm stop \
             --pools`, or its keeper was killed), and the guest went with it ({err:#}); run it again"
        )),
        Ok(Err(err)) => {
            // The agent went away: what the guest's console said last is the likely why.
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            let mut message = format!("`{name}` did not finish in the {arch} guest: {err:#}");
            // The kernel's own verdict (a panic, an oops) first, then the console's last lines.
            let failure = regex::Regex::new(KERNEL_FAILURE).ok();
            if let Some(line) = lines.iter().find(|line| failure.as_ref().is_some_and(|re| re.is_match(line))) {
                message.push_str(&format!("\n  | {line}\n  | ..."));
            }
            for line in &lines[lines.len().saturating_sub(10)..] {
                message.push_str(&format!("\n  | {line}"));
            }
            Ended::GuestFailed(message)
        }
        Err(_) => Ended::GuestFailed(format!(
            "`{name}` did not finish in the {arch} guest within {}s",
            program.timeout.as_secs()
        )),
    })
}

/// `views` in mount order, ancestors first (a directory's view must not cover one mounted
/// inside it), each inside another joined to it (a target directory inside the package): one
/// overlay for both, one mount less per run.
fn joined(mut views: Vec<View>) -> Vec<View> {
    views.sort_by_key(|view| view.dir.components().count());
    let mut joined: Vec<View> = Vec::new();
    for view in views {
        match joined.iter_mut().find(|outer| view.dir.starts_with(&outer.dir)) {
            Some(outer) => outer.entries.extend(view.entries),
            None => joined.push(view),
        }
    }
    joined
}

/// Puts host files, symlinks and empty directories into the guest at the same paths (the
/// directories holding the others are made with them).
async fn put_copies(agent: &mut AgentClient, copies: &[(PathBuf, CopyKind)]) -> anyhow::Result<()> {
    let mode = |path: &Path| -> anyhow::Result<u32> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        Ok(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777)
    };
    let holding: std::collections::HashSet<&Path> = copies.iter().filter_map(|(path, _)| path.parent()).collect();
    for (path, kind) in copies {
        let guest_path = path.to_string_lossy();
        match kind {
            CopyKind::File => {
                let content = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
                agent.put(&guest_path, mode(path)?, &content).await?;
            }
            CopyKind::Symlink(target) => agent.symlink(&guest_path, target).await?,
            CopyKind::Dir if !holding.contains(path.as_path()) => agent.mkdir(&guest_path, mode(path)?).await?,
            CopyKind::Dir => {}
        }
    }
    Ok(())
}

/// Hard-links `from` to `to`, or copies it where a link cannot be made (another file system).
fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy `{}` into the guest's inbox `{}`", from.display(), to.display()))?;
    }
    Ok(())
}

/// Recreates the package directory `dir`'s `entries` (from
/// [`package_copies`](crate::guest::package_copies)) below `to`: directories made, files linked
/// (or copied), symlinks made with the same targets.
fn link_tree(dir: &Path, entries: &[(PathBuf, CopyKind)], to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
    for (path, kind) in entries {
        let Ok(relative) = path.strip_prefix(dir) else { continue };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = to.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        match kind {
            CopyKind::Dir => {
                std::fs::create_dir_all(&target).with_context(|| format!("cannot create `{}`", target.display()))?;
            }
            CopyKind::File => link_or_copy(path, &target)?,
            CopyKind::Symlink(link) => std::os::unix::fs::symlink(link, &target)
                .with_context(|| format!("cannot make the link `{}`", target.display()))?,
        }
    }
    Ok(())
}

/// How long a leaseholder waits for a pool keeper that is starting to listen: it binds its
/// socket as soon as it has the snapshot, so a longer start is a snapshot being made.
const KEEPER_START: Duration = Duration::from_secs(3);

/// How long a leaseholder whose guest went away waits for its keeper's connection to close,
/// which tells a stopped pool from a guest that failed.
const KEEPER_GONE: Duration = Duration::from_secs(1);

/// How long a leaseholder waits for a guest that the keeper is renewing or restoring.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// A warm guest from the pool's keeper for this snapshot, starting the keeper when none
/// runs. A keeper that is starting restores all its guests at once, so the run waits for one
/// of them rather than restore one more on the same CPUs. `None` (restore one here) when no
/// keeper listens within [`KEEPER_START`], when it leaves, or when it has no guest within
/// [`LEASE_WAIT`].
fn lease_from_pool(
    executor: &Executor,
    target: &SnapshotTarget,
    size: usize,
    spec: impl FnOnce(KeeperRole) -> KeeperSpec,
) -> anyhow::Result<Option<lease::Lease>> {
    let closure = target.closure();
    let socket = keeper::pool_socket(executor.work_dir(), &closure)?;
    if let Ok(Some(lease)) = lease::take(&socket, Some(LEASE_WAIT)) {
        return Ok(Some(lease));
    }
    let mut started = None;
    if !keeper::keeper_running(&socket)? {
        let spec = spec(KeeperRole::Pool { size, closure: closure.to_string() });
        started = Some(spec.spawn(&keeper::pool_log(executor.work_dir(), spec.arch.as_str()))?);
    }
    let deadline = std::time::Instant::now() + KEEPER_START;
    while std::time::Instant::now() < deadline {
        // The keeper this run started left: another one won the socket, or it failed (its
        // log says why).
        if let Some(child) = started.as_mut()
            && child.try_wait()?.is_some()
        {
            return Ok(None);
        }
        if lease::connect(&socket).is_some() {
            return Ok(lease::take(&socket, Some(LEASE_WAIT)).ok().flatten());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(None)
}
