//! Environment variables kiln reads, declared in one place.

/// Overrides the store directory (`[store] path` in Kiln.toml).
pub const KILN_STORE: &str = "KILN_STORE";

/// Forces the accelerator: `kvm`, `tcg` or `auto` (the default: probe).
pub const KILN_ACCEL: &str = "KILN_ACCEL";

/// The GitHub API kiln talks to (default `https://api.github.com`; a GitHub Enterprise
/// server's `https://HOST/api/v3`).
pub const KILN_GITHUB_API: &str = "KILN_GITHUB_API";

/// Where release assets are uploaded (default: `https://uploads.github.com` for the public
/// API, `https://HOST/api/uploads` for `https://HOST/api/v3`, else the API address).
pub const KILN_GITHUB_UPLOADS: &str = "KILN_GITHUB_UPLOADS";

/// The token for GitHub (`release`, `ci prune-caches`, `github-release` fetches of private
/// repositories); `GH_TOKEN` is read when it is unset. Never printed.
pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";

/// The second place kiln looks for a GitHub token.
pub const GH_TOKEN: &str = "GH_TOKEN";

/// `owner/name` of the repository a GitHub Actions job runs for.
pub const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";

/// Remote stores, separated by commas or spaces; replaces `[store] remotes` (empty: none).
pub const KILN_REMOTES: &str = "KILN_REMOTES";

/// `true` pushes what a command builds or uses to every remote, as `--push` does.
pub const KILN_PUSH: &str = "KILN_PUSH";

/// The secret key that signs pushed entries, as `cargo xtask store keygen` writes it. Never
/// printed.
pub const KILN_SIGNING_KEY: &str = "KILN_SIGNING_KEY";

/// A file holding the secret signing key (read when `KILN_SIGNING_KEY` is unset).
pub const KILN_SIGNING_KEY_FILE: &str = "KILN_SIGNING_KEY_FILE";

/// Further trusted public keys, separated by commas or spaces, added to `[store] trusted-keys`.
pub const KILN_TRUSTED_KEYS: &str = "KILN_TRUSTED_KEYS";

/// Set to `true` by CI systems; kiln then installs missing host packages without asking.
pub const CI: &str = "CI";

/// Variables `cargo run` and rustup set for `cargo xtask` itself. They describe kiln's own
/// build, not the project's, so kiln removes them before it runs cargo for an artifact.
pub const CARGO_RUN_VARIABLES: &[&str] = &[
    "CARGO",
    "CARGO_MANIFEST_DIR",
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
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_BOOTSTRAP",
    "RUSTUP_TOOLCHAIN",
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

/// Whether `CI` says we run in CI (`true`, `1` or `yes`, in any case).
pub fn in_ci() -> bool {
    std::env::var(CI).is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}
