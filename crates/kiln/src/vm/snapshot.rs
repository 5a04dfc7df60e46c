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

/// The QEMU arguments of a snapshot's machine, saving and restoring alike; its memory is
/// anonymous, or a file for [`MappedMemory`] (one named backend either way, so one state
/// loads into both).
pub(crate) fn argv(
    inputs: &SnapshotInputs<'_>,
    initrd: &Path,
    scratch: &Path,
    memory: kiln_qemu::MemoryBackend<'_>,
    incoming: Option<String>,
) -> kiln_qemu::Argv {
    let (agent, qmp, inbox) = (scratch.join("agent"), scratch.join("qmp"), scratch.join(INBOX_DIR));
    let shares = if inputs.inbox {
        vec![kiln_qemu::Share { host: &inbox, tag: INBOX_TAG.to_owned(), readonly: true }]
    } else {
        Vec::new()
    };
    let io = GuestIo {
        agent_socket: Some(&agent),
        qmp_socket: Some(&qmp),
        incoming,
        shares,
        memory: Some(memory),
        ..GuestIo::default()
    };
    // No `init_on_free=1`: it kept the state smaller (75 MB instead of 84 for the aarch64
    // guest: pages freed while booting were sent as zero pages) but made every guest zero
    // every page it frees for the rest of its life, about 7% of a pool's doctest run.
    inputs.images.argv(inputs.machine, initrd, NONCE, inputs.accel, Console::Captured, io)
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
    let rendered =
        argv(&shape, Path::new("INITRD"), Path::new("SCRATCH"), kiln_qemu::MemoryBackend::Anonymous, None).display();
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
    monitor.save_state(&out.join(STATE_FILE), false, Duration::from_secs(120)).await?;
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
    let argv = argv(inputs, initrd, scratch, kiln_qemu::MemoryBackend::Anonymous, None);
    let qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.join(CONSOLE_FILE))?;
    let mut client =
        AgentClient::connect(&agent, BOOT_DEADLINE).await.context("the snapshot's guest did not bring its agent up")?;
    client.request(kiln_agent::Op::Ping).await?;
    Ok((qemu, client))
}

/// Restores a fresh copy of the snapshot in `entry` and returns the running QEMU and a
/// connection to its agent: its memory mapped copy-on-write from `mapped` when given, else
/// loaded from the entry's whole state. `scratch` holds the sockets and the console log.
pub(crate) async fn restore(
    inputs: &SnapshotInputs<'_>,
    entry: &Path,
    mapped: Option<&MappedMemory>,
    scratch: &Path,
) -> anyhow::Result<(Qemu, AgentClient)> {
    let (agent, qmp) = (scratch.join("agent"), scratch.join("qmp"));
    std::fs::create_dir_all(scratch.join(INBOX_DIR)).context("cannot create the guest's inbox")?;
    let memory = mapped.map_or(kiln_qemu::MemoryBackend::Anonymous, |mapped| kiln_qemu::MemoryBackend::File {
        path: &mapped.memory,
        shared: false,
    });
    let state = mapped.map_or_else(|| entry.join(STATE_FILE), |mapped| mapped.state.clone());
    let deferred = Some(kiln_qemu::qmp::DEFERRED.to_owned());
    let argv = argv(inputs, &entry.join(INITRD_FILE), scratch, memory, deferred);
    let qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.join(CONSOLE_FILE))?;
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).await?;
    if let Err(err) = monitor.resume_from_state(&state, mapped.is_some(), Duration::from_secs(60)).await {
        anyhow::bail!("QEMU did not load the saved state: {err}{}", qemu_said(scratch));
    }
    let client = AgentClient::connect(&agent, Duration::from_secs(30)).await?;
    Ok((qemu, client))
}

/// What QEMU said on its standard error (which goes to the console log), as ` (...)`.
fn qemu_said(scratch: &Path) -> String {
    let log = std::fs::read_to_string(scratch.join(CONSOLE_FILE)).unwrap_or_default();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("qemu-system")).collect();
    if said.is_empty() { String::new() } else { format!(" ({})", said.join("; ")) }
}

