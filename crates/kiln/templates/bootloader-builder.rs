//! kiln's disk image builder for kernels that use `bootloader_api`, written by kiln into its
//! cache and built once per `bootloader` version.
//!
//! `builder bios|uefi KERNEL IMAGE [KERNEL IMAGE]...` writes, for each kernel ELF, a BIOS or a
//! UEFI disk image with the `bootloader` crate this package pins (the version the kernel's
//! `bootloader_api` resolves to), as the bootloader's own template does in its `build.rs`.

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "usage: builder bios|uefi KERNEL IMAGE [KERNEL IMAGE]...";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let firmware = args.next().and_then(|firmware| firmware.into_string().ok());
    let paths: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if paths.is_empty() || paths.len() % 2 != 0 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    for pair in paths.chunks(2) {
        let (kernel, image) = (&pair[0], &pair[1]);
        let made = match firmware.as_deref() {
            Some("bios") => bootloader::BiosBoot::new(kernel).create_disk_image(image),
            Some("uefi") => bootloader::UefiBoot::new(kernel).create_disk_image(image),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        if let Err(err) = made {
            eprintln!("cannot make the disk image of `{}`: {err:#}", kernel.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
