//! `cargo kiln` as a separate process, for tests that need one (exit codes seen by
//! a shell, stderr text, SIGKILL of kiln itself).
//!
//! With `KILN_IT_PEAK_RSS_FILE` set, it writes its peak resident set size (the `VmHWM` line
//! of `/proc/self/status`) to that file before it exits, so a test can bound kiln's memory.

fn main() -> std::process::ExitCode {
    let code = kiln::xtask::standalone_main();
    if let Some(path) = std::env::var_os("KILN_IT_PEAK_RSS_FILE") {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let peak = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap_or("VmHWM: unknown");
        if let Err(err) = std::fs::write(&path, peak) {
            eprintln!("kiln-it: cannot write {}: {err}", std::path::Path::new(&path).display());
        }
    }
    code
}
