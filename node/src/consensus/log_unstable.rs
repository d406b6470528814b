//! The part of the log that is not yet durable: entries and possibly a snapshot that the host
//! has not yet acknowledged as written.

use super::message::{Entry, EntryId, Index, Snapshot, Term};

/// Entries and a snapshot not yet known to be durable.
///
/// The entries `[offset, offset_in_progress)` have been handed to the host in a Ready and are
/// being written; `[offset_in_progress, offset + entries.len())` have not been handed out yet.
/// Acknowledgements move `offset` forward; new Readies move `offset_in_progress` forward; a
/// leader change that overwrites a suffix may move both back.
///
/// Every write handed out is stamped with `term`, the term of the leader whose append the log
/// accepted last. While that term stays the same the log only grows: the leader of a term
/// never rewrites its own log, and once its append changed this log, the whole log is a prefix
/// of the leader's. So a write stamped with the current term cannot have been overwritten by a
/// later one, while a write stamped with an older term may have been, even if an entry with
/// the same index and term was restored since (a leader of term 3 overwrote 5/2 with 5/3, a
/// leader of term 4 wrote 5/2 back, and storage holds 5/3 until the last write lands). Its
/// acknowledgement is ignored: writes complete in order, so the acknowledgement of a write
/// stamped with the current term comes later and covers it.
#[derive(Clone, Debug, Default)]
pub struct Unstable {
    /// A snapshot being installed, if any. Invariant: when present, `offset` is its index + 1
    /// or beyond (entries appended after it).
    pub snapshot: Option<Snapshot>,
    /// Entries not yet durable; `entries[i]` has index `offset + i`.
    pub entries: Vec<Entry>,
    /// The index of `entries[0]`, or where the next entry goes when `entries` is empty.
    /// Invariant: every index below `offset` is durable (or covered by the snapshot).
    pub offset: Index,
    /// Whether `snapshot` has been handed out for writing. Invariant: true only with a
    /// snapshot present.
    pub snapshot_in_progress: bool,
    /// Entries below this index have been handed out for writing.
    /// Invariant: `offset <= offset_in_progress <= offset + entries.len()`.
    pub offset_in_progress: Index,
    /// The term of the leader whose append (entries or snapshot) this log accepted last; 0
    /// until the first one after a restart. Invariant: it never decreases.
    pub term: Term,
}

impl Unstable {
    /// An empty unstable log whose next entry is `offset`.
    pub fn new(offset: Index) -> Unstable {
        Unstable {
            offset,
            offset_in_progress: offset,
            ..Unstable::default()
        }
    }

    fn check_invariants(&self) {
        debug_assert!(self.offset <= self.offset_in_progress, "{self:?}");
        debug_assert!(
            self.offset_in_progress <= self.offset + self.entries.len() as u64,
            "{self:?}"
        );
        debug_assert!(!self.snapshot_in_progress || self.snapshot.is_some());
        if let Some(snap) = &self.snapshot {
            debug_assert!(snap.metadata.index < self.offset, "{self:?}");
        }
        debug_assert!(self.entries.first().is_none_or(|e| e.index == self.offset));
    }

