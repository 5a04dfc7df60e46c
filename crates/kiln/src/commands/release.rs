//! `release --tag TAG`: publishes what `[release]` names (artifacts, kernels, rootfs images,
//! for every arch they are built for) as the assets of a GitHub release, with `BLAKE3SUMS`,
//! `SHA256SUMS` and `provenance.json` (closure, output hash and inputs of each asset, and
//! kiln's version). Idempotent: an asset whose SHA-256 matches the one GitHub reports for the
//! existing asset is left alone; a changed one is replaced.

use std::{collections::BTreeMap, io::Write as _, path::PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::ReleaseArgs,
    cx::Cx,
    error::UsageError,
    exit_code,
    plan::{ImageKind, Plan, Selection},
};

/// One file to publish.
#[derive(Clone, Debug)]
struct Publish {
    name: String,
    bytes: Vec<u8>,
    /// Where it comes from (for provenance; `None` for the checksum files).
    origin: Option<Origin>,
}

#[derive(Clone, Debug, Serialize)]
struct Origin {
    path: PathBuf,
    closure: String,
    output_hash: String,
    derivation: String,
    inputs: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Provenance<'a> {
    kiln_version: &'a str,
    repository: &'a str,
    tag: &'a str,
    assets: Vec<ProvenanceAsset<'a>>,
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
}

/// What happens to one asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Upload,
    Replace(u64),
    Keep,
}

/// Runs `release`.
pub(super) fn run(cx: &Cx, args: &ReleaseArgs) -> anyhow::Result<u8> {
    let settings = &cx.config().release;
    if settings.is_empty() {
        return Err(UsageError::new(
            "Kiln.toml's `[release]` names nothing to publish",
            Some("add `[release]` with `artifacts = [...]`, `kernels = [...]` and/or `rootfs = [...]`".to_owned()),
        )
        .into());
    }
    let repository = crate::github::repository(None, cx.config().release.repository.as_deref()).ok_or_else(|| {
        UsageError::new(
            "which repository should the release be in?",
            Some("set `[release] repository = \"owner/name\"` (GitHub Actions sets GITHUB_REPOSITORY)".to_owned()),
        )
    })?;
    // Everything that can be checked without building is checked first.
    if args.tag.trim().is_empty() || args.tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            UsageError::new(format!("`{}` is not a tag", args.tag), Some("e.g. `--tag v1.2.0`".to_owned())).into()
        );
    }
    if let Err(err) = repository.parse::<kiln_types::Repo>() {
        return Err(UsageError::new(
            err.to_string(),
            Some("set `[release] repository` or GITHUB_REPOSITORY".to_owned()),
        )
        .into());
    }
    if !args.dry_run && crate::github::token().is_none() {
        return Err(crate::github::missing_token().into());
    }
    let mut files = collect(cx)?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(twins) = files.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(UsageError::new(
            format!("two things in `[release]` would both be published as `{}`", twins[0].name),
            Some("give the artifact, kernel or rootfs another name".to_owned()),
        )
        .into());
    }
    files.extend(checksums_and_provenance(&files, &repository, &args.tag)?);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let token = crate::github::token();
    if args.dry_run && token.is_none() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "release {} of {repository} (dry run, no token: not compared with GitHub)", args.tag)?;
        for file in &files {
            writeln!(out, "  publish  {:<40} {:>10}", file.name, crate::units::human_size(file.bytes.len() as u64))?;
        }
        return Ok(exit_code::SUCCESS);
    }
    runtime.block_on(async {
        let client = crate::github::client(&repository, true, Some(cx.printer().clone()))?;
        let existing = client.release_by_tag(&args.tag).await?;
        let assets = match &existing {
            Some(release) => client.assets(release.id).await?,
            None => Vec::new(),
        };
        let plan: Vec<(&Publish, Action)> = files
            .iter()
            .map(|file| {
                let sha256 =
                    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, &file.bytes).as_ref()));
                let action = match assets.iter().find(|a| a.name == file.name) {
                    Some(asset) if asset.digest.as_deref() == Some(sha256.as_str()) => Action::Keep,
                    Some(asset) => Action::Replace(asset.id),
                    None => Action::Upload,
                };
                (file, action)
            })
            .collect();
        if args.dry_run {
            let mut out = std::io::stdout().lock();
            let state = if existing.is_some() { "exists" } else { "would be created" };
            writeln!(out, "release {} of {repository} ({state}; dry run: nothing changed)", args.tag)?;
            for (file, action) in &plan {
                let verb = match action {
                    Action::Upload => "upload",
                    Action::Replace(_) => "replace",
                    Action::Keep => "keep",
                };
                writeln!(
                    out,
                    "  {verb:<8} {:<40} {:>10}",
                    file.name,
                    crate::units::human_size(file.bytes.len() as u64)
                )?;
            }
            return Ok(exit_code::SUCCESS);
        }
        let body = release_notes(&files);
        let release = match existing {
            Some(release) if release.body == body && release.draft == args.draft && release.name == args.tag => {
                cx.printer().status("Found", &format!("release {} ({})", args.tag, release.html_url));
                release
            }
            Some(release) => {
                let updated = client.update_release(release.id, &args.tag, &body, args.draft).await?;
                cx.printer().status("Updating", &format!("release {} ({})", args.tag, updated.html_url));
                updated
            }
            None => {
                let created = client.create_release(&args.tag, &args.tag, &body, args.draft).await?;
                cx.printer().status("Created", &format!("release {} ({})", args.tag, created.html_url));
                created
            }
        };
        let (mut uploaded, mut kept) = (0, 0);
        for (file, action) in plan {
            let size = crate::units::human_size(file.bytes.len() as u64);
            match action {
                Action::Keep => {
                    kept += 1;
                    cx.printer().verbose("Unchanged", &file.name);
                }
                Action::Replace(id) => {
                    client.delete_asset(id).await?;
                    client.upload_asset(release.id, &file.name, file.bytes.clone()).await?;
                    uploaded += 1;
                    cx.printer().status("Replaced", &format!("{} ({size})", file.name));
                }
                Action::Upload => {
                    client.upload_asset(release.id, &file.name, file.bytes.clone()).await?;
                    uploaded += 1;
                    cx.printer().status("Uploaded", &format!("{} ({size})", file.name));
                }
            }
        }
        cx.printer()
            .always(&format!("release {}: {uploaded} uploaded, {kept} unchanged ({})", args.tag, release.html_url));
        anyhow::Ok(exit_code::SUCCESS)
    })
}

