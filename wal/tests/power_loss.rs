//! Simulated power losses: the device under the log (behind its write seam) tears the write
//! in flight block by block — each block new, old or zeros — at a random moment, and keeps
//! nothing after it. Unlike a killed process, nothing in flight survives in a page cache.
//! After every loss the log is recovered and checked: every acknowledged record is there,
//! every append is all or nothing, positions are gap-free.
//!
//! `KEEL_POWER_SEED` replays a run; `KEEL_POWER_LOSSES` sets how many losses it simulates.

#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{all_records, small};
use keel_wal::{Backend, Error, Faults, Wal, WalOptions};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A record that says which append it belongs to: writer, append number, its index in the
/// append and the append's record count; then filler.
fn record(writer: u8, append: u32, index: u8, count: u8, len: usize) -> Vec<u8> {
    let mut r = vec![writer, index, count, 0];
    r.extend_from_slice(&append.to_le_bytes());
    let fill = writer ^ index ^ (append as u8);
    r.resize(8 + len, fill);
    r
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Checks the recovered log against what was acknowledged, and adopts what recovery kept
/// of unacknowledged appends (it is durable now, and must stay).
fn check(wal: &Wal, durable: &mut BTreeMap<u64, Vec<u8>>, seed: u64, cycle: u64) {
    let got: BTreeMap<u64, Vec<u8>> = all_records(wal).into_iter().collect();
    let first = wal.first_lsn();
    for (lsn, data) in durable.range(first..) {
        assert_eq!(
            got.get(lsn),
            Some(data),
            "seed {seed} cycle {cycle}: acknowledged record {lsn} lost or changed"
        );
    }
    // Every append is all or nothing: its records appear together, in order.
    let records: Vec<(&u64, &Vec<u8>)> = got.iter().collect();
    let mut i = 0;
    while i < records.len() {
        let (lsn, r) = records[i];
        let (index, count) = (r[1], r[2]);
        if *lsn < first || (index != 0 && i == 0) {
            i += 1;
            continue;
        }
        assert_eq!(
            index, 0,
            "seed {seed} cycle {cycle}: record {lsn} starts mid-append"
        );
        for k in 0..usize::from(count) {
            let (l, other) = records.get(i + k).unwrap_or_else(|| {
                panic!("seed {seed} cycle {cycle}: append at {lsn} is cut short")
            });
            assert_eq!(
                (other[0], usize::from(other[1]), &other[4..8]),
                (r[0], k, &r[4..8]),
                "seed {seed} cycle {cycle}: append at {lsn} is half visible at {l}"
            );
        }
        i += usize::from(count);
    }
    durable.extend(got);
    durable.retain(|lsn, _| *lsn >= first);
}

#[test]
fn power_losses_keep_every_acknowledged_record() {
    let seed = env_u64("KEEL_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let losses = env_u64("KEEL_POWER_LOSSES").unwrap_or(500);
    eprintln!(
        "power-loss simulation: seed {seed}, {losses} losses (replay with KEEL_POWER_SEED={seed})"
    );
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut durable = BTreeMap::new();
    let mut torn = 0;
    for cycle in 0..losses {
        let backend = if cycle % 2 == 0 {
            Backend::Blocking
        } else {
            Backend::Auto
        };
        let faults = Faults::new();
        let opts = WalOptions {
            faults: Some(faults.clone()),
            ..small(backend)
        };
        let wal = Wal::open(dir.path(), opts).unwrap_or_else(|e| {
            panic!("seed {seed} cycle {cycle}: recovery after a power loss failed: {e}")
        });
        check(&wal, &mut durable, seed, cycle);
        let loss_at = 1 + rng.below(24);
        faults.power_loss_at_write(loss_at, rng.next());
        let writers = 1 + rng.below(4) as u8;
        let acked = Mutex::new(Vec::new());
        let seeds: Vec<u64> = (0..writers).map(|_| rng.next()).collect();
        std::thread::scope(|s| {
            for (w, &wseed) in seeds.iter().enumerate() {
                let (wal, acked) = (&wal, &acked);
                s.spawn(move || {
                    let mut rng = Rng(wseed);
                    for append in 0..400u32 {
                        let count = 1 + rng.below(3) as u8;
                        let records: Vec<Vec<u8>> = (0..count)
                            .map(|k| {
                                let len = if rng.below(4) == 0 {
                                    3000
                                } else {
                                    rng.below(200)
                                };
                                record(w as u8, append, k, count, len as usize)
                            })
                            .collect();
                        match wal.append(&records) {
                            Ok(at) => acked.lock().unwrap().push((at.first_lsn, records)),
                            Err(Error::Poisoned { .. } | Error::Io { .. }) => return,
                            Err(e) => panic!("unexpected append error: {e}"),
                        }
                        if w == 0 && append % 16 == 15 {
                            let _ = wal.purge_before(wal.next_lsn().saturating_sub(60));
                        }
                    }
                });
            }
        });
        for (first, records) in acked.into_inner().unwrap() {
            for (k, r) in records.into_iter().enumerate() {
                durable.insert(first + k as u64, r);
            }
        }
        if faults.writes() > loss_at {
            torn += 1;
        }
        drop(wal);
    }
    assert!(
        torn * 10 >= losses * 9,
        "most cycles ended in a power loss ({torn} of {losses})"
    );
    let wal = Wal::open(dir.path(), small(Backend::Auto)).unwrap();
    check(&wal, &mut durable, seed, losses);
}
