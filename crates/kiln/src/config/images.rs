//! The Linux side of Kiln.toml: pinned fetches, kernels, rootfs recipes and `[run]`.

use std::{path::PathBuf, time::Duration};

use kiln_types::Arch;
use toml::Spanned;

use super::{
    ConfigError, Resolver, dedup, parse_size,
    raw::{RawFetch, RawKernel, RawLayer, RawRootfs, RawRun},
};

/// Default hard timeout of one `kiln run`.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// `[fetch.NAME]`: one file, pinned by its hash (a fixed-output derivation: the hash, not
/// the address, names its store entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The fetch's name in Kiln.toml.
    pub name: String,
    /// Where the file comes from.
    pub source: FetchSource,
    /// The hash the file must have.
    pub hash: PinnedHash,
}

/// Where a fetched file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchSource {
    /// An `http://` or `https://` address.
    Url(String),
    /// A local file (relative paths are relative to Kiln.toml).
    Path(PathBuf),
    /// An asset of a GitHub release (resolved through the API, so another project's
    /// `cargo xtask release` output can be pinned by hash).
    GithubRelease {
        /// `owner/name`.
        repository: String,
        /// The release's tag.
        tag: String,
        /// The asset's file name.
        asset: String,
    },
}

impl FetchSource {
    /// The file name the fetched file keeps in the store.
    pub fn file_name(&self) -> String {
        let raw = match self {
            Self::Url(url) => url.split(['?', '#']).next().unwrap_or(url).rsplit('/').next().unwrap_or("").to_owned(),
            Self::Path(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Self::GithubRelease { asset, .. } => asset.clone(),
        };
        let decoded = raw.replace("%2b", "+").replace("%2B", "+").replace("%3a", ":").replace("%3A", ":");
        if decoded.is_empty() || decoded.starts_with('.') { "download".to_owned() } else { decoded }
    }
}

/// A hash a file is pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedHash {
    /// The algorithm.
    pub algorithm: HashAlgorithm,
    /// Lowercase hex digest.
    pub hex: String,
}

/// A pinning hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// BLAKE3 (256-bit).
    Blake3,
    /// SHA-256, as Debian's package indexes and most download pages publish.
    Sha256,
}

impl HashAlgorithm {
    /// The Kiln.toml key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
}

/// A fetch name that may contain `{arch}`, replaced per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate(pub String);

impl NameTemplate {
    /// The name for `arch`.
    pub fn for_arch(&self, arch: Arch) -> String {
        self.0.replace("{arch}", arch.as_str())
    }
}

/// `[kernel.NAME]`: a Linux kernel for one or more architectures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel's name in Kiln.toml.
    pub name: String,
    /// Its architectures.
    pub arches: Vec<Arch>,
    /// Where the kernel image comes from.
    pub source: KernelSource,
    /// Kernel command-line arguments added to the machine's.
    pub cmdline: Vec<String>,
    /// Modules (with their dependencies) shipped beside the kernel for the guest to load,
    /// in addition to the ones kiln's init needs.
    pub modules: Vec<String>,
}

/// Where a kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian `linux-image-*` package (a fetch): `/boot/vmlinuz-*` and its modules.
    Deb(NameTemplate),
    /// A kernel image file (a fetch) booted as it is, without modules.
    Image(NameTemplate),
}

/// `[rootfs.NAME]`: an image assembled from layers, per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rootfs {
    /// The recipe's name in Kiln.toml.
    pub name: String,
    /// Its architectures.
    pub arches: Vec<Arch>,
    /// The image format.
    pub format: RootfsFormat,
    /// Whether kiln's generated `/init` is added (it runs a case's command or `kiln run`'s binary).
    pub init: bool,
    /// Disk size in MiB for ext4 and qcow2 (default: the contents plus headroom).
    pub size_mib: Option<u32>,
    /// The layers, applied in order (later ones replace earlier files).
    pub layers: Vec<Layer>,
}

/// What a rootfs is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootfsFormat {
    /// A cpio (newc) initramfs.
    Initramfs(Compression),
    /// An ext4 filesystem image.
    Ext4,
    /// The ext4 image converted to qcow2.
    Qcow2,
}

