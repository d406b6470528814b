//! One raft group hosted by a shard: its consensus core, its state machine (a memtable with
//! etcd revisions of its own), its client sessions, and the requests waiting on it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use keel_engine::log_backend::LogBackend;
use keel_engine::txn::{RangeRequest, RangeResponse, TxnResponse};
use keel_engine::{KvError, KvLimits, Memtable};

use super::command::{Action, Command};
use super::sessions::{Duplicate, Sessions};
use super::storage::GroupStorage;
use super::{Outcome, ReadConsistency, RequestError, RequestId};
use crate::consensus::{
    ConfChange, Entry, EntryType, HardState, LogStorage, NO_NODE, NodeId, RaftError, RawNode,
    ReadState, StateRole,
};

/// The most writes and compactions a group holds while its leader hands leadership over;
/// more are refused `Busy`. A transfer lasts at most an election timeout.
pub(super) const HELD_PROPOSALS_MAX: usize = 1024;

/// Housekeepings a leader waits, after a transfer of its leadership was abandoned (the
/// target did not take over within an election timeout: down, cut off or slow), before it
/// starts another (3 s at the default tick): without the pause, a transfer to a dead target
/// would start again at once, and the group would take no proposals while it lasted.
pub(super) const TRANSFER_BACKOFF_HOUSEKEEPINGS: u32 = 6;

/// A proposal that arrived while this member, leading the group, hands leadership over.
enum Held {
    Write(Command),
    Compact { revision: u64 },
}

/// A group of the shard.
pub(super) struct Group<B: LogBackend> {
    pub(super) raw: RawNode<GroupStorage<B>>,
    pub(super) kv: Memtable,
    pub(super) sessions: Sessions,
    /// The index of the group's last checkpoint (written, being written, or installed).
    pub(super) last_checkpoint: u64,
    /// Bytes of entries applied since the last checkpoint.
    pub(super) bytes_since_checkpoint: u64,
    /// The highest snapshot index staged for the log (recorded or installed); an older
    /// checkpoint is no longer recorded.
    pub(super) snapshot_index: u64,
    /// A received snapshot verified and loaded, stepped into raft and waiting for its
    /// Ready.
    pub(super) pending_install: Option<Box<super::snapshot::Installed>>,
    /// The leader as last known (`NO_NODE` when unknown).
    pub(super) leader: NodeId,
    /// The hard state last staged for the log.
    pub(super) persisted_hs: HardState,
    /// A hard state whose only change is the commit index, waiting to ride with the group's
    /// next write.
    pub(super) pending_hs: Option<HardState>,
    /// Whether a membership change applied here took this member out of the group: it
    /// serves the group no more (the cluster removed it).
    pub(super) removed: bool,
    /// Named writes proposed through this member: (client, sequence) -> who waits for the
    /// result.
    proposed: HashMap<(u64, u64), Vec<RequestId>>,
    /// Anonymous writes and compactions proposed through this member, by the log index
    /// their entry got: (term of that entry, who waits). Nothing names them but their
    /// place in the log, so an entry applied at that index with another term is another
    /// leader's, and the proposal was lost.
    proposed_at: BTreeMap<u64, (u64, RequestId)>,
    /// Writes and compactions that arrived while this member, leading, hands leadership
    /// over (raft takes no proposals then), in arrival order, at most
    /// [`HELD_PROPOSALS_MAX`]: proposed once the transfer is abandoned, answered "not
    /// leader" (nothing was proposed) when it succeeds. Empty unless this member leads.
    held: VecDeque<(RequestId, Held)>,
    /// Whether this member, leading, started handing leadership over and housekeeping has
    /// not seen the transfer end yet.
    transfer_started: bool,
    /// Housekeepings to wait before starting another transfer (see
    /// [`TRANSFER_BACKOFF_HOUSEKEEPINGS`]).
    transfer_backoff: u32,
    /// Linearizable reads that arrived this round; they share one ReadIndex request.
    reads_new: Vec<(RequestId, RangeRequest)>,
    /// Lease reads that arrived this round; they share one lease read.
    reads_lease: Vec<(RequestId, RangeRequest)>,
    /// Read batches sent as ReadIndex requests, by context.
    reads_sent: HashMap<u64, Vec<(RequestId, RangeRequest)>>,
    /// Read batches whose read index is known, waiting for the state machine to reach it.
    reads_ready: Vec<(u64, Vec<(RequestId, RangeRequest)>)>,
}

