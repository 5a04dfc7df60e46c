//! Disk images made with the `bootloader` crate 0.9, the way `bootimage` makes them: the
//! bootloader crate is built around each kernel ELF (its build script embeds the kernel),
//! and its ELF becomes a flat binary padded to whole 512-byte sectors, which BIOS boots.
//!
//! The images live in their own store entry, beside the kernels' entry: its closure holds the
//! kernels' closure, the bootloader's version, features and source, the toolchain and the
//! build-std settings.

use std::path::{Path, PathBuf};

use super::cargo_json::Metadata;
use anyhow::{Context, bail};
use kiln_store::{ClosureHash, Derivation, InputHash, SourceSet, StatCache, hash_source_set};

use super::{BootImage, tool::tool_command};

/// Bumped whenever the way kiln makes bootloader images changes their output.
const BUILDER_VERSION: &str = "kiln-bootimage-2";

/// The crates the bootloader is built with: bootimage's `-Z build-std=core` plus
/// `compiler_builtins` with its `mem` feature (memcpy and friends for a freestanding target).
const BUILD_STD: &str = "core,compiler_builtins";
/// `-Z build-std-features` for the bootloader.
const BUILD_STD_FEATURES: &str = "compiler-builtins-mem";

/// What a disk image file in the entry is called: `NAME.img` for kernel `NAME`.
const IMAGE_SUFFIX: &str = ".img";

/// The `bootloader` 0.9 dependency of a kernel package, as `cargo metadata` resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bootloader {
    /// The bootloader package's version.
    pub version: String,
    /// Its features as the kernel enables them (`map_physical_memory`, ...), plus `binary`.
    pub features: Vec<String>,
    /// Its manifest (in cargo's registry, or a path or git checkout).
    pub manifest: PathBuf,
    /// Its own target specification, from `[package.metadata.bootloader] target`.
    pub target_spec: PathBuf,
    /// The kernel package's manifest (the bootloader reads `[package.metadata.bootloader]`
    /// there).
    pub kernel_manifest: PathBuf,
}

impl Bootloader {
    /// The bootloader dependency of local package `package` in `metadata`, or an error that
    /// says what to add.
    pub(crate) fn of_package(metadata: &Metadata, package: &str, artifact: &str) -> anyhow::Result<Self> {
        let kernel = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == package && p.source.is_none())
            .with_context(|| format!("artifact `{artifact}`: no local package `{package}`"))?;
        let Some(dependency) =
            kernel.dependencies.iter().find(|d| d.rename.as_deref().unwrap_or(d.name.as_str()) == "bootloader")
        else {
            bail!(
                "artifact `{artifact}` has `image = \"bootimage\"`, but package `{package}` ({}) does not depend on \
                 the `bootloader` crate; add `bootloader = \"0.9\"` to its [dependencies], or use `image = \"elf\"`",
                kernel.manifest_path.display()
            );
        };
        let resolve = metadata.resolve.as_ref().context("`cargo metadata` gave no dependency resolution")?;
        let node = resolve.nodes.iter().find(|n| n.id == kernel.id).context("the kernel package is not resolved")?;
        let resolved = node
            .deps
            .iter()
            .find(|d| d.name.as_str() == dependency.rename.as_deref().unwrap_or("bootloader"))
            .and_then(|d| metadata.packages.iter().find(|p| p.id == d.pkg))
            .or_else(|| metadata.packages.iter().find(|p| p.name.as_str() == dependency.name))
            .with_context(|| format!("`cargo metadata` did not resolve the `bootloader` dependency of `{package}`"))?;
        let version = semver::Version::parse(&resolved.version)
            .with_context(|| format!("`cargo metadata` gave bootloader the version `{}`", resolved.version))?;
        if version.major != 0 || version.minor > 9 {
            bail!(
                "artifact `{artifact}`: `image = \"bootimage\"` builds bootloader 0.9 images, but `{package}` uses \
                 bootloader {}; for a kernel that uses bootloader_api 0.11 or newer, use `image = \"bios\"` or \
                 `image = \"uefi\"`",
                resolved.version
            );
        }
        let manifest = resolved.manifest_path.clone();
        let root = manifest.parent().map(Path::to_owned).unwrap_or_default();
        let target =
            resolved.metadata.get("bootloader").and_then(|b| b.get("target")).and_then(|t| t.as_str()).with_context(
                || {
                    format!(
                        "bootloader {} has no `[package.metadata.bootloader] target` in `{}`; kiln needs bootloader \
                     0.5.1 or newer",
                        resolved.version,
                        manifest.display()
                    )
                },
            )?;
        let mut features: Vec<String> = resolve
            .nodes
            .iter()
            .find(|n| n.id == resolved.id)
            .map(|n| n.features.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        if resolved.features.contains_key("binary") && !features.iter().any(|f| f == "binary") {
            features.push("binary".to_owned());
        }
        features.sort();
        Ok(Self {
            version: resolved.version.to_string(),
            features,
            target_spec: root.join(target),
            manifest,
            kernel_manifest: kernel.manifest_path.clone(),
        })
    }

