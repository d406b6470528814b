//! The log: group commit, the writer thread, segment rolls, truncation and purge.
//!
//! # Group commit
//!
//! Appenders encode their frame straight into the *filling* batch, an aligned buffer,
//! under one short lock, and then wait. A single writer thread takes the filling batch
//! (leaving a fresh one behind, so the next batch fills while this one is written),
//! writes it with one durable write, and wakes the appenders of that batch. Each write
//! covers whole blocks: it starts at the block holding the previous write's end, so that
//! block's already-durable bytes are written again with the new ones.
//!
//! # Bounds
//!
//! One filling batch (at most `batch_bytes_max` bytes and `queue_appends_max` appends),
//! at most [`SEALED_BATCHES_MAX`] batches waiting behind a segment roll, and one batch in
//! flight. An appender that finds no room waits (a thread on a condition variable, a task
//! with its waker) until the writer takes the filling batch.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{
    self, BLOCK_BYTES, FRAME_HEADER_BYTES, Lsn, Payload, RECORD_PREFIX_BYTES, SEGMENT_HEADER_BYTES,
    SegmentHeader,
};
use crate::io::{BlockingIo, WriteIo};
use crate::marker::{PurgeIntent, TruncateIntent};
use crate::options::{Backend, WalOptions};
use crate::reader::WalIter;
use crate::recovery::{self, FRAME_READ_MAX, RecoveryProgress, RecoveryReport};
use crate::segment::{self, INDEX_STRIDE_BYTES, SegmentBytes, SegmentView};
use crate::stats::{Stats, WalStats};

/// Most batches that may wait behind a segment roll.
pub const SEALED_BATCHES_MAX: usize = 2;
/// Bounds of group commit's adaptive wait for appenders to refill a batch.
const LINGER_MIN: Duration = Duration::from_micros(10);
const LINGER_MAX: Duration = Duration::from_micros(100);

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

/// One group-commit batch: frames for one segment, in an aligned buffer.
struct Batch {
    id: u64,
    seq: u64,
    capacity: u64,
    /// File offset of `buf[0]`, a multiple of [`BLOCK_BYTES`].
    file_offset: u64,
    buf: AlignedBuf,
    /// Bytes used in `buf`.
    len: usize,
    /// Bytes at the start of `buf` that were there before this batch: the partial block
    /// of the previous write, or the segment header.
    prefix: usize,
    appends: u64,
    records: u64,
    /// Position of the batch's first record (for a new segment, the header's first lsn).
    first_lsn: Lsn,
    end_lsn: Lsn,
    /// Sparse-index entries for frames in this batch.
    index: Vec<(Lsn, u64)>,
    /// Blocking appenders waiting for this batch (see [`Inner::wake_words`]).
    waiters: u32,
    /// This batch starts a new segment (its first block is the header).
    new_segment: bool,
    /// The segment is full after this batch.
    seals: bool,
}

impl Batch {
    fn end_offset(&self) -> u64 {
        self.file_offset + self.len as u64
    }
    fn payload(&self) -> usize {
        self.len - self.prefix
    }
}

struct State {
    poisoned: Option<String>,
    closing: bool,
    /// Appends are held back while a truncation runs.
    paused: bool,
    fill: Batch,
    sealed: VecDeque<Batch>,
    writing: bool,
    next_lsn: Lsn,
    next_batch_id: u64,
    /// Every batch with an id up to this one is durable.
    durable_batch_id: u64,
    next_seg_seq: u64,
    /// The next frame at or after this offset of the active segment goes into the index.
    index_next_off: u64,
    /// Appends in the last write: how many appenders are active, roughly.
    last_round_appends: u64,
    /// Moving average of how long a write takes, in nanoseconds.
    write_ewma_ns: u64,
    /// While a writer lingers for the batch to fill: the append count it waits for.
    linger_target: u64,
    pool: Vec<AlignedBuf>,
    durable_wakers: Vec<(u64, Waker)>,
    space_wakers: Vec<Waker>,
}

struct Spares {
    state: Mutex<SpareState>,
    cond: Condvar,
}

