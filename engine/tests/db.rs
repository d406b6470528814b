//! The standalone store: durability across reopen, a model-based test with restarts and
//! checkpoints in between, corrupt checkpoints, group commit under concurrency.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;

use keel_engine::{
    Compare, CompareOp, CompareTarget, Db, DbError, DbOptions, KvError, KvLimits, Op, RangeEnd,
    RangeRequest, Txn,
};
use keel_wal::WalOptions;
use proptest::prelude::*;

/// `Db` is shared across threads; the log store moves between them (the node's storage
/// pipeline owns it on one thread at a time).
const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<Db>();
const _: () = assert_send_sync::<keel_engine::LogStore>();

/// Small segments and limits so that tests roll segments, checkpoint and purge quickly.
fn small() -> DbOptions {
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
        checkpoint_log_bytes: 16 * 1024,
        background_checkpoints: false,
        ..DbOptions::default()
    }
}

#[test]
fn default_options_are_valid() {
    DbOptions::default().validate().unwrap();
}

#[test]
fn writes_survive_reopen_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        assert_eq!(db.put(b"a", b"1").unwrap(), 1);
        assert_eq!(db.put(b"b", b"2").unwrap(), 2);
        assert_eq!(db.put(b"a", b"3").unwrap(), 3);
        assert!(db.delete(b"b").unwrap());
        assert!(!db.delete(b"zz").unwrap());
        let r = db
            .txn(Txn {
                compares: vec![Compare {
                    key: b"a".to_vec(),
                    end: RangeEnd::Single,
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(2),
                }],
                success: vec![Op::put("c", "ok")],
                failure: vec![Op::put("c", "no")],
            })
            .unwrap();
        assert!(r.succeeded);
    }
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.revision().unwrap(), 5);
    assert_eq!(db.recovery().replayed_records, 5);
    let a = db.get(b"a").unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.meta.version, a.meta.mod_revision),
        (&b"3"[..], 2, 3)
    );
    assert!(db.get(b"b").unwrap().is_none());
    assert_eq!(db.get(b"c").unwrap().unwrap().value, b"ok");
    assert_eq!(db.put(b"d", b"4").unwrap(), 6);
}

#[test]
fn oversize_requests_are_rejected_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    assert!(matches!(
        db.put(&[b'k'; 65], b"v"),
        Err(DbError::Kv(KvError::KeyTooLarge { len: 65, max: 64 }))
    ));
    assert!(matches!(
        db.put(b"k", &[0; 1025]),
        Err(DbError::Kv(KvError::ValueTooLarge { .. }))
    ));
    assert_eq!(db.revision().unwrap(), 0);
    assert_eq!(db.stats().log_appends, 0);
    db.put(b"k", b"v").unwrap();
}

#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        for round in 0..3u8 {
            for i in 0..20u8 {
                db.put(&[b'k', i], &[round; 100]).unwrap();
            }
            db.checkpoint().unwrap().unwrap();
        }
        db.put(b"tail", b"after the last checkpoint").unwrap();
    }
    let ckpts: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ckpts.len(), 2, "two checkpoints are kept");
    let newest = ckpts.last().unwrap();
    let mut bytes = fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(newest, bytes).unwrap();

    // The strict policy refuses to open and leaves the file where it is.
    let strict = DbOptions {
        checkpoint_recovery: keel_engine::CheckpointRecovery::Strict,
        ..small()
    };
    assert!(matches!(
        Db::open(dir.path(), strict),
        Err(DbError::Checkpoint(
            keel_engine::CheckpointError::Corruption { .. }
        ))
    ));
    assert!(newest.exists());

    let db = Db::open(dir.path(), small()).unwrap();
    let rec = db.recovery();
    assert_eq!(rec.skipped_checkpoints.len(), 1);
    assert_eq!(&rec.skipped_checkpoints[0].0, newest);
    assert!(!newest.exists(), "the corrupt checkpoint is quarantined");
    assert!(rec.skipped_checkpoints[0].1.contains("checksum"), "{rec:?}");
    assert_eq!(rec.checkpoint_index, Some(40));
    assert_eq!(
        db.get(b"tail").unwrap().unwrap().value,
        b"after the last checkpoint"
    );
    assert_eq!(db.get(&[b'k', 7]).unwrap().unwrap().value, vec![2; 100]);
    assert_eq!(db.revision().unwrap(), 61);
}

