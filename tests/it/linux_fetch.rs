//! Fetch derivations over HTTP (a real server on loopback) and hostile archives.

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use sha2::Digest as _;

use crate::{linux::fixture, support::Project};

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `body` at every path; the first `failures` requests get a 503. Returns the base
/// URL and the request counter.
fn serve(body: Vec<u8>, failures: usize) -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind loopback");
    let port = server.server_addr().to_ip().expect("an IP address").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let response = if n < failures {
                tiny_http::Response::from_data(b"busy".to_vec()).with_status_code(503)
            } else {
                tiny_http::Response::from_data(body.clone())
            };
            let _ = request.respond(response);
        }
    });
    (format!("http://127.0.0.1:{port}"), count)
}

fn busybox_rootfs(fetch: &str) -> String {
    format!(
        r#"{fetch}
[rootfs.tiny]
arches = ["x86_64"]
layers = [{{ busybox = "busybox" }}]
"#
    )
}

#[test]
fn a_url_fetch_retries_a_server_error_and_is_fetched_once() {
    let deb = std::fs::read(fixture("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb")).expect("read");
    let (url, requests) = serve(deb.clone(), 1);
    let fetch = format!(
        "[fetch.busybox]\nurl = \"{url}/pool/busybox-static_1.35.0_amd64.deb\"\nsha256 = \"{}\"\n",
        sha256(&deb)
    );
    let project = Project::example(&busybox_rootfs(&fetch));
    // The host's download cache, empty, for this test alone.
    let host_cache = tempfile::tempdir().expect("tempdir");
    let kiln = |project: &Project| {
        project.command(&["rootfs", "build"]).env("XDG_CACHE_HOME", host_cache.path()).output().expect("kiln runs")
    };
    let first = kiln(&project);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("the server answered 503 Service Unavailable; trying again"), "{stderr}");
    assert_eq!(requests.load(Ordering::SeqCst), 2, "one 503, one good answer");

    let second = kiln(&project);
    assert!(second.status.success());
    assert_eq!(requests.load(Ordering::SeqCst), 2, "the fetched file is a store hit: no new request");

    // Another project (its own store) on the same host: fetched once per machine.
    let other = Project::example(&busybox_rootfs(&fetch));
    let third = kiln(&other);
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
    assert_eq!(requests.load(Ordering::SeqCst), 2, "the host's download cache serves it");
}

#[test]
fn a_wrong_hash_fails_with_both_hashes_and_leaves_no_entry() {
    let body = b"not the file you pinned".to_vec();
    let (url, _) = serve(body.clone(), 0);
    let pinned = "0".repeat(64);
    let fetch = format!("[fetch.busybox]\nurl = \"{url}/busybox.deb\"\nsha256 = \"{pinned}\"\n");
    let project = Project::example(&busybox_rootfs(&fetch));
    let host_cache = tempfile::tempdir().expect("tempdir");
    let output =
        project.command(&["rootfs", "build"]).env("XDG_CACHE_HOME", host_cache.path()).output().expect("kiln runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("sha256 hash mismatch"), "{stderr}");
    assert!(stderr.contains(&format!("expected: {pinned}")), "{stderr}");
    assert!(stderr.contains(&format!("actual:   {}", sha256(&body))), "{stderr}");
    let entries = project.path().join("target/kiln/store/entries");
    let count = std::fs::read_dir(&entries).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, 0, "no store entry for a file that failed its hash");
}

/// A plain tarball with the given members: a file, or a symlink to the given target.
fn tarball(members: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut out);
        for (path, link) in members {
            let mut header = tar::Header::new_gnu();
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    header.set_link_name(target).expect("link name");
                }
                None => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(5);
                    header.set_mode(0o644);
                }
            }
            // Raw names, so `..` reaches the archive as an attacker would write it.
            let name = header.as_old_mut();
            name.name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            let data: &[u8] = if link.is_some() { b"" } else { b"evil\n" };
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("finish").flush().expect("flush");
    }
    out
}