struct SpareState {
    next_seq: u64,
    /// The next segment is wanted: the active one is half full, or a roll is waiting.
    /// Preparing it only then keeps the zero-filling away from start-up and spreads it.
    wanted: bool,
    /// A prepared segment: seq, path, and whether it is a recycled file.
    ready: Option<(u64, PathBuf, bool)>,
    /// The preparer or a purge is preparing the next segment right now.
    busy: bool,
    error: Option<String>,
    stop: bool,
}

struct Inner {
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
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
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
                let mut batch = continuation_batch(
                    AlignedBuf::zeroed(buf_bytes),
                    1,
                    s.seq,
                    capacity,
                    s.end_off,
                    s.end_lsn,
                );
                load_prefix(&mut batch, &s.path)?;
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
        let inner = &*self.inner;
        let _maintenance = inner.maintenance.lock().map_err(lock_err)?;
        let mut st = inner.quiesce()?;
        let result = inner.truncate_locked(&mut st, lsn);
        if let Err(e) = &result {
            if !matches!(e, Error::OutOfRange { .. }) {
                inner.poison(&mut st, format!("truncation failed: {e}"));
            }
        }
        st.paused = false;
        drop(st);
        inner.space.notify_all();
        inner.wake_space_tasks();
        result
    }

    /// Removes whole segments all of whose records lie below `lsn`. The segment being
    /// written is never removed. Returns the number of segments removed. Crash-atomic.
    pub fn purge_before(&self, lsn: Lsn) -> Result<usize> {
        let inner = &*self.inner;
        let _maintenance = inner.maintenance.lock().map_err(lock_err)?;
        let remove: Vec<u64> = {
            let views = inner.segments.read().map_err(lock_err)?;
            views
                .windows(2)
                .take_while(|pair| pair[1].first_lsn <= lsn)
                .map(|pair| pair[0].seq)
                .collect()
        };
        if remove.is_empty() {
            return Ok(0);
        }
        {
            let mut views = inner.segments.write().map_err(lock_err)?;
            views.retain(|v| !remove.contains(&v.seq));
        }
        PurgeIntent {
            remove: remove.clone(),
        }
        .run(
            &inner.dir,
            &mut |path| inner.recycle_segment(path),
            inner.opts.faults.as_deref(),
        )?;
        Ok(remove.len())
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

/// The outcome for batch `id`, once there is one.
fn durable_outcome(st: &State, id: u64) -> Option<Result<()>> {
    if st.durable_batch_id >= id {
        Some(Ok(()))
    } else {
        st.poisoned.as_ref().map(|cause| {
            Err(Error::Poisoned {
                cause: cause.clone(),
            })
        })
    }
}

/// A batch that continues segment `seq` from byte `end`, where position `end_lsn` is next.
/// Its buffer starts at the block holding `end`; the caller fills in that block's first
/// `prefix` bytes (already durable, written again with the new ones).
fn continuation_batch(
    buf: AlignedBuf,
    id: u64,
    seq: u64,
    capacity: u64,
    end: u64,
    end_lsn: Lsn,
) -> Batch {
    let file_offset = format::align_down_u64(end);
    let prefix = usize::try_from(end - file_offset).expect("below a block");
    Batch {
        id,
        seq,
        capacity,
        file_offset,
        buf,
        len: prefix,
        prefix,
        appends: 0,
        records: 0,
        first_lsn: end_lsn,
        end_lsn,
        index: Vec::new(),
        waiters: 0,
        new_segment: false,
        seals: false,
    }
}

/// Reads a continuation batch's prefix (the durable start of its first block) from disk.
fn load_prefix(batch: &mut Batch, path: &Path) -> Result<()> {
    if batch.prefix > 0 {
        let prefix = &mut batch.buf.as_mut_slice()[..batch.prefix];
        segment::read_at(path, prefix, batch.file_offset)?;
    }
    Ok(())
}

fn new_segment_batch(mut buf: AlignedBuf, id: u64, seq: u64, capacity: u64, lsn: Lsn) -> Batch {
    // Buffers are reused without being cleared; the header block must be zero around the
    // header fields, which the writer fills in (see `write_batch`).
    buf.as_mut_slice()[..SEGMENT_HEADER_BYTES].fill(0);
    Batch {
        id,
        seq,
        capacity,
        file_offset: 0,
        buf,
        len: SEGMENT_HEADER_BYTES,
        prefix: SEGMENT_HEADER_BYTES,
        appends: 0,
        records: 0,
        first_lsn: lsn,
        end_lsn: lsn,
        index: Vec::new(),
        waiters: 0,
        new_segment: true,
        seals: false,
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked { path });
    }
    Ok(file)
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

impl Inner {
    /// Checks an append's sizes and returns its frame length.
    fn check<P: Payload>(&self, records: &[P]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let max = self.opts.record_bytes_max;
        let mut body = 0usize;
        for record in records {
            let len = record.encoded_len();
            if len > max {
                return Err(Error::RecordTooLarge { len, max });
            }
            body = body.saturating_add(RECORD_PREFIX_BYTES + len);
        }
        let frame = format::align_up(
            FRAME_HEADER_BYTES.saturating_add(body).min(usize::MAX - 8),
            format::FRAME_ALIGN,
        );
        if frame > self.opts.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: frame,
                max: self.opts.batch_bytes_max,
            });
        }
        Ok(frame)
    }

    fn take_buf(&self, st: &mut State) -> AlignedBuf {
        st.pool
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(self.opts.batch_bytes_max + 2 * BLOCK_BYTES))
    }

    /// Encodes the frame into the filling batch if there is room: `Some((batch id, where))`,
    /// or `None` when the caller must wait for room.
    fn try_place<P: Payload>(
        &self,
        st: &mut State,
        records: &[P],
        frame_len: usize,
    ) -> Result<Option<(u64, Appended)>> {
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if st.closing {
            return Err(Error::Closed);
        }
        if st.paused {
            return Ok(None);
        }
        if st.fill.end_offset() + frame_len as u64 > st.fill.capacity {
            // Roll to a new segment; the full one is written first.
            if st.sealed.len() >= SEALED_BATCHES_MAX {
                return Ok(None);
            }
            let seq = st.next_seg_seq;
            let buf = self.take_buf(st);
            let id = st.next_batch_id;
            let fresh = new_segment_batch(buf, id, seq, self.opts.segment_bytes, st.next_lsn);
            st.next_seg_seq += 1;
            st.next_batch_id += 1;
            let mut full = std::mem::replace(&mut st.fill, fresh);
            full.seals = true;
            st.sealed.push_back(full);
            st.index_next_off = SEGMENT_HEADER_BYTES as u64;
        }
        let fill = &mut st.fill;
        let full = fill.appends > 0
            && (fill.payload() + frame_len > self.opts.batch_bytes_max
                || fill.appends >= self.opts.queue_appends_max as u64);
        if full {
            return Ok(None);
        }
        let offset = fill.end_offset();
        let first_lsn = st.next_lsn;
        format::encode_frame(
            &mut fill.buf.as_mut_slice()[fill.len..fill.len + frame_len],
            fill.seq,
            first_lsn,
            records,
        );
        let count = u32::try_from(records.len()).expect("bounded by batch_bytes_max");
        fill.len += frame_len;
        fill.appends += 1;
        fill.records += u64::from(count);
        fill.end_lsn = first_lsn + u64::from(count);
        if offset >= st.index_next_off {
            fill.index.push((first_lsn, offset));
            st.index_next_off = offset + INDEX_STRIDE_BYTES;
        }
        st.next_lsn = fill.end_lsn;
        if st.linger_target > 0 && st.fill.appends >= st.linger_target {
            self.filled.notify_one();
        }
        let fill = &st.fill;
        Ok(Some((
            fill.id,
            Appended {
                first_lsn,
                count,
                segment: fill.seq,
                offset,
            },
        )))
    }

    /// Takes the next batch to write, leaving a continuation behind when it takes the
    /// filling batch. `None` when there is nothing to do.
    fn next_batch(&self, st: &mut State) -> Option<Batch> {
        if let Some(batch) = st.sealed.pop_front() {
            return Some(batch);
        }
        if st.fill.appends == 0 {
            return None;
        }
        let buf = self.take_buf(st);
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let fill = &st.fill;
        let mut next = continuation_batch(
            buf,
            id,
            fill.seq,
            fill.capacity,
            fill.end_offset(),
            fill.end_lsn,
        );
        let from = usize::try_from(next.file_offset - fill.file_offset).expect("inside the batch");
        next.buf.as_mut_slice()[..next.prefix]
            .copy_from_slice(&fill.buf.as_slice()[from..fill.len]);
        Some(std::mem::replace(&mut st.fill, next))
    }

    fn poison(&self, st: &mut State, cause: String) {
        if st.poisoned.is_none() {
            st.poisoned = Some(cause);
        }
        self.poisoned.store(true, Ordering::Release);
        for word in &self.wake_words {
            word.fetch_add(1, Ordering::Release);
            futex::wake_all(word);
        }
        for (_, waker) in st.durable_wakers.drain(..) {
            waker.wake();
        }
        for waker in st.space_wakers.drain(..) {
            waker.wake();
        }
        self.idle.notify_all();
        self.space.notify_all();
    }

    fn wake_space_tasks(&self) {
        let wakers = match self.state.lock() {
            Ok(mut st) => std::mem::take(&mut st.space_wakers),
            Err(_) => return,
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Holds appends back and waits until every accepted append is durable.
    fn quiesce(&self) -> Result<MutexGuard<'_, State>> {
        let mut st = self.state.lock().map_err(lock_err)?;
        st.paused = true;
        while st.fill.appends > 0 || !st.sealed.is_empty() || st.writing {
            if let Some(cause) = &st.poisoned {
                let cause = cause.clone();
                st.paused = false;
                return Err(Error::Poisoned { cause });
            }
            self.work.notify_one();
            st = self.idle.wait(st).map_err(lock_err)?;
        }
        if let Some(cause) = &st.poisoned {
            let cause = cause.clone();
            st.paused = false;
            return Err(Error::Poisoned { cause });
        }
        Ok(st)
    }

    fn truncate_locked(&self, st: &mut State, lsn: Lsn) -> Result<()> {
        let views = self.segments.read().map_err(lock_err)?.clone();
        let first = views.first().map_or(st.next_lsn, |v| v.first_lsn);
        let end = st.next_lsn;
        let keep_end = lsn.saturating_add(1);
        if keep_end >= end {
            return Ok(());
        }
        if keep_end < first {
            return Err(Error::OutOfRange {
                lsn,
                first,
                next: end,
            });
        }
        // The segment holding the first record to drop.
        let at = views
            .partition_point(|v| v.first_lsn <= keep_end)
            .saturating_sub(1);
        let view = &views[at];
        let mut offset = view.seek(keep_end);
        let mut replacement = Vec::new();
        let mut kept_frame = None;
        while offset < view.end_off() {
            let (bytes, info) = view.frame_at(offset)?;
            if info.end_lsn() <= keep_end {
                offset += info.len as u64;
                continue;
            }
            if info.first_lsn < keep_end {
                // The cut falls inside this frame: keep its first records as a shorter frame.
                let keep = usize::try_from(keep_end - info.first_lsn).expect("below count");
                let records: Vec<&[u8]> = format::frame_records(&bytes, info.count)
                    .take(keep)
                    .collect();
                replacement = vec![0u8; format::frame_len(records.iter().map(|r| r.len()))];
                format::encode_frame(&mut replacement, view.seq, info.first_lsn, &records);
                kept_frame = Some(info.first_lsn);
            }
            break;
        }
        let dirty_end = format::align_up_u64(view.end_off()).min(view_capacity(view)?);
        let intent = TruncateIntent {
            seq: view.seq,
            offset,
            dirty_end,
            replacement,
            remove: views[at + 1..].iter().map(|v| v.seq).collect(),
        };
        intent.run(&self.dir, self.opts.faults.as_deref())?;

        // Readers now see the cut segment as the active one, through pread.
        let new_end = offset + intent.replacement.len() as u64;
        let mut index: Vec<(Lsn, u64)> = view
            .index_snapshot()
            .into_iter()
            .filter(|&(_, off)| off < offset)
            .collect();
        if let Some(first_lsn) = kept_frame {
            if index
                .last()
                .is_none_or(|&(_, off)| offset >= off + INDEX_STRIDE_BYTES)
            {
                index.push((first_lsn, offset));
            }
        }
        let next_index = index
            .last()
            .map_or(SEGMENT_HEADER_BYTES as u64, |&(_, off)| {
                off + INDEX_STRIDE_BYTES
            });
        let active = Arc::new(SegmentView::new(
            view.seq,
            view.path.clone(),
            view.first_lsn,
            SegmentView::open_active(&view.path)?,
            (new_end, keep_end),
            index,
            FRAME_READ_MAX,
        ));
        {
            let mut list = self.segments.write().map_err(lock_err)?;
            list.truncate(at);
            list.push(active);
        }
        // The next write continues the cut segment from its new end.
        let buf = self.take_buf(st);
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let mut fill =
            continuation_batch(buf, id, view.seq, view_capacity(view)?, new_end, keep_end);
        load_prefix(&mut fill, &view.path)?;
        let old = std::mem::replace(&mut st.fill, fill);
        self.recycle(st, old);
        st.next_lsn = keep_end;
        st.index_next_off = next_index;
        Ok(())
    }

    /// Reuses a purged segment's file as the next spare when none is ready, so that the
    /// next segment needs no zero-filling: it keeps its old bytes, which can never verify
    /// under the new sequence number. Returns whether the file was taken.
    fn recycle_segment(&self, old: &Path) -> Result<bool> {
        if !self.opts.recycle_segments {
            return Ok(false);
        }
        let len = std::fs::metadata(old)
            .map_err(|e| Error::io("reading metadata", old, e))?
            .len();
        let seq = {
            let mut sp = self.spares.state.lock().map_err(lock_err)?;
            if len != self.opts.segment_bytes || sp.ready.is_some() || sp.busy || sp.stop {
                return Ok(false);
            }
            sp.busy = true;
            sp.next_seq
        };
        let result = segment::recycle(&self.dir, old, seq);
        let mut sp = self.spares.state.lock().map_err(lock_err)?;
        sp.busy = false;
        match result {
            Ok(path) => {
                sp.ready = Some((seq, path, true));
                self.stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
                self.spares.cond.notify_all();
                Ok(true)
            }
            Err(e) => {
                self.spares.cond.notify_all();
                Err(e)
            }
        }
    }

    /// Returns a written batch's buffer to the pool. It is not cleared: every byte a write
    /// covers is written first (frames with their padding, the zeroed rest of the last
    /// block, the header block of a new segment).
    fn recycle(&self, st: &mut State, batch: Batch) {
        if st.pool.len() < SEALED_BATCHES_MAX + 2 {
            st.pool.push(batch.buf);
        }
    }
}