#[test]
fn concurrent_writers_are_coalesced_into_shared_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), small()).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    db.put(&[t, i], &[t; 16]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.txns_logged, 400);
    assert!(stats.log_appends < 400, "no coalescing: {stats:?}");
    let all = db
        .range(&RangeRequest {
            start: vec![0],
            end: RangeEnd::Unbounded,
            limit: 0,
            keys_only: true,
            count_only: false,
            filter: Default::default(),
            sort: None,
            revision: 0,
        })
        .unwrap();
    assert_eq!(all.count, 400);
    assert_eq!(all.revision, 400);
    drop(all);
    let db = Arc::try_unwrap(db).unwrap();
    db.close();
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.revision().unwrap(), 400);
}

#[test]
fn background_checkpoints_purge_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        background_checkpoints: true,
        ..small()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    for i in 0..2000u32 {
        db.put(&(i % 300).to_le_bytes(), &[7; 200]).unwrap();
    }
    // The checkpoint thread runs asynchronously; give it a moment to catch up.
    for _ in 0..50 {
        if db.stats().checkpoints >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(db.stats().checkpoints >= 2, "{:?}", db.stats());
    db.close();
    let segments = fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments < 20, "log was not purged: {segments} files");
    let db = Db::open(dir.path(), opts).unwrap();
    assert!(db.recovery().checkpoint_index.is_some());
    assert_eq!(db.revision().unwrap(), 2000);
    assert_eq!(
        db.get(&299u32.to_le_bytes()).unwrap().unwrap().value,
        vec![7; 200]
    );
}

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    CasVersion(u8, u64, u8),
    Checkpoint,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..12).prop_map(Step::Delete),
        2 => (0u8..12, 0u64..3, any::<u8>()).prop_map(|(k, ver, v)| Step::CasVersion(k, ver, v)),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The store against a BTreeMap of (value, version) with restarts and checkpoints.
    #[test]
    fn db_matches_model_across_restarts(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), small()).unwrap();
        let mut model: BTreeMap<u8, (Vec<u8>, u64)> = BTreeMap::new();
        let mut revision = 0u64;
        for s in steps {
            match s {
                Step::Put(k, v) => {
                    revision += 1;
                    prop_assert_eq!(db.put(&[k], &[v; 3]).unwrap(), revision);
                    let e = model.entry(k).or_insert((Vec::new(), 0));
                    *e = (vec![v; 3], e.1 + 1);
                }
                Step::Delete(k) => {
                    let existed = model.remove(&k).is_some();
                    if existed { revision += 1; }
                    prop_assert_eq!(db.delete(&[k]).unwrap(), existed);
                }
                Step::CasVersion(k, ver, v) => {
                    let cur = model.get(&k).map_or(0, |e| e.1);
                    let txn = Txn {
                        compares: vec![Compare { key: vec![k], end: RangeEnd::Single, op: CompareOp::Equal,
                            target: CompareTarget::Version(ver) }],
                        success: vec![Op::put(vec![k], vec![v])],
                        failure: vec![],
                    };
                    let r = db.txn(txn).unwrap();
                    prop_assert_eq!(r.succeeded, cur == ver);
                    if cur == ver {
                        revision += 1;
                        let e = model.entry(k).or_insert((Vec::new(), 0));
                        *e = (vec![v], e.1 + 1);
                    }
                }
                Step::Checkpoint => { db.checkpoint().unwrap(); }
                Step::Restart => {
                    drop(db);
                    db = Db::open(dir.path(), small()).unwrap();
                }
            }
            prop_assert_eq!(db.revision().unwrap(), revision);
        }
        for k in 0u8..12 {
            let got = db.get(&[k]).unwrap().map(|kv| (kv.value, kv.meta.version));
            prop_assert_eq!(got, model.get(&k).cloned());
        }
    }
}

