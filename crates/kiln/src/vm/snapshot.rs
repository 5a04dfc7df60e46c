//! Booted snapshots: a Linux guest booted once until its agent answers, stopped, and its
//! whole state saved in the store; every run restores a fresh copy with the same QEMU
//! arguments plus `-incoming`, so nothing leaks from one run into the next.
//!
//! The snapshot's closure covers the kernel, the rootfs, the agent, the machine's rendered
//! arguments (with each store path written as its role, `KERNEL`, `INITRD`, ..., since the
//! closures above already pin those files) and QEMU's version: a restore only ever meets the
//! QEMU and machine that saved it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use kiln_qemu::{Console, Machine, Qemu, Terminal, accel::Accel, qmp::Qmp};
use kiln_store::{ClosureHash, Derivation, InputHash};

use super::agent_client::AgentClient;
use crate::guest::{self, GuestIo, LinuxImages};

/// The saved state in a snapshot's entry.
pub(crate) const STATE_FILE: &str = "state";
/// The initramfs the snapshot booted with (restores pass the same one).
pub(crate) const INITRD_FILE: &str = "initrd";
/// The kind of a snapshot's derivation.
pub(crate) const DERIVATION_KIND: &str = "booted-snapshot";
/// The console log in a guest's scratch directory.
pub(crate) const CONSOLE_FILE: &str = "console.log";
/// The nonce on a snapshot's command line: the same at every restore.
const NONCE: &str = "snapshot";
/// How long a boot to "agent ready" may take.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// What a snapshot is made of.
pub(crate) struct SnapshotInputs<'a> {
    /// The kernel's and the rootfs's closures.
    pub kernel: ClosureHash,
    /// The rootfs's closure.
    pub rootfs: ClosureHash,
    /// The agent's closure.
    pub agent: ClosureHash,
    /// The images.
    pub images: &'a LinuxImages,
    /// The machine profile.
    pub machine: &'a Machine,
    /// The accelerator.
    pub accel: Accel,
    /// Whether the machine has the inbox: a 9p share (unmounted in the snapshot, so it does
    /// not block migration) through which a run's program reaches the guest without being
    /// copied; kernels without 9p get their programs through the agent instead.
    pub inbox: bool,
}

/// The inbox's 9p tag.
pub(crate) const INBOX_TAG: &str = "kiln-inbox";
/// Where a guest mounts its inbox.
pub(crate) const INBOX_GUEST_PATH: &str = "/kiln/inbox";
/// The inbox in a guest's scratch directory.
pub(crate) const INBOX_DIR: &str = "inbox";

/// The QEMU arguments of a snapshot's machine, saving and restoring alike.
pub(crate) fn argv(
    inputs: &SnapshotInputs<'_>,
    initrd: &Path,
    scratch: &Path,
    incoming: Option<String>,
) -> kiln_qemu::Argv {
    let (agent, qmp, inbox) = (scratch.join("agent"), scratch.join("qmp"), scratch.join(INBOX_DIR));
    let shares = if inputs.inbox {
        vec![kiln_qemu::Share { host: &inbox, tag: INBOX_TAG.to_owned(), readonly: true }]
    } else {
        Vec::new()
    };
    let io = GuestIo { agent_socket: Some(&agent), qmp_socket: Some(&qmp), incoming, shares, ..GuestIo::default() };
    // Freed pages are zeroed, and migration sends zero pages as flags only: the state
    // holds what the booted guest uses, not what it touched and let go while booting.
    let mut images = inputs.images.clone();
    images.cmdline.push("init_on_free=1".to_owned());
    images.argv(inputs.machine, initrd, NONCE, inputs.accel, Console::Captured, io)
}

/// The snapshot's derivation.
pub(crate) fn derivation(inputs: &SnapshotInputs<'_>) -> anyhow::Result<Derivation> {
    let mut drv = Derivation::new(DERIVATION_KIND);
    drv.input("kernel", InputHash::of_closure(inputs.kernel));
    drv.input("rootfs", InputHash::of_closure(inputs.rootfs));
    drv.input("agent", InputHash::of_closure(inputs.agent));
    drv.setting("layout", "2");
    drv.input("init", InputHash::of_bytes(guest::INIT_SCRIPT.as_bytes()));
    // Store paths differ between stores; the files behind them are pinned by the inputs above.
    let by_role = LinuxImages {
        kernel: PathBuf::from("KERNEL"),
        rootfs: PathBuf::from("ROOTFS"),
        modules: PathBuf::from("MODULES"),
        ..inputs.images.clone()
    };
    let shape = SnapshotInputs { images: &by_role, ..*inputs };
    let rendered = argv(&shape, Path::new("INITRD"), Path::new("SCRATCH"), None).display();
    drv.setting("qemu-argv", rendered);
    drv.setting("qemu-version", qemu_version(inputs.machine.arch.qemu_binary())?);
    Ok(drv)
}

