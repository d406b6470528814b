//! The engine used the way a raft node uses it: committed entries (encoded transactions) are
//! applied to the memtable, a checkpoint is taken and recorded as the group's snapshot, the
//! log is compacted behind it, and a restart recovers = checkpoint + replay of the entries
//! after it. A lagging follower catches up by installing the checkpoint bytes as a snapshot.

use keel_engine::txn_codec::{decode_txn, encode_txn};
use keel_engine::{
    CheckpointDir, Entry, HardState, KvLimits, LogStore, LogStoreOptions, Memtable, Op,
    SnapshotMeta, Txn, WriteBatch,
};
use keel_wal::{Wal, WalOptions};

const GROUP: u64 = 7;

fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        record_bytes_max: 8 * 1024,
        batch_bytes_max: 32 * 1024,
        ..WalOptions::default()
    }
}

fn open_log(dir: &std::path::Path) -> LogStore {
    let opts = LogStoreOptions {
        batch_bytes_max: 30 * 1024,
        entry_bytes_max: 4 * 1024,
        ..LogStoreOptions::default()
    };
    LogStore::open(Wal::open(dir, wal_options()).unwrap(), opts, &mut |_| {}).unwrap()
}

fn command(i: u64) -> Vec<u8> {
    encode_txn(&Txn::batch(vec![
        Op::put(format!("key-{}", i % 17), format!("value-{i}")),
        Op::put("counter", i.to_be_bytes()),
    ]))
}

/// Applies committed entries `(applied, commit]` to the state machine.
fn apply(log: &LogStore, sm: &mut Memtable, commit: u64) {
    let mut next = sm.applied_index() + 1;
    while next <= commit {
        for e in log.entries(GROUP, next, commit + 1, 16 * 1024).unwrap() {
            sm.txn(&decode_txn(&e.data).unwrap()).unwrap();
            sm.set_applied_index(e.index);
            next = e.index + 1;
        }
    }
}

#[test]
fn checkpoint_compact_restart_and_snapshot_install() {
    let log_dir = tempfile::tempdir().unwrap();
    let ckpt_dir = tempfile::tempdir().unwrap();
    let checkpoints = CheckpointDir::open(ckpt_dir.path()).unwrap();
    let mut log = open_log(log_dir.path());
    let mut sm = Memtable::new(KvLimits::default()).unwrap();

    // Term 1 appends 1..=120, commits 100 and applies it.
    for i in 1..=120u64 {
        let mut b = WriteBatch::new();
        b.append(
            GROUP,
            vec![Entry {
                index: i,
                term: 1,
                data: command(i),
            }],
        );
        if i % 10 == 0 {
            b.set_hard_state(
                GROUP,
                HardState {
                    term: 1,
                    vote: 1,
                    commit: i.min(100),
                },
            );
        }
        log.write(b).unwrap();
    }
    apply(&log, &mut sm, 100);

    // Checkpoint at the applied index, record it as the snapshot, compact the log behind it.
    let (_, meta) = checkpoints.write(&sm, 1, b"voters=1,2,3").unwrap();
    assert_eq!(meta.index, 100);
    let mut b = WriteBatch::new();
    b.set_snapshot(
        GROUP,
        SnapshotMeta {
            index: 100,
            term: 1,
            conf_state: meta.conf_state.clone(),
        },
    );
    log.write(b).unwrap();
    log.compact(GROUP, 100).unwrap();
    log.maintain().unwrap();
    assert_eq!(log.first_index(GROUP), 101);

    // A new leader in term 2 overwrites the uncommitted tail 111..=120, then commits 115.
    let mut b = WriteBatch::new();
    b.append(
        GROUP,
        (111..=115)
            .map(|i| Entry {
                index: i,
                term: 2,
                data: command(i * 1000),
            })
            .collect(),
    );
    b.set_hard_state(
        GROUP,
        HardState {
            term: 2,
            vote: 2,
            commit: 115,
        },
    );
    log.write(b).unwrap();
    apply(&log, &mut sm, 115);
    let expected: Vec<_> = sm
        .iter()
        .map(|(k, v, m)| (k.to_vec(), v.to_vec(), m))
        .collect();
    let expected_revision = sm.revision();
    drop(log);
    drop(sm);

    // Restart: newest checkpoint + replay of the committed entries after it.
    let log = open_log(log_dir.path());
    let (reader, skipped) = checkpoints.newest_valid().unwrap();
    assert!(skipped.is_empty());
    let reader = reader.unwrap();
    let snap = log.snapshot(GROUP).unwrap();
    assert_eq!(
        (snap.index, snap.term),
        (reader.meta().index, reader.meta().term)
    );
    let mut sm = reader.to_memtable(KvLimits::default()).unwrap();
    let hs = log.hard_state(GROUP);
    assert_eq!(
        hs,
        HardState {
            term: 2,
            vote: 2,
            commit: 115
        }
    );
    apply(&log, &mut sm, hs.commit);
    let got: Vec<_> = sm
        .iter()
        .map(|(k, v, m)| (k.to_vec(), v.to_vec(), m))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(sm.revision(), expected_revision);
    assert_eq!(log.last_index(GROUP), 115);
    assert_eq!(log.term(GROUP, 100).unwrap(), 1);

    // A follower that is far behind receives the checkpoint bytes as a snapshot.
    let follower_log_dir = tempfile::tempdir().unwrap();
    let follower_ckpt_dir = tempfile::tempdir().unwrap();
    let mut follower_log = open_log(follower_log_dir.path());
    let mut b = WriteBatch::new();
    b.append(
        GROUP,
        (1..=5)
            .map(|i| Entry {
                index: i,
                term: 1,
                data: command(i),
            })
            .collect(),
    );
    follower_log.write(b).unwrap();
    let installed = CheckpointDir::open(follower_ckpt_dir.path())
        .unwrap()
        .install(reader.bytes().to_vec())
        .unwrap();
    let mut b = WriteBatch::new();
    b.apply_snapshot(GROUP, snap.clone());
    follower_log.write(b).unwrap();
    assert_eq!(follower_log.first_index(GROUP), 101);
    assert_eq!(follower_log.last_index(GROUP), 100);
    let mut follower_sm = installed.to_memtable(KvLimits::default()).unwrap();
    // The leader sends the entries after the snapshot; the follower appends and applies them.
    let tail = log.entries(GROUP, 101, 116, u64::MAX).unwrap();
    let mut b = WriteBatch::new();
    b.append(GROUP, tail);
    follower_log.write(b).unwrap();
    apply(&follower_log, &mut follower_sm, 115);
    let follower: Vec<_> = follower_sm
        .iter()
        .map(|(k, v, m)| (k.to_vec(), v.to_vec(), m))
        .collect();
    assert_eq!(follower, expected);
}
