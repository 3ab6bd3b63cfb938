//! The composefs dumpfile format (composefs-dump(5)): writer and parser.
//! Pure-Python twin: `python/composefs/_pure/dumpfile.py`.
//!
//! The writer produces exactly what composefs-rs `write_dumpfile` prints (and `cfsctl oci
//! dump`). The parser follows composefs-rs `dumpfile_parse::Entry::parse` and
//! `dumpfile_to_filesystem`, with one deliberate leniency: a negative MTIME seconds value is
//! accepted (composefs-rs writes them for pre-1970 tar mtimes but refuses to read them back).
//! Error messages are composefs-rs's anyhow chains printed on one line (`outer: inner`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use crate::tree::{debug_bytes, Content, Directory, FileSystem, Inode, Leaf, Stat, Walk};

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// composefs-rs `MAX_INLINE_CONTENT`: the longest inline content the parser accepts.
const MAX_INLINE_CONTENT: usize = 512;
/// composefs-rs `SYMLINK_MAX`.
const SYMLINK_MAX: usize = 1024;
const PATH_MAX: usize = 4096;
const XATTR_NAME_MAX: usize = 255;
const XATTR_LIST_MAX: usize = u16::MAX as usize;
const XATTR_SIZE_MAX: usize = u16::MAX as usize;

const HEX: &[u8; 16] = b"0123456789abcdef";

// ------------------------------------------------------------------------------------------
// Writer

/// Appends `bytes` escaped (no sentinel rules): `\\ \n \r \t` named, `=` as `\x3d` when
/// `escape_eq`, every byte outside `!`..=`~` as `\xHH`.
fn push_escaped_raw(out: &mut Vec<u8>, bytes: &[u8], escape_eq: bool) {
    for &c in bytes {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if escape_eq => out.extend_from_slice(b"\\x3d"),
            b'!'..=b'~' => out.push(c),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]),
        }
    }
}

/// Appends a space-delimited optional field: empty is `-`, a lone `-` is `\x2d`.
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes {
        b"" => out.push(b'-'),
        b"-" => out.extend_from_slice(b"\\x2d"),
        _ => push_escaped_raw(out, bytes, false),
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// The object path `xx/rest-of-hex` of an object id.
fn push_object_path(out: &mut Vec<u8>, id: &[u8]) {
    if let Some((first, rest)) = id.split_first() {
        push_hex(out, std::slice::from_ref(first));
        out.push(b'/');
        push_hex(out, rest);
    }
}

/// The S_IFMT bits of a leaf's content.
pub fn content_type(content: &Content) -> u32 {
    match content {
        Content::Inline(_)
        | Content::External { .. }
        | Content::ExternalNoVerity { .. }
        | Content::Sparse(_) => S_IFREG,
        Content::BlockDevice(_) => S_IFBLK,
        Content::CharacterDevice(_) => S_IFCHR,
        Content::Fifo => S_IFIFO,
        Content::Socket => S_IFSOCK,
        Content::Symlink(_) => S_IFLNK,
    }
}

/// Bytes buffered before [`write_to`] hands them to its sink.
pub const CHUNK: usize = 1 << 20;

struct Writer<'a, W: std::io::Write> {
    /// The lines not yet handed to `sink` (at least `chunk` bytes only for a moment).
    out: Vec<u8>,
    sink: W,
    /// `out` is handed to `sink` once it holds this many bytes, at a line's end.
    chunk: usize,
    /// Bytes handed to `sink` so far.
    written: u64,
    /// The first error of `sink`: nothing more is written.
    error: Option<std::io::Error>,
    fs: &'a FileSystem,
    nlinks: Vec<u32>,
    /// First path written for each hard-linked leaf.
    first_path: Vec<Option<Vec<u8>>>,
    raw_modes: bool,
    path: Vec<u8>,
}

