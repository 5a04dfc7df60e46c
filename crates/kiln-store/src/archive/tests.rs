//! Export and import round trips, and every hostile archive import must refuse.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
};

use tar::{EntryType, Header};

use super::{read::*, verify::*, write::*, *};
use crate::Derivation;
use crate::{
    ClosureHash, Entry, Store, hash_tree,
    tree::{Node as TreeNode, hash_nodes, list_tree},
};

/// A temporary store, removed (read-only directories included) when dropped.
struct TestStore {
    dir: tempfile::TempDir,
    store: Store,
}

impl TestStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("open store");
        Self { dir, store }
    }

    fn build(&self, tag: &str, fill: impl FnOnce(&Path) -> io::Result<()>) -> Entry {
        let (entry, _) = self.store.build(&derivation(tag), tag, || {}, |out| Ok(fill(out)?)).expect("build");
        entry
    }

    fn import(&self, archive: &[u8]) -> Result<ArchiveSummary, StoreError> {
        import(&self.store, archive)
    }

    /// Nothing visible was written: no entries and no leftovers in `tmp/`.
    fn assert_untouched(&self) {
        for sub in ["entries", "tmp"] {
            let left: Vec<_> = fs::read_dir(self.store.root().join(sub))
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert!(left.is_empty(), "{sub}/ holds {left:?}");
        }
    }

    /// Imports `archive`, expects it to be refused without a trace, and returns the error.
    fn expect_refused(&self, archive: &[u8]) -> StoreError {
        let err = self.import(archive).expect_err("the archive must be refused");
        self.assert_untouched();
        err
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(self.dir.path());
    }
}