impl<B: LogBackend> Group<B> {
    /// A group over `raw`, with an empty state machine or the one restored from a
    /// checkpoint.
    pub(super) fn new(
        raw: RawNode<GroupStorage<B>>,
        limits: KvLimits,
        sessions_max: usize,
        restored: Option<super::snapshot::Restored>,
    ) -> Result<Group<B>, String> {
        let persisted_hs = raw.storage().initial_state().0;
        let (kv, sessions, last_checkpoint) = match restored {
            Some(r) => (r.kv, r.sessions, r.index),
            None => (
                Memtable::new(limits).map_err(|e| e.to_string())?,
                Sessions::new(sessions_max),
                0,
            ),
        };
        Ok(Group {
            persisted_hs,
            pending_hs: None,
            raw,
            kv,
            sessions,
            last_checkpoint,
            bytes_since_checkpoint: 0,
            snapshot_index: last_checkpoint,
            pending_install: None,
            leader: NO_NODE,
            removed: false,
            proposed: HashMap::new(),
            proposed_at: BTreeMap::new(),
            held: VecDeque::new(),
            transfer_started: false,
            transfer_backoff: 0,
            reads_new: Vec::new(),
            reads_lease: Vec::new(),
            reads_sent: HashMap::new(),
            reads_ready: Vec::new(),
        })
    }

    fn is_leader(&self) -> bool {
        self.raw.role() == StateRole::Leader
    }

    fn removed_error(&self) -> RequestError {
        RequestError::Removed {
            group: self.raw.basic_status().group_id,
        }
    }

    fn leadership_lost(&self) -> RequestError {
        RequestError::LeadershipLost {
            leader: (self.leader != NO_NODE).then_some(self.leader),
        }
    }

    fn not_leader(&self) -> RequestError {
        RequestError::NotLeader {
            leader: (self.leader != NO_NODE).then_some(self.leader),
        }
    }

    /// Whether this member leads the group and hands leadership over, or still holds
    /// proposals from such a transfer: a new proposal waits behind them.
    fn handing_over(&self) -> bool {
        !self.held.is_empty() || self.raw.lead_transferee().is_some()
    }

    /// Holds a proposal while leadership is handed over (see `held`); `Busy` when the group
    /// holds as many as it may.
    fn hold(&mut self, id: RequestId, proposal: Held, out: &mut Vec<(RequestId, Outcome)>) {
        if self.held.len() >= HELD_PROPOSALS_MAX {
            out.push((id, Outcome::Failed(RequestError::Busy)));
        } else {
            self.held.push_back((id, proposal));
        }
    }

    /// On a housekeeping tick, before any transfer is started: notes how the last transfer
    /// this member started ended — abandoned (it still leads) starts the backoff — and counts
    /// the backoff down.
    pub(super) fn note_transfer(&mut self, me: NodeId) {
        self.transfer_backoff = self.transfer_backoff.saturating_sub(1);
        if self.transfer_started && self.raw.lead_transferee().is_none() {
            if self.is_leader() && self.leader == me {
                self.transfer_backoff = TRANSFER_BACKOFF_HOUSEKEEPINGS;
            }
            self.transfer_started = false;
        }
    }

    /// Starts handing leadership to `to`, unless a transfer was abandoned lately (the
    /// backoff) or one is under way.
    pub(super) fn try_transfer(&mut self, to: NodeId) {
        if self.transfer_backoff > 0 || self.raw.lead_transferee().is_some() {
            return;
        }
        if self.raw.transfer_leader(to).is_ok() {
            self.transfer_started = true;
        }
    }

    /// Whether held proposals can go now: the transfer was abandoned (this member leads and
    /// hands leadership over no more), or this member leads no more.
    pub(super) fn can_release_held(&self) -> bool {
        !self.held.is_empty() && (!self.is_leader() || self.raw.lead_transferee().is_none())
    }

    /// Proposes the held proposals, in arrival order, once the transfer was abandoned; once
    /// this member leads no more, answers them "not leader" (they were never proposed).
    pub(super) fn release_held(&mut self, out: &mut Vec<(RequestId, Outcome)>) {
        if !self.can_release_held() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if !self.is_leader() {
            let leader = self.raw.basic_status().leader_id;
            let error = RequestError::NotLeader {
                leader: (leader != NO_NODE).then_some(leader),
            };
            out.extend(
                held.into_iter()
                    .map(|(id, _)| (id, Outcome::Failed(error.clone()))),
            );
            return;
        }
        for (id, proposal) in held {
            match proposal {
                Held::Write(command) => self.write(id, command, out),
                Held::Compact { revision } => self.compact(id, revision, out),
            }
        }
    }

