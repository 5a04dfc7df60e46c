//! Cargo builds as derivations: their closure hash, and the build that fills the entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::cargo_json::{DependencyKind, Message, Metadata, PackageId};
use anyhow::{Context, bail};
use kiln_store::{Derivation, Entry, InputHash, SourceSet, StatCache, hash_file, hash_source_set};

use super::tool::{tool_command, user_chose_toolchain};
use crate::{
    config::{ArtifactKind, ImageFormat},
    env,
    plan::{BuildStep, TestBinary, check_test_binaries},
};

/// Bumped whenever the way kiln builds cargo artifacts changes their output.
/// 2: test binaries are stored under their binary ids, listed in [`TEST_BINARIES_FILE`].
const BUILDER_VERSION: &str = "kiln-cargo-build-2";

/// The list of a `kind = "tests"` entry's binaries (id, kind, target, file), as JSON.
const TEST_BINARIES_FILE: &str = "test-binaries.json";

/// Facts about the host toolchain for one package directory.
#[derive(Clone, Debug)]
pub(crate) struct CargoHost {
    /// `rustc -vV` as run in the package directory (so rust-toolchain files apply).
    pub rustc_version: String,
}

impl CargoHost {
    /// Asks the toolchain that cargo would use in `dir`.
    pub(crate) fn probe(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self { rustc_version: super::tool::rustc_version(dir)? })
    }
}

/// The local (path) packages `root` depends on for `triple`, itself included; dev-only
/// dependencies are left out unless `with_dev` (test builds use the root's dev-dependencies).
fn local_closure(metadata: &Metadata, root: &PackageId, with_dev: bool) -> Vec<PackageId> {
    let Some(resolve) = &metadata.resolve else {
        return vec![root.clone()];
    };
    let nodes: BTreeMap<_, _> = resolve.nodes.iter().map(|n| (&n.id, n)).collect();
    let is_local: BTreeSet<_> = metadata.packages.iter().filter(|p| p.source.is_none()).map(|p| &p.id).collect();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !is_local.contains(id) || !seen.insert(id.clone()) {
            continue;
        }
        if let Some(node) = nodes.get(id) {
            for dep in &node.deps {
                let runtime = dep.dep_kinds.iter().any(|k| k.kind != DependencyKind::Development);
                let is_root = *id == *root;
                if runtime || (with_dev && is_root) {
                    stack.push(&dep.pkg);
                }
            }
        }
    }
    seen.into_iter().collect()
}

/// Computes the derivation of a build step: its settings and the hash of every input.
/// `metadata` is `cargo metadata` for the step's directory and triple.
pub(crate) fn derivation_for(
    step: &BuildStep,
    host: &CargoHost,
    metadata: &Metadata,
    command_steps: &BTreeMap<String, (kiln_store::ClosureHash, Vec<PathBuf>)>,
    stat_cache: &StatCache,
) -> anyhow::Result<Derivation> {
    let artifact = &step.artifact;
    let workspace_root = metadata.workspace_root.clone();
    let package =
        metadata.packages.iter().find(|p| p.name.as_str() == artifact.package && p.source.is_none()).with_context(
            || {
                format!(
                    "artifact `{}`: no local package named `{}` in the cargo workspace at `{}`",
                    artifact.name,
                    artifact.package,
                    workspace_root.display()
                )
            },
        )?;

    let mut drv = Derivation::new("cargo-build");
    drv.setting("builder", BUILDER_VERSION)
        .setting("package", &artifact.package)
        .setting("target", &step.triple)
        .setting("profile", &artifact.profile)
        .setting("features", artifact.features.join(","))
        .setting("no-default-features", artifact.no_default_features.to_string())
        .setting("bin", artifact.bin.clone().unwrap_or_default())
        .setting("kind", format!("{:?}", artifact.kind).to_lowercase())
        .setting("image", format!("{:?}", artifact.image.cargo_output()).to_lowercase())
        .setting("rustflags", artifact.rustflags.join("\u{1f}"));
    if let Some(crates) = &artifact.build_std {
        drv.setting("build-std", crates.join(","));
        drv.setting("build-std-features", artifact.build_std_features.join(","));
    }
    for (name, value) in &artifact.env {
        drv.setting(format!("env:{name}"), value);
    }
    drv.input("tool:rustc", InputHash::of_bytes(host.rustc_version.as_bytes()));
    // A step's closure stands for its outputs, which cargo reads from the working tree (and
    // which are left out of the package sources below).
    for command in &artifact.steps {
        let (closure, _) = command_steps
            .get(&command.name)
            .with_context(|| format!("{} needs step `{}`, which has no closure", step.key, command.name))?;
        drv.input(format!("step:{}", command.name), InputHash::of_closure(*closure));
    }
    if step.triple.ends_with(".json") {
        let spec = artifact.dir.join(&step.triple);
        let name = format!("file:{}", input_path_name(&spec, &step.project_root));
        drv.input(name, InputHash(*hash_file(&spec)?.as_bytes()));
    }

    let with_dev = artifact.kind == ArtifactKind::Tests;
    for id in local_closure(metadata, &package.id, with_dev) {
        let Some(local) = metadata.packages.iter().find(|p| p.id == id) else {
            continue;
        };
        let dir = local.manifest_path.parent().map(Path::to_owned).unwrap_or_default();
        let mut set = SourceSet::package_dir_within(&dir, &step.project_root)?;
        set.files.retain(|file| {
            let in_project = dir.join(file);
            let relative = in_project.strip_prefix(&step.project_root).unwrap_or(&in_project);
            !artifact.steps.iter().any(|command| command.produces(relative))
        });
        let name = format!("source:{}", input_path_name(&dir, &step.project_root));
        drv.input(name, hash_source_set(&set, stat_cache)?);
    }
    for file in build_config_files(&artifact.dir, &workspace_root) {
        let name = format!("file:{}", input_path_name(&file, &step.project_root));
        drv.input(name, InputHash(*hash_file(&file)?.as_bytes()));
    }
    for (name, value) in build_environment(&step.triple) {
        drv.input(format!("env:{name}"), InputHash::of_bytes(value.as_bytes()));
    }
    Ok(drv)
}

