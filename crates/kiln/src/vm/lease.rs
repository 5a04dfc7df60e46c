//! The keeper's socket protocol: one JSON line each way, and for a granted lease the agent's
//! connection passed along with the answer (SCM_RIGHTS). A lease lasts as long as the
//! leaseholder keeps its connection to the keeper open.

use std::{
    io::{BufRead as _, IoSlice, IoSliceMut, Write as _},
    mem::MaybeUninit,
    os::{
        fd::{BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};

/// What a client asks a keeper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "kebab-case")]
pub(crate) enum Ask {
    /// A guest to use: a pool answers at once (granted or busy), a session waits its turn.
    Lease,
    /// What the keeper holds.
    Status,
    /// Kill the guests and exit.
    Stop,
}

/// A keeper's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub(crate) enum Answer {
    /// A guest is yours; its agent's connection comes with this line.
    Granted {
        /// QEMU's process id.
        qemu_pid: u32,
        /// The guest's console log (what the kernel says if the guest dies).
        console: PathBuf,
        /// The host side of the guest's inbox share, when it has one.
        inbox: Option<PathBuf>,
        /// Whether the guest has mounted its inbox already (at
        /// [`INBOX_GUEST_PATH`](super::snapshot::INBOX_GUEST_PATH)); keepers of older kilns
        /// do not say, and their guests have not.
        #[serde(default)]
        inbox_mounted: bool,
    },
    /// No idle guest now (pools only): restore one yourself.
    Busy,
    /// The keeper's state.
    Status(KeeperStatus),
    /// The keeper is stopping.
    Stopping,
}

/// What `Ask::Status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeeperStatus {
    /// `pool` or `session`.
    pub kind: String,
    /// The guest architecture.
    pub arch: String,
    /// The keeper's process id.
    pub pid: u32,
    /// Idle guests.
    pub idle: usize,
    /// Leased guests.
    pub leased: usize,
    /// Guests whose lease ended, being renewed for the next one (keepers of older kilns do
    /// not say, and count them as leased).
    #[serde(default)]
    pub renewing: usize,
    /// Leases served by a guest that had served one before (renewed in a fresh sandbox).
    #[serde(default)]
    pub reused: u64,
}

/// A held lease: the agent's connection, and the keeper connection whose closing ends it.
pub(crate) struct Lease {
    /// The agent's connection, already handshaken.
    pub agent: UnixStream,
    /// The guest's console log.
    pub console: PathBuf,
    /// The host side of the guest's inbox share.
    pub inbox: Option<PathBuf>,
    /// Whether the guest has mounted its inbox.
    pub inbox_mounted: bool,
    /// The connection whose closing ends the lease.
    keeper: UnixStream,
}

impl Lease {
    /// Whether the keeper ended this lease itself (it stopped, or died), waiting up to
    /// `grace` for it to say so: a keeper that stops kills its guests first and closes the
    /// leaseholders' connections as it exits.
    pub(crate) fn keeper_gone(&self, grace: Duration) -> bool {
        use std::io::Read as _;
        if self.keeper.set_read_timeout(Some(grace)).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        match (&self.keeper).read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        }
    }
}

/// Sends `answer` on `socket`, with `fd` attached when given.
pub(crate) fn send_answer(socket: BorrowedFd<'_>, answer: &Answer, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let sent = sendmsg(socket, &[IoSlice::new(&line)], &mut control, SendFlags::NOSIGNAL)?;
    if sent < line.len() {
        // The descriptor went with the first bytes; the rest is plain data.
        let stream = UnixStream::from(socket.try_clone_to_owned()?);
        (&stream).write_all(&line[sent..])?;
    }
    Ok(())
}

/// Reads one answer line, and the descriptor that came with it.
fn receive_answer(stream: &UnixStream) -> anyhow::Result<(Answer, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let message = recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            .context("cannot read the keeper's answer")?;
        let mut fd = None;
        for cmsg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = cmsg {
                for owned in fds {
                    fd.get_or_insert(owned);
                }
            }
        }
        (message.bytes, fd)
    };
    anyhow::ensure!(n > 0, "the keeper closed the connection without answering");
    let mut line = buf[..n].to_vec();
    if !line.ends_with(b"\n") {
        let mut rest = std::io::BufReader::new(stream);
        rest.read_until(b'\n', &mut line).context("cannot read the keeper's answer")?;
    }
    let answer = serde_json::from_slice(&line)
        .with_context(|| format!("the keeper answered `{}`", String::from_utf8_lossy(&line).trim()))?;
    Ok((answer, fd))
}

/// Connects to the keeper at `socket`; `None` when no keeper listens there.
pub(crate) fn connect(socket: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket).ok()
}

/// Asks the keeper on `stream` and returns its answer (a lease's descriptor attached).
pub(crate) fn ask(
    stream: &UnixStream,
    ask: &Ask,
    timeout: Option<Duration>,
) -> anyhow::Result<(Answer, Option<OwnedFd>)> {
    stream.set_read_timeout(timeout).context("cannot set a timeout on the keeper's socket")?;
    let mut line = serde_json::to_vec(ask)?;
    line.push(b'\n');
    (&*stream).write_all(&line).context("cannot write to the keeper")?;
    receive_answer(stream)
}

/// Asks for a lease: `Ok(None)` when the keeper has no idle guest (a pool), waiting up to
/// `timeout` for one otherwise.
pub(crate) fn take(socket: &Path, timeout: Option<Duration>) -> anyhow::Result<Option<Lease>> {
    let stream = UnixStream::connect(socket).with_context(|| format!("no keeper listens at {}", socket.display()))?;
    match ask(&stream, &Ask::Lease, timeout)? {
        (Answer::Granted { console, inbox, inbox_mounted, .. }, Some(fd)) => {
            Ok(Some(Lease { agent: UnixStream::from(fd), console, inbox, inbox_mounted, keeper: stream }))
        }
        (Answer::Granted { .. }, None) => anyhow::bail!("the keeper granted a guest but sent no connection"),
        (Answer::Busy, _) => Ok(None),
        (other, _) => anyhow::bail!("the keeper answered {other:?} to a lease"),
    }
}
