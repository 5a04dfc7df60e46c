//! Errors of the rootfs crate: each names the file, archive member or rootfs path involved
//! and, where there is one, what to do about it. Text that came from an archive (member
//! names, link targets, the rootfs paths made from them) is shown with control characters
//! escaped.

use std::{
    io,
    path::{Path, PathBuf},
    process::ExitStatus,
};

use kiln_types::escape_untrusted;

/// A `map_err` adapter for a failed host operation `action` on `path`.
pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { action, path, source }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something went wrong assembling or writing a rootfs image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation on the host failed.
    #[error("failed to {action} `{path}`")]
    Io {
        /// What kiln was doing, e.g. "read".
        action: &'static str,
        /// The host path it was doing it to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Writing an image to its output stream failed.
    #[error("failed to write {what}")]
    Write {
        /// What was being written, e.g. "the cpio archive".
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A rootfs path given to the API cannot be used.
    #[error("invalid rootfs path `{}`: {problem}", escape_untrusted(.path))]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A symlink target that no file system can hold.
    #[error("cannot put a symlink at `{}`: its target is empty or contains a NUL byte", escape_untrusted(.path))]
    InvalidSymlinkTarget {
        /// The rootfs path of the link.
        path: String,
    },
    /// A non-directory would replace a directory.
    #[error(
        "cannot put a {new} at `{}`: the tree already has a directory there; \
         remove the directory first if it should be replaced",
        escape_untrusted(.path)
    )]
    ReplacesDirectory {
        /// The rootfs path.
        path: String,
        /// The kind of node being inserted ("file", "symlink", ...).
        new: &'static str,
    },
    /// A node would be written through a symlink, which kiln never follows.
    #[error(
        "cannot put a {new} at `{}`: `{}` is a symlink and kiln never writes through \
         symlinks; put it under the symlink's target instead",
        escape_untrusted(.path),
        escape_untrusted(.symlink)
    )]
    ThroughSymlink {
        /// The rootfs path.
        path: String,
        /// The kind of node being inserted.
        new: &'static str,
        /// The ancestor that is a symlink.
        symlink: String,
    },
    /// A node's parent exists but is neither a directory nor a symlink.
    #[error(
        "cannot put a {new} at `{}`: `{}` is a {parent_kind}, not a directory",
        escape_untrusted(.path),
        escape_untrusted(.parent)
    )]
    ParentNotDirectory {
        /// The rootfs path.
        path: String,
        /// The kind of node being inserted.
        new: &'static str,
        /// The ancestor in the way.
        parent: String,
        /// Its kind.
        parent_kind: &'static str,
    },
    /// A host path handed to `add_host_*` is not what the call needs.
    #[error("`{path}` {problem}")]
    HostInput {
        /// The host path.
        path: PathBuf,
        /// What is wrong, phrased to follow the path.
        problem: &'static str,
    },
    /// One member of an archive was rejected.
    #[error("{}: member {}: {problem}", escape_untrusted(.archive), escape_untrusted(.member))]
    Member {
        /// The archive as the caller names it, e.g. "`[fetch.libc6]` (data.tar.xz)".
        archive: String,
        /// The member's path as stored in the archive.
        member: String,
        /// Why it was rejected.
        problem: MemberProblem,
    },
    /// An archive could not be read or decompressed.
    #[error(
        "{}: cannot read {}; is it a complete archive in a supported format?",
        escape_untrusted(.archive),
        match .after { Some(member) => format!("the member after {}", escape_untrusted(member)), None => "its first member".to_owned() }
    )]
    ReadArchive {
        /// The archive as the caller names it.
        archive: String,
        /// The last member read whole before the failure, if any.
        after: Option<String>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An archive holds no members (a 0-byte file, or only the end-of-archive blocks).
    #[error(
        "{}: the archive is empty (no members); an empty layer is refused: check that the fetch \
         names the archive you meant",
        escape_untrusted(.archive)
    )]
    EmptyArchive {
        /// The archive as the caller names it.
        archive: String,
    },
    /// A file handed to `add_deb` or `deb_files` is not a usable Debian package.
    #[error("{}: not a usable Debian package: {problem}", escape_untrusted(.archive))]
    NotADeb {
        /// The package as the caller names it.
        archive: String,
        /// What is missing or wrong.
        problem: String,
    },
    /// A binary handed to `add_busybox` has no applet table.
    #[error(
        "{origin} does not look like a busybox binary: no applet table (`[\\0[[\\0...`) found; \
         pass the busybox executable itself (e.g. /bin/busybox from busybox-static)"
    )]
    NotBusybox {
        /// Names the binary.
        origin: String,
    },
    /// A file is too large for the cpio newc format.
    #[error("`{path}` is {size} bytes; a cpio newc archive holds at most 4 GiB - 1 per file")]
    FileTooLarge {
        /// The rootfs path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The timestamp does not fit the image format.
    #[error("mtime {mtime} does not fit the 32-bit time field of cpio newc; pass a smaller SOURCE_DATE_EPOCH")]
    MtimeOutOfRange {
        /// The timestamp given.
        mtime: u64,
    },
    /// A host file changed size between being measured and being copied into an image.
    #[error("host file `{path}` changed while it was being copied ({expected} bytes expected); run the build again")]
    HostFileChanged {
        /// The host file.
        path: PathBuf,
        /// The size it had when measured.
        expected: u64,
    },
    /// `write_dir` was pointed at a directory that already has entries.
    #[error("`{dir}` is not empty; a tree is only written into an empty (or new) directory")]
    DirNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A rootfs path cannot be expressed in the tool's command language.
    #[error("`{}` cannot be written into an ext4 image: {problem}", escape_untrusted(.path))]
    UnsupportedName {
        /// The rootfs path.
        path: String,
        /// Why.
        problem: &'static str,
    },
    /// An external tool is not installed.
    #[error("`{program}` was not found; install the Debian package `{package}` (apt-get install {package})")]
    ToolMissing {
        /// The program.
        program: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
        /// The spawn error.
        #[source]
        source: io::Error,
    },
    /// An external tool failed.
    #[error("`{command}` failed ({status}){hint}:\n{stderr}")]
    ToolFailed {
        /// The command line, for copying into a shell.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
        /// A hint for the likely cause, starting with "; " or empty.
        hint: String,
    },
    /// An external tool exited successfully but reported failed commands.
    #[error("`{command}` reported errors:\n{stderr}")]
    ToolReported {
        /// The command line.
        command: String,
        /// The error lines it printed.
        stderr: String,
    },
}

