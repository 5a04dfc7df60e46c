//! kiln in another repository: a user's xtask with its own verbs, `cargo kiln init`.

use std::process::Command;

use crate::support::{Project, repo_root};

const ONE_ARTIFACT: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64", "aarch64"]
"#;

#[test]
fn a_user_xtask_adds_its_own_cached_verb_beside_kilns() {
    let project = Project::example(ONE_ARTIFACT);
    let xtask = env!("CARGO_BIN_EXE_custom-xtask");
    let help = Command::new(xtask).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for verb in ["test", "build", "store", "pack"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(verb)), "`{verb}` missing from:\n{help}");
    }
    let config = project.path().join("Kiln.toml");
    let run = |args: &[&str]| {
        let output = Command::new(xtask).arg("--config").arg(&config).args(args).output().expect("runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, image, log) = run(&["pack"]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("Built pack"), "{log}");
    let bytes = std::fs::read(image.trim()).expect("the packed image");
    assert!(bytes.starts_with(b"KILNPACK") && bytes.len() > 1000);
    let (code, again, log) = run(&["pack"]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("Cached pack"), "the custom step is cached:\n{log}");
    assert_eq!(again, image);
    let (code, _, log) = run(&["-q", "build", "--arch", "riscv64"]);
    assert_eq!(code, Some(0), "kiln's own verbs work through the user's xtask: {log}");
}

#[test]
fn init_adopts_a_kernel_repository_and_test_passes_after_filling_the_todos() {
    let fixture = repo_root().join("tests/fixtures/bare-kernel");
    let project = Project::copy_of(&fixture);
    let kernel_files = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"]
        .map(|file| std::fs::read_to_string(project.path().join(file)).expect("a fixture file"));
    let kiln_path = repo_root().join("crates/kiln");
    let init = project
        .command_in_dir(&["init", "--kiln-path", kiln_path.to_str().expect("utf-8")])
        .output()
        .expect("init runs");
    let init_log = String::from_utf8_lossy(&init.stderr);
    assert!(init.status.success(), "{init_log}");
    for file in [
        "xtask/Cargo.toml",
        "xtask/Cargo.lock",
        "xtask/src/main.rs",
        "xtask/tool/Cargo.toml",
        "xtask/tool/src/main.rs",
        "xtask/tool/rust-toolchain.toml",
        ".cargo/config.toml",
        "Kiln.toml",
        ".github/workflows/kiln.yml",
    ] {
        assert!(project.path().join(file).is_file(), "init wrote {file}");
    }
    assert!(init_log.contains("Checked"), "init built the bootstrap with the repository's toolchain: {init_log}");
    // The kernel's manifest and lock file are untouched; its cargo config only gained the alias.
    assert_eq!(std::fs::read_to_string(project.path().join("Cargo.toml")).expect("read"), kernel_files[0]);
    assert_eq!(std::fs::read_to_string(project.path().join("Cargo.lock")).expect("read"), kernel_files[1]);
    let config = std::fs::read_to_string(project.path().join(".cargo/config.toml")).expect("read");
    assert!(config.starts_with(&kernel_files[2]) && config.contains("[alias]"), "{config}");
    let bootstrap = std::fs::read_to_string(project.path().join("xtask/Cargo.toml")).expect("read");
    assert!(bootstrap.contains("edition = \"2018\"") && bootstrap.contains("[workspace]"), "{bootstrap}");
    let again = project.command_in_dir(&["init"]).output().expect("init runs");
    assert!(String::from_utf8_lossy(&again.stderr).contains("Unchanged"), "a second init changes nothing");

    let doctor = project.command_in_dir(&["--no-delegate", "doctor"]).output().expect("doctor runs");
    let doctor_text = String::from_utf8_lossy(&doctor.stderr);
    assert_eq!(doctor.status.code(), Some(1), "{doctor_text}");
    assert!(doctor_text.contains("TODO") && doctor_text.contains("case.boot.success"), "{doctor_text}");
    let refused = project.command_in_dir(&["--no-delegate", "test"]).output().expect("test runs");
    assert_eq!(refused.status.code(), Some(2), "kiln refuses to run with TODOs left");

    let kiln_toml = project.path().join("Kiln.toml");
    let text = std::fs::read_to_string(&kiln_toml).expect("Kiln.toml");
    let filled = text.replace("\"TODO: x86_64, aarch64 or riscv64\"", "\"riscv64\"").replace(
        "\"TODO: the line your kernel prints when it passes\"",
        "\"ALL TESTS PASSED\"\nstop-on-success = true",
    );
    std::fs::write(&kiln_toml, filled).expect("fill TODOs");
    let test = project.command_in_dir(&["--no-delegate", "--accel", "tcg", "test"]).output().expect("test runs");
    let log = String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{log}");
    assert!(log.contains("1 passed, 0 failed"), "{log}");
}

#[test]
fn cargo_kiln_hands_over_to_a_repository_xtask_that_depends_on_kiln() {
    let project = Project::example(ONE_ARTIFACT);
    std::fs::create_dir_all(project.path().join("xtask")).expect("mkdir");
    std::fs::write(
        project.path().join("xtask/Cargo.toml"),
        "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\nkiln-xtask = \"0.1\"\n",
    )
    .expect("write");
    std::fs::create_dir_all(project.path().join(".cargo")).expect("mkdir");
    // An alias that builds nothing: `cargo xtask config` becomes `cargo version config`.
    std::fs::write(project.path().join(".cargo/config.toml"), "[alias]\nxtask = \"version\"\n").expect("write");
    let delegated = project.command_in_dir(&["config"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&delegated.stderr);
    assert!(stderr.contains("Delegating to `cargo xtask`"), "{stderr}");
    assert!(!String::from_utf8_lossy(&delegated.stdout).contains("[artifact.hello]"), "kiln did not run it itself");
    assert!(stderr.contains("version"), "cargo ran the repository's alias: {stderr}");
    let here = project.command_in_dir(&["--no-delegate", "config"]).output().expect("runs");
    assert!(here.status.success());
    assert!(String::from_utf8_lossy(&here.stdout).contains("[artifact.hello]"), "--no-delegate runs kiln itself");
}

/// Variables that `cargo test` sets for this test process and that would decide, for the
/// commands a user types in the fixture, which toolchain and target directory they use.
const TEST_RUNNER_VARIABLES: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MANIFEST_DIR",
];

/// A command as a user types it in `dir`: the repository's own toolchain file decides.
fn user_command(program: &str, dir: &std::path::Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).env_remove("CI");
    for name in TEST_RUNNER_VARIABLES {
        command.env_remove(name);
    }
    // This machine reaches crates.io only through the sparse index, which cargo 1.66 uses
    // only when asked (its build-std fetches the standard library's dependencies).
    command.env("CARGO_UNSTABLE_SPARSE_REGISTRY", "true");
    command
}

