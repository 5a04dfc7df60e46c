//! `kiln`: the same program as `cargo kiln`, under a shorter name.

fn main() -> std::process::ExitCode {
    kiln::xtask::standalone_main()
}
