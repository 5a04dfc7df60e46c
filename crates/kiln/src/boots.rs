//! Lowering a realised plan into boots: one [`ReadyRun`] per case and machine (and per selected
//! test binary of a `kind = "tests"` artifact, with its per-test rules), with its kernel image,
//! its Linux images or its booted snapshot (made once per kernel, rootfs and machine) and its
//! accelerator. `test`, `bench` and the library's `Cx::test` share it. A test name that finds
//! no binary is a [`TestNameError`], raised before anything boots.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
};

use kiln_qemu::accel::{Accel, AccelChoice};
use kiln_types::Arch;

use crate::{
    config::ImageFormat,
    exec::{BootImage, Executor, Realised},
    guest::LinuxImages,
    plan::{CaseRun, Guest, Plan, TestBinary, TestNameError},
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

/// A run of a bootloader disk image of kind `image`, booted as a disk:
/// - bootloader 0.9 (`bootimage`), on kiln's x86_64 default machine, as `pc`: its images hang
///   before the kernel on q35 and boot on `pc`, the machine bootimage's QEMU command uses;
/// - the current bootloader's BIOS images with a VGA card: its second stage sets a VESA mode
///   for the kernel's framebuffer and hangs, silent, without one;
/// - its UEFI images with OVMF from the host (unless the machine names its own firmware).
pub(crate) fn booted_from_disk(mut run: CaseRun, image: ImageFormat) -> anyhow::Result<CaseRun> {
    run.machine.boot = kiln_qemu::BootMethod::Disk;
    match image {
        ImageFormat::Bootimage => {
            if run.machine.name == Arch::X86_64.as_str() && run.machine.machine_type == "q35" {
                run.machine.machine_type = "pc".to_owned();
            }
        }
        ImageFormat::Bios => {
            let vga = kiln_qemu::Device::Other(BIOS_DISPLAY.to_owned());
            if !run.machine.user_device_values().any(|value| vga.is_given_by(value)) {
                run.machine.devices.push(vga);
            }
        }
        ImageFormat::Uefi => {
            if run.machine.firmware == kiln_qemu::Firmware::MachineDefault {
                let ovmf = kiln_qemu::firmware::find_ovmf(&format!("the UEFI disk images of case `{}`", run.case))
                    .map_err(|err| {
                        anyhow::anyhow!("{err}; install the `{}` package", kiln_qemu::firmware::OVMF_PACKAGE)
                    })?;
                run.machine.firmware = kiln_qemu::Firmware::Uefi(ovmf);
            }
        }
        ImageFormat::Elf | ImageFormat::Raw => {}
    }
    Ok(run)
}

/// The display device a BIOS disk image of the current bootloader boots with.
const BIOS_DISPLAY: &str = "VGA";

/// The boots of `plan`'s runs, from what `realised` holds; booted snapshots are made (or
/// found) here, once per kernel, rootfs and machine, before any case boots.
pub(crate) fn lower(
    executor: &Executor,
    plan: &Plan,
    realised: &Realised,
    accels: &BTreeMap<Arch, AccelChoice>,
) -> anyhow::Result<Vec<ReadyRun>> {
    let mut ready = Vec::new();
    // `--test` names, those a case had, and every test binary seen (for the error).
    let (mut asked_everywhere, mut matched_everywhere) = (BTreeSet::new(), BTreeSet::new());
    let mut test_binaries: Vec<TestBinary> = Vec::new();
    let mut snapshots: BTreeMap<(String, String, String), (Arc<SnapshotTarget>, PathBuf)> = BTreeMap::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for run in &plan.runs {
        let accel = accels.get(&run.machine.arch).map_or(Accel::Tcg, |c| c.accel);
        match &run.guest {
            Guest::Artifact { build, tests } => {
                let Some(artifact) = realised.builds.get(build) else { continue };
                let (built, substituted) = Realised::provenance([&artifact.outcome]);
                let disk_run;
                let run = if let Some(image) = artifact.disk {
                    disk_run = booted_from_disk(run.clone(), image)?;
                    &disk_run
                } else {
                    run
                };
                let Some(tests) = tests else {
                    for image in &artifact.images {
                        let boot = ReadyBoot::Kernel(image.path.clone());
                        ready.push(ReadyRun { run: run.clone(), boot, built, substituted, accel });
                    }
                    continue;
                };
                let (images, binaries): (Vec<&BootImage>, Vec<TestBinary>) =
                    artifact.images.iter().filter_map(|image| Some((image, image.test.clone()?))).unzip();
                for boot in tests.resolve(&run.case, &binaries, &mut matched_everywhere)? {
                    let mut run = run.clone();
                    run.test = Some(binaries[boot.binary].clone());
                    if let Some(rules) = boot.rules {
                        run.rules = rules.clone();
                    }
                    let boot = ReadyBoot::Kernel(images[boot.binary].path.clone());
                    ready.push(ReadyRun { run, boot, built, substituted, accel });
                }
                for pick in tests.only.iter().flatten().filter(|pick| pick.everywhere) {
                    asked_everywhere.insert(pick.name.clone());
                }
                for binary in binaries {
                    if !test_binaries.contains(&binary) {
                        test_binaries.push(binary);
                    }
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
    if let Some(unmatched) = asked_everywhere.difference(&matched_everywhere).next() {
        return Err(TestNameError::unmatched(unmatched, &test_binaries).into());
    }
    Ok(ready)
}
