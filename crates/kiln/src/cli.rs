//! The command line, declared once with clap's derive API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_types::Arch;

const TEST_AFTER_HELP: &str = "\
Examples:
  cargo xtask test                      every case on every machine it names
  cargo xtask test smoke                one case
  cargo xtask test 'tests[basic_boot]'  one test binary of a `kind = \"tests\"` case
  cargo xtask test --test basic_boot    that test binary in every case that has it
  cargo xtask test --arch riscv64,x86_64  only these architectures
  cargo xtask -v test                   also show QEMU command lines and closure hashes

A case passes when QEMU exits with the exit device's success status (x86_64 33, aarch64
and riscv64 0) and its `success` pattern, if set, appeared; a `failure` line fails it at
once. A `kind = \"tests\"` artifact boots each test binary of `cargo test --no-run` as
`CASE[TEST]`, TEST its cargo-nextest binary id (`pkg` for the library's unit tests,
`pkg::bin/NAME`, `pkg::NAME` for tests/NAME.rs). Serial logs:
target/kiln/logs/CASE.MACHINE.log (CASE[TEST].MACHINE.log, `::` and `/` written `.`)

Exit codes:
  0  every case passed (or failed as expected)
  1  a case failed (or passed when expected to fail), or a build failed
  2  usage or Kiln.toml error
  3  infrastructure error (QEMU or firmware missing, store unwritable, ...)";

const AFTER_HELP: &str = "\
Examples:
  cargo xtask test                      build, boot and judge every case on every arch
  cargo xtask test --arch riscv64 smoke one case on one arch
  cargo xtask build                     build every artifact (cached by closure hash)
  cargo xtask qemu smoke --arch aarch64 boot a case with the console attached (Ctrl-A X quits)
  cargo xtask config                    print the resolved Kiln.toml
  cargo xtask bench                     kiln's profiles against naive QEMU command lines
  cargo xtask store why hello --arch riscv64   why an artifact would rebuild

Exit codes:
  0  everything passed
  1  a case failed (or passed when expected to fail), or a build failed
  2  usage or Kiln.toml error
  3  infrastructure error (QEMU or firmware missing, store unwritable, ...)";

/// kiln: build for many architectures, boot in QEMU, judge, and cache it all by closure hash.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to Kiln.toml (default: KILN_CONFIG, else found in the current directory or a parent;
    /// `run` and `vm` fall back to kiln's built-in guests).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Say more (QEMU command lines, closure hashes).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Say less: errors and the summary only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// How many guests boot at once (default: the number of CPUs).
    #[arg(short, long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Install missing host packages and rustup targets without asking (implied by CI=true).
    #[arg(short, long, global = true)]
    pub yes: bool,
    /// Push every entry the command builds or uses to the remote stores, in the background
    /// (needs KILN_SIGNING_KEY or KILN_SIGNING_KEY_FILE).
    #[arg(long, global = true, env = crate::env::KILN_PUSH, value_parser = clap::builder::FalseyValueParser::new())]
    pub push: bool,
    /// Accelerator: `auto` probes whether KVM really works (env: KILN_ACCEL).
    #[arg(long, global = true, value_enum, env = crate::env::KILN_ACCEL, default_value = "auto")]
    pub accel: AccelArg,
    /// `json` (for `test` and `build`): one JSON event per line on stdout (docs/events.md);
    /// what people read stays on stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value = "human")]
    pub message_format: MessageFormat,
}

/// `--message-format`, spelled as cargo and cargo-nextest spell it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum MessageFormat {
    /// Status lines, serial output and the summary table, for people (on stderr; `build`'s
    /// paths on stdout).
    #[default]
    Human,
    /// The event stream: one JSON object per line on stdout, each with `format-version` and
    /// `type` (build-started, build-finished, boot-started, serial-line, verdict, summary, ...).
    Json,
}

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// Probe: KVM only when a guest really runs well under it.
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG (software emulation).
    Tcg,
}

