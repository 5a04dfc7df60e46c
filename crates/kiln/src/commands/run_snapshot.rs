//! `run --snapshot`: restore a fresh copy of a booted snapshot (made once and kept in the
//! store), put the program and the package directory in through the guest agent, run it,
//! stream its output, and throw the machine away.

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use kiln_qemu::{Machine, accel::Accel};
use kiln_store::BuildOutcome;

use crate::{
    cx::{Cx, RealisedImage},
    exec::{
        agent,
        guest::{self, CopyKind},
        snapshot::{self, SnapshotInputs},
    },
    exit_code,
    runner::LinuxImages,
};

/// What the program runs on.
pub struct Target<'a> {
    /// The kernel and rootfs paths.
    pub images: &'a LinuxImages,
    /// The kernel's entry.
    pub kernel: &'a RealisedImage,
    /// The rootfs's entry.
    pub rootfs: &'a RealisedImage,
    /// The machine profile.
    pub machine: &'a Machine,
    /// The accelerator.
    pub accel: Accel,
}

/// Runs `program` with `args` on a restored snapshot and returns its exit status.
pub fn run(cx: &Cx, target: &Target<'_>, program: &Path, args: &[String], timeout: Duration) -> anyhow::Result<u8> {
    let arch = target.machine.arch;
    let agent_binary = agent::realise(&cx.store, arch, &cx.work_dir(), &cx.printer)?;
    let inputs = SnapshotInputs {
        kernel: target.kernel.closure,
        rootfs: target.rootfs.closure,
        agent: agent::derivation(arch)?.closure_hash(),
        images: target.images,
        machine: target.machine,
        accel: target.accel,
    };
    let drv = snapshot::derivation(&inputs)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let snapshot_entry = || -> anyhow::Result<std::path::PathBuf> {
        if cx.store.lookup(&drv.closure_hash())?.is_none() {
            cx.printer.status("Snapshot", &format!("booting {arch} once to save its state"));
        }
        let on_wait = || cx.printer.status("Waiting", &format!("for another kiln making the {arch} snapshot"));
        let (entry, outcome) = cx.store.build(&drv, &format!("snapshot-{arch}"), on_wait, |out| {
            runtime
                .block_on(snapshot::create(&inputs, &agent_binary, out))
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { format!("{e:#}").into() })
        })?;
        if let BuildOutcome::Built { duration, .. } = outcome {
            cx.printer.status("Saved", &format!("the {arch} snapshot in {}", crate::report::seconds(duration)));
        }
        cx.store.mark_used(&entry.closure)?;
        Ok(entry.out_dir())
    };
    let scratch = tempfile::Builder::new().prefix("kiln-run-").tempdir()?;
    let retry_scratch = tempfile::Builder::new().prefix("kiln-run-").tempdir()?;
    let mut entry = snapshot_entry()?;
    // A snapshot that does not come back (a host change its closure cannot see) is made
    // again once, with one line that says why.
    let restored = match runtime.block_on(snapshot::restore(&inputs, &entry, scratch.path())) {
        Ok(restored) => restored,
        Err(err) => {
            cx.printer.always(&format!("warning: the {arch} snapshot did not restore ({err:#}); making it again"));
            cx.store.remove_entry(&drv.closure_hash())?;
            entry = snapshot_entry()?;
            runtime.block_on(snapshot::restore(&inputs, &entry, retry_scratch.path()))?
        }
    };

    let (cwd, dirs) = super::run::package_dirs()?;
    let mut copies = Vec::new();
    for dir in &dirs {
        copies.extend(guest::package_copies(dir)?);
    }
    let name = program.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
    let guest_program = format!("/kiln/bin/{name}");
    let mut env = super::run::passed_env(&cx.config.run.env);
    env.insert("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    env.insert("HOME".to_owned(), "/root".to_owned());
    let mut argv = vec![guest_program.clone()];
    argv.extend(args.iter().cloned());

    let (_qemu, mut client) = restored;
    let work = async {
        let bytes = std::fs::read(program).with_context(|| format!("cannot read `{}`", program.display()))?;
        client.put(&guest_program, 0o755, &bytes).await?;
        for (path, kind) in &copies {
            if *kind == CopyKind::File {
                let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions()) & 0o7777;
                client.put(&path.to_string_lossy(), mode, &std::fs::read(path)?).await?;
            }
        }
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let status = client
            .exec(argv, env, Some(cwd.to_string_lossy().into_owned()), |is_stderr, bytes| {
                let _ = if is_stderr { stderr.write_all(bytes) } else { stdout.write_all(bytes) };
            })
            .await?;
        let _ = stdout.flush();
        anyhow::Ok(status)
    };
    match runtime.block_on(async { tokio::time::timeout(timeout, work).await }) {
        Ok(Ok(status)) => Ok(u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(u8::MAX)),
        Ok(Err(err)) => Err(err.context(format!("`{name}` did not run in the {arch} snapshot"))),
        Err(_) => {
            cx.printer
                .always(&format!("error: `{name}` did not finish in the {arch} guest within {}s", timeout.as_secs()));
            Ok(exit_code::INFRASTRUCTURE)
        }
    }
}
