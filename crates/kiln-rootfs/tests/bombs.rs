//! Decompression bombs as rootfs layers: a valid tar whose one member is 16 GiB of zeros,
//! in a valid zstd stream, a valid gzip stream and as a .deb's `data.tar.zst`. Each must be
//! refused with a message naming the layer and the member, quickly and with bounded memory.
//!
//! The bombs are made here in a blink (one compressed frame of zeros, repeated: concatenated
//! zstd frames and gzip members decode as one stream). They are read in a child process (this
//! test binary again, running only this test) so that its peak RSS (`VmHWM`) measures the
//! refusal alone. The bounds are generous (10 s, 500 MB) so a loaded 2-core machine cannot
//! make them flake; before the fix the first bomb took 6 GB of RSS in 25 s and kept growing.

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kiln_rootfs::{Tree, UnpackBudget, UnpackLimits};

/// Set (to the directory holding the bombs) in the child that reads them.
const CHILD_ENV: &str = "KILN_ROOTFS_BOMB_DIR";
/// The unpacked size of the bomb's one member.
const BOMB_BYTES: u64 = 16 << 30;
/// Generous bounds: the refusal itself takes milliseconds and a few MB.
const TIME_BOUND: Duration = Duration::from_secs(10);
const RSS_BOUND_KB: u64 = 500 * 1024;

/// The tar stream's pieces: the header of `zero` (16 GiB), then zeros (its contents and,
/// after them, the two zero blocks that end an archive).
fn header() -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("./zero").expect("path");
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(BOMB_BYTES);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// `BOMB_BYTES` + 1024 zeros after the header, as `frame` (the compression of `chunk` zeros)
/// repeated, plus the compression of the last 1024.
fn zeros(chunk: usize, frame: &[u8], tail: &[u8]) -> Vec<u8> {
    let repeats = usize::try_from(BOMB_BYTES / chunk as u64).expect("fits");
    let mut out = Vec::with_capacity(frame.len() * repeats + tail.len());
    for _ in 0..repeats {
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(tail);
    out
}

fn zstd_bomb() -> Vec<u8> {
    let chunk = 64 << 20;
    let mut out = zstd::encode_all(&header()[..], 1).expect("zstd");
    let frame = zstd::encode_all(&vec![0u8; chunk][..], 1).expect("zstd");
    let tail = zstd::encode_all(&[0u8; 1024][..], 1).expect("zstd");
    out.extend(zeros(chunk, &frame, &tail));
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

fn gzip_bomb() -> Vec<u8> {
    let chunk = 1 << 20;
    let mut out = gzip(&header());
    out.extend(zeros(chunk, &gzip(&vec![0u8; chunk]), &gzip(&[0u8; 1024])));
    out
}

/// A .deb whose `data.tar.zst` is the zstd bomb.
fn deb_bomb(data_tar_zst: &[u8]) -> Vec<u8> {
    let mut control = tar::Builder::new(Vec::new());
    let text = b"Package: bomb\nVersion: 1\nArchitecture: amd64\n";
    let mut header = tar::Header::new_gnu();
    header.set_path("./control").expect("path");
    header.set_mode(0o644);
    header.set_size(text.len() as u64);
    header.set_cksum();
    control.append(&header, &text[..]).expect("control");
    let control_gz = gzip(&control.into_inner().expect("tar"));
    let mut ar = ar::Builder::new(Vec::new());
    for (name, body) in
        [("debian-binary", &b"2.0\n"[..]), ("control.tar.gz", &control_gz[..]), ("data.tar.zst", data_tar_zst)]
    {
        ar.append(&ar::Header::new(name.as_bytes().to_vec(), body.len() as u64), body).expect("ar");
    }
    ar.into_inner().expect("ar")
}

/// The child: reads each bomb as a layer and prints `BOMB name millis message` lines, then
/// its peak RSS.
fn read_bombs(dir: &Path) {
    let layers: [(&str, &str); 3] = [
        ("bomb.tar.zst", "`[fetch.bomb-zst]`"),
        ("bomb.tar.gz", "`[fetch.bomb-gz]`"),
        ("bomb.deb", "`[fetch.bomb-deb]`"),
    ];
    for (file, name) in layers {
        let path = dir.join(file);
        let mut tree = Tree::new();
        let mut budget = UnpackBudget::new(UnpackLimits::default());
        let started = Instant::now();
        let result = if file.ends_with(".deb") {
            tree.add_deb(&path, "/", name, &mut budget).map(drop)
        } else {
            tree.add_tarball(&path, "/", name, &mut budget).map(drop)
        };
        let millis = started.elapsed().as_millis();
        let message = match result {
            Ok(()) => "ACCEPTED".to_owned(),
            Err(err) => err.to_string(),
        };
        println!("BOMB {file} {millis} {message}");
    }
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM").trim().to_owned();
    println!("BOMB-RSS {hwm}");
}

#[test]
fn decompression_bombs_are_refused_at_once_with_bounded_memory() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        read_bombs(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let zstd = zstd_bomb();
    assert!(zstd.len() < 2 << 20, "the zstd bomb is small: {} bytes", zstd.len());
    fs::write(dir.path().join("bomb.tar.zst"), &zstd).expect("write");
    fs::write(dir.path().join("bomb.tar.gz"), gzip_bomb()).expect("write");
    fs::write(dir.path().join("bomb.deb"), deb_bomb(&zstd)).expect("write");

    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "decompression_bombs_are_refused_at_once_with_bounded_memory", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{}", stdout.lines().filter(|l| l.starts_with("BOMB")).collect::<Vec<_>>().join("\n"));

    let refusal = "member zero: unpacks to 16.0 GiB (17179869184 bytes), more than the 1.0 GiB (1073741824 bytes) \
                   allowed for one member";
    let expected = [
        ("bomb.tar.zst", format!("`[fetch.bomb-zst]`: {refusal}")),
        ("bomb.tar.gz", format!("`[fetch.bomb-gz]`: {refusal}")),
        ("bomb.deb", format!("`[fetch.bomb-deb]` (data.tar.zst): {refusal}")),
    ];
    for (file, message) in expected {
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("BOMB {file} ")))
            .unwrap_or_else(|| panic!("no result for {file}:\n{stdout}"));
        let (millis, got) = line.split_once(' ').expect("millis and message");
        assert_eq!(got, message, "{file}");
        let millis: u64 = millis.parse().expect("millis");
        assert!(Duration::from_millis(millis) < TIME_BOUND, "{file} took {millis} ms");
    }
    let rss = stdout.lines().find_map(|l| l.strip_prefix("BOMB-RSS ")).expect("peak RSS line");
    let kb: u64 = rss.trim_end_matches(" kB").trim().parse().unwrap_or_else(|_| panic!("VmHWM `{rss}`"));
    assert!(kb < RSS_BOUND_KB, "peak RSS {kb} kB reading the bombs");
}

