//! The protocol between kiln and a Linux guest under kiln's init.
//!
//! The rootfs carries kiln's `/init` (`init.sh`) and a skeleton of the files test suites
//! expect. What changes per boot travels in a small uncompressed cpio archive appended to
//! the initramfs (the kernel unpacks concatenated archives in order): `/kiln/command` (a
//! shell script), `/kiln/shares` (9p tag and mount point per line), `/kiln/modules`, and
//! the program itself. The init reports `KILN-EXIT <nonce> <status>` on the console; the
//! nonce comes from the kernel command line and is new for every boot, so a program's own
//! output cannot end the run with a made-up status by accident.
//!
//! [`LinuxImages`] are a kernel and rootfs in the store, ready to boot: the per-boot initramfs
//! and QEMU's arguments come from them.

mod images;

pub(crate) use images::{GuestIo, LinuxImages};

use std::path::{Path, PathBuf};

use kiln_rootfs::{Data, Tree};

/// What a copied host path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CopyKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink with this target.
    Symlink(String),
}

/// The environment every command run through the guest agent starts from (the agent
/// passes only what it is given): a `PATH` and `HOME` as kiln's init sets them.
pub(crate) fn agent_env() -> std::collections::BTreeMap<String, String> {
    [("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/root")]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Copies larger than this are refused: the per-boot archive lives in guest memory.
pub(crate) const MAX_COPY_BYTES: u64 = 256 * 1024 * 1024;

/// The files of `dir` ([`package_walk`]: all but `.git/` and cargo target directories) to copy
/// into a guest whose kernel cannot mount a share.
pub(crate) fn package_copies(dir: &Path) -> anyhow::Result<Vec<(PathBuf, CopyKind)>> {
    let mut copies = Vec::new();
    let mut total = 0u64;
    for entry in package_walk(dir) {
        let entry = entry?;
        let Some(copy) = package_entry(&entry)? else { continue };
        if copy.1 == CopyKind::File {
            total += entry.metadata()?.len();
            if total > MAX_COPY_BYTES {
                anyhow::bail!(
                    "`{}` holds more than {} of files to copy into the guest, whose kernel cannot mount a 9p \
                     share; use a kernel with 9p (Debian's generic linux-image packages have it as a module) \
                     or run from a smaller directory",
                    dir.display(),
                    crate::units::human_size(MAX_COPY_BYTES)
                );
            }
        }
        copies.push(copy);
    }
    Ok(copies)
}

/// What an entry of [`package_walk`] is to a guest: a file, a directory or a symlink (with its
/// target); `None` for anything else (a FIFO, a socket, a device).
pub(crate) fn package_entry(entry: &ignore::DirEntry) -> std::io::Result<Option<(PathBuf, CopyKind)>> {
    let Some(kind) = entry.file_type() else { return Ok(None) };
    let path = entry.path().to_owned();
    Ok(if kind.is_symlink() {
        let target = std::fs::read_link(&path)?;
        Some((path, CopyKind::Symlink(target.to_string_lossy().into_owned())))
    } else if kind.is_dir() {
        Some((path, CopyKind::Dir))
    } else if kind.is_file() {
        Some((path, CopyKind::File))
    } else {
        None
    })
}

/// The entries of the package directory `dir` a guest sees: everything, as a host program sees
/// it (files its `.gitignore`s exclude and hidden ones included), except `.git/` and the cargo
/// target directories inside it (`kiln run` shows of those what the program needs), and
/// kiln's own scratch directories (other guests' inboxes).
pub(crate) fn package_walk(dir: &Path) -> ignore::Walk {
    let kilns = crate::host::user_temp_dir();
    ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .filter_entry(move |entry| {
            let is_dir = entry.file_type().is_some_and(|kind| kind.is_dir());
            let shown = entry.file_name() != ".git" && !is_cargo_target_dir(entry.path()) && entry.path() != kilns;
            entry.depth() == 0 || !is_dir || shown
        })
        .build()
}

/// Whether `dir` is a cargo target directory: cargo marks it with `CACHEDIR.TAG` (cargo before
/// 1.47 wrote none, but its `.rustc_info.json`).
pub(crate) fn is_cargo_target_dir(dir: &Path) -> bool {
    dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file()
}

/// kiln's `/init`.
pub(crate) const INIT_SCRIPT: &str = include_str!("init.sh");

/// The `/init` of the small initramfs that boots a disk rootfs (busybox and this script).
pub(crate) const DISK_INIT_SCRIPT: &str = include_str!("disk-init.sh");

/// The version of the skeleton and init; part of every rootfs derivation with `init`.
pub(crate) const INIT_VERSION: &str = "3";

/// Modules kiln's init loads when the kernel has them as modules: the virtio consoles
/// (separate stdout and stderr for `kiln run`), 9p over virtio (the package share) and
/// overlayfs (the share made writable in the guest).
/// `virtio_pci` first: on Debian's arm64 cloud kernel even the PCI transport is a module;
/// `virtio_blk`, `ext4` and the crc32c it loads by alias (not a listed dependency) for disk
/// rootfs images.
pub(crate) const INIT_MODULES: &[&str] =
    &["virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay", "virtio_blk", "crc32c_generic", "ext4"];

/// Adds the skeleton every kiln guest has: directories, `/etc/passwd` with root and
/// nobody, `/etc/group`, `/etc/hosts`, and the console and null devices.
pub(crate) fn add_skeleton(tree: &mut Tree) -> Result<(), kiln_rootfs::Error> {
    for dir in ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/lib", "/etc", "/proc", "/sys", "/dev", "/run", "/mnt"] {
        tree.insert_dir(dir, 0o755)?;
    }
    tree.insert_dir("/root", 0o700)?;
    tree.insert_dir("/tmp", 0o1777)?;
    tree.insert_dir("/var/tmp", 0o1777)?;
    tree.insert_file("/etc/passwd", 0o644, Data::from(PASSWD))?;
    tree.insert_file("/etc/group", 0o644, Data::from(GROUP))?;
    tree.insert_file("/etc/hosts", 0o644, Data::from(HOSTS))?;
    tree.insert_char_device("/dev/console", 0o600, 5, 1)?;
    tree.insert_char_device("/dev/null", 0o666, 1, 3)?;
    Ok(())
}

