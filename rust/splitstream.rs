//! The composefs splitstream file format (composefs-rs 0.9 `SplitStreamWriter` /
//! `SplitStreamReader`), byte for byte.
//!
//! A splitstream is a 32-byte header, an 80-byte info section, then four sections located by
//! `[start, end)` ranges: stream references and object references (flat arrays of raw
//! digests), named references (a zstd frame of `"<idx>:<name>\0"` records sorted by name)
//! and the stream itself (zstd): a sequence of chunks, each a little-endian i64 `n`
//! followed, when `n < 0`, by `-n` inline bytes; `n >= 0` refers to object `n`.
//!
//! Rust API: [`Writer`] builds a file (in memory, or streamed out with
//! [`Writer::finish_to`]); [`parse`] / [`decode`] read one completely (what the Python
//! `parse` uses); [`read_metadata`] + [`ChunkReader`] walk the stream chunk by chunk without
//! decompressing it all first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};

use crate::fsverity::Algorithm;

/// `SplitStream`, at offset 0 (current header) or 18 (legacy header).
pub const MAGIC: &[u8; 11] = b"SplitStream";
/// log2 of the fs-verity block size recorded in the header.
pub const LG_BLOCKSIZE: u8 = 12;
/// Size of the header.
pub const HEADER_SIZE: usize = 32;
/// Size of the info section written (readers accept a longer one).
pub const INFO_SIZE: usize = 80;
/// `zstd::stream::write::Encoder::new(_, 0)`: libzstd's default level (3).
const ZSTD_LEVEL: i32 = 0;

/// A malformed splitstream, or a bad argument to the writer. The message is composefs-rs's
/// where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A malformed splitstream is invalid input (`ValueError`).
impl From<Error> for crate::error::Error {
    fn from(e: Error) -> Self {
        Self::Invalid(e.0)
    }
}

/// Digests kept unique in order of first insertion; index = position.
#[derive(Debug)]
struct UniqueDigests {
    size: usize,
    flat: Vec<u8>,
    index: HashMap<Box<[u8]>, usize>,
}

impl UniqueDigests {
    fn new(size: usize) -> Self {
        Self {
            size,
            flat: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn ensure(&mut self, digest: &[u8]) -> usize {
        debug_assert_eq!(digest.len(), self.size);
        if let Some(&i) = self.index.get(digest) {
            return i;
        }
        let i = self.flat.len() / self.size;
        self.flat.extend_from_slice(digest);
        self.index.insert(digest.into(), i);
        i
    }
}

/// Builds one splitstream file, byte-identical to composefs-rs 0.9's `SplitStreamWriter`.
///
/// Inline data is collected until the next external reference (or the end) and then
/// compressed as one chunk; the chunk's length prefix comes before its bytes, so a run of
/// inline data must be held until it ends (composefs-rs does the same). Everything else goes
/// straight into the zstd encoder, whose output is the only thing that grows.
pub struct Writer {
    algorithm: Algorithm,
    content_type: u64,
    stream_refs: UniqueDigests,
    object_refs: UniqueDigests,
    named_refs: BTreeMap<String, usize>,
    inline: Vec<u8>,
    stream_size: u64,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("algorithm", &self.algorithm)
            .field("content_type", &self.content_type)
            .field("stream_size", &self.stream_size)
            .field("inline", &self.inline.len())
            .finish_non_exhaustive()
    }
}

fn new_encoder() -> zstd::stream::write::Encoder<'static, Vec<u8>> {
    zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
        .expect("cannot create a zstd compression context")
}

fn check_digest(alg: Algorithm, what: &str, digest: &[u8]) -> Result<(), Error> {
    if digest.len() != alg.digest_size() {
        return Err(Error::new(format!(
            "{what} must be {} bytes for {alg}, not {}",
            alg.digest_size(),
            digest.len()
        )));
    }
    Ok(())
}

impl Writer {
    /// A new, empty splitstream for a repository using `algorithm`; `content_type` is stored
    /// as the u64 at offset 96.
    pub fn new(algorithm: Algorithm, content_type: u64) -> Self {
        let dsz = algorithm.digest_size();
        Self {
            algorithm,
            content_type,
            stream_refs: UniqueDigests::new(dsz),
            object_refs: UniqueDigests::new(dsz),
            named_refs: BTreeMap::new(),
            inline: Vec::new(),
            stream_size: 0,
            encoder: new_encoder(),
        }
    }

    /// The repository algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Bytes of the reassembled stream so far (inline bytes plus declared external sizes).
    pub fn stream_size(&self) -> u64 {
        self.stream_size
    }

    /// Appends inline bytes (coalesced with adjacent inline data; empty data is a no-op).
    pub fn write_inline(&mut self, data: &[u8]) {
        self.stream_size = self.stream_size.wrapping_add(data.len() as u64);
        self.inline.extend_from_slice(data);
    }

    fn flush_inline(&mut self) {
        if self.inline.is_empty() {
            return;
        }
        let len = i64::try_from(self.inline.len()).expect("inline chunk too large");
        // Writing into a Vec cannot fail.
        self.encoder
            .write_all(&(-len).to_le_bytes())
            .and_then(|()| self.encoder.write_all(&self.inline))
            .expect("zstd compression failed");
        self.inline.clear();
        if self.inline.capacity() > 16 << 20 {
            self.inline.shrink_to(1 << 20);
        }
    }

