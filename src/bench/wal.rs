//! `keel bench wal`: concurrent durable appends, optionally beside a plain
//! pwrite + fdatasync baseline writing the same bytes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_wal::{Backend, Wal, WalOptions};

use super::{BenchDir, Latencies, Progress, Stop, thousands, whole};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// io_uring if the kernel allows it, else blocking.
    Auto,
    /// io_uring writes with RWF_DSYNC.
    Uring,
    /// A writer thread doing pwrite on an O_DSYNC file.
    Blocking,
}

/// Durable appends to the write-ahead log.
#[derive(Args, Debug)]
pub struct WalBenchArgs {
    /// Concurrent appenders (threads, or async tasks on one thread with --tasks).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Records per append (one atomic frame).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds to run (ignored with --count).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Total appends to make instead of running for --secs.
    #[arg(long)]
    count: Option<u64>,
    /// Write backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Directory to write in (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the log afterwards (to inspect it with `keel wal verify` or `dump`).
    #[arg(long)]
    keep: bool,
    /// Do not make appends durable (measures everything but the flush).
    #[arg(long)]
    no_sync: bool,
    /// Also run plain pwrite + fdatasync of the same bytes into a pre-zeroed file, with the
    /// same number of writers, and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Run the appenders as async tasks on one thread instead of threads.
    #[arg(long)]
    tasks: bool,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Keep only this many segments, purging older ones while the run goes on, as a raft
    /// log compacted behind its appends is (0: never purge). Purged files are recycled
    /// as new segments instead of zero-filling new files.
    #[arg(long, default_value_t = 0)]
    keep_segments: usize,
}

struct Outcome {
    label: String,
    appends: u64,
    elapsed: Duration,
    lat: Latencies,
    bytes_per_append: u64,
    records_per_append: u64,
    flushes: Option<u64>,
}

impl Outcome {
    fn appends_per_sec(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
    fn records_per_sec(&self) -> f64 {
        self.appends_per_sec() * self.records_per_append as f64
    }
    fn mb_per_sec(&self) -> f64 {
        self.appends_per_sec() * self.bytes_per_append as f64 / 1e6
    }
}

pub fn run(args: &WalBenchArgs) -> Result<ExitCode, String> {
    if args.writers == 0 || args.writers > 4096 {
        return Err(format!(
            "--writers must be within [1, 4096], got {}",
            args.writers
        ));
    }
    if args.batch == 0 || args.size == 0 {
        return Err("--batch and --size must be at least 1".into());
    }
    let stop = Stop::from_args(args.secs, args.count)?;
    let segment_bytes = args
        .segment_mib
        .checked_mul(1 << 20)
        .ok_or("--segment-mib is too large")?;
    let frame = keel_wal::format::frame_len(std::iter::repeat_n(args.size, args.batch));
    let segment_room = usize::try_from(segment_bytes).unwrap_or(usize::MAX) - (4 << 10);
    let opts = WalOptions {
        segment_bytes,
        record_bytes_max: args.size,
        batch_bytes_max: (4 << 20).min(segment_room).max(frame),
        backend: match args.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Uring => Backend::Uring,
            BackendArg::Blocking => Backend::Blocking,
        },
        sync: !args.no_sync,
        ..WalOptions::default()
    };
    opts.validate().map_err(|e| e.to_string())?;
    let dir = BenchDir::new(args.dir.as_deref(), "wal", args.keep)?;
    let wal_dir = dir.path().join("wal");
    let wal = Arc::new(Wal::open(&wal_dir, opts).map_err(|e| e.to_string())?);
    // Warm up: the first segment gets zero-filled, and the first writes settle.
    let warm = vec![vec![0u8; args.size]; args.batch];
    for _ in 0..16 {
        wal.append(&warm).map_err(|e| e.to_string())?;
    }
    let before = wal.stats();
    let label = format!("keel-wal ({})", wal.backend());
    let purger = (args.keep_segments > 0).then(|| spawn_purger(wal.clone(), args.keep_segments));
    let mut outcome = if args.tasks {
        run_tasks(&wal, args, stop, label)?
    } else {
        run_threads(args, stop, label, |_| {
            let wal = wal.clone();
            let records = vec![vec![0x5Au8; args.size]; args.batch];
            move || wal.append(&records).map(|_| ()).map_err(|e| e.to_string())
        })?
    };
    if let Some((stop, handle)) = purger {
        stop.store(true, Ordering::Relaxed);
        handle.join().map_err(|_| "the purging thread panicked")??;
    }
    let after = wal.stats();
    outcome.bytes_per_append = frame as u64;
    outcome.flushes = Some(after.flushes - before.flushes);
    let backend = wal.backend();
    drop(wal);

