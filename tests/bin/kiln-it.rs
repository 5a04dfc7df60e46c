//! `cargo kiln` as a separate process, for tests that need one (exit codes seen by
//! a shell, stderr text, SIGKILL of kiln itself).

fn main() -> std::process::ExitCode {
    kiln::xtask::standalone_main()
}
