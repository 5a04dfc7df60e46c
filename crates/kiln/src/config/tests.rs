//! Tests of Kiln.toml reading and its error messages.

use std::time::Duration;

use kiln_types::Arch;

use super::*;

fn project(kiln_toml: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("kernel")).expect("mkdir");
    std::fs::write(dir.path().join("kernel/Cargo.toml"), "[package]\nname = \"k\"\n").expect("write");
    let file = dir.path().join(FILE_NAME);
    std::fs::write(&file, kiln_toml).expect("write");
    let result = Config::parse(Source { path: FILE_NAME.into(), text: kiln_toml.to_owned() }, &file);
    (dir, result)
}

const VALID: &str = r#"
[artifact.hello]
package = "k"
path = "kernel"

[case.smoke]
artifact = "hello"
success = "all checks passed"
timeout = "20s"
"#;

#[test]
fn valid_file_resolves_with_defaults() {
    let (_dir, config) = project(VALID);
    let config = config.expect("valid");
    let artifact = &config.artifacts["hello"];
    assert_eq!(artifact.arches, Arch::ALL);
    assert_eq!(artifact.targets[&Arch::Riscv64], "riscv64gc-unknown-none-elf");
    assert_eq!(artifact.profile, "release");
    let case = &config.cases["smoke"];
    assert_eq!(case.machines, ["x86_64", "aarch64", "riscv64"]);
    assert_eq!(case.timeout, Duration::from_secs(20));
    assert_eq!(case.expect, Expect::Pass);
}

#[test]
fn typo_in_a_key_names_line_column_and_the_closest_key() {
    let (_dir, err) = project(&VALID.replace("success =", "sucess ="));
    let err = err.expect_err("typo");
    assert_eq!(err.position, Some((8, 1)));
    assert_eq!(err.key.as_deref(), Some("case.smoke.sucess"));
    assert_eq!(err.help.as_deref(), Some("a key with a similar name exists: `success`"));
    assert!(err.to_string().starts_with("unknown key `sucess` in `[case.smoke]` (Kiln.toml:8:1"), "{err}");
}

#[test]
fn typo_at_top_level_is_caught() {
    let (_dir, err) = project(&format!("kiln-verison = \"0.1\"\n{VALID}"));
    let err = err.expect_err("typo");
    assert_eq!(err.position, Some((1, 1)));
    assert_eq!(err.help.as_deref(), Some("a key with a similar name exists: `kiln-version`"));
}

#[test]
fn unknown_artifact_suggests_the_near_one() {
    let (_dir, err) = project(&VALID.replace("artifact = \"hello\"", "artifact = \"helo\""));
    let err = err.expect_err("unknown artifact");
    assert_eq!(err.key.as_deref(), Some("case.smoke.artifact"));
    assert_eq!(err.help.as_deref(), Some("an artifact with a similar name exists: `hello`"));
}

#[test]
fn unknown_machine_suggests_the_near_one() {
    let text = format!("{VALID}machines = [\"aarch64-virtt\"]\n[machine.aarch64-virt]\narch = \"aarch64\"\n");
    let (_dir, err) = project(&text);
    let err = err.expect_err("unknown machine");
    assert_eq!(err.message, "unknown machine `aarch64-virtt` in case `smoke`");
    assert_eq!(err.help.as_deref(), Some("a machine with a similar name exists: `aarch64-virt`"));
}

#[test]
fn bad_values_name_their_key() {
    let (_dir, err) = project(&VALID.replace("\"20s\"", "\"20 parsecs\""));
    assert_eq!(err.expect_err("duration").key.as_deref(), Some("case.smoke.timeout"));
    let (_dir, err) = project(&VALID.replace("\"all checks passed\"", "\"(unclosed\""));
    assert_eq!(err.expect_err("regex").key.as_deref(), Some("case.smoke.success"));
    let (_dir, err) = project(&VALID.replace("path = \"kernel\"", "path = \"nowhere\""));
    assert_eq!(err.expect_err("path").key.as_deref(), Some("artifact.hello.path"));
}

