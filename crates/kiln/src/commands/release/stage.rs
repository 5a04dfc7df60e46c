//! Building a release's files: every asset from source in an empty store, its output hash
//! compared with the project store's entry, and the checksums and provenance beside them.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use super::{BLAKE3SUMS, PROVENANCE, ReleaseFile, SHA256SUMS, hex};
use crate::{
    cx::Cx,
    env,
    error::UsageError,
    plan::{ImageKind, Plan, Selection},
};

/// Where the assets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Built in an empty store; a differing cached entry is a warning.
    FromSource,
    /// Built in an empty store; a differing or missing cached entry is an error.
    VerifyReproducible,
    /// Taken from the project's store as it is.
    FromCache,
}

/// How an asset built from source compares with the project store's entry of its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Reproduced {
    /// The cached entry has the same output hash.
    Matches,
    /// The cached entry's output differs.
    Differs,
    /// The store holds no (intact) entry for the closure.
    NotCached,
    /// Not built from source (`--from-cache`).
    NotChecked,
}

/// One asset and where it comes from.
#[derive(Debug)]
struct Asset {
    name: String,
    bytes: Vec<u8>,
    closure: String,
    output_hash: String,
    derivation: String,
    inputs: BTreeMap<String, String>,
    reproduced: Reproduced,
}

#[derive(Serialize)]
struct Provenance<'a> {
    kiln_version: &'a str,
    repository: &'a str,
    tag: &'a str,
    /// Whether every asset was built in an empty store (not taken from a cache).
    built_from_source: bool,
    source: Source,
    assets: Vec<ProvenanceAsset<'a>>,
}

/// The commit and, in GitHub Actions, the workflow run that made the release.
#[derive(Serialize)]
struct Source {
    commit: Option<String>,
    workflow: Option<String>,
    run: Option<String>,
}

#[derive(Serialize)]
struct ProvenanceAsset<'a> {
    name: &'a str,
    size: usize,
    blake3: String,
    sha256: String,
    closure: &'a str,
    output_hash: &'a str,
    derivation: &'a str,
    inputs: &'a BTreeMap<String, String>,
    reproduced: Reproduced,
}

/// Builds the release's files and writes them into `dir` (replacing what was there, all at
/// once).
pub(super) fn stage(cx: &Cx, repository: &str, tag: &str, mode: Mode, dir: &Path) -> anyhow::Result<()> {
    let mut assets = match mode {
        Mode::FromCache => collect(cx, Reproduced::NotChecked)?,
        Mode::FromSource | Mode::VerifyReproducible => from_source(cx)?,
    };
    assets.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(twins) = assets.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(UsageError::new(
            format!("two things in `[release]` would both be published as `{}`", twins[0].name),
            Some("give the artifact, kernel or rootfs another name".to_owned()),
        )
        .into());
    }
    let unproven: Vec<String> = assets
        .iter()
        .filter(|a| matches!(a.reproduced, Reproduced::Differs | Reproduced::NotCached))
        .map(|a| format!("{} ({})", a.name, if a.reproduced == Reproduced::Differs { "differs" } else { "not cached" }))
        .collect();
    if mode == Mode::VerifyReproducible && !unproven.is_empty() {
        return Err(UsageError::new(
            format!(
                "built from source, these assets do not match the store's entries of the same closures: {}",
                unproven.join(", ")
            ),
            Some("a differing asset is not reproducible; for one not cached, run `build` (or `test`) first".to_owned()),
        )
        .into());
    }
    for asset in assets.iter().filter(|a| a.reproduced == Reproduced::Differs) {
        cx.printer().always(&format!(
            "warning: {} built from source differs from the store's entry of closure {} (not reproducible); the \
             release publishes the one built from source",
            asset.name, asset.closure
        ));
    }
    let mut files: Vec<ReleaseFile> =
        assets.iter().map(|a| ReleaseFile { name: a.name.clone(), bytes: a.bytes.clone() }).collect();
    files.extend(checksums_and_provenance(&assets, repository, tag, mode != Mode::FromCache, cx.root())?);
    write_dir(dir, &files)
}

/// Builds every asset in an empty store of its own and compares it with the project's.
fn from_source(cx: &Cx) -> anyhow::Result<Vec<Asset>> {
    let work = cx.root().join("target/kiln");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create `{}`", work.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("release-store-")
        .tempdir_in(&work)
        .with_context(|| format!("cannot create a scratch store in `{}`", work.display()))?;
    cx.printer().status(
        "Building",
        "the release's assets from source in an empty store (a cached or restored store is not trusted for a release)",
    );
    let fresh = cx.with_store(kiln_store::Store::open(scratch.path())?);
    let mut assets = collect(&fresh, Reproduced::NotCached)?;
    for asset in &mut assets {
        let closure: kiln_store::ClosureHash = asset.closure.parse()?;
        asset.reproduced = match cx.store().lookup(&closure)? {
            Some(entry) if cx.store().check(&entry)?.is_none() => {
                if entry.meta.output_hash == asset.output_hash {
                    Reproduced::Matches
                } else {
                    Reproduced::Differs
                }
            }
            _ => Reproduced::NotCached,
        };
    }
    Ok(assets)
}

