//! kiln as cargo's target runner for a crate that is not a kiln project: a crate outside the
//! repository, whose `.cargo/config.toml` holds only `runner = "kiln run --"` and which has no
//! Kiln.toml anywhere above it, runs `cargo test --target aarch64-unknown-linux-musl` on kiln's
//! built-in guest; so does a workspace whose member's test reads the workspace's shared test
//! data and runs the member's binary by cargo's `CARGO_BIN_EXE_*` path.
//!
//! The per-user cache is a temp directory here (`XDG_CACHE_HOME`), with the pinned Debian
//! packages put in its download cache from `.ci/fetch-debs`'s directory, as the first `kiln
//! run` on a host would have downloaded them: nothing is fetched over the network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::linux::{DEBS, fixture, stderr_of, stdout_of};

/// The crate: a word counter, as someone's small library looks, with unit tests, one
/// integration test reading a data file of the package, one running the crate's binary by the
/// path cargo gives it (`CARGO_BIN_EXE_tally`), a doctest, and a test behind the `hyphens`
/// feature that fails (the counter splits `well-known` in two).
const CRATE_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        r#"[package]
name = "tally"
version = "0.3.1"
edition = "2021"
description = "Counts words in text."
license = "MIT OR Apache-2.0"

[features]
# Work in progress: hyphenated words should count as one.
hyphens = []

[dependencies]
"#,
    ),
    (
        "src/lib.rs",
        r#"//! Counts words in text.

use std::collections::BTreeMap;

/// Counts each word of `text`, lower-cased; words are runs of letters and digits.
///
/// ```
/// let counts = tally::count_words("The cat and the hat");
/// assert_eq!(counts["the"], 2);
/// assert_eq!(counts.len(), 4);
/// ```
pub fn count_words(text: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// The `n` most frequent words, most frequent first (ties in alphabetical order).
pub fn top(counts: &BTreeMap<String, usize>, n: usize) -> Vec<(&str, usize)> {
    let mut words: Vec<(&str, usize)> = counts.iter().map(|(w, c)| (w.as_str(), *c)).collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    words.truncate(n);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_repeated_words_in_any_case() {
        let counts = count_words("Go go GO stop");
        assert_eq!(counts["go"], 3);
        assert_eq!(counts["stop"], 1);
    }

    #[test]
    fn empty_text_has_no_words() {
        assert!(count_words("  \n\t ").is_empty());
    }

    #[test]
    fn top_breaks_ties_alphabetically() {
        let counts = count_words("b a c a b");
        assert_eq!(top(&counts, 2), [("a", 2), ("b", 2)]);
    }

    #[test]
    fn threads_work() {
        let handles: Vec<_> = (0..4).map(|i| std::thread::spawn(move || count_words(&"x ".repeat(i)).len())).collect();
        let sizes: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(sizes, [0, 1, 1, 1]);
    }

    #[test]
    fn kernel_release() {
        // Printed so the test log shows where the tests ran.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        println!("kernel {}", release.trim());
    }

    #[cfg(feature = "hyphens")]
    #[test]
    fn hyphenated_words_count_once() {
        let counts = count_words("a well-known fact");
        assert_eq!(counts.get("well-known"), Some(&1), "counted: {counts:?}");
    }
}
"#,
    ),
    (
        "tests/from_file.rs",
        r#"use tally::{count_words, top};

#[test]
fn counts_the_sample_text() {
    // cargo runs integration tests in the package directory.
    let text = std::fs::read_to_string("tests/data/sample.txt").expect("sample text");
    let counts = count_words(&text);
    assert_eq!(top(&counts, 1), [("the", 3)]);
}
"#,
    ),
    (
        "src/main.rs",
        r#"use std::io::Read;

fn main() {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).expect("reading stdin");
    let n = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(3);
    for (word, count) in tally::top(&tally::count_words(&text), n) {
        println!("{count} {word}");
    }
}
"#,
    ),
    (
        "tests/cli.rs",
        r#"use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn prints_the_most_frequent_words() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tally");
    child.stdin.take().unwrap().write_all(b"to be or not to be").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2 be\n2 to\n");
}
"#,
    ),
    ("tests/data/sample.txt", "The quick brown fox jumps over the lazy dog.\nThe end.\n"),
    ("README.md", "# tally\n\nCounts words in text.\n"),
    (".gitignore", "/target\n"),
];

