//! `[artifact.NAME]`: a cargo package built for one target per architecture.

use std::{collections::BTreeMap, path::PathBuf};

use kiln_types::Arch;
use toml::Spanned;

use super::{
    ConfigError,
    raw::{ArtifactKind, ImageFormat, RawArtifact},
    resolve::{Resolver, dedup},
    step::CommandStep,
};

/// A cargo package built for one target per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Artifact {
    /// The artifact's name in Kiln.toml.
    pub name: String,
    /// The cargo package.
    pub package: String,
    /// The package's directory; cargo runs there, so its `.cargo/config.toml` applies.
    pub dir: PathBuf,
    /// The architectures it is built for.
    pub arches: Vec<Arch>,
    /// Target triple per architecture.
    pub targets: BTreeMap<Arch, String>,
    /// Cargo profile.
    pub profile: String,
    /// Cargo features.
    pub features: Vec<String>,
    /// Whether default features are off.
    pub no_default_features: bool,
    /// The binary target, when the package has several.
    pub bin: Option<String>,
    /// A binary, or every test binary.
    pub kind: ArtifactKind,
    /// `-Z build-std=...` crates (needs a nightly toolchain and `rust-src`).
    pub build_std: Option<Vec<String>>,
    /// `-Z build-std-features=...`.
    pub build_std_features: Vec<String>,
    /// Environment variables for cargo (closure inputs).
    pub env: BTreeMap<String, String>,
    /// Flags added to the project's own rustflags (never replacing them).
    pub rustflags: Vec<String>,
    /// ELF or raw binary.
    pub image: ImageFormat,
    /// For `image = "bios"` / `"uefi"`: the toolchain kiln's image builder is built with,
    /// instead of the one it picks for the bootloader's version.
    pub bootloader_toolchain: Option<String>,
    /// The `[step.NAME]`s that run before it is built, in the order they run (the steps they
    /// need included); their closures are part of its own.
    pub steps: Vec<CommandStep>,
    /// The `[step.NAME]` that makes the image kiln boots from the built binary (a step whose
    /// inputs name `artifact:NAME`), run per arch after the build.
    pub image_step: Option<CommandStep>,
}

impl Resolver<'_> {
    pub(super) fn artifact(
        &self,
        name: &str,
        raw: RawArtifact,
        steps: &BTreeMap<String, CommandStep>,
    ) -> Result<Artifact, ConfigError> {
        let key = |k: &str| format!("artifact.{name}.{k}");
        let dir = match &raw.path {
            Some(path) if path.get_ref() == "." || path.get_ref().is_empty() => self.root.to_owned(),
            Some(path) => self.root.join(path.get_ref()),
            None => self.root.to_owned(),
        };
        if !dir.join("Cargo.toml").is_file() {
            let span = raw.path.as_ref().map(Spanned::span);
            return Err(self
                .error(span, key("path"), format!("no Cargo.toml in `{}`", dir.display()))
                .with_help("set `path` to the directory of the cargo package, relative to Kiln.toml"));
        }
        let arches = match &raw.arches {
            Some(list) if list.get_ref().is_empty() => {
                return Err(self
                    .error(Some(list.span()), key("arches"), "`arches` is empty")
                    .with_help("list at least one of x86_64, aarch64, riscv64, or remove the key for all three"));
            }
            Some(list) => dedup(list.get_ref().clone()),
            None => Arch::ALL.to_vec(),
        };
        if raw.image.is_disk()
            && let Some(other) = arches.iter().find(|arch| **arch != Arch::X86_64)
        {
            let image = format!("{:?}", raw.image).to_lowercase();
            let span = raw.arches.as_ref().map(Spanned::span);
            return Err(self
                .error(span, key("arches"), format!("`image = \"{image}\"` makes x86_64 disk images, not {other} ones"))
                .with_help("set `arches = [\"x86_64\"]` (the bootloader crate boots x86_64 kernels only)"));
        }
        if let Some(toolchain) = &raw.bootloader_toolchain {
            let span = Some(toolchain.span());
            if !matches!(raw.image, ImageFormat::Bios | ImageFormat::Uefi) {
                return Err(self
                    .error(
                        span,
                        key("bootloader-toolchain"),
                        "`bootloader-toolchain` is for bootloader 0.11+ disk images",
                    )
                    .with_help("set `image = \"bios\"` or `image = \"uefi\"`, or remove the key"));
            }
            let name = toolchain.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                return Err(self
                    .error(span, key("bootloader-toolchain"), format!("`{name}` is not a rustup toolchain name"))
                    .with_help("name a dated nightly such as `nightly-2026-08-01`"));
            }
        }
        let mut targets = BTreeMap::new();
        for arch in &arches {
            let triple = raw.target.get(arch).cloned().unwrap_or_else(|| arch.bare_metal_triple().to_owned());
            let custom_target_file = triple.ends_with(".json");
            if !custom_target_file && !triple.starts_with(arch.as_str()) {
                return Err(self
                    .error(
                        None,
                        key(&format!("target.{arch}")),
                        format!("target `{triple}` is not a target for {arch}"),
                    )
                    .with_help(format!("use a {arch} triple such as `{}`", arch.bare_metal_triple())));
            }
            targets.insert(*arch, triple);
        }
        let image_step = self.image_step(name, &raw, steps)?;
        let mut wanted = raw.steps.clone();
        if let Some(step) = &image_step {
            wanted.extend(step.needs.iter().map(|n| Spanned::new(0..0, n.clone())));
        }
        let steps = self.artifact_steps(name, &wanted, steps)?;
        Ok(Artifact {
            name: name.to_owned(),
            package: raw.package.into_inner(),
            dir,
            arches,
            targets,
            profile: raw.profile.unwrap_or_else(|| "release".to_owned()),
            features: raw.features,
            no_default_features: raw.no_default_features,
            bin: raw.bin,
            kind: raw.kind,
            build_std: raw.build_std,
            build_std_features: raw.build_std_features,
            env: raw.env,
            rustflags: raw.rustflags,
            image: raw.image,
            bootloader_toolchain: raw.bootloader_toolchain.map(Spanned::into_inner),
            steps,
            image_step,
        })
    }
}
