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
//!    order, over an [`AsyncLogBackend`] such as `Arc<Wal>`). Acknowledge the appends only
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use std::task::{Context, Poll, ready};

use crate::log_backend::{AppendFuture, AsyncLogBackend, BackendError, LogBackend};
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

/// Options of a [`LogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// Most entry payload bytes kept in memory across all groups. Default 64 MiB.
    ///
    /// Entry and batch limits must also fit the log's own (for `keel_wal`, the defaults do:
    /// its `record_bytes_max` is 2 MiB and `batch_bytes_max` 4 MiB); an append the log would
    /// reject is refused before anything is written.
    pub cache_bytes_max: usize,
    /// Most entries kept in the cache, whatever their size. Default 1,048,576.
    pub cache_entries_max: usize,
    /// Largest entry payload accepted, in bytes. Default 1 MiB.
    pub entry_bytes_max: usize,
    /// Largest write batch (sum of encoded records), in bytes. Default 3 MiB.
    pub batch_bytes_max: usize,
    /// Live segments beyond which `maintain` rewrites lagging groups. Default 16.
    pub segments_live_max: usize,
    /// Recovery reports progress every this many records. Default 100,000.
    pub progress_records_interval: u64,
    /// Most staged writes in flight at once (see [`LogStore::stage`]). Default 8.
    pub inflight_writes_max: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            cache_bytes_max: 64 << 20,
            cache_entries_max: 1 << 20,
            entry_bytes_max: 1 << 20,
            batch_bytes_max: 3 << 20,
            segments_live_max: 16,
            progress_records_interval: 100_000,
            inflight_writes_max: 8,
        }
    }
}

impl LogStoreOptions {
    /// Checks the options: a batch must hold at least one largest entry, and at least two
    /// segments must stay live (the one being written and one before it).
    pub fn validate(&self) -> Result<(), LogStoreError> {
        let bad = |reason: &str| {
            Err(LogStoreError::InvalidOptions {
                reason: reason.into(),
            })
        };
        if self.entry_bytes_max == 0 || self.entry_bytes_max > u32::MAX as usize {
            return bad("entry_bytes_max must be in 1..=u32::MAX");
        }
        if self.batch_bytes_max < self.entry_bytes_max + RECORD_OVERHEAD_BYTES {
            return bad("batch_bytes_max must hold one largest entry");
        }
        if self.segments_live_max < 2 {
            return bad("segments_live_max must be at least 2");
        }
        if self.progress_records_interval == 0 {
            return bad("progress_records_interval must be positive");
        }
        if self.inflight_writes_max == 0 {
            return bad("inflight_writes_max must be at least 1");
        }
        Ok(())
    }
}

/// Bytes an entry record adds to its payload: kind, group, index, term.
const RECORD_OVERHEAD_BYTES: usize = 1 + 3 * 8;

/// Errors of the log store layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogStoreError {
    /// The index is at or below the group's compaction point.
    #[error("group {group}: index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: u64,
        /// The group's first index.
        first_index: u64,
    },
    /// The index is beyond the group's last entry.
    #[error("group {group}: index {index} is unavailable (last index {last_index})")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: u64,
        /// The group's last index.
        last_index: u64,
    },
    /// Appended entries would leave a hole after the group's last entry.
    #[error("group {group}: append at {index} leaves a gap after last index {last_index}")]
    Gap {
        /// The group.
        group: GroupId,
        /// First appended index.
        index: u64,
        /// The group's last index.
        last_index: u64,
    },
    /// Entries in one append were not consecutive.
    #[error("group {group}: entries not consecutive: {found} follows {previous}")]
    NotContiguous {
        /// The group.
        group: GroupId,
        /// Index of the earlier entry.
        previous: u64,
        /// Index of the entry after it.
        found: u64,
    },
    /// A snapshot older than the group's current one.
    #[error("group {group}: snapshot at {index} is older than the current one at {current}")]
    SnapshotOutOfDate {
        /// The group.
        group: GroupId,
        /// The offered snapshot index.
        index: u64,
        /// The current snapshot index.
        current: u64,
    },
    /// An entry payload exceeded `entry_bytes_max`.
    #[error("group {group}: entry {index} of {bytes} bytes exceeds entry_bytes_max = {max}")]
    EntryTooLarge {
        /// The group.
        group: GroupId,
        /// The entry index.
        index: u64,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A batch exceeded `batch_bytes_max`.
    #[error("write batch of {bytes} bytes exceeds batch_bytes_max = {max}")]
    BatchTooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A record in the log made no sense.
    #[error("corrupt log store record at lsn {lsn}: {reason}")]
    Corrupt {
        /// Where.
        lsn: u64,
        /// What.
        reason: String,
    },
    /// The log failed.
    #[error("log {op} failed: {source}")]
    Log {
        /// The operation.
        op: &'static str,
        /// The log's error.
        source: BackendError,
    },
    /// An earlier append failed, so memory and log may disagree; reopen to recover.
    #[error("log store poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// Staged writes are queued or in flight; wait for them with [`LogStore::durable`].
    #[error("staged writes are in flight; wait until they are durable first")]
    WriteInFlight,
    /// `inflight_writes_max` staged writes are already in flight.
    #[error("{max} staged writes already in flight (inflight_writes_max)")]
    TooManyInFlight {
        /// The limit.
        max: usize,
    },
    /// Inconsistent options.
    #[error("invalid log store options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
}