    let baseline = if args.baseline {
        Some(run_baseline(args, stop, dir.path(), frame)?)
    } else {
        None
    };
    print_table(&outcome, baseline.as_ref());
    println!(
        "segments: {} started ({} recycled), {} waits for a prepared segment; records per \
         flush p50 {} max {}",
        after.segments_created - before.segments_created,
        after.segments_recycled - before.segments_recycled,
        after.spare_waits - before.spare_waits,
        after.records_per_flush.quantile_upper_bound(0.5),
        after.records_per_flush.quantile_upper_bound(1.0),
    );
    println!("{}", machine_line("wal", args, Some(backend), &outcome));
    if let Some(base) = &baseline {
        println!("{}", machine_line("baseline", args, None, base));
        println!(
            "ratio wal/baseline records/s={:.2} p50={:.2} p99={:.2}",
            outcome.records_per_sec() / base.records_per_sec(),
            outcome.lat.p(0.5) as f64 / base.lat.p(0.5).max(1) as f64,
            outcome.lat.p(0.99) as f64 / base.lat.p(0.99).max(1) as f64,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One machine-readable result line.
fn machine_line(kind: &str, args: &WalBenchArgs, backend: Option<&str>, o: &Outcome) -> String {
    let backend = backend.map(|b| format!(" backend={b}")).unwrap_or_default();
    format!(
        "{kind} writers={} batch={} size={}{backend} appends/s={:.0} records/s={:.0} MB/s={:.2} \
         p50_us={} p99_us={} p999_us={} max_us={}",
        args.writers,
        args.batch,
        args.size,
        o.appends_per_sec(),
        o.records_per_sec(),
        o.mb_per_sec(),
        o.lat.p(0.5),
        o.lat.p(0.99),
        o.lat.p(0.999),
        o.lat.max(),
    )
}

/// Purges all but the newest `keep` segments every few milliseconds until stopped.
fn spawn_purger(
    wal: Arc<Wal>,
    keep: usize,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Result<(), String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let segments = wal.segments();
            if segments.len() > keep {
                let floor = segments[segments.len() - keep].first_lsn;
                wal.purge_before(floor).map_err(|e| e.to_string())?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    });
    (stop, handle)
}

/// What the appenders of one run share: when to stop, progress, their merged latencies
/// and the first failure.
struct Run {
    stop: Stop,
    started: Instant,
    started_ops: AtomicU64,
    done: Arc<AtomicU64>,
    merged: Mutex<Latencies>,
    failure: Mutex<Option<String>>,
    progress: Progress,
}

impl Run {
    fn new(args: &WalBenchArgs, stop: Stop) -> Run {
        let done = Arc::new(AtomicU64::new(0));
        Run {
            stop,
            started: Instant::now(),
            started_ops: AtomicU64::new(0),
            progress: progress_line(done.clone(), args.batch),
            done,
            merged: Mutex::new(Latencies::new()),
            failure: Mutex::new(None),
        }
    }

    /// Whether an appender should start another append.
    fn more(&self) -> bool {
        self.stop.more(self.started, &self.started_ops)
    }

    /// Records a finished append.
    fn done(&self, lat: &mut Latencies, t0: Instant) {
        lat.record(t0.elapsed());
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// An appender stops: its latencies join the others, its failure (if any) is kept.
    fn leave(&self, lat: &Latencies, failure: Option<String>) {
        self.merged.lock().expect("lock").merge(lat);
        if let Some(e) = failure {
            self.failure.lock().expect("lock").get_or_insert(e);
        }
    }

    fn finish(self, label: String, args: &WalBenchArgs) -> Result<Outcome, String> {
        let elapsed = self.started.elapsed();
        drop(self.progress);
        if let Some(e) = self.failure.into_inner().expect("lock") {
            return Err(e);
        }
        let lat = self.merged.into_inner().expect("lock");
        Ok(Outcome {
            label,
            appends: lat.count(),
            elapsed,
            lat,
            bytes_per_append: 0,
            records_per_append: args.batch as u64,
            flushes: None,
        })
    }
}

/// Runs `writers` threads, each calling the operation its factory returns until `stop`.
fn run_threads<F, Op>(
    args: &WalBenchArgs,
    stop: Stop,
    label: String,
    factory: F,
) -> Result<Outcome, String>
where
    F: Fn(usize) -> Op,
    Op: FnMut() -> Result<(), String> + Send,
{
    let run = Run::new(args, stop);
    std::thread::scope(|s| {
        for w in 0..args.writers {
            let mut op = factory(w);
            let run = &run;
            s.spawn(move || {
                let mut lat = Latencies::new();
                let mut failure = None;
                while run.more() {
                    let t0 = Instant::now();
                    if let Err(e) = op() {
                        failure = Some(e);
                        break;
                    }
                    run.done(&mut lat, t0);
                }
                run.leave(&lat, failure);
            });
        }
    });
    run.finish(label, args)
}

/// Runs `writers` async tasks on this thread, each appending until `stop`.
fn run_tasks(wal: &Wal, args: &WalBenchArgs, stop: Stop, label: String) -> Result<Outcome, String> {
    let run = Run::new(args, stop);
    let records = vec![vec![0x5Au8; args.size]; args.batch];
    let tasks = (0..args.writers)
        .map(|_| {
            let (run, records) = (&run, &records);
            async move {
                let mut lat = Latencies::new();
                let mut failure = None;
                while run.more() {
                    let t0 = Instant::now();
                    if let Err(e) = wal.append_async(records).await {
                        failure = Some(e.to_string());
                        break;
                    }
                    run.done(&mut lat, t0);
                }
                run.leave(&lat, failure);
            }
        })
        .collect();
    super::run_tasks(tasks);
    run.finish(format!("{label}, tasks"), args)
}

/// Plain buffered pwrite + fdatasync of the same bytes per append, at increasing offsets
/// of a pre-zeroed 64 MiB file (wrapping around), with the same number of writers.
fn run_baseline(
    args: &WalBenchArgs,
    stop: Stop,
    dir: &std::path::Path,
    frame: usize,
) -> Result<Outcome, String> {
    const FILE_BYTES: u64 = 64 << 20;
    let path = dir.join("baseline.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FILE_BYTES / (1 << 20) {
        file.write_all_at(&zeros, i << 20)
            .map_err(|e| format!("zero-filling {}: {e}", path.display()))?;
    }
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    let file = Arc::new(file);
    let next = Arc::new(AtomicU64::new(0));
    let frame = frame as u64;
    let slots = (FILE_BYTES / frame).max(1);
    let sync = !args.no_sync;
    let outcome = run_threads(args, stop, "pwrite+fdatasync".into(), |_| {
        let (file, next) = (file.clone(), next.clone());
        let bytes = vec![0x5Au8; usize::try_from(frame).expect("frame fits")];
        move || {
            let slot = next.fetch_add(1, Ordering::Relaxed) % slots;
            file.write_all_at(&bytes, slot * frame)
                .map_err(|e| format!("baseline write: {e}"))?;
            if sync {
                file.sync_data()
                    .map_err(|e| format!("baseline fdatasync: {e}"))?;
            }
            Ok(())
        }
    })?;
    let _ = std::fs::remove_file(&path);
    Ok(Outcome {
        bytes_per_append: frame,
        ..outcome
    })
}

fn progress_line(done: Arc<AtomicU64>, batch: usize) -> Progress {
    Progress::start(move |elapsed| {
        let n = done.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        format!(
            "{:6.1}s  appends {:>12}  records/s {:>12}",
            secs,
            thousands(n),
            thousands(whole(n as f64 * batch as f64 / secs))
        )
    })
}

fn print_table(wal: &Outcome, baseline: Option<&Outcome>) {
    println!(
        "{:<28} {:>12} {:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "", "appends/s", "records/s", "MB/s", "p50 µs", "p99 µs", "p999 µs", "max µs", "flushes"
    );
    for o in std::iter::once(wal).chain(baseline) {
        println!(
            "{:<28} {:>12} {:>12} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>10}",
            o.label,
            thousands(whole(o.appends_per_sec())),
            thousands(whole(o.records_per_sec())),
            o.mb_per_sec(),
            o.lat.p(0.5),
            o.lat.p(0.99),
            o.lat.p(0.999),
            o.lat.max(),
            o.flushes.map_or_else(|| "-".into(), thousands),
        );
    }
}
