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
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A connection to a guest's agent.
pub(crate) struct AgentClient {
    /// One stream for both directions: a split stream's write half would shut the socket's
    /// writing down when dropped, and a leased connection outlives its client.
    stream: BufReader<tokio::net::UnixStream>,
    next_id: u64,
}

impl AgentClient {
    /// Connects to the socket and shakes hands, waiting up to `deadline` for the guest to
    /// boot (or resume) far enough to answer.
    pub(crate) async fn connect(socket: &Path, deadline: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        let stream = kiln_qemu::qmp::connect_when_ready(socket, deadline)
            .await
            .with_context(|| format!("cannot connect to the agent at {}", socket.display()))?;
        let mut client = Self::from_stream(stream);
        let left = deadline.saturating_sub(started.elapsed());
        let hello = client.request(Op::Hello { version: PROTOCOL_VERSION });
        tokio::time::timeout(left, hello)
            .await
            .map_err(|_| anyhow::anyhow!("the guest agent did not answer within {}s", deadline.as_secs()))??;
        Ok(client)
    }

    /// Wraps a connection whose handshake is done (one a keeper leased out).
    pub(crate) fn from_stream(stream: tokio::net::UnixStream) -> Self {
        Self { stream: BufReader::new(stream), next_id: 1 }
    }

    /// Numbers this client's requests apart from earlier clients of the same connection (a
    /// session's guest is leased in turn), so a late answer to one is never taken for
    /// another's.
    pub(crate) fn with_fresh_ids(mut self) -> anyhow::Result<Self> {
        // Random high bits: two clients of one connection never share an id range.
        self.next_id = (crate::host::random_u64()? >> 16) << 16;
        Ok(self)
    }

    /// Gives the connection back, for a keeper to lease it out; fails if the agent sent
    /// something not yet read (a request still in flight).
    pub(crate) fn into_std(self) -> anyhow::Result<std::os::unix::net::UnixStream> {
        anyhow::ensure!(self.stream.buffer().is_empty(), "the agent connection has unread data");
        let stream =
            self.stream.into_inner().into_std().context("cannot take the agent connection out of the runtime")?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }

    /// Sends an empty line, which the agent skips: it ends a line an earlier client of the
    /// same connection left half written (a leaseholder killed mid-request), so the next
    /// request is read whole.
    pub(crate) async fn end_line(&mut self) -> anyhow::Result<()> {
        self.stream.get_mut().write_all(b"\n").await.map_err(agent_gone)
    }

    async fn send(&mut self, op: Op) -> anyhow::Result<u64> {
        self.send_with(op, &[]).await
    }