    /// Appends `len` inline bytes read from `data` and ends the current inline run: they are
    /// compressed now, as one chunk together with any inline bytes buffered before them,
    /// without holding them in memory (for runs too long to buffer, such as the data after
    /// a tar's end-of-archive blocks). The output is the same as `write_inline` of the same
    /// bytes *provided that* the next call is [`Writer::write_external`] or a finish; a
    /// `write_inline` right after this would start a new chunk.
    pub fn write_inline_from(&mut self, len: u64, data: &mut impl Read) -> io::Result<()> {
        if len == 0 {
            self.flush_inline();
            return Ok(());
        }
        let total = self.inline.len() as u64 + len;
        let total = i64::try_from(total).map_err(|_| io::Error::other("inline chunk too large"))?;
        self.encoder.write_all(&(-total).to_le_bytes())?;
        self.encoder.write_all(&self.inline)?;
        self.inline.clear();
        let mut buf = vec![0u8; (256 << 10).min(len as usize)];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "inline data shorter than announced",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.encoder.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.stream_size = self.stream_size.wrapping_add(len);
        Ok(())
    }

    /// Appends a reference to the stored object `object_id` (raw digest) whose content is
    /// `size` bytes long. Objects are numbered in order of first reference.
    pub fn write_external(&mut self, object_id: &[u8], size: u64) -> Result<(), Error> {
        check_digest(self.algorithm, "object id", object_id)?;
        self.flush_inline();
        let idx = self.object_refs.ensure(object_id) as i64;
        self.encoder
            .write_all(&idx.to_le_bytes())
            .expect("zstd compression failed");
        self.stream_size = self.stream_size.wrapping_add(size);
        Ok(())
    }

    /// Records `name -> stream_id` (raw digest of another splitstream). Stream references are
    /// numbered in order of first use; a repeated name keeps the last value.
    pub fn add_named_ref(&mut self, name: &str, stream_id: &[u8]) -> Result<(), Error> {
        check_digest(self.algorithm, "stream id", stream_id)?;
        let idx = self.stream_refs.ensure(stream_id);
        self.named_refs.insert(name.to_owned(), idx);
        Ok(())
    }

    fn named_refs_frame(&self) -> Vec<u8> {
        let mut enc = new_encoder();
        for (name, idx) in &self.named_refs {
            write!(enc, "{idx}:{name}\0").expect("zstd compression failed");
        }
        enc.finish().expect("zstd compression failed")
    }

    /// Completes the compressed stream; returns (header + info + refs + named refs, stream).
    fn finish_parts(mut self) -> (Vec<u8>, Vec<u8>) {
        self.flush_inline();
        let named = self.named_refs_frame();
        let stream = std::mem::replace(&mut self.encoder, new_encoder())
            .finish()
            .expect("zstd compression failed");

        let info_start = HEADER_SIZE as u64;
        let info_end = info_start + INFO_SIZE as u64;
        let stream_refs = (info_end, info_end + self.stream_refs.flat.len() as u64);
        let object_refs = (
            stream_refs.1,
            stream_refs.1 + self.object_refs.flat.len() as u64,
        );
        let named_refs = (object_refs.1, object_refs.1 + named.len() as u64);
        let stream_range = (named_refs.1, named_refs.1 + stream.len() as u64);

        let mut head = Vec::with_capacity(named_refs.1 as usize);
        head.extend_from_slice(MAGIC);
        head.push(0); // version
        head.extend_from_slice(&0u16.to_le_bytes()); // flags
        head.push(self.algorithm.kernel_id());
        head.push(LG_BLOCKSIZE);
        for (start, end) in [
            (info_start, info_end),
            stream_refs,
            object_refs,
            stream_range,
            named_refs,
        ] {
            head.extend_from_slice(&start.to_le_bytes());
            head.extend_from_slice(&end.to_le_bytes());
        }
        head.extend_from_slice(&self.content_type.to_le_bytes());
        head.extend_from_slice(&self.stream_size.to_le_bytes());
        debug_assert_eq!(head.len() as u64, info_end);
        head.extend_from_slice(&self.stream_refs.flat);
        head.extend_from_slice(&self.object_refs.flat);
        head.extend_from_slice(&named);
        debug_assert_eq!(head.len() as u64, named_refs.1);
        (head, stream)
    }

    /// The complete splitstream file.
    pub fn finish(self) -> Vec<u8> {
        let (mut head, stream) = self.finish_parts();
        head.reserve_exact(stream.len());
        head.extend_from_slice(&stream);
        head
    }

    /// Writes the complete file to `out` without assembling it in memory; returns its size.
    pub fn finish_to(self, out: &mut impl Write) -> io::Result<u64> {
        let (head, stream) = self.finish_parts();
        out.write_all(&head)?;
        out.write_all(&stream)?;
        Ok((head.len() + stream.len()) as u64)
    }
}

/// One chunk of a parsed stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Inline bytes.
    Inline(Vec<u8>),
    /// Index into `object_refs`.
    External(usize),
}

