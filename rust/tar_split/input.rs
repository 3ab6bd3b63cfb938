//! The reader thread (blob -> decompression -> tar segments) and the hash thread.

use std::io::{self, BufRead, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;

use sha2::Digest;

use crate::decompress::{self, Compression};
use crate::error::Error;

use super::segments::{Pool, Segment};
use super::{aborted, SEGMENT};

/// Messages from the reader to the splitter.
pub(super) enum Input {
    Data(Arc<Segment>),
    Error(Error),
}

/// Messages to the hash thread.
pub(super) enum HashInput {
    /// Compressed blob bytes.
    Blob(Arc<Segment>),
    /// Decompressed tar bytes.
    Tar(Arc<Segment>),
    /// An uncompressed blob: the blob and the tar at once.
    Both(Arc<Segment>),
}

/// Shared counters and the abort flag.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) blob_bytes: AtomicU64,
    pub(super) tar_bytes: AtomicU64,
    pub(super) aborted: AtomicBool,
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
pub(super) fn reader_thread(
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
pub(super) fn hash_thread(rx: Receiver<HashInput>) -> ([u8; 32], [u8; 32]) {
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
