//! `rootfs`: build rootfs images through the store and look inside them.

use std::{collections::BTreeMap, io::Write as _};

use kiln_types::Arch;

use crate::{
    cli::{RootfsArg, RootfsCommand},
    commands::UsageError,
    cx::{Cx, RealisedImage},
    exec::linux::{MANIFEST_FILE, ManifestEntry},
    exit_code,
    plan::{ImageKey, ImageKind, Plan, Selection},
    report::human_size,
};

/// Runs a `rootfs` subcommand.
pub fn run(cx: &Cx, command: &RootfsCommand) -> anyhow::Result<u8> {
    match command {
        RootfsCommand::Build { names, arch } => build(cx, names, arch),
        RootfsCommand::Ls => ls(cx),
        RootfsCommand::Show(arg) => show(cx, arg),
        RootfsCommand::Path(arg) => {
            let (key, image) = realise_one(cx, arg)?;
            let format = cx.config.rootfses[&key.name].format;
            writeln!(std::io::stdout().lock(), "{}", image.dir.join(format.file_name()).display())?;
            Ok(exit_code::SUCCESS)
        }
        RootfsCommand::Diff { a, b, arch } => diff(cx, a, b, *arch),
    }
}

fn check_names(cx: &Cx, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if !cx.config.rootfses.contains_key(name) {
            let known: Vec<&str> = cx.config.rootfses.keys().map(String::as_str).collect();
            let help = match crate::config::closest_name(name, known.iter().copied()) {
                Some(near) => format!("a rootfs with a similar name exists: `{near}`"),
                None if known.is_empty() => "declare one under `[rootfs.NAME]` in Kiln.toml".to_owned(),
                None => format!("rootfs recipes in Kiln.toml: {}", known.join(", ")),
            };
            return Err(UsageError::new(format!("no rootfs named `{name}`"), Some(help)).into());
        }
    }
    Ok(())
}

fn build(cx: &Cx, names: &[String], arches: &[Arch]) -> anyhow::Result<u8> {
    check_names(cx, names)?;
    let selection = Selection { arches: arches.to_vec(), cases: Vec::new() };
    let plan = Plan::for_images(&cx.config, &selection, Some(ImageKind::Rootfs), names);
    if plan.images.is_empty() {
        return Err(UsageError::new("no rootfs matches the selection", None).into());
    }
    let realised = cx.realise_plan(&plan)?;
    let mut out = std::io::stdout().lock();
    for (key, image) in &realised.images {
        let format = cx.config.rootfses[&key.name].format;
        let file = image.dir.join(format.file_name());
        let hash = kiln_store::hash_file(&file)?;
        writeln!(out, "{} {} {} {}", key.name, key.arch, hash.to_hex(), file.display())?;
    }
    Ok(exit_code::SUCCESS)
}

fn ls(cx: &Cx) -> anyhow::Result<u8> {
    let plan = Plan::for_images(&cx.config, &Selection::default(), Some(ImageKind::Rootfs), &[]);
    let closures = cx.plan_closures(&plan)?;
    let by_name: BTreeMap<String, kiln_store::ClosureHash> = closures.into_iter().collect();
    let mut out = std::io::stdout().lock();
    let width = plan.images.iter().map(|k| k.name.len()).max().unwrap_or(0).max("rootfs".len());
    writeln!(out, "{:<width$}  {:<8} {:<16} {:<12} {:>10}  state", "rootfs", "arch", "format", "closure", "size")?;
    for key in &plan.images {
        let rootfs = &cx.config.rootfses[&key.name];
        let Some(closure) = by_name.get(&key.store_name()) else { continue };
        let (size, state) = match cx.store.lookup(closure)? {
            Some(entry) => {
                let image = entry.out_dir().join(rootfs.format.file_name());
                let size = std::fs::metadata(&image).map(|m| human_size(m.len())).unwrap_or_default();
                (size, "built")
            }
            None => (String::new(), "not built"),
        };
        writeln!(
            out,
            "{:<width$}  {:<8} {:<16} {:<12} {:>10}  {state}",
            key.name,
            key.arch.as_str(),
            rootfs.format.describe(),
            closure.short(),
            size
        )?;
    }
    Ok(exit_code::SUCCESS)
}