fn log_err(op: &'static str) -> impl FnOnce(BackendError) -> LogStoreError {
    move |source| LogStoreError::Log { op, source }
}

/// Where one entry lives.
#[derive(Clone, Debug)]
struct Slot {
    term: u64,
    lsn: u64,
    /// Payload length in bytes.
    len: u64,
    /// The payload, while it is in the cache.
    data: Option<Arc<[u8]>>,
}

/// A group's index and state.
///
/// Invariant outside recovery: `start == compacted_index + 1` (the entries follow the
/// compaction point without a hole). Recovery may break it temporarily, see `State::apply`.
#[derive(Clone, Debug, Default)]
struct GroupLog {
    /// Index of the last dropped entry (the "dummy" entry); first index is one more.
    compacted_index: u64,
    /// Term of the entry at `compacted_index`.
    compacted_term: u64,
    /// Index of `entries[0]` (meaningless while `entries` is empty).
    start: u64,
    /// Live entries; `entries[k]` has index `start + k`, LSNs ascending.
    entries: VecDeque<Slot>,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    /// LSNs of the records that set the compaction point, hard state and snapshot.
    compact_lsn: Option<u64>,
    hs_lsn: Option<u64>,
    snapshot_lsn: Option<u64>,
    /// During recovery: a record that contradicts the group's state (LSN, why). That is
    /// expected only of records a later `Reset` supersedes, so the group ignores everything
    /// until a `Reset`; a group still broken at the end of the scan is corruption.
    broken: Option<(u64, String)>,
}

impl GroupLog {
    fn first_index(&self) -> u64 {
        self.compacted_index + 1
    }

    fn last_index(&self) -> u64 {
        if self.entries.is_empty() {
            self.compacted_index
        } else {
            self.start + self.entries.len() as u64 - 1
        }
    }

    /// Position of `index` in `entries`, if it is there.
    fn slot_of(&self, index: u64) -> Option<usize> {
        if self.entries.is_empty() || index < self.start {
            return None;
        }
        usize::try_from(index - self.start)
            .ok()
            .filter(|&k| k < self.entries.len())
    }

    /// The oldest LSN this group needs.
    fn pin(&self) -> Option<u64> {
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

/// Recovery progress, reported every `progress_records_interval` records and at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryProgress {
    /// Records replayed so far.
    pub records: u64,
    /// LSN of the last record replayed.
    pub lsn: u64,
    /// LSN one past the last record of the log.
    pub end_lsn: u64,
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

/// What [`LogStore::maintain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Segments live before.
    pub segments_before: usize,
    /// Segments live after.
    pub segments_after: usize,
    /// Groups whose state and live entries were rewritten forward, with the number of
    /// entries rewritten. The caller should ask these groups to compact (snapshot) soon.
    pub rewritten: Vec<(GroupId, u64)>,
    /// Lagging groups whose live entries are too large to rewrite in one append
    /// (`batch_bytes_max`): they keep pinning old segments until they compact, which the
    /// caller must ask of them now.
    pub must_compact: Vec<GroupId>,
}

/// The in-memory side of the store, apart from the log, so recovery can fill it while the
/// log is scanned.
#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<GroupId, GroupLog>,
    /// Cached entries in insertion order, for FIFO eviction: (group, index, lsn). Items whose
    /// entry is gone or was re-written are skipped.
    cache_fifo: VecDeque<(GroupId, u64, u64)>,
    cache_bytes: usize,
    cache_bytes_max: usize,
    cache_entries_max: usize,
}

