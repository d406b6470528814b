//! Crash test: a child process writes from several threads and prints every acknowledged
//! write; the parent kills it with SIGKILL at an arbitrary moment, reopens the store and
//! checks that no acknowledged write was lost. Background checkpoints and log purges run in
//! the child meanwhile, so crashes land in the middle of those too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_engine::{Db, DbOptions, KvLimits};
use keel_wal::WalOptions;

const CHILD_DIR: &str = "KEEL_DB_CRASH_DIR";
const CHILD_ROUND: &str = "KEEL_DB_CRASH_ROUND";

fn options() -> DbOptions {
    DbOptions {
        limits: KvLimits {
            key_bytes_max: 64,
            value_bytes_max: 1024,
            txn_ops_max: 8,
            txn_bytes_max: 4096,
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

fn key(round: u8, n: u64) -> Vec<u8> {
    let mut k = vec![round];
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn value(round: u8, n: u64) -> Vec<u8> {
    format!("value-{round}-{n}-").repeat(4).into_bytes()
}

/// The child's body; a no-op unless the parent started this binary for it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u8 = std::env::var(CHILD_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("round");
    let db = Arc::new(Db::open(&dir, options()).expect("child open"));
    let counter = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let db = Arc::clone(&db);
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    db.put(&key(round, n), &value(round, n)).expect("put");
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

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut checkpoints_seen = 0;
    for round in 0..4u8 {
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
        let kill_after = 300 + 250 * u64::from(round);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line
                .strip_prefix("ACK ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                acked.insert(n);
                if acked.len() as u64 >= kill_after {
                    child.kill().unwrap(); // SIGKILL on Unix.
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert!(acked.len() as u64 >= kill_after, "child died early");

        let db = Db::open(dir.path(), options()).unwrap();
        if db.recovery().checkpoint_index.is_some() {
            checkpoints_seen += 1;
        }
        for &n in &acked {
            let got = db.get(&key(round, n)).unwrap();
            assert_eq!(
                got.map(|kv| kv.value),
                Some(value(round, n)),
                "round {round}: acknowledged write {n} lost"
            );
        }
        // Earlier rounds' acknowledged writes must still be there too (spot check).
        if round > 0 {
            assert!(db.get(&key(round - 1, 0)).unwrap().is_some());
        }
    }
    assert!(
        checkpoints_seen > 0,
        "no checkpoint was ever written before a crash"
    );
}