impl RootfsFormat {
    /// The image's file name in the store entry.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Initramfs(Compression::Gzip) => "rootfs.cpio.gz",
            Self::Initramfs(Compression::Zstd) => "rootfs.cpio.zst",
            Self::Initramfs(Compression::None) => "rootfs.cpio",
            Self::Ext4 => "rootfs.ext4",
            Self::Qcow2 => "rootfs.qcow2",
        }
    }

    /// The Kiln.toml spelling (with the compression for initramfs).
    pub fn describe(self) -> String {
        match self {
            Self::Initramfs(compression) => format!("initramfs/{}", compression.as_str()),
            Self::Ext4 => "ext4".to_owned(),
            Self::Qcow2 => "qcow2".to_owned(),
        }
    }
}

/// Initramfs compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (every kernel reads it).
    Gzip,
    /// zstd (kernels with `CONFIG_RD_ZSTD`).
    Zstd,
    /// Uncompressed.
    None,
}

impl Compression {
    /// The Kiln.toml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::None => "none",
        }
    }
}

/// One rootfs layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// What it adds.
    pub source: LayerSource,
    /// Where in the rootfs (a directory for trees, the file's path for single files).
    pub dest: String,
    /// Permission bits for single files.
    pub mode: Option<u32>,
}

/// Where a layer's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSource {
    /// A static busybox: a fetched `.deb` (its `/bin/busybox`) or binary, with applet links.
    Busybox(NameTemplate),
    /// A fetched Debian package's `data.tar`.
    Deb(NameTemplate),
    /// A fetched tarball (gzip, xz, zstd or none).
    Tarball(NameTemplate),
    /// A directory of the project.
    Dir(PathBuf),
    /// A file of the project.
    File(PathBuf),
    /// The binary an artifact builds for the rootfs's architecture.
    Artifact(String),
    /// A file with this text.
    Text(String),
}

/// `[run]`: what `kiln run` boots, and what it passes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// The kernel (default: the only one declared).
    pub kernel: Option<String>,
    /// The rootfs (default: the only initramfs declared).
    pub rootfs: Option<String>,
    /// Hard timeout of one run.
    pub timeout: Duration,
    /// Host environment variables passed to the program besides cargo's (`CARGO_*`, `RUST_*`).
    pub env: Vec<String>,
    /// Files or directories (relative to Kiln.toml) copied into the guest at the same path.
    pub files: Vec<String>,
    /// Restore a booted snapshot for every run instead of booting (as `run --snapshot`).
    pub snapshot: bool,
    /// Keep this many restored guests idle and ready for runs (as `run --pool N`; 0: none).
    pub pool: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            kernel: None,
            rootfs: None,
            timeout: DEFAULT_RUN_TIMEOUT,
            env: Vec::new(),
            files: Vec::new(),
            snapshot: false,
            pool: 0,
        }
    }
}

