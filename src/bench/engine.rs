//! `keel bench engine`: the embedded store (`keel_engine::Db`) under put, get, scan and
//! mixed workloads, and in-order reads of evicted raft log store entries (`log-read`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod driver;

use driver::{BenchParams, Workload};

use super::{BenchDir, clear_progress, show_progress, thousands, whole};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WorkloadArg {
    /// Durable single-key puts.
    Put,
    /// Point gets of preloaded keys.
    Get,
    /// Range scans of preloaded keys.
    Scan,
    /// Gets and durable puts, --write-percent of them puts.
    Mixed,
    /// In-order reads of --keys raft log store entries that are not in its cache, --scan-keys
    /// per call (a follower catching up); ops are entries.
    LogRead,
}

/// The embedded key-value store.
#[derive(Args, Debug)]
pub struct EngineBenchArgs {
    /// What each operation is.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Put)]
    workload: WorkloadArg,
    /// Concurrent clients (threads).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Value bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Distinct keys (preloaded for get, scan and mixed).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Keys per scan.
    #[arg(long, default_value_t = 100)]
    scan_keys: usize,
    /// Percent of puts in the mixed workload.
    #[arg(long, default_value_t = 50)]
    write_percent: u8,
    /// Directory to write in (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store afterwards.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &EngineBenchArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0 && args.secs <= 86_400.0) {
        return Err(format!(
            "--secs must be within (0, 86400], got {}",
            args.secs
        ));
    }
    let dir = BenchDir::new(args.dir.as_deref(), "engine", args.keep)?;
    let mut params = BenchParams::new(dir.path().join("db"));
    params.workload = match args.workload {
        WorkloadArg::Put => Workload::Put,
        WorkloadArg::Get => Workload::Get,
        WorkloadArg::Scan => Workload::Scan,
        WorkloadArg::Mixed => Workload::Mixed,
        WorkloadArg::LogRead => Workload::LogRead,
    };
    params.writers = args.writers;
    params.value_bytes = args.size;
    params.keys = args.keys;
    params.duration = Duration::from_secs_f64(args.secs);
    params.scan_keys = args.scan_keys;
    params.mixed_write_percent = args.write_percent;
    let report = driver::run(&params, &mut |p| {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        show_progress(&format!(
            "{:6.1}s  ops {:>12}  ops/s {:>12}",
            secs,
            thousands(p.ops),
            thousands(whole(p.ops as f64 / secs))
        ));
    })
    .map_err(|e| e.to_string())?;
    clear_progress();
    println!(
        "{:<10} {:>8} {:>6} {:>12} {:>8} {:>8} {:>8} {:>8}",
        "workload", "writers", "size", "ops/s", "p50 µs", "p99 µs", "p999 µs", "max µs"
    );
    println!(
        "{:<10} {:>8} {:>6} {:>12} {:>8} {:>8} {:>8} {:>8}",
        report.workload.to_string(),
        report.writers,
        report.value_bytes,
        thousands(whole(report.ops_per_sec)),
        report.p50_us,
        report.p99_us,
        report.p999_us,
        report.max_us
    );
    println!(
        "engine workload={} writers={} size={} ops/s={:.0} p50_us={} p99_us={} p999_us={}",
        report.workload,
        report.writers,
        report.value_bytes,
        report.ops_per_sec,
        report.p50_us,
        report.p99_us,
        report.p999_us
    );
    Ok(ExitCode::SUCCESS)
}
