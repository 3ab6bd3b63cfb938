//! Streaming decompression of layer blobs: gzip (every member), zstd (every frame) or none.
//!
//! Every gzip member and zstd frame is decoded, as composefs-rs 0.9.4 does
//! (`multiple_members(true)` in `composefs-oci/src/layer.rs`; 0.9.0 stopped after the first),
//! so a layer compressed in parallel (pigz, pzstd, zstd:chunked) imports whole.
//!
//! Inflate backend: flate2 over `zlib-rs` (a Rust port of zlib-ng's inflate; no C code, no
//! build dependency). Measured on this project's 2-core Xeon VM, single-stream inflate of a
//! `gzip -6` tar of /usr (5.2 GB of tar, 1.9 GB of gzip), MB/s of tar:
//!
//! | decoder | MB/s |
//! |---|---|
//! | flate2 + zlib-rs 0.6 (chosen) | 368 |
//! | flate2 + miniz_oxide (flate2's default; what cfsctl 0.9.4 links) | 307 |
//! | flate2 + system zlib 1.2.13 | 252 |
//! | GNU gzip -dc | 155 |
//! | ISA-L 2.30 `igzip -dc` | 550 |
//!
//! ISA-L is 1.5x faster still, but its crates build it from source with nasm *and*
//! autoconf/automake/libtool (or link a system libisal, which an abi3 wheel cannot assume):
//! a build dependency for every user and CI run, for the gzip half of the layers only. zlib-rs
//! is the fastest option that builds with cargo alone; swapping the backend is local to this
//! file.
//!
//! zstd: the `zstd` crate (bundled libzstd 1.5.7), default window limit (128 MiB), like
//! composefs-rs.

use std::fmt;
use std::io::{self, BufRead, Read};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip, one or more members.
    Gzip,
    /// zstd, one or more frames (skippable frames are skipped).
    Zstd,
}

impl Compression {
    /// Parses `"none"`, `"gzip"` or `"zstd"`.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!(
                "unsupported compression '{other}' (expected none, gzip or zstd)"
            )),
        }
    }

    /// `"none"`, `"gzip"` or `"zstd"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decompressing reader over `src`: the plain bytes of every gzip member / zstd frame.
///
/// Errors of the compressed data come out as `io::Error`s of kind `InvalidData` /
/// `InvalidInput` / `UnexpectedEof`; use [`describe`] for the message. Errors of `src` itself
/// come out unchanged, so a caller that needs to tell them apart should remember them on the
/// way (see `tar_split`'s source reader).
pub fn reader<'a, R: BufRead + 'a>(
    compression: Compression,
    src: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(GzipMembers {
            member: None,
            src: Some(src),
            started: false,
        }),
        // `with_buffer` reads through `src` without another buffer; every frame is decoded
        // (single_frame is off by default).
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(src)?),
    })
}

/// Every member of a gzip file, one flate2 `GzDecoder` per member (what `MultiGzDecoder`
/// does), except that a member must start with the gzip magic and deflate method
/// (`1f 8b 08`) as soon as those bytes are there: bytes after the last member that do not
/// start another one are "invalid gzip header" even when fewer than a header's 10 bytes
/// (async-compression, hence cfsctl, checks the same way). An empty input is an error.
struct GzipMembers<R: BufRead> {
    member: Option<flate2::bufread::GzDecoder<R>>,
    /// The input between members.
    src: Option<R>,
    started: bool,
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
        loop {
            if let Some(member) = &mut self.member {
                let n = member.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // The member ended (trailer checked): on to the next one, if any.
                let member = self.member.take().expect("a member");
                self.src = Some(member.into_inner());
                continue;
            }
            let src = self.src.as_mut().expect("the input");
            let avail = src.fill_buf()?;
            if avail.is_empty() {
                if !self.started {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(0);
            }
            let k = avail.len().min(MAGIC.len());
            if avail[..k] != MAGIC[..k] {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid gzip header",
                ));
            }
            self.started = true;
            let src = self.src.take().expect("the input");
            self.member = Some(flate2::bufread::GzDecoder::new(src));
        }
    }
}

