//! `kiln-agent`: kiln's guest agent. It reads [`kiln_agent::Request`]s, one JSON object per
//! line, from the virtio port named `kiln-agent` (or standard input with `--stdio`), and
//! writes [`kiln_agent::Response`]s back. Each `exec` runs in its own thread, as the child of
//! a new session's leader, with its output streamed as it comes; what it leaves running is
//! killed when it ends.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use kiln_agent::{Body, ExitStatus, Op, PROTOCOL_VERSION, Reply, Request, Response, agent_banner};

mod sandbox;

/// The virtio-serial port name kiln gives the agent's channel.
const PORT_NAME: &str = "kiln-agent";

/// The largest chunk of output one response carries.
const CHUNK: usize = 64 * 1024;

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// The process group (session leader) of each running `exec`, by request id.
type Leaders = Arc<Mutex<std::collections::HashMap<u64, i32>>>;

/// The channel to kiln: where requests come from and responses go.
type Channel = (Box<dyn Read>, Box<dyn Write + Send>);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--stdio") {
        let sink: Sink = Arc::new(Mutex::new(Box::new(std::io::stdout())));
        serve(BufReader::new(std::io::stdin()), &sink, None);
        return ExitCode::SUCCESS;
    }
    // Only in a guest (on its virtio port) may the agent make sandboxes: making one kills
    // every other process it can.
    let sandboxes = sandbox::Sandboxes::new();
    // On the virtio port, kiln disconnecting (after the snapshot's handshake, or between a
    // restore's connections) ends what the agent reads, not the agent: it opens the port
    // again and serves the next connection, until kiln asks for a shutdown.
    loop {
        let (input, output) = match open_port() {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("kiln-agent: {err}");
                return ExitCode::FAILURE;
            }
        };
        let sink: Sink = Arc::new(Mutex::new(output));
        if serve(BufReader::new(input), &sink, Some(&sandboxes)) == Ended::Shutdown {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Why [`serve`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The input ended (kiln disconnected).
    Disconnected,
    /// kiln asked for a shutdown.
    Shutdown,
}

/// Opens the virtio port named `kiln-agent` (found through sysfs, since a minimal guest has
/// no udev to make `/dev/virtio-ports/` links).
fn open_port() -> Result<Channel, String> {
    let path = find_port().ok_or_else(|| format!("no virtio port named `{PORT_NAME}` (is virtio_console loaded?)"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let writer = file.try_clone().map_err(|e| format!("cannot duplicate {}: {e}", path.display()))?;
    Ok((Box::new(file), Box::new(writer)))
}

fn find_port() -> Option<PathBuf> {
    let linked = Path::new("/dev/virtio-ports").join(PORT_NAME);
    if linked.exists() {
        return Some(linked);
    }
    std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// Answers requests until the input ends or kiln asks for a shutdown. `in_guest` holds the
/// way back to the real root when the agent serves inside a guest (where it may power the
/// machine off and make sandboxes); it is `None` under `--stdio`.
fn serve(mut input: impl BufRead, sink: &Sink, in_guest: Option<&Result<sandbox::Sandboxes, String>>) -> Ended {
    let mut greeted = false;
    let mut running = Vec::new();
    let mut inputs = std::collections::HashMap::new();
    let leaders: Leaders = Arc::default();
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(err) => {
                send(sink, 0, Body::Error(format!("not a request: {err}")));
                continue;
            }
        };
        let id = request.id;
        match request.op {
            Op::Hello { version } if version == PROTOCOL_VERSION => {
                greeted = true;
                send(sink, id, Body::Ok(Reply { agent: Some(agent_banner()), ..Reply::default() }));
            }
            Op::Hello { version } => send(
                sink,
                id,
                Body::Error(format!(
                    "kiln speaks protocol {version} but this is {}: rebuild the image so it carries the agent of this kiln",
                    agent_banner()
                )),
            ),
            _ if !greeted => send(sink, id, Body::Error("say hello (with the protocol version) first".to_owned())),
            Op::Ping => send(sink, id, Body::Ok(Reply::default())),
            Op::Exec { argv, env, cwd, stdin, interactive, merge_output } => {
                let sink = sink.clone();
                let input = if interactive {
                    let (sender, receiver) = std::sync::mpsc::channel();
                    inputs.insert(id, sender);
                    Input::Stream(receiver)
                } else {
                    Input::Once(stdin)
                };
                let leaders = leaders.clone();
                running.push(std::thread::spawn(move || {
                    exec(id, &argv, &env, cwd.as_deref(), input, merge_output, &sink, &leaders);
                }));
            }
            Op::Input { exec, data, eof } => {
                let bytes = match base64::engine::general_purpose::STANDARD.decode(&data) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        send(sink, id, Body::Error(format!("input is not base64: {err}")));
                        continue;
                    }
                };
                let Some(sender) = inputs.get(&exec) else {
                    send(sink, id, Body::Error(format!("no interactive exec {exec}")));
                    continue;
                };
                // A program that has ended no longer takes input; that is not an error.
                let _ = sender.send(bytes);
                if eof {
                    inputs.remove(&exec);
                }
            }
            Op::Signal { exec, signal } => {
                let leader = leaders.lock().ok().and_then(|map| map.get(&exec).copied());
                match leader {
                    // SAFETY: kill with a negative pid signals that process group; no memory is involved.
                    Some(leader) if unsafe { libc::kill(-leader, signal) } == 0 => {}
                    Some(leader) => send(
                        sink,
                        id,
                        Body::Error(format!(
                            "cannot signal exec {exec} (group {leader}): {}",
                            std::io::Error::last_os_error()
                        )),
                    ),
                    None => send(sink, id, Body::Error(format!("no running exec {exec}"))),
                }
            }
            Op::List { root, skip } => send(sink, id, reply(list(Path::new(&root), &skip))),
            Op::Remove { root, paths } => send(sink, id, reply(remove(Path::new(&root), &paths))),
            Op::Put { path, mode, data, blake3, length } => {
                // Raw content follows the line when `length` is given; it is read even when the
                // request is refused, so the stream stays in step.
                let content = match length {
                    Some(length) => {
                        let mut bytes = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX).min(1 << 32)];
                        if input.read_exact(&mut bytes).is_err() {
                            break;
                        }
                        Ok(bytes)
                    }
                    None => base64::engine::general_purpose::STANDARD
                        .decode(&data)
                        .map_err(|e| format!("{path}: not base64: {e}")),
                };
                send(sink, id, reply(content.and_then(|bytes| put(&path, mode, &bytes, &blake3))));
            }
            Op::Get { path } => send(sink, id, reply(get(&path))),
            Op::Mkdir { path, mode } => send(sink, id, reply(mkdir(&path, mode))),
            Op::Symlink { path, target } => send(sink, id, reply(symlink(&path, &target))),
            Op::Mount9p { tag, path } => send(sink, id, reply(mount_9p(&tag, &path))),
            Op::MountOverlay { lower, path } => {
                send(sink, id, reply(sandbox::writable_view(Path::new(&lower), Path::new(&path))));
            }
            Op::Sandbox => {
                let renewed = match in_guest {
                    None => Err("sandboxes are made only inside a guest, never under --stdio".to_owned()),
                    Some(Err(err)) => Err(err.clone()),
                    Some(Ok(sandboxes)) => sandbox::kill_all_others().and_then(|()| {
                        // The previous leaseholder's programs are dying: their threads end
                        // with their last output, so none of it follows this answer.
                        for thread in running.drain(..) {
                            let _ = thread.join();
                        }
                        inputs.clear();
                        sandbox::reap_all()?;
                        sandboxes.renew()
                    }),
                };
                send(sink, id, reply(renewed.map(|()| Reply::default())));
            }
            Op::SetClock { unix_nanos } => {
                let set = match in_guest {
                    None => Err("the clock is set only inside a guest, never under --stdio".to_owned()),
                    Some(_) => set_clock(unix_nanos),
                };
                send(sink, id, reply(set.map(|()| Reply::default())));
            }
            Op::Shutdown => {
                for thread in running.drain(..) {
                    let _ = thread.join();
                }
                send(sink, id, Body::Ok(Reply::default()));
                if in_guest.is_some() {
                    power_off();
                }
                return Ended::Shutdown;
            }
        }
    }
    for thread in running {
        let _ = thread.join();
    }
    Ended::Disconnected
}

