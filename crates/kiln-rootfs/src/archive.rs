//! Adding tar archives to a tree, with the checks that keep an archive inside the rootfs
//! (no `..`, no absolute member paths, no symlink target above `/`, never through a symlink)
//! and the layer policy: each path once per archive, size caps checked from each member's
//! header before its contents are read, special entries kept or dropped by the rule
//! [`LayerReport`] states. Nothing is written to the host; member contents are read into
//! memory in chunks, never more than the caps allow.

use std::{
    collections::HashSet,
    fs,
    io::{self, BufReader, Read},
    path::Path,
};

use tar::EntryType;

use crate::{
    decompress,
    errors::{Error, MemberProblem, PathProblem, Result},
    path,
    tree::{Data, Node, SpilledFile, Tree},
    unpack::{LayerReport, Meter, UnpackBudget},
};

/// Bytes read from a member per call.
const CHUNK: usize = 64 * 1024;

impl Tree {
    /// Adds every member of the (uncompressed) tar stream `r` under `dest`. `origin` names the
    /// archive in errors (callers pass the name people gave it, such as `` `[fetch.NAME]` ``);
    /// `budget` holds the size caps shared by every archive layer of the tree.
    ///
    /// Files, directories, symlinks and hard links (as copies of their earlier target) are
    /// kept; special entries follow the rule [`LayerReport`] states, and the report says what
    /// was done. Member paths must be relative (`./x` or `x`) without `..`, each path may
    /// appear once, symlink targets must not climb above the rootfs root, no member may be
    /// written through a symlink, and an archive without members is an error.
    pub fn add_tar(
        &mut self,
        r: impl Read,
        dest: &str,
        origin: &str,
        budget: &mut UnpackBudget,
    ) -> Result<LayerReport> {
        add_tar_filtered(self, r, dest, origin, budget, &mut |_| true)
    }

    /// Adds a tar archive file, uncompressed or compressed with gzip, xz or zstd (detected by
    /// its magic bytes), as [`Tree::add_tar`] does.
    pub fn add_tarball(
        &mut self,
        path: &Path,
        dest: &str,
        origin: &str,
        budget: &mut UnpackBudget,
    ) -> Result<LayerReport> {
        let file =
            fs::File::open(path).map_err(|source| Error::Io { action: "open", path: path.to_path_buf(), source })?;
        let reader = decompress::decoder(BufReader::new(file)).map_err(|source| Error::ReadArchive {
            archive: origin.to_owned(),
            after: None,
            source,
        })?;
        self.add_tar(reader, dest, origin, budget)
    }
}

/// [`Tree::add_tar`] keeping only members whose rootfs path `want` accepts (parents of kept
/// members are created with mode 0755 when the archive's own entries for them were not kept).
/// Every member counts against the per-member cap; kept files count against the total.
pub(crate) fn add_tar_filtered(
    tree: &mut Tree,
    r: impl Read,
    dest: &str,
    origin: &str,
    budget: &mut UnpackBudget,
    want: &mut dyn FnMut(&str) -> bool,
) -> Result<LayerReport> {
    let dest =
        path::normalise_allow_root(dest).map_err(|problem| Error::InvalidPath { path: dest.to_owned(), problem })?;
    let meter = Meter::new();
    let mut archive = tar::Archive::new(meter.reader(r));
    let mut report = LayerReport::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut last: Option<String> = None;
    let mut members = 0usize;
    let read_err = |after: &Option<String>, source: io::Error| Error::ReadArchive {
        archive: origin.to_owned(),
        after: after.clone(),
        source,
    };
    for entry in archive.entries().map_err(|source| read_err(&last, source))? {
        let mut entry = entry.map_err(|source| read_err(&last, source))?;
        let raw = entry.path_bytes().into_owned();
        let member = String::from_utf8_lossy(&raw).into_owned();
        let fail = |problem| Error::Member { archive: origin.to_owned(), member: member.clone(), problem };
        let size = entry.size();
        budget.check_member(size).map_err(fail)?;
        meter.grant(size);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            discard(&mut entry, size).map_err(fail)?;
            continue; // metadata, not a member (the `tar` crate applies local ones itself)
        }
        let Some(full) = member_path(&raw, &dest).map_err(fail)? else {
            discard(&mut entry, size).map_err(fail)?;
            continue; // `./`: the archive's root, which is `dest` itself
        };
        members += 1;
        if !seen.insert(full.clone()) {
            return Err(fail(MemberProblem::Duplicate { path: full }));
        }
        if !want(&full) {
            discard(&mut entry, size).map_err(fail)?;
            last = Some(member);
            continue;
        }
        let node = member_node(tree, &mut entry, &full, &dest, budget, &mut report).map_err(fail)?;
        if let Some(node) = node {
            tree.insert(&full, node).map_err(|e| fail(MemberProblem::Tree(Box::new(e))))?;
        }
        last = Some(member);
    }
    if members == 0 {
        // Nothing but (at most) the archive's root directory.
        return Err(Error::EmptyArchive { archive: origin.to_owned() });
    }
    Ok(report)
}

