//! The read-only view of durable log state the core consults, and an in-memory implementation.
//!
//! The core never writes to storage: it hands the host append work in a
//! [`Ready`](super::raw_node::Ready) and the host writes it. The trait is how the core reads
//! back what was made durable.

use super::message::{
    ConfState, Entry, HardState, Index, Snapshot, SnapshotMetadata, Term, count_within,
};

/// Why storage could not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is below the snapshot: it was compacted away.
    Compacted {
        /// The index asked for.
        index: Index,
        /// The index of the snapshot, the lowest one still answered for.
        snapshot_index: Index,
    },
    /// The requested index is above the last stored entry.
    Unavailable {
        /// The index asked for.
        index: Index,
        /// The last stored index.
        last_index: Index,
    },
    /// The range asked for ends before it starts.
    InvalidRange {
        /// The first index of the range.
        lo: Index,
        /// The index after the range.
        hi: Index,
    },
    /// A snapshot is being produced; ask again later.
    SnapshotTemporarilyUnavailable,
    /// A snapshot older than the one stored was offered.
    SnapshotOutOfDate {
        /// The index of the snapshot offered.
        index: Index,
        /// The index of the snapshot stored.
        stored_index: Index,
    },
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Compacted {
                index,
                snapshot_index,
            } => write!(
                f,
                "index {index} was compacted away (the snapshot is at {snapshot_index})"
            ),
            StorageError::Unavailable { index, last_index } => write!(
                f,
                "index {index} is beyond the last stored entry, {last_index}"
            ),
            StorageError::InvalidRange { lo, hi } => {
                write!(f, "the range [{lo}, {hi}) ends before it starts")
            }
            StorageError::SnapshotTemporarilyUnavailable => {
                write!(f, "a snapshot is being produced; ask again later")
            }
            StorageError::SnapshotOutOfDate {
                index,
                stored_index,
            } => write!(
                f,
                "the snapshot offered at {index} is older than the one stored at {stored_index}"
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// Durable log state, read by the consensus core.
///
/// Contract:
/// - The stored log is the contiguous range `[first_index(), last_index()]`, preceded by a
///   snapshot (possibly the empty one at index 0) whose index is `first_index() - 1`. When the
///   log is empty `last_index() == first_index() - 1`.
/// - `term(i)` answers for `first_index() - 1 <= i <= last_index()` (the lower end from the
///   snapshot metadata); below that it returns [`StorageError::Compacted`], above it
///   [`StorageError::Unavailable`], each naming the index asked for and the bound.
/// - `entries(lo, hi, bytes_max)` returns entries `[lo, hi)` in order, cut at `bytes_max` of
///   payload but always at least one entry when the range is non-empty. The returned vector is
///   owned by the caller.
/// - Everything returned is durable: the host writes a Ready's append work into storage and
///   only then acknowledges it. Entries the core still holds as unstable may or may not be
///   visible here yet; the core never asks storage for them.
/// - Errors other than the ones above must not be returned; a storage that failed to persist
///   is poisoned and the host stops the group rather than feeding the core a partial view.
pub trait LogStorage {
    /// The durable hard state and the membership as of the last snapshot.
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries `[lo, hi)`, at most `bytes_max` of payload but at least one.
    fn entries(&self, lo: Index, hi: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// The index of the first entry that is still stored (snapshot index + 1).
    fn first_index(&self) -> Index;
    /// The index of the last stored entry (the snapshot index if there is none).
    fn last_index(&self) -> Index;
    /// The latest snapshot, to send to a follower that lags behind the compacted log.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// An in-memory [`LogStorage`] for tests, simulations and benchmarks; it also has the write
/// operations a host performs.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after `snapshot.metadata.index`, contiguous.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty storage whose initial membership is `voters` and `learners`.
    pub fn new_with_conf(voters: &[u64], learners: &[u64]) -> MemStorage {
        let mut storage = MemStorage::default();
        storage.snapshot.metadata.conf_state = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        storage
    }

    /// Records the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Appends entries, replacing any stored suffix that starts at or after the first new one.
    /// Entries at or below the snapshot are skipped; a gap after the last entry is refused.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let skip = self.prepare_append(entries)?;
        self.entries.extend_from_slice(&entries[skip..]);
        Ok(())
    }

    /// Like [`MemStorage::append`], but moves the entries in instead of cloning them.
    pub fn append_owned(&mut self, mut entries: Vec<Entry>) -> Result<(), StorageError> {
        let skip = self.prepare_append(&entries)?;
        entries.drain(..skip);
        self.entries.append(&mut entries);
        Ok(())
    }

    /// Checks an append and truncates the suffix it replaces; returns how many leading
    /// entries are already covered by the snapshot and must be skipped.
    fn prepare_append(&mut self, entries: &[Entry]) -> Result<usize, StorageError> {
        let Some(first_new) = entries.first() else {
            return Ok(0);
        };
        let snap_index = self.snapshot.metadata.index;
        let skip = usize::try_from(snap_index.saturating_sub(first_new.index - 1))
            .unwrap_or(usize::MAX)
            .min(entries.len());
        let Some(first) = entries.get(skip) else {
            return Ok(skip);
        };
        if first.index > self.last_index() + 1 {
            // The entries would leave a gap after the last stored one.
            return Err(StorageError::Unavailable {
                index: first.index,
                last_index: self.last_index(),
            });
        }
        let keep = usize::try_from(first.index - snap_index - 1).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        Ok(skip)
    }

    /// Replaces the whole log with a snapshot (one the leader sent).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        if snapshot.metadata.index < self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: snapshot.metadata.index,
                stored_index: self.snapshot.metadata.index,
            });
        }
        self.hard_state.term = self.hard_state.term.max(snapshot.metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(snapshot.metadata.index);
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    /// Records a snapshot of the local state machine at `index` (which must be stored) and
    /// drops the entries it covers.
    pub fn compact(
        &mut self,
        index: Index,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let snap_index = self.snapshot.metadata.index;
        if index <= snap_index {
            return Err(StorageError::SnapshotOutOfDate {
                index,
                stored_index: snap_index,
            });
        }
        let term = self.term(index)?;
        let drop = usize::try_from(index - snap_index).unwrap_or(usize::MAX);
        self.entries.drain(..drop);
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    /// The snapshot metadata currently stored.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot.metadata
    }
}