fn reply(result: Result<Reply, String>) -> Body {
    match result {
        Ok(reply) => Body::Ok(reply),
        Err(err) => Body::Error(err),
    }
}

fn send(sink: &Sink, id: u64, body: Body) {
    let Ok(mut line) = serde_json::to_vec(&Response { id, body }) else { return };
    line.push(b'\n');
    if let Ok(mut out) = sink.lock() {
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `argv` as the child of a new session's leader (a fork of the agent's child, see
/// [`lead_session`]), so the program is not the leader (a session leader would get SIGHUP
/// from a pty it opens, and could not call `setsid` itself), streams its output, and ends
/// with its status, a death by signal included; the session's process group is killed
/// afterwards.
#[allow(clippy::too_many_arguments)]
fn exec(
    id: u64,
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: Option<&str>,
    input: Input,
    merge_output: bool,
    sink: &Sink,
    leaders: &Leaders,
) {
    let Some((program, _)) = argv.split_first() else {
        send(sink, id, Body::Error("exec needs a program".to_owned()));
        return;
    };
    let input = match input {
        Input::Once(Some(data)) => match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(bytes) => Input::Bytes(bytes),
            Err(err) => {
                send(sink, id, Body::Error(format!("stdin is not base64: {err}")));
                return;
            }
        },
        other => other,
    };
    let mut command = Command::new(program);
    command.args(&argv[1..]);
    command.env_clear().envs(env).stdin(if matches!(input, Input::Once(None)) {
        Stdio::null()
    } else {
        Stdio::piped()
    });
    let merged = if merge_output {
        match std::io::pipe().and_then(|(reader, writer)| Ok((reader, writer.try_clone()?, writer))) {
            Ok((reader, out, err)) => {
                command.stdout(out).stderr(err);
                Some(reader)
            }
            Err(err) => {
                send(sink, id, Body::Error(format!("cannot create a pipe: {err}")));
                return;
            }
        }
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    };
    if let Some(cwd) = cwd {
        // The working directory kiln asks for may hold no files it copied in.
        if let Err(err) = std::fs::create_dir_all(cwd) {
            send(sink, id, Body::Error(format!("cannot create the working directory {cwd}: {err}")));
            return;
        }
        command.current_dir(cwd);
    }
    // SAFETY: `lead_session` runs between fork and exec and makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(lead_session);
    }
    let spawned = command.spawn();
    // The pipe's write ends are the child's now: the relay sees the end of the output when
    // the session's last writer is gone.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        // As a shell says it: on standard error, with 127 for a program that is not there and
        // 126 for one that cannot run.
        Err(err) => {
            send(sink, id, Body::Stderr(encode(format!("kiln-agent: cannot run `{program}`: {err}\n").as_bytes())));
            let code = if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            send(sink, id, Body::Exit(ExitStatus::Code(code)));
            return;
        }
    };
    let leader = child.id() as i32;
    if let Ok(mut map) = leaders.lock() {
        map.insert(id, leader);
    }
    let feeder = child.stdin.take().map(|mut pipe| {
        std::thread::spawn(move || match input {
            Input::Bytes(bytes) => {
                let _ = pipe.write_all(&bytes);
            }
            Input::Stream(chunks) => {
                while let Ok(chunk) = chunks.recv() {
                    if pipe.write_all(&chunk).and_then(|()| pipe.flush()).is_err() {
                        break;
                    }
                }
            }
            Input::Once(_) => {}
        })
    });
    let program_ended = Arc::new(AtomicBool::new(false));
    let relays: Vec<_> = [
        merged.map(|pipe| relay(pipe.into(), id, sink.clone(), Body::Stdout, program_ended.clone())),
        child.stdout.take().map(|pipe| relay(pipe.into(), id, sink.clone(), Body::Stdout, program_ended.clone())),
        child.stderr.take().map(|pipe| relay(pipe.into(), id, sink.clone(), Body::Stderr, program_ended.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let status = child.wait();
    if let Ok(mut map) = leaders.lock() {
        map.remove(&id);
    }
    // What the program left running in its process group would hold its pipes open.
    // SAFETY: kill with a negative pid signals that process group; no memory is involved.
    unsafe {
        libc::kill(-leader, libc::SIGKILL);
    }
    // A daemon that left the session (`setsid`, a double fork) may hold them still: the
    // program has ended, as it would for cargo on the host, so the relays take what the pipes
    // hold and stop instead of waiting for that daemon's end.
    program_ended.store(true, Ordering::Release);
    for relay in relays {
        let _ = relay.join();
    }
    // An interactive feeder ends when kiln sends the end of input or the agent drops the
    // stream; it is not waited for.
    if let Some(feeder) = feeder.filter(|feeder| feeder.is_finished()) {
        let _ = feeder.join();
    }
    let body = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => Body::Exit(ExitStatus::Code(code)),
                (None, Some(signal)) => Body::Exit(ExitStatus::Signal(signal)),
                (None, None) => Body::Error("the program ended without a status".to_owned()),
            }
        }
        Err(err) => Body::Error(format!("cannot wait for `{program}`: {err}")),
    };
    send(sink, id, body);
}

