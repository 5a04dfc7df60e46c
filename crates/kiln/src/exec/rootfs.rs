//! Rootfs derivations: what goes into their closures, and how their store entries are filled.
//!
//! A rootfs entry holds the image (`rootfs.cpio.gz`, `rootfs.ext4`, ...), for a disk rootfs
//! with kiln's init also `boot.cpio.gz` (the initramfs that mounts it), and `manifest.tsv`,
//! its file listing for `rootfs show` and `rootfs diff`.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use kiln_rootfs::{Data, Tree};
use kiln_store::{ClosureHash, Derivation, InputHash};
use kiln_types::Arch;

use crate::{
    config::{Compression, RootfsFormat},
    env, guest,
    plan::{BuildKey, LayerInput, RootfsRecipe},
};

/// The listing of a rootfs, one line per entry: path, kind, mode, size, BLAKE3, target.
pub(crate) const MANIFEST_FILE: &str = "manifest.tsv";
/// The initramfs in a disk rootfs's entry that mounts the disk and switches to it.
pub(crate) const DISK_BOOT_FILE: &str = "boot.cpio.gz";

/// The timestamp every file in an image gets: `SOURCE_DATE_EPOCH`, else 0.
pub(crate) fn image_mtime() -> u64 {
    env::var(env::SOURCE_DATE_EPOCH).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Closures a rootfs derivation reads: fetches by name, artifacts by build.
pub(crate) struct RootfsInputs<'a> {
    /// Fetch closures by fetch name.
    pub fetches: &'a BTreeMap<String, ClosureHash>,
    /// Artifact closures by build.
    pub artifacts: &'a BTreeMap<BuildKey, ClosureHash>,
}

/// The derivation of a rootfs for `arch`.
pub(crate) fn rootfs_derivation(
    rootfs: &RootfsRecipe,
    arch: Arch,
    inputs: &RootfsInputs<'_>,
) -> anyhow::Result<Derivation> {
    let mut drv = Derivation::new("rootfs");
    drv.setting("arch", arch.as_str());
    drv.setting("format", rootfs.format.describe());
    drv.setting("mtime", image_mtime().to_string());
    if let Some(size) = rootfs.size_mib {
        drv.setting("size-mib", size.to_string());
    }
    if rootfs.init {
        drv.setting("init", guest::INIT_VERSION);
        drv.input("init-script", InputHash::of_bytes(guest::INIT_SCRIPT.as_bytes()));
        if !matches!(rootfs.format, RootfsFormat::Initramfs(_)) {
            drv.input("disk-init-script", InputHash::of_bytes(guest::DISK_INIT_SCRIPT.as_bytes()));
        }
    }
    for (index, layer) in rootfs.layers.iter().enumerate() {
        let prefix = format!("layer.{index:03}");
        drv.setting(format!("{prefix}.dest"), &layer.dest);
        if let Some(mode) = layer.mode {
            drv.setting(format!("{prefix}.mode"), format!("{mode:o}"));
        }
        let (kind, input) = match &layer.source {
            LayerInput::Busybox(fetch) => ("busybox", fetch_input(inputs, fetch)?),
            LayerInput::Deb(fetch) => ("deb", fetch_input(inputs, fetch)?),
            LayerInput::Tarball(fetch) => ("tarball", fetch_input(inputs, fetch)?),
            LayerInput::Artifact(build) => {
                let closure =
                    inputs.artifacts.get(build).ok_or_else(|| anyhow::anyhow!("{build} has no derivation"))?;
                ("artifact", InputHash::of_closure(*closure))
            }
            LayerInput::Dir(dir) => {
                let set = kiln_store::SourceSet::package_dir(dir)
                    .with_context(|| format!("cannot list `{}`", dir.display()))?;
                ("dir", kiln_store::hash_source_set(&set, &kiln_store::StatCache::disabled())?)
            }
            LayerInput::File(file) => {
                let hash = kiln_store::hash_file(file).with_context(|| format!("cannot hash `{}`", file.display()))?;
                let executable = is_executable(file);
                ("file", InputHash::of_bytes(&[hash.as_bytes().as_slice(), &[u8::from(executable)]].concat()))
            }
            LayerInput::Text(text) => ("text", InputHash::of_bytes(text.as_bytes())),
        };
        drv.setting(format!("{prefix}.kind"), kind);
        drv.input(prefix, input);
    }
    Ok(drv)
}

