//! Where kiln finds GitHub: the API address, the token (never printed), the repository.

use anyhow::Context as _;
use kiln_github::{Client, Repo, Retry};

use crate::{env, report::Printer};

/// The API address: `KILN_GITHUB_API`, else the public API.
pub fn api() -> String {
    std::env::var(env::KILN_GITHUB_API)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| kiln_github::DEFAULT_API.to_owned())
}

/// The uploads address: `KILN_GITHUB_UPLOADS`, else the one that goes with [`api`].
pub fn uploads() -> String {
    std::env::var(env::KILN_GITHUB_UPLOADS)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| kiln_github::uploads_for(&api()))
}

/// The token: `GITHUB_TOKEN`, else `GH_TOKEN`.
pub fn token() -> Option<String> {
    [env::GITHUB_TOKEN, env::GH_TOKEN]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The repository to work on: the one given, else `[release] repository`, else
/// `GITHUB_REPOSITORY` (set in GitHub Actions).
pub fn repository(given: Option<&str>, config: &crate::config::Config) -> Option<String> {
    given
        .map(str::to_owned)
        .or_else(|| config.release.repository.clone())
        .or_else(|| std::env::var(env::GITHUB_REPOSITORY).ok().filter(|r| !r.trim().is_empty()))
}

/// A client for `repository`; `need_token` makes a missing token an error that says what to set.
/// Retries are said on `printer`, when there is one.
pub fn client(repository: &str, need_token: bool, printer: Option<&std::sync::Arc<Printer>>) -> anyhow::Result<Client> {
    let repo: Repo = repository.parse()?;
    let token = token();
    if need_token && token.is_none() {
        return Err(missing_token().into());
    }
    let client = Client::new(&api(), &uploads(), token.as_deref(), repo, Retry::default())?;
    Ok(match printer {
        Some(printer) => {
            let printer = printer.clone();
            client.with_retry_notice(std::sync::Arc::new(move |line: &str| printer.status("Retrying", line)))
        }
        None => client,
    })
}

/// The error for a command that needs a token and has none.
pub fn missing_token() -> crate::commands::UsageError {
    crate::commands::UsageError::new(
        "no GitHub token",
        Some(
            "set GITHUB_TOKEN (in a workflow: `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`) or GH_TOKEN".to_owned(),
        ),
    )
}

/// The download address of a release asset, looked up through the API.
pub fn asset_url(repository: &str, tag: &str, asset: &str) -> anyhow::Result<String> {
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
