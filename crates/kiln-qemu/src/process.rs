//! The one way kiln starts QEMU: a [`Qemu`] process that cannot outlive kiln.
//!
//! Every QEMU kiln starts (a boot, a snapshot's guest, the KVM probe, an interactive console)
//! goes through [`Qemu::spawn`]. It runs with `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills it
//! when the thread that started it dies, even when kiln is SIGKILLed; a headless QEMU also gets a
//! process group of its own, which is killed whole (QEMU and anything it forked) when the value
//! is dropped, whatever path the caller took.

use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{ExitStatus, Stdio},
};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::{Argv, Exit, QemuError};

/// Where a QEMU process's terminal signals come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// A headless guest in a process group of its own: Ctrl-C at kiln's terminal does not reach
    /// it (kiln decides when it dies), and the whole group is killed on drop.
    Detached,
    /// The serial console is the user's terminal: QEMU stays in the terminal's foreground
    /// process group so it can read keys; only QEMU itself is killed on drop.
    Attached,
}

/// A running QEMU. Dropping it kills it (its whole process group when [`Terminal::Detached`]).
#[derive(Debug)]
pub struct Qemu {
    child: tokio::process::Child,
    /// The process group to kill, when QEMU leads one of its own.
    group: Option<Pid>,
    program: String,
}

impl Qemu {
    /// Starts `program` with `argv` and the given standard streams. Must be called on a
    /// long-lived thread (a runtime's own thread, not a blocking-pool thread that may retire
    /// and take QEMU with it through the parent-death signal).
    pub fn spawn(program: &str, argv: &Argv, terminal: Terminal, stdio: [Stdio; 3]) -> Result<Self, QemuError> {
        let [stdin, stdout, stderr] = stdio;
        let mut command = std::process::Command::new(program);
        command.args(argv.as_slice()).stdin(stdin).stdout(stdout).stderr(stderr);
        kiln_types::withhold_secrets(&mut command);
        if terminal == Terminal::Detached {
            command.process_group(0);
        }
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(die_with_parent);
        }
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let child = command.spawn().map_err(|source| spawn_error(program, source))?;
        let group = match (terminal, child.id()) {
            (Terminal::Detached, Some(pid)) => i32::try_from(pid).ok().and_then(Pid::from_raw),
            _ => None,
        };
        Ok(Self { child, group, program: program.to_owned() })
    }

    /// The QEMU binary's name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// QEMU's process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// QEMU's standard input, when it was piped (once): with `-serial stdio`, what is written
    /// there reaches the guest's serial console.
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// QEMU's standard output, when it was piped (once).
    pub fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// QEMU's standard error, when it was piped (once).
    pub fn take_stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Kills QEMU (its whole group when it leads one) now; the value still reaps it.
    pub fn kill(&mut self) {
        match self.group {
            Some(group) => {
                let _ = kill_process_group(group, Signal::KILL);
            }
            None => {
                let _ = self.child.start_kill();
            }
        }
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus, QemuError> {
        self.child.wait().await.map_err(|source| QemuError::Io { doing: "waiting for QEMU", source })
    }

    /// Whether QEMU has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // The group is signalled while its leader may still be unreaped, so the id cannot yet
        // name another process group.
        if let Some(group) = self.group {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
}

/// How QEMU ended, from its exit status.
pub fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Status(code),
        (None, signal) => Exit::Signal(signal.unwrap_or(0)),
    }
}

/// Asks the kernel to SIGKILL this child when the thread that spawned it dies, and exits
/// at once if that already happened.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe and take no pointers here.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() == 1 {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// The error for a QEMU that could not be started: a missing binary names its package.
pub(crate) fn spawn_error(program: &str, source: std::io::Error) -> QemuError {
    if source.kind() == std::io::ErrorKind::NotFound {
        QemuError::QemuMissing { program: program.to_owned(), package: crate::firmware::qemu_package(program) }
    } else {
        QemuError::Spawn { program: program.to_owned(), source }
    }
}

/// The first line of `program --version` (e.g. `QEMU emulator version 8.2.2 (Debian ...)`).
pub fn version(program: &str) -> Result<String, QemuError> {
    let output = std::process::Command::new(program).arg("--version").output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            QemuError::QemuMissing { program: program.to_owned(), package: crate::firmware::qemu_package(program) }
        } else {
            QemuError::Spawn { program: program.to_owned(), source }
        }
    })?;
    if !output.status.success() {
        return Err(QemuError::QemuFailed {
            status: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reads_the_first_line_and_names_a_missing_binary() {
        let first_line = super::version("qemu-system-x86_64").expect("qemu-system-x86_64 is installed (`.ci/setup`)");
        assert!(first_line.starts_with("QEMU emulator version"), "{first_line}");
        match super::version("qemu-system-kiln-nonesuch") {
            Err(QemuError::QemuMissing { program, .. }) => assert_eq!(program, "qemu-system-kiln-nonesuch"),
            other => panic!("expected QemuMissing, got {other:?}"),
        }
    }

    /// A stand-in for QEMU that forks a helper and sleeps: dropping the value must take the
    /// helper too (the whole group), not just the leader.
    #[tokio::test]
    async fn dropping_a_detached_process_kills_its_whole_group() {
        let mut argv = Argv::default();
        argv.arg("-c").arg("sleep 300 & echo $!; wait");
        let mut qemu = Qemu::spawn("sh", &argv, Terminal::Detached, [Stdio::null(), Stdio::piped(), Stdio::null()])
            .expect("spawn");
        let mut stdout = qemu.take_stdout().expect("piped");
        let mut line = String::new();
        {
            use tokio::io::AsyncBufReadExt as _;
            let mut reader = tokio::io::BufReader::new(&mut stdout);
            reader.read_line(&mut line).await.expect("helper pid");
        }
        let helper = Pid::from_raw(line.trim().parse().expect("a pid")).expect("a pid above 0");
        assert!(rustix::process::test_kill_process(helper).is_ok(), "the helper runs");
        drop(qemu);
        // The helper was SIGKILLed; once its parent is gone it is reaped by init.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rustix::process::test_kill_process(helper).is_ok() {
            let state = std::fs::read_to_string(format!("/proc/{}/stat", helper.as_raw_pid())).unwrap_or_default();
            if state.contains(") Z ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the helper outlived the dropped process");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_missing_binary_names_its_package() {
        let err = spawn_error("qemu-system-riscv64", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(err, QemuError::QemuMissing { package: "qemu-system-misc", .. }), "{err:?}");
    }
}
