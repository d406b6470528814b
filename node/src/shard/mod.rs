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
//! process, deterministically.

mod command;
mod group;
mod sessions;
mod storage;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use keel_engine::log_backend::AsyncLogBackend;
use keel_engine::txn::{RangeRequest, RangeResponse, Txn, TxnResponse};
use keel_engine::{KvLimits, LogStore, LogStoreError, Ticket, WriteBatch};

pub use command::Command;
pub use sessions::{Duplicate, Sessions};
pub use storage::{GroupStorage, SharedStore, decode_entry, encode_entry};

use crate::consensus::{AppendAck, Config, Message, NodeId, RawNode};
use group::Group;

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
    /// The shard does not host the group.
    UnknownGroup(u64),
    /// The group's leader refused more proposals for now (uncommitted entries at their
    /// bound); retry later.
    Busy,
    /// The client's write is below its floor: it was answered already, and its result is
    /// no longer kept.
    StaleSequence {
        /// The write's sequence.
        sequence: u64,
        /// The client's floor (its smallest unanswered sequence).
        floor: u64,
    },
    /// The state machine refused the request (a size limit, a bad range).
    Kv(String),
    /// The consensus core refused the request.
    Raft(String),
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
            RequestError::UnknownGroup(g) => write!(f, "group {g} is not hosted here"),
            RequestError::Busy => write!(f, "the group's leader is busy; retry"),
            RequestError::StaleSequence { sequence, floor } => write!(
                f,
                "write {sequence} was answered already (the client's writes below {floor} were)"
            ),
            RequestError::Kv(e) => write!(f, "{e}"),
            RequestError::Raft(e) => write!(f, "{e}"),
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
    /// The members of every group at creation (this member among them).
    pub members: Vec<NodeId>,
    /// The raft options every group starts from (`id` and `group_id` are set per group).
    pub raft: Config,
    /// Limits of each group's state machine.
    pub kv_limits: KvLimits,
    /// Clients each group remembers for exactly-once writes. Default 100,000.
    pub sessions_max: usize,
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
}

impl<B: AsyncLogBackend> Shard<B> {
    /// A shard hosting `groups` over `store` (recovered: each group restarts from what the
    /// store holds).
    pub fn new(
        options: ShardOptions,
        store: LogStore<B>,
        groups: &[u64],
    ) -> Result<Shard<B>, ShardError> {
        let store = Rc::new(RefCell::new(store));
        let mut hosted = BTreeMap::new();
        for &group in groups {
            let storage = GroupStorage::new(group, store.clone(), options.members.clone());
            let mut config = options.raft.clone();
            config.id = options.member;
            config.group_id = group;
            // Seeds differ per group so that elections of many groups do not move in step.
            config.seed = options.member.wrapping_mul(0x9E37_79B9).wrapping_add(group);
            let raw = RawNode::new(&config, storage).map_err(|e| ShardError::Group {
                group,
                reason: e.to_string(),
            })?;
            let g = Group::new(raw, options.kv_limits.clone(), options.sessions_max)
                .map_err(|reason| ShardError::Group { group, reason })?;
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
        })
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
        let mut members = self.options.members.clone();
        members.sort_unstable();
        if members.is_empty() {
            return;
        }
        let me = self.options.member;
        for (&group, g) in self.groups.iter_mut() {
            if g.leader != me {
                continue;
            }
            let n = u64::try_from(members.len()).unwrap_or(u64::MAX);
            let preferred = members[usize::try_from(group % n).unwrap_or(0)];
            if preferred == me {
                continue;
            }
            let status = g.raw.status();
            let caught_up = status
                .progress
                .get(&preferred)
                .is_some_and(|p| p.matched == status.basic.last_index);
            if caught_up {
                let _ = g.raw.transfer_leader(preferred);
            }
        }
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        for g in self.groups.values_mut() {
            g.raw.tick();
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
    /// shard.
    pub fn step(&mut self, message: Message) {
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
        self.groups.values().any(|g| g.raw.has_ready())
    }

    /// One round: sends this round's reads, takes the Ready of every group with work,
    /// applies what is committed and durable, and stages the unstable entries and hard
    /// states of all groups as one log append. See the module documentation.
    pub fn round(&mut self) -> Result<Round, ShardError> {
        let mut round = Round::default();
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
            round.messages.extend(rd.messages);
            if let Some(append) = rd.append {
                if append.snapshot.is_some() {
                    return Err(ShardError::Group {
                        group,
                        reason: "installing a snapshot is not supported yet".into(),
                    });
                }
                let mut wrote = !append.entries.is_empty();
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
