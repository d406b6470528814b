//! Checkpoint files: round trips, lookups and scans through the map, and every kind of damage
//! (each flipped byte, each truncation) detected and skipped in favour of an older checkpoint.

use std::fs;

use keel_engine::checkpoint::write_checkpoint;
use keel_engine::{CheckpointDir, CheckpointError, CheckpointReader, KvLimits, Memtable, Op, Txn};
use proptest::prelude::*;

fn store(pairs: &[(Vec<u8>, Vec<u8>)], applied: u64) -> Memtable {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    for (k, v) in pairs {
        m.put(k, v).unwrap();
    }
    m.set_applied_index(applied);
    m
}

fn contents(m: &Memtable) -> Vec<(Vec<u8>, Vec<u8>, keel_engine::KeyMeta)> {
    m.iter()
        .map(|(k, v, meta)| (k.to_vec(), v.to_vec(), meta))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_get_and_scan(
        pairs in prop::collection::vec(
            (prop::collection::vec(1u8..5, 1..5), prop::collection::vec(any::<u8>(), 0..20)),
            0..40),
        probe in prop::collection::vec(1u8..5, 1..5),
        end in prop::collection::vec(1u8..5, 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let m = store(&pairs, 77);
        let path = dir.path().join("c.ckpt");
        let meta = write_checkpoint(&path, &m, 3, b"conf").unwrap();
        let r = CheckpointReader::open(&path).unwrap();
        prop_assert_eq!(r.meta(), &meta);
        prop_assert_eq!((meta.index, meta.term, meta.revision), (77, 3, m.revision()));
        prop_assert_eq!(&meta.conf_state, b"conf");
        let back = r.to_memtable(KvLimits::default()).unwrap();
        prop_assert_eq!(contents(&back), contents(&m));
        prop_assert_eq!(back.revision(), m.revision());
        prop_assert_eq!(back.applied_index(), 77);
        prop_assert_eq!(r.get(&probe).unwrap().map(|e| e.value.to_vec()), m.get(&probe).map(|kv| kv.value));
        let scanned: Vec<Vec<u8>> = r.scan(&probe, Some(&end)).map(|e| e.unwrap().key.to_vec()).collect();
        let want: Vec<Vec<u8>> = m.iter().map(|(k, ..)| k.to_vec())
            .filter(|k| k.as_slice() >= probe.as_slice() && k.as_slice() < end.as_slice()).collect();
        prop_assert_eq!(scanned, want);
    }
}

#[test]
fn every_flipped_byte_and_every_truncation_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<_> = (0..5u8).map(|i| (vec![b'k', i], vec![i; 3])).collect();
    let m = store(&pairs, 9);
    let good = dir.path().join("good.ckpt");
    write_checkpoint(&good, &m, 1, b"cs").unwrap();
    let bytes = fs::read(&good).unwrap();
    let bad = dir.path().join("bad.ckpt");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        fs::write(&bad, &b).unwrap();
        assert!(
            CheckpointReader::open(&bad).is_err(),
            "flip at byte {i} went unnoticed"
        );
        assert!(CheckpointReader::from_bytes(b).is_err());
    }
    for len in 0..bytes.len() {
        fs::write(&bad, &bytes[..len]).unwrap();
        match CheckpointReader::open(&bad) {
            Err(CheckpointError::Corruption { .. }) => {}
            other => panic!("truncation to {len} bytes gave {other:?}"),
        }
    }
}