/// Runs in the child `Command::spawn` forks, before it execs the program: makes the child a
/// new session's leader and forks again. The grandchild returns and becomes the program; the
/// leader ignores the signals sent to the group, waits for it and ends the way it ended:
/// with its exit code, or by the same signal (default action restored, then raised), so the
/// agent's `wait` on the leader reports it. The leader closes its descriptors above standard
/// error first, the pipe through which `spawn` learns whether the exec worked among them, so
/// `spawn` returns once the program runs.
///
/// Only async-signal-safe calls: the agent that forked is multi-threaded.
fn lead_session() -> std::io::Result<()> {
    // SAFETY: setsid and fork touch no memory; after fork, each side makes only
    // async-signal-safe calls (signal, close_range, close, waitpid, raise, _exit).
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let program = libc::fork();
        if program < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if program == 0 {
            return Ok(());
        }
        // A signal kiln forwards goes to the whole group: the program alone decides what it
        // does with it (a handler that cleans up and exits, say), while the leader waits.
        // Only the leader ignores them; its child was forked with the dispositions it had.
        for signal in 1..32 {
            if ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD].contains(&signal) {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            // A kernel before 5.9: each descriptor the limit allows.
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            let highest = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 16) as libc::c_int
            } else {
                1024
            };
            for fd in 3..highest {
                libc::close(fd);
            }
        }
        let mut status = 0;
        while libc::waitpid(program, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 })
    }
}

