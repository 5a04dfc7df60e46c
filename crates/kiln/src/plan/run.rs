//! The plan of `kiln run` and of warm guests (`vm`): which kernel and rootfs run a program of
//! one architecture, on which machine, how warm, with what passed in.

use std::{path::PathBuf, time::Duration};

use kiln_qemu::Machine;
use kiln_types::Arch;

use super::{LinuxGuest, Plan, images::linux_guest};
use crate::{
    config::{Config, RootfsFormat, SizeKeys},
    error::UsageError,
};

/// The size of the guest `run` boots on the built-in Linux profiles, from the host: as many
/// CPUs as the host has, up to [`GuestSize::MAX_CPUS`], and [`GuestSize::MEMORY_MIB`].
///
/// The guests `run` starts at once are bounded by `-j` (one guest slot each), not by CPUs: a
/// TCG vCPU with nothing to run halts and costs the host nothing, so a guest's CPUs only load
/// the host while its program keeps that many threads busy (a test binary running its tests
/// in parallel). On a 2-core host with `-j 2` the worst case is 4 busy vCPUs on 2 cores; a
/// single `cargo test` (one binary at a time) gets the whole host. Memory is reserved, not
/// touched: QEMU allocates a page when the guest first writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestSize {
    /// `-smp`.
    pub cpus: u32,
    /// `-m`, in MiB.
    pub memory_mib: u32,
}

impl GuestSize {
    /// The most CPUs a default guest gets (more rarely pay off under TCG).
    pub(crate) const MAX_CPUS: u32 = 4;
    /// A default guest's memory: room for a test binary, its threads and a tmpfs of output.
    pub(crate) const MEMORY_MIB: u32 = 1024;

    /// The default guest on a host with `host_cpus` CPUs.
    pub(crate) fn for_host(host_cpus: usize) -> Self {
        let cpus = u32::try_from(host_cpus).unwrap_or(u32::MAX).clamp(1, Self::MAX_CPUS);
        Self { cpus, memory_mib: Self::MEMORY_MIB }
    }

    /// The default guest on this host.
    pub(crate) fn of_this_host() -> Self {
        Self::for_host(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Sizes `machine` where its table (`set`) left the size to kiln: the CPU count, and at
    /// least this much memory.
    fn apply(self, machine: &mut Machine, set: SizeKeys) {
        if !set.smp {
            machine.smp = Some(self.cpus);
        }
        if !set.memory {
            machine.memory_mib = Some(machine.memory_mib.unwrap_or(0).max(self.memory_mib));
        }
    }
}

/// How a program's guest starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Warmth {
    /// A fresh boot.
    Cold,
    /// A fresh copy of the booted snapshot, restored here.
    Snapshot,
    /// A warm guest leased from a keeper that holds this many ready.
    Pool(usize),
}

/// What the command line asked for (`--snapshot`, `--pool N|auto`), and how many guests run
/// at once (`-j`: what `auto` pools are sized from).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WarmthAsked {
    /// `--snapshot` (or a command that always restores, such as `vm start`).
    pub snapshot: bool,
    /// `--pool N|auto`.
    pub pool: Option<kiln_types::PoolSize>,
    /// Guests run at once (`-j`).
    pub jobs: usize,
}

/// `[run]` resolved for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunSettings {
    /// Hard timeout of the run.
    pub timeout: Duration,
    /// Host variables passed to the program besides cargo's.
    pub env: Vec<String>,
    /// Files and directories copied into the guest at the same (absolute) path.
    pub files: Vec<PathBuf>,
    /// How the guest starts.
    pub warmth: Warmth,
}

/// What runs a program of one architecture.
#[derive(Clone, Debug)]
pub(crate) struct RunPlan {
    /// The kernel and rootfs to realise (and the builds and fetches they need).
    pub plan: Plan,
    /// The guest they make.
    pub guest: LinuxGuest,
    /// `[machine.linux-ARCH]`, or kiln's built-in Linux profile, sized for the host where
    /// the table leaves the size open.
    pub machine: Machine,
    /// `[run]`, with the command line's choices applied.
    pub settings: RunSettings,
}