impl Resolver<'_> {
    pub(super) fn fetch(&self, name: &str, raw: RawFetch) -> Result<Fetch, ConfigError> {
        let key = |k: &str| format!("fetch.{name}.{k}");
        if let Some(repository) = raw.github_release {
            if let Some(other) = raw.url.as_ref().or(raw.path.as_ref()) {
                return Err(self
                    .error(Some(other.span()), format!("fetch.{name}"), format!("fetch `{name}` names two sources"))
                    .with_help("keep one of `url`, `path` and `github-release`"));
            }
            if let Err(err) = repository.get_ref().parse::<kiln_github::Repo>() {
                return Err(self.error(Some(repository.span()), key("github-release"), err.to_string()));
            }
            let (Some(tag), Some(asset)) = (raw.tag, raw.asset) else {
                return Err(self
                    .error(
                        Some(repository.span()),
                        key("github-release"),
                        format!("fetch `{name}` needs `tag` and `asset` with `github-release`"),
                    )
                    .with_help(
                        "e.g. `github-release = \"owner/repo\", tag = \"v1.0\", asset = \"base-x86_64.cpio.gz\"`",
                    ));
            };
            let hash = self.pinned(name, raw.blake3, raw.sha256)?;
            let source = FetchSource::GithubRelease {
                repository: repository.into_inner(),
                tag: tag.into_inner(),
                asset: asset.into_inner(),
            };
            return Ok(Fetch { name: name.to_owned(), source, hash });
        }
        if let Some(stray) = raw.tag.as_ref().or(raw.asset.as_ref()) {
            return Err(self
                .error(Some(stray.span()), format!("fetch.{name}"), "`tag` and `asset` go with `github-release`")
                .with_help("add `github-release = \"owner/repo\"`, or remove them"));
        }
        let source = match (raw.url, raw.path) {
            (Some(url), None) => {
                let text = url.get_ref();
                if !(text.starts_with("http://") || text.starts_with("https://")) {
                    return Err(self
                        .error(Some(url.span()), key("url"), format!("`{text}` is not an http:// or https:// address"))
                        .with_help("for a local file use `path = \"...\"` instead"));
                }
                FetchSource::Url(url.into_inner())
            }
            (None, Some(path)) => FetchSource::Path(self.root.join(path.get_ref())),
            (Some(url), Some(_)) => {
                return Err(self
                    .error(Some(url.span()), key("url"), format!("fetch `{name}` has both `url` and `path`"))
                    .with_help("keep one of them"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("fetch.{name}"), format!("fetch `{name}` says neither `url` nor `path`"))
                    .with_help("add `url = \"https://...\"` or `path = \"relative/to/Kiln.toml\"`"));
            }
        };
        let hash = self.pinned(name, raw.blake3, raw.sha256)?;
        Ok(Fetch { name: name.to_owned(), source, hash })
    }

    fn pinned(
        &self,
        name: &str,
        blake3: Option<Spanned<String>>,
        sha256: Option<Spanned<String>>,
    ) -> Result<PinnedHash, ConfigError> {
        let key = |k: &str| format!("fetch.{name}.{k}");
        Ok(match (blake3, sha256) {
            (Some(hex), None) => self.hex_hash(name, "blake3", HashAlgorithm::Blake3, hex)?,
            (None, Some(hex)) => self.hex_hash(name, "sha256", HashAlgorithm::Sha256, hex)?,
            (Some(hex), Some(_)) => {
                return Err(self
                    .error(Some(hex.span()), key("blake3"), format!("fetch `{name}` pins two hashes"))
                    .with_help("keep one of `blake3` and `sha256`"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("fetch.{name}"), format!("fetch `{name}` is not pinned by a hash"))
                    .with_help(
                        "add `sha256 = \"...\"` or `blake3 = \"...\"` (`sha256sum FILE`); a wrong hash fails the \
                         fetch and prints the file's actual hash",
                    ));
            }
        })
    }

    fn hex_hash(
        &self,
        name: &str,
        field: &str,
        algorithm: HashAlgorithm,
        hex: Spanned<String>,
    ) -> Result<PinnedHash, ConfigError> {
        let text = hex.get_ref().trim().to_ascii_lowercase();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self
                .error(
                    Some(hex.span()),
                    format!("fetch.{name}.{field}"),
                    format!("`{}` is not a {field} hash (64 hex digits)", hex.get_ref()),
                )
                .with_help("copy the digest from `sha256sum FILE` or `b3sum FILE`"));
        }
        Ok(PinnedHash { algorithm, hex: text })
    }

    fn arches(
        &self,
        key: String,
        raw: Option<&Spanned<Vec<Arch>>>,
        default: &[Arch],
    ) -> Result<Vec<Arch>, ConfigError> {
        match raw {
            Some(list) if list.get_ref().is_empty() => {
                Err(self.error(Some(list.span()), key, "`arches` is empty").with_help("list at least one architecture"))
            }
            Some(list) => Ok(dedup(list.get_ref().clone())),
            None => Ok(default.to_vec()),
        }
    }

    /// Checks that `template` names a fetch for every arch.
    fn fetch_ref(
        &self,
        key: String,
        span: Option<std::ops::Range<usize>>,
        template: &str,
        arches: &[Arch],
        fetches: &std::collections::BTreeMap<String, Fetch>,
    ) -> Result<NameTemplate, ConfigError> {
        let template = NameTemplate(template.to_owned());
        for arch in arches {
            let wanted = template.for_arch(*arch);
            if !fetches.contains_key(&wanted) {
                let err = self.error(span.clone(), key, format!("no `[fetch.{wanted}]` for {arch}"));
                return Err(match super::diagnostic::closest(&wanted, fetches.keys().map(String::as_str)) {
                    Some(near) => err.with_help(format!("a fetch with a similar name exists: `{near}`")),
                    None => err.with_help(format!(
                        "declare `[fetch.{wanted}]` with a `url` or `path` and its hash; `{{arch}}` in a name becomes \
                         x86_64, aarch64 or riscv64"
                    )),
                });
            }
        }
        Ok(template)
    }

    pub(super) fn kernel(
        &self,
        name: &str,
        raw: RawKernel,
        fetches: &std::collections::BTreeMap<String, Fetch>,
    ) -> Result<Kernel, ConfigError> {
        let key = |k: &str| format!("kernel.{name}.{k}");
        let arches = self.arches(key("arches"), raw.arches.as_ref(), &[Arch::X86_64, Arch::Aarch64])?;
        let source = match (raw.deb, raw.image) {
            (Some(deb), None) => {
                KernelSource::Deb(self.fetch_ref(key("deb"), Some(deb.span()), deb.get_ref(), &arches, fetches)?)
            }
            (None, Some(image)) => KernelSource::Image(self.fetch_ref(
                key("image"),
                Some(image.span()),
                image.get_ref(),
                &arches,
                fetches,
            )?),
            (Some(deb), Some(_)) => {
                return Err(self
                    .error(Some(deb.span()), key("deb"), format!("kernel `{name}` has both `deb` and `image`"))
                    .with_help("keep one of them"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("kernel.{name}"), format!("kernel `{name}` says neither `deb` nor `image`"))
                    .with_help(
                        "add `deb = \"linux-{arch}\"` naming a `[fetch.linux-x86_64]` of a Debian linux-image package",
                    ));
            }
        };
        Ok(Kernel { name: name.to_owned(), arches, source, cmdline: raw.cmdline, modules: raw.modules })
    }

    pub(super) fn rootfs(
        &self,
        name: &str,
        raw: RawRootfs,
        fetches: &std::collections::BTreeMap<String, Fetch>,
        artifacts: &std::collections::BTreeMap<String, super::Artifact>,
    ) -> Result<Rootfs, ConfigError> {
        let key = |k: &str| format!("rootfs.{name}.{k}");
        let arches = self.arches(key("arches"), raw.arches.as_ref(), &[Arch::X86_64, Arch::Aarch64])?;
        let compression = match raw.compression.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
            None | Some(("gzip", _)) => Compression::Gzip,
            Some(("zstd", _)) => Compression::Zstd,
            Some(("none", _)) => Compression::None,
            Some((other, span)) => {
                return Err(self
                    .error(Some(span), key("compression"), format!("unknown compression `{other}`"))
                    .with_help("use \"gzip\", \"zstd\" or \"none\""));
            }
        };
        let format = match raw.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("initramfs", _)) => RootfsFormat::Initramfs(compression),
            Some(("ext4", _)) => RootfsFormat::Ext4,
            Some(("qcow2", _)) => RootfsFormat::Qcow2,
            Some((other, span)) => {
                return Err(self
                    .error(Some(span), key("format"), format!("unknown rootfs format `{other}`"))
                    .with_help("use \"initramfs\", \"ext4\" or \"qcow2\""));
            }
        };
        if let (Some(compression), false) = (&raw.compression, matches!(format, RootfsFormat::Initramfs(_))) {
            return Err(self
                .error(Some(compression.span()), key("compression"), "`compression` applies to initramfs images only")
                .with_help("remove it, or set `format = \"initramfs\"`"));
        }
        let size_mib = match &raw.size {
            Some(size) => Some(parse_size(size.get_ref()).ok_or_else(|| {
                self.error(Some(size.span()), key("size"), "size must be MiB or a size like \"64M\" or \"1G\"")
            })?),
            None => None,
        };
        if raw.layers.is_empty() {
            return Err(self
                .error(None, format!("rootfs.{name}"), format!("rootfs `{name}` has no layers"))
                .with_help("add `layers = [{ busybox = \"busybox-{arch}\" }]` and a `[fetch.busybox-x86_64]`"));
        }
        let mut layers = Vec::new();
        for layer in raw.layers {
            let span = layer.span();
            layers.push(self.layer(name, layer.into_inner(), span, &arches, fetches, artifacts)?);
        }
        Ok(Rootfs { name: name.to_owned(), arches, format, init: raw.init.unwrap_or(true), size_mib, layers })
    }

    fn layer(
        &self,
        rootfs: &str,
        raw: RawLayer,
        span: std::ops::Range<usize>,
        arches: &[Arch],
        fetches: &std::collections::BTreeMap<String, Fetch>,
        artifacts: &std::collections::BTreeMap<String, super::Artifact>,
    ) -> Result<Layer, ConfigError> {
        let key = format!("rootfs.{rootfs}.layers");
        let sources = [
            ("busybox", &raw.busybox),
            ("deb", &raw.deb),
            ("tarball", &raw.tarball),
            ("dir", &raw.dir),
            ("file", &raw.file),
            ("artifact", &raw.artifact),
            ("text", &raw.text),
        ];
        let given: Vec<(&str, &String)> = sources.iter().filter_map(|(k, v)| v.as_ref().map(|v| (*k, v))).collect();
        let [(kind, value)] = given.as_slice() else {
            let named: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
            let message = if named.is_empty() {
                "a layer needs one source key".to_owned()
            } else {
                format!("a layer has several sources ({}): one per layer", named.join(", "))
            };
            return Err(self
                .error(Some(span), key, message)
                .with_help("use one of busybox, deb, tarball (fetch names), dir, file (paths), artifact, text"));
        };
        let fetch = |template: &str| self.fetch_ref(key.clone(), Some(span.clone()), template, arches, fetches);
        let path = |relative: &str| -> Result<PathBuf, ConfigError> {
            let path = self.root.join(relative);
            if path.exists() {
                Ok(path)
            } else {
                Err(self
                    .error(Some(span.clone()), key.clone(), format!("`{}` does not exist", path.display()))
                    .with_help("paths in layers are relative to Kiln.toml"))
            }
        };
        let source = match *kind {
            "busybox" => LayerSource::Busybox(fetch(value)?),
            "deb" => LayerSource::Deb(fetch(value)?),
            "tarball" => LayerSource::Tarball(fetch(value)?),
            "dir" => LayerSource::Dir(path(value)?),
            "file" => LayerSource::File(path(value)?),
            "artifact" => {
                let Some(artifact) = artifacts.get(*value) else {
                    return Err(self
                        .error(Some(span), key, format!("unknown artifact `{value}` in a layer of rootfs `{rootfs}`"))
                        .with_help("declare it under `[artifact.NAME]`"));
                };
                if let Some(arch) = arches.iter().find(|arch| !artifact.arches.contains(arch)) {
                    return Err(self
                        .error(Some(span), key, format!("artifact `{value}` is not built for {arch}"))
                        .with_help(format!("add {arch} to `artifact.{value}.arches`")));
                }
                LayerSource::Artifact((*value).clone())
            }
            _ => LayerSource::Text((*value).clone()),
        };
        let needs_dest = matches!(source, LayerSource::File(_) | LayerSource::Artifact(_) | LayerSource::Text(_));
        let dest = match (raw.dest, needs_dest) {
            (Some(dest), _) if dest.starts_with('/') => dest,
            (Some(dest), _) => {
                return Err(self
                    .error(Some(span), key, format!("layer destination `{dest}` is not an absolute path"))
                    .with_help("write it as it appears in the guest, such as \"/usr/bin/hello\""));
            }
            (None, true) => {
                return Err(self
                    .error(Some(span), key, format!("a `{kind}` layer needs `dest`, the path of the file in the guest"))
                    .with_help("add `dest = \"/bin/NAME\"`"));
            }
            (None, false) => "/".to_owned(),
        };
        if raw.mode.is_some() && !needs_dest {
            return Err(self
                .error(
                    Some(span),
                    key,
                    format!("`mode` applies to single files; a `{kind}` layer keeps its files' own modes"),
                )
                .with_help("remove `mode`, or set modes in the archive or directory itself"));
        }
        let mode = match raw.mode {
            Some(mode) => Some(u32::from_str_radix(mode.trim_start_matches("0o"), 8).map_err(|_| {
                self.error(Some(span.clone()), key.clone(), format!("mode `{mode}` is not octal"))
                    .with_help("write permission bits in octal, such as \"0755\"")
            })?),
            None => None,
        };
        Ok(Layer { source, dest, mode })
    }

    pub(super) fn run_settings(&self, raw: Option<RawRun>) -> Result<RunSettings, ConfigError> {
        let Some(raw) = raw else { return Ok(RunSettings::default()) };
        let timeout = self.positive_duration(raw.timeout.as_ref(), "run.timeout".to_owned())?;
        Ok(RunSettings {
            kernel: raw.kernel.map(Spanned::into_inner),
            rootfs: raw.rootfs.map(Spanned::into_inner),
            timeout: timeout.unwrap_or(DEFAULT_RUN_TIMEOUT),
            env: raw.env,
            files: raw.files,
            snapshot: raw.snapshot,
            pool: raw.pool,
        })
    }
}
