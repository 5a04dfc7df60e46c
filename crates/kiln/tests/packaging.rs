//! kiln's crates can be published under names kiln holds: `cargo package` packs every
//! publishable crate of the workspace (path dependencies carry versions; the workspace's own
//! crates resolve against each other), and what kiln-xtask includes at compile time is in its
//! package.

use std::{path::Path, process::Command};

/// The crates kiln publishes, in the order crates.io must receive them.
const PUBLISHED: &[&str] = &[
    "kiln-types",
    "kiln-http",
    "kiln-store",
    "kiln-rootfs",
    "kiln-qemu",
    "kiln-agent",
    "kiln-github",
    "kiln-xtask",
    "cargo-kiln",
];

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    command
}

#[test]
fn every_published_crate_packages_with_what_it_includes() {
    let target = tempfile::tempdir().expect("tempdir");
    let mut package = cargo();
    package.args(["package", "--no-verify", "--allow-dirty", "--quiet", "--target-dir"]).arg(target.path());
    for name in PUBLISHED {
        package.args(["--package", name]);
    }
    let output = package.output().expect("cargo runs");
    assert!(output.status.success(), "cargo package failed:\n{}", String::from_utf8_lossy(&output.stderr));
    for name in PUBLISHED {
        let file = target.path().join(format!("package/{name}-{}.crate", env!("CARGO_PKG_VERSION")));
        assert!(file.is_file(), "{} was packaged", file.display());
    }
    let listing =
        cargo().args(["package", "--list", "--allow-dirty", "--package", "kiln-xtask"]).output().expect("cargo runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "templates/xtask-bootstrap.rs"), "init's template is packaged:\n{listing}");
    assert!(
        listing.lines().any(|l| l == "templates/bootloader-builder.rs"),
        "the bootloader image builder's source is packaged:\n{listing}"
    );
    for manifest in PUBLISHED {
        let dir = if *manifest == "kiln-xtask" { "kiln".to_owned() } else { manifest.to_string() };
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir).join("Cargo.toml"))
                .expect("a crate manifest");
        assert!(
            text.contains("repository.workspace = true") || text.contains("repository ="),
            "{manifest} names its repository"
        );
    }
}
