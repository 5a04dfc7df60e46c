//! One case on one machine: what it boots and how it is judged.

use kiln_qemu::{Judge, Machine};

use super::{BuildKey, CaseRun, Guest, KERNEL_FAILURE, images::linux_guest};
use crate::config::{ArtifactKind, Case, CaseGuest, Config};

/// The run of `case` on `machine`.
pub(super) fn case_run(config: &Config, case: &Case, machine: &Machine) -> CaseRun {
    let arch = machine.arch;
    let (guest, failure) = match &case.guest {
        CaseGuest::Artifact(artifact) => {
            let tests = config.artifacts.get(artifact).is_some_and(|a| a.kind == ArtifactKind::Tests);
            (Guest::Artifact { build: BuildKey { artifact: artifact.clone(), arch }, tests }, case.failure.clone())
        }
        CaseGuest::Linux { kernel, rootfs, command, snapshot } => {
            let guest = Guest::Linux {
                guest: linux_guest(config, kernel, rootfs, arch),
                command: command.clone(),
                snapshot: *snapshot,
            };
            let pattern = match &case.failure {
                Some(own) => format!("(?:{})|(?:{KERNEL_FAILURE})", own.as_str()),
                None => KERNEL_FAILURE.to_owned(),
            };
            (guest, regex::Regex::new(&pattern).ok().or_else(|| case.failure.clone()))
        }
    };
    let linux = matches!(guest, Guest::Linux { .. });
    let success_statuses = case.success_exit_codes.clone().unwrap_or_else(|| match machine.exit_device() {
        Some(device) if !linux => device.success_statuses().to_vec(),
        _ => vec![0],
    });
    CaseRun {
        case: case.name.clone(),
        line: config.line_of(&format!("case.{}", case.name)),
        machine: machine.clone(),
        guest,
        judge: Judge { failure, success: case.success.clone(), success_statuses, guest_reports_status: linux },
        expect: case.expect,
        timeout: case.timeout,
        no_output_timeout: case.no_output_timeout,
        stop_on_success: case.stop_on_success,
    }
}