fn view_capacity(view: &SegmentView) -> Result<u64> {
    let len = std::fs::metadata(&view.path)
        .map_err(|e| Error::io("reading metadata", &view.path, e))?
        .len();
    Ok(format::align_down_u64(len))
}

/// The writer thread: writes batches nobody else is writing. Blocking appenders write
/// their own batch when no write is in flight (see [`Inner::write_round`]); this thread
/// serves async appenders and picks up work left when an appender's own batch is done.
fn writer_loop(inner: &Inner) {
    let Ok(mut st) = inner.state.lock() else {
        return;
    };
    loop {
        if st.poisoned.is_some() {
            return;
        }
        if !st.writing && has_work(&st) {
            st = match inner.write_round(st, Writer::Thread) {
                Ok(st) => st,
                Err(_) => return,
            };
            continue;
        }
        if st.closing && !st.writing {
            return;
        }
        st = match inner.work.wait(st) {
            Ok(st) => st,
            Err(_) => return,
        };
    }
}

fn parity(batch_id: u64) -> usize {
    usize::from(batch_id % 2 == 1)
}

/// The two futex operations the appenders' sleep needs.
mod futex {
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `word` holds `expected` (returns at once if it does not; may return
    /// spuriously).
    pub(super) fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: FUTEX_WAIT reads the 32-bit word at this address, which stays valid for
        // the call (the caller borrows it); a null timeout means no time limit.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// Wakes every thread sleeping on `word`.
    pub(super) fn wake_all(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE only uses the address as a key; no memory is accessed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

fn has_work(st: &State) -> bool {
    !st.sealed.is_empty() || st.fill.appends > 0
}

/// The writer's I/O: the backend and the open segment. Only the thread that set
/// `State::writing` locks it, so it is never contended.
struct WriterIo {
    io: Box<dyn WriteIo>,
    current: Option<(u64, File)>,
}

impl Inner {
    /// Group commit's adaptive wait. When the last write carried several appends and the
    /// filling batch has fewer, the appenders of that write are most likely about to append
    /// again (they were just woken): wait up to half a write's time for them, holding the
    /// writer's role so that nobody starts a write with a fraction of them. A lone appender
    /// never waits.
    fn linger<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let target = st.last_round_appends;
        if target < 2 || st.fill.appends >= target || !st.sealed.is_empty() {
            return Ok(st);
        }
        let wait = Duration::from_nanos(st.write_ewma_ns / 2).clamp(LINGER_MIN, LINGER_MAX);
        let deadline = Instant::now() + wait;
        st.writing = true;
        st.linger_target = target;
        loop {
            let now = Instant::now();
            if st.fill.appends >= target
                || now >= deadline
                || !st.sealed.is_empty()
                || st.poisoned.is_some()
                || st.closing
            {
                break;
            }
            st = self
                .filled
                .wait_timeout(st, deadline - now)
                .map_err(lock_err)?
                .0;
        }
        st.linger_target = 0;
        st.writing = false;
        Ok(st)
    }

    /// Writes the next batch. The caller holds the state lock, no write is in flight and
    /// there is work; the lock is released during the write and held again on return.
    fn write_round<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        who: Writer,
    ) -> Result<MutexGuard<'a, State>> {
        st = self.linger(st)?;
        if st.poisoned.is_some() {
            return Ok(st);
        }
        let mut batch = self
            .next_batch(&mut st)
            .expect("the caller checked has_work");
        st.writing = true;
        // The write covers whole blocks; the bytes after the last frame must be zeros
        // (buffers are reused without being cleared, so only this part is zeroed).
        let write_len = format::align_up(batch.len, BLOCK_BYTES);
        batch.buf.as_mut_slice()[batch.len..write_len].fill(0);
        let space_wakers = std::mem::take(&mut st.space_wakers);
        drop(st);
        self.space.notify_all();
        for waker in space_wakers {
            waker.wake();
        }
        let started = Instant::now();
        let result = match self.writer_io.lock() {
            Ok(mut w) => {
                let w = &mut *w;
                write_batch(self, w.io.as_mut(), &mut w.current, &mut batch, who)
            }
            Err(e) => Err(lock_err(e)),
        };
        let mut st = self.state.lock().map_err(lock_err)?;
        st.writing = false;
        match result {
            Ok(()) => {
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                st.write_ewma_ns = if st.write_ewma_ns == 0 {
                    took
                } else {
                    (st.write_ewma_ns * 7 + took) / 8
                };
                st.last_round_appends = batch.appends;
                st.durable_batch_id = batch.id;
                self.durable_id.store(batch.id, Ordering::Release);
                let mut ready = Vec::new();
                st.durable_wakers.retain(|(id, waker)| {
                    if *id <= batch.id {
                        ready.push(waker.clone());
                        false
                    } else {
                        true
                    }
                });
                if batch.waiters > 0 {
                    let word = &self.wake_words[parity(batch.id)];
                    word.fetch_add(1, Ordering::Release);
                    futex::wake_all(word);
                }
                self.recycle(&mut st, batch);
                self.idle.notify_all();
                if has_work(&st) || st.closing {
                    // More arrived meanwhile: make sure someone writes it even if every
                    // appender waiting now was already served.
                    self.work.notify_one();
                }
                for waker in ready {
                    waker.wake();
                }
            }
            Err(e) => self.poison(&mut st, e.to_string()),
        }
        Ok(st)
    }
}