/// The node a member becomes (`None` when the policy drops it), its contents read and its
/// special bits settled by the layer policy.
fn member_node<R: Read>(
    tree: &Tree,
    entry: &mut tar::Entry<'_, R>,
    full: &str,
    dest: &str,
    budget: &mut UnpackBudget,
    report: &mut LayerReport,
) -> Result<Option<Node>, MemberProblem> {
    let header = entry.header();
    let mode = header.mode().map_err(MemberProblem::Read)?;
    let node = match header.entry_type() {
        EntryType::Directory => Node::Dir { mode },
        EntryType::Regular | EntryType::Continuous => {
            let mode = set_id_policy(header, mode, full, report)?;
            let size = entry.size();
            budget.take(size)?;
            let data = if budget.hold_in_memory(size) {
                Data::from(read_contents(entry, size)?)
            } else {
                Data::Spilled(spill_contents(entry, size)?)
            };
            Node::File { mode, data }
        }
        EntryType::Symlink => {
            let target = link_target(entry)?;
            if path::symlink_escapes(full, &target) {
                return Err(MemberProblem::SymlinkEscapes { target });
            }
            Node::Symlink { target }
        }
        EntryType::Link => {
            let mode = set_id_policy(header, mode, full, report)?;
            let target = link_target(entry)?;
            Node::File { mode, data: hard_link_data(tree, dest, &target)? }
        }
        EntryType::Char => {
            let device = |n: io::Result<Option<u32>>| n.map(Option::unwrap_or_default).map_err(MemberProblem::Read);
            report.kept_char_devices.push(full.to_owned());
            Node::CharDevice { mode, major: device(header.device_major())?, minor: device(header.device_minor())? }
        }
        EntryType::Block => {
            report.dropped_block_devices.push(full.to_owned());
            return Ok(None);
        }
        EntryType::Fifo => {
            report.dropped_fifos.push(full.to_owned());
            return Ok(None);
        }
        other => return Err(MemberProblem::UnsupportedType { kind: format!("{other:?}") }),
    };
    Ok(Some(node))
}

/// A file's mode under the layer policy: setuid kept when the archive's owner is root,
/// setgid when its group is; either bit cleared (and reported) otherwise.
fn set_id_policy(header: &tar::Header, mode: u32, full: &str, report: &mut LayerReport) -> Result<u32, MemberProblem> {
    const SETUID: u32 = 0o4000;
    const SETGID: u32 = 0o2000;
    if mode & (SETUID | SETGID) == 0 {
        return Ok(mode);
    }
    let uid = header.uid().map_err(MemberProblem::Read)?;
    let gid = header.gid().map_err(MemberProblem::Read)?;
    let mut kept = mode;
    if mode & SETUID != 0 && uid != 0 || mode & SETGID != 0 && gid != 0 {
        kept &= !(SETUID | SETGID);
        report.cleared_set_id.push(full.to_owned());
        return Ok(kept);
    }
    if mode & SETUID != 0 {
        report.kept_setuid.push(full.to_owned());
    }
    if mode & SETGID != 0 {
        report.kept_setgid.push(full.to_owned());
    }
    Ok(kept)
}

