//! The load generator behind `keel bench engine`: runs a workload against a `Db` from
//! several threads for a fixed time and reports throughput and latency percentiles.
//!
//! Workloads: `put` (durable single-key writes), `get` (point reads), `scan` (range reads of
//! `scan_keys` keys) and `mixed` (`mixed_write_percent` puts, the rest gets). Keys are
//! 8-byte big-endian numbers drawn uniformly from `[0, keys)`; reads run against a store
//! preloaded with every key. Latencies are per operation, in microseconds, recorded in
//! HdrHistograms (3 significant digits) and merged across threads.
//!
//! `log-read` measures the raft log store instead: one group of `keys` entries of
//! `value_bytes`, written in appends of about 16 KiB, none of them in the entry cache, read
//! in order `scan_keys` entries per call (what a leader does for a follower catching up);
//! an operation is one entry, a latency one call.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use keel_engine::{
    Db, DbError, DbOptions, Entry, LogStore, LogStoreOptions, Op, RangeEnd, RangeRequest, Txn,
    WriteBatch,
};
use keel_wal::Wal;

/// What the benchmark threads do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Durable single-key puts.
    Put,
    /// Point reads of existing keys.
    Get,
    /// Range reads of `scan_keys` consecutive keys.
    Scan,
    /// `mixed_write_percent` puts, the rest gets.
    Mixed,
    /// In-order reads of log store entries that are not in its cache.
    LogRead,
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "put" => Ok(Workload::Put),
            "get" => Ok(Workload::Get),
            "scan" => Ok(Workload::Scan),
            "mixed" => Ok(Workload::Mixed),
            "log-read" => Ok(Workload::LogRead),
            other => Err(format!(
                "unknown workload {other:?}: expected put|get|scan|mixed|log-read"
            )),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Scan => "scan",
            Workload::Mixed => "mixed",
            Workload::LogRead => "log-read",
        })
    }
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct BenchParams {
    /// Directory for the store; should be empty (the caller owns and removes it).
    pub dir: PathBuf,
    /// The workload. Default put.
    pub workload: Workload,
    /// Concurrent client threads. Default 1.
    pub writers: usize,
    /// Value size in bytes. Default 128.
    pub value_bytes: usize,
    /// Size of the key space. Default 100,000.
    pub keys: u64,
    /// How long to measure. Default 10 s.
    pub duration: Duration,
    /// Keys per scan. Default 100.
    pub scan_keys: usize,
    /// Share of puts in the mixed workload, 0-100. Default 50.
    pub mixed_write_percent: u8,
    /// Options of the store.
    pub db: DbOptions,
}

impl BenchParams {
    /// Defaults for a run in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> BenchParams {
        BenchParams {
            dir: dir.into(),
            workload: Workload::Put,
            writers: 1,
            value_bytes: 128,
            keys: 100_000,
            duration: Duration::from_secs(10),
            scan_keys: 100,
            mixed_write_percent: 50,
            db: DbOptions::default(),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), DbError> {
        let bad = |reason: &str| {
            Err(DbError::InvalidOptions {
                reason: reason.into(),
            })
        };
        if self.writers == 0 || self.writers > 1024 {
            return bad("writers must be in 1..=1024");
        }
        if self.keys == 0 {
            return bad("keys must be positive");
        }
        if self.value_bytes > self.db.limits.value_bytes_max {
            return bad("value_bytes exceeds the store's value_bytes_max");
        }
        if self.mixed_write_percent > 100 {
            return bad("mixed_write_percent must be at most 100");
        }
        if self.scan_keys == 0 {
            return bad("scan_keys must be positive");
        }
        self.db.validate()
    }
}

/// Progress, reported about once a second.
#[derive(Clone, Copy, Debug)]
pub struct BenchProgress {
    /// Time since measuring started.
    pub elapsed: Duration,
    /// Operations completed so far.
    pub ops: u64,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The workload.
    pub workload: Workload,
    /// Client threads.
    pub writers: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Operations completed.
    pub ops: u64,
    /// Measured time in seconds.
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile latency, µs.
    pub p90_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub p999_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Log appends (flushes) during the measurement.
    pub log_appends: u64,
    /// Transactions logged during the measurement.
    pub txns_logged: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engine {} writers={} value={}B: {} ops in {:.1}s = {:.0} ops/s; latency µs \
             p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0}); {} txns in {} log appends",
            self.workload,
            self.writers,
            self.value_bytes,
            self.ops,
            self.seconds,
            self.ops_per_sec,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.txns_logged,
            self.log_appends
        )
    }
}