/// Who performs a write round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// The writer thread: writes through the backend (io_uring or pwrite).
    Thread,
    /// A blocking appender writing its own batch because no write was in flight. It is
    /// blocked anyway, so it makes the `pwrite` itself on the `O_DSYNC` file: handing the
    /// batch to the writer thread and back would cost two context switches. (Measured
    /// here, a ring shared between threads also delivered completions up to a scheduler
    /// tick late, so the ring stays with the writer thread that created it.)
    Appender,
}

fn write_batch(
    inner: &Inner,
    io: &mut dyn WriteIo,
    current: &mut Option<(u64, File)>,
    batch: &mut Batch,
    who: Writer,
) -> Result<()> {
    if current.as_ref().is_none_or(|(seq, _)| *seq != batch.seq) {
        let path = if batch.new_segment {
            let (path, recycled) = take_spare(inner, batch.seq)?;
            // The header goes out with the segment's first write; only now is it known
            // whether the file is a recycled one.
            SegmentHeader {
                seq: batch.seq,
                first_lsn: batch.first_lsn,
                recycled,
            }
            .encode(batch.buf.as_mut_slice());
            path
        } else {
            segment::segment_path(&inner.dir, batch.seq)
        };
        let (file, _direct) = segment::open_for_write(&path, inner.opts.direct_io, io.synced())?;
        *current = Some((batch.seq, file));
    }
    let (_, file) = current.as_ref().expect("opened above");
    if batch.appends > 0 {
        let write_len = format::align_up(batch.len, BLOCK_BYTES);
        let bytes = &batch.buf.as_slice()[..write_len];
        let path = || segment::segment_path(&inner.dir, batch.seq);
        if let Some(faults) = &inner.opts.faults {
            faults
                .check_write()
                .map_err(|e| Error::io("writing segment", path(), e))?;
        }
        let written = match who {
            Writer::Thread => io.write_at(file, bytes, batch.file_offset),
            Writer::Appender => {
                std::os::unix::fs::FileExt::write_all_at(file, bytes, batch.file_offset)
            }
        };
        written.map_err(|e| Error::io("writing segment", path(), e))?;
        inner.stats.record_flush(
            batch.appends,
            batch.records,
            batch.payload() as u64,
            write_len as u64,
        );
        publish(inner, batch)?;
        if batch.end_offset() > batch.capacity / 2 {
            want_spare(inner);
        }
    }
    if batch.seals {
        seal(inner, batch.seq)?;
    }
    Ok(())
}

