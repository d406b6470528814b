//! The multi-group raft log store: the entries and hard states of many raft groups in one log.
//!
//! Each group has an in-memory index (entry index -> log LSN and term) and a share of a
//! bounded cache of recent entry payloads; older payloads are read back from the log by LSN.
//! The read side has the shape of etcd-raft's `Storage`: [`LogStore::entries`],
//! [`LogStore::term`], [`LogStore::first_index`], [`LogStore::last_index`],
//! [`LogStore::hard_state`] and [`LogStore::snapshot`], with [`LogStoreError::Compacted`] and
//! [`LogStoreError::Unavailable`] as in etcd. As there, every group starts with a "dummy" entry
//! at index 0, term 0: a new group has first index 1 and last index 0.
//!
//! # Writes
//!
//! A [`WriteBatch`] may touch many groups (a whole shard's round) and becomes **one** log
//! append, which the log makes atomic: after a crash either every group sees the batch or
//! none does. The batch is validated against the current state before anything is written, so
//! a rejected batch changes nothing. Appending an entry at index `i` replaces the group's
//! entries from `i` on (the conflicting suffix), in the log as in memory.
//!
//! # Space
//!
//! A group *pins* the oldest log record it still needs: its first live entry, or the record
//! that set its hard state, its compaction point or its snapshot metadata. The log can drop a
//! segment once no group pins it ([`LogStore::purge`]). One slow group would otherwise keep
//! every segment alive; [`LogStore::maintain`] therefore rewrites the state and live entries
//! of the groups that pin old segments to the head of the log, in one atomic append (a `Reset`
//! record followed by the entries, see [`crate::log_record`]), then purges, and reports those
//! groups so that the caller can ask them to compact.
//!
//! # How a raft node drives it
//!
//! 1. Each round, put every group's unstable entries and hard state into one [`WriteBatch`]
//!    and [`LogStore::write`] it — or, from an async runtime, [`LogStore::stage`] it and
//!    await [`LogStore::durable`], which hands back the tickets of durable writes in stage
//!    order (several rounds may be staged at once; the store appends them itself, in
//!    order, over an [`AsyncLogBackend`](crate::AsyncLogBackend) such as `Arc<Wal>`). Acknowledge the appends only
//!    after that.
//! 2. Apply committed entries, read with [`LogStore::entries`], to the group's
//!    [`crate::Memtable`].
//! 3. To snapshot a group: open [`crate::Memtable::begin_snapshot`], write it with
//!    [`crate::CheckpointDir::write_with`] (term and conf state in the header), record it with
//!    [`WriteBatch::set_snapshot`], then [`LogStore::compact`] up to its index.
//! 4. Call [`LogStore::maintain`] now and then: it purges, rewrites groups that pin old
//!    segments, and lists those to ask for a snapshot (`must_compact`, `rewritten`).
//! 5. A follower that receives a snapshot verifies and publishes the bytes with
//!    [`crate::CheckpointDir::install`] and then writes [`WriteBatch::apply_snapshot`].
//! 6. A destroyed replica is dropped with [`LogStore::remove_group`].
//!
//! # Recovery
//!
//! [`LogStore::open`] scans the log from its first live record and rebuilds every group's index
//! by applying each record as it was applied when written. The scan may start in the middle
//! of a group's history (older segments were purged), so it also meets records that only made
//! sense with what came before: entries later truncated or compacted away, or records a
//! rewrite's `Reset` superseded. An entry that does not follow the group's entries restarts
//! them at its index; a compaction that goes backwards marks the group broken until a
//! `Reset`. Every record the group still needed when the log was purged is there, so once
//! the scan ends the group must be whole again: entries starting right after the compaction
//! point and no broken mark. Anything else is reported as corruption rather than guessed.
//! Because each group pins its own records, whole segments can be purged with no other
//! bookkeeping, and a rewrite or purge interrupted by a crash leaves a log that recovers.
//!
//! # Code map
//!
//! - `options.rs`, `error.rs`: [`LogStoreOptions`] and [`LogStoreError`].
//! - `index.rs`: the per-group index (where each live entry is, what the group pins).
//! - `apply.rs`: how one record changes the in-memory state, live and in recovery; the
//!   bounded entry cache.
//! - `batch.rs`: [`WriteBatch`]. `validate.rs`: a batch checked against the state it will
//!   apply to and against the limits, then encoded.
//! - `pipeline.rs`: staged writes the store appends itself, in stage order ([`Ticket`]).
//! - `read.rs`: the etcd-raft `Storage`-shaped reads. `recovery.rs`: [`LogStore::open`].
//! - `space.rs`: pins, purge, rewrites of lagging groups; `maintain` decides
//!   (`plan_maintenance`) before it acts.

mod apply;
mod batch;
mod error;
mod index;
mod options;
mod pipeline;
mod read;
mod recovery;
mod space;
mod validate;

pub use batch::WriteBatch;
pub use error::LogStoreError;
pub use options::LogStoreOptions;
pub use pipeline::Ticket;
pub use space::MaintenanceReport;

use apply::{Origin, State};
use pipeline::Pipeline;
use validate::Prepared;

use crate::log_backend::{FramePos, LogBackend};
use crate::log_record::LogRecord;

/// Identifies a raft group within a store.
pub type GroupId = u64;

/// A raft log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Position in the group's log (>= 1).
    pub index: u64,
    /// Raft term in which the entry was proposed.
    pub term: u64,
    /// The payload, opaque to the store.
    pub data: Vec<u8>,
}