/// Where an `exec`'s standard input comes from.
enum Input {
    /// The request's `stdin` (base64), if any, then end of file.
    Once(Option<String>),
    /// Decoded bytes, then end of file.
    Bytes(Vec<u8>),
    /// Chunks from `input` requests until kiln closes it.
    Stream(std::sync::mpsc::Receiver<Vec<u8>>),
}

/// Lists the files and symlinks below `root`, skipping the directories named in `skip`.
fn list(root: &Path, skip: &[String]) -> Result<Reply, String> {
    fn walk(root: &Path, relative: &str, skip: &[String], out: &mut Vec<kiln_agent::ListEntry>) -> Result<(), String> {
        let dir = if relative.is_empty() { root.to_owned() } else { root.join(relative) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && relative.is_empty() => return Ok(()),
            Err(err) => return Err(format!("cannot read {}: {err}", dir.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() { name } else { format!("{relative}/{name}") };
            let meta = std::fs::symlink_metadata(entry.path())
                .map_err(|e| format!("cannot inspect {}: {e}", entry.path().display()))?;
            if meta.is_dir() {
                if !skip.contains(&path) {
                    walk(root, &path, skip, out)?;
                }
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())
                    .map_err(|e| format!("cannot read the link {}: {e}", entry.path().display()))?;
                out.push(kiln_agent::ListEntry { path, mode: 0, hash: format!("link:{}", target.display()) });
            } else if meta.is_file() {
                let bytes =
                    std::fs::read(entry.path()).map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
                let mode = meta.permissions().mode() & 0o7777;
                out.push(kiln_agent::ListEntry { path, mode, hash: blake3::hash(&bytes).to_hex().to_string() });
            }
        }
        Ok(())
    }
    let mut entries = Vec::new();
    walk(root, "", skip, &mut entries)?;
    entries.sort();
    Ok(Reply { entries: Some(entries), ..Reply::default() })
}

/// Removes files and symlinks below `root`, then the directories that left empty.
fn remove(root: &Path, paths: &[String]) -> Result<Reply, String> {
    for relative in paths {
        if relative.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!("{relative}: not a plain relative path"));
        }
        let path = root.join(relative);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot remove {}: {err}", path.display())),
        }
        let mut dir = path.parent();
        while let Some(parent) = dir.filter(|d| d.starts_with(root) && *d != root) {
            if std::fs::remove_dir(parent).is_err() {
                break;
            }
            dir = parent.parent();
        }
    }
    Ok(Reply::default())
}

