//! `bench --suite linux`: rootfs assembly against the classic shell pipeline, Linux
//! boot-to-command with kiln's profile against a naive command line, and what one
//! `kiln run` of a program that exits at once costs.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_qemu::{Argv, BootRequest, Console, Judge, accel::Accel};
use kiln_types::Arch;

use super::{Measured, row};
use crate::{
    cli::BenchArgs,
    config::{CaseGuest, Expect},
    cx::Cx,
    exec::{self, Realised, rootfs_files},
    guest,
    plan::{Guest, ImageRecipe, Plan, Selection},
};

/// Runs the Linux rows for the first Linux case expected to pass.
pub(super) fn run(cx: &Cx, args: &BenchArgs) -> anyhow::Result<()> {
    let config = cx.config();
    let Some(case) = config
        .cases
        .values()
        .find(|c| c.expect == Expect::Pass && matches!(c.guest, CaseGuest::Linux { .. }))
        .map(|c| c.name.clone())
    else {
        cx.printer().status("Skipping", "the linux suite: Kiln.toml has no Linux case expected to pass");
        return Ok(());
    };
    let plan = Plan::for_test(
        config,
        &Selection { arches: args.arch.clone(), names: vec![case.clone()], ..Selection::default() },
    )?;
    cx.executor().provision_machines(plan.runs.iter().map(|run| &run.machine))?;
    let realised = cx.realise(&plan)?;
    let accels = cx.accelerators(plan.runs.iter().map(|r| r.machine.arch));
    let scratch = tempfile::tempdir().context("cannot create a temp dir")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let runs = usize::from(args.runs);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nLinux case `{case}`, median of {runs} (TCG)")?;
    writeln!(out, "{:<8} {:<46} {:>9} {:>9} {:>7}", "arch", "what", "kiln", "baseline", "ratio")?;
    for run in &plan.runs {
        let Guest::Linux { guest: linux, .. } = &run.guest else { continue };
        let arch = run.machine.arch;
        let Some(ImageRecipe::Rootfs(recipe)) = plan.image_step(&linux.rootfs).map(|step| &step.recipe) else {
            continue;
        };

        // 1. The rootfs: kiln's assembly and cpio+gzip against `find | cpio | gzip` of the same tree.
        let (fetched, binaries) = rootfs_files(&realised);
        let files = exec::RootfsFiles { fetched: &fetched, binaries: &binaries };
        let image = scratch.path().join(format!("{arch}.cpio.gz"));
        let mut ours = Measured { times: Vec::new(), failures: 0 };
        for _ in 0..runs {
            let started = Instant::now();
            let tree = exec::assemble_rootfs(&linux.rootfs.name, recipe, arch, &files)?.tree;
            let file = std::fs::File::create(&image)?;
            tree.write_cpio(std::io::BufWriter::new(file), kiln_rootfs::Compression::Gzip, 0)?;
            ours.times.push(started.elapsed());
        }
        let staging = scratch.path().join(format!("{arch}-tree"));
        exec::assemble_rootfs(&linux.rootfs.name, recipe, arch, &files)?.tree.write_dir(&staging, 0)?;
        let mut shell = Measured { times: Vec::new(), failures: 0 };
        for _ in 0..runs {
            let started = Instant::now();
            let status = std::process::Command::new("sh")
                .args(["-c", "find . | cpio -o -H newc --quiet | gzip > ../shell.cpio.gz"])
                .current_dir(&staging)
                .status()
                .context("cannot run sh (with find, cpio and gzip)")?;
            if status.success() { shell.times.push(started.elapsed()) } else { shell.failures += 1 }
        }
        row(&mut out, arch, "rootfs: assemble + cpio.gz / find|cpio|gzip", &ours, &shell)?;

        // 2. Boot to the command's exit: kiln's profile against a hand-written command line.
        let images = realised.linux_images(linux, "true")?;
        let initrd = scratch.path().join(format!("{arch}.initrd"));
        images.compose_initrd(&guest::BootFiles { command: "true".to_owned(), ..Default::default() }, &initrd)?;
        let accel = accels.get(&arch).map_or(Accel::Tcg, |c| c.accel);
        let judge = Judge { failure: None, success: None, success_statuses: vec![0], guest_reports_status: true };
        let mut kiln = Measured { times: Vec::new(), failures: 0 };
        let mut naive = Measured { times: Vec::new(), failures: 0 };
        for i in 0..runs {
            let nonce = guest::nonce()?;
            let kiln_argv = images.argv(&run.machine, &initrd, &nonce, accel, Console::Captured, Default::default());
            let naive_argv = naive_linux_argv(arch, &images.kernel, &initrd, &nonce);
            for (argv, measured) in [(kiln_argv, &mut kiln), (naive_argv, &mut naive)] {
                let request = BootRequest {
                    program: arch.qemu_binary().to_owned(),
                    argv,
                    timeout: Duration::from_secs(120),
                    no_output_timeout: None,
                    stop_on_success: false,
                    input: None,
                    log_path: scratch.path().join(format!("{arch}-{i}.log")),
                    exit_marker: Some(guest::exit_marker(&nonce)),
                };
                let outcome = runtime.block_on(kiln_qemu::boot(&request, &judge, |_| {}))?;
                if judge.judge(&outcome).is_pass() {
                    measured.times.push(outcome.duration)
                } else {
                    measured.failures += 1
                }
            }
        }
        row(&mut out, arch, "boot to command exit / naive argv", &kiln, &naive)?;

        // 3. One `kiln run` of a program that exits at once, as cargo's runner calls it.
        if let Some(program) = binaries_for_linux(cx, &realised, arch) {
            let exe = std::env::current_exe().context("cannot find kiln's own executable")?;
            let mut whole = Measured { times: Vec::new(), failures: 0 };
            for _ in 0..runs {
                let started = Instant::now();
                let status = std::process::Command::new(&exe)
                    .arg("--config")
                    .arg(&config.file)
                    .args(["-q", "run", "--"])
                    .arg(&program)
                    .stdout(std::process::Stdio::null())
                    .status()?;
                if status.success() { whole.times.push(started.elapsed()) } else { whole.failures += 1 }
            }
            row(&mut out, arch, "`kiln run` of a no-op / its boot alone", &whole, &kiln)?;
        }
    }
    writeln!(out, "ratio = baseline / kiln")?;
    Ok(())
}

/// A musl program built for `arch` in the plan (the example's `hello-linux`).
fn binaries_for_linux(cx: &Cx, realised: &Realised, arch: Arch) -> Option<std::path::PathBuf> {
    realised.builds.iter().find_map(|(key, built)| {
        let linux = cx.config().artifacts.get(&key.artifact)?.targets.get(&arch)?.contains("linux");
        (key.arch == arch && linux).then(|| built.image().to_owned())
    })
}

/// What a hand-written script boots Linux with: the machine's defaults, `-cpu max` on Arm,
/// no `quiet`.
fn naive_linux_argv(arch: Arch, kernel: &Path, initrd: &Path, nonce: &str) -> Argv {
    let mut argv = Argv::default();
    let console = match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => {
            argv.pair("-machine", "virt").pair("-cpu", "max");
            "ttyAMA0"
        }
        Arch::Riscv64 => {
            argv.pair("-machine", "virt");
            "ttyS0"
        }
    };
    argv.pair("-m", "512").pair("-display", "none").pair("-serial", "stdio").pair("-kernel", kernel);
    argv.pair("-initrd", initrd).pair("-append", format!("console={console} panic=-1 kiln.nonce={nonce}"));
    argv.arg("-no-reboot");
    argv
}
