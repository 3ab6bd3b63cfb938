//! Inline runs and the ordered assembly of the splitstream.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::error::Error;
use crate::objects::Stored;
use crate::splitstream::Writer;

use super::store::JobResult;
use super::{PENDING_INLINE_MAX, PENDING_OBJECTS_MAX, SPILL_THRESHOLD};

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
pub(super) struct Run {
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
pub(super) struct Assembler<'a> {
    pub(super) writer: Writer,
    pub(super) spill_dir: BorrowedFd<'a>,
    pub(super) run: Run,
    pub(super) queue: VecDeque<Pending>,
    /// Memory held by runs in `queue`.
    pub(super) queued_mem: usize,
    pub(super) queued_objects: usize,
    pub(super) results: Receiver<JobResult>,
    pub(super) done: HashMap<u64, Result<(Vec<u8>, Stored), Error>>,
    pub(super) stats: Stats,
}

pub(super) enum Pending {
    Run(Run),
    Object { seq: u64, size: u64 },
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub(super) written: u64,
    pub(super) written_bytes: u64,
    pub(super) present: u64,
    pub(super) external_bytes: u64,
    pub(super) inline_bytes: u64,
}

impl Assembler<'_> {
    pub(super) fn push_inline(&mut self, data: &[u8]) -> io::Result<()> {
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

    pub(super) fn push_object(&mut self, seq: u64, size: u64) -> Result<(), Error> {
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
    pub(super) fn settle(&mut self, all: bool) -> Result<(), Error> {
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
                    self.writer.write_external(&id, size).map_err(Error::from)?;
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

    pub(super) fn finish(mut self) -> Result<(Vec<u8>, Stats), Error> {
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