fn derivation(tag: &str) -> Derivation {
    let mut drv = Derivation::new("archive-test");
    drv.setting("tag", tag);
    drv
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Bytes that compress somewhat, like build outputs.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = if state % 4 < 2 { state } else { 0x6b69_6c6e_6b69_6c6e };
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

const LONG_NAME: &str = "a-directory-name-that-is-long-enough-to-need-a-gnu-long-name-record-in-any-tar-header-at-all";

/// Three entries: a tree with every kind of node, one with a file larger than a chunk,
/// one with an empty output.
fn sample() -> (TestStore, Vec<ClosureHash>) {
    let store = TestStore::new();
    let rich = store.build("rich", |out| {
        fs::write(out.join("README"), "hello")?;
        fs::create_dir_all(out.join("bin"))?;
        fs::write(out.join("bin/kernel"), b"\x7fELF")?;
        fs::set_permissions(out.join("bin/kernel"), fs::Permissions::from_mode(0o755))?;
        symlink("bin/kernel", out.join("current"))?;
        fs::create_dir_all(out.join("nested/deep/er"))?;
        fs::write(out.join("nested/deep/er/file"), "deep")?;
        symlink("../../README", out.join("nested/deep/readme"))?;
        fs::create_dir_all(out.join("empty"))?;
        fs::write(out.join("a.txt"), "sorts before a/")?;
        fs::create_dir_all(out.join("a"))?;
        fs::write(out.join("a/b"), "sorts after a.txt")?;
        let long = out.join(LONG_NAME).join(LONG_NAME);
        fs::create_dir_all(&long)?;
        fs::write(long.join("file"), "far away")?;
        symlink(format!("{LONG_NAME}/{LONG_NAME}/file"), out.join("long-link"))?;
        Ok(())
    });
    let big = store.build("big", |out| {
        fs::write(out.join("big.bin"), filler(7, 3 * IO_BUFFER + 123))?;
        fs::write(out.join("small"), "small")
    });
    let empty = store.build("empty", |_| Ok(()));
    (store, vec![rich.closure, big.closure, empty.closure])
}

fn export_bytes(store: &Store, closures: &[ClosureHash]) -> Vec<u8> {
    let mut out = Vec::new();
    export(store, closures, &mut out).expect("export");
    out
}

/// An entry built elsewhere, to put into crafted archives.
struct Good {
    closure: ClosureHash,
    hex: String,
    meta: Vec<u8>,
    output_hash: String,
    listing: Vec<u8>,
}

const GOOD_CONTENT: &[u8] = b"good content";

fn good(tag: &str) -> Good {
    let source = TestStore::new();
    let entry = source.build(tag, |out| fs::write(out.join("file"), GOOD_CONTENT));
    let meta = fs::read(entry.dir.join("meta.toml")).expect("read meta");
    let listing = listing::encode(&list_tree(&entry.out_dir()).expect("list"));
    Good { closure: entry.closure, hex: entry.closure.to_string(), meta, output_hash: entry.meta.output_hash, listing }
}

/// A node of a crafted listing.
enum Crafted<'a> {
    Dir,
    File(&'a [u8]),
    Link(&'a str),
}

impl Good {
    /// `meta.toml` and a listing of `nodes` (sorted bytewise) that agree with each other: the
    /// derivation is the good one, the recorded output hash is the crafted listing's.
    fn listing_of(&self, nodes: &[(&str, Crafted<'_>)]) -> (Vec<u8>, Vec<u8>) {
        let tree: Vec<(PathBuf, TreeNode)> = nodes
            .iter()
            .map(|(path, node)| {
                let node = match node {
                    Crafted::Dir => TreeNode::Dir,
                    Crafted::File(data) => TreeNode::File {
                        executable: false,
                        content: *blake3::hash(data).as_bytes(),
                        size: data.len() as u64,
                    },
                    Crafted::Link(target) => TreeNode::Symlink { target: target.as_bytes().to_vec() },
                };
                (PathBuf::from(path), node)
            })
            .collect();
        let hash = hash_nodes(&tree).to_string();
        let meta = String::from_utf8(self.meta.clone()).expect("utf-8").replace(&self.output_hash, &hash);
        (meta.into_bytes(), listing::encode(&tree))
    }
}

/// Builds tar streams member by member with the `tar` crate, bypassing its path checks.
struct Craft {
    tar: tar::Builder<Vec<u8>>,
}

impl Craft {
    fn new() -> Self {
        Self { tar: tar::Builder::new(Vec::new()) }
    }

    fn raw(&mut self, path: &[u8], kind: EntryType, mode: u32, size: u64, link: &[u8], data: &[u8]) -> &mut Self {
        if path.len() > 100 {
            let mut record = path.to_vec();
            record.push(0);
            self.raw(b"././@LongLink", EntryType::GNULongName, 0o644, record.len() as u64, b"", &record);
        }
        if link.len() > 100 {
            let mut record = link.to_vec();
            record.push(0);
            self.raw(b"././@LongLink", EntryType::GNULongLink, 0o644, record.len() as u64, b"", &record);
        }
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(0);
        set_field(&mut header.as_old_mut().name, path);
        set_field(&mut header.as_old_mut().linkname, link);
        header.set_cksum();
        self.tar.append(&header, data).expect("append");
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Regular, 0o644, data.len() as u64, b"", data)
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Directory, 0o755, 0, b"", b"")
    }

    fn link(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Symlink, 0o777, 0, target.as_bytes(), b"")
    }

    /// A whole entry whose `out/file` holds `content` (and is listed with the good content).
    fn entry(&mut self, good: &Good, content: &[u8]) -> &mut Self {
        let hex = &good.hex;
        self.file(&format!("{hex}/meta.toml"), &good.meta)
            .file(&format!("{hex}/listing"), &good.listing)
            .dir(&format!("{hex}/out"))
            .file(&format!("{hex}/out/file"), content)
    }

    /// The head of an entry whose `meta.toml` and listing agree on `nodes`; its `out/`
    /// members are up to the caller.
    fn listed(&mut self, good: &Good, nodes: &[(&str, Crafted<'_>)]) -> &mut Self {
        let hex = &good.hex;
        let (meta, listing) = good.listing_of(nodes);
        self.file(&format!("{hex}/meta.toml"), &meta)
            .file(&format!("{hex}/listing"), &listing)
            .dir(&format!("{hex}/out"))
    }

    fn finish(self) -> Vec<u8> {
        let tar = self.tar.into_inner().expect("finish tar");
        zstd::encode_all(&tar[..], 3).expect("compress")
    }
}

fn rejection(err: &StoreError) -> &Rejection {
    match err {
        StoreError::ArchiveRejected { reason, .. } => reason,
        other => panic!("expected a rejected member, got {other:?}: {other}"),
    }
}

fn rejected_member(err: &StoreError) -> &str {
    match err {
        StoreError::ArchiveRejected { member, .. } => member,
        other => panic!("expected a rejected member, got {other:?}: {other}"),
    }
}

#[test]
fn round_trip_keeps_entries_identical() {
    let (a, closures) = sample();
    let archive = export_bytes(&a.store, &closures);
    let b = TestStore::new();
    let summary = b.import(&archive).expect("import");
    assert_eq!(summary.entries, 3);
    let exported = export(&a.store, &closures, io::sink()).expect("export");
    assert_eq!(summary, exported);
    assert!(summary.bytes > 3 * IO_BUFFER as u64, "{summary:?}");

    for closure in &closures {
        let from = a.store.lookup(closure).expect("lookup").expect("in A");
        let to = b.store.lookup(closure).expect("lookup").expect("in B");
        assert_eq!(
            fs::read(from.dir.join("meta.toml")).expect("meta A"),
            fs::read(to.dir.join("meta.toml")).expect("meta B")
        );
        let hash = hash_tree(&to.out_dir()).expect("hash");
        assert_eq!(hash, hash_tree(&from.out_dir()).expect("hash"));
        assert_eq!(hash.to_string(), to.meta.output_hash);
        assert_eq!(b.store.check(&to).expect("check"), None);
        assert_eq!(mode(&to.dir.join("meta.toml")) & 0o222, 0);
    }
    let rich = b.store.lookup(&closures[0]).expect("lookup").expect("rich").out_dir();
    assert_ne!(mode(&rich.join("bin/kernel")) & 0o100, 0, "exec bit lost");
    assert_eq!(mode(&rich.join("README")) & 0o111, 0);
    assert_eq!(fs::read_link(rich.join("current")).expect("link"), Path::new("bin/kernel"));
    assert_eq!(fs::read_link(rich.join("nested/deep/readme")).expect("link"), Path::new("../../README"));
    assert_eq!(fs::read_to_string(rich.join("current")).expect("follow"), "\x7fELF");
    assert_eq!(fs::read_to_string(rich.join(LONG_NAME).join(LONG_NAME).join("file")).expect("long path"), "far away");
    assert!(rich.join("empty").is_dir());
    for path in [rich.join("bin/kernel"), rich.join("README")] {
        assert_eq!(mode(&path) & 0o222, 0, "{} is writable", path.display());
    }
    for path in [rich.clone(), rich.join("bin"), rich.join("empty")] {
        assert_ne!(mode(&path) & 0o200, 0, "directories stay removable: {}", path.display());
    }
    let big = b.store.lookup(&closures[1]).expect("lookup").expect("big").out_dir();
    assert_eq!(fs::read(big.join("big.bin")).expect("read"), filler(7, 3 * IO_BUFFER + 123));
    assert_eq!(fs::read_dir(b.store.root().join("tmp")).expect("tmp").count(), 0);
}

#[test]
fn export_is_deterministic() {
    let (a, closures) = sample();
    let first = export_bytes(&a.store, &closures);
    let mut reversed = closures.clone();
    reversed.reverse();
    reversed.push(closures[0]);
    assert_eq!(first, export_bytes(&a.store, &reversed));
    // A store that imported them holds the same entries with other inodes and mtimes, and
    // exports the same bytes.
    let b = TestStore::new();
    b.import(&first).expect("import");
    assert_eq!(first, export_bytes(&b.store, &closures));
}

#[test]
fn export_headers_are_normalised_and_ordered() {
    let (a, closures) = sample();
    let rich = closures[0].to_string();
    let archive = export_bytes(&a.store, &closures[..1]);
    let tar = zstd::decode_all(&archive[..]).expect("decompress");
    let mut listing = Vec::new();
    for member in tar::Archive::new(&tar[..]).entries().expect("entries") {
        let member = member.expect("member");
        let header = member.header();
        assert_eq!(header.mtime().expect("mtime"), 0);
        assert_eq!((header.uid().expect("uid"), header.gid().expect("gid")), (0, 0));
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert!(header.as_gnu().is_some());
        let path = String::from_utf8(member.path_bytes().into_owned()).expect("utf-8");
        let path = path.strip_prefix(&format!("{rich}/")).expect("under the closure").to_owned();
        listing.push((path, header.entry_type(), header.mode().expect("mode")));
    }
    let long_dir = format!("out/{LONG_NAME}");
    let expected = [
        ("meta.toml".to_owned(), EntryType::Regular, 0o644),
        ("listing".to_owned(), EntryType::Regular, 0o644),
        ("out/".to_owned(), EntryType::Directory, 0o755),
        ("out/README".to_owned(), EntryType::Regular, 0o644),
        ("out/a/".to_owned(), EntryType::Directory, 0o755),
        ("out/a/b".to_owned(), EntryType::Regular, 0o644),
        // `-` sorts before `.`.
        (format!("{long_dir}/"), EntryType::Directory, 0o755),
        (format!("{long_dir}/{LONG_NAME}/"), EntryType::Directory, 0o755),
        (format!("{long_dir}/{LONG_NAME}/file"), EntryType::Regular, 0o644),
        ("out/a.txt".to_owned(), EntryType::Regular, 0o644),
        ("out/bin/".to_owned(), EntryType::Directory, 0o755),
        ("out/bin/kernel".to_owned(), EntryType::Regular, 0o755),
        ("out/current".to_owned(), EntryType::Symlink, 0o777),
        ("out/empty/".to_owned(), EntryType::Directory, 0o755),
        ("out/long-link".to_owned(), EntryType::Symlink, 0o777),
        ("out/nested/".to_owned(), EntryType::Directory, 0o755),
        ("out/nested/deep/".to_owned(), EntryType::Directory, 0o755),
        ("out/nested/deep/er/".to_owned(), EntryType::Directory, 0o755),
        ("out/nested/deep/er/file".to_owned(), EntryType::Regular, 0o644),
        ("out/nested/deep/readme".to_owned(), EntryType::Symlink, 0o777),
    ];
    assert_eq!(listing, expected);
}

#[test]
fn export_of_a_missing_entry_fails_before_writing() {
    let (a, mut closures) = sample();
    let missing = derivation("never built").closure_hash();
    closures.push(missing);
    let mut out = Vec::new();
    let err = export(&a.store, &closures, &mut out).expect_err("must fail");
    assert!(matches!(err, StoreError::NotInStore { closure } if closure == missing), "{err:?}");
    assert!(out.is_empty());
}

#[test]
fn file_round_trip_replaces_the_archive_atomically() {
    let (a, closures) = sample();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.tar.zst");
    fs::write(&path, "old").expect("write");
    let exported = export_to_file(&a.store, &closures, &path).expect("export");
    let names: Vec<_> = fs::read_dir(dir.path()).expect("read_dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["store.tar.zst"]);
    assert_eq!(fs::read(&path).expect("read"), export_bytes(&a.store, &closures));
    let b = TestStore::new();
    assert_eq!(import_from_file(&b.store, &path).expect("import"), exported);
    let missing = import_from_file(&b.store, &dir.path().join("nope")).expect_err("missing file");
    assert!(matches!(missing, StoreError::Io { action: "open", .. }), "{missing:?}");
}

#[test]
fn importing_existing_entries_is_idempotent() {
    let (a, closures) = sample();
    let archive = export_bytes(&a.store, &closures);
    // Into the store the entries came from.
    assert_eq!(a.import(&archive).expect("import into the source").entries, 3);
    // Twice into a fresh store.
    let b = TestStore::new();
    let first = b.import(&archive).expect("first import");
    let meta = b.store.root().join("entries").join(closures[0].to_string()).join("meta.toml");
    let before = fs::read(&meta).expect("meta");
    assert_eq!(b.import(&archive).expect("second import"), first);
    assert_eq!(fs::read(&meta).expect("meta"), before);
    for store in [&a, &b] {
        assert_eq!(fs::read_dir(store.store.root().join("entries")).expect("entries").count(), 3);
        assert_eq!(fs::read_dir(store.store.root().join("tmp")).expect("tmp").count(), 0);
        for closure in &closures {
            let entry = store.store.lookup(closure).expect("lookup").expect("present");
            assert_eq!(store.store.check(&entry).expect("check"), None);
        }
    }
}

#[test]
fn rejects_parent_components() {
    let g = good("parent");
    let store = TestStore::new();
    for path in ["../evil".to_owned(), format!("{}/out/../../evil", g.hex), format!("{}/../x", g.hex)] {
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&path, b"evil");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::ParentComponent, "{path}");
        assert_eq!(rejected_member(&err), path);
        assert!(err.to_string().contains(&path), "{err}");
    }
    assert!(!store.dir.path().join("evil").exists());
}

#[test]
fn rejects_absolute_paths() {
    let g = good("absolute");
    let store = TestStore::new();
    let target = store.dir.path().join("planted");
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).file(target.to_str().expect("utf-8"), b"evil");
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::AbsolutePath);
    assert!(!target.exists());
    let mut craft = Craft::new();
    craft.file(&format!("/{}/meta.toml", g.hex), &g.meta);
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::AbsolutePath);
}