#[test]
fn wrong_type_names_the_key() {
    let (_dir, err) = project(&VALID.replace("timeout = \"20s\"", "timeout = 20"));
    let err = err.expect_err("type");
    assert_eq!(err.key.as_deref(), Some("case.smoke.timeout"));
    assert_eq!(err.position.map(|p| p.0), Some(9));
}

#[test]
fn newer_kiln_version_says_to_update() {
    let (_dir, err) = project(&format!("kiln-version = \"0.99\"\n{VALID}"));
    let err = err.expect_err("version");
    assert!(err.message.contains("asks for kiln 0.99"), "{err}");
    assert!(err.help.as_deref().is_some_and(|h| h.starts_with("update kiln")), "{err}");
    let (_dir, ok) = project(&format!("kiln-version = \"0.1\"\n{VALID}"));
    ok.expect("0.1 is this kiln");
}

#[test]
fn machine_overrides_apply_on_the_builtin_profile() {
    let text = format!("{VALID}[machine.aarch64]\ncpu = \"max\"\nmemory = \"1G\"\n");
    let (_dir, config) = project(&text);
    let machine = &config.expect("valid").machines["aarch64"];
    assert_eq!(machine.cpu.as_deref(), Some("max"));
    assert_eq!(machine.memory_mib, Some(1024));
    assert_eq!(machine.machine_type, "virt");
}

#[test]
fn a_builtin_linux_profile_is_overridden_key_by_key_without_arch() {
    let text = format!("{VALID}[machine.linux-aarch64]\nsmp = 4\n\n[machine.linux-x86_64]\nmemory = \"2G\"\n");
    let (_dir, config) = project(&text);
    let config = config.expect("an override of a built-in Linux profile needs no `arch`");
    let aarch64 = &config.machines["linux-aarch64"];
    let builtin = Machine::linux_default_for(Arch::Aarch64);
    assert_eq!(aarch64.arch, Arch::Aarch64);
    assert_eq!(aarch64.smp, Some(4));
    assert_eq!(
        (&aarch64.machine_type, &aarch64.cpu, aarch64.memory_mib),
        (&builtin.machine_type, &builtin.cpu, builtin.memory_mib)
    );
    assert!(aarch64.devices.is_empty(), "the Linux profile's base, not the bare-metal one's semihosting");
    assert_eq!(config.size_keys["linux-aarch64"], SizeKeys { smp: true, memory: false });
    assert_eq!(config.machines["linux-x86_64"].memory_mib, Some(2048));
    assert_eq!(config.size_keys["linux-x86_64"], SizeKeys { smp: false, memory: true });

    let wrong = format!("{VALID}[machine.linux-aarch64]\narch = \"x86_64\"\n");
    let err = project(&wrong).1.expect_err("a built-in profile of another arch");
    assert!(err.message.contains("is the built-in aarch64 profile"), "{err}");
    let unnamed = project(&format!("{VALID}[machine.linux-sparc]\nsmp = 2\n")).1.expect_err("no such arch");
    assert!(unnamed.message.contains("does not say its architecture"), "{unnamed}");
}

#[test]
fn another_board_sets_every_size_key() {
    let (_dir, config) = project(&format!("{VALID}[machine.linux-aarch64]\nmachine = \"sbsa-ref\"\n"));
    assert_eq!(config.expect("valid").size_keys["linux-aarch64"], SizeKeys { smp: true, memory: true });
}

