//! `run --snapshot` and `run --pool N`: a fresh copy of a booted snapshot (made once and kept
//! in the store), restored here or leased from a pool keeper that holds warm ones; the program,
//! the package directory and `[run] files` go in through the guest agent; the program runs,
//! its output streams back, and the guest is thrown away.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    cx::Cx,
    exec::{
        agent_client::AgentClient,
        guest::{self, CopyKind},
        snapshot,
    },
    exit_code,
    vm::{SnapshotTarget, lease, target::LinuxTarget},
};

/// How long a pool keeper lingers without runs.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program` with `args` on a restored snapshot and returns its exit status.
pub fn run(
    cx: &Cx,
    linux: LinuxTarget,
    pool: usize,
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<u8> {
    refuse_disk_rootfs(&linux)?;
    let target = SnapshotTarget::new(cx, linux)?;
    let arch = target.arch();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (cwd, copies) = files_to_put(cx)?;
    let name = program.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
    let mut env = super::run::passed_env(&cx.config.run.env);
    env.extend(guest::agent_env());

    // The guest: leased warm from the pool's keeper, or restored here. Both die with their
    // holder (the lease's end, or QEMU's process group).
    let leased = if pool > 0 { lease_from_pool(cx, &target, pool)? } else { None };
    let (mut agent, console, inbox, _lease, _restored) = match leased {
        Some(lease) => {
            let _enter = runtime.enter();
            lease.agent.set_nonblocking(true)?;
            let stream = tokio::net::UnixStream::from_std(lease.agent.try_clone()?)?;
            (AgentClient::from_stream(stream), lease.console.clone(), lease.inbox.clone(), Some(lease), None)
        }
        None => {
            let guest = target.restore_or_remake(cx, &runtime)?;
            let console = guest.scratch.path().join(snapshot::CONSOLE_FILE);
            (guest.agent, console, guest.inbox, None, Some((guest.qemu, guest.scratch)))
        }
    };
    let work = async {
        // The program: linked into the guest's inbox share, whose pages the guest reads as
        // it runs (a debug test binary is mostly debug info it never reads); without 9p,
        // put through the agent.
        let guest_program = match &inbox {
            Some(inbox) => {
                let linked = inbox.join(&name);
                if std::fs::hard_link(program, &linked).is_err() {
                    std::fs::copy(program, &linked)
                        .with_context(|| format!("cannot copy `{}` into the guest's inbox", program.display()))?;
                }
                agent.mount_9p(snapshot::INBOX_TAG, snapshot::INBOX_GUEST_PATH).await?;
                format!("{}/{name}", snapshot::INBOX_GUEST_PATH)
            }
            None => {
                let guest_program = format!("/kiln/bin/{name}");
                let bytes = std::fs::read(program).with_context(|| format!("cannot read `{}`", program.display()))?;
                agent.put(&guest_program, 0o755, &bytes).await?;
                guest_program
            }
        };
        let mut argv = vec![guest_program];
        argv.extend(args.iter().cloned());
        for (path, kind) in &copies {
            let guest_path = path.to_string_lossy();
            match kind {
                CopyKind::File => {
                    let mode =
                        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions()) & 0o7777;
                    let content = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
                    agent.put(&guest_path, mode, &content).await?;
                }
                CopyKind::Symlink(target) => agent.symlink(&guest_path, target).await?,
                CopyKind::Dir => {}
            }
        }
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let status = agent
            .exec(argv, env, Some(cwd.to_string_lossy().into_owned()), |is_stderr, bytes| {
                let _ = if is_stderr { stderr.write_all(bytes) } else { stdout.write_all(bytes) };
            })
            .await?;
        let _ = stdout.flush();
        anyhow::Ok(status)
    };
    match runtime.block_on(async { tokio::time::timeout(timeout, work).await }) {
        Ok(Ok(status)) => Ok(u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(u8::MAX)),
        Ok(Err(err)) => {
            // The agent went away: what the guest's console said last is the likely why.
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            let mut message = format!("`{name}` did not finish in the {arch} guest: {err:#}");
            // The kernel's own verdict (a panic, an oops) first, then the console's last lines.
            let failure = regex::Regex::new(crate::plan::KERNEL_FAILURE).ok();
            if let Some(line) = lines.iter().find(|line| failure.as_ref().is_some_and(|re| re.is_match(line))) {
                message.push_str(&format!("\n  | {line}\n  | ..."));
            }
            for line in &lines[lines.len().saturating_sub(10)..] {
                message.push_str(&format!("\n  | {line}"));
            }
            cx.printer.always(&format!("error: {message}"));
            Ok(exit_code::INFRASTRUCTURE)
        }
        Err(_) => {
            cx.printer
                .always(&format!("error: `{name}` did not finish in the {arch} guest within {}s", timeout.as_secs()));
            Ok(exit_code::INFRASTRUCTURE)
        }
    }
}

/// A saved machine holds its disk's state only in part (the guest's caches, not the blocks
/// it wrote), so snapshots are made of initramfs guests only.
pub(crate) fn refuse_disk_rootfs(linux: &LinuxTarget) -> anyhow::Result<()> {
    if linux.images.disk.is_some() {
        return Err(super::UsageError::new(
            format!("rootfs `{}` is a disk image; snapshots are made of initramfs rootfs only", linux.rootfs_name),
            Some("boot it without `--snapshot`/`--pool` (or `[run] snapshot`), or give the rootfs `format = \"initramfs\"`".to_owned()),
        )
        .into());
    }
    Ok(())
}

/// The working directory, and what goes into the guest besides the program: the package
/// directories and `[run] files`, at their host paths.
fn files_to_put(cx: &Cx) -> anyhow::Result<(PathBuf, Vec<(PathBuf, CopyKind)>)> {
    let (cwd, dirs) = super::run::package_dirs()?;
    let mut copies = Vec::new();
    for dir in &dirs {
        copies.extend(guest::package_copies(dir)?);
    }
    for file in &cx.config.run.files {
        let path = cx.config.root.join(file);
        if path.is_dir() {
            copies.extend(guest::package_copies(&path)?);
        } else if path.is_file() {
            copies.push((path, CopyKind::File));
        } else {
            return Err(cx.config.error_at("run.files", format!("`{}` does not exist", path.display())).into());
        }
    }
    Ok((cwd, copies))
}

/// A warm guest from the pool's keeper for this snapshot, starting the keeper when none
/// runs. `None` (restore one here) while the keeper starts or has no idle guest.
fn lease_from_pool(cx: &Cx, target: &SnapshotTarget, size: usize) -> anyhow::Result<Option<lease::Lease>> {
    let closure = target.closure();
    let work_dir = cx.work_dir();
    let socket = lease::socket_path("pool", &[work_dir.as_os_str().as_encoded_bytes(), closure.as_bytes()])?;
    if let Ok(Some(lease)) = lease::take(&socket, Some(Duration::from_secs(10))) {
        return Ok(Some(lease));
    }
    if super::vm::keeper_running(&socket)? {
        return Ok(None);
    }
    let arch = target.arch().to_string();
    let size = size.to_string();
    let closure_hex = closure.to_string();
    let mut args = vec!["vm", "keep", "--arch", &arch, "--pool", &size, "--closure", &closure_hex];
    args.extend(["--kernel", &target.linux.kernel_name, "--rootfs", &target.linux.rootfs_name]);
    let log = work_dir.join("vm").join(format!("pool-{arch}.log"));
    super::vm::spawn_keeper(cx, &args, &log)?;
    Ok(None)
}
