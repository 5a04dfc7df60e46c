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
    let (mut images, mut initrd) = (inputs.images.clone(), entry.join(INITRD_FILE));
    if let Some(stubs) = mapped.and_then(|mapped| mapped.stubs.as_ref()) {
        images.kernel.clone_from(&stubs.kernel);
        initrd.clone_from(&stubs.initrd);
    }
    let argv = argv(&SnapshotInputs { images: &images, ..*inputs }, &initrd, scratch, memory, deferred);
    let qemu = spawn(inputs.machine.arch.qemu_binary(), &argv, &scratch.join(CONSOLE_FILE))?;
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).await?;
    if let Err(err) = monitor.resume_from_state(&state, mapped.is_some(), Duration::from_secs(60)).await {
        anyhow::bail!("QEMU did not load the saved state: {err}{}", qemu_said(scratch));
    }
    let mut client = AgentClient::connect(&agent, Duration::from_secs(30)).await?;
    // The guest wakes at the time its snapshot was saved.
    client.set_clock_to_host().await?;
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
    /// Short stand-ins for the kernel and initramfs, when a restore was seen to work with
    /// them.
    pub stubs: Option<BootStubs>,
}

/// The heads of the kernel and initramfs files, which a restore passes QEMU instead of the
/// whole files: QEMU reads and parses `-kernel` and `-initrd` at every start (about 55 ms
/// of CPU for a 32 MB arm64 image and a 5 MB initramfs) but writes nothing of them into the
/// memory of a machine that is waiting for an incoming state, which brings its own. A
/// kernel format QEMU cannot take from its head (an ELF kernel, whose program headers may
/// lie past it) fails the trial restore, and restores use the whole files.
#[derive(Clone, Debug)]
pub(crate) struct BootStubs {
    /// The kernel's first [`KERNEL_STUB_BYTES`].
    pub kernel: PathBuf,
    /// The initramfs's first [`INITRD_STUB_BYTES`].
    pub initrd: PathBuf,
}

/// The files of a [`MappedMemory`] in its directory.
const MEMORY_FILE: &str = "memory";
/// The stamp of the entry's state the files were made from.
const SOURCE_FILE: &str = "source";
/// The stubs, present only once a restore with them worked.
const KERNEL_STUB: &str = "kernel-stub";
const INITRD_STUB: &str = "initrd-stub";
/// How much of a kernel that is not ELF a stub keeps: its headers (an x86 bzImage's setup
/// code included).
const KERNEL_STUB_BYTES: u64 = 1 << 20;
/// How much of the initramfs a stub keeps.
const INITRD_STUB_BYTES: u64 = 4096;

/// Whether the mapped memory in `dir` was made from the entry state `source`.
fn made_from(dir: &Path, source: &str) -> bool {
    std::fs::read_to_string(dir.join(SOURCE_FILE)).is_ok_and(|made_from| made_from == source)
}

