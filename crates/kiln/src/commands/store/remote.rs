//! `store push`, `store pull` and `store keygen`: moving entries to and from remote stores.

use std::{collections::HashSet, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;
use kiln_store::{
    BuildOutcome, ClosureHash, Entry,
    remote::{PushMode, SecretKey},
};
use kiln_types::Arch;

use crate::{
    cx::Cx,
    env,
    error::UsageError,
    exec::remotes::push_line,
    exit_code,
    plan::Plan,
    units::{self, human_size},
};

/// The remotes, or a usage error saying how to name one.
fn remotes(cx: &Cx) -> anyhow::Result<&kiln_store::remote::Remotes> {
    cx.executor().remotes().map(AsRef::as_ref).ok_or_else(|| {
        UsageError::new(
            "no remote store is configured",
            Some(format!("add `[store] remotes = [\"s3://BUCKET/PREFIX\"]` to Kiln.toml or set {}", env::KILN_REMOTES)),
        )
        .into()
    })
}

/// Whether an entry's store name (`hello-x86_64`, `kernel-debian-aarch64`, `fetch-busybox`)
/// is what the user called `name` (`hello`, `hello-x86_64`, `debian`, `busybox`).
fn is_named(store_name: &str, name: &str) -> bool {
    let bare =
        ["kernel-", "rootfs-", "fetch-"].iter().find_map(|kind| store_name.strip_prefix(kind)).unwrap_or(store_name);
    let without_arch = Arch::ALL.iter().find_map(|arch| bare.strip_suffix(&format!("-{arch}"))).unwrap_or(bare);
    [store_name, bare, without_arch].contains(&name)
}

/// The closures of everything Kiln.toml declares, with their names, narrowed to `names`.
fn selected(cx: &Cx, names: &[String]) -> anyhow::Result<Vec<(String, ClosureHash)>> {
    let all = cx.closures_of(&Plan::everything(cx.config()))?;
    if let Some(unknown) = names.iter().find(|name| !all.iter().any(|(store_name, _)| is_named(store_name, name))) {
        let mut known: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
        known.dedup();
        return Err(UsageError::new(
            format!("`{unknown}` names nothing Kiln.toml declares"),
            Some(format!("known names: {}", known.join(", "))),
        )
        .into());
    }
    Ok(all
        .into_iter()
        .filter(|(store_name, _)| names.is_empty() || names.iter().any(|n| is_named(store_name, n)))
        .collect())
}

/// `store push [NAMES] [--to URL]`.
pub(super) fn push(cx: &Cx, names: &[String], to: Option<&str>, repair: bool) -> anyhow::Result<u8> {
    let remotes = remotes(cx)?;
    if let Some(url) = to
        && !remotes.has(url)
    {
        return Err(UsageError::new(
            format!("`{url}` is not one of the remotes"),
            Some(format!("the remotes are: {}", remotes.urls().join(", "))),
        )
        .into());
    }
    // The signing key was checked when the remotes were opened for pushing.
    let mut closures: Vec<ClosureHash> = selected(cx, names)?.into_iter().map(|(_, closure)| closure).collect();
    if names.is_empty() {
        let mut roots: HashSet<ClosureHash> = closures.iter().copied().collect();
        super::keep_warm_guests(cx, &Plan::everything(cx.config()), &mut roots)?;
        closures.extend(roots);
    }
    let mut seen = HashSet::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut missing = 0;
    for closure in closures.into_iter().filter(|closure| seen.insert(*closure)) {
        match cx.store().lookup(&closure)? {
            Some(entry) => entries.push(entry),
            None => missing += 1,
        }
    }
    if missing > 0 {
        cx.printer().status(
            "Skipping",
            &format!("{} that are not built; `cargo xtask build` makes them", units::entries(missing)),
        );
    }
    let started = std::time::Instant::now();
    let mut failed = false;
    let mode = if repair { PushMode::Repair } else { PushMode::Missing };
    for (url, tally) in remotes.push_to(&entries, to, mode) {
        failed |= tally.entries_failed > 0;
        cx.printer().status("Pushed", &push_line(&url, &tally, std::time::Duration::ZERO));
    }
    cx.printer().verbose("Took", &units::seconds(started.elapsed()));
    Ok(if failed { exit_code::INFRASTRUCTURE } else { exit_code::SUCCESS })
}

/// `store pull [NAMES]`.
pub(super) fn pull(cx: &Cx, names: &[String]) -> anyhow::Result<u8> {
    remotes(cx)?;
    if cx.config().trusted_keys.is_empty() && !env::is_set(env::KILN_TRUSTED_KEYS) {
        return Err(UsageError::new(
            "no key is trusted, so nothing can be taken from the remotes",
            Some("add the public key of whoever pushes to `[store] trusted-keys`".to_owned()),
        )
        .into());
    }
    let mut wanted = selected(cx, names)?;
    if names.is_empty() {
        // The guest agents too (snapshots are fetched when a run first needs them).
        let arches: std::collections::BTreeSet<Arch> =
            Plan::everything(cx.config()).images.iter().map(|image| image.key.arch).collect();
        for arch in arches {
            if let Ok(drv) = crate::exec::agent_derivation(arch) {
                wanted.push((format!("kiln-agent-{arch}"), drv.closure_hash()));
            }
        }
    }
    let (mut fetched, mut present, mut absent, mut bytes) = (0, 0, Vec::new(), 0);
    for (name, closure) in wanted {
        let pulled = cx.store().pull(&closure)?;
        if pulled.is_some() {
            cx.store().mark_used(&closure)?;
        }
        match pulled {
            Some((_, BuildOutcome::Substituted { bytes: got, .. })) => {
                fetched += 1;
                bytes += got;
                cx.printer().status("Pulled", &format!("{name} {}", closure.short()));
            }
            Some(_) => present += 1,
            None => absent.push(name),
        }
    }
    cx.printer().always(&format!(
        "pulled {fetched} entries ({}); {present} were here already; {} on no remote",
        human_size(bytes),
        absent.len()
    ));
    if !absent.is_empty() {
        cx.printer().status("Missing", &absent.join(", "));
    }
    Ok(exit_code::SUCCESS)
}

/// `store keygen --name NAME --out FILE`.
pub(super) fn keygen(cx: &Cx, name: &str, out: &Path) -> anyhow::Result<u8> {
    let key = SecretKey::generate(name).map_err(|e| UsageError::new(e.to_string(), None))?;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).with_context(|| {
            format!("cannot create the secret key file `{}` (an existing file is never overwritten)", out.display())
        })?;
    let written = file.write_all(format!("{}\n", key.to_secret_text()).as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(out);
        return Err(e).with_context(|| format!("cannot write `{}`", out.display()));
    }
    println!("{}", key.public());
    cx.printer().status("Wrote", &format!("the secret key `{}` to {} (keep it secret)", key.name(), out.display()));
    cx.printer().status(
        "Trust",
        &format!(
            "add the public key to Kiln.toml: `[store] trusted-keys = [\"{}\"]`; sign with {}={}",
            key.public(),
            env::KILN_SIGNING_KEY_FILE,
            out.display()
        ),
    );
    Ok(exit_code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::is_named;

    #[test]
    fn names_match_with_or_without_kind_and_arch() {
        assert!(is_named("hello-x86_64", "hello"));
        assert!(is_named("hello-x86_64", "hello-x86_64"));
        assert!(!is_named("hello-linux-x86_64", "hello"));
        assert!(is_named("kernel-debian-aarch64", "debian"));
        assert!(is_named("rootfs-base-riscv64", "base-riscv64"));
        assert!(is_named("fetch-busybox", "busybox"));
        assert!(!is_named("fetch-busybox", "box"));
    }
}
