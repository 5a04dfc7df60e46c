//! The agent on this host over standard input and output: the same protocol as on the
//! virtio port in a guest.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt as _,
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
            interactive: false,
            merge_output: false,
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
fn merged_output_keeps_the_order_and_a_death_by_signal_is_reported_as_one() {
    let mut agent = Agent::start();
    agent.hello();
    agent.send(
        3,
        Op::Exec {
            argv: vec!["sh".into(), "-c".into(), "echo a; echo b >&2; echo c; echo d >&2; kill -ABRT $$".into()],
            env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            cwd: None,
            stdin: None,
            interactive: false,
            merge_output: true,
        },
    );
    let mut stdout = Vec::new();
    let exit = loop {
        match agent.next().body {
            Body::Stdout(chunk) => stdout.extend(decode(&chunk)),
            Body::Exit(status) => break status,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(String::from_utf8_lossy(&stdout), "a\nb\nc\nd\n", "one stream, in the order written");
    assert_eq!(exit, ExitStatus::Signal(6), "the program died by SIGABRT, not with status 134");
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
            interactive: false,
            merge_output: false,
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
    agent.send(
        5,
        Op::Put { path: path.clone(), mode: 0o750, data: encoded.clone(), blake3: "00".repeat(32), length: None },
    );
    assert!(matches!(agent.next().body, Body::Error(e) if e.contains("nothing was written")));
    assert!(!std::path::Path::new(&path).exists());
    let hash = blake3::hash(data).to_hex().to_string();
    agent.send(
        6,
        Op::Put { path: path.clone(), mode: 0o750, data: encoded.clone(), blake3: hash.clone(), length: None },
    );
    assert_eq!(agent.next().body, Body::Ok(Default::default()));
    agent.send(7, Op::Get { path });
    let Body::Ok(reply) = agent.next().body else { panic!("get failed") };
    assert_eq!(reply.data.as_deref(), Some(encoded.as_str()));
    assert_eq!(reply.blake3.as_deref(), Some(hash.as_str()));
    assert_eq!(reply.mode, Some(0o750));
}

#[test]
fn interactive_exec_reads_input_as_it_is_sent_until_its_end() {
    let mut agent = Agent::start();
    agent.hello();
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let exec = Op::Exec {
        argv: vec!["sh".into(), "-c".into(), "while read line; do echo \"got $line\"; done; echo done".into()],
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        cwd: None,
        stdin: None,
        interactive: true,
        merge_output: false,
    };
    agent.send(2, exec);
    agent.send(3, Op::Input { exec: 2, data: encode("one\n"), eof: false });
    // The first line comes back before the second is sent: input is streamed, not batched.
    let Body::Stdout(first) = agent.next().body else { panic!("expected output") };
    assert_eq!(decode(&first), b"got one\n");
    agent.send(4, Op::Input { exec: 2, data: encode("two\n"), eof: true });
    let mut output = Vec::new();
    loop {
        match agent.next().body {
            Body::Stdout(chunk) => output.extend(decode(&chunk)),
            Body::Exit(status) => {
                assert_eq!(status, ExitStatus::Code(0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&output), "got two\ndone\n");
    agent.send(5, Op::Input { exec: 2, data: encode("late\n"), eof: false });
    assert!(matches!(agent.next().body, Body::Error(message) if message.contains("no interactive exec 2")));
}

#[test]
fn list_hashes_files_and_links_and_remove_prunes_emptied_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
    std::fs::create_dir_all(root.join("skipped")).expect("mkdir");
    std::fs::write(root.join("a/b/file"), b"content").expect("write");
    std::fs::write(root.join("skipped/x"), b"x").expect("write");
    std::os::unix::fs::symlink("a/b/file", root.join("link")).expect("symlink");
    let mut agent = Agent::start();
    agent.hello();
    let root_text = root.to_string_lossy().into_owned();
    agent.send(2, Op::List { root: root_text.clone(), skip: vec!["skipped".into()] });
    let Body::Ok(reply) = agent.next().body else { panic!("list failed") };
    let entries = reply.entries.expect("entries");
    let listed: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.hash.as_str())).collect();
    let content_hash = blake3::hash(b"content").to_hex().to_string();
    assert_eq!(listed, [("a/b/file", content_hash.as_str()), ("link", "link:a/b/file")]);

    agent.send(3, Op::Symlink { path: root.join("c/link2").to_string_lossy().into_owned(), target: "../link".into() });
    assert!(matches!(agent.next().body, Body::Ok(_)));
    assert_eq!(std::fs::read_link(root.join("c/link2")).expect("link"), std::path::Path::new("../link"));

    // A directory and its parents; one that exists keeps its mode.
    let made = root.join("d/e/tmp");
    agent.send(6, Op::Mkdir { path: made.to_string_lossy().into_owned(), mode: 0o700 });
    assert!(matches!(agent.next().body, Body::Ok(_)));
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("made").permissions().mode() & 0o7777;
    assert_eq!(mode(&made), 0o700);
    agent.send(7, Op::Mkdir { path: made.to_string_lossy().into_owned(), mode: 0o755 });
    assert!(matches!(agent.next().body, Body::Ok(_)));
    assert_eq!(mode(&made), 0o700, "an existing directory is left as it is");
    agent.send(8, Op::Mkdir { path: root.join("link").to_string_lossy().into_owned(), mode: 0o755 });
    assert!(matches!(agent.next().body, Body::Error(_)), "a file is in the way");

    agent.send(4, Op::Remove { root: root_text.clone(), paths: vec!["a/b/file".into(), "gone".into()] });
    assert!(matches!(agent.next().body, Body::Ok(_)));
    assert!(!root.join("a").exists(), "emptied directories are removed up to the root");
    assert!(root.exists());
    agent.send(5, Op::Remove { root: root_text, paths: vec!["../escape".into()] });
    assert!(matches!(agent.next().body, Body::Error(_)));
}

#[test]
fn raw_puts_carry_their_bytes_after_the_line_and_keep_the_stream_in_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw.bin").to_string_lossy().into_owned();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let hash = blake3::hash(&content).to_hex().to_string();
    let mut agent = Agent::start();
    agent.hello();
    let raw_put = |blake3: String| Op::Put {
        path: path.clone(),
        mode: 0o640,
        data: String::new(),
        blake3,
        length: Some(content.len() as u64),
    };
    // A wrong hash is refused, yet its bytes are consumed: the next request is understood.
    agent.send(2, raw_put("00".repeat(32)));
    agent.input.write_all(&content).expect("write");
    agent.send(3, raw_put(hash));
    agent.input.write_all(&content).expect("write");
    agent.send(4, Op::Ping);
    assert!(matches!(agent.next().body, Body::Error(message) if message.contains("nothing was written")));
    assert!(matches!(agent.next().body, Body::Ok(_)));
    assert!(matches!(agent.next(), Response { id: 4, body: Body::Ok(_) }));
    assert_eq!(std::fs::read(&path).expect("read"), content);
}

#[test]
fn a_sandbox_and_a_clock_are_refused_outside_a_guest_and_this_host_keeps_its_processes() {
    // Making a sandbox kills every other process the agent may signal: on a host that would
    // be the user's session, so `--stdio` refuses it and a process of this test lives on.
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("start sleep");
    let mut agent = Agent::start();
    agent.hello();
    agent.send(2, Op::Sandbox);
    let Body::Error(message) = agent.next().body else { panic!("a sandbox under --stdio must be refused") };
    assert!(message.contains("only inside a guest"), "{message}");
    assert!(sleeper.try_wait().expect("wait").is_none(), "the sandbox request killed a host process");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // Nor does it set a host's clock.
    agent.send(3, Op::SetClock { unix_nanos: 0 });
    let Body::Error(message) = agent.next().body else { panic!("setting the clock under --stdio must be refused") };
    assert!(message.contains("only inside a guest"), "{message}");
}

#[test]
fn the_program_is_no_session_leader_and_a_missing_one_exits_127_as_in_a_shell() {
    let mut agent = Agent::start();
    agent.hello();
    let exec = |argv: &[&str]| Op::Exec {
        argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        cwd: None,
        stdin: None,
        interactive: false,
        merge_output: false,
    };
    let finish = |agent: &mut Agent| {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match agent.next().body {
                Body::Stdout(chunk) => stdout.extend(decode(&chunk)),
                Body::Stderr(chunk) => stderr.extend(decode(&chunk)),
                Body::Exit(status) => {
                    break (
                        status,
                        String::from_utf8_lossy(&stdout).into_owned(),
                        String::from_utf8_lossy(&stderr).into_owned(),
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    // Fields 1, 5 and 6 of /proc/PID/stat: its pid, process group and session.
    let ids = "set -- $(cat /proc/$$/stat); [ \"$1\" != \"$6\" ] && [ \"$5\" = \"$6\" ] && echo led by its parent";
    agent.send(5, exec(&["sh", "-c", ids]));
    let (status, stdout, stderr) = finish(&mut agent);
    assert_eq!(status, ExitStatus::Code(0), "stderr: {stderr}");
    assert_eq!(stdout, "led by its parent\n", "in the session its parent leads, not leading one");
    agent.send(6, exec(&["kiln-no-such-program"]));
    let (status, _, stderr) = finish(&mut agent);
    assert_eq!(status, ExitStatus::Code(127));
    assert!(stderr.contains("cannot run `kiln-no-such-program`"), "{stderr}");
}

#[test]
fn a_forwarded_signal_reaches_the_program_s_handler_and_the_exec_ends_as_it_exits() {
    let mut agent = Agent::start();
    agent.hello();
    let script = "trap 'echo cleaned up; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    agent.send(
        7,
        Op::Exec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            cwd: None,
            stdin: None,
            interactive: false,
            merge_output: false,
        },
    );
    let mut stdout = String::new();
    let mut signalled = false;
    let exit = loop {
        match agent.next().body {
            Body::Stdout(chunk) => {
                stdout.push_str(&String::from_utf8_lossy(&decode(&chunk)));
                if stdout.contains("ready") && !signalled {
                    signalled = true;
                    agent.send(8, Op::Signal { exec: 7, signal: libc::SIGTERM });
                }
            }
            Body::Exit(status) => break status,
            Body::Ok(_) | Body::Stderr(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(stdout, "ready\ncleaned up\n", "the program's handler ran");
    assert_eq!(exit, ExitStatus::Code(7), "the exec ends as the program did, not by the leader's SIGTERM");
}