/// Builds (or finds) what `[release]` names in `cx`'s store and reads each file to publish.
fn collect(cx: &Cx, reproduced: Reproduced) -> anyhow::Result<Vec<Asset>> {
    let settings = &cx.config().release;
    let everything = Selection::default();
    let builds: Vec<_> = Plan::for_build(cx.config(), &everything)
        .builds
        .into_iter()
        .filter(|step| settings.artifacts.contains(&step.key.artifact))
        .collect();
    let mut assets = Vec::new();
    let asset = |name: String, closure: &kiln_store::ClosureHash, path: &Path| -> anyhow::Result<Asset> {
        let entry = cx.store().lookup(closure)?.with_context(|| format!("{closure} is not in the store"))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        Ok(Asset {
            name,
            bytes,
            closure: closure.to_string(),
            output_hash: entry.meta.output_hash.clone(),
            derivation: entry.meta.derivation.kind.clone(),
            inputs: entry.meta.derivation.inputs.iter().map(|(k, v)| (k.clone(), hex(&v.0))).collect(),
            reproduced,
        })
    };
    let plan = Plan { builds, ..Plan::default() };
    for (key, built) in cx.realise_builds(&plan)? {
        assets.push(asset(format!("{}-{}", key.artifact, key.arch), &built.closure, built.image())?);
    }
    for (kind, names) in [(ImageKind::Kernel, &settings.kernels), (ImageKind::Rootfs, &settings.rootfs)] {
        if names.is_empty() {
            continue;
        }
        let selection = Selection { names: names.clone(), ..Selection::default() };
        let plan = Plan::for_images(cx.config(), &selection, Some(kind));
        let realised = cx.realise(&plan)?;
        for (key, image) in &realised.images {
            let (path, name) = match key.kind {
                ImageKind::Kernel => (image.dir.join(crate::exec::KERNEL_FILE), format!("{}-{}", key.name, key.arch)),
                ImageKind::Rootfs => {
                    let format = cx.config().rootfses[&key.name].format;
                    let file = format.file_name();
                    let ext = file.strip_prefix("rootfs").unwrap_or("");
                    (image.dir.join(file), format!("{}-{}{ext}", key.name, key.arch))
                }
            };
            assets.push(asset(name, &image.closure, &path)?);
        }
    }
    Ok(assets)
}

/// The commit and workflow run that make this release.
fn source(root: &Path) -> Source {
    let commit = env::non_empty(env::GITHUB_SHA).or_else(|| {
        let mut git = std::process::Command::new("git");
        kiln_types::withhold_secrets(&mut git);
        let output = git.args(["rev-parse", "HEAD"]).current_dir(root).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    });
    let run = match (env::non_empty(env::GITHUB_SERVER_URL), env::non_empty(env::GITHUB_REPOSITORY)) {
        (Some(server), Some(repository)) => env::non_empty(env::GITHUB_RUN_ID).map(|id| {
            let attempt = env::non_empty(env::GITHUB_RUN_ATTEMPT).unwrap_or_else(|| "1".to_owned());
            format!("{server}/{repository}/actions/runs/{id}/attempts/{attempt}")
        }),
        _ => None,
    };
    Source { commit, workflow: env::non_empty(env::GITHUB_WORKFLOW_REF), run }
}

/// `BLAKE3SUMS` and `SHA256SUMS` (in `b3sum`/`sha256sum --check` format) and `provenance.json`.
fn checksums_and_provenance(
    assets: &[Asset],
    repository: &str,
    tag: &str,
    built_from_source: bool,
    root: &Path,
) -> anyhow::Result<Vec<ReleaseFile>> {
    let mut blake3_sums = String::new();
    let mut sha256_sums = String::new();
    let mut described = Vec::new();
    for asset in assets {
        let blake3 = blake3::hash(&asset.bytes).to_hex().to_string();
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &asset.bytes).as_ref());
        blake3_sums.push_str(&format!("{blake3}  {}\n", asset.name));
        sha256_sums.push_str(&format!("{sha256}  {}\n", asset.name));
        described.push(ProvenanceAsset {
            name: &asset.name,
            size: asset.bytes.len(),
            blake3,
            sha256,
            closure: &asset.closure,
            output_hash: &asset.output_hash,
            derivation: &asset.derivation,
            inputs: &asset.inputs,
            reproduced: asset.reproduced,
        });
    }
    let provenance = Provenance {
        kiln_version: env!("CARGO_PKG_VERSION"),
        repository,
        tag,
        built_from_source,
        source: source(root),
        assets: described,
    };
    let mut json = serde_json::to_vec_pretty(&provenance)?;
    json.push(b'\n');
    Ok(vec![
        ReleaseFile { name: BLAKE3SUMS.to_owned(), bytes: blake3_sums.into_bytes() },
        ReleaseFile { name: SHA256SUMS.to_owned(), bytes: sha256_sums.into_bytes() },
        ReleaseFile { name: PROVENANCE.to_owned(), bytes: json },
    ])
}

/// Writes `files` into a fresh directory beside `dir`, then puts it in `dir`'s place.
fn write_dir(dir: &Path, files: &[ReleaseFile]) -> anyhow::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".release-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in `{}`", parent.display()))?;
    for file in files {
        let path = staging.path().join(&file.name);
        std::fs::write(&path, &file.bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace `{}`", dir.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, dir).with_context(|| format!("cannot move the release's files to `{}`", dir.display()))
}