/// kiln's commands; flatten this into your own xtask's `Subcommand` to add verbs beside them.
// This comment is for developers: it must not become the `--help` of a user's xtask.
#[derive(Debug, Subcommand)]
#[command(about = None, long_about = None)]
#[non_exhaustive]
pub enum Command {
    /// Build artifacts through the store; prints each binary's path on stdout.
    Build(BuildArgs),
    /// Build, boot and judge test cases; ends with a summary table.
    #[command(after_help = TEST_AFTER_HELP)]
    Test(TestArgs),
    /// Boot one case with the serial console attached (Ctrl-A X quits, Ctrl-A C: monitor).
    Qemu(QemuArgs),
    /// Benchmarks side by side: boots against naive QEMU command lines; hashing, rehash and
    /// export+import against b3sum, git status and tar+zstd.
    Bench(BenchArgs),
    /// Print the resolved configuration (defaults applied) on stdout.
    Config(ConfigArgs),
    /// Install what kiln's own tests need, then run the workspace's tests.
    Selftest(SelftestArgs),
    /// Inspect and maintain the store: ls, path, why, verify, gc, pin, export, import, key,
    /// and its remotes: push, pull, keygen.
    Store(StoreArgs),
    /// List what is left before `test` can pass: Kiln.toml TODOs and missing host tools.
    Doctor,
    /// Run a program inside a Linux VM of its architecture (a cargo target runner).
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Build and inspect rootfs images: build, ls, show, path, diff.
    Rootfs(RootfsArgs),
    /// Warm Linux guests kept running: start, exec, shell, sync, stop, ls.
    Vm(VmArgs),
    /// Publish `[release]`'s artifacts and images as a GitHub release (needs GITHUB_TOKEN).
    Release(ReleaseArgs),
    /// CI maintenance: `prune-caches` (needs GITHUB_TOKEN).
    Ci(CiArgs),
    /// Work with the reports of finished runs: `merge` the JUnit files of a partitioned run.
    Report(ReportArgs),
}

/// `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The report command.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// `report` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum ReportCommand {
    /// Merge the JUnit files of a run spread over jobs (`test --partition`) into the file one
    /// unpartitioned run writes; exits 1 when a merged case failed.
    Merge {
        /// The jobs' JUnit files.
        #[arg(required = true, value_name = "JUNIT")]
        files: Vec<PathBuf>,
        /// Write the merged file here (default: stdout).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

/// `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The release's tag (created with the release when missing).
    #[arg(long)]
    pub tag: String,
    /// Make (or keep) the release a draft.
    #[arg(long)]
    pub draft: bool,
    /// Print what would be uploaded, replaced and kept; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only build and write the release's files (assets, checksums, provenance) into DIR;
    /// publish them later with `--publish DIR`. Needs no token.
    #[arg(long, value_name = "DIR", conflicts_with = "publish")]
    pub out: Option<PathBuf>,
    /// Publish the files an earlier `--out DIR` wrote (checked against its SHA256SUMS);
    /// builds nothing.
    #[arg(long, value_name = "DIR")]
    pub publish: Option<PathBuf>,
    /// Take what the store holds instead of building every asset from source in an empty
    /// store (the default: a cached or restored store is not trusted for a release).
    #[arg(long, conflicts_with = "publish")]
    pub from_cache: bool,
    /// Fail unless every asset built from source has the output hash of the store's entry
    /// for the same closure (the store must hold them: run `build` or `test` first).
    #[arg(long, conflicts_with_all = ["publish", "from_cache"])]
    pub verify_reproducible: bool,
}

/// `ci`.
#[derive(Debug, Args)]
pub struct CiArgs {
    /// The ci command.
    #[command(subcommand)]
    pub command: CiCommand,
}

/// `ci` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum CiCommand {
    /// Delete the repository's kiln caches that no run will restore: those of closed pull
    /// requests, and all but the newest N per branch and key family.
    PruneCaches {
        /// How many to keep per branch and family.
        #[arg(long, default_value_t = 1)]
        keep: usize,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// The action's `cache-prefix`.
        #[arg(long, default_value = "kiln")]
        prefix: String,
        /// `owner/name` (default: `[release] repository`, else GITHUB_REPOSITORY).
        #[arg(long)]
        repository: Option<String>,
        /// Delete only the caches of this pull request (`refs/pull/N/merge`), whatever its
        /// state: for a workflow triggered when a pull request closes.
        #[arg(long, value_name = "N")]
        pr: Option<u64>,
    },
}

