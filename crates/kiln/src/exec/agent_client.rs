//! kiln's side of the guest agent's protocol, over the Unix socket QEMU connects to the
//! guest's `kiln-agent` virtio port.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use base64::Engine as _;
use kiln_agent::{Body, ExitStatus, Op, PROTOCOL_VERSION, Reply, Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
};

/// A connection to a guest's agent.
pub struct AgentClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl AgentClient {
    /// Connects to the socket and shakes hands, waiting up to `deadline` for the guest to
    /// boot (or resume) far enough to answer.
    pub async fn connect(socket: &Path, deadline: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        let stream = kiln_qemu::qmp::connect_when_ready(socket, deadline)
            .await
            .with_context(|| format!("cannot connect to the agent at {}", socket.display()))?;
        let (read, writer) = stream.into_split();
        let mut client = Self { reader: BufReader::new(read), writer, next_id: 1 };
        let left = deadline.saturating_sub(started.elapsed());
        let hello = client.request(Op::Hello { version: PROTOCOL_VERSION });
        tokio::time::timeout(left, hello)
            .await
            .map_err(|_| anyhow::anyhow!("the guest agent did not answer within {}s", deadline.as_secs()))??;
        Ok(client)
    }

    async fn send(&mut self, op: Op) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request { id, op })?;
        line.push(b'\n');
        self.writer.write_all(&line).await.context("cannot write to the agent")?;
        Ok(id)
    }

    async fn receive(&mut self) -> anyhow::Result<Response> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await.context("cannot read from the agent")?;
        anyhow::ensure!(n > 0, "the guest agent closed the connection");
        serde_json::from_str(&line).with_context(|| format!("the agent sent `{}`", line.trim()))
    }

    /// Sends a request that gets one answer, and returns it.
    pub async fn request(&mut self, op: Op) -> anyhow::Result<Reply> {
        let id = self.send(op).await?;
        loop {
            let response = self.receive().await?;
            if response.id != id {
                continue;
            }
            return match response.body {
                Body::Ok(reply) => Ok(reply),
                Body::Error(message) => Err(anyhow::anyhow!("the guest agent: {message}")),
                other => Err(anyhow::anyhow!("the guest agent answered {other:?}")),
            };
        }
    }

    /// Writes a file in the guest.
    pub async fn put(&mut self, path: &str, mode: u32, bytes: &[u8]) -> anyhow::Result<()> {
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        let blake3 = blake3::hash(bytes).to_hex().to_string();
        self.request(Op::Put { path: path.to_owned(), mode, data, blake3 })
            .await
            .with_context(|| format!("cannot put {path} into the guest"))?;
        Ok(())
    }

    /// Runs a program, handing its output chunks to `on_output(is_stderr, bytes)` as they come.
    pub async fn exec(
        &mut self,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        mut on_output: impl FnMut(bool, &[u8]),
    ) -> anyhow::Result<ExitStatus> {
        let id = self.send(Op::Exec { argv, env, cwd, stdin: None }).await?;
        let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text);
        loop {
            let response = self.receive().await?;
            if response.id != id {
                continue;
            }
            match response.body {
                Body::Stdout(chunk) => on_output(false, &decode(&chunk)?),
                Body::Stderr(chunk) => on_output(true, &decode(&chunk)?),
                Body::Exit(status) => return Ok(status),
                Body::Error(message) => anyhow::bail!("the guest agent: {message}"),
                Body::Ok(_) => {}
            }
        }
    }
}
