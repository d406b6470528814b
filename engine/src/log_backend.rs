//! The seam between the engine and its write-ahead log.
//!
//! # Contract
//!
//! - A log is a sequence of records numbered by consecutive log sequence numbers (LSNs).
//! - `append` writes a batch of records **atomically and durably**: when it returns `Ok`,
//!   all of them survive a crash; if the process crashes before, recovery shows either all
//!   of them or none. It returns the LSN of the first record (the others follow in order)
//!   and where its frame is ([`FramePos`]), for `read_frames`.
//!   After an `Err` the outcome is unknown (the bytes may or may not be durable), so callers
//!   must stop writing (they poison themselves).
//! - `read_frames` visits the records of a run of frames of one segment with one
//!   positioned read (each frame verified); `scan` visits every record from an LSN on.
//!   Payloads are borrowed for the call. Errors mean a record is unreadable (purged,
//!   corrupt, no frame at that position, or an I/O failure).
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

/// Where a frame is in the log: its segment and its position there (for `keel_wal::Wal`, the
/// segment's sequence number and the frame's byte offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePos {
    /// The segment.
    pub segment: u64,
    /// The frame's position in the segment.
    pub offset: u64,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// LSN of the first record; the others follow.
    pub first_lsn: u64,
    /// The frame holding the records.
    pub frame: FramePos,
}

/// What `read_frames` calls with each record: its LSN and payload; false stops the read.
pub type FrameVisitor<'a> = dyn FnMut(u64, &[u8]) -> bool + 'a;

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
    /// Appends `records` atomically and durably; returns where they landed.
    fn append(&mut self, records: &[&[u8]]) -> Result<Placed, BackendError>;
    /// Calls `visit` with every record of the frames of `segment` at positions
    /// `first_frame..=last_frame` (as [`FramePos::offset`] gives them), in order, with one
    /// read; stops early when `visit` returns false.
    fn read_frames(
        &self,
        segment: u64,
        first_frame: u64,
        last_frame: u64,
        visit: &mut FrameVisitor<'_>,
    ) -> Result<(), BackendError>;
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

/// The future of an asynchronous append: owns everything it needs, resolves to where the
/// records landed once all are durable (or to the log's error).
pub type AppendFuture =
    Pin<Box<dyn Future<Output = Result<Placed, BackendError>> + Send + Sync + 'static>>;

/// A log that can append without blocking the calling thread (for async runtimes). See the
/// module documentation for the contract.
pub trait AsyncLogBackend: LogBackend {
    /// Starts appending `records` atomically and durably, as [`LogBackend::append`] does.
    fn append_async(&self, records: Vec<Vec<u8>>) -> AppendFuture;
}

/// One segment of a [`MemLog`].
#[derive(Debug)]
struct MemSegment {
    seq: u64,
    first_lsn: u64,
    records: Vec<Vec<u8>>,
    /// Index in `records` of each frame's first record, ascending: a frame's position.
    frames: Vec<usize>,
}

impl MemSegment {
    fn end_lsn(&self) -> u64 {
        self.first_lsn + self.records.len() as u64
    }
}

/// What a [`MemLog`] shares between its clones: the "disk".
#[derive(Debug, Default)]
struct MemLogState {
    /// Segments oldest first.
    segments: VecDeque<MemSegment>,
    next_lsn: u64,
    next_seq: u64,
    fail_appends: bool,
    appends: u64,
    /// Reads of record payloads (`read` and `read_frames` calls).
    reads: u64,
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

    /// Number of `read_frames` calls so far (each one positioned read on a real log).
    pub fn reads(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.reads)
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .map_or(0, |s| s.segments.iter().map(|g| g.records.len()).sum())
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LogBackend for MemLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<Placed, BackendError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if s.fail_appends {
            return Err("injected append failure".into());
        }
        let first_lsn = s.next_lsn;
        let roll = s
            .segments
            .back()
            .is_none_or(|g| g.records.len() >= self.records_per_segment);
        if roll {
            let seq = s.next_seq;
            s.next_seq += 1;
            s.segments.push_back(MemSegment {
                seq,
                first_lsn,
                records: Vec::new(),
                frames: Vec::new(),
            });
        }
        let seg = s.segments.back_mut().ok_or_else(poisoned)?;
        let offset = seg.records.len();
        seg.frames.push(offset);
        seg.records.extend(records.iter().map(|r| r.to_vec()));
        let segment = seg.seq;
        s.next_lsn += records.len() as u64;
        s.appends += 1;
        Ok(Placed {
            first_lsn,
            frame: FramePos {
                segment,
                offset: offset as u64,
            },
        })
    }

    fn read_frames(
        &self,
        segment: u64,
        first_frame: u64,
        last_frame: u64,
        visit: &mut FrameVisitor<'_>,
    ) -> Result<(), BackendError> {
        // Copy out first so `visit` runs without the lock held.
        let records: Vec<(u64, Vec<u8>)> = {
            let mut s = self.state.lock().map_err(|_| poisoned())?;
            s.reads += 1;
            let seg = s
                .segments
                .iter()
                .find(|g| g.seq == segment)
                .ok_or_else(|| format!("segment {segment} not in the log"))?;
            let frame_at = |offset: u64| {
                usize::try_from(offset)
                    .ok()
                    .and_then(|o| seg.frames.binary_search(&o).ok())
                    .ok_or_else(|| format!("no frame at {offset} in segment {segment}"))
            };
            let (first, last) = (frame_at(first_frame)?, frame_at(last_frame)?);
            if first > last {
                return Err(format!("frames {first_frame}..={last_frame}: empty range").into());
            }
            let end = seg
                .frames
                .get(last + 1)
                .copied()
                .unwrap_or(seg.records.len());
            (seg.frames[first]..end)
                .map(|i| (seg.first_lsn + i as u64, seg.records[i].clone()))
                .collect()
        };
        for (lsn, r) in records {
            if !visit(lsn, &r) {
                break;
            }
        }
        Ok(())
    }

    fn scan(&self, from: u64, visit: &mut RecordVisitor<'_>) -> Result<(), BackendError> {
        // Copy out first so `visit` runs without the lock held.
        let records: Vec<(u64, Vec<u8>)> = {
            let s = self.state.lock().map_err(|_| poisoned())?;
            s.segments
                .iter()
                .flat_map(|g| {
                    g.records
                        .iter()
                        .enumerate()
                        .map(move |(i, r)| (g.first_lsn + i as u64, r.clone()))
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
        while s.segments.len() > 1 && s.segments[0].end_lsn() <= lsn {
            s.segments.pop_front();
        }
        Ok(())
    }

    fn segments(&self) -> Vec<SegmentSpan> {
        self.state.lock().map_or(Vec::new(), |s| {
            s.segments
                .iter()
                .map(|g| SegmentSpan {
                    first_lsn: g.first_lsn,
                    end_lsn: g.end_lsn(),
                })
                .collect()
        })
    }

    fn first_lsn(&self) -> u64 {
        self.state.lock().map_or(0, |s| {
            s.segments.front().map_or(s.next_lsn, |g| g.first_lsn)
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
