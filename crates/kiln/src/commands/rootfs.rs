//! `rootfs`: build rootfs images through the store and look inside them.

use std::{collections::BTreeMap, io::Write as _};

use kiln_types::Arch;

use kiln_rootfs::{EntryKind, ListingEntry};

use crate::{
    cli::{RootfsArg, RootfsCommand},
    cx::Cx,
    error::UsageError,
    exec::{self, RealisedImage},
    exit_code,
    plan::{ImageKey, ImageKind, Plan, Selection},
    units::human_size,
};

/// Runs a `rootfs` subcommand.
pub(super) fn run(cx: &Cx, command: &RootfsCommand) -> anyhow::Result<u8> {
    match command {
        RootfsCommand::Build { names, arch } => build(cx, names, arch),
        RootfsCommand::Ls => ls(cx),
        RootfsCommand::Show(arg) => show(cx, arg),
        RootfsCommand::Path(arg) => {
            let (key, image) = realise_one(cx, arg)?;
            let format = cx.config().rootfses[&key.name].format;
            writeln!(std::io::stdout().lock(), "{}", image.dir.join(format.file_name()).display())?;
            Ok(exit_code::SUCCESS)
        }
        RootfsCommand::Diff { a, b, arch } => diff(cx, a, b, *arch),
    }
}

