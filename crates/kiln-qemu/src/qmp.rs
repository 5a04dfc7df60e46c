//! A client for QEMU's machine protocol (QMP) on a Unix socket, and what booted snapshots
//! need from it: stop a guest, save its state to a file (its memory left in a shared memory
//! file, when it has one), and on a fresh QEMU started with `-incoming defer`, load the state
//! and let the guest run on.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::QemuError;

/// A QMP connection in command mode.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

fn qmp_error(doing: impl Into<String>, message: impl std::fmt::Display) -> QemuError {
    QemuError::Qmp { doing: doing.into(), message: message.to_string() }
}

impl Qmp {
    /// Connects to the QMP socket at `path` (retrying while QEMU creates it, up to
    /// `deadline`), reads the greeting and enters command mode.
    pub async fn connect(path: &Path, deadline: Duration) -> Result<Self, QemuError> {
        let stream = connect_when_ready(path, deadline)
            .await
            .map_err(|err| qmp_error(format!("connecting to {}", path.display()), err))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self { reader: BufReader::new(read), writer };
        let greeting = qmp.read_message("reading the greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error("reading the greeting", format!("unexpected {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self, doing: &str) -> Result<Value, QemuError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await.map_err(|e| qmp_error(doing, e))?;
        if n == 0 {
            return Err(qmp_error(doing, "QEMU closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| qmp_error(doing, format!("`{}`: {e}", line.trim())))
    }

    /// Runs a command and returns its `return` value; events that arrive meanwhile are
    /// skipped, an `error` becomes [`QemuError::Qmp`] with QEMU's description.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.map_err(|e| qmp_error(command, e))?;
        loop {
            let message = self.read_message(command).await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let description = error.get("desc").and_then(Value::as_str).unwrap_or("no description");
                return Err(qmp_error(command, description));
            }
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, QemuError> {
        let status = self.execute("query-status", None).await?;
        Ok(status.get("status").and_then(Value::as_str).unwrap_or("unknown").to_owned())
    }

    /// Waits until the migration in progress (out or in) completes; fails when it fails or
    /// outlasts `deadline`.
    pub async fn wait_for_migration(&mut self, deadline: Duration) -> Result<(), QemuError> {
        let started = Instant::now();
        loop {
            let state = self.execute("query-migrate", None).await?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let why = state.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(qmp_error("migration", why));
                }
                _ if started.elapsed() > deadline => {
                    return Err(qmp_error("migration", format!("not done after {}s: {state}", deadline.as_secs())));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Stops the guest and saves its state to `file` (QEMU streams it through `cat`): all of
    /// it, or, with `memory_in_file`, all but the memory a shared memory file holds already
    /// (QEMU's `x-ignore-shared`), which the restore then maps from that file.
    pub async fn save_state(&mut self, file: &Path, memory_in_file: bool, deadline: Duration) -> Result<(), QemuError> {
        if memory_in_file {
            self.ignore_shared_memory().await?;
        }
        self.execute("stop", None).await?;
        let uri = format!("exec:cat > {}", shell_quote(&file.display().to_string()));
        self.execute("migrate", Some(json!({ "uri": uri }))).await?;
        self.wait_for_migration(deadline).await
    }

    /// On a QEMU started with `-incoming` [`DEFERRED`]: loads the state [`Qmp::save_state`]
    /// wrote to `file` (with the same `memory_in_file`), then runs the guest (a state saved
    /// while stopped comes back paused).
    pub async fn resume_from_state(
        &mut self,
        file: &Path,
        memory_in_file: bool,
        deadline: Duration,
    ) -> Result<(), QemuError> {
        self.load_state(file, memory_in_file, deadline).await?;
        self.execute("cont", None).await?;
        Ok(())
    }

    /// As [`Qmp::resume_from_state`], leaving the guest paused.
    pub async fn load_state(&mut self, file: &Path, memory_in_file: bool, deadline: Duration) -> Result<(), QemuError> {
        if memory_in_file {
            // The stream's layout depends on it: both sides must agree.
            self.ignore_shared_memory().await?;
        }
        self.execute("migrate-incoming", Some(json!({ "uri": incoming_uri(file) }))).await?;
        self.wait_for_migration(deadline).await
    }

    async fn ignore_shared_memory(&mut self) -> Result<(), QemuError> {
        let capability = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
        self.execute("migrate-set-capabilities", Some(capability)).await?;
        Ok(())
    }
}

/// Connects to a Unix socket a starting QEMU is about to create, retrying until `deadline`.
pub async fn connect_when_ready(path: &Path, deadline: Duration) -> std::io::Result<UnixStream> {
    let started = Instant::now();
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(_) if started.elapsed() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(err) => return Err(err),
        }
    }
}

/// `-incoming` for a QEMU that waits for [`Qmp::resume_from_state`] to say where its state is.
pub const DEFERRED: &str = "defer";

/// The migration source that reads a state from `file`.
fn incoming_uri(file: &Path) -> String {
    format!("exec:cat {}", shell_quote(&file.display().to_string()))
}

/// QEMU runs `exec:` URIs through `/bin/sh -c`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_exec_uris_are_quoted_for_the_shell() {
        assert_eq!(incoming_uri(Path::new("/tmp/a b/it's")), r"exec:cat '/tmp/a b/it'\''s'");
    }
}
