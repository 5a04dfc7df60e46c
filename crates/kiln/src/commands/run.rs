//! `run`: one program inside a Linux guest of its architecture; usable as cargo's target
//! runner (`target.<triple>.runner = ["cargo", "xtask", "run", "--"]`).
//!
//! The program goes into a per-boot archive appended to the rootfs, the package directory
//! (cargo's `CARGO_MANIFEST_DIR`, else the current directory) is shared read-only at the same
//! path over 9p, the program runs there with cargo's environment, its stdout and stderr reach
//! kiln's own through two virtio consoles, and kiln exits with its exit status.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use kiln_qemu::{BootRequest, Console, Exit, Judge, Share};
use kiln_types::Arch;

use crate::{
    cli::RunArgs,
    commands::UsageError,
    config::Config,
    cx::Cx,
    exec::{self, guest},
    exit_code,
    plan::{ImageKey, ImageKind, Plan},
    runner::GuestIo,
    vm::target::LinuxTarget,
};

/// Environment variable prefixes passed into the guest: what cargo and test harnesses set.
const PASSED_PREFIXES: &[&str] = &["CARGO_", "RUST_", "NEXTEST", "__CARGO_"];

/// Boots, runs the program, streams its output and returns its exit status.
pub fn run(cx: &Cx, args: &RunArgs) -> anyhow::Result<u8> {
    let (program, program_args) = args
        .command
        .split_first()
        .ok_or_else(|| UsageError::new("no program to run", Some("`cargo xtask run -- BINARY ARGS...`".to_owned())))?;
    let program = std::path::absolute(program).with_context(|| format!("cannot resolve `{program}`"))?;
    let elf = elf_facts(&program)?;
    let arch = match args.arch {
        Some(arch) if arch != elf.arch => {
            return Err(UsageError::new(
                format!("`{}` is a {} program, not {arch}", program.display(), elf.arch),
                Some(format!("drop `--arch {arch}`: kiln reads the architecture from the program")),
            )
            .into());
        }
        _ => elf.arch,
    };
    let linux = resolve_linux(cx, arch, args.kernel.as_deref(), args.rootfs.as_deref())?;
    check_interpreter(&program, elf.interpreter.as_deref(), &linux.rootfs_dir, &linux.rootfs_name)?;
    let timeout = args.timeout.map_or(cx.config.run.timeout, Duration::from);
    let _slot = exec::slots::acquire(&cx.work_dir().join("slots"), cx.options.jobs, || {
        cx.printer.status("Waiting", &format!("for one of {} guest slots", cx.options.jobs));
    })?;
    let pool = args.pool.unwrap_or(cx.config.run.pool);
    if linux.images.disk.is_some() && !args.snapshot && args.pool.is_none() && (cx.config.run.snapshot || pool > 0) {
        let key = if cx.config.run.snapshot { "run.snapshot" } else { "run.pool" };
        let message =
            format!("rootfs `{}` is a disk image; snapshots are made of initramfs rootfs only", linux.rootfs_name);
        return Err(cx.config.error_at(key, message).into());
    }
    if args.snapshot || cx.config.run.snapshot || pool > 0 {
        return super::run_snapshot::run(cx, linux, pool, &program, program_args, timeout);
    }
    let LinuxTarget { images, kernel_dir, machine, accel, .. } = linux;

    let (cwd, dirs) = package_dirs()?;
    // The package directory appears at the same path in the guest: shared read-only over 9p,
    // or, for a kernel without 9p, copied in (writes then stay in the guest).
    let can_share = std::fs::read_to_string(kernel_dir.join(exec::linux::SHARE_FILE)).is_ok_and(|s| s.trim() == "9p");
    let mut shares = Vec::new();
    let mut copies = Vec::new();
    let mut readonly = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        if can_share {
            shares.push((format!("kiln{index}"), dir.as_path()));
        } else {
            copies.extend(guest::package_copies(dir)?);
            readonly.push(dir.clone());
        }
    }
    // Declared data files (relative to Kiln.toml), copied in at the same path.
    for file in &cx.config.run.files {
        let path = cx.config.root.join(file);
        if path.is_dir() {
            copies.extend(guest::package_copies(&path)?);
        } else if path.is_file() {
            copies.push((path, guest::CopyKind::File));
        } else {
            return Err(cx.config.error_at("run.files", format!("`{}` does not exist", path.display())).into());
        }
    }
    let name = program.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
    let guest_program = format!("/kiln/bin/{name}");
    let command = command_script(&cwd, &guest_program, program_args, &cx.config.run.env);
    let files = guest::BootFiles {
        command,
        shares: shares.clone(),
        program: Some((program.as_path(), guest_program)),
        copies,
        readonly,
        separate_stdio: true,
        agent: false,
    };
    let scratch = tempfile::Builder::new().prefix("kiln-run-").tempdir().context("cannot create a temp dir")?;
    let initrd = scratch.path().join("initrd");
    images.compose_initrd(&files, &initrd)?;
    let nonce = guest::nonce();
    // The program's output reaches kiln through two pipes that kiln copies to its own stdout
    // and stderr: QEMU opening kiln's fds by path would get files of its own, whose writes
    // a shell redirecting to a file would then overwrite.
    let (out_read, out_write) = std::io::pipe().context("cannot create a pipe")?;
    let (err_read, err_write) = std::io::pipe().context("cannot create a pipe")?;
    let relays = [relay(out_read, std::io::stdout()), relay(err_read, std::io::stderr())];
    let pid = std::process::id();
    let stdout = PathBuf::from(format!("/proc/{pid}/fd/{}", out_write.as_raw_fd()));
    let stderr = PathBuf::from(format!("/proc/{pid}/fd/{}", err_write.as_raw_fd()));
    let io = GuestIo {
        program_output: Some((&stdout, &stderr)),
        shares: shares.iter().map(|(tag, host)| Share { host, tag: tag.clone(), readonly: true }).collect(),
        ..GuestIo::default()
    };
    let argv = images.argv(&machine, &initrd, &nonce, accel, Console::Captured, io);
    let request = BootRequest {
        program: arch.qemu_binary().to_owned(),
        argv,
        timeout,
        no_output_timeout: None,
        stop_on_success: false,
        log_path: scratch.path().join("console.log"),
        exit_marker: Some(guest::exit_marker(&nonce)),
    };
    cx.printer.verbose("Running", &format!("{} {}", request.program, request.argv.display()));
    let judge = Judge {
        failure: regex::Regex::new(crate::plan::KERNEL_FAILURE).ok(),
        success: None,
        success_statuses: vec![0],
        guest_reports_status: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let printer = cx.printer.clone();
    let output_marker = guest::output_marker(&nonce);
    let exit_marker = guest::exit_marker(&nonce);
    let mut forwarding = false;
    let outcome = runtime.block_on(kiln_qemu::boot(&request, &judge, |line| {
        if line.trim_end() == output_marker {
            forwarding = true;
        } else if line.starts_with(&exit_marker) {
            forwarding = false;
        } else if forwarding {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        printer.verbose("Console", line);
    }));
    // QEMU is gone; with kiln's write ends closed the relays see the end of the output.
    drop((out_write, err_write));
    for relay in relays {
        let _ = relay.join();
    }
    let outcome = outcome?;
    match outcome.exit {
        Exit::GuestExited(status) => Ok(u8::try_from(status.clamp(0, 255)).unwrap_or(u8::MAX)),
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
            cx.printer.always(&format!("error: {message}"));
            Ok(exit_code::INFRASTRUCTURE)
        }
    }
}

