//! Durable single-key puts against keel-engine's `Db`, fjall and redb, in one process and
//! one run so that the ratios hold on a noisy machine. Every put is durable before it is
//! acknowledged in all three: keel's WAL writes with O_DSYNC and group commit, fjall
//! persists its journal with `PersistMode::SyncData` after each insert, redb commits each
//! write transaction with its default `Durability::Immediate`.
//!
//! Usage: `cargo run --release -- [--writers N] [--secs S] [--value-bytes B] [--rounds R]
//! [--systems keel,fjall,redb] [--dir PATH]`

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One store under test: `put` must be durable when it returns.
trait Store: Send + Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error>;
}

struct Keel(keel_engine::Db);

impl Store for Keel {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.0.put(key, value)?;
        Ok(())
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Store for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.partition.insert(key, value)?;
        self.keyspace.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb(redb::Database);

impl Store for Redb {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let tx = self.0.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            table.insert(key, value)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn open(system: &str, dir: &Path) -> Result<Arc<dyn Store>, Error> {
    Ok(match system {
        "keel" => {
            let opts = keel_engine::DbOptions::default();
            Arc::new(Keel(keel_engine::Db::open(dir, opts)?))
        }
        "fjall" => {
            let keyspace = fjall::Config::new(dir).open()?;
            let partition =
                keyspace.open_partition("kv", fjall::PartitionCreateOptions::default())?;
            Arc::new(Fjall {
                keyspace,
                partition,
            })
        }
        "redb" => Arc::new(Redb(redb::Database::create(dir.join("kv.redb"))?)),
        other => return Err(format!("unknown system {other}").into()),
    })
}

struct Params {
    writers: usize,
    secs: u64,
    value_bytes: usize,
    rounds: usize,
    systems: Vec<String>,
    dir: String,
}

fn parse() -> Result<Params, Error> {
    let mut p = Params {
        writers: 1,
        secs: 5,
        value_bytes: 128,
        rounds: 1,
        systems: vec!["keel".into(), "fjall".into(), "redb".into()],
        dir: ".".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "Durable single-key puts on keel-engine Db, fjall 2 and redb 2, side by side.\n\n\
             Usage: keel-compare-engine-kv [--writers N (1)] [--secs S (5)] \
             [--value-bytes B (128)]\n       [--rounds R (1)] [--systems keel,fjall,redb] \
             [--dir PATH (.)]"
        );
        std::process::exit(0);
    }
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("flag {pair:?} needs a value").into());
        };
        match flag.as_str() {
            "--writers" => p.writers = value.parse()?,
            "--secs" => p.secs = value.parse()?,
            "--value-bytes" => p.value_bytes = value.parse()?,
            "--rounds" => p.rounds = value.parse()?,
            "--systems" => p.systems = value.split(',').map(String::from).collect(),
            "--dir" => p.dir = value.clone(),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(p)
}

fn run(store: Arc<dyn Store>, p: &Params) -> Result<(u64, f64, Histogram<u64>), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..p.writers)
        .map(|t| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            let value = vec![0x5Au8; p.value_bytes];
            std::thread::spawn(move || -> Result<Histogram<u64>, Error> {
                let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3)?;
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = (x % 100_000).to_be_bytes();
                    let began = Instant::now();
                    store.put(&key, &value)?;
                    let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.saturating_record(us.max(1));
                }
                Ok(hist)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(p.secs));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    for t in threads {
        let h = t.join().map_err(|_| "writer panicked")??;
        hist.add(&h)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((hist.len(), secs, hist))
}

fn main() -> Result<(), Error> {
    let p = parse()?;
    println!(
        "durable puts, {} writers, {} B values, {} s per run, keys uniform in [0, 100000)",
        p.writers, p.value_bytes, p.secs
    );
    println!("system  round      ops/s   p50 µs   p99 µs  p99.9 µs");
    for round in 0..p.rounds {
        // Alternate the order between rounds so that drift in the disk's behaviour does not
        // always favour the same system.
        let mut order = p.systems.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for system in &order {
            let dir = tempfile::tempdir_in(&p.dir)?;
            let store = open(system, dir.path())?;
            let (ops, secs, hist) = run(store, &p)?;
            println!(
                "{system:<7} {round:>5} {:>10.0} {:>8} {:>8} {:>9}",
                ops as f64 / secs,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.value_at_quantile(0.999)
            );
        }
    }
    Ok(())
}
