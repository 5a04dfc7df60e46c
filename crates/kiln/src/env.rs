//! Every environment variable kiln reads, declared in one place, and the only functions in
//! this crate that read the environment (a test in `tidy.rs` keeps it so).
//!
//! Variables read by the leaf crates on kiln's behalf are listed at the end: the S3 client
//! reads the `AWS_*` family; every crate finds programs through `PATH`.

use std::ffi::OsString;

/// The Kiln.toml to use when `--config` names none, before kiln looks in the current directory
/// and its parents (a project's own guests for `kiln run` as cargo's runner, from anywhere).
pub const KILN_CONFIG: &str = "KILN_CONFIG";

/// Overrides the store directory (`[store] path` in Kiln.toml).
pub const KILN_STORE: &str = "KILN_STORE";

/// Forces the accelerator: `kvm`, `tcg` or `auto` (the default: probe). Read by clap.
pub const KILN_ACCEL: &str = "KILN_ACCEL";

/// `true` pushes what a command builds or uses to every remote, as `--push` does. Read by clap.
pub const KILN_PUSH: &str = "KILN_PUSH";

/// The GitHub API kiln talks to (default `https://api.github.com`; a GitHub Enterprise
/// server's `https://HOST/api/v3`).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const KILN_GITHUB_API: &str = "KILN_GITHUB_API";

/// Where release assets are uploaded (default: `https://uploads.github.com` for the public
/// API, `https://HOST/api/uploads` for `https://HOST/api/v3`, else the API address).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const KILN_GITHUB_UPLOADS: &str = "KILN_GITHUB_UPLOADS";

/// The token for GitHub (`release`, `ci prune-caches`, `github-release` fetches of private
/// repositories); `GH_TOKEN` is read when it is unset. Never printed.
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";

/// The second place kiln looks for a GitHub token.
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GH_TOKEN: &str = "GH_TOKEN";

/// `owner/name` of the repository a GitHub Actions job runs for.
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";

/// The commit a GitHub Actions run builds (release provenance).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_SHA: &str = "GITHUB_SHA";

/// The workflow file and ref of a GitHub Actions run (release provenance).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_WORKFLOW_REF: &str = "GITHUB_WORKFLOW_REF";

/// A GitHub Actions run's id (release provenance).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_RUN_ID: &str = "GITHUB_RUN_ID";

/// A GitHub Actions run's attempt (release provenance).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_RUN_ATTEMPT: &str = "GITHUB_RUN_ATTEMPT";

/// The GitHub server of a run, e.g. `https://github.com` (release provenance).
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub const GITHUB_SERVER_URL: &str = "GITHUB_SERVER_URL";

/// `true` inside GitHub Actions: kiln then writes workflow commands, groups and a job summary.
pub const GITHUB_ACTIONS: &str = "GITHUB_ACTIONS";

/// The checkout directory in GitHub Actions: annotations name Kiln.toml relative to it.
pub const GITHUB_WORKSPACE: &str = "GITHUB_WORKSPACE";

/// The file GitHub Actions reads a step's outputs from.
pub const GITHUB_OUTPUT: &str = "GITHUB_OUTPUT";

/// The file GitHub Actions renders as the job summary.
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";

/// Remote stores, separated by commas or spaces; replaces `[store] remotes` (empty: none).
pub const KILN_REMOTES: &str = "KILN_REMOTES";

/// The secret key that signs pushed entries, as `cargo xtask store keygen` writes it. Never
/// printed.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub const KILN_SIGNING_KEY: &str = "KILN_SIGNING_KEY";

/// A file holding the secret signing key (read when `KILN_SIGNING_KEY` is unset).
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub const KILN_SIGNING_KEY_FILE: &str = "KILN_SIGNING_KEY_FILE";

/// Further trusted public keys, separated by commas or spaces, added to `[store] trusted-keys`.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub const KILN_TRUSTED_KEYS: &str = "KILN_TRUSTED_KEYS";

/// Set to `true` by CI systems; kiln then installs missing host packages without asking and
/// draws no progress bars.
pub const CI: &str = "CI";

/// The base of the per-user cache (`$XDG_CACHE_HOME/kiln`).
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";

/// The user's home (`~/.cache/kiln` when `XDG_CACHE_HOME` is unset).
pub const HOME: &str = "HOME";

/// The terminal type, passed to a `vm shell` so the guest's programs draw right.
pub const TERM: &str = "TERM";

/// The timestamp every file in a kiln-built image gets (default 0), for reproducible images.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// cargo's home: its config files are closure inputs, and paths below it are named
/// `$CARGO_HOME/...` in closures so they hash the same on every machine.
pub const CARGO_HOME: &str = "CARGO_HOME";

/// The package directory cargo runs a test binary for; `kiln run` (cargo's runner) shares it
/// into the guest.
pub const CARGO_MANIFEST_DIR: &str = "CARGO_MANIFEST_DIR";

/// The prefix of the variables cargo sets for integration tests and benchmarks:
/// `CARGO_BIN_EXE_<name>` is the path of the package's binary `<name>` in the target directory,
/// which tests run by that path.
pub const CARGO_BIN_EXE_PREFIX: &str = "CARGO_BIN_EXE_";

/// The build script's output directory, which cargo names for a package's tests and binaries
/// it runs; its `../output` holds the script's instructions (`cargo:rustc-env=NAME=VALUE`:
/// variables cargo sets for the run too).
pub const OUT_DIR: &str = "OUT_DIR";

/// The toolchain rustup picked for the running kiln; dropped for the project's own builds
/// unless the user set it (see [`RUSTUP_TOOLCHAIN_SOURCE`]).
pub const RUSTUP_TOOLCHAIN: &str = "RUSTUP_TOOLCHAIN";

