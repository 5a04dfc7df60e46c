//! kiln's side of GitHub: a repository's releases (create or update, list, upload and delete
//! assets), its Actions caches (list, delete) and its pull requests' states, over octocrab.
//! Requests are retried with backoff on server errors, lost connections and rate limits
//! (waiting what `retry-after` asks); a rejected token fails at once. The token is never
//! printed: not in errors, not in `Debug` output.
//!
//! The API's base URI is a parameter, so tests point the client at a fake server on loopback.

mod client;
mod error;

pub use client::{Asset, CacheEntry, Client, PullState, Release, Repo, Retry, RetryNotice, uploads_for};
pub use error::{Error, Permission};

/// The public GitHub API.
pub const DEFAULT_API: &str = "https://api.github.com";