    /// Sends a request, then `trailing` raw bytes (a raw put's content), and returns its id.
    async fn send_with(&mut self, op: Op, trailing: &[u8]) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = serde_json::to_vec(&Request { id, op })?;
        message.push(b'\n');
        message.extend_from_slice(trailing);
        self.stream.get_mut().write_all(&message).await.map_err(agent_gone)?;
        Ok(id)
    }

    async fn receive(&mut self) -> anyhow::Result<Response> {
        let mut line = String::new();
        let n = self.stream.read_line(&mut line).await.context("cannot read from the agent")?;
        anyhow::ensure!(n > 0, "the guest agent closed the connection");
        serde_json::from_str(&line).with_context(|| format!("the agent sent `{}`", line.trim()))
    }

    /// Sends a request that gets one answer, and returns it.
    pub(crate) async fn request(&mut self, op: Op) -> anyhow::Result<Reply> {
        let id = self.send(op).await?;
        self.answer(id).await
    }

    /// Waits for the one answer to request `id`.
    async fn answer(&mut self, id: u64) -> anyhow::Result<Reply> {
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

    /// Writes a file in the guest (its content sent raw after the request).
    pub(crate) async fn put(&mut self, path: &str, mode: u32, bytes: &[u8]) -> anyhow::Result<()> {
        let blake3 = blake3::hash(bytes).to_hex().to_string();
        let op = Op::Put { path: path.to_owned(), mode, data: String::new(), blake3, length: Some(bytes.len() as u64) };
        let id = self.send_with(op, bytes).await?;
        self.answer(id).await.with_context(|| format!("cannot put {path} into the guest"))?;
        Ok(())
    }

    /// Mounts a 9p share read-only in the guest.
    pub(crate) async fn mount_9p(&mut self, tag: &str, path: &str) -> anyhow::Result<()> {
        self.request(Op::Mount9p { tag: tag.to_owned(), path: path.to_owned() })
            .await
            .with_context(|| format!("cannot mount the guest's {tag} share"))?;
        Ok(())
    }

    /// Sets the guest's wall clock to the host's.
    pub(crate) async fn set_clock_to_host(&mut self) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.request(Op::SetClock { unix_nanos: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX) })
            .await
            .context("cannot set the guest's clock")?;
        Ok(())
    }

    /// Makes `path` in the guest a writable view of the guest directory `lower` (an overlay
    /// on tmpfs; what the guest writes never reaches `lower`).
    pub(crate) async fn writable_view(&mut self, lower: &str, path: &str) -> anyhow::Result<()> {
        self.request(Op::MountOverlay { lower: lower.to_owned(), path: path.to_owned() })
            .await
            .with_context(|| format!("cannot make {path} a writable view of {lower} in the guest"))?;
        Ok(())
    }

    /// Makes a directory and its missing parents in the guest.
    pub(crate) async fn mkdir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        self.request(Op::Mkdir { path: path.to_owned(), mode })
            .await
            .with_context(|| format!("cannot make the directory {path} in the guest"))?;
        Ok(())
    }

    /// Makes a symlink in the guest.
    pub(crate) async fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.request(Op::Symlink { path: path.to_owned(), target: target.to_owned() })
            .await
            .with_context(|| format!("cannot make the link {path} in the guest"))?;
        Ok(())
    }

    /// The files and symlinks below `root` in the guest, with their hashes.
    pub(crate) async fn list(&mut self, root: &str, skip: Vec<String>) -> anyhow::Result<Vec<kiln_agent::ListEntry>> {
        let reply = self.request(Op::List { root: root.to_owned(), skip }).await?;
        Ok(reply.entries.unwrap_or_default())
    }

    /// Removes files below `root` in the guest.
    pub(crate) async fn remove(&mut self, root: &str, paths: Vec<String>) -> anyhow::Result<()> {
        self.request(Op::Remove { root: root.to_owned(), paths }).await?;
        Ok(())
    }

    /// Runs a program, handing its output chunks to `on_output(is_stderr, bytes)` as they come.
    pub(crate) async fn exec(
        &mut self,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        on_output: impl FnMut(bool, &[u8]),
    ) -> anyhow::Result<ExitStatus> {
        let id = self.send(Op::Exec { argv, env, cwd, stdin: None, interactive: false, merge_output: false }).await?;
        self.finish_exec(id, on_output, None, None).await
    }

    /// Runs a program as `kiln run` does: its standard input is `input` (sent as it comes
    /// until it ends) or empty, its stderr joins its stdout in one ordered stream when
    /// `merge_output`, and kiln's SIGINT and SIGTERM are passed on as in
    /// [`exec_interactive`](Self::exec_interactive).
    pub(crate) async fn exec_program<R: tokio::io::AsyncRead + Unpin + Send>(
        &mut self,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        input: Option<R>,
        merge_output: bool,
        on_output: impl FnMut(bool, &[u8]),
    ) -> anyhow::Result<ExitStatus> {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        let interactive = input.is_some();
        let id = self.send(Op::Exec { argv, env, cwd, stdin: None, interactive, merge_output }).await?;
        let input = input.map(|input| -> Box<dyn tokio::io::AsyncRead + Unpin + Send> { Box::new(input) });
        self.finish_exec(id, on_output, input, Some(signals)).await
    }

    /// Runs a program whose standard input is `input`, sent as it comes until it ends. kiln's
    /// own SIGINT and SIGTERM are passed on to the program's session in the guest (a second
    /// one kills it, a third stops waiting for it), so Ctrl-C stops the command, not just kiln.
    pub(crate) async fn exec_interactive<R: tokio::io::AsyncRead + Unpin + Send>(
        &mut self,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        input: R,
        on_output: impl FnMut(bool, &[u8]),
    ) -> anyhow::Result<ExitStatus> {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        let id = self.send(Op::Exec { argv, env, cwd, stdin: None, interactive: true, merge_output: false }).await?;
        self.finish_exec(id, on_output, Some(Box::new(input)), Some(signals)).await
    }

    async fn finish_exec(
        &mut self,
        id: u64,
        mut on_output: impl FnMut(bool, &[u8]),
        mut input: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send + '_>>,
        mut signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    ) -> anyhow::Result<ExitStatus> {
        let mut forwarded = 0;
        // A signal may race the program's end; the agent's "no running exec" is then no error.
        let mut signal_requests = Vec::new();
        use tokio::io::AsyncReadExt as _;
        let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text);
        let mut buf = vec![0u8; 16 * 1024];
        // `read_until` keeps what it read when the input's branch wins the race: the line
        // goes on where it stopped on the next turn.
        let mut line = Vec::new();
        loop {
            let chunk = tokio::select! {
                read = self.stream.read_until(b'\n', &mut line) => {
                    let n = read.context("cannot read from the agent")?;
                    anyhow::ensure!(n > 0 && line.ends_with(b"\n"), "the guest agent closed the connection");
                    None
                }
                read = async { input.as_mut()?.read(&mut buf).await.ok() }, if input.is_some() => Some(read.unwrap_or(0)),
                Some(signal) = async {
                    let (interrupt, terminate) = signals.as_mut()?;
                    tokio::select! {
                        _ = interrupt.recv() => Some(rustix::process::Signal::INT.as_raw()),
                        _ = terminate.recv() => Some(rustix::process::Signal::TERM.as_raw()),
                    }
                }, if signals.is_some() => {
                    forwarded += 1;
                    // A third one gives up on a guest that does not answer even SIGKILL.
                    anyhow::ensure!(forwarded < 3, "interrupted: the program did not end after SIGKILL");
                    let signal = if forwarded > 1 { rustix::process::Signal::KILL.as_raw() } else { signal };
                    signal_requests.push(self.send(Op::Signal { exec: id, signal }).await?);
                    continue;
                }
            };
            if let Some(n) = chunk {
                let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                if n == 0 {
                    input = None;
                }
                self.send(Op::Input { exec: id, data, eof: n == 0 }).await?;
                continue;
            }
            let response: Response = serde_json::from_slice(&line)
                .with_context(|| format!("the agent sent `{}`", String::from_utf8_lossy(&line).trim()))?;
            line.clear();
            if response.id != id {
                if let Body::Error(message) = response.body
                    && !signal_requests.contains(&response.id)
                {
                    anyhow::bail!("the guest agent: {message}");
                }
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

/// A failed write to the agent, as text: a broken pipe here means the guest went away, not
/// that kiln's own output was closed (which kiln exits quietly on).
fn agent_gone(err: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot write to the guest agent ({err}): the guest is gone")
}
