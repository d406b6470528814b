//! A read-only snapshot of one node's state, for hosts that want to show it, for debugging
//! and for tests, which read the core through it rather than through its fields.

use std::collections::BTreeMap;

use super::message::{ConfState, Index, NodeId, Term};
use super::progress::ProgressState;
use super::raft::StateRole;

/// The leader's view of one peer's replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The highest index known to be durable on the peer.
    pub matched: Index,
    /// The next index to send it.
    pub next: Index,
    /// How entries are sent to it.
    pub state: ProgressState,
    /// Whether it is a learner.
    pub is_learner: bool,
    /// Whether the leader heard from it within the current election timeout.
    pub recent_active: bool,
}

/// The part of the log that is not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnstableStatus {
    /// The first index not known to be durable.
    pub offset: Index,
    /// Entries below this index have been handed out for writing.
    pub offset_in_progress: Index,
    /// The term of the leader whose append the log accepted last; acknowledgements stamped
    /// with an older one are ignored.
    pub accepted_term: Term,
    /// The index of a snapshot not yet durable, if any.
    pub snapshot_index: Option<Index>,
}

/// The plain numbers of a node's state, taken by
/// [`RawNode::basic_status`](super::raw_node::RawNode::basic_status) without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasicStatus {
    /// This node's id.
    pub id: NodeId,
    /// The group.
    pub group_id: u64,
    /// The current term.
    pub term: Term,
    /// The vote cast in `term`, or [`NO_NODE`](super::message::NO_NODE).
    pub vote: NodeId,
    /// This node's role.
    pub role: StateRole,
    /// The known leader of `term`, or [`NO_NODE`](super::message::NO_NODE).
    pub leader_id: NodeId,
    /// The highest index known to be committed.
    pub commit: Index,
    /// The highest index handed to the state machine.
    pub applying: Index,
    /// The highest index the state machine reported applied.
    pub applied: Index,
    /// The first index still in the log (after the latest snapshot).
    pub first_index: Index,
    /// The last index in the log, durable or not.
    pub last_index: Index,
    /// The ticks without a leader after which this node campaigns, drawn anew at every term.
    pub election_timeout_ticks: u64,
    /// The part of the log not yet durable.
    pub unstable: UnstableStatus,
}

/// A snapshot of a node's state with its membership and, on the leader, every peer's
/// replication, taken by [`RawNode::status`](super::raw_node::RawNode::status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The plain numbers.
    pub basic: BasicStatus,
    /// The membership.
    pub conf_state: ConfState,
    /// Every peer's replication, on the leader; empty on other nodes.
    pub progress: BTreeMap<NodeId, PeerStatus>,
}

impl Status {
    /// Every member: voters (both halves of a joint configuration) and learners.
    pub fn members(&self) -> Vec<NodeId> {
        let cs = &self.conf_state;
        let mut ids: Vec<NodeId> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether the membership is joint (between an outgoing and an incoming configuration).
    pub fn is_joint(&self) -> bool {
        !self.conf_state.voters_outgoing.is_empty()
    }
}
