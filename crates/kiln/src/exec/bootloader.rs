//! BIOS and UEFI disk images made with the current `bootloader` crate (0.11 and newer), for
//! kernels that use `bootloader_api`.
//!
//! The images are made on the host, by a small program that depends on the `bootloader` crate
//! of the version the kernel's `bootloader_api` resolves to (the two crates share version
//! numbers): kiln writes it into its per-user cache (`bootloader-builder/VERSION-TOOLCHAIN/`,
//! with its own workspace and lock file), builds it once with a nightly of the bootloader
//! release's time ([`default_toolchain`], or the artifact's `bootloader-toolchain`) and runs it
//! on each kernel ELF. The images live in their own store entry, beside the kernels' entry:
//! its closure holds the kernels' closure, the bootloader's version, the firmware, the
//! builder's toolchain and source, and [`BUILDER_VERSION`].

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kiln_store::{ClosureHash, Derivation, InputHash};

use super::{BootImage, bootimage, cargo_json::Metadata, tool::tool_command};
use crate::{config::ImageFormat, env};

/// Bumped whenever the way kiln makes these images changes their output.
const BUILDER_VERSION: &str = "kiln-bootloader-builder-1";

/// The toolchain the builder of bootloader 0.11.16 and newer is built with (the one kiln's
/// tests build 0.11.17 with). The `bootloader` crate's build script builds its BIOS stages and
/// its UEFI program with `cargo install -Z build-std` and JSON target specifications, so it
/// needs a nightly with `rust-src` and `llvm-tools`, and each release works with the nightlies
/// of its time.
pub(crate) const BUILDER_TOOLCHAIN: &str = "nightly-2026-08-01";

/// The nightly each bootloader release needs at least, as its changelog says ("compatible with
/// Rust nightlies starting with ..."), newest first; a release inherits the line above it.
/// Releases before 0.11.9 name none and get 0.11.9's.
const TOOLCHAINS: &[((u64, u64, u64), &str)] = &[
    ((0, 11, 16), BUILDER_TOOLCHAIN),
    ((0, 11, 15), "nightly-2026-02-01"),
    ((0, 11, 13), "nightly-2025-11-21"),
    ((0, 11, 12), "nightly-2025-08-28"),
    ((0, 11, 11), "nightly-2025-07-24"),
    ((0, 11, 0), "nightly-2024-11-23"),
];

/// The toolchain kiln builds the builder of bootloader `version` with, unless the artifact
/// names one (`bootloader-toolchain`).
pub(crate) fn default_toolchain(version: &semver::Version) -> &'static str {
    TOOLCHAINS
        .iter()
        .find(|((major, minor, patch), _)| (version.major, version.minor, version.patch) >= (*major, *minor, *patch))
        .map_or(BUILDER_TOOLCHAIN, |(_, toolchain)| toolchain)
}

/// The builder's `main.rs`.
const BUILDER_MAIN: &str = include_str!("../../templates/bootloader-builder.rs");

/// The name of the builder's binary.
const BUILDER_BIN: &str = "builder";

/// The firmware a disk image boots through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiskFirmware {
    /// A BIOS (MBR) disk image.
    Bios,
    /// A UEFI (GPT with an EFI system partition) disk image.
    Uefi,
}

impl DiskFirmware {
    /// The firmware of an artifact's `image`, when it is one the builder makes.
    pub(crate) fn of(image: ImageFormat) -> Option<Self> {
        match image {
            ImageFormat::Bios => Some(Self::Bios),
            ImageFormat::Uefi => Some(Self::Uefi),
            ImageFormat::Elf | ImageFormat::Raw | ImageFormat::Bootimage => None,
        }
    }

    /// How the builder's command line (and the closure) names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::Uefi => "uefi",
        }
    }
}

