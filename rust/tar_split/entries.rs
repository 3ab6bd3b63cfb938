//! The reverse path (composefs-rs `tar::get_entry`): a layer splitstream read back as
//! tar entries.

use std::borrow::Cow;
use std::io::{self, Read};

use tar_core::parse::{ParseEvent, Parser};
use tar_core::{EntryType, PaxExtensions, HEADER_SIZE};

use crate::constants::INLINE_CONTENT_MAX;
use crate::error::Error;
use crate::splitstream;

use super::{invalid, round_up};

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file (inline or external).
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier path.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A FIFO.
    Fifo,
}

impl Kind {
    /// `"dir"`, `"file"`, `"symlink"`, `"hardlink"`, `"char"`, `"block"` or `"fifo"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::File => "file",
            Self::Symlink => "symlink",
            Self::Hardlink => "hardlink",
            Self::Char => "char",
            Self::Block => "block",
            Self::Fifo => "fifo",
        }
    }
}

/// One tar entry read back from a layer splitstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path (`make_absolute_path`); the root is empty.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// The header's mode field as tar-core reads it.
    pub mode: u32,
    /// Owner (truncated to 32 bits, as composefs-rs does).
    pub uid: u32,
    /// Group (truncated to 32 bits).
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds from the PAX mtime fraction.
    pub mtime_nsec: u32,
    /// File size (0 for anything but files).
    pub size: u64,
    /// Symlink target as stored, or hardlink target made absolute.
    pub link_target: Option<Vec<u8>>,
    /// `makedev(major, minor)` for devices.
    pub rdev: u64,
    /// Extended attributes sorted by name (the last of duplicates wins).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Inline content of a file.
    pub inline: Option<Vec<u8>>,
    /// Object id of an external file.
    pub object_id: Option<Vec<u8>>,
}

/// Prepends `/` to a tar path and strips trailing slashes; the root becomes empty.
pub fn make_absolute_path(tar_path: &[u8]) -> Vec<u8> {
    let rest = tar_path.strip_prefix(b"/").unwrap_or(tar_path);
    let mut path = Vec::with_capacity(rest.len() + 1);
    path.push(b'/');
    path.extend_from_slice(rest);
    while path.len() > 1 && path.last() == Some(&b'/') {
        path.pop();
    }
    if path == b"/" {
        path.clear();
    }
    path
}

/// Nanoseconds of a PAX `mtime` record's fraction: up to 9 digits, fewer scaled up, more
/// truncated; 0 when absent or unparsable.
pub fn pax_mtime_nsec(pax: &[u8]) -> u32 {
    for ext in PaxExtensions::new(pax).flatten() {
        if ext.key_bytes() != b"mtime" {
            continue;
        }
        let Ok(value) = ext.value() else { return 0 };
        let Some((_, frac)) = value.split_once('.') else {
            return 0;
        };
        if frac.len() >= 9 {
            return frac
                .get(..9)
                .and_then(|f| f.parse::<u32>().ok())
                .unwrap_or(0);
        }
        return frac
            .parse::<u32>()
            .map_or(0, |v| v * 10u32.pow(9 - frac.len() as u32));
    }
    0
}

/// Reads chunks of a splitstream's stream section the way composefs-rs's
/// `SplitStreamReader` does (`ensure_chunk`, `read_inline_exact`, `read_exact`).
///
/// With `ahead` set, the decoder fills a large buffer and reads are served from it; any
/// decoder error then fails the read at once (it may lie beyond what a small read would have
/// reached), and [`read_entries`] starts again without `ahead`, reading exactly as
/// composefs-rs does, so errors (and where they surface) never depend on the buffering.
struct ChunkStream<'a> {
    decoder: zstd::stream::read::Decoder<'static, &'a [u8]>,
    object_refs: &'a [Vec<u8>],
    inline_left: u64,
    ahead: Option<Ahead>,
}

