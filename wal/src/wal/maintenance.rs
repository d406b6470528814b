//! Maintenance: suffix truncation and prefix purge, both crash-atomic through intent
//! files that recovery redoes.

use std::sync::Arc;
use std::sync::MutexGuard;

use super::batch::continuation_batch;
use super::group_commit::State;
use super::{Inner, lock_err};
use crate::error::{Error, Result};
use crate::format::{self, Lsn, SEGMENT_HEADER_BYTES};
use crate::marker::{PurgeIntent, TruncateIntent};
use crate::recovery::FRAME_READ_MAX;
use crate::segment::{INDEX_STRIDE_BYTES, SegmentView};

impl Inner {
    /// See [`super::Wal::truncate_after`].
    pub(super) fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        let _maintenance = self.maintenance.lock().map_err(lock_err)?;
        let mut st = self.quiesce()?;
        let result = self.truncate_locked(&mut st, lsn);
        if let Err(e) = &result {
            if !matches!(e, Error::OutOfRange { .. }) {
                self.poison(&mut st, format!("truncation failed: {e}"));
            }
        }
        st.paused = false;
        drop(st);
        self.space.notify_all();
        self.wake_space_tasks();
        result
    }

    /// See [`super::Wal::purge_before`].
    pub(super) fn purge_before(&self, lsn: Lsn) -> Result<usize> {
        let _maintenance = self.maintenance.lock().map_err(lock_err)?;
        let remove: Vec<u64> = {
            let views = self.segments.read().map_err(lock_err)?;
            views
                .windows(2)
                .take_while(|pair| pair[1].first_lsn <= lsn)
                .map(|pair| pair[0].seq)
                .collect()
        };
        if remove.is_empty() {
            return Ok(0);
        }
        let removed: Vec<Arc<SegmentView>> = {
            let mut views = self.segments.write().map_err(lock_err)?;
            let (gone, kept) = views.drain(..).partition(|v| remove.contains(&v.seq));
            *views = kept;
            gone
        };
        // Iterators made before may still hold these views: they stop reading them before
        // their files are recycled.
        for view in &removed {
            view.retire(0, "the segment was purged")?;
        }
        PurgeIntent {
            remove: remove.clone(),
        }
        .run(
            &self.dir,
            &mut |path| self.recycle_segment(path),
            self.opts.faults.as_deref(),
        )?;
        Ok(remove.len())
    }

    /// Holds appends back and waits until every accepted append is durable.
    pub(super) fn quiesce(&self) -> Result<MutexGuard<'_, State>> {
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

    pub(super) fn truncate_locked(&self, st: &mut State, lsn: Lsn) -> Result<()> {
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
            offset = view.skip_padding(offset)?;
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
                format::encode_frame(
                    &mut replacement,
                    view.seq,
                    info.first_lsn,
                    info.write_start,
                    &records,
                );
                kept_frame = Some(info.first_lsn);
            }
            break;
        }
        let dirty_end = format::align_up_u64(view.end_off()).min(view_capacity(view)?);
        // Readers still holding these views must not see the file change under them
        // (their maps are dropped, waiting for copies in progress), and get a clear error
        // for what is cut.
        view.retire(offset, "the segment was truncated")?;
        for removed in &views[at + 1..] {
            removed.retire(0, "the segment was removed by a truncation")?;
        }
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
        let fill = continuation_batch(buf, id, view.seq, view_capacity(view)?, new_end, keep_end);
        let old = std::mem::replace(&mut st.fill, fill);
        self.recycle(st, old);
        st.next_lsn = keep_end;
        st.index_next_off = next_index;
        Ok(())
    }
}

pub(super) fn view_capacity(view: &SegmentView) -> Result<u64> {
    let len = std::fs::metadata(&view.path)
        .map_err(|e| Error::io("reading metadata", &view.path, e))?
        .len();
    Ok(format::align_down_u64(len))
}