/// The failing variant this test adds: the kernel's self-test fails and it panics.
const RPI_FAILING_VARIANT: &str = r#"
[artifact.mingo-fail]
package = "mingo"
path = "."
arches = ["aarch64"]
target.aarch64 = "aarch64-unknown-none-softfloat"
features = ["test_fail"]

[case.self-test-fails]
artifact = "mingo-fail"
machines = ["raspi3b"]
success = "Kernel tests: all passed"
failure = "(?i)kernel panic"
"#;

/// (e) A repository pinned to a 2022 nightly (cargo 1.66, which predates edition 2024 and
/// lock file version 4) adopts kiln: init leaves its manifests and lock file alone, its own
/// build still works, and `cargo xtask test` runs through the bootstrap on that cargo while
/// kiln's tool builds with a current stable.
#[test]
fn a_repository_pinned_to_a_2022_nightly_adopts_kiln_and_its_own_build_still_works() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/rpi-2022"));
    let dir = project.path();
    let cargo_version = user_command("cargo", dir).arg("--version").output().expect("cargo runs");
    let cargo_version = String::from_utf8_lossy(&cargo_version.stdout).into_owned();
    assert!(cargo_version.starts_with("cargo 1.66"), "the fixture's pinned cargo: {cargo_version}");
    let kernel_files = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"]
        .map(|file| std::fs::read_to_string(dir.join(file)).expect("a fixture file"));

    let kiln_path = repo_root().join("crates/kiln");
    let mut init = project.command_in_dir(&["init", "--kiln-path", kiln_path.to_str().expect("utf-8")]);
    for name in TEST_RUNNER_VARIABLES {
        init.env_remove(name);
    }
    let init = init.env("CARGO_UNSTABLE_SPARSE_REGISTRY", "true").output().expect("init runs");
    let init_log = String::from_utf8_lossy(&init.stderr);
    assert!(init.status.success(), "{init_log}");
    assert!(init_log.contains("Checked"), "the bootstrap builds with nightly-2022-10-01: {init_log}");
    for (file, before) in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"].iter().zip(&kernel_files) {
        assert_eq!(&std::fs::read_to_string(dir.join(file)).expect("read"), before, "init left {file} alone");
    }
    let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).expect("read");
    assert!(config.contains("x86_64-unknown-linux-gnu"), "cargo 1.66 knows no host-tuple: {config}");
    let kiln_toml = std::fs::read_to_string(dir.join("Kiln.toml")).expect("Kiln.toml");
    assert!(kiln_toml.contains("arches = [\"aarch64\"]"), "{kiln_toml}");
    assert!(kiln_toml.contains("machine = \"raspi3b\"") && kiln_toml.contains("semihosting = true"), "{kiln_toml}");

    // The repository's own build, as its Makefile runs it, still works.
    let build = user_command("cargo", dir).args(["build", "--release"]).output().expect("cargo runs");
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));

    let filled =
        kiln_toml.replace("\"TODO: the line your kernel prints when it passes\"", "\"Kernel tests: all passed\"");
    std::fs::write(dir.join("Kiln.toml"), format!("{filled}{RPI_FAILING_VARIANT}")).expect("fill the TODO");
    let test = user_command("cargo", dir).args(["xtask", "--accel", "tcg", "test"]).output().expect("cargo xtask runs");
    let log = String::from_utf8_lossy(&test.stderr);
    assert_eq!(test.status.code(), Some(1), "one case fails on purpose:\n{log}");
    assert!(log.contains("1 passed, 1 failed"), "{log}");
    assert!(log.contains("self-test-fails") && log.to_lowercase().contains("kernel panic"), "{log}");

    let doctor = user_command("cargo", dir).args(["xtask", "doctor"]).output().expect("cargo xtask runs");
    let doctor_log = String::from_utf8_lossy(&doctor.stderr);
    assert!(!doctor_log.contains("xtask:"), "doctor finds nothing wrong with the xtask: {doctor_log}");
}