/// How a path is named in the closure: relative to the project root (the directory of
/// Kiln.toml) when inside it, so checkouts elsewhere hash the same; `$CARGO_HOME/...` for
/// cargo's home; else absolute.
fn input_path_name(path: &Path, project_root: &Path) -> String {
    if let Ok(rel) = path.strip_prefix(project_root) {
        return if rel.as_os_str().is_empty() { ".".to_owned() } else { rel.display().to_string() };
    }
    if let Some(home) = env::var_os(env::CARGO_HOME).map(PathBuf::from)
        && let Ok(rel) = path.strip_prefix(&home)
    {
        return format!("$CARGO_HOME/{}", rel.display());
    }
    path.display().to_string()
}

/// Files outside the packages' own sources that change the build: the lock file, the
/// workspace manifest (profiles), cargo config files and toolchain files.
fn build_config_files(dir: &Path, workspace_root: &Path) -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for name in ["Cargo.lock", "Cargo.toml"] {
        files.insert(workspace_root.join(name));
    }
    for ancestor in dir.ancestors() {
        for name in [".cargo/config.toml", ".cargo/config", "rust-toolchain.toml", "rust-toolchain"] {
            files.insert(ancestor.join(name));
        }
    }
    if let Some(home) = env::var_os(env::CARGO_HOME).map(PathBuf::from) {
        files.insert(home.join("config.toml"));
        files.insert(home.join("config"));
    }
    files.into_iter().filter(|f| f.is_file()).collect()
}

/// The environment variables set now that change what cargo builds for `triple`.
fn build_environment(triple: &str) -> BTreeMap<String, String> {
    let triple_key = triple.to_uppercase().replace(['-', '.'], "_");
    let user_toolchain = user_chose_toolchain();
    let prefixes: Vec<String> = env::BUILD_INPUT_PREFIXES.iter().map(|p| p.replace("{TRIPLE}", &triple_key)).collect();
    env::all()
        .filter(|(name, _)| {
            let listed = env::BUILD_INPUT_VARIABLES.contains(&name.as_str())
                || prefixes.iter().any(|prefix| name.starts_with(prefix.as_str()));
            let rustup_default = name == env::RUSTUP_TOOLCHAIN && !user_toolchain;
            let neutral = env::BUILD_NEUTRAL_VARIABLES.contains(&name.as_str())
                || env::BUILD_NEUTRAL_SUFFIXES.iter().any(|suffix| name.ends_with(suffix));
            listed && !rustup_default && !neutral
        })
        .collect()
}

/// A binary to boot, inside a store entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BootImage {
    /// The cargo target it was built from, or the test binary's id.
    pub name: String,
    /// Its path in the store.
    pub path: PathBuf,
    /// The test binary it is, for a `kind = "tests"` artifact.
    pub test: Option<TestBinary>,
}

