//! Fetch derivations: one file from a URL or a path, pinned by its hash.
//!
//! A fetch is a fixed-output derivation: its closure hash covers the pinned hash and the
//! file name, never the address, so moving a download to a mirror rebuilds nothing and the
//! file is fetched once per machine. The bytes are checked against the pin before the
//! entry is published; a mismatch prints both hashes and leaves nothing behind.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use kiln_store::{BuildOutcome, Derivation, Store};
use sha2::Digest as _;

use crate::{
    config::{Fetch, FetchSource, HashAlgorithm},
    report::Printer,
};

/// Tries of one download before giving up (connection errors and 5xx only).
const ATTEMPTS: u32 = 3;

/// The derivation of a fetch: the pin and the file name only.
pub fn derivation(fetch: &Fetch) -> Derivation {
    let mut drv = Derivation::new("fetch");
    drv.setting("algorithm", fetch.hash.algorithm.as_str());
    drv.setting("hash", &fetch.hash.hex);
    drv.setting("file-name", fetch.source.file_name());
    drv
}

/// Makes sure the store holds the file and returns its path there.
pub fn realise(store: &Store, fetch: &Fetch, printer: &Printer) -> anyhow::Result<(PathBuf, BuildOutcome)> {
    let drv = derivation(fetch);
    let file_name = fetch.source.file_name();
    let on_wait = || printer.status("Waiting", &format!("for another kiln fetching {}", fetch.name));
    let (entry, outcome) = store.build(&drv, &format!("fetch-{}", fetch.name), on_wait, |out| {
        let dest = out.join(&file_name);
        fill(fetch, &dest, printer).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { format!("{e:#}").into() })
    })?;
    match &outcome {
        BuildOutcome::Built { duration, .. } => {
            printer.status("Fetched", &format!("{} in {}", fetch.name, crate::report::seconds(*duration)));
        }
        BuildOutcome::Substituted { .. } => crate::cx::say_substituted(printer, &fetch.name, &entry.closure, &outcome),
        BuildOutcome::Cached => {}
    }
    store.mark_used(&entry.closure)?;
    Ok((entry.out_dir().join(file_name), outcome))
}

/// Copies or downloads the file to `dest` and checks it against the pin. Downloads are
/// shared by every project on this host through a cache of verified files named by their
/// hash, so a file is fetched once per machine.
fn fill(fetch: &Fetch, dest: &Path, printer: &Printer) -> anyhow::Result<()> {
    let cached = crate::cx::user_cache_dir()
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
            printer.verbose("Reused", &format!("{} from {}", fetch.name, file.display()));
        }
        (FetchSource::Url(url), None) => download(&fetch.name, url, dest, printer)?,
        (FetchSource::GithubRelease { repository, tag, asset }, None) => {
            let url = crate::github::asset_url(repository, tag, asset).with_context(|| {
                format!("fetch `{}`: cannot find {asset} in release {tag} of {repository}", fetch.name)
            })?;
            download(&fetch.name, &url, dest, printer)?;
        }
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
pub fn hash_file(path: &Path, algorithm: HashAlgorithm) -> anyhow::Result<String> {
    match algorithm {
        HashAlgorithm::Blake3 => Ok(kiln_store::hash_file(path)
            .with_context(|| format!("cannot hash `{}`", path.display()))?
            .to_hex()
            .to_string()),
        HashAlgorithm::Sha256 => {
            let mut file = File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read `{}`", path.display()))?;
            Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
        }
    }
}

/// Downloads `url` to `dest`, retrying connection failures and server errors with backoff.
fn download(name: &str, url: &str, dest: &Path, printer: &Printer) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(300)))
        .http_status_as_error(false)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            let pause = Duration::from_millis(500 * 2u64.pow(attempt - 2));
            printer.warn(&format!("fetch `{name}`: {last_error}; trying again in {}", crate::report::seconds(pause)));
            std::thread::sleep(pause);
        }
        match try_download(&agent, name, url, dest, printer) {
            Ok(()) => return Ok(()),
            Err(Attempt::Retry(reason)) => last_error = reason,
            Err(Attempt::Fatal(err)) => return Err(err),
        }
    }
    anyhow::bail!("fetch `{name}`: cannot download {url} after {ATTEMPTS} tries: {last_error}")
}

enum Attempt {
    Retry(String),
    Fatal(anyhow::Error),
}

fn try_download(agent: &ureq::Agent, name: &str, url: &str, dest: &Path, printer: &Printer) -> Result<(), Attempt> {
    let mut response = agent.get(url).call().map_err(|e| Attempt::Retry(e.to_string()))?;
    let status = response.status().as_u16();
    if status >= 500 || status == 429 {
        return Err(Attempt::Retry(format!("the server answered {status}")));
    }
    if status != 200 {
        return Err(Attempt::Fatal(anyhow::anyhow!(
            "fetch `{name}`: the server answered {status} for {url}; check `fetch.{name}` in Kiln.toml"
        )));
    }
    let total = response.body().content_length();
    let fatal = |doing: &str, e: std::io::Error| Attempt::Fatal(anyhow::anyhow!("fetch `{name}`: {doing}: {e}"));
    let file = File::create(dest).map_err(|e| fatal(&format!("cannot create `{}`", dest.display()), e))?;
    let mut out = BufWriter::new(file);
    let progress = Progress::new(name, total, printer);
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Attempt::Retry(format!("the download broke off after {received} bytes: {e}"))),
        };
        out.write_all(&buf[..n]).map_err(|e| fatal(&format!("cannot write `{}`", dest.display()), e))?;
        received += n as u64;
        progress.advance(received);
    }
    progress.finish();
    if let Some(total) = total
        && received != total
    {
        return Err(Attempt::Retry(format!("the download ended after {received} of {total} bytes")));
    }
    out.flush().map_err(|e| fatal(&format!("cannot write `{}`", dest.display()), e))?;
    Ok(())
}

/// A progress bar on a terminal; one line when the download starts otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(name: &str, total: Option<u64>, printer: &Printer) -> Self {
        use std::io::IsTerminal as _;
        let size = total.map(|t| format!(" ({})", crate::report::human_size(t))).unwrap_or_default();
        let on_terminal = std::io::stderr().is_terminal() && printer.verbosity() >= crate::report::Verbosity::Normal;
        if !on_terminal {
            printer.status("Fetching", &format!("{name}{size}"));
            return Self { bar: None };
        }
        let bar = match total {
            Some(total) => indicatif::ProgressBar::new(total),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12.cyan.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_prefix("Fetching");
        bar.set_message(name.to_owned());
        Self { bar: Some(bar) }
    }

    fn advance(&self, received: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(received);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
