//! Tests keyed to sentences of the Raft paper (Ongaro and Ousterhout, "In Search of an
//! Understandable Consensus Algorithm", extended version). Each test quotes the sentence it
//! checks.

mod common;

use common::{Env, test_config};
use keel_node::consensus::{
    Entry, HardState, LogStorage, MemStorage, Message, MessageType, RawNode, StateRole,
};

/// A cluster of `n` voters without pre-vote or check-quorum, so that elections follow the
/// paper's basic algorithm.
fn plain_cluster(n: u64) -> Env {
    let mut env = Env::new();
    env.verbose = false;
    let voters: Vec<u64> = (1..=n).collect();
    for id in 1..=n {
        let mut c = test_config(id);
        c.pre_vote = false;
        c.check_quorum = false;
        env.add_node(c, &voters, &[]);
    }
    env
}

fn ents(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            index: i as u64 + 1,
            term,
            ..Entry::default()
        })
        .collect()
}

/// A storage holding `terms` as its log and `term` as its current term.
fn storage_with(voters: &[u64], terms: &[u64], term: u64) -> MemStorage {
    let mut s = MemStorage::new_with_conf(voters, &[]);
    s.append(&ents(terms)).unwrap();
    s.set_hard_state(HardState {
        term,
        vote: 0,
        commit: 0,
    });
    s
}

fn vote_request(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    let mut m = Message::new(MessageType::RequestVote, from, to);
    m.term = term;
    m.index = last_index;
    m.log_term = last_term;
    m
}

/// Steps `m` into a lone node, persists its Ready and returns the responses it releases.
fn answer(raw: &mut RawNode<MemStorage>, m: Message) -> Vec<Message> {
    let _ = raw.step(m);
    let rd = raw.ready();
    let mut out = rd.messages.clone();
    if let Some(a) = rd.append {
        if let Some(hs) = a.hard_state {
            raw.storage_mut().set_hard_state(hs);
        }
        raw.storage_mut().append(&a.entries).unwrap();
        raw.on_append_durable(a.ack);
    }
    out.extend(raw.ready().messages);
    out
}

#[test]
fn follower_without_communication_starts_an_election() {
    // §5.2: "If a follower receives no communication over a period of time called the
    // election timeout, then it assumes there is no viable leader and begins an election."
    let mut env = plain_cluster(3);
    let timeout = env.raw(1).basic_status().election_timeout_ticks;
    env.tick(1, timeout - 1);
    assert_eq!(env.raw(1).basic_status().role, StateRole::Follower);
    env.tick(1, 1);
    assert_eq!(env.raw(1).basic_status().role, StateRole::Candidate);
}

#[test]
fn candidate_increments_term_and_votes_for_itself() {
    // §5.2: "To begin an election, a follower increments its current term and transitions to
    // candidate state. It then votes for itself and issues RequestVote RPCs in parallel to
    // each of the other servers in the cluster."
    let mut env = plain_cluster(3);
    env.raw(1).campaign();
    let st = env.raw(1).basic_status();
    assert_eq!((st.term, st.vote, st.role), (1, 1, StateRole::Candidate));
    let rd = env.raw(1).ready();
    let targets: Vec<u64> = rd
        .messages
        .iter()
        .filter(|m| m.msg_type == MessageType::RequestVote)
        .map(|m| m.to)
        .collect();
    assert_eq!(targets, vec![2, 3]);
}

#[test]
fn candidate_with_majority_of_votes_becomes_leader() {
    // §5.2: "A candidate wins an election if it receives votes from a majority of the servers
    // in the full cluster for the same term."
    let mut env = plain_cluster(5);
    env.cut.insert((1, 4));
    env.cut.insert((1, 5));
    env.raw(1).campaign();
    env.stabilize();
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);

    let mut env = plain_cluster(5);
    for to in [3, 4, 5] {
        env.cut.insert((1, to));
    }
    env.raw(1).campaign();
    env.stabilize();
    assert_eq!(
        env.raw(1).basic_status().role,
        StateRole::Candidate,
        "two of five is no majority"
    );
}