/// A snapshot's memory as a file of its own, beside the state of everything else: a restore
/// maps the file copy-on-write (QEMU's `memory-backend-file,share=off`) and loads only the
/// devices' state, instead of reading all of the guest's memory out of one stream. Made on
/// each host from the store's entry (which keeps the one portable stream) by loading that
/// stream once into a shared memory file, kept in the project's scratch directory (not in
/// the store: the file has the guest's full memory size, sparse), remade when the entry
/// changes.
#[derive(Clone, Debug)]
pub(crate) struct MappedMemory {
    /// The guest's memory (pages the guest never used are holes).
    pub memory: PathBuf,
    /// The devices' state, saved with the memory left out (`x-ignore-shared`).
    pub state: PathBuf,
}

/// The files of a [`MappedMemory`] in its directory.
const MEMORY_FILE: &str = "memory";
/// The stamp of the entry's state the files were made from.
const SOURCE_FILE: &str = "source";

impl MappedMemory {
    /// The mapped memory of the snapshot in `entry` in `dir`, made there first when it is
    /// missing or was made from another state.
    pub(crate) async fn of(inputs: &SnapshotInputs<'_>, entry: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mapped = Self { memory: dir.join(MEMORY_FILE), state: dir.join(STATE_FILE) };
        let source = source_stamp(entry)?;
        if std::fs::read_to_string(dir.join(SOURCE_FILE)).is_ok_and(|made_from| made_from == source) {
            return Ok(mapped);
        }
        let parent = dir.parent().context("the mapped memory's directory has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        let partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a directory in `{}`", parent.display()))?;
        let made = Self { memory: partial.path().join(MEMORY_FILE), state: partial.path().join(STATE_FILE) };
        made.load_from(inputs, entry).await?;
        std::fs::write(partial.path().join(SOURCE_FILE), &source)
            .context("cannot record the mapped memory's source")?;
        // Another process may have made it meanwhile, or an older one is in the way.
        let _ = std::fs::remove_dir_all(dir);
        match std::fs::rename(partial.path(), dir) {
            Ok(()) => {
                std::mem::forget(partial);
                Ok(mapped)
            }
            Err(_) if std::fs::read_to_string(dir.join(SOURCE_FILE)).is_ok_and(|made_from| made_from == source) => {
                Ok(mapped)
            }
            Err(err) => Err(err).with_context(|| format!("cannot move the mapped memory into `{}`", dir.display())),
        }
    }

    /// Loads the entry's whole state into a QEMU whose memory is this shared file, then saves
    /// the rest of the state without it. The guest never runs in between.
    async fn load_from(&self, inputs: &SnapshotInputs<'_>, entry: &Path) -> anyhow::Result<()> {
        let scratch = crate::host::scratch_dir("map")?;
        std::fs::create_dir_all(scratch.path().join(INBOX_DIR)).context("cannot create the guest's inbox")?;
        let memory = kiln_qemu::MemoryBackend::File { path: &self.memory, shared: true };
        let deferred = Some(kiln_qemu::qmp::DEFERRED.to_owned());
        let argv = argv(inputs, &entry.join(INITRD_FILE), scratch.path(), memory, deferred);
        let _qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.path().join(CONSOLE_FILE))?;
        let mut monitor = Qmp::connect(&scratch.path().join("qmp"), Duration::from_secs(10)).await?;
        let loaded = async {
            monitor.load_state(&entry.join(STATE_FILE), false, Duration::from_secs(60)).await?;
            monitor.save_state(&self.state, true, Duration::from_secs(60)).await
        };
        loaded
            .await
            .map_err(|err| anyhow::anyhow!("cannot map the snapshot's memory: {err}{}", qemu_said(scratch.path())))
    }
}

/// What identifies the entry's saved state: its size, modification time and inode.
fn source_stamp(entry: &Path) -> anyhow::Result<String> {
    let state = entry.join(STATE_FILE);
    let stamp =
        kiln_store::FileStamp::of_path(&state).with_context(|| format!("cannot inspect `{}`", state.display()))?;
    Ok(format!("{stamp:?}"))
}
