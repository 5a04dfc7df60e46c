//! The store under stress: crashes at random moments, concurrent builders, corruption.

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use kiln_store::{ClosureHash, Store};

use crate::support::Project;

/// A small deterministic generator, so a failing trial can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Every visible entry is whole: its metadata reads and its output has the recorded hash.
fn assert_every_entry_whole(store: &Store) {
    for dir in fs::read_dir(store.root().join("entries")).expect("entries") {
        let dir = dir.expect("entry");
        let closure: ClosureHash =
            dir.file_name().to_string_lossy().parse().unwrap_or_else(|_| panic!("stray {:?}", dir.path()));
        let entry = store.lookup(&closure).expect("readable").expect("present");
        assert_eq!(store.check(&entry).expect("check"), None, "half-written entry {closure}");
    }
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_half_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let writer = env!("CARGO_BIN_EXE_store-writer");
    let mut random = Lcg(0x6b69_6c6e);
    let mut killed_mid_build = 0;
    for trial in 0..120u64 {
        let mut child = Command::new(writer)
            .args([root.to_str().expect("utf-8"), &(trial * 1000).to_string(), "1000"])
            .stderr(Stdio::null())
            .spawn()
            .expect("store-writer starts");
        std::thread::sleep(Duration::from_micros(random.next() % 40_000));
        let _ = child.kill();
        let _ = child.wait();
        if fs::read_dir(root.join("tmp")).map(|d| d.count()).unwrap_or(0) > 0 {
            killed_mid_build += 1;
        }
        assert_every_entry_whole(&Store::open(&root).expect("store opens after a crash"));
    }
    assert!(killed_mid_build >= 10, "only {killed_mid_build} kills landed inside a build");
    let store = Store::open(&root).expect("open");
    assert_eq!(fs::read_dir(root.join("tmp")).expect("tmp").count(), 0, "dead builders' temp dirs are swept");
    let status = Command::new(writer).args([root.to_str().expect("utf-8"), "0", "5"]).status().expect("runs");
    assert!(status.success(), "the store still works");
    assert_every_entry_whole(&store);
}

const ONE_ARTIFACT: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
"#;