#[test]
fn a_server_votes_for_at_most_one_candidate_per_term() {
    // §5.2: "Each server will vote for at most one candidate in a given term, on a
    // first-come-first-served basis."
    let mut c = test_config(1);
    c.pre_vote = false;
    c.check_quorum = false;
    let mut raw = RawNode::new(&c, MemStorage::new_with_conf(&[1, 2, 3], &[])).unwrap();
    let first = answer(&mut raw, vote_request(2, 1, 1, 0, 0));
    assert!(!first[0].reject);
    let second = answer(&mut raw, vote_request(3, 1, 1, 0, 0));
    assert!(second[0].reject);
    let again = answer(&mut raw, vote_request(2, 1, 1, 0, 0));
    assert!(
        !again[0].reject,
        "a repeated request from the chosen candidate is granted again"
    );
}

#[test]
fn vote_is_denied_to_a_less_up_to_date_candidate() {
    // §5.4.1: "The voter denies its vote if its own log is more up-to-date than that of the
    // candidate." ... "If the logs have last entries with different terms, then the log with
    // the later term is more up-to-date. If the logs end with the same term, then whichever
    // log is longer is more up-to-date."
    let mut c = test_config(1);
    c.pre_vote = false;
    c.check_quorum = false;
    let cases = [
        (3, 1, true),  // lower last term, longer log
        (1, 2, true),  // same term, shorter log
        (2, 2, false), // same term, same length
        (1, 3, false), // higher last term, shorter log
    ];
    for (term_arg, (last_index, last_term, reject)) in cases.into_iter().enumerate() {
        let storage = storage_with(&[1, 2, 3], &[1, 2], 2);
        let mut raw = RawNode::new(&c, storage).unwrap();
        let term = 3 + term_arg as u64;
        let resp = answer(&mut raw, vote_request(2, 1, term, last_index, last_term));
        assert_eq!(
            resp[0].reject, reject,
            "candidate log {last_index}/{last_term}"
        );
    }
}

#[test]
fn stale_term_requests_are_rejected_and_newer_terms_adopted() {
    // §5.1: "If a server receives a request with a stale term number, it rejects the
    // request." and "if one server's current term is smaller than the other's, then it
    // updates its current term to the larger value. If a candidate or leader discovers that
    // its term is out of date, it immediately reverts to follower state."
    let mut env = plain_cluster(3);
    for id in [2, 1] {
        env.raw(id).campaign();
        env.stabilize();
    }
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);
    let term = env.raw(1).basic_status().term;
    let last = env.raw(1).basic_status().last_index;

    let mut stale = Message::new(MessageType::Append, 3, 1);
    stale.term = term - 1;
    stale.entries = vec![Entry {
        index: 2,
        term: term - 1,
        ..Entry::default()
    }];
    env.raw(1).step(stale).unwrap();
    assert_eq!(
        env.raw(1).basic_status().last_index,
        last,
        "stale append ignored"
    );
    assert_eq!(env.raw(1).basic_status().role, StateRole::Leader);

    let mut newer = Message::new(MessageType::Heartbeat, 3, 1);
    newer.term = term + 5;
    env.raw(1).step(newer).unwrap();
    let st = env.raw(1).basic_status();
    assert_eq!(
        (st.role, st.term, st.leader_id),
        (StateRole::Follower, term + 5, 3)
    );
}

#[test]
fn follower_refuses_entries_whose_predecessor_it_lacks() {
    // §5.3: "When sending an AppendEntries RPC, the leader includes the index and term of the
    // entry in its log that immediately precedes the new entries. If the follower does not
    // find an entry in its log with the same index and term, then it refuses the new
    // entries."
    let mut c = test_config(2);
    c.pre_vote = false;
    let mut raw = RawNode::new(&c, storage_with(&[1, 2, 3], &[1, 1], 2)).unwrap();
    let mut m = Message::new(MessageType::Append, 1, 2);
    m.term = 2;
    m.index = 2;
    m.log_term = 2; // the follower has 2/1, not 2/2
    m.entries = vec![Entry {
        index: 3,
        term: 2,
        ..Entry::default()
    }];
    let resp = answer(&mut raw, m);
    let r = resp
        .iter()
        .find(|m| m.msg_type == MessageType::AppendResponse)
        .unwrap();
    assert!(r.reject);
    assert_eq!(raw.basic_status().last_index, 2);
}

