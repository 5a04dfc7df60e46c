//! Adding tar archives to a tree, with the checks that keep an archive inside the rootfs:
//! no `..`, no absolute member paths, no symlink target above `/`, never through a symlink.
//! Nothing is written to the host; member contents are read into memory.

use std::{
    fs,
    io::{self, BufReader, Read},
    path::Path,
};

use tar::EntryType;

use crate::{
    decompress,
    errors::{Error, MemberProblem, PathProblem, Result},
    path,
    tree::{Data, Node, Tree},
};

impl Tree {
    /// Adds every member of the (uncompressed) tar stream `r` under `dest`. `origin` names the
    /// archive in errors.
    ///
    /// Files, directories, symlinks and character devices are kept; hard links become copies
    /// of their (earlier) target; block devices and fifos are skipped without error. Member
    /// paths must be relative (`./x` or `x`) without `..`, symlink targets must not climb above
    /// the rootfs root, and no member may be written through a symlink.
    pub fn add_tar(&mut self, r: impl Read, dest: &str, origin: &str) -> Result<()> {
        add_tar_filtered(self, r, dest, origin, &mut |_| true)
    }

    /// Adds a tar archive file, uncompressed or compressed with gzip, xz or zstd (detected by
    /// its magic bytes), as [`Tree::add_tar`] does.
    pub fn add_tarball(&mut self, path: &Path, dest: &str) -> Result<()> {
        let origin = path.display().to_string();
        let file =
            fs::File::open(path).map_err(|source| Error::Io { action: "open", path: path.to_path_buf(), source })?;
        let reader = decompress::decoder(BufReader::new(file))
            .map_err(|source| Error::ReadArchive { archive: origin.clone(), source })?;
        self.add_tar(reader, dest, &origin)
    }
}

/// [`Tree::add_tar`] keeping only members whose rootfs path `want` accepts (parents of kept
/// members are created with mode 0755 when the archive's own entries for them were not kept).
pub(crate) fn add_tar_filtered(
    tree: &mut Tree,
    r: impl Read,
    dest: &str,
    origin: &str,
    want: &mut dyn FnMut(&str) -> bool,
) -> Result<()> {
    let dest =
        path::normalise_allow_root(dest).map_err(|problem| Error::InvalidPath { path: dest.to_owned(), problem })?;
    let read_err = |source| Error::ReadArchive { archive: origin.to_owned(), source };
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        let member = String::from_utf8_lossy(&raw).into_owned();
        let fail = |problem| Error::Member { archive: origin.to_owned(), member: member.clone(), problem };
        let Some(full) = member_path(&raw, &dest).map_err(fail)? else {
            continue; // `./`: the archive's root, which is `dest` itself
        };
        if !want(&full) {
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = || header.mode().map_err(MemberProblem::Read);
        let node = match kind {
            EntryType::Directory => Node::Dir { mode: mode().map_err(fail)? },
            EntryType::Regular | EntryType::Continuous => {
                let mode = mode().map_err(fail)?;
                let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(64 << 20));
                entry.read_to_end(&mut bytes).map_err(|e| fail(MemberProblem::Read(e)))?;
                Node::File { mode, data: Data::from(bytes) }
            }
            EntryType::Symlink => {
                let target = link_target(&entry).map_err(fail)?;
                if path::symlink_escapes(&full, &target) {
                    return Err(fail(MemberProblem::SymlinkEscapes { target }));
                }
                Node::Symlink { target }
            }
            EntryType::Link => {
                let target = link_target(&entry).map_err(fail)?;
                Node::File { mode: mode().map_err(fail)?, data: hard_link_data(tree, &dest, &target).map_err(fail)? }
            }
            EntryType::Char => {
                let device = |n: io::Result<Option<u32>>| n.map(Option::unwrap_or_default).map_err(MemberProblem::Read);
                Node::CharDevice {
                    mode: mode().map_err(fail)?,
                    major: device(header.device_major()).map_err(fail)?,
                    minor: device(header.device_minor()).map_err(fail)?,
                }
            }
            EntryType::Block | EntryType::Fifo => continue,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => return Err(fail(MemberProblem::UnsupportedType { kind: format!("{other:?}") })),
        };
        tree.insert(&full, node).map_err(|e| fail(MemberProblem::Tree(Box::new(e))))?;
    }
    Ok(())
}

