//! Crash test: a child process writes three-key transactions from several threads and prints
//! every acknowledged one; the parent kills it with SIGKILL at a seeded random moment (after
//! some number of acknowledgements, or before the first, while the store recovers), reopens
//! the store and checks it, `KEEL_CRASH_KILLS` times (default 100). Background checkpoints and
//! log purges run in the child meanwhile, so crashes land in the middle of those too.
//!
//! After every crash: every acknowledged transaction is there; every transaction is there
//! whole or not at all; at most one unacknowledged transaction per writer thread is there;
//! and the store's revisions are gap-free (each revision names exactly one whole
//! transaction, from 1 to the store revision). The seed is printed; `KEEL_CRASH_SEED=<seed>`
//! replays the same kill points (the moments in between still depend on timing).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_engine::{Db, DbOptions, KvLimits, Op, RangeEnd, RangeRequest, Txn};
use keel_wal::WalOptions;

mod crash;
use crash::{Rng, kills, seed};

const CHILD_DIR: &str = "KEEL_DB_CRASH_DIR";
const CHILD_ROUND: &str = "KEEL_DB_CRASH_ROUND";
const WRITERS: u64 = 4;
/// Keys each transaction writes.
const TXN_KEYS: u8 = 3;

fn options() -> DbOptions {
    DbOptions {
        limits: KvLimits {
            key_bytes_max: 64,
            value_bytes_max: 1024,
            txn_ops_max: 8,
            txn_bytes_max: 4096,
            history_bytes_max: 1 << 20,
        },
        wal: WalOptions {
            segment_bytes: 64 * 1024,
            record_bytes_max: 8 * 1024,
            batch_bytes_max: 32 * 1024,
            ..WalOptions::default()
        },
        checkpoint_log_bytes: 32 * 1024,
        background_checkpoints: true,
        ..DbOptions::default()
    }
}

/// Key `j` of transaction `n` of round `round`: round, n, j big-endian, so that a range
/// scan returns them in that order.
fn key(round: u32, n: u64, j: u8) -> Vec<u8> {
    let mut k = round.to_be_bytes().to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k.push(j);
    k
}

fn parse_key(k: &[u8]) -> (u32, u64, u8) {
    let round = u32::from_be_bytes(k[0..4].try_into().unwrap());
    let n = u64::from_be_bytes(k[4..12].try_into().unwrap());
    (round, n, k[12])
}

fn value(round: u32, n: u64, j: u8) -> Vec<u8> {
    format!("value-{round}-{n}-{j}-").repeat(4).into_bytes()
}

/// The child's body; a no-op unless the parent started this binary for it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u32 = std::env::var(CHILD_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("round");
    let db = Arc::new(Db::open(&dir, options()).expect("child open"));
    let counter = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let db = Arc::clone(&db);
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let ops = (0..TXN_KEYS)
                        .map(|j| Op::put(key(round, n, j), value(round, n, j)))
                        .collect();
                    db.txn(Txn::batch(ops)).expect("txn");
                    // One println is one locked write of a whole line.
                    println!("ACK {n}");
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
}

/// The number in an `ACK <n>` line. The first one shares its line with the test harness's
/// `test crash_child ... `, so the marker is looked for anywhere in the line.
fn ack(line: &str) -> Option<u64> {
    line.rsplit("ACK ").next()?.trim().parse().ok()
}

/// Checks the store after a crash in `round`, in which `acked` transactions were
/// acknowledged.
fn check(db: &Db, round: u32, acked: &BTreeSet<u64>) {
    let all = db
        .range(&RangeRequest {
            start: vec![0],
            end: RangeEnd::Unbounded,
            limit: 0,
            keys_only: false,
            count_only: false,
            filter: Default::default(),
            sort: None,
            revision: 0,
        })
        .unwrap();
    // Every revision names one whole transaction: its three keys, all with that revision.
    let mut by_revision: BTreeMap<u64, Vec<(u32, u64, u8)>> = BTreeMap::new();
    for kv in &all.kvs {
        let (r, n, j) = parse_key(&kv.key);
        assert_eq!(kv.value, value(r, n, j), "round {round}: key {r}/{n}/{j}");
        assert_eq!(kv.meta.version, 1, "keys are written once");
        by_revision
            .entry(kv.meta.mod_revision)
            .or_default()
            .push((r, n, j));
    }
    let revision = db.revision().unwrap();
    assert_eq!(
        by_revision.keys().copied().collect::<Vec<_>>(),
        (1..=revision).collect::<Vec<_>>(),
        "round {round}: revisions are not gap-free up to {revision}"
    );
    for (rev, keys) in &by_revision {
        let (r, n, _) = keys[0];
        let whole: Vec<_> = (0..TXN_KEYS).map(|j| (r, n, j)).collect();
        assert_eq!(
            keys, &whole,
            "round {round}: revision {rev} is not one whole txn"
        );
    }
    // Every acknowledged transaction of this round is there; of the others, at most one
    // per writer (the one it had in flight).
    let present: BTreeSet<u64> = by_revision
        .values()
        .filter(|keys| keys[0].0 == round)
        .map(|keys| keys[0].1)
        .collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "round {round}: acknowledged txns lost: {lost:?}"
    );
    let unacked: Vec<_> = present.difference(acked).collect();
    assert!(
        unacked.len() as u64 <= WRITERS,
        "round {round}: unacknowledged txns present: {unacked:?} (acknowledged: {} up to {:?})",
        acked.len(),
        acked.last()
    );
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let seed = seed();
    let kills = kills();
    eprintln!("db_crash: seed {seed}, {kills} kills (replay with KEEL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut checkpoints_seen = 0;
    let mut early_kills = 0;
    for round in 0..u32::try_from(kills).expect("kills fit u32") {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = BTreeSet::new();
        // One kill in ten lands before the first acknowledgement, during recovery or the
        // first writes; the others after 1..=200 acknowledgements.
        let pick = rng.next();
        let kill_after = if pick % 10 == 0 { 0 } else { 1 + pick % 200 };
        let mut lines = BufReader::new(stdout).lines();
        if kill_after == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
            child.kill().unwrap(); // SIGKILL on Unix.
            early_kills += 1;
        }
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(n) = ack(&line) {
                acked.insert(n);
                if acked.len() as u64 >= kill_after {
                    break;
                }
            }
        }
        if kill_after > 0 {
            child.kill().unwrap();
        }
        // What the child printed before it died is acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = ack(&line) {
                acked.insert(n);
            }
        }
        child.wait().unwrap();
        assert!(
            acked.len() as u64 >= kill_after,
            "round {round}: child died early (seed {seed})"
        );

        let db = Db::open(dir.path(), options()).unwrap();
        if db.recovery().checkpoint_index.is_some() {
            checkpoints_seen += 1;
        }
        check(&db, round, &acked);
    }
    eprintln!(
        "db_crash: {kills} kills ({early_kills} before the first acknowledgement) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        checkpoints_seen > 0,
        "no checkpoint was ever written before a crash"
    );
}