/// A small deterministic generator (xorshift64*), so the benchmark needs no RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs the benchmark. `progress` is called about once a second while measuring.
pub fn run(
    params: &BenchParams,
    progress: &mut dyn FnMut(BenchProgress),
) -> Result<BenchReport, DbError> {
    params.validate()?;
    if params.workload == Workload::LogRead {
        return run_log_read(params, progress);
    }
    let db = Arc::new(Db::open(&params.dir, params.db.clone())?);
    let value = vec![0xA5u8; params.value_bytes];
    if params.workload != Workload::Put {
        // Preload every key, several per transaction.
        let per_txn = params
            .db
            .limits
            .txn_ops_max
            .min((params.db.limits.txn_bytes_max / (params.value_bytes + 8).max(1)).max(1));
        let mut n = 0u64;
        while n < params.keys {
            let end = (n + per_txn as u64).min(params.keys);
            let ops = (n..end).map(|i| Op::put(key(i), value.clone())).collect();
            db.txn(Txn::batch(ops))?;
            n = end;
        }
    }
    let before = db.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let ops_done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..params.writers)
        .map(|t| {
            let db = Arc::clone(&db);
            let stop = Arc::clone(&stop);
            let ops_done = Arc::clone(&ops_done);
            let value = value.clone();
            let p = params.clone();
            std::thread::spawn(move || -> Result<Histogram<u64>, DbError> {
                let mut hist = new_histogram();
                let mut local_ops = 0u64;
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                while !stop.load(Ordering::Relaxed) {
                    let k = rng.next() % p.keys;
                    let began = Instant::now();
                    match p.workload {
                        Workload::Put => {
                            db.put(&key(k), &value)?;
                        }
                        Workload::Get => {
                            let len = db.get_with(&key(k), |v| v.map_or(0, |(v, _)| v.len()))?;
                            std::hint::black_box(len);
                        }
                        Workload::Scan => {
                            // A bounded range, so that the response's count (which
                            // visits every key of the range, as etcd's does) stays at
                            // `scan_keys` keys too.
                            let end = key(k.saturating_add(p.scan_keys as u64));
                            db.range(&RangeRequest {
                                start: key(k).to_vec(),
                                end: RangeEnd::Exclusive(end.to_vec()),
                                limit: p.scan_keys,
                                keys_only: false,
                                count_only: false,
                                filter: Default::default(),
                                sort: None,
                                revision: 0,
                            })?;
                        }
                        Workload::LogRead => unreachable!("handled before the threads start"),
                        Workload::Mixed => {
                            if rng.next() % 100 < u64::from(p.mixed_write_percent) {
                                db.put(&key(k), &value)?;
                            } else {
                                db.get(&key(k))?;
                            }
                        }
                    }
                    let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.saturating_record(us.max(1));
                    // Progress is shared between threads: count in batches, so that the
                    // counter's cache line does not bounce on every operation.
                    local_ops += 1;
                    if local_ops == 256 {
                        ops_done.fetch_add(local_ops, Ordering::Relaxed);
                        local_ops = 0;
                    }
                }
                ops_done.fetch_add(local_ops, Ordering::Relaxed);
                Ok(hist)
            })
        })
        .collect();
    while start.elapsed() < params.duration {
        let left = params.duration.saturating_sub(start.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(1)));
        progress(BenchProgress {
            elapsed: start.elapsed(),
            ops: ops_done.load(Ordering::Relaxed),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_histogram();
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(h)) => {
                // Same bounds on both sides, so adding cannot fail.
                let _ = hist.add(&h);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(DbError::Poisoned {
                    cause: "a benchmark thread panicked".into(),
                });
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(e);
    }
    let after = db.stats();
    let ops = hist.len();
    Ok(BenchReport {
        workload: params.workload,
        writers: params.writers,
        value_bytes: params.value_bytes,
        ops,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        mean_us: hist.mean(),
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        log_appends: after.log_appends - before.log_appends,
        txns_logged: after.txns_logged - before.txns_logged,
    })
}

