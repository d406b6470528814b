//! The same raft-log append workload on TiKV's raft-engine and on keel-wal, in one run.
//!
//! Each writer thread owns `groups / writers` raft groups and, round-robin over them,
//! writes one batch holding `batch` entries of `size` bytes for one group, synced. Keel
//! writes each entry as one record carrying the group, index and term (24 bytes) before
//! the data, as its raft log store does. Keel runs twice: with `writers` threads like
//! raft-engine, and with `writers` async tasks on one thread, the way its thread-per-core
//! node appends.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use raft_engine::{Config, Engine, LogBatch, MessageExt};
use raft_proto::eraftpb::Entry;

#[derive(Parser, Debug)]
#[command(about = "keel-wal vs raft-engine: synced raft-log appends from N writer threads")]
struct Args {
    /// Writer threads.
    #[arg(long, default_value_t = 16)]
    writers: u64,
    /// Raft groups, spread over the writers.
    #[arg(long, default_value_t = 256)]
    groups: u64,
    /// Entries per write.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bytes of data per entry.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds per system.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Run only one system: `keel` or `raft-engine`.
    #[arg(long)]
    only: Option<String>,
    /// Which system runs first: `keel` or `raft-engine` (the second one runs after a
    /// pause, on a disk the first has just written to; alternate it across runs).
    #[arg(long, default_value = "raft-engine")]
    first: String,
}

#[derive(Clone)]
struct Ext;

impl MessageExt for Ext {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

struct Outcome {
    writes: u64,
    elapsed: Duration,
    lat: Histogram<u64>,
}

fn drive<W>(args: &Args, make: impl Fn(u64) -> W + Sync) -> Outcome
where
    W: FnMut(u64, u64) -> Result<(), String>,
{
    let merged = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap());
    let started = Instant::now();
    let secs = Duration::from_secs_f64(args.secs);
    std::thread::scope(|s| {
        for w in 0..args.writers {
            let (merged, make) = (&merged, &make);
            s.spawn(move || {
                let mut write = make(w);
                let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mine: Vec<u64> = (0..args.groups).filter(|g| g % args.writers == w).collect();
                let mut next_index = vec![1u64; mine.len()];
                let mut i = 0;
                while started.elapsed() < secs {
                    let slot = i % mine.len().max(1);
                    let group = mine.get(slot).copied().unwrap_or(w);
                    let index = next_index[slot];
                    let t0 = Instant::now();
                    write(group, index).expect("write");
                    let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                    lat.record(us.clamp(1, 60_000_000)).unwrap();
                    next_index[slot] += args.batch as u64;
                    i += 1;
                }
                merged.lock().unwrap().add(&lat).unwrap();
            });
        }
    });
    let lat = merged.into_inner().unwrap();
    Outcome {
        writes: lat.len(),
        elapsed: started.elapsed(),
        lat,
    }
}

fn raft_engine(args: &Args, dir: &Path) -> Outcome {
    let cfg = Config {
        dir: dir.to_str().expect("utf-8 path").to_owned(),
        ..Config::default()
    };
    let engine = Engine::open(cfg).expect("open raft-engine");
    let data = vec![0x5Au8; args.size];
    drive(args, |_| {
        let engine = &engine;
        let data = data.clone();
        move |group, index| {
            let entries: Vec<Entry> = (0..args.batch as u64)
                .map(|k| {
                    let mut e = Entry::default();
                    e.set_index(index + k);
                    e.set_term(1);
                    e.set_data(data.clone().into());
                    e
                })
                .collect();
            let mut batch = LogBatch::default();
            batch
                .add_entries::<Ext>(group, &entries)
                .map_err(|e| e.to_string())?;
            engine.write(&mut batch, true).map(|_| ()).map_err(|e| e.to_string())
        }
    })
}

fn keel(args: &Args, dir: &Path) -> Outcome {
    let wal = keel_wal::Wal::open(dir, keel_wal::WalOptions::default()).expect("open keel-wal");
    // Warm up so that the first segment is prepared before timing starts.
    wal.append(&[b"warm-up".as_slice()]).expect("append");
    let data = vec![0x5Au8; args.size];
    drive(args, |_| {
        let wal = &wal;
        let data = data.clone();
        move |group, index| {
            let records: Vec<Vec<u8>> = (0..args.batch as u64)
                .map(|k| {
                    let mut r = Vec::with_capacity(24 + data.len());
                    r.extend_from_slice(&group.to_le_bytes());
                    r.extend_from_slice(&(index + k).to_le_bytes());
                    r.extend_from_slice(&1u64.to_le_bytes());
                    r.extend_from_slice(&data);
                    r
                })
                .collect();
            wal.append(&records).map(|_| ()).map_err(|e| e.to_string())
        }
    })
}

