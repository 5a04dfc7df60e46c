//! Images checked by the tools that consume them: GNU cpio reads the initramfs, e2fsck and
//! debugfs the ext4 image, qemu-img the qcow2. A missing tool or fixture fails its test with
//! the command that installs it (`.ci/setup` installs them all); nothing is skipped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use kiln_rootfs::{
    Compression, Data, Ext4Options, Node, Tree, UnpackBudget, UnpackLimits, busybox_applets, convert_qcow2, write_ext4,
};

/// Fails the test, saying how to install it, unless `program` runs here.
fn require(program: &str, package: &str) {
    let found = Command::new(program).arg("--version").output().is_ok();
    assert!(
        found,
        "`{program}` is not installed: `sudo apt-get install {package}` (or run `.ci/setup`, which installs \
         everything kiln's tests need)"
    );
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn");
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// A small fake system: a busybox-like binary with an applet table, /init, /etc files,
/// a sticky /tmp, a read-only directory and a console device.
fn sample_tree() -> Tree {
    let mut tree = Tree::new();
    let mut busybox = b"\x7fELF fake\0".to_vec();
    busybox.extend_from_slice(b"[\0[[\0cat\0echo\0ls\0mount\0poweroff\0sh\0\0");
    assert_eq!(tree.add_busybox(Data::from(busybox), "fake busybox").expect("busybox"), 8);
    tree.insert_file("/init", 0o755, Data::from("#!/bin/sh\necho hello\npoweroff -f\n")).expect("init");
    tree.insert_file("/etc/passwd", 0o644, Data::from("root:x:0:0:root:/root:/bin/sh\n")).expect("passwd");
    tree.insert_file("/etc/a name with \"quotes\" and spaces", 0o600, Data::from("odd")).expect("odd name");
    tree.insert_dir("/tmp", 0o1777).expect("tmp");
    tree.insert_dir("/ro", 0o555).expect("ro");
    tree.insert_file("/ro/file", 0o444, Data::from("read-only")).expect("ro file");
    tree.insert_char_device("/dev/console", 0o600, 5, 1).expect("console");
    tree
}

#[test]
fn gnu_cpio_lists_and_extracts_the_initramfs() {
    require("cpio", "cpio");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("initramfs.cpio");
    let tree = sample_tree();
    tree.write_cpio(fs::File::create(&archive).expect("create"), Compression::None, 0).expect("cpio");

    let listing = run(Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&archive));
    let expected: Vec<String> = tree.entries().map(|(p, _)| p[1..].to_owned()).collect();
    assert_eq!(listing.lines().collect::<Vec<_>>(), expected);

    let mut without_devices = tree.clone();
    without_devices.remove("/dev");
    let archive = dir.path().join("nodev.cpio");
    without_devices.write_cpio(fs::File::create(&archive).expect("create"), Compression::None, 0).expect("cpio");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    run(Command::new("cpio")
        .args(["-idv", "--quiet", "--no-absolute-filenames", "--preserve-modification-time", "-F"])
        .arg(&archive)
        .current_dir(&out));
    assert_eq!(fs::read_to_string(out.join("init")).expect("init"), "#!/bin/sh\necho hello\npoweroff -f\n");
    assert_eq!(fs::read_link(out.join("bin/sh")).expect("readlink"), Path::new("busybox"));
    assert_eq!(fs::read_to_string(out.join("ro/file")).expect("ro"), "read-only");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(out.join("tmp")).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o1777);
    assert_eq!(fs::metadata(out.join("init")).expect("stat").mtime(), 0);
    fs::set_permissions(out.join("ro"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
}

fn ext4_image(dir: &Path, name: &str, tree: &Tree) -> PathBuf {
    let out = dir.join(name);
    let opts = Ext4Options { size: None, label: Some("kiln-root".into()), mtime: 1_700_000_000 };
    write_ext4(tree, &out, &opts).expect("write_ext4");
    out
}

#[test]
fn ext4_images_are_reproducible_clean_and_owned_by_root() {
    require("mke2fs", "e2fsprogs");
    require("e2fsck", "e2fsprogs");
    let tree = sample_tree();
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    let a = ext4_image(one.path(), "a.img", &tree);
    // A different staging directory and a different wall clock must not change a byte.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = ext4_image(two.path(), "b.img", &tree);
    let hash = |p: &Path| blake3::hash(&fs::read(p).expect("read image"));
    assert_eq!(hash(&a), hash(&b), "ext4 images differ");
    let leftovers: Vec<_> = fs::read_dir(one.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(leftovers, ["a.img"], "no staging or temporary files are left beside the image");

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&a).expect("stat").permissions().mode() & 0o777, 0o644);
    run(Command::new("e2fsck").arg("-fn").arg(&a));
    let stat = run(Command::new("debugfs").args(["-R", "stat /bin/busybox"]).arg(&a));
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    assert!(stat.contains("Mode:  0755"), "{stat}");
    let stat = run(Command::new("debugfs").args(["-R", "stat /dev/console"]).arg(&a));
    assert!(stat.contains("Type: character special    Mode:  0600"), "{stat}");
    assert!(stat.contains("Device major/minor number: 05:01"), "{stat}");
    let cat = run(Command::new("debugfs").args(["-R", "cat \"/etc/a name with \"\"quotes\"\" and spaces\""]).arg(&a));
    assert!(cat.contains("odd"), "{cat}");
    let label = run(Command::new("dumpe2fs").arg("-h").arg(&a));
    assert!(label.contains("Filesystem volume name:   kiln-root"), "{label}");
}