/// Makes a durable batch visible to readers.
fn publish(inner: &Inner, batch: &Batch) -> Result<()> {
    let mut views = inner.segments.write().map_err(lock_err)?;
    match views.last() {
        Some(view) if view.seq == batch.seq => {
            view.extend(batch.end_offset(), batch.end_lsn, &batch.index);
        }
        _ => {
            let path = segment::segment_path(&inner.dir, batch.seq);
            let first_lsn = batch.end_lsn - batch.records;
            let view = SegmentView::new(
                batch.seq,
                path.clone(),
                first_lsn,
                SegmentView::open_active(&path)?,
                (batch.end_offset(), batch.end_lsn),
                batch.index.clone(),
                FRAME_READ_MAX,
            );
            views.push(Arc::new(view));
        }
    }
    Ok(())
}

/// Switches a full segment's readers to a read-only map.
fn seal(inner: &Inner, seq: u64) -> Result<()> {
    let mut views = inner.segments.write().map_err(lock_err)?;
    if let Some(slot) = views.iter_mut().find(|v| v.seq == seq) {
        let map = segment::map(&slot.path)?;
        let sealed = SegmentView::new(
            slot.seq,
            slot.path.clone(),
            slot.first_lsn,
            SegmentBytes::Mapped(map),
            (slot.end_off(), slot.end_lsn()),
            slot.index_snapshot(),
            FRAME_READ_MAX,
        );
        *slot = Arc::new(sealed);
    }
    Ok(())
}