#[test]
fn rejects_symlinks_to_absolute_targets() {
    let g = good("abs-link");
    let store = TestStore::new();
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).link(&format!("{}/out/passwd", g.hex), "/etc/passwd");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::AbsoluteLink { target: "/etc/passwd".to_owned() });
    assert_eq!(rejected_member(&err), format!("{}/out/passwd", g.hex));
}

#[test]
fn rejects_symlinks_leaving_out() {
    let g = good("escape");
    let store = TestStore::new();
    for (link, target) in
        [("out/a", "../../../x"), ("out/a", ".."), ("out/d/e/l", "../../../meta.toml"), ("out/l", "x/../..")]
    {
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).link(&format!("{}/{link}", g.hex), target);
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::EscapingLink { target: target.to_owned() }, "{link} -> {target}");
    }
    // Staying inside is fine, however deep the detour.
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).link(&format!("{}/out/d/e/l", g.hex), "../../file");
    let err = store.expect_refused(&craft.finish());
    // (It is only refused because the listing does not have it.)
    assert_eq!(rejection(&err), &Rejection::NotListed);
    assert_eq!(rejected_member(&err), format!("{}/out/d", g.hex));
}

#[test]
fn rejects_symlink_chains_that_leave_out_once_followed() {
    let g = good("chain");
    let store = TestStore::new();
    let hex = &g.hex;
    // Lexically `a/b/..` is `a`, but `a/b` is a link to `..` (that is `out`), and `out/..`
    // is the entry directory.
    let mut craft = Craft::new();
    craft
        .listed(&g, &[("a", Crafted::Dir), ("a/b", Crafted::Link("..")), ("c", Crafted::Link("a/b/.."))])
        .dir(&format!("{hex}/out/a"))
        .link(&format!("{hex}/out/a/b"), "..")
        .link(&format!("{hex}/out/c"), "a/b/..");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::EscapingLink { target: "a/b/..".to_owned() });
    assert_eq!(rejected_member(&err), format!("{hex}/out/c"));
    // A loop is refused too.
    let mut craft = Craft::new();
    craft
        .listed(&g, &[("x", Crafted::Link("y")), ("y", Crafted::Link("x"))])
        .link(&format!("{hex}/out/x"), "y")
        .link(&format!("{hex}/out/y"), "x");
    let err = store.expect_refused(&craft.finish());
    assert!(matches!(rejection(&err), Rejection::TooManyLinks { .. }), "{err:?}");
}

