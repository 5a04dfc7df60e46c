//! Lowering a realised plan into boots: one [`ReadyRun`] per case and machine (and per test
//! binary of a `kind = "tests"` artifact), with its kernel image, its Linux images or its
//! booted snapshot (made once per kernel, rootfs and machine) and its accelerator. `test`,
//! `bench` and the library's `Cx::test` share it.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use kiln_qemu::accel::{Accel, AccelChoice};
use kiln_types::Arch;

use crate::{
    exec::{Executor, Realised},
    guest::LinuxImages,
    plan::{CaseRun, Guest, Plan},
    vm::{LinuxTarget, SnapshotTarget},
};

/// What a ready run boots.
#[derive(Clone, Debug)]
pub(crate) enum ReadyBoot {
    /// A kernel image booted on its own.
    Kernel(PathBuf),
    /// A Linux kernel with an initramfs, running a command.
    Linux(LinuxImages),
    /// A restored booted snapshot, running a command through kiln's agent.
    Snapshot {
        /// What the snapshot is made of.
        target: Arc<SnapshotTarget>,
        /// The snapshot's entry directory.
        entry: PathBuf,
        /// The shell command.
        command: String,
    },
}

/// One boot, with everything resolved.
#[derive(Clone, Debug)]
pub(crate) struct ReadyRun {
    /// The case on its machine.
    pub run: CaseRun,
    /// What it boots.
    pub boot: ReadyBoot,
    /// Whether what it boots was built in this run.
    pub built: bool,
    /// Whether it came from a remote store in this run.
    pub substituted: bool,
    /// The accelerator for its architecture.
    pub accel: Accel,
}

/// The boots of `plan`'s runs, from what `realised` holds; booted snapshots are made (or
/// found) here, once per kernel, rootfs and machine, before any case boots.
pub(crate) fn lower(
    executor: &Executor,
    plan: &Plan,
    realised: &Realised,
    accels: &BTreeMap<Arch, AccelChoice>,
) -> anyhow::Result<Vec<ReadyRun>> {
    let mut ready = Vec::new();
    let mut snapshots: BTreeMap<(String, String, String), (Arc<SnapshotTarget>, PathBuf)> = BTreeMap::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for run in &plan.runs {
        let accel = accels.get(&run.machine.arch).map_or(Accel::Tcg, |c| c.accel);
        match &run.guest {
            Guest::Artifact { build, tests } => {
                let Some(artifact) = realised.builds.get(build) else { continue };
                let (built, substituted) = Realised::provenance([&artifact.outcome]);
                for image in &artifact.images {
                    let mut run = run.clone();
                    if artifact.disk {
                        run.machine.boot = kiln_qemu::BootMethod::Disk;
                        // bootloader 0.9 images hang before the kernel on q35 (kiln's x86_64
                        // default) and boot on `pc`, the machine bootimage's QEMU command uses.
                        if run.machine.name == Arch::X86_64.as_str() && run.machine.machine_type == "q35" {
                            run.machine.machine_type = "pc".to_owned();
                        }
                    }
                    if *tests {
                        run.case = format!("{}[{}]", run.case, image.name);
                    }
                    ready.push(ReadyRun {
                        run,
                        boot: ReadyBoot::Kernel(image.path.clone()),
                        built,
                        substituted,
                        accel,
                    });
                }
            }
            Guest::Linux { guest, command, snapshot } => {
                let (Some(kernel), Some(rootfs)) =
                    (realised.images.get(&guest.kernel), realised.images.get(&guest.rootfs))
                else {
                    continue;
                };
                let (built, substituted) = Realised::provenance([&kernel.outcome, &rootfs.outcome]);
                let images = crate::exec::linux_images(guest, kernel, rootfs, command);
                let boot = if *snapshot {
                    let key = (guest.kernel.name.clone(), guest.rootfs.name.clone(), run.machine.name.clone());
                    let (target, entry) = match snapshots.get(&key) {
                        Some(found) => found.clone(),
                        None => {
                            let linux = LinuxTarget::new(guest, kernel, rootfs, run.machine.clone(), accel);
                            let target = Arc::new(SnapshotTarget::new(executor, linux)?);
                            let entry = target.entry(executor, &runtime)?;
                            snapshots.insert(key, (target.clone(), entry.clone()));
                            (target, entry)
                        }
                    };
                    ReadyBoot::Snapshot { target, entry, command: command.clone() }
                } else {
                    ReadyBoot::Linux(images)
                };
                ready.push(ReadyRun { run: run.clone(), boot, built, substituted, accel });
            }
        }
    }
    Ok(ready)
}
