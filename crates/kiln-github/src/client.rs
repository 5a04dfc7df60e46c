//! The client: one repository, its releases and its Actions caches.

use std::{future::Future, time::Duration};

use kiln_http::{Failure, RetryError};
use octocrab::Octocrab;

pub use kiln_types::Repo;

use crate::{Error, Permission};

/// A release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Its id.
    pub id: u64,
    /// Its tag.
    pub tag: String,
    /// Whether it is a draft.
    pub draft: bool,
    /// Its name.
    pub name: String,
    /// Its notes.
    pub body: String,
    /// Its web page.
    pub html_url: String,
}

/// A release asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its id.
    pub id: u64,
    /// Its file name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:HEX`, as GitHub computes it for uploads (absent on old assets).
    pub digest: Option<String>,
    /// Where it downloads from.
    pub download_url: String,
}

/// An Actions cache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its id.
    pub id: i64,
    /// Its key.
    pub key: String,
    /// The git ref it was saved on (`refs/heads/main`, `refs/pull/1/merge`).
    pub git_ref: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Told about each retry: what failed and how long the wait before the next attempt is.
pub type RetryNotice = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// How GitHub requests are retried: kiln's API budget, unless a caller sets another.
pub type Retry = kiln_http::Retry;

/// A client for one repository.
pub struct Client {
    crab: Octocrab,
    repo: Repo,
    retry: Retry,
    notice: Option<RetryNotice>,
    /// Kept only to scrub it from any text GitHub sends back.
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("repo", &self.repo).field("retry", &self.retry).finish_non_exhaustive()
    }
}

const PAGE: u8 = 100;