/// Sends what `pipe` carries as `wrap` responses until its end, or, once `program_ended` is
/// set, until it holds nothing more to read within [`LINGER`] or [`LAST_OUTPUT`] has passed
/// (a process outside the program's group still holds it open).
fn relay(
    pipe: OwnedFd,
    id: u64,
    sink: Sink,
    wrap: fn(String) -> Body,
    program_ended: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut pipe = File::from(pipe);
        let mut ended_at = None;
        loop {
            if ended_at.is_none() && program_ended.load(Ordering::Acquire) {
                ended_at = Some(Instant::now());
            }
            let wait = if ended_at.is_some() { LINGER } else { POLL_TICK };
            match readable(&pipe, wait) {
                Ok(true) if ended_at.is_some_and(|at| at.elapsed() > LAST_OUTPUT) => break,
                Ok(true) => {}
                Ok(false) if ended_at.is_some() => break,
                Ok(false) => continue,
                Err(_) => break,
            }
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => send(&sink, id, wrap(encode(&buf[..n]))),
            }
        }
    })
}

/// How often a relay looks whether its program has ended while its pipe is quiet.
const POLL_TICK: Duration = Duration::from_millis(50);
/// How long a relay waits for more output once its program has ended.
const LINGER: Duration = Duration::from_millis(20);
/// How long after its program's end a relay stops, however much more comes (a daemon that
/// keeps writing); what the program itself wrote is at most a pipe's capacity by then.
const LAST_OUTPUT: Duration = Duration::from_secs(1);

/// Whether `file` has something to read (or its end) within `timeout`.
fn readable(file: &File, timeout: Duration) -> std::io::Result<bool> {
    let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: poll reads and writes the one pollfd it is given.
        match unsafe { libc::poll(&mut poll, 1, millis) } {
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
            -1 => return Err(std::io::Error::last_os_error()),
            0 => return Ok(false),
            _ => return Ok(true),
        }
    }
}

/// Writes a file whose content matches its BLAKE3, through a temporary file and a rename.
fn put(path: &str, mode: u32, bytes: &[u8], expected: &str) -> Result<Reply, String> {
    let actual = blake3::hash(bytes).to_hex().to_string();
    if actual != expected {
        return Err(format!("{path}: content hash {actual} is not the {expected} sent; nothing was written"));
    }
    let path = Path::new(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let temp = path.with_extension("kiln-agent-partial");
    std::fs::write(&temp, bytes).map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    Ok(Reply::default())
}

/// Mounts the 9p share `tag` read-only at `path`, unless something is mounted there already.
fn mount_9p(tag: &str, path: &str) -> Result<Reply, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|line| line.split_whitespace().nth(1) == Some(path)) {
        return Ok(Reply::default());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let options = "trans=virtio,version=9p2000.L,msize=512000,cache=loose";
    sandbox::mount(Some(tag), Path::new(path), Some("9p"), libc::MS_RDONLY, options)
        .map_err(|e| format!("the 9p share {tag}: {e}"))?;
    Ok(Reply::default())
}

/// Makes a symlink through a temporary name and a rename, replacing what was there.
fn mkdir(path: &str, mode: u32) -> Result<Reply, String> {
    let path = Path::new(path);
    if path.is_dir() {
        return Ok(Reply::default());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(Reply::default())
}

fn symlink(path: &str, target: &str) -> Result<Reply, String> {
    let path = Path::new(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let temp = path.with_extension("kiln-agent-partial");
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp).map_err(|e| format!("cannot make the link {}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    Ok(Reply::default())
}

fn get(path: &str) -> Result<Reply, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mode = std::fs::metadata(path).map_err(|e| format!("cannot stat {path}: {e}"))?.permissions().mode() & 0o7777;
    Ok(Reply {
        data: Some(encode(&bytes)),
        blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
        mode: Some(mode),
        ..Reply::default()
    })
}

/// Sets the wall clock (CLOCK_REALTIME) to `unix_nanos`.
fn set_clock(unix_nanos: u64) -> Result<(), String> {
    // `tv_sec`'s type (`time_t`, whose width musl changed) is inferred, not named.
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    time.tv_sec = (unix_nanos / 1_000_000_000).try_into().map_err(|_| format!("{unix_nanos} ns: too late"))?;
    time.tv_nsec = (unix_nanos % 1_000_000_000).try_into().unwrap_or(0);
    // SAFETY: clock_settime reads the one timespec it is given.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(format!("cannot set the clock: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn power_off() {
    // SAFETY: sync and reboot take no pointers; reboot ends the guest.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
