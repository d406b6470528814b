//! What `Db` adds on top of the bare WAL for one durable writer: alternates 250 ms slices of
//! bare `Wal::append` (one ~140-byte record) and `Db::put` (128-byte value) so that both see
//! the same disk noise, then prints the medians. Run with
//! `cargo run --release -p keel-engine --example db_overhead -- [seconds] [dir] [auto|blocking]`.

use std::time::{Duration, Instant};

fn p50(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(Ok(6), |s| s.parse())?;
    let base = args.get(1).map_or(".", String::as_str);
    let wal_dir = tempfile::tempdir_in(base)?;
    let db_dir = tempfile::tempdir_in(base)?;
    let wal_options = keel_wal::WalOptions {
        backend: match args.get(2).map(String::as_str) {
            Some("blocking") => keel_wal::Backend::Blocking,
            _ => keel_wal::Backend::Auto,
        },
        ..keel_wal::WalOptions::default()
    };
    let wal = keel_wal::Wal::open(wal_dir.path(), wal_options.clone())?;
    let db_options = keel_engine::DbOptions {
        wal: wal_options,
        ..keel_engine::DbOptions::default()
    };
    let db = keel_engine::Db::open(db_dir.path(), db_options)?;
    let record = [7u8; 140];
    let value = [7u8; 128];
    let (mut wal_lat, mut db_lat) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let slice = Duration::from_millis(250);
    let mut key = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let t0 = Instant::now();
        while t0.elapsed() < slice {
            let t = Instant::now();
            wal.append(&[&record[..]])?;
            wal_lat.push(t.elapsed().as_micros());
        }
        let t0 = Instant::now();
        while t0.elapsed() < slice {
            let t = Instant::now();
            db.put(&key.to_be_bytes(), &value)?;
            key += 1;
            db_lat.push(t.elapsed().as_micros());
        }
    }
    let (wn, dn) = (wal_lat.len(), db_lat.len());
    println!(
        "bare wal ({}): {wn} appends, p50 {} µs | db put: {dn} puts, p50 {} µs | db/wal ops {:.2}",
        wal.backend(),
        p50(wal_lat),
        p50(db_lat),
        dn as f64 / wn.max(1) as f64
    );
    Ok(())
}