const RUN_AFTER_HELP: &str = "\
As cargo's runner, in .cargo/config.toml (`cargo kiln init --runner` writes it):
  [target.aarch64-unknown-linux-musl]
  runner = \"kiln run --\"
  linker = \"rust-lld\"
then `cargo test --target aarch64-unknown-linux-musl` runs every test binary in an aarch64 VM.
(In a repository with a kiln xtask: runner = [\"cargo\", \"xtask\", \"run\", \"--\"].)

The guest: `--config`, else the Kiln.toml KILN_CONFIG names, else the nearest Kiln.toml's `[run]`,
else kiln's built-in x86_64 and aarch64 guests (Debian's kernel and busybox, pinned by hash,
fetched once into ~/.cache/kiln/runner), which run programs through a pool by default (`--pool
auto`; `--pool 0` boots a fresh guest). The built-in Linux machines get min(host CPUs, 4) CPUs
and 1 GiB unless `[machine.linux-ARCH]` sets `smp` or `memory`.

The package directory (CARGO_MANIFEST_DIR, else the current directory; for a member of a cargo
workspace, the whole workspace up to 10,000 entries) appears at the same path, ignored files
included, writable, and nothing written there reaches the host (an overlay over a read-only
share), and so does what the program needs of cargo's target directory: the program itself (it
runs from its host path), the executables beside it (CARGO_BIN_EXE_*), CARGO_TARGET_TMPDIR and
the build script's OUT_DIR. A warm guest (--snapshot, --pool) gets a linked copy of at most
10,000 entries per directory (files .gitignore excludes count; .git/ and target directories do
not); a run that needs more boots a fresh guest, which shares the directory whole. The program
gets the host's environment less PATH, HOME, SHELL,
TMPDIR, LD_*, XDG_*, SSH_* and the like (the guest has its own) and cargo's runner variable;
`[run] env` passes a withheld one all the same. Its exit status is kiln's (a death by signal is re-raised); kiln's own failures (the guest did not
finish) exit 3. The run ends when the program ends: what it left running is killed, and what a
daemon that left its session writes afterwards is not waited for.";

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The guest architecture (default: read from the program's ELF header).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// The `[kernel.NAME]` to boot (default: `[run] kernel`, or the only one).
    #[arg(long)]
    pub kernel: Option<String>,
    /// The `[rootfs.NAME]` to boot (default: `[run] rootfs`, or the only initramfs).
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Hard timeout (default: `[run] timeout`, 10 minutes).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Restore a booted snapshot (kept in the store) instead of booting, a fresh machine for
    /// every run with its clock set to the host's: the program and the package directory
    /// reach it through a 9p inbox share (or kiln's guest agent, for a few small files).
    #[arg(long)]
    pub snapshot: bool,
    /// Keep N restored guests idle and ready (implies `--snapshot`): a background keeper
    /// restores and warms them; each run takes one, which is then renewed for a later run
    /// (every process killed, a fresh root, fresh IPC and host-name namespaces). `auto` (or
    /// `--pool` alone): one per job (`-j`, by default the host's CPUs); 0: no pool.
    #[arg(long, value_name = "N|auto", num_args = 0..=1, default_missing_value = "auto")]
    pub pool: Option<kiln_types::PoolSize>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    pub command: Vec<String>,
}

/// `vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// The vm command.
    #[command(subcommand)]
    pub command: VmCommand,
}

