//! The Raft state machine: roles, elections, replication, commitment, reads, leadership
//! transfer and membership changes. It only reacts to inputs and queues outputs; the
//! [`RawNode`](super::raw_node::RawNode) packages those outputs into Readies.

use super::confchange::{self, ConfChangeError};
use super::config::{Config, ConfigError};
use super::message::{
    ConfChange, ConfState, Entry, EntryId, EntryType, HardState, Index, Message, MessageType,
    NO_NODE, NodeId, Snapshot, Term, payload_bytes,
};
use super::prng::Prng;
use super::progress::ProgressState;
use super::quorum::VoteResult;
use super::raft_log::RaftLog;
use super::read_only::{ReadOnly, ReadOnlyOption, ReadState};
use super::storage::LogStorage;
use super::tracker::ProgressTracker;

/// The context a vote request carries when it comes from a leadership transfer; such a
/// request overrides the voters' leader lease.
pub const CAMPAIGN_TRANSFER: &[u8] = b"transfer";

/// The largest index or term a message may carry. Real values are nowhere near it; bounding
/// them keeps every `index + n` computation on message data free of overflow.
pub const INDEX_OR_TERM_MAX: u64 = 1 << 62;

fn message_in_range(m: &Message) -> bool {
    let ok = |v: u64| v <= INDEX_OR_TERM_MAX;
    ok(m.term)
        && ok(m.log_term)
        && ok(m.index)
        && ok(m.commit)
        && ok(m.reject_hint)
        && m.entries.iter().all(|e| ok(e.index) && ok(e.term))
        && m.snapshot
            .as_ref()
            .is_none_or(|s| ok(s.metadata.index) && ok(s.metadata.term))
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asks whether it could win an election before disrupting anyone.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

/// The volatile state a host may want to observe: who leads and what this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SoftState {
    /// The known leader, or [`NO_NODE`].
    pub leader_id: NodeId,
    /// This node's role.
    pub role: StateRole,
}

/// Why a node could not be started or an input was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaftError {
    /// The options are invalid.
    Config(ConfigError),
    /// The stored hard state says `commit` is committed but the log ends at `last_index`:
    /// committed entries were lost.
    CommitBeyondLog {
        /// The commit index of the stored hard state.
        commit: Index,
        /// The last index of the stored log.
        last_index: Index,
    },
    /// The state machine says it applied `applied` but the log's commit index is only
    /// `commit`.
    AppliedBeyondCommit {
        /// [`Config::applied`].
        applied: Index,
        /// The commit index restored from storage.
        commit: Index,
    },
    /// The proposal or read could not be accepted (no leader, leadership transfer under way,
    /// uncommitted limit reached, node removed); the client should retry.
    ProposalDropped,
    /// The message belongs to another group or another node.
    Misrouted,
    /// The message is malformed (for example, non-contiguous entries).
    BadMessage(&'static str),
    /// A membership change cannot be applied.
    ConfChange(ConfChangeError),
}

impl std::fmt::Display for RaftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftError::Config(e) => write!(f, "invalid raft options: {e}"),
            RaftError::CommitBeyondLog { commit, last_index } => write!(
                f,
                "the stored hard state commits index {commit} but the stored log ends at \
                 {last_index}: committed entries were lost"
            ),
            RaftError::AppliedBeyondCommit { applied, commit } => write!(
                f,
                "the state machine applied index {applied} but the log commits only up to \
                 {commit}"
            ),
            RaftError::ProposalDropped => write!(
                f,
                "the proposal was dropped (no leader, leadership transfer under way, \
                 uncommitted limit reached or node removed); retry"
            ),
            RaftError::Misrouted => write!(f, "the message belongs to another group or node"),
            RaftError::BadMessage(why) => write!(f, "malformed message: {why}"),
            RaftError::ConfChange(e) => write!(f, "membership change refused: {e}"),
        }
    }
}

impl std::error::Error for RaftError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RaftError::Config(e) => Some(e),
            RaftError::ConfChange(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for RaftError {
    fn from(e: ConfigError) -> RaftError {
        RaftError::Config(e)
    }
}

/// Why a node campaigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Campaign {
    PreElection,
    Election,
    Transfer,
}

