//! The leader's bookkeeping for the whole group: membership, per-peer progress and votes.

use std::collections::{BTreeMap, BTreeSet};

use super::message::{ConfState, Index, NodeId};
use super::progress::Progress;
use super::quorum::{JointConfig, MajorityConfig, VoteResult};

/// A membership as the tracker holds it.
///
/// Invariants: learners and voters are disjoint; `learners_next` is a subset of the outgoing
/// voters and disjoint from `learners`; `auto_leave` implies a joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The voters, possibly joint.
    pub voters: JointConfig,
    /// Learners.
    pub learners: BTreeSet<NodeId>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<NodeId>,
    /// Whether the leader leaves the joint configuration on its own.
    pub auto_leave: bool,
}

impl TrackerConfig {
    /// The configuration described by `cs`.
    pub fn from_conf_state(cs: &ConfState) -> TrackerConfig {
        TrackerConfig {
            voters: JointConfig {
                incoming: MajorityConfig {
                    voters: cs.voters.iter().copied().collect(),
                },
                outgoing: MajorityConfig {
                    voters: cs.voters_outgoing.iter().copied().collect(),
                },
            },
            learners: cs.learners.iter().copied().collect(),
            learners_next: cs.learners_next.iter().copied().collect(),
            auto_leave: cs.auto_leave,
        }
    }

    /// The configuration as a [`ConfState`].
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.voters.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }
}

/// Membership, progress of every member, and the votes of the current election.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The membership.
    pub config: TrackerConfig,
    /// One entry per member (voter of either half, learner or next learner).
    pub progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current election.
    pub votes: BTreeMap<NodeId, bool>,
    /// In-flight message limit per peer.
    pub inflight_msgs_max: usize,
    /// In-flight payload byte limit per peer (0: none).
    pub inflight_bytes_max: u64,
}

impl ProgressTracker {
    /// A tracker with no members.
    pub fn new(inflight_msgs_max: usize, inflight_bytes_max: u64) -> ProgressTracker {
        ProgressTracker {
            config: TrackerConfig::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            inflight_msgs_max,
            inflight_bytes_max,
        }
    }

    /// A fresh progress for a new member that will be probed at `next`.
    pub fn new_progress(&self, next: Index, is_learner: bool) -> Progress {
        let mut pr = Progress::new(next, self.inflight_msgs_max, self.inflight_bytes_max);
        pr.is_learner = is_learner;
        // A new member counts as active so that check-quorum does not depose the leader
        // before the member had a chance to answer.
        pr.recent_active = true;
        pr
    }

    /// Replaces the membership with `cs`, with fresh progress for every member.
    pub fn reset_config(&mut self, cs: &ConfState, next: Index) {
        self.config = TrackerConfig::from_conf_state(cs);
        self.progress.clear();
        for id in self.config.voters.ids() {
            let pr = self.new_progress(next, false);
            self.progress.insert(id, pr);
        }
        for &id in self
            .config
            .learners
            .iter()
            .chain(self.config.learners_next.iter())
        {
            let pr = self.new_progress(next, true);
            self.progress.entry(id).or_insert(pr).is_learner = self.config.learners.contains(&id);
        }
    }

    /// The largest index durable on a quorum of voters.
    pub fn committed(&self) -> Index {
        self.config
            .voters
            .committed_index(|id| self.progress.get(&id).map(|p| p.matched))
    }

    /// Whether `id` is the only voter.
    pub fn is_singleton_voter(&self, id: NodeId) -> bool {
        !self.config.voters.is_joint()
            && self.config.voters.incoming.voters.len() == 1
            && self.config.voters.incoming.voters.contains(&id)
    }

    /// Forgets the votes of the last election.
    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s vote; a node's first answer in an election is the one that counts.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// Counts the votes: (granted, rejected, outcome).
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let mut granted = 0;
        let mut rejected = 0;
        for (id, &v) in &self.votes {
            if !self.config.voters.contains(*id) {
                continue;
            }
            if v {
                granted += 1;
            } else {
                rejected += 1;
            }
        }
        let result = self
            .config
            .voters
            .vote_result(|id| self.votes.get(&id).copied());
        (granted, rejected, result)
    }

    /// Whether a quorum of voters was heard from recently (check-quorum).
    pub fn quorum_active(&self) -> bool {
        let result = self
            .config
            .voters
            .vote_result(|id| self.progress.get(&id).map(|p| p.recent_active));
        result == VoteResult::Won
    }
}
