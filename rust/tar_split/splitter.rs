//! The splitter (composefs-rs `split_async`): tar headers and bodies -> chunks.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{mpsc, Arc};

use tar_core::parse::{ParseEvent, Parser};
use tar_core::HEADER_SIZE;

use crate::constants::INLINE_CONTENT_MAX;
use crate::error::Error;

use super::assemble::Assembler;
use super::input::{Input, Shared};
use super::segments::{Segment, Slice};
use super::store::Job;
use super::{invalid, round_up, Progress, BODY_QUEUE, PROGRESS_STEP};

/// Tar bytes as the splitter sees them: a carry buffer (for headers that straddle segments)
/// followed by the current segment.
pub(super) struct TarInput<'a, 'p> {
    pub(super) rx: Receiver<Input>,
    pub(super) carry: Vec<u8>,
    pub(super) carry_pos: usize,
    pub(super) seg: Option<Arc<Segment>>,
    pub(super) seg_pos: usize,
    pub(super) eof: bool,
    /// Progress reporting.
    pub(super) shared: &'a Shared,
    pub(super) progress: Option<Progress<'p>>,
    pub(super) reported: u64,
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

/// The input ends, at a header boundary, with a zero block and less than a second one: an
/// archive closed by a single end block (what is left after it is stored with it, like the
/// record padding after two).
fn ends_with_one_zero_block(rest: &[u8]) -> bool {
    rest.len() >= HEADER_SIZE && rest[..HEADER_SIZE].iter().all(|&b| b == 0)
}

/// The splitter loop (composefs-rs `split_async`).
pub(super) fn split(
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
            if ends_with_one_zero_block(input.view()) {
                // One end-of-archive block where the format asks for two (Python's tarfile,
                // GNU tar and Go's archive/tar accept it; tar-core waits for the second):
                // the end of the archive, kept inline to the last byte.
                input.drain(asm)?;
                return Ok(());
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
