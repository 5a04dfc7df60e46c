//! Saving a guest's state over QMP and bringing it back in a fresh QEMU: the mechanism of
//! booted snapshots, on a real QEMU (an x86 machine paused before its first instruction).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kiln_qemu::qmp::{Qmp, incoming_arg};

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(socket: &Path, extra: &[&str]) -> Qemu {
    let mut qmp = std::ffi::OsString::from("unix:");
    qmp.push(socket);
    qmp.push(",server=on,wait=off");
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-m", "64M", "-nodefaults", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(qmp)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    Qemu(child)
}

#[test]
fn a_saved_state_restores_in_a_fresh_qemu_and_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state with 'quotes'");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let first_socket = dir.path().join("first.qmp");
        let _first = start(&first_socket, &[]);
        let mut qmp = Qmp::connect(&first_socket, Duration::from_secs(10)).await.expect("connect");
        assert_eq!(qmp.status().await.expect("status"), "prelaunch");
        qmp.save_state(&state, Duration::from_secs(60)).await.expect("save");
        let size = std::fs::metadata(&state).expect("the state file").len();
        assert!(size > 100 * 1024, "a whole machine's state (zero pages are sent compactly): {size} bytes");

        let second_socket = dir.path().join("second.qmp");
        let incoming = incoming_arg(&state);
        let started = Instant::now();
        let _second = start(&second_socket, &["-incoming", &incoming]);
        let mut qmp = Qmp::connect(&second_socket, Duration::from_secs(10)).await.expect("connect");
        qmp.resume_from_state(Duration::from_secs(60)).await.expect("restore");
        let restored = started.elapsed();
        assert_eq!(qmp.status().await.expect("status"), "running");
        eprintln!("restored {size} bytes of state and running in {:.3}s", restored.as_secs_f64());

        let err = qmp.execute("no-such-command", None).await.expect_err("an unknown command");
        assert!(err.to_string().contains("no-such-command"), "{err}");
    });
}
