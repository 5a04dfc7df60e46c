//! `cargo xtask` for this repository, written by `cargo kiln init`.
//!
//! This program has no dependencies and uses nothing newer than Rust 2018, so any cargo can
//! build it, including the old toolchain this repository may pin for its kernels. It builds
//! the real tool in `tool/` (kiln, pinned by `tool/Cargo.lock`) with the toolchain that
//! `tool/rust-toolchain.toml` names, into `target/tool/`, and hands over to it with the
//! arguments and environment it was given. Change `tool/`, not this file.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};

/// The tool's package (and binary) name in `tool/Cargo.toml`.
const TOOL: &str = "xtask-tool";
/// Names features of the tool's package to build it with, separated by commas or spaces
/// (kiln-prune.yml sets `github` for `ci prune-caches`); without it the tool builds with none.
const FEATURES_VARIABLE: &str = "KILN_TOOL_FEATURES";
/// The oldest Rust release kiln builds with.
const MINIMUM_RUST: (u32, u32) = (@MSRV_MAJOR@, @MSRV_MINOR@);
/// Variables that describe the toolchain `cargo xtask` itself ran under, or that would build
/// the tool for the kernel's target or with the kernel's flags: not for the tool's build.
const KERNEL_BUILD_VARIABLES: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTUP_TOOLCHAIN_SOURCE",
];

fn main() {
    let xtask = xtask_dir();
    let tool = xtask.join("tool");
    let channel = toolchain_channel(&tool);
    let host = host_triple(&channel);
    let target_dir = xtask.join("target").join("tool");
    let binary = target_dir.join(&host).join("debug").join(format!("{}{}", TOOL, env::consts::EXE_SUFFIX));
    build(&tool, &channel, &host, &target_dir, &binary);
    hand_over(&binary);
}

/// This package's directory: cargo says where it is when it runs us.
fn xtask_dir() -> PathBuf {
    match env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) if Path::new(&dir).join("tool").is_dir() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {}", message);
    process::exit(3);
}

/// `channel` from `tool/rust-toolchain.toml`; `stable` when it names none.
fn toolchain_channel(tool: &Path) -> String {
    let file = tool.join("rust-toolchain.toml");
    let text = fs::read_to_string(&file).unwrap_or_default();
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with("channel") {
            continue;
        }
        if let Some(value) = line.splitn(2, '=').nth(1) {
            let value = value.split('#').next().unwrap_or("").trim().trim_matches('"').trim_matches('\'');
            if !value.is_empty() {
                return value.to_string();
            }
        }
    }
    "stable".to_string()
}

fn rustc_version(channel: &str) -> Option<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .env("RUSTUP_TOOLCHAIN", channel)
        .env_remove("RUSTC")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if output.status.success() { String::from_utf8(output.stdout).ok() } else { None }
}

/// The host triple under the tool's toolchain, installing that toolchain when it is missing
/// and checking it is new enough for kiln.
fn host_triple(channel: &str) -> String {
    let version = match rustc_version(channel) {
        Some(version) => version,
        None => {
            eprintln!("  Installing the Rust toolchain `{}` for kiln's tool (once)", channel);
            let installed = Command::new("rustup")
                .args(&["toolchain", "install", channel, "--profile", "minimal"])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            match rustc_version(channel).filter(|_| installed) {
                Some(version) => version,
                None => fail(&format!(
                    "kiln's tool builds with the Rust toolchain `{}` (xtask/tool/rust-toolchain.toml), \
                     and it is not available: install it with `rustup toolchain install {} --profile minimal`",
                    channel, channel
                )),
            }
        }
    };
    let field = |name: &str| {
        version.lines().find(|line| line.starts_with(name)).map(|line| line[name.len()..].trim().to_string())
    };
    let release = field("release:").unwrap_or_default();
    let mut numbers = release.split(|c: char| c == '.' || c == '-').map(|n| n.parse::<u32>().unwrap_or(0));
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if found < MINIMUM_RUST {
        fail(&format!(
            "kiln's tool needs Rust {}.{} or newer, and the toolchain `{}` is {}: run `rustup update {}`, \
             or name a newer toolchain in xtask/tool/rust-toolchain.toml",
            MINIMUM_RUST.0, MINIMUM_RUST.1, channel, release, channel
        ));
    }
    match field("host:") {
        Some(host) => host,
        None => fail(&format!("`rustc -vV` of the toolchain `{}` names no host", channel)),
    }
}

/// Whether any file of the tool's package is newer than its binary (a build will show
/// cargo's progress then; an up-to-date tool starts without a line).
fn tool_changed(tool: &Path, binary: &Path) -> bool {
    let built = match fs::metadata(binary).and_then(|m| m.modified()) {
        Ok(time) => time,
        Err(_) => return true,
    };
    let mut pending = vec![tool.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.metadata().and_then(|m| m.modified()).map(|t| t > built).unwrap_or(false) {
                return true;
            }
        }
    }
    false
}

/// The features `KILN_TOOL_FEATURES` names (letters, digits, `-` and `_` each).
fn tool_features() -> Vec<String> {
    let value = match env::var(FEATURES_VARIABLE) {
        Ok(value) => value,
        Err(env::VarError::NotPresent) => return Vec::new(),
        Err(env::VarError::NotUnicode(_)) => fail(&format!("{} is not UTF-8", FEATURES_VARIABLE)),
    };
    let mut features = Vec::new();
    for name in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|name| !name.is_empty()) {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            fail(&format!(
                "{}: `{}` is not a feature name (give names of the features in xtask/tool/Cargo.toml, \
                 such as `github`, separated by commas)",
                FEATURES_VARIABLE,
                name.escape_debug()
            ));
        }
        features.push(name.to_string());
    }
    features
}

fn build(tool: &Path, channel: &str, host: &str, target_dir: &Path, binary: &Path) {
    let features = tool_features();
    // A build with other features than the last one compiles too: show cargo's progress then.
    let changed = tool_changed(tool, binary) || !features.is_empty();
    if !binary.exists() {
        eprintln!("  Building kiln's tool with `{}` (first run; later runs start at once)", channel);
    }
    let mut cargo = Command::new("cargo");
    cargo.current_dir(tool).arg("build");
    if !changed {
        cargo.arg("--quiet");
    }
    cargo.arg("--manifest-path").arg(tool.join("Cargo.toml"));
    cargo.arg("--target").arg(host).arg("--target-dir").arg(target_dir);
    if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    for name in KERNEL_BUILD_VARIABLES {
        cargo.env_remove(name);
    }
    // The kernel's rustflags (linker scripts, code models) from .cargo/config.toml are not
    // for a host program: an empty CARGO_ENCODED_RUSTFLAGS overrides every other source.
    cargo.env("CARGO_ENCODED_RUSTFLAGS", "").env("RUSTUP_TOOLCHAIN", channel);
    match cargo.status() {
        Ok(status) if status.success() => {}
        Ok(_) => fail("kiln's tool did not build (cargo's message is above); its sources are in xtask/tool/"),
        Err(err) => fail(&format!("cannot run cargo to build kiln's tool: {}", err)),
    }
}

/// Runs the tool in this process's place, with the arguments and environment we were given.
fn hand_over(binary: &Path) -> ! {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    let mut command = Command::new(binary);
    command.args(&args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = command.exec();
        fail(&format!("cannot run `{}`: {}", binary.display(), err))
    }
    #[cfg(not(unix))]
    {
        match command.status() {
            Ok(status) => process::exit(status.code().unwrap_or(3)),
            Err(err) => fail(&format!("cannot run `{}`: {}", binary.display(), err)),
        }
    }
}
