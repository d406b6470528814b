//! The checkpointer: the background thread and [`super::Db::checkpoint`] write the memtable
//! as a checkpoint from an open snapshot while writers go on, then purge the log behind the
//! oldest checkpoint kept.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{DbError, Inner, SharedLog, lock_poisoned};
use crate::checkpoint::{CheckpointError, CheckpointMeta};
use crate::memtable::SnapshotInfo;

/// Entries a checkpoint copies from the memtable per read lock.
const CHECKPOINT_CHUNK_ENTRIES: usize = 1024;

/// How long the checkpoint thread sleeps between looks when it is not woken.
const CHECKPOINT_IDLE_WAIT: Duration = Duration::from_millis(200);

/// How long after a failed background checkpoint the next attempt waits.
const CHECKPOINT_RETRY_DELAY: Duration = Duration::from_secs(1);

impl<B: SharedLog> Inner<B> {
    /// The checkpoint thread: writes a checkpoint whenever one is due. It stops at shutdown
    /// and as soon as the store is poisoned (a poisoned store makes no checkpoints: its
    /// memory may be ahead of the log). A failed attempt is retried no sooner than
    /// `CHECKPOINT_RETRY_DELAY` later, however often writers signal that one is due.
    pub(super) fn checkpoint_loop(&self) {
        let mut retry_at: Option<Instant> = None;
        loop {
            if self.shutdown.load(Ordering::SeqCst) || self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let due = self.log_bytes_since_checkpoint.load(Ordering::Relaxed)
                >= self.options.checkpoint_log_bytes;
            let now = Instant::now();
            if retry_at.is_some_and(|at| now >= at) {
                retry_at = None;
            }
            if due && retry_at.is_none() {
                // A failure is not fatal here: the log still holds everything, a later
                // attempt retries, and `Db::checkpoint` reports errors to a caller.
                retry_at = match self.checkpoint() {
                    Ok(_) => None,
                    Err(_) => Some(now + CHECKPOINT_RETRY_DELAY),
                };
                continue;
            }
            let wait = retry_at.map_or(CHECKPOINT_IDLE_WAIT, |at| {
                at.saturating_duration_since(now).min(CHECKPOINT_IDLE_WAIT)
            });
            let Ok(g) = self.checkpoint_wake_lock.lock() else {
                return;
            };
            if self.shutdown.load(Ordering::SeqCst) || self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let _ = self.checkpoint_wake.wait_timeout(g, wait);
        }
    }

    pub(super) fn checkpoint(&self) -> Result<Option<CheckpointMeta>, DbError> {
        let result = self.try_checkpoint();
        if result.is_err() {
            self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub(super) fn try_checkpoint(&self) -> Result<Option<CheckpointMeta>, DbError> {
        let mut last = self.checkpoint_lock.lock().map_err(lock_poisoned)?;
        self.check_poison()?;
        // Open a snapshot of the memtable: writers go on, and the snapshot keeps the
        // previous version of whatever they overwrite, so nobody waits for a copy.
        let info = {
            let mut m = self.memtable.write().map_err(lock_poisoned)?;
            // Only this function opens snapshots, under `checkpoint_lock`; one left open by
            // a failed attempt is closed here.
            m.end_snapshot();
            m.begin_snapshot()
        };
        let Some(info) = info else {
            return Ok(None);
        };
        let result = self.write_snapshot(info, &mut last);
        if let Ok(mut m) = self.memtable.write() {
            m.end_snapshot();
        }
        result
    }

    /// Writes the open memtable snapshot as a checkpoint, chunk by chunk.
    pub(super) fn write_snapshot(
        &self,
        info: SnapshotInfo,
        last: &mut Option<u64>,
    ) -> Result<Option<CheckpointMeta>, DbError> {
        if *last == Some(info.applied_index) || info.applied_index == 0 {
            self.log_bytes_since_checkpoint.store(0, Ordering::Relaxed);
            return Ok(None);
        }
        // The snapshot may include a group whose append is still in flight: only durable
        // state may be checkpointed, or recovery would skip records that never reached the
        // log.
        self.wait_durable(info.revision)?;
        self.log_bytes_since_checkpoint.store(0, Ordering::Relaxed);
        let header = CheckpointMeta {
            index: info.applied_index,
            term: 0,
            revision: info.revision,
            entry_count: 0,
            conf_state: Vec::new(),
            app_state: Vec::new(),
        };
        let (_, meta) = self.checkpoints.write_with(header, &mut |sink| {
            let mut after: Option<Vec<u8>> = None;
            loop {
                // A short read lock per chunk: the leader can apply between chunks.
                let chunk = match self.memtable.read() {
                    Ok(m) => m.snapshot_chunk(after.as_deref(), CHECKPOINT_CHUNK_ENTRIES),
                    Err(_) => {
                        return Err(CheckpointError::BadSource {
                            reason: "memtable lock poisoned".into(),
                        });
                    }
                };
                let Some(tail) = chunk.last() else {
                    return Ok(());
                };
                after = Some(tail.key.clone());
                for kv in &chunk {
                    sink.push(&kv.key, &kv.value, kv.meta)?;
                }
            }
        })?;
        *last = Some(info.applied_index);
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        self.checkpoints.retain(self.options.checkpoints_kept)?;
        if let Some((oldest, _)) = self.checkpoints.list()?.first() {
            self.log
                .clone()
                .purge_before(oldest + 1)
                .map_err(|source| DbError::Log {
                    op: "purge",
                    source,
                })?;
        }
        Ok(Some(meta))
    }
}
