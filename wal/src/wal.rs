//! The log: the facade: opening, appending, reading, maintenance.
//!
//! The parts live in submodules, one job each: [`batch`] (a group-commit batch),
//! [`group_commit`] (placing frames, the writer, publishing durable batches), [`spares`]
//! (preparing the next segment), [`maintenance`] (truncation and purge), [`sys`] (flock
//! and futex), [`append_future`] (the async append).

mod append_future;
mod batch;
mod group_commit;
mod maintenance;
mod spares;
mod sys;

pub use append_future::AppendFuture;
use batch::{continuation_batch, new_segment_batch};
use group_commit::{State, Writer, WriterIo, durable_outcome, has_work, parity, writer_loop};
use spares::{SpareState, Spares, preparer_loop};
use sys::{futex, lock_dir};

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{self, BLOCK_BYTES, Lsn, Payload, SEGMENT_HEADER_BYTES};
use crate::io::{BlockingIo, WriteIo};
use crate::options::{Backend, WalOptions};
use crate::reader::WalIter;
use crate::recovery::{self, FRAME_READ_MAX, RecoveryProgress, RecoveryReport};
use crate::segment::{self, INDEX_STRIDE_BYTES, SegmentBytes, SegmentView};
use crate::stats::{Stats, WalStats};

/// Most batches that may wait behind a segment roll.
pub const SEALED_BATCHES_MAX: usize = 2;

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first record; the others follow consecutively.
    pub first_lsn: Lsn,
    /// Number of records.
    pub count: u32,
    /// Segment holding the frame.
    pub segment: u64,
    /// Byte offset of the frame in its segment.
    pub offset: u64,
}

impl Appended {
    /// Position one past the last record.
    pub fn end_lsn(&self) -> Lsn {
        self.first_lsn + u64::from(self.count)
    }
}

/// What a user can learn about one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Position of its first record.
    pub first_lsn: Lsn,
    /// Position one past its last durable record.
    pub end_lsn: Lsn,
    /// Bytes of durable frames, header included.
    pub bytes: u64,
}

pub(crate) struct Inner {
    dir: PathBuf,
    opts: WalOptions,
    backend_name: &'static str,
    state: Mutex<State>,
    /// Appenders waiting for room in the filling batch.
    space: Condvar,
    /// The writer waiting for a batch.
    work: Condvar,
    /// `State::durable_batch_id`, readable without the lock by parked appenders.
    durable_id: AtomicU64,
    /// Set with `State::poisoned`, readable without the lock.
    poisoned: AtomicBool,
    /// Where blocking appenders sleep, by batch parity: each write that completes bumps the
    /// word of its batch's parity and wakes its sleepers with one `FUTEX_WAKE`. So a write
    /// wakes exactly its own appenders (not those of the batch filling behind it), with one
    /// system call for all of them, and they check `durable_id` without the state lock.
    wake_words: [AtomicU32; 2],
    /// Maintenance waiting for every accepted append to be durable.
    idle: Condvar,
    /// A lingering writer waiting for the filling batch to reach its target.
    filled: Condvar,
    segments: RwLock<Vec<Arc<SegmentView>>>,
    spares: Spares,
    stats: Stats,
    writer_io: Mutex<WriterIo>,
    maintenance: Mutex<()>,
    _lock: File,
}