#[test]
fn rejects_hard_links_devices_and_other_member_types() {
    let g = good("types");
    let store = TestStore::new();
    let path = format!("{}/out/odd", g.hex);
    let cases = [
        (EntryType::Link, "hard link"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
        (EntryType::GNUSparse, "GNU sparse file"),
        (EntryType::XHeader, "pax extended header"),
        (EntryType::XGlobalHeader, "pax global header"),
    ];
    for (kind, name) in cases {
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).raw(path.as_bytes(), kind, 0o644, 0, b"file", b"");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::UnsupportedType { kind: name.to_owned() });
        assert_eq!(rejected_member(&err), path);
    }
}

#[test]
fn rejects_top_directories_that_are_not_closures() {
    let g = good("names");
    let store = TestStore::new();
    for top in ["not-a-hash".to_owned(), g.hex.to_uppercase(), g.hex[..63].to_owned(), format!("{}0", g.hex)] {
        let mut craft = Craft::new();
        craft.file(&format!("{top}/meta.toml"), &g.meta).dir(&format!("{top}/out"));
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::NotAClosure, "{top}");
    }
    let mut craft = Craft::new();
    craft.file("meta.toml", &g.meta);
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::NotAClosure);
}

#[test]
fn rejects_members_beside_meta_and_out() {
    let g = good("beside");
    let store = TestStore::new();
    for path in ["extra", "out.txt", "meta.toml.bak", "tmp/file"] {
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&format!("{}/{path}", g.hex), b"x");
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::UnexpectedPath, "{path}");
    }
    let mut craft = Craft::new();
    craft.file(&format!("{}/meta.toml", g.hex), &g.meta).link(&format!("{}/out", g.hex), "/tmp");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::WrongType { expected: "a directory" });
}

