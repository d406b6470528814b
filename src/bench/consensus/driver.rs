//! The driver of `keel bench consensus`: an in-memory cluster of the consensus core in one
//! thread. It lives with the CLI, not in `keel-node`, so that the library does not depend on
//! the histogram crate; the `consensus_bench` example includes this file too.
//!
//! Storage is [`MemStorage`] written and acknowledged as soon as a Ready hands out the work,
//! and messages are delivered in memory, so the numbers measure the consensus core itself:
//! the cost of producing Readies, replicating, counting and applying. The CLI prints
//! `consensus nodes=.. proposers=.. size=.. commits/s=.. p50_us=.. p99_us=..` from the
//! report.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use keel_node::consensus::{Config, EntryType, MemStorage, Message, Payload, RawNode, StateRole};

/// What to run.
#[derive(Clone, Debug)]
pub struct ConsensusBenchParams {
    /// Nodes in the cluster (1 or more; all voters).
    pub nodes: u64,
    /// Concurrent proposals kept in flight (closed loop: a proposer proposes again as soon as
    /// its previous proposal commits).
    pub proposers: usize,
    /// Payload bytes per proposal.
    pub size: usize,
    /// How long to run.
    pub duration: Duration,
    /// Stop early after this many commits (0: no limit).
    pub commits_max: u64,
}

impl Default for ConsensusBenchParams {
    fn default() -> Self {
        ConsensusBenchParams {
            nodes: 3,
            proposers: 256,
            size: 16,
            duration: Duration::from_secs(5),
            commits_max: 0,
        }
    }
}

/// Progress reported about once a second.
#[derive(Clone, Copy, Debug)]
pub struct ConsensusBenchProgress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Proposals committed (and applied on the leader) so far.
    pub commits: u64,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct ConsensusBenchReport {
    /// Proposals committed and applied on the leader (the CLI prints only the rate).
    #[cfg_attr(not(test), allow(dead_code))]
    pub commits: u64,
    /// `commits / elapsed`.
    pub commits_per_sec: f64,
    /// Proposal-to-commit latency of every commit, in microseconds (values below 1 µs
    /// count as 1), in a histogram of fixed size however long the run.
    pub latency_us: Histogram<u64>,
}

impl ConsensusBenchReport {
    /// The latency at quantile `q` in `[0, 1]`, in microseconds (0 if there were no commits).
    pub fn percentile_us(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            return 0;
        }
        self.latency_us.value_at_quantile(q.clamp(0.0, 1.0))
    }
}

/// An in-memory cluster whose node 1 is the leader.
pub struct BenchCluster {
    nodes: Vec<RawNode<MemStorage>>,
    net: Vec<Message>,
    inbox: Vec<Message>,
    /// Entries applied on the leader (normal entries with data) since the election.
    commits: u64,
    compact_every: u64,
}

impl BenchCluster {
    /// A cluster of `n` voters with node 1 elected leader.
    pub fn new(n: u64) -> BenchCluster {
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
    pub fn propose(&mut self, count: usize, size: usize) {
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
    pub fn round(&mut self) -> u64 {
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

/// Runs the closed-loop workload and reports committed proposals per second and latencies.
pub fn run_consensus(
    params: &ConsensusBenchParams,
    progress: &mut dyn FnMut(&ConsensusBenchProgress),
) -> ConsensusBenchReport {
    let mut cluster = BenchCluster::new(params.nodes);
    let proposers = params.proposers.max(1);
    // Start times of the proposals in flight, in proposal order; the leader applies them in
    // the same order.
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(proposers);
    // 1 µs to 60 s at three significant digits; constant bounds, so this cannot fail.
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut commits = 0u64;
    let start = Instant::now();
    let mut next_report = Duration::from_secs(1);
    let mut ready_to_propose = proposers;
    loop {
        if ready_to_propose > 0 {
            let now = Instant::now();
            in_flight.extend(std::iter::repeat_n(now, ready_to_propose));
            cluster.propose(ready_to_propose, params.size);
            ready_to_propose = 0;
        }
        let done = cluster.round();
        if done > 0 {
            let now = Instant::now();
            for _ in 0..done {
                if let Some(t) = in_flight.pop_front() {
                    let us = u64::try_from(now.duration_since(t).as_micros()).unwrap_or(u64::MAX);
                    latencies.saturating_record(us.max(1));
                }
            }
            commits += done;
            ready_to_propose = usize::try_from(done).unwrap_or(usize::MAX);
        }
        let elapsed = start.elapsed();
        if elapsed >= next_report {
            progress(&ConsensusBenchProgress { elapsed, commits });
            next_report += Duration::from_secs(1);
        }
        if elapsed >= params.duration || (params.commits_max > 0 && commits >= params.commits_max) {
            break;
        }
    }
    let elapsed = start.elapsed();
    ConsensusBenchReport {
        commits,
        commits_per_sec: commits as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us: latencies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_commits_and_reports_latencies() {
        let params = ConsensusBenchParams {
            nodes: 3,
            proposers: 8,
            size: 16,
            duration: Duration::from_secs(5),
            commits_max: 200,
        };
        let report = run_consensus(&params, &mut |_| {});
        assert!(report.commits >= 200);
        assert_eq!(report.latency_us.len(), report.commits);
        assert!(report.percentile_us(0.5) <= report.percentile_us(0.99));
    }
}
