//! One shard's logic, without I/O: its raft groups, and the round that drives them.
//!
//! A shard hosts a replica of many raft groups on one thread and persists all of them
//! through one [`LogStore`]. Each round (see [`Shard::round`]):
//! 1. the linearizable reads that arrived since the last round are sent, one ReadIndex
//!    request per group for all of them;
//! 2. the Ready of every group with work is taken: its messages go out at once (a leader
//!    replicates before its own write is durable), the unstable entries and hard states of
//!    **all** groups go into **one** [`WriteBatch`], staged as one log append, and committed
//!    entries that are durable locally are applied to the group's memtable;
//! 3. when the append is durable, [`Shard::on_durable`] feeds each group its
//!    acknowledgement, which releases its votes and append responses for the next round.
//!
//! Everything the shard does comes from method calls (ticks, peer messages, requests,
//! durability) and goes out as return values (messages, staged appends, answers), so a
//! runtime can drive it on any thread or event loop and a simulation can drive many in one
//! process.
//!
//! With [`SnapshotOptions::dir`] set, groups also checkpoint and compact their logs, and
//! lagging followers are caught up by snapshot (see `snapshot.rs`): the one file I/O of a
//! shard. Checkpoint writes and snapshot installs run on helper threads (which wake the
//! runtime through [`Shard::set_waker`]), so the shard thread only reads chunks of memory
//! and of published checkpoint files, and at start loads each group's newest usable
//! checkpoint. Chunks of snapshot transfers go out through [`Shard::take_snapshot_chunks`]
//! and come in through [`Shard::receive_snapshot_chunk`]; the host purges the log where
//! [`Shard::purge_lsn`] says. Helper threads make a simulation's timing depend on the
//! machine; with [`Helpers::Inline`] ([`SnapshotOptions::helpers`]) they run on the calling
//! thread at fixed points instead, and a shard driven from a seed replays exactly.

mod command;
mod group;
mod membership;
mod sessions;
mod snapshot;
mod storage;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use keel_engine::checkpoint::{CheckpointDir, CheckpointMeta};
use keel_engine::log_backend::AsyncLogBackend;
use keel_engine::txn::{RangeRequest, RangeResponse, Txn, TxnResponse};
use keel_engine::{KvLimits, LogStore, LogStoreError, SnapshotMeta, Ticket, WriteBatch};

pub use command::{Action, Command};
pub use membership::{Membership, PROMOTE_LAG_ENTRIES_MAX, Step as MembershipStep, next_step};
pub use sessions::{Duplicate, Sessions};
pub use snapshot::{
    CHECKPOINT_CHUNKS_QUEUED_MAX, DEFAULT_CATCHUP_ENTRIES, DEFAULT_CHECKPOINT_ROUND_ENTRIES_MAX,
    DEFAULT_CHECKPOINTS_KEPT, DEFAULT_CHUNK_BYTES_MAX, DEFAULT_RECEIVE_BYTES_MAX,
    DEFAULT_RECEIVES_MAX, DEFAULT_SNAPSHOT_BYTES, DEFAULT_SNAPSHOT_ENTRIES, DEFAULT_TRANSFERS_MAX,
    Helpers, INSTALLS_MAX, SnapshotChunk, SnapshotError, SnapshotOptions,
};
pub use storage::{
    GroupStorage, SharedStore, decode_conf_state, decode_entry, encode_conf_state, encode_entry,
};

use crate::consensus::{
    AppendAck, ConfState, Config, Message, MessageType, NodeId, RawNode, Snapshot, SnapshotMetadata,
};
use group::Group;
use snapshot::{Done, Outbound, Piece, Snapshots, Writing};

/// The caller's name for a request, handed back with its outcome.
pub type RequestId = u64;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable: the leader confirms its leadership (one heartbeat round shared by all
    /// reads of the round; none with lease reads) and serves once it applied up to the
    /// commit index it had when the read arrived.
    Linearizable,
    /// Under the leader's lease (check-quorum): the leader answers at its commit index
    /// without a heartbeat round; linearizable as long as clocks drift less than the
    /// election timeout allows.
    Lease,
    /// From this replica's state machine as it is: may be stale, never waits.
    Serializable,
}

/// Why a request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// This member does not lead the group; the leader, when known.
    NotLeader {
        /// The member that leads the group, if this member knows one.
        leader: Option<NodeId>,
    },
    /// This member proposed the write, then lost the group's leadership before the write
    /// was applied: the write may still commit under the new leader, or may be lost. Only a
    /// retry carrying the same (client id, sequence) is safe; a write without a client id
    /// must not be proposed again (etcd's "leader changed").
    LeadershipLost {
        /// The member that leads the group now, if this member knows one.
        leader: Option<NodeId>,
    },
    /// The shard does not host the group.
    UnknownGroup(u64),
    /// The group's leader refused more proposals for now (uncommitted entries at their
    /// bound, or as many held as it may while it hands leadership over); retry later.
    Busy,
    /// The client's write is below its floor: it was answered already, or (a client past
    /// the session table's bounds) its result was forgotten and the floor raised past it,
    /// which may also cover a write of its still in flight. Its result is not kept; it is
    /// never applied now.
    StaleSequence {
        /// The write's sequence.
        sequence: u64,
        /// The client's floor (its smallest unanswered sequence).
        floor: u64,
    },
    /// The revision asked for (a read's, a compaction's) is at or below the group's
    /// compact revision: its history is gone. (A read at the compact revision itself still
    /// works; a compaction there is refused, as etcd's.)
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The group's compact revision.
        compacted: u64,
    },
    /// The revision asked for is beyond the group's store revision.
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The group's store revision.
        current: u64,
    },
    /// The state machine refused the request (a size limit, a bad range).
    Kv(String),
    /// The consensus core refused the request.
    Raft(String),
    /// This member was removed from the group by a membership change; it serves it no
    /// more.
    Removed {
        /// The group.
        group: u64,
    },
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader of the group; member {l} is")
            }
            RequestError::NotLeader { leader: None } => {
                write!(f, "not the leader of the group, and no leader is known")
            }
            RequestError::LeadershipLost { .. } => write!(
                f,
                "leadership of the group changed after the write was proposed; it may or may not \
                 have been applied"
            ),
            RequestError::UnknownGroup(g) => write!(f, "group {g} is not hosted here"),
            RequestError::Busy => write!(f, "the group's leader is busy; retry"),
            RequestError::StaleSequence { sequence, floor } => write!(
                f,
                "write {sequence} is below the client's floor {floor}: it was answered \
                 already, or its result was forgotten (past the session table's bounds); it is \
                 not applied again — read the keys to see its effect"
            ),
            // etcd's messages first: its clients match them.
            RequestError::Compacted {
                requested,
                compacted,
            } => write!(
                f,
                "mvcc: required revision has been compacted (revision {requested}, compacted \
                 at {compacted})"
            ),
            RequestError::FutureRevision { requested, current } => write!(
                f,
                "mvcc: required revision is a future revision (revision {requested}, current \
                 {current})"
            ),
            RequestError::Kv(e) => write!(f, "{e}"),
            RequestError::Raft(e) => write!(f, "{e}"),
            RequestError::Removed { group } => write!(
                f,
                "this member was removed from the cluster (group {group} applied its removal)"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// What became of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A write was applied (or had been: a retried write is answered with its first
    /// result). `Err` holds the state machine's refusal, which is final.
    Written(Result<TxnResponse, String>),
    /// A read was served.
    Read(RangeResponse),
    /// A compaction was applied: the group's history below the revision asked for is gone.
    /// A refused one is `Failed` with [`RequestError::Compacted`] or
    /// [`RequestError::FutureRevision`].
    Compaction {
        /// The group's store revision when it applied.
        revision: u64,
    },
    /// The request was not carried out.
    Failed(RequestError),
}

