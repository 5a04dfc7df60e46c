//! The one constructor of the cargo, rustc and rustup commands kiln runs for a project.

use std::{path::Path, process::Command};

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
