//! `vm`: sessions, one long-lived guest per name for interactive work (`start`, `exec`,
//! `shell`, `sync`, `stop`, `ls`), and the hidden `vm keep`, the keeper process behind
//! sessions and `run --pool` (started by kiln itself from a spec; see `vm::keeper`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_types::Arch;

use crate::{
    cli::{VmArgs, VmCommand},
    cx::{Cx, Options},
    env,
    error::UsageError,
    exec::InstallMode,
    exit_code, guest,
    plan::WarmthAsked,
    report::{Printer, Verbosity},
    units,
    vm::{
        SnapshotTarget,
        agent_client::AgentClient,
        keeper::{self, KeeperRole, KeeperSpec},
        lease, sync,
    },
};

/// How long `vm start` waits for the session's guest.
const START_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a `vm` subcommand.
pub(super) fn run(cx: &Cx, args: &VmArgs) -> anyhow::Result<u8> {
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
        VmCommand::Keep { .. } => Err(UsageError::new("`vm keep` runs on its own (kiln starts it)", None).into()),
    }
}

/// The keeper process: claims its socket (or leaves at once: another keeper has it), makes
/// the snapshot as its starter did, with every setting its spec carries, and serves.
pub(super) fn run_keeper(command: &VmCommand) -> anyhow::Result<u8> {
    let VmCommand::Keep { spec } = command else { return Ok(exit_code::SUCCESS) };
    let spec = KeeperSpec::parse(spec)?;
    let options = Options {
        jobs: spec.jobs,
        // Nobody is at a keeper's terminal; its starter installed what the guest needs.
        install: InstallMode::Never,
        accel: kiln_qemu::accel::AccelPolicy::Force(spec.accel),
        explain: false,
        push: false,
    };
    let cx = Cx::open(Some(&spec.config), Printer::new(Verbosity::Normal), options)?;
    let Some(claim) = keeper::claim(&spec, &cx.work_dir())? else {
        eprintln!("another keeper holds this keeper's socket; leaving");
        return Ok(exit_code::SUCCESS);
    };
    let asked = WarmthAsked { snapshot: true, ..WarmthAsked::default() };
    let (_, linux) = cx.linux_target(spec.arch, Some(&spec.kernel), Some(&spec.rootfs), asked, None)?;
    let target = SnapshotTarget::new(cx.executor(), linux)?;
    keeper::keep(cx.executor(), &spec, claim, target)?;
    Ok(exit_code::SUCCESS)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(UsageError::with_help(
            format!("`{name}` is not a session name"),
            "use letters, digits, `-` and `_`",
        )
        .into());
    }
    Ok(())
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
    let socket = keeper::session_socket(&cx.work_dir(), name)?;
    if keeper::keeper_running(&socket)? {
        return Err(UsageError::with_help(
            format!("session `{name}` is already running"),
            format!("`vm stop -n {name}` first, or pick another name with `-n`"),
        )
        .into());
    }
    let Some(arch) = arch.or_else(Arch::host) else {
        return Err(UsageError::with_help("which architecture?", "pass `--arch`").into());
    };
    if let Some(pid) = owner
        && (pid <= 1 || !keeper::process_alive(pid))
    {
        return Err(UsageError::with_help(
            format!("--owner {pid}: no such process to tie the session to"),
            "give the PID of a running process (the default is this terminal's shell)",
        )
        .into());
    }
    // Resolve and make the snapshot here, where progress and errors reach the user.
    let asked = WarmthAsked { snapshot: true, ..WarmthAsked::default() };
    let (_, linux) = cx.linux_target(arch, kernel, rootfs, asked, None)?;
    let target = SnapshotTarget::new(cx.executor(), linux)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    target.entry(cx.executor(), &runtime)?;
    let owner = owner.or_else(keeper::default_owner);
    let files = keeper::session_files(&cx.work_dir(), name);
    let _ = std::fs::remove_file(&files.synced);
    let _ = std::fs::remove_file(&files.log);
    let spec = cx.keeper_spec(&target.linux, KeeperRole::Session { name: name.to_owned(), owner });
    let started = Instant::now();
    let mut child = spec.spawn(&files.log)?;
    loop {
        if let Some(status) = keeper::status(&socket) {
            cx.printer().status(
                "Started",
                &format!(
                    "session `{name}` ({arch}, keeper {}{}) in {}",
                    status.pid,
                    owner.map(|pid| format!(", ends with process {pid}")).unwrap_or_default(),
                    units::seconds(started.elapsed())
                ),
            );
            return Ok(exit_code::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&files.log).unwrap_or_default();
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
    let socket = keeper::session_socket(&cx.work_dir(), name)?;
    if lease::connect(&socket).is_none() {
        return Err(UsageError::with_help(
            format!("no session `{name}` is running"),
            format!("start it with `cargo xtask vm start -n {name}`"),
        )
        .into());
    }
    lease::take(&socket, None)?.with_context(|| format!("session `{name}` refused a lease"))
}

fn agent_of(lease: &lease::Lease) -> anyhow::Result<AgentClient> {
    let stream = lease.agent.try_clone()?;
    stream.set_nonblocking(true)?;
    AgentClient::from_stream(tokio::net::UnixStream::from_std(stream)?).with_fresh_ids()
}

fn guest_env() -> BTreeMap<String, String> {
    let mut env = guest::agent_env();
    if let Some(term) = env::var(env::TERM) {
        env.insert(env::TERM.to_owned(), term);
    }
    env
}

fn cwd_text() -> anyhow::Result<String> {
    Ok(std::env::current_dir().context("cannot read the current directory")?.to_string_lossy().into_owned())
}

fn exec(cx: &Cx, name: &str, command: &[String]) -> anyhow::Result<u8> {
    if command.is_empty() {
        return Err(UsageError::with_help("no command to run", "`cargo xtask vm exec -- COMMAND ARGS...`").into());
    }
    // Standard input goes along (`echo x | vm exec -- cat`); Ctrl-C reaches the command.
    interactive(cx, name, command.to_vec())
}

fn shell(cx: &Cx, name: &str) -> anyhow::Result<u8> {
    cx.printer().status("Shell", &format!("in session `{name}` (no terminal: line by line; `exit` or Ctrl-D ends it)"));
    interactive(cx, name, vec!["/bin/sh".to_owned(), "-i".to_owned()])
}

/// Runs `argv` in the session's guest with kiln's standard input, output and signals, and
/// returns its status.
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
    // The terminal reader may still wait, in a blocking thread, for a line no one will send:
    // the runtime is let go without waiting for it.
    runtime.shutdown_background();
    Ok(u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(u8::MAX))
}

