//! The agent on this host over standard input and output: the same protocol as on the
//! virtio port in a guest.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use base64::Engine as _;
use kiln_agent::{Body, ExitStatus, Op, PROTOCOL_VERSION, Request, Response};

struct Agent {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Agent {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, input, output }
    }

    fn send(&mut self, id: u64, op: Op) {
        let mut line = serde_json::to_vec(&Request { id, op }).expect("json");
        line.push(b'\n');
        self.input.write_all(&line).expect("write");
        self.input.flush().expect("flush");
    }

    fn next(&mut self) -> Response {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("`{line}` is not a response: {e}"))
    }

    fn hello(&mut self) {
        self.send(1, Op::Hello { version: PROTOCOL_VERSION });
        let Body::Ok(reply) = self.next().body else { panic!("hello failed") };
        assert!(reply.agent.is_some_and(|agent| agent.starts_with("kiln-agent ")));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

#[test]
fn a_wrong_protocol_version_is_an_error_and_nothing_runs_before_hello() {
    let mut agent = Agent::start();
    agent.send(1, Op::Ping);
    assert!(matches!(agent.next().body, Body::Error(e) if e.contains("hello")));
    agent.send(2, Op::Hello { version: PROTOCOL_VERSION + 1 });
    let Body::Error(message) = agent.next().body else { panic!("a wrong version must be an error") };
    assert!(message.contains(&format!("kiln speaks protocol {}", PROTOCOL_VERSION + 1)), "{message}");
    agent.hello();
    agent.send(3, Op::Ping);
    assert_eq!(agent.next(), Response { id: 3, body: Body::Ok(Default::default()) });
}

#[test]
fn exec_streams_output_passes_stdin_env_and_cwd_and_reports_the_status() {
    let mut agent = Agent::start();
    agent.hello();
    let parent = tempfile::tempdir().expect("tempdir");
    // A working directory that does not exist yet is created.
    let dir = parent.path().join("made/by/the/agent");
    // Field 6 of /proc/PID/stat is the session: the program must not lead its own.
    let script = "read line; echo \"got $line in $(pwd) with $GREETING\"; echo oops >&2; \
                  set -- $(cat /proc/$$/stat); [ \"$6\" != \"$$\" ] && echo child-of-leader; exit 3";
    agent.send(
        9,
        Op::Exec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: [("GREETING".to_owned(), "hi".to_owned()), ("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            cwd: Some(dir.display().to_string()),
            stdin: Some(base64::engine::general_purpose::STANDARD.encode("a line\n")),
        },
    );
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = loop {
        let response = agent.next();
        assert_eq!(response.id, 9);
        match response.body {
            Body::Stdout(chunk) => stdout.extend(decode(&chunk)),
            Body::Stderr(chunk) => stderr.extend(decode(&chunk)),
            Body::Exit(status) => break status,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(exit, ExitStatus::Code(3));
    let stdout = String::from_utf8_lossy(&stdout);
    assert_eq!(stdout, format!("got a line in {} with hi\nchild-of-leader\n", dir.display()));
    assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
}

#[test]
fn leftovers_are_killed_so_exec_ends_with_its_program() {
    let mut agent = Agent::start();
    agent.hello();
    // A background sleeper holding stdout open would keep a naive agent waiting for EOF.
    agent.send(
        4,
        Op::Exec {
            argv: vec!["sh".into(), "-c".into(), "sleep 300 & echo started".into()],
            env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            cwd: None,
            stdin: None,
        },
    );
    let started = std::time::Instant::now();
    loop {
        if let Body::Exit(status) = agent.next().body {
            assert_eq!(status, ExitStatus::Code(0));
            break;
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the sleeper was killed");
}

#[test]
fn put_checks_the_hash_and_get_returns_content_mode_and_hash() {
    let mut agent = Agent::start();
    agent.hello();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/dir/file").display().to_string();
    let data = b"bytes for the guest";
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    agent.send(5, Op::Put { path: path.clone(), mode: 0o750, data: encoded.clone(), blake3: "00".repeat(32) });
    assert!(matches!(agent.next().body, Body::Error(e) if e.contains("nothing was written")));
    assert!(!std::path::Path::new(&path).exists());
    let hash = blake3::hash(data).to_hex().to_string();
    agent.send(6, Op::Put { path: path.clone(), mode: 0o750, data: encoded.clone(), blake3: hash.clone() });
    assert_eq!(agent.next().body, Body::Ok(Default::default()));
    agent.send(7, Op::Get { path });
    let Body::Ok(reply) = agent.next().body else { panic!("get failed") };
    assert_eq!(reply.data.as_deref(), Some(encoded.as_str()));
    assert_eq!(reply.blake3.as_deref(), Some(hash.as_str()));
    assert_eq!(reply.mode, Some(0o750));
}