/// Everything in a splitstream except the chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Kernel fs-verity algorithm id from the header: 1 (SHA-256) or 2 (SHA-512).
    pub algorithm_id: u8,
    /// The u64 at info offset 64.
    pub content_type: u64,
    /// Size of the reassembled stream as recorded.
    pub stream_size: u64,
    /// Raw digests of referenced splitstreams.
    pub stream_refs: Vec<Vec<u8>>,
    /// Raw digests of referenced objects.
    pub object_refs: Vec<Vec<u8>>,
    /// `(name, index into stream_refs)` in stored order.
    pub named_refs: Vec<(String, usize)>,
    /// File range `[start, end)` of the compressed stream section (clamped to the data).
    pub stream_range: (usize, usize),
}

/// A whole parsed splitstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splitstream {
    /// Everything but the chunks.
    pub metadata: Metadata,
    /// The chunks in order.
    pub chunks: Vec<Chunk>,
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A `FileRange` at `pos` of `b`: `(start, end)`.
fn range_at(b: &[u8], pos: usize) -> (u64, u64) {
    (le_u64(&b[pos..]), le_u64(&b[pos + 8..]))
}

/// The bytes of a section that must be complete (read with one `pread` by composefs-rs).
fn section(data: &[u8], (start, end): (u64, u64)) -> Result<&[u8], Error> {
    let len = end
        .checked_sub(start)
        .ok_or_else(|| Error::new("Negative-sized range in splitstream"))?;
    if len == 0 {
        return Ok(&[]);
    }
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    match start.checked_add(len as usize) {
        Some(end) if end <= data.len() && len <= usize::MAX as u64 => Ok(&data[start..end]),
        _ => Err(Error::new("Incomplete read from splitstream file")),
    }
}