/// A raft group's persistent voting state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Node voted for in `term` (0: none).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// Metadata of a raft snapshot (the snapshot data itself is a checkpoint file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index the snapshot covers.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// The raft configuration at `index`, opaque to the store.
    pub conf_state: Vec<u8>,
}

/// A summary of a [`LogStore`], from [`LogStore::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStoreStats {
    /// Groups with any state.
    pub groups: usize,
    /// Live entries over all groups.
    pub entries: usize,
    /// Entry payload bytes in the cache.
    pub cache_bytes: usize,
    /// The oldest LSN any group needs: the log can be purged below it.
    pub pinned_lsn: u64,
    /// Live log segments.
    pub segments: usize,
    /// Staged writes whose tickets [`LogStore::durable`] has not handed back yet.
    pub inflight_writes: usize,
}

/// The multi-group raft log store. See the module documentation.
pub struct LogStore<B: LogBackend = keel_wal::Wal> {
    log: B,
    state: State,
    options: LogStoreOptions,
    /// Why the store is poisoned: a failed append left memory and log possibly apart.
    poison: Option<String>,
    /// Staged writes (asynchronous appends).
    pipeline: Pipeline,
}

impl<B: LogBackend> std::fmt::Debug for LogStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("groups", &self.state.groups.len())
            .field("cache_bytes", &self.state.cache_bytes)
            .field("poison", &self.poison)
            .finish()
    }
}

impl<B: LogBackend> LogStore<B> {
    /// The options in force.
    pub fn options(&self) -> &LogStoreOptions {
        &self.options
    }

    /// The underlying log.
    pub fn log(&self) -> &B {
        &self.log
    }

    /// Groups that have any state, ascending.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.state.groups.keys().copied()
    }

    /// Bytes of entry payloads held in the cache.
    pub fn cache_bytes(&self) -> usize {
        self.state.cache_bytes
    }

    /// A summary for metrics: groups, live entries, cache use, what pins the log.
    pub fn stats(&self) -> LogStoreStats {
        LogStoreStats {
            groups: self.state.groups.len(),
            entries: self.state.groups.values().map(|g| g.entries.len()).sum(),
            cache_bytes: self.state.cache_bytes,
            pinned_lsn: self.pinned_lsn(),
            segments: self.log.segments().len(),
            inflight_writes: self.pipeline.len(),
        }
    }

    /// `Err(Poisoned)` once an append failed: the one place a poison becomes an error.
    fn check_poison(&self) -> Result<(), LogStoreError> {
        match &self.poison {
            Some(cause) => Err(LogStoreError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the store (the first cause is kept) and returns `error`.
    fn poison(&mut self, error: LogStoreError) -> LogStoreError {
        self.poison.get_or_insert_with(|| error.to_string());
        error
    }

    /// Checks that the store accepts a blocking write: not poisoned, no staged write queued
    /// or in flight.
    fn check_writable(&self) -> Result<(), LogStoreError> {
        self.check_poison()?;
        if self.pipeline.busy() {
            return Err(LogStoreError::WriteInFlight);
        }
        Ok(())
    }

    /// Applies a write the log has made durable in `frame`, from LSN `first` on.
    fn apply(&mut self, first: u64, frame: FramePos, write: Prepared) -> Result<(), LogStoreError> {
        for (lsn, rec) in (first..).zip(write.records) {
            if let Err(e) = self.state.apply(lsn, rec, Origin::Live(frame)) {
                // Validation should have made this impossible; memory no longer matches the log.
                return Err(self.poison(e));
            }
        }
        Ok(())
    }

    /// Writes `records` in one append and applies them. A failed append poisons the store.
    fn commit(&mut self, records: Vec<LogRecord>) -> Result<(), LogStoreError> {
        let write = self.prepare(records)?;
        if write.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u8]> = write.encoded.iter().map(Vec::as_slice).collect();
        match self.log.append(&refs) {
            Ok(placed) => self.apply(placed.first_lsn, placed.frame, write),
            Err(source) => Err(self.poison(LogStoreError::Log {
                op: "append",
                source,
            })),
        }
    }

    /// Writes a batch touching any number of groups as one atomic log append. The batch is
    /// validated first; a rejected batch writes nothing.
    pub fn write(&mut self, batch: WriteBatch) -> Result<(), LogStoreError> {
        self.check_writable()?;
        let (records, _) = self.batch_records(batch)?;
        self.commit(records)
    }

    /// Validates a batch against the current state, as it will be once the staged writes in
    /// flight are applied, and turns it into log records. Returns the views of the groups
    /// Drops `group`'s entries up to and including `to`. `to` must be above the current
    /// compaction point and at most the last index.
    pub fn compact(&mut self, group: GroupId, to: u64) -> Result<(), LogStoreError> {
        self.check_writable()?;
        let compacted = self.first_index(group) - 1;
        if to <= compacted {
            return Err(LogStoreError::Compacted {
                group,
                index: to,
                first_index: compacted + 1,
            });
        }
        let term = self.term(group, to)?;
        self.commit(vec![LogRecord::Compact {
            group,
            index: to,
            term,
        }])
    }

    /// Removes `group` and all its state (its replica was destroyed): it no longer pins any
    /// segment, and afterwards reads as a new group.
    pub fn remove_group(&mut self, group: GroupId) -> Result<(), LogStoreError> {
        self.check_writable()?;
        if self.group(group).is_none() {
            return Ok(());
        }
        self.commit(vec![LogRecord::Remove { group }])
    }
}