impl<W: std::io::Write> Writer<'_, W> {
    /// At the end of a line: hands `out` to `sink` when it holds `chunk` bytes or more.
    fn line_done(&mut self) {
        if self.out.len() >= self.chunk {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() && !self.out.is_empty() {
            match self.sink.write_all(&self.out) {
                Ok(()) => self.written += self.out.len() as u64,
                Err(e) => self.error = Some(e),
            }
        }
        self.out.clear();
    }

    fn mode(&self, stat: &Stat, ifmt: u32) -> u32 {
        if self.raw_modes {
            stat.mode | ifmt
        } else {
            ifmt | (stat.mode & 0o7777)
        }
    }

    /// Writes `PATH SIZE MODE NLINK UID GID RDEV MTIME ` (PATH is the current path).
    fn head(&mut self, stat: &Stat, ifmt: u32, size: u64, nlink: u32, rdev: u64) {
        let mode = self.mode(stat, ifmt);
        if self.path.is_empty() {
            self.out.push(b'/');
        } else {
            push_field(&mut self.out, &self.path);
        }
        // Writing into a Vec cannot fail.
        let _ = write!(
            self.out,
            " {size} {mode:o} {nlink} {} {} {rdev} {}.{} ",
            stat.uid, stat.gid, stat.mtime, stat.mtime_nsec
        );
    }

    fn tail(&mut self, stat: &Stat) {
        for (key, value) in &stat.xattrs {
            self.out.push(b' ');
            push_escaped_raw(&mut self.out, key, true);
            self.out.push(b'=');
            push_escaped_raw(&mut self.out, value, true);
        }
        self.out.push(b'\n');
        self.line_done();
    }

    fn dir(&mut self, dir: &Directory) {
        let subdirs = dir
            .entries
            .values()
            .filter(|i| matches!(i, Inode::Directory(_)))
            .count() as u32;
        self.head(&dir.stat, S_IFDIR, 0, 2 + subdirs, 0);
        self.out.extend_from_slice(b"- - -");
        self.tail(&dir.stat);
    }

    /// The whole tree, depth-first in name order, without recursion: `self.path` is the
    /// current path, `lens` its length before each directory's name was appended.
    fn tree(&mut self, root: &Directory) {
        self.dir(root);
        let mut lens: Vec<usize> = Vec::new();
        for event in root.walk() {
            if self.error.is_some() {
                return;
            }
            match event {
                Walk::Enter(name, d) => {
                    lens.push(self.path.len());
                    self.path.push(b'/');
                    self.path.extend_from_slice(name);
                    self.dir(d);
                }
                Walk::Leaf(name, _, id) => {
                    let len = self.path.len();
                    self.path.push(b'/');
                    self.path.extend_from_slice(name);
                    self.leaf(id);
                    self.path.truncate(len);
                }
                Walk::Leave(_) => {
                    let len = lens.pop().unwrap_or_default();
                    self.path.truncate(len);
                }
            }
        }
    }

    fn leaf(&mut self, id: usize) {
        let nlink = self.nlinks[id];
        if nlink > 1 {
            if let Some(target) = &self.first_path[id] {
                push_field(&mut self.out, &self.path);
                self.out.extend_from_slice(b" 0 @120000 - - - - 0.0 ");
                push_field(&mut self.out, target);
                self.out.extend_from_slice(b" - -\n");
                self.line_done();
                return;
            }
            self.first_path[id] = Some(self.path.clone());
        }
        let fs = self.fs;
        let Leaf { stat, content } = &fs.leaves[id];
        let ifmt = content_type(content);
        match content {
            Content::Inline(data) => {
                self.head(stat, ifmt, data.len() as u64, nlink, 0);
                self.out.extend_from_slice(b"- ");
                push_field(&mut self.out, data);
                self.out.extend_from_slice(b" -");
            }
            Content::External { id, size } | Content::ExternalNoVerity { id, size } => {
                self.head(stat, ifmt, *size, nlink, 0);
                if id.is_empty() {
                    self.out.push(b'-');
                } else {
                    push_object_path(&mut self.out, id);
                }
                self.out.extend_from_slice(b" - ");
                if id.is_empty() {
                    self.out.push(b'-');
                } else {
                    push_hex(&mut self.out, id);
                }
            }
            Content::Sparse(size) => {
                self.head(stat, ifmt, *size, nlink, 0);
                self.out.extend_from_slice(b"- - -");
            }
            Content::BlockDevice(rdev) | Content::CharacterDevice(rdev) => {
                self.head(stat, ifmt, 0, nlink, *rdev);
                self.out.extend_from_slice(b"- - -");
            }
            Content::Fifo | Content::Socket => {
                self.head(stat, ifmt, 0, nlink, 0);
                self.out.extend_from_slice(b"- - -");
            }
            Content::Symlink(target) => {
                self.head(stat, ifmt, target.len() as u64, nlink, 0);
                push_field(&mut self.out, target);
                self.out.extend_from_slice(b" - -");
            }
        }
        self.tail(stat);
    }
}

/// Writes a tree as a dumpfile (composefs-rs `write_dumpfile`). With `raw_modes` false,
/// MODE is `type | (mode & 0o7777)` instead of `mode | type`.
pub fn write(fs: &FileSystem, raw_modes: bool) -> Vec<u8> {
    // never flushed: the whole text stays in `out`
    let mut w = Writer::new(fs, raw_modes, std::io::sink(), usize::MAX);
    w.out.reserve(128 * (fs.leaves.len() + 16));
    w.tree(&fs.root);
    w.out
}

/// [`write`], streamed: the text goes to `sink` as it is produced, in `write_all` calls of
/// about [`CHUNK`] bytes (whole lines, at least one). Returns the number of bytes written,
/// or `sink`'s first error (the walk stops there).
pub fn write_to<W: std::io::Write>(
    fs: &FileSystem,
    raw_modes: bool,
    sink: W,
) -> std::io::Result<u64> {
    let mut w = Writer::new(fs, raw_modes, sink, CHUNK);
    w.out.reserve(CHUNK + 4096);
    w.tree(&fs.root);
    w.flush();
    match w.error.take() {
        Some(e) => Err(e),
        None => w.sink.flush().map(|()| w.written),
    }
}