    /// The bootloader's source directory.
    fn root(&self) -> &Path {
        self.manifest.parent().unwrap_or(Path::new("."))
    }
}

/// The derivation of the disk images of the kernels in entry `kernels`.
pub(crate) fn derivation(
    kernels: ClosureHash,
    bootloader: &Bootloader,
    rustc_version: &str,
    stat_cache: &StatCache,
) -> anyhow::Result<Derivation> {
    let mut drv = Derivation::new("bootimage");
    drv.setting("builder", BUILDER_VERSION)
        .setting("bootloader-version", &bootloader.version)
        .setting("bootloader-features", bootloader.features.join(","))
        .setting(
            "bootloader-target",
            bootloader.target_spec.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        )
        .setting("build-std", BUILD_STD)
        .setting("build-std-features", BUILD_STD_FEATURES);
    drv.input("kernels", InputHash::of_closure(kernels));
    drv.input("tool:rustc", InputHash::of_bytes(rustc_version.as_bytes()));
    let source = SourceSet::package_dir(bootloader.root())
        .with_context(|| format!("cannot list the bootloader's sources in `{}`", bootloader.root().display()))?;
    drv.input("source:bootloader", hash_source_set(&source, stat_cache)?);
    Ok(drv)
}

/// Builds the bootloader around each kernel and writes `NAME.img` for each into `out`.
/// Cargo runs in `kernel_dir` (so the kernel's toolchain and cargo config apply, as with
/// bootimage) with its own target directory under `work_dir`.
pub(crate) fn build(
    bootloader: &Bootloader,
    kernels: &[BootImage],
    kernel_dir: &Path,
    work_dir: &Path,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    let target_dir = work_dir.join("bootimage").join(format!("bootloader-{}", bootloader.version));
    let target_name = bootloader.target_spec.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for kernel in kernels {
        let mut command = tool_command("cargo", kernel_dir);
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(&bootloader.manifest)
            .args(["--bin", "bootloader", "--release"])
            .arg("--target")
            .arg(&bootloader.target_spec)
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(format!("-Zbuild-std={BUILD_STD}"))
            .arg(format!("-Zbuild-std-features={BUILD_STD_FEATURES}"));
        if !bootloader.features.is_empty() {
            command.arg("--features").arg(bootloader.features.join(","));
        }
        if quiet {
            command.arg("--quiet");
        }
        // As bootimage: the kernel's rustflags (linker scripts and the like) are not the
        // bootloader's.
        command.env("RUSTFLAGS", "").env_remove("CARGO_ENCODED_RUSTFLAGS");
        command.env("KERNEL", &kernel.path).env("KERNEL_MANIFEST", &bootloader.kernel_manifest);
        command.stdin(std::process::Stdio::null());
        let status = command.status().with_context(|| {
            format!("failed to run cargo for bootloader {} in `{}`", bootloader.version, kernel_dir.display())
        })?;
        if !status.success() {
            bail!(
                "building bootloader {} around kernel `{}` failed with {status}; bootloader 0.9 needs a nightly \
                 toolchain with the `rust-src` and `llvm-tools` components (`rustup component add rust-src \
                 llvm-tools-preview` in `{}`)",
                bootloader.version,
                kernel.name,
                kernel_dir.display()
            );
        }
        let elf = target_dir.join(&target_name).join("release").join("bootloader");
        let image = out.join(image_file(kernel));
        write_disk_image(&elf, &image).with_context(|| format!("cannot make the disk image of `{}`", kernel.name))?;
    }
    Ok(())
}