fn check_names(cx: &Cx, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if !cx.config().rootfses.contains_key(name) {
            let known: Vec<&str> = cx.config().rootfses.keys().map(String::as_str).collect();
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
    let selection = Selection { arches: arches.to_vec(), names: names.to_vec(), ..Selection::default() };
    let plan = Plan::for_images(cx.config(), &selection, Some(ImageKind::Rootfs));
    if plan.images.is_empty() {
        return Err(UsageError::new("no rootfs matches the selection", None).into());
    }
    let realised = cx.realise(&plan)?;
    let mut out = std::io::stdout().lock();
    for (key, image) in &realised.images {
        let format = cx.config().rootfses[&key.name].format;
        let file = image.dir.join(format.file_name());
        let hash = kiln_store::hash_file(&file)?;
        writeln!(out, "{} {} {} {}", key.name, key.arch, hash.to_hex(), file.display())?;
    }
    Ok(exit_code::SUCCESS)
}

fn ls(cx: &Cx) -> anyhow::Result<u8> {
    let plan = Plan::for_images(cx.config(), &Selection::default(), Some(ImageKind::Rootfs));
    let closures = cx.closures_of(&plan)?;
    let by_name: BTreeMap<String, kiln_store::ClosureHash> = closures.into_iter().collect();
    let mut out = std::io::stdout().lock();
    let width = plan.images.iter().map(|step| step.key.name.len()).max().unwrap_or(0).max("rootfs".len());
    writeln!(out, "{:<width$}  {:<8} {:<16} {:<12} {:>10}  state", "rootfs", "arch", "format", "closure", "size")?;
    for key in plan.images.iter().map(|step| &step.key) {
        let rootfs = &cx.config().rootfses[&key.name];
        let Some(closure) = by_name.get(&key.store_name()) else { continue };
        let (size, state) = match cx.store().lookup(closure)? {
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
    let rootfs = &cx.config().rootfses[name];
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
    Ok(ImageKey::rootfs(name, arch))
}

fn realise_one(cx: &Cx, arg: &RootfsArg) -> anyhow::Result<(ImageKey, RealisedImage)> {
    let key = key_of(cx, &arg.name, arg.arch)?;
    realise_key(cx, key)
}

fn realise_key(cx: &Cx, key: ImageKey) -> anyhow::Result<(ImageKey, RealisedImage)> {
    let selection = Selection { arches: vec![key.arch], names: vec![key.name.clone()], ..Selection::default() };
    let plan = Plan::for_images(cx.config(), &selection, Some(ImageKind::Rootfs));
    let mut realised = cx.realise(&plan)?;
    let image = realised.images.remove(&key).ok_or_else(|| anyhow::anyhow!("{key} was not built"))?;
    Ok((key, image))
}

fn manifest(image: &RealisedImage) -> anyhow::Result<Vec<ListingEntry>> {
    exec::read_listing(&image.dir).map_err(|e| anyhow::anyhow!("{e:#}; rebuild the rootfs"))
}

/// `-rwxr-xr-x   1.9 MiB /bin/busybox`, `lrwxrwxrwx            /bin/sh -> busybox`.
fn describe(entry: &ListingEntry) -> String {
    let kind = match entry.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::CharDevice { .. } => 'c',
        EntryKind::File => '-',
    };
    let mut bits = String::from(kind);
    // setuid, setgid and sticky show in the x column as ls shows them.
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let part = (entry.mode >> shift) & 7;
        bits.push(if part & 4 != 0 { 'r' } else { '-' });
        bits.push(if part & 2 != 0 { 'w' } else { '-' });
        bits.push(match (part & 1 != 0, entry.mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    let size = if entry.kind == EntryKind::File { human_size(entry.size) } else { String::new() };
    let target = entry.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
    format!("{bits} {size:>10} {}{target}", entry.path)
}

/// The size, or what a non-file is, for `rootfs diff`.
fn describe_size(entry: &ListingEntry) -> String {
    match (entry.kind, &entry.target) {
        (EntryKind::File, _) => human_size(entry.size),
        (_, Some(target)) => format!("symlink -> {target}"),
        (EntryKind::Dir, None) => "dir".to_owned(),
        (_, None) => "char".to_owned(),
    }
}

fn show(cx: &Cx, arg: &RootfsArg) -> anyhow::Result<u8> {
    let (key, image) = realise_one(cx, arg)?;
    let entries = manifest(&image)?;
    let mut out = std::io::stdout().lock();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    for entry in &entries {
        writeln!(out, "{}", describe(entry))?;
    }
    writeln!(out, "{key}: {} entries, {} of file contents", entries.len(), human_size(total))?;
    Ok(exit_code::SUCCESS)
}

fn diff(cx: &Cx, a: &str, b: &str, arch: Option<Arch>) -> anyhow::Result<u8> {
    check_names(cx, &[a.to_owned(), b.to_owned()])?;
    let arch = match arch {
        Some(arch) => arch,
        None => {
            let (ra, rb) = (&cx.config().rootfses[a], &cx.config().rootfses[b]);
            ra.arches
                .iter()
                .copied()
                .find(|x| rb.arches.contains(x))
                .ok_or_else(|| UsageError::new(format!("rootfs `{a}` and `{b}` share no architecture"), None))?
        }
    };
    let (_, first) = realise_key(cx, key_of(cx, a, Some(arch))?)?;
    let (_, second) = realise_key(cx, key_of(cx, b, Some(arch))?)?;
    let left: BTreeMap<String, ListingEntry> = manifest(&first)?.into_iter().map(|e| (e.path.clone(), e)).collect();
    let right: BTreeMap<String, ListingEntry> = manifest(&second)?.into_iter().map(|e| (e.path.clone(), e)).collect();
    let mut out = std::io::stdout().lock();
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for (path, entry) in &right {
        match left.get(path) {
            None => {
                added += 1;
                writeln!(out, "+ {path} ({})", describe_size(entry))?;
            }
            Some(old) if old != entry => {
                changed += 1;
                writeln!(out, "~ {path} ({} -> {})", describe_size(old), describe_size(entry))?;
            }
            Some(_) => {}
        }
    }
    for (path, entry) in &left {
        if !right.contains_key(path) {
            removed += 1;
            writeln!(out, "- {path} ({})", describe_size(entry))?;
        }
    }
    writeln!(out, "{a} -> {b} ({arch}): {added} added, {removed} removed, {changed} changed")?;
    Ok(exit_code::SUCCESS)
}
