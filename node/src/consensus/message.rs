//! The plain-data values the consensus core exchanges with its host: log entries, messages,
//! hard state, snapshots and membership descriptions.
//!
//! Everything here is owned data without references into the core, so a runtime that hosts
//! many groups can gather the output of all of them into one batch.

/// An entry's payload: shared and immutable, so that the copies of an entry in the unstable
/// log, in messages to every follower, in storage work and in apply work share one buffer
/// instead of allocating one each.
pub type Payload = std::sync::Arc<[u8]>;

/// An index into the replicated log. Index 0 is the empty log; the first real entry is 1.
pub type Index = u64;

/// A Raft term.
pub type Term = u64;

/// The identifier of a node. Zero means "no node".
pub type NodeId = u64;

/// The marker "no node" used for an unknown leader or an absent vote.
pub const NO_NODE: NodeId = 0;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EntryType {
    /// Opaque application data (or nothing, for the entry a new leader appends).
    #[default]
    Normal,
    /// An encoded [`ConfChange`].
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The position of the entry in the log.
    pub index: Index,
    /// Whether `data` is application data or a membership change.
    pub entry_type: EntryType,
    /// The payload.
    pub data: Payload,
}

impl Entry {
    /// The bytes this entry counts for in size limits: its payload length.
    pub fn payload_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// The (index, term) pair that identifies this entry.
    pub fn id(&self) -> EntryId {
        EntryId {
            index: self.index,
            term: self.term,
        }
    }
}

/// The sum of the payload sizes of `entries`.
pub fn payload_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::payload_bytes).sum()
}

/// How many leading entries of `entries` fit in `bytes_max` of payload; at least one when
/// `entries` is not empty, so that an oversized entry still makes progress.
pub fn count_within(entries: &[Entry], bytes_max: u64) -> usize {
    let mut bytes = 0u64;
    for (i, e) in entries.iter().enumerate() {
        bytes += e.payload_bytes();
        if i > 0 && bytes > bytes_max {
            return i;
        }
    }
    entries.len()
}

/// An (index, term) pair; by the Log Matching Property it identifies an entry and its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EntryId {
    /// The entry's index.
    pub index: Index,
    /// The entry's term.
    pub term: Term,
}

/// The state a node must make durable before it answers anyone: term, vote and commit index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HardState {
    /// The current term.
    pub term: Term,
    /// The candidate voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// The highest index known to be committed.
    pub commit: Index,
}

/// A membership: voters (in joint consensus, two sets of them) and learners.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfState {
    /// The voters of the incoming configuration.
    pub voters: Vec<NodeId>,
    /// Learners: they receive the log but neither vote nor count for commitment.
    pub learners: Vec<NodeId>,
    /// The voters of the outgoing configuration; empty unless the group is joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: Vec<NodeId>,
    /// Whether the leader proposes leaving the joint configuration on its own.
    pub auto_leave: bool,
}

/// What a snapshot covers: the last index and term it includes and the membership then.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMetadata {
    /// The index of the last entry the snapshot includes.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// A state-machine snapshot that replaces a log prefix.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub metadata: SnapshotMetadata,
    /// The state machine's bytes, opaque to the core.
    pub data: Vec<u8>,
}

/// The kinds of message nodes exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Leader to follower: entries to append after (`index`, `log_term`), and `commit`.
    Append,
    /// Follower to leader: accepted up to `index`, or (with `reject`) a hint where logs differ.
    AppendResponse,
    /// Candidate to voter: a vote request for `term` with the candidate's last entry.
    RequestVote,
    /// Voter to candidate: vote granted unless `reject`.
    RequestVoteResponse,
    /// Like [`MessageType::RequestVote`] but for the pre-vote round, which changes no state.
    RequestPreVote,
    /// Answer to a pre-vote request.
    RequestPreVoteResponse,
    /// Leader to follower: install `snapshot`.
    Snapshot,
    /// Leader to follower: I am still leader; also carries `commit` and `read_seq`.
    Heartbeat,
    /// Follower to leader: echoes the heartbeat's `read_seq`.
    HeartbeatResponse,
    /// Leader to its chosen successor: start an election now (leadership transfer).
    TimeoutNow,
    /// A proposal forwarded from a follower to the leader, with its entries.
    Propose,
    /// A read request forwarded to the leader; `context` identifies it for the requester.
    ReadIndex,
    /// The leader's answer to a forwarded read: read at `index` or later.
    ReadIndexResponse,
    /// A request to transfer leadership to `from`, forwarded to the leader.
    TransferLeader,
}

