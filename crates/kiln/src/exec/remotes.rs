//! The run's remote stores: `[store] remotes` (or `KILN_REMOTES`), the keys it trusts, the key
//! it signs with, and how their notices and push totals reach the user.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use kiln_store::remote::{PublicKey, PushTally, RemoteNotice, RemoteSpec, Remotes, RemotesConfig, SecretKey};

use crate::{config::Remote, env, error::UsageError, events::Reporter, units};

/// The remotes Kiln.toml names (`declared`), or those of `KILN_REMOTES` when it is set
/// (empty: none).
pub(crate) fn specs(declared: &[Remote]) -> Vec<RemoteSpec> {
    match env::var(env::KILN_REMOTES) {
        Some(list) => items(&list).map(RemoteSpec::new).collect(),
        None => declared
            .iter()
            .map(|remote| RemoteSpec {
                url: remote.url.clone(),
                push: remote.push,
                endpoint: remote.endpoint.clone(),
                region: remote.region.clone(),
                timeout: remote.timeout,
            })
            .collect(),
    }
}

/// The items of a list variable, separated by commas, spaces or newlines.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ', '\n']).filter(|item| !item.is_empty())
}

/// The secret key from `KILN_SIGNING_KEY`, or from the file `KILN_SIGNING_KEY_FILE` names.
pub(crate) fn signing_key() -> anyhow::Result<Option<SecretKey>> {
    if let Some(text) = env::non_empty(env::KILN_SIGNING_KEY) {
        let key =
            SecretKey::parse(&text).with_context(|| format!("{} holds no valid signing key", env::KILN_SIGNING_KEY))?;
        return Ok(Some(key));
    }
    let Some(path) = env::var_os(env::KILN_SIGNING_KEY_FILE).map(PathBuf::from) else { return Ok(None) };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read the signing key file `{}` ({})", path.display(), env::KILN_SIGNING_KEY_FILE)
    })?;
    let key = SecretKey::parse(&text).with_context(|| format!("`{}` holds no valid signing key", path.display()))?;
    Ok(Some(key))
}

/// Opens the remotes for a run; `None` when there are none. `push` is `--push`: push to every
/// remote, which needs a signing key. `declared` and `trusted_keys` are Kiln.toml's `[store]`.
pub(crate) fn open(
    declared: &[Remote],
    trusted_keys: &[String],
    reporter: &Arc<dyn Reporter>,
    push: bool,
) -> anyhow::Result<Option<Arc<Remotes>>> {
    let specs = specs(declared);
    if specs.is_empty() {
        if push {
            return Err(UsageError::new(
                "`--push` needs a remote, and Kiln.toml names none",
                Some(format!(
                    "add `[store] remotes = [\"s3://BUCKET/PREFIX\"]` to Kiln.toml or set {}",
                    env::KILN_REMOTES
                )),
            )
            .into());
        }
        return Ok(None);
    }
    let signing = signing_key()?;
    let wants_push = push || specs.iter().any(|spec| spec.push);
    if wants_push && signing.is_none() {
        let help = format!(
            "set {} (or {}) to a key made by `cargo xtask store keygen`",
            env::KILN_SIGNING_KEY,
            env::KILN_SIGNING_KEY_FILE
        );
        if push {
            return Err(UsageError::new("pushing needs a key to sign entries with", Some(help)).into());
        }
        reporter.warn(&format!("not pushing to remotes marked `push`: no signing key; {help}"));
    }
    let mut trusted = Vec::new();
    for text in trusted_keys {
        trusted.push(PublicKey::parse(text).with_context(|| format!("`[store] trusted-keys` holds `{text}`"))?);
    }
    if let Some(list) = env::var(env::KILN_TRUSTED_KEYS) {
        for text in items(&list) {
            trusted.push(
                PublicKey::parse(text)
                    .with_context(|| format!("{} holds a key kiln cannot read", env::KILN_TRUSTED_KEYS))?,
            );
        }
    }
    if let Some(key) = &signing {
        trusted.push(key.public());
    }
    if trusted.is_empty() {
        reporter.alert(
            "remotes are set but no key is trusted, so nothing is taken from them; add the public key of whoever \
             pushes to `[store] trusted-keys`",
        );
    }
    let sink = reporter.clone();
    let remotes = Remotes::open(RemotesConfig {
        specs,
        trusted,
        signing,
        push_all: push,
        // Said even with `-q` (and as cargo's quiet runner): a remote that fails or holds bad
        // entries is something to fix, and it is said once. Waiting for another job's build
        // is the claims working as meant: a status line.
        notice: Arc::new(move |notice| match notice {
            RemoteNotice::Waiting { .. } => sink.status("Waiting", &notice.to_string()),
            _ => sink.alert(&notice.to_string()),
        }),
    })?;
    Ok(Some(Arc::new(remotes)))
}

/// Waits for the background pushes and says what they did.
pub(crate) fn finish(remotes: &Remotes, reporter: &dyn Reporter) {
    let started = std::time::Instant::now();
    for (url, tally) in remotes.finish() {
        if tally == PushTally::default() {
            continue;
        }
        reporter.status("Pushed", &push_line(&url, &tally, started.elapsed()));
    }
}

/// `3 entries to s3://b/p (12 blobs, 4.1 MiB; 2 entries were there)`.
pub(crate) fn push_line(url: &str, tally: &PushTally, waited: std::time::Duration) -> String {
    let mut line = format!(
        "{} to {url} ({}, {} uploaded",
        units::entries(tally.entries_pushed),
        units::plural(tally.blobs_uploaded, "blob", "blobs"),
        units::human_size(tally.bytes_uploaded),
    );
    if tally.blobs_present > 0 {
        line.push_str(&format!("; {} already there", tally.blobs_present));
    }
    if tally.entries_present > 0 {
        line.push_str(&format!("; {} already there", units::entries(tally.entries_present)));
    }
    if tally.entries_failed > 0 {
        line.push_str(&format!("; {} failed", units::entries(tally.entries_failed)));
    }
    if waited.as_secs_f64() >= 0.05 {
        line.push_str(&format!("; waited {} at the end", units::seconds(waited)));
    }
    line.push(')');
    line
}
