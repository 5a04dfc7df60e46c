//! qcow2 images, converted from raw ones with `qemu-img`.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use crate::{
    errors::{Error, Result},
    tool::QEMU_IMG,
};

/// Converts the raw image `raw` to qcow2 at `out` with `qemu-img convert -f raw -O qcow2`
/// (from qemu-utils), through a temporary file beside `out` that is renamed into place.
pub fn convert_qcow2(raw: &Path, out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp =
        tempfile::Builder::new().prefix(".kiln-qcow2-").suffix(".qcow2").tempfile_in(parent).map_err(|source| {
            Error::Io { action: "create a temporary image in", path: parent.to_path_buf(), source }
        })?;
    let args = [
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        raw.as_os_str(),
        tmp.path().as_os_str(),
    ];
    QEMU_IMG.run(args, &[], "")?;
    tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(|source| Error::Io {
        action: "set the mode of",
        path: tmp.path().to_path_buf(),
        source,
    })?;
    tmp.persist(out).map_err(|e| Error::Io {
        action: "rename the finished image to",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}