#[test]
fn newest_valid_skips_and_reports_a_corrupt_newest() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CheckpointDir::open(dir.path()).unwrap();
    let mut m = store(&[(b"a".to_vec(), b"1".to_vec())], 10);
    cd.write(&m, 1, b"").unwrap();
    m.txn(&Txn::batch(vec![Op::put("b", "2")])).unwrap();
    m.set_applied_index(20);
    let (newest, _) = cd.write(&m, 1, b"").unwrap();
    // A crash mid-write leaves a temporary file; opening the directory removes it.
    fs::write(cd.path_for(30).with_extension("ckpt.tmp"), b"partial").unwrap();
    let cd = CheckpointDir::open(dir.path()).unwrap();
    assert_eq!(cd.list().unwrap().len(), 2);

    let (r, skipped) = cd.newest_valid().unwrap();
    assert_eq!(r.unwrap().meta().index, 20);
    assert!(skipped.is_empty());

    // Tear the newest file: recovery must fall back to index 10 and say why.
    let len = fs::metadata(&newest).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let (r, skipped) = cd.newest_valid().unwrap();
    let r = r.unwrap();
    assert_eq!(r.meta().index, 10);
    assert_eq!(r.to_memtable(KvLimits::default()).unwrap().len(), 1);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].path, newest);

    cd.retain(1).unwrap();
    assert_eq!(cd.list().unwrap().len(), 1);
    assert_eq!(cd.list().unwrap()[0].0, 20);
}

#[test]
fn install_verifies_received_bytes() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let m = store(&[(b"x".to_vec(), b"y".to_vec())], 5);
    let (path, _) = CheckpointDir::open(src.path())
        .unwrap()
        .write(&m, 2, b"c")
        .unwrap();
    let bytes = fs::read(path).unwrap();
    let cd = CheckpointDir::open(dst.path()).unwrap();
    let mut broken = bytes.clone();
    broken[70] ^= 1;
    assert!(cd.install(broken).is_err());
    assert!(cd.list().unwrap().is_empty());
    let r = cd.install(bytes).unwrap();
    assert_eq!(r.get(b"x").unwrap().unwrap().value, b"y");
    assert!(r.entry(1).is_err(), "out of range is an error, not a panic");
    assert_eq!(cd.list().unwrap()[0].0, 5);
}

#[test]
fn restore_enforces_the_limits_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let m = store(&[(b"a".to_vec(), vec![0; 100])], 1);
    let path = dir.path().join("c.ckpt");
    write_checkpoint(&path, &m, 0, b"").unwrap();
    let small = KvLimits {
        value_bytes_max: 10,
        ..KvLimits::default()
    };
    let r = CheckpointReader::open(&path).unwrap();
    assert!(matches!(
        r.to_memtable(small),
        Err(CheckpointError::Restore { .. })
    ));
}

#[test]
fn a_failed_publish_reports_the_error_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CheckpointDir::open(dir.path()).unwrap();
    let m = store(&[(b"a".to_vec(), b"1".to_vec())], 3);
    // A directory where the checkpoint should go makes the rename fail.
    fs::create_dir(cd.path_for(3)).unwrap();
    match cd.write(&m, 1, b"") {
        Err(CheckpointError::Io { op: "rename", .. }) => {}
        other => panic!("expected a rename error, got {other:?}"),
    }
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, with or without a valid header in front, never verify by accident
    /// and never panic the reader.
    #[test]
    fn garbage_never_verifies(tail in prop::collection::vec(any::<u8>(), 0..300), with_header in any::<bool>()) {
        let mut bytes = Vec::new();
        if with_header {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.ckpt");
            write_checkpoint(&path, &store(&[(b"k".to_vec(), b"v".to_vec())], 1), 1, b"").unwrap();
            bytes = fs::read(&path).unwrap();
            bytes.truncate(64);
        }
        bytes.extend_from_slice(&tail);
        prop_assert!(CheckpointReader::from_bytes(bytes).is_err());
    }
}

