//! `vm`: sessions, one long-lived guest per name for interactive work (`start`, `exec`,
//! `shell`, `sync`, `stop`, `ls`), and `vm keep`, the keeper process behind sessions and
//! `run --pool` (started by kiln itself).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_types::Arch;
use serde::{Deserialize, Serialize};

use crate::{
    cli::{VmArgs, VmCommand},
    commands::UsageError,
    cx::Cx,
    exec::agent_client::AgentClient,
    vm::{
        SnapshotTarget,
        keeper::{self, Keeper, Kind},
        lease::{self, Answer, Ask},
        sync,
    },
};

/// How long `vm start` waits for the session's guest.
const START_DEADLINE: Duration = Duration::from_secs(300);

/// What `vm ls` shows of a keeper (written by it while it listens).
#[derive(Debug, Serialize, Deserialize)]
struct KeeperInfo {
    /// `session` or `pool`.
    kind: String,
    name: String,
    arch: String,
    keeper_pid: u32,
    owner: Option<u32>,
    socket: PathBuf,
}

/// Runs a `vm` subcommand.
pub fn run(cx: &Cx, args: &VmArgs) -> anyhow::Result<u8> {
    match &args.command {
        VmCommand::Start { name, arch, kernel, rootfs, owner } => {
            start(cx, name, *arch, kernel.as_deref(), rootfs.as_deref(), *owner)
        }
        VmCommand::Exec { name, command } => exec(cx, name, command),
        VmCommand::Shell { name } => shell(cx, name),
        VmCommand::Sync { name, dir } => sync_dir(cx, name, dir.as_deref()),
        VmCommand::Stop { name, pools } => {
            if *pools {
                stop_pools(cx)
            } else {
                stop(cx, name)
            }
        }
        VmCommand::Ls => ls(cx),
        VmCommand::Keep { arch, kernel, rootfs, pool, session, owner, closure } => keep(
            cx,
            KeepArgs {
                arch: *arch,
                kernel: kernel.as_deref(),
                rootfs: rootfs.as_deref(),
                pool: *pool,
                session: session.as_deref(),
                owner: *owner,
                closure: closure.as_deref(),
            },
        ),
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(UsageError::new(
            format!("`{name}` is not a session name"),
            Some("use letters, digits, `-` and `_`".to_owned()),
        )
        .into());
    }
    Ok(())
}

fn session_socket(cx: &Cx, name: &str) -> anyhow::Result<PathBuf> {
    lease::socket_path("vm", &[cx.work_dir().as_os_str().as_encoded_bytes(), name.as_bytes()])
}

fn session_files(cx: &Cx, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = cx.work_dir().join("vm");
    (dir.join(format!("{name}.json")), dir.join(format!("{name}.log")), dir.join(format!("{name}.synced")))
}

/// The lock file beside a keeper's socket, which the keeper holds while it lives.
fn keeper_lock(socket: &Path) -> anyhow::Result<std::fs::File> {
    crate::exec::slots::lock_file(&socket.with_extension("lock"))
}

/// Whether a keeper holds the lock beside `socket` (it may still be starting).
pub(crate) fn keeper_running(socket: &Path) -> anyhow::Result<bool> {
    Ok(keeper_lock(socket)?.try_lock().is_err())
}

/// Starts `kiln vm keep ARGS` in the background, detached from the terminal's process group
/// and from kiln's standard streams (its messages go to `log`).
pub(crate) fn spawn_keeper(cx: &Cx, args: &[&str], log: &Path) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open `{}`", log.display()))?;
    let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
    let child = std::process::Command::new(exe)
        .arg("--config")
        .arg(&cx.config.file)
        .arg("-j")
        .arg(cx.options.jobs.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .context("cannot start kiln's keeper process")?;
    Ok(child)
}