impl Client {
    /// A client of `api` (e.g. [`crate::DEFAULT_API`]) for `repo`, with a token or anonymous
    /// (public data only); release assets are uploaded to `uploads` (see [`uploads_for`]).
    /// Must be made inside the Tokio runtime that will run its requests.
    pub fn new(api: &str, uploads: &str, token: Option<&str>, repo: Repo, retry: Retry) -> Result<Self, Error> {
        let token = token.map(str::trim).unwrap_or_default().to_owned();
        if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(Error::Usage("the GitHub token holds spaces or control characters".to_owned()));
        }
        for (what, address) in [("API", api), ("uploads", uploads)] {
            let valid = address
                .parse::<http::Uri>()
                .is_ok_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some());
            if !valid {
                return Err(Error::Usage(format!(
                    "`{address}` is not a GitHub {what} address (http:// or https://, e.g. {})",
                    crate::DEFAULT_API
                )));
            }
        }
        let usage = |e: octocrab::Error| Error::Usage(format!("`{api}` is not a usable GitHub API address: {e}"));
        // kiln's one client: its trust store and timeouts (a request that hangs is cut off).
        // octocrab sends the token only to these two hosts, and reqwest drops it on a redirect
        // to another host (an asset download from a CDN).
        let http = kiln_http::client(kiln_http::Timeouts::DEFAULT)
            .map_err(|e| Error::Transport { doing: "setting up the HTTP client".to_owned(), message: e.to_string() })?;
        let mut builder = Octocrab::builder().base_uri(api).map_err(usage)?.upload_uri(uploads).map_err(usage)?;
        if !token.is_empty() {
            builder = builder.personal_token(token.clone());
        }
        let crab = builder.build_with_reqwest(http).map_err(usage)?;
        Ok(Self { crab, repo, retry, notice: None, token })
    }

    /// Calls `notice` with one line before each retry (a silent wait looks like a hang).
    pub fn with_retry_notice(mut self, notice: RetryNotice) -> Self {
        self.notice = Some(notice);
        self
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    fn redact(&self, text: &str) -> String {
        if self.token.is_empty() { text.to_owned() } else { text.replace(&self.token, "***") }
    }

    fn classify(&self, doing: &str, err: octocrab::Error) -> Failure<Error> {
        match err {
            octocrab::Error::GitHub { source, .. } => {
                let status = source.status_code.as_u16();
                let message = self.redact(&source.message);
                let header = |name: &str| {
                    source.headers.as_ref().and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()).map(str::to_owned)
                };
                let retry_after = header("retry-after").and_then(|s| s.trim().parse::<u64>().ok());
                let exhausted = header("x-ratelimit-remaining").is_some_and(|r| r.trim() == "0");
                match status {
                    401 => Failure::Permanent(Error::TokenRejected { doing: doing.to_owned() }),
                    403 | 429 if retry_after.is_some() || exhausted || message.contains("rate limit") => {
                        let until_reset = source.rate_limit_reset.and_then(|reset| {
                            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
                            Some(Duration::from_secs(reset.saturating_sub(now.as_secs())))
                        });
                        let wait = retry_after.map(Duration::from_secs).or(if exhausted { until_reset } else { None });
                        Failure::Transient { wait, why: format!("HTTP {status} (rate limited): {message}") }
                    }
                    408 | 500..=599 => Failure::Transient { wait: None, why: format!("HTTP {status}: {message}") },
                    _ => {
                        Failure::Permanent(Error::Status { doing: doing.to_owned(), status, message, permission: None })
                    }
                }
            }
            octocrab::Error::Reqwest { ref source, .. } => {
                Failure::Transient { wait: None, why: self.redact(&kiln_http::describe(source)) }
            }
            octocrab::Error::Service { .. } | octocrab::Error::Http { .. } => {
                Failure::Transient { wait: None, why: self.redact(&format!("{err}")) }
            }
            other => Failure::Permanent(Error::Transport {
                doing: doing.to_owned(),
                message: self.redact(&other.to_string()),
            }),
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts run out (kiln's one
    /// retry loop, with GitHub's reading of its answers).
    async fn attempt<T, F, Fut>(&self, doing: &str, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, octocrab::Error>>,
    {
        let result = kiln_http::with_retries(
            &self.retry,
            |_| {
                let call = call();
                async move { call.await.map_err(|err| self.classify(doing, err)) }
            },
            |notice| {
                if let Some(say) = &self.notice {
                    say(&format!(
                        "{doing}: {}; attempt {} of {} in {}s",
                        notice.why,
                        notice.next_attempt,
                        notice.attempts,
                        notice.wait.as_secs_f32()
                    ));
                }
            },
        )
        .await;
        result.map_err(|err| match err {
            RetryError::Permanent(err) => err,
            RetryError::GaveUp { attempts, last } => Error::GaveUp { doing: doing.to_owned(), attempts, last },
        })
    }

    /// The release for `tag`, if there is one. GitHub's look-up by tag does not see drafts,
    /// so when it finds nothing the releases are listed (a token with push access sees drafts).
    pub async fn release_by_tag(&self, tag: &str) -> Result<Option<Release>, Error> {
        let releases = self.crab.repos(&self.repo.owner, &self.repo.name);
        let doing = format!("looking up release {tag} of {}", self.repo);
        match self.attempt(&doing, || async { releases.releases().get_by_tag(tag).await }).await {
            Ok(release) => return Ok(Some(release_of(release))),
            Err(err) if err.status() == Some(404) => {}
            Err(err) => return Err(err),
        }
        let doing = format!("listing the releases of {}", self.repo);
        for page in 1u32.. {
            let found = self
                .attempt(&doing, || async { releases.releases().list().per_page(PAGE).page(page).send().await })
                .await?;
            let next = found.next.is_some();
            if let Some(release) = found.items.into_iter().find(|r| r.tag_name == tag) {
                return Ok(Some(release_of(release)));
            }
            if !next {
                break;
            }
        }
        Ok(None)
    }

    /// Creates the release for `tag`.
    pub async fn create_release(&self, tag: &str, name: &str, body: &str, draft: bool) -> Result<Release, Error> {
        let repos = self.crab.repos(&self.repo.owner, &self.repo.name);
        let doing = format!("creating release {tag} of {}", self.repo);
        let release = self
            .attempt(&doing, || async { repos.releases().create(tag).name(name).body(body).draft(draft).send().await })
            .await?;
        Ok(release_of(release))
    }

    /// Sets a release's name, notes and draft flag.
    pub async fn update_release(&self, id: u64, name: &str, body: &str, draft: bool) -> Result<Release, Error> {
        let repos = self.crab.repos(&self.repo.owner, &self.repo.name);
        let doing = format!("updating release {id} of {}", self.repo);
        let release = self
            .attempt(&doing, || async { repos.releases().update(id).name(name).body(body).draft(draft).send().await })
            .await?;
        Ok(release_of(release))
    }

    /// Every asset of a release (all pages).
    pub async fn assets(&self, release_id: u64) -> Result<Vec<Asset>, Error> {
        let repos = self.crab.repos(&self.repo.owner, &self.repo.name);
        let doing = format!("listing the assets of release {release_id} of {}", self.repo);
        let mut assets = Vec::new();
        for page in 1u32.. {
            let found = self
                .attempt(&doing, || async {
                    repos.releases().assets(release_id).per_page(PAGE).page(page).send().await
                })
                .await?;
            // The server may cap a page below what was asked: its `Link: rel="next"` says
            // whether more follow.
            let empty = found.items.is_empty();
            assets.extend(found.items.into_iter().map(asset_of));
            if empty || found.next.is_none() {
                break;
            }
        }
        Ok(assets)
    }

    /// Uploads a file as an asset of a release. A retried upload first removes what an
    /// attempt that failed late may have left under the same name.
    pub async fn upload_asset(&self, release_id: u64, name: &str, bytes: Vec<u8>) -> Result<Asset, Error> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+')) {
            return Err(Error::Usage(format!("`{name}` is not a plain asset name (letters, digits, `-_.+`)")));
        }
        let repos = self.crab.repos(&self.repo.owner, &self.repo.name);
        let doing = format!("uploading {name} to release {release_id} of {}", self.repo);
        let body = bytes::Bytes::from(bytes);
        let mut first = true;
        let uploaded = self
            .attempt(&doing, || {
                let retried = !std::mem::replace(&mut first, false);
                let body = body.clone();
                let repos = &repos;
                async move {
                    if retried {
                        self.remove_named(release_id, name).await?;
                    }
                    repos.releases().upload_asset(release_id, name, body).send().await
                }
            })
            .await?;
        Ok(asset_of(uploaded))
    }

    /// Deletes the asset called `name`, if the release has one (inside a retried upload).
    async fn remove_named(&self, release_id: u64, name: &str) -> Result<(), octocrab::Error> {
        let repos = self.crab.repos(&self.repo.owner, &self.repo.name);
        let page = repos.releases().assets(release_id).per_page(PAGE).send().await?;
        for asset in page.items.into_iter().filter(|asset| asset.name == name) {
            self.delete_route(&format!("/repos/{}/{}/releases/assets/{}", self.repo.owner, self.repo.name, *asset.id))
                .await?;
        }
        Ok(())
    }

    async fn delete_route(&self, route: &str) -> Result<(), octocrab::Error> {
        let response = self.crab._delete(route, None::<&()>).await?;
        octocrab::map_github_error(response).await?;
        Ok(())
    }

    /// Deletes an asset.
    pub async fn delete_asset(&self, id: u64) -> Result<(), Error> {
        let route = format!("/repos/{}/{}/releases/assets/{id}", self.repo.owner, self.repo.name);
        self.attempt(&format!("deleting asset {id} of {}", self.repo), || self.delete_route(&route)).await
    }

    /// The Actions caches whose key starts with `prefix` (all pages), only those saved on
    /// `git_ref` when one is given (`refs/pull/7/merge`).
    pub async fn caches(&self, prefix: &str, git_ref: Option<&str>) -> Result<Vec<CacheEntry>, Error> {
        let doing = format!("listing the Actions caches of {0} (GET /repos/{0}/actions/caches)", self.repo);
        let mut caches = Vec::new();
        let mut seen = 0usize;
        for page in 1u32.. {
            let list = self
                .attempt(&doing, || async {
                    let actions = self.crab.actions();
                    let mut request = actions
                        .list_repo_caches(&self.repo.owner, &self.repo.name)
                        .key(prefix)
                        .per_page(PAGE)
                        .page(page);
                    if let Some(git_ref) = git_ref {
                        request = request.r#ref(git_ref);
                    }
                    request.send().await
                })
                .await
                .map_err(|err| err.needing(Permission::ActionsWrite))?;
            let count = list.actions_caches.len();
            seen += count;
            let wanted = |c: &octocrab::models::actions::ActionsCacheItem| {
                c.key.starts_with(prefix) && git_ref.is_none_or(|wanted| c.r#ref.as_deref() == Some(wanted))
            };
            caches.extend(list.actions_caches.into_iter().filter(wanted).map(|c| CacheEntry {
                id: c.id,
                key: c.key,
                git_ref: c.r#ref,
                created_at: c.created_at.to_rfc3339(),
                size: u64::try_from(c.size_in_bytes).unwrap_or(0),
            }));
            // The server may cap a page below what was asked; the total says when all came.
            let total = usize::try_from(list.total_count).unwrap_or(0);
            if count == 0 || seen >= total {
                break;
            }
        }
        Ok(caches)
    }

    /// Deletes an Actions cache.
    pub async fn delete_cache(&self, id: i64) -> Result<(), Error> {
        let doing = format!("deleting Actions cache {id} of {0} (DELETE /repos/{0}/actions/caches/{id})", self.repo);
        self.attempt(&doing, || async {
            self.crab.actions().delete_repo_cache(&self.repo.owner, &self.repo.name, id).await
        })
        .await
        .map_err(|err| err.needing(Permission::ActionsWrite))
    }

    /// Whether pull request `number` is open or closed (merged counts as closed).
    pub async fn pull_state(&self, number: u64) -> Result<PullState, Error> {
        /// The one field of a pull request this needs.
        #[derive(serde::Deserialize)]
        struct Pull {
            state: String,
        }
        let route = format!("/repos/{}/{}/pulls/{number}", self.repo.owner, self.repo.name);
        let doing = format!("reading the state of pull request #{number} of {} (GET {route})", self.repo);
        let pull: Pull = self
            .attempt(&doing, || async { self.crab.get(&route, None::<&()>).await })
            .await
            .map_err(|err| err.needing(Permission::PullRequestsRead))?;
        match pull.state.as_str() {
            "open" => Ok(PullState::Open),
            "closed" => Ok(PullState::Closed),
            other => Err(Error::Transport {
                doing,
                message: format!("GitHub named an unknown state `{}`", kiln_types::escape_untrusted(other)),
            }),
        }
    }
}

/// A pull request's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullState {
    /// Open (drafts too).
    Open,
    /// Closed or merged.
    Closed,
}

/// The uploads address that goes with an API address: `uploads.github.com` for github.com,
/// `https://HOST/api/uploads` for a GitHub Enterprise `https://HOST/api/v3`, else the same.
pub fn uploads_for(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if api == crate::DEFAULT_API {
        "https://uploads.github.com".to_owned()
    } else if let Some(host) = api.strip_suffix("/api/v3") {
        format!("{host}/api/uploads")
    } else {
        api.to_owned()
    }
}

fn release_of(release: octocrab::models::repos::Release) -> Release {
    Release {
        id: *release.id,
        tag: release.tag_name,
        draft: release.draft,
        name: release.name.unwrap_or_default(),
        body: release.body.unwrap_or_default(),
        html_url: release.html_url.to_string(),
    }
}

fn asset_of(asset: octocrab::models::repos::Asset) -> Asset {
    Asset {
        id: *asset.id,
        name: asset.name,
        size: u64::try_from(asset.size).unwrap_or(0),
        digest: asset.digest,
        download_url: asset.browser_download_url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_go_to_the_uploads_host_and_bad_addresses_are_refused() {
        assert_eq!(uploads_for("https://api.github.com"), "https://uploads.github.com");
        assert_eq!(uploads_for("https://ghe.example/api/v3/"), "https://ghe.example/api/uploads");
        assert_eq!(uploads_for("http://127.0.0.1:9"), "http://127.0.0.1:9");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _enter = runtime.enter();
        let repo: Repo = "a/b".parse().expect("repo");
        for bad in ["notaurl", "ftp://x", "http://"] {
            let err = Client::new(bad, bad, None, repo.clone(), Retry::API).expect_err(bad);
            assert!(err.to_string().contains("is not a GitHub API address"), "{err}");
        }
    }

    #[test]
    fn repositories_are_owner_slash_name() {
        let repo: Repo = "kiln-dev/kiln".parse().expect("repo");
        assert_eq!(repo.to_string(), "kiln-dev/kiln");
        for bad in ["kiln", "a/b/c", "/b", "a/", "a b/c"] {
            assert!(bad.parse::<Repo>().is_err(), "{bad}");
        }
    }
}