/// A workspace as larger projects lay one out: members under `crates/`, test data shared at
/// the root, and cargo's target directory at the root (outside every package).
const WORKSPACE_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", "[workspace]\nmembers = [\"crates/*\"]\nresolver = \"2\"\n"),
    (".cargo/config.toml", CARGO_CONFIG),
    ("testdata/words.txt", "to be or not to be\n"),
    (
        "crates/wordcount/Cargo.toml",
        "[package]\nname = \"wordcount\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[[bin]]\nname = \"wc\"\npath = \"src/main.rs\"\n",
    ),
    (
        "crates/wordcount/src/main.rs",
        r#"fn main() {
    let path = std::env::args().nth(1).expect("a file to count");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    println!("{} words", text.split_whitespace().count());
}
"#,
    ),
    (
        "crates/wordcount/tests/cli.rs",
        r#"use std::{path::Path, process::Command};

#[test]
fn counts_the_shared_test_data() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/words.txt");
    let output = Command::new(env!("CARGO_BIN_EXE_wc")).arg(&data).output().expect("run wc");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "6 words\n");
}
"#,
    ),
];

/// The crate's `.cargo/config.toml`: the runner line, and nothing else.
const CARGO_CONFIG: &str = "\
[target.aarch64-unknown-linux-musl]
runner = \"kiln run --\"

[target.x86_64-unknown-linux-musl]
runner = \"kiln run --\"
";

/// A temp directory outside the repository holding the crate, a per-user cache with the
/// Debian packages in its download cache, and `kiln` on `PATH`.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-it-runner-").tempdir().expect("tempdir");
        let outside = Self { dir };
        assert!(!outside.krate().starts_with(crate::support::repo_root()), "the crate is outside the repository");
        for (path, text) in CRATE_FILES {
            let path = outside.krate().join(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        }
        fs::create_dir_all(outside.krate().join(".cargo")).expect("mkdir");
        fs::write(outside.krate().join(".cargo/config.toml"), CARGO_CONFIG).expect("write");
        // The packages, where a first `kiln run` would have downloaded them.
        let fetched = outside.cache().join("kiln/fetch");
        fs::create_dir_all(&fetched).expect("mkdir");
        for (_, file, sha256) in DEBS {
            let to = fetched.join(format!("sha256-{sha256}"));
            fs::hard_link(fixture(file), &to).or_else(|_| fs::copy(fixture(file), &to).map(drop)).expect("link");
        }
        // `kiln` on PATH, as `cargo install cargo-kiln` puts it there.
        fs::create_dir_all(outside.bin()).expect("mkdir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln-it"), outside.bin().join("kiln")).expect("symlink");
        outside
    }

    fn krate(&self) -> PathBuf {
        self.dir.path().join("tally")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// `program` in the crate, with kiln on `PATH` and the temp cache as the user's.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.bin()];
        paths.extend(std::env::split_paths(&path));
        let mut command = Command::new(program);
        command
            .current_dir(self.krate())
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("XDG_CACHE_HOME", self.cache())
            .env("KILN_ACCEL", "tcg")
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_STORE")
            .env_remove("CI")
            .env_remove("RUSTUP_TOOLCHAIN");
        command
    }

    /// `cargo test --target TRIPLE ARGS` in the crate; the aarch64 linker comes from the
    /// environment, as a user's shell profile would set it.
    fn cargo_test(&self, triple: &str, args: &[&str]) -> Output {
        let mut command = self.command(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .args(["test", "--target", triple])
            .args(args)
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld");
        command.output().expect("cargo runs")
    }
}