/// Raft and state-machine figures of one group, as a replica knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupFacts {
    /// The replica's current term.
    pub term: u64,
    /// The highest index it knows committed.
    pub commit: u64,
    /// The highest index its state machine applied.
    pub applied: u64,
    /// Its state machine's store revision.
    pub revision: u64,
    /// Bytes of keys and values its state machine holds.
    pub data_bytes: u64,
}

/// Options of a shard.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// This member's id in every group (not 0).
    pub member: NodeId,
    /// The cluster's bootstrap voters: every group's membership at creation, before any
    /// membership change. This member is among them unless it joined the cluster later;
    /// a joining member starts from them too, and its groups learn the changes made since
    /// from the log or a snapshot (and start no election while not voters).
    pub members: Vec<NodeId>,
    /// The raft options every group starts from (`id` and `group_id` are set per group).
    pub raft: Config,
    /// Limits of each group's state machine.
    pub kv_limits: KvLimits,
    /// Clients each group remembers for exactly-once writes. Default 100,000.
    pub sessions_max: usize,
    /// Checkpoints, compaction and snapshot transfers. Default: off (no directory).
    pub snapshots: SnapshotOptions,
}

impl ShardOptions {
    /// Options for `member` of a group made of `members`, with the defaults.
    pub fn new(member: NodeId, members: Vec<NodeId>) -> ShardOptions {
        ShardOptions {
            member,
            members,
            raft: Config::new(member),
            kv_limits: KvLimits::default(),
            sessions_max: 100_000,
            snapshots: SnapshotOptions::default(),
        }
    }
}

/// Why a shard stopped or could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShardError {
    /// The log store failed (a failed append poisons it: the shard must stop).
    Log(LogStoreError),
    /// A group could not be started or applied an entry no build could have written.
    Group {
        /// The group.
        group: u64,
        /// What went wrong.
        reason: String,
    },
    /// The shard's options cannot work.
    InvalidOptions(String),
    /// An acknowledgement arrived for a write that is not the oldest in flight.
    OutOfOrder {
        /// The ticket that arrived.
        got: u64,
        /// The ticket expected.
        expected: Option<u64>,
    },
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardError::Log(e) => write!(f, "shard log: {e}"),
            ShardError::Group { group, reason } => write!(f, "group {group}: {reason}"),
            ShardError::InvalidOptions(reason) => write!(f, "invalid shard options: {reason}"),
            ShardError::OutOfOrder { got, expected } => write!(
                f,
                "durability of write {got} reported while {expected:?} was the oldest in flight"
            ),
        }
    }
}

impl std::error::Error for ShardError {}

impl From<LogStoreError> for ShardError {
    fn from(e: LogStoreError) -> Self {
        ShardError::Log(e)
    }
}

/// What one round produced.
#[derive(Debug, Default)]
pub struct Round {
    /// Messages to peers, of every group; send them now.
    pub messages: Vec<Message>,
    /// The append staged this round, if any: report it with [`Shard::on_durable`] once
    /// [`LogStore::poll_durable`] hands its ticket back.
    pub staged: Option<Ticket>,
    /// Groups whose work went into the staged append.
    pub groups_written: usize,
    /// Entries in the staged append.
    pub entries_written: usize,
}

/// Checkpoint failures in a row from which each is logged at error level (before: warn).
pub const CHECKPOINT_FAILURES_LOUD: u64 = 3;

/// Counters of a shard's snapshots since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Checkpoints recorded in the log (a checkpoint recorded again at the head of the log,
    /// for an idle group that pinned old segments, counts again).
    pub checkpoints: u64,
    /// Checkpoint writes that failed (logged; the group tries again later).
    pub checkpoints_failed: u64,
    /// Checkpoint writes that failed in a row, up to now (0 after one that succeeds). From
    /// [`CHECKPOINT_FAILURES_LOUD`] on, each failure is logged at error level: the groups
    /// no longer compact, and their logs grow.
    pub checkpoints_failing: u64,
    /// Snapshot transfers sent in full.
    pub sent: u64,
    /// Snapshot transfers abandoned (file unreadable, peer unreachable, too many at once).
    pub send_failures: u64,
    /// Received snapshots installed (verified, published and staged for the log).
    pub installed: u64,
    /// Received snapshots or chunks dropped (damaged, incomplete, out of order, too large).
    pub rejected: u64,
}

/// Counters of a shard since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Appends staged (one per round with storage work).
    pub writes: u64,
    /// Sum over appends of the groups each carried.
    pub groups_written: u64,
    /// Sum over appends of the entries each carried.
    pub entries_written: u64,
}

/// A shard: raft groups sharing one log store, driven in rounds.
pub struct Shard<B: AsyncLogBackend> {
    options: ShardOptions,
    store: SharedStore<B>,
    groups: BTreeMap<u64, Group<B>>,
    /// Appends in flight, oldest first, with the acknowledgements they carry.
    in_flight: VecDeque<(Ticket, Vec<AppendAck>)>,
    /// Outcomes of requests, ready for [`Shard::take_answers`].
    answers: Vec<(RequestId, Outcome)>,
    next_read_context: u64,
    /// Groups holding a commit-only hard state that waits for the next staged write.
    pending_hs_groups: Vec<u64>,
    stats: ShardStats,
    snapshots: Snapshots,
    /// The log position below which the log was last reported purgeable.
    purged_lsn: u64,
    /// The membership the groups this member leads are driven toward (`None`: the host
    /// set none; no group changes its membership).
    membership: Option<Membership>,
}

