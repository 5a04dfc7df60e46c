//! What can go wrong talking to GitHub, said so that a user knows what to do.

/// A failed GitHub request (after its retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// HTTP 401: the token is wrong, expired or missing.
    #[error(
        "GitHub rejected the token (HTTP 401) while {doing}: set GITHUB_TOKEN (or GH_TOKEN) to a valid token \
         with `contents: write` for releases, `actions: write` for caches"
    )]
    TokenRejected {
        /// What kiln was doing.
        doing: String,
    },
    /// Another answer that is not success.
    #[error("GitHub answered HTTP {status} while {doing}: {message}{}", hint(*status, *permission))]
    Status {
        /// What kiln was doing.
        doing: String,
        /// The HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
        /// The permission the request needs, when the caller said (named on a 403).
        permission: Option<Permission>,
    },
    /// No answer (connection refused, reset, timed out) or one that could not be read.
    #[error("GitHub could not be reached while {doing}: {message}")]
    Transport {
        /// What kiln was doing.
        doing: String,
        /// What failed.
        message: String,
    },
    /// Retried until the attempts ran out.
    #[error("gave up {doing} after {attempts} attempts; the last: {last}")]
    GaveUp {
        /// What kiln was doing.
        doing: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Bad input from kiln's side.
    #[error("{0}")]
    Usage(String),
}

/// A permission of the token that a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Permission {
    /// `actions: write`: deleting Actions caches.
    ActionsWrite,
    /// `pull-requests: read`: a pull request's state (needed in a private repository).
    PullRequestsRead,
}

impl Permission {
    /// What to give the token, said for a workflow and for a personal token.
    fn advice(self) -> &'static str {
        match self {
            Self::ActionsWrite => {
                "the token needs `actions: write`: give the workflow `permissions: actions: write` (a personal \
                 token: Actions read and write); a pull_request run from a fork only ever gets a read-only token"
            }
            Self::PullRequestsRead => {
                "the token needs `pull-requests: read` to see a private repository's pull requests: give the \
                 workflow `permissions: pull-requests: read` (a personal token: Pull requests read-only)"
            }
        }
    }
}

impl Error {
    /// Names the permission the failed request needs, so that a refusal (403) says it.
    pub fn needing(self, permission: Permission) -> Self {
        match self {
            Self::Status { doing, status, message, permission: None } => {
                Self::Status { doing, status, message, permission: Some(permission) }
            }
            other => other,
        }
    }

    /// The HTTP status, when GitHub answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::TokenRejected { .. } => Some(401),
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What to check, for the answers that usually mean a setup mistake.
fn hint(status: u16, permission: Option<Permission>) -> String {
    match (status, permission) {
        (403, Some(permission)) | (404, Some(permission @ Permission::PullRequestsRead)) => {
            format!(" ({})", permission.advice())
        }
        (403, None) => " (the token lacks a permission: a workflow needs `permissions: contents: write` for \
                        releases, `actions: write` for caches)"
            .to_owned(),
        (404, None) => " (check the repository's name, and that the token can see it)".to_owned(),
        _ => String::new(),
    }
}