fn take_spare(inner: &Inner, seq: u64) -> Result<(PathBuf, bool)> {
    let mut sp = inner.spares.state.lock().map_err(lock_err)?;
    let mut waited = false;
    loop {
        if let Some(cause) = &sp.error {
            return Err(Error::Poisoned {
                cause: format!("preparing a segment failed: {cause}"),
            });
        }
        match &sp.ready {
            Some((ready, _, _)) if *ready == seq => {
                let (_, path, recycled) = sp.ready.take().expect("checked");
                sp.next_seq = seq + 1;
                sp.wanted = false;
                inner.spares.cond.notify_all();
                inner
                    .stats
                    .segments_created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if waited {
                    inner
                        .stats
                        .spare_waits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok((path, recycled));
            }
            Some((ready, _, _)) => {
                return Err(Error::Poisoned {
                    cause: format!("segment {seq} wanted but segment {ready} was prepared"),
                });
            }
            None if sp.stop => return Err(Error::Closed),
            None => {
                waited = true;
                sp.wanted = true;
                inner.spares.cond.notify_all();
                sp = inner.spares.cond.wait(sp).map_err(lock_err)?;
            }
        }
    }
}

/// Asks the preparer for the next segment (cheap when already asked).
fn want_spare(inner: &Inner) {
    if let Ok(mut sp) = inner.spares.state.lock() {
        if !sp.wanted && sp.ready.is_none() {
            sp.wanted = true;
            inner.spares.cond.notify_all();
        }
    }
}

/// The preparer thread: keeps one zero-filled segment ready, off the hot path.
fn preparer_loop(inner: &Inner) {
    loop {
        let seq = {
            let Ok(mut sp) = inner.spares.state.lock() else {
                return;
            };
            while !sp.stop && (sp.ready.is_some() || sp.error.is_some() || !sp.wanted || sp.busy) {
                sp = match inner.spares.cond.wait(sp) {
                    Ok(sp) => sp,
                    Err(_) => return,
                };
            }
            if sp.stop {
                return;
            }
            sp.busy = true;
            sp.next_seq
        };
        let result = segment::create_zeroed(&inner.dir, seq, inner.opts.segment_bytes);
        let Ok(mut sp) = inner.spares.state.lock() else {
            return;
        };
        sp.busy = false;
        match result {
            Ok(path) => sp.ready = Some((seq, path, false)),
            Err(e) => sp.error = Some(e.to_string()),
        }
        inner.spares.cond.notify_all();
    }
}

/// The future of [`Wal::append_async`].
pub struct AppendFuture<'a, P> {
    inner: &'a Inner,
    records: &'a [P],
    frame_len: Option<usize>,
    placed: Option<(u64, Appended)>,
}