impl<'a, W: std::io::Write> Writer<'a, W> {
    fn new(fs: &'a FileSystem, raw_modes: bool, sink: W, chunk: usize) -> Self {
        let nlinks = fs.nlinks();
        Writer {
            out: Vec::new(),
            sink,
            chunk,
            written: 0,
            error: None,
            fs,
            first_path: vec![None; nlinks.len()],
            nlinks,
            raw_modes,
            path: Vec::with_capacity(256),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Parser

/// composefs-rs `unescape_limited`.
fn unescape_limited(s: &str, max: usize) -> Result<Vec<u8>, String> {
    unescape_fast(s.as_bytes(), max).map_or_else(|| unescape_slow(s, max), Ok)
}

/// [`unescape_slow`] for input it accepts with only `\\`, `\n`, `\r`, `\t` and `\xHH` escapes
/// (`HH` ASCII hex digits); `None` for anything else, [`unescape_slow`] then decides.
fn unescape_fast(s: &[u8], max: usize) -> Option<Vec<u8>> {
    let hex = |c: u8| Some(HEX_DIGIT[usize::from(c)]).filter(|&v| v != 0xff);
    let mut r = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        // The limit is checked before each character: a run that could reach it is left to
        // the slow path.
        let run = s[i..]
            .iter()
            .position(|&c| c == b'\\')
            .unwrap_or(s.len() - i);
        if r.len() + run > max {
            return None;
        }
        r.extend_from_slice(&s[i..i + run]);
        i += run;
        if i == s.len() {
            break;
        }
        if r.len() == max {
            return None;
        }
        let b = match *s.get(i + 1)? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'x' => {
                let v = (hex(*s.get(i + 2)?)? << 4) | hex(*s.get(i + 3)?)?;
                i += 2;
                v
            }
            _ => return None,
        };
        r.push(b);
        i += 2;
    }
    Some(r)
}

/// The value of an ASCII hex digit, 0xff for any other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn unescape_slow(s: &str, max: usize) -> Result<Vec<u8>, String> {
    if !s.contains('\\') && s.is_ascii() {
        let len = s.len();
        if len > max {
            return Err(format!("Input {len} exceeded maximum length {max}"));
        }
        return Ok(s.as_bytes().to_vec());
    }
    let mut it = s.chars();
    let mut r = Vec::with_capacity(s.len());
    while let Some(c) = it.next() {
        if r.len() == max {
            return Err(format!("Input exceeded maximum length {max}"));
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            r.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let c = it.next().ok_or("Unterminated escape")?;
        let b = match c {
            '\\' => b'\\',
            'n' => b'\n',
            'r' => b'\r',
            't' => b'\t',
            'x' => {
                let mut hex = String::new();
                hex.push(it.next().ok_or("Unterminated hex escape")?);
                hex.push(it.next().ok_or("Unterminated hex escape")?);
                u8::from_str_radix(&hex, 16)
                    .map_err(|e| format!("Invalid hex escape {hex}: {e}"))?
            }
            o => return Err(format!("Invalid escape {o}")),
        };
        r.push(b);
    }
    Ok(r)
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    unescape_limited(s, usize::MAX)
}

/// composefs-rs `unescape_to_osstr`: no embedded NUL.
fn unescape_name(s: &str) -> Result<Vec<u8>, String> {
    let v = unescape(s)?;
    if v.contains(&0) {
        return Err("Invalid embedded NUL".into());
    }
    Ok(v)
}

/// composefs-rs `unescape_to_path`: no NUL, not empty, at most PATH_MAX bytes.
fn unescape_path(s: &str) -> Result<Vec<u8>, String> {
    let v = unescape_name(s)?;
    if v.is_empty() {
        return Err("Invalid empty path".into());
    }
    if v.len() > PATH_MAX {
        return Err(format!("Path is too long: {} bytes", v.len()));
    }
    Ok(v)
}

/// composefs-rs `unescape_to_path_canonical`: absolute, no `.`, `..` or empty components.
fn unescape_canonical(s: &str) -> Result<Vec<u8>, String> {
    let p = unescape_path(s)?;
    if p[0] != b'/' {
        return Err("Invalid non-absolute path".into());
    }
    if p != b"/" {
        for component in p[1..].split(|&b| b == b'/') {
            match component {
                b"" => return Err("Empty path component (// or trailing /)".into()),
                b"." => return Err("Invalid path component '.'".into()),
                b".." => return Err("Invalid path component '..'".into()),
                _ => {}
            }
        }
    }
    Ok(p)
}

fn optional(s: &str) -> Option<&str> {
    (s != "-").then_some(s)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| e.to_string())
}

enum Item {
    RegularInline {
        size: u64,
        content: Vec<u8>,
    },
    Regular {
        size: u64,
        path: Vec<u8>,
        digest: Option<String>,
    },
    Device {
        nlink: u32,
        rdev: u64,
    },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    Socket,
    Directory,
}

struct Entry {
    path: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u64,
    item: Item,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn no_content(content: Option<&str>, digest: Option<&str>) -> Result<(), String> {
    if content.is_some() {
        return Err("entry cannot have content".into());
    }
    if digest.is_some() {
        return Err("entry cannot have fsverity digest".into());
    }
    Ok(())
}

fn no_rdev(rdev: u64) -> Result<(), String> {
    if rdev != 0 {
        return Err(format!("entry cannot have device (rdev) {rdev}"));
    }
    Ok(())
}

/// MTIME `sec.nsec`; a negative `sec` is accepted (our leniency).
fn parse_mtime(s: &str) -> Result<(i64, u64), String> {
    let (sec, nsec) = s.split_once('.').ok_or("Missing . in mtime")?;
    let sec = if sec.starts_with('-') {
        num::<i64>(sec)?
    } else {
        num::<u64>(sec)? as i64
    };
    Ok((sec, num::<u64>(nsec)?))
}

fn parse_xattr(s: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (key, value) = s.split_once('=').ok_or("Missing = in xattrs")?;
    let key = unescape_name(key)?;
    let keylen = key.len();
    if keylen > XATTR_NAME_MAX {
        return Err(format!(
            "xattr name too long; max={XATTR_NAME_MAX} found={keylen}"
        ));
    }
    let value = unescape(value)?;
    if value.len() > XATTR_SIZE_MAX {
        // (composefs-rs reports the key length here)
        return Err(format!(
            "xattr value too long; max={XATTR_SIZE_MAX} found={keylen}"
        ));
    }
    Ok((key, value))
}

/// `line.split(' ')`.
struct Fields<'a>(Option<&'a str>);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b' ') {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// composefs-rs `Entry::parse`.
fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut fields = Fields(Some(line));
    let mut next = |name: &str| fields.next().ok_or_else(|| format!("Missing {name}"));
    let path = unescape_canonical(next("path")?)?;
    let size = num::<u64>(next("size")?)?;
    let modeval = next("mode")?;
    if let Some((_, rest)) = modeval.split_once('@') {
        let mode = octal(rest)?;
        if mode & S_IFMT == S_IFDIR {
            return Err("Invalid hardlinked directory".into());
        }
        for field in ["nlink", "uid", "gid", "rdev", "mtime"] {
            next(field)?;
        }
        let payload = optional(next("payload")?).ok_or("Missing payload")?;
        let target = unescape_canonical(payload)?;
        return Ok(Entry {
            path,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            item: Item::Hardlink(target),
            xattrs: Vec::new(),
        });
    }
    let mode = octal(modeval)?;
    let nlink = num::<u32>(next("nlink")?)?;
    let uid = num::<u32>(next("uid")?)?;
    let gid = num::<u32>(next("gid")?)?;
    let rdev = num::<u64>(next("rdev")?)?;
    let (mtime, mtime_nsec) = parse_mtime(next("mtime")?)?;
    let payload = optional(next("payload")?);
    let content = optional(next("content")?);
    let digest = optional(next("digest")?);
    let mut xattrs = Vec::new();
    let mut total_namelen = 0usize;
    for field in fields {
        let xattr = parse_xattr(field)?;
        total_namelen = total_namelen.saturating_add(xattr.0.len());
        if total_namelen > XATTR_LIST_MAX {
            return Err("Too many xattrs".into());
        }
        xattrs.push(xattr);
    }
    xattrs.sort();
    let item = match mode & S_IFMT {
        S_IFREG => {
            no_rdev(rdev)?;
            if let Some(p) = payload {
                Item::Regular {
                    size,
                    path: unescape_path(p)?,
                    digest: digest.map(str::to_owned),
                }
            } else {
                let content = unescape_limited(content.unwrap_or_default(), MAX_INLINE_CONTENT)?;
                if digest.is_some() {
                    return Err("Inline file cannot have fsverity digest".into());
                }
                Item::RegularInline { size, content }
            }
        }
        S_IFLNK => {
            no_content(content, digest)?;
            no_rdev(rdev)?;
            let target = unescape_path(payload.ok_or("Missing payload")?)?;
            if target.len() > SYMLINK_MAX {
                return Err(format!(
                    "Symlink target length {} exceeds limit {SYMLINK_MAX}",
                    target.len()
                ));
            }
            Item::Symlink(target)
        }
        S_IFIFO => {
            no_content(content, digest)?;
            no_rdev(rdev)?;
            Item::Fifo
        }
        S_IFCHR | S_IFBLK => {
            no_content(content, digest)?;
            Item::Device { nlink, rdev }
        }
        S_IFDIR => {
            no_content(content, digest)?;
            no_rdev(rdev)?;
            Item::Directory
        }
        S_IFSOCK => {
            no_content(content, digest)?;
            no_rdev(rdev)?;
            Item::Socket
        }
        _ => return Err(format!("Unhandled file type from raw mode: {mode}")),
    };
    Ok(Entry {
        path,
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        item,
        xattrs,
    })
}