#[test]
fn rejects_writing_through_symlinks_and_duplicates() {
    let g = good("through");
    let store = TestStore::new();
    let hex = &g.hex;
    // Even when the listing has them (it cannot describe a real tree then).
    let mut craft = Craft::new();
    craft
        .listed(&g, &[("link", Crafted::Link(".")), ("link/planted", Crafted::File(b"x"))])
        .link(&format!("{hex}/out/link"), ".")
        .file(&format!("{hex}/out/link/planted"), b"x");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::ParentNotDirectory { parent: "out/link".to_owned() });
    // A file where a directory should be.
    let mut craft = Craft::new();
    craft
        .listed(&g, &[("file", Crafted::File(GOOD_CONTENT)), ("file/below", Crafted::File(b"x"))])
        .file(&format!("{hex}/out/file"), GOOD_CONTENT)
        .file(&format!("{hex}/out/file/below"), b"x");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::ParentNotDirectory { parent: "out/file".to_owned() });
    // The same path twice, whatever the types.
    for second in [EntryType::Regular, EntryType::Symlink, EntryType::Directory] {
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).raw(format!("{hex}/out/file").as_bytes(), second, 0o644, 0, b"x", b"");
        assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::Duplicate, "{second:?}");
    }
    // Members of one entry split by another entry's.
    let other = good("other");
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).entry(&other, GOOD_CONTENT).file(&format!("{hex}/out/late"), b"x");
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::NotContiguous);
}

#[test]
fn rejects_oversized_headers() {
    let g = good("oversized");
    let store = TestStore::new();
    let hex = &g.hex;
    // A file claiming more than the limit; no data follows, and none is read.
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).raw(
        format!("{hex}/out/huge").as_bytes(),
        EntryType::Regular,
        0o644,
        1 << 40,
        b"",
        b"",
    );
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Oversized { size: 1 << 40, limit: MAX_FILE_BYTES });
    assert!(err.to_string().contains("oversized header"), "{err}");
    // Long-name records longer than any allowed path; the path is not read.
    for len in [MAX_PATH_BYTES + 1, 100_000] {
        let long = format!("{hex}/out/{}", "y".repeat(len - 69));
        let mut craft = Craft::new();
        craft.entry(&g, GOOD_CONTENT).file(&long, b"x");
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejection(&err), &Rejection::PathTooLong { len });
        assert_eq!(rejected_member(&err), "././@LongLink");
    }
    // A long path under the limit is fine (it is only refused for not being listed). (Near
    // the limit, the path in the staging directory would exceed the kernel's own limit.)
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).file(&format!("{hex}/out/{}z", format!("{}/", "y".repeat(199)).repeat(10)), b"x");
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::NotListed);
    // Symlink targets have the same limit.
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).link(&format!("{hex}/out/l"), &"t".repeat(MAX_PATH_BYTES + 1));
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::PathTooLong { len: MAX_PATH_BYTES + 1 });
    // Too many components.
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).file(&format!("{hex}/out/{}z", "z/".repeat(300)), b"x");
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::TooManyComponents { count: 303 });
    // A meta.toml far larger than any real one.
    let mut craft = Craft::new();
    craft.raw(format!("{hex}/meta.toml").as_bytes(), EntryType::Regular, 0o644, 2 << 20, b"", b"");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Oversized { size: 2 << 20, limit: MAX_META_BYTES });
}

#[test]
fn rejects_incomplete_entries() {
    let g = good("incomplete");
    let store = TestStore::new();
    let mut craft = Craft::new();
    craft.dir(&format!("{}/out", g.hex)).file(&format!("{}/out/file", g.hex), GOOD_CONTENT);
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "meta.toml" });
    // An archive of an older kiln, without listings.
    let mut craft = Craft::new();
    craft
        .file(&format!("{}/meta.toml", g.hex), &g.meta)
        .dir(&format!("{}/out", g.hex))
        .file(&format!("{}/out/file", g.hex), GOOD_CONTENT);
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "listing" });
    let mut craft = Craft::new();
    craft.file(&format!("{}/meta.toml", g.hex), &g.meta);
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "listing" });
    let mut craft = Craft::new();
    craft.file(&format!("{}/meta.toml", g.hex), &g.meta).file(&format!("{}/listing", g.hex), &g.listing);
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::Incomplete { missing: "out/" });
    // A listed file the archive does not hold.
    let mut craft = Craft::new();
    craft
        .file(&format!("{}/meta.toml", g.hex), &g.meta)
        .file(&format!("{}/listing", g.hex), &g.listing)
        .dir(&format!("{}/out", g.hex));
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::MissingListed);
    assert_eq!(rejected_member(&err), format!("{}/out/file", g.hex));
}

