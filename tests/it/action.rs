//! `action/action.yml`, run offline: checked against the action metadata schema, then its
//! steps executed in order by the simulated runner in `action_sim`, with a local cache in
//! place of the Actions cache service.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    action_sim::{Job, LocalCache, Trigger, action, fresh_runner, run, run_job, untar},
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
        ("cache-tool", "true"),
        ("lookup-only", "false"),
        ("fail-on-cache-miss", "false"),
        ("shared-key", ""),
        (
            "save-if",
            "${{ github.event_name == 'push' && github.ref == format('refs/heads/{0}', github.event.repository.default_branch) }}",
        ),
    ] {
        assert_eq!(inputs.get(input).map(String::as_str), Some(default), "input `{input}`");
    }
}

#[test]
fn a_second_run_restores_everything_and_a_source_edit_rebuilds_only_its_artifact() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache::new(cache_dir.path());
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
    let cache = LocalCache::new(cache_dir.path());
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
    let cache = LocalCache::new(cache_dir.path());
    let artifacts = tempfile::tempdir().expect("artifacts");
    let inputs = [("working-directory", "proj")];

    wipe();
    let red = run(&project, &cache, artifacts.path(), &inputs);
    assert!(red.failed, "{}", red.log);
    let key = red.outputs["cache-key"].clone();
    assert_eq!(
        red.saved,
        vec![format!("{key}-incomplete-main")],
        "a red run saves apart, once per branch: {}",
        red.log
    );
    assert!(!red.artifacts.is_empty(), "the logs of proj/ are uploaded: {}", red.log);

    // Red again on the same branch: its incomplete store is restored and, being immutable,
    // not saved again; only kiln's failure fails the job.
    wipe();
    let red_again = run(&project, &cache, artifacts.path(), &inputs);
    assert_eq!(red_again.outputs["cache-hit"], "partial", "{}", red_again.log);
    assert!(red_again.saved.is_empty(), "{:?}", red_again.saved);
    assert!(red_again.log.contains("incomplete store for these inputs exists"), "{}", red_again.log);
    assert_eq!(red_again.step("Save the store"), Some("skipped"));
    assert_eq!(
        red_again.steps.iter().filter(|(_, how)| how == "failure").map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        vec!["Fail when kiln failed"]
    );
    assert_eq!(cache.keys().len(), 1, "{:?}", cache.keys());

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

    // Another job of the run is saving this key (two jobs of a matrix with one shared key):
    // the service refuses the second save, and the job stays green.
    project.touch_source("proj/examples/kernel/src/main.rs", "// edited on a branch");
    let branch = Trigger::push("feature");
    let look = |trigger: Trigger| {
        let job = Job::with_inputs(&[("working-directory", "proj"), ("lookup-only", "true")]).on(trigger);
        run_job(&project, &cache, artifacts.path(), job)
    };
    let new_key = look(branch.clone()).outputs["cache-key"].clone();
    assert_ne!(new_key, key, "the edit changes the key");
    let store_path = project.path().join("proj/build/kiln-store").display().to_string();
    cache.reserve_elsewhere(&branch, &store_path, &new_key);
    wipe();
    let job = Job::with_inputs(&[("working-directory", "proj"), ("save-if", "true")]).on(branch);
    let busy = run_job(&project, &cache, artifacts.path(), job);
    assert!(!busy.failed, "a refused save does not fail the job: {}", busy.log);
    assert!(busy.log.contains("Unable to reserve cache with key"), "{}", busy.log);
    assert!(busy.saved.is_empty());
}

/// A classic xtask, as a repository keeps one: its own workspace, no dependencies, handing
/// over to kiln (here the tests' `kiln-it` binary, whose path is filled in).
const CLASSIC_XTASK_MANIFEST: &str = r#"[package]
name = "xtask"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]
"#;
const CLASSIC_XTASK_MAIN: &str = r#"//! This repository's `cargo xtask`: kiln's commands.
use std::os::unix::process::CommandExt;

fn main() {
    let err = std::process::Command::new("KILN").args(std::env::args_os().skip(1)).exec();
    eprintln!("error: cannot start kiln: {err}");
    std::process::exit(3);
}
"#;