/// Realises the kernel and rootfs a Linux guest of `arch` boots (the named ones, or those
/// `[run]` names, or the only ones declared), with its machine and accelerator.
pub(crate) fn resolve_linux(
    cx: &Cx,
    arch: Arch,
    kernel: Option<&str>,
    rootfs: Option<&str>,
) -> anyhow::Result<LinuxTarget> {
    let (kernel, rootfs) = choose_images(&cx.config, kernel, rootfs, arch)?;
    let plan = Plan::for_linux(&cx.config, &kernel, &rootfs);
    cx.provision_machines(std::iter::empty())?;
    let realised = cx.realise_plan(&plan)?;
    let (Some(k), Some(r)) = (realised.images.get(&kernel), realised.images.get(&rootfs)) else {
        anyhow::bail!("{kernel} or {rootfs} was not built");
    };
    let accel = cx.accelerators([arch]).get(&arch).map_or(kiln_qemu::accel::Accel::Tcg, |c| c.accel);
    let images = super::test::linux_images(cx, &kernel, k, &rootfs, r, String::new());
    let machine = cx
        .config
        .machines
        .get(&format!("linux-{arch}"))
        .cloned()
        .unwrap_or_else(|| kiln_qemu::Machine::linux_default_for(arch));
    Ok(LinuxTarget {
        images,
        kernel: k.closure,
        rootfs: r.closure,
        kernel_dir: k.dir.clone(),
        rootfs_dir: r.dir.clone(),
        kernel_name: kernel.name,
        rootfs_name: rootfs.name,
        machine,
        accel,
    })
}