impl LogStorage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        (self.hard_state, self.snapshot.metadata.conf_state.clone())
    }

    fn entries(&self, lo: Index, hi: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if lo > hi {
            return Err(StorageError::InvalidRange { lo, hi });
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted {
                index: lo,
                snapshot_index: self.snapshot.metadata.index,
            });
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable {
                index: hi - 1,
                last_index: self.last_index(),
            });
        }
        let base = self.snapshot.metadata.index + 1;
        let start = usize::try_from(lo - base).unwrap_or(usize::MAX);
        let end = usize::try_from(hi - base).unwrap_or(usize::MAX);
        let range = &self.entries[start..end];
        Ok(range[..count_within(range, bytes_max)].to_vec())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.metadata;
        if index < snap.index {
            return Err(StorageError::Compacted {
                index,
                snapshot_index: snap.index,
            });
        }
        if index == snap.index {
            return Ok(snap.term);
        }
        let offset = usize::try_from(index - snap.index - 1).unwrap_or(usize::MAX);
        self.entries
            .get(offset)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    fn first_index(&self) -> Index {
        self.snapshot.metadata.index + 1
    }

    fn last_index(&self) -> Index {
        self.snapshot.metadata.index + self.entries.len() as u64
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_refuses_gaps() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        s.append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(
            s.append(&[ent(5, 2)]),
            Err(StorageError::Unavailable {
                index: 5,
                last_index: 2
            })
        );
        s.compact(2, ConfState::default(), vec![]).unwrap();
        assert_eq!(s.first_index(), 3);
        let compacted = StorageError::Compacted {
            index: 1,
            snapshot_index: 2,
        };
        assert_eq!(s.term(1), Err(compacted));
        assert_eq!(
            compacted.to_string(),
            "index 1 was compacted away (the snapshot is at 2)"
        );
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(
            s.entries(2, 3, u64::MAX),
            Err(StorageError::Compacted {
                index: 2,
                snapshot_index: 2
            })
        );
        assert_eq!(
            s.entries(3, 2, u64::MAX),
            Err(StorageError::InvalidRange { lo: 3, hi: 2 })
        );
        s.append(&[ent(1, 1), ent(2, 2), ent(3, 2)]).unwrap();
        assert_eq!(s.last_index(), 3);
    }

    #[test]
    fn entries_respects_byte_limit_but_returns_one() {
        let mut s = MemStorage::default();
        let big = |i| Entry {
            index: i,
            term: 1,
            data: vec![0; 10].into(),
            ..Entry::default()
        };
        s.append(&[big(1), big(2), big(3)]).unwrap();
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 20).unwrap().len(), 2);
        assert_eq!(s.entries(1, 4, u64::MAX).unwrap().len(), 3);
    }
}
