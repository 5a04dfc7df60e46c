//! kiln's one HTTP client. Every request kiln makes (a `[fetch]` download, a remote store's
//! object, a GitHub API call) goes through a `reqwest::Client` built by [`client`], with one TLS
//! trust policy, and is retried by one loop, [`with_retries`], under a [`Retry`] budget.
//!
//! **Trust.** Certificates are checked by rustls (ring provider, no C toolchain beyond ring's
//! own) against the operating system's store: on Linux the bundle and directories of
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` when set, else the distribution's (`/etc/ssl/certs`, ...).
//! A corporate CA the system trusts therefore works for downloads, remote stores and GitHub
//! alike; no bundled root list overrides the system's.
//!
//! **Retries.** Lost connections, timeouts, `408`, `429` and `5xx` answers are transient; the
//! wait doubles from [`Retry::first_delay`] up to [`Retry::max_delay`], and a server's
//! `Retry-After` is honoured within that bound. Everything else is final at once. The budgets
//! differ by purpose ([`Retry::DOWNLOAD`], [`Retry::API`], [`Retry::REMOTE`]); the rules do not.

use std::{future::Future, sync::Arc, time::Duration};

pub use reqwest;

/// The `User-Agent` kiln sends.
pub const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The system's certificate store could not be used.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// How long a request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection (TCP and TLS).
    pub connect: Duration,
    /// Between two reads of the response (a stalled transfer), not the whole transfer.
    pub read: Duration,
}

impl Timeouts {
    /// For downloads and API calls: patient with a slow transfer, quick to notice a dead host.
    pub const DEFAULT: Self = Self { connect: Duration::from_secs(15), read: Duration::from_secs(120) };
}

/// The TLS configuration every kiln request uses: rustls with the ring provider and the
/// operating system's trust store.
pub fn tls_config() -> Result<rustls::ClientConfig, Error> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| Error::Tls(format!("the system's certificate store is unusable: {e}")))?
        .with_no_client_auth();
    Ok(config)
}

/// A client builder with kiln's TLS policy, user agent and `timeouts`; callers that need more
/// (HTTPS only, a total timeout) add it before `build()`.
pub fn client_builder(timeouts: Timeouts) -> Result<reqwest::ClientBuilder, Error> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config()?)
        .user_agent(USER_AGENT)
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.read))
}

/// A client with kiln's TLS policy, user agent and `timeouts`.
pub fn client(timeouts: Timeouts) -> Result<reqwest::Client, Error> {
    client_builder(timeouts)?.build().map_err(Error::Client)
}

/// How often and how patiently a request is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub first_delay: Duration,
    /// The longest wait, also for a `Retry-After` a server asks for.
    pub max_delay: Duration,
}

impl Retry {
    /// Downloads of pinned files: three tries, the file is worth a short wait.
    pub const DOWNLOAD: Self =
        Self { attempts: 3, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8) };
    /// GitHub's API (releases, caches): a release must not fail on a passing hiccup or a rate
    /// limit that resets within a minute.
    pub const API: Self = Self { attempts: 5, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(60) };
    /// Remote stores: one quick retry, because a remote that is down must not hold a build up
    /// (kiln builds locally instead).
    pub const REMOTE: Self =
        Self { attempts: 2, first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };

    /// The wait after `failures` failed tries (1 for the first), or what the server asked
    /// for, within [`Retry::max_delay`].
    pub fn delay(&self, failures: u32, asked: Option<Duration>) -> Duration {
        let doubled = self.first_delay.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
        asked.unwrap_or(doubled).min(self.max_delay)
    }
}

/// Whether an HTTP status is worth another try: a timeout, a rate limit or a server error.
pub fn is_transient(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 429)
}

/// The wait a `Retry-After` header asks for, when it gives seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How one try failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth another try (after `wait`, when the server said how long).
    Transient {
        /// What went wrong, for the retry notice and the final error.
        why: String,
        /// The wait the server asked for.
        wait: Option<Duration>,
    },
    /// Final: no retry helps.
    Permanent(E),
}

impl<E> Failure<E> {
    /// A transient failure of a request that never got an answer, or whose answer broke off.
    pub fn transport(err: &reqwest::Error) -> Self {
        Self::Transient { why: describe(err), wait: None }
    }
}

/// A request error with its causes, in one line (reqwest's own message stops at "error
/// sending request").
pub fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What [`with_retries`] returns when the work did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// A try failed for good.
    #[error(transparent)]
    Permanent(E),
    /// Every try failed transiently.
    #[error("gave up after {attempts} tries: {last}")]
    GaveUp {
        /// How many tries were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// A retry about to happen, for the line that says so (a silent wait looks like a hang).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryNotice {
    /// What failed.
    pub why: String,
    /// The try that comes next (2 for the first retry).
    pub next_attempt: u32,
    /// Tries in all.
    pub attempts: u32,
    /// The wait before it.
    pub wait: Duration,
}

/// Runs `attempt` (given the try's number, from 1) until it succeeds, fails for good, or
/// `retry`'s tries run out; `notice` hears of each retry before its wait.
pub async fn with_retries<T, E, F, Fut>(
    retry: &Retry,
    mut attempt: F,
    mut notice: impl FnMut(&RetryNotice),
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt(tried).await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(err)) => return Err(RetryError::Permanent(err)),
            Err(Failure::Transient { why, .. }) if tried >= retry.attempts => {
                return Err(RetryError::GaveUp { attempts: tried, last: why });
            }
            Err(Failure::Transient { why, wait }) => {
                let wait = retry.delay(tried, wait);
                notice(&RetryNotice { why, next_attempt: tried + 1, attempts: retry.attempts, wait });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Sends the request `make` builds (again for each try) and returns the first answer that is
/// not transient: success, or a final status such as `404` for the caller to judge. Lost
/// connections and transient statuses are retried under `retry`.
pub async fn send(
    retry: &Retry,
    make: impl Fn() -> reqwest::RequestBuilder,
    notice: impl FnMut(&RetryNotice),
) -> Result<reqwest::Response, RetryError<reqwest::Error>> {
    with_retries(
        retry,
        |_| async {
            let response = make().send().await.map_err(|err| Failure::transport(&err))?;
            let status = response.status();
            if is_transient(status) {
                let wait = retry_after(response.headers());
                return Err(Failure::Transient { why: format!("the server answered {status}"), wait });
            }
            Ok(response)
        },
        notice,
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[test]
    fn delays_double_and_honour_retry_after_within_the_bound() {
        let retry = Retry { attempts: 5, first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        assert_eq!(retry.delay(1, None), Duration::from_millis(100));
        assert_eq!(retry.delay(2, None), Duration::from_millis(200));
        assert_eq!(retry.delay(3, None), Duration::from_millis(400));
        assert_eq!(retry.delay(9, None), Duration::from_secs(1));
        assert_eq!(retry.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(retry.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(1));
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503] {
            assert!(is_transient(reqwest::StatusCode::from_u16(code).expect("status")), "{code}");
        }
        for code in [200, 301, 400, 401, 403, 404] {
            assert!(!is_transient(reqwest::StatusCode::from_u16(code).expect("status")), "{code}");
        }
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_and_transient_ones_run_out() {
        let tries = AtomicU32::new(0);
        let retry = Retry { attempts: 3, first_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
        let mut notices = Vec::new();
        let result: Result<(), _> = with_retries(
            &retry,
            |_| async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<(), Failure<&str>>(Failure::Transient { why: "reset".into(), wait: None })
            },
            |notice| notices.push(notice.next_attempt),
        )
        .await;
        assert!(matches!(result, Err(RetryError::GaveUp { attempts: 3, .. })), "{result:?}");
        assert_eq!(notices, [2, 3]);
        let result: Result<(), _> =
            with_retries(&retry, |_| async { Err(Failure::Permanent("no")) }, |_| panic!("no retry")).await;
        assert!(matches!(result, Err(RetryError::Permanent("no"))));
    }

    /// A real server on loopback answers 503 with `Retry-After: 0`, then 200: `send` retries
    /// once and returns the answer.
    #[tokio::test]
    async fn send_retries_a_server_error_and_returns_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            for answer in ["503 Service Unavailable\r\nRetry-After: 0", "200 OK"] {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).expect("request");
                let body = "hello";
                write!(
                    stream,
                    "HTTP/1.1 {answer}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .expect("answer");
            }
        });
        let client = client(Timeouts::DEFAULT).expect("client");
        let url = format!("http://{address}/file");
        let retry = Retry { attempts: 3, first_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
        let mut notices = Vec::new();
        let response = send(&retry, || client.get(&url), |n| notices.push(n.why.clone())).await.expect("answer");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "hello");
        assert_eq!(notices, ["the server answered 503 Service Unavailable"]);
        server.join().expect("server");
    }
}
