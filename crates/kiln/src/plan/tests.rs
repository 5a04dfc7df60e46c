//! Plans made from small Kiln.toml files: what each command would build, fetch and boot.

use std::path::Path;

use kiln_types::Arch;

use super::*;
use crate::config::{Compression, Source};

/// A project directory with a cargo package `k` in `kernel/`, two pinned local files and a
/// Kiln.toml, resolved.
fn config(kiln_toml: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("kernel")).expect("mkdir");
    std::fs::write(root.join("kernel/Cargo.toml"), "[package]\nname = \"k\"\n").expect("write");
    for file in ["vmlinuz-x86_64", "vmlinuz-aarch64", "busybox-x86_64", "busybox-aarch64", "motd"] {
        std::fs::write(root.join(file), file).expect("write");
    }
    let file = root.join("Kiln.toml");
    std::fs::write(&file, kiln_toml).expect("write");
    let config = Config::parse(Source { path: Path::new("Kiln.toml").into(), text: kiln_toml.to_owned() }, &file)
        .expect("a valid Kiln.toml");
    (dir, config)
}

const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn linux_project() -> String {
    let mut text = String::from(
        r#"
[artifact.hello]
package = "k"
path = "kernel"
arches = ["x86_64", "aarch64"]

[artifact.tests]
package = "k"
path = "kernel"
kind = "tests"
arches = ["riscv64"]

[kernel.debian]
image = "vmlinuz-{arch}"
cmdline = ["loglevel=7"]

[rootfs.base]
format = "ext4"
layers = [{ busybox = "busybox-{arch}" }, { artifact = "hello", dest = "/bin/hello" }, { file = "motd", dest = "/etc/motd" }]

[rootfs.small]
layers = [{ busybox = "busybox-{arch}" }]

[case.smoke]
artifact = "tests"

[case.linux]
kernel = "debian"
rootfs = "base"
command = "hello"

[run]
kernel = "debian"
rootfs = "small"
snapshot = true
"#,
    );
    for name in ["vmlinuz-x86_64", "vmlinuz-aarch64", "busybox-x86_64", "busybox-aarch64"] {
        text.push_str(&format!("\n[fetch.{name}]\npath = \"{name}\"\nsha256 = \"{HASH}\"\n"));
    }
    text
}

#[test]
fn a_test_plan_carries_everything_its_boots_need() {
    let (_dir, config) = config(&linux_project());
    let plan = Plan::for_test(&config, &Selection::default()).expect("plan");

    // The boots: the test artifact's case on riscv64, the Linux case on both of its arches.
    let labels: Vec<String> = plan.runs.iter().map(CaseRun::label).collect();
    assert_eq!(labels, ["linux/linux-x86_64", "linux/linux-aarch64", "smoke/riscv64"]);
    let smoke = &plan.runs[2];
    let Guest::Artifact { build, tests: Some(tests) } = &smoke.guest else { panic!("a test artifact's case") };
    assert_eq!(*build, BuildKey { artifact: "tests".into(), arch: Arch::Riscv64 });
    assert!(tests.tables.is_empty() && tests.only.is_none(), "every test binary, with the case's rules");
    assert!(smoke.line.is_some(), "the case's line is known for annotations");
    let Guest::Linux { guest, command, snapshot } = &plan.runs[0].guest else { panic!("a Linux guest") };
    assert_eq!((command.as_str(), *snapshot), ("hello", false));
    assert_eq!(guest.format, RootfsFormat::Ext4);
    assert_eq!(guest.cmdline, ["loglevel=7"]);
    assert!(plan.runs[0].rules.judge.guest_reports_status);

    // The rootfs's artifact layer makes a build; the test artifact its own.
    let builds: Vec<String> = plan.builds.iter().map(|step| step.key.to_string()).collect();
    assert_eq!(builds, ["hello (x86_64)", "hello (aarch64)", "tests (riscv64)"]);

    // Every fetch once, with `{arch}` resolved; the images name them by their resolved names.
    let fetches: Vec<&str> = plan.fetches.iter().map(|step| step.fetch.name.as_str()).collect();
    assert_eq!(fetches, ["busybox-aarch64", "busybox-x86_64", "vmlinuz-aarch64", "vmlinuz-x86_64"]);
    assert!(plan.fetches[0].declared_at.contains("Kiln.toml:"), "{}", plan.fetches[0].declared_at);
    let rootfs = plan.image_step(&ImageKey::rootfs("base", Arch::X86_64)).expect("the x86_64 rootfs");
    let ImageRecipe::Rootfs(recipe) = &rootfs.recipe else { panic!("a rootfs recipe") };
    assert_eq!(recipe.layers[0].source, LayerInput::Busybox("busybox-x86_64".into()));
    assert_eq!(
        recipe.layers[1].source,
        LayerInput::Artifact(BuildKey { artifact: "hello".into(), arch: Arch::X86_64 })
    );
    assert!(matches!(&recipe.layers[2].source, LayerInput::File(path) if path.ends_with("motd")));
    let kernel = plan.image_step(&ImageKey::kernel("debian", Arch::Aarch64)).expect("the aarch64 kernel");
    assert_eq!(
        kernel.recipe,
        ImageRecipe::Kernel(KernelRecipe { from: KernelFrom::Image, fetch: "vmlinuz-aarch64".into(), modules: vec![] })
    );
}