impl RunPlan {
    /// The plan for a program of `arch`: the kernel and rootfs named here, else in `[run]`,
    /// else the only ones declared for the arch; on a guest of `size` unless Kiln.toml says.
    pub(crate) fn new(
        config: &Config,
        arch: Arch,
        kernel: Option<&str>,
        rootfs: Option<&str>,
        asked: WarmthAsked,
        timeout: Option<Duration>,
        size: GuestSize,
    ) -> anyhow::Result<Self> {
        let (kernel, rootfs) = choose_images(config, kernel, rootfs, arch)?;
        let guest = linux_guest(config, &kernel, &rootfs, arch);
        let images = [guest.kernel.clone(), guest.rootfs.clone()].into();
        let plan = Plan::assemble(config, std::collections::BTreeSet::new(), images, Vec::new());
        let name = format!("linux-{arch}");
        let mut machine = config.machines.get(&name).cloned().unwrap_or_else(|| Machine::linux_default_for(arch));
        size.apply(&mut machine, config.size_keys.get(&name).copied().unwrap_or_default());
        let warmth = warmth(config, &guest, asked)?;
        let mut files = Vec::new();
        for file in &config.run.files {
            let path = config.root.join(file);
            if !path.exists() {
                return Err(config.error_at("run.files", format!("`{}` does not exist", path.display())).into());
            }
            files.push(path);
        }
        let settings =
            RunSettings { timeout: timeout.unwrap_or(config.run.timeout), env: config.run.env.clone(), files, warmth };
        Ok(Self { plan, guest, machine, settings })
    }
}

/// How warm the guest is: the command line's choice, else `[run]`'s; a disk rootfs cannot
/// be saved in a snapshot (the machine's state holds the guest's caches, not its disk).
fn warmth(config: &Config, guest: &LinuxGuest, asked: WarmthAsked) -> anyhow::Result<Warmth> {
    let from_config = !asked.snapshot && asked.pool.is_none();
    let no_pool = kiln_types::PoolSize::Guests(0);
    let pool = asked.pool.unwrap_or(if from_config { config.run.pool } else { no_pool }).guests(asked.jobs);
    let warmth = if pool > 0 {
        Warmth::Pool(pool)
    } else if asked.snapshot || (from_config && config.run.snapshot) {
        Warmth::Snapshot
    } else {
        Warmth::Cold
    };
    let disk = !matches!(guest.format, RootfsFormat::Initramfs(_));
    if !disk || warmth == Warmth::Cold {
        return Ok(warmth);
    }
    let message =
        format!("rootfs `{}` is a disk image; snapshots are made of initramfs rootfs only", guest.rootfs.name);
    if from_config {
        let key = if config.run.pool != no_pool { "run.pool" } else { "run.snapshot" };
        return Err(config.error_at(key, message).into());
    }
    Err(UsageError::with_help(
        message,
        "boot it without `--snapshot`/`--pool` (or `[run] snapshot`), or give the rootfs `format = \"initramfs\"`",
    )
    .into())
}

/// The kernel and rootfs for `arch`: the command line's, `[run]`'s, or the only ones declared.
fn choose_images(
    config: &Config,
    kernel: Option<&str>,
    rootfs: Option<&str>,
    arch: Arch,
) -> anyhow::Result<(String, String)> {
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
        return Err(UsageError::with_help(format!("which kernel should run this {arch} program?"), help).into());
    };
    let Some(rootfs) = rootfs else {
        return Err(UsageError::with_help(format!("which rootfs should run this {arch} program?"), help).into());
    };
    for (kind, name, known) in [
        ("kernel", &kernel, config.kernels.get(&kernel).map(|k| k.arches.clone())),
        ("rootfs", &rootfs, config.rootfses.get(&rootfs).map(|r| r.arches.clone())),
    ] {
        match known {
            None => return Err(UsageError::new(format!("no {kind} named `{name}` in Kiln.toml"), None).into()),
            Some(arches) if !arches.contains(&arch) => {
                return Err(UsageError::with_help(
                    format!("{kind} `{name}` is not built for {arch}"),
                    format!("add {arch} to its `arches`"),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    Ok((kernel, rootfs))
}
