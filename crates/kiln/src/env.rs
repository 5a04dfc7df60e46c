//! Environment variables kiln reads, declared in one place.

/// Overrides the store directory (`[store] path` in Kiln.toml).
pub const KILN_STORE: &str = "KILN_STORE";

/// Forces the accelerator: `kvm`, `tcg` or `auto` (the default: probe).
pub const KILN_ACCEL: &str = "KILN_ACCEL";

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
/// `{TRIPLE}` stands for the target triple in cargo's upper-case, underscore form.
pub const BUILD_INPUT_VARIABLES: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_{TRIPLE}_RUSTFLAGS",
    "CARGO_TARGET_{TRIPLE}_LINKER",
];

/// Prefixes of further variables that change what cargo builds.
pub const BUILD_INPUT_PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_UNSTABLE_"];

/// Whether `CI` says we run in CI.
pub fn in_ci() -> bool {
    std::env::var(CI).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}