/// Adds kiln's `/init` (after the layers, so it is the one that runs).
pub(crate) fn add_init(tree: &mut Tree) -> Result<(), kiln_rootfs::Error> {
    tree.insert_file("/init", 0o755, Data::from(INIT_SCRIPT))?;
    tree.insert_dir("/kiln", 0o755)
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// What one boot runs.
#[derive(Debug, Default)]
pub(crate) struct BootFiles<'a> {
    /// The shell script `/kiln/command`.
    pub command: String,
    /// Host directories to mount in the guest at the same path, read-only, by 9p tag.
    pub shares: Vec<(String, &'a Path)>,
    /// A program copied to this path in the guest.
    pub program: Option<(&'a Path, String)>,
    /// Host files copied in at the same path (for kernels that cannot mount 9p).
    pub copies: Vec<(PathBuf, CopyKind)>,
    /// Whether the program's stdout and stderr go to the virtio consoles.
    pub separate_stdio: bool,
    /// Whether the program's stderr goes where its stdout goes, one pipe for both (the
    /// host's stdout and stderr are one file, as under `2>&1`), so their order is kept.
    pub merged_output: bool,
    /// Whether the program's stdin comes from the host, through the virtio port `kiln-stdin`.
    pub stdin: bool,
    /// Run kiln's agent (the `program`, at `/kiln/bin/kiln-agent`) instead of a command.
    pub agent: bool,
}

/// The initramfs that boots a disk rootfs: the rootfs's own busybox and the boot stub.
pub(crate) fn disk_boot_tree(rootfs: &Tree) -> anyhow::Result<Tree> {
    let Some(kiln_rootfs::Node::File { data, .. }) = rootfs.get("/bin/busybox") else {
        anyhow::bail!(
            "a disk rootfs that cases or `run` boot needs a static busybox at /bin/busybox: add a \
             `{{ busybox = \"...\" }}` layer"
        );
    };
    let mut tree = Tree::new();
    for dir in ["/proc", "/sys", "/dev", "/newroot", "/kiln"] {
        tree.insert_dir(dir, 0o755)?;
    }
    tree.insert_char_device("/dev/console", 0o600, 5, 1)?;
    tree.add_busybox(data.clone(), "the rootfs's /bin/busybox")?;
    tree.insert_file("/init", 0o755, Data::from(DISK_INIT_SCRIPT))?;
    Ok(tree)
}

/// Writes the per-boot cpio archive.
pub(crate) fn write_boot_archive(files: &BootFiles<'_>, out: impl std::io::Write) -> Result<(), kiln_rootfs::Error> {
    let mut tree = Tree::new();
    tree.insert_dir("/kiln", 0o755)?;
    tree.insert_file("/kiln/command", 0o755, Data::from(files.command.as_str()))?;
    if !files.shares.is_empty() {
        let lines: String = files.shares.iter().map(|(tag, path)| format!("{tag} {}\n", path.display())).collect();
        tree.insert_file("/kiln/shares", 0o644, Data::from(lines.as_str()))?;
    }
    if files.agent {
        tree.insert_file("/kiln/agent", 0o644, Data::from(""))?;
    }
    if files.separate_stdio {
        tree.insert_file("/kiln/stdio", 0o644, Data::from(""))?;
    }
    if files.merged_output {
        tree.insert_file("/kiln/merged", 0o644, Data::from(""))?;
    }
    if files.stdin {
        tree.insert_file("/kiln/stdin", 0o644, Data::from(""))?;
    }
    // Copies wait under /kiln/root until kiln's init puts them in place, so a disk rootfs's
    // boot stub carries them over with the rest of /kiln.
    for (path, kind) in &files.copies {
        let guest = format!("/kiln/root{}", path.to_string_lossy());
        match kind {
            CopyKind::Dir => tree.insert_dir(&guest, 0o755)?,
            CopyKind::File => tree.add_host_file(path, &guest, None)?,
            CopyKind::Symlink(target) => tree.insert_symlink(&guest, target)?,
        }
    }
    if let Some((host, guest)) = &files.program {
        tree.insert_file(guest, 0o755, Data::Host(host.to_path_buf()))?;
    }
    tree.write_cpio(out, kiln_rootfs::Compression::None, 0)
}

/// Writes the initramfs of one boot to `dest`: the rootfs image, the kernel's modules and
/// the per-boot archive, concatenated (the kernel unpacks them in order).
pub(crate) fn compose_initrd(rootfs: &Path, modules: &Path, files: &BootFiles<'_>, dest: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dest).with_context(|| format!("cannot create `{}`", dest.display()))?,
    );
    let mut written = 0u64;
    for part in [rootfs, modules] {
        let mut input = std::fs::File::open(part).with_context(|| format!("cannot read `{}`", part.display()))?;
        written += std::io::copy(&mut input, &mut out).with_context(|| format!("cannot write `{}`", dest.display()))?;
        // The kernel looks for an uncompressed archive only at 4-byte aligned offsets and
        // skips zeros between archives.
        let padding = (4 - written % 4) % 4;
        std::io::Write::write_all(&mut out, &[0u8; 4][..padding as usize])?;
        written += padding;
    }
    write_boot_archive(files, &mut out)?;
    std::io::Write::flush(&mut out).with_context(|| format!("cannot write `{}`", dest.display()))?;
    Ok(())
}

/// A word quoted for `sh`.
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A fresh nonce for one boot, from the operating system's randomness: a guest program cannot
/// guess it to fake the exit marker.
pub(crate) fn nonce() -> anyhow::Result<String> {
    crate::host::random_hex(12)
}

/// The kernel command line of a boot on `machine`: console, quiet, no reboot loop on panic,
/// the machine's fast-boot arguments, the nonce, then the kernel's own arguments.
pub(crate) fn cmdline(machine: &kiln_qemu::Machine, nonce: &str, extra: &[String]) -> String {
    let mut words = vec![
        format!("console={}", machine.linux_console()),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
        "loglevel=3".to_owned(),
    ];
    words.extend(machine.linux_fast_boot_args().iter().map(|arg| (*arg).to_owned()));
    words.push(format!("kiln.nonce={nonce}"));
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// The console line after which the program's output follows on the console (when the
/// guest has no virtio consoles).
pub(crate) fn output_marker(nonce: &str) -> String {
    format!("KILN-OUTPUT {nonce}")
}

/// The console line that carries the command's exit status, up to the status itself.
pub(crate) fn exit_marker(nonce: &str) -> String {
    format!("KILN-EXIT {nonce} ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_safely() {
        assert_eq!(shell_quote("plain-word_1.0"), "plain-word_1.0");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn nonces_differ_between_boots() {
        let nonce = || super::nonce().expect("random");
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 24);
    }
}
