//! `release` and `github-release` fetches against a fake GitHub API on loopback
//! (`github_fake.rs`); `ci prune-caches` is in `prune_caches.rs`.

use std::process::Output;

use crate::{
    github_fake::{FakeGitHub, Seen},
    linux::{stderr_of, stdout_of},
    support::Project,
};

pub(crate) const TOKEN: &str = "ghp_kilnTestToken0123456789";

/// The example's bare-metal kernel, released for its three arches.
pub(crate) const KILN_TOML: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"

[release]
repository = "kiln-dev/demo"
artifacts = ["hello"]
"#;

pub(crate) fn kiln(project: &Project, fake: &FakeGitHub, token: &str, args: &[&str]) -> Output {
    project
        .command(args)
        .env("KILN_GITHUB_API", &fake.url)
        .env("KILN_GITHUB_UPLOADS", &fake.uploads)
        .env("GITHUB_TOKEN", token)
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_REPOSITORY")
        .output()
        .expect("kiln")
}

fn uploads(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.url.contains("/assets?"))
        .filter_map(|s| s.url.split("name=").nth(1).map(|n| n.split('&').next().unwrap_or(n).to_owned()))
        .collect()
}

fn changes(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s.method.as_str(), "POST" | "DELETE")).count()
}

#[test]
fn a_release_is_published_once_retried_through_failures_and_only_changes_are_replaced() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    {
        let mut state = fake.state.lock().expect("state");
        state.fail_uploads = 1;
        state.rate_limit_uploads = 1;
    }
    let first = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0", "--draft"]);
    let (out, err) = (stdout_of(&first), stderr_of(&first));
    assert!(first.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "the token is never printed");
    let release = fake.release("v1.0").expect("the release was created");
    assert!(release.draft);
    let mut names: Vec<&str> = release.assets.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["BLAKE3SUMS", "SHA256SUMS", "hello-aarch64", "hello-riscv64", "hello-x86_64", "provenance.json"]
    );
    let seen = fake.requests();
    assert!(seen.iter().all(|s| s.authorized), "every request carried the token");
    // Six assets, one upload answered 502 and one rate limited, both tried again, and said.
    assert_eq!(uploads(&seen).len(), 8, "{:?}", uploads(&seen));
    assert!(err.contains("Retrying") && err.contains("HTTP 502") && err.contains("rate limited"), "{err}");

    // The checksums verify with the tools a downloader uses.
    let dir = tempfile::tempdir().expect("tempdir");
    for asset in &release.assets {
        std::fs::write(dir.path().join(&asset.name), &asset.bytes).expect("write");
    }
    for (tool, sums) in [("b3sum", "BLAKE3SUMS"), ("sha256sum", "SHA256SUMS")] {
        let check =
            std::process::Command::new(tool).args(["--check", sums]).current_dir(dir.path()).output().expect(tool);
        assert!(check.status.success(), "{tool}: {}{}", stdout_of(&check), stderr_of(&check));
        assert_eq!(stdout_of(&check).matches(": OK").count(), 3, "{}", stdout_of(&check));
    }
    let provenance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("provenance.json")).expect("read")).expect("json");
    let assets = provenance["assets"].as_array().expect("assets");
    assert_eq!(assets.len(), 3);
    for asset in assets {
        assert_eq!(asset["closure"].as_str().map(str::len), Some(64), "{asset}");
        assert!(asset["inputs"].as_object().is_some_and(|i| !i.is_empty()), "{asset}");
    }

    // Nothing changed: nothing is uploaded, replaced or deleted, and the draft (which
    // GitHub's look-up by tag does not see) is found, not made twice.
    fake.clear_requests();
    let second = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0", "--draft"]);
    assert_eq!(fake.state.lock().expect("state").releases.len(), 1, "one release");
    assert!(second.status.success(), "{}", stderr_of(&second));
    assert!(
        stderr_of(&second).contains("0 uploaded, 6 unchanged")
            || stdout_of(&second).contains("0 uploaded, 6 unchanged")
    );
    assert_eq!(changes(&fake.requests()), 0, "{:?}", fake.requests());
    assert!(!fake.requests().iter().any(|s| s.method == "PATCH"), "an unchanged release is not edited");

    // One kernel changes: it and the three files that describe the release are replaced.
    project
        .touch_source("examples/boards/riscv64-virt/src/lib.rs", "#[used]\nstatic RELEASE_MARK: [u8; 4] = *b\"kiln\";");
    fake.clear_requests();
    let third = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0"]);
    assert!(third.status.success(), "{}", stderr_of(&third));
    assert!(!fake.release("v1.0").expect("release").draft, "published without --draft");
    let mut replaced = uploads(&fake.requests());
    replaced.sort();
    assert_eq!(replaced, ["BLAKE3SUMS", "SHA256SUMS", "hello-riscv64", "provenance.json"]);
    let deleted = fake.requests().iter().filter(|s| s.method == "DELETE").count();
    assert_eq!(deleted, 4, "each replaced asset was deleted first");
    let published_last = fake.requests().iter().rposition(|s| s.method == "PATCH");
    let last_upload = fake.requests().iter().rposition(|s| s.method == "POST");
    assert!(published_last > last_upload, "published after every upload: {:?}", fake.requests());

    // Published (and, as on GitHub with immutable releases, fixed): the same assets again
    // are nothing to do; other assets are refused before anything is sent.
    fake.clear_requests();
    let again = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0"]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert!(stderr_of(&again).contains("already published with these assets; nothing to do"), "{}", stderr_of(&again));
    assert_eq!(changes(&fake.requests()), 0, "{:?}", fake.requests());
    project
        .touch_source("examples/boards/riscv64-virt/src/lib.rs", "#[used]\nstatic SECOND_MARK: [u8; 4] = *b\"two!\";");
    let changed = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0"]);
    let err = stderr_of(&changed);
    assert_eq!(changed.status.code(), Some(2), "{err}");
    assert!(err.contains("release v1.0 is already published") && err.contains("hello-riscv64"), "{err}");
    assert!(err.contains("publish under a new tag"), "{err}");
    assert_eq!(changes(&fake.requests()), 0, "nothing sent to a published release: {:?}", fake.requests());
}

