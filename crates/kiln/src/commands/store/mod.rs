//! `store`: look into the store and maintain it.

use std::{
    collections::HashSet,
    io::Write as _,
    time::{Duration, SystemTime},
};

use kiln_store::{ClosureHash, Derivation};
use kiln_types::Arch;

#[cfg(feature = "remote")]
mod remote;

use crate::{
    cli::{ArtifactArg, KeyFor, StoreCommand},
    cx::Cx,
    error::UsageError,
    exec, exit_code, explain,
    plan::{BuildStep, Plan, Selection},
    units::{self, human_size},
};

/// Runs one `store` subcommand.
pub(super) fn run(cx: &Cx, command: &StoreCommand) -> anyhow::Result<u8> {
    match command {
        StoreCommand::Ls => ls(cx),
        StoreCommand::Path(artifact) => path(cx, artifact),
        StoreCommand::Why(artifact) => why(cx, artifact),
        StoreCommand::Verify { repair } => verify(cx, *repair),
        StoreCommand::Gc { keep_days, dry_run, command, arch } => gc(cx, *keep_days, *dry_run, *command, arch),
        StoreCommand::Pin(artifact) => pin(cx, artifact, true),
        StoreCommand::Unpin(artifact) => pin(cx, artifact, false),
        StoreCommand::Export { file, artifacts } => export(cx, file, artifacts),
        StoreCommand::Import { file } => import(cx, file),
        StoreCommand::Key { command, arch } => key(cx, *command, arch),
        #[cfg(feature = "remote")]
        StoreCommand::Push { names, to, repair } => remote::push(cx, names, to.as_deref(), *repair),
        #[cfg(feature = "remote")]
        StoreCommand::Pull { names } => remote::pull(cx, names),
        #[cfg(feature = "remote")]
        StoreCommand::Keygen { name, out } => remote::keygen(cx, name, out),
        #[cfg(not(feature = "remote"))]
        StoreCommand::Push { .. } | StoreCommand::Pull { .. } | StoreCommand::Keygen { .. } => {
            Err(crate::cx::remote_feature_missing().into())
        }
    }
}

/// The build steps of one artifact (on one arch, or all of its arches).
fn steps_of(cx: &Cx, arg: &ArtifactArg) -> anyhow::Result<Vec<BuildStep>> {
    let config = cx.config();
    let Some(artifact) = config.artifacts.get(&arg.name) else {
        let help = match crate::config::closest_name(&arg.name, config.artifacts.keys().map(String::as_str)) {
            Some(near) => format!("an artifact with a similar name exists: `{near}`"),
            None => format!("artifacts: {}", config.artifacts.keys().cloned().collect::<Vec<_>>().join(", ")),
        };
        return Err(UsageError::new(format!("no artifact named `{}` in Kiln.toml", arg.name), Some(help)).into());
    };
    if let Some(arch) = arg.arch
        && !artifact.arches.contains(&arch)
    {
        return Err(UsageError::new(format!("artifact `{}` is not built for {arch}", arg.name), None).into());
    }
    let selection =
        Selection { arches: arg.arch.into_iter().collect(), names: vec![arg.name.clone()], ..Selection::default() };
    Ok(Plan::for_build(config, &selection).builds)
}

fn with_derivations(cx: &Cx, steps: Vec<BuildStep>) -> anyhow::Result<Vec<(BuildStep, Derivation)>> {
    let derivations = cx.executor().derivations(&steps)?;
    Ok(steps.into_iter().zip(derivations).collect())
}