#[test]
fn a_failed_log_write_poisons_and_reopen_recovers_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = keel_wal::Faults::new();
    let mut opts = small();
    opts.wal.backend = keel_wal::Backend::Blocking;
    opts.wal.faults = Some(faults.clone());
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..10u8 {
        db.put(&[i], b"ok").unwrap();
    }
    faults.fail_writes_from(faults.writes());
    assert!(db.put(b"x", b"lost").is_err());
    // Everything afterwards fails: the memtable may be ahead of the log.
    assert!(matches!(db.put(b"y", b"v"), Err(DbError::Poisoned { .. })));
    assert!(matches!(db.get(&[1]), Err(DbError::Poisoned { .. })));
    drop(db);
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.revision().unwrap(), 10);
    assert!(db.get(b"x").unwrap().is_none());
    assert_eq!(db.get(&[9]).unwrap().unwrap().value, b"ok");
}

#[test]
fn readers_see_monotonic_revisions_and_whole_batches_while_writers_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), small()).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Each batch writes the same counter to keys "a" and "b": a reader must never see them
    // differ (atomicity), and revisions must never go backwards.
    let writers: Vec<_> = (0..4u32)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..60u32 {
                    let v = (t * 1000 + i).to_le_bytes();
                    db.batch(vec![Op::put("a", v), Op::put("b", v)]).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let db = Arc::clone(&db);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = db.range(&RangeRequest::between("a", "c")).unwrap();
                    assert!(r.revision >= last, "revision went back");
                    last = r.revision;
                    if r.kvs.len() == 2 {
                        assert_eq!(r.kvs[0].value, r.kvs[1].value, "torn batch");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(db.revision().unwrap(), 240);
}

#[test]
fn every_checkpoint_corrupt_after_a_purge_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        for round in 0..6u8 {
            for i in 0..60u8 {
                db.put(&[b'k', i], &[round; 200]).unwrap();
            }
            db.checkpoint().unwrap().unwrap();
        }
    }
    for e in fs::read_dir(dir.path().join("checkpoints")).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, bytes).unwrap();
    }
    match Db::open(dir.path(), small()) {
        Err(DbError::LogGap { log_first, .. }) => assert!(log_first > 1),
        other => panic!("expected a log gap error, got {other:?}"),
    }
}

#[test]
fn recovery_reports_replay_progress() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        db.batch(vec![Op::put("a", "1"), Op::put("b", "2")])
            .unwrap();
        db.put(b"c", b"3").unwrap();
    }
    let mut reports = Vec::new();
    let db = Db::open_with_progress(dir.path(), small(), &mut |p| reports.push(p)).unwrap();
    assert_eq!(db.revision().unwrap(), 2);
    let last = reports.last().unwrap();
    assert_eq!((last.records, last.lsn, last.end_lsn), (2, 2, 3));
}

#[test]
fn the_data_quota_refuses_puts_but_not_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        data_bytes_max: 1000,
        ..small()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..9u8 {
        db.put(&[i], &[0; 99]).unwrap();
    }
    assert!(matches!(
        db.put(b"x", &[0; 200]),
        Err(DbError::StoreFull {
            used: 900,
            needed: 201,
            max: 1000
        })
    ));
    // Puts nested in a transaction count too.
    let nested = Txn::batch(vec![Op::Txn(Txn::batch(vec![Op::put("y", vec![0; 200])]))]);
    assert!(matches!(
        db.txn(nested),
        Err(DbError::StoreFull { needed: 201, .. })
    ));
    assert!(db.delete(&[0]).unwrap());
    db.put(b"x", &[0; 150]).unwrap();
}

#[test]
fn corrupt_checkpoints_with_higher_indexes_are_quarantined_not_retained() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        for i in 0..50u8 {
            db.put(&[i], &[i; 100]).unwrap();
        }
        db.checkpoint().unwrap().unwrap();
    }
    // Two damaged files that sort after every real checkpoint.
    let ckpt = dir.path().join("checkpoints");
    for index in [u64::MAX - 1, u64::MAX] {
        fs::write(
            ckpt.join(format!("checkpoint-{index:020}.ckpt")),
            b"garbage",
        )
        .unwrap();
    }
    {
        let db = Db::open(dir.path(), small()).unwrap();
        assert_eq!(db.recovery().skipped_checkpoints.len(), 2);
        // Retention keeps two checkpoints and purges the log below the older: had the
        // garbage files counted, the only good checkpoint would have been deleted.
        for round in 0..3u8 {
            for i in 0..50u8 {
                db.put(&[i], &[round; 100]).unwrap();
            }
            db.checkpoint().unwrap().unwrap();
        }
    }
    let db = Db::open(dir.path(), small()).unwrap();
    assert!(db.recovery().skipped_checkpoints.is_empty());
    assert_eq!(db.revision().unwrap(), 200);
    assert_eq!(db.get(&[7]).unwrap().unwrap().value, vec![2; 100]);
    let corrupt = fs::read_dir(&ckpt)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".corrupt")
        })
        .count();
    assert_eq!(corrupt, 2);
}

