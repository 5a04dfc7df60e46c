//! Remote stores with real servers on loopback (`servers.rs`): two "machines" (two copies of
//! the example, each with its own store) share work through moto's S3 server and through
//! nginx with WebDAV; tampering is refused; a stopped or silent remote costs a bounded delay.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use crate::{
    linux::{stderr_of, stdout_of},
    servers::{Moto, Nginx, walk},
    support::{Project, repo_root},
};

const BUCKET: &str = "kiln-cache";

/// A key pair made by `store keygen` in `project`: (secret key file, public key text).
fn keygen(project: &Project, name: &str) -> (PathBuf, String) {
    let file = project.path().join(format!("{name}.key"));
    let output = project.command(&["store", "keygen", "--name", name, "--out"]).arg(&file).output().expect("keygen");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let public = stdout_of(&output).trim().to_owned();
    assert!(public.starts_with(&format!("{name}:")), "{public}");
    let secret = std::fs::read_to_string(&file).expect("secret key");
    assert!(!stderr_of(&output).contains(secret.trim()), "the secret key is never printed");
    (file, public)
}

fn run(project: &Project, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut command = project.command(args);
    command.env_remove("KILN_REMOTES").env_remove("KILN_SIGNING_KEY").env_remove("KILN_SIGNING_KEY_FILE");
    command.env_remove("KILN_TRUSTED_KEYS").env_remove("KILN_STORE");
    command
        .env("AWS_ACCESS_KEY_ID", "kiln-test")
        .env("AWS_SECRET_ACCESS_KEY", "kiln-test")
        .env("AWS_REGION", "us-east-1");
    for (key, value) in env {
        command.env(key, value);
    }
    let started = Instant::now();
    let output = command.output().expect("run kiln");
    (output, started.elapsed())
}

/// The repository's Kiln.toml with a `[store]` naming `url` on `moto` and trusting a key made
/// in a copy of the example: (that copy, the Kiln.toml text, the secret key file).
fn example_on_s3(moto: &Moto, url: &str, key_name: &str) -> (Project, String, String) {
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let project = Project::example(&kiln_toml);
    let (secret, public) = keygen(&project, key_name);
    let kiln_toml = format!(
        "{kiln_toml}\n[store]\nremotes = [{{ url = \"{url}\", endpoint = \"{}\" }}]\ntrusted-keys = [\"{public}\"]\n",
        moto.endpoint
    );
    std::fs::write(project.path().join("Kiln.toml"), &kiln_toml).expect("write");
    (project, kiln_toml, secret.display().to_string())
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn two_machines_share_the_example_through_s3_and_a_second_push_uploads_nothing() {
    let moto = Moto::start(BUCKET);
    let url = format!("s3://{BUCKET}/ci");
    let (machine_a, kiln_toml, secret) = example_on_s3(&moto, &url, "ci-1");
    let machine_b = Project::example(&kiln_toml);

    let (pushed, _) = run(&machine_a, &["test", "--push"], &[("KILN_SIGNING_KEY_FILE", &secret)]);
    let err = stderr_of(&pushed);
    assert!(pushed.status.success(), "machine A:\n{err}");
    assert!(err.contains(&format!("entries to {url} (")), "machine A says what it pushed:\n{err}");
    assert!(!err.contains("could not push"), "{err}");

    let (used, took) = run(&machine_b, &["test"], &[]);
    let err = stderr_of(&used);
    assert!(used.status.success(), "machine B:\n{err}");
    for built_here in ["    Building ", "       Built ", "     Fetched ", "Saved the"] {
        assert!(!err.contains(built_here), "machine B built something (`{built_here}`):\n{err}");
    }
    let summary = err.lines().find(|l| l.starts_with("store: ")).unwrap_or_default();
    assert!(summary.ends_with(&format!("substituted from {url}, 0 cached, 0 built")), "{summary}\n{err}");
    assert!(
        count(&err, "Substituted the x86_64 snapshot") == 1 && count(&err, "Substituted kiln-agent (aarch64)") == 1,
        "{err}"
    );
    eprintln!("machine B: `test` from an empty store, everything substituted: {took:.2?}; {summary}");

    moto.start_recording();
    let (again, _) = run(&machine_a, &["store", "push"], &[("KILN_SIGNING_KEY_FILE", &secret)]);
    let err = stderr_of(&again);
    assert!(again.status.success(), "{err}");
    let requests = moto.recorded();
    let puts: Vec<_> = requests.iter().filter(|(method, _)| method == "PUT").collect();
    assert!(puts.is_empty(), "a second push uploads nothing: {puts:?}");
    let expected = |url: &str| url.contains("/kiln-v1/entries/") || url.ends_with("/kiln-v1/layout.json");
    assert!(requests.iter().all(|(method, url)| method == "HEAD" && expected(url)), "{requests:?}");
    assert!(err.contains(&format!("Pushed 0 entries to {url} (0 blobs")), "{err}");
}

/// Only the bare-metal kernel on x86_64: quick to build, enough to share.
fn small_kiln_toml(remote: &str, public: &str, timeout: &str) -> String {
    format!(
        r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["x86_64", "aarch64"]

[case.smoke]
artifact = "hello"
success = "^kiln-example: all checks passed$"
timeout = "30s"

[store]
remotes = [{{ url = "{remote}", timeout = "{timeout}" }}]
trusted-keys = ["{public}"]
"#
    )
}

/// Rewrites one file the server holds (nginx serves them from disk).
fn rewrite(path: &Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, edit(bytes)).expect("write");
}