    /// The first index of the log if the unstable part knows it (from its snapshot).
    pub fn maybe_first_index(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    /// The last index of the log if the unstable part holds it.
    pub fn maybe_last_index(&self) -> Option<Index> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(|s| s.metadata.index),
        }
    }

    /// The term of the entry at `index` if the unstable part holds it.
    pub fn maybe_term(&self, index: Index) -> Option<Term> {
        if index < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.metadata.index == index)
                .map(|s| s.metadata.term);
        }
        let pos = usize::try_from(index - self.offset).ok()?;
        self.entries.get(pos).map(|e| e.term)
    }

    /// The entries not yet handed out for writing.
    pub fn next_entries(&self) -> &[Entry] {
        let in_progress = self.in_progress_len();
        &self.entries[in_progress..]
    }

    fn in_progress_len(&self) -> usize {
        usize::try_from(self.offset_in_progress - self.offset).unwrap_or(usize::MAX)
    }

    /// The snapshot if it has not been handed out for writing yet.
    pub fn next_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot
            .as_ref()
            .filter(|_| !self.snapshot_in_progress)
    }

    /// Marks everything currently held as handed out for writing.
    pub fn accept_in_progress(&mut self) {
        if let Some(last) = self.entries.last() {
            self.offset_in_progress = last.index + 1;
        }
        if self.snapshot.is_some() {
            self.snapshot_in_progress = true;
        }
        self.check_invariants();
    }

    /// Drops the entries up to `id` because the host reports durable a write stamped with
    /// `accepted_term` whose last entry is `id`. The acknowledgement is stale, and ignored,
    /// when the log accepted a newer leader's append since the write was handed out (see the
    /// type's documentation) or when its entry is no longer here with the same term.
    pub fn stable_to(&mut self, accepted_term: Term, id: EntryId) -> bool {
        if accepted_term != self.term {
            return false;
        }
        let Some(term) = self.maybe_term(id.index) else {
            return false;
        };
        if id.index < self.offset || term != id.term {
            return false;
        }
        let num = usize::try_from(id.index + 1 - self.offset).unwrap_or(usize::MAX);
        self.entries.drain(..num);
        self.offset = id.index + 1;
        self.offset_in_progress = self.offset_in_progress.max(self.offset);
        self.check_invariants();
        true
    }

    /// Drops the snapshot because the host reports it durable, if it is still the one at
    /// `index`.
    pub fn stable_snap_to(&mut self, index: Index) -> bool {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.snapshot = None;
            self.snapshot_in_progress = false;
            return true;
        }
        false
    }

    /// Replaces everything with a snapshot received from the leader of `leader_term`.
    pub fn restore(&mut self, leader_term: Term, snapshot: Snapshot) {
        self.accept_leader(leader_term);
        self.offset = snapshot.metadata.index + 1;
        self.offset_in_progress = self.offset;
        self.entries.clear();
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
        self.check_invariants();
    }

    fn accept_leader(&mut self, leader_term: Term) {
        debug_assert!(leader_term >= self.term, "{leader_term} < {}", self.term);
        self.term = self.term.max(leader_term);
    }

    /// Appends `entries` (contiguous, non-empty) from the leader of `leader_term`, first
    /// truncating whatever they overwrite. Overwriting entries that are being written moves
    /// `offset_in_progress` back so that the new entries are handed out again.
    pub fn truncate_and_append(&mut self, leader_term: Term, mut entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        self.accept_leader(leader_term);
        let from = first.index;
        let end = self.offset + self.entries.len() as u64;
        if from == end {
            self.entries.append(&mut entries);
        } else if from <= self.offset {
            // The whole unstable part is replaced; the storage suffix from `from` on is
            // shadowed by the new entries until they are written.
            self.entries = entries;
            self.offset = from;
            self.offset_in_progress = from;
        } else {
            let keep = usize::try_from(from - self.offset).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            self.entries.append(&mut entries);
            self.offset_in_progress = self.offset_in_progress.min(from);
        }
        self.check_invariants();
    }

    /// Entries `[lo, hi)`, which must lie within the unstable part.
    pub fn slice(&self, lo: Index, hi: Index) -> &[Entry] {
        debug_assert!(self.offset <= lo && lo <= hi);
        let start = usize::try_from(lo - self.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(hi - self.offset).unwrap_or(usize::MAX);
        &self.entries[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|index| Entry {
                index,
                term,
                ..Entry::default()
            })
            .collect()
    }

    #[test]
    fn append_while_write_in_progress_keeps_offsets() {
        let mut u = Unstable::new(5);
        u.truncate_and_append(1, ents(5, 6, 1));
        u.accept_in_progress();
        assert_eq!((u.offset, u.offset_in_progress), (5, 7));
        u.truncate_and_append(1, ents(7, 8, 1));
        assert_eq!(u.next_entries().len(), 2);
        assert!(u.stable_to(1, EntryId { index: 6, term: 1 }));
        assert_eq!((u.offset, u.offset_in_progress), (7, 7));
        assert_eq!(u.next_entries().len(), 2);
    }

    #[test]
    fn overwrite_in_progress_moves_offsets_back_and_stale_ack_is_ignored() {
        let mut u = Unstable::new(5);
        u.truncate_and_append(1, ents(5, 8, 1));
        u.accept_in_progress();
        u.truncate_and_append(2, ents(7, 7, 2));
        assert_eq!((u.offset, u.offset_in_progress), (5, 7));
        assert!(!u.stable_to(1, EntryId { index: 7, term: 1 }));
        assert!(!u.stable_to(1, EntryId { index: 8, term: 1 }));
        u.truncate_and_append(3, ents(4, 4, 3));
        assert_eq!((u.offset, u.offset_in_progress), (4, 4));
        assert!(!u.stable_to(1, EntryId { index: 6, term: 1 }));
        assert!(u.stable_to(3, EntryId { index: 4, term: 3 }));
        assert_eq!(u.offset, 5);
    }

    #[test]
    fn ack_of_an_entry_overwritten_and_restored_is_ignored() {
        // 5/2 is handed out under the leader of term 2 (write 1), overwritten by the leader of
        // term 3 (write 2) and written back by the leader of term 4 (write 3). Storage holds
        // 5/3 once write 2 lands, so the acknowledgement of write 1 must not mark 5 stable.
        let mut u = Unstable::new(5);
        u.truncate_and_append(2, ents(5, 5, 2));
        u.accept_in_progress();
        let write_1 = (u.term, EntryId { index: 5, term: 2 });
        u.truncate_and_append(3, ents(5, 5, 3));
        u.accept_in_progress();
        let write_2 = (u.term, EntryId { index: 5, term: 3 });
        u.truncate_and_append(4, ents(5, 5, 2));
        u.accept_in_progress();
        let write_3 = (u.term, EntryId { index: 5, term: 2 });
        assert!(!u.stable_to(write_1.0, write_1.1));
        assert!(!u.stable_to(write_2.0, write_2.1));
        assert_eq!(u.offset, 5);
        assert!(u.stable_to(write_3.0, write_3.1));
        assert_eq!(u.offset, 6);
    }

    #[test]
    fn ack_from_before_a_newer_leaders_append_is_ignored_and_covered_later() {
        // A pure append from a newer leader changes nothing below, but the older write's
        // acknowledgement is still ignored; the newer write's covers both.
        let mut u = Unstable::new(5);
        u.truncate_and_append(2, ents(5, 5, 2));
        u.accept_in_progress();
        u.truncate_and_append(3, ents(6, 6, 3));
        u.accept_in_progress();
        assert!(!u.stable_to(2, EntryId { index: 5, term: 2 }));
        assert!(u.stable_to(3, EntryId { index: 6, term: 3 }));
        assert_eq!((u.offset, u.entries.len()), (7, 0));
    }

    #[test]
    fn snapshot_restore_and_stable() {
        let mut u = Unstable::new(1);
        u.truncate_and_append(1, ents(1, 3, 1));
        let mut snap = Snapshot::default();
        snap.metadata.index = 10;
        snap.metadata.term = 2;
        u.restore(3, snap);
        assert_eq!(u.term, 3);
        assert!(!u.stable_to(1, EntryId { index: 3, term: 1 }));
        assert_eq!(u.maybe_first_index(), Some(11));
        assert_eq!(u.maybe_last_index(), Some(10));
        assert_eq!(u.maybe_term(10), Some(2));
        assert!(u.next_snapshot().is_some());
        u.accept_in_progress();
        assert!(u.next_snapshot().is_none());
        assert!(!u.stable_snap_to(9));
        assert!(u.stable_snap_to(10));
        assert!(u.snapshot.is_none());
    }
}
