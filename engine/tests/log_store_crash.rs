//! Crash test for the log store over the real WAL: a child process writes multi-group
//! batches (one raft round each: entry `i` in every group and group 0's hard state with
//! commit `i`), compacts, and runs `maintain` (purges and rewrites of a lagging group) in a
//! loop, printing each acknowledged batch. Half the children write with the blocking
//! `write`, half stage up to four rounds at a time and print each when `durable` hands its
//! ticket back. The parent kills the child with SIGKILL at a seeded random moment (after
//! some number of acknowledgements, or before the first, while the store recovers),
//! `KEEL_CRASH_KILLS` times (default 100), and after every crash reopens the log and checks:
//!
//! - every acknowledged batch is there, and at most the batches the child had in flight
//!   beyond it;
//! - batches are atomic across groups: every group ends at the same index, and group 0's
//!   commit index (written in the same batch) is exactly that index;
//! - each group's entries are gap-free from its first index to its last, with the data
//!   written at each index;
//! - the lagging group's entries survived its rewrites.
//!
//! The seed is printed; `KEEL_CRASH_SEED=<seed>` replays the same kill points (the moments
//! in between still depend on timing).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use keel_engine::{Entry, HardState, LogStore, LogStoreOptions, WriteBatch};
use keel_wal::{Wal, WalOptions};

mod crash;
use crash::{Rng, kills, seed};

const CHILD_DIR: &str = "KEEL_LOG_CRASH_DIR";
const CHILD_STAGED: &str = "KEEL_LOG_CRASH_STAGED";
const GROUPS: u64 = 8;
const LAGGING: u64 = 100;
/// Rounds a staging child has in flight at most.
const STAGED_MAX: usize = 4;

fn open(dir: &str) -> LogStore<Arc<Wal>> {
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
        inflight_writes_max: STAGED_MAX,
        ..LogStoreOptions::default()
    };
    LogStore::open(Arc::new(wal), opts, &mut |_| {}).expect("recovery")
}

fn data(group: u64, index: u64) -> Vec<u8> {
    format!("g{group}-i{index}-").repeat(12).into_bytes()
}

/// Round `i`: entry `i` in every group, and group 0's hard state committing it.
fn round(i: u64) -> WriteBatch {
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
    b
}

/// The smallest executor: polls one future, parking the thread until it is woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The number in an `ACK <n>` line. The first one shares its line with the test harness's
/// `test log_crash_child ... `, so the marker is looked for anywhere in the line.
fn ack(line: &str) -> Option<u64> {
    line.rsplit("ACK ").next()?.trim().parse().ok()
}

#[test]
fn log_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let staged = std::env::var(CHILD_STAGED).is_ok_and(|s| s == "1");
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
    let mut next_compact = i + 20;
    let mut next_maintain = i + 25;
    loop {
        if staged {
            // Several rounds in flight; each acknowledged when its ticket comes back.
            let tickets: Vec<_> = (i..i + STAGED_MAX as u64)
                .map(|n| (n, store.stage(round(n)).expect("stage")))
                .collect();
            for (n, ticket) in tickets {
                assert_eq!(block_on(store.durable()).expect("durable"), ticket);
                println!("ACK {n}");
            }
            i += STAGED_MAX as u64;
        } else {
            store.write(round(i)).expect("write");
            println!("ACK {i}");
            i += 1;
        }
        if i >= next_compact {
            next_compact += 20;
            for g in 0..GROUPS {
                store.compact(g, i - 10).expect("compact");
            }
        }
        if i >= next_maintain {
            next_maintain += 25;
            store.maintain().expect("maintain");
        }
    }
}

#[test]
fn sigkill_keeps_acknowledged_batches_atomic_across_groups() {
    let seed = seed();
    let kills = kills();
    eprintln!("log_store_crash: seed {seed}, {kills} kills (replay with KEEL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut rewrites_happened = false;
    let mut early_kills = 0;
    let mut acked = 0u64;
    for kill in 0..kills {
        let staged = rng.next() % 2 == 0;
        let mut child = Command::new(&exe)
            .args([
                "log_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir_s)
            .env(CHILD_STAGED, if staged { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // One kill in ten lands before the first acknowledgement, during recovery or the
        // first writes; the others after 1..=150 acknowledgements.
        let pick = rng.next();
        let kill_after = if pick % 10 == 0 { 0 } else { 1 + pick % 150 };
        if kill_after == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
            child.kill().unwrap(); // SIGKILL on Unix.
            early_kills += 1;
        }
        let mut seen = 0u64;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(n) = ack(&line) {
                acked = n;
                seen += 1;
                if seen >= kill_after {
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
                acked = n;
            }
        }
        child.wait().unwrap();
        assert!(
            seen >= kill_after,
            "kill {kill}: child died early (seed {seed})"
        );

        let store = open(&dir_s);
        let last = store.last_index(0);
        assert!(
            last >= acked,
            "kill {kill}: acknowledged batch {acked} lost (last {last}, seed {seed})"
        );
        let in_flight = if staged { STAGED_MAX as u64 } else { 1 };
        assert!(
            last <= acked + in_flight,
            "kill {kill}: batches up to {last} present, only {acked} acknowledged (seed {seed})"
        );
        assert_eq!(
            store.hard_state(0).commit,
            last,
            "kill {kill}: hard state and entries of one batch disagree (seed {seed})"
        );
        for g in 0..GROUPS {
            assert_eq!(
                store.last_index(g),
                last,
                "kill {kill}: batch not atomic across groups (seed {seed})"
            );
            let first = store.first_index(g);
            let es = store.entries(g, first, last + 1, u64::MAX).unwrap();
            assert_eq!(
                es.iter().map(|e| e.index).collect::<Vec<_>>(),
                (first..=last).collect::<Vec<_>>(),
                "kill {kill}: group {g} has gaps (seed {seed})"
            );
            for e in es {
                assert_eq!(e.data, data(g, e.index), "group {g} entry {}", e.index);
            }
        }
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
        acked = last;
    }
    eprintln!(
        "log_store_crash: {kills} kills ({early_kills} before the first acknowledgement) in \
         {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(rewrites_happened, "the lagging group was never rewritten");
}
