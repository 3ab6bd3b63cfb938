//! OCI layer import: decompression, verification and tar → splitstream, as composefs-rs 0.9
//! `tar::split_async` does it (spec: splitstream-and-layers.md §3), and the reverse path
//! (`tar::get_entry`).
//!
//! [`split_layer`] runs a pipeline (all memory bounded):
//!
//! * a *reader* thread reads the blob (1 MiB segments from a bounded pool) and decompresses
//!   it into tar segments;
//! * a *hash* thread computes the sha256 of the blob and of the tar from the same segments
//!   (for an uncompressed blob, once);
//! * the calling thread *splits*: it feeds tar-core the headers (zero-copy while a header
//!   lies inside one segment), appends headers, small bodies and padding to the current
//!   inline run, and hands every body of a Regular/Contiguous entry larger than 64 bytes to
//!   the object workers as slices of the segments (no copy);
//! * *object workers* hash (fs-verity) and write each body into `objects/` in parallel
//!   ([`crate::objects`]); their results are put back in tar order before they reach the
//!   splitstream writer, so the output never depends on timing.
//!
//! An inline run is held in memory up to 32 MiB and then spilled to an anonymous temporary
//! file in `objects/`: the splitstream puts a run's length before its bytes, and a run can be
//! as long as the data after the end-of-archive blocks.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};

use sha2::Digest as _;
use tar_core::parse::{ParseEvent, Parser};
use tar_core::{EntryType, PaxExtensions, HEADER_SIZE};

use crate::decompress::{self, Compression};
use crate::fsverity::{self, Algorithm};
use crate::objects::{self, ObjectStore, Stored};
use crate::splitstream::{self, Writer};

/// `size.next_multiple_of(512)` as composefs-rs's release build computes it: wrapping (a PAX
/// size near 2^64 rounds to 0, so a directory with such a size has no body).
fn round_up(size: u64) -> u64 {
    size.wrapping_add(511) & !511
}

/// Bodies of regular files up to this size are stored inline (`INLINE_CONTENT_MAX_V0`).
pub const INLINE_CONTENT_MAX: u64 = 64;

/// Size of one segment of blob or tar data.
const SEGMENT: usize = 1 << 20;
/// Segments in flight at most (reader, hash thread, splitter and object workers together).
const POOL_SEGMENTS: usize = 40;
/// An inline run longer than this is spilled to a temporary file.
const SPILL_THRESHOLD: usize = 32 << 20;
/// Inline bytes of finished runs waiting for an earlier object at most, before the splitter
/// waits for that object.
const PENDING_INLINE_MAX: usize = 32 << 20;
/// Objects whose results may be outstanding at most.
const PENDING_OBJECTS_MAX: usize = 4096;
/// Slices of one large body queued for its worker at most.
const BODY_QUEUE: usize = 8;
/// Jobs queued for the workers at most.
const JOB_QUEUE: usize = 64;
/// `progress` is called at most this often (in blob bytes).
const PROGRESS_STEP: u64 = 4 << 20;

// ------------------------------------------------------------------------------------------
// Errors

/// Why a layer could not be split.
#[derive(Debug)]
pub enum Error {
    /// Malformed input (a `ValueError` in Python), with composefs-rs's or tar-core's message.
    Invalid(String),
    /// A system call failed (an `OSError`).
    Io(io::Error),
    /// The progress callback failed; its error is carried through unchanged.
    Callback(Box<dyn Any + Send>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(m) => f.write_str(m),
            Self::Io(e) => write!(f, "{e}"),
            Self::Callback(_) => f.write_str("progress callback failed"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<objects::Error> for Error {
    fn from(e: objects::Error) -> Self {
        match e {
            objects::Error::Io(e) => Self::Io(e),
            e @ objects::Error::VerityMismatch { .. } => Self::Invalid(e.to_string()),
        }
    }
}

impl From<tar_core::parse::ParseError> for Error {
    fn from(e: tar_core::parse::ParseError) -> Self {
        Self::Invalid(e.to_string())
    }
}

fn invalid(msg: &str) -> Error {
    Error::Invalid(msg.to_owned())
}

/// The error a thread reports when the pipeline was aborted elsewhere (never surfaces).
fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "layer import aborted")
}

// ------------------------------------------------------------------------------------------
// Segments: reference-counted buffers from a bounded pool

/// A [`SEGMENT`]-sized buffer aligned to 4 KiB (bodies start at 512-byte boundaries of the
/// tar, so they are at least 512-byte aligned in memory too: good for SIMD hashing and for
/// the kernel's copies).
#[derive(Debug, Default)]
struct Buffer {
    vec: Vec<u8>,
    off: usize,
}

impl Buffer {
    const ALIGN: usize = 4096;