/// The read-ahead buffer of a [`ChunkStream`].
struct Ahead {
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
}

/// Size of the read-ahead buffer.
const AHEAD: usize = 256 << 10;

enum Chunk {
    Eof,
    Inline,
    External(Vec<u8>),
}

enum Content {
    Inline(Vec<u8>),
    External(Vec<u8>),
}

fn zstd_err(e: io::Error) -> Error {
    Error::Invalid(format!("zstd error in splitstream stream: {e}"))
}

impl ChunkStream<'_> {
    /// Fills `buf` from the read-ahead buffer: `Ok(false)` at the end of the data, an error
    /// if it ends inside `buf` or the decoder fails.
    fn read_ahead(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        let Some(a) = self.ahead.as_mut() else {
            unreachable!("only with a read-ahead buffer")
        };
        let mut got = 0;
        while got < buf.len() {
            if a.pos == a.len {
                if a.eof {
                    if got == 0 {
                        return Ok(false);
                    }
                    return Err(invalid("Unexpected EOF in splitstream"));
                }
                a.pos = 0;
                a.len = loop {
                    match self.decoder.read(&mut a.buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r.map_err(zstd_err)?,
                    }
                };
                a.eof = a.len == 0;
                continue;
            }
            let n = (a.len - a.pos).min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&a.buf[a.pos..a.pos + n]);
            a.pos += n;
            got += n;
        }
        Ok(true)
    }

    /// Decodes the rest of the stream; an error if the decoder fails anywhere in it.
    fn drain(&mut self) -> Result<(), Error> {
        if let Some(a) = self.ahead.as_mut() {
            while !a.eof {
                a.eof = self.decoder.read(&mut a.buf).map_err(zstd_err)? == 0;
            }
        }
        Ok(())
    }

    fn read_exactish(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        if self.ahead.is_some() {
            return self.read_ahead(buf);
        }
        let mut got = 0;
        while got < buf.len() {
            match self.decoder.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(invalid("Unexpected EOF in splitstream")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(zstd_err(e)),
            }
        }
        Ok(true)
    }

    fn read_inline(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        if !self.read_exactish(buf)? && !buf.is_empty() {
            return Err(invalid("Unexpected EOF in splitstream"));
        }
        Ok(())
    }

    fn ensure_chunk(&mut self, eof_ok: bool, ext_ok: bool, expected: u64) -> Result<Chunk, Error> {
        if self.inline_left == 0 {
            let mut word = [0u8; 8];
            if !self.read_exactish(&mut word)? {
                if !eof_ok {
                    return Err(invalid("Unexpected EOF in splitstream"));
                }
                return Ok(Chunk::Eof);
            }
            let n = i64::from_le_bytes(word);
            if n < 0 {
                self.inline_left = n.unsigned_abs();
            } else {
                if !ext_ok {
                    return Err(invalid("Unexpected external reference in splitstream"));
                }
                let id = usize::try_from(n)
                    .ok()
                    .and_then(|i| self.object_refs.get(i))
                    .ok_or_else(|| invalid("Splitstream external reference is out of range"))?;
                return Ok(Chunk::External(id.clone()));
            }
        }
        if self.inline_left < expected {
            return Err(invalid(
                "Unexpectedly small inline content when parsing splitstream",
            ));
        }
        Ok(Chunk::Inline)
    }

    fn read_inline_exact(&mut self, buf: &mut [u8]) -> Result<bool, Error> {
        match self.ensure_chunk(true, false, buf.len() as u64)? {
            Chunk::Inline => {
                self.inline_left -= buf.len() as u64;
                self.read_inline(buf)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Skips `n` inline bytes of the current chunk (already checked to be there).
    fn skip_inline(&mut self, mut n: u64) -> Result<(), Error> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let take = (n as usize).min(buf.len());
            self.read_inline(&mut buf[..take])?;
            n -= take as u64;
        }
        Ok(())
    }

    /// `read_exact(actual, stored)`; `keep` = whether inline content is wanted (else it is
    /// skipped, and `Content::Inline` is empty).
    fn read_content(&mut self, actual: u64, stored: u64, keep: bool) -> Result<Content, Error> {
        match self.ensure_chunk(false, true, stored)? {
            Chunk::External(id) => {
                if actual < stored {
                    let pad = stored - actual;
                    self.ensure_chunk(false, false, pad)?;
                    self.skip_inline(pad)?;
                    self.inline_left -= pad;
                }
                Ok(Content::External(id))
            }
            Chunk::Inline => {
                self.inline_left -= stored;
                if keep && stored <= HEADER_SIZE as u64 {
                    // (always, as `keep` is only for small files): no padding kept
                    let mut block = [0u8; HEADER_SIZE];
                    self.read_inline(&mut block[..stored as usize])?;
                    Ok(Content::Inline(block[..actual as usize].to_vec()))
                } else if keep {
                    let mut content = vec![0u8; stored as usize];
                    self.read_inline(&mut content)?;
                    content.truncate(actual as usize);
                    Ok(Content::Inline(content))
                } else {
                    self.skip_inline(stored)?;
                    Ok(Content::Inline(Vec::new()))
                }
            }
            Chunk::Eof => unreachable!("eof_ok is false"),
        }
    }
}

fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// The next entry (composefs-rs `get_entry`), or `None` at the end.
fn next_entry(r: &mut ChunkStream<'_>, headers: &mut Vec<u8>) -> Result<Option<Entry>, Error> {
    let mut parser = Parser::with_defaults();
    headers.clear();
    let mut block = [0u8; HEADER_SIZE];
    loop {
        if !r.read_inline_exact(&mut block)? {
            return Ok(None);
        }
        if headers.is_empty() {
            if let Some(head) = plain_header(&block) {
                return entry_from(r, &head).map(Some);
            }
        }
        headers.extend_from_slice(&block);
        loop {
            let consumed = match parser.parse(headers)? {
                ParseEvent::NeedData { .. } => break,
                ParseEvent::GlobalExtensions { consumed, .. } => consumed,
                ParseEvent::End { .. } => return Ok(None),
                ParseEvent::SparseEntry { .. } => {
                    return Err(invalid("Sparse tar entries are not supported"));
                }
                ParseEvent::Entry { entry, .. } => {
                    return entry_from(r, &Head::of(&entry)).map(Some)
                }
            };
            // A global header: skipped.
            headers.drain(..consumed);
        }
    }
}

/// A PAX `SCHILY.xattr.` record as tar-core gives it: name and value.
type Xattr<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The fields of a parsed tar entry that [`entry_from`] uses.
struct Head<'a> {
    entry_type: EntryType,
    path: Cow<'a, [u8]>,
    link_target: Option<&'a [u8]>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    dev_major: Option<u32>,
    dev_minor: Option<u32>,
    xattrs: &'a [Xattr<'a>],
    pax: Option<&'a [u8]>,
}

impl<'a> Head<'a> {
    fn of(e: &'a tar_core::parse::ParsedEntry<'a>) -> Self {
        Self {
            entry_type: e.entry_type,
            path: Cow::Borrowed(&e.path),
            link_target: e.link_target.as_deref(),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            size: e.size,
            dev_major: e.dev_major,
            dev_minor: e.dev_minor,
            xattrs: &e.xattrs,
            pax: e.pax,
        }
    }
}

/// A tar-core octal field: `None` where tar-core might not read plain octal digits (it
/// then decides).
fn plain_octal(field: &[u8]) -> Option<u64> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let ws = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    let field = &field[..end];
    let start = field.iter().position(|b| !ws(b)).unwrap_or(field.len());
    let stop = field.iter().rposition(|b| !ws(b)).map_or(start, |p| p + 1);
    let mut v: u64 = 0;
    for &b in &field[start..stop] {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// A tar-core numeric field (GNU base-256 or octal).
fn plain_numeric(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return plain_octal(field);
    }
    let mut v: u64 = 0;
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 { b & 0x7f } else { b };
        v = v.checked_shl(8)?.checked_add(u64::from(b))?;
    }
    Some(v)
}

