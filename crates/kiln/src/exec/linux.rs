//! Kernel and rootfs derivations: what goes into their closures, and how their store
//! entries are filled.
//!
//! A kernel entry holds `vmlinuz` (the image QEMU boots), `modules.cpio` (the modules kiln's
//! init and the recipe ask for, with their dependencies and a trimmed `modules.dep`, ready to
//! append to any initramfs) and `release`. A rootfs entry holds the image
//! (`rootfs.cpio.gz`, `rootfs.ext4`, ...) and `manifest.tsv`, its file listing for
//! `rootfs ls` and `rootfs diff`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use kiln_rootfs::{Data, Tree};
use kiln_store::{ClosureHash, Derivation, InputHash};
use kiln_types::Arch;

use crate::{
    config::{Kernel, KernelSource, LayerSource, Rootfs, RootfsFormat},
    exec::guest,
};

/// The file in a kernel entry that QEMU boots: for x86 the ELF `vmlinux` taken out of the
/// bzImage when it can boot through PVH (QEMU then skips the bzImage's decompressor, which
/// under emulation costs about half a second), else the package's `vmlinuz`.
pub const KERNEL_FILE: &str = "kernel";
/// The file in a kernel entry with its modules, as an uncompressed cpio archive.
pub const MODULES_FILE: &str = "modules.cpio";
/// The file in a kernel entry that says whether the kernel can mount 9p (`9p`) or not
/// (`none`): `kiln run` shares the package directory over 9p, or copies it in.
pub const SHARE_FILE: &str = "share";
/// The listing of a rootfs, one line per entry: path, kind, mode, size, BLAKE3.
pub const MANIFEST_FILE: &str = "manifest.tsv";
/// The initramfs in a disk rootfs's entry that mounts the disk and switches to it.
pub const DISK_BOOT_FILE: &str = "boot.cpio.gz";

/// The version of a kernel entry's layout (files, module selection); part of its closure.
const KERNEL_LAYOUT: &str = "4";

/// Where a fetched file is (its closure and its path in the store).
pub type FetchedFiles = BTreeMap<String, (ClosureHash, PathBuf)>;

/// The timestamp every file in an image gets: `SOURCE_DATE_EPOCH`, else 0.
pub fn image_mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The derivation of a kernel for `arch`.
pub fn kernel_derivation(kernel: &Kernel, arch: Arch, fetches: &BTreeMap<String, ClosureHash>) -> Derivation {
    let mut drv = Derivation::new("linux-kernel");
    drv.setting("arch", arch.as_str());
    drv.setting("layout", KERNEL_LAYOUT);
    let (kind, template) = match &kernel.source {
        KernelSource::Deb(t) => ("deb", t),
        KernelSource::Image(t) => ("image", t),
    };
    drv.setting("source", kind);
    drv.setting("modules", modules_wanted(kernel).join(","));
    if let Some(closure) = fetches.get(&template.for_arch(arch)) {
        drv.input("fetch", InputHash::of_closure(*closure));
    }
    drv
}

fn modules_wanted(kernel: &Kernel) -> Vec<String> {
    let mut all: Vec<String> = guest::INIT_MODULES.iter().map(|m| (*m).to_owned()).collect();
    all.extend(kernel.modules.iter().cloned());
    all
}

