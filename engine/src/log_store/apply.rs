//! Record application and the entry cache: how one log record changes the in-memory
//! state, the same code for live writes and for recovery.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::index::{GroupLog, Slot};
use super::{GroupId, LogStoreError};
use crate::log_backend::FramePos;
use crate::log_record::LogRecord;

/// The in-memory side of the store, apart from the log, so recovery can fill it while the
/// log is scanned.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) groups: BTreeMap<GroupId, GroupLog>,
    /// Cached entries in insertion order, for FIFO eviction: (group, index, lsn). Items whose
    /// entry is gone or was re-written are skipped.
    pub(super) cache_fifo: VecDeque<(GroupId, u64, u64)>,
    pub(super) cache_bytes: usize,
    pub(super) cache_bytes_max: usize,
    pub(super) cache_entries_max: usize,
}

impl State {
    /// Removes the entries from position `from` on, releasing their cached bytes.
    pub(super) fn truncate(cache_bytes: &mut usize, g: &mut GroupLog, from: usize) {
        release(cache_bytes, g.entries.drain(from.min(g.entries.len())..));
    }

    /// Applies one record, live or during recovery.
    ///
    /// Recovery may start in the middle of a group's history (older segments were purged),
    /// so it sees records that only made sense with what came before: entries that a later
    /// truncation, `Compact` or `Reset` supersedes. It therefore accepts an entry that does
    /// not follow the group's entries by restarting the entries there (`start` may then run
    /// ahead of `compacted_index + 1`); the records that the group still pinned when the log
    /// was purged restore the invariant, and `LogStore::open` checks it at the end.
    pub(super) fn apply(
        &mut self,
        lsn: u64,
        rec: LogRecord,
        origin: Origin,
    ) -> Result<(), LogStoreError> {
        let (recovering, frame) = match origin {
            Origin::Live(frame) => (false, Some(frame)),
            Origin::Recovery => (true, None),
        };
        let group = rec.group();
        if let LogRecord::Remove { .. } = rec {
            if let Some(g) = self.groups.remove(&group) {
                release(&mut self.cache_bytes, g.entries);
            }
            return Ok(());
        }
        let g = self.groups.entry(group).or_default();
        if g.broken.is_some() && !matches!(rec, LogRecord::Reset { .. }) {
            return Ok(());
        }
        match rec {
            LogRecord::Entry { entry, .. } => {
                let i = entry.index;
                let fits = if g.entries.is_empty() {
                    i == g.compacted_index + 1
                } else {
                    i >= g.start && i <= g.last_index() + 1
                };
                if fits {
                    let keep = g.slot_of(i).unwrap_or(g.entries.len());
                    Self::truncate(&mut self.cache_bytes, g, keep);
                } else if recovering && i >= 1 {
                    Self::truncate(&mut self.cache_bytes, g, 0);
                } else {
                    return Err(LogStoreError::Corruption {
                        lsn,
                        reason: format!(
                            "group {group}: entry {i} does not follow last index {}",
                            g.last_index()
                        ),
                    });
                }
                if g.entries.is_empty() {
                    g.start = i;
                }
                let len = entry.data.len();
                let cache = len <= self.cache_bytes_max && self.cache_entries_max > 0;
                g.entries.push_back(Slot {
                    term: entry.term,
                    lsn,
                    len: len as u64,
                    data: cache.then(|| Arc::from(entry.data)),
                    frame,
                });
                if cache {
                    self.cache_bytes += len;
                    self.cache_fifo.push_back((group, i, lsn));
                    self.evict();
                }
            }
            LogRecord::HardState { hard_state, .. } => {
                g.hard_state = hard_state;
                g.hs_lsn = Some(lsn);
            }
            LogRecord::Compact { index, term, .. } => {
                // Compaction only moves forward between resets; a step back is corruption,
                // or in recovery a record that a later Reset supersedes. The same point
                // written again (with its term) only moves the record forward in the log,
                // so that it no longer pins an old segment.
                let backwards = index < g.compacted_index
                    || (!recovering
                        && index == g.compacted_index
                        && index > 0
                        && term != g.compacted_term);
                if backwards {
                    let reason = format!(
                        "group {group}: compaction to {index} is behind {}",
                        g.compacted_index
                    );
                    if !recovering {
                        return Err(LogStoreError::Corruption { lsn, reason });
                    }
                    g.broken = Some((lsn, reason));
                    return Ok(());
                }
                // Drop every entry at or below `index`.
                let drop_n = match g.slot_of(index) {
                    Some(k) => k + 1,
                    None if !g.entries.is_empty() && index >= g.start => g.entries.len(),
                    None => 0,
                };
                release(&mut self.cache_bytes, g.entries.drain(..drop_n));
                if !g.entries.is_empty() {
                    g.start = g.start.max(index + 1);
                }
                g.compacted_index = index;
                g.compacted_term = term;
                g.compact_lsn = Some(lsn);
            }
            LogRecord::Snapshot { meta, .. } => {
                g.snapshot = Some(meta);
                g.snapshot_lsn = Some(lsn);
            }
            // Handled before the group is looked up.
            LogRecord::Remove { .. } => {}
            LogRecord::Reset {
                index,
                term,
                hard_state,
                snapshot,
                ..
            } => {
                Self::truncate(&mut self.cache_bytes, g, 0);
                g.compacted_index = index;
                g.compacted_term = term;
                g.compact_lsn = Some(lsn);
                g.hard_state = hard_state;
                g.hs_lsn = Some(lsn);
                g.snapshot_lsn = snapshot.as_ref().map(|_| lsn);
                g.snapshot = snapshot;
                g.broken = None;
            }
        }
        Ok(())
    }

    /// Drops cached payloads, oldest first, until the cache is within its limits.
    pub(super) fn evict(&mut self) {
        while self.cache_bytes > self.cache_bytes_max
            || self.cache_fifo.len() > self.cache_entries_max
        {
            let Some((group, index, lsn)) = self.cache_fifo.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            let Some(k) = g.slot_of(index) else {
                continue;
            };
            if let Some(slot) = g.entries.get_mut(k) {
                if slot.lsn == lsn {
                    if let Some(d) = slot.data.take() {
                        self.cache_bytes -= d.len();
                    }
                }
            }
        }
    }
}

/// Where a record being applied comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Origin {
    /// A write of this session, durable in the frame at this position.
    Live(FramePos),
    /// Recovery's scan of the log, which may meet records a later one supersedes, and
    /// gives no frame positions.
    Recovery,
}

/// Releases the cached payloads of `slots`, which are leaving the index.
fn release(cache_bytes: &mut usize, slots: impl IntoIterator<Item = Slot>) {
    for s in slots {
        if let Some(d) = s.data {
            *cache_bytes -= d.len();
        }
    }
}
