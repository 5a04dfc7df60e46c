//! `[rootfs.NAME]`: an image assembled from layers, per architecture, written as an
//! initramfs, ext4 or qcow2.

use std::path::PathBuf;

use kiln_types::Arch;

use super::{
    Artifact, ConfigError, Fetch, NameTemplate,
    raw::{RawLayer, RawRootfs},
    resolve::{Resolver, parse_size},
};

/// `[rootfs.NAME]`: an image assembled from layers, per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rootfs {
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
pub(crate) enum RootfsFormat {
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
pub(crate) enum Compression {
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
pub(crate) struct Layer {
    /// What it adds.
    pub source: LayerSource,
    /// Where in the rootfs (a directory for trees, the file's path for single files).
    pub dest: String,
    /// Permission bits for single files.
    pub mode: Option<u32>,
}

/// Where a layer's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LayerSource {
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

impl Resolver<'_> {
    pub(super) fn rootfs(
        &self,
        name: &str,
        raw: RawRootfs,
        fetches: &std::collections::BTreeMap<String, Fetch>,
        artifacts: &std::collections::BTreeMap<String, Artifact>,
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

    pub(super) fn layer(
        &self,
        rootfs: &str,
        raw: RawLayer,
        span: std::ops::Range<usize>,
        arches: &[Arch],
        fetches: &std::collections::BTreeMap<String, Fetch>,
        artifacts: &std::collections::BTreeMap<String, Artifact>,
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
            (Some(dest), _) if dest.starts_with('/') && dest.split('/').any(|part| part == "..") => {
                return Err(self
                    .error(Some(span), key, format!("layer destination `{}` climbs out with `..`", dest.escape_debug()))
                    .with_help("name the path in the guest without `..`, such as \"/etc/motd\""));
            }
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
}