/// Fills a kernel entry from the fetched package or image.
pub fn build_kernel(kernel: &Kernel, arch: Arch, fetched: &Path, out: &Path) -> anyhow::Result<()> {
    match &kernel.source {
        KernelSource::Image(_) => {
            std::fs::copy(fetched, out.join(KERNEL_FILE))
                .with_context(|| format!("cannot copy `{}`", fetched.display()))?;
            std::fs::write(out.join("release"), "")?;
            // A kernel of the user's own: assume what kiln's init needs is built in.
            std::fs::write(out.join(SHARE_FILE), "9p")?;
            write_modules(&Tree::new(), out)
        }
        KernelSource::Deb(_) => {
            let tree = kiln_rootfs::deb_files(fetched, |path| {
                path.starts_with("/boot/vmlinuz-")
                    || path.starts_with("/lib/modules/")
                    || path.starts_with("/usr/lib/modules/")
            })
            .with_context(|| format!("cannot read the kernel package `{}`", fetched.display()))?;
            let (release, image) = tree
                .entries()
                .find_map(|(path, node)| match node {
                    kiln_rootfs::Node::File { data, .. } => {
                        path.strip_prefix("/boot/vmlinuz-").map(|release| (release.to_owned(), data.clone()))
                    }
                    _ => None,
                })
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`{}` has no /boot/vmlinuz-*: is it a linux-image package for {arch}?",
                        fetched.display()
                    )
                })?;
            write_kernel_image(&image, arch, &out.join(KERNEL_FILE))?;
            std::fs::write(out.join("release"), &release)?;
            let (modules, has_9p) = select_modules(&tree, &release, &modules_wanted(kernel), &kernel.modules)
                .with_context(|| format!("kernel `{}` ({arch})", kernel.name))?;
            std::fs::write(out.join(SHARE_FILE), if has_9p { "9p" } else { "none" })?;
            write_modules(&modules, out)
        }
    }
}

/// Writes the kernel image: an x86 bzImage's PVH-capable ELF when it has one, a gzipped
/// Arm `Image` inflated (QEMU would otherwise inflate it on every boot), else as it is.
fn write_kernel_image(image: &Data, arch: Arch, dest: &Path) -> anyhow::Result<()> {
    let bytes = read_data(image)?;
    if arch == Arch::X86_64
        && let Some(elf) = kiln_rootfs::vmlinux_from_bzimage(&bytes)
        && has_pvh_note(&elf)
    {
        std::fs::write(dest, elf)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut inflated)
            .context("cannot decompress the kernel image")?;
        std::fs::write(dest, inflated)?;
    } else {
        std::fs::write(dest, bytes)?;
    }
    Ok(())
}

/// Whether an ELF kernel carries the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`, type
/// 18, name "Xen"), which QEMU needs to boot it with `-kernel`.
fn has_pvh_note(elf: &[u8]) -> bool {
    const NOTE: &[u8] = &[4, 0, 0, 0];
    const TYPE_AND_NAME: &[u8] = &[18, 0, 0, 0, b'X', b'e', b'n', 0];
    elf.windows(16).any(|w| w[..4] == *NOTE && w[8..] == *TYPE_AND_NAME)
}

fn write_modules(tree: &Tree, out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out.join(MODULES_FILE))?;
    let mut writer = std::io::BufWriter::new(file);
    tree.write_cpio(&mut writer, kiln_rootfs::Compression::None, image_mtime())?;
    std::io::Write::flush(&mut writer)?;
    Ok(())
}

