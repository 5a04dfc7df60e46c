//! `config`: print the resolved configuration.

use std::{fmt::Write as _, io::Write as _};

use kiln_qemu::{Console, accel::Accel};

use crate::{cx::Cx, exit_code};

/// Prints every artifact, machine (with its rendered QEMU command) and case, defaults applied.
pub fn run(cx: &Cx) -> anyhow::Result<u8> {
    let config = &cx.config;
    let mut out = String::new();
    writeln!(out, "# {} (resolved)", config.file.display())?;
    writeln!(out, "store = {:?}", cx.store.root().display().to_string())?;
    for artifact in config.artifacts.values() {
        writeln!(out, "\n[artifact.{}]", artifact.name)?;
        writeln!(out, "package = {:?}", artifact.package)?;
        writeln!(out, "path = {:?}", artifact.dir.display().to_string())?;
        writeln!(out, "profile = {:?}", artifact.profile)?;
        writeln!(out, "features = {:?}", artifact.features)?;
        writeln!(out, "no-default-features = {}", artifact.no_default_features)?;
        for (arch, triple) in &artifact.targets {
            writeln!(out, "target.{arch} = {triple:?}")?;
        }
    }
    for machine in config.machines.values() {
        writeln!(out, "\n[machine.{}]", machine.name)?;
        writeln!(out, "arch = \"{}\"", machine.arch)?;
        let argv = machine.argv(std::path::Path::new("KERNEL"), Accel::Tcg, Console::Captured);
        writeln!(out, "# {} {}", machine.arch.qemu_binary(), argv.display())?;
    }
    for case in config.cases.values() {
        writeln!(out, "\n[case.{}]", case.name)?;
        writeln!(out, "artifact = {:?}", case.artifact)?;
        writeln!(out, "machines = {:?}", case.machines)?;
        if let Some(success) = &case.success {
            writeln!(out, "success = {:?}", success.as_str())?;
        }
        if let Some(failure) = &case.failure {
            writeln!(out, "failure = {:?}", failure.as_str())?;
        }
        if let Some(codes) = &case.success_exit_codes {
            writeln!(out, "success-exit-codes = {codes:?}")?;
        }
        writeln!(out, "expect = {:?}", format!("{:?}", case.expect).to_lowercase())?;
        writeln!(out, "timeout = {:?}", humantime::format_duration(case.timeout).to_string())?;
        if let Some(silent) = case.no_output_timeout {
            writeln!(out, "no-output-timeout = {:?}", humantime::format_duration(silent).to_string())?;
        }
        writeln!(out, "stop-on-success = {}", case.stop_on_success)?;
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(exit_code::SUCCESS)
}
