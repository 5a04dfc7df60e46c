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
    #[error("GitHub answered HTTP {status} while {doing}: {message}{}", hint(*status))]
    Status {
        /// What kiln was doing.
        doing: String,
        /// The HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
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

impl Error {
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
fn hint(status: u16) -> &'static str {
    match status {
        403 => {
            " (the token lacks a permission: a workflow needs `permissions: contents: write` for releases, `actions: write` for caches)"
        }
        404 => " (check the repository's name, and that the token can see it)",
        _ => "",
    }
}
