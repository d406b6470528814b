//! Criterion benchmarks of the consensus core: a 3-node cluster in one process, no disk,
//! messages delivered in memory.
//!
//! - `commit/proposers=N`: committed proposals per second with N concurrent 16-byte
//!   proposals, batched per cycle (closed loop).
//! - `ready_cycle/one_proposal`: one Ready cycle of every node with one new proposal per
//!   cycle (pipelined, so each cycle also commits about one proposal).
//!
//! The cluster is a copy of the one `keel bench consensus` drives (src/bench/consensus/driver.rs
//! in the CLI), so that this library needs no benchmark code of its own.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_node::consensus::{Config, EntryType, MemStorage, Message, Payload, RawNode, StateRole};

/// An in-memory cluster whose node 1 is the leader.
struct BenchCluster {
    nodes: Vec<RawNode<MemStorage>>,
    net: Vec<Message>,
    inbox: Vec<Message>,
    /// Entries applied on the leader (normal entries with data) since the election.
    commits: u64,
    compact_every: u64,
}

impl BenchCluster {
    /// A cluster of `n` voters with node 1 elected leader.
    fn new(n: u64) -> BenchCluster {
        let voters: Vec<u64> = (1..=n.max(1)).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut c = Config::new(id);
                c.inflight_msgs_max = 4096;
                c.inflight_bytes_max = 0;
                c.msg_bytes_max = 1 << 20;
                c.uncommitted_bytes_max = 0;
                let storage = MemStorage::new_with_conf(&voters, &[]);
                // A fixed configuration cannot be invalid.
                RawNode::new(&c, storage).unwrap_or_else(|e| panic!("bench config: {e:?}"))
            })
            .collect();
        let mut cluster = BenchCluster {
            nodes,
            net: Vec::new(),
            inbox: Vec::new(),
            commits: 0,
            compact_every: 1 << 16,
        };
        cluster.nodes[0].campaign();
        for _ in 0..100 {
            cluster.round();
            if cluster.nodes[0].role() == StateRole::Leader && cluster.idle() {
                break;
            }
        }
        assert_eq!(
            cluster.nodes[0].role(),
            StateRole::Leader,
            "bench leader election"
        );
        cluster.commits = 0;
        cluster
    }

    fn idle(&self) -> bool {
        self.net.is_empty() && self.nodes.iter().all(|n| !n.has_ready())
    }

    /// Proposes `count` entries of `size` bytes on the leader as one batch.
    fn propose(&mut self, count: usize, size: usize) {
        if count == 0 {
            return;
        }
        // One buffer per proposal, as independent clients would send.
        let payload = vec![0x5a; size];
        let batch = (0..count).map(|_| Payload::from(&payload[..])).collect();
        // The leader is stable and the uncommitted limit is off, so proposals are accepted.
        let _ = self.nodes[0].propose_batch(batch);
    }

    /// Runs one cycle on every node: take the Ready, persist and acknowledge the append work,
    /// apply and acknowledge the apply work, then deliver every message. Returns the number
    /// of proposals the leader applied.
    fn round(&mut self) -> u64 {
        let before = self.commits;
        for i in 0..self.nodes.len() {
            self.cycle_node(i);
        }
        std::mem::swap(&mut self.net, &mut self.inbox);
        for m in self.inbox.drain(..) {
            let to = usize::try_from(m.to.saturating_sub(1)).unwrap_or(usize::MAX);
            if let Some(node) = self.nodes.get_mut(to) {
                let _ = node.step(m);
            }
        }
        self.commits - before
    }

    fn cycle_node(&mut self, i: usize) {
        // Two passes: the second picks up the responses released by the first's ack.
        for _ in 0..2 {
            let node = &mut self.nodes[i];
            if !node.has_ready() {
                return;
            }
            let mut rd = node.ready();
            self.net.append(&mut rd.messages);
            if let Some(append) = rd.append {
                let storage = node.storage_mut();
                if let Some(hs) = append.hard_state {
                    storage.set_hard_state(hs);
                }
                // MemStorage only refuses gaps, which the core never hands out.
                let _ = storage.append_owned(append.entries);
                node.on_append_durable(append.ack);
            }
            if let Some(apply) = rd.apply {
                if i == 0 {
                    self.commits += apply
                        .entries
                        .iter()
                        .filter(|e| e.entry_type == EntryType::Normal && !e.data.is_empty())
                        .count() as u64;
                }
                let index = apply.ack.index;
                node.on_applied(apply.ack);
                self.maybe_compact(i, index);
            }
        }
    }

    fn maybe_compact(&mut self, i: usize, applied: u64) {
        let node = &mut self.nodes[i];
        let snap = node.storage().snapshot_metadata().index;
        if applied >= snap + 2 * self.compact_every {
            let cs = node.storage().snapshot_metadata().conf_state.clone();
            let _ = node
                .storage_mut()
                .compact(applied - self.compact_every, cs, Vec::new());
        }
    }
}

/// Keeps `proposers` proposals in flight until `commits` are applied on the leader; returns
/// the time it took and the commits made (a round may overshoot by one batch).
fn closed_loop(proposers: usize, commits: u64) -> (Duration, u64) {
    let mut cluster = BenchCluster::new(3);
    let mut done = 0u64;
    let mut ready_to_propose = proposers;
    let start = Instant::now();
    while done < commits {
        cluster.propose(ready_to_propose, 16);
        let n = cluster.round();
        done += n;
        ready_to_propose = usize::try_from(n).unwrap_or(usize::MAX);
    }
    (start.elapsed(), done)
}

fn commit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for proposers in [1usize, 256] {
        group.bench_function(format!("proposers={proposers}"), |b| {
            b.iter_custom(|iters| {
                let (elapsed, commits) = closed_loop(proposers, iters);
                // Scale to exactly `iters` commits; a run may overshoot by one batch.
                elapsed.mul_f64(iters as f64 / commits.max(1) as f64)
            });
        });
    }
    group.finish();
}

fn ready_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_cycle");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_proposal", |b| {
        b.iter_custom(|iters| {
            let mut cluster = BenchCluster::new(3);
            let start = Instant::now();
            for _ in 0..iters {
                cluster.propose(1, 16);
                cluster.round();
            }
            start.elapsed()
        });
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, commit_throughput, ready_cycle);
}
criterion_main!(group::benches);
