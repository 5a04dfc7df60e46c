//! Debian packages: the `ar` container, `control.tar.*` for the package's name, version and
//! architecture, and `data.tar.*` into a tree (in Rust; no dpkg needed), under the same caps
//! and layer policy as tarballs.

use std::{
    fs,
    io::{BufReader, Read},
    path::Path,
};

use crate::{
    archive::add_tar_filtered,
    decompress,
    errors::{Error, Result},
    tree::Tree,
    unpack::{LayerReport, Meter, UnpackBudget},
};

/// The most bytes read of `debian-binary`, of `./control`, and of any member of
/// `control.tar.*` (maintainer scripts are small): a bomb there is refused like one in data.
const CONTROL_MEMBER_CAP: u64 = 16 << 20;

/// What a package's control file says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    /// The `Package` field, e.g. `busybox-static`.
    pub package: String,
    /// The `Version` field, e.g. `1:1.35.0-4+deb12u1+b1`.
    pub version: String,
    /// The `Architecture` field, e.g. `amd64` or `all`.
    pub architecture: String,
}

impl Tree {
    /// Adds the contents (`data.tar.xz`, `.zst`, `.gz` or uncompressed) of the .deb at `path`
    /// under `dest`, with the checks, caps and policy of [`Tree::add_tar`]. Maintainer scripts
    /// are not run. `origin` names the package in errors.
    pub fn add_deb(
        &mut self,
        path: &Path,
        dest: &str,
        origin: &str,
        budget: &mut UnpackBudget,
    ) -> Result<(DebInfo, LayerReport)> {
        let mut report = LayerReport::default();
        let info = read_deb(path, origin, &mut |data, member_origin| {
            report.merge(add_tar_filtered(self, data, dest, member_origin, budget, &mut |_| true)?);
            Ok(())
        })?;
        Ok((info, report))
    }
}

/// Pulls the members of a .deb whose rootfs path (`/boot/vmlinuz-...`) `want` accepts into a
/// new tree, with their parent directories, without keeping the rest in memory. For taking a
/// kernel and its modules out of a `linux-image-*` package. `origin` names the package in
/// errors; every member counts against `budget`'s per-member cap, kept ones against its total.
pub fn deb_files(
    path: &Path,
    origin: &str,
    budget: &mut UnpackBudget,
    mut want: impl FnMut(&str) -> bool,
) -> Result<Tree> {
    let mut tree = Tree::new();
    read_deb(path, origin, &mut |data, member_origin| {
        add_tar_filtered(&mut tree, data, "/", member_origin, budget, &mut want).map(drop)
    })?;
    Ok(tree)
}

/// Walks the ar members of a .deb: checks `debian-binary`, parses the control file, and
/// hands the decompressed `data.tar` stream with its error name (`ORIGIN (data.tar.xz)`) to
/// `on_data`.
fn read_deb(path: &Path, origin: &str, on_data: &mut dyn FnMut(&mut dyn Read, &str) -> Result<()>) -> Result<DebInfo> {
    let not_deb = |problem: String| Error::NotADeb { archive: origin.to_owned(), problem };
    let file = fs::File::open(path).map_err(|source| Error::Io { action: "open", path: path.to_path_buf(), source })?;
    let mut ar = ar::Archive::new(BufReader::new(file));
    let (mut version_seen, mut info, mut data_seen) = (false, None, false);
    let mut last: Option<String> = None;
    while let Some(member) = ar.next_entry() {
        let mut member =
            member.map_err(|source| Error::ReadArchive { archive: origin.to_owned(), after: last.clone(), source })?;
        let name = String::from_utf8_lossy(member.header().identifier()).trim_end_matches('/').to_owned();
        let member_origin = format!("{origin} ({name})");
        let read_err = |source| Error::ReadArchive { archive: member_origin.clone(), after: None, source };
        if name == "debian-binary" {
            let mut text = String::new();
            (&mut member).take(64).read_to_string(&mut text).map_err(read_err)?;
            if !text.starts_with("2.") {
                return Err(not_deb(format!("format version `{}` in debian-binary is not 2.x", text.trim())));
            }
            version_seen = true;
        } else if name.starts_with("control.tar") {
            let decoded = decompress::decoder(&mut member).map_err(read_err)?;
            info = Some(control_info(decoded, &member_origin).and_then(|text| parse_control(&text).map_err(&not_deb))?);
        } else if name.starts_with("data.tar") {
            if data_seen {
                return Err(not_deb("it has two data.tar members".into()));
            }
            data_seen = true;
            let mut decoded = decompress::decoder(&mut member).map_err(read_err)?;
            on_data(&mut decoded, &member_origin)?;
        }
        last = Some(name);
    }
    if !version_seen {
        return Err(not_deb("it has no debian-binary member; is it a .deb at all?".into()));
    }
    if !data_seen {
        return Err(not_deb("it has no data.tar.* member".into()));
    }
    info.ok_or_else(|| not_deb("it has no control.tar.* member".into()))
}

