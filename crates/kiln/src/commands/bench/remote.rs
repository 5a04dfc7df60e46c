//! `bench --suite remote`: moving a build's output through a remote store against moving the
//! same files one by one, side by side: the first push, a push of unchanged entries, a push of
//! the next build (one file of 64 changed), and a verified pull into an empty store.
//!
//! The remote is `--remote URL` (a bucket or server of yours: the bench writes entries under
//! it), else a temporary `file://` directory. The baseline is one plain copy per file through
//! the same transport: a file copy for `file://`, one PUT or GET per file for `http(s)://`;
//! S3 has no baseline row.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kiln_store::{
    Derivation, Entry, Store,
    remote::{PushMode, RemoteSpec, Remotes, RemotesConfig, SecretKey},
};

use super::Measured;
use crate::{cli::BenchArgs, cx::Cx, units::human_size};

/// Files in a payload, and the size of each: 1 GiB, as a large kernel-and-image build.
const FILES: usize = 64;
const FILE_BYTES: usize = 16 << 20;

/// Pseudo-random, incompressible file content (BLAKE3's output stream of a seed).
fn content(seed: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; FILE_BYTES];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut bytes);
    bytes
}

/// A payload entry in `store`: `FILES` files; with `changed`, the first one differs.
fn payload(store: &Store, tag: &str, changed: bool) -> anyhow::Result<Entry> {
    let mut drv = Derivation::new("bench-payload");
    drv.setting("tag", tag);
    let (entry, _) = store.build(
        &drv,
        tag,
        || {},
        |out| {
            for index in 0..FILES {
                let seed = if changed && index == 0 { format!("{tag}-0") } else { format!("part-{index}") };
                std::fs::write(out.join(format!("part-{index:03}.bin")), content(&seed))?;
            }
            Ok(())
        },
    )?;
    Ok(entry)
}

fn files_of(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    Ok(files)
}

/// One plain copy per file through the remote's transport.
enum Baseline {
    /// Copies into and out of a directory.
    Directory(PathBuf),
    /// PUT and GET per file.
    Http { client: kiln_http::reqwest::Client, base: String, runtime: tokio::runtime::Runtime },
    /// No plain counterpart is measured.
    None,
}

impl Baseline {
    fn for_url(url: &str) -> anyhow::Result<Self> {
        Ok(if let Some(path) = url.strip_prefix("file://") {
            Self::Directory(PathBuf::from(path).join("baseline"))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let client = kiln_http::client(kiln_http::Timeouts::DEFAULT)?;
            Self::Http { client, base: format!("{}/baseline", url.trim_end_matches('/')), runtime }
        } else {
            Self::None
        })
    }

    /// Uploads every file of `dir` under `prefix`; `None` without a baseline.
    fn push(&self, dir: &Path, prefix: &str) -> anyhow::Result<Option<Duration>> {
        let started = Instant::now();
        match self {
            Self::Directory(root) => {
                let dest = root.join(prefix);
                std::fs::create_dir_all(&dest)?;
                for file in files_of(dir)? {
                    std::fs::copy(&file, dest.join(file.file_name().unwrap_or_default()))?;
                }
            }
            Self::Http { client, base, runtime } => runtime.block_on(async {
                // WebDAV servers want the collection first; other servers ignore MKCOL.
                let _ = client.request("MKCOL".parse()?, format!("{base}/")).send().await;
                let _ = client.request("MKCOL".parse()?, format!("{base}/{prefix}/")).send().await;
                for file in files_of(dir)? {
                    let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    let body = std::fs::read(&file)?;
                    client.put(format!("{base}/{prefix}/{name}")).body(body).send().await?.error_for_status()?;
                }
                anyhow::Ok(())
            })?,
            Self::None => return Ok(None),
        }
        Ok(Some(started.elapsed()))
    }

    /// Downloads every file of `prefix` into `dest`.
    fn pull(&self, names: &[String], prefix: &str, dest: &Path) -> anyhow::Result<Option<Duration>> {
        std::fs::create_dir_all(dest)?;
        let started = Instant::now();
        match self {
            Self::Directory(root) => {
                for name in names {
                    std::fs::copy(root.join(prefix).join(name), dest.join(name))?;
                }
            }
            Self::Http { client, base, runtime } => runtime.block_on(async {
                for name in names {
                    let bytes =
                        client.get(format!("{base}/{prefix}/{name}")).send().await?.error_for_status()?.bytes().await?;
                    std::fs::write(dest.join(name), bytes)?;
                }
                anyhow::Ok(())
            })?,
            Self::None => return Ok(None),
        }
        Ok(Some(started.elapsed()))
    }
}

