//! `run`: one program inside a Linux guest of its architecture; usable as cargo's target
//! runner (`target.<triple>.runner = ["cargo", "xtask", "run", "--"]`).
//!
//! What the guest sees of the host (`view.rs`): the package directory (cargo's
//! `CARGO_MANIFEST_DIR` or its workspace, else the current directory) and what the program
//! needs of cargo's target directory, writable at the same paths; the host's environment less
//! its own places.
//!
//! Cold: the package and target directories are read-only 9p shares under overlays (copies for
//! a kernel without 9p), the program runs from its host path (a program in no target directory
//! goes into the per-boot archive), its stdout and stderr reach kiln's own through two virtio
//! consoles, and kiln exits with its exit status. Warm (`--snapshot`, `--pool N`, or `[run]`):
//! `vm::program` runs it on a restored snapshot instead, with linked views of the same
//! directories; one too big for a warm guest makes the run cold.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use kiln_qemu::{BootRequest, Console, Exit, Judge, Share};
use kiln_types::Arch;

mod output;
mod view;

use view::Seen;

use crate::{
    cli::RunArgs,
    cx::Cx,
    env,
    error::UsageError,
    exec, exit_code,
    guest::{self, CopyKind, GuestIo},
    host,
    plan::{KERNEL_FAILURE, RunPlan, Warmth, WarmthAsked},
    vm::{
        LinuxTarget, SnapshotTarget,
        program::{self, Ended, Program},
        slots,
    },
};

/// Boots, runs the program, streams its output and returns its exit status.
pub(super) fn run(cx: &Cx, args: &RunArgs) -> anyhow::Result<u8> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| UsageError::with_help("no program to run", "`cargo xtask run -- BINARY ARGS...`"))?;
    let program =
        lexically_normal(&std::path::absolute(program).with_context(|| format!("cannot resolve `{program}`"))?);
    let elf = elf_facts(&program)?;
    let arch = match args.arch {
        Some(arch) if arch != elf.arch => {
            return Err(UsageError::with_help(
                format!("`{}` is a {} program, not {arch}", program.display(), elf.arch),
                format!("drop `--arch {arch}`: kiln reads the architecture from the program"),
            )
            .into());
        }
        _ => elf.arch,
    };
    let asked = WarmthAsked { snapshot: args.snapshot, pool: args.pool, jobs: cx.options().jobs };
    let (run, linux) = cx.linux_target(arch, args.kernel.as_deref(), args.rootfs.as_deref(), asked, args.timeout)?;
    check_interpreter(&program, elf.interpreter.as_deref(), &linux.rootfs_dir, &linux.rootfs_name)?;
    let _slot = slots::acquire(&cx.work_dir().join("slots"), cx.options().jobs, || {
        cx.printer().status("Waiting", &format!("for one of {} guest slots", cx.options().jobs));
    })?;
    let seen = view::seen(&program)?;
    for note in &seen.notes {
        cx.printer().verbose("Note", note);
    }
    let ended = match run.settings.warmth {
        Warmth::Cold => cold(cx, &run, linux, &program, program_args, seen)?,
        Warmth::Snapshot => warm(cx, &run, linux, 0, &program, program_args, seen)?,
        Warmth::Pool(size) => warm(cx, &run, linux, size, &program, program_args, seen)?,
    };
    match ended {
        Ended::Exited(status) => Ok(status),
        Ended::Signaled(signal) => Ok(host::exit_by_signal(signal)),
        Ended::GuestFailed(message) => {
            cx.printer().always(&format!("error: {message}"));
            Ok(exit_code::INFRASTRUCTURE)
        }
    }
}

/// The program on a restored snapshot, restored here or leased from the pool.
fn warm(
    cx: &Cx,
    run: &RunPlan,
    linux: LinuxTarget,
    pool: usize,
    program: &Path,
    args: &[String],
    seen: Seen,
) -> anyhow::Result<Ended> {
    let (views, loose) = match view::warm_views(&seen) {
        Ok(views) => views,
        // One rule for every mode: what a warm guest cannot be given, a fresh guest's share shows.
        // Said without `-v`: every run of the suite is slower for it.
        Err(why) => {
            cx.printer().work(
                "Booting",
                &format!(
                    "a fresh guest: {why}, more than a warm guest is given (files `.gitignore` excludes \
                     count; see `kiln run --help`)"
                ),
            );
            return cold(cx, run, linux, program, args, seen);
        }
    };
    let executables = loose.into_iter().filter(|path| path != program).collect();
    let copies = declared_files(&run.settings.files)?;
    let mut env = passed_env(&run.settings.env);
    env.extend(guest::agent_env());
    let spec = |role| cx.keeper_spec(&linux, role);
    let target = SnapshotTarget::new(cx.executor(), linux.clone())?;
    let timeout = run.settings.timeout;
    let forward_stdin = !host::stdin_is_null();
    let merge_output = host::stdout_and_stderr_are_one_file();
    let cwd = seen.cwd;
    let program =
        Program { path: program, args, cwd, views, copies, executables, env, timeout, forward_stdin, merge_output };
    program::run(cx.executor(), target, pool, spec, program)
}