/// One raft instance.
pub struct Raft<S> {
    /// This node's id.
    pub id: NodeId,
    /// The group id stamped on every outgoing message.
    pub group_id: u64,
    /// The current term.
    pub term: Term,
    /// The vote cast in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// The log.
    pub raft_log: RaftLog<S>,
    /// Membership and, on the leader, every peer's progress.
    pub tracker: ProgressTracker,
    /// The role.
    pub state: StateRole,
    /// The known leader of `term`.
    pub leader_id: NodeId,
    /// The node leadership is being transferred to.
    pub lead_transferee: Option<NodeId>,
    /// The index of the latest membership change the leader proposed; a new one is accepted
    /// only once it is applied.
    pub pending_conf_index: Index,
    /// Payload bytes of entries appended as leader and not yet committed.
    pub uncommitted_bytes: u64,
    /// Reads waiting for the leader to confirm leadership.
    pub read_only: ReadOnly,
    /// Reads that arrived before the leader committed an entry of its term.
    pub pending_reads: Vec<Message>,
    /// Reads ready to be served, for the next Ready.
    pub read_states: Vec<ReadState>,
    /// Messages that may be sent right away.
    pub msgs: Vec<Message>,
    /// Responses that vouch for this node's log or vote and may only be sent (or, when
    /// addressed to this node, stepped) once the pending storage write is durable.
    pub msgs_after_append: Vec<Message>,
    /// Ticks since the last election timeout reset.
    pub election_elapsed: u64,
    /// Ticks since the last heartbeat (leader only).
    pub heartbeat_elapsed: u64,
    /// The current randomized election timeout in `[election_ticks, 2 * election_ticks)`.
    pub randomized_election_timeout: u64,
    election_ticks: u64,
    heartbeat_ticks: u64,
    check_quorum: bool,
    pre_vote: bool,
    read_only_option: ReadOnlyOption,
    msg_bytes_max: u64,
    uncommitted_bytes_max: u64,
    disable_proposal_forwarding: bool,
    rng: Prng,
}

impl<S: LogStorage> Raft<S> {
    /// A follower restored from `storage`. Refuses invalid options and a stored state that
    /// contradicts itself (a commit index beyond the log, an applied index beyond the commit
    /// index): those mean lost data, which must not be hidden.
    pub fn new(config: &Config, storage: S) -> Result<Raft<S>, RaftError> {
        config.validate()?;
        let (hard_state, conf_state) = storage.initial_state();
        let raft_log = RaftLog::new(storage, config.apply_bytes_max);
        let mut tracker = ProgressTracker::new(config.inflight_msgs_max, config.inflight_bytes_max);
        tracker.reset_config(&conf_state, raft_log.last_index() + 1);
        let mut raft = Raft {
            id: config.id,
            group_id: config.group_id,
            term: 0,
            vote: NO_NODE,
            raft_log,
            tracker,
            state: StateRole::Follower,
            leader_id: NO_NODE,
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            read_only: ReadOnly::default(),
            pending_reads: Vec::new(),
            read_states: Vec::new(),
            msgs: Vec::new(),
            msgs_after_append: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            check_quorum: config.check_quorum,
            pre_vote: config.pre_vote,
            read_only_option: config.read_only,
            msg_bytes_max: config.msg_bytes_max,
            uncommitted_bytes_max: config.uncommitted_bytes_max,
            disable_proposal_forwarding: config.disable_proposal_forwarding,
            rng: Prng::new(config.seed ^ config.id.rotate_left(32)),
        };
        if hard_state != HardState::default() {
            raft.term = hard_state.term;
            raft.vote = hard_state.vote;
            let last_index = raft.raft_log.last_index();
            if hard_state.commit > last_index {
                // The hard state and the entries it commits are written in order, so this
                // log lost entries after they were committed.
                return Err(RaftError::CommitBeyondLog {
                    commit: hard_state.commit,
                    last_index,
                });
            }
            raft.raft_log.commit_to(hard_state.commit);
        }
        if config.applied > raft.raft_log.committed {
            return Err(RaftError::AppliedBeyondCommit {
                applied: config.applied,
                commit: raft.raft_log.committed,
            });
        }
        if config.applied > 0 {
            raft.raft_log.applied_to(config.applied);
        }
        raft.become_follower(raft.term, NO_NODE);
        Ok(raft)
    }