/// A message between two nodes of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The raft group the message belongs to.
    pub group_id: u64,
    /// What the message means.
    pub msg_type: MessageType,
    /// The receiver.
    pub to: NodeId,
    /// The sender.
    pub from: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in). Zero marks
    /// a message forwarded on behalf of a client (proposal or read), which carries no term.
    pub term: Term,
    /// The term of the entry at `index` (appends, votes, rejections).
    pub log_term: Term,
    /// An index whose meaning depends on the type; see [`MessageType`].
    pub index: Index,
    /// Entries to append or to propose.
    pub entries: Vec<Entry>,
    /// The sender's commit index.
    pub commit: Index,
    /// The snapshot to install, for [`MessageType::Snapshot`].
    pub snapshot: Option<Snapshot>,
    /// Whether a request was refused.
    pub reject: bool,
    /// For a rejected append: the index the follower suggests the leader probes next.
    pub reject_hint: Index,
    /// The leader-assigned sequence number of the latest read request, echoed by followers.
    pub read_seq: u64,
    /// An opaque context: the client's read context, or the transfer marker on votes.
    pub context: Vec<u8>,
}

impl Message {
    /// A message of type `msg_type` from `from` to `to` with every other field empty.
    pub fn new(msg_type: MessageType, from: NodeId, to: NodeId) -> Message {
        Message {
            group_id: 0,
            msg_type,
            to,
            from,
            term: 0,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit: 0,
            snapshot: None,
            reject: false,
            reject_hint: 0,
            read_seq: 0,
            context: Vec::new(),
        }
    }

    /// Whether the message answers a request and, under asynchronous storage writes, must only
    /// leave the node once the node's state it vouches for is durable.
    pub fn needs_durability(&self) -> bool {
        matches!(
            self.msg_type,
            MessageType::AppendResponse
                | MessageType::RequestVoteResponse
                | MessageType::RequestPreVoteResponse
        )
    }
}

/// How a membership change moves through joint consensus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConfChangeTransition {
    /// One voter changed: apply directly. Several: go joint and leave automatically.
    #[default]
    Auto,
    /// Always go joint and leave automatically.
    Implicit,
    /// Always go joint and wait for an explicit empty change to leave.
    Explicit,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeSingle {
    /// Make the node a voter (promoting it if it is a learner).
    AddNode(NodeId),
    /// Make the node a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove the node.
    RemoveNode(NodeId),
}

/// A membership change. An empty list of changes means "leave the joint configuration".
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfChange {
    /// How the change is carried out.
    pub transition: ConfChangeTransition,
    /// The individual changes, applied in order.
    pub changes: Vec<ConfChangeSingle>,
}

/// Why bytes could not be decoded as a [`ConfChange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfChangeDecodeError;

impl ConfChange {
    /// Whether this change asks to leave a joint configuration.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether applying this change enters a joint configuration, and if so whether the
    /// leader leaves it on its own.
    pub fn enters_joint(&self) -> Option<bool> {
        if self.changes.is_empty() {
            return None;
        }
        match self.transition {
            ConfChangeTransition::Auto if self.changes.len() == 1 => None,
            ConfChangeTransition::Auto | ConfChangeTransition::Implicit => Some(true),
            ConfChangeTransition::Explicit => Some(false),
        }
    }

    /// Encodes the change: a transition byte, then nine bytes per change (a kind byte and the
    /// node id, little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 9 * self.changes.len());
        out.push(match self.transition {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::Implicit => 1,
            ConfChangeTransition::Explicit => 2,
        });
        for change in &self.changes {
            let (kind, id) = match *change {
                ConfChangeSingle::AddNode(id) => (0u8, id),
                ConfChangeSingle::AddLearner(id) => (1, id),
                ConfChangeSingle::RemoveNode(id) => (2, id),
            };
            out.push(kind);
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// Decodes bytes written by [`ConfChange::encode`]; anything else is an error, never a
    /// panic, because the bytes may come from the network.
    pub fn decode(bytes: &[u8]) -> Result<ConfChange, ConfChangeDecodeError> {
        let (&first, rest) = bytes.split_first().ok_or(ConfChangeDecodeError)?;
        let transition = match first {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            _ => return Err(ConfChangeDecodeError),
        };
        if rest.len() % 9 != 0 {
            return Err(ConfChangeDecodeError);
        }
        let mut changes = Vec::with_capacity(rest.len() / 9);
        for chunk in rest.chunks_exact(9) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&chunk[1..]);
            let id = u64::from_le_bytes(id);
            changes.push(match chunk[0] {
                0 => ConfChangeSingle::AddNode(id),
                1 => ConfChangeSingle::AddLearner(id),
                2 => ConfChangeSingle::RemoveNode(id),
                _ => return Err(ConfChangeDecodeError),
            });
        }
        Ok(ConfChange {
            transition,
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_and_rejects_garbage() {
        let cc = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle::AddNode(7),
                ConfChangeSingle::RemoveNode(u64::MAX),
            ],
        };
        assert_eq!(ConfChange::decode(&cc.encode()), Ok(cc));
        assert!(ConfChange::decode(&[]).is_err());
        assert!(ConfChange::decode(&[9]).is_err());
        assert!(ConfChange::decode(&[0, 1, 2]).is_err());
        assert!(ConfChange::decode(&[0, 5, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
