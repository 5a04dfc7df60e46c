//! Fetch derivations: one file from a URL or a path, pinned by its hash.
//!
//! A fetch is a fixed-output derivation: its closure hash covers the pinned hash and the
//! file name, never the address, so moving a download to a mirror rebuilds nothing and the
//! file is fetched once per machine. The bytes are checked against the pin before the
//! entry is published; a mismatch prints both hashes and leaves nothing behind.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use kiln_http::{Failure, RetryError};
use kiln_store::{BuildOutcome, Derivation};

use super::Executor;
use crate::{
    config::{Fetch, FetchSource, HashAlgorithm},
    events::{EntryKind, Event, Reporter},
};

/// The derivation of a fetch: the pin and the file name only.
pub(crate) fn derivation(fetch: &Fetch) -> Derivation {
    let mut drv = Derivation::new("fetch");
    drv.setting("algorithm", fetch.hash.algorithm.as_str());
    drv.setting("hash", &fetch.hash.hex);
    drv.setting("file-name", fetch.source.file_name());
    drv
}

/// Makes sure the store holds the file and returns its path there.
pub(crate) fn realise(executor: &Executor, fetch: &Fetch) -> anyhow::Result<(PathBuf, BuildOutcome)> {
    let drv = derivation(fetch);
    #[cfg(not(feature = "github"))]
    if matches!(fetch.source, FetchSource::GithubRelease { .. })
        && executor.store().lookup(&drv.closure_hash())?.is_none()
    {
        return Err(github_feature_missing(fetch).into());
    }
    let file_name = fetch.source.file_name();
    let reporter = executor.reporter();
    let (entry, outcome) =
        executor.entry(&drv, &format!("fetch-{}", fetch.name), &fetch.name, EntryKind::Fetch, None, |out| {
            fill(fetch, &out.join(&file_name), reporter)
        })?;
    Ok((entry.out_dir().join(file_name), outcome))
}

/// Copies or downloads the file to `dest` and checks it against the pin. Downloads are
/// shared by every project on this host through a cache of verified files named by their
/// hash, so a file is fetched once per machine.
fn fill(fetch: &Fetch, dest: &Path, reporter: &dyn Reporter) -> anyhow::Result<()> {
    let cached = crate::host::user_cache_dir()
        .map(|dir| dir.join("fetch").join(format!("{}-{}", fetch.hash.algorithm.as_str(), fetch.hash.hex)));
    let reusable = cached.as_deref().filter(|file| is_pinned_copy(file, fetch));
    match (&fetch.source, reusable) {
        (FetchSource::Path(path), _) => {
            std::fs::copy(path, dest).with_context(|| {
                format!("fetch `{}`: cannot copy `{}` (check `fetch.{}.path`)", fetch.name, path.display(), fetch.name)
            })?;
        }
        (FetchSource::Url(_) | FetchSource::GithubRelease { .. }, Some(file)) => {
            std::fs::copy(file, dest).with_context(|| format!("cannot copy `{}`", file.display()))?;
            reporter.detail("Reused", &format!("{} from {}", fetch.name, file.display()));
        }
        (FetchSource::Url(url), None) => download(&fetch.name, url, dest, reporter)?,
        #[cfg(feature = "github")]
        (FetchSource::GithubRelease { repository, tag, asset }, None) => {
            let url = crate::github::asset_url(repository, tag, asset).with_context(|| {
                format!("fetch `{}`: cannot find {asset} in release {tag} of {repository}", fetch.name)
            })?;
            download(&fetch.name, &url, dest, reporter)?;
        }
        #[cfg(not(feature = "github"))]
        (FetchSource::GithubRelease { .. }, None) => return Err(github_feature_missing(fetch).into()),
    }
    let actual = hash_file(dest, fetch.hash.algorithm)?;
    if actual != fetch.hash.hex {
        let from = match &fetch.source {
            FetchSource::Url(url) => url.clone(),
            FetchSource::Path(path) => path.display().to_string(),
            FetchSource::GithubRelease { repository, tag, asset } => {
                format!("{asset} of release {tag} of {repository}")
            }
        };
        anyhow::bail!(
            "fetch `{}`: {} hash mismatch for {from}\n  expected: {}\n  actual:   {actual}\n\
             If the new file is the one you want, set `fetch.{}.{} = \"{actual}\"` in Kiln.toml.",
            fetch.name,
            fetch.hash.algorithm.as_str(),
            fetch.hash.hex,
            fetch.name,
            fetch.hash.algorithm.as_str(),
        );
    }
    if let (FetchSource::Url(_) | FetchSource::GithubRelease { .. }, Some(cached)) = (&fetch.source, &cached)
        && !cached.exists()
    {
        remember(dest, cached);
    }
    Ok(())
}

/// Whether `file` holds the pinned content (it is checked, not trusted by its name).
fn is_pinned_copy(file: &Path, fetch: &Fetch) -> bool {
    file.is_file() && hash_file(file, fetch.hash.algorithm).is_ok_and(|actual| actual == fetch.hash.hex)
}