#[test]
fn kiln_s_own_build_is_restored_before_the_key_and_only_its_own_edits_rebuild_it() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let xtask = project.path().join("xtask");
    std::fs::create_dir_all(xtask.join("src")).expect("mkdir");
    std::fs::write(xtask.join("Cargo.toml"), CLASSIC_XTASK_MANIFEST).expect("write");
    std::fs::write(xtask.join("src/main.rs"), CLASSIC_XTASK_MAIN.replace("KILN", env!("CARGO_BIN_EXE_kiln-it")))
        .expect("write");
    // The repository commits its xtask's lock file.
    let lock = Command::new("cargo")
        .args(["generate-lockfile", "--offline", "--manifest-path"])
        .arg(xtask.join("Cargo.toml"))
        .output()
        .expect("cargo");
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));
    std::fs::create_dir_all(project.path().join(".cargo")).expect("mkdir");
    std::fs::write(
        project.path().join(".cargo/config.toml"),
        "[alias]\nxtask = \"run --quiet --manifest-path xtask/Cargo.toml --\"\n",
    )
    .expect("write");
    let cargo_home = tempfile::tempdir().expect("CARGO_HOME");
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache::new(cache_dir.path());
    let artifacts = tempfile::tempdir().expect("artifacts");
    let job =
        || Job::with_inputs(&[("xtask", "cargo xtask")]).env("CARGO_HOME", &cargo_home.path().display().to_string());
    let tool_keys = |run: &crate::action_sim::JobRun| -> Vec<String> {
        run.saved.iter().filter(|k| k.starts_with("kiln-tool-")).cloned().collect()
    };

    fresh_runner(&project);
    let cold = run_job(&project, &cache, artifacts.path(), job());
    assert!(!cold.failed, "{}", cold.log);
    assert_eq!(cold.outputs["tool-cache-hit"], "miss", "{}", cold.log);
    assert_eq!(cold.step("Build kiln's tool"), Some("success"));
    let saved = tool_keys(&cold);
    assert_eq!(saved.len(), 2, "the binary and the dependencies: {saved:?}");
    assert!(saved.iter().any(|k| k.contains("-deps-")), "{saved:?}");
    assert!(
        cold.summary.contains("#### kiln's caches") && cold.summary.contains("Total cache size"),
        "{}",
        cold.summary
    );

    // A new runner: the binary is restored and started as it is; nothing compiles.
    fresh_runner(&project);
    let warm = run_job(&project, &cache, artifacts.path(), job());
    assert!(!warm.failed, "{}", warm.log);
    assert_eq!(warm.outputs["tool-cache-hit"], "exact", "{}", warm.log);
    assert_eq!(warm.step("Build kiln's tool"), Some("skipped"));
    assert_eq!(warm.step("Restore the dependencies of kiln's build"), Some("skipped"));
    assert_eq!(warm.outputs["cache-hit"], "exact");
    assert_eq!(warm.outputs["built"], "0");
    assert!(tool_keys(&warm).is_empty());

    // A kernel edit is no edit of the tool: same tool key, only the store misses.
    project.touch_source("examples/kernel/src/main.rs", "// edited in CI");
    fresh_runner(&project);
    let kernel_edit = run_job(&project, &cache, artifacts.path(), job());
    assert!(!kernel_edit.failed, "{}", kernel_edit.log);
    assert_eq!(kernel_edit.outputs["tool-cache-hit"], "exact", "{}", kernel_edit.log);
    assert_eq!(kernel_edit.outputs["cache-hit"], "partial");

    // An edit of the tool rebuilds it from the restored dependencies and saves the new binary;
    // the dependency entry (same lock file) is not saved again.
    project.touch_source("xtask/src/main.rs", "// the tool changed");
    fresh_runner(&project);
    let tool_edit = run_job(&project, &cache, artifacts.path(), job());
    assert!(!tool_edit.failed, "{}", tool_edit.log);
    assert_eq!(tool_edit.outputs["tool-cache-hit"], "partial", "{}", tool_edit.log);
    let resaved = tool_keys(&tool_edit);
    assert_eq!(resaved.len(), 1, "{resaved:?}");
    assert!(!resaved[0].contains("-deps-") && !saved.contains(&resaved[0]), "a new binary key: {resaved:?}");
}