/// Reads a member's `size` bytes into memory (the caps were checked against `size` already,
/// and the budget said it is small); fewer bytes than declared is a truncated archive.
fn read_contents(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, MemberProblem> {
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX).min(CHUNK * 16))
        .map_err(|e| MemberProblem::Read(io::Error::other(e)))?;
    copy_contents(entry, size, &mut bytes)?;
    Ok(bytes)
}

/// Streams a member's `size` bytes to a temporary file, in chunks: a large member never sits
/// in memory whole.
fn spill_contents(entry: &mut impl Read, size: u64) -> Result<SpilledFile, MemberProblem> {
    let file = tempfile::Builder::new().prefix("kiln-rootfs-member-").tempfile().map_err(MemberProblem::Read)?;
    let mut out = io::BufWriter::with_capacity(CHUNK, file);
    copy_contents(entry, size, &mut out)?;
    let file = out.into_inner().map_err(|e| MemberProblem::Read(e.into_error()))?;
    Ok(SpilledFile::new(file.into_temp_path()))
}

/// Copies exactly a member's `size` bytes to `out`; fewer is a truncated archive.
fn copy_contents(entry: &mut impl Read, size: u64, out: &mut impl io::Write) -> Result<(), MemberProblem> {
    let mut chunk = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = match entry.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(truncated_or_read(size, got, e)),
        };
        out.write_all(&chunk[..n]).map_err(MemberProblem::Read)?;
        got += n as u64;
    }
    if got != size {
        return Err(MemberProblem::Truncated { size, got, cause: None });
    }
    Ok(())
}

/// Reads past a member's contents without keeping them, so that a truncated archive names
/// the member it breaks off in.
fn discard(entry: &mut impl Read, size: u64) -> Result<(), MemberProblem> {
    let mut chunk = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK))];
    let mut got = 0u64;
    while got < size {
        match entry.read(&mut chunk) {
            Ok(0) => return Err(MemberProblem::Truncated { size, got, cause: None }),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(truncated_or_read(size, got, e)),
        }
    }
    Ok(())
}

