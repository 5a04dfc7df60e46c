//! `[fetch.NAME]`: one file, pinned by its hash (a fixed-output derivation: the hash, not the
//! address, names its store entry).

use std::path::PathBuf;

use kiln_types::Arch;
use toml::Spanned;

use super::{ConfigError, diagnostic, raw::RawFetch, resolve::Resolver};

/// `[fetch.NAME]`: one file, pinned by its hash (a fixed-output derivation: the hash, not
/// the address, names its store entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fetch {
    /// The fetch's name in Kiln.toml.
    pub name: String,
    /// Where the file comes from.
    pub source: FetchSource,
    /// The hash the file must have.
    pub hash: PinnedHash,
}

/// Where a fetched file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FetchSource {
    /// An `http://` or `https://` address.
    Url(String),
    /// A local file (relative paths are relative to Kiln.toml).
    Path(PathBuf),
    /// An asset of a GitHub release (resolved through the API, so another project's
    /// `cargo xtask release` output can be pinned by hash).
    GithubRelease {
        /// `owner/name`.
        repository: String,
        /// The release's tag.
        tag: String,
        /// The asset's file name.
        asset: String,
    },
}

impl FetchSource {
    /// The file name the fetched file keeps in the store.
    pub fn file_name(&self) -> String {
        let raw = match self {
            Self::Url(url) => url.split(['?', '#']).next().unwrap_or(url).rsplit('/').next().unwrap_or("").to_owned(),
            Self::Path(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Self::GithubRelease { asset, .. } => asset.clone(),
        };
        let decoded = raw.replace("%2b", "+").replace("%2B", "+").replace("%3a", ":").replace("%3A", ":");
        if decoded.is_empty() || decoded.starts_with('.') { "download".to_owned() } else { decoded }
    }
}

/// A hash a file is pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PinnedHash {
    /// The algorithm.
    pub algorithm: HashAlgorithm,
    /// Lowercase hex digest.
    pub hex: String,
}

/// A pinning hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashAlgorithm {
    /// BLAKE3 (256-bit).
    Blake3,
    /// SHA-256, as Debian's package indexes and most download pages publish.
    Sha256,
}

impl HashAlgorithm {
    /// The Kiln.toml key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
}

/// A fetch name that may contain `{arch}`, replaced per architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NameTemplate(pub String);

impl NameTemplate {
    /// The name for `arch`.
    pub fn for_arch(&self, arch: Arch) -> String {
        self.0.replace("{arch}", arch.as_str())
    }
}

