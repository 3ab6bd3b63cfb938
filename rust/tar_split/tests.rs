//! Tests of the whole split and of reading entries back.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngCore, SeedableRng};
use sha2::Digest;
use tar_core::parse::{ParseEvent, Parser};

use crate::splitstream::{self, Chunk, Writer};

use super::entries::hex;
use super::*;

const OCILAYER: u64 = u64::from_le_bytes(*b"ocilayer");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "cfs-tar-split-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("objects")).unwrap();
        Self(p)
    }

    fn objects(&self) -> File {
        File::open(self.0.join("objects")).unwrap()
    }

    fn object(&self, id: &[u8]) -> Vec<u8> {
        std::fs::read(
            self.0
                .join(format!("objects/{:02x}/{}", id[0], hex(&id[1..]))),
        )
        .unwrap()
    }

    fn count_objects(&self) -> usize {
        let mut n = 0;
        for d in std::fs::read_dir(self.0.join("objects")).unwrap() {
            let d = d.unwrap();
            assert!(d.file_type().unwrap().is_dir(), "stray {:?}", d.path());
            n += std::fs::read_dir(d.path()).unwrap().count();
        }
        n
    }

    fn file(&self, name: &str, data: &[u8]) -> File {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        File::open(p).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A ustar header.
fn header(name: &[u8], size: u64, typ: u8, link: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 1000);
    octal(&mut h[116..124], 1000);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typ;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if typ == b'3' || typ == b'4' {
        octal(&mut h[329..337], 8);
        octal(&mut h[337..345], 1);
    }
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad(tar: &mut Vec<u8>) {
    tar.resize(tar.len().next_multiple_of(512), 0);
}

fn file_entry(tar: &mut Vec<u8>, name: &str, data: &[u8]) {
    tar.extend(header(name.as_bytes(), data.len() as u64, b'0', b""));
    tar.extend_from_slice(data);
    pad(tar);
}

fn pax_entry(tar: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in records {
        let body_len = k.len() + v.len() + 3;
        let mut len = body_len + 1;
        while format!("{len}").len() + body_len != len {
            len += 1;
        }
        data.extend(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    tar.extend(header(b"PaxHeaders/x", data.len() as u64, b'x', b""));
    tar.extend(data);
    pad(tar);
}

fn end(tar: &mut Vec<u8>) {
    tar.extend([0u8; 1024]);
}

/// A tar with every kind of entry and bodies around every threshold, including bodies
/// and headers that straddle the reader's 1 MiB segments.
fn sample_tar(seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tar = Vec::new();
    tar.extend(header(b"dir/", 0, b'5', b""));
    for (i, size) in [0usize, 1, 63, 64, 65, 511, 512, 513, 4096, 100_000]
        .into_iter()
        .enumerate()
    {
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        file_entry(&mut tar, &format!("dir/f{i}"), &data);
    }
    // the same large content twice: one object, two chunks
    let dup = vec![7u8; 70_000];
    file_entry(&mut tar, "dup1", &dup);
    file_entry(&mut tar, "dup2", &dup);
    tar.extend(header(b"sym", 0, b'2', b"dir/f1"));
    tar.extend(header(b"hard", 0, b'1', b"dir/f9"));
    tar.extend(header(b"fifo", 0, b'6', b""));
    tar.extend(header(b"chr", 0, b'3', b""));
    tar.extend(header(b"blk", 0, b'4', b""));
    // PAX: long path, xattrs, a fractional mtime
    let long = "p/".repeat(120) + "file";
    pax_entry(
        &mut tar,
        &[
            ("path", long.as_bytes()),
            ("mtime", b"1700000000.25"),
            ("SCHILY.xattr.user.b", b"2"),
            ("SCHILY.xattr.user.a", b"1"),
        ],
    );
    file_entry(&mut tar, "ignored", b"pax body");
    // a global header (inline)
    let mut g = Vec::new();
    pax_entry(&mut g, &[("comment", b"global")]);
    g[156] = b'g';
    g[148..156].fill(b' ');
    let sum: u32 = g[..512].iter().map(|&b| u32::from(b)).sum();
    g[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend(g);
    // big bodies spanning several segments, with headers at awkward offsets
    for i in 0..6 {
        let size = rng.gen_range(SEGMENT - 3000..3 * SEGMENT + 3000);
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data[..size / 2]);
        file_entry(&mut tar, &format!("big{i}"), &data);
        let small = rng.gen_range(0..2000);
        file_entry(&mut tar, &format!("small{i}"), &vec![b's'; small]);
    }
    tar
}

/// The expected result, computed the simple way: the whole tar in memory.
fn expected(tar: &[u8], alg: Algorithm) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut w = Writer::new(alg, OCILAYER);
    let mut objects = Vec::new();
    let mut parser = Parser::with_defaults();
    let mut pos = 0;
    loop {
        if pos == tar.len() {
            break;
        }
        match parser.parse(&tar[pos..]).unwrap() {
            ParseEvent::NeedData { .. } => panic!("truncated sample"),
            ParseEvent::GlobalExtensions { consumed, .. } => {
                w.write_inline(&tar[pos..pos + consumed]);
                pos += consumed;
            }
            ParseEvent::End { .. } => {
                w.write_inline(&tar[pos..]);
                break;
            }
            ParseEvent::SparseEntry { .. } => panic!("sparse"),
            ParseEvent::Entry { consumed, entry } => {
                let size = entry.size as usize;
                let large = entry.entry_type.is_file() && size > 64;
                w.write_inline(&tar[pos..pos + consumed]);
                pos += consumed;
                let storage = size.next_multiple_of(512);
                if large {
                    let body = &tar[pos..pos + size];
                    let id = fsverity::digest(alg, body);
                    w.write_external(&id, size as u64).unwrap();
                    objects.push(body.to_vec());
                    w.write_inline(&tar[pos + size..pos + storage]);
                } else {
                    w.write_inline(&tar[pos..pos + storage]);
                }
                pos += storage;
            }
        }
    }
    (w.finish(), objects)
}

fn run(
    dir: &TempDir,
    blob: &[u8],
    compression: Compression,
    alg: Algorithm,
    threads: usize,
) -> Result<Split, Error> {
    let src = dir.file("blob", blob);
    let objects = dir.objects();
    let opts = Options {
        compression,
        algorithm: alg,
        content_type: OCILAYER,
        secure: false,
        threads,
    };
    split_layer(src.as_fd(), objects.as_fd(), &opts, None)
}

fn sha(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// Reassembles the tar from the splitstream and the objects (`cfsctl cat`).
fn cat(dir: &TempDir, stream: &[u8]) -> Vec<u8> {
    let p = splitstream::parse(stream).unwrap();
    let mut out = Vec::new();
    for c in p.chunks {
        match c {
            Chunk::Inline(b) => out.extend(b),
            Chunk::External(i) => out.extend(dir.object(&p.metadata.object_refs[i])),
        }
    }
    out
}

#[test]
fn split_matches_the_simple_way() {
    let mut tar = sample_tar(1);
    end(&mut tar);
    tar.resize(tar.len().next_multiple_of(10240), 0); // record padding
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        for threads in [1, 3] {
            let dir = TempDir::new("simple");
            let r = run(&dir, &tar, Compression::None, alg, threads).unwrap();
            let (want, objects) = expected(&tar, alg);
            assert_eq!(r.stream_file, want);
            assert_eq!(r.blob_sha256, sha(&tar));
            assert_eq!(r.tar_sha256, sha(&tar));
            assert_eq!(
                (r.blob_size, r.tar_size),
                (tar.len() as u64, tar.len() as u64)
            );
            let ext: u64 = objects.iter().map(|o| o.len() as u64).sum();
            assert_eq!(r.external_bytes, ext);
            assert_eq!(r.inline_bytes + r.external_bytes, tar.len() as u64);
            assert_eq!(r.objects_written + r.objects_present, objects.len() as u64);
            assert_eq!(r.objects_present, 1, "dup2");
            assert_eq!(dir.count_objects() as u64, r.objects_written);
            assert_eq!(cat(&dir, &r.stream_file), tar);
            // again: everything is present now
            let again = run(&dir, &tar, Compression::None, alg, threads).unwrap();
            assert_eq!(again.stream_file, want);
            assert_eq!(again.objects_written, 0);
        }
    }
}

#[test]
fn compressed_every_member_and_frame() {
    let mut tar = sample_tar(2);
    end(&mut tar);
    let (want, _) = expected(&tar, Algorithm::Sha256);
    let cut = tar.len() / 3;
    let mut gz = Vec::new();
    for part in [&tar[..cut], &tar[cut..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        gz.extend(e.finish().unwrap());
    }
    let mut zst = zstd::encode_all(&tar[..cut], 1).unwrap();
    zst.extend(zstd::encode_all(&tar[cut..], 1).unwrap());
    for (blob, c) in [(gz, Compression::Gzip), (zst, Compression::Zstd)] {
        let dir = TempDir::new("compressed");
        let r = run(&dir, &blob, c, Algorithm::Sha256, 0).unwrap();
        assert_eq!(r.stream_file, want);
        assert_eq!(r.blob_sha256, sha(&blob));
        assert_eq!(r.tar_sha256, sha(&tar));
        assert_eq!(r.blob_size, blob.len() as u64);
        assert_eq!(r.tar_size, tar.len() as u64);
        // truncated and corrupt blobs
        let short = run(&dir, &blob[..blob.len() - 10], c, Algorithm::Sha256, 0).unwrap_err();
        let reason = match c {
            Compression::Zstd => "zstd stream did not finish",
            _ => "unexpected end of file",
        };
        assert_eq!(short.to_string(), format!("decompressing {c}: {reason}"));
        let mut bad = blob.clone();
        bad[0] ^= 0xff;
        let err = run(&dir, &bad, c, Algorithm::Sha256, 0).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.starts_with(&format!("decompressing {c}: "))),
            "{err}"
        );
    }
}

#[test]
fn end_of_archive_and_eof() {
    let dir = TempDir::new("eof");
    let mut body = Vec::new();
    file_entry(&mut body, "a", &[1u8; 1000]);
    file_entry(&mut body, "b", b"small");
    // no end blocks at all: accepted
    let r = run(&dir, &body, Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(r.stream_file, expected(&body, Algorithm::Sha256).0);
    // an empty blob is an empty tar
    let r = run(&dir, b"", Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(
        r.stream_file,
        Writer::new(Algorithm::Sha256, OCILAYER).finish()
    );
    // garbage after the end blocks is kept, byte for byte
    let mut tar = body.clone();
    end(&mut tar);
    tar.extend_from_slice(b"trailing garbage that is not a multiple of 512");
    let r = run(&dir, &tar, Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(r.stream_file, expected(&tar, Algorithm::Sha256).0);
    assert_eq!(cat(&dir, &r.stream_file), tar);
    let err = |data: &[u8]| {
        run(&dir, data, Compression::None, Algorithm::Sha256, 0)
            .unwrap_err()
            .to_string()
    };
    // EOF inside a header, a body, a large body, its padding
    assert_eq!(err(&body[..100]), "unexpected EOF in tar stream");
    assert_eq!(
        err(&body[..1536 + 512 + 3]),
        "unexpected EOF reading tar entry"
    );
    assert_eq!(err(&body[..700]), "unexpected EOF reading tar entry");
    assert_eq!(
        err(&body[..512 + 1000 + 5]),
        "unexpected EOF reading tar padding"
    );
    // a single zero block at the end closes the archive (tar-core wants two); it and what
    // follows it (less than a block) are kept inline, byte for byte
    let mut one = body.clone();
    one.extend([0u8; 512]);
    let r = run(&dir, &one, Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(cat(&dir, &r.stream_file), one);
    one.extend(b"tail");
    let r = run(&dir, &one, Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(cat(&dir, &r.stream_file), one);
    // but a non-zero partial block is a truncated header
    let mut cut = body.clone();
    cut.extend([7u8; 511]);
    assert_eq!(err(&cut), "unexpected EOF in tar stream");
    // tar-core's errors
    let mut bad = body.clone();
    bad[0] ^= 1;
    assert!(err(&bad).contains("checksum"), "{}", err(&bad));
    let mut sparse = header(b"s", 0, b'S', b"");
    sparse.extend([0u8; 1024]);
    let e = err(&sparse);
    assert!(e.contains("sparse") || e.contains("Sparse"), "{e}");
}

#[test]
fn long_inline_run_is_spilled() {
    let dir = TempDir::new("spill");
    let mut tar = Vec::new();
    file_entry(&mut tar, "big", &[3u8; 5000]);
    end(&mut tar);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut tail = vec![0u8; SPILL_THRESHOLD + 3 * SEGMENT + 77];
    rng.fill_bytes(&mut tail[..1 << 20]);
    tar.extend(tail);
    let r = run(&dir, &tar, Compression::None, Algorithm::Sha256, 0).unwrap();
    assert_eq!(r.stream_file, expected(&tar, Algorithm::Sha256).0);
    assert_eq!(dir.count_objects(), 1);
}

#[test]
fn progress_is_reported() {
    let dir = TempDir::new("progress");
    let mut tar = Vec::new();
    file_entry(&mut tar, "big", &vec![9u8; 10 << 20]);
    end(&mut tar);
    let src = dir.file("blob", &tar);
    let objects = dir.objects();
    let opts = Options {
        compression: Compression::None,
        algorithm: Algorithm::Sha256,
        content_type: OCILAYER,
        secure: false,
        threads: 0,
    };
    let mut seen = Vec::new();
    let mut cb = |n: u64| -> Result<(), Box<dyn Any + Send>> {
        seen.push(n);
        Ok(())
    };
    split_layer(src.as_fd(), objects.as_fd(), &opts, Some(&mut cb)).unwrap();
    assert_eq!(*seen.last().unwrap(), tar.len() as u64);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert!(seen.len() >= 2 && seen.len() <= 5, "{seen:?}");
    // a failing callback stops the import with its error
    let mut fail = |_: u64| -> Result<(), Box<dyn Any + Send>> { Err(Box::new("stop")) };
    let src = dir.file("blob", &tar);
    let err = split_layer(src.as_fd(), objects.as_fd(), &opts, Some(&mut fail)).unwrap_err();
    assert!(matches!(err, Error::Callback(_)));
}

#[test]
fn pipe_source_and_io_errors() {
    let dir = TempDir::new("pipe");
    let mut tar = sample_tar(4);
    end(&mut tar);
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds we own.
    let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let data = tar.clone();
    let feeder = std::thread::spawn(move || {
        for piece in data.chunks(70_000) {
            wr.write_all(piece).unwrap();
        }
    });
    let objects = dir.objects();
    let opts = Options {
        compression: Compression::None,
        algorithm: Algorithm::Sha512,
        content_type: OCILAYER,
        secure: false,
        threads: 0,
    };
    let r = split_layer(rd.as_fd(), objects.as_fd(), &opts, None).unwrap();
    feeder.join().unwrap();
    assert_eq!(r.stream_file, expected(&tar, Algorithm::Sha512).0);
    // reading a directory fails with EISDIR
    let err = split_layer(objects.as_fd(), objects.as_fd(), &opts, None).unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if e.raw_os_error() == Some(libc::EISDIR)),
        "{err}"
    );
}

#[test]
fn entries_read_back() {
    let dir = TempDir::new("entries");
    let mut tar = sample_tar(5);
    end(&mut tar);
    let r = run(&dir, &tar, Compression::None, Algorithm::Sha256, 0).unwrap();
    let entries = read_entries(&r.stream_file).unwrap();
    let names: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(names[0], "/dir");
    assert_eq!(entries[0].kind, Kind::Dir);
    let by = |n: &str| {
        entries
            .iter()
            .find(|e| e.path == n.as_bytes())
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(by("/dir/f0").inline.as_deref(), Some(&b""[..]));
    assert_eq!(by("/dir/f3").inline.as_ref().unwrap().len(), 64);
    let f4 = by("/dir/f4");
    assert_eq!(
        (f4.size, f4.inline.is_none(), f4.object_id.is_some()),
        (65, true, true)
    );
    assert_eq!(by("/sym").link_target.as_deref(), Some(&b"dir/f1"[..]));
    assert_eq!(by("/sym").kind, Kind::Symlink);
    assert_eq!(by("/hard").link_target.as_deref(), Some(&b"/dir/f9"[..]));
    assert_eq!(by("/chr").rdev, libc::makedev(8, 1));
    assert_eq!(by("/blk").kind, Kind::Block);
    assert_eq!(by("/fifo").kind, Kind::Fifo);
    let long = format!("/{}file", "p/".repeat(120));
    let pax = by(&long);
    assert_eq!(pax.mtime_nsec, 250_000_000);
    assert_eq!(pax.mtime, 1_700_000_000);
    assert_eq!(
        pax.xattrs,
        vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"user.b".to_vec(), b"2".to_vec())
        ]
    );
    assert_eq!(pax.uid, 1000);
    assert_eq!(pax.mode, 0o644);
    assert!(names.iter().any(|n| n == "/big5"));
    assert_eq!(entries.len(), names.len());
}

#[test]
fn absolute_paths_and_nsec() {
    for (i, o) in [
        (&b"foo/bar"[..], &b"/foo/bar"[..]),
        (b"/foo/bar", b"/foo/bar"),
        (b"dir/", b"/dir"),
        (b"dir//", b"/dir"),
        (b"", b""),
        (b"/", b""),
        (b"./x", b"/./x"),
    ] {
        assert_eq!(make_absolute_path(i), o, "{:?}", String::from_utf8_lossy(i));
    }
    assert_eq!(
        pax_mtime_nsec(b"30 mtime=1234567890.123456789\n"),
        123_456_789
    );
    assert_eq!(pax_mtime_nsec(b"22 mtime=1234567890.5\n"), 500_000_000);
    assert_eq!(
        pax_mtime_nsec(b"31 mtime=1234567890.1234567899\n"),
        123_456_789
    );
    assert_eq!(pax_mtime_nsec(b"20 mtime=1234567890\n"), 0);
    assert_eq!(pax_mtime_nsec(b"16 path=foo.txt\n"), 0);
    assert_eq!(pax_mtime_nsec(b""), 0);
}
