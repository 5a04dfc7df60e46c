//! Kiln.toml as written: `Option`-heavy types with spans, before validation.

use std::collections::BTreeMap;

use kiln_types::Arch;
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a Kiln.toml document")]
pub(crate) struct RawManifest {
    pub kiln_version: Option<Spanned<String>>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub artifact: BTreeMap<String, RawArtifact>,
    #[serde(default)]
    pub machine: BTreeMap<String, RawMachine>,
    #[serde(default)]
    pub case: BTreeMap<String, RawCase>,
    #[serde(default)]
    pub fetch: BTreeMap<String, RawFetch>,
    #[serde(default)]
    pub kernel: BTreeMap<String, RawKernel>,
    #[serde(default)]
    pub rootfs: BTreeMap<String, RawRootfs>,
    #[serde(default)]
    pub step: BTreeMap<String, RawStep>,
    pub run: Option<RawRun>,
    pub release: Option<RawRelease>,
}

/// `[step.NAME]`: a command kiln runs (and caches) before the artifacts that name it.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "kebab-case",
    expecting = "a `[step.NAME]` table with `command` or `script`, `inputs` and `outputs`"
)]
pub(crate) struct RawStep {
    pub command: Option<Spanned<Vec<String>>>,
    pub script: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<Spanned<String>>,
    #[serde(default)]
    pub steps: Vec<Spanned<String>>,
}

/// `[release]`: what `release` publishes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[release]` table")]
pub(crate) struct RawRelease {
    pub repository: Option<Spanned<String>>,
    #[serde(default)]
    pub artifacts: Vec<Spanned<String>>,
    #[serde(default)]
    pub kernels: Vec<Spanned<String>>,
    #[serde(default)]
    pub rootfs: Vec<Spanned<String>>,
}

/// `[fetch.NAME]`: one file from a URL or a path, pinned by its hash.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[fetch.NAME]` table with `url` or `path` and a hash")]
pub(crate) struct RawFetch {
    pub url: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub github_release: Option<Spanned<String>>,
    pub tag: Option<Spanned<String>>,
    pub asset: Option<Spanned<String>>,
    pub blake3: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
}

/// `[kernel.NAME]`: a Linux kernel per architecture.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[kernel.NAME]` table with `deb` or `image`")]
pub(crate) struct RawKernel {
    pub deb: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub arches: Option<Spanned<Vec<Arch>>>,
    #[serde(default)]
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub modules: Vec<String>,
}

/// `[rootfs.NAME]`: an image assembled from layers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[rootfs.NAME]` table with `layers`")]
pub(crate) struct RawRootfs {
    pub arches: Option<Spanned<Vec<Arch>>>,
    pub format: Option<Spanned<String>>,
    pub compression: Option<Spanned<String>>,
    pub init: Option<bool>,
    pub size: Option<Spanned<RawSize>>,
    #[serde(default)]
    pub layers: Vec<Spanned<RawLayer>>,
}

/// One layer of a rootfs: exactly one source key, and where it goes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a layer such as `{ busybox = \"busybox-{arch}\" }`")]
pub(crate) struct RawLayer {
    pub busybox: Option<String>,
    pub deb: Option<String>,
    pub tarball: Option<String>,
    pub dir: Option<String>,
    pub file: Option<String>,
    pub artifact: Option<String>,
    pub text: Option<String>,
    pub dest: Option<String>,
    pub mode: Option<String>,
}

/// `[run]`: what `kiln run` boots.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[run]` table")]
pub(crate) struct RawRun {
    pub kernel: Option<Spanned<String>>,
    pub rootfs: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub snapshot: bool,
    pub pool: Option<Spanned<RawPoolSize>>,
}

