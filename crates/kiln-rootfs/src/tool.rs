//! Running the external image tools (mke2fs, debugfs, qemu-img) with errors that show the
//! command and its stderr and name the Debian package of a missing tool.

use std::{
    ffi::OsStr,
    process::{Command, Stdio},
};

use crate::errors::{Error, Result};

/// One external program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

pub(crate) const MKE2FS: Tool = Tool { program: "mke2fs", package: "e2fsprogs" };
pub(crate) const DEBUGFS: Tool = Tool { program: "debugfs", package: "e2fsprogs" };
pub(crate) const QEMU_IMG: Tool = Tool { program: "qemu-img", package: "qemu-utils" };

/// A successful run: its command line (for messages) and what it printed on stderr.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) command: String,
    pub(crate) stderr: String,
}

impl Tool {
    /// Runs the tool with `args` and extra environment; `hint` is added to the error when it
    /// fails.
    pub(crate) fn run<I, S>(self, args: I, env: &[(&str, String)], hint: &str) -> Result<Ran>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut command = Command::new(self.program);
        command.args(&args).stdin(Stdio::null()).env("LC_ALL", "C");
        kiln_types::withhold_secrets(&mut command);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().map_err(|source| {
            // Not only NotFound: an unreadable directory on PATH turns a miss into EACCES.
            if !on_path(self.program) {
                Error::ToolMissing { program: self.program, package: self.package, source }
            } else {
                Error::Io { action: "run", path: self.program.into(), source }
            }
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_owned();
        let mut line: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push(self.program.to_owned());
        line.extend(args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        let command = line.join(" ");
        if output.status.success() {
            return Ok(Ran { command, stderr });
        }
        Err(Error::ToolFailed {
            command,
            status: output.status,
            stderr,
            hint: if hint.is_empty() { String::new() } else { format!("; {hint}") },
        })
    }
}

/// Whether `program` is an executable in one of PATH's directories.
fn on_path(program: &str) -> bool {
    kiln_types::find_program(program).is_some()
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%^".contains(&b)) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let tool = Tool { program: "kiln-no-such-tool", package: "kiln-tools" };
        let err = tool.run(["x"], &[], "").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "`kiln-no-such-tool` was not found; install the Debian package `kiln-tools` (apt-get install kiln-tools)"
        );
    }

    #[test]
    fn a_failing_tool_shows_command_and_stderr() {
        let tool = Tool { program: "sh", package: "dash" };
        let err = tool.run(["-c", "echo oops >&2; exit 3"], &[("X", "1".into())], "try again").expect_err("fails");
        assert_eq!(err.to_string(), "`X=1 sh -c 'echo oops >&2; exit 3'` failed (exit status: 3); try again:\noops");
    }
}