impl<B: AsyncLogBackend> Shard<B> {
    /// A shard hosting `groups` over `store` (recovered: each group restarts from what the
    /// store holds).
    pub fn new(
        options: ShardOptions,
        store: LogStore<B>,
        groups: &[u64],
    ) -> Result<Shard<B>, ShardError> {
        options
            .snapshots
            .validate()
            .map_err(ShardError::InvalidOptions)?;
        let store = Rc::new(RefCell::new(store));
        let mut hosted = BTreeMap::new();
        let mut snapshots = Snapshots::new(options.snapshots.clone());
        for &group in groups {
            let mut storage = GroupStorage::new(group, store.clone(), options.members.clone());
            let mut config = options.raft.clone();
            config.id = options.member;
            config.group_id = group;
            // Seeds differ per group so that elections of many groups do not move in step.
            config.seed = options.member.wrapping_mul(0x9E37_79B9).wrapping_add(group);
            // The newest checkpoint the log continues from: only the entries after it are
            // applied again.
            let restored = match options.snapshots.group_dir(group) {
                Some(path) => {
                    // Opened here, before any helper thread runs: opening removes the
                    // temporary files of writes a crash interrupted, which must never
                    // race a write in progress. The helpers get clones.
                    let dir = CheckpointDir::open(&path).map_err(|e| ShardError::Group {
                        group,
                        reason: e.to_string(),
                    })?;
                    snapshots.dirs.insert(group, dir.clone());
                    let fits_log = |index: u64, term: u64| {
                        let s = store.borrow();
                        index + 1 >= s.first_index(group)
                            && index <= s.last_index(group)
                            && s.term(group, index).is_ok_and(|t| t == term)
                    };
                    let (restored, refused) = snapshot::restore(
                        &dir,
                        &options.kv_limits,
                        options.sessions_max,
                        &fits_log,
                    )
                    .map_err(|reason| ShardError::Group { group, reason })?;
                    if restored.is_none() {
                        check_log_needs_no_checkpoint(&store, group, Some(&refused))?;
                    }
                    restored
                }
                None => {
                    check_log_needs_no_checkpoint(&store, group, None)?;
                    None
                }
            };
            if let Some(r) = &restored {
                storage.set_restored(r.index, r.conf_state.clone());
                config.applied = r.index;
            }
            let raw = RawNode::new(&config, storage).map_err(|e| ShardError::Group {
                group,
                reason: e.to_string(),
            })?;
            let g = Group::new(
                raw,
                options.kv_limits.clone(),
                options.sessions_max,
                restored,
            )
            .map_err(|reason| ShardError::Group { group, reason })?;
            let mut g = g;
            // The log may record a newer snapshot than the checkpoint restored (a newer file
            // was corrupt): never record an older one after it.
            let recorded = match store.borrow().snapshot(group) {
                None => 0,
                Some(s) => {
                    decode_conf_state(&s.conf_state).map_err(|e| ShardError::Group {
                        group,
                        reason: format!(
                            "the conf state of the snapshot the log records at index {} does \
                             not decode: {e}",
                            s.index
                        ),
                    })?;
                    s.index
                }
            };
            g.snapshot_index = g.snapshot_index.max(recorded);
            hosted.insert(group, g);
        }

        Ok(Shard {
            options,
            store,
            groups: hosted,
            in_flight: VecDeque::new(),
            answers: Vec::new(),
            next_read_context: 1,
            pending_hs_groups: Vec::new(),
            stats: ShardStats::default(),
            snapshots,
            purged_lsn: 0,
            membership: None,
        })
    }

    /// Sets the waker that helper threads (checkpoint writers, snapshot installs) wake when
    /// they have something for the shard's next round.
    pub fn set_waker(&mut self, waker: std::task::Waker) {
        self.snapshots.waker = Some(waker);
    }

