//! Opening a remote by its URL with the object_store backend for its scheme.

use std::{sync::Arc, time::Duration};

use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig,
    aws::AmazonS3Builder,
    client::{HttpClient, HttpConnector},
    http::HttpBuilder,
    local::LocalFileSystem,
    prefix::PrefixStore,
};

use crate::remote::RemoteSpec;

/// Why a remote could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse or has a scheme kiln does not know.
    #[error("remote `{url}`: {problem}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The backend refused its configuration.
    #[error("remote `{url}`: {message}")]
    Backend {
        /// The URL.
        url: String,
        /// What object_store said.
        message: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime for remote requests: {0}")]
    Runtime(String),
}

/// The backend for `spec`: S3 (with the usual `AWS_*` variables), HTTP(S) or a local directory
/// (created only when `create`, that is, when kiln pushes to it).
pub(crate) fn object_store(spec: &RemoteSpec, create: bool) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let bad = |problem: String| OpenError::BadUrl { url: spec.url.clone(), problem };
    let backend = |e: object_store::Error| OpenError::Backend { url: spec.url.clone(), message: e.to_string() };
    let (scheme, rest) = spec.url.split_once("://").ok_or_else(|| {
        bad("it has no scheme; remotes are `s3://BUCKET/PREFIX`, `http(s)://HOST/PATH` or `file:///PATH`".to_owned())
    })?;
    match scheme {
        "s3" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("it names no bucket".to_owned()));
            }
            let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .into_iter()
                .find_map(|name| std::env::var(name).ok().map(|value| (name, value)));
            let endpoint = match (&spec.endpoint, &env_endpoint) {
                (Some(endpoint), _) => Some(("its `endpoint`", endpoint.as_str())),
                (None, Some((name, value))) => Some((*name, value.as_str())),
                (None, None) => None,
            };
            if let Some((from, endpoint)) = endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(bad(format!("the endpoint `{endpoint}` ({from}) must start with `http://` or `https://`")));
            }
            let mut builder = AmazonS3Builder::from_env()
                .with_url(format!("s3://{bucket}"))
                .with_client_options(client_options(spec.timeout))
                .with_http_connector(KilnConnector)
                .with_retry(retry(spec.timeout));
            if let Some(endpoint) = &spec.endpoint {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            } else if std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .is_ok_and(|e| e.starts_with("http://"))
            {
                builder = builder.with_allow_http(true);
            }
            if let Some(region) = &spec.region {
                builder = builder.with_region(region);
            }
            let store = builder.build().map_err(backend)?;
            Ok(with_prefix(store, prefix))
        }
        "http" | "https" => {
            let store = HttpBuilder::new()
                .with_url(spec.url.trim_end_matches('/'))
                .with_client_options(client_options(spec.timeout).with_allow_http(scheme == "http"))
                .with_http_connector(KilnConnector)
                .with_retry(retry(spec.timeout))
                .build()
                .map_err(backend)?;
            Ok(Arc::new(store))
        }
        "file" => {
            let path = std::path::Path::new(rest);
            if !path.is_absolute() {
                return Err(bad("a file remote needs an absolute path (`file:///PATH`)".to_owned()));
            }
            if create {
                std::fs::create_dir_all(path).map_err(|e| bad(format!("cannot create `{}`: {e}", path.display())))?;
            } else if !path.is_dir() {
                return Err(bad(format!("`{}` is not a directory (not mounted?)", path.display())));
            }
            Ok(Arc::new(LocalFileSystem::new_with_prefix(path).map_err(backend)?))
        }
        other => Err(bad(format!(
            "unknown scheme `{other}`; remotes are `s3://BUCKET/PREFIX`, `http(s)://HOST/PATH` or `file:///PATH`"
        ))),
    }
}

fn with_prefix<T: ObjectStore>(store: T, prefix: &str) -> Arc<dyn ObjectStore> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) }
}

/// Connections fail fast; a request may go `timeout` without receiving a byte, however long
/// it takes in all (a large blob over a slow link is not cut off).
fn client_options(timeout: Duration) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(timeout.min(Duration::from_secs(3)))
        .with_timeout_disabled()
        .with_read_timeout(timeout)
}

/// kiln's retry budget for remotes ([`kiln_http::Retry::REMOTE`]: one quick retry, since a
/// remote that is down must not hold a build up), run by object_store's own loop.
fn retry(timeout: Duration) -> RetryConfig {
    let budget = kiln_http::Retry::REMOTE;
    RetryConfig {
        backoff: BackoffConfig { init_backoff: budget.first_delay, max_backoff: budget.max_delay, base: 2.0 },
        max_retries: budget.attempts.saturating_sub(1) as usize,
        retry_timeout: timeout,
    }
}

/// Gives object_store kiln's one HTTP client (its trust store, user agent), with the timeouts
/// and HTTP permission of the options object_store asks for: it connects with other options
/// for credentials than for the objects.
#[derive(Debug)]
struct KilnConnector;

impl HttpConnector for KilnConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic =
            |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic { store: "HTTP", source };
        // Durations come back as humantime text (`3s`, `500ms`).
        let duration = |key| options.get_config_value(&key).and_then(|text| humantime::parse_duration(&text).ok());
        let timeouts = kiln_http::Timeouts {
            connect: duration(ClientConfigKey::ConnectTimeout).unwrap_or(kiln_http::Timeouts::DEFAULT.connect),
            read: duration(ClientConfigKey::ReadTimeout).unwrap_or(kiln_http::Timeouts::DEFAULT.read),
        };
        let mut builder = kiln_http::client_builder(timeouts)
            .map_err(|e| generic(Box::new(e)))?
            .https_only(options.get_config_value(&ClientConfigKey::AllowHttp).as_deref() != Some("true"));
        if let Some(total) = duration(ClientConfigKey::Timeout) {
            builder = builder.timeout(total);
        }
        let client = builder.build().map_err(|e| generic(Box::new(e)))?;
        Ok(HttpClient::new(client))
    }
}