    fn new() -> Self {
        let vec = vec![0u8; SEGMENT + Self::ALIGN];
        let off = vec.as_ptr().align_offset(Self::ALIGN);
        Self { vec, off }
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.vec[self.off..self.off + SEGMENT]
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.vec[self.off..self.off + len]
    }
}

#[derive(Debug, Default)]
struct PoolState {
    free: Vec<Buffer>,
    allocated: usize,
    aborted: bool,
}

/// A bounded set of [`SEGMENT`]-sized buffers; [`Pool::get`] waits while all are in use.
#[derive(Debug, Default)]
struct Pool {
    state: Mutex<PoolState>,
    cond: Condvar,
}

impl Pool {
    /// A free buffer, or `None` once the pipeline is aborted.
    fn get(self: &Arc<Self>) -> Option<Buffer> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.aborted {
                return None;
            }
            if let Some(buf) = st.free.pop() {
                return Some(buf);
            }
            if st.allocated < POOL_SEGMENTS {
                st.allocated += 1;
                return Some(Buffer::new());
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, buf: Buffer) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.free.push(buf);
        drop(st);
        self.cond.notify_one();
    }

    fn abort(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).aborted = true;
        self.cond.notify_all();
    }
}

/// Data shared between threads: a pooled buffer (returned on drop) or an owned one.
#[derive(Debug)]
struct Segment {
    buf: Buffer,
    len: usize,
    pool: Option<Arc<Pool>>,
}

impl Segment {
    fn data(&self) -> &[u8] {
        self.buf.bytes(self.len)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.buf));
        }
    }
}

/// A byte range of a shared segment.
#[derive(Debug, Clone)]
struct Slice {
    seg: Arc<Segment>,
    start: usize,
    end: usize,
}

impl Slice {
    fn owned(data: Vec<u8>) -> Self {
        let len = data.len();
        Self {
            seg: Arc::new(Segment {
                buf: Buffer { vec: data, off: 0 },
                len,
                pool: None,
            }),
            start: 0,
            end: len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.seg.data()[self.start..self.end]
    }
}

// ------------------------------------------------------------------------------------------
// Reader thread: blob → (decompression) → tar segments

/// Messages from the reader to the splitter.
enum Input {
    Data(Arc<Segment>),
    Error(Error),
}

/// Messages to the hash thread.
enum HashInput {
    /// Compressed blob bytes.
    Blob(Arc<Segment>),
    /// Decompressed tar bytes.
    Tar(Arc<Segment>),
    /// An uncompressed blob: the blob and the tar at once.
    Both(Arc<Segment>),
}

/// Shared counters and the abort flag.
#[derive(Debug, Default)]
struct Shared {
    blob_bytes: AtomicU64,
    tar_bytes: AtomicU64,
    aborted: AtomicBool,
}

/// Reads the blob from `fd` into pooled segments; a [`BufRead`] for the decoders.
struct BlobSource<'a> {
    fd: BorrowedFd<'a>,
    /// `poll` before reading (pipes and sockets), so that an abort is noticed.
    poll: bool,
    pool: &'a Arc<Pool>,
    shared: &'a Shared,
    hash: &'a Sender<HashInput>,
    /// For uncompressed blobs the segments are the tar: sent as `Both`.
    plain: bool,
    cur: Option<Arc<Segment>>,
    pos: usize,
    eof: bool,
    /// An error of the source itself, kept to tell it from a decompression error.
    error: Option<io::Error>,
}

impl<'a> BlobSource<'a> {
    fn new(
        fd: BorrowedFd<'a>,
        pool: &'a Arc<Pool>,
        shared: &'a Shared,
        hash: &'a Sender<HashInput>,
        plain: bool,
    ) -> io::Result<Self> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `st` on success.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialized on success.
        let mode = unsafe { st.assume_init() }.st_mode;
        Ok(Self {
            fd,
            poll: mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != libc::S_IFBLK,
            pool,
            shared,
            hash,
            plain,
            cur: None,
            pos: 0,
            eof: false,
            error: None,
        })
    }

    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.shared.aborted.load(Ordering::Relaxed) {
                return Err(aborted());
            }
            if self.poll {
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, 200) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if r == 0 {
                    continue;
                }
            }
            // SAFETY: read into a valid buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The next segment of the blob (filled up to [`SEGMENT`] bytes or to EOF), already
    /// sent to the hash thread; `None` at EOF.
    fn next_segment(&mut self) -> io::Result<Option<Arc<Segment>>> {
        if self.eof {
            return Ok(None);
        }
        let mut buf = self.pool.get().ok_or_else(aborted)?;
        let mut len = 0;
        while len < SEGMENT {
            match self.read_some(&mut buf.space()[len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) => {
                    self.pool.put(buf);
                    return Err(e);
                }
            }
        }
        if len == 0 {
            self.pool.put(buf);
            return Ok(None);
        }
        self.shared
            .blob_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        let seg = Arc::new(Segment {
            buf,
            len,
            pool: Some(self.pool.clone()),
        });
        let msg = if self.plain {
            HashInput::Both(seg.clone())
        } else {
            HashInput::Blob(seg.clone())
        };
        // The hash thread outlives the reader unless the pipeline is torn down.
        self.hash.send(msg).map_err(|_| aborted())?;
        Ok(Some(seg))
    }
}

impl Read for BlobSource<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for BlobSource<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let exhausted = self.cur.as_ref().is_none_or(|s| self.pos >= s.len);
        if exhausted {
            self.cur = None;
            self.pos = 0;
            match self.next_segment() {
                Ok(seg) => self.cur = seg,
                Err(e) => {
                    // Remember it: the decoder may wrap or replace it.
                    let copy = match e.raw_os_error() {
                        Some(code) => io::Error::from_raw_os_error(code),
                        None => io::Error::new(e.kind(), e.to_string()),
                    };
                    self.error = Some(copy);
                    return Err(e);
                }
            }
        }
        Ok(match &self.cur {
            Some(seg) => &seg.data()[self.pos..],
            None => &[],
        })
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