/// The owner `vm start` ties a session to by default: the leader of kiln's session (the
/// terminal's shell), else the shell that ran `cargo xtask` (the nearest ancestor that is
/// not cargo, rustup or kiln itself).
fn default_owner() -> Option<u32> {
    let own = std::process::id();
    if let Ok(leader) = nix::unistd::getsid(None)
        && let Ok(leader) = u32::try_from(leader.as_raw())
        && leader > 1
        && leader != own
        && keeper::process_alive(leader)
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

fn start(
    cx: &Cx,
    name: &str,
    arch: Option<Arch>,
    kernel: Option<&str>,
    rootfs: Option<&str>,
    owner: Option<u32>,
) -> anyhow::Result<u8> {
    check_name(name)?;
    let socket = session_socket(cx, name)?;
    if keeper_running(&socket)? {
        return Err(UsageError::new(
            format!("session `{name}` is already running"),
            Some(format!("`vm stop -n {name}` first, or pick another name with `-n`")),
        )
        .into());
    }
    let Some(arch) = arch.or_else(Arch::host) else {
        return Err(UsageError::new("which architecture?", Some("pass `--arch`".to_owned())).into());
    };
    // Resolve and make the snapshot here, where progress and errors reach the user.
    let linux = super::run::resolve_linux(cx, arch, kernel, rootfs)?;
    super::run_snapshot::refuse_disk_rootfs(&linux)?;
    let target = SnapshotTarget::new(cx, linux)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    target.entry(cx, &runtime)?;
    if let Some(pid) = owner
        && (pid <= 1 || !keeper::process_alive(pid))
    {
        return Err(UsageError::new(
            format!("--owner {pid}: no such process to tie the session to"),
            Some("give the PID of a running process (the default is this terminal's shell)".to_owned()),
        )
        .into());
    }
    let owner = owner.or_else(default_owner);
    let (_, log, synced) = session_files(cx, name);
    let _ = std::fs::remove_file(&synced);
    let _ = std::fs::remove_file(&log);
    let arch_text = arch.to_string();
    let owner_text = owner.map(|pid| pid.to_string());
    let mut args = vec!["vm", "keep", "--arch", &arch_text, "--session", name];
    args.extend(["--kernel", &target.linux.kernel_name, "--rootfs", &target.linux.rootfs_name]);
    if let Some(owner) = &owner_text {
        args.extend(["--owner", owner]);
    }
    let started = Instant::now();
    let mut child = spawn_keeper(cx, &args, &log)?;
    loop {
        if let Some(stream) = lease::connect(&socket)
            && let Ok((Answer::Status(status), _)) = lease::ask(&stream, &Ask::Status, Some(Duration::from_secs(5)))
        {
            cx.printer.status(
                "Started",
                &format!(
                    "session `{name}` ({arch}, keeper {}{}) in {}",
                    status.pid,
                    owner.map(|pid| format!(", ends with process {pid}")).unwrap_or_default(),
                    crate::report::seconds(started.elapsed())
                ),
            );
            return Ok(crate::exit_code::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<_> = tail.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
            anyhow::bail!(
                "session `{name}`'s keeper exited ({status}) before its guest was up:\n  | {}",
                tail.join("\n  | ")
            );
        }
        anyhow::ensure!(
            started.elapsed() < START_DEADLINE,
            "session `{name}` did not come up within {}s",
            START_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Leases the session's guest, waiting for another client to finish.
fn lease_session(cx: &Cx, name: &str) -> anyhow::Result<lease::Lease> {
    check_name(name)?;
    let socket = session_socket(cx, name)?;
    let Some(_) = lease::connect(&socket) else {
        return Err(UsageError::new(
            format!("no session `{name}` is running"),
            Some(format!("start it with `cargo xtask vm start -n {name}`")),
        )
        .into());
    };
    lease::take(&socket, None)?.with_context(|| format!("session `{name}` refused a lease"))
}

fn agent_of(lease: &lease::Lease) -> anyhow::Result<AgentClient> {
    let stream = lease.agent.try_clone()?;
    stream.set_nonblocking(true)?;
    Ok(AgentClient::from_stream(tokio::net::UnixStream::from_std(stream)?).with_fresh_ids())
}

fn guest_env() -> BTreeMap<String, String> {
    let mut env = crate::exec::guest::agent_env();
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".to_owned(), term);
    }
    env
}

fn cwd_text() -> anyhow::Result<String> {
    Ok(std::env::current_dir().context("cannot read the current directory")?.to_string_lossy().into_owned())
}

fn exec(cx: &Cx, name: &str, command: &[String]) -> anyhow::Result<u8> {
    if command.is_empty() {
        return Err(
            UsageError::new("no command to run", Some("`cargo xtask vm exec -- COMMAND ARGS...`".to_owned())).into()
        );
    }
    // Standard input goes along (`echo x | vm exec -- cat`); Ctrl-C reaches the command.
    interactive(cx, name, command.to_vec())
}

fn shell(cx: &Cx, name: &str) -> anyhow::Result<u8> {
    cx.printer.status("Shell", &format!("in session `{name}` (no terminal: line by line; `exit` or Ctrl-D ends it)"));
    interactive(cx, name, vec!["/bin/sh".to_owned(), "-i".to_owned()])
}

/// Runs `argv` in the session's guest with kiln's standard input, output and signals, and
/// exits with its status.
fn interactive(cx: &Cx, name: &str, argv: Vec<String>) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let lease = lease_session(cx, name)?;
    let status = runtime.block_on(async {
        let mut agent = agent_of(&lease)?;
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let status = agent
            .exec_interactive(argv, guest_env(), Some(cwd_text()?), tokio::io::stdin(), |is_stderr, bytes| {
                let _ = if is_stderr { stderr.write_all(bytes) } else { stdout.write_all(bytes) };
                let _ = if is_stderr { stderr.flush() } else { stdout.flush() };
            })
            .await?;
        anyhow::Ok(status)
    })?;
    // The terminal reader may still wait for a line no one will send.
    let code = u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(u8::MAX);
    std::process::exit(i32::from(code));
}

fn sync_dir(cx: &Cx, name: &str, dir: Option<&Path>) -> anyhow::Result<u8> {
    let root = match dir {
        Some(dir) => std::path::absolute(dir).with_context(|| format!("cannot resolve `{}`", dir.display()))?,
        None => cx.config.root.clone(),
    };
    if !root.is_dir() {
        return Err(UsageError::new(
            format!("`{}` is not a directory", root.display()),
            Some("`vm sync [DIR]` syncs a directory (default: the one holding Kiln.toml)".to_owned()),
        )
        .into());
    }
    let started = Instant::now();
    let host = sync::host_manifest(&root)?;
    let (_, _, synced_file) = session_files(cx, name);
    // What earlier syncs put, per root: the paths a deletion on the host removes.
    let mut synced: BTreeMap<String, BTreeSet<String>> =
        std::fs::read(&synced_file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    let key = root.to_string_lossy().into_owned();
    let previous = synced.get(&key).cloned().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let lease = lease_session(cx, name)?;
    let report = runtime.block_on(async {
        let mut agent = agent_of(&lease)?;
        sync::sync(&mut agent, &root, &host, &previous).await
    })?;
    synced.insert(key, host.keys().cloned().collect());
    let temp = synced_file.with_extension("synced.partial");
    std::fs::write(&temp, serde_json::to_vec(&synced)?)
        .with_context(|| format!("cannot write `{}`", temp.display()))?;
    std::fs::rename(&temp, &synced_file).with_context(|| format!("cannot write `{}`", synced_file.display()))?;
    for path in &report.put {
        cx.printer.verbose("Put", path);
    }
    for path in &report.removed {
        cx.printer.status("Removed", path);
    }
    cx.printer.status(
        "Synced",
        &format!(
            "{} into session `{name}`: {} put ({}), {} removed, {} unchanged in {}",
            root.display(),
            report.put.len(),
            crate::report::human_size(report.bytes),
            report.removed.len(),
            report.unchanged,
            crate::report::seconds(started.elapsed())
        ),
    );
    Ok(crate::exit_code::SUCCESS)
}

fn stop(cx: &Cx, name: &str) -> anyhow::Result<u8> {
    check_name(name)?;
    let socket = session_socket(cx, name)?;
    let Some(stream) = lease::connect(&socket) else {
        return Err(UsageError::new(format!("no session `{name}` is running"), None).into());
    };
    lease::ask(&stream, &Ask::Stop, Some(Duration::from_secs(10)))?;
    // The keeper kills the guest and exits; wait for its lock so `stop` means stopped.
    let started = Instant::now();
    while keeper_running(&socket)? && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    cx.printer.status("Stopped", &format!("session `{name}`"));
    Ok(crate::exit_code::SUCCESS)
}

/// The keepers of this project that are running.
fn running_keepers(cx: &Cx) -> anyhow::Result<Vec<KeeperInfo>> {
    let dir = cx.work_dir().join("vm");
    let mut keepers = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(info) = serde_json::from_slice::<KeeperInfo>(&std::fs::read(&path)?) else { continue };
        if keeper_running(&info.socket)? {
            keepers.push(info);
        }
    }
    Ok(keepers)
}

/// Stops every pool keeper of this project (their idle guests die with them).
fn stop_pools(cx: &Cx) -> anyhow::Result<u8> {
    for info in running_keepers(cx)?.into_iter().filter(|info| info.kind == "pool") {
        if let Some(stream) = lease::connect(&info.socket) {
            lease::ask(&stream, &Ask::Stop, Some(Duration::from_secs(10)))?;
            let started = Instant::now();
            while keeper_running(&info.socket)? && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            cx.printer.status("Stopped", &format!("the {} run pool", info.arch));
        }
    }
    Ok(crate::exit_code::SUCCESS)
}

fn ls(cx: &Cx) -> anyhow::Result<u8> {
    let mut rows = Vec::new();
    for info in running_keepers(cx)? {
        let owner = info.owner.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        let status = lease::connect(&info.socket)
            .and_then(|stream| lease::ask(&stream, &Ask::Status, Some(Duration::from_secs(5))).ok())
            .and_then(|(answer, _)| match answer {
                Answer::Status(status) => Some(format!("{} idle, {} leased", status.idle, status.leased)),
                _ => None,
            })
            .unwrap_or_else(|| "starting".to_owned());
        rows.push(format!(
            "{:<8} {:<16} {:<8} keeper {:<8} owner {owner:<8} {status}",
            info.kind, info.name, info.arch, info.keeper_pid
        ));
    }
    rows.sort();
    let mut out = std::io::stdout().lock();
    for row in rows {
        writeln!(out, "{row}")?;
    }
    Ok(crate::exit_code::SUCCESS)
}

/// `vm keep`'s arguments.
struct KeepArgs<'a> {
    arch: Arch,
    kernel: Option<&'a str>,
    rootfs: Option<&'a str>,
    pool: Option<usize>,
    session: Option<&'a str>,
    owner: Option<u32>,
    closure: Option<&'a str>,
}

/// The keeper process: takes its lock (or leaves at once: another keeper has it), resolves the
/// snapshot like the command that started it, and serves.
fn keep(cx: &Cx, args: KeepArgs<'_>) -> anyhow::Result<u8> {
    let work_dir = cx.work_dir();
    let socket = match (args.pool, args.session, args.closure) {
        (Some(_), None, Some(closure)) => {
            lease::socket_path("pool", &[work_dir.as_os_str().as_encoded_bytes(), &closure_bytes(closure)?])?
        }
        (None, Some(name), None) => {
            check_name(name)?;
            session_socket(cx, name)?
        }
        _ => anyhow::bail!("`vm keep` needs `--pool N --closure HASH` or `--session NAME`"),
    };
    // The lock first: a second keeper for the same socket leaves before doing any work.
    let lock = keeper_lock(&socket)?;
    if lock.try_lock().is_err() {
        eprintln!("another keeper holds the lock beside {}; leaving", socket.display());
        return Ok(crate::exit_code::SUCCESS);
    }
    let linux = super::run::resolve_linux(cx, args.arch, args.kernel, args.rootfs)?;
    let target = SnapshotTarget::new(cx, linux)?;
    let closure = target.closure();
    let (kind, info_file) = match (args.pool, args.session) {
        (Some(size), _) => {
            if args.closure != Some(closure.to_string().as_str()) {
                anyhow::bail!("the snapshot changed since this pool was asked for (now {closure}); not starting");
            }
            let name = format!("pool-{}-{}", args.arch, closure.short());
            let info = cx.work_dir().join("vm").join(format!("{name}.json"));
            let text = serde_json::to_string(&KeeperInfo {
                kind: "pool".to_owned(),
                name,
                arch: args.arch.to_string(),
                keeper_pid: std::process::id(),
                owner: None,
                socket: socket.clone(),
            })?;
            let kind = Kind::Pool { size: size.max(1), idle_timeout: super::run_snapshot::POOL_IDLE_TIMEOUT };
            (kind, Some((info, text)))
        }
        (None, name) => {
            let name = name.unwrap_or_default();
            let (info, _, _) = session_files(cx, name);
            let text = serde_json::to_string(&KeeperInfo {
                kind: "session".to_owned(),
                name: name.to_owned(),
                arch: args.arch.to_string(),
                keeper_pid: std::process::id(),
                owner: args.owner,
                socket: socket.clone(),
            })?;
            (Kind::Session { owner: args.owner }, Some((info, text)))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let entry = target.entry(cx, &runtime)?;
    drop(runtime);
    let keeper = Keeper { kind, socket, target: std::sync::Arc::new(target), entry, info_file };
    keeper.serve()?;
    drop(lock);
    Ok(crate::exit_code::SUCCESS)
}

fn closure_bytes(text: &str) -> anyhow::Result<[u8; 32]> {
    let closure: kiln_store::ClosureHash = text.parse().map_err(|e| anyhow::anyhow!("--closure: {e:?}"))?;
    Ok(*closure.as_bytes())
}