#[test]
fn a_second_open_of_the_same_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    db.put(b"k", b"v").unwrap();
    assert!(matches!(
        Db::open(dir.path(), small()),
        Err(DbError::Wal(keel_wal::Error::Locked { .. }))
    ));
    assert_eq!(db.get(b"k").unwrap().unwrap().value, b"v");
}

#[test]
fn a_failed_checkpoint_does_not_stop_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    db.put(b"a", b"1").unwrap();
    let blocker = dir
        .path()
        .join("checkpoints")
        .join(format!("checkpoint-{:020}.ckpt", 1));
    fs::create_dir(&blocker).unwrap();
    assert!(matches!(db.checkpoint(), Err(DbError::Checkpoint(_))));
    db.put(b"b", b"2").unwrap();
    fs::remove_dir(&blocker).unwrap();
    assert_eq!(db.checkpoint().unwrap().unwrap().index, 2);
    drop(db);
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.get(b"b").unwrap().unwrap().value, b"2");
}

#[test]
fn checkpoints_taken_while_writers_run_recover_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), small()).unwrap());
    let writers: Vec<_> = (0..4u8)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..150u8 {
                    db.put(&[t, i % 40], &[i; 50]).unwrap();
                    if i % 7 == 0 {
                        db.delete(&[t, (i + 3) % 40]).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut checkpoints = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        if db.checkpoint().unwrap().is_some() {
            checkpoints += 1;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(checkpoints > 0);
    let all = |db: &Db| {
        db.range(&RangeRequest {
            start: vec![0],
            end: RangeEnd::Unbounded,
            limit: 0,
            keys_only: false,
            count_only: false,
            filter: Default::default(),
            sort: None,
            revision: 0,
        })
        .unwrap()
    };
    let before = all(&db);
    let db = Arc::try_unwrap(db).unwrap();
    db.close();
    let db = Db::open(dir.path(), small()).unwrap();
    assert!(db.recovery().checkpoint_index.is_some());
    assert_eq!(all(&db), before);
}

#[test]
fn db_runs_on_the_in_memory_log_with_injected_failures() {
    let dir = tempfile::tempdir().unwrap();
    let log = keel_engine::MemLog::new(8);
    let db = Db::open_on(dir.path(), small(), log.clone(), &mut |_| {}).unwrap();
    for i in 0..20u8 {
        db.put(&[i], &[i; 10]).unwrap();
    }
    db.checkpoint().unwrap().unwrap();
    db.put(b"after", b"checkpoint").unwrap();
    log.set_fail_appends(true);
    assert!(db.put(b"lost", b"x").is_err());
    assert!(matches!(db.get(&[1]), Err(DbError::Poisoned { .. })));
    drop(db);
    log.set_fail_appends(false);
    let db = Db::open_on(dir.path(), small(), log.clone(), &mut |_| {}).unwrap();
    assert_eq!(db.recovery().checkpoint_index, Some(20));
    assert_eq!(db.recovery().replayed_records, 1);
    assert_eq!(db.revision().unwrap(), 21);
    assert!(db.get(b"lost").unwrap().is_none());
    assert_eq!(db.get(&[19]).unwrap().unwrap().value, vec![19; 10]);
}

#[test]
fn a_poisoned_store_stops_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let log = keel_engine::MemLog::new(8);
    let opts = DbOptions {
        checkpoint_log_bytes: 1,
        background_checkpoints: true,
        ..small()
    };
    let db = Db::open_on(dir.path(), opts, log.clone(), &mut |_| {}).unwrap();
    // Hold the checkpoint thread inside its first checkpoint (in the purge that ends it),
    // so that the next write leaves a checkpoint due.
    log.set_hold_purges(true);
    db.put(b"a", b"1").unwrap();
    while log.held_purges() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    db.put(b"b", b"2").unwrap();
    log.set_fail_appends(true);
    assert!(db.put(b"c", b"3").is_err());
    log.set_hold_purges(false);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let failed = db.stats().checkpoints_failed;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        db.stats().checkpoints_failed <= 1 && db.stats().checkpoints_failed == failed,
        "checkpoint attempts after poisoning: {failed} then {}",
        db.stats().checkpoints_failed
    );
}

