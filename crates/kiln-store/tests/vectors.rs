//! Test vectors of `docs/closure-hash.md`: another tool that implements the spec must get
//! these hashes, and the document must show the same ones.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use kiln_store::{Derivation, InputHash, hash_tree};

const SPEC: &str = include_str!("../../../docs/closure-hash.md");

fn assert_documented(hash: &str) {
    assert!(SPEC.contains(hash), "docs/closure-hash.md does not show {hash}");
}

#[test]
fn derivation_vector_1_minimal() {
    let hash = Derivation::new("noop").closure_hash().to_string();
    assert_eq!(hash, VECTOR_1);
    assert_documented(VECTOR_1);
}

#[test]
fn derivation_vector_2_cargo_build() {
    let mut drv = Derivation::new("cargo-build");
    drv.setting("profile", "release").setting("target", "riscv64gc-unknown-none-elf");
    drv.input("file:Cargo.lock", InputHash::of_bytes(b"lock"));
    drv.input("tool:rustc", InputHash::of_bytes(b"rustc 1.95.0"));
    assert_eq!(hex(&drv.encode()), VECTOR_2_ENCODING);
    assert_eq!(drv.closure_hash().to_string(), VECTOR_2);
    assert_documented(VECTOR_2);
}

#[test]
fn tree_vector_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("bin")).expect("mkdir");
    fs::write(root.join("bin/kernel"), b"\x7fELF").expect("write");
    fs::set_permissions(root.join("bin/kernel"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(root.join("README"), b"hello").expect("write");
    std::os::unix::fs::symlink("bin/kernel", root.join("current")).expect("symlink");
    let hash = hash_tree(Path::new(root)).expect("hash").to_string();
    assert_eq!(hash, VECTOR_3);
    assert_documented(VECTOR_3);
}

#[test]
fn tree_vector_4_orders_by_whole_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("foo")).expect("mkdir");
    fs::write(root.join("foo/x"), b"x").expect("write");
    fs::write(root.join("foo.rs"), b"rs").expect("write");
    let hash = hash_tree(Path::new(root)).expect("hash").to_string();
    assert_eq!(hash, VECTOR_4);
    assert_documented(VECTOR_4);
}

#[test]
fn source_set_vector_5_keeps_the_executable_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir(root.join("bin")).expect("mkdir");
    fs::write(root.join("bin/run.sh"), b"#!").expect("write");
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(root.join("lib.rs"), b"pub fn f() {}").expect("write");
    let set = kiln_store::SourceSet::package_dir(root).expect("walk");
    let hash = kiln_store::hash_source_set(&set, &kiln_store::StatCache::disabled()).expect("hash").to_hex();
    assert_eq!(hash, VECTOR_5);
    assert_documented(VECTOR_5);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const VECTOR_1: &str = "59a4bf09bbe9795d29b90f59f34468b63f8af0b819b359889b719c1077648b81";
const VECTOR_2: &str = "9db44ee204230f47dab12b8d024bee232d4c17aa8ad8bbb672608434341cd454";
const VECTOR_2_ENCODING: &str = "0b00000000000000636172676f2d6275696c640200000000000000070000000000000070726f66696c65070000000000000072656c6561736506000000000000007461726765741a000000000000007269736376363467632d756e6b6e6f776e2d6e6f6e652d656c6602000000000000000f0000000000000066696c653a436172676f2e6c6f636be73acfadf2de935ef6e689d57aec63e8d98e8092061fa61c9fcd1a3ce46016e20a00000000000000746f6f6c3a7275737463cad6f1c7387140a1fc009f3d4cc3273b8b5b45966fa99fe76dd2d101c3f8136d";
const VECTOR_3: &str = "bbcaf8a854ea5f8da32144f359f9cd5d8f09cd10736565897187b08221c040b7";
const VECTOR_4: &str = "0a557829057fa2c75192d08ff36eec4de53d42ab21caffd730d624c0832096ec";
const VECTOR_5: &str = "ecd48cffcc5649c229d9bd8d5d04ee2ed8c5b62e1c5a0b162adc102e8a0d0f83";