fn until_nul(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())]
}

/// What tar-core's parser makes of `block` as the first header of an entry, when that is
/// certain to be an entry of a plain type (files, links, directories, devices, FIFOs)
/// without extension headers; `None` for anything else (tar-core then parses it).
fn plain_header(b: &[u8; HEADER_SIZE]) -> Option<Head<'_>> {
    let ty = b[156];
    if !(ty == 0 || (b'0'..=b'7').contains(&ty)) {
        return None;
    }
    // At most 512 * 255: no overflow in u32 (and the sum vectorizes).
    let all: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let field: u32 = b[148..156].iter().map(|&x| u32::from(x)).sum();
    let sum = u64::from(all - field + 8 * u32::from(b' '));
    if plain_octal(&b[148..156])? != sum {
        return None;
    }
    let size = plain_numeric(&b[124..136])?;
    size.checked_next_multiple_of(HEADER_SIZE as u64)?;
    let uid = plain_numeric(&b[108..116])?;
    let gid = plain_numeric(&b[116..124])?;
    let mtime = plain_numeric(&b[136..148])?;
    let ustar = &b[257..263] == tar_core::USTAR_MAGIC && &b[263..265] == tar_core::USTAR_VERSION;
    let gnu = &b[257..263] == tar_core::GNU_MAGIC && &b[263..265] == tar_core::GNU_VERSION;
    let name = until_nul(&b[..100]);
    let prefix = if ustar { until_nul(&b[345..500]) } else { &[] };
    let path = if prefix.is_empty() {
        Cow::Borrowed(name)
    } else {
        let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
        p.extend_from_slice(prefix);
        p.push(b'/');
        p.extend_from_slice(name);
        Cow::Owned(p)
    };
    if path.is_empty() {
        return None;
    }
    let link = until_nul(&b[157..257]);
    let mode = plain_numeric(&b[100..108])? as u32;
    let (dev_major, dev_minor) = if ustar || gnu {
        (
            Some(plain_octal(&b[329..337])? as u32),
            Some(plain_octal(&b[337..345])? as u32),
        )
    } else {
        (None, None)
    };
    Some(Head {
        entry_type: EntryType::from_byte(ty),
        path,
        link_target: (!link.is_empty()).then_some(link),
        mode,
        uid,
        gid,
        mtime,
        size,
        dev_major,
        dev_minor,
        xattrs: &[],
        pax: None,
    })
}

