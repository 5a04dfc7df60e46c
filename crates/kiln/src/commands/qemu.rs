//! `qemu`: boot one case with the console attached.

use kiln_qemu::{Console, Exit};

use crate::{
    cli::QemuArgs,
    cx::Cx,
    error::UsageError,
    exec::BuiltArtifact,
    exit_code, guest,
    plan::{Guest, Plan, Selection, TestBinary, TestPlan},
};

/// Builds the case's artifact, boots it interactively and reports how QEMU ended; the exit
/// code is 0 whenever the session ran (a person, not a verdict, ends it).
pub(super) fn run(cx: &Cx, args: &QemuArgs) -> anyhow::Result<u8> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        return Err(UsageError::new(
            "`qemu` attaches the console to a terminal, and standard input is not one",
            Some("use `cargo xtask test CASE` to boot without a terminal (with the case's timeout)".to_owned()),
        )
        .into());
    }
    let config = cx.config();
    let case = match &args.case {
        Some(name) => name.clone(),
        None => {
            config.first_passing_case().or_else(|| config.cases.values().next()).map(|c| c.name.clone()).ok_or_else(
                || UsageError::new("Kiln.toml declares no case", Some("add a `[case.NAME]` table".into())),
            )?
        }
    };
    let selection =
        Selection { arches: args.arch.into_iter().collect(), names: vec![case.clone()], ..Selection::default() };
    let plan = Plan::for_test(config, &selection)?;
    let run = match plan.runs.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(UsageError::new(format!("case `{case}` does not run on the selected arch"), None).into());
        }
        many => {
            let arches: Vec<String> = many.iter().map(|r| r.machine.arch.to_string()).collect();
            return Err(UsageError::new(
                format!("case `{case}` runs on several machines ({})", arches.join(", ")),
                Some(format!("pick one with `--arch {}`", arches[0])),
            )
            .into());
        }
    };
    cx.executor().provision_machines([&run.machine])?;
    let realised = cx.realise(&plan)?;
    let accel = cx.executor().accelerator(run.machine.arch, cx.options().accel);
    let scratch = tempfile::tempdir()?;
    let mut label = run.label();
    // A UEFI boot's variable store, kept until QEMU ends.
    let mut private_firmware = None;
    let argv = match &run.guest {
        Guest::Artifact { build, tests } => {
            let artifact = realised.builds.get(build).ok_or_else(|| anyhow::anyhow!("{build} was not built"))?;
            let image = match tests {
                None => artifact.image().to_owned(),
                Some(tests) => {
                    let (image, name) = one_test_binary(cx, &run.case, tests, artifact)?;
                    label = format!("{}[{name}]/{}", run.case, run.machine.name);
                    image
                }
            };
            // Disk images boot as `test` boots them: as a disk, with their firmware (a UEFI
            // image with its own copy of OVMF's variable store in the scratch directory).
            let machine = match artifact.disk {
                Some(kind) => crate::boots::booted_from_disk(run.clone(), kind)?.machine,
                None => run.machine.clone(),
            };
            let machine = match crate::runner::with_private_firmware(&machine, scratch.path())? {
                Some((private, dir)) => {
                    private_firmware = Some(dir);
                    private
                }
                None => machine,
            };
            machine.argv(&image, accel, Console::Interactive)
        }
        Guest::Linux { guest, command, .. } => {
            let images = realised.linux_images(guest, command)?;
            let initrd = scratch.path().join("initrd");
            images
                .compose_initrd(&guest::BootFiles { command: images.command.clone(), ..Default::default() }, &initrd)?;
            images.argv(&run.machine, &initrd, &guest::nonce()?, accel, Console::Interactive, Default::default())
        }
    };
    let program = run.machine.arch.qemu_binary();
    cx.printer().status("Booting", &format!("{label} (Ctrl-A X quits, Ctrl-A C switches to the monitor)"));
    cx.printer().verbose("Running", &format!("{program} {}", argv.display()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let exit = runtime.block_on(kiln_qemu::interactive(program, &argv))?;
    drop(private_firmware);
    // Ctrl-A X also ends QEMU with status 0, so an interactive session judges nothing: it
    // says how QEMU ended and what that status would mean.
    let how = match exit {
        Exit::Status(status) if run.rules.judge.success_statuses.contains(&status) => {
            format!("QEMU exited with status {status}: the guest's success status, or Ctrl-A X")
        }
        Exit::Status(status) => format!("QEMU exited with status {status}: a failure status for this case"),
        Exit::Signal(signal) => format!("QEMU was killed by signal {signal}"),
        _ => "QEMU stopped".to_owned(),
    };
    cx.printer().status("Finished", &format!("{label} ({how})"));
    Ok(exit_code::SUCCESS)
}

/// The one test binary of a `kind = "tests"` case that `CASE[TEST]` picked (or the only one
/// the artifact has), with its id.
fn one_test_binary(
    cx: &Cx,
    case: &str,
    tests: &TestPlan,
    artifact: &BuiltArtifact,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let binaries: Vec<TestBinary> = artifact.images.iter().filter_map(|image| image.test.clone()).collect();
    let picked = cx.with_config_errors(tests.resolve(case, &binaries, &mut Default::default()).map_err(Into::into))?;
    match picked.as_slice() {
        [one] => Ok((artifact.images[one.binary].path.clone(), binaries[one.binary].id.clone())),
        _ => Err(UsageError::new(
            format!("case `{case}` has {} test binaries, and `qemu` boots one", binaries.len()),
            Some(format!(
                "pick one with `cargo xtask qemu '{case}[TEST]'`; the test binaries are: {}",
                binaries.iter().map(|b| format!("`{}`", b.id)).collect::<Vec<_>>().join(", ")
            )),
        )
        .into()),
    }
}