/// Rewrites the format version of a checkpoint file (with a valid header checksum), as a
/// newer build would have written it.
fn set_checkpoint_version(path: &std::path::Path, version: u32) {
    let mut b = fs::read(path).unwrap();
    b[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b[0..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, b).unwrap();
}

#[test]
fn a_checkpoint_of_a_newer_version_is_an_error_naming_it_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        for round in 0..3u8 {
            for i in 0..20u8 {
                db.put(&[i], &[round; 100]).unwrap();
            }
            db.checkpoint().unwrap().unwrap();
        }
    }
    let ckpt = dir.path().join("checkpoints");
    let newest = fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    set_checkpoint_version(&newest, 3);
    let err = Db::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(
            &err,
            DbError::Checkpoint(keel_engine::CheckpointError::UnsupportedVersion { path, found: 3 })
                if path == &newest
        ),
        "{err}"
    );
    assert!(newest.exists(), "the newer checkpoint was moved");
    // Once a build that reads it is back (here: the version set to 1, which a file with an
    // empty app state is byte for byte), nothing was lost: version-1 files are still read.
    set_checkpoint_version(&newest, 1);
    let db = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.get(&[3]).unwrap().unwrap().value, vec![2; 100]);
}

#[test]
fn a_checkpoint_that_cannot_be_read_is_an_error_naming_it_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small()).unwrap();
        db.put(b"a", b"1").unwrap();
        db.checkpoint().unwrap().unwrap();
    }
    // A directory where a checkpoint file should be: opening it fails with an I/O error,
    // which says nothing about the checkpoint's contents.
    let odd = dir
        .path()
        .join("checkpoints")
        .join(format!("checkpoint-{:020}.ckpt", 5));
    fs::create_dir(&odd).unwrap();
    let err = Db::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(
            &err,
            DbError::Checkpoint(keel_engine::CheckpointError::Io { path, .. }) if path == &odd
        ),
        "{err}"
    );
    assert!(odd.is_dir(), "the unreadable checkpoint was moved");
}

#[test]
fn reads_at_older_revisions_work_until_a_checkpoint_restart_compacts_them() {
    let dir = tempfile::tempdir().unwrap();
    let at = |db: &Db, rev| {
        db.range(&RangeRequest::key("a").at_revision(rev))
            .map(|r| r.kvs.first().map(|kv| kv.value.clone()))
    };
    {
        let db = Db::open(dir.path(), small()).unwrap();
        db.put(b"a", b"1").unwrap();
        db.put(b"a", b"2").unwrap();
        assert!(db.delete(b"a").unwrap());
        assert_eq!(at(&db, 1).unwrap(), Some(b"1".to_vec()));
        assert_eq!(at(&db, 2).unwrap(), Some(b"2".to_vec()));
        assert_eq!(at(&db, 3).unwrap(), None);
        assert!(matches!(
            at(&db, 4),
            Err(DbError::Kv(KvError::FutureRevision {
                requested: 4,
                current: 3
            }))
        ));
    }
    {
        // Without a checkpoint, recovery replays the whole log and so the whole history.
        let db = Db::open(dir.path(), small()).unwrap();
        assert_eq!(at(&db, 1).unwrap(), Some(b"1".to_vec()));
        db.checkpoint().unwrap().unwrap();
        db.put(b"a", b"4").unwrap();
    }
    // Recovery from the checkpoint at revision 3 keeps history from there on only.
    let db = Db::open(dir.path(), small()).unwrap();
    assert!(matches!(
        at(&db, 2),
        Err(DbError::Kv(KvError::Compacted {
            requested: 2,
            compacted: 3
        }))
    ));
    assert_eq!(at(&db, 3).unwrap(), None);
    assert_eq!(at(&db, 4).unwrap(), Some(b"4".to_vec()));
}
