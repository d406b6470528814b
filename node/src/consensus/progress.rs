//! What a leader knows about one follower's log.

use super::inflights::Inflights;
use super::message::Index;

/// How the leader currently sends entries to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match is unknown: send one append at a time and wait for its answer.
    Probe,
    /// The follower is caught up: stream appends optimistically, bounded by the in-flight
    /// window.
    Replicate,
    /// The follower needs a snapshot, which has been sent; send nothing until it reports.
    Snapshot,
}

/// The leader's view of one peer.
///
/// Invariant: `matched < next`.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be durable on the peer.
    pub matched: Index,
    /// The next index to send.
    pub next: Index,
    /// The sending mode.
    pub state: ProgressState,
    /// In Snapshot state: the index of the snapshot sent.
    pub pending_snapshot: Index,
    /// Whether the peer was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In Probe state: an append was sent and the leader waits for an answer or a heartbeat.
    pub probe_sent: bool,
    /// Appends sent and not yet acknowledged.
    pub inflights: Inflights,
    /// Whether the peer is a learner.
    pub is_learner: bool,
}

impl Progress {
    /// A fresh progress in Probe state that will first try `next`.
    pub fn new(next: Index, msgs_max: usize, bytes_max: u64) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(msgs_max, bytes_max),
            is_learner: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    /// Switches to Probe, starting after the match (or after the snapshot just sent).
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    /// Switches to Replicate, streaming from after the match.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    /// Switches to Snapshot after sending the snapshot at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Records an acknowledgement up to `index`; returns whether the match moved.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = self.matched < index;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Records that entries up to `last` were sent and how many payload bytes they carried.
    pub fn sent_entries(&mut self, last: Option<Index>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// Handles a rejection of the append after `rejected`, with the follower's hint. Returns
    /// false if the rejection is stale (it answers an older message).
    pub fn maybe_decr_to(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader should hold back appends to this peer.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_backtracks_and_ignores_stale_rejections() {
        let mut pr = Progress::new(11, 4, 0);
        pr.matched = 5;
        assert!(!pr.maybe_decr_to(9, 3));
        assert!(pr.maybe_decr_to(10, 3));
        assert_eq!(pr.next, 6);
        pr.become_replicate();
        pr.sent_entries(Some(9), 4);
        assert_eq!(pr.next, 10);
        assert!(!pr.maybe_decr_to(5, 0));
        assert!(pr.maybe_decr_to(7, 0));
        assert_eq!(pr.next, 6);
    }

    #[test]
    fn snapshot_then_probe_starts_after_snapshot() {
        let mut pr = Progress::new(2, 4, 0);
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next, 21);
    }
}
