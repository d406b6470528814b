//! The host-facing interface: inputs go in as method calls, work comes out as a [`Ready`], and
//! the host reports back with acknowledgements.
//!
//! One cycle, with asynchronous storage writes:
//! 1. Feed inputs: [`RawNode::tick`], [`RawNode::step`], [`RawNode::propose`], ...
//! 2. If [`RawNode::has_ready`], take [`RawNode::ready`].
//! 3. Send `ready.messages` right away (they do not depend on local durability).
//! 4. Write `ready.append` (hard state, snapshot, entries, in this order, replacing any stored
//!    suffix the entries overwrite) and, once durable, call [`RawNode::on_append_durable`] with
//!    its ack. Append works must be written and acknowledged in the order they were handed
//!    out; several may be in flight at once.
//! 5. Apply `ready.apply` to the state machine (calling [`RawNode::apply_conf_change`] for
//!    membership entries) and then call [`RawNode::on_applied`] with its ack.
//!
//! All types in a Ready are plain owned data tagged with the group id, so a runtime hosting
//! many groups can collect the Readies of all of them and persist their append work in one
//! write.

use super::config::Config;
use super::message::{
    ConfChange, ConfState, Entry, EntryId, EntryType, HardState, Index, Message, MessageType,
    NodeId, Payload, Snapshot, Term, payload_bytes,
};
use super::raft::{Raft, RaftError, SoftState, StateRole};
use super::read_only::ReadState;
use super::status::{BasicStatus, PeerStatus, Status, UnstableStatus};
use super::storage::{LogStorage, StorageError};

/// Storage work: what to make durable before the acknowledgement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendWork {
    /// The hard state to record, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot to install (its data must also be loaded into the state machine before the
    /// acknowledgement).
    pub snapshot: Option<Snapshot>,
    /// Entries to append; the first may overwrite a stored suffix.
    pub entries: Vec<Entry>,
    /// What to hand back to [`RawNode::on_append_durable`] once all of the above is durable.
    pub ack: AppendAck,
}

/// The acknowledgement of an [`AppendWork`]. It is stamped with a log mark: the term of the
/// leader whose append the log had accepted last when the work was handed out, and the id of
/// its last entry. A late acknowledgement whose term is older than the log's current one is
/// ignored for the entries (a newer leader may have overwritten them, even with entries of the
/// same index and term, before this write's turn came), and the acknowledgement of a later
/// write covers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendAck {
    /// The group.
    pub group_id: u64,
    /// The term of the leader whose append the log had accepted last when the work was handed
    /// out (not the node's term: a vote changes that, and votes do not change the log).
    pub accepted_term: Term,
    /// The last entry written, if any.
    pub last: Option<EntryId>,
    /// The index of the snapshot written, if any.
    pub snapshot_index: Option<Index>,
    /// Responses that vouch for what was written (append acknowledgements, votes). They are
    /// released once the write is durable: the ones for this node are stepped, the others are
    /// queued for the next Ready's messages. A host whose storage thread reports back late may
    /// instead send the ones for other nodes itself as soon as the write is durable, and hand
    /// the acknowledgement back without them.
    pub responses: Vec<Message>,
}

/// State-machine work: committed entries that are durable locally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyWork {
    /// The entries to apply, in order.
    pub entries: Vec<Entry>,
    /// What to hand back to [`RawNode::on_applied`] once they are applied.
    pub ack: ApplyAck,
}

/// The acknowledgement of an [`ApplyWork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyAck {
    /// The group.
    pub group_id: u64,
    /// The term of the last entry applied.
    pub term: Term,
    /// The index of the last entry applied.
    pub index: Index,
}

/// Everything the host has to do for one group after feeding it inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The group.
    pub group_id: u64,
    /// The new role and leader, if they changed.
    pub soft_state: Option<SoftState>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Storage work, if any.
    pub append: Option<AppendWork>,
    /// State-machine work, if any.
    pub apply: Option<ApplyWork>,
    /// Reads that may be served once the state machine reached their index.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.messages.is_empty()
            && self.append.is_none()
            && self.apply.is_none()
            && self.read_states.is_empty()
    }
}

/// A raft instance and the bookkeeping to produce Readies.
pub struct RawNode<S> {
    raft: Raft<S>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
}