    /// Counters of the shard's snapshots.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.snapshots.stats
    }

    /// This member's id.
    pub fn member(&self) -> NodeId {
        self.options.member
    }

    /// The shard's log store (a runtime polls [`LogStore::poll_durable`] on it).
    pub fn store(&self) -> &SharedStore<B> {
        &self.store
    }

    /// Counters since the shard started.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// The groups this shard hosts.
    pub fn groups(&self) -> impl Iterator<Item = u64> + '_ {
        self.groups.keys().copied()
    }

    /// The leader of `group` as this member knows it (`None`: unknown or not hosted).
    pub fn leader(&self, group: u64) -> Option<NodeId> {
        self.groups
            .get(&group)
            .map(|g| g.leader)
            .filter(|&l| l != crate::consensus::NO_NODE)
    }

    /// Whether this member leads `group`.
    pub fn is_leader(&self, group: u64) -> bool {
        self.leader(group) == Some(self.options.member)
    }

    /// Moves leadership of each group this member leads to the group's preferred member
    /// (group `g` prefers the `g mod n`-th of the members, in ascending id order) once that
    /// member has every entry, so that every member — and every core — leads a share of the
    /// groups. Call it every few ticks.
    pub fn balance_leaders(&mut self) {
        let me = self.options.member;
        for (&group, g) in self.groups.iter_mut() {
            g.note_transfer(me);
            if g.leader != me {
                continue;
            }
            let status = g.raw.status();
            // The group's voters now, less those the target membership takes out (they
            // are on their way out: leading would only delay their removal).
            let mut members: Vec<NodeId> = status
                .conf_state
                .voters
                .iter()
                .copied()
                .filter(|id| {
                    self.membership
                        .as_ref()
                        .is_none_or(|t| t.voters.contains(id))
                })
                .collect();
            members.sort_unstable();
            if members.is_empty() || !status.conf_state.voters_outgoing.is_empty() {
                continue;
            }
            let n = u64::try_from(members.len()).unwrap_or(u64::MAX);
            let preferred = members[usize::try_from(group % n).unwrap_or(0)];
            if preferred == me {
                continue;
            }
            let caught_up = status
                .progress
                .get(&preferred)
                .is_some_and(|p| p.matched == status.basic.last_index);
            if caught_up {
                g.try_transfer(preferred);
            }
        }
    }

    /// Sets the membership every group is driven toward (see `membership.rs`): the leader
    /// of each group takes one step toward it in each [`Shard::reconcile_membership`]. The
    /// host hands every shard of every member the same target (the cluster's replicated
    /// member list). An invalid target is refused and the previous one kept.
    pub fn set_membership(&mut self, target: Membership) -> Result<(), ShardError> {
        target.validate().map_err(ShardError::InvalidOptions)?;
        if self.membership.as_ref() != Some(&target) {
            tracing::info!(
                voters = ?target.voters,
                learners = ?target.learners,
                "membership target set"
            );
            self.membership = Some(target);
        }
        Ok(())
    }

    /// The membership the groups are driven toward, if the host set one.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// Moves each group this member leads one configuration change toward the target
    /// membership, when the group may change now (no change pending, an entry of the
    /// leader's term committed). Call it every few ticks, as [`Shard::balance_leaders`].
    pub fn reconcile_membership(&mut self) {
        let Some(target) = self.membership.as_ref() else {
            return;
        };
        let me = self.options.member;
        for (&group, g) in self.groups.iter_mut() {
            if g.leader != me || g.removed || g.raw.conf_change_blocked() {
                continue;
            }
            match membership::next_step(&g.raw.status(), target) {
                None => {}
                Some(membership::Step::Propose(cc)) => {
                    tracing::info!(group, change = ?cc, "proposing a membership change");
                    if let Err(error) = g.raw.propose_conf_change(&cc) {
                        tracing::debug!(group, %error, "membership change not proposed; retried");
                    }
                }
                Some(membership::Step::TransferLeader(to)) => {
                    tracing::info!(
                        group,
                        to,
                        "handing leadership over before leaving the group"
                    );
                    g.try_transfer(to);
                }
            }
        }
    }

    /// The learners of `group` within [`PROMOTE_LAG_ENTRIES_MAX`] entries of its commit
    /// index, as this member sees them leading it (empty when it does not lead it).
    pub fn learners_in_sync(&self, group: u64) -> std::collections::BTreeSet<NodeId> {
        let Some(g) = self.groups.get(&group) else {
            return Default::default();
        };
        let status = g.raw.status();
        let commit = status.basic.commit;
        status
            .progress
            .iter()
            .filter(|(_, p)| p.is_learner && p.matched + PROMOTE_LAG_ENTRIES_MAX >= commit)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The voters of `group` this member, leading it, heard from within the last election
    /// timeout (itself included); empty when it does not lead the group.
    pub fn active_voters(&self, group: u64) -> std::collections::BTreeSet<NodeId> {
        let Some(g) = self.groups.get(&group) else {
            return Default::default();
        };
        let status = g.raw.status();
        status
            .progress
            .iter()
            .filter(|(_, p)| !p.is_learner && p.recent_active)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The membership of `group` as this replica applied it (`None`: not hosted).
    pub fn conf_state(&self, group: u64) -> Option<ConfState> {
        self.groups.get(&group).map(|g| g.raw.status().conf_state)
    }

    /// The groups that removed this member (a membership change applied here took it
    /// out); the member serves them no more.
    pub fn removed_groups(&self) -> Vec<u64> {
        self.groups
            .iter()
            .filter(|(_, g)| g.removed)
            .map(|(&group, _)| group)
            .collect()
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        for g in self.groups.values_mut() {
            g.raw.tick();
            // A transfer the tick abandoned releases its held proposals at once, before
            // housekeeping may start another transfer on the same tick.
            g.release_held(&mut self.answers);
        }
    }

    /// Starts an election of `group` now (for tests and leadership placement).
    pub fn campaign(&mut self, group: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.campaign();
        }
    }

    /// Asks the leader of `group` (this member) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, group: u64, to: NodeId) {
        if let Some(g) = self.groups.get_mut(&group) {
            let _ = g.raw.transfer_leader(to);
        }
    }

    /// Feeds a message from a peer. Messages for groups not hosted here, and messages the
    /// core refuses (malformed, misrouted), are dropped: nothing a peer sends stops the
    /// shard. So are snapshot messages: a snapshot arrives in chunks
    /// ([`Shard::receive_snapshot_chunk`]) and is stepped only once installed.
    pub fn step(&mut self, message: Message) {
        if message.msg_type == MessageType::Snapshot {
            tracing::warn!(
                group = message.group_id,
                from = message.from,
                "a snapshot message outside a snapshot transfer was dropped"
            );
            return;
        }
        if let Some(g) = self.groups.get_mut(&message.group_id) {
            let _ = g.raw.step(message);
        }
    }

    /// Reports that messages to `peer` of `group` could not be delivered.
    pub fn report_unreachable(&mut self, group: u64, peer: NodeId) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.report_unreachable(peer);
        }
    }

    /// Takes a write for `group`: a transaction named by client and sequence, with the
    /// client's floor (its smallest unanswered sequence; see [`Sessions`]).
    pub fn write(
        &mut self,
        id: RequestId,
        group: u64,
        (client_id, sequence, floor): (u64, u64, u64),
        txn: Txn,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.answers
                .push((id, Outcome::Failed(RequestError::UnknownGroup(group))));
            return;
        };
        let command = Command {
            client_id,
            sequence,
            floor,
            txn,
        };
        g.write(id, command, &mut self.answers);
    }

    /// Takes a compaction of `group`'s history below `revision` (etcd's `Compact`): the
    /// leader proposes it, every replica applies it in log order, and it is answered with
    /// the leader's result when it applies (see `command.rs`).
    pub fn compact(&mut self, id: RequestId, group: u64, revision: u64) {
        match self.groups.get_mut(&group) {
            Some(g) => g.compact(id, revision, &mut self.answers),
            None => self
                .answers
                .push((id, Outcome::Failed(RequestError::UnknownGroup(group)))),
        }
    }

    /// Proposes an anonymous write to `group` wherever its leader is: a follower's proposal
    /// is forwarded to the leader by raft. Nobody waits for it; returns whether it was taken
    /// (no leader known: dropped). For cluster metadata a member publishes about itself.
    pub fn propose_anywhere(&mut self, group: u64, txn: Txn) -> bool {
        let Some(g) = self.groups.get_mut(&group) else {
            return false;
        };
        let command = Command {
            client_id: 0,
            sequence: 0,
            floor: 0,
            txn,
        };
        g.raw.propose(command.encode()).is_ok()
    }

    /// Takes a read of `group`.
    pub fn read(
        &mut self,
        id: RequestId,
        group: u64,
        request: RangeRequest,
        consistency: ReadConsistency,
    ) {
        match self.groups.get_mut(&group) {
            Some(g) => g.read(id, request, consistency, &mut self.answers),
            None => self
                .answers
                .push((id, Outcome::Failed(RequestError::UnknownGroup(group)))),
        }
    }

    /// Answers ready since the last call.
    pub fn take_answers(&mut self) -> Vec<(RequestId, Outcome)> {
        std::mem::take(&mut self.answers)
    }

    /// Whether any group has work for a round.
    pub fn has_work(&self) -> bool {
        self.groups
            .values()
            .any(|g| g.raw.has_ready() || g.can_release_held())
    }

    /// One round: sends this round's reads, takes the Ready of every group with work,
    /// applies what is committed and durable, and stages the unstable entries and hard
    /// states of all groups as one log append. See the module documentation.
    pub fn round(&mut self) -> Result<Round, ShardError> {
        let mut round = Round::default();
        self.background();
        // Back-pressure: with the log store's bound of appends in flight, the groups' work
        // waits (their Readies stay untaken) until an append is durable.
        if self.in_flight.len() >= self.store.borrow().options().inflight_writes_max {
            return Ok(round);
        }
        for g in self.groups.values_mut() {
            let context = self.next_read_context;
            self.next_read_context += 1;
            g.flush_reads(context, context | (1 << 63), &mut self.answers);
        }
        let mut batch = WriteBatch::new();
        let mut acks = Vec::new();
        for (&group, g) in self.groups.iter_mut() {
            // Writes held while a transfer of leadership was under way go once it was
            // abandoned, in this round's Ready.
            g.release_held(&mut self.answers);
            if !g.raw.has_ready() {
                continue;
            }
            let rd = g.raw.ready();
            if let Some(soft) = rd.soft_state {
                let was_leader = g.leader == self.options.member;
                g.leader = soft.leader_id;
                if was_leader && soft.leader_id != self.options.member {
                    g.lost_leadership(&mut self.answers);
                }
            }
            for m in rd.messages {
                if m.msg_type == MessageType::Snapshot {
                    start_transfer(&mut self.snapshots, self.options.member, group, g, m);
                } else {
                    round.messages.push(m);
                }
            }
            if let Some(mut append) = rd.append {
                let mut wrote = !append.entries.is_empty();
                if let Some(snap) = append.snapshot.take() {
                    install_ready_snapshot(&mut self.snapshots, &self.options, group, g, &snap)?;
                    if let Some(hs) = append.hard_state.take() {
                        // Before the snapshot, so that its reset record carries it.
                        batch.set_hard_state(group, storage::store_hard_state(&hs));
                        g.persisted_hs = hs;
                        g.pending_hs = None;
                    }
                    batch.apply_snapshot(
                        group,
                        SnapshotMeta {
                            index: snap.metadata.index,
                            term: snap.metadata.term,
                            conf_state: encode_conf_state(&snap.metadata.conf_state),
                        },
                    );
                    wrote = true;
                }
                if !append.entries.is_empty() {
                    round.entries_written += append.entries.len();
                    batch.append(group, append.entries.iter().map(encode_entry).collect());
                }
                if let Some(hs) = append.hard_state {
                    let commit_only =
                        hs.term == g.persisted_hs.term && hs.vote == g.persisted_hs.vote;
                    if commit_only && append.entries.is_empty() {
                        // Only the commit index moved. It need not be durable now (after a
                        // restart raft learns it again from the leader); it rides with the
                        // group's next write instead of costing a write of its own.
                        if g.pending_hs.replace(hs).is_none() {
                            self.pending_hs_groups.push(group);
                        }
                    } else {
                        batch.set_hard_state(group, storage::store_hard_state(&hs));
                        g.persisted_hs = hs;
                        g.pending_hs = None;
                        wrote = true;
                    }
                }
                if wrote {
                    round.groups_written += 1;
                }
                acks.push(append.ack);
            }
            if let Some(apply) = rd.apply {
                g.apply(&apply.entries, &mut self.answers)
                    .map_err(|reason| ShardError::Group { group, reason })?;
                g.raw.on_applied(apply.ack);
            }
            if !rd.read_states.is_empty() {
                g.read_states(rd.read_states);
            }
            g.serve_ready_reads(&mut self.answers);
        }
        self.record_checkpoints(&mut batch);
        if !batch.is_empty() {
            for group in self.pending_hs_groups.drain(..) {
                let Some(g) = self.groups.get_mut(&group) else {
                    continue;
                };
                if let Some(hs) = g.pending_hs.take() {
                    batch.set_hard_state(group, storage::store_hard_state(&hs));
                    g.persisted_hs = hs;
                }
            }
            let ticket = self.store.borrow_mut().stage(batch)?;
            self.stats.writes += 1;
            self.stats.groups_written += round.groups_written as u64;
            self.stats.entries_written += round.entries_written as u64;
            self.in_flight.push_back((ticket, acks));
            round.staged = Some(ticket);
        } else if !acks.is_empty() {
            match self.in_flight.back_mut() {
                // Responses that vouch for writes still in flight wait for them.
                Some((_, pending)) => pending.extend(acks),
                None => self.deliver(acks),
            }
        }
        Ok(round)
    }

    /// Reports that the append of `ticket` is durable (tickets come back in stage order).
    pub fn on_durable(&mut self, ticket: Ticket) -> Result<(), ShardError> {
        match self.in_flight.front() {
            Some((oldest, _)) if *oldest == ticket => {}
            other => {
                return Err(ShardError::OutOfOrder {
                    got: ticket.seq(),
                    expected: other.map(|(t, _)| t.seq()),
                });
            }
        }
        let (_, acks) = self.in_flight.pop_front().expect("checked above");
        self.deliver(acks);
        Ok(())
    }

    /// Appends staged and not yet reported durable.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn deliver(&mut self, acks: Vec<AppendAck>) {
        for ack in acks {
            if let Some(g) = self.groups.get_mut(&ack.group_id) {
                g.raw.on_append_durable(ack);
            }
        }
    }

    /// Picks up what the helper threads finished, feeds the checkpoint being written, and
    /// starts the next checkpoint that is due.
    fn background(&mut self) {
        if !self.snapshots.enabled() {
            return;
        }
        while let Ok(done) = self.snapshots.done_rx.try_recv() {
            self.on_done(done);
        }
        for (&group, g) in self.groups.iter_mut() {
            // An install waits only while raft holds its snapshot unstable and its Ready is
            // not taken yet; once raft dropped that snapshot, the install is left over.
            let unstable = g.raw.basic_status().unstable.snapshot_index;
            if let Some(inst) = g.pending_install.as_ref()
                && unstable != Some(inst.meta.index)
            {
                tracing::info!(
                    group,
                    index = inst.meta.index,
                    "raft dropped the snapshot of a pending install; install dropped"
                );
                g.pending_install = None;
            }
        }
        self.feed_checkpoint();
        if self.snapshots.writing.is_none() && self.snapshots.writer_busy.is_none() {
            self.start_checkpoint();
        }
    }

    fn on_done(&mut self, done: Done) {
        let sn = &mut self.snapshots;
        match done {
            Done::Checkpoint {
                group,
                result,
                urgent,
            } => {
                sn.writer_busy = None;
                match result {
                    Ok(meta) => {
                        tracing::debug!(group, index = meta.index, "checkpoint written");
                        sn.stats.checkpoints_failing = 0;
                        sn.to_record.push((group, meta, urgent));
                    }
                    Err(error) => {
                        sn.stats.checkpoints_failed += 1;
                        sn.stats.checkpoints_failing += 1;
                        let in_a_row = sn.stats.checkpoints_failing;
                        if in_a_row >= CHECKPOINT_FAILURES_LOUD {
                            tracing::error!(
                                group,
                                %error,
                                in_a_row,
                                "checkpoints keep failing: the shard's logs are not compacted \
                                 and grow"
                            );
                        } else {
                            tracing::warn!(group, %error, in_a_row, "checkpoint failed; the group tries again later");
                        }
                    }
                }
            }
            Done::InstallFailed { group, from, error } => {
                sn.installing.remove(&group);
                sn.stats.rejected += 1;
                tracing::warn!(
                    group,
                    from,
                    %error,
                    "received snapshot rejected; the leader sends it again later"
                );
            }
            Done::Installed(inst) => {
                sn.installing.remove(&inst.group);
                let Some(g) = self.groups.get_mut(&inst.group) else {
                    return;
                };
                let conf_state = match decode_conf_state(&inst.meta.conf_state) {
                    Ok(cs) => cs,
                    Err(error) => {
                        // Never guess the members: the install fails, and its file (recorded
                        // nowhere) goes unless the group has a checkpoint of its own there.
                        sn.stats.rejected += 1;
                        tracing::error!(
                            group = inst.group,
                            from = inst.from,
                            index = inst.meta.index,
                            %error,
                            "received snapshot rejected: its conf state does not decode"
                        );
                        let index = inst.meta.index;
                        if index != g.snapshot_index
                            && index != g.last_checkpoint
                            && let Some(dir) = sn.dirs.get(&inst.group)
                        {
                            let _ = std::fs::remove_file(dir.path_for(index));
                        }
                        return;
                    }
                };
                let mut m = Message::new(MessageType::Snapshot, inst.from, self.options.member);
                m.group_id = inst.group;
                m.term = inst.term;
                m.snapshot = Some(Snapshot {
                    metadata: SnapshotMetadata {
                        index: inst.meta.index,
                        term: inst.meta.term,
                        conf_state,
                    },
                    data: Vec::new(),
                });
                let index = inst.meta.index;
                // The install is kept aside until raft decides: a pending install (of a
                // snapshot raft accepted earlier, whose Ready is not taken yet) is replaced
                // only if raft accepts this one.
                let before = g.raw.basic_status().unstable.snapshot_index;
                let _ = g.raw.step(m);
                let after = g.raw.basic_status().unstable.snapshot_index;
                if after == Some(index) && before != Some(index) {
                    g.pending_install = Some(inst);
                } else {
                    // Raft did not take it (it has the entries already, a newer snapshot
                    // is pending or being written, or a newer leader took over): the
                    // loaded state is not needed.
                    tracing::info!(
                        group = inst.group,
                        from = inst.from,
                        index,
                        "received snapshot not needed by raft; dropped"
                    );
                    // Its published file is recorded nowhere: delete it, unless the group
                    // has (or is writing, or recording) a checkpoint of its own there.
                    let own = index == g.snapshot_index
                        || index == g.last_checkpoint
                        || g.pending_install
                            .as_ref()
                            .is_some_and(|p| p.meta.index == index)
                        || sn
                            .to_record
                            .iter()
                            .any(|(r, m, _)| *r == inst.group && m.index == index);
                    if !own && let Some(dir) = sn.dirs.get(&inst.group) {
                        let path = dir.path_for(index);
                        if let Err(error) = std::fs::remove_file(&path) {
                            tracing::warn!(path = %path.display(), %error, "refused snapshot file not removed");
                        }
                    }
                }
            }
        }
    }

    /// Hands the checkpoint being written its next chunk of entries (one read of at most
    /// `checkpoint_round_entries_max` entries per round), then its end.
    fn feed_checkpoint(&mut self) {
        let entries_max = self.snapshots.options.checkpoint_round_entries_max;
        let Some(w) = self.snapshots.writing.as_mut() else {
            return;
        };
        let Some(g) = self.groups.get_mut(&w.group) else {
            self.snapshots.writing = None;
            return;
        };
        let mut read = false;
        loop {
            if w.held.is_none() {
                if w.read_all {
                    w.held = Some(Piece::End);
                } else if read {
                    return;
                } else {
                    let chunk = g.kv.snapshot_chunk(w.after.as_deref(), entries_max);
                    read = true;
                    w.read_all = chunk.len() < entries_max;
                    if let Some(last) = chunk.last() {
                        w.after = Some(last.key.clone());
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    w.held = Some(Piece::Entries(chunk));
                }
            }
            let Some(piece) = w.held.take() else {
                return;
            };
            let end = matches!(piece, Piece::End);
            match w.pieces.try_send(piece) {
                Ok(()) if end => {
                    g.kv.end_snapshot();
                    self.snapshots.writing = None;
                    return;
                }
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(piece)) => {
                    w.held = Some(piece);
                    return;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    // The writer stopped (its error comes back through `on_done`).
                    g.kv.end_snapshot();
                    self.snapshots.writing = None;
                    return;
                }
            }
        }
    }

    /// Starts a checkpoint of the first group that is due: it applied `snapshot_entries`
    /// entries or `snapshot_bytes` bytes since its last one, or it pins old log segments.
    fn start_checkpoint(&mut self) {
        let opts = &self.snapshots.options;
        let urgent = &self.snapshots.urgent;
        let due = self.groups.iter().find_map(|(&group, g)| {
            let applied = g.kv.applied_index();
            let busy = g.pending_install.is_some()
                || g.raw.basic_status().unstable.snapshot_index.is_some()
                || applied == 0;
            if busy {
                return None;
            }
            let is_urgent = urgent.contains(&group);
            let due = is_urgent
                || applied.saturating_sub(g.last_checkpoint) >= opts.snapshot_entries
                || g.bytes_since_checkpoint >= opts.snapshot_bytes;
            due.then_some((group, is_urgent))
        });
        let Some((group, urgent)) = due else {
            return;
        };
        self.snapshots.urgent.retain(|&u| u != group);
        let Some(dir) = self.snapshots.dirs.get(&group).cloned() else {
            return;
        };
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let applied = g.kv.applied_index();
        if urgent && applied == g.last_checkpoint && applied == g.snapshot_index {
            // Nothing applied since the checkpoint the log records: its file stands, and
            // only its records (which the log has moved far past) are written again at
            // the head, with the hard state, so that they no longer pin old segments.
            if let Ok(term) = g.raw.term(applied) {
                let meta = CheckpointMeta {
                    index: applied,
                    term,
                    conf_state: encode_conf_state(&g.raw.status().conf_state),
                    ..CheckpointMeta::default()
                };
                self.snapshots.to_record.push((group, meta, true));
            }
            return;
        }
        let Some(info) = g.kv.begin_snapshot() else {
            return;
        };
        let index = info.applied_index;
        let Ok(term) = g.raw.term(index) else {
            g.kv.end_snapshot();
            return;
        };
        let header = CheckpointMeta {
            index,
            term,
            revision: info.revision,
            entry_count: 0,
            conf_state: encode_conf_state(&g.raw.status().conf_state),
            app_state: g.sessions.encode(),
        };
        match self
            .snapshots
            .start_writer(group, dir, header, urgent, g.snapshot_index)
        {
            Ok(pieces) => {
                g.last_checkpoint = index;
                g.bytes_since_checkpoint = 0;
                self.snapshots.writer_busy = Some(group);
                self.snapshots.writing = Some(Writing {
                    group,
                    after: None,
                    held: None,
                    read_all: false,
                    pieces,
                });
            }
            Err(error) => {
                g.kv.end_snapshot();
                tracing::warn!(group, %error, "checkpoint not started");
            }
        }
    }

    /// Puts the durable checkpoints into the round's write: the snapshot metadata, the
    /// group's hard state again (so that no older hard-state record pins the log), and the
    /// compaction up to the checkpoint minus the catch-up entries.
    fn record_checkpoints(&mut self, batch: &mut WriteBatch) {
        let catchup = self.snapshots.options.catchup_entries;
        for (group, meta, urgent) in std::mem::take(&mut self.snapshots.to_record) {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if meta.index < g.snapshot_index
                || g.pending_install.is_some()
                || g.raw.basic_status().unstable.snapshot_index.is_some()
            {
                // A snapshot installed meanwhile supersedes it.
                continue;
            }
            let hs = g.pending_hs.take().unwrap_or(g.persisted_hs);
            if hs != crate::consensus::HardState::default() {
                batch.set_hard_state(group, storage::store_hard_state(&hs));
                g.persisted_hs = hs;
            }
            batch.set_snapshot(
                group,
                SnapshotMeta {
                    index: meta.index,
                    term: meta.term,
                    conf_state: meta.conf_state,
                },
            );
            let keep = if urgent { 0 } else { catchup };
            let to = meta.index.saturating_sub(keep);
            if to > 0 && to + 1 >= self.store.borrow().first_index(group) {
                // At the compaction point itself, this writes its record again at the head.
                batch.compact(group, to);
            }
            g.snapshot_index = meta.index;
            self.snapshots.stats.checkpoints += 1;
        }
    }

    /// Asks the groups that pin old log segments (see
    /// [`LogStore::groups_pinning_old_segments`]) to checkpoint and compact fully, so that
    /// the log can be purged. Call it now and then (the runtime does, every few ticks).
    pub fn check_log_space(&mut self) {
        if !self.snapshots.enabled() {
            return;
        }
        let lagging = self.store.borrow().groups_pinning_old_segments();
        for group in lagging {
            if !self.snapshots.urgent.contains(&group) {
                self.snapshots.urgent.push(group);
            }
        }
    }

    /// The log position below which the log holds nothing any group needs, when it moved
    /// since the last call: the host purges the log there (`Wal::purge_before`, off the
    /// shard thread; any position returned stays safe to purge at, since pins only move
    /// forward).
    pub fn purge_lsn(&mut self) -> Option<u64> {
        let lsn = self.store.borrow().pinned_lsn();
        (lsn > self.purged_lsn).then(|| {
            self.purged_lsn = lsn;
            lsn
        })
    }

    /// The next chunk of every snapshot transfer in progress (one each), to send to their
    /// peers now. A transfer whose last chunk went out in an earlier call and was not
    /// refused is reported to raft as sent.
    pub fn take_snapshot_chunks(&mut self) -> Vec<SnapshotChunk> {
        self.take_snapshot_chunks_where(|_| true)
    }

    /// [`Shard::take_snapshot_chunks`], reading no chunk for a peer for which `room` says
    /// the transport would refuse it as busy (those transfers wait for a later call).
    pub fn take_snapshot_chunks_where(
        &mut self,
        mut room: impl FnMut(NodeId) -> bool,
    ) -> Vec<SnapshotChunk> {
        let mut chunks = Vec::new();
        let mut ended = Vec::new();
        let member = self.options.member;
        let mut transfers = std::mem::take(&mut self.snapshots.outbound);
        for mut t in transfers.drain(..) {
            if t.offset == t.total {
                ended.push((t.group, t.to, true));
                continue;
            }
            if !room(t.to) {
                self.snapshots.outbound.push(t);
                continue;
            }
            match self.snapshots.next_chunk(&mut t, member) {
                Ok(chunk) => {
                    chunks.push(chunk);
                    self.snapshots.outbound.push(t);
                }
                Err(error) => {
                    tracing::warn!(group = t.group, to = t.to, %error, "snapshot transfer abandoned");
                    ended.push((t.group, t.to, false));
                }
            }
        }
        for (group, to, sent) in ended {
            self.end_transfer(group, to, sent);
        }
        chunks
    }

    /// Reports that `chunk` (from [`Shard::take_snapshot_chunks`]) could not be sent:
    /// `busy` (the peer's queue is full) sends it again later; otherwise (the peer is
    /// unreachable) the transfer is abandoned and raft retries it later.
    pub fn snapshot_chunk_refused(&mut self, chunk: &SnapshotChunk, busy: bool) {
        let Some(pos) = self
            .snapshots
            .outbound
            .iter()
            .position(|t| t.group == chunk.group_id && t.to == chunk.to)
        else {
            return;
        };
        if busy {
            self.snapshots.outbound[pos].offset = chunk.offset;
        } else {
            self.snapshots.outbound.remove(pos);
            self.end_transfer(chunk.group_id, chunk.to, false);
        }
    }

    /// Reports that chunks of `group`'s snapshot transfer to `peer` were lost with a broken
    /// connection (the transport's `take_lost_snapshot_chunks`): the transfer is abandoned
    /// and reported to raft as failed, never as sent; raft sends the snapshot again later.
    pub fn snapshot_transfer_lost(&mut self, group: u64, peer: NodeId) {
        let pos = self
            .snapshots
            .outbound
            .iter()
            .position(|t| t.group == group && t.to == peer);
        match pos {
            Some(pos) => {
                self.snapshots.outbound.remove(pos);
                tracing::warn!(
                    group,
                    to = peer,
                    "snapshot transfer lost with its connection"
                );
                self.end_transfer(group, peer, false);
            }
            // Reported sent already (its last chunk was in the queue): the peer is
            // unreachable, which raft answers by probing it again.
            None => self.report_unreachable(group, peer),
        }
    }

    fn end_transfer(&mut self, group: u64, to: NodeId, sent: bool) {
        if sent {
            self.snapshots.stats.sent += 1;
            tracing::info!(group, to, "snapshot sent");
        } else {
            self.snapshots.stats.send_failures += 1;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.report_snapshot(to, sent);
        }
    }

    /// Takes a chunk of a snapshot transfer from a peer. Once a transfer is complete, a
    /// helper thread verifies, publishes and loads it, and the snapshot is stepped into
    /// raft in a later round. An error means the chunk (and its transfer) was dropped; the
    /// host logs it, and raft sends the snapshot again later.
    pub fn receive_snapshot_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), SnapshotError> {
        let group = chunk.group_id;
        if !self.snapshots.enabled()
            || !self.groups.contains_key(&group)
            || chunk.to != self.options.member
        {
            self.snapshots.stats.rejected += 1;
            return Err(SnapshotError::NotAccepted { group });
        }
        match self.snapshots.receive(chunk) {
            Ok(Some((from, transfer))) => {
                if let Some(reason) = self.snapshots.install_refused(group, transfer.index) {
                    self.snapshots.stats.rejected += 1;
                    tracing::info!(
                        group,
                        from,
                        index = transfer.index,
                        %reason,
                        "received snapshot dropped; the leader sends it again later"
                    );
                    return Ok(());
                }
                tracing::info!(
                    group,
                    from,
                    index = transfer.index,
                    bytes = transfer.total,
                    "snapshot received; installing"
                );
                self.snapshots.start_install(
                    group,
                    from,
                    transfer,
                    self.options.kv_limits.clone(),
                    self.options.sessions_max,
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.snapshots.stats.rejected += 1;
                Err(e)
            }
        }
    }

    /// Reads `group`'s state machine directly, as this replica has it (tests, status).
    pub fn local_range(&self, group: u64, request: &RangeRequest) -> Option<RangeResponse> {
        self.groups.get(&group).and_then(|g| g.range(request))
    }

    /// The index `group`'s state machine has applied.
    pub fn applied_index(&self, group: u64) -> u64 {
        self.groups.get(&group).map_or(0, |g| g.kv.applied_index())
    }

    /// Raft and state-machine figures of `group` for status answers (`None`: not hosted).
    pub fn group_facts(&self, group: u64) -> Option<GroupFacts> {
        self.groups.get(&group).map(|g| {
            let status = g.raw.basic_status();
            GroupFacts {
                term: status.term,
                commit: status.commit,
                applied: g.kv.applied_index(),
                revision: g.kv.revision(),
                data_bytes: g.kv.data_bytes(),
            }
        })
    }
}

