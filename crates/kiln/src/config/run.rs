//! `[run]`: what `kiln run` boots, and what it passes into the guest.

use std::time::Duration;

use kiln_types::PoolSize;
use toml::Spanned;

use super::{
    ConfigError,
    raw::{RawPoolSize, RawRun},
    resolve::Resolver,
};

/// Default hard timeout of one `kiln run`.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// `[run]`: what `kiln run` boots, and what it passes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunSettings {
    /// The kernel (default: the only one declared).
    pub kernel: Option<String>,
    /// The rootfs (default: the only initramfs declared).
    pub rootfs: Option<String>,
    /// Hard timeout of one run.
    pub timeout: Duration,
    /// Host environment variables passed to the program that `run` otherwise keeps on the host
    /// (`env::guest_withheld`: `PATH`, `HOME`, `TMPDIR`, ...).
    pub env: Vec<String>,
    /// Files or directories (relative to Kiln.toml) copied into the guest at the same path.
    pub files: Vec<String>,
    /// Restore a booted snapshot for every run instead of booting (as `run --snapshot`).
    pub snapshot: bool,
    /// Keep this many restored guests idle and ready for runs (as `run --pool N`; 0: none;
    /// `auto`: one per job).
    pub pool: PoolSize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            kernel: None,
            rootfs: None,
            timeout: DEFAULT_RUN_TIMEOUT,
            env: Vec::new(),
            files: Vec::new(),
            snapshot: false,
            pool: PoolSize::Guests(0),
        }
    }
}

impl Resolver<'_> {
    fn pool_size(&self, raw: Option<Spanned<RawPoolSize>>) -> Result<PoolSize, ConfigError> {
        let Some(raw) = raw else { return Ok(PoolSize::Guests(0)) };
        match raw.get_ref() {
            RawPoolSize::Guests(count) => Ok(PoolSize::Guests(*count)),
            RawPoolSize::Word(word) => {
                word.parse().map_err(|message: String| self.error(Some(raw.span()), "run.pool".to_owned(), message))
            }
        }
    }

    pub(super) fn run_settings(&self, raw: Option<RawRun>) -> Result<RunSettings, ConfigError> {
        let Some(raw) = raw else { return Ok(RunSettings::default()) };
        let timeout = self.positive_duration(raw.timeout.as_ref(), "run.timeout".to_owned())?;
        Ok(RunSettings {
            kernel: raw.kernel.map(Spanned::into_inner),
            rootfs: raw.rootfs.map(Spanned::into_inner),
            timeout: timeout.unwrap_or(DEFAULT_RUN_TIMEOUT),
            env: raw.env,
            files: raw.files,
            snapshot: raw.snapshot,
            pool: self.pool_size(raw.pool)?,
        })
    }
}