#[test]
fn config_is_chosen_from_the_command_line_then_kiln_config_then_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    let crate_dir = dir.path().join("elsewhere/crate");
    std::fs::create_dir_all(project.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&crate_dir).expect("mkdir");
    std::fs::write(project.join(FILE_NAME), VALID).expect("write");
    let other = dir.path().join("other.toml");
    std::fs::write(&other, VALID).expect("write");
    let file = |path: &std::path::Path| ConfigChoice::File(path.to_owned());
    let env = Some(std::ffi::OsStr::new("../../other.toml"));

    // --config wins over KILN_CONFIG and the directory.
    let chosen = ConfigChoice::choose(Some(&other), env, &project.join("sub"), false).expect("given");
    assert_eq!(chosen, file(&other));
    // KILN_CONFIG (relative to the working directory) wins over a Kiln.toml found above.
    let chosen = ConfigChoice::choose(None, env, &project.join("sub"), false).expect("from the environment");
    assert_eq!(chosen, file(&project.join("sub/../../other.toml")));
    // An empty KILN_CONFIG is unset; then the nearest Kiln.toml.
    let chosen = ConfigChoice::choose(None, Some(std::ffi::OsStr::new("")), &project.join("sub"), true).expect("found");
    assert_eq!(chosen, file(&project.join(FILE_NAME)));
    // Nothing anywhere: the built-in runner where allowed, else the usual error.
    assert_eq!(ConfigChoice::choose(None, None, &crate_dir, true).expect("built-in"), ConfigChoice::BuiltinRunner);
    let err = ConfigChoice::choose(None, None, &crate_dir, false).expect_err("no Kiln.toml");
    assert!(err.message.contains("no Kiln.toml in this directory or any parent"), "{err}");
    // A KILN_CONFIG naming nothing is an error that says so, even where the built-in could run.
    let missing = Some(std::ffi::OsStr::new("/nonexistent/Kiln.toml"));
    let err = ConfigChoice::choose(None, missing, &crate_dir, true).expect_err("missing file");
    assert!(err.message.contains("KILN_CONFIG names `/nonexistent/Kiln.toml`"), "{err}");
}

#[test]
fn a_layer_destination_with_dot_dot_is_a_config_error() {
    let text = format!("{VALID}[rootfs.evil]\nlayers = [\n  {{ text = \"x\", dest = \"/../etc/passwd\" }},\n]\n");
    let (_dir, config) = project(&text);
    let err = config.expect_err("dest with ..");
    assert!(err.message.contains("climbs out with `..`"), "{err}");
    assert!(err.to_string().contains("/../etc/passwd"), "the error shows the line: {err}");
}

#[test]
fn zero_cpus_and_zero_memory_are_refused_at_their_line() {
    for (line, said) in
        [("smp = 0", "at least one CPU"), ("memory = 0", "0 MiB is not a size"), ("memory = \"0G\"", "0 MiB")]
    {
        let text = format!("{VALID}[machine.aarch64]\n{line}\n");
        let (_dir, config) = project(&text);
        let err = config.expect_err(line);
        assert!(err.message.contains(said), "{line}: {err}");
        assert!(err.to_string().contains(&format!("| {line}")), "{line}: the error shows the line: {err}");
    }
}

#[test]
fn bootloader_disk_images_are_x86_64_and_take_a_toolchain_name() {
    let artifact = |lines: &str| format!("[artifact.os]\npackage = \"k\"\npath = \"kernel\"\n{lines}\n");
    let (_dir, config) =
        project(&artifact("arches = [\"x86_64\"]\nimage = \"uefi\"\nbootloader-toolchain = \"nightly-2026-09-01\""));
    let config = config.expect("valid");
    assert_eq!(config.artifacts["os"].image, ImageFormat::Uefi);
    assert_eq!(config.artifacts["os"].bootloader_toolchain.as_deref(), Some("nightly-2026-09-01"));
    for (lines, key, said) in [
        ("image = \"bios\"", "artifact.os.arches", "makes x86_64 disk images, not aarch64 ones"),
        ("arches = [\"riscv64\"]\nimage = \"uefi\"", "artifact.os.arches", "not riscv64 ones"),
        (
            "arches = [\"x86_64\"]\nbootloader-toolchain = \"nightly\"",
            "artifact.os.bootloader-toolchain",
            "disk images",
        ),
        (
            "arches = [\"x86_64\"]\nimage = \"bios\"\nbootloader-toolchain = \"../nightly\"",
            "artifact.os.bootloader-toolchain",
            "not a rustup toolchain name",
        ),
    ] {
        let (_dir, config) = project(&artifact(lines));
        let err = config.expect_err(lines);
        assert_eq!(err.key.as_deref(), Some(key), "{lines}: {err}");
        assert!(err.message.contains(said), "{lines}: {err}");
    }
}

