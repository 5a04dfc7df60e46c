//! Saving a guest's state over QMP and bringing it back in a fresh QEMU: the mechanism of
//! booted snapshots, on a real QEMU (an x86 machine paused before its first instruction),
//! with the memory in the stream and with it mapped from a file.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kiln_qemu::qmp::{DEFERRED, Qmp};

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
        .args(["-machine", "q35,accel=tcg,memory-backend=kiln-ram", "-m", "64M", "-nodefaults", "-display", "none"])
        .arg("-S")
        .arg("-qmp")
        .arg(qmp)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    Qemu(child)
}

/// `-object` for the machine's memory: anonymous, or the file `path` (`share=on|off`).
fn memory(path: Option<(&Path, bool)>) -> String {
    match path {
        None => "memory-backend-ram,id=kiln-ram,size=64M".to_owned(),
        Some((path, shared)) => format!(
            "memory-backend-file,id=kiln-ram,size=64M,share={},mem-path={}",
            if shared { "on" } else { "off" },
            path.display()
        ),
    }
}

#[test]
fn a_saved_state_restores_in_a_fresh_qemu_and_runs_on_with_its_memory_in_the_stream_or_mapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state with 'quotes'");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let first_socket = dir.path().join("first.qmp");
        let _first = start(&first_socket, &["-object", &memory(None)]);
        let mut qmp = Qmp::connect(&first_socket, Duration::from_secs(10)).await.expect("connect");
        assert_eq!(qmp.status().await.expect("status"), "prelaunch");
        qmp.save_state(&state, false, Duration::from_secs(60)).await.expect("save");
        let size = std::fs::metadata(&state).expect("the state file").len();
        assert!(size > 100 * 1024, "a whole machine's state (zero pages are sent compactly): {size} bytes");

        let second_socket = dir.path().join("second.qmp");
        let started = Instant::now();
        let _second = start(&second_socket, &["-object", &memory(None), "-incoming", DEFERRED]);
        let mut qmp = Qmp::connect(&second_socket, Duration::from_secs(10)).await.expect("connect");
        qmp.resume_from_state(&state, false, Duration::from_secs(60)).await.expect("restore");
        let restored = started.elapsed();
        assert_eq!(qmp.status().await.expect("status"), "running");
        eprintln!("restored {size} bytes of state and running in {:.3}s", restored.as_secs_f64());

        let err = qmp.execute("no-such-command", None).await.expect_err("an unknown command");
        assert!(err.to_string().contains("no-such-command"), "{err}");

        // The same state loaded into a shared memory file, and saved again without the memory.
        let (memory_file, devices) = (dir.path().join("memory"), dir.path().join("devices"));
        let third_socket = dir.path().join("third.qmp");
        let third = start(&third_socket, &["-object", &memory(Some((&memory_file, true))), "-incoming", DEFERRED]);
        let mut qmp = Qmp::connect(&third_socket, Duration::from_secs(10)).await.expect("connect");
        qmp.load_state(&state, false, Duration::from_secs(60)).await.expect("load into the file");
        qmp.save_state(&devices, true, Duration::from_secs(60)).await.expect("save without the memory");
        drop(third);
        let devices_size = std::fs::metadata(&devices).expect("the devices' state").len();
        assert!(devices_size < size, "the memory stays out of the stream: {devices_size} of {size} bytes");
        let file_size = std::fs::metadata(&memory_file).expect("the memory file").len();
        assert_eq!(file_size, 64 << 20);
        let before = std::fs::read(&memory_file).expect("read the memory file");

        // Mapped copy-on-write: the guest runs, and the file does not change.
        let fourth_socket = dir.path().join("fourth.qmp");
        let _fourth = start(&fourth_socket, &["-object", &memory(Some((&memory_file, false))), "-incoming", DEFERRED]);
        let mut qmp = Qmp::connect(&fourth_socket, Duration::from_secs(10)).await.expect("connect");
        qmp.resume_from_state(&devices, true, Duration::from_secs(60)).await.expect("restore mapped");
        assert_eq!(qmp.status().await.expect("status"), "running");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(std::fs::read(&memory_file).expect("read the memory file") == before, "the mapped file changed");

        // Both sides must agree on leaving the memory out: a mismatch is an error, not a guest.
        let fifth_socket = dir.path().join("fifth.qmp");
        let _fifth = start(&fifth_socket, &["-object", &memory(None), "-incoming", DEFERRED]);
        let mut qmp = Qmp::connect(&fifth_socket, Duration::from_secs(10)).await.expect("connect");
        assert!(qmp.resume_from_state(&devices, false, Duration::from_secs(60)).await.is_err());
    });
}
