//! `cargo metadata`, remembered between runs while the files it depends on are unchanged.
//!
//! On a fully cached `test` the cargo queries are most of kiln's own time. The answer of
//! `cargo metadata --filter-platform T` only changes when a manifest, the lock file, a cargo
//! config or toolchain file, or the toolchain itself changes, so kiln keeps the JSON with a
//! stamp (`kiln_store::FileStamp`) of each such file, and the `rustc -vV` text. A file
//! changed within `kiln_store::RACY_WINDOW` of writing the cache makes kiln skip writing
//! it: a later change within the same timestamp tick could otherwise go unnoticed.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::SystemTime,
};

use super::cargo_json::Metadata;
use anyhow::{Context, bail};
use kiln_store::FileStamp;

use super::tool::tool_command;

/// Bumped when the cache file's layout changes.
const CACHE_VERSION: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CacheFile {
    version: u32,
    rustc: String,
    /// Each watched path and its stamp; `None` records that the file did not exist.
    watched: Vec<(PathBuf, Option<FileStamp>)>,
    json: String,
}

/// One `cargo metadata` question: a package directory, a target, and the artifact's `env`
/// (variables such as `CARGO_UNSTABLE_SPARSE_REGISTRY` can decide whether cargo can answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct MetadataQuery<'a> {
    /// The package directory.
    pub dir: &'a Path,
    /// The target triple (or JSON target file).
    pub triple: &'a str,
    /// The artifact's environment for cargo.
    pub env: &'a BTreeMap<String, String>,
}

/// `cargo metadata` answers for one package directory and target.
#[derive(Debug)]
pub(crate) struct MetadataAnswer {
    /// The JSON cargo printed.
    pub json: String,
    /// The `rustc -vV` text the cached answer was made with; `None` when fresh.
    pub cached_with_rustc: Option<String>,
}

impl MetadataAnswer {
    /// Parses the JSON.
    pub fn parse(&self) -> anyhow::Result<Metadata> {
        Metadata::parse(&self.json).context("`cargo metadata` printed unexpected JSON")
    }
}

/// Runs `cargo metadata --filter-platform TRIPLE` in the query's directory, with its `env`.
pub(crate) fn run_cargo_metadata(query: MetadataQuery<'_>) -> anyhow::Result<String> {
    let MetadataQuery { dir, triple, env } = query;
    let output = tool_command("cargo", dir)
        .args(["metadata", "--format-version", "1", "--filter-platform", triple])
        .envs(env)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("failed to run `cargo metadata` in `{}`", dir.display()))?;
    if !output.status.success() {
        bail!("`cargo metadata` failed in `{}`: {}", dir.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    String::from_utf8(output.stdout).context("`cargo metadata` printed invalid UTF-8")
}

/// The on-disk cache of `cargo metadata` answers.
#[derive(Clone, Debug)]
pub(crate) struct MetadataCache {
    dir: PathBuf,
}

impl MetadataCache {
    /// A cache kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn file(&self, query: MetadataQuery<'_>) -> PathBuf {
        let mut key = format!("{}\0{}", query.dir.display(), query.triple);
        for (name, value) in query.env {
            key.push_str(&format!("\0{name}={value}"));
        }
        let key = blake3::hash(key.as_bytes());
        self.dir.join(format!("{}.json", &key.to_hex()[..24]))
    }

    /// The cached answer when every watched file is as it was, else a fresh one.
    pub fn get(&self, query: MetadataQuery<'_>) -> anyhow::Result<MetadataAnswer> {
        if let Some(cached) = self.load(query) {
            return Ok(MetadataAnswer { json: cached.json, cached_with_rustc: Some(cached.rustc) });
        }
        Ok(MetadataAnswer { json: run_cargo_metadata(query)?, cached_with_rustc: None })
    }

    fn load(&self, query: MetadataQuery<'_>) -> Option<CacheFile> {
        let text = fs::read_to_string(self.file(query)).ok()?;
        let cached: CacheFile = serde_json::from_str(&text).ok()?;
        let unchanged = cached.version == CACHE_VERSION
            && cached.watched.iter().all(|(path, stamp)| FileStamp::of_path(path).as_ref() == stamp.as_ref());
        unchanged.then_some(cached)
    }

    /// Remembers a fresh answer made with `rustc` (the `rustc -vV` text). Failures to write
    /// only cost speed, so they are ignored.
    pub fn store(&self, query: MetadataQuery<'_>, json: &str, rustc: &str) {
        let Ok(metadata) = Metadata::parse(json) else { return };
        let watched_paths = watched_files(query.dir, &metadata);
        let now = SystemTime::now();
        let mut watched = Vec::new();
        for path in watched_paths {
            let stamp = FileStamp::of_path(&path);
            if stamp.is_some_and(|stamp| stamp.is_racy(now)) {
                return;
            }
            watched.push((path, stamp));
        }
        let cache = CacheFile { version: CACHE_VERSION, rustc: rustc.to_owned(), watched, json: json.to_owned() };
        let Ok(text) = serde_json::to_string(&cache) else { return };
        if fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let target = self.file(query);
        let temp = target.with_extension(format!("tmp{}", std::process::id()));
        if fs::write(&temp, text).is_ok() && fs::rename(&temp, &target).is_err() {
            let _ = fs::remove_file(&temp);
        }
    }
}