/// `[run] pool`: a number of guests or `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a number of guests or \"auto\"")]
pub(super) enum RawPoolSize {
    Guests(usize),
    Word(String),
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[store]` table (keys `path`, `remotes`, `trusted-keys`)")]
pub(crate) struct RawStore {
    pub path: Option<String>,
    #[serde(default)]
    pub remotes: Vec<Spanned<RawRemoteOrUrl>>,
    #[serde(default)]
    pub trusted_keys: Vec<Spanned<String>>,
}

/// One of `[store] remotes`: a URL, or a table with `url` and options.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawRemote {
    pub url: String,
    #[serde(default)]
    pub push: bool,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub timeout: Option<String>,
}

impl<'de> Deserialize<'de> for RawRemoteOrUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawRemoteOrUrl;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a remote URL, or a table with `url` (and `push`, `endpoint`, `region`, `timeout`)")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Self::Value, E> {
                Ok(RawRemoteOrUrl(RawRemote {
                    url: url.to_owned(),
                    push: false,
                    endpoint: None,
                    region: None,
                    timeout: None,
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawRemote::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawRemoteOrUrl)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// [`RawRemote`] read from either of its two spellings.
#[derive(Debug)]
pub(crate) struct RawRemoteOrUrl(pub RawRemote);

/// `[artifact.NAME]`: a cargo package built for a target per architecture.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "an `[artifact.NAME]` table")]
pub(crate) struct RawArtifact {
    pub package: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub arches: Option<Spanned<Vec<Arch>>>,
    #[serde(default)]
    pub target: BTreeMap<Arch, String>,
    pub profile: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub no_default_features: bool,
    pub bin: Option<String>,
    #[serde(default)]
    pub kind: ArtifactKind,
    pub build_std: Option<Vec<String>>,
    #[serde(default)]
    pub build_std_features: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub rustflags: Vec<String>,
    #[serde(default)]
    pub image: ImageFormat,
    pub bootloader_toolchain: Option<Spanned<String>>,
    #[serde(default)]
    pub steps: Vec<Spanned<String>>,
    pub image_step: Option<Spanned<String>>,
}

/// What cargo builds for an artifact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// `cargo build`: one binary.
    #[default]
    Bin,
    /// `cargo test --no-run`: every test binary; each becomes a run of the cases that boot it.
    Tests,
}

/// The form an artifact's binaries are booted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// The ELF file cargo wrote.
    #[default]
    Elf,
    /// A flat binary of the ELF's loadable segments from the lowest physical address
    /// (`objcopy -O binary`), for boards that load raw images.
    Raw,
    /// A BIOS disk image made with the `bootloader` crate 0.9 around the ELF, as the
    /// `bootimage` tool makes it; booted as a disk.
    Bootimage,
    /// A BIOS disk image made with the current `bootloader` crate (0.11 and newer) for a
    /// kernel that uses `bootloader_api`; booted as a disk.
    Bios,
    /// A UEFI disk image made with the current `bootloader` crate (0.11 and newer) for a
    /// kernel that uses `bootloader_api`; booted as a disk with OVMF.
    Uefi,
}

impl ImageFormat {
    /// Whether the images are disk images made around the kernel ELF by a bootloader.
    pub fn is_disk(self) -> bool {
        matches!(self, Self::Bootimage | Self::Bios | Self::Uefi)
    }

    /// The form cargo's own output is stored in before any disk image is made: disk images
    /// are made from the ELF, so `bios` and `uefi` artifacts of one kernel share one build.
    pub fn cargo_output(self) -> Self {
        match self {
            Self::Bios | Self::Uefi => Self::Elf,
            other => other,
        }
    }
}

/// `[machine.NAME]`: overrides of a built-in QEMU profile.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[machine.NAME]` table")]
pub(crate) struct RawMachine {
    pub arch: Option<Spanned<Arch>>,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    pub memory: Option<Spanned<RawSize>>,
    pub smp: Option<Spanned<u32>>,
    pub firmware: Option<String>,
    pub args: Option<Vec<String>>,
    pub semihosting: Option<bool>,
    pub devices: Option<Vec<String>>,
    pub boot: Option<RawBoot>,
}

/// `boot = "kernel" | "disk"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawBoot {
    Kernel,
    Disk,
}

/// A memory size: an integer (MiB) or text such as `"256M"` or `"1G"`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a size in MiB or text such as \"256M\" or \"1G\"")]
pub(crate) enum RawSize {
    Mib(u32),
    Text(String),
}

/// `[case.NAME]`: what boots where and how it is judged.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[case.NAME]` table")]
pub(crate) struct RawCase {
    pub artifact: Option<Spanned<String>>,
    pub kernel: Option<Spanned<String>>,
    pub rootfs: Option<Spanned<String>>,
    pub command: Option<Spanned<String>>,
    pub arches: Option<Spanned<Vec<Arch>>>,
    pub machines: Option<Vec<Spanned<String>>>,
    pub success: Option<Spanned<String>>,
    pub failure: Option<Spanned<String>>,
    pub success_exit_codes: Option<Vec<i32>>,
    #[serde(default)]
    pub expect: Expect,
    pub timeout: Option<Spanned<String>>,
    pub no_output_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub stop_on_success: bool,
    pub snapshot: Option<Spanned<bool>>,
    pub input: Option<Spanned<String>>,
    pub input_after: Option<Spanned<String>>,
    /// `[case.NAME.test.TEST]`: settings of one test binary of a `kind = "tests"` artifact.
    #[serde(default)]
    pub test: BTreeMap<String, RawTestSettings>,
}

/// `[case.NAME.test.TEST]`: what one test binary changes of its case's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", expecting = "a `[case.NAME.test.TEST]` table")]
pub(crate) struct RawTestSettings {
    pub success: Option<Spanned<String>>,
    pub failure: Option<Spanned<String>>,
    pub success_exit_codes: Option<Vec<i32>>,
    pub expect: Option<Expect>,
    pub timeout: Option<Spanned<String>>,
    pub no_output_timeout: Option<Spanned<String>>,
    pub stop_on_success: Option<bool>,
    pub input: Option<Spanned<String>>,
    pub input_after: Option<Spanned<String>>,
}

/// What a case is expected to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The guest passes.
    #[default]
    Pass,
    /// The guest fails (panics, exits with a failure code, prints the failure marker); a
    /// timeout or a silent guest is still a failure of the case.
    Fail,
}
