//! The per-group index: where each live entry of a group is in the log, and the records
//! the group pins.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{HardState, SnapshotMeta};
use crate::log_backend::FramePos;

/// Where one entry lives.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) term: u64,
    pub(super) lsn: u64,
    /// Payload length in bytes.
    pub(super) len: u64,
    /// The payload, while it is in the cache.
    pub(super) data: Option<Arc<[u8]>>,
    /// The frame holding the entry, when known: for entries written since the store opened
    /// (the log's scan in recovery gives no frame positions).
    pub(super) frame: Option<FramePos>,
}

/// A group's index and state.
///
/// Invariant outside recovery: `start == compacted_index + 1` (the entries follow the
/// compaction point without a hole). Recovery may break it temporarily, see `State::apply`.
#[derive(Clone, Debug, Default)]
pub(super) struct GroupLog {
    /// Index of the last dropped entry (the "dummy" entry); first index is one more.
    pub(super) compacted_index: u64,
    /// Term of the entry at `compacted_index`.
    pub(super) compacted_term: u64,
    /// Index of `entries[0]` (meaningless while `entries` is empty).
    pub(super) start: u64,
    /// Live entries; `entries[k]` has index `start + k`, LSNs ascending.
    pub(super) entries: VecDeque<Slot>,
    pub(super) hard_state: HardState,
    pub(super) snapshot: Option<SnapshotMeta>,
    /// LSNs of the records that set the compaction point, hard state and snapshot.
    pub(super) compact_lsn: Option<u64>,
    pub(super) hs_lsn: Option<u64>,
    pub(super) snapshot_lsn: Option<u64>,
    /// During recovery: a record that contradicts the group's state (LSN, why). That is
    /// expected only of records a later `Reset` supersedes, so the group ignores everything
    /// until a `Reset`; a group still broken at the end of the scan is corruption.
    pub(super) broken: Option<(u64, String)>,
}

impl GroupLog {
    pub(super) fn first_index(&self) -> u64 {
        self.compacted_index + 1
    }

    pub(super) fn last_index(&self) -> u64 {
        if self.entries.is_empty() {
            self.compacted_index
        } else {
            self.start + self.entries.len() as u64 - 1
        }
    }

    /// Position of `index` in `entries`, if it is there.
    pub(super) fn slot_of(&self, index: u64) -> Option<usize> {
        if self.entries.is_empty() || index < self.start {
            return None;
        }
        usize::try_from(index - self.start)
            .ok()
            .filter(|&k| k < self.entries.len())
    }

    /// The oldest LSN this group needs.
    pub(super) fn pin(&self) -> Option<u64> {
        [
            self.entries.front().map(|s| s.lsn),
            self.compact_lsn,
            self.hs_lsn,
            self.snapshot_lsn,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