/// The `log-read` workload: fills one raft group of a log store (with no entry cache, so
/// every read goes to the log), then reads it in order, `scan_keys` entries per call, again
/// and again until the time is up.
fn run_log_read(
    params: &BenchParams,
    progress: &mut dyn FnMut(BenchProgress),
) -> Result<BenchReport, DbError> {
    const GROUP: u64 = 1;
    let failed = |e: &dyn std::fmt::Display| DbError::InvalidOptions {
        reason: format!("log store: {e}"),
    };
    let wal = Wal::open(&params.dir, params.db.wal.clone())?;
    let options = LogStoreOptions {
        cache_bytes_max: 0,
        ..LogStoreOptions::default()
    };
    let mut store: LogStore = LogStore::open(wal, options, &mut |_| {}).map_err(|e| failed(&e))?;
    // Fill in appends of about 16 KiB, a raft round's worth: a read that misses the cache
    // reads whole frames, so their size matters.
    let per_write = ((16 << 10) / (params.value_bytes + 32)).max(1) as u64;
    let value = vec![0xA5u8; params.value_bytes];
    let mut next = 1u64;
    while next <= params.keys {
        let end = (next + per_write).min(params.keys + 1);
        let entries = (next..end)
            .map(|index| Entry {
                index,
                term: 1,
                data: value.clone(),
            })
            .collect();
        let mut batch = WriteBatch::new();
        batch.append(GROUP, entries);
        store.write(batch).map_err(|e| failed(&e))?;
        next = end;
    }
    let mut hist = new_histogram();
    let mut entries_read = 0u64;
    let start = Instant::now();
    let mut last_report = start;
    let chunk = params.scan_keys as u64;
    'outer: loop {
        let mut lo = 1u64;
        while lo <= params.keys {
            let hi = (lo + chunk).min(params.keys + 1);
            let began = Instant::now();
            let got = store
                .entries(GROUP, lo, hi, u64::MAX)
                .map_err(|e| failed(&e))?;
            let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            hist.saturating_record(us.max(1));
            if got.len() as u64 != hi - lo || got.iter().any(|e| e.data.len() != value.len()) {
                return Err(failed(&format!("entries {lo}..{hi} read back wrong")));
            }
            entries_read += got.len() as u64;
            lo = hi;
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                progress(BenchProgress {
                    elapsed: start.elapsed(),
                    ops: entries_read,
                });
            }
            if start.elapsed() >= params.duration {
                break 'outer;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress(BenchProgress {
        elapsed: start.elapsed(),
        ops: entries_read,
    });
    Ok(BenchReport {
        workload: params.workload,
        writers: 1,
        value_bytes: params.value_bytes,
        ops: entries_read,
        seconds,
        ops_per_sec: entries_read as f64 / seconds,
        mean_us: hist.mean(),
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        log_appends: 0,
        txns_logged: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every workload runs briefly and reports sane numbers.
    #[test]
    fn every_workload_runs_and_reports() {
        for (w, name) in [
            (Workload::Put, "put"),
            (Workload::Get, "get"),
            (Workload::Scan, "scan"),
            (Workload::Mixed, "mixed"),
            (Workload::LogRead, "log-read"),
        ] {
            assert_eq!(name.parse::<Workload>().unwrap(), w);
            let dir = tempfile::tempdir().unwrap();
            let mut params = BenchParams::new(dir.path());
            params.workload = w;
            params.writers = 2;
            params.keys = 500;
            params.duration = Duration::from_millis(300);
            params.db.wal.segment_bytes = 8 << 20;
            let mut ticks = 0;
            let report = run(&params, &mut |_| ticks += 1).unwrap();
            assert!(report.ops > 0, "{report}");
            assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
            assert!(ticks >= 1);
            if w == Workload::Put {
                assert_eq!(report.txns_logged, report.ops);
            }
        }
        assert!("nope".parse::<Workload>().is_err());
    }
}