/// The wanted modules and everything they depend on (read from each module's `.modinfo`
/// `depends=`, since packages ship no `modules.dep`), with a `modules.dep` for them and
/// `/lib/modules/kiln-load-order`, their paths in an order `insmod` accepts. Modules built
/// into the kernel (`modules.builtin`) are skipped; one the recipe asks for that exists
/// neither way is an error (kiln's own are optional: a kernel may lack 9p altogether).
/// Also says whether the kernel can mount 9p (as a module shipped now, or built in).
fn select_modules(tree: &Tree, release: &str, wanted: &[String], required: &[String]) -> anyhow::Result<(Tree, bool)> {
    let mut selected = Tree::new();
    let base = ["/lib/modules", "/usr/lib/modules"]
        .into_iter()
        .map(|root| format!("{root}/{release}"))
        .find(|dir| tree.get(dir).is_some());
    let Some(base) = base else {
        if let Some(module) = required.first() {
            anyhow::bail!("module `{module}` was asked for, but the package has no /lib/modules/{release}");
        }
        return Ok((selected, false));
    };
    let canonical = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let prefix = format!("{base}/");
    let mut files: BTreeMap<String, (String, Data)> = BTreeMap::new();
    let mut builtin = BTreeSet::new();
    for (path, node) in tree.entries() {
        let Some(relative) = path.strip_prefix(&prefix) else { continue };
        if let kiln_rootfs::Node::File { data, .. } = node {
            if relative.ends_with(".ko") || relative.contains(".ko.") {
                files.insert(canonical(relative), (relative.to_owned(), data.clone()));
            } else if relative == "modules.builtin" {
                let text = read_data(data)?;
                builtin.extend(String::from_utf8_lossy(&text).lines().map(canonical));
            }
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut deps_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut visiting = BTreeSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        let must = required.iter().any(|r| r.replace('-', "_") == name);
        if !files.contains_key(&name) {
            if must && !builtin.contains(&name) {
                anyhow::bail!("module `{name}` is neither a module nor built into kernel {release}");
            }
            continue;
        }
        visit(&name, &files, &mut deps_of, &mut order, &mut visiting)?;
    }
    let mut dep_lines = String::new();
    let mut load_order = String::new();
    for name in &order {
        let (relative, data) = &files[name];
        let deps: Vec<&str> = deps_of[name].iter().filter_map(|d| files.get(d).map(|(p, _)| p.as_str())).collect();
        dep_lines.push_str(&format!("{relative}:{}{}\n", if deps.is_empty() { "" } else { " " }, deps.join(" ")));
        load_order.push_str(&format!("{base}/{relative}\n"));
        selected.insert_file(&format!("{base}/{relative}"), 0o644, data.clone())?;
    }
    if !order.is_empty() {
        selected.insert_file(&format!("{base}/modules.dep"), 0o644, Data::from(dep_lines.as_str()))?;
        selected.insert_file(LOAD_ORDER_FILE, 0o644, Data::from(load_order.as_str()))?;
    }
    let has_9p = order.iter().any(|m| m == "9p") || builtin.contains("9p");
    Ok((selected, has_9p))
}

/// The modules kiln's init loads, one path per line, dependencies first.
pub const LOAD_ORDER_FILE: &str = "/lib/modules/kiln-load-order";

/// Depth-first: a module's dependencies enter `order` before it.
fn visit(
    name: &str,
    files: &BTreeMap<String, (String, Data)>,
    deps_of: &mut BTreeMap<String, Vec<String>>,
    order: &mut Vec<String>,
    visiting: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    if deps_of.contains_key(name) || !visiting.insert(name.to_owned()) {
        return Ok(());
    }
    let Some((relative, data)) = files.get(name) else { return Ok(()) };
    if !relative.ends_with(".ko") {
        anyhow::bail!("module `{relative}` is compressed; kiln loads uncompressed .ko files only");
    }
    let bytes = read_data(data)?;
    let deps = module_depends(&bytes).with_context(|| format!("cannot read the module `{relative}`"))?;
    for dep in &deps {
        visit(dep, files, deps_of, order, visiting)?;
    }
    deps_of.insert(name.to_owned(), deps);
    order.push(name.to_owned());
    Ok(())
}

fn read_data(data: &Data) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        Data::Bytes(bytes) => bytes.to_vec(),
        Data::Host(path) => std::fs::read(path)?,
    })
}

/// The `depends=` list of a kernel module's `.modinfo` section.
fn module_depends(elf: &[u8]) -> anyhow::Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf)?;
    let Some(section) = file.section_by_name(".modinfo") else { return Ok(Vec::new()) };
    let data = section.data()?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|field| std::str::from_utf8(field).ok()?.strip_prefix("depends="))
        .flat_map(|list| list.split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")))
        .collect())
}

/// Closures a rootfs derivation reads: fetches by name, artifacts by (name, arch).
pub struct RootfsInputs<'a> {
    /// Fetch closures by fetch name.
    pub fetches: &'a BTreeMap<String, ClosureHash>,
    /// Artifact closures by artifact name, for the rootfs's arch.
    pub artifacts: &'a BTreeMap<String, ClosureHash>,
}