#[test]
fn the_app_state_round_trips_and_a_version_1_file_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<_> = (0..5u8).map(|i| (vec![b'k', i], vec![i; 3])).collect();
    let m = store(&pairs, 9);
    let ckpts = CheckpointDir::open(dir.path()).unwrap();
    let header = keel_engine::CheckpointMeta {
        index: 9,
        term: 2,
        revision: m.revision(),
        entry_count: 0,
        conf_state: b"conf".to_vec(),
        app_state: b"sessions".to_vec(),
    };
    let (path, meta) = ckpts
        .write_with(header, &mut |sink| {
            for (k, v, meta) in m.iter() {
                sink.push(k, v, meta)?;
            }
            Ok(())
        })
        .unwrap();
    let r = CheckpointReader::open(&path).unwrap();
    assert_eq!(r.meta(), &meta);
    assert_eq!(
        (
            r.meta().conf_state.as_slice(),
            r.meta().app_state.as_slice()
        ),
        (b"conf".as_slice(), b"sessions".as_slice())
    );
    assert_eq!(
        contents(&r.to_memtable(KvLimits::default()).unwrap()),
        contents(&m)
    );
    let patch = |b: &mut Vec<u8>, version: u32| {
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
    };
    // Marked version 1, a file with an app state is corrupt (bytes 52..56 were reserved).
    let mut bytes = fs::read(&path).unwrap();
    patch(&mut bytes, 1);
    assert!(matches!(
        CheckpointReader::from_bytes(bytes),
        Err(CheckpointError::Corruption { offset: 52, .. })
    ));
    // A version-1 file (no app state; otherwise the same layout) is read.
    let v1 = dir.path().join("v1.ckpt");
    write_checkpoint(&v1, &m, 2, b"conf").unwrap();
    let mut bytes = fs::read(&v1).unwrap();
    patch(&mut bytes, 1);
    let r = CheckpointReader::from_bytes(bytes).unwrap();
    assert_eq!((r.meta().index, r.meta().app_state.len()), (9, 0));
    assert_eq!(
        contents(&r.to_memtable(KvLimits::default()).unwrap()),
        contents(&m)
    );
}

#[test]
fn an_install_during_a_write_of_the_same_index_leaves_both_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CheckpointDir::open(dir.path()).unwrap();
    let m = store(&[(b"a".to_vec(), b"1".to_vec())], 9);
    let other = tempfile::tempdir().unwrap();
    let received = fs::read(cd_write_elsewhere(other.path(), &m)).unwrap();
    let header = keel_engine::checkpoint::CheckpointMeta {
        index: 9,
        term: 1,
        revision: m.revision(),
        entry_count: 0,
        conf_state: Vec::new(),
        app_state: Vec::new(),
    };
    // While the local write of index 9 is half done, a received checkpoint of index 9 is
    // installed: each writes through a temporary file of its own.
    let written = cd.write_with(header, &mut |sink| {
        sink.push(b"a", b"1", m.iter().next().unwrap().2)?;
        cd.install(received.clone()).expect("the install succeeds");
        Ok(())
    });
    let (path, _) = written.expect("the write succeeds");
    CheckpointReader::open(&path).expect("the published file verifies");
    // A leftover temporary file (as a crash leaves one) is still removed at open.
    let leftover = format!("{}.123-4.tmp", path.display());
    fs::write(&leftover, b"partial").unwrap();
    CheckpointDir::open(dir.path()).unwrap();
    assert!(!std::path::Path::new(&leftover).exists());
}

fn cd_write_elsewhere(dir: &std::path::Path, m: &Memtable) -> std::path::PathBuf {
    CheckpointDir::open(dir)
        .unwrap()
        .write(m, 1, b"")
        .unwrap()
        .0
}

#[test]
fn retention_keeps_the_protected_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CheckpointDir::open(dir.path()).unwrap();
    for index in [3, 5, 7, 9] {
        cd.write(&store(&[(b"a".to_vec(), b"1".to_vec())], index), 1, b"")
            .unwrap();
    }
    cd.retain_keeping(2, &[3]).unwrap();
    let left: Vec<u64> = cd.list().unwrap().into_iter().map(|(i, _)| i).collect();
    assert_eq!(left, vec![3, 7, 9]);
    cd.retain(2).unwrap();
    let left: Vec<u64> = cd.list().unwrap().into_iter().map(|(i, _)| i).collect();
    assert_eq!(left, vec![7, 9]);
}