/// Paths under `dir`, relative, without cargo's `target/`.
fn files_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let relative = path.strip_prefix(root).expect("below root").display().to_string();
            if relative == "target" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_crate_with_only_the_runner_lines_runs_cargo_test_in_aarch64_and_x86_64_vms() {
    let outside = Outside::new();

    let green = outside.cargo_test("aarch64-unknown-linux-musl", &["--", "--nocapture"]);
    let (out, err) = (stdout_of(&green), stderr_of(&green));
    assert!(green.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    for test in [
        "tests::counts_repeated_words_in_any_case ... ok",
        "tests::top_breaks_ties_alphabetically ... ok",
        "tests::threads_work ... ok",
        "counts_the_sample_text ... ok",
        "prints_the_most_frequent_words ... ok",
        "src/lib.rs - count_words (line 7) ... ok",
    ] {
        assert!(out.contains(test), "{test}: {out}\nstderr:\n{err}");
    }
    // The Debian bookworm arm64 kernel the built-in guest pins, not the host's.
    assert!(out.contains("kernel 6.1.0-50-arm64"), "the tests ran in the built-in guest: {out}");

    // The built-in guest lives in the user's cache; nothing of kiln's lands in the crate.
    let runner = outside.cache().join("kiln/runner");
    assert!(runner.join("Kiln.toml").is_file(), "the built-in Kiln.toml is in the user's cache");
    assert!(runner.join("store/entries").is_dir(), "its store is beside it");
    let mut expected: Vec<String> = CRATE_FILES.iter().map(|(path, _)| (*path).to_owned()).collect();
    expected.extend([".cargo/config.toml".to_owned(), "Cargo.lock".to_owned()]);
    expected.sort();
    assert_eq!(files_in(&outside.krate()), expected, "only cargo's own files were added to the crate");

    // The failing test fails `cargo test`, for its own reason.
    let red = outside.cargo_test("aarch64-unknown-linux-musl", &["--features", "hyphens", "--lib"]);
    let (out, err) = (stdout_of(&red), stderr_of(&red));
    assert!(!red.status.success(), "a failing test fails cargo: {out}");
    assert!(out.contains("tests::hyphenated_words_count_once ... FAILED"), "{out}\nstderr:\n{err}");
    assert!(out.contains("counted: {\"a\": 1, \"fact\": 1, \"known\": 1, \"well\": 1}"), "{out}");
    assert!(out.contains("test result: FAILED. 5 passed; 1 failed"), "{out}");
    assert!(err.contains("error: test failed"), "{err}");
    assert!(!err.contains("did not finish in the"), "the guest itself was fine: {err}");

    // The same crate on x86_64 (its library's tests), on the built-in x86_64 guest.
    let x86 = outside.cargo_test("x86_64-unknown-linux-musl", &["--lib", "--", "--nocapture"]);
    let (out, err) = (stdout_of(&x86), stderr_of(&x86));
    assert!(x86.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("test result: ok. 5 passed"), "{out}");
    assert!(out.contains("kernel 6.1.0-50-cloud-amd64"), "the tests ran in the built-in x86_64 guest: {out}");

    // With -v kiln says which guest it used, and sizes it from the host.
    let lib_tests = fs::read_dir(outside.krate().join("target/aarch64-unknown-linux-musl/debug/deps"))
        .expect("deps")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("tally-") && !name.contains('.')
        })
        .expect("the lib's test binary");
    // `--pool 0`: a fresh guest, whose QEMU command line -v shows (the built-in guests are
    // pooled otherwise, and the pool's keeper starts QEMU out of sight).
    let listed = outside
        .command("kiln")
        .args(["-v", "run", "--pool", "0", "--"])
        .arg(&lib_tests)
        .arg("--list")
        .output()
        .expect("kiln");
    let (out, err) = (stdout_of(&listed), stderr_of(&listed));
    assert!(listed.status.success(), "{err}");
    assert!(out.contains("tests::threads_work: test"), "{out}");
    assert!(err.contains("kiln's built-in aarch64 guest"), "{err}");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from).min(4);
    assert!(err.contains(&format!("-smp {cpus} ")) && err.contains("-m 1024"), "sized from the host: {err}");

    // A workspace member's integration test reads the workspace's shared test data and runs
    // the member's binary from the workspace's target directory (outside the package), from
    // the pool and in a fresh guest.
    let workspace = outside.dir.path().join("workspace");
    for (path, text) in WORKSPACE_FILES {
        let path = workspace.join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    for runner in [None, Some("kiln run --pool 0 --")] {
        let mut command = outside.command(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .current_dir(&workspace)
            .args(["test", "--target", "aarch64-unknown-linux-musl"])
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld");
        if let Some(runner) = runner {
            command.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER", runner);
        }
        let tested = command.output().expect("cargo");
        let (out, err) = (stdout_of(&tested), stderr_of(&tested));
        assert!(tested.status.success(), "runner {runner:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(out.contains("counts_the_shared_test_data ... ok"), "runner {runner:?}: {out}");
    }
}

#[test]
fn a_program_without_a_builtin_guest_says_what_to_write() {
    let outside = Outside::new();
    // The header of a riscv64 Linux executable: enough for kiln to read its architecture.
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(64, 0);
    elf[16] = 2; // ET_EXEC
    elf[18] = 243; // EM_RISCV
    elf[20] = 1; // EV_CURRENT
    elf[52] = 64; // e_ehsize
    elf[54] = 56; // e_phentsize
    elf[58] = 64; // e_shentsize
    let program = outside.dir.path().join("riscv-program");
    fs::write(&program, elf).expect("write");
    let output = outside.command("kiln").args(["run", "--"]).arg(&program).output().expect("kiln");
    let err = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("kiln has no built-in riscv64 guest (it has x86_64 and aarch64 guests)"), "{err}");
    assert!(err.contains("point KILN_CONFIG at it"), "{err}");

    // KILN_CONFIG naming a file that is not there is an error naming the variable.
    let output = outside
        .command("kiln")
        .args(["run", "--"])
        .arg(&program)
        .env("KILN_CONFIG", "elsewhere/Kiln.toml")
        .output()
        .expect("kiln");
    let err = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("KILN_CONFIG names `"), "{err}");
    assert!(err.contains("elsewhere/Kiln.toml"), "{err}");

    // `test` keeps needing a project.
    let output = outside.command("kiln").arg("test").output().expect("kiln");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("no Kiln.toml in this directory or any parent"), "{}", stderr_of(&output));
}