/// Copies a pipe to one of kiln's own outputs until the pipe ends.
fn relay(mut from: std::io::PipeReader, mut to: impl std::io::Write + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.flush();
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
    let bytes = std::fs::read(program).map_err(|e| {
        UsageError::new(
            format!("cannot read the program `{}`: {e}", program.display()),
            Some("give the path of a Linux executable".to_owned()),
        )
    })?;
    let file = object::File::parse(&*bytes).map_err(|e| {
        UsageError::new(
            format!("`{}` is not an executable kiln can run: {e}", program.display()),
            Some("pass a Linux ELF binary".to_owned()),
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
    let manifest = std::fs::read_to_string(rootfs_dir.join(exec::linux::MANIFEST_FILE)).unwrap_or_default();
    let present = manifest.lines().filter_map(exec::linux::ManifestEntry::parse).any(|entry| entry.path == interpreter);
    if present {
        return Ok(());
    }
    Err(UsageError::new(
        format!(
            "`{}` is dynamically linked (it needs {interpreter}), and rootfs `{rootfs}` has no such loader",
            program.display()
        ),
        Some(
            "build it for a `*-unknown-linux-musl` target (static), or add the C library to the rootfs \
             (a `{ deb = ... }` layer of libc6)"
                .to_owned(),
        ),
    )
    .into())
}

/// The kernel and rootfs for `arch`: the command line's, `[run]`'s, or the only ones declared.
fn choose_images(
    config: &Config,
    kernel: Option<&str>,
    rootfs: Option<&str>,
    arch: Arch,
) -> anyhow::Result<(ImageKey, ImageKey)> {
    let kernel = kernel.map(str::to_owned).or_else(|| config.run.kernel.clone()).or_else(|| {
        let mut fit = config.kernels.values().filter(|k| k.arches.contains(&arch));
        match (fit.next(), fit.next()) {
            (Some(only), None) => Some(only.name.clone()),
            _ => None,
        }
    });
    let rootfs = rootfs.map(str::to_owned).or_else(|| config.run.rootfs.clone()).or_else(|| {
        let mut fit = config.rootfses.values().filter(|r| r.arches.contains(&arch) && r.init);
        match (fit.next(), fit.next()) {
            (Some(only), None) => Some(only.name.clone()),
            _ => None,
        }
    });
    let help =
        "name them in Kiln.toml's `[run]` table (`kernel = \"...\"`, `rootfs = \"...\"`) or with `--kernel`/`--rootfs`";
    let Some(kernel) = kernel else {
        return Err(
            UsageError::new(format!("which kernel should run this {arch} program?"), Some(help.to_owned())).into()
        );
    };
    let Some(rootfs) = rootfs else {
        return Err(
            UsageError::new(format!("which rootfs should run this {arch} program?"), Some(help.to_owned())).into()
        );
    };
    for (kind, name, known) in [
        ("kernel", &kernel, config.kernels.get(&kernel).map(|k| k.arches.clone())),
        ("rootfs", &rootfs, config.rootfses.get(&rootfs).map(|r| r.arches.clone())),
    ] {
        match known {
            None => return Err(UsageError::new(format!("no {kind} named `{name}` in Kiln.toml"), None).into()),
            Some(arches) if !arches.contains(&arch) => {
                return Err(UsageError::new(
                    format!("{kind} `{name}` is not built for {arch}"),
                    Some(format!("add {arch} to its `arches`")),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    Ok((
        ImageKey { kind: ImageKind::Kernel, name: kernel, arch },
        ImageKey { kind: ImageKind::Rootfs, name: rootfs, arch },
    ))
}

/// The working directory and the directories the guest must see at the same paths: the
/// package (cargo's `CARGO_MANIFEST_DIR`, else the working directory), and the working
/// directory too when it lies outside the package.
pub(super) fn package_dirs() -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let package = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| cwd.clone(), PathBuf::from);
    let mut dirs = vec![package.clone()];
    if !cwd.starts_with(&package) {
        dirs.push(cwd.clone());
    }
    Ok((cwd, dirs))
}

/// The host variables a program in the guest gets: cargo's and test harnesses' (`CARGO_*`,
/// `RUST_*`, `NEXTEST*`) and those `[run] env` names.
pub(super) fn passed_env(extra_env: &[String]) -> std::collections::BTreeMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| PASSED_PREFIXES.iter().any(|p| name.starts_with(p)) || extra_env.contains(name))
        .filter(|(name, _)| name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect()
}

/// The script the guest runs: the working directory, cargo's environment, the program.
fn command_script(cwd: &Path, program: &str, args: &[String], extra_env: &[String]) -> String {
    let mut script = format!("cd {} || exit 127\n", guest::shell_quote(&cwd.to_string_lossy()));
    for (name, value) in passed_env(extra_env) {
        script.push_str(&format!("export {name}={}\n", guest::shell_quote(&value)));
    }
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