impl<S: LogStorage> RawNode<S> {
    /// A node restored from `storage`. Refuses invalid options and a stored state that
    /// contradicts itself (a commit index beyond the log, an applied index beyond the commit
    /// index): those mean lost data, which must not be hidden.
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, RaftError> {
        let raft = Raft::new(config, storage)?;
        let prev_hard_state = raft.hard_state();
        let prev_soft_state = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_soft_state,
            prev_hard_state,
        })
    }

    /// The storage (for the host to write into).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.raft_log.storage
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.raft.raft_log.storage
    }

    /// Advances the logical clock.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now.
    pub fn campaign(&mut self) {
        self.raft.campaign();
    }

    /// Proposes one entry of application data.
    pub fn propose(&mut self, data: impl Into<Payload>) -> Result<(), RaftError> {
        self.propose_batch(vec![data.into()])
    }

    /// Proposes several entries at once; they are appended and replicated together.
    pub fn propose_batch(&mut self, batch: Vec<Payload>) -> Result<(), RaftError> {
        let entries = batch
            .into_iter()
            .map(|data| Entry {
                data,
                ..Entry::default()
            })
            .collect();
        self.propose_entries(entries)
    }

    fn propose_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        let mut m = Message::new(MessageType::Propose, self.raft.id, self.raft.id);
        m.group_id = self.raft.group_id;
        m.entries = entries;
        self.raft.step(m)
    }

    /// Proposes a membership change.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), RaftError> {
        let entry = Entry {
            entry_type: EntryType::ConfChange,
            data: cc.encode().into(),
            ..Entry::default()
        };
        self.propose_entries(vec![entry])
    }

    /// Whether a membership change proposed now would be refused: this node does not lead,
    /// an earlier change is not applied yet, or the leader has not committed an entry of
    /// its own term (before that it may not know the latest membership). A refused change
    /// becomes an empty entry, so a host driving changes asks this first.
    pub fn conf_change_blocked(&self) -> bool {
        self.raft.conf_change_blocked()
    }

    /// Requests a linearizable read; a [`ReadState`] with `context` appears in a later Ready.
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), RaftError> {
        let mut m = Message::new(MessageType::ReadIndex, self.raft.id, self.raft.id);
        m.group_id = self.raft.group_id;
        m.context = context;
        self.raft.step(m)
    }

    /// Requests a read under the leader's lease: answered at once by a leader with
    /// check-quorum (no heartbeat round), through the ReadIndex path otherwise; the
    /// [`ReadState`] appears in a later Ready as for [`RawNode::read_index`].
    pub fn read_index_lease(&mut self, context: Vec<u8>) -> Result<(), RaftError> {
        self.raft.lease_read(context)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        let mut m = Message::new(MessageType::TransferLeader, to, self.raft.id);
        m.group_id = self.raft.group_id;
        self.raft.step(m)
    }

    /// Feeds a message from a peer. Local-only and malformed messages are refused with an
    /// error; nothing a peer sends can make the core panic.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        self.raft.step(m)
    }

    /// Applies a committed membership change and returns the resulting membership. The host
    /// calls this when it applies an [`EntryType::ConfChange`] entry.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, RaftError> {
        self.raft.apply_conf_change(cc)
    }

    /// Reports that `id` could not be reached.
    pub fn report_unreachable(&mut self, id: NodeId) {
        self.raft.report_unreachable(id);
    }

    /// Reports the outcome of sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        self.raft.report_snapshot(id, success);
    }

    /// Whether a Ready would carry anything.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.soft_state() != self.prev_soft_state
            || r.hard_state() != self.prev_hard_state
            || !r.msgs.is_empty()
            || !r.msgs_after_append.is_empty()
            || !r.raft_log.unstable.next_entries().is_empty()
            || r.raft_log.unstable.next_snapshot().is_some()
            || r.raft_log.has_next_committed_entries()
            || !r.read_states.is_empty()
    }

    fn build(
        &self,
        messages: Vec<Message>,
        responses: Vec<Message>,
        reads: Vec<ReadState>,
    ) -> Ready {
        let r = &self.raft;
        let group_id = r.group_id;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let hard_state = (hard != self.prev_hard_state).then_some(hard);
        let entries = r.raft_log.unstable.next_entries().to_vec();
        let snapshot = r.raft_log.unstable.next_snapshot().cloned();
        let append = if hard_state.is_some()
            || snapshot.is_some()
            || !entries.is_empty()
            || !responses.is_empty()
        {
            let ack = AppendAck {
                group_id,
                accepted_term: r.raft_log.unstable.term,
                last: entries.last().map(Entry::id),
                snapshot_index: snapshot.as_ref().map(|s| s.metadata.index),
                responses,
            };
            Some(AppendWork {
                hard_state,
                snapshot,
                entries,
                ack,
            })
        } else {
            None
        };
        let committed = r.raft_log.next_committed_entries();
        let apply = committed.last().map(|last| ApplyAck {
            group_id,
            term: last.term,
            index: last.index,
        });
        let apply = apply.map(|ack| ApplyWork {
            entries: committed,
            ack,
        });
        Ready {
            group_id,
            soft_state: (soft != self.prev_soft_state).then_some(soft),
            messages,
            append,
            apply,
            read_states: reads,
        }
    }

    /// The pending work without marking it handed out; pair with [`RawNode::accept_ready`].
    pub fn ready_without_accept(&self) -> Ready {
        let r = &self.raft;
        self.build(
            r.msgs.clone(),
            r.msgs_after_append.clone(),
            r.read_states.clone(),
        )
    }

    /// Marks the work of `rd` (built by [`RawNode::ready_without_accept`] with no input fed
    /// in between) as handed out.
    pub fn accept_ready(&mut self, rd: &Ready) {
        if let Some(ss) = rd.soft_state {
            self.prev_soft_state = ss;
        }
        if let Some(append) = &rd.append {
            if let Some(hs) = append.hard_state {
                self.prev_hard_state = hs;
            }
        }
        self.raft.msgs.clear();
        self.raft.msgs_after_append.clear();
        self.raft.read_states.clear();
        self.raft.raft_log.unstable.accept_in_progress();
        if let Some(apply) = &rd.apply {
            self.raft.raft_log.accept_applying(apply.ack.index);
            self.raft
                .reduce_uncommitted_bytes(payload_bytes(&apply.entries));
        }
    }

    /// Takes the pending work and marks it handed out.
    pub fn ready(&mut self) -> Ready {
        let messages = std::mem::take(&mut self.raft.msgs);
        let responses = std::mem::take(&mut self.raft.msgs_after_append);
        let reads = std::mem::take(&mut self.raft.read_states);
        let rd = self.build(messages, responses, reads);
        self.accept_ready(&rd);
        rd
    }

    /// Reports that an [`AppendWork`] is durable. Stale parts are ignored: entries of a write
    /// handed out before the log accepted a newer leader's append (see [`AppendAck`]),
    /// responses of an older term. A snapshot is recognized by its index alone: it is
    /// committed, so no leader replaces it with another at the same index.
    pub fn on_append_durable(&mut self, ack: AppendAck) {
        if ack.group_id != self.raft.group_id {
            return;
        }
        if let Some(index) = ack.snapshot_index {
            if self.raft.raft_log.stable_snap_to(index) {
                // The host loaded the snapshot into the state machine with the write.
                let log = &mut self.raft.raft_log;
                if index > log.applied {
                    log.applied = index;
                    log.applying = log.applying.max(index);
                }
            }
        }
        if let Some(last) = ack.last {
            self.raft.raft_log.stable_to(ack.accepted_term, last);
        }
        for m in ack.responses {
            if m.to == self.raft.id {
                // Our own vote or append acknowledgement; a stale one fails the term check.
                let _ = self.raft.step(m);
            } else {
                self.raft.msgs.push(m);
            }
        }
    }

    /// Reports that the state machine applied an [`ApplyWork`].
    pub fn on_applied(&mut self, ack: ApplyAck) {
        if ack.group_id != self.raft.group_id {
            return;
        }
        if ack.index <= self.raft.raft_log.applying && self.raft.raft_log.applied_to(ack.index) {
            self.raft.maybe_auto_leave();
        }
    }

    /// The synchronous convenience: after the host wrote `rd.append` and applied `rd.apply`,
    /// acknowledges both.
    pub fn advance(&mut self, rd: Ready) {
        if let Some(append) = rd.append {
            self.on_append_durable(append.ack);
        }
        if let Some(apply) = rd.apply {
            self.on_applied(apply.ack);
        }
    }

    /// This node's role.
    pub fn role(&self) -> StateRole {
        self.raft.state
    }

    /// The member this node, leading, is handing leadership to, if a transfer is under way
    /// (it takes no proposals meanwhile, for at most an election timeout).
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.raft.lead_transferee
    }

    /// The plain numbers of this node's state (no allocation).
    pub fn basic_status(&self) -> BasicStatus {
        let r = &self.raft;
        let log = &r.raft_log;
        BasicStatus {
            id: r.id,
            group_id: r.group_id,
            term: r.term,
            vote: r.vote,
            role: r.state,
            leader_id: r.leader_id,
            commit: log.committed,
            applying: log.applying,
            applied: log.applied,
            first_index: log.first_index(),
            last_index: log.last_index(),
            election_timeout_ticks: r.randomized_election_timeout,
            unstable: UnstableStatus {
                offset: log.unstable.offset,
                offset_in_progress: log.unstable.offset_in_progress,
                accepted_term: log.unstable.term,
                snapshot_index: log.unstable.snapshot.as_ref().map(|s| s.metadata.index),
            },
        }
    }

    /// A snapshot of this node's state with its membership and, on the leader, every peer's
    /// replication.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.state == StateRole::Leader {
            r.tracker
                .progress
                .iter()
                .map(|(&id, pr)| {
                    let peer = PeerStatus {
                        matched: pr.matched,
                        next: pr.next,
                        state: pr.state,
                        is_learner: pr.is_learner,
                        recent_active: pr.recent_active,
                    };
                    (id, peer)
                })
                .collect()
        } else {
            Default::default()
        };
        Status {
            basic: self.basic_status(),
            conf_state: r.tracker.config.to_conf_state(),
            progress,
        }
    }

    /// The entries `[lo, hi)` of the log, durable or not.
    pub fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        self.raft.raft_log.slice(lo, hi, u64::MAX)
    }

    /// The term of the entry at `index`, durable or not (the snapshot's term at its index).
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.raft.raft_log.term(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::storage::MemStorage;

    fn node() -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf(&[1, 2], &[]);
        RawNode::new(&Config::new(1), storage).unwrap()
    }

    #[test]
    fn ready_without_accept_then_accept_equals_ready() {
        let mut a = node();
        let mut b = node();
        for raw in [&mut a, &mut b] {
            raw.campaign();
        }
        let peeked = a.ready_without_accept();
        assert!(a.has_ready());
        assert_eq!(a.ready_without_accept(), peeked, "peeking changes nothing");
        a.accept_ready(&peeked);
        let taken = b.ready();
        assert_eq!(peeked, taken);
        assert_eq!(a.has_ready(), b.has_ready());
        assert_eq!(
            a.basic_status().unstable.offset_in_progress,
            b.basic_status().unstable.offset_in_progress
        );
    }

    #[test]
    fn stale_apply_and_foreign_group_acks_are_ignored() {
        let mut raw = node();
        raw.on_applied(ApplyAck {
            group_id: 0,
            term: 1,
            index: 5,
        });
        assert_eq!(
            raw.raft.raft_log.applied, 0,
            "nothing was handed out up to 5"
        );
        raw.on_append_durable(AppendAck {
            group_id: 7,
            accepted_term: 1,
            last: Some(EntryId { index: 1, term: 1 }),
            ..AppendAck::default()
        });
        assert_eq!(raw.basic_status().unstable.offset, 1);
    }

    #[test]
    fn snapshot_ack_counts_even_after_a_newer_leader_appended() {
        // Write 1 installs a snapshot from the leader of term 2; the leader of term 3 appends
        // after it (write 2) before write 1 is acknowledged. The snapshot is committed, so
        // nothing replaces it at the same index: its acknowledgement must still count, or the
        // node would wait for it forever.
        let storage = MemStorage::new_with_conf(&[1, 2, 3], &[]);
        let mut raw = RawNode::new(&Config::new(2), storage).unwrap();
        let mut m = Message::new(MessageType::Snapshot, 1, 2);
        m.term = 2;
        let mut snap = Snapshot::default();
        snap.metadata.index = 10;
        snap.metadata.term = 2;
        snap.metadata.conf_state.voters = vec![1, 2, 3];
        m.snapshot = Some(snap);
        raw.step(m).unwrap();
        let write_1 = raw.ready().append.unwrap();
        assert_eq!(write_1.ack.snapshot_index, Some(10));
        let mut m = Message::new(MessageType::Append, 3, 2);
        m.term = 3;
        m.index = 10;
        m.log_term = 2;
        m.entries = vec![Entry {
            index: 11,
            term: 3,
            ..Entry::default()
        }];
        raw.step(m).unwrap();
        let write_2 = raw.ready().append.unwrap();
        assert_eq!(write_2.ack.accepted_term, 3);
        assert!(write_1.ack.accepted_term < write_2.ack.accepted_term);
        raw.storage_mut()
            .apply_snapshot(write_1.snapshot.clone().unwrap())
            .unwrap();
        raw.on_append_durable(write_1.ack);
        let st = raw.basic_status();
        assert_eq!(st.unstable.snapshot_index, None);
        assert_eq!(st.applied, 10);
        assert_eq!(
            st.unstable.offset, 11,
            "the entry after it is still unstable"
        );
        raw.storage_mut().append(&write_2.entries).unwrap();
        raw.on_append_durable(write_2.ack);
        assert_eq!(raw.basic_status().unstable.offset, 12);
    }

    #[test]
    fn ack_from_before_a_restart_marks_nothing_stable() {
        // A restarted node's log has accepted no leader's append yet; an acknowledgement the
        // host kept from before the restart is ignored for its entries.
        let mut storage = MemStorage::new_with_conf(&[1, 2], &[]);
        storage
            .append(&[Entry {
                index: 1,
                term: 1,
                ..Entry::default()
            }])
            .unwrap();
        let mut raw = RawNode::new(&Config::new(1), storage).unwrap();
        let before = raw.basic_status();
        assert_eq!(before.unstable.accepted_term, 0);
        raw.on_append_durable(AppendAck {
            group_id: 0,
            accepted_term: 1,
            last: Some(EntryId { index: 1, term: 1 }),
            ..AppendAck::default()
        });
        assert_eq!(raw.basic_status(), before);
    }
}
