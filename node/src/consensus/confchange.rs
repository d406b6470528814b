//! Computes the membership that results from a [`ConfChange`], as etcd's `confchange.Changer`
//! does: simple changes of one voter, entering a joint configuration, and leaving it.

use std::collections::BTreeMap;

use super::message::{ConfChange, ConfChangeSingle, Index, NodeId};
use super::progress::Progress;
use super::quorum::MajorityConfig;
use super::tracker::{ProgressTracker, TrackerConfig};

/// Why a membership change cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    /// A joint configuration cannot be entered twice.
    AlreadyJoint,
    /// Only a joint configuration can be left.
    NotJoint,
    /// A simple change may change at most one voter.
    MoreThanOneVoterChanged,
    /// The change would leave no voter.
    NoVoters,
    /// Node id 0 is reserved.
    InvalidNode,
}

impl std::fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConfChangeError::AlreadyJoint => {
                "the membership is already joint; leave it before entering another"
            }
            ConfChangeError::NotJoint => {
                "the membership is not joint, so there is nothing to leave"
            }
            ConfChangeError::MoreThanOneVoterChanged => {
                "a simple membership change may change at most one voter; use a joint change"
            }
            ConfChangeError::NoVoters => "the membership change would leave no voter",
            ConfChangeError::InvalidNode => "node id 0 is reserved and cannot be a member",
        })
    }
}

impl std::error::Error for ConfChangeError {}

/// The membership and progress map after a change, to be installed by the caller.
pub struct Changed {
    /// The new membership.
    pub config: TrackerConfig,
    /// The new progress map.
    pub progress: BTreeMap<NodeId, Progress>,
}

/// Applies `cc` to the tracker's current membership without modifying the tracker. New
/// members get a progress that probes from `last_index`.
pub fn apply(
    tracker: &ProgressTracker,
    cc: &ConfChange,
    last_index: Index,
) -> Result<Changed, ConfChangeError> {
    let mut ch = Changer {
        config: tracker.config.clone(),
        progress: tracker.progress.clone(),
        tracker,
        next: last_index.max(1),
    };
    if cc.is_leave_joint() {
        ch.leave_joint()?;
    } else if let Some(auto_leave) = cc.enters_joint() {
        ch.enter_joint(auto_leave, &cc.changes)?;
    } else {
        ch.simple(&cc.changes)?;
    }
    Ok(Changed {
        config: ch.config,
        progress: ch.progress,
    })
}

struct Changer<'a> {
    config: TrackerConfig,
    progress: BTreeMap<NodeId, Progress>,
    tracker: &'a ProgressTracker,
    next: Index,
}

