//! The object workers: large bodies hashed and written into `objects/` in parallel.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;

use crate::error::Error;
use crate::objects::{ObjectStore, Stored};

use super::segments::Slice;

/// A large body for a worker: its first slice, and the rest through a channel when it spans
/// segments.
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) size: u64,
    pub(super) first: Option<Slice>,
    pub(super) rest: Option<Receiver<Slice>>,
}

pub(super) type JobResult = (u64, Result<(Vec<u8>, Stored), Error>);

pub(super) fn worker_thread(
    store: &ObjectStore,
    jobs: &Mutex<Receiver<Job>>,
    results: Sender<JobResult>,
) {
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