fn build_with_tarball(bytes: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("layer.tar");
    std::fs::write(&file, bytes).expect("write tarball");
    let toml = format!(
        "[fetch.layer]\npath = {:?}\nsha256 = \"{}\"\n\n[rootfs.evil]\narches = [\"x86_64\"]\ninit = false\nlayers = [{{ tarball = \"layer\" }}]\n",
        file.display().to_string(),
        sha256(bytes)
    );
    let project = Project::example(&toml);
    let output = project.command(&["rootfs", "build"]).output().expect("kiln runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn tarballs_that_escape_the_rootfs_are_rejected_with_the_member_named() {
    let (ok, stderr) = build_with_tarball(&tarball(&[("etc/../../escape", None)]));
    assert!(!ok, "a `..` path is refused");
    assert!(stderr.contains("etc/../../escape"), "the member is named: {stderr}");
    assert!(stderr.contains("rootfs `evil` (x86_64), layer 1"), "the layer is named: {stderr}");

    let (ok, stderr) = build_with_tarball(&tarball(&[("etc", Some("/etc")), ("etc/passwd", None)]));
    assert!(!ok, "writing through a symlink is refused");
    assert!(stderr.contains("etc/passwd"), "{stderr}");

    let (ok, stderr) = build_with_tarball(&tarball(&[("lib/up", Some("../../../../host"))]));
    assert!(!ok, "a symlink that climbs out is refused");
    assert!(stderr.contains("lib/up"), "{stderr}");

    let (ok, stderr) = build_with_tarball(&tarball(&[("usr/bin/tool", None), ("bin/sh", Some("/bin/busybox"))]));
    assert!(ok, "ordinary members and absolute symlinks inside the rootfs are fine: {stderr}");
}

/// A zstd-compressed tar whose one member, `zero`, is 16 GiB of zeros: one compressed frame
/// of 64 MiB of zeros repeated (concatenated frames decode as one stream), about 0.5 MB.
fn zstd_bomb() -> Vec<u8> {
    const BOMB: u64 = 16 << 30;
    const CHUNK: usize = 64 << 20;
    let mut header = tar::Header::new_gnu();
    header.set_path("zero").expect("path");
    header.set_mode(0o644);
    header.set_size(BOMB);
    header.set_cksum();
    let mut out = zstd::encode_all(header.as_bytes().as_slice(), 1).expect("zstd");
    let frame = zstd::encode_all(vec![0u8; CHUNK].as_slice(), 1).expect("zstd");
    for _ in 0..BOMB / CHUNK as u64 {
        out.extend_from_slice(&frame);
    }
    out.extend(zstd::encode_all([0u8; 1024].as_slice(), 1).expect("zstd"));
    out
}

#[test]
fn hostile_archive_layers_are_refused_naming_the_fetch_and_the_escaped_member() {
    // A member name that would clear the screen, set the title and start a workflow command.
    let name = "etc/\u{1b}[2J\u{1b}]0;owned\u{7}\n::error::pwned/../../x";
    let (ok, stderr) = build_with_tarball(&tarball(&[(name, None)]));
    assert!(!ok, "a `..` path is refused");
    assert!(
        stderr.contains(r"`[fetch.layer]`: member etc/\x1b[2J\x1b]0;owned\x07\n::error::pwned/../../x: path leaves"),
        "the fetch and the escaped member are named: {stderr}"
    );
    assert!(!stderr.contains(['\u{1b}', '\u{7}']), "no raw control bytes reach the terminal: {stderr:?}");
    assert!(!stderr.lines().any(|line| line.starts_with("::error::pwned")), "no workflow command: {stderr}");
    assert!(!stderr.contains("store"), "the fetch's name, not its store path: {stderr}");

    let (ok, stderr) = build_with_tarball(&tarball(&[("etc/motd", None), ("./etc/motd", None)]));
    assert!(!ok, "a path twice in one archive is refused");
    assert!(
        stderr.contains("`[fetch.layer]`: member ./etc/motd: `/etc/motd` appears twice in this archive"),
        "{stderr}"
    );

    let (ok, stderr) = build_with_tarball(b"");
    assert!(!ok, "an empty archive is refused");
    assert!(stderr.contains("`[fetch.layer]`: the archive is empty (no members)"), "{stderr}");

    let started = std::time::Instant::now();
    let (ok, stderr) = build_with_tarball(&zstd_bomb());
    let elapsed = started.elapsed();
    assert!(!ok, "a 16 GiB member is refused");
    assert!(
        stderr.contains(
            "`[fetch.layer]`: member zero: unpacks to 16.0 GiB (17179869184 bytes), more than the 1.0 GiB \
             (1073741824 bytes) allowed for one member"
        ),
        "{stderr}"
    );
    // Generous: the refusal reads one header; before the cap, this member took 25 s and 6 GB.
    assert!(elapsed < std::time::Duration::from_secs(20), "refused after {elapsed:?}");
}