/// The program in a freshly booted guest.
fn cold(
    cx: &Cx,
    run: &RunPlan,
    linux: LinuxTarget,
    program: &Path,
    args: &[String],
    seen: Seen,
) -> anyhow::Result<Ended> {
    let can_share = linux.can_share();
    let LinuxTarget { images, machine, accel, .. } = linux;
    let arch = machine.arch;
    let Seen { cwd, package_dirs, target, .. } = seen;
    // The package directory appears at the same path in the guest, writable there and never
    // written back: shared read-only over 9p under an overlay, or, for a kernel without 9p,
    // copied in. So do the target directories holding the program and the binaries cargo
    // names for it (a debug binary is large: a share costs nothing until it is read), unless
    // a share shows them already (a target directory inside the package).
    let mut share_dirs: Vec<PathBuf> = Vec::new();
    let mut copies = Vec::new();
    for dir in &package_dirs {
        if can_share {
            share_dirs.push(dir.clone());
        } else {
            copies.extend(guest::package_copies(dir)?);
        }
    }
    copies.extend(declared_files(&run.settings.files)?);
    let program_seen = target.dir_of(program).is_some();
    for view in target.dirs {
        if !can_share {
            copies.extend(view.entries);
        } else if !share_dirs.iter().any(|shared| view.dir.starts_with(shared)) {
            share_dirs.push(view.dir);
        }
    }
    for executable in target.loose.into_iter().filter(|path| path != program) {
        match executable.parent() {
            Some(dir) if can_share => {
                if !share_dirs.iter().any(|shared| executable.starts_with(shared)) {
                    share_dirs.push(dir.to_owned());
                }
            }
            _ => copies.push((executable, CopyKind::File)),
        }
    }
    // Ancestors first: a directory's share must not cover one mounted inside it.
    share_dirs.sort_by_key(|dir| dir.components().count());
    let shares: Vec<(String, &Path)> =
        share_dirs.iter().enumerate().map(|(index, dir)| (format!("kiln{index}"), dir.as_path())).collect();
    let name = program.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
    // A program in a target directory runs from its host path there; another one is copied in.
    let guest_program = if program_seen { program.to_string_lossy().into_owned() } else { format!("/kiln/bin/{name}") };
    let command = command_script(&cwd, &guest_program, args, &run.settings.env);
    let merged_output = host::stdout_and_stderr_are_one_file();
    let forward_stdin = !host::stdin_is_null();
    let files = guest::BootFiles {
        command,
        shares: shares.clone(),
        program: (!program_seen).then_some((program, guest_program)),
        copies,
        separate_stdio: true,
        merged_output,
        stdin: forward_stdin,
        agent: false,
    };
    let scratch = host::scratch_dir("run")?;
    let initrd = scratch.path().join("initrd");
    let stdin_socket = scratch.path().join("stdin.sock");
    images.compose_initrd(&files, &initrd)?;
    let nonce = guest::nonce()?;
    // The program's output reaches kiln through two files in the scratch directory that QEMU
    // appends to and kiln forwards to its own stdout and stderr as they grow: a virtio console
    // drops what a full pipe refuses, and QEMU opening kiln's own fds by path would get files
    // of its own, whose writes a shell redirecting to a file would then overwrite.
    let (stdout, stderr) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    let qemu_ended = Arc::new(AtomicBool::new(false));
    let relays = [
        output::relay(&stdout, std::io::stdout(), qemu_ended.clone())?,
        output::relay(&stderr, std::io::stderr(), qemu_ended.clone())?,
    ];
    let _stdin_relay = forward_stdin.then(|| relay_stdin(stdin_socket.clone()));
    let io = GuestIo {
        program_output: Some((&stdout, &stderr)),
        program_input: forward_stdin.then_some(stdin_socket.as_path()),
        shares: shares.iter().map(|(tag, host)| Share { host, tag: tag.clone(), readonly: true }).collect(),
        ..GuestIo::default()
    };
    let argv = images.argv(&machine, &initrd, &nonce, accel, Console::Captured, io);
    let request = BootRequest {
        program: arch.qemu_binary().to_owned(),
        argv,
        timeout: run.settings.timeout,
        no_output_timeout: None,
        stop_on_success: false,
        input: None,
        log_path: scratch.path().join("console.log"),
        exit_marker: Some(guest::exit_marker(&nonce)),
    };
    cx.printer().verbose("Running", &format!("{} {}", request.program, request.argv.display()));
    let judge = Judge {
        failure: regex::Regex::new(KERNEL_FAILURE).ok(),
        success: None,
        success_statuses: vec![0],
        guest_reports_status: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let printer = cx.printer().clone();
    let output_marker = guest::output_marker(&nonce);
    let exit_marker = guest::exit_marker(&nonce);
    let mut forwarding = false;
    let booted = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        let boot = kiln_qemu::boot(&request, &judge, |line| {
            let line = line.text;
            if line.trim_end() == output_marker {
                forwarding = true;
            } else if line.starts_with(&exit_marker) {
                forwarding = false;
            } else if forwarding {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            printer.verbose("Console", line);
        });
        // Interrupted, kiln stops QEMU (dropping the boot kills it) and its scratch directory
        // goes with this function, before kiln dies by the same signal.
        anyhow::Ok(tokio::select! {
            outcome = boot => Booted::Ended(outcome?),
            _ = interrupt.recv() => Booted::Interrupted(libc::SIGINT),
            _ = terminate.recv() => Booted::Interrupted(libc::SIGTERM),
        })
    });
    // QEMU is gone: the relays forward what is left and stop.
    qemu_ended.store(true, Ordering::Release);
    for relay in relays {
        let _ = relay.join();
    }
    let outcome = match booted? {
        Booted::Ended(outcome) => outcome,
        Booted::Interrupted(signal) => return Ok(Ended::Signaled(signal)),
    };
    Ok(match outcome.exit {
        Exit::GuestExited(_) if outcome.guest_signal.is_some() => {
            Ended::Signaled(outcome.guest_signal.unwrap_or_default())
        }
        Exit::GuestExited(status) => Ended::Exited(u8::try_from(status.clamp(0, 255)).unwrap_or(u8::MAX)),
        _ => {
            let saved = keep_log(cx, &request.log_path);
            let why = judge.judge(&outcome).describe();
            let mut message = format!("`{name}` did not finish in the {arch} guest: {why}");
            for line in outcome.tail.iter().rev().take(10).rev() {
                message.push_str(&format!("\n  | {line}"));
            }
            if let Some(saved) = saved {
                message.push_str(&format!("\nconsole log: {}", saved.display()));
            }
            Ended::GuestFailed(message)
        }
    })
}