/// The version of `bootloader_api` that local package `package` resolves to, or an error that
/// says what to add. `artifact` and `firmware` name the Kiln.toml artifact in errors.
pub(crate) fn bootloader_api_version(
    metadata: &Metadata,
    package: &str,
    artifact: &str,
    firmware: DiskFirmware,
) -> anyhow::Result<semver::Version> {
    let kernel = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == package && p.source.is_none())
        .with_context(|| format!("artifact `{artifact}`: no local package `{package}`"))?;
    let image = firmware.as_str();
    if !kernel.dependencies.iter().any(|d| d.name == "bootloader_api") {
        let old = if kernel.dependencies.iter().any(|d| d.name == "bootloader") {
            " (it depends on the `bootloader` crate itself: bootloader 0.9 kernels use `image = \"bootimage\"`)"
        } else {
            ""
        };
        bail!(
            "artifact `{artifact}` has `image = \"{image}\"`, but package `{package}` ({}) does not depend on \
             `bootloader_api`{old}; add `bootloader_api = \"0.11\"` to its [dependencies] and use its \
             `entry_point!`, or use `image = \"elf\"`",
            kernel.manifest_path.display()
        );
    }
    let resolve = metadata.resolve.as_ref().context("`cargo metadata` gave no dependency resolution")?;
    let resolved = resolve
        .nodes
        .iter()
        .find(|n| n.id == kernel.id)
        .into_iter()
        .flat_map(|node| &node.deps)
        .filter_map(|dep| metadata.packages.iter().find(|p| p.id == dep.pkg))
        .find(|p| p.name == "bootloader_api")
        .with_context(|| format!("`cargo metadata` did not resolve the `bootloader_api` dependency of `{package}`"))?;
    let version = semver::Version::parse(&resolved.version)
        .with_context(|| format!("`cargo metadata` gave bootloader_api the version `{}`", resolved.version))?;
    if version.major == 0 && version.minor < 11 {
        bail!(
            "artifact `{artifact}`: `image = \"{image}\"` needs bootloader_api 0.11 or newer, but `{package}` uses \
             {version}"
        );
    }
    Ok(version)
}

/// kiln's image builder for one `bootloader` version: a cargo project in kiln's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Builder {
    /// The `bootloader` version it pins (`=VERSION`).
    pub version: semver::Version,
    /// The toolchain it is built with.
    pub toolchain: String,
    /// The project's directory.
    pub dir: PathBuf,
}

impl Builder {
    /// The builder of `version` built with `toolchain` (by default [`default_toolchain`]),
    /// under `cache` (kiln's per-user cache directory).
    pub(crate) fn new(version: semver::Version, toolchain: Option<&str>, cache: &Path) -> Self {
        let toolchain = toolchain.unwrap_or_else(|| default_toolchain(&version)).to_owned();
        let dir = cache.join("bootloader-builder").join(format!("{version}-{toolchain}"));
        Self { version, toolchain, dir }
    }