/// The text of `./control` in a control tarball; no member may be larger than
/// [`CONTROL_MEMBER_CAP`].
fn control_info(r: impl Read, origin: &str) -> Result<String> {
    let read_err = |source| Error::ReadArchive { archive: origin.to_owned(), after: None, source };
    let meter = Meter::new();
    let mut archive = tar::Archive::new(meter.reader(r));
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        meter.grant(entry.size().min(CONTROL_MEMBER_CAP));
        if entry.size() > CONTROL_MEMBER_CAP {
            return Err(Error::Member {
                archive: origin.to_owned(),
                member,
                problem: crate::errors::MemberProblem::TooLarge { size: entry.size(), limit: CONTROL_MEMBER_CAP },
            });
        }
        if matches!(member.as_str(), "./control" | "control") {
            let mut text = String::new();
            (&mut entry).take(CONTROL_MEMBER_CAP).read_to_string(&mut text).map_err(read_err)?;
            return Ok(text);
        }
    }
    Err(Error::ReadArchive {
        archive: origin.to_owned(),
        after: None,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no ./control member"),
    })
}

/// Reads `Package`, `Version` and `Architecture` from a control file (field names are
/// case-insensitive; continuation lines are skipped).
fn parse_control(text: &str) -> Result<DebInfo, String> {
    let field = |name: &str| {
        text.lines()
            .filter(|line| !line.starts_with([' ', '\t']))
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("its control file has no `{name}` field"))
    };
    Ok(DebInfo { package: field("Package")?, version: field("Version")?, architecture: field("Architecture")? })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use tar::EntryType;

    use super::*;
    use crate::{
        archive::tests::{budget, tar_of},
        tree::Node,
    };

    const CONTROL: &str = "Package: hello\nVersion: 1:2.3-4\nArchitecture: arm64\nDescription: a test\n more text\n";

    /// Builds a .deb with `ar` from a data tarball (xz-compressed) and a control file.
    pub(crate) fn deb_of(data_tar: &[u8], control: &str) -> Vec<u8> {
        let control_tar =
            tar_of(&[("./", EntryType::Directory, "", 0o755), ("./control", EntryType::Regular, control, 0o644)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&control_tar).expect("gzip");
        let control_gz = gz.finish().expect("gzip");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(data_tar).expect("xz");
        let data_xz = xz.finish().expect("xz");
        let mut builder = ar::Builder::new(Vec::new());
        for (name, body) in
            [("debian-binary", &b"2.0\n"[..]), ("control.tar.gz", &control_gz), ("data.tar.xz", &data_xz)]
        {
            builder.append(&ar::Header::new(name.as_bytes().to_vec(), body.len() as u64), body).expect("ar");
        }
        builder.into_inner().expect("ar")
    }

    fn write_deb(dir: &Path, members: &[(&str, EntryType, &str, u32)]) -> std::path::PathBuf {
        let path = dir.join("pkg.deb");
        fs::write(&path, deb_of(&tar_of(members), CONTROL)).expect("write deb");
        path
    }

    #[test]
    fn adds_data_and_reads_control() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = write_deb(dir.path(), &[("./usr/bin/hello", EntryType::Regular, "hi", 0o755)]);
        let mut tree = Tree::new();
        let (info, report) = tree.add_deb(&deb, "/", "`[fetch.hello]`", &mut budget())?;
        assert!(report.is_empty(), "{report}");
        assert_eq!(info, DebInfo { package: "hello".into(), version: "1:2.3-4".into(), architecture: "arm64".into() });
        assert!(matches!(tree.get("/usr/bin/hello"), Some(Node::File { mode: 0o755, .. })));
        Ok(())
    }

    #[test]
    fn hostile_deb_member_is_named_with_archive_and_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = write_deb(dir.path(), &[("./../etc/passwd", EntryType::Regular, "x", 0o644)]);
        let err = Tree::new().add_deb(&deb, "/", "`[fetch.evil]`", &mut budget()).expect_err("must be rejected");
        assert_eq!(
            err.to_string(),
            "`[fetch.evil]` (data.tar.xz): member ./../etc/passwd: path leaves the rootfs (`..`)",
            "the layer's name, not the store path"
        );
    }

    #[test]
    fn deb_files_keeps_only_wanted_members_and_their_parents() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = write_deb(
            dir.path(),
            &[
                ("./boot/", EntryType::Directory, "", 0o700),
                ("./boot/vmlinuz-6.1.0-1-cloud-amd64", EntryType::Regular, "kernel", 0o644),
                ("./boot/System.map-6.1.0-1-cloud-amd64", EntryType::Regular, "map", 0o644),
                ("./lib/modules/6.1.0-1-cloud-amd64/kernel/a.ko", EntryType::Regular, "ko", 0o644),
                ("./usr/share/doc/x", EntryType::Regular, "doc", 0o644),
            ],
        );
        let tree = deb_files(&deb, "`[fetch.kernel]`", &mut budget(), |p| {
            p.starts_with("/boot/vmlinuz-") || p.starts_with("/lib/modules/")
        })?;
        let paths: Vec<&str> = tree.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "/boot",
                "/boot/vmlinuz-6.1.0-1-cloud-amd64",
                "/lib",
                "/lib/modules",
                "/lib/modules/6.1.0-1-cloud-amd64",
                "/lib/modules/6.1.0-1-cloud-amd64/kernel",
                "/lib/modules/6.1.0-1-cloud-amd64/kernel/a.ko",
            ]
        );
        Ok(())
    }

    #[test]
    fn not_a_deb_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.deb");
        fs::write(&path, "not an ar archive").expect("write");
        let err = Tree::new().add_deb(&path, "/", "`[fetch.x]`", &mut budget()).expect_err("not a deb");
        assert!(err.to_string().starts_with("`[fetch.x]`: cannot read its first member"), "{err}");
        let control = parse_control("Package: a\nVersion: 1\n").expect_err("no Architecture");
        assert_eq!(control, "its control file has no `Architecture` field");
    }
}
