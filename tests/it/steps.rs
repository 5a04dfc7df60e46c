//! Declared command steps (`[step.NAME]`) on the rCore-Tutorial `os/` fixture, whose Makefile
//! copies `src/linker-$(BOARD).ld` to `src/linker.ld` before `cargo build`: `init` writes the
//! step, the step runs before the kernel and is cached like it (a hit puts the output back
//! without running the command), editing the board's linker script rebuilds and relinks, and a
//! step after the build (`artifact:NAME` input, `image-step`) makes the flat binary a case boots.

use std::path::{Path, PathBuf};

use kiln::xtask::CaseStatus;
use kiln_types::Arch;

use crate::support::{Project, repo_root};

/// The TODO `init` leaves for this fixture, and what the test fills in: the kernel's first line.
const SUCCESS_TODO: &str = "\"TODO: the line your kernel prints when it passes\"";
const SUCCESS_LINE: &str = "'^\\[kernel\\] Hello, world!$'";

/// An artifact booted from what a step makes of its binary, as the Makefile's
/// `$(OBJCOPY) $(KERNEL_ELF) --strip-all -O binary $@` makes `os.bin`; added by the test.
const FLAT_BINARY: &str = r#"
[artifact.os-bin]
package = "os"
path = "."
arches = ["riscv64"]
steps = ["linker-script"]
image-step = "kernel-bin"

[step.kernel-bin]
script = '"$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-objcopy --strip-all -O binary "{artifact:os-bin}" target/os.bin'
inputs = ["artifact:os-bin"]
outputs = ["target/os.bin"]

[case.flat]
artifact = "os-bin"
success = '^\[kernel\] Hello, world!$'
timeout = "60s"
"#;

/// The entry point of an ELF64 little-endian file (`e_entry`, at offset 24).
fn entry_point(elf: &Path) -> u64 {
    let bytes = std::fs::read(elf).unwrap_or_else(|err| panic!("read {}: {err}", elf.display()));
    assert_eq!(&bytes[..5], b"\x7fELF\x02", "{} is an ELF64 file", elf.display());
    u64::from_le_bytes(bytes[24..32].try_into().expect("eight bytes"))
}

/// `store path os`: the kernel in its current store entry.
fn kernel_in_store(project: &Project) -> PathBuf {
    image_in_store(project, "os")
}

