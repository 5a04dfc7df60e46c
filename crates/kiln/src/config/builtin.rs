//! kiln's built-in runner guests: the Kiln.toml `kiln run` uses when no project names one
//! (no `--config`, no `KILN_CONFIG`, no Kiln.toml in the directory or a parent), so that
//! `runner = "kiln run --"` in a crate's `.cargo/config.toml` is its whole set-up.
//!
//! The text is written to the per-user cache (`$XDG_CACHE_HOME/kiln/runner/Kiln.toml`) and
//! loaded from there like any Kiln.toml: everything that re-reads the configuration by path
//! (a warm-guest keeper) finds it, its store and scratch files stay in that directory, never
//! in the crate's, and every crate on the host shares what it fetched and built.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use kiln_types::Arch;

use crate::error::UsageError;

/// The architectures the built-in guests cover.
pub(crate) const BUILTIN_ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

/// The built-in runner's Kiln.toml.
///
/// Its `[fetch.linux-*]` and `[fetch.busybox-*]` pins mirror the kiln repository's own
/// Kiln.toml exactly (a unit test holds them equal): change both together.
pub(crate) const BUILTIN_RUNNER: &str = r#"# kiln's built-in runner guests: what `kiln run` boots when no Kiln.toml names others
# (no --config, no KILN_CONFIG, no Kiln.toml in the directory or a parent). kiln writes this
# file; edits are replaced. For guests of your own, write a Kiln.toml and point KILN_CONFIG
# at it.
kiln-version = "0.1"

# The store of the built-in guests, beside this file: shared by every crate on this host.
[store]
path = "store"

# Debian bookworm packages, pinned by the SHA-256 of Debian's package index (the same pins
# as the kiln repository's own Kiln.toml). Fetched once per host.
[fetch.linux-x86_64]
url = "http://deb.debian.org/debian/pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb"
sha256 = "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791"

[fetch.linux-aarch64]
url = "http://deb.debian.org/debian/pool/main/l/linux-signed-arm64/linux-image-6.1.0-50-arm64_6.1.176-1_arm64.deb"
sha256 = "914f75b57a8e165d85fb910c3e2dcc7000a05a9fea3f42f90b26e8dd590d5f06"

[fetch.busybox-x86_64]
url = "http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb"
sha256 = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"

[fetch.busybox-aarch64]
url = "http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_arm64.deb"
sha256 = "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5"

# Debian's kernel (its /boot/vmlinuz and the modules kiln's init loads).
[kernel.debian]
arches = ["x86_64", "aarch64"]
deb = "linux-{arch}"

# An initramfs: busybox with its applet links, and kiln's generated /init.
[rootfs.base]
arches = ["x86_64", "aarch64"]
layers = [{ busybox = "busybox-{arch}" }]

# Runs lease restored, warmed guests from a background pool with one guest per job (-j),
# which exits 30 s after the last run; `kiln run --pool 0` boots a fresh guest instead.
[run]
kernel = "debian"
rootfs = "base"
pool = "auto"
"#;

/// The directory of the built-in runner (its Kiln.toml, store and scratch files).
pub(crate) fn runner_dir() -> Result<PathBuf, UsageError> {
    crate::host::user_cache_dir().map(|dir| dir.join("runner")).ok_or_else(|| {
        UsageError::with_help(
            "no Kiln.toml here, and kiln has no per-user cache for its built-in guests (neither \
             XDG_CACHE_HOME nor HOME is set)",
            "set HOME (or XDG_CACHE_HOME), or name a Kiln.toml with `--config PATH` or KILN_CONFIG",
        )
    })
}

/// Writes the built-in runner's Kiln.toml into [`runner_dir`] when it is missing or differs
/// (atomically: many runs may start at once) and returns its path.
pub(crate) fn write_runner_config() -> anyhow::Result<PathBuf> {
    let dir = runner_dir()?;
    write_config_in(&dir)
}

/// As [`write_runner_config`], into `dir`.
fn write_config_in(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let file = dir.join(super::FILE_NAME);
    if std::fs::read_to_string(&file).is_ok_and(|text| text == BUILTIN_RUNNER) {
        return Ok(file);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write kiln's built-in runner config in `{}`", dir.display()))?;
    temp.write_all(BUILTIN_RUNNER.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write kiln's built-in runner config in `{}`", dir.display()))?;
    temp.persist(&file).with_context(|| format!("cannot write `{}`", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FetchSource};

    /// The fetch tables of a Kiln.toml text, as (name, url, sha256).
    fn pins(text: &str) -> Vec<(String, String, String)> {
        let table: toml::Table = text.parse().expect("valid TOML");
        let fetches = table.get("fetch").and_then(toml::Value::as_table).expect("[fetch] tables");
        fetches
            .iter()
            .filter(|(name, _)| name.starts_with("linux-") || name.starts_with("busybox-"))
            .map(|(name, fetch)| {
                let field = |key: &str| fetch.get(key).and_then(toml::Value::as_str).unwrap_or_default().to_owned();
                (name.clone(), field("url"), field("sha256"))
            })
            .collect()
    }

    #[test]
    fn the_builtin_pins_are_the_repositorys() {
        let repository = include_str!("../../../../Kiln.toml");
        let ours = pins(BUILTIN_RUNNER);
        assert_eq!(ours.len(), 4, "a kernel and a busybox per built-in arch: {ours:?}");
        assert_eq!(ours, pins(repository), "the built-in guests pin what the repository's Kiln.toml pins");
    }

    #[test]
    fn the_builtin_config_resolves_to_a_guest_per_builtin_arch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_config_in(dir.path()).expect("written");
        let config = Config::load(&file).expect("the built-in Kiln.toml is valid");
        assert_eq!(config.store_dir, dir.path().join("store"));
        assert_eq!(config.run.kernel.as_deref(), Some("debian"));
        for arch in BUILTIN_ARCHES {
            assert!(config.kernels["debian"].arches.contains(&arch));
            assert!(config.rootfses["base"].arches.contains(&arch));
        }
        assert!(config.fetches.values().all(|fetch| matches!(fetch.source, FetchSource::Url(_))));
    }

    #[test]
    fn writing_again_keeps_the_file_and_a_changed_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_config_in(dir.path()).expect("written");
        let before = std::fs::metadata(&file).and_then(|m| m.modified()).expect("mtime");
        assert_eq!(write_config_in(dir.path()).expect("again"), file);
        assert_eq!(std::fs::metadata(&file).and_then(|m| m.modified()).expect("mtime"), before, "not rewritten");
        std::fs::write(&file, "# edited\n").expect("edit");
        write_config_in(dir.path()).expect("restored");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), BUILTIN_RUNNER);
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }
}