impl Resolver<'_> {
    pub(super) fn fetch(&self, name: &str, raw: RawFetch) -> Result<Fetch, ConfigError> {
        let key = |k: &str| format!("fetch.{name}.{k}");
        if let Some(repository) = raw.github_release {
            if let Some(other) = raw.url.as_ref().or(raw.path.as_ref()) {
                return Err(self
                    .error(Some(other.span()), format!("fetch.{name}"), format!("fetch `{name}` names two sources"))
                    .with_help("keep one of `url`, `path` and `github-release`"));
            }
            if let Err(err) = repository.get_ref().parse::<kiln_types::Repo>() {
                return Err(self.error(Some(repository.span()), key("github-release"), err.to_string()));
            }
            let (Some(tag), Some(asset)) = (raw.tag, raw.asset) else {
                return Err(self
                    .error(
                        Some(repository.span()),
                        key("github-release"),
                        format!("fetch `{name}` needs `tag` and `asset` with `github-release`"),
                    )
                    .with_help(
                        "e.g. `github-release = \"owner/repo\", tag = \"v1.0\", asset = \"base-x86_64.cpio.gz\"`",
                    ));
            };
            let hash = self.pinned(name, raw.blake3, raw.sha256)?;
            let source = FetchSource::GithubRelease {
                repository: repository.into_inner(),
                tag: tag.into_inner(),
                asset: asset.into_inner(),
            };
            return Ok(Fetch { name: name.to_owned(), source, hash });
        }
        if let Some(stray) = raw.tag.as_ref().or(raw.asset.as_ref()) {
            return Err(self
                .error(Some(stray.span()), format!("fetch.{name}"), "`tag` and `asset` go with `github-release`")
                .with_help("add `github-release = \"owner/repo\"`, or remove them"));
        }
        let source = match (raw.url, raw.path) {
            (Some(url), None) => {
                let text = url.get_ref();
                if !(text.starts_with("http://") || text.starts_with("https://")) {
                    return Err(self
                        .error(Some(url.span()), key("url"), format!("`{text}` is not an http:// or https:// address"))
                        .with_help("for a local file use `path = \"...\"` instead"));
                }
                FetchSource::Url(url.into_inner())
            }
            (None, Some(path)) => FetchSource::Path(self.root.join(path.get_ref())),
            (Some(url), Some(_)) => {
                return Err(self
                    .error(Some(url.span()), key("url"), format!("fetch `{name}` has both `url` and `path`"))
                    .with_help("keep one of them"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("fetch.{name}"), format!("fetch `{name}` says neither `url` nor `path`"))
                    .with_help("add `url = \"https://...\"` or `path = \"relative/to/Kiln.toml\"`"));
            }
        };
        let hash = self.pinned(name, raw.blake3, raw.sha256)?;
        Ok(Fetch { name: name.to_owned(), source, hash })
    }

    pub(super) fn pinned(
        &self,
        name: &str,
        blake3: Option<Spanned<String>>,
        sha256: Option<Spanned<String>>,
    ) -> Result<PinnedHash, ConfigError> {
        let key = |k: &str| format!("fetch.{name}.{k}");
        Ok(match (blake3, sha256) {
            (Some(hex), None) => self.hex_hash(name, "blake3", HashAlgorithm::Blake3, hex)?,
            (None, Some(hex)) => self.hex_hash(name, "sha256", HashAlgorithm::Sha256, hex)?,
            (Some(hex), Some(_)) => {
                return Err(self
                    .error(Some(hex.span()), key("blake3"), format!("fetch `{name}` pins two hashes"))
                    .with_help("keep one of `blake3` and `sha256`"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("fetch.{name}"), format!("fetch `{name}` is not pinned by a hash"))
                    .with_help(
                        "add `sha256 = \"...\"` or `blake3 = \"...\"` (`sha256sum FILE`); a wrong hash fails the \
                         fetch and prints the file's actual hash",
                    ));
            }
        })
    }

    pub(super) fn hex_hash(
        &self,
        name: &str,
        field: &str,
        algorithm: HashAlgorithm,
        hex: Spanned<String>,
    ) -> Result<PinnedHash, ConfigError> {
        let text = hex.get_ref().trim().to_ascii_lowercase();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self
                .error(
                    Some(hex.span()),
                    format!("fetch.{name}.{field}"),
                    format!("`{}` is not a {field} hash (64 hex digits)", hex.get_ref()),
                )
                .with_help("copy the digest from `sha256sum FILE` or `b3sum FILE`"));
        }
        Ok(PinnedHash { algorithm, hex: text })
    }

    /// Checks that `template` names a fetch for every arch.
    pub(super) fn fetch_ref(
        &self,
        key: String,
        span: Option<std::ops::Range<usize>>,
        template: &str,
        arches: &[Arch],
        fetches: &std::collections::BTreeMap<String, Fetch>,
    ) -> Result<NameTemplate, ConfigError> {
        let template = NameTemplate(template.to_owned());
        for arch in arches {
            let wanted = template.for_arch(*arch);
            if !fetches.contains_key(&wanted) {
                let err = self.error(span.clone(), key, format!("no `[fetch.{wanted}]` for {arch}"));
                return Err(match diagnostic::closest(&wanted, fetches.keys().map(String::as_str)) {
                    Some(near) => err.with_help(format!("a fetch with a similar name exists: `{near}`")),
                    None => err.with_help(format!(
                        "declare `[fetch.{wanted}]` with a `url` or `path` and its hash; `{{arch}}` in a name becomes \
                         x86_64, aarch64 or riscv64"
                    )),
                });
            }
        }
        Ok(template)
    }
}
