//! Where kiln finds GitHub: the API address, the token (never printed), the repository.

use anyhow::Context as _;
use kiln_github::{Client, Repo, Retry};

use crate::{env, error::UsageError, events::Reporter};

/// The API address: `KILN_GITHUB_API`, else the public API.
pub(crate) fn api() -> String {
    env::non_empty(env::KILN_GITHUB_API).unwrap_or_else(|| kiln_github::DEFAULT_API.to_owned())
}

/// The uploads address: `KILN_GITHUB_UPLOADS`, else the one that goes with [`api`].
pub(crate) fn uploads() -> String {
    env::non_empty(env::KILN_GITHUB_UPLOADS).unwrap_or_else(|| kiln_github::uploads_for(&api()))
}

/// The token: `GITHUB_TOKEN`, else `GH_TOKEN`.
pub(crate) fn token() -> Option<String> {
    [env::GITHUB_TOKEN, env::GH_TOKEN].into_iter().find_map(env::non_empty)
}

/// The repository to work on: the one given, else `declared` (`[release] repository`), else
/// `GITHUB_REPOSITORY` (set in GitHub Actions).
pub(crate) fn repository(given: Option<&str>, declared: Option<&str>) -> Option<String> {
    given.or(declared).map(str::to_owned).or_else(|| env::non_empty(env::GITHUB_REPOSITORY))
}

/// A client for `repository`; `need_token` makes a missing token an error that says what to set.
/// Retries are said to `reporter`, when there is one.
pub(crate) fn client(
    repository: &str,
    need_token: bool,
    reporter: Option<std::sync::Arc<dyn Reporter>>,
) -> anyhow::Result<Client> {
    let repo: Repo = repository.parse()?;
    let token = token();
    if need_token && token.is_none() {
        return Err(missing_token().into());
    }
    let client = Client::new(&api(), &uploads(), token.as_deref(), repo, Retry::API)?;
    Ok(match reporter {
        Some(reporter) => {
            client.with_retry_notice(std::sync::Arc::new(move |line: &str| reporter.status("Retrying", line)))
        }
        None => client,
    })
}

/// The error for a command that needs a token and has none.
pub(crate) fn missing_token() -> UsageError {
    UsageError::new(
        "no GitHub token",
        Some(
            "set GITHUB_TOKEN (in a workflow: `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`) or GH_TOKEN".to_owned(),
        ),
    )
}

/// The download address of a release asset, looked up through the API.
pub(crate) fn asset_url(repository: &str, tag: &str, asset: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client(repository, false, None)?;
        let release =
            client.release_by_tag(tag).await?.with_context(|| format!("{repository} has no release tagged {tag}"))?;
        let assets = client.assets(release.id).await?;
        let found = assets.iter().find(|a| a.name == asset).with_context(|| {
            let names: Vec<&str> = assets.iter().map(|a| a.name.as_str()).collect();
            format!("release {tag} has no asset {asset} (it has: {})", names.join(", "))
        })?;
        Ok(found.download_url.clone())
    })
}