/// `store path ARTIFACT`: what boots, in its current store entry.
fn image_in_store(project: &Project, artifact: &str) -> PathBuf {
    let output = project.command(&["--no-delegate", "store", "path", artifact]).output().expect("kiln runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|line| line.contains(needle)).unwrap_or_else(|| panic!("`{needle}` in:\n{text}")) + 1
}

/// Runs `build` as a child process on `kiln_toml`, returning its exit code and standard error.
fn build_with(project: &Project, kiln_toml: &str) -> (i32, String) {
    std::fs::write(project.path().join("Kiln.toml"), kiln_toml).expect("write Kiln.toml");
    let output = project.command(&["-q", "--no-delegate", "build"]).output().expect("kiln runs");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_makefile_linker_script_copy_becomes_a_cached_step_that_relinks_the_kernel_when_edited() {
    let project = Project::copy_of(&repo_root().join("tests/fixtures/rcore-os"));
    let kiln_toml = project.path().join("Kiln.toml");
    let written = project.init_with_this_kiln();
    for wanted in [
        "steps = [\"linker-script\"]",
        "[step.linker-script]\ncommand = [\"cp\", \"src/linker-qemu.ld\", \"src/linker.ld\"]\n\
         inputs = [\"src/linker-qemu.ld\"]\noutputs = [\"src/linker.ld\"]\n",
        "# From `cp src/linker-$(BOARD).ld src/linker.ld` in Makefile with BOARD = qemu",
    ] {
        assert!(written.contains(wanted), "init writes `{wanted}`:\n{written}");
    }
    assert!(!written.contains("# TODO: the rustflags name"), "the step replaces the TODO:\n{written}");
    assert!(written.contains(SUCCESS_TODO), "{written}");
    let filled = written.replace(SUCCESS_TODO, SUCCESS_LINE);
    std::fs::write(&kiln_toml, &filled).expect("fill the TODO");

    // First run: the step copies the script, the kernel builds with it and boots.
    let linker_ld = project.path().join("src/linker.ld");
    assert!(!linker_ld.exists(), "the repository does not hold src/linker.ld");
    let first = project.test(&["-q", "--accel", "tcg"]);
    let boot = first.get("boot", Arch::Riscv64).expect("boot ran");
    assert_eq!(boot.status, CaseStatus::Passed, "{}", boot.detail);
    assert_eq!((first.store.built, first.store.cached), (2, 0), "the step and the kernel are built");
    let qemu_script = std::fs::read(project.path().join("src/linker-qemu.ld")).expect("the board's script");
    assert_eq!(std::fs::read(&linker_ld).expect("the step made it"), qemu_script);
    let old_kernel = kernel_in_store(&project);
    assert_eq!(entry_point(&old_kernel), 0x8020_0000);

    // Second run: everything cached; the command did not run (`cp` would have rewritten the file).
    let made_at = std::fs::metadata(&linker_ld).expect("linker.ld").modified().expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let second = project.test(&["-q", "--accel", "tcg"]);
    assert_eq!(second.get("boot", Arch::Riscv64).map(|r| r.status), Some(CaseStatus::Passed));
    assert_eq!((second.store.built, second.store.cached), (0, 2), "the step and the kernel come from the store");
    assert_eq!(std::fs::metadata(&linker_ld).expect("kept").modified().expect("mtime"), made_at, "left untouched");

    // The Makefile removes src/linker.ld after building: kiln puts it back from the step's
    // entry without running anything.
    std::fs::remove_file(&linker_ld).expect("rm src/linker.ld, as `make kernel` does");
    let third = project.test(&["-q", "--accel", "tcg"]);
    assert_eq!(third.get("boot", Arch::Riscv64).map(|r| r.status), Some(CaseStatus::Passed));
    assert_eq!((third.store.built, third.store.cached), (0, 2));
    assert_eq!(std::fs::read(&linker_ld).expect("put back from the store"), qemu_script);

    // Editing only the board's script: the step runs again, the kernel is relinked at the new base.
    let script = project.path().join("src/linker-qemu.ld");
    let text = String::from_utf8(qemu_script).expect("utf-8");
    assert!(text.contains("BASE_ADDRESS = 0x80200000;"), "{text}");
    std::fs::write(&script, text.replace("BASE_ADDRESS = 0x80200000;", "BASE_ADDRESS = 0x80400000;"))
        .expect("edit linker-qemu.ld");
    let fourth = project.test(&["-q", "--accel", "tcg"]);
    let boot = fourth.get("boot", Arch::Riscv64).expect("boot ran");
    assert_eq!(boot.status, CaseStatus::Passed, "{}", boot.detail);
    assert!(boot.tail.iter().any(|line| line.starts_with("[kernel] .text [0x80400000")), "{:?}", boot.tail);
    assert_eq!((fourth.store.built, fourth.store.cached), (2, 0), "the step and the kernel are rebuilt");
    let new_kernel = kernel_in_store(&project);
    assert_ne!(new_kernel, old_kernel, "a new closure, a new entry");
    assert_eq!(entry_point(&new_kernel), 0x8040_0000, "the new entry holds the relinked kernel");
    assert_eq!(entry_point(&old_kernel), 0x8020_0000, "the old entry is untouched");

    // Failing variants. A board whose script the repository lacks: a Kiln.toml error at the input.
    let k999 = filled.replace("src/linker-qemu.ld", "src/linker-k999.ld");
    let (code, stderr) = build_with(&project, &k999);
    assert_eq!(code, 2, "{stderr}");
    let line = line_of(&k999, "inputs = [\"src/linker-k999.ld\"]");
    assert!(stderr.contains("input `src/linker-k999.ld` does not exist"), "{stderr}");
    assert!(stderr.contains(&format!("Kiln.toml:{line}:")), "the error names the line: {stderr}");
    assert!(stderr.contains("step.linker-script.inputs"), "the error names the key: {stderr}");

    // The Makefile's own spelling with a board kiln has no script for: the command fails, and
    // the error names the step, its line, the exit status and what `cp` said.
    let scripted = filled
        .replace(
            "command = [\"cp\", \"src/linker-qemu.ld\", \"src/linker.ld\"]",
            "script = \"cp src/linker-$BOARD.ld src/linker.ld\"\nenv = { BOARD = \"k999\" }",
        )
        .replace("inputs = [\"src/linker-qemu.ld\"]", "inputs = [\"src/linker-*.ld\"]");
    let (code, stderr) = build_with(&project, &scripted);
    assert_eq!(code, 1, "a failed step fails the build: {stderr}");
    let line = line_of(&scripted, "[step.linker-script]");
    assert!(stderr.contains(&format!("Kiln.toml:{line}): `its script` failed with exit status: 1")), "{stderr}");
    assert!(stderr.contains("step `linker-script` ("), "{stderr}");
    assert!(stderr.contains("cp: cannot stat 'src/linker-k999.ld'"), "the command's own output: {stderr}");

    // A step after the build: the kernel's flat binary, made by the toolchain's llvm-objcopy
    // from the ELF in the store, is what the `flat` case boots.
    std::fs::write(&script, &text).expect("back to 0x80200000, where QEMU loads a flat binary");
    std::fs::write(&kiln_toml, format!("{filled}{FLAT_BINARY}")).expect("write Kiln.toml");
    let fifth = project.test(&["-q", "--accel", "tcg"]);
    for case in ["boot", "flat"] {
        let run = fifth.get(case, Arch::Riscv64).expect("ran");
        assert_eq!(run.status, CaseStatus::Passed, "{case}: {}", run.detail);
        assert!(run.tail.iter().any(|line| line.starts_with("[kernel] .text [0x80200000")), "{case}: {:?}", run.tail);
    }
    assert_eq!(fifth.store.built, 1, "only the flat binary is new: the step and both builds of `os` are cached");
    let flat = image_in_store(&project, "os-bin");
    assert!(flat.ends_with("target/os.bin"), "{}", flat.display());
    let bytes = std::fs::read(&flat).expect("the flat binary");
    assert_ne!(&bytes[..4], b"\x7fELF", "a flat binary, not the ELF");
    assert_eq!(std::fs::read(project.path().join("target/os.bin")).expect("put in place"), bytes);
    let elf_size = std::fs::metadata(kernel_in_store(&project)).expect("the ELF").len();
    assert!((bytes.len() as u64) < elf_size, "stripped: {} bytes against {elf_size}", bytes.len());
    let sixth = project.test(&["-q", "--accel", "tcg"]);
    assert_eq!((sixth.store.built, sixth.get("flat", Arch::Riscv64).map(|r| r.status)), (0, Some(CaseStatus::Passed)));
}
