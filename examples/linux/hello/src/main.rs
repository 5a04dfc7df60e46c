//! Runs inside kiln's example Linux guest: says where it runs, and exits with the status
//! given by `--exit N` (the example's failing case uses 3).

fn main() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("hello from kiln on {} (Linux {})", std::env::consts::ARCH, release.trim());
    let args: Vec<String> = std::env::args().collect();
    let status = args
        .iter()
        .position(|arg| arg == "--exit")
        .and_then(|at| args.get(at + 1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    std::process::exit(status);
}
