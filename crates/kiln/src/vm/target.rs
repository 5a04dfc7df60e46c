//! What a warm guest is restored from: the images, the machine, the agent, and the booted
//! snapshot made of them; and the restore itself.

use std::path::PathBuf;

use anyhow::Context as _;
use kiln_qemu::{Machine, Qemu, accel::Accel};
use kiln_store::ClosureHash;
use kiln_types::Arch;

use super::{
    agent_client::AgentClient,
    snapshot::{self, MappedMemory, SnapshotInputs},
};
use crate::{
    events::EntryKind,
    exec::{self, Executor, Realised, RealisedImage},
    guest::LinuxImages,
    plan::{LinuxGuest, RunPlan},
};

/// A Linux guest's kernel and rootfs as realised in the store, on its machine.
#[derive(Clone, Debug)]
pub(crate) struct LinuxTarget {
    /// The kernel's and rootfs's store paths and the kernel's arguments.
    pub images: LinuxImages,
    /// The kernel's closure.
    pub kernel: ClosureHash,
    /// The rootfs's closure.
    pub rootfs: ClosureHash,
    /// The kernel's entry directory.
    pub kernel_dir: PathBuf,
    /// The rootfs's entry directory.
    pub rootfs_dir: PathBuf,
    /// The kernel's name in Kiln.toml.
    pub kernel_name: String,
    /// The rootfs's name in Kiln.toml.
    pub rootfs_name: String,
    /// The machine profile.
    pub machine: Machine,
    /// The accelerator.
    pub accel: Accel,
}

impl LinuxTarget {
    /// The guest a [`RunPlan`] names, from its realised kernel and rootfs.
    pub(crate) fn of(run: &RunPlan, realised: &Realised, accel: Accel) -> anyhow::Result<Self> {
        let guest = &run.guest;
        let (Some(kernel), Some(rootfs)) = (realised.images.get(&guest.kernel), realised.images.get(&guest.rootfs))
        else {
            anyhow::bail!("{} or {} was not built", guest.kernel, guest.rootfs);
        };
        Ok(Self::new(guest, kernel, rootfs, run.machine.clone(), accel))
    }

    /// The guest of a realised kernel and rootfs on `machine`.
    pub(crate) fn new(
        guest: &LinuxGuest,
        kernel: &RealisedImage,
        rootfs: &RealisedImage,
        machine: Machine,
        accel: Accel,
    ) -> Self {
        Self {
            images: exec::linux_images(guest, kernel, rootfs, ""),
            kernel: kernel.closure,
            rootfs: rootfs.closure,
            kernel_dir: kernel.dir.clone(),
            rootfs_dir: rootfs.dir.clone(),
            kernel_name: guest.kernel.name.clone(),
            rootfs_name: guest.rootfs.name.clone(),
            machine,
            accel,
        }
    }

    /// Whether the kernel can mount 9p shares.
    pub(crate) fn can_share(&self) -> bool {
        std::fs::read_to_string(self.kernel_dir.join(exec::SHARE_FILE)).is_ok_and(|s| s.trim() == "9p")
    }
}

/// Everything a snapshot of a [`LinuxTarget`] is made of, with the agent built.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotTarget {
    /// The guest.
    pub linux: LinuxTarget,
    /// The agent binary for the guest's architecture.
    pub agent_binary: PathBuf,
    /// The agent's closure.
    pub agent: ClosureHash,
    /// The snapshot's derivation (computed once: it asks QEMU for its version).
    derivation: kiln_store::Derivation,
    /// Where the snapshot's [`MappedMemory`] is kept (the project's scratch directory).
    mapped_dir: PathBuf,
    /// The snapshot's memory as a file, once [`SnapshotTarget::entry`] has found or made it;
    /// `None` inside when it could not be made (restores then load the whole state).
    mapped: std::sync::OnceLock<Option<MappedMemory>>,
}

/// A restored guest with its agent connected; dropping it kills the guest.
pub(crate) struct Guest {
    /// The QEMU process (its group dies with the value).
    pub qemu: Qemu,
    /// The handshaken agent.
    pub agent: AgentClient,
    /// The sockets and console log.
    pub scratch: tempfile::TempDir,
    /// The host side of the guest's inbox share, when its kernel has 9p.
    pub inbox: Option<PathBuf>,
}

impl SnapshotTarget {
    /// Builds (or finds) the agent for the target's architecture.
    pub(crate) fn new(executor: &Executor, linux: LinuxTarget) -> anyhow::Result<Self> {
        let (agent_binary, agent) = exec::realise_agent(executor, linux.machine.arch)?;
        let inputs = SnapshotInputs {
            kernel: linux.kernel,
            rootfs: linux.rootfs,
            agent,
            images: &linux.images,
            machine: &linux.machine,
            accel: linux.accel,
            inbox: linux.can_share(),
        };
        let derivation = snapshot::derivation(&inputs)?;
        let mapped_dir = executor.work_dir().join("snapshots").join(derivation.closure_hash().to_string());
        Ok(Self { linux, agent_binary, agent, derivation, mapped_dir, mapped: std::sync::OnceLock::new() })
    }

    /// The guest's architecture.
    pub(crate) fn arch(&self) -> Arch {
        self.linux.machine.arch
    }

