//! `keel bench consensus`: a cluster of pure Raft cores in one process, messages delivered
//! in memory, no disk: committed proposals per second and proposal-to-commit latency.

mod driver;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{clear_progress, show_progress, thousands, whole};
use driver::{ConsensusBenchParams, run_consensus};

/// The consensus core alone.
#[derive(Args, Debug)]
pub struct ConsensusBenchArgs {
    /// Nodes in the cluster (all voters).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Proposals kept in flight (closed loop).
    #[arg(long, default_value_t = 256)]
    proposers: usize,
    /// Payload bytes per proposal.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

pub fn run(args: &ConsensusBenchArgs) -> Result<ExitCode, String> {
    if !(1..=7).contains(&args.nodes) {
        return Err(format!("--nodes must be within [1, 7], got {}", args.nodes));
    }
    if args.proposers == 0 || args.proposers > 65_536 {
        return Err(format!(
            "--proposers must be within [1, 65536], got {}",
            args.proposers
        ));
    }
    if !(args.secs.is_finite() && args.secs > 0.0 && args.secs <= 86_400.0) {
        return Err(format!(
            "--secs must be within (0, 86400], got {}",
            args.secs
        ));
    }
    let params = ConsensusBenchParams {
        nodes: args.nodes,
        proposers: args.proposers,
        size: args.size,
        duration: Duration::from_secs_f64(args.secs),
        commits_max: 0,
    };
    let report = run_consensus(&params, &mut |p| {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        show_progress(&format!(
            "{:6.1}s  commits {:>12}  commits/s {:>12}",
            secs,
            thousands(p.commits),
            thousands(whole(p.commits as f64 / secs))
        ));
    });
    clear_progress();
    let (p50, p99) = (report.percentile_us(0.5), report.percentile_us(0.99));
    println!(
        "{:>6} {:>10} {:>6} {:>12} {:>8} {:>8}",
        "nodes", "proposers", "size", "commits/s", "p50 µs", "p99 µs"
    );
    println!(
        "{:>6} {:>10} {:>6} {:>12} {:>8} {:>8}",
        args.nodes,
        args.proposers,
        args.size,
        thousands(whole(report.commits_per_sec)),
        p50,
        p99
    );
    println!(
        "consensus nodes={} proposers={} size={} commits/s={:.0} p50_us={p50} p99_us={p99}",
        args.nodes, args.proposers, args.size, report.commits_per_sec
    );
    Ok(ExitCode::SUCCESS)
}