fn sync_dir(cx: &Cx, name: &str, dir: Option<&Path>) -> anyhow::Result<u8> {
    let root = match dir {
        Some(dir) => std::path::absolute(dir).with_context(|| format!("cannot resolve `{}`", dir.display()))?,
        None => cx.root().to_owned(),
    };
    if !root.is_dir() {
        return Err(UsageError::with_help(
            format!("`{}` is not a directory", root.display()),
            "`vm sync [DIR]` syncs a directory (default: the one holding Kiln.toml)",
        )
        .into());
    }
    let started = Instant::now();
    let host = sync::host_manifest(&root)?;
    let synced_file = keeper::session_files(&cx.work_dir(), name).synced;
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
        cx.printer().verbose("Put", path);
    }
    for path in &report.removed {
        cx.printer().status("Removed", path);
    }
    cx.printer().status(
        "Synced",
        &format!(
            "{} into session `{name}`: {} put ({}), {} removed, {} unchanged in {}",
            root.display(),
            report.put.len(),
            units::human_size(report.bytes),
            report.removed.len(),
            report.unchanged,
            units::seconds(started.elapsed())
        ),
    );
    Ok(exit_code::SUCCESS)
}

fn stop(cx: &Cx, name: &str) -> anyhow::Result<u8> {
    check_name(name)?;
    let socket = keeper::session_socket(&cx.work_dir(), name)?;
    if !keeper::stop(&socket)? {
        return Err(UsageError::new(format!("no session `{name}` is running"), None).into());
    }
    cx.printer().status("Stopped", &format!("session `{name}`"));
    Ok(exit_code::SUCCESS)
}

/// Stops every pool keeper of this project (their idle guests die with them). Inside a
/// project, the built-in runner guests' pools (which other crates' runs may be using) keep
/// running, and a line says how to stop them.
fn stop_pools(cx: &Cx) -> anyhow::Result<u8> {
    let pools: Vec<_> = running_keepers(cx)?.into_iter().filter(|(_, info)| info.kind == "pool").collect();
    if pools.is_empty() {
        cx.printer().status("Stopped", "nothing: no run pool is running");
    }
    for (whose, info) in pools {
        if !whose.is_empty() {
            cx.printer().status(
                "Kept",
                &format!(
                    "the built-in runner guests' {} pool (`kiln vm stop --pools` outside any Kiln.toml \
                     project stops it)",
                    info.arch
                ),
            );
        } else if keeper::stop(&info.socket)? {
            cx.printer().status("Stopped", &format!("the {} run pool", info.arch));
        }
    }
    Ok(exit_code::SUCCESS)
}

/// Lists the running sessions and pools of this project and those of kiln's built-in runner
/// guests (which `kiln run` uses in crates without a Kiln.toml), the latter marked.
fn ls(cx: &Cx) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let keepers = running_keepers(cx)?;
    if keepers.is_empty() {
        // On stderr: a script reading the list gets an empty one.
        cx.printer().status(
            "Listed",
            "no sessions or pools are running (`vm start` starts a session; `run --pool N` and the \
             built-in guests keep a pool for 30 s after their last run; one-off guests are not listed)",
        );
    }
    for (whose, info) in keepers {
        let owner = info.owner.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        let status = keeper::status(&info.socket).map_or_else(
            || "starting".to_owned(),
            |s| {
                format!(
                    "{} idle, {} leased, {} renewing, {} leases on reused guests",
                    s.idle, s.leased, s.renewing, s.reused
                )
            },
        );
        writeln!(
            out,
            "{:<8} {:<16} {:<8} keeper {:<8} owner {owner:<8} {status}{whose}",
            info.kind, info.name, info.arch, info.keeper_pid
        )?;
    }
    Ok(exit_code::SUCCESS)
}

/// The running keepers of this context's project, then, inside a project, those of the
/// built-in runner guests, each with what [`ls`] and [`stop_pools`] add to its line.
fn running_keepers(cx: &Cx) -> anyhow::Result<Vec<(&'static str, keeper::KeeperInfo)>> {
    let mut keepers: Vec<_> = keeper::running_keepers(&cx.work_dir())?.into_iter().map(|info| ("", info)).collect();
    if !cx.is_builtin_runner() {
        // No per-user cache means no built-in runner has ever run: nothing to add.
        if let Ok(dir) = crate::config::runner_dir() {
            let builtin = keeper::running_keepers(&crate::config::work_dir(&dir))?;
            keepers.extend(builtin.into_iter().map(|info| (" (built-in runner guests)", info)));
        }
    }
    Ok(keepers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_plain() {
        assert!(check_name("default").is_ok());
        assert!(check_name("my_vm-2").is_ok());
        for bad in ["", "a b", "../x", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