    /// Takes a write: proposes it (the leader), holds it while the leader hands leadership
    /// over, answers a duplicate from the session table, or refuses it (a follower names
    /// the leader).
    pub(super) fn write(
        &mut self,
        id: RequestId,
        command: Command,
        out: &mut Vec<(RequestId, Outcome)>,
    ) {
        if self.removed {
            out.push((id, Outcome::Failed(self.removed_error())));
            return;
        }
        if !self.is_leader() {
            out.push((id, Outcome::Failed(self.not_leader())));
            return;
        }
        match self.sessions.check(command.client_id, command.sequence) {
            Duplicate::Answered(result) => {
                out.push((id, Outcome::Written(result)));
                return;
            }
            Duplicate::Stale { floor } => {
                out.push((
                    id,
                    Outcome::Failed(RequestError::StaleSequence {
                        sequence: command.sequence,
                        floor,
                    }),
                ));
                return;
            }
            Duplicate::New => {}
        }
        // A transaction the store refuses (a limit, nesting) is answered now, never logged:
        // every replica would refuse it the same way when applying it.
        if let Err(e) = self.kv.validate_txn(&command.txn) {
            out.push((id, Outcome::Written(Err(e.to_string()))));
            return;
        }
        if self.handing_over() {
            // Raft takes no proposals during a transfer, and the transfer may fail: a
            // refusal would send the client away from a member that may lead on.
            self.hold(id, Held::Write(command), out);
            return;
        }
        if command.client_id == 0 {
            self.propose_at(id, command.encode(), out);
            return;
        }
        let key = (command.client_id, command.sequence);
        if self.proposed.contains_key(&key) {
            // The same write is in flight already: answer both when it applies.
            self.proposed.entry(key).or_default().push(id);
            return;
        }
        match self.raw.propose(command.encode()) {
            Ok(()) => self.proposed.entry(key).or_default().push(id),
            Err(RaftError::ProposalDropped) => {
                out.push((id, Outcome::Failed(RequestError::Busy)));
            }
            Err(e) => out.push((id, Outcome::Failed(RequestError::Raft(e.to_string())))),
        }
    }

    /// Takes a compaction of the history below `revision`: proposes it (the leader; held
    /// while it hands leadership over) or refuses it (a follower names the leader). It is
    /// answered when it applies.
    pub(super) fn compact(
        &mut self,
        id: RequestId,
        revision: u64,
        out: &mut Vec<(RequestId, Outcome)>,
    ) {
        if !self.is_leader() {
            out.push((id, Outcome::Failed(self.not_leader())));
            return;
        }
        if self.handing_over() {
            self.hold(id, Held::Compact { revision }, out);
            return;
        }
        self.propose_at(id, Action::Compact { revision }.encode(), out);
    }

    /// Proposes `data` and remembers who waits for it by the index its entry got (this
    /// member leads: the leader appends a proposal to its log at once).
    fn propose_at(&mut self, id: RequestId, data: Vec<u8>, out: &mut Vec<(RequestId, Outcome)>) {
        match self.raw.propose(data) {
            Ok(()) => {
                let status = self.raw.basic_status();
                self.proposed_at
                    .insert(status.last_index, (status.term, id));
            }
            Err(RaftError::ProposalDropped) => {
                out.push((id, Outcome::Failed(RequestError::Busy)));
            }
            Err(e) => out.push((id, Outcome::Failed(RequestError::Raft(e.to_string())))),
        }
    }

    /// Takes a read.
    pub(super) fn read(
        &mut self,
        id: RequestId,
        request: RangeRequest,
        consistency: ReadConsistency,
        out: &mut Vec<(RequestId, Outcome)>,
    ) {
        if self.removed {
            out.push((id, Outcome::Failed(self.removed_error())));
            return;
        }
        match consistency {
            ReadConsistency::Serializable => out.push((id, self.serve(&request))),
            ReadConsistency::Linearizable | ReadConsistency::Lease => {
                if !self.is_leader() {
                    out.push((id, Outcome::Failed(self.not_leader())));
                } else if consistency == ReadConsistency::Lease {
                    self.reads_lease.push((id, request));
                } else {
                    self.reads_new.push((id, request));
                }
            }
        }
    }

