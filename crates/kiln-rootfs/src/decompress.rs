//! Decompression chosen by magic bytes: gzip, xz, zstd or none. Each decoder's own memory
//! is bounded: gzip's window is 32 KiB, zstd's decoder refuses windows over 128 MiB (its
//! default `windowLogMax`), and xz is given [`XZ_MEMLIMIT`] (a stream asking for a larger
//! dictionary is refused rather than allocated).

use std::io::{self, Read};

const GZIP: &[u8] = &[0x1f, 0x8b];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2: &[u8] = b"BZh";

/// The most memory the xz decoder may use: `xz -9` needs 65 MiB, LZMA2 allows 1.5 GiB.
const XZ_MEMLIMIT: u64 = 256 << 20;

/// Wraps `r` in the decoder its first bytes call for; uncompressed data passes through.
pub(crate) fn decoder<'a>(mut r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &magic[..got];
    let whole = io::Cursor::new(head.to_vec()).chain(r);
    Ok(if head.starts_with(GZIP) {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else if head.starts_with(XZ) {
        let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, liblzma::stream::CONCATENATED)
            .map_err(io::Error::other)?;
        Box::new(liblzma::read::XzDecoder::new_stream(whole, stream))
    } else if head.starts_with(ZSTD) {
        Box::new(zstd::stream::read::Decoder::new(whole)?)
    } else if head.starts_with(BZIP2) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "bzip2 compression is not supported; recompress it with gzip, xz or zstd",
        ));
    } else {
        Box::new(whole)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn roundtrip(compressed: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(&compressed[..]).and_then(|mut d| d.read_to_end(&mut out)).expect("decode");
        out
    }

    #[test]
    fn detects_each_format() {
        let text = b"hello, rootfs".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).expect("gzip");
        assert_eq!(roundtrip(gz.finish().expect("gzip")), text);
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&text).expect("xz");
        assert_eq!(roundtrip(xz.finish().expect("xz")), text);
        assert_eq!(roundtrip(zstd::encode_all(&text[..], 1).expect("zstd")), text);
        assert_eq!(roundtrip(text.clone()), text);
        assert_eq!(roundtrip(b"ab".to_vec()), b"ab");
        assert_eq!(roundtrip(Vec::new()), b"");
    }

    #[test]
    fn bzip2_is_named() {
        let err = decoder(&b"BZh91AY&SY"[..]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("bzip2"), "{err}");
    }
}