#[test]
fn reference_documents_every_key() {
    let reference = include_str!("../../../../docs/kiln-toml.md");
    let tables: [(&str, &[&str]); 12] = [
        ("top level", fields::field_names::<raw::RawManifest>()),
        ("[store]", fields::field_names::<raw::RawStore>()),
        ("[artifact.NAME]", fields::field_names::<raw::RawArtifact>()),
        ("[machine.NAME]", fields::field_names::<raw::RawMachine>()),
        ("[case.NAME]", fields::field_names::<raw::RawCase>()),
        ("[case.NAME.test.TEST]", fields::field_names::<raw::RawTestSettings>()),
        ("[fetch.NAME]", fields::field_names::<raw::RawFetch>()),
        ("[kernel.NAME]", fields::field_names::<raw::RawKernel>()),
        ("[rootfs.NAME]", fields::field_names::<raw::RawRootfs>()),
        ("rootfs layers", fields::field_names::<raw::RawLayer>()),
        ("[run]", fields::field_names::<raw::RawRun>()),
        ("[step.NAME]", fields::field_names::<raw::RawStep>()),
    ];
    for (table, keys) in tables {
        assert!(!keys.is_empty(), "{table}: no keys read");
        for key in keys {
            assert!(reference.contains(&format!("| `{key}` |")), "docs/kiln-toml.md lacks `{key}` of {table}");
        }
    }
}

#[test]
fn every_unknown_key_is_reported() {
    let (_dir, err) = project(&VALID.replace("success =", "sucess =").replace("timeout =", "timout ="));
    let err = err.expect_err("typos");
    assert_eq!(err.key.as_deref(), Some("case.smoke.sucess"));
    assert_eq!(err.note.as_deref(), Some("also unknown: `case.smoke.timout` (line 9)"));
}

#[test]
fn a_misspelled_required_key_points_at_the_misspelling() {
    let (_dir, err) = project(&VALID.replace("package = \"k\"", "pakage = \"k\""));
    let err = err.expect_err("typo");
    assert_eq!(err.key.as_deref(), Some("artifact.hello.pakage"));
    assert_eq!(err.help.as_deref(), Some("a key with a similar name exists: `package`"));
    assert!(err.note.as_deref().is_some_and(|n| n.contains("missing field `package`")), "{err}");
}