fn digest_array(bytes: &[u8], dsz: usize, what: &str) -> Result<Vec<Vec<u8>>, Error> {
    if !bytes.len().is_multiple_of(dsz) {
        return Err(Error::new(format!(
            "Error reading {what}: size {} is not a multiple of {dsz}",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(dsz).map(<[u8]>::to_vec).collect())
}

fn zstd_error(what: &str, e: io::Error) -> Error {
    Error::new(format!("zstd error in splitstream {what}: {e}"))
}

/// Decompresses a whole zstd section: one or more concatenated frames, the last one complete
/// (an empty section is an incomplete frame), as zstd-rs's `read::Decoder` used by
/// composefs-rs.
///
/// `first_read` is the size of composefs-rs's first read from its decoder (8 KiB for the named
/// references, read through a `BufReader`; 8 bytes for the stream, read chunk header by chunk
/// header). It matters only for corrupt input: libzstd decodes a frame in single-pass mode,
/// which checks the content size the frame declares, when the output space offered as the
/// header is parsed covers that size and the whole frame is available; in streaming mode a
/// wrong declared size goes unnoticed when the last block is empty. So the first frame is
/// decoded in single-pass mode when it declares at most `first_read` bytes, later frames are
/// streamed (by feeding their first byte alone) — the same rule as the pure-Python backend.
fn decompress(section: &[u8], first_read: usize, what: &str) -> Result<Vec<u8>, Error> {
    use zstd::zstd_safe::{self, InBuffer, OutBuffer, ResetDirective};
    const WINDOW: usize = 128 << 10;
    let fail = |msg: &str| Error::new(format!("zstd error in splitstream {what}: {msg}"));
    let zstd_fail = |code: usize| fail(zstd_safe::get_error_name(code));
    let mut dctx = zstd_safe::DCtx::create();
    let mut plain = Vec::new();
    let mut pos = 0;
    let mut first_frame = true;
    loop {
        dctx.reset(ResetDirective::SessionOnly).map_err(zstd_fail)?;
        let rest = &section[pos..];
        let single_pass = first_frame
            && matches!(zstd_safe::get_frame_content_size(rest),
                        Ok(Some(n)) if n <= first_read as u64);
        let split = if single_pass { 0 } else { rest.len().min(1) };
        let mut complete = false;
        for feed in [&rest[..split], &rest[split..]] {
            let mut input = InBuffer::around(feed);
            loop {
                let before = input.pos();
                let len = plain.len();
                plain.resize(len + WINDOW, 0);
                let mut output = OutBuffer::around(&mut plain[len..]);
                let result = dctx.decompress_stream(&mut output, &mut input);
                let produced = output.pos();
                plain.truncate(len + produced);
                if result.map_err(zstd_fail)? == 0 {
                    complete = true;
                    break;
                }
                let stalled = produced == 0 && input.pos() == before;
                if (input.pos() == feed.len() && produced < WINDOW) || stalled {
                    break; // libzstd needs more input
                }
            }
            pos += input.pos();
            if complete {
                break;
            }
        }
        if !complete {
            return Err(fail("incomplete frame"));
        }
        if pos == section.len() {
            return Ok(plain);
        }
        first_frame = false;
    }
}

fn parse_named_refs(section: &[u8], n_stream_refs: usize) -> Result<Vec<(String, usize)>, Error> {
    let plain = decompress(section, 8 << 10, "named references")?;
    let mut out = Vec::new();
    let mut rest = &plain[..];
    while !rest.is_empty() {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(Error::new("Trailing junk in named references section"));
        };
        let record = std::str::from_utf8(&rest[..nul])
            .map_err(|e| Error::new(format!("Reading named references section: {e}")))?;
        rest = &rest[nul + 1..];
        let (idx, name) = record
            .split_once(':')
            .ok_or_else(|| Error::new("Named reference doesn't contain a colon"))?;
        let idx: usize = idx
            .parse()
            .map_err(|_| Error::new("Named reference contains a non-integer index"))?;
        if idx >= n_stream_refs {
            return Err(Error::new("Named reference out of bounds"));
        }
        out.push((name.to_owned(), idx));
    }
    Ok(out)
}

/// Parses and checks everything but the chunk stream (current or legacy header).
pub fn read_metadata(data: &[u8]) -> Result<Metadata, Error> {
    if data.len() < HEADER_SIZE {
        return Err(Error::new("Incomplete read from splitstream file"));
    }
    // (magic offset, version, algorithm, lg_blocksize, info range offset)
    let (version, algorithm_id, lg_blocksize, info_range) = if &data[..11] == MAGIC {
        (data[11], data[14], data[15], range_at(data, 16))
    } else if &data[18..29] == MAGIC {
        // Legacy layout written by bootc <= 1.15: info range first, magic at 18.
        (data[29], data[30], data[31], range_at(data, 0))
    } else {
        return Err(Error::new("Invalid splitstream header magic value"));
    };
    if version != 0 {
        return Err(Error::new(format!("Invalid splitstream version {version}")));
    }
    let Some(alg) = Algorithm::from_kernel_id(algorithm_id) else {
        return Err(Error::new("Invalid splitstream fs-verity algorithm type"));
    };
    if lg_blocksize != LG_BLOCKSIZE {
        return Err(Error::new("Invalid splitstream fs-verity block size"));
    }
    let info = section(data, info_range)?;
    if info.len() < INFO_SIZE {
        return Err(Error::new(format!(
            "Error reading splitstream metadata: info section is {} bytes, expected {INFO_SIZE}",
            info.len()
        )));
    }
    let dsz = alg.digest_size();
    let stream_refs = digest_array(
        section(data, range_at(info, 0))?,
        dsz,
        "splitstream references",
    )?;
    let object_refs = digest_array(section(data, range_at(info, 16))?, dsz, "object references")?;
    let named_refs = parse_named_refs(section(data, range_at(info, 48))?, stream_refs.len())?;
    let (start, end) = range_at(info, 32);
    if end < start {
        return Err(Error::new("Negative-sized range in splitstream"));
    }
    // composefs-rs reads this section through a reader limited to the range: past the end
    // of the file it just sees less data.
    let clamp = |x: u64| usize::try_from(x).unwrap_or(usize::MAX).min(data.len());
    Ok(Metadata {
        algorithm_id,
        content_type: le_u64(&info[64..]),
        stream_size: le_u64(&info[72..]),
        stream_refs,
        object_refs,
        named_refs,
        stream_range: (clamp(start), clamp(end)),
    })
}

/// A chunk as returned by [`ChunkReader::next_chunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRef<'a> {
    /// Inline bytes (valid until the next call).
    Inline(&'a [u8]),
    /// Index into `object_refs` (already checked to be in range).
    External(usize),
}

/// Decompresses a stream section chunk by chunk (concatenated zstd frames are accepted), in
/// constant memory apart from the largest inline chunk.
///
/// On valid input it yields exactly the chunks of [`decode`]. On corrupt input it reports the
/// first problem in stream order (a bad chunk before a later zstd error), while [`decode`]
/// (like the Python `parse` of both backends) decompresses the whole section first; and it
/// streams every frame, so a frame whose declared content size is wrong but whose data ends
/// cleanly is not rejected.
pub struct ChunkReader<'d> {
    decoder: zstd::stream::read::Decoder<'static, &'d [u8]>,
    n_object_refs: usize,
    buf: Vec<u8>,
}

impl<'d> ChunkReader<'d> {
    /// A reader over the stream section of `data` described by `metadata`.
    pub fn new(data: &'d [u8], metadata: &Metadata) -> Result<Self, Error> {
        let (start, end) = metadata.stream_range;
        let decoder = zstd::stream::read::Decoder::with_buffer(&data[start..end])
            .map_err(|e| zstd_error("stream", e))?;
        Ok(Self {
            decoder,
            n_object_refs: metadata.object_refs.len(),
            buf: Vec::new(),
        })
    }

    /// Reads up to `buf.len()` bytes; returns how many (less only at end of stream).
    fn read_fully(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.decoder.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(zstd_error("stream", e)),
            }
        }
        Ok(done)
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> Result<Option<ChunkRef<'_>>, Error> {
        let mut word = [0u8; 8];
        match self.read_fully(&mut word)? {
            0 => return Ok(None),
            8 => {}
            _ => return Err(Error::new("Unexpected EOF in splitstream")),
        }
        let n = i64::from_le_bytes(word);
        if n >= 0 {
            let idx = usize::try_from(n).unwrap_or(usize::MAX);
            if idx >= self.n_object_refs {
                return Err(Error::new("Splitstream external reference is out of range"));
            }
            return Ok(Some(ChunkRef::External(idx)));
        }
        let len = n.unsigned_abs();
        // Grow with the data actually present rather than trusting the length.
        self.buf.clear();
        let got = (&mut self.decoder)
            .take(len)
            .read_to_end(&mut self.buf)
            .map_err(|e| zstd_error("stream", e))?;
        if (got as u64) < len {
            return Err(Error::new("Unexpected EOF in splitstream"));
        }
        Ok(Some(ChunkRef::Inline(&self.buf)))
    }
}

