//! One case on one machine: what it boots and how it is judged (and, for a `kind = "tests"`
//! artifact, how each per-test table changes that).

use kiln_qemu::{Judge, Machine, SerialInput};

use super::{BootRules, BuildKey, CaseRun, Guest, KERNEL_FAILURE, TestPick, TestPlan, TestTable, images::linux_guest};
use crate::config::{ArtifactKind, Case, CaseGuest, Config, TestSettings, toml_key};

/// The run of `case` on `machine`; `only`: the test binaries picked on the command line.
pub(super) fn case_run(config: &Config, case: &Case, machine: &Machine, only: Option<Vec<TestPick>>) -> CaseRun {
    let arch = machine.arch;
    let (guest, failure) = match &case.guest {
        CaseGuest::Artifact(artifact) => {
            let boots_tests = config.artifacts.get(artifact).is_some_and(|a| a.kind == ArtifactKind::Tests);
            let tests = boots_tests.then(|| TestPlan {
                tables: case.tests.iter().map(|settings| test_table(case, settings, machine)).collect(),
                only,
            });
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
    let input = case.input.text.clone().map(|text| SerialInput { text, after: case.input.after.clone() });
    CaseRun {
        case: case.name.clone(),
        test: None,
        line: config.line_of(&format!("case.{}", case.name)),
        machine: machine.clone(),
        guest,
        rules: BootRules {
            judge: Judge {
                failure,
                success: case.success.clone(),
                success_statuses: success_statuses(case.success_exit_codes.as_deref(), machine, linux),
                guest_reports_status: linux,
            },
            expect: case.expect,
            timeout: case.timeout,
            no_output_timeout: case.no_output_timeout,
            stop_on_success: case.stop_on_success,
            input,
        },
    }
}

/// The exit statuses that pass: the ones given, else the exit device's (Linux: the command's 0).
fn success_statuses(given: Option<&[i32]>, machine: &Machine, linux: bool) -> Vec<i32> {
    given.map(<[i32]>::to_vec).unwrap_or_else(|| match machine.exit_device() {
        Some(device) if !linux => device.success_statuses().to_vec(),
        _ => vec![0],
    })
}

/// A per-test table on `machine`: the case's settings with the table's in their place.
fn test_table(case: &Case, settings: &TestSettings, machine: &Machine) -> TestTable {
    let text = match &settings.input {
        Some(own) => own.clone(),
        None => case.input.text.clone(),
    };
    let after = settings.input_after.clone().or_else(|| case.input.after.clone());
    let codes = settings.success_exit_codes.as_deref().or(case.success_exit_codes.as_deref());
    TestTable {
        name: settings.name.clone(),
        key: format!("case.{}.test.{}", case.name, settings.name),
        header: format!("[case.{}.test.{}]", toml_key(&case.name), toml_key(&settings.name)),
        rules: BootRules {
            judge: Judge {
                failure: settings.failure.clone().unwrap_or_else(|| case.failure.clone()),
                success: settings.success.clone().unwrap_or_else(|| case.success.clone()),
                success_statuses: success_statuses(codes, machine, false),
                guest_reports_status: false,
            },
            expect: settings.expect.unwrap_or(case.expect),
            timeout: settings.timeout.unwrap_or(case.timeout),
            no_output_timeout: settings.no_output_timeout.or(case.no_output_timeout),
            stop_on_success: settings.stop_on_success.unwrap_or(case.stop_on_success),
            input: text.map(|text| SerialInput { text, after }),
        },
    }
}