/// With no usable checkpoint a group starts from an empty state machine, which is right
/// only while its log still starts at the first entry and records no snapshot: otherwise
/// the entries before the log's first index would be lost, so the start is refused, naming
/// the checkpoint files considered (`None`: snapshots are off) and why each was refused.
fn check_log_needs_no_checkpoint<B: AsyncLogBackend>(
    store: &SharedStore<B>,
    group: u64,
    refused: Option<&[String]>,
) -> Result<(), ShardError> {
    let s = store.borrow();
    let first = s.first_index(group);
    let recorded = s.snapshot(group).map(|m| m.index);
    if first <= 1 && recorded.is_none() {
        return Ok(());
    }
    let considered = match refused {
        None => "snapshots are off (no checkpoint directory)".to_string(),
        Some([]) => "no checkpoint file was found".to_string(),
        Some(files) => format!("checkpoints refused: {}", files.join("; ")),
    };
    Err(ShardError::Group {
        group,
        reason: format!(
            "no usable checkpoint, but the log starts at index {first}{}: starting from an \
             empty state would lose the entries before it ({considered})",
            recorded.map_or(String::new(), |i| format!(
                " and records a snapshot at index {i}"
            )),
        ),
    })
}

/// Starts sending the snapshot raft asked for in `m` (its data is empty: the checkpoint
/// file is sent in chunks), or reports at once to raft that it could not be sent.
fn start_transfer<B: AsyncLogBackend>(
    sn: &mut Snapshots,
    member: NodeId,
    group: u64,
    g: &mut Group<B>,
    m: Message,
) {
    let Some(snap) = m.snapshot.as_ref() else {
        return;
    };
    let to = m.to;
    if sn.outbound.iter().any(|t| t.group == group && t.to == to) {
        // The same follower's transfer is under way; it answers when it has installed it.
        return;
    }
    let index = snap.metadata.index;
    let opened = match sn.options.group_dir(group) {
        None => Err("snapshots are off".to_string()),
        Some(_) if sn.outbound.len() >= sn.options.transfers_max => Err(format!(
            "{} transfers under way (transfers_max)",
            sn.outbound.len()
        )),
        Some(dir) => {
            let path = CheckpointDir::path_in(&dir, index);
            std::fs::File::open(&path)
                .and_then(|f| f.metadata().map(|md| (f, md.len())))
                .map_err(|e| format!("opening {}: {e}", path.display()))
        }
    };
    match opened {
        Ok((file, total)) => {
            tracing::info!(
                group,
                from = member,
                to,
                index,
                bytes = total,
                "sending a snapshot"
            );
            sn.outbound.push(Outbound {
                group,
                to,
                term: m.term,
                index,
                snapshot_term: snap.metadata.term,
                file,
                total,
                offset: 0,
            });
        }
        Err(error) => {
            tracing::warn!(group, to, index, %error, "snapshot not sent; raft retries later");
            sn.stats.send_failures += 1;
            g.raw.report_snapshot(to, false);
        }
    }
}

