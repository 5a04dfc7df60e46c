//! The one constructor of the cargo, rustc and rustup commands kiln runs for a project.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::env;

/// A cargo, rustc or rustup command for the project in `dir`, with the variables that describe
/// kiln's own build removed. The rest of the environment (RUSTFLAGS and the like) is the
/// user's and passes through; it is part of the closure hash.
pub(crate) fn tool_command(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    kiln_types::withhold_secrets(&mut command);
    for name in env::CARGO_RUN_VARIABLES {
        command.env_remove(name);
    }
    for (name, _) in env::all() {
        if name.starts_with(env::CARGO_PKG_PREFIX) {
            command.env_remove(&name);
        }
    }
    // rustup sets RUSTUP_TOOLCHAIN for `cargo xtask`; unless the user set it, the project's
    // own toolchain file must decide.
    if !user_chose_toolchain() {
        command.env_remove(env::RUSTUP_TOOLCHAIN).env_remove(env::RUSTUP_TOOLCHAIN_SOURCE);
    }
    command
}

/// Whether the user set `RUSTUP_TOOLCHAIN` themselves (rustup then says its source is `env`).
pub(crate) fn user_chose_toolchain() -> bool {
    env::var(env::RUSTUP_TOOLCHAIN_SOURCE).is_some_and(|source| source == "env")
}

/// `rustc -vV` as the toolchain of `dir` answers it (rust-toolchain files apply), remembered
/// in the user's cache under [`rustc_stamp`]: cargo's runner calls kiln once per test binary,
/// and starting rustc to ask costs more than the rest of a pooled run's start.
pub(crate) fn rustc_version(dir: &Path) -> anyhow::Result<String> {
    let stamp = rustc_stamp(dir);
    let name = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    crate::host::remembered("rustc-version", &name[..16], stamp.as_deref(), || {
        let output = tool_command("rustc", dir)
            .arg("-vV")
            .output()
            .with_context(|| format!("failed to run `rustc -vV` in `{}`", dir.display()))?;
        if !output.status.success() {
            anyhow::bail!(
                "`rustc -vV` failed in `{}`: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })
}

/// A digest of everything that decides which `rustc` runs in `dir`, the way rustup decides it:
/// the `rustc` on `PATH` (a rustup proxy or a compiler), the toolchain the user forced with
/// `RUSTUP_TOOLCHAIN`, rustup's settings (default toolchain, directory overrides), every
/// installed toolchain's compiler (an update replaces it), and the rust-toolchain files from
/// `dir` up. `None` when `rustc` is not on `PATH`: then it is asked every time.
fn rustc_stamp(dir: &Path) -> Option<String> {
    use kiln_store::FileStamp;
    let rustc = crate::host::find_program("rustc")?;
    let mut digest = blake3::Hasher::new();
    let mut add = |part: &[u8]| {
        digest.update(&(part.len() as u64).to_le_bytes());
        digest.update(part);
    };
    add(rustc.as_os_str().as_encoded_bytes());
    add(&FileStamp::of_path(&rustc)?.to_bytes());
    if user_chose_toolchain() {
        add(env::var(env::RUSTUP_TOOLCHAIN).unwrap_or_default().as_bytes());
    }
    let rustup_home = env::var_os(env::RUSTUP_HOME)
        .filter(|home| !home.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| env::var_os(env::HOME).map(|home| Path::new(&home).join(".rustup")));
    if let Some(home) = rustup_home {
        add(&std::fs::read(home.join("settings.toml")).unwrap_or_default());
        let mut toolchains: Vec<_> = std::fs::read_dir(home.join("toolchains"))
            .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect())
            .unwrap_or_default();
        toolchains.sort();
        for toolchain in toolchains {
            add(toolchain.as_os_str().as_encoded_bytes());
            add(&FileStamp::of_path(&toolchain.join("bin").join("rustc")).map_or([0; 40], |s| s.to_bytes()));
        }
    }
    for ancestor in dir.ancestors() {
        for file in ["rust-toolchain", "rust-toolchain.toml"] {
            if let Ok(text) = std::fs::read(ancestor.join(file)) {
                add(ancestor.join(file).as_os_str().as_encoded_bytes());
                add(&text);
            }
        }
    }
    Some(digest.finalize().to_hex().to_string())
}