#[test]
fn rejects_tampered_content_as_it_streams() {
    let g = good("tampered");
    let store = TestStore::new();
    let hex = &g.hex;
    // Same length, other bytes: hashed as written, refused at the file's end.
    let mut craft = Craft::new();
    craft.entry(&g, b"evil content");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::ContentMismatch);
    assert_eq!(rejected_member(&err), format!("{hex}/out/file"));
    // Longer or shorter than listed: refused at the header, before any data is read.
    for content in [&b"good content and more"[..], b"good"] {
        let mut craft = Craft::new();
        craft.entry(&g, content);
        let err = store.expect_refused(&craft.finish());
        let size = content.len() as u64;
        assert_eq!(rejection(&err), &Rejection::SizeMismatch { size, listed: GOOD_CONTENT.len() as u64 });
    }
    // The executable bit is part of the output too.
    let mut craft = Craft::new();
    craft
        .file(&format!("{hex}/meta.toml"), &g.meta)
        .file(&format!("{hex}/listing"), &g.listing)
        .dir(&format!("{hex}/out"))
        .raw(
            format!("{hex}/out/file").as_bytes(),
            EntryType::Regular,
            0o755,
            GOOD_CONTENT.len() as u64,
            b"",
            GOOD_CONTENT,
        );
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::ListedAs { listed: "a non-executable file" });
    // Another type than listed.
    let mut craft = Craft::new();
    craft
        .file(&format!("{hex}/meta.toml"), &g.meta)
        .file(&format!("{hex}/listing"), &g.listing)
        .dir(&format!("{hex}/out"))
        .dir(&format!("{hex}/out/file"));
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::ListedAs { listed: "a non-executable file" });
    // A listing that is not the output meta.toml records names both hashes.
    let (_, other_listing) = g.listing_of(&[("file", Crafted::File(b"evil content"))]);
    let mut craft = Craft::new();
    craft.file(&format!("{hex}/meta.toml"), &g.meta).file(&format!("{hex}/listing"), &other_listing);
    let err = store.expect_refused(&craft.finish());
    let tampered = tempfile::tempdir().expect("tempdir");
    fs::write(tampered.path().join("file"), b"evil content").expect("write");
    let actual_hash = hash_tree(tampered.path()).expect("hash");
    match &err {
        StoreError::ArchiveOutputMismatch { closure, recorded, actual } => {
            assert_eq!(*closure, g.closure);
            assert_eq!(recorded, &g.output_hash);
            assert_eq!(*actual, actual_hash);
        }
        other => panic!("expected an output mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&g.output_hash) && message.contains(&actual_hash.to_string()), "{message}");
}

#[test]
fn rejects_malformed_listings_and_members_out_of_order() {
    let g = good("listing");
    let store = TestStore::new();
    let hex = &g.hex;
    let listing_member = format!("{hex}/listing");
    let refuse = |listing: &[u8]| {
        let mut craft = Craft::new();
        craft.file(&format!("{hex}/meta.toml"), &g.meta).file(&listing_member, listing).dir(&format!("{hex}/out"));
        let err = store.expect_refused(&craft.finish());
        assert_eq!(rejected_member(&err), listing_member);
        rejection(&err).clone()
    };
    assert!(matches!(refuse(b"not a listing"), Rejection::BadListing { .. }));
    assert!(matches!(refuse(&g.listing[..g.listing.len() - 1]), Rejection::BadListing { .. }));
    let mut trailing = g.listing.clone();
    trailing.push(0);
    assert!(matches!(refuse(&trailing), Rejection::BadListing { .. }));
    let (_, unsorted) = g.listing_of(&[("b", Crafted::Dir), ("a", Crafted::Dir)]);
    assert!(matches!(refuse(&unsorted), Rejection::BadListing { .. }));
    let (_, twice) = g.listing_of(&[("a", Crafted::Dir), ("a", Crafted::Dir)]);
    assert!(matches!(refuse(&twice), Rejection::BadListing { .. }));
    let (_, climbing) = g.listing_of(&[("a", Crafted::Link("../.."))]);
    assert!(matches!(refuse(&climbing), Rejection::EscapingLink { .. }));
    let (_, dotdot) = g.listing_of(&[("a/../../x", Crafted::Dir)]);
    assert_eq!(refuse(&dotdot), Rejection::ParentComponent);
    // A count far beyond the listing's length is refused without allocating for it.
    let mut huge_count = b"kiln-listing-v1\n".to_vec();
    huge_count.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(refuse(&huge_count), Rejection::BadListing { .. }));
    // The listing comes after meta.toml; meta.toml first.
    let mut craft = Craft::new();
    craft.file(&listing_member, &g.listing).file(&format!("{hex}/meta.toml"), &g.meta);
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::OutOfOrder { expected: "meta.toml" });
    // The same directory twice would let an archive repeat headers forever.
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).dir(&format!("{hex}/out"));
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::Duplicate);
    let mut craft = Craft::new();
    craft.dir(&format!("{hex}/")).entry(&g, GOOD_CONTENT).dir(&format!("{hex}/"));
    assert_eq!(rejection(&store.expect_refused(&craft.finish())), &Rejection::Duplicate);
}

#[test]
fn rejects_metadata_of_another_derivation() {
    let one = good("one");
    let two = good("two");
    let store = TestStore::new();
    let mut craft = Craft::new();
    craft
        .file(&format!("{}/meta.toml", two.hex), &one.meta)
        .dir(&format!("{}/out", two.hex))
        .file(&format!("{}/out/file", two.hex), GOOD_CONTENT);
    let err = store.expect_refused(&craft.finish());
    assert!(
        matches!(err, StoreError::ArchiveClosureMismatch { dir, derivation } if dir == two.closure && derivation == one.closure),
        "{err:?}"
    );
    let mut craft = Craft::new();
    craft.file(&format!("{}/meta.toml", one.hex), b"not = [toml").dir(&format!("{}/out", one.hex));
    assert!(matches!(store.expect_refused(&craft.finish()), StoreError::CorruptMeta { .. }));
}

#[test]
fn rejects_truncated_and_corrupt_streams() {
    let (a, closures) = sample();
    let archive = export_bytes(&a.store, &closures);
    let store = TestStore::new();
    for cut in [0, 10, archive.len() / 3, archive.len() / 2, archive.len() - 5, archive.len() - 1] {
        let err = store.expect_refused(&archive[..cut]);
        assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "cut at {cut}: {err:?}");
    }
    let mut flipped = archive.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    store.expect_refused(&flipped);
    let mut trailing = archive.clone();
    trailing.extend_from_slice(b"garbage");
    assert!(matches!(store.expect_refused(&trailing), StoreError::ArchiveCorrupt { .. }));
    assert!(matches!(store.expect_refused(b"not zstd at all"), StoreError::ArchiveCorrupt { .. }));
}