/// composefs-rs `entry_to_stat`.
fn entry_stat(entry: &mut Entry) -> Result<Stat, String> {
    let nsec = entry.mtime_nsec;
    if nsec >= 1_000_000_000 {
        return Err(format!(
            "Invalid mtime nanoseconds: {nsec} (must be < 1_000_000_000)"
        ));
    }
    Ok(Stat {
        mode: entry.mode & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        mtime: entry.mtime,
        mtime_nsec: nsec as u32,
        xattrs: std::mem::take(&mut entry.xattrs)
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    })
}

/// The `hex` crate's `decode_to_slice` into `n` bytes, with its error texts.
pub fn decode_hex(hex: &[u8], n: usize) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("Odd number of digits".into());
    }
    if hex.len() / 2 != n {
        return Err("Invalid string length".into());
    }
    let mut out = Vec::with_capacity(n);
    let mut bad = 0u8;
    for pair in hex.chunks_exact(2) {
        let (h, l) = (
            HEX_DIGIT[usize::from(pair[0])],
            HEX_DIGIT[usize::from(pair[1])],
        );
        bad |= h | l;
        out.push((h << 4) | (l & 0xf));
    }
    if bad & 0xf0 == 0 {
        return Ok(out);
    }
    let val = |i: usize| -> Result<u8, String> {
        let c = hex[i];
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!(
                "Invalid character {:?} at position {i}",
                char::from(c)
            )),
        }
    };
    (0..n)
        .map(|k| Ok((val(2 * k)? << 4) | val(2 * k + 1)?))
        .collect()
}

/// A digest of 32 bytes (sha256) or, when it has 128 hex digits, 64 bytes (sha512).
fn digest_from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let n = if hex.len() == 128 { 64 } else { 32 };
    decode_hex(hex.as_bytes(), n)
}

/// composefs-rs `from_object_pathname`: the id from the trailing `xx/hex` of a path; a
/// sha512 id when the path has the `/` of one (129 bytes from its end), else a sha256 id.
fn id_from_object_path(path: &[u8]) -> Result<Vec<u8>, String> {
    fn parse(path: &[u8], n: usize) -> Result<Vec<u8>, String> {
        let min = 2 * n + 1;
        if path.len() < min {
            return Err("Invalid string length".into());
        }
        let t = &path[path.len() - min..];
        let mut id = decode_hex(&t[..2], 1)?;
        if t[2] != b'/' {
            return Err(format!(
                "Invalid character {:?} at position 2",
                char::from(t[2])
            ));
        }
        id.extend(decode_hex(&t[3..], n - 1)?);
        Ok(id)
    }
    let n = if path.len() >= 129 && path[path.len() - 127] == b'/' {
        64
    } else {
        32
    };
    parse(path, n).map_err(|e| format!("invalid object pathname: {e}"))
}

/// `parent` (the directory path of a canonical path) in the tree.
fn lookup_dir_mut<'a>(root: &'a mut Directory, parent: &[u8]) -> Result<&'a mut Directory, String> {
    let mut dir = root;
    if parent == b"/" {
        return Ok(dir);
    }
    for name in parent[1..].split(|&b| b == b'/') {
        dir = match dir.entries.get_mut(name) {
            Some(Inode::Directory(d)) => d,
            Some(Inode::Leaf(_)) => {
                return Err(format!(
                    "Directory entry {} is not a subdirectory",
                    debug_bytes(name)
                ))
            }
            None => {
                return Err(format!(
                    "Directory entry {} does not exist",
                    debug_bytes(name)
                ))
            }
        };
    }
    Ok(dir)
}