#[test]
#[cfg(feature = "remote")]
fn remotes_resolve_and_bad_ones_name_their_key() {
    let key = kiln_store::remote::SecretKey::generate("ci-1").expect("key").public().to_string();
    let store = format!(
        "\n[store]\nremotes = [\"https://cache.example/kiln\", {{ url = \"s3://b/p\", push = true, endpoint = \"http://127.0.0.1:9000\", timeout = \"5s\" }}]\ntrusted-keys = [\"{key}\"]\n"
    );
    let (_dir, config) = project(&format!("{VALID}{store}"));
    let config = config.expect("valid remotes");
    assert_eq!(config.remotes.len(), 2);
    assert_eq!(config.remotes[0].url, "https://cache.example/kiln");
    assert!(!config.remotes[0].push && config.remotes[1].push);
    assert_eq!(config.remotes[1].endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(config.remotes[1].timeout, Duration::from_secs(5));
    assert_eq!(config.trusted_keys[0].to_string(), key);

    let (_dir, err) = project(&format!("{VALID}{}", store.replace("https://cache", "ftp://cache")));
    let err = err.expect_err("scheme");
    assert_eq!(err.key.as_deref(), Some("store.remotes[0]"));
    assert!(err.message.contains("`ftp://cache.example/kiln` is not a remote URL"), "{err}");
    let (_dir, err) = project(&format!("{VALID}{}", store.replace("\"5s\"", "\"5 parsecs\"")));
    assert_eq!(err.expect_err("timeout").key.as_deref(), Some("store.remotes[1].timeout"));
    let (_dir, err) = project(&format!("{VALID}{}", store.replace(&key, "ci-1:c2hvcnQ=")));
    let err = err.expect_err("key");
    assert_eq!(err.key.as_deref(), Some("store.trusted-keys[0]"));
    assert!(err.message.contains("not base64 of 32 bytes"), "{err}");
    let (_dir, err) = project(&format!("{VALID}{}", store.replace("push = true", "pushh = true")));
    assert!(err.expect_err("unknown key").to_string().contains("pushh"));
}

/// A `kind = "tests"` artifact and its case, for per-test tables.
const TESTS: &str = r#"
[artifact.tinyos]
package = "k"
path = "kernel"
kind = "tests"

[case.tests]
artifact = "tinyos"
"#;

#[test]
fn per_test_tables_are_checked_against_their_case() {
    let (_dir, config) =
        project(&format!("{TESTS}[case.tests.test.idle]\nsuccess = \"idle\"\nstop-on-success = true\n"));
    let case = &config.expect("valid").cases["tests"];
    assert_eq!(case.tests.len(), 1);
    assert_eq!((case.tests[0].name.as_str(), case.tests[0].stop_on_success), ("idle", Some(true)));

    let (_dir, err) = project(&format!("{TESTS}[case.tests.test.idle]\nstop-on-success = true\n"));
    let err = err.expect_err("nothing to stop on");
    assert_eq!(err.key.as_deref(), Some("case.tests.test.idle.stop-on-success"));
    assert_eq!(err.message, "test `idle` stops on success but has no `success` pattern");

    let (_dir, err) = project(&format!("{TESTS}[case.tests.test.echo]\ninput-after = \"> \"\n"));
    assert_eq!(err.expect_err("no input").key.as_deref(), Some("case.tests.test.echo.input-after"));

    let (_dir, err) = project(&format!("{TESTS}[case.tests.test.idle]\nsucess = \"idle\"\n"));
    let err = err.expect_err("typo");
    assert!(err.message.contains("unknown key `sucess`"), "{}", err.message);
    assert_eq!(err.help.as_deref(), Some("a key with a similar name exists: `success`"));

    let (_dir, err) = project(&format!("{VALID}[case.smoke.test.idle]\nexpect = \"fail\"\n"));
    let err = err.expect_err("not a tests artifact");
    assert_eq!(err.key.as_deref(), Some("case.smoke.test.idle"));
    assert!(err.message.contains("case `smoke` boots no test binaries"), "{}", err.message);
}

/// An artifact that needs a linker-script copy, as the rCore-Tutorial kernel's Makefile makes it.
const WITH_STEP: &str = r#"
[artifact.hello]
package = "k"
path = "kernel"
steps = ["linker-script"]

[step.linker-script]
command = ["cp", "kernel/linker-qemu.ld", "kernel/linker.ld"]
inputs = ["kernel/linker-qemu.ld"]
outputs = ["kernel/linker.ld"]
env = { BOARD = "qemu" }
"#;

fn project_with_step(kiln_toml: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("kernel")).expect("mkdir");
    std::fs::write(dir.path().join("kernel/Cargo.toml"), "[package]\nname = \"k\"\n").expect("write");
    std::fs::write(dir.path().join("kernel/linker-qemu.ld"), "BASE_ADDRESS = 0x80200000;\n").expect("write");
    let file = dir.path().join(FILE_NAME);
    let result = Config::parse(Source { path: FILE_NAME.into(), text: kiln_toml.to_owned() }, &file);
    (dir, result)
}

#[test]
fn a_step_resolves_and_its_artifact_carries_it() {
    let (_dir, config) = project_with_step(WITH_STEP);
    let config = config.expect("valid");
    let step = &config.steps["linker-script"];
    assert_eq!(
        step.command,
        StepCommand::Argv(vec!["cp".into(), "kernel/linker-qemu.ld".into(), "kernel/linker.ld".into()])
    );
    assert_eq!(step.outputs, [std::path::PathBuf::from("kernel/linker.ld")]);
    assert_eq!(step.env["BOARD"], "qemu");
    assert_eq!(step.declared_at, "Kiln.toml:7");
    assert_eq!(config.artifacts["hello"].steps, std::slice::from_ref(step));
}

