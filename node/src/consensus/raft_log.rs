//! The replicated log as one node sees it: durable entries in storage, the unstable tail, and
//! the commit and apply cursors.

use super::log_unstable::Unstable;
use super::message::{Entry, EntryId, EntryType, Index, Snapshot, Term, count_within};
use super::storage::{LogStorage, StorageError};

/// Refusal to overwrite a committed entry: the append came from a faulty or misrouted leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedConflict {
    /// The first index where the entries conflict with the log.
    pub index: Index,
}

impl std::fmt::Display for CommittedConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the appended entries conflict with committed entry {}",
            self.index
        )
    }
}

impl std::error::Error for CommittedConflict {}

/// A node's log.
///
/// Invariant: `applied <= applying <= committed <= last_index()`; also `committed` entries are
/// never truncated.
#[derive(Debug)]
pub struct RaftLog<S> {
    /// Durable entries and snapshot.
    pub storage: S,
    /// Entries and snapshot not yet durable.
    pub unstable: Unstable,
    /// The highest index known to be stored on a quorum.
    pub committed: Index,
    /// The highest index handed to the state machine; `applied <= applying <= committed`.
    pub applying: Index,
    /// The highest index the state machine reported applied.
    pub applied: Index,
    /// The most payload bytes of committed entries one Ready hands to the state machine.
    pub apply_bytes_max: u64,
}

