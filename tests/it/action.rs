//! `action/action.yml`, run offline: checked against the action metadata schema, then its
//! steps executed in order by the simulated runner in `action_sim`, with a local cache in
//! place of the Actions cache service.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    action_sim::{LocalCache, action, fresh_runner, run, untar},
    support::{Project, repo_root},
};

/// The artifact names of the entries in a saved store archive.
fn names_in(archive: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    untar(archive, dir.path());
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("entries"))
        .expect("entries in the saved store")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("meta.toml")).ok())
        .filter_map(|meta| meta.lines().find_map(|l| l.strip_prefix("name = ").map(|n| n.trim_matches('"').to_owned())))
        .collect();
    names.sort();
    names
}

#[test]
fn the_action_metadata_matches_the_schema() {
    // `pip install --user` puts it in ~/.local/bin, which PATH may lack.
    let user_bin = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/bin/check-jsonschema"));
    let program = match user_bin {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("check-jsonschema"),
    };
    let output = Command::new(program)
        .args(["--builtin-schema", "vendor.github-actions"])
        .arg(repo_root().join("action/action.yml"))
        .output()
        .expect("check-jsonschema is installed (.ci/run installs it: pip install check-jsonschema)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let inputs = action().input_defaults();
    for (input, default) in [
        ("command", "test"),
        ("arch", ""),
        ("xtask", "cargo xtask"),
        ("cache", "true"),
        ("cache-prefix", "kiln"),
        ("store-path", ""),
        ("install-deps", "true"),
        ("upload-logs", "on-failure"),
    ] {
        assert_eq!(inputs.get(input).map(String::as_str), Some(default), "input `{input}`");
    }
}

#[test]
fn a_second_run_restores_everything_and_a_source_edit_rebuilds_only_its_artifact() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache { dir: cache_dir.path().to_owned() };
    let artifacts = tempfile::tempdir().expect("artifacts");

    // An older store on the runner holds x86_64 builds the riscv64 job does not need.
    fresh_runner(&project);
    let stale = project.command(&["-q", "--accel", "tcg", "build", "--arch", "x86_64"]).output().expect("kiln");
    assert!(stale.status.success(), "{}", String::from_utf8_lossy(&stale.stderr));

    let first = run(&project, &cache, artifacts.path(), &[]);
    assert!(!first.failed, "{}", first.log);
    assert_eq!(first.outputs["cache-hit"], "miss");
    let built: usize = first.outputs["built"].parse().expect("built is a count");
    assert!(built >= 2, "the first run builds: {:?}", first.outputs);
    let key = first.outputs["cache-key"].clone();
    assert!(key.starts_with("kiln-Linux-riscv64-kiln-v1-s1-x86_64-test-"), "{key}");
    assert_eq!(first.saved, vec![key.clone()], "saved under the key");
    assert!(first.artifacts.is_empty(), "logs are uploaded on failure only");
    let saved = names_in(&cache.archive(&key).expect("the saved store"));
    assert!(!saved.is_empty(), "the saved store holds entries");
    assert!(saved.iter().all(|name| name.ends_with("-riscv64")), "gc removed the x86_64 entries: {saved:?}");
    assert!(first.summary.contains("| smoke | riscv64 | riscv64 | ✅ passed"), "{}", first.summary);

    fresh_runner(&project);
    let second = run(&project, &cache, artifacts.path(), &[]);
    assert!(!second.failed, "{}", second.log);
    assert_eq!(second.outputs["cache-hit"], "exact");
    assert_eq!(second.outputs["built"], "0", "nothing is built: {}", second.log);
    assert!(second.saved.is_empty(), "an exact hit saves nothing");
    let skipped: Vec<&str> =
        second.steps.iter().filter(|(_, how)| how == "skipped").map(|(name, _)| name.as_str()).collect();
    assert!(skipped.contains(&"Save the store"), "{:?}", second.steps);

    project.touch_source("examples/boards/riscv64-virt/src/lib.rs", "// edited in CI");
    fresh_runner(&project);
    let third = run(&project, &cache, artifacts.path(), &[]);
    assert!(!third.failed, "{}", third.log);
    assert_eq!(third.outputs["cache-hit"], "partial", "restored by a restore key");
    assert_eq!(third.outputs["built"], "2", "hello and hello-panic for riscv64 only: {}", third.log);
    assert_ne!(third.outputs["cache-key"], key, "a new key");
    assert_eq!(third.saved, vec![third.outputs["cache-key"].clone()]);
    assert_eq!(cache.keys().len(), 2);
}

