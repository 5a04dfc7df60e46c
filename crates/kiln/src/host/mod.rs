//! What kiln asks of the machine it runs on: where its per-user cache is, which programs are on
//! `PATH`, unpredictable tokens, lock files, scratch directories that do not outlive their
//! owner, and what kiln's own standard streams are.

mod memo;
mod scratch;
mod stdio;

pub(crate) use memo::remembered;
pub(crate) use scratch::{scratch_dir, user_temp_dir};
pub(crate) use stdio::{exit_by_signal, stdin_is_null, stdout_and_stderr_are_one_file, unread_bytes};

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::env;

/// `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`: what every project on this host shares (the
/// KVM probe's verdict, downloads by hash, QEMU's version by binary).
pub(crate) fn user_cache_dir() -> Option<PathBuf> {
    let base = env::var_os(env::XDG_CACHE_HOME).filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
        env::var_os(env::HOME).filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".cache"))
    })?;
    Some(base.join("kiln"))
}

/// The path of `program` on `PATH`, when it is there.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    kiln_types::find_program(program)
}

/// `bytes` random bytes from the operating system, as lowercase hex: nonces and guard tokens a
/// guest cannot predict.
pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    fill_random(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random `u64` from the operating system.
pub(crate) fn random_u64() -> anyhow::Result<u64> {
    let mut buffer = [0u8; 8];
    fill_random(&mut buffer)?;
    Ok(u64::from_le_bytes(buffer))
}

/// Fills `buffer` from the operating system's random source (through ring, which kiln's TLS
/// already carries).
fn fill_random(buffer: &mut [u8]) -> anyhow::Result<()> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buffer)
        .map_err(|_| anyhow::anyhow!("the operating system gave no random bytes"))
}

/// Opens (creating it when missing) a file that is only ever locked, never written.
pub(crate) fn lock_file(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_hex_and_differ() {
        let a = random_hex(16).expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(16).expect("random"));
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("kiln-no-such-program").is_none());
    }
}