#[test]
fn two_concurrent_builds_build_each_artifact_once() {
    let project = Project::example(ONE_ARTIFACT);
    let spawn = || project.command(&["build"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("kiln");
    let (first, second) = (spawn(), spawn());
    let outputs = [first.wait_with_output().expect("first"), second.wait_with_output().expect("second")];
    let mut built = 0;
    for output in &outputs {
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{text}");
        built += text.lines().filter(|line| line.trim_start().starts_with("Built ")).count();
    }
    assert_eq!(built, 3, "each of the three arches is built once across both runs");
}

#[test]
fn verify_finds_a_flipped_byte_and_repair_then_build_restores_it() {
    let project = Project::example(ONE_ARTIFACT);
    assert_eq!(project.kiln(&["-q", "build", "--arch", "riscv64"]), 0);
    assert_eq!(project.kiln(&["-q", "store", "verify"]), 0);

    let path = project.command(&["store", "path", "hello", "--arch", "riscv64"]).output().expect("path");
    let binary = std::path::PathBuf::from(String::from_utf8_lossy(&path.stdout).trim());
    let mut bytes = fs::read(&binary).expect("read the binary");
    bytes[100] ^= 0x01;
    let mut permissions = fs::metadata(&binary).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    fs::set_permissions(&binary, permissions).expect("chmod");
    fs::write(&binary, &bytes).expect("flip a byte");

    assert_eq!(project.kiln(&["-q", "store", "verify"]), kiln::exit_code::CASES_FAILED);
    assert_eq!(project.kiln(&["-q", "store", "verify", "--repair"]), kiln::exit_code::CASES_FAILED);
    assert!(!binary.exists(), "the corrupt entry is gone");
    let build = project.command(&["build", "--arch", "riscv64"]).output().expect("build");
    assert!(String::from_utf8_lossy(&build.stderr).contains("Built hello (riscv64)"));
    assert_eq!(project.kiln(&["-q", "store", "verify"]), 0);
}

/// x86_64 Linux cases that read one rootfs, booted one at a time: a run long enough for a
/// collection to happen in the middle of it.
fn linux_cases_kiln_toml() -> String {
    let mut text = crate::linux::fetch_tables();
    text.push_str(
        r#"
[artifact.hello-linux]
package = "hello-linux"
path = "examples/linux/hello"
arches = ["x86_64"]
target.x86_64 = "x86_64-unknown-linux-musl"

[kernel.debian]
deb = "linux-{arch}"
arches = ["x86_64"]

[rootfs.base]
arches = ["x86_64"]
layers = [
  { busybox = "busybox-{arch}" },
  { artifact = "hello-linux", dest = "/usr/bin/hello" },
]
"#,
    );
    for case in ["first", "second", "third", "fourth"] {
        text.push_str(&format!(
            "\n[case.{case}]\nkernel = \"debian\"\nrootfs = \"base\"\narches = [\"x86_64\"]\ncommand = \"hello\"\n"
        ));
    }
    text
}

/// `gc` run while a `test` boots what it has realised, after a source edit has made those
/// entries garbage for the new sources: plain and `--for build` both keep what the running
/// test uses (its temporary roots), and the test passes.
#[test]
fn gc_during_a_test_after_a_source_edit_keeps_what_the_test_uses() {
    use std::io::{BufRead as _, Read as _};

    let project = Project::example(&linux_cases_kiln_toml());
    let mut test = project
        .command(&["--accel", "tcg", "-j", "1", "test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln test starts");
    let mut stderr = std::io::BufReader::new(test.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("read kiln's stderr");
        assert!(read > 0, "the test ended before its rootfs was built:\n{seen}");
        seen.push_str(&line);
        if line.contains("Built rootfs base") {
            break;
        }
    }

    project.touch_source("examples/linux/hello/src/main.rs", "// edited while the test runs");
    let mut collected = String::new();
    for gc in [&["store", "gc"][..], &["store", "gc", "--for", "build", "--arch", "x86_64"][..]] {
        let output = project.command(gc).output().expect("kiln gc runs");
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{gc:?}:\n{text}");
        collected.push_str(&text);
    }
    stderr.read_to_string(&mut seen).expect("read kiln's stderr");
    let status = test.wait().expect("kiln test ends");
    assert!(status.success(), "the test lost entries to gc:\n{seen}\ngc said:\n{collected}");
    assert!(collected.contains("in use by a running kiln"), "{collected}");
    assert!(seen.contains("4 passed"), "{seen}");

    // Once the test is over its entries are garbage for the edited sources.
    let output = project.command(&["store", "gc"]).output().expect("kiln gc runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("Removed rootfs-base-x86_64"), "{text}");
}

/// Sixteen GiB: the decompressed size of the bombs below.
const BOMB_BYTES: u64 = 16 << 30;

/// A zstd stream of `len` zeros (a multiple of 64 MiB): one small frame repeated, so it
/// takes milliseconds to build and a few hundred KB to hold.
fn zero_frames(len: u64) -> Vec<u8> {
    let piece: u64 = 64 << 20;
    let frame = zstd::encode_all(std::io::Read::take(std::io::repeat(0), piece), 1).expect("compress zeros");
    frame.repeat((len / piece) as usize)
}

/// The tar stream of an archive exported by kiln holding one entry named `bomb`, whose
/// `out/file` holds a few bytes; and that member's path.
fn exported_entry(dir: &std::path::Path) -> (Vec<u8>, String) {
    let store = Store::open(dir.join("source-store")).expect("open store");
    let mut drv = kiln_store::Derivation::new("import-bomb");
    drv.setting("content", "a few bytes");
    let (entry, _) =
        store.build(&drv, "bomb", || {}, |out| Ok(fs::write(out.join("file"), b"a few bytes")?)).expect("build");
    let archive = dir.join("good.tar.zst");
    kiln_store::export_to_file(&store, &[entry.closure], &archive).expect("export");
    let tar = zstd::decode_all(&fs::read(&archive).expect("read archive")[..]).expect("decompress");
    (tar, format!("{}/out/file", entry.closure))
}

/// Where `member`'s header starts and where the stream resumes after its data.
fn locate(tar: &[u8], member: &str) -> (usize, usize) {
    for entry in tar::Archive::new(tar).entries().expect("entries") {
        let entry = entry.expect("member");
        if entry.path_bytes().as_ref() == member.as_bytes() {
            let header = usize::try_from(entry.raw_header_position()).expect("fits");
            let data = usize::try_from(entry.raw_file_position()).expect("fits");
            return (header, data + usize::try_from(entry.size()).expect("fits").div_ceil(512) * 512);
        }
    }
    panic!("no member {member}");
}

/// What one `store import` run did: exit code, stderr, seconds, peak RSS in KiB.
struct Import {
    code: i32,
    stderr: String,
    seconds: f64,
    peak_kib: u64,
}

fn run_import(project: &Project, archive: &[u8], name: &str) -> Import {
    let path = project.path().join(name);
    fs::write(&path, archive).expect("write archive");
    let peak_file = project.path().join(format!("{name}.peak"));
    let started = std::time::Instant::now();
    let output = project
        .command(&["store", "import", path.to_str().expect("utf-8")])
        .env("KILN_IT_PEAK_RSS_FILE", &peak_file)
        .env("GITHUB_ACTIONS", "true")
        .output()
        .expect("kiln runs");
    let seconds = started.elapsed().as_secs_f64();
    let peak = fs::read_to_string(&peak_file).expect("kiln-it wrote its peak RSS");
    let peak_kib = peak
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("unreadable peak RSS: {peak}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{name}: exit {:?} after {seconds:.2} s, peak RSS {peak_kib} KiB", output.status.code());
    Import { code: output.status.code().unwrap_or(-1), stderr, seconds, peak_kib }
}

/// Nothing was published, and nothing is left in the store's `tmp/`.
fn assert_nothing_staged(project: &Project) {
    let store = project.path().join("target/kiln/store");
    for sub in ["entries", "tmp"] {
        let left: Vec<_> = fs::read_dir(store.join(sub))
            .map(|dir| dir.map(|e| e.expect("entry").file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "store/{sub} holds {left:?}");
    }
}

#[test]
fn store_import_refuses_a_16_gib_bomb_in_a_valid_entry_fast_in_bounded_memory() {
    let project = Project::example(ONE_ARTIFACT);
    let (tar, member) = exported_entry(project.path());
    let (header_at, resume) = locate(&tar, &member);

    // The file member replaced by 16 GiB of zeros, its header claiming them.
    let mut header = tar::Header::from_byte_slice(&tar[header_at..header_at + 512]).clone();
    header.set_size(BOMB_BYTES);
    header.set_cksum();
    let mut head = tar[..header_at].to_vec();
    head.extend_from_slice(header.as_bytes());
    let mut claiming = zstd::encode_all(&head[..], 3).expect("compress");
    claiming.extend(zero_frames(BOMB_BYTES));
    claiming.extend(zstd::encode_all(&tar[resume..], 3).expect("compress"));
    // The member as recorded, then 16 GiB of zeros before the rest of the stream.
    let mut trailing = zstd::encode_all(&tar[..resume], 3).expect("compress");
    trailing.extend(zero_frames(BOMB_BYTES));
    trailing.extend(zstd::encode_all(&tar[resume..], 3).expect("compress"));

    for (name, bomb, says) in [
        (
            "claiming.tar.zst",
            claiming,
            format!("member `{member}` of entry `bomb`: the member claims {BOMB_BYTES} bytes"),
        ),
        ("trailing.tar.zst", trailing, "zeros follow the end-of-archive marker".to_owned()),
    ] {
        assert!(bomb.len() < 1 << 20, "{name} is {} bytes", bomb.len());
        let run = run_import(&project, &bomb, name);
        assert_eq!(run.code, 2, "{name}: hostile input is a usage error, not infrastructure\n{}", run.stderr);
        assert!(run.stderr.contains(&says), "{name}: {}", run.stderr);
        assert!(run.stderr.contains("export it again from a store you trust"), "{name}: {}", run.stderr);
        assert!(run.seconds < 10.0, "{name}: took {:.1} s", run.seconds);
        assert!(run.peak_kib < 500 * 1024, "{name}: peak RSS {} KiB", run.peak_kib);
        assert_nothing_staged(&project);
    }

    // A member whose name would start a workflow command on its own line.
    let mut hostile = tar[..tar.len() - 1024].to_vec();
    let mut header = tar::Header::new_gnu();
    let name = format!("{}\n::error::pwned\x1b[31m", member.trim_end_matches("file"));
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_cksum();
    hostile.extend_from_slice(header.as_bytes());
    hostile.extend_from_slice(&[0; 1024]);
    let run = run_import(&project, &zstd::encode_all(&hostile[..], 3).expect("compress"), "hostile.tar.zst");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("\\n::error::pwned\\x1b[31m"), "{}", run.stderr);
    assert!(!run.stderr.lines().any(|line| line.starts_with("::error::pwned")), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
    assert_nothing_staged(&project);
}