/// One line of [`TEST_BINARIES_FILE`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredTestBinary {
    /// Who it is.
    #[serde(flatten)]
    binary: TestBinary,
    /// Its file in the entry's output (the raw image adds `.bin`).
    file: String,
}

/// The images of `format` in a store entry: a `kind = "tests"` entry's test binaries in the
/// order of its list, else every image, sorted by name.
pub(crate) fn images_in(entry: &Entry, format: ImageFormat, kind: ArtifactKind) -> anyhow::Result<Vec<BootImage>> {
    let out = entry.out_dir();
    let repair = "remove it with `cargo xtask store verify --repair` or `store gc`";
    if kind == ArtifactKind::Tests {
        let list = out.join(TEST_BINARIES_FILE);
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("store entry `{}` has no list of test binaries; {repair}", entry.closure))?;
        let stored: Vec<StoredTestBinary> = serde_json::from_str(&text).with_context(|| {
            format!("store entry `{}` has an unreadable `{TEST_BINARIES_FILE}`; {repair}", entry.closure)
        })?;
        return Ok(stored
            .into_iter()
            .map(|stored| {
                let file = match format {
                    ImageFormat::Raw => format!("{}.bin", stored.file),
                    ImageFormat::Elf | ImageFormat::Bootimage | ImageFormat::Bios | ImageFormat::Uefi => stored.file,
                };
                BootImage { name: stored.binary.id.clone(), path: out.join(file), test: Some(stored.binary) }
            })
            .collect());
    }
    let mut images = Vec::new();
    for file in
        std::fs::read_dir(&out).with_context(|| format!("store entry `{}` has no output directory", entry.closure))?
    {
        let path = file?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let wanted = match format {
            ImageFormat::Raw => file_name.strip_suffix(".bin"),
            ImageFormat::Elf | ImageFormat::Bootimage | ImageFormat::Bios | ImageFormat::Uefi => {
                (!file_name.ends_with(".bin")).then_some(file_name)
            }
        };
        if let Some(name) = wanted {
            images.push(BootImage { name: name.to_owned(), path: path.clone(), test: None });
        }
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    if images.is_empty() {
        bail!("store entry `{}` holds no {format:?} image; {repair}", entry.closure);
    }
    Ok(images)
}