/// The release workflow's two steps: the files are built from source and staged without a
/// token, then published from the staged directory (checked against its SHA256SUMS) by a
/// step that has one. With the store built first, every asset is proven reproducible.
#[test]
fn a_release_is_staged_from_source_without_a_token_then_published_from_its_files() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    let built = project.command(&["build"]).output().expect("kiln");
    assert!(built.status.success(), "{}", stderr_of(&built));

    let staged = project.path().join("staged");
    let out = staged.to_str().expect("utf-8");
    let stage = kiln(&project, &fake, "", &["release", "--tag", "v2.0", "--verify-reproducible", "--out", out]);
    let err = stderr_of(&stage);
    assert!(stage.status.success(), "{err}");
    assert!(err.contains("from source in an empty store") && err.contains("Built hello (riscv64)"), "{err}");
    assert!(fake.requests().is_empty(), "staging does not talk to GitHub: {:?}", fake.requests());
    let provenance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staged.join("provenance.json")).expect("provenance")).expect("json");
    assert_eq!(provenance["built_from_source"], true, "{provenance}");
    let assets = provenance["assets"].as_array().expect("assets");
    assert_eq!(assets.len(), 3, "{provenance}");
    assert!(assets.iter().all(|a| a["reproduced"] == "matches"), "{provenance}");

    // A staged file changed after staging is refused.
    let kernel = staged.join("hello-x86_64");
    let original = std::fs::read(&kernel).expect("read");
    std::fs::write(&kernel, b"not the kernel").expect("tamper");
    let refused = kiln(&project, &fake, TOKEN, &["release", "--tag", "v2.0", "--publish", out]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("does not have the SHA-256 its SHA256SUMS records"),
        "{}",
        stderr_of(&refused)
    );
    assert!(fake.release("v2.0").is_none());
    std::fs::write(&kernel, original).expect("restore");

    let published = kiln(&project, &fake, TOKEN, &["release", "--tag", "v2.0", "--publish", out]);
    assert!(published.status.success(), "{}", stderr_of(&published));
    assert!(!stderr_of(&published).contains("Building"), "publishing builds nothing: {}", stderr_of(&published));
    let release = fake.release("v2.0").expect("published");
    assert!(!release.draft);
    for asset in &release.assets {
        assert_eq!(asset.bytes, std::fs::read(staged.join(&asset.name)).expect("staged"), "{}", asset.name);
    }
    assert_eq!(release.assets.len(), 6);
}

