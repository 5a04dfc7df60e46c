//! A temp copy of the bundled example and helpers to run kiln on it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use kiln::{
    clap::Parser,
    xtask::{Built, Cli, Command, Cx, RunSummary},
};

/// The kiln repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// A temp directory holding a copy of `examples/` and a Kiln.toml.
pub struct Project {
    dir: tempfile::TempDir,
}

/// Copies the directory tree `from` to `to`, leaving out `target/`.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

impl Project {
    /// Copies the bundled example and writes `kiln_toml` beside it.
    pub fn example(kiln_toml: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-it-").tempdir().expect("tempdir");
        copy_tree(&repo_root().join("examples"), &dir.path().join("examples"));
        fs::write(dir.path().join("Kiln.toml"), kiln_toml).expect("write Kiln.toml");
        Self { dir }
    }

    /// A temp copy of a directory (a fixture repository), without its `target/`.
    pub fn copy_of(dir: &Path) -> Self {
        let temp = tempfile::Builder::new().prefix("kiln-it-").tempdir().expect("tempdir");
        copy_tree(dir, temp.path());
        // A fixture's xtask finds kiln by a path relative to its place in this repository.
        let xtask = temp.path().join("xtask/Cargo.toml");
        if let Ok(manifest) = fs::read_to_string(&xtask) {
            let absolute = repo_root().join("crates/kiln").display().to_string();
            fs::write(&xtask, manifest.replace("../../../../crates/kiln", &absolute)).expect("rewrite xtask");
        }
        Self { dir: temp }
    }

    /// `cargo kiln ARGS` run inside the project directory.
    pub fn command_in_dir(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-it"));
        command.args(args).current_dir(self.path()).env_remove("CI");
        command
    }

    /// Runs `cargo kiln init` with this repository's kiln (`--kiln-path`), asserts that it
    /// succeeded, and returns the Kiln.toml it wrote.
    pub fn init_with_this_kiln(&self) -> String {
        let kiln_path = repo_root().join("crates/kiln");
        let init = self
            .command_in_dir(&["init", "--kiln-path", kiln_path.to_str().expect("utf-8")])
            .output()
            .expect("init runs");
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        fs::read_to_string(self.path().join("Kiln.toml")).expect("init wrote Kiln.toml")
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut full = vec!["kiln".to_owned(), "--config".to_owned()];
        full.push(self.path().join("Kiln.toml").display().to_string());
        full.extend(args.iter().map(|a| (*a).to_owned()));
        full
    }

    /// kiln's command line as a child process, on this project.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-it"));
        command.args(&self.args(args)[1..]);
        command
    }

    /// Runs a kiln command line in-process and returns its exit code.
    pub fn kiln(&self, args: &[&str]) -> u8 {
        kiln::testing::run_args_to_code(self.args(args))
    }

    /// A command context, as the CLI would build it for `args`.
    pub fn cx(&self, args: &[&str]) -> Cx {
        let mut full = self.args(args);
        full.push("config".to_owned());
        let cli = Cli::try_parse_from(full).expect("valid command line");
        Cx::from_args(&cli.global).expect("context")
    }

    /// Runs `test` with the given arguments through the library and returns the summary.
    pub fn test(&self, args: &[&str]) -> RunSummary {
        let mut full = self.args(&[]);
        full.push("test".to_owned());
        full.extend(args.iter().map(|a| (*a).to_owned()));
        let cli = Cli::try_parse_from(full).expect("valid command line");
        let cx = Cx::from_args(&cli.global).expect("context");
        let Command::Test(test_args) = cli.command else { unreachable!("parsed `test`") };
        cx.test(&test_args).expect("test ran")
    }

    /// Builds every artifact and returns what each build did.
    pub fn build(&self) -> Vec<Built> {
        self.cx(&["-q"]).build(&[], &[]).expect("build")
    }

    /// Appends a line to a file of the example.
    pub fn touch_source(&self, relative: &str, line: &str) {
        let path = self.path().join(relative);
        let mut text = fs::read_to_string(&path).expect("read source");
        text.push_str(line);
        text.push('\n');
        fs::write(&path, text).expect("write source");
    }

    /// PIDs of QEMU processes whose command line mentions this project.
    pub fn live_qemu_pids(&self) -> Vec<u32> {
        qemu_pids_mentioning(self.path())
    }
}

/// PIDs of QEMU processes whose command line mentions `dir`.
pub fn qemu_pids_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}
