//! The seam between the engine and its write-ahead log.
//!
//! # Contract
//!
//! - A log is a sequence of records numbered by consecutive log sequence numbers (LSNs).
//! - `append` writes a batch of records **atomically and durably**: when it returns `Ok`,
//!   all of them survive a crash; if the process crashes before, recovery shows either all
//!   of them or none. It returns the LSN of the first record; the others follow in order.
//!   After an `Err` the outcome is unknown (the bytes may or may not be durable), so callers
//!   must stop writing (they poison themselves).
//! - `read` and `scan` return owned copies of record payloads; errors mean the record is
//!   unreadable (purged, corrupt, or an I/O failure).
//! - `purge_before(lsn)` drops whole segments whose records are all below `lsn`; records at
//!   or above `lsn` stay readable. It may keep more than asked, never less.
//! - `segments` lists the live segments, oldest first, so a caller can tell which records pin
//!   which segment.
//! - [`AsyncLogBackend::append_async`] is `append` without blocking the calling thread: the
//!   returned future owns its records and resolves as `append` returns. The log places an
//!   asynchronous append when its future is first polled, so two appends polled in turn may
//!   land in either order: a caller that needs an order (the log store does) keeps one
//!   append in flight at a time.
//!
//! The production implementation is `keel_wal::Wal`; [`MemLog`] is an in-memory one for tests
//! with segment boundaries and failure injection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};

/// An error from a log backend, passed through to the caller unchanged.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// What `scan` calls with each record: its LSN and payload.
pub type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), BackendError> + 'a;

/// One live segment of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    /// LSN of the segment's first record.
    pub first_lsn: u64,
    /// LSN one past the segment's last record (`== first_lsn` if empty).
    pub end_lsn: u64,
}

/// A write-ahead log as the engine needs it. See the module documentation for the contract.
pub trait LogBackend {
    /// Checks, without writing, that `append(records)` would not be rejected for its size or
    /// shape. A failure here is a plain rejection: the caller is not poisoned.
    fn check_append(&self, records: &[&[u8]]) -> Result<(), BackendError> {
        let _ = records;
        Ok(())
    }
    /// Appends `records` atomically and durably; returns the LSN of the first.
    fn append(&mut self, records: &[&[u8]]) -> Result<u64, BackendError>;
    /// The payload of the record at `lsn`.
    fn read(&self, lsn: u64) -> Result<Vec<u8>, BackendError>;
    /// Calls `visit` with every record from `from` on, in order; stops at the first error
    /// (from the log or from `visit`).
    fn scan(&self, from: u64, visit: &mut RecordVisitor<'_>) -> Result<(), BackendError>;
    /// Drops whole segments entirely below `lsn`.
    fn purge_before(&mut self, lsn: u64) -> Result<(), BackendError>;
    /// Live segments, oldest first.
    fn segments(&self) -> Vec<SegmentSpan>;
    /// LSN of the oldest live record (`== next_lsn()` when the log is empty).
    fn first_lsn(&self) -> u64;
    /// LSN the next appended record will get.
    fn next_lsn(&self) -> u64;
}

/// The future of an asynchronous append: owns everything it needs, resolves to the LSN of
/// the first record once all are durable (or to the log's error).
pub type AppendFuture =
    Pin<Box<dyn Future<Output = Result<u64, BackendError>> + Send + Sync + 'static>>;

/// A log that can append without blocking the calling thread (for async runtimes). See the
/// module documentation for the contract.
pub trait AsyncLogBackend: LogBackend {
    /// Starts appending `records` atomically and durably, as [`LogBackend::append`] does.
    fn append_async(&self, records: Vec<Vec<u8>>) -> AppendFuture;
}

/// What a [`MemLog`] shares between its clones: the "disk".
#[derive(Debug, Default)]
struct MemLogState {
    /// Segments oldest first: (first LSN, payloads).
    segments: VecDeque<(u64, Vec<Vec<u8>>)>,
    next_lsn: u64,
    fail_appends: bool,
    appends: u64,
    /// While set, `purge_before` waits (a test holds a caller inside a purge).
    hold_purges: bool,
    /// Purges waiting because of `hold_purges`.
    held_purges: u64,
    /// While set, asynchronous appends stay pending (in flight) until it is cleared.
    hold_appends: bool,
    /// Tasks waiting for `hold_appends` to clear.
    held_appends: Vec<Waker>,
}

/// An in-memory log for tests. Clones share the same records, so a test can "crash" by
/// dropping the store that uses one clone and recover from another. Segments roll after
/// `records_per_segment` records, at append boundaries as a real log's would.
#[derive(Clone, Debug)]
pub struct MemLog {
    state: Arc<Mutex<MemLogState>>,
    /// Signalled when `hold_purges` is cleared.
    released: Arc<Condvar>,
    records_per_segment: usize,
}

fn poisoned() -> BackendError {
    "memlog mutex poisoned".into()
}

impl MemLog {
    /// An empty log whose first record gets LSN 1.
    pub fn new(records_per_segment: usize) -> MemLog {
        MemLog {
            state: Arc::new(Mutex::new(MemLogState {
                next_lsn: 1,
                ..MemLogState::default()
            })),
            released: Arc::new(Condvar::new()),
            records_per_segment: records_per_segment.max(1),
        }
    }