/// A chunk of a [`Decoded`] stream: a byte range of [`Decoded::plain`] or an object index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    /// Inline bytes at this range of the decompressed stream.
    Inline(std::ops::Range<usize>),
    /// Index into `object_refs`.
    External(usize),
}

/// A splitstream with its stream section decompressed in one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Everything but the chunks.
    pub metadata: Metadata,
    /// The decompressed stream section.
    pub plain: Vec<u8>,
    /// The chunks, in order, as ranges of `plain`.
    pub spans: Vec<Span>,
}

/// Splits a decompressed stream section into chunks.
fn split_chunks(plain: &[u8], n_object_refs: usize) -> Result<Vec<Span>, Error> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while pos < plain.len() {
        let Some(word) = plain.get(pos..pos + 8) else {
            return Err(Error::new("Unexpected EOF in splitstream"));
        };
        let n = i64::from_le_bytes(word.try_into().expect("8 bytes"));
        pos += 8;
        if n >= 0 {
            let idx = usize::try_from(n).unwrap_or(usize::MAX);
            if idx >= n_object_refs {
                return Err(Error::new("Splitstream external reference is out of range"));
            }
            spans.push(Span::External(idx));
        } else {
            let len = n.unsigned_abs();
            if len > (plain.len() - pos) as u64 {
                return Err(Error::new("Unexpected EOF in splitstream"));
            }
            let end = pos + len as usize;
            spans.push(Span::Inline(pos..end));
            pos = end;
        }
    }
    Ok(spans)
}

/// Parses a whole splitstream file (current or legacy header), decompressing the stream
/// section completely before splitting it into chunks (so a zstd error anywhere in the
/// section is reported before a malformed chunk).
pub fn decode(data: &[u8]) -> Result<Decoded, Error> {
    let metadata = read_metadata(data)?;
    let (start, end) = metadata.stream_range;
    let plain = decompress(&data[start..end], 8, "stream")?;
    let spans = split_chunks(&plain, metadata.object_refs.len())?;
    Ok(Decoded {
        metadata,
        plain,
        spans,
    })
}

