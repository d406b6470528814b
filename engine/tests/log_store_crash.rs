//! Crash test for the log store over the real WAL: a child process writes multi-group
//! batches, compacts, and runs `maintain` (purges and rewrites of a lagging group) in a loop,
//! printing each acknowledged batch; the parent kills it with SIGKILL, reopens the log and
//! checks that every acknowledged batch is there, that batches are atomic across groups, and
//! that the lagging group's rewritten entries survived.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use keel_engine::{Entry, HardState, LogStore, LogStoreOptions, WriteBatch};
use keel_wal::{Wal, WalOptions};

const CHILD_DIR: &str = "KEEL_LOG_CRASH_DIR";
const GROUPS: u64 = 8;
const LAGGING: u64 = 100;

fn open(dir: &str) -> LogStore {
    let wal = Wal::open(
        dir,
        WalOptions {
            segment_bytes: 64 * 1024,
            record_bytes_max: 8 * 1024,
            batch_bytes_max: 32 * 1024,
            ..WalOptions::default()
        },
    )
    .expect("wal");
    let opts = LogStoreOptions {
        batch_bytes_max: 30 * 1024,
        entry_bytes_max: 4 * 1024,
        segments_live_max: 4,
        cache_bytes_max: 16 * 1024,
        ..LogStoreOptions::default()
    };
    LogStore::open(wal, opts, &mut |_| {}).expect("recovery")
}

fn data(group: u64, index: u64) -> Vec<u8> {
    format!("g{group}-i{index}-").repeat(12).into_bytes()
}

#[test]
fn log_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let mut store = open(&dir);
    if store.last_index(LAGGING) == 0 {
        let mut b = WriteBatch::new();
        b.append(
            LAGGING,
            (1..=3)
                .map(|i| Entry {
                    index: i,
                    term: 1,
                    data: data(LAGGING, i),
                })
                .collect(),
        );
        store.write(b).expect("lagging");
    }
    let mut i = store.last_index(0) + 1;
    loop {
        let mut b = WriteBatch::new();
        for g in 0..GROUPS {
            b.append(
                g,
                vec![Entry {
                    index: i,
                    term: 1,
                    data: data(g, i),
                }],
            );
        }
        b.set_hard_state(
            0,
            HardState {
                term: 1,
                vote: 1,
                commit: i,
            },
        );
        store.write(b).expect("write");
        println!("ACK {i}");
        if i % 20 == 0 {
            for g in 0..GROUPS {
                store.compact(g, i - 10).expect("compact");
            }
        }
        if i % 25 == 0 {
            store.maintain().expect("maintain");
        }
        i += 1;
    }
}

#[test]
fn sigkill_keeps_acknowledged_batches_atomic_across_groups() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let mut rewrites_happened = false;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "log_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir_s)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = 0u64;
        let mut seen = 0u64;
        let kill_after = 200 + 150 * round;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ").and_then(|n| n.parse().ok()) {
                acked = n;
                seen += 1;
                if seen >= kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert!(seen >= kill_after, "child died early");

        let store = open(&dir_s);
        let last = store.last_index(0);
        assert!(
            last >= acked,
            "round {round}: acknowledged batch {acked} lost (last {last})"
        );
        for g in 0..GROUPS {
            assert_eq!(store.last_index(g), last, "batch not atomic across groups");
            let first = store.first_index(g);
            let es = store.entries(g, first, last + 1, u64::MAX).unwrap();
            for e in es {
                assert_eq!(e.data, data(g, e.index), "group {g} entry {}", e.index);
            }
        }
        assert!(store.hard_state(0).commit >= acked);
        let lagging = store.entries(LAGGING, 1, 4, u64::MAX).unwrap();
        assert_eq!(lagging.len(), 3);
        for e in lagging {
            assert_eq!(e.data, data(LAGGING, e.index));
        }
        // The lagging group's entries were first written at LSN 1..3; once its records have
        // been rewritten and the first segment purged, its pin has moved forward.
        if store.log().first_lsn() > 3 {
            rewrites_happened = true;
        }
    }
    assert!(rewrites_happened, "the lagging group was never rewritten");
}
