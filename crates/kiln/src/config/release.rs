//! `[release]`: what `cargo xtask release` publishes, and where.

use toml::Spanned;

use super::{Artifact, ConfigError, Kernel, Rootfs, raw::RawRelease, resolve::Resolver};

/// `[release]`, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseSettings {
    /// `owner/name` (default: `GITHUB_REPOSITORY`, as GitHub Actions sets it).
    pub repository: Option<String>,
    /// Artifacts published for every arch they are built for (`NAME-ARCH`).
    pub artifacts: Vec<String>,
    /// Kernels published per arch (`NAME-ARCH`, the kernel image).
    pub kernels: Vec<String>,
    /// Rootfs images published per arch (`NAME-ARCH.EXT`).
    pub rootfs: Vec<String>,
}

impl ReleaseSettings {
    /// Whether the section names nothing to publish.
    #[cfg_attr(not(feature = "github"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.artifacts.is_empty() && self.kernels.is_empty() && self.rootfs.is_empty()
    }
}

impl Resolver<'_> {
    pub(super) fn release_settings(
        &self,
        raw: Option<RawRelease>,
        artifacts: &std::collections::BTreeMap<String, Artifact>,
        kernels: &std::collections::BTreeMap<String, Kernel>,
        rootfses: &std::collections::BTreeMap<String, Rootfs>,
    ) -> Result<ReleaseSettings, ConfigError> {
        let Some(raw) = raw else { return Ok(ReleaseSettings::default()) };
        if let Some(repository) = &raw.repository
            && let Err(err) = repository.get_ref().parse::<kiln_types::Repo>()
        {
            return Err(self.error(Some(repository.span()), "release.repository".to_owned(), err.to_string()));
        }
        let check = |key: &str, names: Vec<Spanned<String>>, known: Vec<&String>| -> Result<Vec<String>, ConfigError> {
            let mut out = Vec::new();
            for name in names {
                if !known.contains(&name.get_ref()) {
                    let choices: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    let mut err = self.error(
                        Some(name.span()),
                        format!("release.{key}"),
                        format!("`{}` is not declared in Kiln.toml", name.get_ref()),
                    );
                    if let Some(closest) = super::closest_name(name.get_ref(), choices) {
                        err = err.with_help(format!("did you mean `{closest}`?"));
                    }
                    return Err(err);
                }
                out.push(name.into_inner());
            }
            Ok(out)
        };
        Ok(ReleaseSettings {
            repository: raw.repository.map(Spanned::into_inner),
            artifacts: check("artifacts", raw.artifacts, artifacts.keys().collect())?,
            kernels: check("kernels", raw.kernels, kernels.keys().collect())?,
            rootfs: check("rootfs", raw.rootfs, rootfses.keys().collect())?,
        })
    }
}