/// Every file whose change can change the answer: local manifests, the workspace manifest
/// and lock file, and cargo config and toolchain files where cargo would look (present or not).
fn watched_files(dir: &Path, metadata: &Metadata) -> Vec<PathBuf> {
    let root = metadata.workspace_root.as_path();
    let mut files: Vec<PathBuf> =
        metadata.packages.iter().filter(|p| p.source.is_none()).map(|p| p.manifest_path.clone()).collect();
    files.push(root.join("Cargo.toml"));
    files.push(root.join("Cargo.lock"));
    for ancestor in dir.ancestors() {
        for name in [".cargo/config.toml", ".cargo/config", "rust-toolchain.toml", "rust-toolchain"] {
            files.push(ancestor.join(name));
        }
    }
    if let Some(home) = crate::env::var_os(crate::env::CARGO_HOME).map(PathBuf::from) {
        files.push(home.join("config.toml"));
        files.push(home.join("config"));
    }
    files.sort();
    files.dedup();
    files
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stamps_change_with_content_and_absence_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Cargo.toml");
        assert_eq!(FileStamp::of_path(&file), None);
        fs::write(&file, "a").expect("write");
        let first = FileStamp::of_path(&file).expect("stamp");
        fs::write(&file, "ab").expect("write");
        assert_ne!(FileStamp::of_path(&file), Some(first));
    }

    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options().write(true).open(path).and_then(|f| f.set_modified(old)).expect("set mtime");
    }

    #[test]
    fn answers_are_reused_until_a_manifest_changes() {
        let project = tempfile::tempdir().expect("tempdir");
        let dir = project.path();
        fs::create_dir_all(dir.join("src")).expect("mkdir");
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"p\"\nedition = \"2021\"\n").expect("write");
        fs::write(dir.join("src/main.rs"), "fn main() {}\n").expect("write");
        let cache = MetadataCache::new(dir.join("cache"));
        let env = BTreeMap::new();
        let query = MetadataQuery { dir, triple: "x86_64-unknown-linux-gnu", env: &env };

        let fresh = cache.get(query).expect("metadata");
        assert_eq!(fresh.cached_with_rustc, None);
        // Files changed moments ago are not trusted to a stamp: nothing is cached yet.
        cache.store(query, &fresh.json, "rustc x");
        assert_eq!(cache.get(query).expect("metadata").cached_with_rustc, None);

        age(&dir.join("Cargo.toml"));
        age(&dir.join("Cargo.lock"));
        cache.store(query, &fresh.json, "rustc x");
        let cached = cache.get(query).expect("metadata");
        assert_eq!(cached.cached_with_rustc.as_deref(), Some("rustc x"));
        assert_eq!(cached.parse().expect("parse").packages[0].name.as_str(), "p");

        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"q\"\nedition = \"2021\"\n").expect("write");
        age(&dir.join("Cargo.toml"));
        let changed = cache.get(query).expect("metadata");
        assert_eq!(changed.cached_with_rustc, None, "an edited manifest invalidates the answer");
        assert_eq!(changed.parse().expect("parse").packages[0].name.as_str(), "q");

        fs::create_dir_all(dir.join(".cargo")).expect("mkdir");
        age(&dir.join("Cargo.lock"));
        cache.store(query, &changed.json, "rustc x");
        assert!(cache.get(query).expect("metadata").cached_with_rustc.is_some());
        fs::write(dir.join(".cargo/config.toml"), "").expect("write");
        assert_eq!(cache.get(query).expect("metadata").cached_with_rustc, None, "a new config file counts");
    }
}
