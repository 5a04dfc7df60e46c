//! The protocol between kiln and `kiln-agent`, its guest agent: one JSON object per line in
//! each direction. kiln sends [`Request`]s, each with an `id`; the agent answers with
//! [`Response`]s carrying the same `id`. An `exec` streams `stdout`/`stderr` chunks before
//! its final `exit`; every other request gets one `ok` or `error`. The first request must be
//! `hello` with [`PROTOCOL_VERSION`]; an agent of another version answers with an error
//! naming both versions, never silence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where this crate's source is: kiln builds the agent for each guest architecture from it.
pub const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The protocol version both sides must speak.
pub const PROTOCOL_VERSION: u32 = 6;

/// A request from kiln.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by kiln; echoed in every response to this request.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// The handshake: kiln's protocol version.
    Hello {
        /// kiln's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Is the agent alive?
    Ping,
    /// Runs a program as the child of a new session's leader.
    Exec {
        /// Program and arguments (`argv[0]` is looked up in `PATH`).
        argv: Vec<String>,
        /// The whole environment of the program.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory (created when missing).
        #[serde(default)]
        cwd: Option<String>,
        /// Standard input (base64), then end of file.
        #[serde(default)]
        stdin: Option<String>,
        /// Keep standard input open for [`Op::Input`] requests (ignores `stdin`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interactive: bool,
        /// Standard error goes where standard output goes: one pipe, one ordered `stdout`
        /// stream (the host's stdout and stderr are one file, as under `2>&1`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        merge_output: bool,
    },
    /// More standard input for an interactive `exec`; answered only on error.
    Input {
        /// The `exec` request's id.
        exec: u64,
        /// Bytes (base64).
        #[serde(default)]
        data: String,
        /// Close the program's standard input after these bytes.
        #[serde(default)]
        eof: bool,
    },
    /// Sends a signal to a running `exec`'s whole session (its process group).
    Signal {
        /// The `exec` request's id.
        exec: u64,
        /// The signal number (2: SIGINT, 15: SIGTERM, 9: SIGKILL).
        signal: i32,
    },
    /// Lists the regular files and symlinks below a directory with their hashes (a missing
    /// directory lists as empty).
    List {
        /// Guest directory.
        root: String,
        /// Relative paths of directories not to descend into.
        #[serde(default)]
        skip: Vec<String>,
    },
    /// Removes files and symlinks (absent ones are not an error), then directories left empty
    /// by that, up to `root`.
    Remove {
        /// The directory the paths are relative to.
        root: String,
        /// Relative paths.
        paths: Vec<String>,
    },
    /// Writes a file (parent directories are created).
    Put {
        /// Guest path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Content (base64), unless `length` is given.
        #[serde(default)]
        data: String,
        /// BLAKE3 of the content (hex); the agent refuses content that does not match.
        blake3: String,
        /// The content is this many raw bytes right after the request's line (no base64:
        /// a third less to send, nothing to decode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length: Option<u64>,
    },
    /// Makes a directory and its missing parents (one that exists already is not an error).
    Mkdir {
        /// Guest path.
        path: String,
        /// Permission bits of the directory itself.
        mode: u32,
    },
    /// Makes a symlink (parent directories are created; what was at `path` is replaced).
    Symlink {
        /// Guest path of the link.
        path: String,
        /// What it points to.
        target: String,
    },
    /// Mounts a 9p share read-only (with page caching, so programs on it can run); mounting
    /// where it is mounted already is not an error.
    Mount9p {
        /// The share's tag.
        tag: String,
        /// Guest directory (created when missing).
        path: String,
    },
    /// Makes `path` a writable view of the directory `lower` (one the guest can read, such as
    /// a directory of a 9p share): an overlay whose upper layer is a fresh tmpfs, so what the
    /// guest writes there stays in the guest. `path` is created when missing.
    MountOverlay {
        /// The directory shown at `path`.
        lower: String,
        /// Guest directory.
        path: String,
    },
    /// Reads a file.
    Get {
        /// Guest path.
        path: String,
    },
    /// Gives the next leaseholder of a pool guest a clean guest: kills every process but init
    /// and the agent, then roots the agent in a fresh sandbox (an overlay over the guest's
    /// root with a new tmpfs as its upper layer, the guest's mounts bound in and its tmpfs
    /// mounts made anew), so later requests and the programs they run see none of what an
    /// earlier leaseholder wrote. Refused outside a guest (`--stdio`).
    Sandbox,
    /// Sets the guest's wall clock (a restored snapshot wakes at the time it was saved).
    /// Refused outside a guest (`--stdio`).
    SetClock {
        /// Nanoseconds since the Unix epoch.
        unix_nanos: u64,
    },
    /// Powers the guest off.
    Shutdown,
}

/// A response from the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// The kinds of response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Body {
    /// Done; `get` returns the file, `hello` the agent's version.
    Ok(Reply),
    /// Failed, with why.
    Error(String),
    /// A chunk of an `exec`'s standard output (base64).
    Stdout(String),
    /// A chunk of an `exec`'s standard error (base64).
    Stderr(String),
    /// How an `exec` ended; the last response to it.
    Exit(ExitStatus),
}

/// The payload of an `ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// `hello`: the agent's protocol version and build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `get`: the content (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// `get`: BLAKE3 of the content (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// `get`: permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `list`: the entries, sorted by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<ListEntry>>,
}

/// One entry of a `list`: what a workspace sync compares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListEntry {
    /// Path relative to the listed root, `/`-separated.
    pub path: String,
    /// Permission bits (files), 0 for symlinks.
    pub mode: u32,
    /// BLAKE3 of a file's content, or `link:TARGET` for a symlink.
    pub hash: String,
}

/// How a program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_status(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
        }
    }
}

/// The agent's identification in a `hello` reply: `kiln-agent <crate version> protocol <n>`.
pub fn agent_banner() -> String {
    format!("kiln-agent {} protocol {PROTOCOL_VERSION}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_one_json_object_each() {
        let request = Request {
            id: 7,
            op: Op::Exec {
                argv: vec!["true".into()],
                env: BTreeMap::new(),
                cwd: None,
                stdin: None,
                interactive: false,
                merge_output: false,
            },
        };
        let line = serde_json::to_string(&request).expect("json");
        assert_eq!(line, r#"{"id":7,"op":"exec","argv":["true"],"env":{},"cwd":null,"stdin":null}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), request);
        let exit = Response { id: 7, body: Body::Exit(ExitStatus::Code(3)) };
        assert_eq!(serde_json::to_string(&exit).expect("json"), r#"{"id":7,"exit":{"code":3}}"#);
        assert_eq!(ExitStatus::Signal(9).shell_status(), 137);
    }
}