/// composefs-rs `add_entry_to_filesystem`.
fn add_entry(
    fs: &mut FileSystem,
    mut entry: Entry,
    hardlinks: &mut HashMap<Vec<u8>, usize, PathHash>,
) -> Result<(), String> {
    if entry.path == b"/" {
        fs.root.stat = entry_stat(&mut entry)?;
        return Ok(());
    }
    let path = std::mem::take(&mut entry.path);
    let slash = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let parent: &[u8] = if slash == 0 { b"/" } else { &path[..slash] };
    let name = &path[slash + 1..];
    let push = |fs: &mut FileSystem, stat: Stat, content: Content| {
        fs.leaves.push(Leaf { stat, content });
        fs.leaves.len() - 1
    };
    let item = std::mem::replace(&mut entry.item, Item::Fifo);
    let inode = match item {
        Item::Directory => Inode::Directory(Box::new(Directory {
            stat: entry_stat(&mut entry)?,
            entries: BTreeMap::new(),
        })),
        Item::Hardlink(target) => match hardlinks.get(&target) {
            Some(&id) => Inode::Leaf(id),
            None => {
                return Err(format!(
                    "Hardlink target not found: {}",
                    debug_bytes(&target)
                ))
            }
        },
        Item::RegularInline { size, content } => {
            let stat = entry_stat(&mut entry)?;
            let content = if content.is_empty() && size > 0 {
                Content::Sparse(size)
            } else {
                Content::Inline(content)
            };
            Inode::Leaf(push(fs, stat, content))
        }
        Item::Regular { size, path, digest } => {
            let stat = entry_stat(&mut entry)?;
            let content = match digest {
                Some(d) => Content::External {
                    id: digest_from_hex(&d)?,
                    size,
                },
                None => Content::ExternalNoVerity {
                    id: id_from_object_path(&path)?,
                    size,
                },
            };
            Inode::Leaf(push(fs, stat, content))
        }
        Item::Device { nlink, rdev } => {
            let is_char = entry.mode & S_IFMT != S_IFBLK;
            if is_char && rdev == 0 && nlink > 1 {
                return Err(format!(
                    "invalid dumpfile: whiteout entry {} has nlink > 1",
                    debug_bytes(&path)
                ));
            }
            let stat = entry_stat(&mut entry)?;
            let content = if is_char {
                Content::CharacterDevice(rdev)
            } else {
                Content::BlockDevice(rdev)
            };
            Inode::Leaf(push(fs, stat, content))
        }
        Item::Symlink(target) => {
            let stat = entry_stat(&mut entry)?;
            Inode::Leaf(push(fs, stat, Content::Symlink(target)))
        }
        Item::Fifo => {
            let stat = entry_stat(&mut entry)?;
            Inode::Leaf(push(fs, stat, Content::Fifo))
        }
        Item::Socket => {
            let stat = entry_stat(&mut entry)?;
            Inode::Leaf(push(fs, stat, Content::Socket))
        }
    };
    let leaf = match inode {
        Inode::Leaf(id) => Some(id),
        Inode::Directory(_) => None,
    };
    let dir = lookup_dir_mut(&mut fs.root, parent)
        .map_err(|e| format!("Parent directory not found: {}: {e}", debug_bytes(parent)))?;
    dir.entries.insert(name.to_vec(), inode);
    if let Some(id) = leaf {
        hardlinks.insert(path, id);
    }
    Ok(())
}

/// A cheap hasher for the hard link table (FxHash-like; the keys are the file's own paths).
#[derive(Clone, Copy, Default)]
struct PathHash;

impl std::hash::BuildHasher for PathHash {
    type Hasher = PathHasher;
    fn build_hasher(&self) -> PathHasher {
        PathHasher(0)
    }
}

struct PathHasher(u64);