/// rustup's home (default `~/.rustup`): its settings and installed toolchains decide what
/// `rustc` runs, so they stamp the remembered `rustc -vV`.
pub const RUSTUP_HOME: &str = "RUSTUP_HOME";

/// Why rustup picked its toolchain: `env` when the user set `RUSTUP_TOOLCHAIN` themselves.
pub const RUSTUP_TOOLCHAIN_SOURCE: &str = "RUSTUP_TOOLCHAIN_SOURCE";

/// Flags cargo passes to rustc; when set, cargo ignores the rustflags of cargo config files.
pub const RUSTFLAGS: &str = "RUSTFLAGS";

/// `RUSTFLAGS` separated by `\x1f`, which cargo prefers over `RUSTFLAGS`.
pub const CARGO_ENCODED_RUSTFLAGS: &str = "CARGO_ENCODED_RUSTFLAGS";

/// cargo's default `--target`; kiln removes it for the host programs it builds.
pub const CARGO_BUILD_TARGET: &str = "CARGO_BUILD_TARGET";

/// Variables `cargo run` and rustup set for `cargo xtask` itself. They describe kiln's own
/// build, not the project's, so kiln removes them before it runs cargo for an artifact.
pub const CARGO_RUN_VARIABLES: &[&str] = &[
    "CARGO",
    CARGO_MANIFEST_DIR,
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "RUST_RECURSION_COUNT",
];

/// Prefix of the package variables `cargo run` sets (`CARGO_PKG_NAME`, ...).
pub const CARGO_PKG_PREFIX: &str = "CARGO_PKG_";

/// Environment variables that change what cargo builds; each one set is a closure input.
pub const BUILD_INPUT_VARIABLES: &[&str] = &[
    RUSTFLAGS,
    CARGO_ENCODED_RUSTFLAGS,
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_BOOTSTRAP",
    RUSTUP_TOOLCHAIN,
    "CC",
    "CXX",
    "AR",
    "CFLAGS",
    "CXXFLAGS",
];

/// Prefixes of further variables that change what cargo builds. `{TRIPLE}` stands for the
/// target triple in cargo's upper-case, underscore form (`CARGO_TARGET_{TRIPLE}_LINKER`).
pub const BUILD_INPUT_PREFIXES: &[&str] = &[
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_UNSTABLE_",
    "CARGO_TARGET_{TRIPLE}_",
    "CC_",
    "CXX_",
    "AR_",
    "CFLAGS_",
    "CXXFLAGS_",
];

/// Variables under those prefixes that only move or pace the build, not change its output.
pub const BUILD_NEUTRAL_VARIABLES: &[&str] = &["CARGO_BUILD_JOBS", "CARGO_BUILD_TARGET_DIR", "CARGO_BUILD_BUILD_DIR"];

/// Endings of variables under those prefixes that only say how built programs run
/// (`CARGO_TARGET_{TRIPLE}_RUNNER`: kiln itself, when it is cargo's runner).
pub const BUILD_NEUTRAL_SUFFIXES: &[&str] = &["_RUNNER"];

/// Host variables a program run by `kiln run` does not get in the guest, which has its own:
/// the search path, home, shell, working and temporary directories, and the desktop's
/// display and mail. Every other variable reaches it, as under qemu-user (`NO_COLOR`,
/// `PROPTEST_CASES`, `INSTA_UPDATE`, `CI` and cargo's own alike).
pub const GUEST_WITHHELD_NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TMPDIR",
    "TMP",
    "TEMP",
    "TEMPDIR",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "MAIL",
];

/// Prefixes of the host variables the guest does not get: the dynamic loader's (host
/// libraries) and the host session's paths and sockets.
pub const GUEST_WITHHELD_PREFIXES: &[&str] = &["LD_", "XDG_", "DBUS_", "SSH_"];

/// Whether a host variable stays on the host under `kiln run`: [`GUEST_WITHHELD_NAMES`],
/// [`GUEST_WITHHELD_PREFIXES`], and `CARGO_TARGET_{TRIPLE}_RUNNER`, which names kiln itself
/// (the guest has no kiln, and crates that run a package's binaries through cargo's runner,
/// as assert_cmd does, read it).
pub fn guest_withheld(name: &str) -> bool {
    GUEST_WITHHELD_NAMES.contains(&name)
        || GUEST_WITHHELD_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || (name.starts_with("CARGO_TARGET_") && BUILD_NEUTRAL_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)))
}

/// Variables the leaf crates read on kiln's behalf: the S3 client of a remote store reads the
/// usual `AWS_*` family (keys, region, endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`,
/// `AWS_ENDPOINT`), TLS reads `SSL_CERT_FILE` and `SSL_CERT_DIR` for the trust store, and the
/// HTTP client honours the usual proxy variables (either case).
#[allow(dead_code)] // Documentation: kiln itself never reads these.
pub const READ_BY_LEAF_CRATES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "PATH",
];

/// A variable's value, when it is set and valid Unicode.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable's value, when it is set and not blank.
pub fn non_empty(name: &str) -> Option<String> {
    var(name).filter(|value| !value.trim().is_empty())
}

/// A variable's raw value, when it is set.
pub fn var_os(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Whether a variable is set at all.
pub fn is_set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// Every variable set now whose name and value are valid Unicode (for the closure's build
/// variables and the guest's passed variables, which are chosen by name).
pub fn all() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

/// Whether `CI` says we run in CI (`true`, `1` or `yes`, in any case).
pub fn in_ci() -> bool {
    var(CI).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Whether kiln runs inside GitHub Actions.
pub fn in_github_actions() -> bool {
    var(GITHUB_ACTIONS).is_some_and(|v| v == "true")
}
