//! `cargo kiln`: kiln's commands and `init`; hands over to a repository's own kiln xtask.

fn main() -> std::process::ExitCode {
    kiln::xtask::standalone_main()
}