/// `[run] files`: what goes into the guest at the same path.
fn declared_files(files: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, CopyKind)>> {
    let mut copies = Vec::new();
    for path in files {
        if path.is_dir() {
            copies.extend(guest::package_copies(path)?);
        } else {
            copies.push((path.clone(), CopyKind::File));
        }
    }
    Ok(copies)
}

/// How a cold run's boot ended: on its own, or interrupted by kiln's SIGINT or SIGTERM.
enum Booted {
    Ended(kiln_qemu::BootOutcome),
    Interrupted(i32),
}

/// Forwards kiln's stdin to the guest through `socket` (QEMU listens there and starts the
/// guest once connected): copied as it comes; its end closes the connection, which the
/// guest's program reads as the end of file. Gives up when QEMU never listens.
fn relay_stdin(socket: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return,
            }
        };
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut stream);
        // QEMU reads the socket only while the guest has the port open, and closing it is
        // the guest's end of file: close once QEMU has read everything, and a moment later,
        // so the last bytes reach the guest before the news of the close.
        while host::unread_bytes(&stream).is_some_and(|unread| unread > 0) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    })
}

/// What kiln reads from a program's ELF header.
struct ElfFacts {
    arch: Arch,
    /// The dynamic loader it needs (`PT_INTERP`), if it is not static.
    interpreter: Option<String>,
}