/// Runs the remote rows and prints them on stdout.
pub(super) fn run(cx: &Cx, args: &BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-bench-remote-")
        .tempdir_in(cx.work_dir().parent().unwrap_or(cx.root()))
        .or_else(|_| tempfile::tempdir())
        .context("cannot create a scratch directory")?;
    let url = match &args.remote {
        Some(url) => url.clone(),
        None => format!("file://{}", scratch.path().join("remote").display()),
    };
    cx.printer()
        .status("Benching", &format!("pushes and pulls of {} through {url}", human_size((FILES * FILE_BYTES) as u64)));
    let key = SecretKey::generate("kiln-bench")?;
    let remotes = |signing: Option<SecretKey>| -> anyhow::Result<Arc<Remotes>> {
        Ok(Arc::new(Remotes::open(RemotesConfig {
            specs: vec![RemoteSpec::new(url.clone())],
            trusted: vec![key.public()],
            signing,
            push_all: true,
            notice: Arc::new(|notice| eprintln!("warning: {notice}")),
        })?))
    };
    let store_a = Store::open(scratch.path().join("a"))?;
    let first = payload(&store_a, "v1", false)?;
    let pusher = remotes(Some(SecretKey::parse(&key.to_secret_text())?))?;
    let baseline = Baseline::for_url(&url)?;
    let mut rows: Vec<(String, Measured, Option<Duration>)> = Vec::new();
    let timed = |run: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Measured> {
        let started = Instant::now();
        run()?;
        Ok(Measured { times: vec![started.elapsed()], failures: 0 })
    };

    let push = |entry: &Entry, expect_blobs: usize| -> anyhow::Result<()> {
        let tally = pusher.push_to(std::slice::from_ref(entry), None, PushMode::Missing);
        let uploaded: usize = tally.iter().map(|(_, t)| t.blobs_uploaded).sum();
        anyhow::ensure!(
            uploaded == expect_blobs,
            "expected {expect_blobs} blobs uploaded, the push did {uploaded}: {tally:?}"
        );
        Ok(())
    };
    let size = human_size((FILES * FILE_BYTES) as u64);
    rows.push((
        format!("push {size}, first time"),
        timed(&|| push(&first, FILES))?,
        baseline.push(&first.out_dir(), "v1")?,
    ));
    rows.push(("push again, unchanged".into(), timed(&|| push(&first, 0))?, baseline.push(&first.out_dir(), "v1")?));
    let second = payload(&store_a, "v2", true)?;
    rows.push((
        format!("push the next build, 1 of {FILES} files changed"),
        timed(&|| push(&second, 1))?,
        baseline.push(&second.out_dir(), "v2")?,
    ));
    let store_b = Store::open(scratch.path().join("b"))?.with_substituter(remotes(None)?);
    let pull = timed(&|| {
        store_b.pull(&first.closure)?.context("the remote lacks the pushed entry")?;
        Ok(())
    })?;
    let names: Vec<String> = files_of(&first.out_dir())?
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    rows.push((
        format!("pull {size} into an empty store, verified"),
        pull,
        baseline.pull(&names, "v1", &scratch.path().join("plain"))?,
    ));

    let mut out = std::io::stdout().lock();
    writeln!(out, "\nremote store {url}: kiln (zstd blobs by BLAKE3, signed manifests) / one plain copy per file")?;
    writeln!(out, "{:<58} {:>9} {:>9} {:>7}", "what", "kiln", "baseline", "ratio")?;
    for (what, kiln, base) in rows {
        let kiln = kiln.median().unwrap_or_default();
        let (base_text, ratio) = match base {
            Some(base) => (
                format!("{:.2}s", base.as_secs_f64()),
                format!("{:.2}x", base.as_secs_f64() / kiln.as_secs_f64().max(1e-6)),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        writeln!(out, "{what:<58} {:>8.2}s {base_text:>9} {ratio:>7}", kiln.as_secs_f64())?;
    }
    writeln!(out, "ratio = baseline / kiln")?;
    Ok(())
}