/// The derivation of a rootfs for `arch`.
pub fn rootfs_derivation(rootfs: &Rootfs, arch: Arch, inputs: &RootfsInputs<'_>) -> anyhow::Result<Derivation> {
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
            LayerSource::Busybox(t) => ("busybox", fetch_input(inputs, &t.for_arch(arch))?),
            LayerSource::Deb(t) => ("deb", fetch_input(inputs, &t.for_arch(arch))?),
            LayerSource::Tarball(t) => ("tarball", fetch_input(inputs, &t.for_arch(arch))?),
            LayerSource::Artifact(name) => {
                let closure = inputs
                    .artifacts
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("artifact `{name}` ({arch}) has no derivation"))?;
                ("artifact", InputHash::of_closure(*closure))
            }
            LayerSource::Dir(dir) => {
                let set = kiln_store::SourceSet::package_dir(dir)
                    .with_context(|| format!("cannot list `{}`", dir.display()))?;
                ("dir", kiln_store::hash_source_set(&set, &kiln_store::StatCache::disabled())?)
            }
            LayerSource::File(file) => {
                let hash = kiln_store::hash_file(file).with_context(|| format!("cannot hash `{}`", file.display()))?;
                let executable = is_executable(file);
                ("file", InputHash::of_bytes(&[hash.as_bytes().as_slice(), &[u8::from(executable)]].concat()))
            }
            LayerSource::Text(text) => ("text", InputHash::of_bytes(text.as_bytes())),
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

/// What a rootfs build reads: fetched files and artifact binaries for its arch.
pub struct RootfsFiles<'a> {
    /// Fetched files by fetch name.
    pub fetched: &'a FetchedFiles,
    /// Artifact binaries by artifact name.
    pub binaries: &'a BTreeMap<String, PathBuf>,
}

