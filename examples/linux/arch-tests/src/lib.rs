//! Tests meant to run in a VM: `cargo test --target aarch64-unknown-linux-musl` with kiln as
//! the target runner (see `examples/.cargo/config.toml`).

/// The machine the running kernel reports (`uname -m`).
pub fn machine() -> String {
    let mut uts: [u8; 390] = [0; 390];
    // SAFETY: `utsname` on Linux is six 65-byte NUL-terminated fields; the buffer is that size.
    let rc = unsafe { uname(uts.as_mut_ptr()) };
    assert_eq!(rc, 0, "uname failed");
    let field = &uts[4 * 65..5 * 65];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

unsafe extern "C" {
    fn uname(buf: *mut u8) -> i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_runs_the_architecture_we_were_built_for() {
        assert_eq!(machine(), std::env::consts::ARCH);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn on_aarch64() {
        assert_eq!(std::env::consts::ARCH, "aarch64");
        assert_eq!(machine(), "aarch64");
    }

    #[test]
    fn reads_a_fixture_from_the_package_directory() {
        let absolute = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/greeting.txt");
        let text = std::fs::read_to_string(absolute).expect("the package directory is shared with the guest");
        assert_eq!(text.trim(), "hello from the host's package directory");
        let relative = std::fs::read_to_string("fixtures/greeting.txt").expect("cwd is the package directory");
        assert_eq!(relative, text);
    }

    #[test]
    fn has_a_writable_tmp() {
        let path = std::env::temp_dir().join(format!("arch-tests-{}", std::process::id()));
        std::fs::write(&path, b"scratch").expect("/tmp is writable");
        assert_eq!(std::fs::read(&path).expect("read back"), b"scratch");
        std::fs::remove_file(&path).expect("remove");
    }

    #[cfg(feature = "fail")]
    #[test]
    fn fails_on_purpose() {
        assert_eq!(machine(), "a machine that does not exist", "this test fails on purpose");
    }
}