impl<S: LogStorage> RaftLog<S> {
    /// A log over `storage` with everything in storage considered durable and the cursors at
    /// the snapshot.
    pub fn new(storage: S, apply_bytes_max: u64) -> RaftLog<S> {
        let first = storage.first_index();
        let last = storage.last_index();
        RaftLog {
            storage,
            unstable: Unstable::new(last + 1),
            committed: first - 1,
            applying: first - 1,
            applied: first - 1,
            apply_bytes_max,
        }
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.applied <= self.applying,
            "{} {}",
            self.applied,
            self.applying
        );
        debug_assert!(
            self.applying <= self.committed,
            "{} {}",
            self.applying,
            self.committed
        );
        debug_assert!(self.committed <= self.last_index());
    }

    /// The first index still held (after the latest snapshot).
    pub fn first_index(&self) -> Index {
        self.unstable
            .maybe_first_index()
            .unwrap_or_else(|| self.storage.first_index())
    }

    /// The index of the last entry.
    pub fn last_index(&self) -> Index {
        self.unstable
            .maybe_last_index()
            .unwrap_or_else(|| self.storage.last_index())
    }

    /// The id of the last entry.
    pub fn last_entry_id(&self) -> EntryId {
        let index = self.last_index();
        // The last index always has a term: it is an entry or the snapshot.
        EntryId {
            index,
            term: self.term(index).unwrap_or(0),
        }
    }

    /// The term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if let Some(term) = self.unstable.maybe_term(index) {
            return Ok(term);
        }
        if index < self.first_index() - 1 {
            return Err(StorageError::Compacted {
                index,
                snapshot_index: self.first_index() - 1,
            });
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            });
        }
        self.storage.term(index)
    }

    /// Whether the entry at `index` has term `term`.
    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Raft §5.4.1: a log is at least as up to date as another if its last term is higher, or
    /// equal with an index at least as high.
    pub fn is_up_to_date(&self, candidate: EntryId) -> bool {
        let mine = self.last_entry_id();
        candidate.term > mine.term || (candidate.term == mine.term && candidate.index >= mine.index)
    }

    /// The index of the first entry in `entries` that is absent or has a different term here,
    /// or 0 if all are present.
    pub fn find_conflict(&self, entries: &[Entry]) -> Index {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// For fast backtracking: the largest index `<= index` whose term is `<= term`, with that
    /// term. The leader can skip every index above it in one round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Ok(t) if t > term && index > 0 => index -= 1,
                Ok(t) => return (index, t),
                Err(_) => return (index, 0),
            }
        }
    }

    /// Appends `entries` the leader of `leader_term` sent after (`index`, `log_term`) if that
    /// entry matches, then advances the commit index to `min(committed, last new index)`.
    /// Returns the last new index, `Ok(None)` on a mismatch, or `Err` if the entries would
    /// overwrite committed ones.
    pub fn maybe_append(
        &mut self,
        leader_term: Term,
        index: Index,
        log_term: Term,
        committed: Index,
        mut entries: Vec<Entry>,
    ) -> Result<Option<Index>, CommittedConflict> {
        if !self.match_term(index, log_term) {
            return Ok(None);
        }
        let last_new = index + entries.len() as u64;
        let conflict = self.find_conflict(&entries);
        if conflict != 0 {
            if conflict <= self.committed {
                return Err(CommittedConflict { index: conflict });
            }
            let start = usize::try_from(conflict - index - 1).unwrap_or(usize::MAX);
            entries.drain(..start);
            self.append(leader_term, entries);
        }
        self.commit_to(committed.min(last_new));
        Ok(Some(last_new))
    }

    /// Appends `entries` of the leader of `leader_term` (contiguous, starting at or below
    /// `last_index() + 1` and above the commit index) and returns the new last index.
    pub fn append(&mut self, leader_term: Term, entries: Vec<Entry>) -> Index {
        if let Some(first) = entries.first() {
            debug_assert!(first.index > self.committed);
            self.unstable.truncate_and_append(leader_term, entries);
        }
        self.last_index()
    }

    /// Moves the commit index forward to `to` (never backward, never past the last entry).
    pub fn commit_to(&mut self, to: Index) {
        if to > self.committed && to <= self.last_index() {
            self.committed = to;
        }
        self.check_invariants();
    }

    /// Commits `index` if it is in `term` (Raft §5.4.2: only entries of the leader's current
    /// term are committed by counting replicas).
    pub fn maybe_commit(&mut self, index: Index, term: Term) -> bool {
        if index > self.committed && self.match_term(index, term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Records that the state machine applied everything up to `index`.
    pub fn applied_to(&mut self, index: Index) -> bool {
        if index <= self.applied || index > self.committed {
            return false;
        }
        self.applied = index;
        self.applying = self.applying.max(index);
        self.check_invariants();
        true
    }

    /// Records that entries up to `index` were handed to the state machine.
    pub fn accept_applying(&mut self, index: Index) {
        debug_assert!(index <= self.committed);
        self.applying = self.applying.max(index);
        self.check_invariants();
    }

    /// The highest index that may be handed to the state machine: committed and, because an
    /// entry must not be applied before it is durable locally, below the unstable part.
    fn max_appliable_index(&self) -> Index {
        self.committed.min(self.unstable.offset - 1)
    }

    /// Whether committed entries are waiting to be handed to the state machine.
    pub fn has_next_committed_entries(&self) -> bool {
        !self.has_next_or_in_progress_snapshot() && self.applying < self.max_appliable_index()
    }

    /// The committed, locally durable entries not yet handed to the state machine.
    pub fn next_committed_entries(&self) -> Vec<Entry> {
        if !self.has_next_committed_entries() {
            return Vec::new();
        }
        self.slice(
            self.applying + 1,
            self.max_appliable_index() + 1,
            self.apply_bytes_max,
        )
        .unwrap_or_default()
    }

    /// Whether a snapshot is unstable (waiting or being written). Entries are not applied
    /// meanwhile because the snapshot replaces the state machine.
    pub fn has_next_or_in_progress_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some()
    }

    /// Whether committed but unapplied entries include a membership change; a node must not
    /// campaign then, because its view of the membership is about to change.
    pub fn has_unapplied_conf_change(&self) -> bool {
        let mut lo = self.applied + 1;
        let hi = self.committed + 1;
        while lo < hi {
            let Ok(batch) = self.slice(lo, hi, 1 << 20) else {
                return true;
            };
            if batch.iter().any(|e| e.entry_type == EntryType::ConfChange) {
                return true;
            }
            lo += batch.len() as u64;
            if batch.is_empty() {
                break;
            }
        }
        false
    }

    /// Marks entries up to `id` durable unless the acknowledgement is stale (see
    /// [`Unstable::stable_to`]).
    pub fn stable_to(&mut self, accepted_term: Term, id: EntryId) -> bool {
        self.unstable.stable_to(accepted_term, id)
    }

    /// Marks the snapshot at `index` durable.
    pub fn stable_snap_to(&mut self, index: Index) -> bool {
        self.unstable.stable_snap_to(index)
    }

    /// The latest snapshot: the unstable one if any, else the storage's.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.storage.snapshot(),
        }
    }

    /// Replaces the log with `snapshot` from the leader of `leader_term`; the snapshot's index
    /// becomes committed.
    pub fn restore(&mut self, leader_term: Term, snapshot: Snapshot) {
        self.committed = snapshot.metadata.index;
        self.unstable.restore(leader_term, snapshot);
        self.check_invariants();
    }

    /// Entries from `index` to the end, at most `bytes_max` of payload (at least one entry).
    pub fn entries(&self, index: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, bytes_max)
    }

    /// Entries `[lo, hi)` from storage and the unstable part, at most `bytes_max` of payload
    /// (at least one entry when the range is non-empty).
    pub fn slice(&self, lo: Index, hi: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if lo > hi {
            return Err(StorageError::InvalidRange { lo, hi });
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted {
                index: lo,
                snapshot_index: self.first_index() - 1,
            });
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable {
                index: hi - 1,
                last_index: self.last_index(),
            });
        }
        if lo == hi {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if lo < offset {
            out = self.storage.entries(lo, hi.min(offset), bytes_max)?;
            let got = lo + out.len() as u64;
            if got < hi.min(offset) || hi <= offset {
                return Ok(out);
            }
        }
        if hi > offset {
            let used: u64 = out.iter().map(Entry::payload_bytes).sum();
            let part = self.unstable.slice(lo.max(offset), hi);
            if out.is_empty() {
                out = part[..count_within(part, bytes_max)].to_vec();
            } else {
                // Storage entries came first; unstable ones join only within the budget.
                let budget = bytes_max.saturating_sub(used);
                let mut bytes = 0u64;
                let n = part
                    .iter()
                    .take_while(|e| {
                        bytes += e.payload_bytes();
                        bytes <= budget
                    })
                    .count();
                out.extend_from_slice(&part[..n]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::storage::MemStorage;

    fn ents(terms: &[(u64, u64)]) -> Vec<Entry> {
        terms
            .iter()
            .map(|&(index, term)| Entry {
                index,
                term,
                ..Entry::default()
            })
            .collect()
    }

    #[test]
    fn maybe_append_truncates_conflicts_and_refuses_committed_overwrite() {
        let mut log = RaftLog::new(MemStorage::default(), u64::MAX);
        log.append(2, ents(&[(1, 1), (2, 1), (3, 2)]));
        assert_eq!(
            log.maybe_append(3, 1, 1, 2, ents(&[(2, 1), (3, 3)])),
            Ok(Some(3))
        );
        assert_eq!(log.term(3), Ok(3));
        assert_eq!(log.committed, 2);
        assert_eq!(log.maybe_append(3, 3, 2, 3, Vec::new()), Ok(None));
        assert_eq!(
            log.maybe_append(9, 1, 1, 3, ents(&[(2, 9)])),
            Err(CommittedConflict { index: 2 })
        );
    }

    #[test]
    fn find_conflict_by_term_skips_higher_terms() {
        let mut log = RaftLog::new(MemStorage::default(), u64::MAX);
        log.append(5, ents(&[(1, 1), (2, 1), (3, 4), (4, 4), (5, 5)]));
        assert_eq!(log.find_conflict_by_term(5, 3), (2, 1));
        assert_eq!(log.find_conflict_by_term(9, 4), (4, 4));
        assert_eq!(log.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn committed_entries_wait_for_local_durability() {
        let mut log = RaftLog::new(MemStorage::default(), u64::MAX);
        log.append(1, ents(&[(1, 1), (2, 1)]));
        log.commit_to(2);
        assert!(log.next_committed_entries().is_empty());
        log.storage.append(&ents(&[(1, 1)])).unwrap();
        log.stable_to(1, EntryId { index: 1, term: 1 });
        assert_eq!(log.next_committed_entries().len(), 1);
        assert_eq!(log.slice(1, 3, u64::MAX).unwrap().len(), 2);
    }

    #[test]
    fn entries_of_previous_terms_are_not_committed_by_counting_replicas() {
        // §5.4.2: "Raft never commits log entries from previous terms by counting replicas. Only
        // log entries from the leader's current term are committed by counting replicas; once an
        // entry from the current term has been committed in this way, then all prior entries are
        // committed indirectly because of the Log Matching Property."
        // (Moved from tests/paper.rs: it needs the log itself, which is not public.)
        let mut log = RaftLog::new(MemStorage::default(), u64::MAX);
        log.append(3, ents(&[(1, 1), (2, 2)]));
        assert!(
            !log.maybe_commit(2, 3),
            "index 2 is from term 2; the leader is in term 3"
        );
        assert_eq!(log.committed, 0);
        log.append(
            3,
            vec![Entry {
                index: 3,
                term: 3,
                ..Entry::default()
            }],
        );
        assert!(log.maybe_commit(3, 3));
        assert_eq!(log.committed, 3);
    }
}