/// The key for a rootfs argument: its arch, or the first it is built for.
fn key_of(cx: &Cx, name: &str, arch: Option<Arch>) -> anyhow::Result<ImageKey> {
    check_names(cx, &[name.to_owned()])?;
    let rootfs = &cx.config.rootfses[name];
    let arch = match arch {
        Some(arch) if rootfs.arches.contains(&arch) => arch,
        Some(arch) => {
            return Err(UsageError::new(
                format!("rootfs `{name}` is not built for {arch}"),
                Some(format!(
                    "it is built for {}",
                    rootfs.arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                )),
            )
            .into());
        }
        None => rootfs.arches[0],
    };
    Ok(ImageKey { kind: ImageKind::Rootfs, name: name.to_owned(), arch })
}

fn realise_one(cx: &Cx, arg: &RootfsArg) -> anyhow::Result<(ImageKey, RealisedImage)> {
    let key = key_of(cx, &arg.name, arg.arch)?;
    realise_key(cx, key)
}

fn realise_key(cx: &Cx, key: ImageKey) -> anyhow::Result<(ImageKey, RealisedImage)> {
    let selection = Selection { arches: vec![key.arch], cases: Vec::new() };
    let plan = Plan::for_images(&cx.config, &selection, Some(ImageKind::Rootfs), std::slice::from_ref(&key.name));
    let mut realised = cx.realise_plan(&plan)?;
    let image = realised.images.remove(&key).ok_or_else(|| anyhow::anyhow!("{key} was not built"))?;
    Ok((key, image))
}

fn manifest(image: &RealisedImage) -> anyhow::Result<Vec<ManifestEntry>> {
    let path = image.dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}; rebuild the rootfs", path.display()))?;
    Ok(text.lines().filter_map(ManifestEntry::parse).collect())
}

fn show(cx: &Cx, arg: &RootfsArg) -> anyhow::Result<u8> {
    let (key, image) = realise_one(cx, arg)?;
    let entries = manifest(&image)?;
    let mut out = std::io::stdout().lock();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    for entry in &entries {
        writeln!(out, "{}", entry.describe())?;
    }
    writeln!(out, "{key}: {} entries, {} of file contents", entries.len(), human_size(total))?;
    Ok(exit_code::SUCCESS)
}

fn diff(cx: &Cx, a: &str, b: &str, arch: Option<Arch>) -> anyhow::Result<u8> {
    check_names(cx, &[a.to_owned(), b.to_owned()])?;
    let arch = match arch {
        Some(arch) => arch,
        None => {
            let (ra, rb) = (&cx.config.rootfses[a], &cx.config.rootfses[b]);
            ra.arches
                .iter()
                .copied()
                .find(|x| rb.arches.contains(x))
                .ok_or_else(|| UsageError::new(format!("rootfs `{a}` and `{b}` share no architecture"), None))?
        }
    };
    let (_, first) = realise_key(cx, key_of(cx, a, Some(arch))?)?;
    let (_, second) = realise_key(cx, key_of(cx, b, Some(arch))?)?;
    let left: BTreeMap<String, ManifestEntry> = manifest(&first)?.into_iter().map(|e| (e.path.clone(), e)).collect();
    let right: BTreeMap<String, ManifestEntry> = manifest(&second)?.into_iter().map(|e| (e.path.clone(), e)).collect();
    let mut out = std::io::stdout().lock();
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for (path, entry) in &right {
        match left.get(path) {
            None => {
                added += 1;
                writeln!(out, "+ {path} ({})", entry.describe_size())?;
            }
            Some(old) if old != entry => {
                changed += 1;
                writeln!(out, "~ {path} ({} -> {})", old.describe_size(), entry.describe_size())?;
            }
            Some(_) => {}
        }
    }
    for (path, entry) in &left {
        if !right.contains_key(path) {
            removed += 1;
            writeln!(out, "- {path} ({})", entry.describe_size())?;
        }
    }
    writeln!(out, "{a} -> {b} ({arch}): {added} added, {removed} removed, {changed} changed")?;
    Ok(exit_code::SUCCESS)
}