    fn serve(&self, request: &RangeRequest) -> Outcome {
        match self.kv.range(request) {
            Ok(resp) => Outcome::Read(resp),
            Err(e) => Outcome::Failed(kv_error(e)),
        }
    }

    /// Sends this round's linearizable reads as one ReadIndex request, and its lease reads
    /// as one lease read (`lease_context`).
    pub(super) fn flush_reads(
        &mut self,
        context: u64,
        lease_context: u64,
        out: &mut Vec<(RequestId, Outcome)>,
    ) {
        for lease in [false, true] {
            let batch = if lease {
                std::mem::take(&mut self.reads_lease)
            } else {
                std::mem::take(&mut self.reads_new)
            };
            if batch.is_empty() {
                continue;
            }
            let context = if lease { lease_context } else { context };
            let bytes = context.to_le_bytes().to_vec();
            let asked = if lease {
                self.raw.read_index_lease(bytes)
            } else {
                self.raw.read_index(bytes)
            };
            match asked {
                Ok(()) => {
                    self.reads_sent.insert(context, batch);
                }
                Err(_) => {
                    let error = self.not_leader();
                    out.extend(
                        batch
                            .into_iter()
                            .map(|(id, _)| (id, Outcome::Failed(error.clone()))),
                    );
                }
            }
        }
    }

