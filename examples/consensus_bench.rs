//! Runs the consensus workload once and prints the machine-readable line the CLI prints:
//! `cargo run --release -p keel --example consensus_bench -- [nodes] [proposers] [size] [secs]`.

// The driver is the CLI's own, included by path: the CLI is a binary, so it has no library
// an example could link.
#[allow(dead_code)]
#[path = "../src/bench/consensus/driver.rs"]
mod driver;

use std::time::Duration;

use driver::{ConsensusBenchParams, run_consensus};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let params = ConsensusBenchParams {
        nodes: arg(0, 3),
        proposers: usize::try_from(arg(1, 256)).unwrap_or(256),
        size: usize::try_from(arg(2, 16)).unwrap_or(16),
        duration: Duration::from_secs(arg(3, 5)),
        commits_max: 0,
    };
    let report = run_consensus(&params, &mut |_| {});
    println!(
        "consensus impl=keel nodes={} proposers={} size={} commits/s={:.0} p50_us={} p99_us={}",
        params.nodes,
        params.proposers,
        params.size,
        report.commits_per_sec,
        report.percentile_us(0.5),
        report.percentile_us(0.99)
    );
}