/// A byte count for messages: `512 bytes`, `3.0 MiB (3145728 bytes)`, `16.0 GiB (...)`.
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match n {
        n if n >= GIB => format!("{:.1} GiB ({n} bytes)", n as f64 / GIB as f64),
        n if n >= MIB => format!("{:.1} MiB ({n} bytes)", n as f64 / MIB as f64),
        n => format!("{n} bytes"),
    }
}

/// What is wrong with a rootfs path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathProblem {
    /// A `..` component.
    #[error("path leaves the rootfs (`..`)")]
    ParentComponent,
    /// The path names the root itself where an entry is needed.
    #[error("path names the rootfs root itself, not an entry in it")]
    Root,
    /// A NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
}

/// Why an archive member was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberProblem {
    /// The member's path is unusable.
    #[error("{0}")]
    Path(PathProblem),
    /// The member's path is absolute.
    #[error("absolute path; archive members must be relative (`./x` or `x`)")]
    Absolute,
    /// The member's path is not UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// A symlink's target climbs above the rootfs root.
    #[error("symlink target `{}` leaves the rootfs (`..` above `/`)", escape_untrusted(.target))]
    SymlinkEscapes {
        /// The link target.
        target: String,
    },
    /// A hard link's target is unusable.
    #[error("hard link to `{}`: {problem}", escape_untrusted(.target))]
    HardLink {
        /// The link target as stored in the archive.
        target: String,
        /// Why it cannot be copied.
        problem: String,
    },
    /// The member's type is not one a rootfs can hold.
    #[error("unsupported member type {kind}; only files, directories, symlinks, hard links and devices are")]
    UnsupportedType {
        /// The tar entry type.
        kind: String,
    },
    /// The member could not be read.
    #[error("could not read its header or contents: {0}")]
    Read(io::Error),
    /// The archive ends (or its compressed stream breaks off) inside the member's contents.
    #[error("the archive is truncated: the member has {got} of its {size} bytes{}", match .cause { Some(e) => format!(" ({e})"), None => String::new() })]
    Truncated {
        /// The size its header declares.
        size: u64,
        /// The bytes there were.
        got: u64,
        /// The decompressor's error, when it reported one.
        cause: Option<io::Error>,
    },
    /// A path appears twice in one archive.
    #[error(
        "`{}` appears twice in this archive; a layer may give each path once (later layers \
         replace earlier ones, but within one archive a repeat is ambiguous): rebuild the \
         archive without the repeat",
        escape_untrusted(.path)
    )]
    Duplicate {
        /// The rootfs path both members name.
        path: String,
    },
    /// The member unpacks to more than the per-member cap.
    #[error("unpacks to {}, more than the {} allowed for one member", bytes(*.size), bytes(*.limit))]
    TooLarge {
        /// Its unpacked size (from its header).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The member would take the tree's archive layers over the total cap.
    #[error(
        "unpacks to {}, which would make {} in all, more than the {} the rootfs's archive layers may unpack",
        bytes(*.size),
        bytes(.unpacked.saturating_add(*.size)),
        bytes(*.limit)
    )]
    TotalTooLarge {
        /// Its unpacked size.
        size: u64,
        /// What earlier members and layers unpacked.
        unpacked: u64,
        /// The cap.
        limit: u64,
    },
    /// Putting the member into the tree failed.
    #[error("{0}")]
    Tree(Box<Error>),
}
