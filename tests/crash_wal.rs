//! Crash test: a child process appends from several threads and reports each acknowledged
//! position; it is killed with SIGKILL at random moments, many times over the same log.
//! Every acknowledged record must be recovered, and what recovers is gap-free.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_wal::{Wal, WalOptions};

/// The record the writer appends for `value` (mirrors `keel debug wal-writer`).
fn wal_record(value: u64) -> Vec<u8> {
    let len = 8 * (1 + usize::try_from(value % 97).unwrap());
    value
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn next_random(state: &mut u64) -> u64 {
    // splitmix64
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    let seed = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let rounds: u32 = std::env::var("KEEL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    eprintln!("crash test seed {seed} (replay with KEEL_CRASH_SEED={seed})");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal");
    let mut acked: HashMap<u64, u64> = HashMap::new();
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["debug", "wal-writer"])
            .arg(&log)
            .args([
                "--writers",
                "4",
                "--segment-kib",
                "128",
                "--purge-keep",
                "3000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() != Some("ack") {
                    continue;
                }
                let (Some(lsn), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Ok(lsn), Ok(value)) = (lsn.parse::<u64>(), value.parse::<u64>()) {
                    acks.push((lsn, value));
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(15 + next_random(&mut rng) % 100));
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        for (lsn, value) in acks {
            if let Some(old) = acked.insert(lsn, value) {
                assert_eq!(old, value, "seed {seed}: position {lsn} acknowledged twice");
            }
        }

        let wal = Wal::open(
            &log,
            WalOptions {
                segment_bytes: 128 << 10,
                record_bytes_max: 16 << 10,
                batch_bytes_max: 32 << 10,
                ..WalOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
        let mut found = HashMap::new();
        for (expect, record) in (wal.first_lsn()..).zip(wal.iter().unwrap()) {
            let record = record.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(
                record.lsn, expect,
                "seed {seed}: recovered positions must be gap-free"
            );
            found.insert(record.lsn, record.data);
        }
        // Positions below the first were purged on purpose (which recycles segment files).
        for (lsn, value) in acked.iter().filter(|(lsn, _)| **lsn >= wal.first_lsn()) {
            let data = found.get(lsn).unwrap_or_else(|| {
                panic!("seed {seed} round {round}: acknowledged position {lsn} lost")
            });
            assert_eq!(
                data,
                &wal_record(*value),
                "seed {seed}: position {lsn} has other bytes"
            );
        }
        drop(wal);
    }
    let files = keel_wal::list_segments(&log, false).unwrap();
    let newest = files.last().map_or(0, |(seq, _)| *seq);
    assert!(
        newest > files.len() as u64,
        "seed {seed}: segments were purged and their files reused ({} files, newest {newest})",
        files.len()
    );
    assert!(
        acked.len() > 100,
        "the writer made too little progress to test anything"
    );
}