#[test]
fn steps_run_after_the_steps_they_name() {
    let text = WITH_STEP.replace("steps = [\"linker-script\"]", "steps = [\"image\"]")
        + "[step.image]\nscript = \"cat kernel/linker.ld > kernel/image\"\ninputs = [\"kernel/linker.ld\"]\noutputs = [\"kernel/image\"]\nsteps = [\"linker-script\"]\n";
    let (_dir, config) = project_with_step(&text);
    let config = config.expect("an input another step makes need not exist yet");
    let order: Vec<&str> = config.artifacts["hello"].steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["linker-script", "image"]);
}

#[test]
fn an_unknown_step_names_the_key_line_and_the_closest_step() {
    let (_dir, err) =
        project_with_step(&WITH_STEP.replace("steps = [\"linker-script\"]", "steps = [\"linker-scrip\"]"));
    let err = err.expect_err("unknown step");
    assert_eq!(err.key.as_deref(), Some("artifact.hello.steps"));
    assert_eq!(err.position, Some((5, 10)));
    assert_eq!(err.message, "no step named `linker-scrip`");
    assert_eq!(err.help.as_deref(), Some("a step with a similar name exists: `linker-script`"));
}

#[test]
fn a_circle_of_steps_is_named() {
    let text = format!(
        "{WITH_STEP}steps = [\"other\"]\n[step.other]\nscript = \"true\"\noutputs = [\"o\"]\nsteps = [\"linker-script\"]\n"
    );
    let (_dir, err) = project_with_step(&text);
    let err = err.expect_err("a circle");
    assert_eq!(err.message, "the steps form a circle: linker-script -> other -> linker-script");
    assert_eq!(err.key.as_deref(), Some("step.linker-script.steps"));
    assert_eq!(err.position.map(|p| p.0), Some(12));
}

#[test]
fn a_missing_input_is_an_error_at_its_line() {
    let (_dir, err) = project_with_step(
        &WITH_STEP.replace("inputs = [\"kernel/linker-qemu.ld\"]", "inputs = [\"kernel/linker-k210.ld\"]"),
    );
    let err = err.expect_err("missing input");
    assert_eq!(err.key.as_deref(), Some("step.linker-script.inputs"));
    assert_eq!(err.position, Some((9, 11)));
    assert!(err.message.starts_with("input `kernel/linker-k210.ld` does not exist"), "{err}");
    let (_dir, err) =
        project_with_step(&WITH_STEP.replace("inputs = [\"kernel/linker-qemu.ld\"]", "inputs = [\"kernel/*.lds\"]"));
    assert_eq!(err.expect_err("an empty glob").message, "input `kernel/*.lds` matches no file");
}

#[test]
fn outputs_must_stay_inside_the_project() {
    for output in ["../linker.ld", "/tmp/linker.ld", "kernel/../../x"] {
        let text = WITH_STEP.replace("outputs = [\"kernel/linker.ld\"]", &format!("outputs = [\"{output}\"]"));
        let (_dir, err) = project_with_step(&text);
        let err = err.expect_err("outside");
        assert_eq!(err.key.as_deref(), Some("step.linker-script.outputs"), "{output}");
        assert_eq!(err.position.map(|p| p.0), Some(10), "{output}");
        assert_eq!(err.message, format!("output `{output}` is not a path inside the project"));
    }
    let (_dir, err) = project_with_step(&WITH_STEP.replace("outputs = [\"kernel/linker.ld\"]\n", ""));
    assert_eq!(err.expect_err("no outputs").message, "step `linker-script` declares no `outputs`");
}

