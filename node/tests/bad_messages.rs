//! Bad input from peers (wrong term, unknown sender, out-of-range indexes, garbage entries and
//! snapshots) is rejected or ignored, never a panic.

mod common;

use common::{Env, test_config};
use keel_node::consensus::prng::Prng;
use keel_node::consensus::{Entry, EntryType, Message, MessageType, Snapshot};

const TYPES: [MessageType; 14] = [
    MessageType::Append,
    MessageType::AppendResponse,
    MessageType::RequestVote,
    MessageType::RequestVoteResponse,
    MessageType::RequestPreVote,
    MessageType::RequestPreVoteResponse,
    MessageType::Snapshot,
    MessageType::Heartbeat,
    MessageType::HeartbeatResponse,
    MessageType::TimeoutNow,
    MessageType::Propose,
    MessageType::ReadIndex,
    MessageType::ReadIndexResponse,
    MessageType::TransferLeader,
];

fn small(rng: &mut Prng) -> u64 {
    match rng.below(4) {
        0 => 0,
        1 => rng.below(5),
        2 => rng.below(50),
        _ => u64::MAX - rng.below(3),
    }
}

fn garbage(rng: &mut Prng, to: u64) -> Message {
    let t = TYPES[usize::try_from(rng.below(TYPES.len() as u64)).unwrap()];
    let mut m = Message::new(t, small(rng), to);
    m.term = small(rng);
    m.log_term = small(rng);
    m.index = small(rng);
    m.commit = small(rng);
    m.reject = rng.below(2) == 0;
    m.reject_hint = small(rng);
    m.read_seq = small(rng);
    for _ in 0..rng.below(4) {
        let entry_type = if rng.below(3) == 0 {
            EntryType::ConfChange
        } else {
            EntryType::Normal
        };
        let data = (0..rng.below(12))
            .map(|_| u8::try_from(rng.below(256)).unwrap())
            .collect();
        m.entries.push(Entry {
            term: small(rng),
            index: small(rng),
            entry_type,
            data,
        });
    }
    if rng.below(5) == 0 {
        let mut s = Snapshot::default();
        s.metadata.index = small(rng);
        s.metadata.term = small(rng);
        s.metadata.conf_state.voters = vec![small(rng), to];
        m.snapshot = Some(s);
    }
    m
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Prng::new(42);
    for round in 0..40 {
        let mut env = Env::new();
        env.verbose = false;
        for id in 1..=3 {
            env.add_node(test_config(id), &[1, 2, 3], &[]);
        }
        env.raw(1).campaign();
        env.stabilize();
        env.raw(1).propose(b"x".to_vec()).unwrap();
        env.stabilize();
        for _ in 0..300 {
            let to = 1 + rng.below(3);
            let m = garbage(&mut rng, to);
            let _ = env.raw(to).step(m);
            if rng.below(10) == 0 {
                env.stabilize();
            }
        }
        env.stabilize();
        let _ = round;
    }
}
