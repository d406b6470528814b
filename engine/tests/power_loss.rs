//! Simulated power losses under the log store and `Db`: the device behind the WAL's write
//! seam tears the write in flight block by block (each block new, old or zeros) at a random
//! moment and keeps nothing after it. After every loss the store is reopened and checked:
//! every acknowledged write is there, an unacknowledged batch is all or nothing, raft
//! indexes and revisions are gap-free.
//!
//! `KEEL_POWER_SEED` replays a run; `KEEL_POWER_LOSSES` sets how many losses each test
//! simulates.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

use std::collections::BTreeMap;

use keel_engine::txn::Op;
use keel_engine::{Db, DbOptions, Entry, LogStore, LogStoreOptions, WriteBatch};
use keel_wal::{Backend, Faults, Wal, WalOptions};

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

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn seed_and_losses(what: &str) -> (u64, u64) {
    let seed = env_u64("KEEL_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let losses = env_u64("KEEL_POWER_LOSSES").unwrap_or(250);
    eprintln!(
        "{what} power-loss simulation: seed {seed}, {losses} losses \
         (replay with KEEL_POWER_SEED={seed})"
    );
    (seed, losses)
}

fn wal_options(faults: &std::sync::Arc<Faults>, cycle: u64) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        record_bytes_max: 8 << 10,
        batch_bytes_max: 32 << 10,
        backend: if cycle % 2 == 0 {
            Backend::Blocking
        } else {
            Backend::Auto
        },
        faults: Some(faults.clone()),
        ..WalOptions::default()
    }
}

const GROUPS: u64 = 6;

type KeyAndValue = (Vec<u8>, Vec<u8>);

/// A write may fail only because the simulated device failed.
fn expect_device_failure(error: &str, seed: u64) {
    assert!(
        error.contains("poisoned") || error.contains("Input/output error"),
        "seed {seed}: unexpected error: {error}"
    );
}

fn entry_data(batch: u64, group: u64, len: usize) -> Vec<u8> {
    let mut d = format!("b{batch}-g{group}-").into_bytes();
    d.resize(len.max(d.len()), b'x');
    d
}

#[test]
fn log_store_power_losses_keep_every_acknowledged_batch() {
    let (seed, losses) = seed_and_losses("log store");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // Per group: index -> data of every entry that is durable (acknowledged, or found
    // after a recovery and so durable since).
    let mut model: BTreeMap<u64, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    let mut batch_id = 0u64;
    // The batch whose write failed (never acknowledged): its id and (group, index) pairs.
    let mut failed: Option<(u64, Vec<(u64, u64)>)> = None;
    let mut torn = 0;
    for cycle in 0..losses {
        let faults = Faults::new();
        let wal = Wal::open(dir.path(), wal_options(&faults, cycle))
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: WAL recovery failed: {e}"));
        let opts = LogStoreOptions {
            batch_bytes_max: 30 << 10,
            entry_bytes_max: 4 << 10,
            segments_live_max: 4,
            cache_bytes_max: 16 << 10,
            ..LogStoreOptions::default()
        };
        let mut store = LogStore::open(wal, opts, &mut |_| {})
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: recovery failed: {e}"));
        // Every acknowledged entry is there and the log of each group is gap-free.
        for group in 0..GROUPS {
            let expected = model.entry(group).or_default();
            let (first, last) = (store.first_index(group), store.last_index(group));
            let known_last = expected.keys().next_back().copied().unwrap_or(0);
            assert!(
                last >= known_last,
                "seed {seed} cycle {cycle}: group {group} lost acknowledged entries \
                 (last index {last}, acknowledged {known_last})"
            );
            if first <= last {
                let got = store.entries(group, first, last + 1, u64::MAX).unwrap();
                for (k, e) in got.iter().enumerate() {
                    assert_eq!(
                        e.index,
                        first + k as u64,
                        "seed {seed}: gap in group {group}"
                    );
                    if let Some(data) = expected.get(&e.index) {
                        assert_eq!(&e.data, data, "seed {seed}: group {group} entry changed");
                    }
                }
                // What recovery kept is durable from now on.
                expected.retain(|index, _| *index >= first);
                for e in got {
                    expected.insert(e.index, e.data);
                }
            }
        }
        // The batch that was not acknowledged is all or nothing across its groups.
        if let Some((id, written)) = failed.take() {
            let prefix = format!("b{id}-");
            let present = written
                .iter()
                .filter(|(group, index)| {
                    store
                        .entries(*group, *index, *index + 1, u64::MAX)
                        .is_ok_and(|e| e[0].data.starts_with(prefix.as_bytes()))
                })
                .count();
            assert!(
                present == 0 || present == written.len(),
                "seed {seed} cycle {cycle}: batch {id} is half visible ({present} of {} groups)",
                written.len()
            );
        }
        let loss_at = 1 + rng.below(20);
        faults.power_loss_at_write(loss_at, rng.next());
        for _ in 0..200 {
            batch_id += 1;
            let mut batch = WriteBatch::new();
            let groups: Vec<u64> = (0..GROUPS).filter(|_| rng.below(2) == 0).collect();
            let groups = if groups.is_empty() { vec![0] } else { groups };
            for &group in &groups {
                let index = store.last_index(group) + 1;
                let len = if rng.below(5) == 0 {
                    3000
                } else {
                    rng.below(120) as usize
                };
                batch.append(
                    group,
                    vec![Entry {
                        index,
                        term: 1,
                        data: entry_data(batch_id, group, len),
                    }],
                );
            }
            let written: Vec<(u64, u64, Vec<u8>)> = groups
                .iter()
                .map(|&g| {
                    let index = store.last_index(g) + 1;
                    (g, index, entry_data(batch_id, g, 0))
                })
                .collect();
            match store.write(batch) {
                Ok(()) => {
                    for (group, index, _) in written {
                        let e = store.entries(group, index, index + 1, u64::MAX).unwrap();
                        model
                            .entry(group)
                            .or_default()
                            .insert(index, e[0].data.clone());
                    }
                }
                Err(e) => {
                    expect_device_failure(&e.to_string(), seed);
                    failed = Some((batch_id, written.iter().map(|(g, i, _)| (*g, *i)).collect()));
                    break;
                }
            }
            if rng.below(10) == 0 {
                let group = rng.below(GROUPS);
                let to = store.last_index(group).saturating_sub(5);
                if to > store.first_index(group) && store.compact(group, to).is_err() {
                    break;
                }
                if store.maintain().is_err() {
                    break;
                }
            }
        }
        if faults.writes() > loss_at {
            torn += 1;
        }
        drop(store);
    }
    assert!(
        torn * 10 >= losses * 9,
        "most cycles ended in a power loss ({torn} of {losses})"
    );
}