/// Raft accepted a received snapshot (a Ready carries it): the group's state machine and
/// sessions become the ones loaded from it. The caller stages its log records.
fn install_ready_snapshot<B: AsyncLogBackend>(
    sn: &mut Snapshots,
    options: &ShardOptions,
    group: u64,
    g: &mut Group<B>,
    snap: &Snapshot,
) -> Result<(), ShardError> {
    let index = snap.metadata.index;
    let inst = match g.pending_install.take() {
        Some(inst) if inst.meta.index == index => inst,
        other => {
            // Not expected (an install waits until raft accepted its snapshot); the file
            // raft accepted was published by its install, so load it here rather than
            // stop the shard.
            tracing::error!(
                group,
                index,
                pending = other.as_ref().map(|i| i.meta.index),
                "raft accepted a snapshot with no install pending; loading its file"
            );
            load_installed(sn, options, group, index).map_err(|reason| ShardError::Group {
                group,
                reason: format!(
                    "raft accepted snapshot {index}, which is not installed here: {reason}"
                ),
            })?
        }
    };
    if sn.writing.as_ref().is_some_and(|w| w.group == group) {
        // The checkpoint being written reads the state machine being replaced: abandon it
        // (its writer sees the channel close and publishes nothing).
        sn.writing = None;
    }
    let inst = *inst;
    g.kv = inst.kv;
    g.sessions = inst.sessions;
    g.last_checkpoint = index;
    g.bytes_since_checkpoint = 0;
    g.snapshot_index = index;
    sn.stats.installed += 1;
    tracing::info!(group, from = inst.from, index, "snapshot installed");
    Ok(())
}

/// Loads the published checkpoint of `group` at `index` on the shard thread (the fallback of
/// [`install_ready_snapshot`]).
fn load_installed(
    sn: &Snapshots,
    options: &ShardOptions,
    group: u64,
    index: u64,
) -> Result<Box<snapshot::Installed>, String> {
    let dir = sn
        .dirs
        .get(&group)
        .ok_or_else(|| "snapshots are off".to_string())?;
    let reader =
        keel_engine::CheckpointReader::open(&dir.path_for(index)).map_err(|e| e.to_string())?;
    let meta = reader.meta().clone();
    let kv = reader
        .to_memtable(options.kv_limits.clone())
        .map_err(|e| e.to_string())?;
    let sessions = Sessions::decode(&meta.app_state, options.sessions_max)
        .map_err(|e| format!("its session table: {e}"))?;
    Ok(Box::new(snapshot::Installed {
        group,
        from: crate::consensus::NO_NODE,
        term: 0,
        meta,
        kv,
        sessions,
    }))
}