/// The rootfs path of a member (`None` for the archive's root), after the safety checks.
fn member_path(raw: &[u8], dest: &str) -> Result<Option<String>, MemberProblem> {
    let name = std::str::from_utf8(raw).map_err(|_| MemberProblem::NotUtf8)?;
    if name.starts_with('/') {
        return Err(MemberProblem::Absolute);
    }
    match path::normalise(name) {
        Ok(rel) => Ok(Some(format!("{dest}{rel}"))),
        Err(PathProblem::Root) => Ok(None),
        Err(problem) => Err(MemberProblem::Path(problem)),
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, MemberProblem> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| MemberProblem::HardLink { target: String::new(), problem: "the link has no target".into() })?;
    let target = std::str::from_utf8(&target).map_err(|_| MemberProblem::NotUtf8)?;
    if target.is_empty() || target.contains('\0') {
        return Err(MemberProblem::UnsupportedType { kind: "link with an empty target".into() });
    }
    Ok(target.to_owned())
}

/// The contents of the earlier member a hard link names (archive-relative, like members).
fn hard_link_data(tree: &Tree, dest: &str, target: &str) -> Result<Data, MemberProblem> {
    let problem = |problem: &str| MemberProblem::HardLink { target: target.to_owned(), problem: problem.to_owned() };
    let full = match member_path(target.as_bytes(), dest) {
        Ok(Some(full)) => full,
        Ok(None) => return Err(problem("the target is the archive's root directory")),
        Err(MemberProblem::Absolute) => return Err(problem("absolute target; it must name an earlier member")),
        Err(MemberProblem::Path(p)) => return Err(problem(&p.to_string())),
        Err(other) => return Err(other),
    };
    match tree.get(&full) {
        Some(Node::File { data, .. }) => Ok(data.clone()),
        Some(other) => Err(problem(&format!("the target is a {}, not a regular file", other.kind_name()))),
        None => Err(problem("the target is not an earlier member of the archive")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tar archive from (path, type, content-or-link-target, mode) with raw names,
    /// bypassing the `tar` crate's own path checks so that hostile archives can be made.
    pub(crate) fn tar_of(members: &[(&str, EntryType, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for &(name, kind, body, mode) in members {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_mtime(0);
            {
                let gnu = header.as_gnu_mut().expect("gnu header");
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            let data: &[u8] = match kind {
                EntryType::Regular => body.as_bytes(),
                EntryType::Symlink | EntryType::Link => {
                    header.as_gnu_mut().expect("gnu header").linkname[..body.len()].copy_from_slice(body.as_bytes());
                    &[]
                }
                EntryType::Char => {
                    header.set_device_major(5).expect("major");
                    header.set_device_minor(1).expect("minor");
                    &[]
                }
                _ => &[],
            };
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn add(members: &[(&str, EntryType, &str, u32)]) -> Result<Tree> {
        let mut tree = Tree::new();
        tree.add_tar(&tar_of(members)[..], "/", "evil.tar")?;
        Ok(tree)
    }

    #[test]
    fn debian_style_members_are_added() -> Result<()> {
        let tree = add(&[
            ("./", EntryType::Directory, "", 0o755),
            ("./bin/", EntryType::Directory, "", 0o755),
            ("./bin/busybox", EntryType::Regular, "ELF", 0o755),
            ("./bin/sh", EntryType::Symlink, "busybox", 0o777),
            ("./bin/ash", EntryType::Link, "./bin/busybox", 0o755),
            ("./etc/alt", EntryType::Symlink, "/etc/alternatives/x", 0o777),
            ("dev/console", EntryType::Char, "", 0o600),
            ("dev/sda", EntryType::Block, "", 0o600),
            ("dev/fifo", EntryType::Fifo, "", 0o600),
            ("usr/lib/x/libz.so", EntryType::Symlink, "../../../lib/libz.so.1", 0o777),
        ])?;
        assert_eq!(tree.get("/bin/busybox"), Some(&Node::File { mode: 0o755, data: Data::from("ELF") }));
        assert_eq!(tree.get("/bin/ash"), Some(&Node::File { mode: 0o755, data: Data::from("ELF") }));
        assert_eq!(tree.get("/bin/sh"), Some(&Node::Symlink { target: "busybox".into() }));
        assert_eq!(tree.get("/dev/console"), Some(&Node::CharDevice { mode: 0o600, major: 5, minor: 1 }));
        assert_eq!(tree.get("/dev/sda"), None);
        assert_eq!(tree.get("/dev/fifo"), None);
        Ok(())
    }

    #[test]
    fn members_go_under_dest() -> Result<()> {
        let mut tree = Tree::new();
        tree.add_tar(&tar_of(&[("a/b", EntryType::Regular, "x", 0o644)])[..], "/opt/pkg", "t.tar")?;
        assert!(tree.get("/opt/pkg/a/b").is_some());
        Ok(())
    }

    fn rejected(members: &[(&str, EntryType, &str, u32)]) -> String {
        add(members).expect_err("the archive must be rejected").to_string()
    }

    #[test]
    fn parent_components_are_rejected() {
        assert_eq!(
            rejected(&[("./../etc/passwd", EntryType::Regular, "x", 0o644)]),
            "evil.tar: member ./../etc/passwd: path leaves the rootfs (`..`)"
        );
        let err = rejected(&[("a/../../b", EntryType::Directory, "", 0o755)]);
        assert!(err.contains("path leaves the rootfs"), "{err}");
    }

    #[test]
    fn absolute_members_are_rejected() {
        assert_eq!(
            rejected(&[("/etc/passwd", EntryType::Regular, "x", 0o644)]),
            "evil.tar: member /etc/passwd: absolute path; archive members must be relative (`./x` or `x`)"
        );
    }

    #[test]
    fn escaping_symlinks_are_rejected() {
        assert_eq!(
            rejected(&[("a/l", EntryType::Symlink, "../../../etc", 0o777)]),
            "evil.tar: member a/l: symlink target `../../../etc` leaves the rootfs (`..` above `/`)"
        );
        let err = rejected(&[("l", EntryType::Symlink, "/../../etc", 0o777)]);
        assert!(err.contains("leaves the rootfs"), "{err}");
    }

    #[test]
    fn writing_through_a_symlink_is_rejected() {
        let err = rejected(&[
            ("etc", EntryType::Symlink, "/etc", 0o777),
            ("etc/passwd", EntryType::Regular, "root::0:0::/:/bin/sh", 0o644),
        ]);
        assert_eq!(
            err,
            "evil.tar: member etc/passwd: cannot put a file at `/etc/passwd`: `/etc` is a symlink and \
             kiln never writes through symlinks; put it under the symlink's target instead"
        );
    }

    #[test]
    fn hard_links_need_an_earlier_regular_file() {
        let err = rejected(&[("a", EntryType::Link, "missing", 0o644)]);
        assert!(err.contains("hard link to `missing`: the target is not an earlier member"), "{err}");
        let err = rejected(&[("d/", EntryType::Directory, "", 0o755), ("a", EntryType::Link, "d", 0o644)]);
        assert!(err.contains("the target is a directory"), "{err}");
        let err = rejected(&[("a", EntryType::Link, "../x", 0o644)]);
        assert!(err.contains("hard link to `../x`: path leaves the rootfs"), "{err}");
    }

    #[test]
    fn truncated_archives_are_read_errors() {
        let mut bytes = tar_of(&[("a", EntryType::Regular, &"x".repeat(2000), 0o644)]);
        bytes.truncate(1000);
        let err = Tree::new().add_tar(&bytes[..], "/", "cut.tar").expect_err("truncated");
        assert!(
            err.to_string().starts_with("cut.tar: member a: could not read")
                || err.to_string().contains("failed to read cut.tar"),
            "{err}"
        );
    }

    #[test]
    fn compressed_tarballs_are_detected() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = tar_of(&[("f", EntryType::Regular, "zstd!", 0o644)]);
        let path = dir.path().join("x.tar.zst");
        fs::write(&path, zstd::encode_all(&plain[..], 3).expect("zstd")).expect("write");
        let mut tree = Tree::new();
        tree.add_tarball(&path, "/")?;
        assert_eq!(tree.get("/f"), Some(&Node::File { mode: 0o644, data: Data::from("zstd!") }));
        Ok(())
    }
}