#[test]
fn db_power_losses_keep_every_acknowledged_write() {
    let (seed, losses) = seed_and_losses("db");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // key -> (value, mod revision) of the last acknowledged (or recovered) write.
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
    let mut revision = 0u64;
    let mut torn = 0;
    for cycle in 0..losses {
        let faults = Faults::new();
        let opts = DbOptions {
            wal: wal_options(&faults, cycle),
            limits: keel_engine::KvLimits {
                key_bytes_max: 256,
                value_bytes_max: 4 << 10,
                txn_ops_max: 16,
                txn_bytes_max: 7 << 10,
                history_bytes_max: 1 << 20,
            },
            background_checkpoints: false,
            checkpoint_log_bytes: 256 << 10,
            ..DbOptions::default()
        };
        let db = Db::open(dir.path(), opts)
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: recovery failed: {e}"));
        let now = db.revision().unwrap();
        assert!(
            now >= revision,
            "seed {seed} cycle {cycle}: revision went back"
        );
        for (key, (value, rev)) in &model {
            let kv = db.get(key).unwrap().unwrap_or_else(|| {
                panic!("seed {seed} cycle {cycle}: acknowledged key {key:?} lost")
            });
            // Either the acknowledged write, or a later one that was not acknowledged but
            // reached the disk before the power failed.
            assert!(
                (&kv.value, kv.meta.mod_revision) == (value, *rev)
                    || kv.meta.mod_revision > revision,
                "seed {seed} cycle {cycle}: key {key:?} holds revision {} instead of the \
                 acknowledged {rev}",
                kv.meta.mod_revision
            );
        }
        // Unacknowledged transactions that survived: each whole (a batch writes four keys
        // with one value at one revision), and revisions gap-free up to `now`.
        let mut by_revision: BTreeMap<u64, Vec<KeyAndValue>> = BTreeMap::new();
        let all = ["batch/", "key/"].into_iter().flat_map(|prefix| {
            db.range(&keel_engine::txn::RangeRequest::prefix(prefix))
                .unwrap()
                .kvs
        });
        for kv in all {
            by_revision
                .entry(kv.meta.mod_revision)
                .or_default()
                .push((kv.key.clone(), kv.value.clone()));
            model.insert(kv.key, (kv.value, kv.meta.mod_revision));
        }
        for (rev, kvs) in &by_revision {
            if kvs[0].0.starts_with(b"batch/") {
                assert_eq!(
                    kvs.len() % 4,
                    0,
                    "seed {seed}: transaction at {rev} half visible"
                );
            }
        }
        revision = now;
        let loss_at = 1 + rng.below(20);
        faults.power_loss_at_write(loss_at, rng.next());
        for n in 0..300u64 {
            let mut value = vec![b'a' + (n % 26) as u8; if rng.below(6) == 0 { 3000 } else { 40 }];
            if rng.below(4) == 0 {
                let id = rng.below(50);
                value.truncate(1000);
                let ops = (0..4)
                    .map(|k| Op::put(format!("batch/{id}/{k}"), value.clone()))
                    .collect();
                match db.batch(ops) {
                    Ok(resp) => {
                        assert_eq!(resp.revision, revision + 1, "seed {seed}: revision gap");
                        revision = resp.revision;
                        for k in 0..4 {
                            model.insert(
                                format!("batch/{id}/{k}").into_bytes(),
                                (value.clone(), revision),
                            );
                        }
                    }
                    Err(e) => {
                        expect_device_failure(&e.to_string(), seed);
                        break;
                    }
                }
            } else {
                let key = format!("key/{}", rng.below(200)).into_bytes();
                match db.put(&key, &value) {
                    Ok(rev) => {
                        assert_eq!(rev, revision + 1, "seed {seed}: revision gap");
                        revision = rev;
                        model.insert(key, (value, rev));
                    }
                    Err(e) => {
                        expect_device_failure(&e.to_string(), seed);
                        break;
                    }
                }
            }
            if rng.below(40) == 0 && db.checkpoint().is_err() {
                break;
            }
        }
        if faults.writes() > loss_at {
            torn += 1;
        }
        drop(db);
    }
    assert!(
        torn * 10 >= losses * 9,
        "most cycles ended in a power loss ({torn} of {losses})"
    );
}