impl std::hash::Hasher for PathHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Parses a dumpfile into a tree (composefs-rs `dumpfile_to_filesystem` rules).
pub fn parse(text: &[u8]) -> Result<FileSystem, String> {
    let text =
        std::str::from_utf8(text).map_err(|_| "stream did not contain valid UTF-8".to_owned())?;
    let line_err = |line: &str, e: String| format!("Failed to parse dumpfile line: {line}: {e}");
    let mut lines = text.lines().filter(|l| !is_blank(l));
    let first = lines
        .next()
        .ok_or("Dumpfile is empty, expected root directory entry")?;
    let mut root = parse_entry(first).map_err(|e| line_err(first, e))?;
    if root.path != b"/" {
        return Err(format!(
            "Dumpfile must start with root directory entry, found: {}",
            debug_bytes(&root.path)
        ));
    }
    let mut fs = FileSystem {
        root: Directory {
            stat: entry_stat(&mut root)?,
            entries: BTreeMap::new(),
        },
        leaves: Vec::new(),
    };
    let mut hardlinks = HashMap::with_hasher(PathHash);
    for line in lines {
        let entry = parse_entry(line).map_err(|e| line_err(line, e))?;
        add_entry(&mut fs, entry, &mut hardlinks)?;
    }
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// composefs-rs tests/mkfs.rs `simple` as `write_dumpfile` prints it.
    fn simple() -> String {
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /blkdev 0 60000 1 0 0 123 0.0 - - -\n\
             /chrdev 0 20000 1 0 0 123 0.0 - - -\n\
             /fifo 0 10000 1 0 0 0 0.0 - - -\n\
             /regular-external 1234 100000 1 0 0 0 0.0 5a/{} - {}\n\
             /regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n\
             /socket 0 140000 1 0 0 0 0.0 - - -\n\
             /symlink 7 120000 1 0 0 0 0.0 /target - -\n",
            "5a".repeat(31),
            "5a".repeat(32)
        )
    }

    fn stat(mode: u32) -> Stat {
        Stat {
            mode,
            ..Stat::default()
        }
    }

    fn escaped(bytes: &[u8], eq: bool) -> String {
        let mut v = Vec::new();
        push_escaped_raw(&mut v, bytes, eq);
        String::from_utf8(v).unwrap()
    }

    fn field(bytes: &[u8]) -> String {
        let mut v = Vec::new();
        push_field(&mut v, bytes);
        String::from_utf8(v).unwrap()
    }

    fn roundtrip(text: &str) -> String {
        let fs = parse(text.as_bytes()).unwrap();
        String::from_utf8(write(&fs, true)).unwrap()
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err()
    }

    /// A sink that records each `write_all` call's bytes, failing from call `fail_at` on.
    struct Calls {
        calls: Vec<Vec<u8>>,
        fail_at: usize,
    }

    impl std::io::Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.calls.len() >= self.fail_at {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            // at most 5 bytes per call: `write_all` continues after partial writes
            let n = buf.len().min(5);
            self.calls.push(buf[..n].to_vec());
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Streamed in chunks of any size, the text is [`write`]'s, cut only at line ends.
    #[test]
    fn write_to_streams_the_same_bytes() {
        let fs = parse(simple().as_bytes()).unwrap();
        let whole = write(&fs, true);
        for chunk in [1, 7, 40, 1 << 20] {
            let mut w = Writer::new(&fs, true, Vec::new(), chunk);
            w.tree(&fs.root);
            w.flush();
            assert!(w.error.is_none());
            assert_eq!(w.written, whole.len() as u64);
            assert_eq!(w.sink, whole, "{chunk}");
        }
        let mut out = Vec::new();
        assert_eq!(write_to(&fs, false, &mut out).unwrap(), out.len() as u64);
        assert_eq!(out, write(&fs, false));
        let mut sink = Calls {
            calls: Vec::new(),
            fail_at: usize::MAX,
        };
        write_to(&fs, true, &mut sink).unwrap();
        assert_eq!(sink.calls.concat(), whole);
        sink = Calls {
            calls: Vec::new(),
            fail_at: 3,
        };
        let e = write_to(&fs, true, &mut sink).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    /// The shortcuts decide only what the slow paths would, and the same way.
    #[test]
    fn unescape_and_hex_shortcuts() {
        let pieces = [
            "a", "\\", "\\\\", "\\n", "\\t", "\\r", "\\x41", "\\xfF", "\\x4", "\\xg1", "\\x+f",
            "\\q", "é", "€", "\\xé1", "=", " ", "\u{0}",
        ];
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..20000 {
            let s: String = (0..next() % 8)
                .map(|_| pieces[next() % pieces.len()])
                .collect();
            for max in [0, 1, 2, 3, 5, 8, usize::MAX] {
                let fast = unescape_fast(s.as_bytes(), max);
                if let Some(f) = &fast {
                    assert_eq!(Ok(f.clone()), unescape_slow(&s, max), "{s:?} {max}");
                }
                assert_eq!(
                    unescape_limited(&s, max),
                    unescape_slow(&s, max),
                    "{s:?} {max}"
                );
            }
            let hex: Vec<u8> = s.bytes().collect();
            if hex.len().is_multiple_of(2) {
                let n = hex.len() / 2;
                let slow: Result<Vec<u8>, String> = (0..n)
                    .map(|k| {
                        let v = |i: usize| match hex[i] {
                            c @ b'0'..=b'9' => Ok(c - b'0'),
                            c @ b'a'..=b'f' => Ok(c - b'a' + 10),
                            c @ b'A'..=b'F' => Ok(c - b'A' + 10),
                            c => Err(format!(
                                "Invalid character {:?} at position {i}",
                                char::from(c)
                            )),
                        };
                        Ok((v(2 * k)? << 4) | v(2 * k + 1)?)
                    })
                    .collect();
                assert_eq!(decode_hex(&hex, n), slow, "{s:?}");
            }
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escaped(b"\\\n\r\t", false), "\\\\\\n\\r\\t");
        assert_eq!(
            escaped(b"\x00\x1f \x7f\xff", false),
            "\\x00\\x1f\\x20\\x7f\\xff"
        );
        assert_eq!(escaped(b"a=b", false), "a=b");
        assert_eq!(escaped(b"a=b", true), "a\\x3db");
        assert_eq!(escaped(b"!~/.-", false), "!~/.-");
        assert_eq!(field(b""), "-");
        assert_eq!(field(b"-"), "\\x2d");
        assert_eq!(field(b"a-b"), "a-b");
        assert_eq!(field(b"--"), "--");
    }

    #[test]
    fn simple_round_trip() {
        assert_eq!(roundtrip(&simple()), simple());
    }

    #[test]
    fn write_tree() {
        let mut fs = FileSystem {
            root: Directory {
                stat: stat(0o755),
                entries: BTreeMap::new(),
            },
            leaves: Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        xattrs.insert(b"user.a=b".to_vec(), b"x y=\n".to_vec());
        xattrs.insert(b"user.empty".to_vec(), Vec::new());
        xattrs.insert(b"user.dash".to_vec(), b"-".to_vec());
        fs.leaves.push(Leaf {
            stat: Stat {
                mode: 0o100644, // raw tar mode with a type bit
                uid: 70000,
                gid: 5,
                mtime: -5,
                mtime_nsec: 7,
                xattrs,
            },
            content: Content::Inline(b"-".to_vec()),
        });
        fs.leaves.push(Leaf {
            stat: stat(0o777),
            content: Content::Symlink(b"a b".to_vec()),
        });
        fs.leaves.push(Leaf {
            stat: stat(0o644),
            content: Content::Inline(Vec::new()),
        });
        let mut sub = Directory {
            stat: stat(0o700),
            entries: BTreeMap::new(),
        };
        sub.entries.insert(b"h".to_vec(), Inode::Leaf(0));
        sub.entries.insert(
            b"d".to_vec(),
            Inode::Directory(Box::new(Directory {
                stat: stat(0o755),
                entries: BTreeMap::new(),
            })),
        );
        fs.root.entries.insert(b"z".to_vec(), Inode::Leaf(0));
        fs.root
            .entries
            .insert(b"a dir".to_vec(), Inode::Directory(Box::new(sub)));
        fs.root.entries.insert(b"l".to_vec(), Inode::Leaf(1));
        fs.root.entries.insert(b"-".to_vec(), Inode::Leaf(2));
        let expected = "\
/ 0 40755 3 0 0 0 0.0 - - -
/- 0 100644 1 0 0 0 0.0 - - -
/a\\x20dir 0 40700 3 0 0 0 0.0 - - -
/a\\x20dir/d 0 40755 2 0 0 0 0.0 - - -
/a\\x20dir/h 1 100644 2 70000 5 0 -5.7 - \\x2d - user.a\\x3db=x\\x20y\\x3d\\n user.dash=- user.empty=
/l 3 120777 1 0 0 0 0.0 a\\x20b - -
/z 0 @120000 - - - - 0.0 /a\\x20dir/h - -
";
        assert_eq!(String::from_utf8(write(&fs, true)).unwrap(), expected);
        // raw_modes false: type | (mode & 0o7777); here identical since 0o100644 & 0o7777 == 0o644
        fs.leaves[0].stat.mode = 0o170644;
        let raw = String::from_utf8(write(&fs, true)).unwrap();
        assert!(raw.contains(" 170644 "));
        let clean = String::from_utf8(write(&fs, false)).unwrap();
        assert_eq!(clean, expected);
        // the negative mtime is read back (our leniency), and everything round-trips
        assert_eq!(roundtrip(expected), expected);
    }

    #[test]
    fn parser_details() {
        // hardlink lines may carry anything in the ignored fields; xattrs sorted, last of equal
        // keys (after sorting by value) wins
        let text = "/ 0 40755 2 0 0 0 1.2 - - - user.b=2 user.a=1\n\n\
                    /f 5 100644 9 1 2 0 +3.4 - hello - user.k=b user.k=a\r\n\
                    /g 0 x@100000 q q q q q /f x y\n\
                    /s 0 100644 1 0 0 0 0.0 - - -\n\
                    /sp 10 100644 1 0 0 0 0.0 - - -\n";
        let out = roundtrip(text);
        assert_eq!(
            out,
            "/ 0 40755 2 0 0 0 1.2 - - - user.a=1 user.b=2\n\
             /f 5 100644 2 1 2 0 3.4 - hello - user.k=b\n\
             /g 0 @120000 - - - - 0.0 /f - -\n\
             /s 0 100644 1 0 0 0 0.0 - - -\n\
             /sp 10 100644 1 0 0 0 0.0 - - -\n"
        );
        // a repeated directory line replaces the directory and its children
        let out = roundtrip("/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/d/x 0 10644 1 0 0 0 0.0 - - -\n/d 0 40700 2 0 0 0 0.0 - - -\n");
        assert_eq!(
            out,
            "/ 0 40755 3 0 0 0 0.0 - - -\n/d 0 40700 2 0 0 0 0.0 - - -\n"
        );
        // ExternalNoVerity and a sha512 digest
        let h512 = "ab".repeat(64);
        let text = format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n/e 100 100644 1 0 0 0 0.0 {}/{} - {h512}\n/n 100 100644 1 0 0 0 0.0 /x/12/{} - -\n",
            &h512[..2],
            &h512[2..],
            "34".repeat(31)
        );
        let fs = parse(text.as_bytes()).unwrap();
        assert_eq!(
            fs.leaves[0].content,
            Content::External {
                id: vec![0xab; 64],
                size: 100
            }
        );
        let mut id = vec![0x12];
        id.extend([0x34; 31]);
        assert_eq!(
            fs.leaves[1].content,
            Content::ExternalNoVerity { id, size: 100 }
        );
        // escapes: \x+f is accepted by Rust's from_str_radix
        let fs = parse(b"/ 0 40755 2 0 0 0 0.0 - - -\n/a\\x+f\\x41 0 100644 1 0 0 0 0.0 - - -\n")
            .unwrap();
        assert!(fs.root.entries.contains_key(b"a\x0fA".as_slice()));
    }

    #[test]
    fn parser_errors() {
        let root = "/ 0 40755 2 0 0 0 0.0 - - -\n";
        let line = |l: &str| err(&format!("{root}{l}\n"));
        assert_eq!(err(""), "Dumpfile is empty, expected root directory entry");
        assert_eq!(
            err(" \n\t\n"),
            "Dumpfile is empty, expected root directory entry"
        );
        assert_eq!(
            parse(b"/ \xff").unwrap_err(),
            "stream did not contain valid UTF-8"
        );
        assert_eq!(
            err("/a 0 40755 2 0 0 0 0.0 - - -\n"),
            "Dumpfile must start with root directory entry, found: \"/a\""
        );
        assert_eq!(
            err("/ 0 40755"),
            "Failed to parse dumpfile line: / 0 40755: Missing nlink"
        );
        let cases: &[(&str, &str)] = &[
            ("a 0 100644 1 0 0 0 0.0 - - -", "Invalid non-absolute path"),
            (
                "/a/ 0 100644 1 0 0 0 0.0 - - -",
                "Empty path component (// or trailing /)",
            ),
            (
                "//a 0 100644 1 0 0 0 0.0 - - -",
                "Empty path component (// or trailing /)",
            ),
            (
                "/. 0 100644 1 0 0 0 0.0 - - -",
                "Invalid path component '.'",
            ),
            (
                "/a/.. 0 100644 1 0 0 0 0.0 - - -",
                "Invalid path component '..'",
            ),
            ("/a\\x00 0 100644 1 0 0 0 0.0 - - -", "Invalid embedded NUL"),
            ("/a\\q 0 100644 1 0 0 0 0.0 - - -", "Invalid escape q"),
            ("/a\\ 0 100644 1 0 0 0 0.0 - - -", "Unterminated escape"),
            (
                "/a\\x4 0 100644 1 0 0 0 0.0 - - -",
                "Unterminated hex escape",
            ),
            (
                "/a\\xzz 0 100644 1 0 0 0 0.0 - - -",
                "Invalid hex escape zz: invalid digit found in string",
            ),
            (
                "/a x 100644 1 0 0 0 0.0 - - -",
                "invalid digit found in string",
            ),
            (
                "/a  100644 1 0 0 0 0.0 - - -",
                "cannot parse integer from empty string",
            ),
            (
                "/a 0 100644 4294967296 0 0 0 0.0 - - -",
                "number too large to fit in target type",
            ),
            (
                "/a 0 100648 1 0 0 0 0.0 - - -",
                "invalid digit found in string",
            ),
            ("/a 0 100644 1 0 0 0 0 - - -", "Missing . in mtime"),
            (
                "/a 0 100644 1 0 0 0 0.x - - -",
                "invalid digit found in string",
            ),
            (
                "/a 0 100644 1 0 0 0 --1.0 - - -",
                "invalid digit found in string",
            ),
            ("/a 0 100644 1 0 0 0 0.0 - -", "Missing digest"),
            ("/a 0 100644 1 0 0 0 0.0 - - - x", "Missing = in xattrs"),
            ("/a 0 100644 1 0 0 0 0.0 - - - ", "Missing = in xattrs"),
            (
                "/a 0 100644 1 0 0 5 0.0 - - -",
                "entry cannot have device (rdev) 5",
            ),
            (
                "/a 0 100644 1 0 0 0 0.0 - x 00",
                "Inline file cannot have fsverity digest",
            ),
            ("/a 0 100644 1 0 0 0 0.0  - -", "Invalid empty path"),
            ("/a 0 120777 1 0 0 0 0.0 - - -", "Missing payload"),
            ("/a 0 120777 1 0 0 0 0.0 t c -", "entry cannot have content"),
            (
                "/a 0 10644 1 0 0 0 0.0 - - d",
                "entry cannot have fsverity digest",
            ),
            (
                "/a 0 40755 1 0 0 1 0.0 - - -",
                "entry cannot have device (rdev) 1",
            ),
            (
                "/a 0 644 1 0 0 0 0.0 - - -",
                "Unhandled file type from raw mode: 420",
            ),
            (
                "/a 0 @40755 - - - - 0.0 /x - -",
                "Invalid hardlinked directory",
            ),
            ("/a 0 @100644 - - - - 0.0 - - -", "Missing payload"),
            ("/a 0 @100644 - - - -", "Missing mtime"),
        ];
        for (l, inner) in cases {
            assert_eq!(
                line(l),
                format!("Failed to parse dumpfile line: {l}: {inner}"),
                "{l}"
            );
        }
        let long = format!("/a 0 100644 1 0 0 0 0.0 - {} -", "x".repeat(513));
        assert_eq!(
            line(&long),
            format!("Failed to parse dumpfile line: {long}: Input 513 exceeded maximum length 512")
        );
        let long = format!("/a 0 100644 1 0 0 0 0.0 - {}\\n -", "x".repeat(512));
        assert_eq!(
            line(&long),
            format!("Failed to parse dumpfile line: {long}: Input exceeded maximum length 512")
        );
        let long = format!("/a 0 120777 1 0 0 0 0.0 {} - -", "t".repeat(1025));
        assert_eq!(
            line(&long),
            format!("Failed to parse dumpfile line: {long}: Symlink target length 1025 exceeds limit 1024")
        );
        let key = format!("user.{}", "k".repeat(251));
        let long = format!("/a 0 100644 1 0 0 0 0.0 - - - {key}=v");
        assert_eq!(
            line(&long),
            format!(
                "Failed to parse dumpfile line: {long}: xattr name too long; max=255 found=256"
            )
        );
        // semantic errors (no line context)
        assert_eq!(
            line("/a/b 0 100644 1 0 0 0 0.0 - - -"),
            "Parent directory not found: \"/a\": Directory entry \"a\" does not exist"
        );
        assert_eq!(
            err(&format!(
                "{root}/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n"
            )),
            "Parent directory not found: \"/a\": Directory entry \"a\" is not a subdirectory"
        );
        assert_eq!(
            line("/a 0 @100644 - - - - 0.0 /b - -"),
            "Hardlink target not found: \"/b\""
        );
        assert_eq!(
            line("/a 0 20000 2 0 0 0 0.0 - - -"),
            "invalid dumpfile: whiteout entry \"/a\" has nlink > 1"
        );
        assert_eq!(
            line("/a 0 100644 1 0 0 0 0.1000000000 - - -"),
            "Invalid mtime nanoseconds: 1000000000 (must be < 1_000_000_000)"
        );
        assert_eq!(
            line("/a 70 100644 1 0 0 0 0.0 5a/5a - 5a5"),
            "Odd number of digits"
        );
        assert_eq!(
            line("/a 70 100644 1 0 0 0 0.0 5a/5a - 5a5a"),
            "Invalid string length"
        );
        assert_eq!(
            line(&format!(
                "/a 70 100644 1 0 0 0 0.0 5a/5a - {}",
                "g".repeat(64)
            )),
            "Invalid character 'g' at position 0"
        );
        assert_eq!(
            line("/a 70 100644 1 0 0 0 0.0 5a/5a - -"),
            "invalid object pathname: Invalid string length"
        );
        // negative seconds are accepted (our leniency), -0 too
        let fs = parse(format!("{root}/a 0 100644 1 0 0 0 -12.5 - - -\n").as_bytes()).unwrap();
        assert_eq!(fs.leaves[0].stat.mtime, -12);
        assert_eq!(fs.leaves[0].stat.mtime_nsec, 5);
    }

    #[test]
    fn write_is_fast() {
        // 50,000 entries in a few directories: a smoke test that nothing is quadratic
        let mut fs = FileSystem::default();
        fs.root.stat = stat(0o755);
        for d in 0..50 {
            let mut dir = Directory {
                stat: stat(0o755),
                entries: BTreeMap::new(),
            };
            for f in 0..1000 {
                fs.leaves.push(Leaf {
                    stat: stat(0o644),
                    content: Content::External {
                        id: vec![d as u8; 32],
                        size: 1000 + f,
                    },
                });
                dir.entries.insert(
                    format!("file-{f}").into_bytes(),
                    Inode::Leaf(fs.leaves.len() - 1),
                );
            }
            fs.root.entries.insert(
                format!("dir-{d}").into_bytes(),
                Inode::Directory(Box::new(dir)),
            );
        }
        let t = std::time::Instant::now();
        let out = write(&fs, true);
        let back = parse(&out).unwrap();
        assert_eq!(write(&back, true), out);
        assert!(t.elapsed().as_secs() < 5);
    }

    /// Writing a deep tree (dumpfile and every EROFS format) does not recurse per level.
    #[test]
    fn deep_trees_are_written_without_recursion() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let depth = 20_000;
                let mut dir = Directory::new(stat(0o755));
                dir.entries.insert(b"f".to_vec(), Inode::Leaf(0));
                for _ in 0..depth {
                    let mut up = Directory::new(stat(0o755));
                    up.entries
                        .insert(b"d".to_vec(), Inode::Directory(Box::new(dir)));
                    dir = up;
                }
                let fs = FileSystem {
                    root: dir,
                    leaves: vec![Leaf {
                        stat: stat(0o644),
                        content: Content::Inline(b"x".to_vec()),
                    }],
                };
                let text = write(&fs, true);
                assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), depth + 2);
                for version in [0, 1, 2] {
                    assert!(crate::erofs::write(&fs, version).is_ok());
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