#[test]
fn conflicting_entries_are_deleted_with_all_that_follow() {
    // Figure 2, AppendEntries receiver: "If an existing entry conflicts with a new one (same
    // index but different terms), delete the existing entry and all that follow it."
    let mut c = test_config(2);
    c.pre_vote = false;
    let mut raw = RawNode::new(&c, storage_with(&[1, 2, 3], &[1, 1, 1, 1], 1)).unwrap();
    let mut m = Message::new(MessageType::Append, 1, 2);
    m.term = 2;
    m.index = 1;
    m.log_term = 1;
    m.entries = vec![Entry {
        index: 2,
        term: 2,
        ..Entry::default()
    }];
    answer(&mut raw, m);
    assert_eq!(raw.basic_status().last_index, 2);
    assert_eq!(raw.term(2), Ok(2));
    assert_eq!(LogStorage::last_index(raw.storage()), 2);
}

#[test]
fn entry_is_committed_once_replicated_on_a_majority_and_then_applied() {
    // §5.3: "A log entry is committed once the leader that created the entry has replicated
    // it on a majority of the servers" and "Once a follower learns that a log entry is
    // committed, it applies the entry to its local state machine (in log order)."
    let mut env = plain_cluster(5);
    env.raw(1).campaign();
    env.stabilize();
    for to in [4, 5] {
        env.cut.insert((1, to));
    }
    env.raw(1).propose(b"x".to_vec()).unwrap();
    env.stabilize();
    assert_eq!(
        env.raw(1).basic_status().commit,
        2,
        "leader + 2 of 5 is a majority"
    );
    for id in [1, 2, 3] {
        assert_eq!(env.nodes[&id].applied_data, vec![(2, b"x".to_vec())]);
    }

    env.cut.insert((1, 3));
    env.raw(1).propose(b"y".to_vec()).unwrap();
    env.stabilize();
    assert_eq!(
        env.raw(1).basic_status().commit,
        2,
        "leader + 1 of 5 is not"
    );
}

#[test]
fn leader_never_overwrites_its_log() {
    // Figure 3, Leader Append-Only: "a leader never overwrites or deletes entries in its log;
    // it only appends new entries."
    let mut env = plain_cluster(3);
    env.raw(1).campaign();
    env.stabilize();
    env.raw(1).propose(b"a".to_vec()).unwrap();
    env.stabilize();
    let term = env.raw(1).basic_status().term;
    let mut m = Message::new(MessageType::Append, 2, 1);
    m.term = term;
    m.index = 1;
    m.log_term = 1;
    m.entries = vec![Entry {
        index: 2,
        term,
        data: b"evil".to_vec().into(),
        ..Entry::default()
    }];
    env.raw(1).step(m).unwrap();
    let e = env.raw(1).entries(2, 3).unwrap();
    assert_eq!(&*e[0].data, b"a");
}

#[test]
fn election_timeouts_are_randomized() {
    // §5.2: "Raft uses randomized election timeouts ... election timeouts are chosen randomly
    // from a fixed interval (e.g., 150–300ms)." Here the interval is [election_ticks,
    // 2 * election_ticks), drawn from a seeded generator.
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut c = test_config(1);
        c.seed = seed;
        let raw = RawNode::new(&c, MemStorage::new_with_conf(&[1, 2, 3], &[])).unwrap();
        let t = raw.basic_status().election_timeout_ticks;
        assert!((c.election_ticks..2 * c.election_ticks).contains(&t));
        seen.insert(t);
    }
    assert!(
        seen.len() > 3,
        "timeouts should spread over the interval: {seen:?}"
    );
}
