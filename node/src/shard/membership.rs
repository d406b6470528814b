//! Membership changes of a shard's groups: the membership every group is driven toward, and
//! the one step a group's leader takes next to get there.
//!
//! A member change touches every group of the cluster, and the groups are led by different
//! members, on different shards. So a change is not a sequence of proposals someone has to
//! see through: the cluster's membership is a *target* ([`Membership`]), handed to every
//! shard of every member, and the leader of each group moves its group toward it one
//! configuration change at a time ([`next_step`], called every few ticks). This converges
//! whoever leads, across leader changes and restarts, and a group that cannot move yet (a
//! learner still catching up, a change not applied) simply waits.
//!
//! The steps, in this order, one at a time per group:
//! 1. a member of the target the group does not have joins as a **learner** (a simple
//!    change: no voter changes), even when the target makes it a voter: it receives the
//!    log (or a snapshot) without counting for commitment;
//! 2. a learner the target makes a voter is **promoted** (a simple change of one voter)
//!    once it is in sync: its acknowledged index is at most [`PROMOTE_LAG_ENTRIES_MAX`]
//!    behind the leader's commit index;
//! 3. a voter the target demotes or drops goes through **joint consensus** (enter the joint
//!    configuration, which the leader leaves on its own once it is applied); a learner
//!    the target drops is removed with a simple change. The leader never removes itself:
//!    it first hands leadership to the most caught-up voter the target keeps, which then
//!    removes it.

use std::collections::BTreeSet;

use crate::consensus::{ConfChange, ConfChangeSingle, ConfChangeTransition, NodeId, Status};

/// How far (in entries) a learner's acknowledged log may be behind the leader's commit
/// index for the leader to promote it to voter. A learner further behind would count
/// toward a quorum it cannot help reach yet. Default 100 (etcd promotes at 90% of the
/// leader's index).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 100;

/// The membership every group of the cluster is driven toward: who votes, and who only
/// receives the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Members that vote in every group.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive every group's log without voting (joining members).
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// Checks the membership: at least one voter, no member both voter and learner, no
    /// member id 0. The error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("a membership needs at least one voter".into());
        }
        if self.voters.contains(&0) || self.learners.contains(&0) {
            return Err("member id 0 is reserved".into());
        }
        if let Some(both) = self.voters.intersection(&self.learners).next() {
            return Err(format!("member {both} is both a voter and a learner"));
        }
        Ok(())
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// What a group's leader does next to move its group toward the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Propose this configuration change.
    Propose(ConfChange),
    /// Hand leadership to this voter first (the leader itself is to leave the voters).
    TransferLeader(NodeId),
}

/// The next step of a group toward `target`, as its leader (`status` is the leader's, with
/// the peers' progress) sees it; `None` when there is nothing to do now (the group has the
/// target membership, or waits: a joint configuration not yet left, a learner not in sync).
/// The caller checks first that a change may be proposed at all
/// ([`RawNode::conf_change_blocked`](crate::consensus::RawNode::conf_change_blocked)).
pub fn next_step(status: &Status, target: &Membership) -> Option<Step> {
    let cs = &status.conf_state;
    if !cs.voters_outgoing.is_empty() {
        // Joint: the leader leaves it on its own once the change is applied.
        return None;
    }
    let me = status.basic.id;
    let voters: BTreeSet<NodeId> = cs.voters.iter().copied().collect();
    let learners: BTreeSet<NodeId> = cs.learners.iter().copied().collect();
    let simple = |change| ConfChange {
        transition: ConfChangeTransition::Auto,
        changes: vec![change],
    };
    let joint = |change| ConfChange {
        transition: ConfChangeTransition::Implicit,
        changes: vec![change],
    };
    // 1. Joining members come in as learners.
    if let Some(&id) = target
        .voters
        .iter()
        .chain(&target.learners)
        .find(|id| !voters.contains(id) && !learners.contains(id))
    {
        return Some(Step::Propose(simple(ConfChangeSingle::AddLearner(id))));
    }
    // 2. Learners the target makes voters, once in sync.
    let commit = status.basic.commit;
    if let Some(&id) = target.voters.iter().find(|id| {
        learners.contains(id)
            && status
                .progress
                .get(id)
                .is_some_and(|p| p.matched + PROMOTE_LAG_ENTRIES_MAX >= commit)
    }) {
        return Some(Step::Propose(simple(ConfChangeSingle::AddNode(id))));
    }
    // 3. Voters the target demotes or drops, through joint consensus; the leader last.
    if let Some(&id) = voters
        .iter()
        .find(|&&id| !target.voters.contains(&id) && id != me)
    {
        let change = if target.learners.contains(&id) {
            ConfChangeSingle::AddLearner(id)
        } else {
            ConfChangeSingle::RemoveNode(id)
        };
        return Some(Step::Propose(joint(change)));
    }
    if voters.contains(&me) && !target.voters.contains(&me) {
        // The most caught-up voter the target keeps takes over, and removes this member.
        return status
            .progress
            .iter()
            .filter(|(id, p)| **id != me && !p.is_learner && target.voters.contains(id))
            .max_by_key(|(_, p)| p.matched)
            .map(|(&id, _)| Step::TransferLeader(id));
    }
    // Learners the target drops.
    if let Some(&id) = learners.iter().find(|&&id| !target.contains(id)) {
        return Some(Step::Propose(simple(ConfChangeSingle::RemoveNode(id))));
    }
    None
}