#[test]
fn save_if_scopes_shared_keys_lookups_misses_and_cancellation() {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache::new(cache_dir.path());
    let artifacts = tempfile::tempdir().expect("artifacts");
    let go = |job: Job| run_job(&project, &cache, artifacts.path(), job);
    let pr = Trigger::pull_request(7, "feature", "main");
    let shared = || Job::with_inputs(&[("shared-key", "matrix")]);

    // A pull request restores but does not save (the default save-if).
    let from_pr = go(Job::default().on(pr.clone()));
    assert!(!from_pr.failed, "{}", from_pr.log);
    assert!(from_pr.saved.is_empty(), "{:?}", from_pr.saved);
    assert!(from_pr.summary.contains("not saved: save-if is 'false'"), "{}", from_pr.summary);

    // A run cancelled while kiln runs saves nothing, even on the default branch.
    let mut cancelled = shared();
    cancelled.cancel_after = Some("Run kiln".into());
    let cancelled = go(cancelled);
    assert!(cancelled.saved.is_empty(), "{}", cancelled.log);
    assert_eq!(cancelled.step("Save the store"), Some("skipped"));

    // The default branch saves; the matrix group replaces the arch set in the key.
    let main = go(shared());
    assert!(!main.failed, "{}", main.log);
    let key = main.outputs["cache-key"].clone();
    assert!(key.starts_with("kiln-Linux-matrix-"), "{key}");
    assert_eq!(main.saved, vec![key.clone()]);

    // The pull request finds the default branch's entry; another job of the group (other
    // arches, so another key) starts from it; `lookup-only` downloads nothing and runs nothing.
    fresh_runner(&project);
    let looked = go(shared().input("lookup-only", "true").input("fail-on-cache-miss", "true").on(pr.clone()));
    assert!(!looked.failed, "{}", looked.log);
    assert_eq!(looked.outputs["cache-hit"], "exact", "{}", looked.log);
    assert_eq!(looked.step("Run kiln"), Some("skipped"));
    let entries = std::fs::read_dir(project.path().join("target/kiln/store/entries")).map_or(0, |d| d.count());
    assert_eq!(entries, 0, "lookup-only restores nothing");
    let other_arches = go(shared().input("arch", "riscv64 aarch64").input("lookup-only", "true").on(pr.clone()));
    assert_ne!(other_arches.outputs["cache-key"], key);
    assert_eq!(other_arches.outputs["cache-hit"], "partial", "{}", other_arches.log);
    let ungrouped = go(Job::with_inputs(&[("arch", "riscv64 aarch64"), ("lookup-only", "true")]).on(pr));
    assert_eq!(ungrouped.outputs["cache-hit"], "miss", "{}", ungrouped.log);

    // A fork is another repository: nothing to restore, and fail-on-cache-miss fails the job
    // before kiln runs.
    let fork = Trigger::push("main").in_repository("someone/kiln");
    let forked = go(shared().input("fail-on-cache-miss", "true").on(fork));
    assert!(forked.failed, "{}", forked.log);
    assert_eq!(forked.step("Restore the store"), Some("failure"));
    assert_eq!(forked.step("Run kiln"), Some("skipped"));
    assert!(forked.log.contains("fail-on-cache-miss"), "{}", forked.log);

    // An entry belongs to its paths: the same key for another store path is a miss.
    let moved = go(shared().input("store-path", "build/other-store").input("lookup-only", "true"));
    assert_eq!(moved.outputs["cache-key"], key, "{}", moved.log);
    assert_eq!(moved.outputs["cache-hit"], "miss", "{}", moved.log);
}

/// One x86_64 bare-metal case: TCG on an x86_64 host is what kiln must say loudly.
const X86_ONLY: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["x86_64"]

[case.smoke]
artifact = "hello"
success = "^kiln-example: all checks passed$"
timeout = "30s"
"#;

#[test]
fn the_action_opens_kvm_where_the_runner_has_it_and_tcg_is_said_loudly() {
    let project = Project::example(X86_ONLY);
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let cache = LocalCache::new(cache_dir.path());
    let artifacts = tempfile::tempdir().expect("artifacts");
    let host = tempfile::tempdir().expect("a stand-in /dev and /etc/udev");
    let device = host.path().join("kvm");
    let rules = host.path().join("rules.d");
    let job = || {
        Job::with_inputs(&[("arch", "x86_64")])
            .env("KILN_KVM_DEVICE", &device.display().to_string())
            .env("KILN_UDEV_RULES_DIR", &rules.display().to_string())
    };

    let absent = run_job(&project, &cache, artifacts.path(), job());
    assert!(!absent.failed, "{}", absent.log);
    assert_eq!(absent.outputs["kvm"], "absent");
    assert!(!rules.exists(), "no rule without the device");
    assert!(absent.log.contains("::warning title=kiln%3A x86_64 guests run under TCG::"), "{}", absent.log);
    assert!(absent.summary.contains("Accelerator: x86_64: ⚠️ **TCG**"), "{}", absent.summary);

    std::fs::write(&device, "").expect("a stand-in device node");
    let present = run_job(&project, &cache, artifacts.path(), job());
    assert!(!present.failed, "{}", present.log);
    let rule = std::fs::read_to_string(rules.join("99-kiln-kvm.rules")).expect("the udev rule");
    assert_eq!(rule, "KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0666\", OPTIONS+=\"static_node=kvm\"\n");
    // Where udevadm applies it (GitHub's runners) access is granted; where it cannot (no
    // udevadm or no udevd, as here) the step says so and goes on.
    let state = present.outputs["kvm"].as_str();
    assert!(
        state == "granted" || (state == "present" && present.log.contains("::warning title=kiln::")),
        "{}",
        present.log
    );
}
