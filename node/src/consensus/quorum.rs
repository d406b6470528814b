//! Majority and joint quorums: which index a quorum has acknowledged and how an election went.

use std::collections::BTreeSet;

use super::message::NodeId;

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Some votes are missing and the outcome is still open.
    Pending,
    /// A quorum refused.
    Lost,
    /// A quorum granted.
    Won,
}

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    /// The voters.
    pub voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    /// The largest value acknowledged by a majority, given each voter's acknowledged value
    /// (`None` counts as zero). An empty configuration returns `u64::MAX`, so that in a joint
    /// configuration the other half decides alone.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        let n = self.voters.len();
        if n == 0 {
            return u64::MAX;
        }
        // Small fixed buffer for the common group sizes to avoid allocating on every commit.
        let mut small = [0u64; 7];
        let mut large = Vec::new();
        let values: &mut [u64] = if n <= small.len() {
            &mut small[..n]
        } else {
            large.resize(n, 0);
            &mut large
        };
        for (slot, &id) in values.iter_mut().zip(self.voters.iter()) {
            *slot = acked(id).unwrap_or(0);
        }
        values.sort_unstable();
        // With the values ascending, the one at position n - (n/2 + 1) is acknowledged by
        // n/2 + 1 voters: itself and everything above it.
        values[n - (n / 2 + 1)]
    }

    /// The election outcome given each voter's vote, if it voted.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.voters.len() / 2 + 1;
        if yes >= q {
            VoteResult::Won
        } else if yes + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// Two majority configurations that must both agree (joint consensus). Outside a membership
/// change `outgoing` is empty and `incoming` decides alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The new (or only) configuration.
    pub incoming: MajorityConfig,
    /// The old configuration during a joint change; empty otherwise.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// Whether the configuration is joint.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    /// Whether `id` votes in either half.
    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    /// Every voter of either half, ascending and without duplicates.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    /// The largest value acknowledged by both halves.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64> + Copy) -> u64 {
        self.incoming
            .committed_index(acked)
            .min(self.outgoing.committed_index(acked))
    }

    /// The election outcome: won only if both halves won, lost if either lost.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool> + Copy) -> VoteResult {
        let a = self.incoming.vote_result(vote);
        let b = self.outgoing.vote_result(vote);
        if a == b {
            a
        } else if a == VoteResult::Lost || b == VoteResult::Lost {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ids: &[u64]) -> MajorityConfig {
        MajorityConfig {
            voters: ids.iter().copied().collect(),
        }
    }

    #[test]
    fn committed_index_is_the_majority_value() {
        let c = cfg(&[1, 2, 3]);
        let acked = |id| [None, Some(5), Some(9), Some(7)][usize::try_from(id).unwrap()];
        assert_eq!(c.committed_index(acked), 7);
        assert_eq!(cfg(&[]).committed_index(acked), u64::MAX);
        let joint = JointConfig {
            incoming: c,
            outgoing: cfg(&[1, 2]),
        };
        assert_eq!(joint.committed_index(acked), 5);
    }

    #[test]
    fn vote_results() {
        let c = cfg(&[1, 2, 3]);
        assert_eq!(
            c.vote_result(|id| (id == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            c.vote_result(|id| (id != 3).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            c.vote_result(|id| (id != 3).then_some(id == 1)),
            VoteResult::Pending
        );
        assert_eq!(c.vote_result(|_| Some(false)), VoteResult::Lost);
        let joint = JointConfig {
            incoming: c,
            outgoing: cfg(&[4, 5]),
        };
        assert_eq!(joint.vote_result(|id| Some(id <= 4)), VoteResult::Lost);
        assert_eq!(joint.vote_result(|id| Some(id != 3)), VoteResult::Won);
    }
}