#[test]
fn ext4_with_a_size_too_small_fails_without_leaving_a_file() {
    require("mke2fs", "e2fsprogs");
    let mut tree = Tree::new();
    tree.insert_file("/big", 0o644, Data::from(vec![7u8; 3 << 20])).expect("big");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("small.img");
    let opts = Ext4Options { size: Some(2 << 20), ..Ext4Options::default() };
    let err = write_ext4(&tree, &out, &opts).expect_err("too small");
    let text = err.to_string();
    assert!(text.contains("mke2fs") && text.contains("is the requested size large enough"), "{text}");
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0, "nothing is left behind");
}

#[test]
fn qcow2_conversion_is_reproducible() {
    require("mke2fs", "e2fsprogs");
    require("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = ext4_image(dir.path(), "root.img", &sample_tree());
    let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
    convert_qcow2(&raw, &a).expect("qcow2");
    convert_qcow2(&raw, &b).expect("qcow2");
    assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    let info = run(Command::new("qemu-img").arg("info").arg(&a));
    assert!(info.contains("file format: qcow2"), "{info}");
}

fn fixture(prefix: &str, suffix: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln-fixtures")))?;
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn real_busybox_static_debs() {
    for arch in ["amd64", "arm64"] {
        let deb = fixture("busybox-static_", &format!("_{arch}.deb")).unwrap_or_else(|| {
            panic!("no busybox-static_*_{arch}.deb in $KILN_FIXTURES or ~/.cache/kiln-fixtures: run `.ci/fetch-debs`")
        });
        check_busybox_deb(&deb, arch);
    }
}

fn check_busybox_deb(deb: &Path, arch: &str) {
    let mut tree = Tree::new();
    let mut budget = UnpackBudget::new(UnpackLimits::default());
    let (info, report) = tree.add_deb(deb, "/", "`[fetch.busybox]`", &mut budget).expect("add_deb");
    assert!(report.is_empty(), "busybox-static has no special entries: {report}");
    assert_eq!((info.package.as_str(), info.architecture.as_str()), ("busybox-static", arch));
    let Some(Node::File { data, mode }) = tree.get("/bin/busybox").cloned() else {
        panic!("no /bin/busybox in {}", deb.display());
    };
    assert_eq!(mode, 0o755);
    let Data::Spilled(file) = &data else { panic!("a 2 MB member is streamed to a temporary file: {data:?}") };
    let bytes = fs::read(file.path()).expect("read the spilled member");
    let applets = busybox_applets(&bytes).expect("applet table");
    assert!(applets.len() > 200 && applets.contains(&"sh") && applets.contains(&"poweroff"), "{applets:?}");
    if arch == "amd64" && cfg!(target_arch = "x86_64") {
        // The binary can run here: its own list must match what was read from its bytes.
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("busybox");
        fs::write(&exe, &bytes[..]).expect("write busybox");
        fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let listed = run(Command::new(&exe).arg("--list"));
        let mut from_bytes: Vec<&str> = applets.clone();
        from_bytes.sort_unstable();
        let mut from_run: Vec<&str> = listed.lines().collect();
        from_run.sort_unstable();
        assert_eq!(from_bytes, from_run);
    }

    let count = tree.add_busybox(data.clone(), "busybox-static").expect("add_busybox");
    assert_eq!(count, applets.len());
    let write = || {
        let mut out = Vec::new();
        tree.write_cpio(&mut out, Compression::Gzip, 0).expect("cpio");
        out
    };
    assert_eq!(write(), write(), "same tree, same initramfs bytes");
}