/// The first line of `PROGRAM --version`, remembered beside the binary's stamp (in the user's
/// cache), so a run does not start QEMU once just to ask: a changed binary is asked again.
fn qemu_version(program: &str) -> anyhow::Result<String> {
    let stamp = crate::host::find_program(program)
        .as_deref()
        .and_then(kiln_store::FileStamp::of_path)
        .map(|stamp| format!("{stamp:?}"));
    let version = crate::host::remembered("qemu-version", program, stamp.as_deref(), || {
        kiln_qemu::version(program).with_context(|| format!("cannot run `{program} --version`"))
    })?;
    Ok(version.trim_end().to_owned())
}

/// Starts QEMU with its console written to `log`.
pub(crate) fn spawn(program: &str, argv: &kiln_qemu::Argv, log: &Path) -> anyhow::Result<Qemu> {
    let log = std::fs::File::create(log).with_context(|| format!("cannot create `{}`", log.display()))?;
    let errors = log.try_clone().context("cannot duplicate the console log's handle")?;
    Ok(Qemu::spawn(program, argv, Terminal::Detached, [Stdio::null(), Stdio::from(log), Stdio::from(errors)])?)
}

/// Boots the guest with its agent, waits until the agent answers, and saves the machine's
/// state and its initramfs into `out`.
pub(crate) async fn create(inputs: &SnapshotInputs<'_>, agent_binary: &Path, out: &Path) -> anyhow::Result<()> {
    let initrd = out.join(INITRD_FILE);
    let sockets = crate::host::scratch_dir("snap")?;
    let (_qemu, client) = boot_to_agent(inputs, agent_binary, &initrd, sockets.path()).await?;
    let mut monitor = Qmp::connect(&sockets.path().join("qmp"), Duration::from_secs(10)).await?;
    // The agent's connection stays open until the machine is stopped and saved: the guest
    // must not see kiln go away before the state is taken.
    monitor.save_state(&out.join(STATE_FILE), Duration::from_secs(120)).await?;
    drop(client);
    Ok(())
}

/// Boots the snapshot's machine cold, with the agent in its initramfs (written to `initrd`),
/// until the agent answers; `scratch` holds the sockets (`agent`, `qmp`) and the console log.
pub(crate) async fn boot_to_agent(
    inputs: &SnapshotInputs<'_>,
    agent_binary: &Path,
    initrd: &Path,
    scratch: &Path,
) -> anyhow::Result<(Qemu, AgentClient)> {
    let files = guest::BootFiles {
        program: Some((agent_binary, "/kiln/bin/kiln-agent".to_owned())),
        agent: true,
        ..guest::BootFiles::default()
    };
    inputs.images.compose_initrd(&files, initrd)?;
    let agent = scratch.join("agent");
    std::fs::create_dir_all(scratch.join(INBOX_DIR)).context("cannot create the guest's inbox")?;
    let argv = argv(inputs, initrd, scratch, None);
    let qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.join(CONSOLE_FILE))?;
    let mut client =
        AgentClient::connect(&agent, BOOT_DEADLINE).await.context("the snapshot's guest did not bring its agent up")?;
    client.request(kiln_agent::Op::Ping).await?;
    Ok((qemu, client))
}

/// Restores a fresh copy of the snapshot in `entry` and returns the running QEMU and a
/// connection to its agent. `scratch` holds the sockets and the console log.
pub(crate) async fn restore(
    inputs: &SnapshotInputs<'_>,
    entry: &Path,
    scratch: &Path,
) -> anyhow::Result<(Qemu, AgentClient)> {
    let (agent, qmp) = (scratch.join("agent"), scratch.join("qmp"));
    let incoming = kiln_qemu::qmp::incoming_arg(&entry.join(STATE_FILE));
    std::fs::create_dir_all(scratch.join(INBOX_DIR)).context("cannot create the guest's inbox")?;
    let argv = argv(inputs, &entry.join(INITRD_FILE), scratch, Some(incoming));
    let qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.join(CONSOLE_FILE))?;
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).await?;
    if let Err(err) = monitor.resume_from_state(Duration::from_secs(60)).await {
        // QEMU says why on its standard error, which goes to the console log.
        let log = std::fs::read_to_string(scratch.join(CONSOLE_FILE)).unwrap_or_default();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("qemu-system")).collect();
        let why = if said.is_empty() { String::new() } else { format!(" ({})", said.join("; ")) };
        anyhow::bail!("QEMU did not load the saved state: {err}{why}");
    }
    let client = AgentClient::connect(&agent, Duration::from_secs(30)).await?;
    Ok((qemu, client))
}