#[test]
fn an_http_remote_refuses_tampering_and_a_stopped_or_silent_remote_costs_little() {
    let mut nginx = Nginx::start();
    let url = format!("{}/cache", nginx.url);
    let machine_a = Project::example("");
    let (secret, public) = keygen(&machine_a, "ci-1");
    std::fs::write(machine_a.path().join("Kiln.toml"), small_kiln_toml(&url, &public, "5s")).expect("write");
    let secret = secret.display().to_string();
    let signing = [("KILN_SIGNING_KEY_FILE", secret.as_str())];

    let (pushed, _) = run(&machine_a, &["build", "--push"], &signing);
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    let secret_text = std::fs::read_to_string(&secret).expect("secret");
    let (_, encoded) = secret_text.trim().split_once(':').expect("NAME:KEY");
    assert!(
        !stderr_of(&pushed).contains(encoded) && !stdout_of(&pushed).contains(encoded),
        "the secret is never printed"
    );
    assert!(stderr_of(&pushed).contains(&format!("Pushed 2 entries to {url} (2 blobs")), "{}", stderr_of(&pushed));
    let puts = |nginx: &Nginx| nginx.requests().iter().filter(|r| r.starts_with("PUT ")).count();
    assert_eq!(puts(&nginx), 5, "the layout marker, two blobs, two manifests: {:?}", nginx.requests());
    let (again, _) = run(&machine_a, &["build", "--push"], &signing);
    assert!(stderr_of(&again).contains("Pushed 0 entries"), "{}", stderr_of(&again));
    assert_eq!(puts(&nginx), 5, "a second push uploads nothing: {:?}", nginx.requests());

    let machine_b = Project::example(&small_kiln_toml(&url, &public, "5s"));
    let store_b = machine_b.path().join("target/kiln/store");
    let fresh_build = |project: &Project| {
        let _ = std::fs::remove_dir_all(&store_b);
        run(project, &["build"], &[])
    };

    // Intact: both substituted.
    let (clean, _) = fresh_build(&machine_b);
    let err = stderr_of(&clean);
    assert!(clean.status.success() && count(&err, "Substituted hello") == 2 && !err.contains("Building"), "{err}");

    // A blob with other content (valid zstd of other bytes): refused, built locally.
    let blobs = nginx.files("/kiln-v1/blobs/");
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    let original = std::fs::read(&blobs[0]).expect("blob");
    rewrite(&blobs[0], |bytes| {
        let mut content = zstd::decode_all(bytes.as_slice()).expect("a zstd blob");
        content[0] ^= 1;
        zstd::encode_all(content.as_slice(), 3).expect("compress")
    });
    let (tampered, _) = fresh_build(&machine_b);
    let err = stderr_of(&tampered);
    assert!(tampered.status.success(), "{err}");
    assert!(err.contains(&format!("from {url}: blob")) && err.contains("tampered or corrupt"), "{err}");
    assert_eq!(count(&err, "Building hello"), 1, "only the tampered one is built here:\n{err}");
    std::fs::write(&blobs[0], &original).expect("restore blob");

    // A manifest whose metadata was edited: its signature no longer matches.
    let manifests = nginx.files("/kiln-v1/entries/");
    let manifest = manifests[0].clone();
    let original = std::fs::read(&manifest).expect("manifest");
    rewrite(&manifest, |bytes| {
        String::from_utf8(bytes).expect("utf-8").replacen("build_seconds = ", "build_seconds = 1", 1).into_bytes()
    });
    let (forged, _) = fresh_build(&machine_b);
    let err = stderr_of(&forged);
    assert!(forged.status.success(), "{err}");
    assert!(err.contains("the signature by trusted key `ci-1` does not match the entry"), "{err}");
    assert_eq!(count(&err, "Building hello"), 1, "{err}");

    // A size made larger (a decompression bomb would claim one): sizes are signed too.
    rewrite(&manifest, |_| {
        let mut json: serde_json::Value = serde_json::from_slice(&original).expect("json");
        let files = json["files"].as_array_mut().expect("files");
        let file = files.iter_mut().find(|f| f["type"] == "file").expect("a file");
        file["size"] = serde_json::json!(1u64 << 40);
        serde_json::to_vec(&json).expect("json")
    });
    let (inflated, _) = fresh_build(&machine_b);
    assert!(stderr_of(&inflated).contains("does not match the entry"), "{}", stderr_of(&inflated));

    // Unsigned, and signed by a key B does not trust.
    rewrite(&manifest, |_| {
        let mut json: serde_json::Value = serde_json::from_slice(&original).expect("json");
        json["signatures"] = serde_json::json!([]);
        serde_json::to_vec(&json).expect("json")
    });
    let (unsigned, _) = fresh_build(&machine_b);
    assert!(stderr_of(&unsigned).contains("the entry is not signed"), "{}", stderr_of(&unsigned));
    std::fs::write(&manifest, &original).expect("restore manifest");
    let (_, stranger) = keygen(&machine_b, "stranger");
    std::fs::write(machine_b.path().join("Kiln.toml"), small_kiln_toml(&url, &stranger, "5s")).expect("write");
    let (untrusted, _) = fresh_build(&machine_b);
    let err = stderr_of(&untrusted);
    assert!(untrusted.status.success(), "{err}");
    assert!(err.contains("signed only by `ci-1`, none of them in `[store] trusted-keys`"), "{err}");
    std::fs::write(machine_b.path().join("Kiln.toml"), small_kiln_toml(&url, &public, "5s")).expect("write");

    // A URL that holds no kiln store (a wrong prefix): one warning, not a silent miss.
    let wrong = format!("{}/no-such-prefix", nginx.url);
    std::fs::write(machine_b.path().join("Kiln.toml"), small_kiln_toml(&wrong, &public, "5s")).expect("write");
    let (typo, _) = fresh_build(&machine_b);
    let err = stderr_of(&typo);
    assert!(typo.status.success() && count(&err, "warning: remote ") == 1, "{err}");
    assert!(err.contains(&format!("remote {wrong} holds no kiln store")), "{err}");
    std::fs::write(machine_b.path().join("Kiln.toml"), small_kiln_toml(&url, &public, "5s")).expect("write");

    // The server stopped: one warning, a local build, no failure.
    let _ = std::fs::remove_dir_all(&store_b);
    let (local, local_took) = run(&machine_b, &["build"], &[("KILN_REMOTES", "")]);
    assert!(local.status.success(), "{}", stderr_of(&local));
    nginx.stop();
    let (down, down_took) = fresh_build(&machine_b);
    let err = stderr_of(&down);
    assert!(down.status.success(), "{err}");
    assert_eq!(count(&err, "warning: remote "), 1, "one warning for a stopped remote:\n{err}");
    assert!(err.contains(&format!("remote {url} failed (")) && count(&err, "Building hello") == 2, "{err}");
    eprintln!("build without a remote: {local_took:.2?}; with the remote stopped: {down_took:.2?}");

    // A remote that accepts connections and never answers costs its timeout, once.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}/cache", silent.local_addr().expect("address"));
    std::fs::write(machine_b.path().join("Kiln.toml"), small_kiln_toml(&silent_url, &public, "1s")).expect("write");
    let (hung, hung_took) = fresh_build(&machine_b);
    let err = stderr_of(&hung);
    assert!(hung.status.success(), "{err}");
    assert_eq!(count(&err, "warning: remote "), 1, "{err}");
    eprintln!("with a remote that never answers (timeout 1s): {hung_took:.2?}");
    drop(silent);

    let leftovers: Vec<_> = walk(&store_b.join("tmp"));
    assert!(leftovers.is_empty(), "refused fetches leave nothing behind: {leftovers:?}");
}