    /// The durable part of the state.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.raft_log.committed,
        }
    }

    /// The volatile part of the state.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.leader_id,
            role: self.state,
        }
    }

    /// Whether this node may campaign: it is a voter and not installing a snapshot.
    pub fn promotable(&self) -> bool {
        self.tracker
            .progress
            .get(&self.id)
            .is_some_and(|pr| !pr.is_learner)
            && !self.raft_log.has_next_or_in_progress_snapshot()
    }

    fn send(&mut self, mut m: Message) {
        if m.from == NO_NODE {
            m.from = self.id;
        }
        m.group_id = self.group_id;
        match m.msg_type {
            // Vote traffic carries the term it is about, set by the caller.
            MessageType::RequestVote
            | MessageType::RequestPreVote
            | MessageType::RequestVoteResponse
            | MessageType::RequestPreVoteResponse => debug_assert!(m.term != 0),
            // Forwarded client requests carry no term: they are not part of the protocol.
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader => {}
            _ => m.term = self.term,
        }
        if m.needs_durability() {
            self.msgs_after_append.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout =
            self.election_ticks + self.rng.below(self.election_ticks);
    }

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.leader_id = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = None;
        self.tracker.reset_votes();
        let next = self.raft_log.last_index() + 1;
        let (msgs_max, bytes_max) = (
            self.tracker.inflight_msgs_max,
            self.tracker.inflight_bytes_max,
        );
        for pr in self.tracker.progress.values_mut() {
            let is_learner = pr.is_learner;
            *pr = super::progress::Progress::new(next, msgs_max, bytes_max);
            pr.is_learner = is_learner;
        }
        // The leader's own match starts at zero and moves only when its own writes are
        // acknowledged durable, so it never counts itself for entries it may not hold.
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.read_only.reset();
        self.pending_reads.clear();
    }

    /// Becomes a follower of `leader` in `term`.
    pub fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.leader_id = leader;
        self.state = StateRole::Follower;
    }

    fn become_pre_candidate(&mut self) {
        // A pre-candidate changes neither its term nor its vote, so that an unsuccessful
        // pre-election leaves no trace.
        self.tracker.reset_votes();
        self.leader_id = NO_NODE;
        self.state = StateRole::PreCandidate;
    }

    fn become_candidate(&mut self) {
        self.reset(self.term + 1);
        self.vote = self.id;
        self.state = StateRole::Candidate;
    }

    fn become_leader(&mut self) {
        self.reset(self.term);
        self.leader_id = self.id;
        self.state = StateRole::Leader;
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.become_replicate();
            pr.recent_active = true;
        }
        // Membership changes in the uncommitted tail may exist; refuse new ones until the
        // whole tail is applied.
        self.pending_conf_index = self.raft_log.last_index();
        // An empty entry of the new term lets the leader commit (Raft §5.4.2) and, once it is
        // committed, serve reads (§6.4).
        let appended = self.append_entry(vec![Entry::default()]);
        debug_assert!(appended);
    }

    /// Starts an election as if the election timeout had elapsed.
    pub fn campaign(&mut self) {
        self.hup(false);
    }

    fn hup(&mut self, transfer: bool) {
        if self.state == StateRole::Leader || !self.promotable() {
            return;
        }
        if self.raft_log.has_unapplied_conf_change() {
            return;
        }
        if transfer {
            self.run_campaign(Campaign::Transfer);
        } else if self.pre_vote {
            self.run_campaign(Campaign::PreElection);
        } else {
            self.run_campaign(Campaign::Election);
        }
    }

    fn run_campaign(&mut self, kind: Campaign) {
        let (vote_type, term) = if kind == Campaign::PreElection {
            self.become_pre_candidate();
            // Pre-vote requests carry the term the node would campaign in, without taking it.
            (MessageType::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::RequestVote, self.term)
        };
        let last = self.raft_log.last_entry_id();
        let resp_type = vote_response_type(vote_type);
        for id in self.tracker.config.voters.ids() {
            if id == self.id {
                // The node votes for itself, but the vote counts only once it is durable.
                let mut m = Message::new(resp_type, self.id, self.id);
                m.term = term;
                self.send(m);
                continue;
            }
            let mut m = Message::new(vote_type, self.id, id);
            m.term = term;
            m.index = last.index;
            m.log_term = last.term;
            if kind == Campaign::Transfer {
                m.context = CAMPAIGN_TRANSFER.to_vec();
            }
            self.send(m);
        }
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> VoteResult {
        self.tracker.record_vote(from, granted);
        self.tracker.tally_votes().2
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        if self.state == StateRole::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_ticks {
            self.election_elapsed = 0;
            if self.check_quorum {
                if !self.tracker.quorum_active() {
                    self.become_follower(self.term, NO_NODE);
                    return;
                }
                let me = self.id;
                for (&id, pr) in self.tracker.progress.iter_mut() {
                    pr.recent_active = id == me;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned so that
            // the leader accepts proposals again.
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
        self.maybe_auto_leave();
    }

    /// Feeds a message from a peer (or a forwarded client request) into the state machine.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.group_id != self.group_id || (m.to != self.id && m.to != NO_NODE) {
            return Err(RaftError::Misrouted);
        }
        if !message_in_range(&m) {
            return Err(RaftError::BadMessage("index or term out of range"));
        }
        let forwarded = matches!(
            m.msg_type,
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader
        );
        if m.term == 0 && !forwarded {
            return Err(RaftError::BadMessage("protocol message without a term"));
        }
        if self.state == StateRole::Leader
            && m.from != self.id
            && !self.tracker.progress.contains_key(&m.from)
            && matches!(
                m.msg_type,
                MessageType::RequestVote
                    | MessageType::RequestPreVote
                    | MessageType::AppendResponse
            )
        {
            self.catch_up_non_member(&m);
            return Ok(());
        }
        if m.term > self.term {
            let is_vote = matches!(
                m.msg_type,
                MessageType::RequestVote | MessageType::RequestPreVote
            );
            if is_vote {
                let force = m.context == CAMPAIGN_TRANSFER;
                let in_lease = self.check_quorum
                    && self.leader_id != NO_NODE
                    && self.election_elapsed < self.election_ticks;
                if !force && in_lease {
                    // This node heard from a leader within the minimum election timeout, so
                    // it neither updates its term nor grants the vote: a partitioned node
                    // that rejoins cannot depose a healthy leader.
                    return Ok(());
                }
            }
            match m.msg_type {
                // A pre-vote never changes the term of the node asked.
                MessageType::RequestPreVote => {}
                // A granted pre-vote carries the future term; the candidate takes it only
                // when it wins the pre-election.
                MessageType::RequestPreVoteResponse if !m.reject => {}
                MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                    self.become_follower(m.term, m.from);
                }
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term && !forwarded {
            if (self.check_quorum || self.pre_vote)
                && matches!(m.msg_type, MessageType::Heartbeat | MessageType::Append)
            {
                // A stale leader that cannot learn the new term (because pre-vote or the
                // lease keep our higher term from reaching it) is told about it here.
                let mut resp = Message::new(MessageType::AppendResponse, self.id, m.from);
                resp.term = self.term;
                self.send(resp);
            } else if m.msg_type == MessageType::RequestPreVote {
                let mut resp = Message::new(MessageType::RequestPreVoteResponse, self.id, m.from);
                resp.term = self.term;
                resp.reject = true;
                self.send(resp);
            }
            return Ok(());
        }

        match m.msg_type {
            MessageType::RequestVote | MessageType::RequestPreVote => {
                self.handle_vote_request(m);
                Ok(())
            }
            _ => match self.state {
                StateRole::Leader => self.step_leader(m),
                StateRole::Candidate | StateRole::PreCandidate => self.step_candidate(m),
                StateRole::Follower => self.step_follower(m),
            },
        }
    }

    fn handle_vote_request(&mut self, m: Message) {
        let is_pre = m.msg_type == MessageType::RequestPreVote;
        let can_vote = self.vote == m.from
            || (self.vote == NO_NODE && self.leader_id == NO_NODE)
            || (is_pre && m.term > self.term);
        let candidate = EntryId {
            index: m.index,
            term: m.log_term,
        };
        let mut resp = Message::new(vote_response_type(m.msg_type), self.id, m.from);
        if can_vote && self.raft_log.is_up_to_date(candidate) {
            // The response carries the candidate's term so that it is not mistaken for a stale
            // one (a pre-candidate has not taken that term yet).
            resp.term = m.term;
            if !is_pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            resp.term = self.term;
            resp.reject = true;
        }
        self.send(resp);
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), RaftError> {
        let my_response = match self.state {
            StateRole::PreCandidate => MessageType::RequestPreVoteResponse,
            _ => MessageType::RequestVoteResponse,
        };
        match m.msg_type {
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader => {
                Err(RaftError::ProposalDropped)
            }
            MessageType::Append => {
                self.become_follower(m.term, m.from);
                self.handle_append(m)
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
                Ok(())
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
                Ok(())
            }
            t if t == my_response => {
                match self.poll(m.from, !m.reject) {
                    VoteResult::Won => {
                        if self.state == StateRole::PreCandidate {
                            self.run_campaign(Campaign::Election);
                        } else {
                            self.become_leader();
                            self.bcast_append();
                        }
                    }
                    VoteResult::Lost => self.become_follower(self.term, NO_NODE),
                    VoteResult::Pending => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, mut m: Message) -> Result<(), RaftError> {
        match m.msg_type {
            MessageType::Propose => {
                if self.leader_id == NO_NODE || self.disable_proposal_forwarding {
                    return Err(RaftError::ProposalDropped);
                }
                m.to = self.leader_id;
                self.send(m);
                Ok(())
            }
            MessageType::Append => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append(m)
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
                Ok(())
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
                Ok(())
            }
            MessageType::TransferLeader | MessageType::ReadIndex => {
                if self.leader_id == NO_NODE {
                    return Err(RaftError::ProposalDropped);
                }
                m.to = self.leader_id;
                self.send(m);
                Ok(())
            }
            MessageType::TimeoutNow => {
                // The leader picked this node as its successor: campaign at once, skipping the
                // pre-vote (the leader stops sending heartbeats, so voters' leases expire).
                self.hup(true);
                Ok(())
            }
            MessageType::ReadIndexResponse => {
                self.read_states.push(ReadState {
                    index: m.index,
                    context: m.context,
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<(), RaftError> {
        match m.msg_type {
            MessageType::Propose => self.leader_propose(m.entries),
            MessageType::ReadIndex => {
                self.leader_read_index(m);
                Ok(())
            }
            MessageType::TransferLeader => {
                self.leader_transfer(m.from);
                Ok(())
            }
            MessageType::AppendResponse => {
                self.handle_append_response(m);
                Ok(())
            }
            MessageType::HeartbeatResponse => {
                self.handle_heartbeat_response(m);
                Ok(())
            }
            // Another leader in the same term cannot exist; anything else is ignored.
            _ => Ok(()),
        }
    }

    fn leader_propose(&mut self, mut entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Err(RaftError::BadMessage("proposal without entries"));
        }
        if !self.tracker.progress.contains_key(&self.id) || self.lead_transferee.is_some() {
            // A removed leader must not grow the log; during a transfer the target must be
            // able to catch up.
            return Err(RaftError::ProposalDropped);
        }
        let last = self.raft_log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            if e.entry_type != EntryType::ConfChange {
                continue;
            }
            let accepted = match ConfChange::decode(&e.data) {
                Ok(cc) => {
                    // A change is refused while an earlier one is unapplied, and until the
                    // leader has committed an entry of its own term: before that it may not
                    // know the latest membership (the single-server change bug Ongaro found).
                    let pending = self.pending_conf_index > self.raft_log.applied
                        || !self.committed_entry_in_current_term();
                    let joint = self.tracker.config.voters.is_joint();
                    let leave = cc.is_leave_joint();
                    !pending && joint == leave
                }
                Err(_) => false,
            };
            if accepted {
                self.pending_conf_index = last + i as u64 + 1;
            } else {
                // Keep the batch's indexes but neutralize the refused change.
                *e = Entry::default();
            }
        }
        if !self.append_entry(entries) {
            return Err(RaftError::ProposalDropped);
        }
        self.bcast_append();
        Ok(())
    }

    fn append_entry(&mut self, mut entries: Vec<Entry>) -> bool {
        let last = self.raft_log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + i as u64;
        }
        let bytes = payload_bytes(&entries);
        if self.uncommitted_bytes_max > 0
            && self.uncommitted_bytes > 0
            && bytes > 0
            && self.uncommitted_bytes + bytes > self.uncommitted_bytes_max
        {
            return false;
        }
        self.uncommitted_bytes += bytes;
        let last = self.raft_log.append(self.term, entries);
        // The leader's own acknowledgement is released only when its write is durable.
        let mut ack = Message::new(MessageType::AppendResponse, self.id, self.id);
        ack.index = last;
        self.send(ack);
        true
    }

    /// Forgets `bytes` of uncommitted payload because those entries were committed.
    pub fn reduce_uncommitted_bytes(&mut self, bytes: u64) {
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
    }

    /// Whether a membership change proposed now would be refused (see
    /// `leader_propose`): not the leader, an earlier change unapplied, or no entry
    /// of this term committed yet.
    pub fn conf_change_blocked(&self) -> bool {
        self.state != StateRole::Leader
            || self.pending_conf_index > self.raft_log.applied
            || !self.committed_entry_in_current_term()
    }

    fn committed_entry_in_current_term(&self) -> bool {
        self.raft_log.match_term(self.raft_log.committed, self.term)
    }

    fn respond_read(&mut self, to: NodeId, index: Index, context: Vec<u8>) {
        if to == self.id || to == NO_NODE {
            self.read_states.push(ReadState { index, context });
        } else {
            let mut m = Message::new(MessageType::ReadIndexResponse, self.id, to);
            m.index = index;
            m.context = context;
            self.send(m);
        }
    }

    fn leader_read_index(&mut self, m: Message) {
        let from = if m.from == NO_NODE { self.id } else { m.from };
        if self.tracker.is_singleton_voter(self.id) {
            let committed = self.raft_log.committed;
            self.respond_read(from, committed, m.context);
            return;
        }
        if !self.committed_entry_in_current_term() {
            // Until an entry of this term commits, the leader may not know the latest commit
            // index (Raft §6.4), so the read waits.
            self.pending_reads.push(m);
            return;
        }
        let committed = self.raft_log.committed;
        match self.read_only_option {
            ReadOnlyOption::Safe => {
                let seq = self.read_only.add_request(committed, from, m.context);
                self.read_only.recv_ack(self.id, seq);
                self.bcast_heartbeat();
            }
            ReadOnlyOption::LeaseBased => self.respond_read(from, committed, m.context),
        }
    }

    /// A read under the leader's lease: with check-quorum, a leader that heard from a
    /// quorum within the election timeout is still the leader (it would have stepped down,
    /// and followers that heard from it refuse to elect another), so it answers at its
    /// commit index without a heartbeat round. Anything else (not the leader, no
    /// check-quorum, no entry of its term committed yet) takes the ReadIndex path. Safe as
    /// long as clocks drift less than the election timeout allows (etcd's lease reads).
    pub(crate) fn lease_read(&mut self, context: Vec<u8>) -> Result<(), RaftError> {
        if self.state == StateRole::Leader
            && self.check_quorum
            && self.committed_entry_in_current_term()
        {
            let committed = self.raft_log.committed;
            let id = self.id;
            self.respond_read(id, committed, context);
            return Ok(());
        }
        let mut m = Message::new(MessageType::ReadIndex, self.id, self.id);
        m.group_id = self.group_id;
        m.context = context;
        self.step(m)
    }

    fn release_pending_reads(&mut self) {
        if self.pending_reads.is_empty() || !self.committed_entry_in_current_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_reads) {
            self.leader_read_index(m);
        }
    }

    fn leader_transfer(&mut self, to: NodeId) {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return;
        };
        if pr.is_learner || to == self.id || self.lead_transferee == Some(to) {
            return;
        }
        let caught_up = pr.matched == self.raft_log.last_index();
        // Proposals stop for at most one election timeout while the target catches up.
        self.election_elapsed = 0;
        self.lead_transferee = Some(to);
        if caught_up {
            self.send(Message::new(MessageType::TimeoutNow, self.id, to));
        } else {
            self.send_append(to);
        }
    }

    fn handle_append_response(&mut self, m: Message) {
        let last_index = self.raft_log.last_index();
        let first_index = self.raft_log.first_index();
        let from = m.from;
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if m.reject {
            // Fast backtracking: jump to the follower's hint, and further down to the last
            // index whose term is not above the follower's term there.
            let mut next_probe = m.reject_hint;
            if m.log_term > 0 {
                next_probe = self
                    .raft_log
                    .find_conflict_by_term(m.reject_hint, m.log_term)
                    .0;
            }
            let Some(pr) = self.tracker.progress.get_mut(&from) else {
                return;
            };
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        if m.index > last_index {
            // Acknowledges entries this leader never had: a bad or misrouted message.
            return;
        }
        let old_paused = pr.is_paused();
        if !(pr.maybe_update(m.index)
            || (pr.matched == m.index && pr.state == ProgressState::Probe))
        {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_le(m.index),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit() {
            self.release_pending_reads();
            self.bcast_append();
        } else if old_paused && from != self.id {
            self.send_append(from);
        }
        if from != self.id {
            while self.maybe_send_append(from, false) {}
        }
        if self.lead_transferee == Some(from)
            && self
                .tracker
                .progress
                .get(&from)
                .is_some_and(|p| p.matched == last_index)
        {
            self.send(Message::new(MessageType::TimeoutNow, self.id, from));
        }
    }

    fn handle_heartbeat_response(&mut self, m: Message) {
        let last_index = self.raft_log.last_index();
        let Some(pr) = self.tracker.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            // The acknowledgements of the oldest appends may have been lost; free one slot so
            // replication resumes.
            pr.inflights.free_first_one();
        }
        if pr.matched < last_index || pr.state == ProgressState::Probe {
            self.send_append(m.from);
        }
        if self.read_only_option != ReadOnlyOption::Safe || m.read_seq == 0 {
            return;
        }
        self.read_only.recv_ack(m.from, m.read_seq);
        for r in self.read_only.advance(&self.tracker.config.voters) {
            self.respond_read(r.from, r.index, r.context);
        }
    }

    fn handle_append(&mut self, mut m: Message) -> Result<(), RaftError> {
        let contiguous = m
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == m.index + 1 + i as u64 && e.term <= m.term);
        let ordered = m.entries.windows(2).all(|w| w[0].term <= w[1].term)
            && m.entries.first().is_none_or(|e| e.term >= m.log_term);
        if !contiguous || !ordered {
            return Err(RaftError::BadMessage("append entries out of order"));
        }
        let mut resp = Message::new(MessageType::AppendResponse, self.id, m.from);
        if m.index < self.raft_log.committed {
            resp.index = self.raft_log.committed;
            self.send(resp);
            return Ok(());
        }
        let entries = std::mem::take(&mut m.entries);
        match self
            .raft_log
            .maybe_append(self.term, m.index, m.log_term, m.commit, entries)
        {
            Ok(Some(last_new)) => resp.index = last_new,
            Ok(None) => {
                // Tell the leader where to look: the last index here whose term is at most
                // the term the leader sent, so it can skip a whole term per round trip.
                let hint = m.index.min(self.raft_log.last_index());
                let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint, m.log_term);
                resp.index = m.index;
                resp.reject = true;
                resp.reject_hint = hint_index;
                resp.log_term = hint_term;
            }
            Err(_) => {
                return Err(RaftError::BadMessage(
                    "append conflicts with committed entry",
                ));
            }
        }
        self.send(resp);
        Ok(())
    }

    fn handle_heartbeat(&mut self, m: Message) {
        self.raft_log
            .commit_to(m.commit.min(self.raft_log.last_index()));
        let mut resp = Message::new(MessageType::HeartbeatResponse, self.id, m.from);
        resp.read_seq = m.read_seq;
        self.send(resp);
    }

    fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else {
            return;
        };
        let mut resp = Message::new(MessageType::AppendResponse, self.id, m.from);
        resp.index = if self.restore(snapshot) {
            self.raft_log.last_index()
        } else {
            self.raft_log.committed
        };
        self.send(resp);
    }

    /// Installs a snapshot from the leader if it is ahead of this node's log; returns whether
    /// it was installed.
    pub fn restore(&mut self, snapshot: Snapshot) -> bool {
        let meta = &snapshot.metadata;
        if meta.index <= self.raft_log.committed || self.state != StateRole::Follower {
            return false;
        }
        // The snapshot's membership may not include this node: a node removed and added back
        // gets a snapshot taken while it was out. It is installed anyway (only the leader of
        // the current term sends snapshots); the node learns its membership from the entries
        // after it, and nothing here assumes it is in the tracker.
        if self.raft_log.match_term(meta.index, meta.term) {
            // The log already holds the snapshot's last entry; just move the commit index.
            self.raft_log.commit_to(meta.index);
            return false;
        }
        let cs = meta.conf_state.clone();
        self.raft_log.restore(self.term, snapshot);
        let last = self.raft_log.last_index();
        self.tracker.reset_config(&cs, last + 1);
        true
    }

    fn maybe_commit(&mut self) -> bool {
        let index = self.tracker.committed();
        if index == u64::MAX {
            return false;
        }
        self.raft_log.maybe_commit(index, self.term)
    }

    fn bcast_append(&mut self) {
        let mut ids = [0u64; 8];
        let mut extra = Vec::new();
        let mut n = 0;
        for &id in self.tracker.progress.keys() {
            if id == self.id {
                continue;
            }
            if n < ids.len() {
                ids[n] = id;
                n += 1;
            } else {
                extra.push(id);
            }
        }
        for &id in ids[..n].iter().chain(extra.iter()) {
            self.send_append(id);
        }
    }

    /// Every tracked peer but this node, collected so that the caller may mutate `self`.
    fn peer_ids(&self) -> Vec<NodeId> {
        self.tracker
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn bcast_heartbeat(&mut self) {
        for id in self.peer_ids() {
            let matched = self.tracker.progress.get(&id).map_or(0, |p| p.matched);
            let mut m = Message::new(MessageType::Heartbeat, self.id, id);
            // A follower may only learn a commit index its log is known to hold.
            m.commit = self.raft_log.committed.min(matched);
            m.read_seq = self.read_only.last_seq;
            self.send(m);
        }
    }

    fn send_append(&mut self, to: NodeId) {
        self.maybe_send_append(to, true);
    }

    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let Ok(prev_term) = self.raft_log.term(prev_index) else {
            return self.maybe_send_snapshot(to);
        };
        let entries = match self.raft_log.entries(next, self.msg_bytes_max) {
            Ok(entries) => entries,
            Err(_) => return self.maybe_send_snapshot(to),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        let bytes = payload_bytes(&entries);
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.sent_entries(last, bytes);
        }
        let mut m = Message::new(MessageType::Append, self.id, to);
        m.index = prev_index;
        m.log_term = prev_term;
        m.entries = entries;
        m.commit = self.raft_log.committed;
        self.send(m);
        true
    }

    /// Answers a node that is no member of the group but campaigns or answers an append:
    /// a member removed by a change it has not seen committed (the leader stopped sending
    /// to it when it applied the change). It gets the committed entries after its last one
    /// (as far as this leader's log holds them and one message carries), so that it
    /// applies its own removal and stops; its vote is never counted. Nothing is sent when
    /// its last entry is not in this log, or when it already has every committed entry
    /// (so that its answer to this append ends the exchange).
    fn catch_up_non_member(&mut self, m: &Message) {
        let is_vote = matches!(
            m.msg_type,
            MessageType::RequestVote | MessageType::RequestPreVote
        );
        if !is_vote && m.reject {
            return;
        }
        let committed = self.raft_log.committed;
        if m.index >= committed && !is_vote {
            return;
        }
        let prev_index = m.index.min(committed);
        let Ok(prev_term) = self.raft_log.term(prev_index) else {
            return;
        };
        if is_vote && prev_index == m.index && prev_term != m.log_term {
            return;
        }
        let mut entries = if prev_index < committed {
            match self.raft_log.entries(prev_index + 1, self.msg_bytes_max) {
                Ok(entries) => entries,
                Err(_) => return,
            }
        } else {
            Vec::new()
        };
        entries.retain(|e| e.index <= committed);
        let mut append = Message::new(MessageType::Append, self.id, m.from);
        append.index = prev_index;
        append.log_term = prev_term;
        append.entries = entries;
        append.commit = committed;
        self.send(append);
    }

    fn maybe_send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if !pr.recent_active {
            return false;
        }
        let Ok(snapshot) = self.raft_log.snapshot() else {
            return false;
        };
        if snapshot.metadata.index == 0 {
            return false;
        }
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.become_snapshot(snapshot.metadata.index);
        }
        let mut m = Message::new(MessageType::Snapshot, self.id, to);
        m.snapshot = Some(snapshot);
        self.send(m);
        true
    }

    /// Tells the leader that `id` could not be reached, so it stops streaming to it.
    pub fn report_unreachable(&mut self, id: NodeId) {
        if let Some(pr) = self.tracker.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// Tells the leader whether sending the snapshot to `id` succeeded.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        if let Some(pr) = self.tracker.progress.get_mut(&id) {
            if pr.state != ProgressState::Snapshot {
                return;
            }
            if !success {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for the follower's answer (or a heartbeat) before probing again.
            pr.probe_sent = true;
        }
    }

    /// Applies a committed membership change and returns the resulting membership. The host
    /// calls this when it applies a [`EntryType::ConfChange`] entry.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, RaftError> {
        let changed = confchange::apply(&self.tracker, cc, self.raft_log.last_index())
            .map_err(RaftError::ConfChange)?;
        self.tracker.config = changed.config;
        self.tracker.progress = changed.progress;
        let cs = self.tracker.config.to_conf_state();
        let is_voter = self
            .tracker
            .progress
            .get(&self.id)
            .is_some_and(|p| !p.is_learner);
        if self.state == StateRole::Leader && !is_voter {
            // A leader that was removed or demoted steps down; the remaining voters elect a
            // successor.
            self.become_follower(self.term, NO_NODE);
            return Ok(cs);
        }
        if self.state != StateRole::Leader {
            return Ok(cs);
        }
        if let Some(t) = self.lead_transferee {
            if !self.tracker.config.voters.contains(t) {
                self.lead_transferee = None;
            }
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            for id in self.peer_ids() {
                self.maybe_send_append(id, false);
            }
        }
        Ok(cs)
    }

    /// Proposes leaving a joint configuration with `auto_leave` once its change is applied.
    pub fn maybe_auto_leave(&mut self) {
        if self.state == StateRole::Leader
            && self.tracker.config.auto_leave
            && self.raft_log.applied >= self.pending_conf_index
        {
            let entry = Entry {
                entry_type: EntryType::ConfChange,
                data: ConfChange::default().encode().into(),
                ..Entry::default()
            };
            // A refusal (for example during a transfer) is retried on the next tick.
            let _ = self.leader_propose(vec![entry]);
        }
    }
}

fn vote_response_type(t: MessageType) -> MessageType {
    match t {
        MessageType::RequestPreVote => MessageType::RequestPreVoteResponse,
        _ => MessageType::RequestVoteResponse,
    }
}