/// The reader thread: sends tar segments to the splitter (and every byte to the hash
/// thread) until EOF or an error, which it also sends.
fn reader_thread(
    fd: BorrowedFd<'_>,
    compression: Compression,
    pool: &Arc<Pool>,
    shared: &Shared,
    hash: Sender<HashInput>,
    out: SyncSender<Input>,
) {
    let result = (|| -> Result<(), Error> {
        let plain = compression == Compression::None;
        let mut src = BlobSource::new(fd, pool, shared, &hash, plain)?;
        if plain {
            while let Some(seg) = src.next_segment()? {
                shared
                    .tar_bytes
                    .fetch_add(seg.len as u64, Ordering::Relaxed);
                out.send(Input::Data(seg)).map_err(|_| aborted())?;
            }
            return Ok(());
        }
        let decode_error = |src: &mut BlobSource<'_>, e: io::Error| match src.error.take() {
            Some(io) => Error::Io(io),
            None => Error::Invalid(decompress::describe(compression, &e)),
        };
        let mut decoder = match decompress::reader(compression, &mut src) {
            Ok(d) => d,
            Err(e) => return Err(Error::Invalid(decompress::describe(compression, &e))),
        };
        loop {
            let mut buf = pool.get().ok_or_else(aborted)?;
            let mut len = 0;
            let mut eof = false;
            while len < SEGMENT {
                match decoder.read(&mut buf.space()[len..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => len += n,
                    Err(e)
                        if e.kind() == io::ErrorKind::Interrupted
                            && !shared.aborted.load(Ordering::Relaxed) => {}
                    Err(e) => {
                        pool.put(buf);
                        drop(decoder);
                        return Err(decode_error(&mut src, e));
                    }
                }
            }
            if len > 0 {
                shared.tar_bytes.fetch_add(len as u64, Ordering::Relaxed);
                let seg = Arc::new(Segment {
                    buf,
                    len,
                    pool: Some(pool.clone()),
                });
                hash.send(HashInput::Tar(seg.clone()))
                    .map_err(|_| aborted())?;
                out.send(Input::Data(seg)).map_err(|_| aborted())?;
            } else {
                pool.put(buf);
            }
            if eof {
                return Ok(());
            }
        }
    })();
    if let Err(e) = result {
        if !shared.aborted.load(Ordering::Relaxed) {
            let _ = out.send(Input::Error(e));
        }
    }
    // Dropping `out` tells the splitter the blob ended.
}

/// The hash thread: sha256 of the blob and of the tar.
fn hash_thread(rx: Receiver<HashInput>) -> ([u8; 32], [u8; 32]) {
    let mut blob = sha2::Sha256::new();
    let mut tar = sha2::Sha256::new();
    let mut plain = false;
    for msg in rx {
        match msg {
            HashInput::Blob(s) => blob.update(s.data()),
            HashInput::Tar(s) => tar.update(s.data()),
            HashInput::Both(s) => {
                plain = true;
                blob.update(s.data());
            }
        }
    }
    let blob: [u8; 32] = blob.finalize().into();
    let tar: [u8; 32] = if plain { blob } else { tar.finalize().into() };
    (blob, tar)
}

// ------------------------------------------------------------------------------------------
// Object workers

/// A large body for a worker: its first slice, and the rest through a channel when it spans
/// segments.
struct Job {
    seq: u64,
    size: u64,
    first: Option<Slice>,
    rest: Option<Receiver<Slice>>,
}

type JobResult = (u64, Result<(Vec<u8>, Stored), Error>);

