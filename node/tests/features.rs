//! Behaviour of the features beyond the basic algorithm: limits, leases, check-quorum,
//! pre-vote and fast log backtracking.

mod common;

use common::{Env, test_config};
use keel_node::consensus::{
    Config, Entry, HardState, MemStorage, MessageType, RaftError, ReadOnlyOption, StateRole,
};

fn cluster(n: u64, tweak: impl Fn(&mut Config)) -> Env {
    let mut env = Env::new();
    env.verbose = false;
    let voters: Vec<u64> = (1..=n).collect();
    for id in 1..=n {
        let mut c = test_config(id);
        tweak(&mut c);
        env.add_node(c, &voters, &[]);
    }
    env.raw(1).campaign();
    env.stabilize();
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);
    env
}

#[test]
fn lease_reads_are_answered_without_a_heartbeat_round() {
    let mut env = cluster(3, |c| c.read_only = ReadOnlyOption::LeaseBased);
    env.raw(1).read_index(b"lease".to_vec()).unwrap();
    let rd = env.raw(1).ready();
    assert_eq!(rd.read_states.len(), 1);
    assert!(
        rd.messages
            .iter()
            .all(|m| m.msg_type != MessageType::Heartbeat)
    );
}

#[test]
fn lease_reads_require_check_quorum() {
    let mut c = test_config(1);
    c.read_only = ReadOnlyOption::LeaseBased;
    c.check_quorum = false;
    assert!(c.validate().is_err());
}

#[test]
fn uncommitted_bytes_are_limited() {
    let mut env = cluster(3, |c| c.uncommitted_bytes_max = 10);
    env.cut.extend([(1, 2), (1, 3)]);
    // The first proposal is accepted whatever its size, so a large entry cannot block forever.
    env.raw(1).propose(vec![0; 8]).unwrap();
    assert_eq!(
        env.raw(1).propose(vec![0; 8]),
        Err(RaftError::ProposalDropped)
    );
    env.cut.clear();
    env.stabilize();
    env.raw(1).propose(vec![0; 8]).unwrap();
}

#[test]
fn inflight_appends_are_limited_per_follower() {
    let mut env = cluster(3, |c| c.inflight_msgs_max = 4);
    // Follower 2's acknowledgements are lost, so its in-flight window never drains.
    env.cut.insert((2, 1));
    let mut appends_to_2 = 0;
    for i in 0..20u8 {
        env.raw(1).propose(vec![i]).unwrap();
        let rd = env.raw(1).ready();
        appends_to_2 += rd
            .messages
            .iter()
            .filter(|m| m.to == 2 && m.msg_type == MessageType::Append)
            .count();
        env.net.extend(rd.messages);
        if let Some(a) = rd.append {
            env.raw(1).storage_mut().append(&a.entries).unwrap();
            env.raw(1).on_append_durable(a.ack);
        }
        env.stabilize_only(&[2, 3]);
    }
    assert_eq!(appends_to_2, 4);
}

#[test]
fn leader_without_quorum_steps_down() {
    let mut env = cluster(3, |_| {});
    env.cut.extend([(2, 1), (3, 1)]);
    for _ in 0..2 * test_config(1).election_ticks {
        env.tick(1, 1);
        env.stabilize();
    }
    assert_eq!(env.raw(1).basic_status().role, StateRole::Follower);
}

#[test]
fn pre_vote_keeps_a_rejoining_node_from_disrupting_the_leader() {
    let mut env = cluster(3, |_| {});
    env.cut.extend([(3, 1), (3, 2), (1, 3), (2, 3)]);
    for _ in 0..100 {
        env.tick(3, 1);
        env.stabilize();
    }
    let term = env.raw(1).basic_status().term;
    assert_eq!(
        env.raw(3).basic_status().term,
        term,
        "a pre-candidate does not raise its term"
    );
    env.cut.clear();
    for _ in 0..3 {
        env.tick(1, 1);
        env.stabilize();
    }
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);
    assert_eq!(env.raw(1).basic_status().term, term);
}

