//! `[store]`: where the store lives, the remotes it shares entries through, and the keys
//! whose signatures it accepts.

use std::time::Duration;

use super::{ConfigError, raw::RawStore, resolve::Resolver};

/// How long a remote may stay silent by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One of `[store] remotes`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    /// `s3://BUCKET/PREFIX`, `http(s)://HOST/PATH` or `file:///PATH`.
    pub url: String,
    /// Push every entry kiln builds or uses here (with a signing key).
    pub push: bool,
    /// An S3 endpoint other than AWS's.
    pub endpoint: Option<String>,
    /// An S3 region.
    pub region: Option<String>,
    /// How long a request may go without an answer.
    pub timeout: Duration,
}

/// The URL schemes a remote may have.
const SCHEMES: [&str; 4] = ["s3://", "http://", "https://", "file://"];

impl Resolver<'_> {
    /// The remotes and trusted keys of `[store]`.
    pub(super) fn store_remotes(&self, raw: &RawStore) -> Result<(Vec<Remote>, Vec<String>), ConfigError> {
        let mut remotes = Vec::new();
        for (index, remote) in raw.remotes.iter().enumerate() {
            let key = format!("store.remotes[{index}]");
            let span = Some(remote.span());
            let raw = &remote.get_ref().0;
            if !SCHEMES.iter().any(|scheme| raw.url.starts_with(scheme)) {
                return Err(self
                    .error(span, key, format!("`{}` is not a remote URL kiln knows", raw.url))
                    .with_help("remotes are `s3://BUCKET/PREFIX`, `http(s)://HOST/PATH` or `file:///ABSOLUTE/PATH`"));
            }
            let scheme = raw.url.split("://").next().unwrap_or_default();
            let rest = raw.url.split_once("://").map_or("", |(_, rest)| rest);
            let problem = match scheme {
                "s3" if rest.split('/').next().is_none_or(str::is_empty) => {
                    Some("it names no bucket (`s3://BUCKET/PREFIX`)")
                }
                "file" if !rest.starts_with('/') => Some("a file remote needs an absolute path (`file:///PATH`)"),
                "http" | "https" if rest.split('/').next().is_none_or(str::is_empty) => {
                    Some("it names no host (`https://HOST/PATH`)")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(self.error(span, key, format!("`{}`: {problem}", raw.url)));
            }
            if scheme != "s3" && (raw.endpoint.is_some() || raw.region.is_some()) {
                let which = if raw.endpoint.is_some() { "endpoint" } else { "region" };
                return Err(self
                    .error(
                        span,
                        format!("{key}.{which}"),
                        format!("`{which}` is for `s3://` remotes, and this one is `{}`", raw.url),
                    )
                    .with_help("an HTTP or file remote is reached at its URL; remove the key"));
            }
            if let Some(endpoint) = &raw.endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(self
                    .error(span, format!("{key}.endpoint"), format!("the endpoint `{endpoint}` has no scheme"))
                    .with_help(format!("write `http://{endpoint}` or `https://{endpoint}`")));
            }
            let timeout = match &raw.timeout {
                None => DEFAULT_TIMEOUT,
                Some(text) => match humantime::parse_duration(text) {
                    Ok(duration) if duration >= Duration::from_millis(100) => duration,
                    Ok(_) => {
                        return Err(self.error(
                            span,
                            format!("{key}.timeout"),
                            "a timeout under 0.1s fails every request",
                        ));
                    }
                    Err(e) => {
                        return Err(self
                            .error(span, format!("{key}.timeout"), format!("invalid duration `{text}`: {e}"))
                            .with_help("write a duration such as \"30s\" or \"2m\""));
                    }
                },
            };
            remotes.push(Remote {
                url: raw.url.clone(),
                push: raw.push,
                endpoint: raw.endpoint.clone(),
                region: raw.region.clone(),
                timeout,
            });
        }
        let mut trusted = Vec::new();
        for (index, text) in raw.trusted_keys.iter().enumerate() {
            #[cfg(feature = "remote")]
            kiln_store::remote::PublicKey::parse(text.get_ref()).map_err(|e| {
                self.error(Some(text.span()), format!("store.trusted-keys[{index}]"), e.to_string())
                    .with_help("trusted keys are the public keys `cargo xtask store keygen` prints (`NAME:BASE64`)")
            })?;
            #[cfg(not(feature = "remote"))]
            let _ = index;
            trusted.push(text.get_ref().clone());
        }
        Ok((remotes, trusted))
    }
}