fn worker_thread(store: &ObjectStore, jobs: &Mutex<Receiver<Job>>, results: Sender<JobResult>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let seq = job.seq;
        let result = (|| -> Result<Option<(Vec<u8>, Stored)>, Error> {
            let mut w = store.create()?;
            if let Some(s) = &job.first {
                w.write(s.bytes())?;
            }
            drop(job.first);
            if let Some(rest) = job.rest {
                for s in rest {
                    w.write(s.bytes())?;
                }
            }
            if w.size() != job.size {
                // The splitter stopped sending: the import is being aborted.
                return Ok(None);
            }
            Ok(Some(w.finish()?))
        })();
        let msg = match result {
            Ok(Some(r)) => (seq, Ok(r)),
            Ok(None) => continue,
            Err(e) => (seq, Err(e)),
        };
        if results.send(msg).is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Inline runs and the ordered assembly of the splitstream

/// A temporary file for spilled inline data: `O_TMPFILE` in `objects/` if possible.
fn spill_file(dir: BorrowedFd<'_>) -> io::Result<File> {
    // SAFETY: openat on a directory fd with a static path.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_TMPFILE,
            0o600 as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a new fd we own.
        return Ok(unsafe { File::from_raw_fd(fd) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    // A named file, unlinked at once.
    for i in 0..16u32 {
        let name = std::ffi::CString::new(format!(
            ".tmp-spill-{}-{}-{i}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ))
        .expect("no NUL");
        // SAFETY: openat with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: unlink the name we just created; the fd keeps the file.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
            // SAFETY: a new fd we own.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// One maximal run of inline bytes: in memory, or (past [`SPILL_THRESHOLD`]) a temporary
/// file followed by a memory tail.
#[derive(Debug, Default)]
struct Run {
    spilled: Option<(File, u64)>,
    mem: Vec<u8>,
}

impl Run {
    fn len(&self) -> u64 {
        self.spilled.as_ref().map_or(0, |s| s.1) + self.mem.len() as u64
    }
}

/// Collects inline runs and object results, and writes them into the splitstream in tar
/// order.
struct Assembler<'a> {
    writer: Writer,
    spill_dir: BorrowedFd<'a>,
    run: Run,
    queue: VecDeque<Pending>,
    /// Memory held by runs in `queue`.
    queued_mem: usize,
    queued_objects: usize,
    results: Receiver<JobResult>,
    done: HashMap<u64, Result<(Vec<u8>, Stored), Error>>,
    stats: Stats,
}

enum Pending {
    Run(Run),
    Object { seq: u64, size: u64 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    written: u64,
    written_bytes: u64,
    present: u64,
    external_bytes: u64,
    inline_bytes: u64,
}

impl Assembler<'_> {
    fn push_inline(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.stats.inline_bytes += data.len() as u64;
        if self.run.mem.len() + data.len() > SPILL_THRESHOLD {
            if self.run.spilled.is_none() {
                self.run.spilled = Some((spill_file(self.spill_dir)?, 0));
            }
            let (file, len) = self.run.spilled.as_mut().expect("just set");
            file.write_all(&self.run.mem)?;
            file.write_all(data)?;
            *len += (self.run.mem.len() + data.len()) as u64;
            self.run.mem.clear();
            if self.run.mem.capacity() > (1 << 20) {
                self.run.mem = Vec::new();
            }
        } else {
            self.run.mem.extend_from_slice(data);
        }
        Ok(())
    }

    fn end_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        if run.len() > 0 {
            self.queued_mem += run.mem.capacity();
            self.queue.push_back(Pending::Run(run));
        }
    }

    fn push_object(&mut self, seq: u64, size: u64) -> Result<(), Error> {
        self.end_run();
        self.queue.push_back(Pending::Object { seq, size });
        self.queued_objects += 1;
        self.settle(false)
    }

    /// Takes every result already available.
    fn poll_results(&mut self) {
        loop {
            match self.results.try_recv() {
                Ok((seq, r)) => {
                    self.done.insert(seq, r);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Writes queued items into the splitstream from the front while possible; waits for
    /// objects when `all` or while too much is queued.
    fn settle(&mut self, all: bool) -> Result<(), Error> {
        self.poll_results();
        while let Some(front) = self.queue.front() {
            match front {
                Pending::Run(_) => {
                    let Some(Pending::Run(run)) = self.queue.pop_front() else {
                        unreachable!()
                    };
                    self.queued_mem -= run.mem.capacity();
                    write_run(&mut self.writer, run)?;
                }
                &Pending::Object { seq, size } => {
                    let result = match self.done.remove(&seq) {
                        Some(r) => r,
                        None => {
                            let must_wait = all
                                || self.queued_mem > PENDING_INLINE_MAX
                                || self.queued_objects > PENDING_OBJECTS_MAX;
                            if !must_wait {
                                return Ok(());
                            }
                            self.wait_for(seq)?
                        }
                    };
                    let (id, stored) = result?;
                    self.queue.pop_front();
                    self.queued_objects -= 1;
                    self.writer
                        .write_external(&id, size)
                        .map_err(|e| Error::Invalid(e.message().to_owned()))?;
                    match stored {
                        Stored::Written => {
                            self.stats.written += 1;
                            self.stats.written_bytes += size;
                        }
                        Stored::Present => self.stats.present += 1,
                    }
                    self.stats.external_bytes += size;
                }
            }
        }
        Ok(())
    }

    fn wait_for(&mut self, seq: u64) -> Result<Result<(Vec<u8>, Stored), Error>, Error> {
        loop {
            if let Some(r) = self.done.remove(&seq) {
                return Ok(r);
            }
            match self.results.recv() {
                Ok((s, r)) => {
                    self.done.insert(s, r);
                }
                // Every worker is gone: one of them failed and its error was collected, or
                // they were torn down.
                Err(_) => {
                    if let Some(e) = self.first_error() {
                        return Err(e);
                    }
                    return Err(Error::Io(io::Error::other("object workers exited")));
                }
            }
        }
    }

    fn first_error(&mut self) -> Option<Error> {
        let seq = self
            .done
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(s, _)| *s)
            .min()?;
        self.done.remove(&seq).and_then(Result::err)
    }

    fn finish(mut self) -> Result<(Vec<u8>, Stats), Error> {
        self.end_run();
        self.settle(true)?;
        Ok((self.writer.finish(), self.stats))
    }
}

fn write_run(writer: &mut Writer, run: Run) -> io::Result<()> {
    match run.spilled {
        None => {
            writer.write_inline(&run.mem);
            Ok(())
        }
        Some((mut file, len)) => {
            file.rewind()?;
            let mut src = io::BufReader::with_capacity(1 << 20, file).chain(&run.mem[..]);
            writer.write_inline_from(len + run.mem.len() as u64, &mut src)
        }
    }
}

// ------------------------------------------------------------------------------------------
// The splitter: composefs-rs `split_async`

/// Tar bytes as the splitter sees them: a carry buffer (for headers that straddle segments)
/// followed by the current segment.
struct TarInput<'a, 'p> {
    rx: Receiver<Input>,
    carry: Vec<u8>,
    carry_pos: usize,
    seg: Option<Arc<Segment>>,
    seg_pos: usize,
    eof: bool,
    /// Progress reporting.
    shared: &'a Shared,
    progress: Option<Progress<'p>>,
    reported: u64,
}

impl TarInput<'_, '_> {
    fn carry_left(&self) -> usize {
        self.carry.len() - self.carry_pos
    }

    fn seg_left(&self) -> usize {
        self.seg.as_ref().map_or(0, |s| s.len - self.seg_pos)
    }

    fn is_empty(&self) -> bool {
        self.carry_left() == 0 && self.seg_left() == 0
    }

    fn report(&mut self, force: bool) -> Result<(), Error> {
        if let Some(cb) = self.progress.as_mut() {
            let n = self.shared.blob_bytes.load(Ordering::Relaxed);
            if force || n >= self.reported + PROGRESS_STEP {
                self.reported = n;
                cb(n).map_err(Error::Callback)?;
            }
        }
        Ok(())
    }

    /// Replaces the exhausted current segment by the next one; `false` at the end.
    fn next_segment(&mut self) -> Result<bool, Error> {
        debug_assert_eq!(self.seg_left(), 0);
        self.seg = None;
        self.seg_pos = 0;
        if self.eof {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(Input::Data(seg)) => {
                self.seg = Some(seg);
                self.report(false)?;
                Ok(true)
            }
            Ok(Input::Error(e)) => Err(e),
            Err(_) => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// Makes at least `need` bytes contiguous; `false` if the input ends first.
    fn fill(&mut self, need: usize) -> Result<bool, Error> {
        loop {
            let (c, s) = (self.carry_left(), self.seg_left());
            if c == 0 {
                if s >= need {
                    return Ok(true);
                }
                if s > 0 {
                    // Start a carry with what is left of the segment.
                    self.carry.clear();
                    self.carry_pos = 0;
                    let seg = self.seg.as_ref().expect("a segment");
                    self.carry.extend_from_slice(&seg.data()[self.seg_pos..]);
                    self.seg_pos = seg.len;
                } else if !self.next_segment()? {
                    return Ok(false);
                }
                continue;
            }
            if c >= need {
                return Ok(true);
            }
            if s == 0 && !self.next_segment()? {
                return Ok(false);
            }
            let seg = self.seg.as_ref().expect("a segment");
            let take = (need - c).min(seg.len - self.seg_pos);
            self.carry
                .extend_from_slice(&seg.data()[self.seg_pos..self.seg_pos + take]);
            self.seg_pos += take;
        }
    }

    /// The contiguous bytes made available by [`TarInput::fill`].
    fn view(&self) -> &[u8] {
        if self.carry_left() > 0 {
            &self.carry[self.carry_pos..]
        } else {
            match &self.seg {
                Some(seg) => &seg.data()[self.seg_pos..],
                None => &[],
            }
        }
    }

    fn compact_carry(&mut self) {
        if self.carry_pos == self.carry.len() {
            self.carry.clear();
            self.carry_pos = 0;
            if self.carry.capacity() > (4 << 20) {
                self.carry = Vec::new();
            }
        }
    }

    /// Moves `n` bytes to the inline run; `eof_msg` if the input ends first.
    fn inline(&mut self, mut n: u64, asm: &mut Assembler<'_>, eof_msg: &str) -> Result<(), Error> {
        while n > 0 {
            let c = self.carry_left();
            if c > 0 {
                let take = (c as u64).min(n) as usize;
                asm.push_inline(&self.carry[self.carry_pos..self.carry_pos + take])?;
                self.carry_pos += take;
                self.compact_carry();
                n -= take as u64;
                continue;
            }
            if self.seg_left() == 0 && !self.next_segment()? {
                return Err(invalid(eof_msg));
            }
            let seg = self.seg.as_ref().expect("a segment");
            let take = ((seg.len - self.seg_pos) as u64).min(n) as usize;
            asm.push_inline(&seg.data()[self.seg_pos..self.seg_pos + take])?;
            self.seg_pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Everything up to EOF goes inline.
    fn drain(&mut self, asm: &mut Assembler<'_>) -> Result<(), Error> {
        loop {
            let c = self.carry_left();
            if c > 0 {
                asm.push_inline(&self.carry[self.carry_pos..])?;
                self.carry_pos += c;
                self.compact_carry();
            }
            if let Some(seg) = &self.seg {
                asm.push_inline(&seg.data()[self.seg_pos..])?;
                self.seg_pos = seg.len;
            }
            if !self.next_segment()? {
                return Ok(());
            }
        }
    }

    /// Hands a body of `size` bytes to the workers as job `seq`.
    fn body(&mut self, seq: u64, size: u64, jobs: &SyncSender<Job>) -> Result<bool, Error> {
        let c = self.carry_left() as u64;
        // Whole body in the carry or in the current segment: one slice, no channel.
        if c >= size || c == 0 && self.seg_left() as u64 >= size {
            let first = if c > 0 {
                let s = Slice::owned(
                    self.carry[self.carry_pos..self.carry_pos + size as usize].to_vec(),
                );
                self.carry_pos += size as usize;
                self.compact_carry();
                s
            } else {
                let seg = self.seg.clone().expect("a segment");
                let s = Slice {
                    seg,
                    start: self.seg_pos,
                    end: self.seg_pos + size as usize,
                };
                self.seg_pos += size as usize;
                s
            };
            let job = Job {
                seq,
                size,
                first: Some(first),
                rest: None,
            };
            return Ok(jobs.send(job).is_ok());
        }
        let (tx, rx) = mpsc::sync_channel(BODY_QUEUE);
        let job = Job {
            seq,
            size,
            first: None,
            rest: Some(rx),
        };
        if jobs.send(job).is_err() {
            return Ok(false);
        }
        let mut left = size;
        if c > 0 {
            let s = Slice::owned(self.carry[self.carry_pos..].to_vec());
            self.carry_pos = self.carry.len();
            self.compact_carry();
            left -= c;
            if tx.send(s).is_err() {
                return Ok(false);
            }
        }
        while left > 0 {
            if self.seg_left() == 0 && !self.next_segment()? {
                return Err(invalid("unexpected EOF reading tar entry"));
            }
            let seg = self.seg.clone().expect("a segment");
            let take = ((seg.len - self.seg_pos) as u64).min(left) as usize;
            let s = Slice {
                seg,
                start: self.seg_pos,
                end: self.seg_pos + take,
            };
            self.seg_pos += take;
            left -= take as u64;
            if tx.send(s).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What the splitter does after one `parse`.
enum Step {
    Need(usize),
    Inline(usize),
    End(usize),
    Entry {
        consumed: usize,
        size: u64,
        large: bool,
    },
}

/// The splitter loop (composefs-rs `split_async`).
fn split(
    input: &mut TarInput<'_, '_>,
    asm: &mut Assembler<'_>,
    jobs: &SyncSender<Job>,
) -> Result<(), Error> {
    let mut parser = Parser::with_defaults();
    let mut need = HEADER_SIZE;
    let mut seq = 0u64;
    loop {
        if !input.fill(need)? {
            if input.is_empty() {
                return Ok(()); // clean EOF at a header boundary
            }
            return Err(invalid("unexpected EOF in tar stream"));
        }
        let view = input.view();
        let available = view.len();
        let step = match parser.parse(view)? {
            ParseEvent::NeedData { min_bytes } => Step::Need(min_bytes),
            ParseEvent::GlobalExtensions { consumed, .. } => Step::Inline(consumed),
            ParseEvent::End { consumed } => Step::End(consumed),
            ParseEvent::SparseEntry { .. } => {
                return Err(invalid("sparse tar entries are not supported"));
            }
            ParseEvent::Entry { consumed, entry } => Step::Entry {
                consumed,
                size: entry.size,
                large: entry.entry_type.is_file() && entry.size > INLINE_CONTENT_MAX,
            },
        };
        match step {
            Step::Need(min_bytes) => {
                // Guard against a request that would not grow the buffer (an endless loop).
                need = min_bytes.max(available + 1);
            }
            Step::Inline(consumed) => {
                input.inline(consumed as u64, asm, "unexpected EOF in tar stream")?;
                need = HEADER_SIZE;
            }
            Step::End(consumed) => {
                input.inline(consumed as u64, asm, "unexpected EOF in tar stream")?;
                input.drain(asm)?;
                return Ok(());
            }
            Step::Entry {
                consumed,
                size,
                large,
            } => {
                input.inline(consumed as u64, asm, "unexpected EOF in tar stream")?;
                need = HEADER_SIZE;
                let storage = round_up(size);
                if large {
                    let sent = input.body(seq, size, jobs)?;
                    asm.push_object(seq, size)?;
                    seq += 1;
                    if !sent {
                        // A worker gave up on this body: its error is among the results.
                        asm.settle(true)?;
                        return Err(Error::Io(io::Error::other("object workers exited")));
                    }
                    let padding = storage.wrapping_sub(size);
                    input.inline(padding, asm, "unexpected EOF reading tar padding")?;
                } else {
                    input.inline(storage, asm, "unexpected EOF reading tar entry")?;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// split_layer

/// What [`split_layer`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The complete splitstream file.
    pub stream_file: Vec<u8>,
    /// sha256 of the blob as read.
    pub blob_sha256: [u8; 32],
    /// sha256 of the decompressed tar (the diff_id).
    pub tar_sha256: [u8; 32],
    /// Bytes read from the source.
    pub blob_size: u64,
    /// Bytes of the tar (= the splitstream's stream_size).
    pub tar_size: u64,
    /// External chunks whose object was newly written.
    pub objects_written: u64,
    /// External chunks whose object was already there (in the repository or earlier in
    /// this layer).
    pub objects_present: u64,
    /// Total size of the newly written objects.
    pub written_bytes: u64,
    /// Total size of the external chunks (every occurrence).
    pub external_bytes: u64,
    /// Total size of the inline chunks; `external_bytes + inline_bytes == tar_size`.
    pub inline_bytes: u64,
}

/// Parameters of [`split_layer`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How the blob is compressed.
    pub compression: Compression,
    /// The repository's fs-verity algorithm.
    pub algorithm: Algorithm,
    /// The splitstream content type (`ocilayer`).
    pub content_type: u64,
    /// Require fs-verity on every object.
    pub secure: bool,
    /// Object worker threads; 0 = one per available core.
    pub threads: usize,
}

/// The progress callback: called with the number of blob bytes read so far.
pub type Progress<'a> = &'a mut dyn FnMut(u64) -> Result<(), Box<dyn Any + Send>>;

/// Reads a layer blob from `source` (to EOF), decompresses and verifies it, writes the large
/// file bodies as objects into `objects` and returns the splitstream (not stored).
pub fn split_layer(
    source: BorrowedFd<'_>,
    objects: BorrowedFd<'_>,
    opts: &Options,
    progress: Option<Progress<'_>>,
) -> Result<Split, Error> {
    let store = ObjectStore::new(objects, opts.algorithm, opts.secure)?;
    let workers = fsverity::effective_threads(opts.threads).clamp(1, 64);
    let pool = Arc::new(Pool::default());
    let shared = Shared::default();

    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(JOB_QUEUE);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let (hash_tx, hash_rx) = mpsc::channel::<HashInput>();
        let (in_tx, in_rx) = mpsc::sync_channel::<Input>(POOL_SEGMENTS);
        let (res_tx, res_rx) = mpsc::channel::<JobResult>();

        let hasher = std::thread::Builder::new()
            .name("cfs-layer-hash".into())
            .spawn_scoped(s, move || hash_thread(hash_rx))?;
        let (pool_r, shared_r) = (&pool, &shared);
        let compression = opts.compression;
        std::thread::Builder::new()
            .name("cfs-layer-read".into())
            .spawn_scoped(s, move || {
                reader_thread(source, compression, pool_r, shared_r, hash_tx, in_tx)
            })?;
        for i in 0..workers {
            let (store, job_rx, res_tx) = (&store, &job_rx, res_tx.clone());
            std::thread::Builder::new()
                .name(format!("cfs-object-{i}"))
                .spawn_scoped(s, move || worker_thread(store, job_rx, res_tx))?;
        }
        drop(res_tx);

        let mut input = TarInput {
            rx: in_rx,
            carry: Vec::new(),
            carry_pos: 0,
            seg: None,
            seg_pos: 0,
            eof: false,
            shared: &shared,
            progress,
            reported: 0,
        };
        let mut asm = Assembler {
            writer: Writer::new(opts.algorithm, opts.content_type),
            spill_dir: objects,
            run: Run::default(),
            queue: VecDeque::new(),
            queued_mem: 0,
            queued_objects: 0,
            results: res_rx,
            done: HashMap::new(),
            stats: Stats::default(),
        };
        let result = split(&mut input, &mut asm, &job_tx);
        drop(job_tx);
        let result = result.and_then(|()| asm.finish());
        if result.is_err() {
            shared.aborted.store(true, Ordering::Relaxed);
            pool.abort();
        }
        // Release our segments and the channel so the reader can finish.
        input.seg = None;
        let progress = input.progress.take();
        drop(input);
        let (stream_file, stats) = result?;
        let (blob_sha256, tar_sha256) = hasher
            .join()
            .map_err(|_| Error::Io(io::Error::other("hash thread panicked")))?;
        let blob_size = shared.blob_bytes.load(Ordering::Relaxed);
        if let Some(cb) = progress {
            cb(blob_size).map_err(Error::Callback)?;
        }
        Ok(Split {
            stream_file,
            blob_sha256,
            tar_sha256,
            blob_size,
            tar_size: shared.tar_bytes.load(Ordering::Relaxed),
            objects_written: stats.written,
            objects_present: stats.present,
            written_bytes: stats.written_bytes,
            external_bytes: stats.external_bytes,
            inline_bytes: stats.inline_bytes,
        })
    })
}

// ------------------------------------------------------------------------------------------
// The reverse path: composefs-rs `tar::get_entry`

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses the tar entries back out of a layer splitstream file (composefs-rs
/// `tar::get_entry` until the end).
pub fn read_entries(stream_file: &[u8]) -> Result<Vec<Entry>, Error> {
    let m = splitstream::read_metadata(stream_file)
        .map_err(|e| Error::Invalid(e.message().to_owned()))?;
    let (start, end) = m.stream_range;
    let body = &stream_file[start..end];
    // Read ahead first; on any error, again the way composefs-rs reads (see `ChunkStream`).
    if let Ok(entries) = entries_of(body, &m.object_refs, true) {
        return Ok(entries);
    }
    entries_of(body, &m.object_refs, false)
}

/// The entries of a stream section; with `ahead`, the whole section must decode.
fn entries_of(body: &[u8], object_refs: &[Vec<u8>], ahead: bool) -> Result<Vec<Entry>, Error> {
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
    let mut entries = Vec::new();
    let mut headers = Vec::new();
    while let Some(e) = next_entry(&mut r, &mut headers)? {
        entries.push(e);
    }
    r.drain()?;
    Ok(entries)
}

// ------------------------------------------------------------------------------------------
// Python bindings

#[cfg(feature = "python")]
pub(crate) mod py {
    use super::{Error, Options};
    use crate::decompress::Compression;
    use crate::fsverity::py::algorithm;
    use crate::pybuf::{os_error, with_slice, ByteBuf};
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyList, PyTuple};
    use std::any::Any;
    use std::os::fd::BorrowedFd;

    fn to_py(e: Error) -> PyErr {
        match e {
            Error::Invalid(m) => PyValueError::new_err(m),
            Error::Io(e) => os_error(e),
            Error::Callback(b) => match b.downcast::<PyErr>() {
                Ok(e) => *e,
                Err(_) => PyOSError::new_err("progress callback failed"),
            },
        }
    }

    fn fd_arg(fd: i32, what: &str) -> PyResult<BorrowedFd<'static>> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "{what} must be a file descriptor"
            )));
        }
        // SAFETY: the caller keeps the fd open for the duration of the call.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    type SplitTuple<'py> = (
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
    );

    /// Decompresses, verifies and splits one layer blob; see docs/internals.md.
    #[pyfunction]
    #[pyo3(signature = (source_fd, compression, objects_fd, algorithm, content_type, secure, threads=0, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn split_layer<'py>(
        py: Python<'py>,
        source_fd: i32,
        compression: &str,
        objects_fd: i32,
        algorithm: &str,
        content_type: u64,
        secure: bool,
        threads: usize,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<SplitTuple<'py>> {
        let opts = Options {
            compression: Compression::from_name(compression).map_err(PyValueError::new_err)?,
            algorithm: self::algorithm(algorithm)?,
            content_type,
            secure,
            threads,
        };
        let source = fd_arg(source_fd, "source_fd")?;
        let objects = fd_arg(objects_fd, "objects_fd")?;
        let callback: Option<Py<PyAny>> = progress.map(Bound::unbind);
        let result = py.allow_threads(|| {
            let mut call = |n: u64| -> Result<(), Box<dyn Any + Send>> {
                Python::with_gil(|py| {
                    // While we hold the GIL anyway: let Ctrl-C interrupt a long import.
                    py.check_signals()?;
                    match &callback {
                        Some(cb) => cb.call1(py, (n,)).map(|_| ()),
                        None => Ok(()),
                    }
                })
                .map_err(|e| Box::new(e) as Box<dyn Any + Send>)
            };
            let progress: Option<super::Progress<'_>> = if callback.is_some() {
                Some(&mut call)
            } else {
                None
            };
            super::split_layer(source, objects, &opts, progress)
        });
        let r = result.map_err(to_py)?;
        Ok((
            PyBytes::new(py, &r.stream_file),
            PyBytes::new(py, &r.blob_sha256),
            PyBytes::new(py, &r.tar_sha256),
            r.blob_size,
            r.tar_size,
            r.objects_written,
            r.objects_present,
            r.external_bytes,
            r.inline_bytes,
            r.written_bytes,
        ))
    }

    /// Parses the tar entries back out of a layer splitstream file.
    #[pyfunction]
    fn read_entries<'py>(
        py: Python<'py>,
        stream_file: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let buf = ByteBuf::get(stream_file)?;
        let entries = with_slice(py, &buf, super::read_entries).map_err(to_py)?;
        let opt_bytes = |b: &Option<Vec<u8>>| -> Py<PyAny> {
            match b {
                Some(b) => PyBytes::new(py, b).into_any().unbind(),
                None => py.None(),
            }
        };
        let items = entries
            .iter()
            .map(|e| {
                let xattrs = PyList::new(
                    py,
                    e.xattrs
                        .iter()
                        .map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v))),
                )?;
                let fields: Vec<Py<PyAny>> = vec![
                    PyBytes::new(py, &e.path).into_any().unbind(),
                    e.kind.name().into_pyobject(py)?.into_any().unbind(),
                    e.mode.into_pyobject(py)?.into_any().unbind(),
                    e.uid.into_pyobject(py)?.into_any().unbind(),
                    e.gid.into_pyobject(py)?.into_any().unbind(),
                    e.mtime.into_pyobject(py)?.into_any().unbind(),
                    e.mtime_nsec.into_pyobject(py)?.into_any().unbind(),
                    e.size.into_pyobject(py)?.into_any().unbind(),
                    opt_bytes(&e.link_target),
                    e.rdev.into_pyobject(py)?.into_any().unbind(),
                    xattrs.into_any().unbind(),
                    opt_bytes(&e.inline),
                    opt_bytes(&e.object_id),
                ];
                PyTuple::new(py, fields)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(split_layer, m)?)?;
        m.add_function(wrap_pyfunction!(read_entries, m)?)?;
        m.add("INLINE_CONTENT_MAX", super::INLINE_CONTENT_MAX)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitstream::Chunk;
    use rand::{Rng, RngCore, SeedableRng};
    use std::os::fd::AsFd;
    use std::path::PathBuf;

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
        // a single zero block at the end
        let mut one = body.clone();
        one.extend([0u8; 512]);
        assert_eq!(err(&one), "unexpected EOF in tar stream");
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