    /// The snapshot's inputs.
    pub(crate) fn inputs(&self) -> SnapshotInputs<'_> {
        SnapshotInputs {
            kernel: self.linux.kernel,
            rootfs: self.linux.rootfs,
            agent: self.agent,
            images: &self.linux.images,
            machine: &self.linux.machine,
            accel: self.linux.accel,
            inbox: self.linux.can_share(),
        }
    }

    /// The snapshot's closure hash.
    pub(crate) fn closure(&self) -> ClosureHash {
        self.derivation.closure_hash()
    }

    /// The snapshot's entry directory, booting once to make it when it is missing (or was
    /// found corrupt: every use checks the entry's files against its recorded hash).
    pub(crate) fn entry(&self, executor: &Executor, runtime: &tokio::runtime::Runtime) -> anyhow::Result<PathBuf> {
        let arch = self.arch();
        let inputs = self.inputs();
        let what = format!("the {arch} snapshot");
        let how = format!("booting {arch} once to save its state");
        let (entry, _) = executor.entry(
            &self.derivation,
            &format!("snapshot-{arch}"),
            &what,
            EntryKind::Snapshot,
            Some(&how),
            |out| runtime.block_on(snapshot::create(&inputs, &self.agent_binary, out)),
        )?;
        let out = entry.out_dir();
        self.mapped.get_or_init(|| match runtime.block_on(MappedMemory::of(&inputs, &out, &self.mapped_dir)) {
            Ok(mapped) => {
                sweep_mapped_memories(executor, &self.mapped_dir);
                Some(mapped)
            }
            Err(err) => {
                executor.reporter().alert(&format!(
                    "{err:#}; every restore of the {arch} snapshot loads its whole state instead, which is slower"
                ));
                None
            }
        });
        Ok(out)
    }

    /// Restores a fresh guest from the snapshot in `entry`. A guest that does not come back
    /// (under a loaded host its agent can miss the first handshake) is restored once more
    /// from the same state, in a fresh QEMU, before the error is given.
    pub(crate) async fn restore(&self, entry: &std::path::Path) -> anyhow::Result<Guest> {
        match self.restore_once(entry).await {
            Ok(guest) => Ok(guest),
            Err(first) => self
                .restore_once(entry)
                .await
                .with_context(|| format!("restored twice; the first attempt failed too: {first:#}")),
        }
    }

    async fn restore_once(&self, entry: &std::path::Path) -> anyhow::Result<Guest> {
        let scratch = crate::host::scratch_dir("vm")?;
        let mapped = self.mapped.get().and_then(Option::as_ref);
        let (qemu, agent) = snapshot::restore(&self.inputs(), entry, mapped, scratch.path()).await?;
        let inbox = self.linux.can_share().then(|| scratch.path().join(snapshot::INBOX_DIR));
        Ok(Guest { qemu, agent, scratch, inbox })
    }

    /// Restores a fresh guest; a snapshot that does not come back (a host change its closure
    /// cannot see) is made again once, with one line that says why.
    pub(crate) fn restore_or_remake(
        &self,
        executor: &Executor,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Guest> {
        let entry = self.entry(executor, runtime)?;
        match runtime.block_on(self.restore(&entry)) {
            Ok(guest) => Ok(guest),
            Err(err) => {
                let arch = self.arch();
                executor
                    .reporter()
                    .alert(&format!("the {arch} snapshot could not be restored ({err:#}); making it again"));
                executor.store().remove_entry(&self.closure())?;
                // The memory mapped from the removed entry goes with it.
                let remade = Self { mapped: std::sync::OnceLock::new(), ..self.clone() };
                let entry = remade.entry(executor, runtime)?;
                runtime.block_on(remade.restore(&entry))
            }
        }
    }
}

/// Removes, beside `current`, the mapped memories of snapshots the store no longer holds
/// (collected, or superseded by a new closure) and what a killed process left half made.
fn sweep_mapped_memories(executor: &Executor, current: &std::path::Path) {
    const ABANDONED: std::time::Duration = std::time::Duration::from_secs(3600);
    let Some(parent) = current.parent() else { return };
    for dir in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let stale = match name.parse::<ClosureHash>() {
            Ok(closure) => !executor.store().entry_dir(&closure).exists(),
            Err(_) => {
                name.starts_with(".partial-")
                    && dir
                        .metadata()
                        .and_then(|meta| meta.modified())
                        .is_ok_and(|made| made.elapsed().is_ok_and(|age| age > ABANDONED))
            }
        };
        if stale {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}

/// Exercises a restored guest's agent the way a run will (a file in, a program run, the
/// file removed), so that QEMU has translated those paths before a leaseholder needs them:
/// under emulation, the first pass through guest code after a restore costs many times the
/// next.
pub(crate) async fn warm_up(agent: &mut AgentClient) -> anyhow::Result<()> {
    let filler = vec![0x5a_u8; 256 * 1024];
    agent.put("/tmp/.kiln-warm-up", 0o755, &filler).await?;
    for _ in 0..2 {
        agent.exec(vec!["true".to_owned()], Default::default(), Some("/tmp".to_owned()), |_, _| {}).await?;
    }
    agent.remove("/tmp", vec![".kiln-warm-up".to_owned()]).await?;
    Ok(())
}
