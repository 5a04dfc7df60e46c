//! `cargo xtask`: kiln's commands for this repository and its bundled example.

fn main() -> std::process::ExitCode {
    kiln::xtask::main()
}