#[test]
fn a_failing_case_is_annotated_summarised_in_junit_and_its_logs_uploaded() {
    let kiln_toml = r#"
[artifact.failing]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["fail"]

[case.broken]
artifact = "failing"
success = "all checks passed"
timeout = "30s"
"#;
    let project = Project::example(kiln_toml);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache { dir: cache_dir.path().to_owned() };
    let artifacts = tempfile::tempdir().expect("artifacts");
    let job = run(&project, &cache, artifacts.path(), &[]);
    assert!(job.failed, "the job fails: {}", job.log);
    assert_eq!(job.steps.last().map(|(_, how)| how.as_str()), Some("failure"), "{:?}", job.steps);
    assert!(job.log.contains("::error file=Kiln.toml,line=8,title=broken/riscv64"), "{}", job.log);
    assert!(job.summary.contains("❌ failed"), "{}", job.summary);
    let junit = PathBuf::from(&job.outputs["junit"]);
    let junit = if junit.is_absolute() { junit } else { project.path().join(junit) };
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(xml.contains("<failure"), "{xml}");
    let (name, logs) = job.artifacts.iter().next().expect("the logs artifact");
    assert!(name.starts_with("kiln-logs-test-riscv64-4242-1-"), "unique per job, arch set and run: {name}");
    let serial = std::fs::read_to_string(logs.join("broken.riscv64.log")).expect("the serial log");
    let first = serial.lines().find(|l| !l.trim().is_empty()).expect("the guest printed");
    assert_eq!(job.log.matches(first).count(), 1, "serial output shown once, in its group: {}", job.log);
    assert_eq!(job.saved.len(), 1, "a red run still saves the store");
}

#[test]
fn a_project_in_a_subdirectory_with_its_own_store_saves_a_red_run_apart() {
    let kiln_toml = |expect: &str| {
        format!(
            r#"
[store]
path = "build/kiln-store"

[artifact.failing]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["fail"]

[case.broken]
artifact = "failing"
expect = "{expect}"
timeout = "30s"
"#
        )
    };
    let project = Project::example(&kiln_toml("pass"));
    // The repository holds the kiln project in `proj/`; the action runs there.
    let sub = project.path().join("proj");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::rename(project.path().join("examples"), sub.join("examples")).expect("move");
    std::fs::rename(project.path().join("Kiln.toml"), sub.join("Kiln.toml")).expect("move");
    let wipe = || {
        for dir in ["proj/build", "proj/target", "proj/examples/target"] {
            let _ = std::fs::remove_dir_all(project.path().join(dir));
        }
    };
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache { dir: cache_dir.path().to_owned() };
    let artifacts = tempfile::tempdir().expect("artifacts");
    let inputs = [("working-directory", "proj")];

    wipe();
    let red = run(&project, &cache, artifacts.path(), &inputs);
    assert!(red.failed, "{}", red.log);
    let key = red.outputs["cache-key"].clone();
    assert_eq!(red.saved.len(), 1, "{}", red.log);
    assert!(red.saved[0].starts_with(&format!("{key}-incomplete-")), "a red run saves apart: {:?}", red.saved);
    assert!(!red.artifacts.is_empty(), "the logs of proj/ are uploaded: {}", red.log);

    // The case is now expected to fail: same closures, a green run.
    std::fs::write(sub.join("Kiln.toml"), kiln_toml("fail")).expect("write");
    wipe();
    let green = run(&project, &cache, artifacts.path(), &inputs);
    assert!(!green.failed, "{}", green.log);
    assert_eq!(green.outputs["cache-key"], key);
    assert_eq!(green.outputs["cache-hit"], "partial", "the incomplete store is only a partial hit");
    assert_eq!(green.outputs["built"], "0", "{}", green.log);
    assert_eq!(green.saved, vec![key.clone()], "now saved under the key itself");

    wipe();
    let again = run(&project, &cache, artifacts.path(), &inputs);
    assert_eq!(again.outputs["cache-hit"], "exact");
    assert_eq!(again.outputs["built"], "0");
    assert!(project.path().join("proj/build/kiln-store/entries").is_dir(), "restored where Kiln.toml says");

    // A narrower command restores but never saves: its store would not match the key.
    wipe();
    let narrow = run(&project, &cache, artifacts.path(), &[("working-directory", "proj"), ("command", "test broken")]);
    assert!(!narrow.failed, "{}", narrow.log);
    assert!(narrow.saved.is_empty());
}