#[test]
fn selections_narrow_by_case_and_arch_and_unknown_cases_are_named() {
    let (_dir, config) = config(&linux_project());
    let selection = Selection { arches: vec![Arch::Aarch64], names: vec!["linux".into()], ..Selection::default() };
    let plan = Plan::for_test(&config, &selection).expect("plan");
    assert_eq!(plan.runs.len(), 1);
    assert!(plan.builds.iter().all(|step| step.key.arch == Arch::Aarch64));
    assert!(plan.images.iter().all(|step| step.key.arch == Arch::Aarch64));

    let err = Plan::for_test(&config, &Selection { names: vec!["linx".into()], ..Selection::default() })
        .expect_err("no such case");
    assert_eq!(err.help.as_deref(), Some("a case with a similar name exists: `linux`"));
}

#[test]
fn build_and_image_plans_hold_only_what_they_name() {
    let (_dir, config) = config(&linux_project());
    let builds = Plan::for_build(&config, &Selection { names: vec!["tests".into()], ..Selection::default() });
    assert_eq!(builds.builds.len(), 1);
    assert!(builds.images.is_empty() && builds.fetches.is_empty() && builds.runs.is_empty());

    let rootfs = Plan::for_images(&config, &Selection { names: vec!["small".into()], ..Selection::default() }, None);
    let images: Vec<String> = rootfs.images.iter().map(|step| step.key.store_name()).collect();
    assert_eq!(images, ["rootfs-small-x86_64", "rootfs-small-aarch64"]);
    assert!(rootfs.builds.is_empty(), "the small rootfs has no artifact layer");

    let everything = Plan::everything(&config);
    assert_eq!(everything.builds.len(), 3);
    assert_eq!(everything.images.len(), 6);
}

#[test]
fn a_run_plan_picks_its_images_machine_and_warmth() {
    let (_dir, config) = config(&linux_project());
    let run = RunPlan::new(&config, Arch::X86_64, None, None, WarmthAsked::default(), None).expect("run plan");
    assert_eq!(run.guest.kernel, ImageKey::kernel("debian", Arch::X86_64));
    assert_eq!(run.guest.rootfs, ImageKey::rootfs("small", Arch::X86_64));
    assert_eq!(run.guest.format, RootfsFormat::Initramfs(Compression::Gzip));
    assert_eq!(run.machine.name, "linux-x86_64");
    assert_eq!(run.settings.warmth, Warmth::Snapshot, "`[run] snapshot = true`");
    let images: Vec<String> = run.plan.images.iter().map(|step| step.key.store_name()).collect();
    assert_eq!(images, ["kernel-debian-x86_64", "rootfs-small-x86_64"]);

    let pooled = RunPlan::new(&config, Arch::X86_64, None, None, WarmthAsked { snapshot: false, pool: Some(2) }, None)
        .expect("run plan");
    assert_eq!(pooled.settings.warmth, Warmth::Pool(2));

    // A disk rootfs cannot be snapshotted: the flag's error says what to do.
    let err = RunPlan::new(&config, Arch::X86_64, None, Some("base"), WarmthAsked::default(), None)
        .expect_err("`[run] snapshot` with a disk rootfs");
    let err = err.downcast::<ConfigError>().expect("a Kiln.toml error");
    assert_eq!(err.key.as_deref(), Some("run.snapshot"));
    let err = RunPlan::new(&config, Arch::Riscv64, None, None, WarmthAsked::default(), None)
        .expect_err("no kernel for riscv64");
    assert!(err.to_string().contains("kernel `debian` is not built for riscv64"), "{err}");
}