    /// Writes the project (manifest, toolchain file, source) where a file differs from what
    /// it should be; its lock file is cargo's, made by the first build and kept.
    pub(crate) fn write_project(&self) -> anyhow::Result<()> {
        let manifest = format!(
            "# Written by kiln: its disk image builder for kernels that use bootloader_api {version}.\n\
             [package]\nname = \"kiln-bootloader-builder\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [[bin]]\nname = \"{BUILDER_BIN}\"\npath = \"main.rs\"\n\n\
             [dependencies]\nbootloader = \"={version}\"\n\n\
             # Its own workspace, whatever directory holds it.\n[workspace]\n",
            version = self.version
        );
        let toolchain = format!(
            "# Written by kiln: bootloader's build script needs a nightly with rust-src and llvm-tools.\n\
             [toolchain]\nchannel = \"{}\"\ncomponents = [\"rust-src\", \"llvm-tools\"]\nprofile = \"minimal\"\n",
            self.toolchain
        );
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create `{}`", self.dir.display()))?;
        for (name, text) in
            [("Cargo.toml", manifest.as_str()), ("rust-toolchain.toml", &toolchain), ("main.rs", BUILDER_MAIN)]
        {
            let path = self.dir.join(name);
            if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
                continue;
            }
            // Written aside and renamed, so a concurrent kiln never reads half a file.
            let mut file = tempfile::NamedTempFile::new_in(&self.dir)
                .with_context(|| format!("cannot write into `{}`", self.dir.display()))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            file.persist(&path).with_context(|| format!("cannot write `{}`", path.display()))?;
        }
        Ok(())
    }

    /// A cargo or rustc command in the builder's directory, on its toolchain whatever
    /// toolchain the user chose for their kernels.
    fn command(&self, program: &str) -> std::process::Command {
        let mut command = tool_command(program, &self.dir);
        command.env(env::RUSTUP_TOOLCHAIN, &self.toolchain).env_remove(env::RUSTUP_TOOLCHAIN_SOURCE);
        command
    }

    /// `rustc -vV` of the builder's toolchain (a closure input).
    pub(crate) fn rustc_version(&self) -> anyhow::Result<String> {
        let output = self
            .command("rustc")
            .arg("-vV")
            .output()
            .with_context(|| format!("failed to run `rustc -vV` in `{}`", self.dir.display()))?;
        if !output.status.success() {
            bail!(
                "`rustc -vV` of the `{}` toolchain (kiln's bootloader image builder) failed: {}; \
                 install it with `cd {} && rustup toolchain install`",
                self.toolchain,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.dir.display()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Builds the builder (cargo does nothing when it is up to date) and returns its program.
    pub(crate) fn build(&self, quiet: bool) -> anyhow::Result<PathBuf> {
        let mut command = self.command("cargo");
        command.args(["build", "--release"]).arg("--target-dir").arg(self.dir.join("target"));
        if quiet {
            command.arg("--quiet");
        }
        // The user's rustflags are meant for their kernels, not for a host program.
        command
            .env_remove(env::RUSTFLAGS)
            .env_remove(env::CARGO_ENCODED_RUSTFLAGS)
            .env_remove(env::CARGO_BUILD_TARGET)
            .stdin(std::process::Stdio::null());
        let status = command.status().with_context(|| {
            format!(
                "failed to run cargo for kiln's bootloader {} image builder in `{}`",
                self.version,
                self.dir.display()
            )
        })?;
        if !status.success() {
            bail!(
                "building kiln's disk image builder with bootloader {} failed with {status} (in `{}`); bootloader's \
                 build script builds its BIOS stages and UEFI program with `cargo install` from crates.io, so it \
                 needs crates.io and the `{}` toolchain with rust-src and llvm-tools \
                 (`cd {} && rustup toolchain install`); a bootloader release builds with the nightlies of its \
                 time: name another with `bootloader-toolchain` in the artifact",
                self.version,
                self.dir.display(),
                self.toolchain,
                self.dir.display()
            );
        }
        let program = self.dir.join("target/release").join(BUILDER_BIN);
        if !program.is_file() {
            bail!("cargo built no `{}`", program.display());
        }
        Ok(program)
    }
}

/// The derivation of the `firmware` disk images of the kernels in entry `kernels`, made by
/// `builder`; `rustc_version` is `rustc -vV` of the builder's toolchain.
pub(crate) fn derivation(
    kernels: ClosureHash,
    builder: &Builder,
    firmware: DiskFirmware,
    rustc_version: &str,
) -> Derivation {
    let mut drv = Derivation::new("bootloader-disk-images");
    drv.setting("builder", BUILDER_VERSION)
        .setting("bootloader-version", builder.version.to_string())
        .setting("firmware", firmware.as_str())
        .setting("toolchain", &builder.toolchain);
    drv.input("kernels", InputHash::of_closure(kernels));
    drv.input("tool:rustc", InputHash::of_bytes(rustc_version.as_bytes()));
    drv.input("builder:main.rs", InputHash::of_bytes(BUILDER_MAIN.as_bytes()));
    drv
}

/// Runs `program` (a built [`Builder`]) once for all `kernels`, writing each one's image into
/// `out` under the name [`bootimage::images_in`] reads.
pub(crate) fn make_images(
    program: &Path,
    version: &semver::Version,
    firmware: DiskFirmware,
    kernels: &[BootImage],
    out: &Path,
) -> anyhow::Result<()> {
    let mut command = std::process::Command::new(program);
    command.arg(firmware.as_str());
    for kernel in kernels {
        command.arg(&kernel.path).arg(out.join(bootimage::image_file(kernel)));
    }
    command.stdin(std::process::Stdio::null());
    let status = command.status().with_context(|| format!("failed to run `{}`", program.display()))?;
    if !status.success() {
        let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        bail!(
            "bootloader {version} could not make the {} disk images of {} ({status}); its message is above",
            firmware.as_str(),
            names.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(kernel_dependencies: &str, resolved: &str) -> Metadata {
        let json = format!(
            r#"{{"packages":[
                {{"name":"kernel","version":"0.1.0","id":"kernel-id","source":null,
                  "manifest_path":"/k/kernel/Cargo.toml","dependencies":[{kernel_dependencies}]}},
                {{"name":"bootloader_api","version":"{resolved}","id":"api-id",
                  "source":"registry+https://github.com/rust-lang/crates.io-index",
                  "manifest_path":"/r/bootloader_api/Cargo.toml"}}],
              "workspace_root":"/k",
              "resolve":{{"nodes":[
                {{"id":"kernel-id","deps":[{{"name":"bootloader_api","pkg":"api-id","dep_kinds":[{{"kind":null}}]}}],"features":[]}},
                {{"id":"api-id","deps":[],"features":[]}}]}}}}"#
        );
        Metadata::parse(&json).expect("metadata JSON")
    }

    const API: &str = r#"{"name":"bootloader_api","req":"^0.11","kind":null}"#;

    #[test]
    fn the_bootloader_version_is_the_one_bootloader_api_resolves_to() {
        let version =
            bootloader_api_version(&metadata(API, "0.11.17"), "kernel", "os", DiskFirmware::Uefi).expect("resolved");
        assert_eq!(version, semver::Version::new(0, 11, 17));
    }

    #[test]
    fn a_kernel_without_bootloader_api_is_told_what_to_add() {
        let old = r#"{"name":"bootloader","req":"^0.9","kind":null}"#;
        let err = bootloader_api_version(&metadata(old, "0.11.17"), "kernel", "os", DiskFirmware::Bios)
            .expect_err("no bootloader_api");
        let message = format!("{err:#}");
        assert!(message.contains("artifact `os` has `image = \"bios\"`"), "{message}");
        assert!(message.contains("add `bootloader_api = \"0.11\"`"), "{message}");
        assert!(message.contains("`image = \"bootimage\"`"), "bootloader 0.9 is pointed at bootimage: {message}");

        let err =
            bootloader_api_version(&metadata(API, "0.10.13"), "kernel", "os", DiskFirmware::Bios).expect_err("too old");
        assert!(format!("{err:#}").contains("needs bootloader_api 0.11 or newer"), "{err:#}");
    }

    #[test]
    fn the_closure_changes_with_every_input() {
        let kernels = Derivation::new("k").closure_hash();
        let cache = Path::new("/cache");
        let builder = Builder::new(semver::Version::new(0, 11, 17), None, cache);
        let closure = |kernels, builder: &Builder, firmware, rustc: &str| {
            derivation(kernels, builder, firmware, rustc).closure_hash()
        };
        let first = closure(kernels, &builder, DiskFirmware::Bios, "rustc 1.0");
        assert_eq!(first, closure(kernels, &builder, DiskFirmware::Bios, "rustc 1.0"), "the same inputs");
        let mut other = Derivation::new("k");
        other.setting("x", "y");
        assert_ne!(first, closure(other.closure_hash(), &builder, DiskFirmware::Bios, "rustc 1.0"), "the kernels");
        assert_ne!(first, closure(kernels, &builder, DiskFirmware::Uefi, "rustc 1.0"), "the firmware");
        assert_ne!(first, closure(kernels, &builder, DiskFirmware::Bios, "rustc 2.0"), "the toolchain");
        let newer = Builder::new(semver::Version::new(0, 11, 18), None, cache);
        assert_ne!(first, closure(kernels, &newer, DiskFirmware::Bios, "rustc 1.0"), "the version");
        let elsewhere = Builder::new(semver::Version::new(0, 11, 17), None, Path::new("/other"));
        assert_eq!(first, closure(kernels, &elsewhere, DiskFirmware::Bios, "rustc 1.0"), "not where it is built");
        let pinned = Builder::new(semver::Version::new(0, 11, 17), Some("nightly-2026-09-01"), cache);
        assert_ne!(first, closure(kernels, &pinned, DiskFirmware::Bios, "rustc 1.0"), "the toolchain's name");
        assert_ne!(pinned.dir, builder.dir, "each toolchain builds in a directory of its own");
    }

    #[test]
    fn each_release_builds_with_a_nightly_of_its_time() {
        let toolchain = |minor, patch| default_toolchain(&semver::Version::new(0, minor, patch));
        assert_eq!(toolchain(11, 17), BUILDER_TOOLCHAIN);
        assert_eq!(toolchain(11, 16), BUILDER_TOOLCHAIN);
        assert_eq!(toolchain(11, 15), "nightly-2026-02-01");
        assert_eq!(toolchain(11, 14), "nightly-2025-11-21");
        assert_eq!(toolchain(11, 9), "nightly-2024-11-23");
        assert_eq!(toolchain(11, 0), "nightly-2024-11-23");
        assert_eq!(default_toolchain(&semver::Version::new(0, 12, 0)), BUILDER_TOOLCHAIN, "newer: the newest");
    }

    #[test]
    fn the_builder_project_pins_the_version_and_is_written_once() {
        let cache = tempfile::tempdir().expect("tempdir");
        let builder = Builder::new(semver::Version::new(0, 11, 17), None, cache.path());
        builder.write_project().expect("written");
        let manifest = std::fs::read_to_string(builder.dir.join("Cargo.toml")).expect("manifest");
        assert!(manifest.contains("bootloader = \"=0.11.17\""), "{manifest}");
        assert!(manifest.contains("[workspace]"), "{manifest}");
        let toolchain = std::fs::read_to_string(builder.dir.join("rust-toolchain.toml")).expect("toolchain");
        assert!(toolchain.contains(&format!("channel = \"{BUILDER_TOOLCHAIN}\"")), "{toolchain}");
        assert_eq!(std::fs::read_to_string(builder.dir.join("main.rs")).expect("main.rs"), BUILDER_MAIN);
        let modified =
            |name: &str| std::fs::metadata(builder.dir.join(name)).and_then(|m| m.modified()).expect("mtime");
        let before = modified("Cargo.toml");
        std::thread::sleep(std::time::Duration::from_millis(20));
        builder.write_project().expect("written again");
        assert_eq!(modified("Cargo.toml"), before, "an unchanged file is not rewritten (cargo would rebuild)");
    }
}
