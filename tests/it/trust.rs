//! Trusting what kiln boots and what it hands on: a store restored with swapped entries,
//! and secrets kept from every process kiln starts.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use crate::support::Project;

const TWO_KERNELS: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]

[artifact.hello-panic]
package = "hello-kernel"
path = "examples/kernel"
features = ["panic"]
arches = ["riscv64"]

[case.smoke]
artifact = "hello"
success = "^kiln-example: all checks passed$"
failure = "panicked at"

[case.panic]
artifact = "hello-panic"
failure = "panicked at"
expect = "fail"
"#;

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The directory of the entry `store path NAME` prints the output of.
fn entry_dir(project: &Project, name: &str) -> std::path::PathBuf {
    let output = project.command(&["store", "path", name, "--arch", "riscv64"]).output().expect("kiln runs");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let out = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let entries = project.path().join("target/kiln/store/entries");
    out.ancestors().find(|dir| dir.parent() == Some(entries.as_path())).expect("inside an entry").to_path_buf()
}

/// Copies a tree as a cache restore does: new files and inodes, the same contents and modes.
fn copy_restored(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_restored(&entry.path(), &target);
        } else {
            // Modes come along, as tar keeps them.
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// One kernel's entry (output, metadata, verified record) put under the other's closure, as a
/// poisoned CI cache would restore them: `store verify` names both, `test` refuses both, says
/// so, rebuilds them, and boots the right kernels.
#[test]
fn entries_swapped_in_a_restored_store_are_refused_named_and_rebuilt() {
    let project = Project::example(TWO_KERNELS);
    let first = project.command(&["--accel", "tcg", "test"]).output().expect("kiln runs");
    assert!(first.status.success(), "{}", stderr_of(&first));

    let (hello, panic) = (entry_dir(&project, "hello"), entry_dir(&project, "hello-panic"));
    let restored = project.path().join("restored");
    copy_restored(&hello, &restored.join("hello"));
    copy_restored(&panic, &restored.join("panic"));
    for dir in [&hello, &panic] {
        for file in walk(dir) {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fs::remove_dir_all(dir).expect("remove the entry");
    }
    fs::rename(restored.join("hello"), &panic).expect("swap");
    fs::rename(restored.join("panic"), &hello).expect("swap");

    let verify = project.command(&["store", "verify"]).output().expect("kiln runs");
    let said = stderr_of(&verify);
    assert_eq!(verify.status.code(), Some(i32::from(kiln::exit_code::CASES_FAILED)), "{said}");
    assert_eq!(said.matches("not to the entry's name").count(), 2, "{said}");
    assert!(said.contains("2 corrupt"), "{said}");

    let again = project.command(&["--accel", "tcg", "test"]).output().expect("kiln runs");
    let said = stderr_of(&again);
    assert!(again.status.success(), "{said}");
    for name in ["hello (riscv64)", "hello-panic (riscv64)"] {
        assert!(said.contains(&format!("of {name}: its recorded derivation hashes to")), "{name}:\n{said}");
        assert!(said.contains(&format!("Built {name}")), "{name}:\n{said}");
    }
    assert!(!said.contains("cached"), "nothing is taken from the swapped entries:\n{said}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        if entry.file_type().expect("type").is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

/// A workflow's tokens and kiln's signing key reach kiln, never cargo, rustc, build scripts
/// or the tools kiln runs: a `RUSTC_WRAPPER` records the environment every rustc of a
/// build starts with.
#[test]
fn no_process_kiln_starts_sees_the_secrets() {
    let project = Project::example(TWO_KERNELS);
    let dump = project.path().join("env-dump");
    let wrapper = project.path().join("record-env");
    fs::write(&wrapper, format!("#!/bin/sh\nenv >> '{}'\nexec \"$@\"\n", dump.display())).expect("write wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = project
        .command(&["--accel", "tcg", "build"])
        .env("RUSTC_WRAPPER", &wrapper)
        .env("GITHUB_TOKEN", "ghs_tokenvalue")
        .env("GH_TOKEN", "gho_tokenvalue")
        .env("ACTIONS_RUNTIME_TOKEN", "runtime_tokenvalue")
        .env("KILN_SIGNING_KEY", "ci-1:keyvalue")
        .output()
        .expect("kiln runs");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let seen = fs::read_to_string(&dump).expect("rustc ran through the wrapper");
    assert!(seen.contains("RUSTC_WRAPPER="), "the wrapper recorded rustc's environment");
    for secret in ["tokenvalue", "keyvalue"] {
        assert!(!seen.contains(secret), "a child saw a secret ({secret}):\n{seen}");
    }
}