    /// Read indexes arrived: their batches wait for the state machine to reach them.
    pub(super) fn read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(context) = <[u8; 8]>::try_from(state.context.as_slice()) else {
                continue;
            };
            if let Some(batch) = self.reads_sent.remove(&u64::from_le_bytes(context)) {
                self.reads_ready.push((state.index, batch));
            }
        }
    }

    /// Serves the reads whose read index the state machine reached.
    pub(super) fn serve_ready_reads(&mut self, out: &mut Vec<(RequestId, Outcome)>) {
        let applied = self.kv.applied_index();
        let mut waiting = Vec::new();
        for (index, batch) in std::mem::take(&mut self.reads_ready) {
            if index <= applied {
                for (id, request) in batch {
                    out.push((id, self.serve(&request)));
                }
            } else {
                waiting.push((index, batch));
            }
        }
        self.reads_ready = waiting;
    }

    /// Leadership changed: what waited on this member's leadership cannot be answered here
    /// any more. Writes are refused (a client retries with the same sequence, so a write
    /// that did commit is answered from the session table, not applied twice); writes
    /// held during a transfer were never proposed, so they are "not leader".
    pub(super) fn lost_leadership(&mut self, out: &mut Vec<(RequestId, Outcome)>) {
        let error = self.not_leader();
        out.extend(
            self.held
                .drain(..)
                .map(|(id, _)| (id, Outcome::Failed(error.clone()))),
        );
        // Proposed writes may still commit under the new leader: they are not "not leader"
        // (which tells a caller that nothing was proposed and the request can go elsewhere).
        let lost = self.leadership_lost();
        for (_, ids) in self.proposed.drain() {
            out.extend(
                ids.into_iter()
                    .map(|id| (id, Outcome::Failed(lost.clone()))),
            );
        }
        let anonymous = std::mem::take(&mut self.proposed_at);
        out.extend(
            anonymous
                .into_values()
                .map(|(_, id)| (id, Outcome::Failed(lost.clone()))),
        );
        let reads = self
            .reads_new
            .drain(..)
            .chain(self.reads_lease.drain(..))
            .chain(self.reads_sent.drain().flat_map(|(_, b)| b))
            .chain(self.reads_ready.drain(..).flat_map(|(_, b)| b));
        out.extend(reads.map(|(id, _)| (id, Outcome::Failed(error.clone()))));
    }

    /// Applies committed entries (durable locally) to the state machine and answers the
    /// writes proposed here. Returns an error only for an entry no build could have written
    /// (the group must stop rather than diverge).
    pub(super) fn apply(
        &mut self,
        entries: &[Entry],
        out: &mut Vec<(RequestId, Outcome)>,
    ) -> Result<(), String> {
        for entry in entries {
            self.bytes_since_checkpoint += entry.data.len() as u64;
            match entry.entry_type {
                EntryType::ConfChange => {
                    let cc = ConfChange::decode(&entry.data).map_err(|_| {
                        format!("entry {} holds a malformed membership change", entry.index)
                    })?;
                    let me = self.raw.basic_status().id;
                    let was_member = super::membership::in_conf(&self.raw.status().conf_state, me);
                    let now = self
                        .raw
                        .apply_conf_change(&cc)
                        .map_err(|e| format!("entry {}: {e}", entry.index))?;
                    if was_member && !super::membership::in_conf(&now, me) {
                        // Only a member can be removed: a member that joined later replays
                        // the changes made before it joined without being in them.
                        self.removed = true;
                        tracing::warn!(
                            group = self.raw.basic_status().group_id,
                            member = me,
                            index = entry.index,
                            "this member was removed from the group; it serves it no more"
                        );
                    }
                }
                // A new leader's empty entry.
                EntryType::Normal if entry.data.is_empty() => {}
                EntryType::Normal => {
                    let action = Action::decode(&entry.data)
                        .map_err(|e| format!("entry {}: {e}", entry.index))?;
                    let command = match action {
                        Action::Write(command) => command,
                        Action::Compact { revision } => {
                            let outcome = self.apply_compaction(revision);
                            self.answer_at(entry, outcome, out);
                            self.kv.set_applied_index(entry.index);
                            continue;
                        }
                    };
                    if command.client_id == 0 {
                        let result = self.kv.txn(&command.txn).map_err(|e| e.to_string());
                        self.answer_at(entry, Outcome::Written(result), out);
                        self.kv.set_applied_index(entry.index);
                        continue;
                    }
                    let result = match self.sessions.check(command.client_id, command.sequence) {
                        Duplicate::Answered(result) => result,
                        Duplicate::Stale { floor } => Err(RequestError::StaleSequence {
                            sequence: command.sequence,
                            floor,
                        }
                        .to_string()),
                        Duplicate::New => {
                            let result: Result<TxnResponse, String> =
                                self.kv.txn(&command.txn).map_err(|e| e.to_string());
                            self.sessions.record(
                                command.client_id,
                                command.sequence,
                                command.floor,
                                result.clone(),
                                entry.index,
                            );
                            result
                        }
                    };
                    if let Some(ids) = self.proposed.remove(&(command.client_id, command.sequence))
                    {
                        for id in ids {
                            out.push((id, Outcome::Written(result.clone())));
                        }
                    }
                }
            }
            self.kv.set_applied_index(entry.index);
        }
        Ok(())
    }

    /// Compacts the history below `revision` as the log says. Refusals (compacted already,
    /// a future revision) change nothing on any replica: they are the answer to the client
    /// who asked, not an error of the group.
    fn apply_compaction(&mut self, revision: u64) -> Outcome {
        match self.kv.compact(revision) {
            Ok(()) => Outcome::Compaction {
                revision: self.kv.revision(),
            },
            Err(e) => Outcome::Failed(kv_error(e)),
        }
    }

    /// Answers who waits for the anonymous proposal at `entry`'s index: with `outcome` when
    /// the entry is the one proposed (same term), with "not leader" when another leader's
    /// entry took its place.
    fn answer_at(&mut self, entry: &Entry, outcome: Outcome, out: &mut Vec<(RequestId, Outcome)>) {
        // Proposals at lower indexes that were never applied here were covered by a
        // snapshot: whether they are in it is not known.
        while let Some((&index, _)) = self.proposed_at.first_key_value() {
            if index >= entry.index {
                break;
            }
            if let Some((_, id)) = self.proposed_at.remove(&index) {
                out.push((id, Outcome::Failed(self.leadership_lost())));
            }
        }
        if let Some((term, id)) = self.proposed_at.remove(&entry.index) {
            if term == entry.term {
                out.push((id, outcome));
            } else {
                // Another leader's entry took its index: the proposal can never commit, so
                // sending it again elsewhere is safe.
                out.push((id, Outcome::Failed(self.not_leader())));
            }
        }
    }

    /// A point read straight from the state machine (for tests and status).
    pub(super) fn range(&self, request: &RangeRequest) -> Option<RangeResponse> {
        self.kv.range(request).ok()
    }
}

/// The shard's error for the state machine's: revision errors keep their numbers.
fn kv_error(e: KvError) -> RequestError {
    match e {
        KvError::Compacted {
            requested,
            compacted,
        } => RequestError::Compacted {
            requested,
            compacted,
        },
        KvError::FutureRevision { requested, current } => {
            RequestError::FutureRevision { requested, current }
        }
        other => RequestError::Kv(other.to_string()),
    }
}