/// Reads the content of `entry` and builds the [`Entry`] (the rest of `get_entry`).
fn entry_from(r: &mut ChunkStream<'_>, entry: &Head<'_>) -> Result<Entry, Error> {
    let size = entry.size;
    let stored = round_up(size);
    let ty = entry.entry_type;
    let is_file = matches!(ty, EntryType::Regular | EntryType::Continuous);
    // Inline file content is read (and checked after); any other type's is skipped.
    let keep = is_file && size <= INLINE_CONTENT_MAX;
    let content = r.read_content(size, stored, keep)?;
    let mut out = Entry {
        path: make_absolute_path(&entry.path),
        kind: Kind::File,
        mode: entry.mode,
        uid: entry.uid as u32,
        gid: entry.gid as u32,
        mtime: entry.mtime as i64,
        mtime_nsec: entry.pax.map_or(0, pax_mtime_nsec),
        size: 0,
        link_target: None,
        rdev: 0,
        xattrs: Vec::new(),
        inline: None,
        object_id: None,
    };
    match content {
        Content::External(id) => {
            if !is_file {
                return Err(Error::Invalid(format!(
                    "Unsupported external-chunked entry {ty:?} {}:{}",
                    alg_name(id.len()),
                    hex(&id)
                )));
            }
            if size <= INLINE_CONTENT_MAX {
                return Err(Error::Invalid(format!(
                    "Splitstream incorrectly stored a small ({size} byte) file external"
                )));
            }
            out.size = size;
            out.object_id = Some(id);
        }
        Content::Inline(content) => match ty {
            EntryType::Directory => out.kind = Kind::Dir,
            EntryType::Regular | EntryType::Continuous => {
                if size > INLINE_CONTENT_MAX {
                    return Err(Error::Invalid(format!(
                        "Splitstream incorrectly stored a large ({size} byte) file inline"
                    )));
                }
                out.size = size;
                out.inline = Some(content);
            }
            EntryType::Link => {
                out.kind = Kind::Hardlink;
                let target = entry.link_target.unwrap_or_default();
                out.link_target = Some(make_absolute_path(target));
            }
            EntryType::Symlink => {
                out.kind = Kind::Symlink;
                out.link_target = Some(entry.link_target.unwrap_or_default().to_vec());
            }
            EntryType::Block | EntryType::Char => {
                out.kind = if ty == EntryType::Block {
                    Kind::Block
                } else {
                    Kind::Char
                };
                match (entry.dev_major, entry.dev_minor) {
                    (Some(major), Some(minor)) => out.rdev = makedev(major, minor),
                    _ => return Err(invalid("Device entry without device numbers?")),
                }
            }
            EntryType::Fifo => out.kind = Kind::Fifo,
            other => {
                return Err(Error::Invalid(format!("Unsupported entry type {other:?}")));
            }
        },
    }
    let mut xattrs: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for (k, v) in entry.xattrs {
        xattrs.insert(k.to_vec(), v.to_vec());
    }
    out.xattrs = xattrs.into_iter().collect();
    Ok(out)
}