#[test]
fn a_step_has_a_command_or_a_script() {
    let (_dir, err) = project_with_step(
        &WITH_STEP.replace("command = [\"cp\", \"kernel/linker-qemu.ld\", \"kernel/linker.ld\"]\n", ""),
    );
    let err = err.expect_err("no command");
    assert_eq!(err.message, "step `linker-script` has no `command` or `script`");
    assert_eq!(err.position.map(|p| p.0), Some(7));
    let (_dir, err) = project_with_step(&WITH_STEP.replace("outputs =", "script = \"cp a b\"\noutputs ="));
    assert_eq!(err.expect_err("both").message, "a step has either `command` or `script`, not both");
    let (_dir, err) = project_with_step(&WITH_STEP.replace("command = [\"cp\",", "comand = [\"cp\","));
    let err = err.expect_err("typo");
    assert_eq!(err.key.as_deref(), Some("step.linker-script.comand"));
    assert_eq!(err.help.as_deref(), Some("a key with a similar name exists: `command`"));
}

/// [`WITH_STEP`] and a second artifact booted from what a step makes of its binary.
fn with_image_step() -> String {
    format!(
        "{WITH_STEP}\n[artifact.bin]\npackage = \"k\"\npath = \"kernel\"\nimage-step = \"flat\"\n\n\
         [step.flat]\ncommand = [\"objcopy\", \"-O\", \"binary\", \"{{artifact:bin}}\", \"kernel.bin\"]\n\
         inputs = [\"artifact:bin\"]\noutputs = [\"kernel.bin\"]\nsteps = [\"linker-script\"]\n"
    )
}

#[test]
fn an_image_step_reads_its_artifact_and_its_steps_run_before_the_build() {
    let (_dir, config) = project_with_step(&with_image_step());
    let config = config.expect("valid");
    let artifact = &config.artifacts["bin"];
    let step = artifact.image_step.as_ref().expect("the image step");
    assert_eq!(step.artifacts, ["bin"]);
    assert!(step.inputs.is_empty(), "`artifact:` inputs are not paths: {:?}", step.inputs);
    let before: Vec<&str> = artifact.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(before, ["linker-script"], "the steps the image step names run before the build");
}

#[test]
fn artifact_inputs_are_checked() {
    let (_dir, err) =
        project_with_step(&with_image_step().replace("inputs = [\"artifact:bin\"]", "inputs = [\"artifact:bim\"]"));
    let err = err.expect_err("unknown artifact");
    assert_eq!(err.message, "no artifact named `bim`");
    assert_eq!(err.key.as_deref(), Some("step.flat.inputs"));
    assert_eq!(err.help.as_deref(), Some("an artifact with a similar name exists: `bin`"));

    let (_dir, err) =
        project_with_step(&with_image_step().replace("inputs = [\"artifact:bin\"]", "inputs = [\"artifact:hello\"]"));
    let err = err.expect_err("another artifact");
    assert_eq!(err.key.as_deref(), Some("artifact.bin.image-step"));
    assert_eq!(err.message, "step `flat` does not read this artifact's binary alone");

    let before_build = with_image_step().replace("steps = [\"linker-script\"]\n\n[step", "steps = [\"flat\"]\n\n[step");
    let (_dir, err) = project_with_step(&before_build);
    let err = err.expect_err("a step that needs a build, before the build");
    assert_eq!(err.key.as_deref(), Some("artifact.hello.steps"));
    assert_eq!(err.message, "step `flat` reads a built artifact (`artifact:bin`), so it cannot run before a build");
}

#[test]
fn a_run_pool_is_a_number_of_guests_or_auto() {
    let (_dir, config) = project(&format!("{VALID}\n[run]\npool = \"auto\"\n"));
    assert_eq!(config.expect("auto").run.pool, kiln_types::PoolSize::Auto);
    let (_dir, config) = project(&format!("{VALID}\n[run]\npool = 3\n"));
    assert_eq!(config.expect("a number").run.pool, kiln_types::PoolSize::Guests(3));
    let (_dir, err) = project(&format!("{VALID}\n[run]\npool = \"two\"\n"));
    let err = err.expect_err("a word");
    assert_eq!(err.key.as_deref(), Some("run.pool"));
    assert!(err.to_string().contains("`two` is not a pool size"), "{err}");
}