#[test]
fn rejects_tar_streams_without_their_end() {
    let g = good("no-end");
    let store = TestStore::new();
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT);
    // A complete zstd frame around a tar stream cut after its last member...
    let tar = craft.tar.get_ref().clone();
    let err = store.expect_refused(&zstd::encode_all(&tar[..], 3).expect("compress"));
    assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
    // ...or inside one, or with junk after the end-of-archive marker.
    let err = store.expect_refused(&zstd::encode_all(&tar[..tar.len() - 700], 3).expect("compress"));
    assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
    let mut junk = craft.tar.into_inner().expect("finish");
    junk.extend_from_slice(&[1; BLOCK]);
    let err = store.expect_refused(&zstd::encode_all(&junk[..], 3).expect("compress"));
    assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
    // And a header whose checksum does not match.
    let mut tar = tar.clone();
    tar[0] ^= 1;
    let err = store.expect_refused(&zstd::encode_all(&tar[..], 3).expect("compress"));
    assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
}

#[test]
fn one_bad_entry_keeps_the_good_one_out() {
    let good_one = good("fine");
    let bad_one = good("spoilt");
    let store = TestStore::new();
    let mut craft = Craft::new();
    craft.entry(&good_one, GOOD_CONTENT).entry(&bad_one, b"spoilt content");
    let err = store.expect_refused(&craft.finish());
    assert_eq!(rejection(&err), &Rejection::SizeMismatch { size: 14, listed: GOOD_CONTENT.len() as u64 });
    assert_eq!(rejected_member(&err), format!("{}/out/file", bad_one.hex));
    assert!(store.store.lookup(&good_one.closure).expect("lookup").is_none());
    // And a structural rejection after the good entry.
    let mut craft = Craft::new();
    craft.entry(&good_one, GOOD_CONTENT).link(&format!("{}/out/x", bad_one.hex), "/etc/passwd");
    store.expect_refused(&craft.finish());
    // The same good entry alone is accepted.
    let mut craft = Craft::new();
    craft.entry(&good_one, GOOD_CONTENT);
    assert_eq!(store.import(&craft.finish()).expect("import").entries, 1);
    let entry = store.store.lookup(&good_one.closure).expect("lookup").expect("published");
    assert_eq!(store.store.check(&entry).expect("check"), None);
}

#[test]
fn symlink_resolution_follows_links_and_is_bounded() {
    let nodes: HashMap<Vec<u8>, Node> = [
        (&b"out"[..], Node::Dir),
        (b"out/a", Node::Dir),
        (b"out/a/up", Node::Symlink(b"..".to_vec())),
        (b"out/f", Node::File),
    ]
    .into_iter()
    .map(|(key, node)| (key.to_vec(), node))
    .collect();
    let resolve = |key: &[u8], target: &[u8]| resolve_link(&nodes, key, target, &mut 1000);
    let escaping = |target: &str| Err(Rejection::EscapingLink { target: target.to_owned() });
    assert_eq!(resolve(b"out/l", b"a/up/a/up/f"), Ok(()));
    assert_eq!(resolve(b"out/a/b/l", b"../../a/./up//f"), Ok(()));
    assert_eq!(resolve(b"out/l", b"a/up/.."), escaping("a/up/.."));
    assert_eq!(resolve(b"out/a/l", b"up/../a"), escaping("up/../a"));
    assert_eq!(resolve(b"out/a/l", b"../.."), escaping("../.."));
    // The kernel stops at a file or a missing name (ENOTDIR, ENOENT).
    assert_eq!(resolve(b"out/l", b"f/../.."), Ok(()));
    assert_eq!(resolve(b"out/l", b"missing/../.."), Ok(()));
    let mut budget = 3;
    assert_eq!(resolve_link(&nodes, b"out/l", b"a/up/a/up/f", &mut budget), Err(Rejection::TooComplexLinks));
}

#[test]
fn member_paths_are_checked_component_by_component() {
    let hex = derivation("x").closure_hash().to_string();
    let ok = |path: &str, dir| split_member(path.as_bytes(), dir).map(|(_, rest)| shown(rest));
    assert_eq!(ok(&format!("{hex}/out/a/b"), false), Ok("out/a/b".to_owned()));
    assert_eq!(ok(&format!("{hex}/out/"), true), Ok("out".to_owned()));
    assert_eq!(ok(&format!("{hex}/"), true), Ok(String::new()));
    assert_eq!(ok(&format!("{hex}/out/a/"), false), Err(bad_header("only a directory's path may end in `/`")));
    assert_eq!(ok(&format!("{hex}//out"), false), Err(Rejection::EmptyComponent));
    assert_eq!(ok(&format!("{hex}/./out"), false), Err(Rejection::EmptyComponent));
    assert_eq!(ok(&format!("./{hex}/out"), false), Err(Rejection::EmptyComponent));
    assert_eq!(ok("", false), Err(Rejection::EmptyComponent));
    assert_eq!(check_link_target(b"out/a/l", b"../b/./c//d"), Ok(()));
    assert_eq!(
        check_link_target(b"out/l", b"a/../../b"),
        Err(Rejection::EscapingLink { target: "a/../../b".to_owned() })
    );
    assert_eq!(check_link_target(b"out/l", b""), Err(bad_header("a symlink without a target")));
}

/// Sixteen GiB.
const BOMB_BYTES: u64 = 16 << 30;

/// A zstd stream of `len` zeros (a multiple of 64 MiB) made of one small frame repeated, so
/// it takes milliseconds to build and a few hundred KB to hold.
fn zero_frames(len: u64) -> Vec<u8> {
    let piece: u64 = 64 << 20;
    let frame = zstd::encode_all(io::Read::take(io::repeat(0), piece), 1).expect("compress zeros");
    frame.repeat((len / piece) as usize)
}