#[test]
fn fast_backtracking_skips_a_divergent_term_in_one_round_trip() {
    // Follower 2 holds 50 entries of term 2 the leader never had; the leader's log after 1/1
    // is ten entries of term 3. One rejection carries a hint (the follower's last index whose
    // term is at most the leader's, and that term) that lets the leader skip back to index 1
    // at once instead of probing one index per round trip.
    let mut leader = MemStorage::new_with_conf(&[1, 2], &[]);
    let mut ents = vec![Entry {
        index: 1,
        term: 1,
        ..Entry::default()
    }];
    ents.extend((2..=11).map(|index| Entry {
        index,
        term: 3,
        ..Entry::default()
    }));
    leader.append(&ents).unwrap();
    leader.set_hard_state(HardState {
        term: 3,
        vote: 0,
        commit: 1,
    });
    let mut follower = MemStorage::new_with_conf(&[1, 2], &[]);
    let mut ents = vec![Entry {
        index: 1,
        term: 1,
        ..Entry::default()
    }];
    ents.extend((2..=51).map(|index| Entry {
        index,
        term: 2,
        ..Entry::default()
    }));
    follower.append(&ents).unwrap();
    follower.set_hard_state(HardState {
        term: 2,
        vote: 0,
        commit: 1,
    });

    let mut env = Env::new();
    for (id, storage) in [(1, leader), (2, follower)] {
        let mut c = test_config(id);
        c.pre_vote = false;
        env.add_node_with_storage(c, storage);
    }
    env.raw(1).campaign();
    env.stabilize();
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);
    assert_eq!(env.raw(2).basic_status().last_index, 12);
    assert_eq!(env.raw(2).term(12), Ok(4));
    let appends = env.out.matches("1->2 Append").count();
    // Probe, skip back, then the commit notification.
    assert!(
        appends <= 3,
        "caught up after {appends} appends:\n{}",
        env.out
    );
}

fn storage_with_commit(last: u64, commit: u64) -> MemStorage {
    let mut storage = MemStorage::new_with_conf(&[1, 2, 3], &[]);
    let entries: Vec<Entry> = (1..=last)
        .map(|index| Entry {
            index,
            term: 1,
            ..Entry::default()
        })
        .collect();
    storage.append(&entries).unwrap();
    storage.set_hard_state(HardState {
        term: 1,
        vote: 1,
        commit,
    });
    storage
}

#[test]
fn restart_from_a_log_that_lost_committed_entries_is_an_error() {
    // The hard state says 5 is committed but the log ends at 3: committed entries were lost,
    // and starting anyway would hide it.
    let err = keel_node::consensus::RawNode::new(&test_config(1), storage_with_commit(3, 5))
        .err()
        .expect("a commit index beyond the log is refused");
    let text = err.to_string();
    assert!(
        text.contains('5') && text.contains('3'),
        "the message names both numbers: {text}"
    );

    // The state machine claims more than the log says is committed.
    let mut c = test_config(1);
    c.applied = 4;
    let err = keel_node::consensus::RawNode::new(&c, storage_with_commit(5, 3))
        .err()
        .expect("applied beyond the commit index is refused");
    let text = err.to_string();
    assert!(
        text.contains('4') && text.contains('3'),
        "the message names both numbers: {text}"
    );

    let mut c = test_config(1);
    c.applied = 3;
    assert!(keel_node::consensus::RawNode::new(&c, storage_with_commit(5, 3)).is_ok());
}

#[test]
fn errors_explain_themselves() {
    let mut c = test_config(1);
    c.election_ticks = 1;
    let err = c.validate().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("election_ticks") && text.contains('1'),
        "{text}"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(!boxed.to_string().is_empty());
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(RaftError::ProposalDropped),
        Box::new(keel_node::consensus::StorageError::Compacted {
            index: 3,
            snapshot_index: 7,
        }),
    ];
    for e in errors {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn status_shows_the_leaders_view_of_every_peer() {
    let mut env = cluster(3, |_| {});
    env.raw(1).propose(b"x".to_vec()).unwrap();
    env.stabilize();
    let st = env.raw(1).status();
    assert_eq!(st.basic.role, StateRole::Leader);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(st.members(), vec![1, 2, 3]);
    assert!(!st.is_joint());
    let last = st.basic.last_index;
    assert_eq!(st.basic.commit, last);
    for (id, peer) in &st.progress {
        assert_eq!(peer.matched, last, "peer {id}");
        assert_eq!(peer.next, last + 1, "peer {id}");
    }
    assert_eq!(st.progress.len(), 3);
    assert!(
        env.raw(2).status().progress.is_empty(),
        "followers track no peers"
    );
}
