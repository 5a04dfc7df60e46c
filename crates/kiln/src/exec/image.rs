//! Post-build conversion of an ELF into the form a board loads.

use std::path::Path;

use anyhow::{Context, bail};
use object::{
    Endianness,
    elf::PT_LOAD,
    read::elf::{FileHeader, ProgramHeader},
};

/// The loadable segments of `elf` as one flat image starting at the lowest physical
/// address, gaps filled with zeros: what `objcopy -O binary` writes.
pub(crate) fn raw_binary(elf: &[u8]) -> anyhow::Result<Vec<u8>> {
    match elf.get(4) {
        Some(1) => raw_from::<object::elf::FileHeader32<Endianness>>(elf),
        Some(2) => raw_from::<object::elf::FileHeader64<Endianness>>(elf),
        _ => bail!("not an ELF file"),
    }
}

fn raw_from<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let header = Elf::parse(data).context("unreadable ELF header")?;
    let endian = header.endian().context("unreadable ELF byte order")?;
    let mut segments = Vec::new();
    for segment in header.program_headers(endian, data).context("unreadable ELF program headers")? {
        if segment.p_type(endian) != PT_LOAD {
            continue;
        }
        let bytes = segment.data(endian, data).map_err(|()| anyhow::anyhow!("an ELF segment lies outside the file"))?;
        if bytes.is_empty() {
            continue;
        }
        segments.push((segment.p_paddr(endian).into(), bytes));
    }
    let Some(start) = segments.iter().map(|(address, _)| *address).min() else {
        bail!("the ELF has no loadable segment with content");
    };
    let end = segments.iter().map(|(address, bytes)| address + bytes.len() as u64).max().unwrap_or(start);
    let len = usize::try_from(end - start).context("the image is too large")?;
    if len > 1 << 30 {
        bail!("the loadable segments span {len} bytes (more than 1 GiB): are they at far-apart addresses?");
    }
    let mut image = vec![0u8; len];
    for (address, bytes) in segments {
        let offset = (address - start) as usize;
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    Ok(image)
}

/// Writes `elf`'s raw image beside it as `NAME.bin` and returns that path.
pub(crate) fn write_raw_beside(elf: &Path) -> anyhow::Result<std::path::PathBuf> {
    let data = std::fs::read(elf).with_context(|| format!("cannot read `{}`", elf.display()))?;
    let image = raw_binary(&data).with_context(|| format!("cannot make a raw image of `{}`", elf.display()))?;
    let mut name = elf.as_os_str().to_owned();
    name.push(".bin");
    let raw = std::path::PathBuf::from(name);
    std::fs::write(&raw, image).with_context(|| format!("cannot write `{}`", raw.display()))?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 with two PT_LOAD segments at 0x1000 and 0x1010.
    fn tiny_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&0xb7u16.to_le_bytes()); // aarch64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let data_offset = elf.len() as u64;
        for (i, (paddr, len)) in [(0x1000u64, 4u64), (0x1010, 2)].into_iter().enumerate() {
            let ph = 64 + i * 56;
            elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            let offset = data_offset + i as u64 * 4;
            elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            elf[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // vaddr
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // paddr
            elf[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes()); // filesz
            elf[ph + 40..ph + 48].copy_from_slice(&(len + 8).to_le_bytes()); // memsz (bss not in the image)
        }
        elf.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
        elf
    }

    #[test]
    fn raw_image_spans_the_loaded_bytes_with_zero_gaps() {
        let raw = raw_binary(&tiny_elf()).expect("convert");
        assert_eq!(raw.len(), 0x12);
        assert_eq!(&raw[..4], &[1, 2, 3, 4]);
        assert!(raw[4..0x10].iter().all(|b| *b == 0));
        assert_eq!(&raw[0x10..], &[5, 6]);
    }

    #[test]
    fn non_elf_input_is_an_error() {
        assert!(raw_binary(b"not an elf").is_err());
    }
}