/// Where the header and the data of `member` are in a tar stream, and its size.
fn locate(tar: &[u8], member: &str) -> (usize, usize, u64) {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("member");
        if entry.path_bytes().as_ref() == member.as_bytes() {
            let header = usize::try_from(entry.raw_header_position()).expect("fits");
            let data = usize::try_from(entry.raw_file_position()).expect("fits");
            return (header, data, entry.size());
        }
    }
    panic!("no member {member}");
}

/// An exported archive whose `member` is replaced by 16 GiB of zeros (its header claiming
/// them), the rest of the stream unchanged.
fn claiming_bomb(archive: &[u8], member: &str) -> Vec<u8> {
    let tar = zstd::decode_all(archive).expect("decompress");
    let (header_at, data_at, size) = locate(&tar, member);
    let mut header = Header::from_byte_slice(&tar[header_at..header_at + BLOCK]).clone();
    header.set_size(BOMB_BYTES);
    header.set_cksum();
    let resume = data_at + (size as usize).div_ceil(BLOCK) * BLOCK;
    let mut head = tar[..header_at].to_vec();
    head.extend_from_slice(header.as_bytes());
    let mut out = zstd::encode_all(&head[..], 3).expect("compress");
    out.extend(zero_frames(BOMB_BYTES));
    out.extend(zstd::encode_all(&tar[resume..], 3).expect("compress"));
    out
}

/// An exported archive whose `member` keeps its recorded size and content but is followed by
/// 16 GiB of zeros before the rest of the stream.
fn trailing_bomb(archive: &[u8], member: &str) -> Vec<u8> {
    let tar = zstd::decode_all(archive).expect("decompress");
    let (_, data_at, size) = locate(&tar, member);
    let resume = data_at + (size as usize).div_ceil(BLOCK) * BLOCK;
    let mut out = zstd::encode_all(&tar[..resume], 3).expect("compress");
    out.extend(zero_frames(BOMB_BYTES));
    out.extend(zstd::encode_all(&tar[resume..], 3).expect("compress"));
    out
}

#[test]
fn a_sixteen_gib_bomb_inside_a_valid_entry_is_refused_before_it_is_written() {
    let source = TestStore::new();
    let entry = source.build("bomb", |out| fs::write(out.join("file"), GOOD_CONTENT));
    let archive = export_bytes(&source.store, &[entry.closure]);
    let member = format!("{}/out/file", entry.closure);
    let store = TestStore::new();

    let bomb = claiming_bomb(&archive, &member);
    assert!(bomb.len() < 1 << 20, "the bomb is small: {} bytes", bomb.len());
    let err = store.expect_refused(&bomb);
    assert_eq!(rejection(&err), &Rejection::SizeMismatch { size: BOMB_BYTES, listed: GOOD_CONTENT.len() as u64 });
    assert_eq!(rejected_member(&err), member);
    let message = err.to_string();
    assert!(message.contains(&member) && message.contains("of entry `bomb`"), "{message}");

    let err = store.expect_refused(&trailing_bomb(&archive, &member));
    assert!(matches!(err, StoreError::ArchiveCorrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("zeros follow the end-of-archive marker"), "{err}");

    // The untouched archive still imports.
    assert_eq!(store.import(&archive).expect("import").entries, 1);
}

#[test]
fn import_stages_no_more_than_its_limit_and_the_free_space() {
    let (a, closures) = sample();
    let archive = export_bytes(&a.store, &closures);
    let store = TestStore::new();
    let tight = ImportLimits { max_bytes: 1 << 20, ..ImportLimits::default() };
    let err = import_with_limits(&store.store, &archive[..], &tight).expect_err("over the limit");
    store.assert_untouched();
    assert!(matches!(err, StoreError::ArchiveTooLarge { limit, .. } if limit == 1 << 20), "{err:?}");
    assert!(err.to_string().contains("more than the import limit of 1.0 MiB"), "{err}");
    // A file system that must keep more free than it has.
    let full = ImportLimits { keep_free: u64::MAX, ..ImportLimits::default() };
    let err = import_with_limits(&store.store, &archive[..], &full).expect_err("no space");
    store.assert_untouched();
    assert!(matches!(err, StoreError::ArchiveNoSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("free some space"), "{err}");
    // Both are bounds on the host or the caller's choice, not on the archive's honesty.
    assert!(!err.is_bad_archive());
    let roomy = ImportLimits { max_bytes: 64 << 20, ..ImportLimits::default() };
    assert_eq!(import_with_limits(&store.store, &archive[..], &roomy).expect("import").entries, 3);
}

#[test]
fn member_names_in_messages_have_control_characters_escaped() {
    let g = good("escape-names");
    let store = TestStore::new();
    let hostile = format!("{}/out/x\n::error::pwned\x1b[31m\x07\\", g.hex);
    let mut craft = Craft::new();
    craft.entry(&g, GOOD_CONTENT).file(&hostile, b"x");
    let err = store.expect_refused(&craft.finish());
    let message = err.to_string();
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains("x\\n::error::pwned\\x1b[31m\\x07\\\\"), "{message}");
    assert_eq!(shown(b"a\xff\xc3"), "a\\xff\\xc3");
}

#[test]
fn export_refuses_an_entry_whose_output_changed() {
    let (a, closures) = sample();
    let entry = a.store.lookup(&closures[1]).expect("lookup").expect("big");
    let small = entry.out_dir().join("small");
    fs::set_permissions(&small, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&small, "changed").expect("write");
    let err = export(&a.store, &closures, io::sink()).expect_err("corrupt entry");
    assert!(matches!(err, StoreError::ExportCorrupt { closure, .. } if closure == closures[1]), "{err:?}");
    assert!(err.to_string().contains("store verify --repair"), "{err}");
}