/// The architecture and dynamic loader of an ELF program.
fn elf_facts(program: &Path) -> anyhow::Result<ElfFacts> {
    use object::Object as _;
    let opened = std::fs::File::open(program).map_err(|e| {
        UsageError::with_help(
            format!("cannot read the program `{}`: {e}", program.display()),
            "give the path of a Linux executable",
        )
    })?;
    // Only the headers are read (a test binary is megabytes, and cargo runs many).
    let cache = object::ReadCache::new(opened);
    let file = object::File::parse(&cache).map_err(|e| {
        UsageError::with_help(
            format!("`{}` is not an executable kiln can run: {e}", program.display()),
            "pass a Linux ELF binary",
        )
    })?;
    let arch = match file.architecture() {
        object::Architecture::X86_64 => Arch::X86_64,
        object::Architecture::Aarch64 => Arch::Aarch64,
        object::Architecture::Riscv64 => Arch::Riscv64,
        other => {
            return Err(UsageError::new(
                format!("`{}` is a {other:?} binary; kiln runs x86_64, aarch64 and riscv64", program.display()),
                None,
            )
            .into());
        }
    };
    let interpreter = match &file {
        object::File::Elf64(elf) => elf.elf_program_headers().iter().find_map(|header| {
            use object::read::elf::ProgramHeader as _;
            (header.p_type(elf.endian()) == object::elf::PT_INTERP)
                .then(|| header.data(elf.endian(), elf.data()).ok())
                .flatten()
                .map(|path| String::from_utf8_lossy(path).trim_end_matches('\0').to_owned())
        }),
        _ => None,
    };
    Ok(ElfFacts { arch, interpreter })
}

/// Refuses a dynamically linked program whose loader the rootfs lacks.
fn check_interpreter(program: &Path, interpreter: Option<&str>, rootfs_dir: &Path, rootfs: &str) -> anyhow::Result<()> {
    let Some(interpreter) = interpreter else { return Ok(()) };
    let present = exec::read_listing(rootfs_dir).unwrap_or_default().iter().any(|entry| entry.path == interpreter);
    if present {
        return Ok(());
    }
    Err(UsageError::with_help(
        format!(
            "`{}` is dynamically linked (it needs {interpreter}), and rootfs `{rootfs}` has no such loader",
            program.display()
        ),
        "build it for a `*-unknown-linux-musl` target (static), or add the C library to the rootfs \
         (a `{ deb = ... }` layer of libc6)",
    )
    .into())
}

/// The host variables a program in the guest gets: every one but those
/// [`env::guest_withheld`] keeps on the host (the guest has its own `PATH`, `HOME`, temporary
/// directory), unless `[run] env` names it.
fn passed_env(extra_env: &[String]) -> BTreeMap<String, String> {
    env::all()
        .filter(|(name, _)| !env::guest_withheld(name) || extra_env.contains(name))
        .filter(|(name, _)| is_shell_name(name))
        .collect()
}

/// Whether `name` is a variable name `sh` takes: letters, digits and `_`, not starting with a
/// digit.
fn is_shell_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|first| !first.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `path` without `.` and `..` components (symlinks are left alone: a multi-call program
/// reads the name it was run by).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// The script the guest runs: the working directory, cargo's environment, the program.
fn command_script(cwd: &Path, program: &str, args: &[String], extra_env: &[String]) -> String {
    let mut script = format!("cd {} || exit 127\n", guest::shell_quote(&cwd.to_string_lossy()));
    for (name, value) in passed_env(extra_env) {
        script.push_str(&format!("export {name}={}\n", guest::shell_quote(&value)));
    }
    // `exec`: the program is the process whose end the init reports (a signal's death
    // included), and no shell stays behind to print "Aborted" of its own.
    script.push_str("exec ");
    script.push_str(&guest::shell_quote(program));
    for arg in args {
        script.push(' ');
        script.push_str(&guest::shell_quote(arg));
    }
    script.push('\n');
    script
}

/// Copies a failed run's console log to `target/kiln/logs/run-last.log`.
fn keep_log(cx: &Cx, log: &Path) -> Option<PathBuf> {
    let dir = cx.work_dir().join("logs");
    std::fs::create_dir_all(&dir).ok()?;
    let dest = dir.join("run-last.log");
    std::fs::copy(log, &dest).ok()?;
    Some(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_sh_takes_are_passed() {
        for name in ["NO_COLOR", "_private", "proptest_cases", "X1"] {
            assert!(is_shell_name(name), "{name}");
        }
        for name in ["", "1ABC", "A-B", "A.B", "É"] {
            assert!(!is_shell_name(name), "{name}");
        }
    }

    #[test]
    fn a_path_is_normalised_without_reading_links() {
        assert_eq!(lexically_normal(Path::new("/a/./b/../c/prog")), Path::new("/a/c/prog"));
        assert_eq!(lexically_normal(Path::new("/../x")), Path::new("/x"));
    }
}
