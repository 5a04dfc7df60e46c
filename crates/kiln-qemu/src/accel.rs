//! Choosing the accelerator: KVM only when a probe guest really runs well under it.
//!
//! An existing `/dev/kvm` proves little: under nested virtualisation a KVM guest can run
//! 40x slower than TCG or hang. The probe boots a 512-byte guest under both, compares,
//! and caches the verdict per host (kernel release and CPU model).

use std::{
    fs,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use kiln_types::Arch;

use crate::{BootMethod, Console, Device, Firmware, Machine, Qemu, Terminal};

/// A QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation; works everywhere.
    Tcg,
}

impl Accel {
    /// The name QEMU's `accel=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelPolicy {
    /// Probe and decide.
    Auto,
    /// Use this one without probing.
    Force(Accel),
}

/// The accelerator chosen for an architecture, with the reason in one line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why, in words a person reads in the run's header.
    pub reason: String,
}

impl AccelChoice {
    fn tcg(reason: impl Into<String>) -> Self {
        Self { accel: Accel::Tcg, reason: reason.into() }
    }
}

/// How long the KVM probe guest may take before KVM is judged unusable.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// Chooses the accelerator for `guest` on this host. `cache_dir` keeps the probe's verdict.
pub fn choose(guest: Arch, policy: AccelPolicy, cache_dir: &Path) -> AccelChoice {
    if let AccelPolicy::Force(accel) = policy {
        return AccelChoice { accel, reason: "forced by KILN_ACCEL or --accel".to_owned() };
    }
    if Arch::host() != Some(guest) {
        let host = Arch::host().map_or("this host's architecture", Arch::as_str);
        return AccelChoice::tcg(format!("{guest} guest on {host} host needs emulation"));
    }
    if guest != Arch::X86_64 {
        return AccelChoice::tcg("kiln's KVM probe only knows x86_64 guests so far");
    }
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return AccelChoice::tcg("/dev/kvm is missing or not accessible");
    }
    let cache_file = cache_dir.join(format!("accel-{}.toml", host_key()));
    if let Some(cached) = fs::read_to_string(&cache_file).ok().and_then(|t| toml::from_str::<AccelChoice>(&t).ok()) {
        return AccelChoice { reason: format!("{} (cached probe verdict)", cached.reason), ..cached };
    }
    let choice = probe();
    if fs::create_dir_all(cache_dir).is_ok()
        && let Ok(text) = toml::to_string(&choice)
    {
        let _ = fs::write(&cache_file, text);
    }
    choice
}

/// Identifies this host for the probe cache: kernel release and CPU model.
fn host_key() -> String {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or_default()
        .to_owned();
    blake3::hash(format!("{release}\n{cpu}").as_bytes()).to_hex()[..16].to_owned()
}

/// A boot sector that prints `K` on COM1 and writes 0x10 to isa-debug-exit (status 33).
fn probe_boot_sector() -> Vec<u8> {
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'K', // mov al, 'K'
        0xee, // out dx, al
        0x66, 0xb8, 0x10, 0x00, 0x00, 0x00, // mov eax, 0x10
        0xba, 0xf4, 0x00, // mov dx, 0xf4
        0x66, 0xef, // out dx, eax
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(code);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

fn probe() -> AccelChoice {
    let Ok(dir) = tempfile::tempdir() else {
        return AccelChoice::tcg("could not create a temp dir for the KVM probe");
    };
    let image = dir.path().join("probe.img");
    if fs::write(&image, probe_boot_sector()).is_err() {
        return AccelChoice::tcg("could not write the KVM probe image");
    }
    let tcg = run_probe(&image, Accel::Tcg);
    let kvm = run_probe(&image, Accel::Kvm);
    match (kvm, tcg) {
        (Some(kvm), Some(tcg)) if kvm <= tcg * 2 + Duration::from_millis(200) => AccelChoice {
            accel: Accel::Kvm,
            reason: format!("KVM probe guest ran in {:.2}s (TCG {:.2}s)", kvm.as_secs_f64(), tcg.as_secs_f64()),
        },
        (Some(kvm), Some(tcg)) => AccelChoice::tcg(format!(
            "KVM works but is slow here: probe guest {:.2}s under KVM vs {:.2}s under TCG, nested virtualisation?",
            kvm.as_secs_f64(),
            tcg.as_secs_f64()
        )),
        (None, _) => AccelChoice::tcg(format!(
            "the KVM probe guest did not finish within {}s, nested virtualisation?",
            PROBE_DEADLINE.as_secs()
        )),
        (Some(_), None) => AccelChoice::tcg("the TCG probe failed; kiln keeps to TCG, which always works"),
    }
}

/// The probe's machine: a PC booting the probe sector from a raw disk, with the exit device.
/// Its arguments come from [`Machine::argv`] like every other boot's.
pub fn probe_machine() -> Machine {
    Machine {
        name: "kvm-probe".to_owned(),
        arch: Arch::X86_64,
        machine_type: "pc".to_owned(),
        cpu: None,
        memory_mib: None,
        smp: None,
        firmware: Firmware::MachineDefault,
        devices: vec![Device::DebugExit { iobase: 0xf4, iosize: 0x04 }],
        boot: BootMethod::Disk,
        extra_args: Vec::new(),
    }
}

/// Boots the probe image and returns its wall time if it exited with status 33 in time.
fn run_probe(image: &Path, accel: Accel) -> Option<Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let argv = probe_machine().argv(image, accel, Console::Captured);
    runtime.block_on(async {
        let started = Instant::now();
        let mut qemu = Qemu::spawn(
            Arch::X86_64.qemu_binary(),
            &argv,
            Terminal::Detached,
            [Stdio::null(), Stdio::null(), Stdio::null()],
        )
        .ok()?;
        // On a timeout the value is dropped, which kills QEMU's process group.
        let status = tokio::time::timeout(PROBE_DEADLINE, qemu.wait()).await.ok()?.ok()?;
        (status.code() == Some(33)).then(|| started.elapsed())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_policy_skips_the_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let choice = choose(Arch::X86_64, AccelPolicy::Force(Accel::Tcg), dir.path());
        assert_eq!(choice.accel, Accel::Tcg);
    }

    #[test]
    fn foreign_guests_use_tcg_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let foreign = Arch::ALL.into_iter().find(|a| Some(*a) != Arch::host()).expect("a foreign arch");
        let choice = choose(foreign, AccelPolicy::Auto, dir.path());
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.reason.contains("emulation"), "{}", choice.reason);
    }

    #[test]
    fn the_probe_boots_its_sector_from_a_disk_with_the_exit_device() {
        let argv = probe_machine().argv(Path::new("/p.img"), Accel::Kvm, Console::Captured).display();
        assert_eq!(
            argv,
            "-machine pc,accel=kvm -nodefaults -display none -no-reboot -monitor none -serial stdio \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -drive format=raw,snapshot=on,file=/p.img"
        );
    }

    #[test]
    fn probe_sector_is_a_boot_sector() {
        let sector = probe_boot_sector();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
    }
}
