//! `keel bench ...`: load generators with HdrHistogram latencies, progress on stderr, a
//! table on stdout and one machine-readable line.

mod cluster;
mod consensus;
mod engine;
mod wal;

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hdrhistogram::Histogram;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable appends to the write-ahead log.
    Wal(wal::WalBenchArgs),
    /// The embedded key-value store: durable puts, gets, scans, mixed.
    Engine(engine::EngineBenchArgs),
    /// The Raft core alone: a cluster in one process, no disk.
    Consensus(consensus::ConsensusBenchArgs),
    /// A replicated cluster over the client protocol: starts `keel server` members (or
    /// drives --endpoints), runs closed-loop clients, reports latency and server CPU per op.
    Cluster(cluster::ClusterBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode, String> {
    match cmd {
        BenchCommand::Wal(args) => wal::run(&args),
        BenchCommand::Engine(args) => engine::run(&args),
        BenchCommand::Consensus(args) => consensus::run(&args),
        BenchCommand::Cluster(args) => cluster::run(&args),
    }
}

/// Where a benchmark writes: a fresh temporary directory (removed afterwards) or a
/// subdirectory of the user's `--dir` (removed unless `--keep`).
pub struct BenchDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
    remove: bool,
}

impl BenchDir {
    pub fn new(user: Option<&Path>, name: &str, keep: bool) -> Result<BenchDir, String> {
        match user {
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(&format!("keel-bench-{name}-"))
                    .tempdir()
                    .map_err(|e| format!("creating a temporary directory: {e}"))?;
                let path = temp.path().to_path_buf();
                // Keeping means giving up the guard that removes the directory.
                let guard = if keep {
                    let _ = temp.keep();
                    None
                } else {
                    Some(temp)
                };
                Ok(BenchDir {
                    path,
                    _temp: guard,
                    remove: false,
                })
            }
            Some(dir) => {
                let path = dir.join(format!("keel-bench-{name}-{}", std::process::id()));
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                Ok(BenchDir {
                    path,
                    _temp: None,
                    remove: !keep,
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Microsecond latencies, 1 µs to 60 s at three significant digits.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
    }
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        self.0.record(us).expect("value clamped into range");
    }
    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }
    pub fn count(&self) -> u64 {
        self.0.len()
    }
    pub fn p(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }
    pub fn max(&self) -> u64 {
        self.0.max()
    }
}

/// Prints a progress line to stderr once a second until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// `line` gets the elapsed time and returns the text to show.
    pub fn start(line: impl Fn(Duration) -> String + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() >= Duration::from_secs(1) {
                    last = Instant::now();
                    show_progress(&line(started.elapsed()));
                }
            }
            clear_progress();
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Shows a progress line on stderr: rewritten in place on a terminal, one line each time
/// otherwise (so that logs stay readable).
pub fn show_progress(line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Removes the progress line from a terminal.
pub fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

/// When a run ends: after a duration, or after a number of operations in all.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    After(Duration),
    Count(u64),
}

impl Stop {
    pub fn from_args(secs: f64, count: Option<u64>) -> Result<Stop, String> {
        match count {
            Some(0) => Err("--count must be at least 1".into()),
            Some(n) => Ok(Stop::Count(n)),
            None if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
                Ok(Stop::After(Duration::from_secs_f64(secs)))
            }
            None => Err(format!("--secs must be within (0, 86400], got {secs}")),
        }
    }

    /// Whether a worker should start another operation; `done` counts started ones.
    pub fn more(&self, started: Instant, done: &AtomicU64) -> bool {
        match *self {
            Stop::After(d) => started.elapsed() < d,
            Stop::Count(n) => done.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

/// A rate for display: `as` saturates at the bounds and drops the fraction, as wanted.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn whole(x: f64) -> u64 {
    x as u64
}

/// Formats an integer with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs futures concurrently on the calling thread until all finish: one core's worth of
/// async tasks, without a runtime.
pub fn run_tasks<F: Future<Output = ()>>(tasks: Vec<F>) {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut tasks: Vec<Option<Pin<Box<F>>>> =
        tasks.into_iter().map(|t| Some(Box::pin(t))).collect();
    loop {
        let mut pending = false;
        for slot in tasks.iter_mut() {
            if let Some(task) = slot {
                if task.as_mut().poll(&mut cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if !pending {
            return;
        }
        std::thread::park();
    }
}