/// Set (to the layer's path) in the child that unpacks the large legitimate member.
const LARGE_CHILD_ENV: &str = "KILN_ROOTFS_LARGE_LAYER";
/// A member under the 1 GiB cap, large enough that holding it would show in the peak RSS.
const LARGE_BYTES: usize = 768 << 20;

/// A tar.zst whose one member `large` is `LARGE_BYTES` of zeros.
fn large_layer() -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("./large").expect("path");
    header.set_mode(0o644);
    header.set_size(LARGE_BYTES as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let chunk = 64 << 20;
    let mut out = zstd::encode_all(&header.as_bytes()[..], 1).expect("zstd");
    let frame = zstd::encode_all(&vec![0u8; chunk][..], 1).expect("zstd");
    for _ in 0..LARGE_BYTES / chunk {
        out.extend_from_slice(&frame);
    }
    out.extend(zstd::encode_all(&[0u8; 1024][..], 1).expect("zstd"));
    out
}

#[test]
fn a_large_member_within_the_caps_is_streamed_not_held_in_memory() {
    if let Some(layer) = std::env::var_os(LARGE_CHILD_ENV) {
        let mut tree = Tree::new();
        let mut budget = UnpackBudget::new(UnpackLimits::default());
        tree.add_tarball(Path::new(&layer), "/", "`[fetch.large]`", &mut budget).expect("a member under the caps");
        let Some(kiln_rootfs::Node::File { data, .. }) = tree.get("/large") else { panic!("no /large") };
        let kiln_rootfs::Data::Spilled(file) = data else { panic!("held in memory: {data:?}") };
        println!("LARGE-SIZE {}", fs::metadata(file.path()).expect("spilled file").len());
        let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM").trim().to_owned();
        println!("LARGE-RSS {hwm}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = dir.path().join("large.tar.zst");
    fs::write(&layer, large_layer()).expect("write");
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "a_large_member_within_the_caps_is_streamed_not_held_in_memory", "--nocapture"])
        .env(LARGE_CHILD_ENV, &layer)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let size = stdout.lines().find_map(|l| l.strip_prefix("LARGE-SIZE ")).expect("size line");
    assert_eq!(size, LARGE_BYTES.to_string(), "the spilled file holds the whole member");
    let rss = stdout.lines().find_map(|l| l.strip_prefix("LARGE-RSS ")).expect("peak RSS line");
    let kb: u64 = rss.trim_end_matches(" kB").trim().parse().unwrap_or_else(|_| panic!("VmHWM `{rss}`"));
    println!("unpacking a {} MiB member: peak RSS {kb} kB", LARGE_BYTES >> 20);
    assert!(kb < RSS_BOUND_KB, "peak RSS {kb} kB unpacking a {} MiB member", LARGE_BYTES >> 20);
}