/// Assembles the tree of a rootfs.
pub fn assemble(rootfs: &Rootfs, arch: Arch, files: &RootfsFiles<'_>) -> anyhow::Result<Tree> {
    let mut tree = Tree::new();
    if rootfs.init {
        guest::add_skeleton(&mut tree)?;
    }
    for (index, layer) in rootfs.layers.iter().enumerate() {
        let fetched = |template: &crate::config::NameTemplate| -> anyhow::Result<&Path> {
            let name = template.for_arch(arch);
            files
                .fetched
                .get(&name)
                .map(|(_, path)| path.as_path())
                .ok_or_else(|| anyhow::anyhow!("`{name}` was not fetched"))
        };
        let what = format!("rootfs `{}` ({arch}), layer {}", rootfs.name, index + 1);
        let applied: anyhow::Result<()> = (|| {
            match &layer.source {
                LayerSource::Busybox(t) => {
                    let path = fetched(t)?;
                    let binary = if is_deb(path)? {
                        let found = kiln_rootfs::deb_files(path, |p| p == "/bin/busybox")?;
                        match found.get("/bin/busybox") {
                            Some(kiln_rootfs::Node::File { data, .. }) => data.clone(),
                            _ => anyhow::bail!(
                                "`{}` has no /bin/busybox: use the busybox-static package",
                                path.display()
                            ),
                        }
                    } else {
                        Data::Host(path.to_owned())
                    };
                    tree.add_busybox(binary, &path.display().to_string())?;
                }
                LayerSource::Deb(t) => {
                    tree.add_deb(fetched(t)?, &layer.dest)?;
                }
                LayerSource::Tarball(t) => tree.add_tarball(fetched(t)?, &layer.dest)?,
                LayerSource::Dir(dir) => tree.add_host_dir(dir, &layer.dest)?,
                LayerSource::File(file) => tree.add_host_file(file, &layer.dest, layer.mode)?,
                LayerSource::Artifact(name) => {
                    let binary =
                        files.binaries.get(name).ok_or_else(|| anyhow::anyhow!("artifact `{name}` was not built"))?;
                    tree.add_host_file(binary, &layer.dest, Some(layer.mode.unwrap_or(0o755)))?;
                }
                LayerSource::Text(text) => {
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
    Ok(tree)
}

fn is_deb(path: &Path) -> anyhow::Result<bool> {
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let n = file.read(&mut magic)?;
    Ok(n == 8 && &magic == b"!<arch>\n")
}

/// Writes the image and its manifest into a store entry's output directory.
pub fn write_rootfs(rootfs: &Rootfs, tree: &Tree, out: &Path) -> anyhow::Result<()> {
    let mtime = image_mtime();
    let image = out.join(rootfs.format.file_name());
    match rootfs.format {
        RootfsFormat::Initramfs(compression) => {
            let compression = match compression {
                crate::config::Compression::Gzip => kiln_rootfs::Compression::Gzip,
                crate::config::Compression::Zstd => kiln_rootfs::Compression::Zstd,
                crate::config::Compression::None => kiln_rootfs::Compression::None,
            };
            let file = std::fs::File::create(&image).with_context(|| format!("cannot create `{}`", image.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            tree.write_cpio(&mut writer, compression, mtime)?;
            std::io::Write::flush(&mut writer)?;
        }
        RootfsFormat::Ext4 | RootfsFormat::Qcow2 => {
            let options = kiln_rootfs::Ext4Options {
                size: rootfs.size_mib.map(|mib| u64::from(mib) * 1024 * 1024),
                label: Some(rootfs.name.chars().take(16).collect()),
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
        let target = match tree.get(&entry.path) {
            Some(kiln_rootfs::Node::Symlink { target }) => Some(target.clone()),
            _ => None,
        };
        let kind = match entry.kind {
            kiln_rootfs::EntryKind::Dir => "dir",
            kiln_rootfs::EntryKind::File => "file",
            kiln_rootfs::EntryKind::Symlink => "symlink",
            kiln_rootfs::EntryKind::CharDevice { .. } => "char",
        };
        let line = ManifestEntry {
            path: entry.path.clone(),
            kind: kind.to_owned(),
            mode: entry.mode,
            size: entry.size,
            hash: entry.hash.map(|h| h.to_hex().to_string()).unwrap_or_default(),
            target,
        };
        manifest.push_str(&line.render());
        manifest.push('\n');
    }
    std::fs::write(out.join(MANIFEST_FILE), manifest)?;
    Ok(())
}

/// One line of a rootfs's `manifest.tsv`: `path kind mode size blake3 [target]`, tab-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Rootfs-absolute path.
    pub path: String,
    /// `dir`, `file`, `symlink` or `char`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// File size (0 for others).
    pub size: u64,
    /// BLAKE3 of the content or link target (empty for others).
    pub hash: String,
    /// A symlink's target.
    pub target: Option<String>,
}

impl ManifestEntry {
    /// The TSV line.
    pub fn render(&self) -> String {
        let mut line = format!("{}\t{}\t{:o}\t{}\t{}", escape(&self.path), self.kind, self.mode, self.size, self.hash);
        if let Some(target) = &self.target {
            line.push('\t');
            line.push_str(&escape(target));
        }
        line
    }

    /// Reads a TSV line back.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        Some(Self {
            path: unescape(fields.next()?),
            kind: fields.next()?.to_owned(),
            mode: u32::from_str_radix(fields.next()?, 8).ok()?,
            size: fields.next()?.parse().ok()?,
            hash: fields.next()?.to_owned(),
            target: fields.next().map(unescape),
        })
    }

    /// `-rwxr-xr-x   1.9 MiB /bin/busybox`, `lrwxrwxrwx /bin/sh -> busybox`.
    pub fn describe(&self) -> String {
        let kind = match self.kind.as_str() {
            "dir" => 'd',
            "symlink" => 'l',
            "char" => 'c',
            _ => '-',
        };
        let mut bits = String::from(kind);
        // setuid, setgid and sticky show in the x column as ls shows them.
        for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
            let part = (self.mode >> shift) & 7;
            bits.push(if part & 4 != 0 { 'r' } else { '-' });
            bits.push(if part & 2 != 0 { 'w' } else { '-' });
            bits.push(match (part & 1 != 0, self.mode & special != 0) {
                (true, true) => letter,
                (false, true) => letter.to_ascii_uppercase(),
                (true, false) => 'x',
                (false, false) => '-',
            });
        }
        let size = if self.kind == "file" { crate::report::human_size(self.size) } else { String::new() };
        let target = self.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        format!("{bits} {size:>10} {}{target}", self.path)
    }

    /// The size, or what a non-file is, for `rootfs diff`.
    pub fn describe_size(&self) -> String {
        match (self.kind.as_str(), &self.target) {
            ("file", _) => crate::report::human_size(self.size),
            (_, Some(target)) => format!("symlink -> {target}"),
            (kind, None) => kind.to_owned(),
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n")
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
