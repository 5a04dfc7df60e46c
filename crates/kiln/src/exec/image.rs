//! Post-build conversion of an ELF into the form a board loads.

use std::path::Path;

use anyhow::{Context, bail};
use object::{
    Endianness,
    elf::PT_LOAD,
    read::elf::{FileHeader, ProgramHeader, SectionHeader},
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

/// The allocated sections of `elf` that have content, as one flat image from the lowest load
/// address, gaps filled with zeros: what `objcopy -O binary` writes, which works on sections
/// (so ELF and program headers in a loaded segment stay out). A section's load address is
/// its segment's physical address plus its offset in that segment.
pub(crate) fn raw_sections(elf: &[u8]) -> anyhow::Result<Vec<u8>> {
    let header = object::elf::FileHeader64::<Endianness>::parse(elf).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("unreadable ELF byte order")?;
    let segments = header.program_headers(endian, elf).context("unreadable ELF program headers")?;
    let sections = header.section_headers(endian, elf).context("unreadable ELF section headers")?;
    let mut pieces = Vec::new();
    for section in sections {
        let flags = section.sh_flags(endian);
        let kind = section.sh_type(endian);
        let size = section.sh_size(endian);
        if flags & u64::from(object::elf::SHF_ALLOC) == 0 || kind == object::elf::SHT_NOBITS || size == 0 {
            continue;
        }
        let offset = section.sh_offset(endian);
        let load = segments
            .iter()
            .find(|s| {
                s.p_type(endian) == PT_LOAD
                    && s.p_offset(endian) <= offset
                    && offset + size <= s.p_offset(endian) + s.p_filesz(endian)
            })
            .map_or(section.sh_addr(endian), |s| s.p_paddr(endian) + (offset - s.p_offset(endian)));
        let bytes = section.data(endian, elf).context("an ELF section lies outside the file")?;
        pieces.push((load, bytes));
    }
    flatten(pieces)
}

/// Lays `(address, bytes)` pieces out from the lowest address, zeros between them.
fn flatten(pieces: Vec<(u64, &[u8])>) -> anyhow::Result<Vec<u8>> {
    let Some(start) = pieces.iter().map(|(address, _)| *address).min() else {
        bail!("the ELF has nothing to load");
    };
    let end = pieces.iter().map(|(address, bytes)| address + bytes.len() as u64).max().unwrap_or(start);
    let len = usize::try_from(end - start).context("the image is too large")?;
    if len > 1 << 30 {
        bail!("the loaded bytes span {len} bytes (more than 1 GiB): are they at far-apart addresses?");
    }
    let mut image = vec![0u8; len];
    for (address, bytes) in pieces {
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

    /// An ELF64 whose first PT_LOAD (paddr 0x7000) holds only the ELF header, and whose
    /// second (paddr 0x7c00) holds section `.boot` (4 bytes) and a NOBITS `.bss`.
    fn headers_in_a_segment_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        let data = elf.len() as u64;
        for (i, (offset, paddr, len)) in [(0u64, 0x7000u64, data), (data, 0x7c00, 4)].into_iter().enumerate() {
            let ph = 64 + i * 56;
            elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            elf[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes());
            elf[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes());
        }
        elf.extend_from_slice(&[0xeb, 0xfe, 0x55, 0xaa, 0, 0, 0, 0]);
        let shoff = elf.len() as u64;
        elf[40..48].copy_from_slice(&shoff.to_le_bytes());
        elf[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[60..62].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
        let mut sections = vec![0u8; 3 * 64];
        let alloc = u64::from(object::elf::SHF_ALLOC);
        for (i, (kind, offset, size)) in
            [(object::elf::SHT_PROGBITS, data, 4u64), (object::elf::SHT_NOBITS, data + 4, 64)].into_iter().enumerate()
        {
            let sh = (i + 1) * 64;
            sections[sh + 4..sh + 8].copy_from_slice(&kind.to_le_bytes());
            sections[sh + 8..sh + 16].copy_from_slice(&alloc.to_le_bytes());
            sections[sh + 16..sh + 24].copy_from_slice(&(0x7c00 + offset - data).to_le_bytes());
            sections[sh + 24..sh + 32].copy_from_slice(&offset.to_le_bytes());
            sections[sh + 32..sh + 40].copy_from_slice(&size.to_le_bytes());
        }
        elf.extend_from_slice(&sections);
        elf
    }

    #[test]
    fn raw_sections_start_at_the_first_section_not_the_headers_segment() {
        let elf = headers_in_a_segment_elf();
        assert_eq!(raw_sections(&elf).expect("sections"), [0xeb, 0xfe, 0x55, 0xaa]);
        assert_eq!(raw_binary(&elf).expect("segments").len(), 0xc04, "the segment view starts at 0x7000");
    }

    #[test]
    fn non_elf_input_is_an_error() {
        assert!(raw_binary(b"not an elf").is_err());
    }
}