/// A segmented write-ahead log. Share it between threads with `Arc<Wal>`; appends from
/// all of them are coalesced into group commits.
pub struct Wal {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

fn lock_err<T>(_: T) -> Error {
    Error::Poisoned {
        cause: "a thread panicked while holding the log's lock".into(),
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering what is there.
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal> {
        Wal::open_with_progress(dir, opts, &mut |_| {}).map(|(wal, _)| wal)
    }

    /// Like [`Wal::open`], reporting recovery progress once per segment, and returning what
    /// recovery found.
    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        opts: WalOptions,
        progress: &mut dyn FnMut(RecoveryProgress),
    ) -> Result<(Wal, RecoveryReport)> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
            // The new directory's entry must be durable too, or a power loss could take the
            // whole log (segments and all) with it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent)?;
            }
        }
        let lock = lock_dir(&dir)?;
        let io = make_io(&opts)?;
        let recovered =
            recovery::recover(&dir, opts.recovery_mode, FRAME_READ_MAX, false, progress)?;
        let report = recovered.report.clone();

        let mut views = Vec::with_capacity(recovered.segments.len());
        let last = recovered.segments.len().checked_sub(1);
        for (i, s) in recovered.segments.iter().enumerate() {
            let bytes = if Some(i) == last {
                SegmentView::open_active(&s.path)?
            } else {
                SegmentBytes::Mapped(segment::map(&s.path)?)
            };
            views.push(Arc::new(SegmentView::new(
                s.seq,
                s.path.clone(),
                s.first_lsn,
                bytes,
                (s.end_off, s.end_lsn),
                s.index.clone(),
                FRAME_READ_MAX,
            )));
        }

        // A spare left by an earlier run is reused if it has the configured size.
        let mut spare_ready = None;
        if let Some((seq, path, len, recycled)) = recovered.spare {
            if len == opts.segment_bytes {
                spare_ready = Some((seq, path, recycled));
            } else {
                segment::remove_if_present(&path)?;
            }
        }
        let mut next_seg_seq = recovered.next_seq;
        let buf_bytes = opts.batch_bytes_max + 2 * BLOCK_BYTES;
        let (fill, index_next_off) = match recovered.segments.last() {
            Some(s) => {
                // Continue the last segment: its partial last block is rewritten with the
                // next write, so load it.
                let capacity = format::align_down_u64(s.capacity);
                let batch = continuation_batch(
                    AlignedBuf::zeroed(buf_bytes),
                    1,
                    s.seq,
                    capacity,
                    s.end_off,
                    s.end_lsn,
                );
                let next_index = s
                    .index
                    .last()
                    .map_or(SEGMENT_HEADER_BYTES as u64, |&(_, at)| {
                        at + INDEX_STRIDE_BYTES
                    });
                (batch, next_index)
            }
            None => {
                let seq = next_seg_seq;
                next_seg_seq += 1;
                let batch = new_segment_batch(
                    AlignedBuf::zeroed(buf_bytes),
                    1,
                    seq,
                    opts.segment_bytes,
                    report.next_lsn,
                );
                (batch, SEGMENT_HEADER_BYTES as u64)
            }
        };
        let state = State {
            poisoned: None,
            closing: false,
            paused: false,
            fill,
            sealed: VecDeque::new(),
            writing: false,
            next_lsn: report.next_lsn,
            next_batch_id: 2,
            durable_batch_id: 0,
            next_seg_seq,
            index_next_off,
            last_round_appends: 0,
            write_ewma_ns: 0,
            linger_target: 0,
            pool: Vec::new(),
            durable_wakers: Vec::new(),
            space_wakers: Vec::new(),
        };
        let spare_next = spare_ready
            .as_ref()
            .map_or(recovered.next_seq, |(seq, ..)| *seq);
        let inner = Arc::new(Inner {
            dir,
            backend_name: io.name(),
            state: Mutex::new(state),
            space: Condvar::new(),
            work: Condvar::new(),
            durable_id: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            wake_words: [AtomicU32::new(0), AtomicU32::new(0)],
            idle: Condvar::new(),
            filled: Condvar::new(),
            segments: RwLock::new(views),
            spares: Spares {
                state: Mutex::new(SpareState {
                    next_seq: spare_next,
                    wanted: false,
                    ready: spare_ready,
                    busy: false,
                    error: None,
                    failures: 0,
                    stop: false,
                }),
                cond: Condvar::new(),
            },
            stats: Stats::default(),
            writer_io: Mutex::new(WriterIo { io, current: None }),
            maintenance: Mutex::new(()),
            _lock: lock,
            opts,
        });
        let writer = {
            let shared = inner.clone();
            std::thread::Builder::new()
                .name("keel-wal-writer".into())
                .spawn(move || writer_loop(&shared))
                .map_err(|e| Error::io("spawning writer thread", &inner.dir, e))?
        };
        let preparer = {
            let shared = inner.clone();
            std::thread::Builder::new()
                .name("keel-wal-prepare".into())
                .spawn(move || preparer_loop(&shared))
                .map_err(|e| Error::io("spawning preparer thread", &inner.dir, e))?
        };
        Ok((
            Wal {
                inner,
                threads: vec![writer, preparer],
            },
            report,
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.inner.opts
    }

    /// Checks that `records` can be appended (not empty, each record within
    /// `record_bytes_max`, the frame within `batch_bytes_max`) without appending them, and
    /// returns the frame's encoded length: the same check [`Wal::append`] makes first.
    pub fn check_append<P: Payload>(&self, records: &[P]) -> Result<usize> {
        self.inner.check(records)
    }

    /// Appends `records` as one atomic frame and returns once they are durable.
    pub fn append<P: Payload>(&self, records: &[P]) -> Result<Appended> {
        let frame_len = self.inner.check(records)?;
        let inner = &*self.inner;
        let mut st = inner.state.lock().map_err(lock_err)?;
        let (id, appended) = loop {
            if let Some(placed) = inner.try_place(&mut st, records, frame_len)? {
                break placed;
            }
            st = inner.space.wait(st).map_err(lock_err)?;
        };
        st.fill.waiters += 1;
        // No write in flight: write the batch from this thread rather than hand it to the
        // writer thread and back, which costs two context switches.
        if !st.writing && has_work(&st) {
            st = inner.write_round(st, Writer::Appender)?;
        }
        drop(st);
        let word = &inner.wake_words[parity(id)];
        loop {
            // Read the word before checking: a wake-up after the check changes it, and
            // futex_wait then returns at once instead of sleeping through it.
            let seen = word.load(Ordering::Acquire);
            if inner.durable_id.load(Ordering::Acquire) >= id {
                return Ok(appended);
            }
            if inner.poisoned.load(Ordering::Acquire) {
                let st = inner.state.lock().map_err(lock_err)?;
                if let Some(result) = durable_outcome(&st, id) {
                    return result.map(|()| appended);
                }
            }
            futex::wait(word, seen);
        }
    }

    /// Appends `records` as one atomic frame; the future resolves once they are durable.
    /// It never blocks the calling thread, so any async runtime can drive it.
    pub fn append_async<'a, P: Payload>(&'a self, records: &'a [P]) -> AppendFuture<'a, P> {
        AppendFuture {
            inner: &self.inner,
            records,
            frame_len: None,
            placed: None,
        }
    }

    /// Reads the record at `lsn`.
    pub fn read(&self, lsn: Lsn) -> Result<Vec<u8>> {
        let mut iter = self.iter_from(lsn)?;
        match iter.next() {
            Some(record) => Ok(record?.data),
            None => Err(self.out_of_range(lsn)),
        }
    }

    /// Visits every record of the frames of segment `segment` that start at byte offsets
    /// `first_frame..=last_frame` (offsets as returned in [`Appended::offset`]), in order,
    /// with one positioned read of those frames' bytes (a copy from the map of a sealed
    /// segment). Each frame is verified. `visit(lsn, bytes)` returns false to stop early.
    ///
    /// This is the read a raft log store makes on a cache miss: its index knows where each
    /// entry's frame is, so one entry costs one read of its frame, and a run of entries one
    /// sequential read.
    pub fn read_frames(
        &self,
        segment: u64,
        first_frame: u64,
        last_frame: u64,
        visit: &mut dyn FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<()> {
        let view = {
            let views = self.inner.segments.read().map_err(lock_err)?;
            views.iter().find(|v| v.seq == segment).cloned()
        };
        let Some(view) = view else {
            return Err(Error::NoFrame {
                segment,
                offset: first_frame,
                reason: "the segment is not in the log (purged, or never written)".into(),
            });
        };
        crate::reader::read_frames(&view, first_frame, last_frame, visit)
    }

    /// Iterates durable records from `lsn` up to the durable end at the time of the call.
    pub fn iter_from(&self, lsn: Lsn) -> Result<WalIter> {
        let views = self.inner.segments.read().map_err(lock_err)?.clone();
        let first = views.first().map_or(lsn, |v| v.first_lsn);
        let end = views.last().map_or(lsn, |v| v.end_lsn());
        if lsn < first || lsn > end {
            return Err(Error::OutOfRange {
                lsn,
                first,
                next: end,
            });
        }
        Ok(WalIter::new(views, lsn, end))
    }

    /// All durable records, oldest first.
    pub fn iter(&self) -> Result<WalIter> {
        self.iter_from(self.first_lsn())
    }

    /// Position of the oldest record still in the log.
    pub fn first_lsn(&self) -> Lsn {
        let views = self.inner.segments.read().expect("segment list lock");
        match views.first() {
            Some(v) => v.first_lsn,
            None => self.next_lsn(),
        }
    }

    /// Position one past the last durable record.
    pub fn next_lsn(&self) -> Lsn {
        let views = self.inner.segments.read().expect("segment list lock");
        match views.last() {
            Some(v) => v.end_lsn(),
            None => self.inner.state.lock().map_or(1, |st| st.next_lsn),
        }
    }

    /// The segments that hold records, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let views = self.inner.segments.read().expect("segment list lock");
        views
            .iter()
            .map(|v| SegmentInfo {
                seq: v.seq,
                path: v.path.clone(),
                first_lsn: v.first_lsn,
                end_lsn: v.end_lsn(),
                bytes: v.end_off(),
            })
            .collect()
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> WalStats {
        self.inner.stats.snapshot(self.inner.backend_name)
    }

    /// The backend doing the writes: `uring` or `blocking`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend_name
    }

    /// Drops every record after `lsn` (keeps `..= lsn`); the next append gets `lsn + 1`.
    ///
    /// Crash-atomic: an intent file is written first and recovery completes it. Appends
    /// wait while it runs. `lsn` may be `first_lsn() - 1` to empty the log.
    pub fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        self.inner.truncate_after(lsn)
    }

    /// Removes whole segments all of whose records lie below `lsn`. The segment being
    /// written is never removed. Returns the number of segments removed. Crash-atomic.
    pub fn purge_before(&self, lsn: Lsn) -> Result<usize> {
        self.inner.purge_before(lsn)
    }

    fn out_of_range(&self, lsn: Lsn) -> Error {
        Error::OutOfRange {
            lsn,
            first: self.first_lsn(),
            next: self.next_lsn(),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.closing = true;
        }
        self.inner.work.notify_all();
        if let Ok(mut sp) = self.inner.spares.state.lock() {
            sp.stop = true;
        }
        self.inner.spares.cond.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn make_io(opts: &WalOptions) -> Result<Box<dyn WriteIo>> {
    #[cfg(target_os = "linux")]
    {
        match opts.backend {
            Backend::Blocking => {}
            Backend::Uring => {
                let io = crate::io::UringIo::new(opts.sync)
                    .map_err(|e| Error::io("setting up io_uring", "io_uring", e))?;
                return Ok(Box::new(io));
            }
            Backend::Auto => {
                if let Ok(io) = crate::io::UringIo::new(opts.sync) {
                    return Ok(Box::new(io));
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    if opts.backend == Backend::Uring {
        return Err(Error::InvalidOptions("io_uring needs Linux".into()));
    }
    Ok(Box::new(BlockingIo { sync: opts.sync }))
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.dir)
            .field("backend", &self.inner.backend_name)
            .finish_non_exhaustive()
    }
}
