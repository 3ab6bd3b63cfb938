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
//!
//! The stages, one file each: `segments` (the buffer pool), `input` (reader and hash
//! threads), `store` (object workers), `assemble` (inline runs, ordered splitstream
//! output), `splitter` (tar headers -> chunks), this file ([`split_layer`] and its options),
//! `entries` (the reverse path, [`read_entries`]) and `py` (the bindings).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use crate::decompress::Compression;
use crate::fsverity::{self, Algorithm};
use crate::objects::ObjectStore;
use crate::splitstream::Writer;

use self::assemble::{Assembler, Run, Stats};
use self::input::{hash_thread, reader_thread, HashInput, Input, Shared};
use self::segments::Pool;
use self::splitter::{split, TarInput};
use self::store::{worker_thread, Job, JobResult};

/// `size.next_multiple_of(512)` as composefs-rs's release build computes it: wrapping (a PAX
/// size near 2^64 rounds to 0, so a directory with such a size has no body).
fn round_up(size: u64) -> u64 {
    size.wrapping_add(511) & !511
}

/// Bodies of regular files up to this size are stored inline (`INLINE_CONTENT_MAX_V0`).
pub use crate::constants::INLINE_CONTENT_MAX;

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

pub use crate::error::Error;

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

mod assemble;
mod entries;
mod input;
#[cfg(feature = "python")]
pub(crate) mod py;
mod segments;
mod splitter;
mod store;
#[cfg(test)]
mod tests;

pub use entries::{
    make_absolute_path, pax_mtime_nsec, read_entries, visit_entries, Entry, EntrySink, Kind,
};

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