/// Parses a whole splitstream file (current or legacy header); see [`decode`].
pub fn parse(data: &[u8]) -> Result<Splitstream, Error> {
    let Decoded {
        metadata,
        plain,
        spans,
    } = decode(data)?;
    let chunks = spans
        .into_iter()
        .map(|s| match s {
            Span::Inline(r) => Chunk::Inline(plain[r].to_vec()),
            Span::External(i) => Chunk::External(i),
        })
        .collect();
    Ok(Splitstream { metadata, chunks })
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use super::{Decoded, Span};
    use crate::contract::SPLITSTREAM_CONTENTS;
    use crate::error::Error;
    use crate::fsverity::py::algorithm;
    use crate::pybuf::{for_each_piece, with_slice, ByteBuf};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyList, PyTuple};

    /// Builds one splitstream file (composefs-rs 0.9 `SplitStreamWriter`).
    #[pyclass(module = "composefs._native.splitstream", name = "Writer")]
    struct Writer {
        inner: Option<super::Writer>,
    }

    impl Writer {
        fn inner(&mut self) -> PyResult<&mut super::Writer> {
            Ok(self
                .inner
                .as_mut()
                .ok_or_else(|| Error::Invalid("splitstream writer is already finished".into()))?)
        }
    }

    #[pymethods]
    impl Writer {
        #[new]
        fn new(algorithm: &str, content_type: u64) -> PyResult<Self> {
            Ok(Self {
                inner: Some(super::Writer::new(
                    self::algorithm(algorithm)?,
                    content_type,
                )),
            })
        }

        /// Appends inline bytes.
        fn write_inline(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
            let buf = ByteBuf::get(data)?;
            let inner = self.inner()?;
            for_each_piece(py, &buf, |piece| inner.write_inline(piece));
            Ok(())
        }

        /// Appends a reference to a stored object of `size` bytes.
        fn write_external(
            &mut self,
            py: Python<'_>,
            object_id: &Bound<'_, PyAny>,
            size: u64,
        ) -> PyResult<()> {
            let id = ByteBuf::get(object_id)?;
            let id = id.as_slice().to_vec();
            let inner = self.inner()?;
            Ok(py
                .allow_threads(|| inner.write_external(&id, size))
                .map_err(Error::from)?)
        }

        /// Records `name -> stream_id`.
        fn add_named_ref(&mut self, name: &str, stream_id: &Bound<'_, PyAny>) -> PyResult<()> {
            let id = ByteBuf::get(stream_id)?;
            Ok(self
                .inner()?
                .add_named_ref(name, id.as_slice())
                .map_err(Error::from)?)
        }

        /// Bytes of the reassembled stream so far.
        #[getter]
        fn stream_size(&mut self) -> PyResult<u64> {
            Ok(self.inner()?.stream_size())
        }

        /// The complete file; the writer cannot be used afterwards.
        fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            let inner = self
                .inner
                .take()
                .ok_or_else(|| Error::Invalid("splitstream writer is already finished".into()))?;
            let (head, stream) = py.allow_threads(|| inner.finish_parts());
            PyBytes::new_with(py, head.len() + stream.len(), |out| {
                out[..head.len()].copy_from_slice(&head);
                out[head.len()..].copy_from_slice(&stream);
                Ok(())
            })
        }

        fn __repr__(&self) -> String {
            match &self.inner {
                Some(w) => format!(
                    "<composefs._native.splitstream.Writer {} stream_size={}>",
                    w.algorithm(),
                    w.stream_size()
                ),
                None => "<composefs._native.splitstream.Writer (finished)>".to_owned(),
            }
        }
    }

    /// Parses a whole splitstream file into a `SplitstreamContents`.
    #[pyfunction]
    fn parse<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let buf = ByteBuf::get(data)?;
        let Decoded {
            metadata: m,
            plain,
            spans,
        } = with_slice(py, &buf, super::decode).map_err(Error::from)?;
        let digests = |v: &[Vec<u8>]| PyList::new(py, v.iter().map(|d| PyBytes::new(py, d)));
        let named = PyList::new(
            py,
            m.named_refs
                .iter()
                .map(|(name, idx)| (name.as_str(), *idx).into_pyobject(py))
                .collect::<PyResult<Vec<Bound<'py, PyTuple>>>>()?,
        )?;
        let items = spans
            .iter()
            .map(|c| match c {
                Span::Inline(r) => Ok(PyBytes::new(py, &plain[r.clone()]).into_any()),
                Span::External(i) => Ok(i.into_pyobject(py)?.into_any()),
            })
            .collect::<PyResult<Vec<_>>>()?;
        SPLITSTREAM_CONTENTS.build(
            py,
            (
                m.algorithm_id,
                m.content_type,
                m.stream_size,
                digests(&m.stream_refs)?,
                digests(&m.object_refs)?,
                named,
                PyList::new(py, items)?,
            ),
        )
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<Writer>()?;
        m.add_function(wrap_pyfunction!(parse, m)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    const OCILAYER: u64 = u64::from_le_bytes(*b"ocilayer");

    fn hexs(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn empty_stream_layout() {
        let w = Writer::new(Algorithm::Sha256, OCILAYER);
        let f = w.finish();
        assert_eq!(
            hexs(&f[..32]),
            "53706c697453747265616d000000010c20000000000000007000000000000000"
        );
        // named refs and the stream are both the empty frame.
        assert_eq!(
            &f[112..121],
            &[0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00]
        );
        assert_eq!(
            &f[121..],
            &[0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00]
        );
        assert_eq!(&f[96..104], b"ocilayer");
        let p = parse(&f).unwrap();
        assert_eq!(p.metadata.algorithm_id, 1);
        assert_eq!(p.metadata.content_type, OCILAYER);
        assert!(p.chunks.is_empty());
    }

    #[test]
    fn roundtrip_and_frame_header() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dsz = alg.digest_size();
            let ids: Vec<Vec<u8>> = (0..5)
                .map(|_| {
                    let mut d = vec![0u8; dsz];
                    rng.fill_bytes(&mut d);
                    d
                })
                .collect();
            let mut w = Writer::new(alg, 42);
            let mut want_chunks: Vec<Chunk> = vec![];
            let mut inline = Vec::new();
            let mut order: Vec<usize> = vec![];
            let mut size = 0u64;
            for _ in 0..200 {
                if rng.gen_bool(0.6) {
                    let mut b = vec![0u8; rng.gen_range(0..3000)];
                    let half = b.len() / 2;
                    rng.fill_bytes(&mut b[..half]);
                    w.write_inline(&b);
                    inline.extend_from_slice(&b);
                    size += b.len() as u64;
                } else {
                    let k = rng.gen_range(0..ids.len());
                    let ext = rng.gen_range(0..100_000u64);
                    w.write_external(&ids[k], ext).unwrap();
                    size += ext;
                    if !inline.is_empty() {
                        want_chunks.push(Chunk::Inline(std::mem::take(&mut inline)));
                    }
                    let idx = order.iter().position(|&o| o == k).unwrap_or_else(|| {
                        order.push(k);
                        order.len() - 1
                    });
                    want_chunks.push(Chunk::External(idx));
                }
            }
            if !inline.is_empty() {
                want_chunks.push(Chunk::Inline(inline));
            }
            w.add_named_ref("zeta", &ids[1]).unwrap();
            w.add_named_ref("alpha:x", &ids[0]).unwrap();
            w.add_named_ref("zeta", &ids[2]).unwrap();
            assert_eq!(w.stream_size(), size);
            let f = w.finish();
            let p = parse(&f).unwrap();
            assert_eq!(p.metadata.algorithm_id, alg.kernel_id());
            assert_eq!(p.metadata.stream_size, size);
            assert_eq!(p.metadata.content_type, 42);
            assert_eq!(
                p.metadata.stream_refs,
                vec![ids[1].clone(), ids[0].clone(), ids[2].clone()]
            );
            let want_objs: Vec<Vec<u8>> = order.iter().map(|&k| ids[k].clone()).collect();
            assert_eq!(p.metadata.object_refs, want_objs);
            assert_eq!(
                p.metadata.named_refs,
                vec![("alpha:x".to_owned(), 1), ("zeta".to_owned(), 2)]
            );
            assert_eq!(p.chunks, want_chunks);
            // The stream frame has no content size (streaming compression).
            let (s, _) = p.metadata.stream_range;
            assert_eq!(&f[s..s + 6], &[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]);
        }
    }

    #[test]
    fn legacy_header_and_errors() {
        let mut w = Writer::new(Algorithm::Sha256, 7);
        w.write_inline(b"hello");
        w.write_external(&[9u8; 32], 3).unwrap();
        let f = w.finish();
        let good = parse(&f).unwrap();

        // Legacy layout: info range @0, flags @16, magic @18, version, algorithm, lg_blocksize.
        let mut old = f.clone();
        old[..16].copy_from_slice(&f[16..32]);
        old[16..18].copy_from_slice(&f[12..14]);
        old[18..29].copy_from_slice(MAGIC);
        old[29] = f[11];
        old[30] = f[14];
        old[31] = f[15];
        assert_eq!(parse(&old).unwrap(), good);

        let err = |d: &[u8]| parse(d).unwrap_err().0;
        assert_eq!(err(&f[..20]), "Incomplete read from splitstream file");
        let mut bad = f.clone();
        bad[0] = b'X';
        assert_eq!(err(&bad), "Invalid splitstream header magic value");
        let mut bad = f.clone();
        bad[11] = 3;
        assert_eq!(err(&bad), "Invalid splitstream version 3");
        let mut bad = f.clone();
        bad[14] = 9;
        assert_eq!(err(&bad), "Invalid splitstream fs-verity algorithm type");
        let mut bad = f.clone();
        bad[15] = 16;
        assert_eq!(err(&bad), "Invalid splitstream fs-verity block size");
        let mut bad = f.clone();
        bad[48..56].copy_from_slice(&200u64.to_le_bytes()); // object_refs start > end
        assert_eq!(err(&bad), "Negative-sized range in splitstream");
        let mut bad = f.clone();
        bad[56..64].copy_from_slice(&100_000u64.to_le_bytes()); // object_refs end past EOF
        assert_eq!(err(&bad), "Incomplete read from splitstream file");
        // Truncated file: the stream section is cut short.
        assert!(err(&f[..f.len() - 3]).starts_with("zstd error in splitstream stream"));
        // External index out of range: rewrite with an object_refs section shortened to 0.
        let mut bad = f.clone();
        bad.copy_within(48..56, 56);
        assert_eq!(err(&bad), "Splitstream external reference is out of range");
    }

    fn with_named(plain: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(Algorithm::Sha256, 0);
        w.add_named_ref("a", &[1u8; 32]).unwrap();
        let f = w.finish();
        let m = read_metadata(&f).unwrap();
        let named_start = le_u64(&f[80..]) as usize;
        let named_end = le_u64(&f[88..]) as usize;
        let frame = zstd::encode_all(plain, 3).unwrap();
        let mut out = f[..named_start].to_vec();
        out.extend_from_slice(&frame);
        let stream = &f[m.stream_range.0..m.stream_range.1];
        let stream_start = out.len() as u64;
        out.extend_from_slice(stream);
        let stream_end = out.len() as u64;
        out[80..88].copy_from_slice(&(named_start as u64).to_le_bytes());
        out[88..96].copy_from_slice(&(named_start as u64 + frame.len() as u64).to_le_bytes());
        out[64..72].copy_from_slice(&stream_start.to_le_bytes());
        out[72..80].copy_from_slice(&stream_end.to_le_bytes());
        let _ = named_end;
        out
    }

    #[test]
    fn named_refs_errors() {
        let err = |plain: &[u8]| parse(&with_named(plain)).map(|p| p.metadata.named_refs);
        assert_eq!(err(b"0:a\0").unwrap(), vec![("a".to_owned(), 0)]);
        assert_eq!(
            err(b"0:a\0junk").unwrap_err().0,
            "Trailing junk in named references section"
        );
        assert_eq!(
            err(b"0a\0").unwrap_err().0,
            "Named reference doesn't contain a colon"
        );
        assert_eq!(
            err(b"x:a\0").unwrap_err().0,
            "Named reference contains a non-integer index"
        );
        assert_eq!(
            err(b"1:a\0").unwrap_err().0,
            "Named reference out of bounds"
        );
        assert_eq!(err(b"").unwrap(), vec![]);
    }

    #[test]
    fn concatenated_frames() {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(-5i64).to_le_bytes());
        plain.extend_from_slice(b"hello");
        let mut frames = zstd::encode_all(&plain[..7], 3).unwrap();
        frames.extend(zstd::encode_all(&plain[7..], 3).unwrap());
        let mut w = Writer::new(Algorithm::Sha256, 0);
        w.write_inline(b"x");
        let f = w.finish();
        let m = read_metadata(&f).unwrap();
        let mut out = f[..m.stream_range.0].to_vec();
        out.extend_from_slice(&frames);
        let end = out.len() as u64;
        out[72..80].copy_from_slice(&end.to_le_bytes());
        let p = parse(&out).unwrap();
        assert_eq!(p.chunks, vec![Chunk::Inline(b"hello".to_vec())]);
    }

    #[test]
    fn chunk_reader_matches_decode() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut w = Writer::new(Algorithm::Sha256, 0);
        for i in 0..50u8 {
            let mut b = vec![0u8; rng.gen_range(1..400_000)];
            rng.fill_bytes(&mut b[..100]);
            w.write_inline(&b);
            w.write_external(&[i % 7; 32], 1).unwrap();
        }
        let f = w.finish();
        let whole = parse(&f).unwrap();
        let m = read_metadata(&f).unwrap();
        let mut r = ChunkReader::new(&f, &m).unwrap();
        let mut chunks = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            chunks.push(match c {
                ChunkRef::Inline(b) => Chunk::Inline(b.to_vec()),
                ChunkRef::External(i) => Chunk::External(i),
            });
        }
        assert_eq!(chunks, whole.chunks);
        assert_eq!(m, whole.metadata);
    }

    #[test]
    fn decompress_corner_cases() {
        let named = |b: &[u8]| decompress(b, 8 << 10, "x").map_err(|e| e.0);
        let stream = |b: &[u8]| decompress(b, 8, "x").map_err(|e| e.0);
        let empty = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
        let lying = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0x01, 0x00, 0x00];
        assert_eq!(named(&empty), Ok(vec![]));
        assert_eq!(
            named(&[]),
            Err("zstd error in splitstream x: incomplete frame".into())
        );
        assert_eq!(
            named(&lying),
            Err("zstd error in splitstream x: Data corruption detected".into())
        );
        // Declared sizes up to 8 bytes are checked in the stream section too.
        assert_eq!(
            stream(&lying),
            Err("zstd error in splitstream x: Data corruption detected".into())
        );
        let lying9 = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x09, 0x01, 0x00, 0x00];
        assert_eq!(stream(&lying9), Ok(vec![]));
        let two = [&empty[..], &lying[..]].concat();
        assert_eq!(named(&two), Ok(vec![]));
        let mut junk = empty.to_vec();
        junk.extend_from_slice(b"junk!");
        assert_eq!(
            named(&junk),
            Err("zstd error in splitstream x: Unknown frame descriptor".into())
        );
        junk.truncate(11); // a partial magic number that is not zstd's
        assert_eq!(
            named(&junk),
            Err("zstd error in splitstream x: Unknown frame descriptor".into())
        );
        let partial = [&empty[..], &[0x28, 0xb5][..]].concat();
        assert_eq!(
            named(&partial),
            Err("zstd error in splitstream x: incomplete frame".into())
        );
        let big = zstd::encode_all(&vec![5u8; 1 << 20][..], 3).unwrap();
        assert_eq!(
            stream(&[&big[..], &big[..]].concat()).unwrap().len(),
            2 << 20
        );
    }

    #[test]
    fn writer_rejects_bad_ids() {
        let mut w = Writer::new(Algorithm::Sha512, 0);
        assert_eq!(
            w.write_external(&[0; 32], 1).unwrap_err().0,
            "object id must be 64 bytes for sha512, not 32"
        );
        assert!(w.add_named_ref("x", &[0; 63]).is_err());
        assert_eq!(w.stream_size(), 0);
    }

    #[test]
    fn write_inline_from_matches_write_inline() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut big = vec![0u8; 700_000];
        rng.fill_bytes(&mut big[..300_000]);
        let build = |streamed: bool| {
            let mut w = Writer::new(Algorithm::Sha256, 5);
            w.write_inline(b"head");
            if streamed {
                w.write_inline_from(big.len() as u64, &mut &big[..])
                    .unwrap();
            } else {
                w.write_inline(&big);
            }
            w.write_external(&[1u8; 32], 99).unwrap();
            w.write_inline(b"tail");
            if streamed {
                w.write_inline_from(3, &mut &b"xyz"[..]).unwrap();
                w.write_inline_from(0, &mut &b""[..]).unwrap();
            } else {
                w.write_inline(b"xyz");
            }
            assert_eq!(w.stream_size(), 4 + 700_000 + 99 + 4 + 3);
            w.finish()
        };
        assert_eq!(build(true), build(false));
        let mut w = Writer::new(Algorithm::Sha256, 5);
        let err = w.write_inline_from(10, &mut &b"short"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn finish_to_matches_finish() {
        let build = || {
            let mut w = Writer::new(Algorithm::Sha256, 1);
            w.write_inline(&vec![7u8; 300_000]);
            w.write_external(&[3u8; 32], 10).unwrap();
            w
        };
        let mut out = Vec::new();
        let n = build().finish_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out, build().finish());
    }
}