/// Keel's appenders as async tasks on one thread (as in Keel's thread-per-core node): the
/// same groups, entries and records as `keel`, with `writers` tasks instead of threads.
fn keel_tasks(args: &Args, dir: &Path) -> Outcome {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let wal = keel_wal::Wal::open(dir, keel_wal::WalOptions::default()).expect("open keel-wal");
    wal.append(&[b"warm-up".as_slice()]).expect("append");
    let data = vec![0x5Au8; args.size];
    let started = Instant::now();
    let secs = Duration::from_secs_f64(args.secs);
    let lats: Vec<Mutex<Histogram<u64>>> = (0..args.writers)
        .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()))
        .collect();
    let mut tasks: Vec<Option<Pin<Box<dyn Future<Output = ()> + '_>>>> = (0..args.writers)
        .map(|w| {
            let (wal, data, lat) = (&wal, &data, &lats[w as usize]);
            let mine: Vec<u64> = (0..args.groups).filter(|g| g % args.writers == w).collect();
            let task: Pin<Box<dyn Future<Output = ()> + '_>> = Box::pin(async move {
                let mut next_index = vec![1u64; mine.len()];
                let mut i = 0;
                while started.elapsed() < secs {
                    let slot = i % mine.len().max(1);
                    let group = mine.get(slot).copied().unwrap_or(w);
                    let index = next_index[slot];
                    let records: Vec<Vec<u8>> = (0..args.batch as u64)
                        .map(|k| {
                            let mut r = Vec::with_capacity(24 + data.len());
                            r.extend_from_slice(&group.to_le_bytes());
                            r.extend_from_slice(&(index + k).to_le_bytes());
                            r.extend_from_slice(&1u64.to_le_bytes());
                            r.extend_from_slice(data);
                            r
                        })
                        .collect();
                    let t0 = Instant::now();
                    wal.append_async(&records).await.expect("append");
                    let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                    lat.lock().unwrap().record(us.clamp(1, 60_000_000)).unwrap();
                    next_index[slot] += args.batch as u64;
                    i += 1;
                }
            });
            Some(task)
        })
        .collect();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
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
            break;
        }
        std::thread::park();
    }
    let elapsed = started.elapsed();
    drop(tasks);
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for l in &lats {
        lat.add(&*l.lock().unwrap()).unwrap();
    }
    Outcome {
        writes: lat.len(),
        elapsed,
        lat,
    }
}

fn report(name: &str, args: &Args, o: &Outcome) -> f64 {
    let writes = o.writes as f64 / o.elapsed.as_secs_f64();
    println!(
        "compare impl={name} writers={} groups={} batch={} size={} writes/s={:.0} entries/s={:.0} \
         p50_us={} p99_us={} p999_us={} max_us={}",
        args.writers,
        args.groups,
        args.batch,
        args.size,
        writes,
        writes * args.batch as f64,
        o.lat.value_at_quantile(0.5),
        o.lat.value_at_quantile(0.99),
        o.lat.value_at_quantile(0.999),
        o.lat.max()
    );
    writes
}

fn main() {
    let args = Args::parse();
    let root = tempfile::tempdir().expect("temporary directory");
    let run_re = args.only.as_deref().is_none_or(|o| o == "raft-engine");
    let run_keel = args.only.as_deref().is_none_or(|o| o == "keel");
    let pause = || std::thread::sleep(Duration::from_secs(2));
    let (re, k) = if args.first == "keel" {
        let k = run_keel.then(|| keel(&args, &root.path().join("keel")));
        pause();
        (run_re.then(|| raft_engine(&args, &root.path().join("raft-engine"))), k)
    } else {
        let re = run_re.then(|| raft_engine(&args, &root.path().join("raft-engine")));
        pause();
        (re, run_keel.then(|| keel(&args, &root.path().join("keel"))))
    };
    let kt = run_keel.then(|| {
        pause();
        keel_tasks(&args, &root.path().join("keel-tasks"))
    });
    let re_rate = re.as_ref().map(|o| report("raft-engine", &args, o));
    let k_rate = k.as_ref().map(|o| report("keel-wal", &args, o));
    let kt_rate = kt.as_ref().map(|o| report("keel-wal-tasks", &args, o));
    if let (Some(re), Some(k), Some(re_rate), Some(k_rate)) = (&re, &k, re_rate, k_rate) {
        println!(
            "ratio keel/raft-engine writes/s={:.2} p50={:.2} p99={:.2}",
            k_rate / re_rate,
            k.lat.value_at_quantile(0.5) as f64 / re.lat.value_at_quantile(0.5) as f64,
            k.lat.value_at_quantile(0.99) as f64 / re.lat.value_at_quantile(0.99) as f64,
        );
    }
    if let (Some(re), Some(kt), Some(re_rate), Some(kt_rate)) = (&re, &kt, re_rate, kt_rate) {
        println!(
            "ratio keel-tasks/raft-engine writes/s={:.2} p50={:.2} p99={:.2}",
            kt_rate / re_rate,
            kt.lat.value_at_quantile(0.5) as f64 / re.lat.value_at_quantile(0.5) as f64,
            kt.lat.value_at_quantile(0.99) as f64 / re.lat.value_at_quantile(0.99) as f64,
        );
    }
}