/// The bootloader's ELF as a flat binary (`objcopy -O binary`: its sections from the boot
/// sector at 0x7c00 on, not the ELF headers that share its first segment), padded with zeros to a
/// whole number of 512-byte sectors.
fn write_disk_image(elf: &Path, image: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(elf).with_context(|| format!("cannot read `{}`", elf.display()))?;
    let raw = padded_to_sectors(super::image::raw_sections(&data)?);
    std::fs::write(image, raw).with_context(|| format!("cannot write `{}`", image.display()))
}

/// `bytes` with zeros after them up to a whole number of 512-byte sectors.
fn padded_to_sectors(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

/// The file name of `kernel`'s disk image: its file in the cargo entry (already safe as a
/// file name, whatever the test binary's id) with [`IMAGE_SUFFIX`].
pub(super) fn image_file(kernel: &BootImage) -> String {
    let file = kernel.path.file_name().map_or_else(|| kernel.name.clone(), |f| f.to_string_lossy().into_owned());
    format!("{file}{IMAGE_SUFFIX}")
}

/// The disk images in an entry made by [`build`] from `kernels`, one per kernel, named and
/// (for test kernels) identified as the kernel is.
pub(crate) fn images_in(dir: &Path, kernels: &[BootImage]) -> anyhow::Result<Vec<BootImage>> {
    kernels
        .iter()
        .map(|kernel| {
            let path = dir.join(image_file(kernel));
            if !path.is_file() {
                bail!(
                    "the bootloader entry `{}` has no disk image of `{}`; remove it with `cargo xtask store verify --repair`",
                    dir.display(),
                    kernel.name
                );
            }
            Ok(BootImage { name: kernel.name.clone(), path, test: kernel.test.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootloader(dir: &Path) -> Bootloader {
        Bootloader {
            version: "0.9.35".to_owned(),
            features: vec!["binary".to_owned()],
            manifest: dir.join("Cargo.toml"),
            target_spec: dir.join("x86_64-bootloader.json"),
            kernel_manifest: dir.join("kernel/Cargo.toml"),
        }
    }

    #[test]
    fn the_closure_changes_with_every_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"bootloader\"\n").expect("write");
        std::fs::write(dir.path().join("build.rs"), "fn main() {}\n").expect("write");
        let cache = StatCache::load(dir.path().join("stat-cache"));
        let kernels = Derivation::new("k").closure_hash();
        let base = bootloader(dir.path());
        let closure = |kernels, bootloader: &Bootloader, rustc: &str| {
            derivation(kernels, bootloader, rustc, &cache).expect("derivation").closure_hash()
        };
        let first = closure(kernels, &base, "rustc 1.0");
        assert_eq!(first, closure(kernels, &base, "rustc 1.0"), "the same inputs give the same closure");
        let mut other_kernels = Derivation::new("k");
        other_kernels.setting("x", "y");
        assert_ne!(first, closure(other_kernels.closure_hash(), &base, "rustc 1.0"), "the kernels");
        assert_ne!(first, closure(kernels, &base, "rustc 2.0"), "the toolchain");
        let newer = Bootloader { version: "0.9.36".to_owned(), ..base.clone() };
        assert_ne!(first, closure(kernels, &newer, "rustc 1.0"), "the version");
        let mapped = Bootloader { features: vec!["binary".into(), "map_physical_memory".into()], ..base.clone() };
        assert_ne!(first, closure(kernels, &mapped, "rustc 1.0"), "the features");
        std::fs::write(dir.path().join("build.rs"), "fn main() { println!(); }\n").expect("write");
        assert_ne!(first, closure(kernels, &base, "rustc 1.0"), "the bootloader's source");
    }

    #[test]
    fn a_kernel_without_a_bootloader_dependency_is_told_what_to_add() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"kernel\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").expect("write");
        let output = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(dir.path())
            .output()
            .expect("cargo metadata");
        let metadata = Metadata::parse(&String::from_utf8_lossy(&output.stdout)).expect("cargo metadata's JSON");
        let err = Bootloader::of_package(&metadata, "kernel", "os").expect_err("no bootloader");
        let message = format!("{err:#}");
        assert!(message.contains("artifact `os`"), "{message}");
        assert!(message.contains("add `bootloader = \"0.9\"`"), "{message}");
    }

    #[test]
    fn a_disk_image_is_padded_to_whole_sectors() {
        assert_eq!(padded_to_sectors(vec![1; 512]).len(), 512);
        let padded = padded_to_sectors(vec![1; 513]);
        assert_eq!(padded.len(), 1024);
        assert!(padded[513..].iter().all(|b| *b == 0));
    }
}
