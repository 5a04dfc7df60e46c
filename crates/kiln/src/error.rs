//! The error every layer may raise for a mistake on the command line or in how kiln is
//! called (exit code 2), with what to do about it.

/// A mistake on the command line (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: Option<String>,
}

impl UsageError {
    /// A usage error with an optional fix.
    pub(crate) fn new(message: impl Into<String>, help: Option<String>) -> Self {
        Self { message: message.into(), help }
    }

    /// A usage error with its fix.
    pub(crate) fn with_help(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self { message: message.into(), help: Some(help.into()) }
    }
}
