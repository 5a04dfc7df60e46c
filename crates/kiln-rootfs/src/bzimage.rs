//! The ELF kernel inside an x86 `bzImage`, for booting it directly (PVH) instead of through
//! the bzImage's own decompressor, which under TCG costs a large share of a boot.

use std::io::Read;

/// The legacy LZ4 frame the kernel build uses (`lz4 -l`).
const LZ4_LEGACY: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
/// Each legacy LZ4 block decompresses to at most this much.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Decompresses the payload of an x86 `bzImage` (gzip, xz, zstd or legacy LZ4) and returns
/// the ELF `vmlinux`; `None` when `image` is not a bzImage or its payload is in another
/// format (bzip2, lzma, lzo), so the caller boots the bzImage as it is.
pub fn vmlinux_from_bzimage(image: &[u8]) -> Option<Vec<u8>> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let word =
        |at: usize| -> Option<usize> { Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?) as usize) };
    let start = (setup_sects + 1) * 512 + word(0x248)?;
    let payload = image.get(start..start + word(0x24c)?)?;
    let elf = if payload.starts_with(LZ4_LEGACY) {
        lz4_legacy(&payload[LZ4_LEGACY.len()..])?
    } else {
        let mut out = Vec::new();
        let mut reader = crate::decompress::decoder(payload).ok()?;
        // The payload ends with its uncompressed size; a decoder may complain about it.
        let _ = reader.read_to_end(&mut out);
        out
    };
    elf.starts_with(b"\x7fELF").then_some(elf)
}

/// Legacy LZ4 blocks: a little-endian compressed size, then the block; what follows the
/// last block (the kernel appends the uncompressed size) is not a valid block and ends it.
fn lz4_legacy(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while data.len() > 4 {
        let size = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
        if size == 0 || size > data.len() - 4 {
            break;
        }
        let n = lz4_flex::block::decompress_into(&data[4..4 + size], &mut block).ok()?;
        out.extend_from_slice(&block[..n]);
        data = &data[4 + size..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn a_legacy_lz4_payload_yields_the_elf() {
        let elf: Vec<u8> = b"\x7fELF".iter().copied().chain((0..100_000u32).map(|i| (i % 251) as u8)).collect();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = LZ4_LEGACY.to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(vmlinux_from_bzimage(&bzimage(&payload)), Some(elf));
    }

    #[test]
    fn a_gzip_payload_yields_the_elf() {
        use std::io::Write as _;
        let elf = b"\x7fELF and the rest of a kernel".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).expect("gzip");
        let mut payload = gz.finish().expect("gzip");
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(vmlinux_from_bzimage(&bzimage(&payload)), Some(elf));
    }

    #[test]
    fn other_files_are_not_bzimages() {
        assert_eq!(vmlinux_from_bzimage(b"\x7fELF not a bzImage"), None);
        assert_eq!(vmlinux_from_bzimage(&bzimage(b"BZh91AY&SY")), None);
    }
}
