//! Segments: reference-counted buffers from a bounded pool.

use std::sync::{Arc, Condvar, Mutex};

use super::{POOL_SEGMENTS, SEGMENT};

/// A [`SEGMENT`]-sized buffer aligned to 4 KiB (bodies start at 512-byte boundaries of the
/// tar, so they are at least 512-byte aligned in memory too: good for SIMD hashing and for
/// the kernel's copies).
#[derive(Debug, Default)]
pub(super) struct Buffer {
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

    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.vec[self.off..self.off + SEGMENT]
    }

    pub(super) fn bytes(&self, len: usize) -> &[u8] {
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
pub(super) struct Pool {
    state: Mutex<PoolState>,
    cond: Condvar,
}

impl Pool {
    /// A free buffer, or `None` once the pipeline is aborted.
    pub(super) fn get(self: &Arc<Self>) -> Option<Buffer> {
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

    pub(super) fn put(&self, buf: Buffer) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.free.push(buf);
        drop(st);
        self.cond.notify_one();
    }

    pub(super) fn abort(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).aborted = true;
        self.cond.notify_all();
    }
}

/// Data shared between threads: a pooled buffer (returned on drop) or an owned one.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) buf: Buffer,
    pub(super) len: usize,
    pub(super) pool: Option<Arc<Pool>>,
}

impl Segment {
    pub(super) fn data(&self) -> &[u8] {
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
pub(super) struct Slice {
    pub(super) seg: Arc<Segment>,
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Slice {
    pub(super) fn owned(data: Vec<u8>) -> Self {
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

    pub(super) fn bytes(&self) -> &[u8] {
        &self.seg.data()[self.start..self.end]
    }
}