    /// Makes every later append fail (as a failed fsync would) until cleared.
    pub fn set_fail_appends(&self, fail: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.fail_appends = fail;
        }
    }

    /// While `hold` is set, every `purge_before` waits (so that a test can stop a caller,
    /// such as a checkpoint thread, in the middle of its work).
    pub fn set_hold_purges(&self, hold: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.hold_purges = hold;
        }
        self.released.notify_all();
    }

    /// While `hold` is set, asynchronous appends stay in flight: their futures are pending
    /// and nothing reaches the log until `hold` is cleared.
    pub fn set_hold_appends(&self, hold: bool) {
        let wakers = match self.state.lock() {
            Ok(mut s) => {
                s.hold_appends = hold;
                if hold {
                    Vec::new()
                } else {
                    std::mem::take(&mut s.held_appends)
                }
            }
            Err(_) => Vec::new(),
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Number of purges waiting because of [`MemLog::set_hold_purges`].
    pub fn held_purges(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.held_purges)
    }

    /// Number of successful appends so far (for group-commit tests).
    pub fn appends(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.appends)
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .map_or(0, |s| s.segments.iter().map(|(_, r)| r.len()).sum())
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LogBackend for MemLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<u64, BackendError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if s.fail_appends {
            return Err("injected append failure".into());
        }
        let first = s.next_lsn;
        let roll = match s.segments.back() {
            None => true,
            Some((_, r)) => r.len() >= self.records_per_segment,
        };
        if roll {
            s.segments.push_back((first, Vec::new()));
        }
        if let Some((_, seg)) = s.segments.back_mut() {
            seg.extend(records.iter().map(|r| r.to_vec()));
        }
        s.next_lsn += records.len() as u64;
        s.appends += 1;
        Ok(first)
    }

    fn read(&self, lsn: u64) -> Result<Vec<u8>, BackendError> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        for (first, recs) in &s.segments {
            if lsn >= *first && lsn < first + recs.len() as u64 {
                let i = usize::try_from(lsn - first)?;
                return Ok(recs[i].clone());
            }
        }
        Err(format!("lsn {lsn} not in the log").into())
    }

    fn scan(&self, from: u64, visit: &mut RecordVisitor<'_>) -> Result<(), BackendError> {
        // Copy out first so `visit` runs without the lock held.
        let records: Vec<(u64, Vec<u8>)> = {
            let s = self.state.lock().map_err(|_| poisoned())?;
            s.segments
                .iter()
                .flat_map(|(first, recs)| {
                    recs.iter()
                        .enumerate()
                        .map(move |(i, r)| (first + i as u64, r.clone()))
                })
                .filter(|(lsn, _)| *lsn >= from)
                .collect()
        };
        for (lsn, r) in records {
            visit(lsn, &r)?;
        }
        Ok(())
    }

    fn purge_before(&mut self, lsn: u64) -> Result<(), BackendError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if s.hold_purges {
            s.held_purges += 1;
            while s.hold_purges {
                s = self.released.wait(s).map_err(|_| poisoned())?;
            }
            s.held_purges -= 1;
        }
        // The newest segment is never dropped: the log keeps its open segment.
        while s.segments.len() > 1 {
            let (first, recs) = &s.segments[0];
            if first + recs.len() as u64 <= lsn {
                s.segments.pop_front();
            } else {
                break;
            }
        }
        Ok(())
    }

    fn segments(&self) -> Vec<SegmentSpan> {
        self.state.lock().map_or(Vec::new(), |s| {
            s.segments
                .iter()
                .map(|(first, recs)| SegmentSpan {
                    first_lsn: *first,
                    end_lsn: first + recs.len() as u64,
                })
                .collect()
        })
    }

    fn first_lsn(&self) -> u64 {
        self.state.lock().map_or(0, |s| {
            s.segments.front().map_or(s.next_lsn, |(first, _)| *first)
        })
    }

    fn next_lsn(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.next_lsn)
    }
}

impl AsyncLogBackend for MemLog {
    fn append_async(&self, records: Vec<Vec<u8>>) -> AppendFuture {
        let mut log = self.clone();
        Box::pin(std::future::poll_fn(move |cx| {
            {
                let mut s = log.state.lock().map_err(|_| poisoned())?;
                if s.hold_appends {
                    if !s.held_appends.iter().any(|w| w.will_wake(cx.waker())) {
                        s.held_appends.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            Poll::Ready(log.append(&refs))
        }))
    }
}
