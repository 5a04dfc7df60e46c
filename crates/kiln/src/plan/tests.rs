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
fn partitions_split_the_case_runs_and_each_shard_plans_only_its_own_builds() {
    let (_dir, config) = config(&linux_project());
    let all = Plan::for_test(&config, &Selection::default()).expect("plan");
    let mut labels: Vec<String> = all.runs.iter().map(CaseRun::label).collect();
    labels.sort();
    assert!(labels.len() >= 3, "{labels:?}");
    for kind in ["count", "hash"] {
        let mut seen = Vec::new();
        for shard in 1..=2 {
            let partition = format!("{kind}:{shard}/2").parse().expect("partition");
            let plan = Plan::for_test(&config, &Selection { partition: Some(partition), ..Selection::default() })
                .expect("plan");
            let needed: BTreeSet<&BuildKey> = plan
                .runs
                .iter()
                .filter_map(|run| match &run.guest {
                    Guest::Artifact { build, .. } => Some(build),
                    Guest::Linux { .. } => None,
                })
                .collect();
            for step in &plan.builds {
                let in_rootfs = plan.images.iter().any(|image| match &image.recipe {
                    ImageRecipe::Rootfs(rootfs) => {
                        rootfs.layers.iter().any(|layer| layer.source == LayerInput::Artifact(step.key.clone()))
                    }
                    ImageRecipe::Kernel(_) => false,
                });
                assert!(needed.contains(&step.key) || in_rootfs, "{kind}:{shard}/2 builds {:?} for nothing", step.key);
            }
            seen.extend(plan.runs.iter().map(CaseRun::label));
        }
        seen.sort();
        assert_eq!(seen, labels, "the {kind} shards hold every run once");
    }
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

/// A 2-CPU host's guest.
const SIZE: GuestSize = GuestSize { cpus: 2, memory_mib: 1024 };

#[test]
fn a_run_plan_picks_its_images_machine_and_warmth() {
    let (_dir, config) = config(&linux_project());
    let run = RunPlan::new(&config, Arch::X86_64, None, None, WarmthAsked::default(), None, SIZE).expect("run plan");
    assert_eq!(run.guest.kernel, ImageKey::kernel("debian", Arch::X86_64));
    assert_eq!(run.guest.rootfs, ImageKey::rootfs("small", Arch::X86_64));
    assert_eq!(run.guest.format, RootfsFormat::Initramfs(Compression::Gzip));
    assert_eq!(run.machine.name, "linux-x86_64");
    assert_eq!((run.machine.smp, run.machine.memory_mib), (Some(2), Some(1024)), "sized for the host");
    assert_eq!(run.settings.warmth, Warmth::Snapshot, "`[run] snapshot = true`");
    let images: Vec<String> = run.plan.images.iter().map(|step| step.key.store_name()).collect();
    assert_eq!(images, ["kernel-debian-x86_64", "rootfs-small-x86_64"]);

    let pooled = RunPlan::new(
        &config,
        Arch::X86_64,
        None,
        None,
        WarmthAsked { snapshot: false, pool: Some(kiln_types::PoolSize::Guests(2)), jobs: 1 },
        None,
        SIZE,
    )
    .expect("run plan");
    assert_eq!(pooled.settings.warmth, Warmth::Pool(2));

    // A disk rootfs cannot be snapshotted: the flag's error says what to do.
    let err = RunPlan::new(&config, Arch::X86_64, None, Some("base"), WarmthAsked::default(), None, SIZE)
        .expect_err("`[run] snapshot` with a disk rootfs");
    let err = err.downcast::<ConfigError>().expect("a Kiln.toml error");
    assert_eq!(err.key.as_deref(), Some("run.snapshot"));
    let err = RunPlan::new(&config, Arch::Riscv64, None, None, WarmthAsked::default(), None, SIZE)
        .expect_err("no kernel for riscv64");
    assert!(err.to_string().contains("kernel `debian` is not built for riscv64"), "{err}");
}

#[test]
fn default_guests_get_the_hosts_cpus_up_to_four_and_a_gib() {
    assert_eq!(GuestSize::for_host(0), GuestSize { cpus: 1, memory_mib: 1024 });
    assert_eq!(GuestSize::for_host(1).cpus, 1);
    assert_eq!(GuestSize::for_host(2).cpus, 2);
    assert_eq!(GuestSize::for_host(4).cpus, 4);
    assert_eq!(GuestSize::for_host(64).cpus, 4);
    assert!(GuestSize::of_this_host().cpus >= 1);
}

#[test]
fn a_machine_table_keeps_the_sizes_it_sets_and_kiln_sizes_the_rest() {
    let text =
        format!("{}\n[machine.linux-x86_64]\nsmp = 1\n\n[machine.linux-aarch64]\nmemory = \"256M\"\n", linux_project());
    let (_dir, config) = config(&text);
    let big = GuestSize { cpus: 4, memory_mib: 1024 };
    let plan =
        |arch| RunPlan::new(&config, arch, None, Some("small"), WarmthAsked::default(), None, big).expect("plan");
    let x86 = plan(Arch::X86_64).machine;
    assert_eq!((x86.smp, x86.memory_mib), (Some(1), Some(1024)), "smp from Kiln.toml, memory from the host");
    let arm = plan(Arch::Aarch64).machine;
    assert_eq!((arm.smp, arm.memory_mib), (Some(4), Some(256)), "memory from Kiln.toml, CPUs from the host");
    assert_eq!(arm.cpu.as_deref(), Some("cortex-a57"), "the rest of the built-in profile stays");
}

/// A `kind = "tests"` artifact whose case sets three of its test binaries apart.
const TESTS_PROJECT: &str = r#"
[artifact.tinyos]
package = "k"
path = "kernel"
arches = ["riscv64"]
kind = "tests"

[case.tests]
artifact = "tinyos"
failure = '\[failed\]$'
timeout = "60s"

[case.tests.test.idle]
success = "^tinyos: idle$"
stop-on-success = true
timeout = "10s"

[case.tests.test."tinyos::should_panic"]
expect = "fail"
failure = ""

[case.tests.test.console_echo]
input = "ping\r"
input-after = "^console_echo: type"
"#;

/// The test binaries cargo would list for a package `tinyos` with a lib, a bin and three tests.
fn tinyos_binaries() -> Vec<TestBinary> {
    let binary = |kind: &str, target: &str| TestBinary::new("tinyos", &[kind.to_owned()], target);
    vec![
        binary("lib", "tinyos"),
        binary("bin", "tinyos"),
        binary("test", "idle"),
        binary("test", "should_panic"),
        binary("test", "console_echo"),
    ]
}

/// The test plan of the only run of `selection` in `kiln_toml`.
fn test_plan(kiln_toml: &str, selection: &Selection) -> (CaseRun, TestPlan) {
    let (_dir, config) = config(kiln_toml);
    let plan = Plan::for_test(&config, selection).expect("plan");
    let [run] = plan.runs.as_slice() else { panic!("one run, got {}", plan.runs.len()) };
    let Guest::Artifact { tests: Some(tests), .. } = &run.guest else { panic!("a test artifact's case") };
    (run.clone(), tests.clone())
}

#[test]
fn per_test_tables_replace_only_the_keys_they_set() {
    let (run, tests) = test_plan(TESTS_PROJECT, &Selection::default());
    let binaries = tinyos_binaries();
    let boots = tests.resolve("tests", &binaries, &mut BTreeSet::new()).expect("every table names one binary");
    let ids: Vec<&str> = boots.iter().map(|boot| binaries[boot.binary].id.as_str()).collect();
    assert_eq!(ids, ["tinyos", "tinyos::bin/tinyos", "tinyos::idle", "tinyos::should_panic", "tinyos::console_echo"]);
    let rules = |id: &str| {
        let boot = boots.iter().find(|boot| binaries[boot.binary].id == id).expect("booted");
        boot.rules.unwrap_or(&run.rules)
    };
    // Binaries without a table keep the case's rules.
    assert!(boots[0].rules.is_none() && boots[1].rules.is_none());
    assert_eq!(rules("tinyos").timeout, Duration::from_secs(60));

    let idle = rules("tinyos::idle");
    assert!(idle.stop_on_success);
    assert_eq!(idle.timeout, Duration::from_secs(10));
    assert_eq!(idle.judge.success.as_ref().map(regex::Regex::as_str), Some("^tinyos: idle$"));
    assert_eq!(idle.judge.failure.as_ref().map(regex::Regex::as_str), Some(r"\[failed\]$"), "the case's");
    assert_eq!(idle.judge.success_statuses, [0], "riscv64's exit device");

    let should_panic = rules("tinyos::should_panic");
    assert_eq!(should_panic.expect, Expect::Fail);
    assert!(should_panic.judge.failure.is_none(), "`failure = \"\"` removes the case's pattern");
    assert_eq!(should_panic.timeout, Duration::from_secs(60));
    assert!(should_panic.input.is_none());

    let echo = rules("tinyos::console_echo").input.as_ref().expect("input");
    assert_eq!(echo.text, "ping\r");
    assert_eq!(echo.after.as_ref().map(regex::Regex::as_str), Some("^console_echo: type"));
}

#[test]
fn a_table_that_names_no_single_binary_is_an_error_at_its_key() {
    let binaries = tinyos_binaries();
    let (_, tests) =
        test_plan(&format!("{TESTS_PROJECT}\n[case.tests.test.idel]\nexpect = \"fail\"\n"), &Selection::default());
    let err = tests.resolve("tests", &binaries, &mut BTreeSet::new()).expect_err("no binary `idel`");
    assert_eq!(err.key.as_deref(), Some("case.tests.test.idel"));
    assert_eq!(err.message, "case `tests`: no test binary is named `idel` (`[case.tests.test.idel]`)");
    assert!(err.help.starts_with("a test binary with a similar name exists: `tinyos::idle`; all of them: `tinyos`, "));

    // `tinyos` is the library's id; `bin/tinyos` the binary's short form; both may have tables.
    let both = format!(
        "{TESTS_PROJECT}\n[case.tests.test.tinyos]\ntimeout = \"5s\"\n[case.tests.test.\"bin/tinyos\"]\ntimeout = \"6s\"\n"
    );
    let (_, tests) = test_plan(&both, &Selection::default());
    let boots = tests.resolve("tests", &binaries, &mut BTreeSet::new()).expect("distinct binaries");
    let timeouts: Vec<Option<Duration>> = boots[..2].iter().map(|boot| boot.rules.map(|r| r.timeout)).collect();
    assert_eq!(timeouts, [Some(Duration::from_secs(5)), Some(Duration::from_secs(6))]);

    // Two tables for one binary (its id and a short form).
    let twice = format!("{TESTS_PROJECT}\n[case.tests.test.\"tinyos::idle\"]\ntimeout = \"5s\"\n");
    let (_, tests) = test_plan(&twice, &Selection::default());
    let err = tests.resolve("tests", &binaries, &mut BTreeSet::new()).expect_err("two tables");
    assert_eq!(
        err.message,
        "`[case.tests.test.idle]` and `[case.tests.test.\"tinyos::idle\"]` both set test binary `tinyos::idle`"
    );
}

#[test]
fn command_line_picks_select_test_binaries() {
    let binaries = tinyos_binaries();
    let ids = |tests: &TestPlan| -> Vec<String> {
        let boots = tests.resolve("tests", &binaries, &mut BTreeSet::new()).expect("resolves");
        boots.iter().map(|boot| binaries[boot.binary].id.clone()).collect()
    };
    let pick = |names: &[&str], tests: &[&str]| Selection {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        tests: tests.iter().map(|n| (*n).to_owned()).collect(),
        ..Selection::default()
    };
    let (_, tests) = test_plan(TESTS_PROJECT, &pick(&["tests[bin/tinyos]", "tests[idle]"], &[]));
    assert_eq!(ids(&tests), ["tinyos::bin/tinyos", "tinyos::idle"]);
    let (_, tests) = test_plan(TESTS_PROJECT, &pick(&[], &["tinyos", "console_echo"]));
    assert_eq!(ids(&tests), ["tinyos", "tinyos::console_echo"]);

    // An ambiguous short form names its binaries.
    let (_, tests) = test_plan(TESTS_PROJECT, &pick(&["tests[lib/tinyos]"], &[]));
    assert_eq!(ids(&tests), ["tinyos"]);
    let mut two = binaries.clone();
    two.push(TestBinary::new("tinyos", &["bench".to_owned()], "should_panic"));
    let (_, tests) = test_plan(TESTS_PROJECT, &pick(&["tests[should_panic]"], &[]));
    let err = tests.resolve("tests", &two, &mut BTreeSet::new()).expect_err("ambiguous");
    assert_eq!(err.message, "`tests[should_panic]`: case `tests`: `should_panic` names 2 test binaries");
    assert_eq!(err.help, "name one of them in full: `tinyos::should_panic`, `tinyos::bench/should_panic`");
    assert!(err.key.is_none(), "a command-line name is no Kiln.toml error");

    // `--test` names may be absent from one case; the boots check that some case had them.
    let (_, tests) = test_plan(TESTS_PROJECT, &pick(&[], &["nothing"]));
    let mut matched = BTreeSet::new();
    assert!(tests.resolve("tests", &binaries, &mut matched).expect("resolves").is_empty());
    assert!(matched.is_empty());
    let err = TestNameError::unmatched("nothing", &binaries);
    assert_eq!(err.message, "`--test nothing`: no test binary of the selected cases is named `nothing`");

    let (_dir, config) = config(TESTS_PROJECT);
    for (bad, message) in [
        ("tests[idle", "cannot read `tests[idle` as CASE[TEST]"),
        ("tests[]", "cannot read `tests[]` as CASE[TEST]"),
        ("tsts[idle]", "no case named `tsts`"),
    ] {
        let err = Plan::for_test(&config, &pick(&[bad], &[])).expect_err(bad);
        assert_eq!(err.message, message);
    }
}
