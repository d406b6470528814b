//! The workload of `keel bench consensus` (`run_consensus` in the CLI's
//! `src/bench/consensus/driver.rs`) driven through tikv/raft-rs: a 3-node cluster in one
//! thread, `MemStorage`, messages delivered in memory, a closed loop of N concurrent proposals
//! batched into one MsgPropose per cycle, commits counted when the leader applies them. Prints
//! the same line as Keel with `impl=raft-rs`.
//!
//! `cargo run --release -- [nodes] [proposers] [size] [secs]`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    net: Vec<Message>,
    commits: u64,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let cfg = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 1,
                    max_size_per_msg: 1 << 20,
                    max_inflight_msgs: 4096,
                    pre_vote: true,
                    check_quorum: true,
                    ..Config::default()
                };
                let storage =
                    MemStorage::new_with_conf_state(ConfState::from((voters.clone(), vec![])));
                RawNode::new(&cfg, storage, &logger).expect("raft-rs node")
            })
            .collect();
        let mut c = Cluster { nodes, net: Vec::new(), commits: 0 };
        c.nodes[0].campaign().expect("campaign");
        for _ in 0..100 {
            c.round();
            if c.nodes[0].raft.state == StateRole::Leader && c.net.is_empty() {
                break;
            }
        }
        assert_eq!(c.nodes[0].raft.state, StateRole::Leader);
        c.commits = 0;
        c
    }

    fn propose(&mut self, count: usize, size: usize) {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = 1;
        m.to = 1;
        let entries: Vec<Entry> = (0..count)
            .map(|_| {
                let mut e = Entry::default();
                e.data = vec![0x5a; size].into();
                e
            })
            .collect();
        m.set_entries(entries.into());
        self.nodes[0].step(m).expect("propose");
    }

    fn count_applied(&mut self, i: usize, entries: &[Entry]) {
        if i == 0 {
            self.commits += entries
                .iter()
                .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
                .count() as u64;
        }
    }

    fn cycle_node(&mut self, i: usize) {
        if !self.nodes[i].has_ready() {
            return;
        }
        let mut ready = self.nodes[i].ready();
        self.net.extend(ready.take_messages());
        let committed = ready.take_committed_entries();
        self.count_applied(i, &committed);
        let store = self.nodes[i].raft.raft_log.store.clone();
        if !ready.entries().is_empty() {
            store.wl().append(ready.entries()).expect("append");
        }
        if let Some(hs) = ready.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        self.net.extend(ready.take_persisted_messages());
        let mut light = self.nodes[i].advance(ready);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
        }
        self.net.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.count_applied(i, &committed);
        self.nodes[i].advance_apply();
        // Keep memory bounded like Keel's driver does.
        let applied = self.nodes[i].raft.raft_log.applied;
        let first = raft::Storage::first_index(&store).expect("first index");
        if applied >= first + (1 << 17) {
            store.wl().compact(applied - (1 << 16)).expect("compact");
        }
    }

    fn round(&mut self) -> u64 {
        let before = self.commits;
        for i in 0..self.nodes.len() {
            self.cycle_node(i);
        }
        for m in std::mem::take(&mut self.net) {
            let to = (m.to - 1) as usize;
            let _ = self.nodes[to].step(m);
        }
        self.commits - before
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (nodes, proposers, size, secs) = (arg(0, 3), arg(1, 256) as usize, arg(2, 16) as usize, arg(3, 5));
    let mut cluster = Cluster::new(nodes);
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    // Recorded the same way as the CLI's consensus driver does, so that both pay the same cost.
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut commits = 0u64;
    let mut ready_to_propose = proposers.max(1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if ready_to_propose > 0 {
            let now = Instant::now();
            in_flight.extend(std::iter::repeat(now).take(ready_to_propose));
            cluster.propose(ready_to_propose, size);
            ready_to_propose = 0;
        }
        let done = cluster.round();
        if done > 0 {
            let now = Instant::now();
            for _ in 0..done {
                if let Some(t) = in_flight.pop_front() {
                    latencies.saturating_record((now.duration_since(t).as_micros() as u64).max(1));
                }
            }
            commits += done;
            ready_to_propose = done as usize;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let pct = |q: f64| latencies.value_at_quantile(q);
    println!(
        "consensus impl=raft-rs nodes={} proposers={} size={} commits/s={:.0} p50_us={} p99_us={}",
        nodes,
        proposers,
        size,
        commits as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