impl MappedMemory {
    /// The mapped memory of the snapshot in `entry` in `dir`, made there first when it is
    /// missing or was made from another state.
    pub(crate) async fn of(inputs: &SnapshotInputs<'_>, entry: &Path, dir: &Path) -> anyhow::Result<Self> {
        let source = source_stamp(entry)?;
        if made_from(dir, &source) {
            return Ok(Self::in_dir(dir));
        }
        let parent = dir.parent().context("the mapped memory's directory has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
        let partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a directory in `{}`", parent.display()))?;
        let made = Self { stubs: None, ..Self::in_dir(partial.path()) };
        made.load_from(inputs, entry).await?;
        made.try_stubs(inputs, entry, partial.path()).await;
        std::fs::write(partial.path().join(SOURCE_FILE), &source)
            .context("cannot record the mapped memory's source")?;
        // Another process may have made it meanwhile (and be restoring from it: it stays),
        // or an older one is in the way.
        if made_from(dir, &source) {
            return Ok(Self::in_dir(dir));
        }
        let _ = std::fs::remove_dir_all(dir);
        match std::fs::rename(partial.path(), dir) {
            Ok(()) => {
                std::mem::forget(partial);
                Ok(Self::in_dir(dir))
            }
            Err(_) if made_from(dir, &source) => Ok(Self::in_dir(dir)),
            Err(err) => Err(err).with_context(|| format!("cannot move the mapped memory into `{}`", dir.display())),
        }
    }

    /// The files in `dir`, with the stubs when they are there.
    fn in_dir(dir: &Path) -> Self {
        let (kernel, initrd) = (dir.join(KERNEL_STUB), dir.join(INITRD_STUB));
        let stubs = (kernel.is_file() && initrd.is_file()).then_some(BootStubs { kernel, initrd });
        Self { memory: dir.join(MEMORY_FILE), state: dir.join(STATE_FILE), stubs }
    }

    /// Writes the [`BootStubs`] into `dir` and keeps them if a restore with them brings the
    /// agent up; otherwise removes them (restores then pass the whole files).
    async fn try_stubs(&self, inputs: &SnapshotInputs<'_>, entry: &Path, dir: &Path) {
        let stubs = BootStubs { kernel: dir.join(KERNEL_STUB), initrd: dir.join(INITRD_STUB) };
        let trial = async {
            kernel_stub(&inputs.images.kernel, &stubs.kernel)?;
            copy_head(&entry.join(INITRD_FILE), &stubs.initrd, INITRD_STUB_BYTES)?;
            let with_stubs = Self { stubs: Some(stubs.clone()), ..self.clone() };
            let scratch = crate::host::scratch_dir("map")?;
            let (_qemu, mut agent) = restore(inputs, entry, Some(&with_stubs), scratch.path()).await?;
            agent.request(kiln_agent::Op::Ping).await?;
            anyhow::Ok(())
        };
        if tokio::time::timeout(Duration::from_secs(60), trial).await.is_ok_and(|tried| tried.is_ok()) {
            return;
        }
        let _ = std::fs::remove_file(&stubs.kernel);
        let _ = std::fs::remove_file(&stubs.initrd);
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

/// Writes the stand-in for the kernel `from` to `to`: an ELF kernel (x86's vmlinux, booted
/// through PVH) as its headers and notes only, every loadable segment left empty (QEMU then
/// reads a few kilobytes instead of the whole image, and zero-fills what it never writes
/// into this machine's memory); any other image as its first [`KERNEL_STUB_BYTES`].
fn kernel_stub(from: &Path, to: &Path) -> anyhow::Result<()> {
    let image = std::fs::read(from).with_context(|| format!("cannot read `{}`", from.display()))?;
    match elf_headers_and_notes(&image) {
        Some(stub) => std::fs::write(to, stub).with_context(|| format!("cannot write `{}`", to.display())),
        None => copy_head(from, to, KERNEL_STUB_BYTES),
    }
}

/// A 64-bit little-endian ELF file `image` rewritten as its file header, its program headers
/// and its notes: loadable segments keep their addresses and memory sizes but no file bytes,
/// section headers are dropped. `None` for anything else.
fn elf_headers_and_notes(image: &[u8]) -> Option<Vec<u8>> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    let u16_at = |bytes: &[u8], at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |bytes: &[u8], at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |bytes: &[u8], at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    // ELF magic, 64-bit class, little-endian data.
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(image, 0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(image, 0x36)?), usize::from(u16_at(image, 0x38)?));
    if phentsize != PHDR {
        return None;
    }
    let mut stub = image.get(..EHDR)?.to_vec();
    stub[0x20..0x28].copy_from_slice(&(EHDR as u64).to_le_bytes());
    // No section headers (e_shoff, e_shnum, e_shstrndx).
    stub[0x28..0x30].fill(0);
    stub[0x3c..0x40].fill(0);
    let mut headers = image.get(phoff..phoff + phnum * PHDR)?.to_vec();
    let mut notes = Vec::new();
    for header in headers.chunks_exact_mut(PHDR) {
        let (offset, size) = (u64_at(header, 8)?, u64_at(header, 32)?);
        match u32_at(header, 0)? {
            PT_LOAD => {
                header[8..16].fill(0);
                header[32..40].fill(0);
            }
            PT_NOTE => {
                let start = usize::try_from(offset).ok()?;
                let data = image.get(start..start + usize::try_from(size).ok()?)?;
                let moved = (EHDR + phnum * PHDR + notes.len()) as u64;
                header[8..16].copy_from_slice(&moved.to_le_bytes());
                notes.extend_from_slice(data);
            }
            _ => {}
        }
    }
    stub.extend_from_slice(&headers);
    stub.extend_from_slice(&notes);
    Some(stub)
}

/// Writes the first `bytes` of `from` (all of it, when shorter) to `to`.
fn copy_head(from: &Path, to: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(from)
        .and_then(|file| file.take(bytes).read_to_end(&mut head))
        .with_context(|| format!("cannot read `{}`", from.display()))?;
    std::fs::write(to, head).with_context(|| format!("cannot write `{}`", to.display()))
}

/// What identifies the entry's saved state: its size, modification time and inode.
fn source_stamp(entry: &Path) -> anyhow::Result<String> {
    let state = entry.join(STATE_FILE);
    let stamp =
        kiln_store::FileStamp::of_path(&state).with_context(|| format!("cannot inspect `{}`", state.display()))?;
    Ok(format!("{stamp:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit ELF file: one loadable segment of `text` and one note segment.
    fn elf(text: &[u8], note: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 64];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        image[0x28..0x30].copy_from_slice(&4096u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        image[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        let data_start = 64 + 2 * 56;
        let header = |kind: u32, offset: usize, size: usize, address: u64| {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&(offset as u64).to_le_bytes());
            header[16..24].copy_from_slice(&address.to_le_bytes());
            header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            header[40..48].copy_from_slice(&(size as u64 * 2).to_le_bytes());
            header
        };
        image.extend(header(1, data_start, text.len(), 0x100000));
        image.extend(header(4, data_start + text.len(), note.len(), 0));
        image.extend_from_slice(text);
        image.extend_from_slice(note);
        image
    }

    #[test]
    fn an_elf_kernel_s_stub_keeps_its_headers_and_notes_and_drops_its_segments_bytes() {
        let text = vec![0x90u8; 10_000];
        let note = b"\x04\x00\x00\x00\x04\x00\x00\x00\x12\x00\x00\x00Xen\x00\x00\x00\x10\x00";
        let stub = elf_headers_and_notes(&elf(&text, note)).expect("an ELF file");
        assert_eq!(stub.len(), 64 + 2 * 56 + note.len());
        let field = |at: usize| u64::from_le_bytes(stub[at..at + 8].try_into().expect("8 bytes"));
        assert_eq!(field(0x28), 0, "no section headers");
        let (load, notes) = (64, 64 + 56);
        assert_eq!((field(load + 8), field(load + 16), field(load + 32)), (0, 0x100000, 0), "the segment: no bytes");
        assert_eq!(field(load + 40), 20_000, "its size in memory is kept");
        let moved = usize::try_from(field(notes + 8)).expect("an offset");
        assert_eq!(&stub[moved..moved + note.len()], note, "the notes moved after the headers");
        assert!(elf_headers_and_notes(b"\x7fELF\x01\x01 a 32-bit file").is_none());
        assert!(elf_headers_and_notes(b"ARMd an arm64 Image").is_none());
    }
}