#[test]
fn a_rejected_token_fails_at_once_and_a_dry_run_changes_nothing() {
    let project = Project::example(KILN_TOML);
    let fake = FakeGitHub::start(TOKEN);
    let missing = kiln(&project, &fake, "", &["release", "--tag", "v1.0"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr_of(&missing));
    assert!(stderr_of(&missing).contains("no GitHub token") && !stderr_of(&missing).contains("Building"));
    assert!(fake.requests().is_empty(), "checked before building or asking GitHub");
    let wrong = "ghp_wrongTokenThatMustNotBePrinted";
    let denied = kiln(&project, &fake, wrong, &["release", "--tag", "v1.0"]);
    let err = stderr_of(&denied);
    assert!(!denied.status.success());
    assert!(err.contains("GitHub rejected the token (HTTP 401)"), "{err}");
    assert!(!err.contains(wrong) && !stdout_of(&denied).contains(wrong), "the token is never printed: {err}");
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried: {:?}", fake.requests());

    fake.clear_requests();
    let dry = kiln(&project, &fake, TOKEN, &["release", "--tag", "v1.0", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr_of(&dry));
    let out = stdout_of(&dry);
    assert!(out.contains("would be created") && out.contains("upload   hello-x86_64"), "{out}");
    assert_eq!(changes(&fake.requests()), 0, "a dry run changes nothing: {:?}", fake.requests());
    assert!(fake.release("v1.0").is_none());
}

#[test]
fn a_released_asset_is_fetched_by_github_release_and_its_pin_is_checked() {
    let fake = FakeGitHub::start(TOKEN);
    // A tarball released by another project.
    let mut tarball = tar::Builder::new(Vec::new());
    let content = b"released by another kiln project\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tarball.append_data(&mut header, "etc/released.txt", &content[..]).expect("tar");
    let bytes = tarball.into_inner().expect("tar");
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    {
        let mut state = fake.state.lock().expect("state");
        state.releases.push(crate::github_fake::FakeRelease {
            id: 100,
            tag: "v2.0".to_owned(),
            name: "v2.0".to_owned(),
            body: String::new(),
            draft: false,
            assets: vec![crate::github_fake::FakeAsset { id: 101, name: "files-x86_64.tar".to_owned(), bytes }],
        });
    }
    let toml = |hash: &str| {
        format!(
            r#"
[fetch.released]
github-release = "kiln-dev/demo"
tag = "v2.0"
asset = "files-x86_64.tar"
blake3 = "{hash}"

[rootfs.downstream]
arches = ["x86_64"]
init = false
layers = [{{ tarball = "released" }}]
"#
        )
    };
    let project = Project::example(&toml(&blake3));
    // A host cache of its own: this machine may have fetched the same bytes before.
    let cache = tempfile::tempdir().expect("tempdir");
    let kiln = |project: &Project, args: &[&str]| {
        // Public data: no token needed.
        project
            .command(args)
            .env("KILN_GITHUB_API", &fake.url)
            .env("XDG_CACHE_HOME", cache.path())
            .env_remove("GITHUB_TOKEN")
            .env_remove("GH_TOKEN")
            .output()
            .expect("kiln")
    };
    let built = kiln(&project, &["rootfs", "build", "downstream"]);
    assert!(built.status.success(), "{}", stderr_of(&built));
    let shown = kiln(&project, &["rootfs", "show", "downstream", "--arch", "x86_64"]);
    assert!(stdout_of(&shown).contains("/etc/released.txt"), "{}", stdout_of(&shown));
    assert!(fake.requests().iter().any(|s| s.url == "/download/v2.0/files-x86_64.tar"), "{:?}", fake.requests());

    let wrong = Project::example(&toml(&"0".repeat(64)));
    let refused = kiln(&wrong, &["rootfs", "build", "downstream"]);
    let err = stderr_of(&refused);
    assert!(!refused.status.success());
    assert!(err.contains("hash mismatch") && err.contains(&blake3), "{err}");
}