fn fetch_input(inputs: &RootfsInputs<'_>, name: &str) -> anyhow::Result<InputHash> {
    inputs
        .fetches
        .get(name)
        .map(|closure| InputHash::of_closure(*closure))
        .ok_or_else(|| anyhow::anyhow!("no `[fetch.{name}]`"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// What a rootfs build reads: fetched files and artifact binaries.
pub(crate) struct RootfsFiles<'a> {
    /// Fetched files by fetch name.
    pub fetched: &'a BTreeMap<String, PathBuf>,
    /// Artifact binaries by build.
    pub binaries: &'a BTreeMap<BuildKey, PathBuf>,
}

/// A rootfs tree and what the layer policy did on the way (one line per archive layer that
/// had special entries, for people to read).
pub(crate) struct Assembled {
    /// The tree.
    pub tree: Tree,
    /// `rootfs `base` (x86_64), layer 2: `[fetch.NAME]`: dropped 1 fifo (/run/x)`.
    pub notes: Vec<String>,
}

/// Assembles the tree of rootfs `name`. Archive layers are named by their `[fetch.NAME]` in
/// errors and notes, and unpack under caps: 1 GiB per member, and in all the image's `size`
/// when it declares one, else 4 GiB.
pub(crate) fn assemble(
    name: &str,
    rootfs: &RootfsRecipe,
    arch: Arch,
    files: &RootfsFiles<'_>,
) -> anyhow::Result<Assembled> {
    let mut tree = Tree::new();
    let mut notes = Vec::new();
    let limits = kiln_rootfs::UnpackLimits::for_image(rootfs.size_mib.map(|mib| u64::from(mib) << 20));
    let mut budget = kiln_rootfs::UnpackBudget::new(limits);
    if rootfs.init {
        guest::add_skeleton(&mut tree)?;
    }
    for (index, layer) in rootfs.layers.iter().enumerate() {
        let fetched = |fetch: &String| -> anyhow::Result<&Path> {
            files.fetched.get(fetch).map(PathBuf::as_path).ok_or_else(|| anyhow::anyhow!("`{fetch}` was not fetched"))
        };
        let origin = |fetch: &String| format!("`[fetch.{fetch}]`");
        let what = format!("rootfs `{name}` ({arch}), layer {}", index + 1);
        let mut note = |fetch: &String, report: kiln_rootfs::LayerReport| {
            if !report.is_empty() {
                notes.push(format!("{what}: {}: {report}", origin(fetch)));
            }
        };
        let applied: anyhow::Result<()> = (|| {
            match &layer.source {
                LayerInput::Busybox(fetch) => {
                    let path = fetched(fetch)?;
                    let binary = if is_deb(path)? {
                        let found = kiln_rootfs::deb_files(path, &origin(fetch), &mut budget, |p| p == "/bin/busybox")?;
                        match found.get("/bin/busybox") {
                            Some(kiln_rootfs::Node::File { data, .. }) => data.clone(),
                            _ => anyhow::bail!("{} has no /bin/busybox: use the busybox-static package", origin(fetch)),
                        }
                    } else {
                        Data::Host(path.to_owned())
                    };
                    tree.add_busybox(binary, &origin(fetch))?;
                }
                LayerInput::Deb(fetch) => {
                    let (_, report) = tree.add_deb(fetched(fetch)?, &layer.dest, &origin(fetch), &mut budget)?;
                    note(fetch, report);
                }
                LayerInput::Tarball(fetch) => {
                    let report = tree.add_tarball(fetched(fetch)?, &layer.dest, &origin(fetch), &mut budget)?;
                    note(fetch, report);
                }
                LayerInput::Dir(dir) => tree.add_host_dir(dir, &layer.dest)?,
                LayerInput::File(file) => tree.add_host_file(file, &layer.dest, layer.mode)?,
                LayerInput::Artifact(build) => {
                    let binary = files.binaries.get(build).ok_or_else(|| anyhow::anyhow!("{build} was not built"))?;
                    tree.add_host_file(binary, &layer.dest, Some(layer.mode.unwrap_or(0o755)))?;
                }
                LayerInput::Text(text) => {
                    tree.insert_file(&layer.dest, layer.mode.unwrap_or(0o644), Data::from(text.as_str()))?
                }
            }
            Ok(())
        })();
        applied.with_context(|| what.clone())?;
    }
    if rootfs.init {
        guest::add_init(&mut tree)?;
    }
    Ok(Assembled { tree, notes })
}

fn is_deb(path: &Path) -> anyhow::Result<bool> {
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let n = file.read(&mut magic)?;
    Ok(n == 8 && &magic == b"!<arch>\n")
}

/// Writes the image of rootfs `name` and its listing into a store entry's output directory.
pub(crate) fn write_rootfs(name: &str, rootfs: &RootfsRecipe, tree: &Tree, out: &Path) -> anyhow::Result<()> {
    let mtime = image_mtime();
    let image = out.join(rootfs.format.file_name());
    match rootfs.format {
        RootfsFormat::Initramfs(compression) => {
            let compression = match compression {
                Compression::Gzip => kiln_rootfs::Compression::Gzip,
                Compression::Zstd => kiln_rootfs::Compression::Zstd,
                Compression::None => kiln_rootfs::Compression::None,
            };
            let file = std::fs::File::create(&image).with_context(|| format!("cannot create `{}`", image.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            tree.write_cpio(&mut writer, compression, mtime)?;
            std::io::Write::flush(&mut writer)?;
        }
        RootfsFormat::Ext4 | RootfsFormat::Qcow2 => {
            let options = kiln_rootfs::Ext4Options {
                size: rootfs.size_mib.map(|mib| u64::from(mib) * 1024 * 1024),
                label: Some(name.chars().take(16).collect()),
                mtime,
            };
            if rootfs.init {
                let boot = guest::disk_boot_tree(tree)?;
                let file = std::fs::File::create(out.join(DISK_BOOT_FILE))?;
                let mut writer = std::io::BufWriter::new(file);
                boot.write_cpio(&mut writer, kiln_rootfs::Compression::Gzip, mtime)?;
                std::io::Write::flush(&mut writer)?;
            }
            if rootfs.format == RootfsFormat::Ext4 {
                kiln_rootfs::write_ext4(tree, &image, &options)?;
            } else {
                let raw = out.join("rootfs.ext4.tmp");
                kiln_rootfs::write_ext4(tree, &raw, &options)?;
                kiln_rootfs::convert_qcow2(&raw, &image)?;
                std::fs::remove_file(&raw)?;
            }
        }
    }
    let mut manifest = String::new();
    for entry in tree.listing()? {
        manifest.push_str(&entry.to_tsv());
        manifest.push('\n');
    }
    std::fs::write(out.join(MANIFEST_FILE), manifest)?;
    Ok(())
}

/// The listing a rootfs entry keeps beside its image (written by [`write_rootfs`]).
pub(crate) fn read_listing(entry_dir: &Path) -> anyhow::Result<Vec<kiln_rootfs::ListingEntry>> {
    let path = entry_dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(text.lines().filter_map(kiln_rootfs::ListingEntry::from_tsv).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::LayerStep;

    fn closure_of(name: &str) -> ClosureHash {
        let mut drv = Derivation::new("test");
        drv.setting("name", name);
        drv.closure_hash()
    }

    fn text(dest: &str, body: &str) -> LayerStep {
        LayerStep { source: LayerInput::Text(body.into()), dest: dest.into(), mode: None }
    }

    fn recipe(layers: Vec<LayerStep>) -> RootfsRecipe {
        RootfsRecipe { format: RootfsFormat::Initramfs(Compression::Gzip), init: true, size_mib: None, layers }
    }

    fn derivation(recipe: &RootfsRecipe) -> Derivation {
        let fetches = [("busybox-x86_64".to_owned(), closure_of("busybox"))].into();
        let artifacts = [(BuildKey { artifact: "hello".into(), arch: Arch::X86_64 }, closure_of("hello"))].into();
        rootfs_derivation(recipe, Arch::X86_64, &RootfsInputs { fetches: &fetches, artifacts: &artifacts })
            .expect("derivation")
    }

    #[test]
    fn every_layer_is_a_named_input_and_order_and_place_count() {
        let a = text("/etc/a", "a");
        let b = text("/etc/b", "b");
        let base = derivation(&recipe(vec![a.clone(), b.clone()]));
        assert!(base.inputs.contains_key("layer.000") && base.inputs.contains_key("layer.001"), "{base:?}");
        assert!(base.inputs.contains_key("init-script"), "kiln's init is an input");
        assert_eq!(base.settings["format"], "initramfs/gzip");

        let swapped = derivation(&recipe(vec![b.clone(), a.clone()]));
        assert_ne!(swapped.closure_hash(), base.closure_hash(), "swapping two layers changes the closure");
        let moved = derivation(&recipe(vec![a.clone(), text("/etc/c", "b")]));
        assert_ne!(moved.closure_hash(), base.closure_hash(), "a destination is part of the closure");
        let disk = derivation(&RootfsRecipe { format: RootfsFormat::Ext4, ..recipe(vec![a.clone(), b.clone()]) });
        assert_ne!(disk.closure_hash(), base.closure_hash());
        assert!(disk.inputs.contains_key("disk-init-script"), "a disk's boot stub is an input");
    }

    #[test]
    fn fetch_and_artifact_layers_take_their_closures_and_a_missing_one_is_named() {
        let busybox = LayerStep { source: LayerInput::Busybox("busybox-x86_64".into()), dest: "/".into(), mode: None };
        let hello = LayerStep {
            source: LayerInput::Artifact(BuildKey { artifact: "hello".into(), arch: Arch::X86_64 }),
            dest: "/bin/hello".into(),
            mode: None,
        };
        let drv = derivation(&recipe(vec![busybox, hello]));
        assert_eq!(drv.inputs["layer.000"], InputHash::of_closure(closure_of("busybox")));
        assert_eq!(drv.inputs["layer.001"], InputHash::of_closure(closure_of("hello")));

        let missing =
            recipe(vec![LayerStep { source: LayerInput::Deb("libc6-x86_64".into()), dest: "/".into(), mode: None }]);
        let empty = BTreeMap::new();
        let err =
            rootfs_derivation(&missing, Arch::X86_64, &RootfsInputs { fetches: &empty, artifacts: &BTreeMap::new() })
                .expect_err("no such fetch");
        assert!(err.to_string().contains("libc6-x86_64"), "{err}");
    }

    /// A tar archive of (path, type, contents) members, written as the fetch `name` under `dir`.
    fn fetched_tarball(dir: &Path, name: &str, members: &[(&str, tar::EntryType, &str)]) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for &(path, kind, body) in members {
            let mut header = tar::Header::new_gnu();
            header.set_path(path).expect("path");
            header.set_entry_type(kind);
            header.set_mode(0o644);
            header.set_size(body.len() as u64);
            header.set_cksum();
            builder.append(&header, body.as_bytes()).expect("append");
        }
        let file = dir.join(name);
        std::fs::write(&file, builder.into_inner().expect("tar")).expect("write");
        file
    }

    #[test]
    fn archive_layers_are_named_by_their_fetch_and_say_what_the_policy_did() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tarball =
            |fetch: &str| LayerStep { source: LayerInput::Tarball(fetch.into()), dest: "/".into(), mode: None };
        let fetched: BTreeMap<String, PathBuf> = [
            ("tools".to_owned(), fetched_tarball(dir.path(), "t.tar", &[("run/pipe", tar::EntryType::Fifo, "")])),
            (
                "evil".to_owned(),
                fetched_tarball(
                    dir.path(),
                    "e.tar",
                    &[("etc/motd", tar::EntryType::Regular, "a"), ("./etc/motd", tar::EntryType::Regular, "b")],
                ),
            ),
        ]
        .into();
        let files = RootfsFiles { fetched: &fetched, binaries: &BTreeMap::new() };

        let assembled = assemble("base", &recipe(vec![tarball("tools")]), Arch::X86_64, &files).expect("assembled");
        assert_eq!(assembled.notes, ["rootfs `base` (x86_64), layer 1: `[fetch.tools]`: dropped 1 fifo (/run/pipe)"]);

        let err = assemble("base", &recipe(vec![tarball("tools"), tarball("evil")]), Arch::X86_64, &files)
            .err()
            .expect("a duplicate in one layer");
        assert_eq!(
            format!("{err:#}"),
            "rootfs `base` (x86_64), layer 2: `[fetch.evil]`: member etc/motd: `/etc/motd` appears twice in this \
             archive; a layer may give each path once (later layers replace earlier ones, but within one archive \
             a repeat is ambiguous): rebuild the archive without the repeat"
        );
        assert!(!format!("{err:#}").contains(&dir.path().display().to_string()), "the fetch, not the store path");
    }

    #[test]
    fn a_built_rootfs_has_kiln_init_its_layers_and_a_listing_and_is_reproducible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_file = dir.path().join("motd");
        std::fs::write(&host_file, "hello\n").expect("write");
        let recipe = recipe(vec![
            text("/etc/greeting", "hi"),
            LayerStep { source: LayerInput::File(host_file), dest: "/etc/motd".into(), mode: Some(0o600) },
        ]);
        let files = RootfsFiles { fetched: &BTreeMap::new(), binaries: &BTreeMap::new() };
        let write = |name: &str| {
            let out = dir.path().join(name);
            std::fs::create_dir(&out).expect("mkdir");
            let tree = assemble("base", &recipe, Arch::X86_64, &files).expect("tree").tree;
            write_rootfs("base", &recipe, &tree, &out).expect("image");
            out
        };
        let (first, second) = (write("a"), write("b"));
        let image = RootfsFormat::Initramfs(Compression::Gzip).file_name();
        assert_eq!(std::fs::read(first.join(image)).expect("a"), std::fs::read(second.join(image)).expect("b"));
        let listing = read_listing(&first).expect("listing");
        let find = |path: &str| listing.iter().find(|entry| entry.path == path);
        assert!(find("/init").is_some_and(|e| e.mode == 0o755), "kiln's init: {listing:?}");
        assert!(find("/tmp").is_some_and(|e| e.mode == 0o1777), "the skeleton's sticky /tmp");
        assert!(find("/etc/motd").is_some_and(|e| e.mode == 0o600 && e.size == 6));
        assert!(find("/etc/greeting").is_some());
    }
}