/// `vm` subcommands. A session is one guest restored from the booted snapshot and kept
/// running, whose state `exec`, `shell` and `sync` share; it ends with `stop` or when its
/// owner (by default the shell that ran `vm start`) exits.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum VmCommand {
    /// Start a session's guest in the background.
    Start {
        /// The session's name.
        #[arg(short, long, default_value = "default")]
        name: String,
        /// The guest architecture (default: the host's).
        #[arg(long)]
        arch: Option<Arch>,
        /// The `[kernel.NAME]` to boot (default: `[run] kernel`, or the only one).
        #[arg(long)]
        kernel: Option<String>,
        /// The `[rootfs.NAME]` to boot (default: `[run] rootfs`, or the only initramfs).
        #[arg(long)]
        rootfs: Option<String>,
        /// The process whose exit ends the session (default: the shell that ran kiln).
        #[arg(long, value_name = "PID")]
        owner: Option<u32>,
    },
    /// Run a command in the session's guest (in the current directory's path there).
    Exec {
        /// The session's name.
        #[arg(short, long, default_value = "default")]
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND ARGS")]
        command: Vec<String>,
    },
    /// A shell in the session's guest, fed line by line from standard input.
    Shell {
        /// The session's name.
        #[arg(short, long, default_value = "default")]
        name: String,
    },
    /// Make a directory in the guest (same path) match the host's: changed files are put,
    /// files deleted on the host since the last sync are removed.
    Sync {
        /// The session's name.
        #[arg(short, long, default_value = "default")]
        name: String,
        /// The directory (default: the one holding Kiln.toml).
        dir: Option<PathBuf>,
    },
    /// Stop a session: its guest is killed.
    Stop {
        /// The session's name.
        #[arg(short, long, default_value = "default")]
        name: String,
        /// Stop this project's run pools (`run --pool`) instead, with their idle guests (outside
        /// any project: the built-in runner guests' pools).
        #[arg(long, conflicts_with = "name")]
        pools: bool,
    },
    /// List the running sessions and run pools (inside a project, also the built-in runner
    /// guests' pools, marked).
    Ls,
    /// The keeper process behind a session or a run pool (started by kiln).
    #[command(hide = true)]
    #[doc(hidden)]
    Keep {
        /// What to keep, as the kiln that started the keeper wrote it (JSON).
        #[arg(long)]
        spec: String,
    },
}

/// `rootfs`.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// The rootfs command.
    #[command(subcommand)]
    pub command: RootfsCommand,
}

/// `rootfs` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum RootfsCommand {
    /// Build rootfs images through the store (default: all, on every arch).
    Build {
        /// Only these rootfs recipes.
        names: Vec<String>,
        /// Only these architectures.
        #[arg(long, value_delimiter = ',')]
        arch: Vec<Arch>,
    },
    /// List the rootfs recipes with their arches, formats, closures and whether they are built.
    Ls,
    /// List the files of a built rootfs: mode, size, path (and link targets).
    Show(RootfsArg),
    /// Print the path of a rootfs image in the store (built first when missing).
    Path(RootfsArg),
    /// Compare two rootfs images: files added, removed and changed, with sizes.
    Diff {
        /// The first rootfs.
        a: String,
        /// The second rootfs.
        b: String,
        /// The architecture (default: the first both are built for).
        #[arg(long)]
        arch: Option<Arch>,
    },
}

/// A rootfs on one architecture.
#[derive(Debug, Args)]
pub struct RootfsArg {
    /// The rootfs's name in Kiln.toml.
    pub name: String,
    /// The architecture (default: the first it is built for).
    #[arg(long)]
    pub arch: Option<Arch>,
}

/// The standalone `cargo kiln` command line: kiln's commands plus `init`.
#[derive(Debug, Parser)]
#[command(name = "cargo kiln", bin_name = "cargo kiln", version, after_help = KILN_AFTER_HELP, max_term_width = 100)]
pub struct StandaloneCli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Run this cargo-kiln even where the repository's own xtask depends on kiln.
    #[arg(long, global = true)]
    pub no_delegate: bool,
    /// The command.
    #[command(subcommand)]
    pub command: StandaloneCommand,
}

const KILN_AFTER_HELP: &str = "\
Adopting kiln in a repository:
  cargo kiln init       writes xtask/, the `cargo xtask` alias, a commented Kiln.toml, a workflow
  cargo kiln doctor     lists the TODOs init left and the host tools still missing
  cargo xtask test      from then on, through the repository's own xtask

Inside a repository whose xtask depends on kiln, `cargo kiln` hands over to `cargo xtask`,
so one version of kiln acts on the project (`--no-delegate` overrides).";

/// `cargo kiln` commands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum StandaloneCommand {
    /// Adopt kiln in this repository (never overwrites a file); `--runner`: only make kiln
    /// cargo's target runner for a crate.
    Init(InitArgs),
    /// kiln's commands.
    #[command(flatten)]
    Kiln(Command),
}