/// Whether `id` is in the configuration `cs` at all (either half of a joint one, or a
/// learner now or after leaving it).
pub(super) fn in_conf(cs: &crate::consensus::ConfState, id: NodeId) -> bool {
    cs.voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .any(|&m| m == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{
        BasicStatus, ConfState, PeerStatus, ProgressState, StateRole, UnstableStatus,
    };

    fn status(
        me: NodeId,
        voters: &[NodeId],
        learners: &[NodeId],
        matched: &[(NodeId, u64)],
    ) -> Status {
        let basic = BasicStatus {
            id: me,
            group_id: 0,
            term: 2,
            vote: me,
            role: StateRole::Leader,
            leader_id: me,
            commit: 500,
            applying: 500,
            applied: 500,
            first_index: 1,
            last_index: 500,
            election_timeout_ticks: 10,
            unstable: UnstableStatus {
                offset: 501,
                offset_in_progress: 501,
                accepted_term: 2,
                snapshot_index: None,
            },
        };
        Status {
            basic,
            conf_state: ConfState {
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                ..ConfState::default()
            },
            progress: matched
                .iter()
                .map(|&(id, m)| {
                    let peer = PeerStatus {
                        matched: m,
                        next: m + 1,
                        state: ProgressState::Replicate,
                        is_learner: learners.contains(&id),
                        recent_active: true,
                    };
                    (id, peer)
                })
                .collect(),
        }
    }

    fn target(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    fn propose(change: ConfChangeSingle, joint: bool) -> Option<Step> {
        Some(Step::Propose(ConfChange {
            transition: if joint {
                ConfChangeTransition::Implicit
            } else {
                ConfChangeTransition::Auto
            },
            changes: vec![change],
        }))
    }

    #[test]
    fn a_member_joins_as_learner_is_promoted_in_sync_and_a_voter_leaves_jointly() {
        let all = [(1, 500), (2, 500), (3, 500)];
        // Added as a voter or a learner: it joins as a learner either way.
        for t in [target(&[1, 2, 3, 4], &[]), target(&[1, 2, 3], &[4])] {
            assert_eq!(
                next_step(&status(1, &[1, 2, 3], &[], &all), &t),
                propose(ConfChangeSingle::AddLearner(4), false)
            );
        }
        // Promoted only once in sync.
        let t = target(&[1, 2, 3, 4], &[]);
        let behind = [(1, 500), (2, 500), (3, 500), (4, 10)];
        assert_eq!(next_step(&status(1, &[1, 2, 3], &[4], &behind), &t), None);
        let synced = [(1, 500), (2, 500), (3, 500), (4, 450)];
        assert_eq!(
            next_step(&status(1, &[1, 2, 3], &[4], &synced), &t),
            propose(ConfChangeSingle::AddNode(4), false)
        );
        // A learner the target keeps a learner stays one.
        let t = target(&[1, 2, 3], &[4]);
        assert_eq!(next_step(&status(1, &[1, 2, 3], &[4], &synced), &t), None);
        // A voter leaves through joint consensus.
        let t = target(&[1, 3, 4], &[]);
        let four = [(1, 500), (2, 500), (3, 500), (4, 500)];
        assert_eq!(
            next_step(&status(1, &[1, 2, 3, 4], &[], &four), &t),
            propose(ConfChangeSingle::RemoveNode(2), true)
        );
        // Demoted to learner, also jointly.
        let t = target(&[1, 3, 4], &[2]);
        assert_eq!(
            next_step(&status(1, &[1, 2, 3, 4], &[], &four), &t),
            propose(ConfChangeSingle::AddLearner(2), true)
        );
        // A learner the target drops goes with a simple change.
        let t = target(&[1, 2, 3], &[]);
        assert_eq!(
            next_step(&status(1, &[1, 2, 3], &[4], &synced), &t),
            propose(ConfChangeSingle::RemoveNode(4), false)
        );
    }

    #[test]
    fn the_leader_hands_over_before_its_own_removal_and_joint_waits() {
        let t = target(&[2, 3, 4], &[]);
        let four = [(1, 500), (2, 480), (3, 499), (4, 490)];
        assert_eq!(
            next_step(&status(1, &[1, 2, 3, 4], &[], &four), &t),
            Some(Step::TransferLeader(3))
        );
        let mut joint = status(1, &[1, 3, 4], &[], &four);
        joint.conf_state.voters_outgoing = vec![1, 2, 3, 4];
        assert_eq!(next_step(&joint, &t), None);
        assert_eq!(
            next_step(&status(1, &[1, 2, 3], &[], &four), &target(&[1, 2, 3], &[])),
            None
        );
    }

    #[test]
    fn invalid_memberships_are_named() {
        assert!(target(&[], &[1]).validate().unwrap_err().contains("voter"));
        assert!(target(&[0, 1], &[]).validate().unwrap_err().contains("0"));
        assert!(
            target(&[1, 2], &[2])
                .validate()
                .unwrap_err()
                .contains("member 2")
        );
        assert!(target(&[1, 2], &[3]).validate().is_ok());
    }
}
