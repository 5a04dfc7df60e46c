//! A GitHub repository's name, `owner/name`.

use std::{fmt, str::FromStr};

/// A repository, `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repo {
    /// The owner (user or organisation).
    pub owner: String,
    /// The repository's name.
    pub name: String,
}

/// Text that is not `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseRepoError(String);

impl fmt::Display for ParseRepoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a repository: write it as `owner/name`", self.0)
    }
}

impl std::error::Error for ParseRepoError {}

impl FromStr for Repo {
    type Err = ParseRepoError;

    fn from_str(text: &str) -> Result<Self, ParseRepoError> {
        let valid = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match text.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) => {
                Ok(Self { owner: owner.to_owned(), name: name.to_owned() })
            }
            _ => Err(ParseRepoError(text.to_owned())),
        }
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_name() {
        let repo: Repo = "kiln-dev/kiln.rs".parse().expect("repo");
        assert_eq!((repo.owner.as_str(), repo.name.as_str()), ("kiln-dev", "kiln.rs"));
        assert_eq!(repo.to_string(), "kiln-dev/kiln.rs");
        for bad in ["", "a", "a/", "/b", "a/b/c", "a b/c", "a/b?"] {
            assert!(bad.parse::<Repo>().is_err(), "{bad}");
        }
    }
}
