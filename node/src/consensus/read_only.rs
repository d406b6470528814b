//! Linearizable reads without writing to the log (Raft §6.4, ReadIndex).
//!
//! The leader records the commit index when a read arrives and serves the read once a quorum
//! has confirmed, by answering a heartbeat sent after the read arrived, that it is still the
//! leader. Each read gets a leader-assigned sequence number and heartbeats carry the latest
//! one: a follower's answer to heartbeat `s` confirms every read numbered `s` or lower. Clients'
//! own contexts are never used to match answers, so a client that retries a read with the same
//! context can never be answered by a heartbeat sent before its retry.

use std::collections::{BTreeMap, VecDeque};

use super::message::{Index, NodeId};
use super::quorum::JointConfig;

/// How the leader serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// Confirm leadership with a heartbeat round (ReadIndex). Safe without clock assumptions.
    #[default]
    Safe,
    /// Trust the leader lease that check-quorum maintains; no round trip, but it assumes
    /// bounded clock drift. Only allowed with check-quorum.
    LeaseBased,
}

/// A read the host may now serve: once the local state machine has applied `index`, a read
/// with `context` is linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index the read must wait for.
    pub index: Index,
    /// The context the client gave.
    pub context: Vec<u8>,
}

/// A read waiting for the leader to confirm its leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The leader-assigned sequence number.
    pub seq: u64,
    /// The commit index when the read arrived.
    pub index: Index,
    /// Who asked (the leader itself or a follower that forwarded it).
    pub from: NodeId,
    /// The client's context.
    pub context: Vec<u8>,
}

/// The reads a leader is confirming.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// Reads waiting for confirmation, in sequence order.
    pub pending: VecDeque<ReadRequest>,
    /// The highest sequence number each voter confirmed.
    pub acks: BTreeMap<NodeId, u64>,
    /// The last sequence number assigned; numbers keep increasing across terms.
    pub last_seq: u64,
}

impl ReadOnly {
    /// Registers a read and returns its sequence number.
    pub fn add_request(&mut self, index: Index, from: NodeId, context: Vec<u8>) -> u64 {
        self.last_seq += 1;
        let seq = self.last_seq;
        self.pending.push_back(ReadRequest {
            seq,
            index,
            from,
            context,
        });
        seq
    }

    /// Records that `from` confirmed leadership as of sequence number `seq`.
    pub fn recv_ack(&mut self, from: NodeId, seq: u64) {
        if seq == 0 || seq > self.last_seq {
            // Zero acknowledges nothing; a number never assigned is a bad message.
            return;
        }
        let ack = self.acks.entry(from).or_insert(0);
        *ack = (*ack).max(seq);
    }

    /// Removes and returns the reads a quorum of `voters` has confirmed.
    pub fn advance(&mut self, voters: &JointConfig) -> Vec<ReadRequest> {
        let confirmed = voters.committed_index(|id| self.acks.get(&id).copied());
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|r| r.seq <= confirmed) {
            if let Some(r) = self.pending.pop_front() {
                out.push(r);
            }
        }
        out
    }

    /// Drops every pending read and acknowledgement (on a leadership change).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.acks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::quorum::MajorityConfig;

    #[test]
    fn a_read_is_released_only_by_acks_for_its_own_or_later_sequence() {
        let voters = JointConfig {
            incoming: MajorityConfig {
                voters: [1, 2, 3].into_iter().collect(),
            },
            outgoing: MajorityConfig::default(),
        };
        let mut ro = ReadOnly::default();
        let first = ro.add_request(5, 1, b"ctx".to_vec());
        ro.recv_ack(1, first);
        ro.recv_ack(2, first);
        assert_eq!(ro.advance(&voters).len(), 1);
        // The same client context again: the old acknowledgements must not release it.
        let retry = ro.add_request(6, 1, b"ctx".to_vec());
        ro.recv_ack(1, retry);
        ro.recv_ack(2, first);
        assert!(ro.advance(&voters).is_empty());
        ro.recv_ack(3, retry + 7);
        assert!(ro.advance(&voters).is_empty());
        ro.recv_ack(3, retry);
        assert_eq!(ro.advance(&voters)[0].index, 6);
    }
}