impl<P: Payload> Future for AppendFuture<'_, P> {
    type Output = Result<Appended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = this.inner;
        let frame_len = match this.frame_len {
            Some(len) => len,
            None => match inner.check(this.records) {
                Ok(len) => *this.frame_len.insert(len),
                Err(e) => return Poll::Ready(Err(e)),
            },
        };
        let mut st = match inner.state.lock() {
            Ok(st) => st,
            Err(e) => return Poll::Ready(Err(lock_err(e))),
        };
        let (id, appended) = match this.placed {
            Some(placed) => placed,
            None => match inner.try_place(&mut st, this.records, frame_len) {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Some(placed)) => {
                    this.placed = Some(placed);
                    if !st.writing {
                        inner.work.notify_one();
                    }
                    placed
                }
                Ok(None) => {
                    register(&mut st.space_wakers, cx.waker());
                    return Poll::Pending;
                }
            },
        };
        if let Some(result) = durable_outcome(&st, id) {
            return Poll::Ready(result.map(|()| appended));
        }
        match st
            .durable_wakers
            .iter_mut()
            .find(|(_, w)| w.will_wake(cx.waker()))
        {
            Some(slot) => slot.0 = slot.0.min(id),
            None => st.durable_wakers.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

fn register(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.dir)
            .field("backend", &self.inner.backend_name)
            .finish_non_exhaustive()
    }
}