fn alg_name(digest_len: usize) -> &'static str {
    if digest_len == 64 {
        "sha512"
    } else {
        "sha256"
    }
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses the tar entries back out of a layer splitstream file (composefs-rs
/// `tar::get_entry` until the end).
pub fn read_entries(stream_file: &[u8]) -> Result<Vec<Entry>, Error> {
    let mut entries = Vec::new();
    visit_entries(stream_file, &mut entries)?;
    Ok(entries)
}

/// Where [`visit_entries`] hands the entries, one at a time.
pub trait EntrySink {
    /// Forget the entries handed so far: the stream is read again from its start.
    fn restart(&mut self);
    /// The next entry in stream order.
    fn entry(&mut self, entry: Entry);
}

impl EntrySink for Vec<Entry> {
    fn restart(&mut self) {
        self.clear();
    }
    fn entry(&mut self, entry: Entry) {
        self.push(entry);
    }
}

/// [`read_entries`] without collecting the entries: each is handed to `sink` as it is
/// read (the merge keeps only what it needs of each).
pub fn visit_entries(stream_file: &[u8], sink: &mut dyn EntrySink) -> Result<(), Error> {
    let m = splitstream::read_metadata(stream_file).map_err(Error::from)?;
    let (start, end) = m.stream_range;
    let body = &stream_file[start..end];
    // Read ahead first; on any error, again the way composefs-rs reads (see `ChunkStream`).
    if entries_of(body, &m.object_refs, true, sink).is_ok() {
        return Ok(());
    }
    sink.restart();
    entries_of(body, &m.object_refs, false, sink)
}

/// The entries of a stream section; with `ahead`, the whole section must decode.
fn entries_of(
    body: &[u8],
    object_refs: &[Vec<u8>],
    ahead: bool,
    sink: &mut dyn EntrySink,
) -> Result<(), Error> {
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(zstd_err)?;
    let mut r = ChunkStream {
        decoder,
        object_refs,
        inline_left: 0,
        ahead: ahead.then(|| Ahead {
            buf: vec![0u8; AHEAD].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
        }),
    };
    let mut headers = Vec::new();
    while let Some(e) = next_entry(&mut r, &mut headers)? {
        sink.entry(e);
    }
    r.drain()?;
    Ok(())
}

#[cfg(test)]
mod plain_header_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn fields(h: &Head<'_>) -> String {
        format!(
            "{:?} {:?} {:?} {} {} {} {} {} {:?} {:?} {} {:?}",
            h.entry_type,
            h.path,
            h.link_target,
            h.mode,
            h.uid,
            h.gid,
            h.mtime,
            h.size,
            h.dev_major,
            h.dev_minor,
            h.xattrs.len(),
            h.pax
        )
    }

    fn checksum(h: &mut [u8]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// Whenever the shortcut takes a header, tar-core's parser reads the same entry from it.
    #[test]
    fn plain_header_agrees_with_tar_core() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let junk: &[&[u8]] = &[
            b"0000644\0",
            b"  644  \0",
            b"\0\0\0\0\0\0\0\0",
            b"+644\0\0\0\0",
            b"0009\0\0\0\0",
            b"\x0b17\t\0\0\0\0",
            b"\x80\0\0\0\0\0\x01\x02",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"77777777",
            b"-1\0\0\0\0\0\0",
            b"12 34\0\0\0",
        ];
        let fields_at = [
            100..108,
            108..116,
            116..124,
            124..136,
            136..148,
            329..337,
            337..345,
        ];
        let (mut taken, mut cases) = (0, 0);
        for _ in 0..20000 {
            let mut h = [0u8; HEADER_SIZE];
            h[..5].copy_from_slice(b"a/b/c");
            for (f, v) in fields_at
                .iter()
                .zip([0o644u64, 1000, 1000, 10, 1_700_000_000, 0, 0])
            {
                let s = format!("{:0w$o}\0", v, w = f.len() - 1);
                h[f.clone()].copy_from_slice(s.as_bytes());
            }
            h[156] = *[
                b'0', 0, b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'x', b'g', b'L', b'S', b'Z',
            ]
            .get(rng.gen_range(0..14))
            .unwrap();
            match rng.gen_range(0..4) {
                0 => h[257..265].copy_from_slice(b"ustar\x0000"),
                1 => h[257..265].copy_from_slice(b"ustar  \0"),
                2 => {}
                _ => h[257..265].copy_from_slice(b"ustar\x0001"),
            }
            if rng.gen_bool(0.3) {
                h[345..348].copy_from_slice(b"pre");
            }
            if rng.gen_bool(0.3) {
                h[157..160].copy_from_slice(b"lnk");
            }
            if rng.gen_bool(0.05) {
                h[..100].fill(0);
            }
            for _ in 0..rng.gen_range(0..3) {
                let f = fields_at[rng.gen_range(0..fields_at.len())].clone();
                let j = junk[rng.gen_range(0..junk.len())];
                let n = j.len().min(f.len());
                h[f.start..f.start + n].copy_from_slice(&j[..n]);
            }
            checksum(&mut h);
            if rng.gen_bool(0.1) {
                h[rng.gen_range(0..HEADER_SIZE)] ^= 1 << rng.gen_range(0..8);
            }
            cases += 1;
            let Some(fast) = plain_header(&h) else {
                continue;
            };
            taken += 1;
            let mut parser = Parser::with_defaults();
            match parser.parse(&h) {
                Ok(ParseEvent::Entry { entry, consumed }) => {
                    assert_eq!(consumed, HEADER_SIZE);
                    assert_eq!(fields(&fast), fields(&Head::of(&entry)));
                }
                other => panic!("shortcut took {h:?}, tar-core gives {other:?}"),
            }
        }
        assert!(taken > cases / 5, "{taken} of {cases}");
    }
}
