//! Errors of the rootfs crate: each names the file, archive member or rootfs path involved
//! and, where there is one, what to do about it.

use std::{
    io,
    path::{Path, PathBuf},
    process::ExitStatus,
};

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
    #[error("invalid rootfs path `{path}`: {problem}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A symlink target that no file system can hold.
    #[error("cannot put a symlink at `{path}`: its target is empty or contains a NUL byte")]
    InvalidSymlinkTarget {
        /// The rootfs path of the link.
        path: String,
    },
    /// A non-directory would replace a directory.
    #[error(
        "cannot put a {new} at `{path}`: the tree already has a directory there; \
         remove the directory first if it should be replaced"
    )]
    ReplacesDirectory {
        /// The rootfs path.
        path: String,
        /// The kind of node being inserted ("file", "symlink", ...).
        new: &'static str,
    },
    /// A node would be written through a symlink, which kiln never follows.
    #[error(
        "cannot put a {new} at `{path}`: `{symlink}` is a symlink and kiln never writes through \
         symlinks; put it under the symlink's target instead"
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
    #[error("cannot put a {new} at `{path}`: `{parent}` is a {parent_kind}, not a directory")]
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
    #[error("{archive}: member {member}: {problem}")]
    Member {
        /// The archive, e.g. "data.tar.xz in /x/evil.deb".
        archive: String,
        /// The member's path as stored in the archive.
        member: String,
        /// Why it was rejected.
        problem: MemberProblem,
    },
    /// An archive could not be read or decompressed.
    #[error("failed to read {archive}; is it a complete archive in a supported format?")]
    ReadArchive {
        /// The archive.
        archive: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file handed to `add_deb` or `deb_files` is not a usable Debian package.
    #[error("`{path}` is not a usable Debian package: {problem}")]
    NotADeb {
        /// The .deb file.
        path: PathBuf,
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
    #[error("`{path}` cannot be written into an ext4 image: {problem}")]
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
    #[error("symlink target `{target}` leaves the rootfs (`..` above `/`)")]
    SymlinkEscapes {
        /// The link target.
        target: String,
    },
    /// A hard link's target is unusable.
    #[error("hard link to `{target}`: {problem}")]
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
    /// Putting the member into the tree failed.
    #[error("{0}")]
    Tree(Box<Error>),
}
