//! [`WriteBatch`]: writes to many groups that become one atomic log append.

use super::{Entry, GroupId, HardState, SnapshotMeta};

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug)]
pub(super) enum BatchOp {
    Append(Vec<Entry>),
    HardState(HardState),
    SetSnapshot(SnapshotMeta),
    ApplySnapshot(SnapshotMeta),
    Compact(u64),
}

/// Writes to many groups that become one atomic log append.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    pub(super) ops: Vec<(GroupId, BatchOp)>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Appends consecutive `entries` to `group`, replacing its entries from the first one's
    /// index on. Entries at or below the group's compaction point are skipped (as etcd's
    /// MemoryStorage does); a first index beyond `last_index + 1` is an error.
    pub fn append(&mut self, group: GroupId, entries: Vec<Entry>) -> &mut Self {
        if !entries.is_empty() {
            self.ops.push((group, BatchOp::Append(entries)));
        }
        self
    }

    /// Sets `group`'s hard state.
    pub fn set_hard_state(&mut self, group: GroupId, hard_state: HardState) -> &mut Self {
        self.ops.push((group, BatchOp::HardState(hard_state)));
        self
    }

    /// Records that a snapshot (checkpoint) of `group` exists at `meta.index`; entries stay.
    pub fn set_snapshot(&mut self, group: GroupId, meta: SnapshotMeta) -> &mut Self {
        self.ops.push((group, BatchOp::SetSnapshot(meta)));
        self
    }

    /// Applies a snapshot received from a leader: every entry of `group` is dropped and the
    /// group continues after `meta.index`.
    pub fn apply_snapshot(&mut self, group: GroupId, meta: SnapshotMeta) -> &mut Self {
        self.ops.push((group, BatchOp::ApplySnapshot(meta)));
        self
    }

    /// Drops `group`'s entries up to and including `to` (log compaction after a snapshot),
    /// in the same append as the rest of the batch. `to` below the group's compaction point
    /// is skipped (compacted already, as etcd's `ErrCompacted` is ignored); `to` equal to
    /// it writes the compaction record again, at the head of the log (so that an idle group
    /// stops pinning an old segment); otherwise the entry at `to` must be durable and
    /// applied to the store when the batch is staged (its term goes into the record), and
    /// at most the last index.
    pub fn compact(&mut self, group: GroupId, to: u64) -> &mut Self {
        self.ops.push((group, BatchOp::Compact(to)));
        self
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