/// A read error inside a member's contents: a stream that ends early is a truncated archive;
/// anything else (a corrupt compressed stream) a read error.
fn truncated_or_read(size: u64, got: u64, error: io::Error) -> MemberProblem {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        MemberProblem::Truncated { size, got, cause: Some(error) }
    } else {
        MemberProblem::Read(error)
    }
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
            header.set_uid(0);
            header.set_gid(0);
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

    /// A budget with the default caps.
    pub(crate) fn budget() -> UnpackBudget {
        UnpackBudget::new(crate::UnpackLimits::default())
    }

    fn add_reporting(members: &[(&str, EntryType, &str, u32)]) -> Result<(Tree, LayerReport)> {
        let mut tree = Tree::new();
        let report = tree.add_tar(&tar_of(members)[..], "/", "evil.tar", &mut budget())?;
        Ok((tree, report))
    }

    fn add(members: &[(&str, EntryType, &str, u32)]) -> Result<Tree> {
        add_reporting(members).map(|(tree, _)| tree)
    }

    #[test]
    fn debian_style_members_are_added() -> Result<()> {
        let (tree, report) = add_reporting(&[
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
        assert_eq!(
            report.to_string(),
            "dropped 1 block device (/dev/sda), 1 fifo (/dev/fifo); kept 1 character device (/dev/console)",
            "what the policy did is said"
        );
        Ok(())
    }

    #[test]
    fn members_go_under_dest() -> Result<()> {
        let mut tree = Tree::new();
        tree.add_tar(&tar_of(&[("a/b", EntryType::Regular, "x", 0o644)])[..], "/opt/pkg", "t.tar", &mut budget())?;
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
    fn truncated_archives_name_the_member() {
        let mut bytes =
            tar_of(&[("first", EntryType::Regular, "1", 0o644), ("a", EntryType::Regular, &"x".repeat(2000), 0o644)]);
        bytes.truncate(2048);
        let err = Tree::new().add_tar(&bytes[..], "/", "cut.tar", &mut budget()).expect_err("truncated");
        assert_eq!(
            err.to_string(),
            "cut.tar: member a: the archive is truncated: the member has 512 of its 2000 bytes"
        );

        // Cut inside the second header: the member before it is named.
        bytes.truncate(1024 + 100);
        let err = Tree::new().add_tar(&bytes[..], "/", "cut.tar", &mut budget()).expect_err("truncated");
        assert_eq!(
            err.to_string(),
            "cut.tar: cannot read the member after first; is it a complete archive in a supported format?"
        );

        // A compressed stream cut short: the decoder's error, with the member.
        let whole = tar_of(&[("big", EntryType::Regular, &"y".repeat(300_000), 0o644)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        std::io::Write::write_all(&mut gz, &whole).expect("gzip");
        let mut gz = gz.finish().expect("gzip");
        gz.truncate(200_000);
        let err = Tree::new()
            .add_tar(crate::decompress::decoder(&gz[..]).expect("gzip"), "/", "cut.tar.gz", &mut budget())
            .expect_err("truncated");
        assert!(
            err.to_string().starts_with("cut.tar.gz: member big: the archive is truncated: the member has "),
            "{err}"
        );
    }

    #[test]
    fn duplicate_paths_in_one_archive_are_errors() {
        let err = rejected(&[
            ("./etc/", EntryType::Directory, "", 0o755),
            ("./etc/passwd", EntryType::Regular, "root:x:0:0::/:/bin/sh", 0o644),
            ("etc/passwd", EntryType::Regular, "root::0:0::/:/bin/sh", 0o644),
        ]);
        assert_eq!(
            err,
            "evil.tar: member etc/passwd: `/etc/passwd` appears twice in this archive; a layer may give each \
             path once (later layers replace earlier ones, but within one archive a repeat is ambiguous): \
             rebuild the archive without the repeat"
        );
        let err = rejected(&[("d/", EntryType::Directory, "", 0o755), ("./d", EntryType::Directory, "", 0o700)]);
        assert!(err.contains("`/d` appears twice"), "{err}");
    }

    #[test]
    fn later_archives_replace_earlier_files() -> Result<()> {
        let mut tree = Tree::new();
        let mut budget = budget();
        tree.add_tar(&tar_of(&[("etc/motd", EntryType::Regular, "one", 0o644)])[..], "/", "first", &mut budget)?;
        tree.add_tar(&tar_of(&[("etc/motd", EntryType::Regular, "two", 0o600)])[..], "/", "second", &mut budget)?;
        assert_eq!(tree.get("/etc/motd"), Some(&Node::File { mode: 0o600, data: Data::from("two") }));
        Ok(())
    }

    #[test]
    fn empty_archives_are_errors() {
        let expected = "empty.tar: the archive is empty (no members); an empty layer is refused: check that the \
                        fetch names the archive you meant";
        for bytes in [Vec::new(), vec![0u8; 1024], tar_of(&[("./", EntryType::Directory, "", 0o755)])] {
            let err = Tree::new().add_tar(&bytes[..], "/", "empty.tar", &mut budget()).expect_err("empty");
            assert_eq!(err.to_string(), expected);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.tar.gz");
        fs::write(&path, "").expect("write");
        let err = Tree::new().add_tarball(&path, "/", "`[fetch.empty]`", &mut budget()).expect_err("0 bytes");
        assert!(err.to_string().starts_with("`[fetch.empty]`: the archive is empty"), "{err}");
    }

    #[test]
    fn member_names_are_shown_escaped() {
        let err = rejected(&[("x\u{1b}]0;pwned\u{7}\n::error::boom/../../etc", EntryType::Regular, "x", 0o644)]);
        assert_eq!(
            err,
            "evil.tar: member x\\x1b]0;pwned\\x07\\n::error::boom/../../etc: path leaves the rootfs (`..`)"
        );
        assert!(!err.contains(['\u{1b}', '\u{7}', '\n']), "{err:?}");
        let err = rejected(&[
            ("a\u{1b}[2J", EntryType::Regular, "1", 0o644),
            ("./a\u{1b}[2J", EntryType::Regular, "2", 0o644),
        ]);
        assert!(err.contains("`/a\\x1b[2J` appears twice"), "{err:?}");
        let err = rejected(&[("l", EntryType::Symlink, "../\u{1b}[31m/../..", 0o777)]);
        assert!(err.contains("symlink target `../\\x1b[31m/../..`"), "{err:?}");
    }

    #[test]
    fn members_over_the_caps_are_refused_from_their_headers() {
        let members = [("a", EntryType::Regular, "0123456789", 0o644), ("b", EntryType::Regular, "0123456789", 0o644)];
        let limits = crate::UnpackLimits { member_bytes: 9, total_bytes: 100 };
        let err = Tree::new()
            .add_tar(&tar_of(&members)[..], "/", "big.tar", &mut UnpackBudget::new(limits))
            .expect_err("member cap");
        assert_eq!(
            err.to_string(),
            "big.tar: member a: unpacks to 10 bytes, more than the 9 bytes allowed for one member"
        );

        let mut budget = UnpackBudget::new(crate::UnpackLimits { member_bytes: 10, total_bytes: 25 });
        let mut tree = Tree::new();
        tree.add_tar(&tar_of(&members)[..], "/", "first.tar", &mut budget).expect("20 bytes fit");
        let err = tree.add_tar(&tar_of(&members)[..], "/x", "second.tar", &mut budget).expect_err("total cap");
        assert_eq!(
            err.to_string(),
            "second.tar: member a: unpacks to 10 bytes, which would make 30 bytes in all, more than the 25 bytes \
             the rootfs's archive layers may unpack"
        );
    }

    #[test]
    fn oversized_headers_are_refused() {
        // A GNU long name of 2 MiB: the `tar` crate reads long names whole, so the meter stops it.
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::GNULongName);
        header.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        header.set_size(2 << 20);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(512 + (2 << 20), b'a');
        bytes.extend(tar_of(&[("x", EntryType::Regular, "x", 0o644)]));
        let err = Tree::new().add_tar(&bytes[..], "/", "long.tar", &mut budget()).expect_err("headers too large");
        assert_eq!(
            err.to_string(),
            "long.tar: cannot read its first member; is it a complete archive in a supported format?"
        );
        let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert_eq!(source, "a member's headers (long name or PAX extension) are larger than 1 MiB");
    }

    fn with_owner(name: &str, mode: u32, uid: u64, gid: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_path(name).expect("path");
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(1);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).expect("append");
        builder.into_inner().expect("tar")
    }

    #[test]
    fn set_id_bits_are_kept_for_root_and_cleared_otherwise() -> Result<()> {
        let mut bytes = Vec::new();
        for part in [
            with_owner("bin/su", 0o4755, 0, 0),
            with_owner("usr/bin/wall", 0o2755, 0, 5),
            with_owner("usr/bin/crontab", 0o2755, 0, 0),
            with_owner("usr/games/x", 0o4755, 5, 0),
        ] {
            bytes.extend_from_slice(&part[..part.len() - 1024]); // drop each end-of-archive marker
        }
        bytes.extend([0u8; 1024]);
        let mut tree = Tree::new();
        let report = tree.add_tar(&bytes[..], "/", "t.tar", &mut budget())?;
        let mode = |path: &str| match tree.get(path) {
            Some(Node::File { mode, .. }) => *mode,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(mode("/bin/su"), 0o4755);
        assert_eq!(mode("/usr/bin/crontab"), 0o2755);
        assert_eq!(mode("/usr/bin/wall"), 0o755, "setgid tty would become setgid root");
        assert_eq!(mode("/usr/games/x"), 0o755, "setuid games would become setuid root");
        assert_eq!(
            report.to_string(),
            "kept setuid on 1 file (/bin/su); kept setgid on 1 file (/usr/bin/crontab); cleared setuid/setgid \
             (owner not root in the archive) on 2 files (/usr/bin/wall, /usr/games/x)"
        );
        Ok(())
    }

    #[test]
    fn compressed_tarballs_are_detected() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = tar_of(&[("f", EntryType::Regular, "zstd!", 0o644)]);
        let path = dir.path().join("x.tar.zst");
        fs::write(&path, zstd::encode_all(&plain[..], 3).expect("zstd")).expect("write");
        let mut tree = Tree::new();
        tree.add_tarball(&path, "/", "`[fetch.x]`", &mut budget())?;
        assert_eq!(tree.get("/f"), Some(&Node::File { mode: 0o644, data: Data::from("zstd!") }));
        Ok(())
    }
}
