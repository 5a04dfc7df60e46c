//! Store entries hold what their closure describes, also when the input that changed is one
//! cargo does not track (fixture (i)): a linker script named only in rustflags.

use std::path::{Path, PathBuf};

use crate::support::{Project, repo_root};

/// The entry point of an ELF64 little-endian file (`e_entry`, at offset 24).
fn entry_point(elf: &Path) -> u64 {
    let bytes = std::fs::read(elf).unwrap_or_else(|err| panic!("read {}: {err}", elf.display()));
    assert_eq!(&bytes[..5], b"\x7fELF\x02", "{} is an ELF64 file", elf.display());
    u64::from_le_bytes(bytes[24..32].try_into().expect("eight bytes"))
}

/// `store path` of the os1k kernel: its file in the current store entry.
fn kernel_in_store(project: &Project) -> PathBuf {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-it"))
        .arg("--config")
        .arg(project.path().join("Kiln.toml"))
        .args(["--no-delegate", "store", "path", "os1k"])
        .output()
        .expect("kiln runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

#[test]
fn editing_only_a_linker_script_named_in_rustflags_gives_a_new_entry_with_the_new_layout() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/os1k-rs"));
    let kiln_toml = project.path().join("Kiln.toml");
    let written = project.init_with_this_kiln();
    assert!(written.contains("kernel.ld"), "init names the linker script in the rustflags:\n{written}");
    let filled =
        written.replace("\"TODO: the line your kernel prints when it passes\"", "\"^os1k: all kernel tests passed$\"");
    std::fs::write(&kiln_toml, filled).expect("fill the TODO");

    assert_eq!(project.kiln(&["-q", "build"]), 0);
    let before = kernel_in_store(&project);
    let old_entry = entry_point(&before);
    assert_eq!(old_entry >> 20, 0x802, "the fixture links at 0x80200000: {old_entry:#x}");

    // Only the linker script changes: the kernel moves up by 2 MiB.
    let script = project.path().join("kernel.ld");
    let text = std::fs::read_to_string(&script).expect("kernel.ld");
    assert!(text.contains(". = 0x80200000;"), "{text}");
    std::fs::write(&script, text.replace(". = 0x80200000;", ". = 0x80400000;")).expect("edit kernel.ld");

    assert_eq!(project.kiln(&["-q", "build"]), 0);
    let after = kernel_in_store(&project);
    assert_ne!(before, after, "a new closure, a new entry");
    let new_entry = entry_point(&after);
    assert_eq!(new_entry >> 20, 0x804, "the new entry holds the relinked kernel: {new_entry:#x} (was {old_entry:#x})");
    assert_eq!(new_entry - old_entry, 0x20_0000);
    assert_eq!(entry_point(&before), old_entry, "the old entry is untouched");
}
