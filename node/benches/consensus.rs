//! Criterion benchmarks of the consensus core: a 3-node cluster in one process, no disk,
//! messages delivered in memory.
//!
//! - `commit/proposers=N`: committed proposals per second with N concurrent 16-byte
//!   proposals, batched per cycle (closed loop).
//! - `ready_cycle/one_proposal`: one Ready cycle of every node with one new proposal per
//!   cycle (pipelined, so each cycle also commits about one proposal).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_node::bench::{BenchCluster, ConsensusBenchParams, run_consensus};

fn commit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for proposers in [1usize, 256] {
        group.bench_function(format!("proposers={proposers}"), |b| {
            b.iter_custom(|iters| {
                let params = ConsensusBenchParams {
                    nodes: 3,
                    proposers,
                    size: 16,
                    duration: Duration::from_secs(60),
                    commits_max: iters,
                };
                let report = run_consensus(&params, &mut |_| {});
                // Scale to exactly `iters` commits; a run may overshoot by one batch.
                report
                    .elapsed
                    .mul_f64(iters as f64 / report.commits.max(1) as f64)
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