/// Options of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The repository to adopt kiln in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print what would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Depend on kiln at this path instead of the crates.io release (for kiln's own tests
    /// and for trying an unreleased kiln).
    #[arg(long, value_name = "PATH")]
    pub kiln_path: Option<PathBuf>,
    /// Only make kiln cargo's target runner: add `runner = "kiln run --"` for the Linux musl
    /// targets to the crate's .cargo/config.toml (kept as it is otherwise), so `cargo test
    /// --target aarch64-unknown-linux-musl` runs in a VM on kiln's built-in guest. No xtask,
    /// no Kiln.toml, no workspace change.
    #[arg(long, conflicts_with = "kiln_path")]
    pub runner: bool,
}

/// `store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store command.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// An artifact on one or all of its architectures.
#[derive(Debug, Args)]
pub struct ArtifactArg {
    /// The artifact's name in Kiln.toml.
    pub name: String,
    /// The architecture (default: every arch the artifact is built for).
    #[arg(long)]
    pub arch: Option<Arch>,
}

/// Which command a CI cache key (or a `gc`) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyFor {
    /// `cargo xtask test`: the artifacts its cases boot.
    Test,
    /// `cargo xtask build`: every artifact.
    Build,
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum StoreCommand {
    /// List entries: name, closure, size, age, last use.
    Ls,
    /// Print the path of an artifact's binary in the store (built by `cargo xtask build`).
    Path(ArtifactArg),
    /// Show an artifact's closure inputs, and what changed since its previous build.
    Why(ArtifactArg),
    /// Rehash every entry against its recorded output hash; exit 1 when one is corrupt.
    Verify {
        /// Remove corrupt entries, so the next build makes them again.
        #[arg(long)]
        repair: bool,
    },
    /// Remove entries that the current Kiln.toml does not need and that are not pinned.
    Gc {
        /// Keep only what this command needs (default: everything Kiln.toml declares); CI
        /// trims its cache to the command it runs.
        #[arg(long = "for", value_enum)]
        command: Option<KeyFor>,
        /// With `--for`: only these architectures.
        #[arg(long, value_delimiter = ',', requires = "command")]
        arch: Vec<Arch>,
        /// Also keep entries used within this many days.
        #[arg(long, value_name = "N")]
        keep_days: Option<u32>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep an artifact's current entries through `gc`.
    Pin(ArtifactArg),
    /// Undo `pin`.
    Unpin(ArtifactArg),
    /// Write entries to one zstd-compressed archive (default: everything Kiln.toml builds).
    Export {
        /// The archive to write.
        file: PathBuf,
        /// Only these artifacts.
        #[arg(long = "artifact", value_name = "NAME")]
        artifacts: Vec<String>,
    },
    /// Verify and add the entries of an archive made by `store export`.
    Import {
        /// The archive to read.
        file: PathBuf,
    },
    /// Upload entries to the remote stores, signed (default: every entry Kiln.toml declares
    /// that the store holds, with the agents and snapshots of its Linux guests).
    Push {
        /// Only these artifacts, kernels, rootfs images or fetches (`NAME` or `NAME-ARCH`).
        names: Vec<String>,
        /// Only this remote (default: every remote).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Upload every blob and manifest again, even those the remote has (mends a remote
        /// whose objects were lost or damaged).
        #[arg(long)]
        repair: bool,
    },
    /// Download entries from the remote stores, verified, without building anything
    /// (default: every entry Kiln.toml declares).
    Pull {
        /// Only these artifacts, kernels, rootfs images or fetches (`NAME` or `NAME-ARCH`).
        names: Vec<String>,
    },
    /// Make an ed25519 key pair for signing entries: writes the secret key to a new file and
    /// prints the public key for `[store] trusted-keys`.
    Keygen {
        /// The key's name, carried by every signature (e.g. `ci-1` or your host name).
        #[arg(long)]
        name: String,
        /// The file for the secret key (created with mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a CI cache key (`key=`), its restore-key prefix (`restore-keys=`), and the store
    /// and log directories (`store=`, `logs=`) for a command, ready for `$GITHUB_OUTPUT`.
    Key {
        /// The command whose inputs the key covers.
        #[arg(long = "for", value_enum, default_value = "test")]
        command: KeyFor,
        /// Only these architectures (the command's `--arch`).
        #[arg(long, value_delimiter = ',')]
        arch: Vec<Arch>,
    },
}

/// `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Only these architectures.
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// Say why each build that runs is needed: which inputs changed since the last one.
    #[arg(long)]
    pub explain: bool,
}

/// `test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only these cases (default: all); `CASE[TEST]` runs one test binary of a case whose
    /// artifact has `kind = "tests"` (by its id, such as `tinyos::basic_boot`, or a short
    /// form: `basic_boot`, `bin/tinyos`).
    #[arg(value_name = "CASE")]
    pub cases: Vec<String>,
    /// Only these test binaries, in every case of a `kind = "tests"` artifact (an id or a short
    /// form; comma-separated or repeated).
    #[arg(long = "test", value_name = "TEST", value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Write a JUnit XML report here (in CI: `target/kiln/junit.xml` unless given).
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Only these architectures (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// Only one shard of the selected case runs (`case/machine`), for spreading them over
    /// several CI jobs, written as cargo-nextest's: `count:K/N` deals the runs out in name
    /// order; `hash:K/N` keeps each run in its shard whatever cases are added. The test
    /// binaries of one `kind = "tests"` case run stay together.
    #[arg(long, value_name = "KIND:K/N")]
    pub partition: Option<kiln_types::Partition>,
    /// Boot a run again, up to N more times, when its machine failed rather than its guest
    /// (QEMU killed by a signal from outside, a guest that could not start or be restored);
    /// a run green after a failed attempt is reported flaky.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// With `--retries`: retry a guest's own failure (a panic, a bad exit status) too.
    #[arg(long, requires = "retries")]
    pub retry_guest_failures: bool,
}

/// `qemu`.
#[derive(Debug, Args)]
pub struct QemuArgs {
    /// The case to boot (default: the only case, or the first one expected to pass);
    /// `CASE[TEST]` boots one test binary of a `kind = "tests"` case.
    pub case: Option<String>,
    /// The architecture (needed when the case runs on several).
    #[arg(long)]
    pub arch: Option<Arch>,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Boots per measurement; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,
    /// The case whose kernel is booted (default: the first case expected to pass).
    #[arg(long)]
    pub case: Option<String>,
    /// Only these architectures.
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// Which benchmarks: `boot` (per-arch boot-to-verdict, warm-run overhead), `linux`
    /// (rootfs build, Linux boot-to-command, `run` per invocation), `store` (hashing a
    /// generated 1 GiB tree, warm rehash, export + import), `warm` (snapshot restore
    /// against cold boot) and, when asked for, `runner` (`kiln run` as cargo's runner against
    /// qemu-user: a trivial program, 100 doctests, nextest of 300 tests), `remote` (1 GiB pushed and pulled through a remote store) and
    /// `compile` (cold builds of the xtask `init` writes, default and all features).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchSuite::Boot, BenchSuite::Linux, BenchSuite::Store, BenchSuite::Warm])]
    pub suite: Vec<BenchSuite>,
    /// The remote store `--suite remote` pushes to and pulls from (it writes entries there;
    /// default: a temporary `file://` directory).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
}

/// A group of benchmark rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchSuite {
    /// Boot-to-verdict per arch against naive QEMU command lines; warm-run overhead.
    Boot,
    /// Tree hashing against b3sum, warm rehash, export + import against tar + zstd.
    Store,
    /// Linux guests: rootfs build against `find | cpio | gzip`, boot-to-command against a
    /// naive command line, and the cost of one `run`.
    Linux,
    /// Warm guests: a snapshot's restore against a cold boot, to the agent's answer.
    Warm,
    /// `kiln run` as cargo's target runner against user-mode QEMU (installed when missing):
    /// a trivial program pooled, from a snapshot and cold; `cargo test` of 100 doctests and 10
    /// test binaries through the pool and through snapshots; `cargo nextest run` of 300 tests
    /// through a pool sized from `-j`.
    Runner,
    /// Remote stores: 1 GiB pushed (first time, unchanged, one file changed) and pulled,
    /// against one plain copy per file (needs the `remote` feature).
    Remote,
    /// The cold build of the xtask `init` writes, with default and with all features:
    /// seconds and crates compiled (kiln's own repository only: it builds against its sources).
    Compile,
}

/// `config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {}

/// `selftest`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// Extra arguments for `cargo test`.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}