impl State {
    /// Removes the entries from position `from` on, releasing their cached bytes.
    fn truncate(cache_bytes: &mut usize, g: &mut GroupLog, from: usize) {
        for s in g.entries.drain(from.min(g.entries.len())..) {
            if let Some(d) = s.data {
                *cache_bytes -= d.len();
            }
        }
    }

    /// Applies one record, live or during recovery.
    ///
    /// Recovery may start in the middle of a group's history (older segments were purged),
    /// so it sees records that only made sense with what came before: entries that a later
    /// truncation, `Compact` or `Reset` supersedes. It therefore accepts an entry that does
    /// not follow the group's entries by restarting the entries there (`start` may then run
    /// ahead of `compacted_index + 1`); the records that the group still pinned when the log
    /// was purged restore the invariant, and `LogStore::open` checks it at the end.
    fn apply(&mut self, lsn: u64, rec: LogRecord, recovering: bool) -> Result<(), LogStoreError> {
        let group = rec.group();
        if let LogRecord::Remove { .. } = rec {
            if let Some(g) = self.groups.remove(&group) {
                for s in g.entries {
                    if let Some(d) = s.data {
                        self.cache_bytes -= d.len();
                    }
                }
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
                    return Err(LogStoreError::Corrupt {
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
                // or in recovery a record that a later Reset supersedes.
                let backwards = index < g.compacted_index
                    || (!recovering && index == g.compacted_index && index > 0);
                if backwards {
                    let reason = format!(
                        "group {group}: compaction to {index} is behind {}",
                        g.compacted_index
                    );
                    if !recovering {
                        return Err(LogStoreError::Corrupt { lsn, reason });
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
                for s in g.entries.drain(..drop_n) {
                    if let Some(d) = s.data {
                        self.cache_bytes -= d.len();
                    }
                }
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
    fn evict(&mut self) {
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

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug)]
enum BatchOp {
    Append(Vec<Entry>),
    HardState(HardState),
    SetSnapshot(SnapshotMeta),
    ApplySnapshot(SnapshotMeta),
}

/// Writes to many groups that become one atomic log append.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<(GroupId, BatchOp)>,
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

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What validation needs to know of a group: its state once the writes before the one being
/// validated are applied.
#[derive(Clone, Debug)]
struct View {
    first: u64,
    last: u64,
    snapshot_index: Option<u64>,
    hard_state: HardState,
}

/// A validated, encoded batch: what one log append will carry.
#[derive(Debug)]
struct Prepared {
    records: Vec<LogRecord>,
    encoded: Vec<Vec<u8>>,
}

impl Prepared {
    fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    fn bytes(&self) -> usize {
        self.encoded.iter().map(Vec::len).sum()
    }
}

/// Identifies a staged write (see [`LogStore::stage`]). Tickets ascend in stage order, and
/// [`LogStore::durable`] hands them back in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

impl Ticket {
    /// The write's place in stage order (the first staged write of a store is 1).
    pub fn seq(self) -> u64 {
        self.0
    }
}

/// A staged write waiting for its append.
#[derive(Debug)]
struct Staged {
    ticket: Ticket,
    write: Prepared,
}

/// The one append in flight: the staged writes it carries, in stage order, and the log's
/// future for it.
struct InFlight {
    writes: Vec<Staged>,
    append: AppendFuture,
}

/// The asynchronous write pipeline: staged writes go to the log one append at a time, in
/// stage order, and are applied in that order once durable.
///
/// Invariants: `queued`, then `in_flight`, then `durable` hold tickets in descending stage
/// order (`durable` the oldest); their total is at most `inflight_writes_max`; `views` is
/// empty when all three are.
#[derive(Default)]
struct Pipeline {
    /// Staged writes not yet handed to the log, oldest first.
    queued: VecDeque<Staged>,
    /// The append in flight, if any.
    in_flight: Option<InFlight>,
    /// Writes durable and applied whose tickets `durable` has not returned yet.
    durable: VecDeque<Ticket>,
    /// Ticket of the last staged write.
    last_ticket: u64,
    /// Groups touched by staged writes, as they will be once those are applied.
    views: HashMap<GroupId, View>,
}

impl Pipeline {
    fn len(&self) -> usize {
        self.queued.len()
            + self.in_flight.as_ref().map_or(0, |f| f.writes.len())
            + self.durable.len()
    }

    /// Whether a staged write is queued or in flight (tickets still to hand back do not
    /// count: their writes are applied).
    fn busy(&self) -> bool {
        !self.queued.is_empty() || self.in_flight.is_some()
    }
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
    /// Opens a store over `log`, rebuilding every group's index from it. `progress` is called
    /// every `progress_records_interval` records and once at the end.
    pub fn open(
        log: B,
        options: LogStoreOptions,
        progress: &mut dyn FnMut(RecoveryProgress),
    ) -> Result<LogStore<B>, LogStoreError> {
        options.validate()?;
        let mut state = State {
            cache_bytes_max: options.cache_bytes_max,
            cache_entries_max: options.cache_entries_max,
            ..State::default()
        };
        let end_lsn = log.next_lsn();
        let mut records = 0u64;
        let mut last_lsn = 0u64;
        let mut failure: Option<LogStoreError> = None;
        let scanned = log.scan(log.first_lsn(), &mut |lsn, bytes| {
            let applied = LogRecord::decode(bytes)
                .map_err(|reason| LogStoreError::Corrupt { lsn, reason })
                .and_then(|rec| state.apply(lsn, rec, true));
            if let Err(e) = applied {
                failure = Some(e);
                return Err("stopped by a corrupt record".into());
            }
            records += 1;
            last_lsn = lsn;
            if records % options.progress_records_interval == 0 {
                progress(RecoveryProgress {
                    records,
                    lsn,
                    end_lsn,
                });
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        scanned.map_err(log_err("scan"))?;
        for (group, g) in &mut state.groups {
            if let Some((lsn, reason)) = g.broken.take() {
                return Err(LogStoreError::Corrupt { lsn, reason });
            }
            if !g.entries.is_empty() && g.start != g.compacted_index + 1 {
                return Err(LogStoreError::Corrupt {
                    lsn: g.entries.front().map_or(0, |s| s.lsn),
                    reason: format!(
                        "group {group}: entries start at {} but the compaction point is {} \
                         (the log was purged too far)",
                        g.start, g.compacted_index
                    ),
                });
            }
        }
        progress(RecoveryProgress {
            records,
            lsn: last_lsn,
            end_lsn,
        });
        Ok(LogStore {
            log,
            state,
            options,
            poison: None,
            pipeline: Pipeline::default(),
        })
    }

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

    fn group(&self, group: GroupId) -> Option<&GroupLog> {
        self.state.groups.get(&group)
    }

    /// Index of the group's first available entry (1 for a new group).
    pub fn first_index(&self, group: GroupId) -> u64 {
        self.group(group).map_or(1, GroupLog::first_index)
    }

    /// Index of the group's last entry (its compaction point when it has none).
    pub fn last_index(&self, group: GroupId) -> u64 {
        self.group(group).map_or(0, GroupLog::last_index)
    }

    /// The group's hard state (all zero for a new group).
    pub fn hard_state(&self, group: GroupId) -> HardState {
        self.group(group)
            .map_or(HardState::default(), |g| g.hard_state)
    }

    /// The group's latest snapshot metadata.
    pub fn snapshot(&self, group: GroupId) -> Option<&SnapshotMeta> {
        self.group(group).and_then(|g| g.snapshot.as_ref())
    }

    /// Term of the entry at `index`: defined from the compaction point to the last index.
    pub fn term(&self, group: GroupId, index: u64) -> Result<u64, LogStoreError> {
        let Some(g) = self.group(group) else {
            return if index == 0 {
                Ok(0)
            } else {
                Err(LogStoreError::Unavailable {
                    group,
                    index,
                    last_index: 0,
                })
            };
        };
        if index < g.compacted_index {
            return Err(LogStoreError::Compacted {
                group,
                index,
                first_index: g.first_index(),
            });
        }
        if index == g.compacted_index {
            return Ok(g.compacted_term);
        }
        g.slot_of(index)
            .and_then(|k| g.entries.get(k))
            .map(|s| s.term)
            .ok_or(LogStoreError::Unavailable {
                group,
                index,
                last_index: g.last_index(),
            })
    }

    /// Entries `[lo, hi)` of `group`, stopping before the total payload exceeds `max_bytes`
    /// but always returning at least one entry when `lo < hi` (as etcd does).
    pub fn entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let first = self.first_index(group);
        let last = self.last_index(group);
        if lo < first {
            return Err(LogStoreError::Compacted {
                group,
                index: lo,
                first_index: first,
            });
        }
        if hi > last + 1 || lo > hi {
            return Err(LogStoreError::Unavailable {
                group,
                index: hi.saturating_sub(1),
                last_index: last,
            });
        }
        let Some(g) = self.group(group) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in lo..hi {
            let Some(slot) = g.slot_of(index).and_then(|k| g.entries.get(k)) else {
                break;
            };
            bytes = bytes.saturating_add(slot.len);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let data = match &slot.data {
                Some(d) => d.to_vec(),
                None => self.read_entry(group, index, slot)?,
            };
            out.push(Entry {
                index,
                term: slot.term,
                data,
            });
        }
        Ok(out)
    }

    /// Reads an entry's payload from the log and checks it is the entry the index expects.
    fn read_entry(
        &self,
        group: GroupId,
        index: u64,
        slot: &Slot,
    ) -> Result<Vec<u8>, LogStoreError> {
        let lsn = slot.lsn;
        let bytes = self.log.read(lsn).map_err(log_err("read"))?;
        match LogRecord::decode(&bytes) {
            Ok(LogRecord::Entry { group: g, entry })
                if g == group && entry.index == index && entry.term == slot.term =>
            {
                Ok(entry.data)
            }
            Ok(other) => Err(LogStoreError::Corrupt {
                lsn,
                reason: format!(
                    "expected entry {index} of group {group}, found a record of group {}",
                    other.group()
                ),
            }),
            Err(reason) => Err(LogStoreError::Corrupt { lsn, reason }),
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

    /// Encodes `records` and checks them against the store's and the log's limits.
    fn prepare(&self, records: Vec<LogRecord>) -> Result<Prepared, LogStoreError> {
        let encoded: Vec<Vec<u8>> = records.iter().map(LogRecord::encode).collect();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        if bytes > self.options.batch_bytes_max {
            return Err(LogStoreError::BatchTooLarge {
                bytes,
                max: self.options.batch_bytes_max,
            });
        }
        if !encoded.is_empty() {
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            self.log.check_append(&refs).map_err(log_err("append"))?;
        }
        Ok(Prepared { records, encoded })
    }

    /// Applies a write the log has made durable from LSN `first` on.
    fn apply(&mut self, first: u64, write: Prepared) -> Result<(), LogStoreError> {
        for (lsn, rec) in (first..).zip(write.records) {
            if let Err(e) = self.state.apply(lsn, rec, false) {
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
            Ok(first) => self.apply(first, write),
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
    /// it touched, as they will be after it.
    fn batch_records(
        &self,
        batch: WriteBatch,
    ) -> Result<(Vec<LogRecord>, HashMap<GroupId, View>), LogStoreError> {
        let mut views: HashMap<GroupId, View> = HashMap::new();
        let mut records = Vec::new();
        for (group, op) in batch.ops {
            let v = views.entry(group).or_insert_with(|| {
                self.pipeline.views.get(&group).cloned().unwrap_or(View {
                    first: self.first_index(group),
                    last: self.last_index(group),
                    snapshot_index: self.snapshot(group).map(|s| s.index),
                    hard_state: self.hard_state(group),
                })
            });
            match op {
                BatchOp::Append(entries) => {
                    for w in entries.windows(2) {
                        if w[1].index != w[0].index + 1 {
                            return Err(LogStoreError::NotContiguous {
                                group,
                                previous: w[0].index,
                                found: w[1].index,
                            });
                        }
                    }
                    for e in &entries {
                        if e.data.len() > self.options.entry_bytes_max {
                            return Err(LogStoreError::EntryTooLarge {
                                group,
                                index: e.index,
                                bytes: e.data.len(),
                                max: self.options.entry_bytes_max,
                            });
                        }
                    }
                    let live: Vec<Entry> =
                        entries.into_iter().filter(|e| e.index >= v.first).collect();
                    let (Some(head), Some(tail)) = (live.first(), live.last()) else {
                        continue;
                    };
                    if head.index > v.last + 1 {
                        return Err(LogStoreError::Gap {
                            group,
                            index: head.index,
                            last_index: v.last,
                        });
                    }
                    v.last = tail.index;
                    records.extend(
                        live.into_iter()
                            .map(|entry| LogRecord::Entry { group, entry }),
                    );
                }
                BatchOp::HardState(hard_state) => {
                    v.hard_state = hard_state;
                    records.push(LogRecord::HardState { group, hard_state });
                }
                BatchOp::SetSnapshot(meta) => {
                    if let Some(current) = v.snapshot_index.filter(|&c| meta.index < c) {
                        return Err(LogStoreError::SnapshotOutOfDate {
                            group,
                            index: meta.index,
                            current,
                        });
                    }
                    v.snapshot_index = Some(meta.index);
                    records.push(LogRecord::Snapshot { group, meta });
                }
                BatchOp::ApplySnapshot(meta) => {
                    if let Some(current) = v.snapshot_index.filter(|&c| meta.index <= c) {
                        return Err(LogStoreError::SnapshotOutOfDate {
                            group,
                            index: meta.index,
                            current,
                        });
                    }
                    v.snapshot_index = Some(meta.index);
                    v.first = meta.index + 1;
                    v.last = meta.index;
                    records.push(LogRecord::Reset {
                        group,
                        index: meta.index,
                        term: meta.term,
                        hard_state: v.hard_state,
                        snapshot: Some(meta),
                    });
                }
            }
        }
        Ok((records, views))
    }

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

    /// The oldest LSN any group still needs (`next_lsn` when none needs any).
    pub fn pinned_lsn(&self) -> u64 {
        self.state
            .groups
            .values()
            .filter_map(GroupLog::pin)
            .min()
            .unwrap_or_else(|| self.log.next_lsn())
    }

    /// Drops every log segment no group needs. Returns the LSN purged below.
    pub fn purge(&mut self) -> Result<u64, LogStoreError> {
        self.check_writable()?;
        let lsn = self.pinned_lsn();
        self.log.purge_before(lsn).map_err(log_err("purge"))?;
        Ok(lsn)
    }

    /// Rewrites `group`'s state and live entries to the head of the log in one atomic append,
    /// so that it no longer pins older segments. Returns the number of entries rewritten.
    pub fn rewrite_group(&mut self, group: GroupId) -> Result<u64, LogStoreError> {
        self.check_writable()?;
        let Some(g) = self.group(group) else {
            return Ok(0);
        };
        let mut records = vec![LogRecord::Reset {
            group,
            index: g.compacted_index,
            term: g.compacted_term,
            hard_state: g.hard_state,
            snapshot: g.snapshot.clone(),
        }];
        let entries = self.entries(group, g.first_index(), g.last_index() + 1, u64::MAX)?;
        let n = entries.len() as u64;
        records.extend(
            entries
                .into_iter()
                .map(|entry| LogRecord::Entry { group, entry }),
        );
        self.commit(records)?;
        Ok(n)
    }

    /// Purges, then if more than `segments_live_max` segments remain, rewrites forward every
    /// group that pins a segment older than the newest `segments_live_max`, and purges again.
    pub fn maintain(&mut self) -> Result<MaintenanceReport, LogStoreError> {
        self.purge()?;
        let segments = self.log.segments();
        let mut report = MaintenanceReport {
            segments_before: segments.len(),
            ..MaintenanceReport::default()
        };
        if segments.len() > self.options.segments_live_max {
            let target = segments[segments.len() - self.options.segments_live_max].first_lsn;
            let lagging: Vec<GroupId> = self
                .state
                .groups
                .iter()
                .filter(|(_, g)| g.pin().is_some_and(|p| p < target))
                .map(|(id, _)| *id)
                .collect();
            for group in lagging {
                match self.rewrite_group(group) {
                    Ok(n) => report.rewritten.push((group, n)),
                    Err(LogStoreError::BatchTooLarge { .. }) => report.must_compact.push(group),
                    Err(e) => return Err(e),
                }
            }
            self.purge()?;
        }
        report.segments_after = self.log.segments().len();
        Ok(report)
    }
}

/// The asynchronous write path, for a caller that must not block (a raft node's async shard
/// runtime): the store owns the appends, and the caller only awaits them.
impl<B: AsyncLogBackend> LogStore<B> {
    /// Validates `batch` and queues it for a log append (its own, or one shared with the
    /// writes staged right after it), returning its ticket. Nothing is visible to reads
    /// until [`LogStore::durable`] hands the ticket back.
    ///
    /// Up to `inflight_writes_max` staged writes may be outstanding (pipelining, as
    /// etcd-raft's asynchronous storage writes do): each is validated as if those staged
    /// before it had been applied. The store appends them itself, one log append at a time
    /// and in stage order, so the log always holds them in the order they were validated
    /// for: there is no order for the caller to get wrong. A write staged behind an append
    /// that failed never reaches the log. Blocking writes (`write`, `compact`, `maintain`,
    /// ...) are refused with [`LogStoreError::WriteInFlight`] while a staged write is
    /// queued or in flight.
    pub fn stage(&mut self, batch: WriteBatch) -> Result<Ticket, LogStoreError> {
        self.check_poison()?;
        if self.pipeline.len() >= self.options.inflight_writes_max {
            return Err(LogStoreError::TooManyInFlight {
                max: self.options.inflight_writes_max,
            });
        }
        let (records, views) = self.batch_records(batch)?;
        let write = self.prepare(records)?;
        self.pipeline.last_ticket += 1;
        let ticket = Ticket(self.pipeline.last_ticket);
        self.pipeline.views.extend(views);
        self.pipeline.queued.push_back(Staged { ticket, write });
        Ok(ticket)
    }

    /// Waits until the oldest staged write is durable and applied, and returns its ticket.
    /// Tickets come back in stage order, each once. Pending while nothing is staged.
    ///
    /// Cancel-safe: the append in flight belongs to the store, so dropping this future and
    /// calling again later loses nothing. A failed append poisons the store: this returns
    /// the log's error once and [`LogStoreError::Poisoned`] afterwards, and no write staged
    /// at that time is acknowledged.
    pub async fn durable(&mut self) -> Result<Ticket, LogStoreError> {
        std::future::poll_fn(|cx| self.poll_durable(cx)).await
    }

    /// [`LogStore::durable`] as a poll function, for hand-written futures and event loops:
    /// drives the append in flight, starts the next one, and returns the oldest durable
    /// ticket.
    pub fn poll_durable(&mut self, cx: &mut Context<'_>) -> Poll<Result<Ticket, LogStoreError>> {
        loop {
            self.check_poison()?;
            if let Some(ticket) = self.pipeline.durable.pop_front() {
                if self.pipeline.len() == 0 {
                    self.pipeline.views.clear();
                }
                return Poll::Ready(Ok(ticket));
            }
            let Some(in_flight) = &mut self.pipeline.in_flight else {
                if !self.start_append() {
                    return Poll::Pending;
                }
                continue;
            };
            let outcome = ready!(in_flight.append.as_mut().poll(cx));
            let writes = self
                .pipeline
                .in_flight
                .take()
                .map_or_else(Vec::new, |f| f.writes);
            let first = match outcome {
                Ok(first) => first,
                Err(source) => {
                    self.pipeline = Pipeline {
                        last_ticket: self.pipeline.last_ticket,
                        ..Pipeline::default()
                    };
                    return Poll::Ready(Err(self.poison(LogStoreError::Log {
                        op: "append",
                        source,
                    })));
                }
            };
            let mut lsn = first;
            for staged in writes {
                let n = staged.write.records.len() as u64;
                self.apply(lsn, staged.write)?;
                lsn += n;
                self.pipeline.durable.push_back(staged.ticket);
            }
        }
    }

    /// Moves the oldest queued writes on: those with nothing to append become durable at
    /// once; otherwise as many as fit the store's and the log's batch limits (at least one:
    /// each fits on its own) go to the log as one append. Returns whether anything moved.
    fn start_append(&mut self) -> bool {
        let mut writes: Vec<Staged> = Vec::new();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.pipeline.queued.front() {
            if next.write.is_empty() {
                if !writes.is_empty() {
                    break;
                }
                if let Some(s) = self.pipeline.queued.pop_front() {
                    self.pipeline.durable.push_back(s.ticket);
                }
                return true;
            }
            if !writes.is_empty() {
                let fits = bytes + next.write.bytes() <= self.options.batch_bytes_max && {
                    let refs: Vec<&[u8]> = records
                        .iter()
                        .chain(&next.write.encoded)
                        .map(Vec::as_slice)
                        .collect();
                    self.log.check_append(&refs).is_ok()
                };
                if !fits {
                    break;
                }
            }
            let Some(mut staged) = self.pipeline.queued.pop_front() else {
                break;
            };
            bytes += staged.write.bytes();
            records.append(&mut staged.write.encoded);
            writes.push(staged);
        }
        if writes.is_empty() {
            return false;
        }
        let append = self.log.append_async(records);
        self.pipeline.in_flight = Some(InFlight { writes, append });
        true
    }
}
