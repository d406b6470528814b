//! Group commit: appenders place frames into the filling batch; one writer at a time
//! writes a batch with one durable write and wakes its appenders.
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
use std::sync::Arc;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::batch::{Batch, continuation_batch, new_segment_batch};
use super::spares::{take_spare, want_spare};
use super::sys::futex;
use super::{Appended, Inner, SEALED_BATCHES_MAX, lock_err};
use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{self, BLOCK_BYTES, Lsn, Payload, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::io::WriteIo;
use crate::recovery::FRAME_READ_MAX;
use crate::segment::{self, INDEX_STRIDE_BYTES, SegmentBytes, SegmentView};

/// Bounds of group commit's adaptive wait for appenders to refill a batch.
const LINGER_MIN: Duration = Duration::from_micros(10);
const LINGER_MAX: Duration = Duration::from_micros(100);

pub(super) struct State {
    pub(super) poisoned: Option<String>,
    pub(super) closing: bool,
    /// Appends are held back while a truncation runs.
    pub(super) paused: bool,
    pub(super) fill: Batch,
    pub(super) sealed: VecDeque<Batch>,
    pub(super) writing: bool,
    pub(super) next_lsn: Lsn,
    pub(super) next_batch_id: u64,
    /// Every batch with an id up to this one is durable.
    pub(super) durable_batch_id: u64,
    pub(super) next_seg_seq: u64,
    /// The next frame at or after this offset of the active segment goes into the index.
    pub(super) index_next_off: u64,
    /// Appends in the last write: how many appenders are active, roughly.
    pub(super) last_round_appends: u64,
    /// Moving average of how long a write takes, in nanoseconds.
    pub(super) write_ewma_ns: u64,
    /// While a writer lingers for the batch to fill: the append count it waits for.
    pub(super) linger_target: u64,
    pub(super) pool: Vec<AlignedBuf>,
    pub(super) durable_wakers: Vec<(u64, Waker)>,
    pub(super) space_wakers: Vec<Waker>,
}

/// The outcome for batch `id`, once there is one.
pub(super) fn durable_outcome(st: &State, id: u64) -> Option<Result<()>> {
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

impl Inner {
    /// Checks an append's sizes and returns its frame length.
    pub(super) fn check<P: Payload>(&self, records: &[P]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let max = self.opts.record_bytes_max;
        if let Some(len) = records.iter().map(P::encoded_len).find(|&len| len > max) {
            return Err(Error::RecordTooLarge { len, max });
        }
        let frame = format::frame_len(records.iter().map(P::encoded_len));
        if frame > self.opts.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: frame,
                max: self.opts.batch_bytes_max,
            });
        }
        Ok(frame)
    }

    pub(super) fn take_buf(&self, st: &mut State) -> AlignedBuf {
        st.pool
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(self.opts.batch_bytes_max + 2 * BLOCK_BYTES))
    }

    /// Encodes the frame into the filling batch if there is room: `Some((batch id, where))`,
    /// or `None` when the caller must wait for room.
    pub(super) fn try_place<P: Payload>(
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
            fill.file_offset,
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
    pub(super) fn next_batch(&self, st: &mut State) -> Option<Batch> {
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
        let next = continuation_batch(
            buf,
            id,
            fill.seq,
            fill.capacity,
            fill.end_offset(),
            fill.end_lsn,
        );
        Some(std::mem::replace(&mut st.fill, next))
    }

    pub(super) fn poison(&self, st: &mut State, cause: String) {
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

    pub(super) fn wake_space_tasks(&self) {
        let wakers = match self.state.lock() {
            Ok(mut st) => std::mem::take(&mut st.space_wakers),
            Err(_) => return,
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Returns a written batch's buffer to the pool. It is not cleared: every byte a write
    /// covers is written first (frames with their padding, the zeroed rest of the last
    /// block, the header block of a new segment).
    pub(super) fn recycle(&self, st: &mut State, batch: Batch) {
        if st.pool.len() < SEALED_BATCHES_MAX + 2 {
            st.pool.push(batch.buf);
        }
    }
}

/// The writer thread: writes batches nobody else is writing. Blocking appenders write
/// their own batch when no write is in flight (see [`Inner::write_round`]); this thread
/// serves async appenders and picks up work left when an appender's own batch is done.
pub(super) fn writer_loop(inner: &Inner) {
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

pub(super) fn parity(batch_id: u64) -> usize {
    usize::from(batch_id % 2 == 1)
}

pub(super) fn has_work(st: &State) -> bool {
    !st.sealed.is_empty() || st.fill.appends > 0
}

/// The writer's I/O: the backend and the open segment. Only the thread that set
/// `State::writing` locks it, so it is never contended.
pub(super) struct WriterIo {
    pub(super) io: Box<dyn WriteIo>,
    pub(super) current: Option<(u64, File)>,
}

impl Inner {
    /// Group commit's adaptive wait. When the last write carried several appends and the
    /// filling batch has fewer, the appenders of that write are most likely about to append
    /// again (they were just woken): wait up to half a write's time for them, holding the
    /// writer's role so that nobody starts a write with a fraction of them. A lone appender
    /// never waits.
    pub(super) fn linger<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> Result<MutexGuard<'a, State>> {
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
    pub(super) fn write_round<'a>(
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
pub(super) enum Writer {
    /// The writer thread: writes through the backend (io_uring or pwrite).
    Thread,
    /// A blocking appender writing its own batch because no write was in flight. It is
    /// blocked anyway, so it makes the `pwrite` itself on the `O_DSYNC` file: handing the
    /// batch to the writer thread and back would cost two context switches. (Measured
    /// here, a ring shared between threads also delivered completions up to a scheduler
    /// tick late, so the ring stays with the writer thread that created it.)
    Appender,
}

pub(super) fn write_batch(
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
                .before_write(file, batch.seq, bytes, batch.file_offset, batch.appends)
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
pub(super) fn publish(inner: &Inner, batch: &Batch) -> Result<()> {
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
pub(super) fn seal(inner: &Inner, seq: u64) -> Result<()> {
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