/// Builds (or finds) what `[release]` names and reads each file to publish.
fn collect(cx: &Cx) -> anyhow::Result<Vec<Publish>> {
    let settings = &cx.config().release;
    let everything = Selection::default();
    let builds: Vec<_> = Plan::for_build(cx.config(), &everything)
        .builds
        .into_iter()
        .filter(|step| settings.artifacts.contains(&step.key.artifact))
        .collect();
    let mut files = Vec::new();
    let origin_of = |closure: &kiln_store::ClosureHash, path: PathBuf| -> anyhow::Result<Origin> {
        let entry = cx.store().lookup(closure)?.with_context(|| format!("{closure} is not in the store"))?;
        Ok(Origin {
            path,
            closure: closure.to_string(),
            output_hash: entry.meta.output_hash.clone(),
            derivation: entry.meta.derivation.kind.clone(),
            inputs: entry.meta.derivation.inputs.iter().map(|(k, v)| (k.clone(), hex(&v.0))).collect(),
        })
    };
    let plan = Plan { builds, ..Plan::default() };
    for (key, built) in cx.realise_builds(&plan)? {
        let path = built.image().to_owned();
        let name = format!("{}-{}", key.artifact, key.arch);
        files.push(read(name, origin_of(&built.closure, path)?)?);
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
            files.push(read(name, origin_of(&image.closure, path)?)?);
        }
    }
    Ok(files)
}

fn read(name: String, origin: Origin) -> anyhow::Result<Publish> {
    let bytes = std::fs::read(&origin.path).with_context(|| format!("cannot read `{}`", origin.path.display()))?;
    Ok(Publish { name, bytes, origin: Some(origin) })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `BLAKE3SUMS` and `SHA256SUMS` (in `b3sum`/`sha256sum --check` format) and `provenance.json`.
fn checksums_and_provenance(files: &[Publish], repository: &str, tag: &str) -> anyhow::Result<Vec<Publish>> {
    let mut blake3_sums = String::new();
    let mut sha256_sums = String::new();
    let mut assets = Vec::new();
    for file in files {
        let blake3 = blake3::hash(&file.bytes).to_hex().to_string();
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &file.bytes).as_ref());
        blake3_sums.push_str(&format!("{blake3}  {}\n", file.name));
        sha256_sums.push_str(&format!("{sha256}  {}\n", file.name));
        if let Some(origin) = &file.origin {
            assets.push(ProvenanceAsset {
                name: &file.name,
                size: file.bytes.len(),
                blake3,
                sha256,
                closure: &origin.closure,
                output_hash: &origin.output_hash,
                derivation: &origin.derivation,
                inputs: &origin.inputs,
            });
        }
    }
    let provenance = Provenance { kiln_version: env!("CARGO_PKG_VERSION"), repository, tag, assets };
    let mut json = serde_json::to_vec_pretty(&provenance)?;
    json.push(b'\n');
    Ok(vec![
        Publish { name: "BLAKE3SUMS".to_owned(), bytes: blake3_sums.into_bytes(), origin: None },
        Publish { name: "SHA256SUMS".to_owned(), bytes: sha256_sums.into_bytes(), origin: None },
        Publish { name: "provenance.json".to_owned(), bytes: json, origin: None },
    ])
}

/// The release's notes: what it holds, and how to check it.
fn release_notes(files: &[Publish]) -> String {
    let mut body = String::from(
        "Published by `cargo xtask release` (kiln). Check a download with `b3sum --check BLAKE3SUMS` or `sha256sum --check SHA256SUMS`; `provenance.json` gives each asset's closure hash and inputs.\n\n| asset | size |\n| --- | --- |\n",
    );
    for file in files.iter().filter(|f| f.origin.is_some()) {
        body.push_str(&format!("| `{}` | {} |\n", file.name, crate::units::human_size(file.bytes.len() as u64)));
    }
    body
}