impl Changer<'_> {
    fn enter_joint(
        &mut self,
        auto_leave: bool,
        changes: &[ConfChangeSingle],
    ) -> Result<(), ConfChangeError> {
        if self.config.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        if self.config.voters.incoming.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        self.config.voters.outgoing = self.config.voters.incoming.clone();
        self.apply_all(changes)?;
        self.config.auto_leave = auto_leave;
        Ok(())
    }

    fn leave_joint(&mut self) -> Result<(), ConfChangeError> {
        if !self.config.voters.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        for id in std::mem::take(&mut self.config.learners_next) {
            self.config.learners.insert(id);
            if let Some(pr) = self.progress.get_mut(&id) {
                pr.is_learner = true;
            }
        }
        let outgoing = std::mem::take(&mut self.config.voters.outgoing);
        for id in outgoing.voters {
            let still_member = self.config.voters.incoming.voters.contains(&id)
                || self.config.learners.contains(&id);
            if !still_member {
                self.progress.remove(&id);
            }
        }
        self.config.voters.outgoing = MajorityConfig::default();
        self.config.auto_leave = false;
        Ok(())
    }

    fn simple(&mut self, changes: &[ConfChangeSingle]) -> Result<(), ConfChangeError> {
        if self.config.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        let before = self.config.voters.incoming.voters.clone();
        self.apply_all(changes)?;
        let after = &self.config.voters.incoming.voters;
        if before.symmetric_difference(after).count() > 1 {
            return Err(ConfChangeError::MoreThanOneVoterChanged);
        }
        Ok(())
    }

    fn apply_all(&mut self, changes: &[ConfChangeSingle]) -> Result<(), ConfChangeError> {
        for change in changes {
            match *change {
                ConfChangeSingle::AddNode(0)
                | ConfChangeSingle::AddLearner(0)
                | ConfChangeSingle::RemoveNode(0) => return Err(ConfChangeError::InvalidNode),
                ConfChangeSingle::AddNode(id) => self.make_voter(id),
                ConfChangeSingle::AddLearner(id) => self.make_learner(id),
                ConfChangeSingle::RemoveNode(id) => self.remove(id),
            }
        }
        if self.config.voters.incoming.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        Ok(())
    }

    fn init_progress(&mut self, id: NodeId, is_learner: bool) {
        let pr = self.tracker.new_progress(self.next, is_learner);
        self.progress.insert(id, pr);
        if is_learner {
            self.config.learners.insert(id);
        } else {
            self.config.voters.incoming.voters.insert(id);
        }
    }

    fn make_voter(&mut self, id: NodeId) {
        let Some(pr) = self.progress.get_mut(&id) else {
            self.init_progress(id, false);
            return;
        };
        pr.is_learner = false;
        self.config.learners.remove(&id);
        self.config.learners_next.remove(&id);
        self.config.voters.incoming.voters.insert(id);
    }

    fn make_learner(&mut self, id: NodeId) {
        if !self.progress.contains_key(&id) {
            self.init_progress(id, true);
            return;
        }
        if self.config.learners.contains(&id) {
            return;
        }
        // Remove the node as a voter, keeping its progress, then re-add it as a learner; an
        // outgoing voter only becomes a learner once the joint configuration is left.
        let kept = self.progress.get(&id).cloned();
        self.remove(id);
        if let Some(pr) = kept {
            self.progress.insert(id, pr);
        }
        if self.config.voters.outgoing.voters.contains(&id) {
            self.config.learners_next.insert(id);
        } else {
            if let Some(pr) = self.progress.get_mut(&id) {
                pr.is_learner = true;
            }
            self.config.learners.insert(id);
        }
    }

    fn remove(&mut self, id: NodeId) {
        if !self.progress.contains_key(&id) {
            return;
        }
        self.config.voters.incoming.voters.remove(&id);
        self.config.learners.remove(&id);
        self.config.learners_next.remove(&id);
        // An outgoing voter keeps its progress: it still votes until the joint state is left.
        if !self.config.voters.outgoing.voters.contains(&id) {
            self.progress.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::message::{ConfChangeTransition, ConfState};

    fn tracker(voters: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(4, 0);
        t.reset_config(
            &ConfState {
                voters: voters.to_vec(),
                ..ConfState::default()
            },
            1,
        );
        t
    }

    #[test]
    fn simple_change_refuses_two_voters() {
        let t = tracker(&[1, 2, 3]);
        let cc = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle::AddNode(4)],
        };
        let changed = apply(&t, &cc, 5).unwrap();
        assert_eq!(changed.config.voters.incoming.voters.len(), 4);
        let two = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle::AddNode(4),
                ConfChangeSingle::RemoveNode(1),
            ],
        };
        let mut ch = Changer {
            config: t.config.clone(),
            progress: t.progress.clone(),
            tracker: &t,
            next: 1,
        };
        assert_eq!(
            ch.simple(&two.changes),
            Err(ConfChangeError::MoreThanOneVoterChanged)
        );
    }

    #[test]
    fn joint_demotion_goes_through_learners_next() {
        let mut t = tracker(&[1, 2, 3]);
        let cc = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![
                ConfChangeSingle::AddLearner(3),
                ConfChangeSingle::AddNode(4),
            ],
        };
        let changed = apply(&t, &cc, 5).unwrap();
        assert!(changed.config.voters.is_joint());
        assert!(changed.config.learners_next.contains(&3));
        assert!(!changed.config.auto_leave);
        t.config = changed.config;
        t.progress = changed.progress;
        assert_eq!(apply(&t, &cc, 5).err(), Some(ConfChangeError::AlreadyJoint));
        let left = apply(&t, &ConfChange::default(), 5).unwrap();
        assert!(!left.config.voters.is_joint());
        assert!(left.config.learners.contains(&3));
        assert!(left.progress[&3].is_learner);
        assert_eq!(left.config.voters.incoming.voters.len(), 3);
    }

    #[test]
    fn removing_every_voter_is_refused() {
        let t = tracker(&[1]);
        let cc = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle::RemoveNode(1)],
        };
        assert_eq!(apply(&t, &cc, 1).err(), Some(ConfChangeError::NoVoters));
    }
}