/// The `rustflags` config keys cargo reads for `triple`, so extra flags are appended where
/// cargo will take them: `target.<triple>.rustflags` and every `target.'cfg(..)'.rustflags`
/// that matches the target (cargo joins these and then ignores `build.rustflags`), else
/// `build.rustflags`.
fn rustflags_keys(dir: &Path, workspace_root: &Path, triple: &str) -> Vec<Vec<String>> {
    let target_name = Path::new(triple).file_stem().map_or(triple.to_owned(), |s| s.to_string_lossy().into_owned());
    let mut cfgs: Option<Vec<cargo_platform::Cfg>> = None;
    let mut keys = Vec::new();
    for file in build_config_files(dir, workspace_root) {
        let is_cargo_config = file.parent().is_some_and(|p| p.ends_with(".cargo"));
        let Some(table) = is_cargo_config
            .then(|| std::fs::read_to_string(&file).ok())
            .flatten()
            .and_then(|text| text.parse::<toml::Table>().ok())
        else {
            continue;
        };
        let Some(targets) = table.get("target").and_then(|t| t.as_table()) else { continue };
        for (target, settings) in targets {
            if settings.get("rustflags").is_none() {
                continue;
            }
            let applies = if target.starts_with("cfg(") {
                let cfgs = cfgs.get_or_insert_with(|| target_cfgs(dir, triple));
                target.parse::<cargo_platform::Platform>().is_ok_and(|platform| platform.matches(&target_name, cfgs))
            } else {
                *target == target_name
            };
            let key = vec!["target".to_owned(), target.clone(), "rustflags".to_owned()];
            if applies && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        keys.push(vec!["build".to_owned(), "rustflags".to_owned()]);
    }
    keys
}

/// The `cfg` values rustc sets for `triple` (for matching `target.'cfg(..)'` tables).
fn target_cfgs(dir: &Path, triple: &str) -> Vec<cargo_platform::Cfg> {
    let Ok(output) = tool_command("rustc", dir).args(["--print", "cfg", "--target", triple]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.parse().ok()).collect()
}

/// `--config` arguments that append `flags` to the project's rustflags, or, when the user's
/// environment sets them (which replaces the config), the environment to set instead.
fn extra_rustflags(command: &mut Command, flags: &[String], dir: &Path, workspace_root: &Path, triple: &str) {
    if flags.is_empty() {
        return;
    }
    let from_env = env::var(env::CARGO_ENCODED_RUSTFLAGS)
        .map(|encoded| encoded.split('\u{1f}').filter(|f| !f.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .or_else(|| env::var(env::RUSTFLAGS).map(|flags| flags.split_whitespace().map(str::to_owned).collect()));
    if let Some(mut existing) = from_env {
        existing.extend(flags.iter().cloned());
        command.env_remove(env::RUSTFLAGS).env(env::CARGO_ENCODED_RUSTFLAGS, existing.join("\u{1f}"));
        return;
    }
    let value = toml::Value::Array(flags.iter().cloned().map(toml::Value::String).collect());
    for key in rustflags_keys(dir, workspace_root, triple) {
        let quoted: Vec<String> = key.iter().map(|segment| toml::Value::String(segment.clone()).to_string()).collect();
        command.arg("--config").arg(format!("{}={value}", quoted.join(".")));
    }
}

/// Removes what cargo built of the artifact's own package for this target and profile, so
/// the build that follows compiles and links it again. kiln builds only on a store miss: its
/// closure saw an input change, and it may be one cargo does not track (a linker script or
/// other file named in rustflags), after which cargo would call the old binary fresh.
fn forget_own_package(step: &BuildStep) -> anyhow::Result<()> {
    let artifact = &step.artifact;
    let output = tool_command("cargo", &artifact.dir)
        .args([
            "clean",
            "--quiet",
            "--package",
            &artifact.package,
            "--target",
            &step.triple,
            "--profile",
            &artifact.profile,
        ])
        .envs(&artifact.env)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run cargo in `{}`; is cargo on PATH?", artifact.dir.display()))?;
    if !output.status.success() {
        bail!(
            "`cargo clean --package {}` before rebuilding {} failed: {}",
            artifact.package,
            step.key,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

pub(super) fn cargo_build(step: &BuildStep, out: &Path, quiet: bool) -> anyhow::Result<()> {
    let artifact = &step.artifact;
    forget_own_package(step)?;
    let mut command = tool_command("cargo", &artifact.dir);
    match artifact.kind {
        ArtifactKind::Bin => command.arg("build"),
        ArtifactKind::Tests => command.args(["test", "--no-run"]),
    };
    command.args(["--message-format", "json-render-diagnostics"]);
    command.args(["--package", &artifact.package, "--target", &step.triple, "--profile", &artifact.profile]);
    if let Some(bin) = &artifact.bin {
        command.args(["--bin", bin]);
    }
    if !artifact.features.is_empty() {
        command.args(["--features", &artifact.features.join(",")]);
    }
    if artifact.no_default_features {
        command.arg("--no-default-features");
    }
    if let Some(crates) = &artifact.build_std {
        command.arg(format!("-Zbuild-std={}", crates.join(",")));
        if !artifact.build_std_features.is_empty() {
            command.arg(format!("-Zbuild-std-features={}", artifact.build_std_features.join(",")));
        }
    }
    let workspace_root = workspace_root_of(&artifact.dir);
    extra_rustflags(&mut command, &artifact.rustflags, &artifact.dir, &workspace_root, &step.triple);
    command.envs(&artifact.env);
    if quiet {
        command.arg("--quiet");
    }
    command.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to run cargo in `{}`; is cargo on PATH?", artifact.dir.display()))?;
    let stdout = child.stdout.take().context("cargo's output was not captured")?;
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let message = message.context("failed to read cargo's JSON messages")?;
        if let Message::CompilerArtifact(built) = message
            && let Some(executable) = built.executable
        {
            let wanted = match artifact.kind {
                ArtifactKind::Bin => {
                    built.target.is_bin() && artifact.bin.as_ref().is_none_or(|bin| *bin == built.target.name)
                }
                ArtifactKind::Tests => built.profile.test,
            };
            if wanted {
                let kinds: Vec<String> = built.target.kind.iter().map(ToString::to_string).collect();
                let binary = TestBinary::new(&artifact.package, &kinds, &built.target.name);
                executables.push((binary, executable));
            }
        }
    }
    let status = child.wait().context("failed to wait for cargo")?;
    if !status.success() {
        let verb = if artifact.kind == ArtifactKind::Tests { "test --no-run" } else { "build" };
        let failed = format!("`cargo {verb}` for {} (target {}) failed with {status}", step.key, step.triple);
        let target_dir = workspace_root.join("target");
        if let Some(full) =
            super::space::full_file_system(&[(&target_dir, "cargo's target directory"), (out, "the store")])
        {
            return Err(anyhow::Error::new(full).context(failed));
        }
        bail!(failed);
    }
    match (artifact.kind, executables.as_slice()) {
        (_, []) => bail!(
            "cargo built no {} for {}; does `{}` have {}?",
            if artifact.kind == ArtifactKind::Tests { "test binary" } else { "binary" },
            step.key,
            artifact.package,
            if artifact.kind == ArtifactKind::Tests { "test targets (tests/*.rs)" } else { "a [[bin]] target" }
        ),
        (ArtifactKind::Bin, [(binary, executable)]) => {
            store_image(executable, &out.join(&binary.target), artifact.image)
        }
        (ArtifactKind::Bin, many) => bail!(
            "package `{}` has several binaries ({}); choose one with `bin = \"NAME\"` in `[artifact.{}]`",
            artifact.package,
            many.iter().map(|(binary, _)| binary.target.as_str()).collect::<Vec<_>>().join(", "),
            artifact.name
        ),
        (ArtifactKind::Tests, all) => store_test_binaries(all, out, artifact.image)
            .with_context(|| format!("cannot store the test binaries of {}", step.key)),
    }
}

/// Copies one executable into the store entry (and its raw image beside it).
fn store_image(executable: &Path, target: &Path, image: ImageFormat) -> anyhow::Result<()> {
    std::fs::copy(executable, target)
        .with_context(|| format!("failed to copy `{}` into the store", executable.display()))?;
    if image == ImageFormat::Raw {
        super::image::write_raw_beside(target)?;
    }
    Ok(())
}

/// Copies every test binary into the entry under its file-safe id, and lists them in
/// [`TEST_BINARIES_FILE`]; two binaries of one name are an error naming both.
fn store_test_binaries(all: &[(TestBinary, PathBuf)], out: &Path, image: ImageFormat) -> anyhow::Result<()> {
    let mut binaries: Vec<&(TestBinary, PathBuf)> = all.iter().collect();
    binaries.sort_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<TestBinary> = binaries.iter().map(|(binary, _)| binary.clone()).collect();
    check_test_binaries(&ids)
        .map_err(|collision| anyhow::anyhow!("{collision}; kiln boots each under its own name"))?;
    let mut stored = Vec::new();
    for (binary, executable) in binaries {
        let file = binary.file_name();
        store_image(executable, &out.join(&file), image)?;
        stored.push(StoredTestBinary { binary: binary.clone(), file });
    }
    let list = serde_json::to_string_pretty(&stored)?;
    std::fs::write(out.join(TEST_BINARIES_FILE), list + "\n")
        .with_context(|| format!("cannot write `{TEST_BINARIES_FILE}` into the store"))
}

/// The cargo workspace root around `dir`: the outermost ancestor whose Cargo.toml has a
/// `[workspace]` table, else `dir`.
fn workspace_root_of(dir: &Path) -> PathBuf {
    dir.ancestors()
        .filter(|ancestor| {
            std::fs::read_to_string(ancestor.join("Cargo.toml"))
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
                .is_some_and(|table| table.contains_key("workspace"))
        })
        .last()
        .unwrap_or(dir)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_rustflags_go_to_the_keys_cargo_reads_for_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".cargo")).expect("mkdir");
        let config = dir.path().join(".cargo/config.toml");
        std::fs::write(
            &config,
            "[build]\nrustflags = [\"-Tlink.x\"]\n[target.x86_64-unknown-none]\nrustflags = [\"-Cx\"]\n",
        )
        .expect("write");
        let keys = |triple: &str| rustflags_keys(dir.path(), dir.path(), triple);
        assert_eq!(keys("riscv64gc-unknown-none-elf"), [["build", "rustflags"]], "another target's key is not read");
        assert_eq!(keys("x86_64-unknown-none"), [["target", "x86_64-unknown-none", "rustflags"]]);
        std::fs::write(&config, "[target.'cfg(target_os = \"none\")']\nrustflags = [\"-Tlink.x\"]\n").expect("write");
        assert_eq!(keys("riscv64gc-unknown-none-elf"), [["target", "cfg(target_os = \"none\")", "rustflags"]]);
        assert_eq!(keys("x86_64-unknown-linux-gnu"), [["build", "rustflags"]], "a cfg that does not match");
    }
}