/// The message for a decompression error: `"decompressing gzip: <reason>"`. A truncated
/// (or empty) blob reads "unexpected end of file" (gzip) / "zstd stream did not finish"
/// (zstd), and bytes after the last gzip member that do not start another one "Invalid gzip
/// header": async-compression's words, as composefs-rs reports them (and the pure backend).
pub fn describe(compression: Compression, err: &io::Error) -> String {
    let text = err.to_string();
    let reason = match compression {
        _ if err.kind() == io::ErrorKind::UnexpectedEof => match compression {
            Compression::Zstd => "zstd stream did not finish",
            _ => "unexpected end of file",
        },
        Compression::Gzip if text == "invalid gzip header" => "Invalid gzip header",
        _ => &text,
    };
    format!("decompressing {compression}: {reason}")
}

/// Reads everything `compression` decodes from `data` (for tests and small inputs).
pub fn decode_all(compression: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut r = reader(compression, data).map_err(|e| describe(compression, &e))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(compression, &e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(Compression::from_name("gzip"), Ok(Compression::Gzip));
        assert_eq!(Compression::from_name("zstd").unwrap().name(), "zstd");
        assert_eq!(
            Compression::from_name("bzip2").unwrap_err(),
            "unsupported compression 'bzip2' (expected none, gzip or zstd)"
        );
    }

    #[test]
    fn every_member_and_frame() {
        let parts: [&[u8]; 3] = [b"hello ", b"", b"world, again and again"];
        let whole: Vec<u8> = parts.concat();
        let g: Vec<u8> = parts.iter().flat_map(|p| gz(p)).collect();
        assert_eq!(decode_all(Compression::Gzip, &g).unwrap(), whole);
        let z: Vec<u8> = parts.iter().flat_map(|p| zst(p)).collect();
        assert_eq!(decode_all(Compression::Zstd, &z).unwrap(), whole);
        // a skippable zstd frame in between
        let mut z2 = zst(b"a");
        z2.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        z2.extend(zst(b"b"));
        assert_eq!(decode_all(Compression::Zstd, &z2).unwrap(), b"ab");
        assert_eq!(decode_all(Compression::None, b"xyz").unwrap(), b"xyz");
    }

    #[test]
    fn truncated_and_corrupt() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let g = gz(&data);
        let z = zst(&data);
        for cut in [1, 5, 10, g.len() / 2, g.len() - 4, g.len() - 1] {
            assert_eq!(
                decode_all(Compression::Gzip, &g[..cut]).unwrap_err(),
                "decompressing gzip: unexpected end of file",
                "cut at {cut}"
            );
        }
        for cut in [1, 4, 10, z.len() / 2, z.len() - 1] {
            let err = decode_all(Compression::Zstd, &z[..cut]).unwrap_err();
            assert!(err.starts_with("decompressing zstd: "), "{err}");
        }
        assert_eq!(
            decode_all(Compression::Zstd, &z[..z.len() / 2]).unwrap_err(),
            "decompressing zstd: zstd stream did not finish"
        );
        assert_eq!(
            decode_all(Compression::Gzip, b"").unwrap_err(),
            "decompressing gzip: unexpected end of file"
        );
        assert_eq!(
            decode_all(Compression::Zstd, b"").unwrap_err(),
            "decompressing zstd: zstd stream did not finish"
        );
        // wrong CRC
        let mut bad = g.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        let err = decode_all(Compression::Gzip, &bad).unwrap_err();
        assert!(err.starts_with("decompressing gzip: "), "{err}");
        // not gzip at all
        let err = decode_all(Compression::Gzip, b"this is not gzip data").unwrap_err();
        assert!(err.starts_with("decompressing gzip: "), "{err}");
        // garbage after a member is an error (it would be a broken next member)
        for junk in [&b"junk after the last member"[..], b"junk", b"\0"] {
            let mut trailing = g.clone();
            trailing.extend_from_slice(junk);
            assert_eq!(
                decode_all(Compression::Gzip, &trailing).unwrap_err(),
                "decompressing gzip: Invalid gzip header"
            );
        }
        // the start of another member, cut short
        let mut trailing = g.clone();
        trailing.push(0x1f);
        assert_eq!(
            decode_all(Compression::Gzip, &trailing).unwrap_err(),
            "decompressing gzip: unexpected end of file"
        );
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        let err = decode_all(Compression::Zstd, &trailing).unwrap_err();
        assert!(err.starts_with("decompressing zstd: "), "{err}");
        // a reserved zstd block type (the first block header follows the 6-byte frame header)
        let mut bad = z.clone();
        bad[6] |= 0b110;
        let err = decode_all(Compression::Zstd, &bad).unwrap_err();
        assert!(err.starts_with("decompressing zstd: "), "{err}");
    }
}