fn human_age(since: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(since).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn ls(cx: &Cx) -> anyhow::Result<u8> {
    let pinned: HashSet<ClosureHash> = cx.store().pins()?.into_iter().map(|(c, _)| c).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<24} {:<12} {:>10} {:>6} {:>9}  pinned", "name", "closure", "size", "age", "last use")?;
    let mut total = 0;
    for entry in cx.store().entries()? {
        match entry {
            Ok(entry) => {
                let size = cx.store().entry_size(&entry);
                total += size;
                let created = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.meta.created_unix);
                writeln!(
                    out,
                    "{:<24} {:<12} {:>10} {:>6} {:>9}  {}",
                    kiln_types::cut(&kiln_types::escape_untrusted(&entry.meta.name), 80),
                    entry.closure.short(),
                    human_size(size),
                    human_age(created),
                    human_age(cx.store().last_used(&entry)),
                    if pinned.contains(&entry.closure) { "yes" } else { "" }
                )?;
            }
            Err(err) => writeln!(out, "unreadable entry: {err}")?,
        }
    }
    writeln!(out, "total {} in {}", human_size(total), cx.store().root().display())?;
    Ok(exit_code::SUCCESS)
}

fn path(cx: &Cx, arg: &ArtifactArg) -> anyhow::Result<u8> {
    let steps = with_derivations(cx, steps_of(cx, arg)?)?;
    let several = steps.len() > 1 || steps.iter().any(|(s, _)| s.artifact.kind == crate::config::ArtifactKind::Tests);
    let mut out = std::io::stdout().lock();
    for (step, drv) in &steps {
        let Some(entry) = cx.store().lookup(&drv.closure_hash())? else {
            return Err(UsageError::new(
                format!("{} is not in the store in its current form", step.key),
                Some(format!("build it with `cargo xtask build --arch {}`", step.key.arch)),
            )
            .into());
        };
        for image in exec::final_images(&entry, step)? {
            if several {
                writeln!(out, "{} {}", step.key.arch, image.path.display())?;
            } else {
                writeln!(out, "{}", image.path.display())?;
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

fn why(cx: &Cx, arg: &ArtifactArg) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    for (step, drv) in with_derivations(cx, steps_of(cx, arg)?)? {
        let closure = drv.closure_hash();
        let state = if cx.store().lookup(&closure)?.is_some() { "in the store" } else { "not built" };
        writeln!(out, "{}: closure {closure} ({state})", step.key)?;
        writeln!(out, "  kind {}", drv.kind)?;
        for (name, value) in &drv.settings {
            writeln!(out, "  setting {name} = {value:?}")?;
        }
        for (name, hash) in &drv.inputs {
            writeln!(out, "  input {name} {}", hash.to_hex())?;
        }
        let name = exec::final_entry_name(&step);
        match cx.store().recorded(&name) {
            Some(previous) if previous == closure => writeln!(out, "  unchanged since its last build")?,
            Some(_) => {
                writeln!(out, "  changed since its last build:")?;
                for line in explain::changes(cx.store(), &name, &drv) {
                    writeln!(out, "    {line}")?;
                }
            }
            None => writeln!(out, "  no earlier build recorded")?,
        }
    }
    Ok(exit_code::SUCCESS)
}

fn verify(cx: &Cx, repair: bool) -> anyhow::Result<u8> {
    let mut corrupt = 0;
    let mut checked = 0;
    for entry in cx.store().entries()? {
        checked += 1;
        match entry {
            Ok(entry) => {
                let Some(damage) = cx.store().check(&entry)? else {
                    cx.printer().verbose("Ok", &format!("{} {}", entry.meta.name, entry.closure.short()));
                    continue;
                };
                corrupt += 1;
                cx.printer().always(&format!("corrupt: {} {} ({damage})", entry.meta.name, entry.closure));
                if repair {
                    cx.store().remove_entry(&entry.closure)?;
                    cx.printer().status("Removed", &format!("{} {}", entry.meta.name, entry.closure.short()));
                }
            }
            Err(err) => {
                corrupt += 1;
                cx.printer().always(&format!("corrupt: {err}"));
                if repair && let kiln_store::StoreError::CorruptMeta { closure, .. } = &err {
                    cx.store().remove_entry(closure)?;
                    cx.printer().status("Removed", &closure.short());
                }
            }
        }
    }
    cx.printer().always(&format!("verified {checked} entries: {corrupt} corrupt"));
    if corrupt > 0 && !repair {
        cx.printer().always("help: run `cargo xtask store verify --repair`, then build again");
    }
    Ok(if corrupt > 0 { exit_code::CASES_FAILED } else { exit_code::SUCCESS })
}

/// The plan of a command on some arches, as `store key` and `gc --for` see it.
fn plan_for(cx: &Cx, command: KeyFor, arches: &[Arch]) -> anyhow::Result<Plan> {
    let selection = Selection::arches(arches);
    Ok(match command {
        KeyFor::Test => Plan::for_test(cx.config(), &selection)?,
        KeyFor::Build => Plan::for_build(cx.config(), &selection),
    })
}

/// Adds to `roots` what warm guests of the plan's Linux images need: this kiln's agent for
/// each of their arches, and the booted snapshots made of a kept kernel and rootfs with that
/// agent (snapshots are made on first use, so the plan cannot name them ahead).
fn keep_warm_guests(cx: &Cx, plan: &Plan, roots: &mut HashSet<ClosureHash>) -> anyhow::Result<()> {
    let arches: std::collections::BTreeSet<Arch> = plan.images.iter().map(|image| image.key.arch).collect();
    let mut agents = HashSet::new();
    for arch in arches {
        if let Ok(drv) = exec::agent_derivation(arch) {
            agents.insert(drv.closure_hash());
        }
    }
    let input = |entry: &kiln_store::Entry, name: &str| {
        entry.meta.derivation.inputs.get(name).map(|hash| ClosureHash::from_blake3(blake3::Hash::from(hash.0)))
    };
    for entry in cx.store().entries()?.into_iter().flatten() {
        if entry.meta.derivation.kind != crate::vm::snapshot::DERIVATION_KIND {
            continue;
        }
        let kept = |name: &str| input(&entry, name).is_some_and(|closure| roots.contains(&closure));
        let current_agent = input(&entry, "agent").is_some_and(|closure| agents.contains(&closure));
        if kept("kernel") && kept("rootfs") && current_agent {
            roots.insert(entry.closure);
        }
    }
    roots.extend(agents);
    Ok(())
}

fn gc(cx: &Cx, keep_days: Option<u32>, dry_run: bool, command: Option<KeyFor>, arches: &[Arch]) -> anyhow::Result<u8> {
    let plan = match command {
        Some(command) => plan_for(cx, command, arches)?,
        None => Plan::everything(cx.config()),
    };
    let mut roots: HashSet<ClosureHash> = cx.closures_of(&plan)?.into_iter().map(|(_, closure)| closure).collect();
    keep_warm_guests(cx, &plan, &mut roots)?;
    let keep_since = keep_days.map(|days| SystemTime::now() - Duration::from_secs(u64::from(days) * 86400));
    let report = cx.store().gc(&roots, keep_since, dry_run)?;
    let verb = if dry_run { "Would remove" } else { "Removed" };
    for (closure, name, bytes) in &report.removed {
        cx.printer().status(verb, &format!("{name} {} ({})", closure.short(), human_size(*bytes)));
    }
    let in_use = match report.in_use {
        0 => String::new(),
        n => format!(" ({n} in use by a running kiln)"),
    };
    cx.printer().always(&format!(
        "{} {} entries, {}; kept {}{in_use}",
        if dry_run { "would free" } else { "freed" },
        report.removed.len(),
        human_size(report.freed_bytes),
        report.kept
    ));
    Ok(exit_code::SUCCESS)
}

fn pin(cx: &Cx, arg: &ArtifactArg, pin: bool) -> anyhow::Result<u8> {
    for (step, drv) in with_derivations(cx, steps_of(cx, arg)?)? {
        let closure = drv.closure_hash();
        if pin {
            if cx.store().lookup(&closure)?.is_none() {
                return Err(UsageError::new(
                    format!("{} is not in the store in its current form", step.key),
                    Some(format!("build it first: `cargo xtask build --arch {}`", step.key.arch)),
                )
                .into());
            }
            cx.store().pin(&closure, &step.key.store_name())?;
            cx.printer().status("Pinned", &format!("{} {}", step.key, closure.short()));
        } else {
            // Every pin of the name goes, also those of builds from before a source change.
            let removed = cx.store().unpin_label(&step.key.store_name())?;
            let what = match removed {
                0 => "was not pinned".to_owned(),
                1 => "1 pin removed".to_owned(),
                n => format!("{n} pins removed"),
            };
            cx.printer().status("Unpinned", &format!("{} {what}", step.key));
        }
    }
    Ok(exit_code::SUCCESS)
}

fn export(cx: &Cx, file: &std::path::Path, artifacts: &[String]) -> anyhow::Result<u8> {
    let plan = Plan::for_build(cx.config(), &Selection::default());
    for name in artifacts {
        steps_of(cx, &ArtifactArg { name: name.clone(), arch: None })?;
    }
    let steps: Vec<BuildStep> =
        plan.builds.into_iter().filter(|s| artifacts.is_empty() || artifacts.contains(&s.key.artifact)).collect();
    let mut closures = Vec::new();
    let mut missing = Vec::new();
    for (step, drv) in with_derivations(cx, steps)? {
        let closure = drv.closure_hash();
        if cx.store().lookup(&closure)?.is_some() {
            closures.push(closure);
        } else {
            missing.push(step.key.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(UsageError::new(
            format!("not in the store in their current form: {}", missing.join(", ")),
            Some("run `cargo xtask build` first".to_owned()),
        )
        .into());
    }
    let summary = kiln_store::export_to_file(cx.store(), &closures, file)?;
    cx.printer().status(
        "Exported",
        &format!("{} ({}) to {}", units::entries(summary.entries), human_size(summary.bytes), file.display()),
    );
    Ok(exit_code::SUCCESS)
}

fn import(cx: &Cx, file: &std::path::Path) -> anyhow::Result<u8> {
    let context = format!("cannot import `{}`", file.display());
    let summary = kiln_store::import_from_file(cx.store(), file).map_err(|err| {
        if err.is_bad_archive() {
            // The file is to blame, not the host: exit 2, with what to do.
            let help = "nothing was imported. The archive was not written by `store export`, or it was changed \
                        or cut short since: export it again from a store you trust";
            UsageError::with_help(format!("{context}: {err}"), help).into()
        } else {
            anyhow::Error::new(err).context(context)
        }
    })?;
    cx.printer().status(
        "Imported",
        &format!("{} ({}) from {}", units::entries(summary.entries), human_size(summary.bytes), file.display()),
    );
    Ok(exit_code::SUCCESS)
}

/// Prints `key=PREFIX<hash>` and `restore-keys=PREFIX`, ready for `$GITHUB_OUTPUT`.
fn key(cx: &Cx, command: KeyFor, arches: &[Arch]) -> anyhow::Result<u8> {
    let verb = match command {
        KeyFor::Test => "test",
        KeyFor::Build => "build",
    };
    let plan = plan_for(cx, command, arches)?;
    let mut closures: Vec<String> =
        cx.closures_of(&plan)?.into_iter().map(|(_, closure)| closure.to_string()).collect();
    closures.sort();
    let mut hasher = blake3::Hasher::new_derive_key("kiln 2026-11 ci cache key v1");
    for closure in &closures {
        hasher.update(closure.as_bytes());
        hasher.update(b"\n");
    }
    let host = std::env::consts::ARCH;
    let prefix = format!("kiln-v1-s{}-{host}-{verb}-", kiln_store::STORE_FORMAT);
    let mut out = std::io::stdout().lock();
    writeln!(out, "key={prefix}{}", &hasher.finalize().to_hex()[..32])?;
    writeln!(out, "restore-keys={prefix}")?;
    // Where this command's store and serial logs are, as absolute paths: the cache and the
    // log upload must use these, whatever Kiln.toml, KILN_STORE or the directory say.
    let absolute = |path: &std::path::Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    writeln!(out, "store={}", absolute(cx.store().root()).display())?;
    writeln!(out, "logs={}", absolute(&cx.work_dir().join("logs")).display())?;
    Ok(exit_code::SUCCESS)
}
