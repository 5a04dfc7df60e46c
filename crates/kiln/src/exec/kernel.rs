//! Kernel derivations: what goes into their closures, and how their store entries are filled.
//!
//! A kernel entry holds `kernel` (the image QEMU boots), `modules.cpio` (the modules kiln's
//! init and the recipe ask for, with their dependencies and a trimmed `modules.dep`, ready to
//! append to any initramfs), `release`, and `share` (whether the kernel can mount 9p).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    path::Path,
};

use anyhow::Context as _;
use kiln_rootfs::{Data, Tree};
use kiln_store::{ClosureHash, Derivation, InputHash};
use kiln_types::Arch;

use super::rootfs::image_mtime;
use crate::{
    guest,
    plan::{KernelFrom, KernelRecipe},
};

/// The file in a kernel entry that QEMU boots: for x86 the ELF `vmlinux` taken out of the
/// bzImage when it can boot through PVH (QEMU then skips the bzImage's decompressor, which
/// under emulation costs about half a second), else the package's `vmlinuz`.
pub(crate) const KERNEL_FILE: &str = "kernel";
/// The file in a kernel entry with its modules, as an uncompressed cpio archive.
pub(crate) const MODULES_FILE: &str = "modules.cpio";
/// The file in a kernel entry that says whether the kernel can mount 9p (`9p`) or not
/// (`none`): `kiln run` shares the package directory over 9p, or copies it in.
pub(crate) const SHARE_FILE: &str = "share";

/// The version of a kernel entry's layout (files, module selection); part of its closure.
const KERNEL_LAYOUT: &str = "4";

/// The derivation of a kernel for `arch`, given the closures of the fetches.
pub(crate) fn kernel_derivation(
    kernel: &KernelRecipe,
    arch: Arch,
    fetches: &BTreeMap<String, ClosureHash>,
) -> Derivation {
    let mut drv = Derivation::new("linux-kernel");
    drv.setting("arch", arch.as_str());
    drv.setting("layout", KERNEL_LAYOUT);
    let kind = match kernel.from {
        KernelFrom::Deb => "deb",
        KernelFrom::Image => "image",
    };
    drv.setting("source", kind);
    drv.setting("modules", modules_wanted(kernel).join(","));
    if let Some(closure) = fetches.get(&kernel.fetch) {
        drv.input("fetch", InputHash::of_closure(*closure));
    }
    drv
}

fn modules_wanted(kernel: &KernelRecipe) -> Vec<String> {
    let mut all: Vec<String> = guest::INIT_MODULES.iter().map(|m| (*m).to_owned()).collect();
    all.extend(kernel.modules.iter().cloned());
    all
}

/// Fills the entry of kernel `name` from the fetched package or image.
pub(crate) fn build_kernel(
    name: &str,
    kernel: &KernelRecipe,
    arch: Arch,
    fetched: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    match kernel.from {
        KernelFrom::Image => {
            std::fs::copy(fetched, out.join(KERNEL_FILE))
                .with_context(|| format!("cannot copy `{}`", fetched.display()))?;
            std::fs::write(out.join("release"), "")?;
            // A kernel of the user's own: assume what kiln's init needs is built in.
            std::fs::write(out.join(SHARE_FILE), "9p")?;
            write_modules(&Tree::new(), out)
        }
        KernelFrom::Deb => {
            let origin = format!("`[fetch.{}]`", kernel.fetch);
            let mut budget = kiln_rootfs::UnpackBudget::new(kiln_rootfs::UnpackLimits::default());
            let tree = kiln_rootfs::deb_files(fetched, &origin, &mut budget, |path| {
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
                .with_context(|| format!("kernel `{name}` ({arch})"))?;
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
pub(crate) const LOAD_ORDER_FILE: &str = "/lib/modules/kiln-load-order";

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
        Data::Spilled(file) => std::fs::read(file.path())?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(from: KernelFrom, modules: &[&str]) -> KernelRecipe {
        KernelRecipe { from, fetch: "linux-x86_64".into(), modules: modules.iter().map(|m| (*m).to_owned()).collect() }
    }

    fn fetches(seed: &[u8]) -> BTreeMap<String, ClosureHash> {
        let mut drv = Derivation::new("fetch");
        drv.setting("hash", String::from_utf8_lossy(seed));
        [("linux-x86_64".to_owned(), drv.closure_hash())].into()
    }

    #[test]
    fn a_kernel_closure_names_its_fetch_kind_arch_and_modules() {
        let base = kernel_derivation(&recipe(KernelFrom::Deb, &[]), Arch::X86_64, &fetches(b"a"));
        assert_eq!(base.kind, "linux-kernel");
        assert!(base.inputs.contains_key("fetch"));
        let modules = &base.settings["modules"];
        assert!(guest::INIT_MODULES.iter().all(|m| modules.split(',').any(|n| n == *m)), "{modules}");

        let closure = |drv: Derivation| drv.closure_hash();
        let differs = [
            kernel_derivation(&recipe(KernelFrom::Image, &[]), Arch::X86_64, &fetches(b"a")),
            kernel_derivation(&recipe(KernelFrom::Deb, &["vfat"]), Arch::X86_64, &fetches(b"a")),
            kernel_derivation(&recipe(KernelFrom::Deb, &[]), Arch::Aarch64, &fetches(b"a")),
            kernel_derivation(&recipe(KernelFrom::Deb, &[]), Arch::X86_64, &fetches(b"b")),
        ];
        for other in differs {
            assert_ne!(closure(other), base.closure_hash());
        }
        assert_eq!(
            closure(kernel_derivation(&recipe(KernelFrom::Deb, &[]), Arch::X86_64, &fetches(b"a"))),
            base.closure_hash(),
            "the same inputs give the same closure"
        );
    }

    #[test]
    fn an_image_kernel_entry_holds_the_image_and_claims_9p() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("bzImage");
        std::fs::write(&image, b"not really a kernel").expect("write");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        build_kernel("mine", &recipe(KernelFrom::Image, &[]), Arch::X86_64, &image, &out).expect("entry");
        assert_eq!(std::fs::read(out.join(KERNEL_FILE)).expect("kernel"), b"not really a kernel");
        assert_eq!(std::fs::read_to_string(out.join(SHARE_FILE)).expect("share"), "9p");
        assert!(out.join(MODULES_FILE).is_file(), "an (empty) modules archive, appended to every initrd");
        let err = build_kernel("mine", &recipe(KernelFrom::Deb, &[]), Arch::X86_64, &image, &out)
            .expect_err("a file that is no .deb");
        assert!(format!("{err:#}").contains("bzImage"), "{err:#}");
    }
}