/// Keeps a verified download in the host's cache (written beside and renamed into place; a
/// failure only costs a later download).
fn remember(verified: &Path, cached: &Path) {
    let Some(dir) = cached.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(temp) = tempfile::NamedTempFile::new_in(dir) else { return };
    if std::fs::copy(verified, temp.path()).is_ok() {
        let _ = temp.persist(cached);
    }
}

/// The hex digest of a file.
pub(crate) fn hash_file(path: &Path, algorithm: HashAlgorithm) -> anyhow::Result<String> {
    match algorithm {
        HashAlgorithm::Blake3 => Ok(kiln_store::hash_file(path)
            .with_context(|| format!("cannot hash `{}`", path.display()))?
            .to_hex()
            .to_string()),
        HashAlgorithm::Sha256 => {
            let mut file = File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let read = std::io::Read::read(&mut file, &mut buffer)
                    .with_context(|| format!("cannot read `{}`", path.display()))?;
                if read == 0 {
                    break;
                }
                context.update(&buffer[..read]);
            }
            Ok(context.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
        }
    }
}

/// Downloads `url` to `dest` through kiln's one HTTP client, retrying lost connections,
/// transient answers and transfers that broke off, under [`kiln_http::Retry::DOWNLOAD`].
fn download(name: &str, url: &str, dest: &Path, reporter: &dyn Reporter) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = kiln_http::client(kiln_http::Timeouts::DEFAULT)?;
    let result = runtime.block_on(kiln_http::with_retries(
        &kiln_http::Retry::DOWNLOAD,
        |_| try_download(&client, name, url, dest, reporter),
        |notice| {
            let message = format!(
                "fetch `{name}`: {}; trying again in {} (try {} of {})",
                notice.why,
                crate::units::seconds(notice.wait),
                notice.next_attempt,
                notice.attempts,
            );
            reporter.report(Event::Retrying { message: &message });
        },
    ));
    match result {
        Ok(()) => Ok(()),
        Err(RetryError::Permanent(err)) => Err(err),
        Err(RetryError::GaveUp { attempts, last }) => {
            anyhow::bail!("fetch `{name}`: cannot download {url} after {attempts} tries: {last}")
        }
    }
}

async fn try_download(
    client: &kiln_http::reqwest::Client,
    name: &str,
    url: &str,
    dest: &Path,
    reporter: &dyn Reporter,
) -> Result<(), Failure<anyhow::Error>> {
    let mut response = client.get(url).send().await.map_err(|err| Failure::transport(&err))?;
    let status = response.status();
    if kiln_http::is_transient(status) {
        let wait = kiln_http::retry_after(response.headers());
        return Err(Failure::Transient { why: format!("the server answered {status}"), wait });
    }
    if status != 200 {
        return Err(Failure::Permanent(anyhow::anyhow!(
            "fetch `{name}`: the server answered {status} for {url}; check `fetch.{name}` in Kiln.toml"
        )));
    }
    let total = response.content_length();
    let fatal = |doing: String, e: std::io::Error| Failure::Permanent(anyhow::anyhow!("fetch `{name}`: {doing}: {e}"));
    let file = File::create(dest).map_err(|e| fatal(format!("cannot create `{}`", dest.display()), e))?;
    let mut out = BufWriter::new(file);
    reporter.report(Event::DownloadStarted { name, total });
    let mut received = 0u64;
    let finished = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if let Err(e) = out.write_all(&chunk) {
                    break Err(fatal(format!("cannot write `{}`", dest.display()), e));
                }
                received += chunk.len() as u64;
                reporter.report(Event::DownloadProgress { name, received });
            }
            Ok(None) => break Ok(()),
            Err(err) => {
                let why = format!("the download broke off after {received} bytes: {}", kiln_http::describe(&err));
                break Err(Failure::Transient { why, wait: None });
            }
        }
    };
    reporter.report(Event::DownloadEnded { name });
    finished?;
    if let Some(total) = total
        && received != total
    {
        return Err(Failure::Transient {
            why: format!("the download ended after {received} of {total} bytes"),
            wait: None,
        });
    }
    out.flush().map_err(|e| fatal(format!("cannot write `{}`", dest.display()), e))?;
    Ok(())
}

/// The error for a `github-release` fetch in a kiln built without its `github` feature.
#[cfg(not(feature = "github"))]
fn github_feature_missing(fetch: &Fetch) -> crate::error::UsageError {
    let FetchSource::GithubRelease { repository, tag, asset } = &fetch.source else {
        return crate::error::UsageError::new(format!("fetch `{}` needs kiln's `github` feature", fetch.name), None);
    };
    crate::error::UsageError::with_help(
        format!(
            "fetch `{}`: this kiln was built without its `github` feature, which `github-release` fetches need",
            fetch.name
        ),
        format!(
            "enable it in your xtask's Cargo.toml (`features = [\"github\"]` on the kiln dependency), or fetch the \
             public asset by its address: `url = \"https://github.com/{repository}/releases/download/{tag}/{asset}\"`"
        ),
    )
}
