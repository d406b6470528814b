//! The multi-group log store against a simple per-group model, with compaction, snapshots,
//! segment purge, lagging-group rewrites and restarts (recovery from the log) in between.

// Test data is small; truncating casts cannot lose anything here.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use keel_engine::ReplayProgress;
use keel_engine::log_store::MaintenanceReport;
use keel_engine::{
    AsyncLogBackend, Entry, HardState, LogBackend, LogStore, LogStoreError, LogStoreOptions,
    MemLog, SnapshotMeta, WriteBatch,
};
use keel_wal::{Wal, WalOptions};
use proptest::prelude::*;

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

#[derive(Clone, Debug, Default)]
struct GroupModel {
    compacted: (u64, u64),
    entries: Vec<Entry>,
    hs: HardState,
    snapshot: Option<SnapshotMeta>,
}

impl GroupModel {
    fn first(&self) -> u64 {
        self.compacted.0 + 1
    }
    fn last(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }
    fn append(&mut self, es: &[Entry]) {
        let es: Vec<_> = es
            .iter()
            .filter(|e| e.index >= self.first())
            .cloned()
            .collect();
        if let Some(h) = es.first() {
            self.entries.truncate((h.index - self.first()) as usize);
            self.entries.extend(es);
        }
    }
}

#[derive(Clone, Debug)]
enum GroupOp {
    /// Append `n` entries starting `back` before last+1, with term bumped by `bump`.
    Append {
        back: u64,
        n: u64,
        bump: u64,
    },
    HardState(u64),
    ApplySnapshot {
        ahead: u64,
    },
    SetSnapshot,
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<(u64, GroupOp)>),
    Pipeline(Vec<Vec<(u64, GroupOp)>>),
    Compact { group: u64, keep: u64 },
    Remove(u64),
    Maintain,
    Restart,
}

fn group_op() -> impl Strategy<Value = GroupOp> {
    prop_oneof![
        6 => (0u64..3, 1u64..4, 0u64..2).prop_map(|(back, n, bump)| GroupOp::Append { back, n, bump }),
        2 => (0u64..100).prop_map(GroupOp::HardState),
        1 => (0u64..3).prop_map(|ahead| GroupOp::ApplySnapshot { ahead }),
        1 => Just(GroupOp::SetSnapshot),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec((0u64..4, group_op()), 1..4).prop_map(Step::Batch),
        2 => prop::collection::vec(prop::collection::vec((0u64..4, group_op()), 1..3), 1..4)
            .prop_map(Step::Pipeline),
        2 => (0u64..4, 0u64..3).prop_map(|(group, keep)| Step::Compact { group, keep }),
        1 => (0u64..4).prop_map(Step::Remove),
        1 => Just(Step::Maintain),
        1 => Just(Step::Restart),
    ]
}

fn options() -> LogStoreOptions {
    LogStoreOptions {
        cache_bytes_max: 40,
        cache_entries_max: 8,
        segments_live_max: 3,
        ..LogStoreOptions::default()
    }
}

fn open(log: &MemLog) -> LogStore<MemLog> {
    LogStore::open(log.clone(), options(), &mut |_| {}).expect("recovery")
}

fn check<B: LogBackend>(store: &LogStore<B>, model: &BTreeMap<u64, GroupModel>) {
    for (&g, m) in model {
        assert_eq!(store.first_index(g), m.first(), "group {g} first");
        assert_eq!(store.last_index(g), m.last(), "group {g} last");
        assert_eq!(store.hard_state(g), m.hs, "group {g} hard state");
        assert_eq!(store.snapshot(g), m.snapshot.as_ref(), "group {g} snapshot");
        assert_eq!(store.term(g, m.compacted.0).unwrap(), m.compacted.1);
        for e in &m.entries {
            assert_eq!(store.term(g, e.index).unwrap(), e.term);
        }
        let got = store.entries(g, m.first(), m.last() + 1, u64::MAX).unwrap();
        assert_eq!(got, m.entries, "group {g} entries");
        if m.compacted.0 > 0 {
            assert!(matches!(
                store.entries(g, m.compacted.0, m.last() + 1, u64::MAX),
                Err(LogStoreError::Compacted { .. })
            ));
        }
        assert!(matches!(
            store.entries(g, m.first(), m.last() + 2, u64::MAX),
            Err(LogStoreError::Unavailable { .. })
        ));
    }
}

/// Builds a batch from generated operations and applies them to the model as it goes.
fn build_batch(
    model: &mut BTreeMap<u64, GroupModel>,
    ops: Vec<(u64, GroupOp)>,
    payload: &mut u32,
) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for (g, op) in ops {
        let m = model.entry(g).or_default();
        match op {
            GroupOp::Append { back, n, bump } => {
                let start = (m.last() + 1).saturating_sub(back).max(1);
                let base = m.entries.last().map_or(m.compacted.1, |e| e.term) + bump;
                let es: Vec<Entry> = (0..n)
                    .map(|i| {
                        *payload += 1;
                        Entry {
                            index: start + i,
                            term: base,
                            data: payload.to_le_bytes().repeat(1 + (*payload % 3) as usize),
                        }
                    })
                    .collect();
                m.append(&es);
                batch.append(g, es);
            }
            GroupOp::HardState(c) => {
                let hs = HardState {
                    term: c / 10,
                    vote: c % 3,
                    commit: c,
                };
                m.hs = hs;
                batch.set_hard_state(g, hs);
            }
            GroupOp::ApplySnapshot { ahead } => {
                let index = m.last() + ahead;
                if m.snapshot.as_ref().is_some_and(|s| s.index >= index) {
                    continue;
                }
                let meta = SnapshotMeta {
                    index,
                    term: 50,
                    conf_state: vec![1, 2],
                };
                m.entries.clear();
                m.compacted = (index, 50);
                m.snapshot = Some(meta.clone());
                batch.apply_snapshot(g, meta);
            }
            GroupOp::SetSnapshot => {
                let index = m.compacted.0;
                if m.snapshot.as_ref().is_some_and(|s| s.index > index) {
                    continue;
                }
                let meta = SnapshotMeta {
                    index,
                    term: m.compacted.1,
                    conf_state: vec![],
                };
                m.snapshot = Some(meta.clone());
                batch.set_snapshot(g, meta);
            }
        }
    }
    batch
}

/// Runs `steps` against a store; `reopen` drops the store it is given (if any) and opens a
/// new one over the same log, which is how a restart is simulated.
fn run_model<B: AsyncLogBackend>(
    steps: Vec<Step>,
    mut reopen: impl FnMut(Option<LogStore<B>>) -> LogStore<B>,
) -> Result<(), TestCaseError> {
    let mut store = reopen(None);
    let mut model: BTreeMap<u64, GroupModel> = BTreeMap::new();
    let mut payload = 0u32;
    for s in steps {
        match s {
            Step::Batch(ops) => {
                let mut next = model.clone();
                let batch = build_batch(&mut next, ops, &mut payload);
                store.write(batch).unwrap();
                model = next;
            }
            Step::Pipeline(batches) => {
                // Stage several rounds before any is durable, then wait for them, as an
                // async storage pipeline does.
                let mut staged = Vec::new();
                for ops in batches {
                    let batch = build_batch(&mut model, ops, &mut payload);
                    staged.push(store.stage(batch).unwrap());
                }
                for t in staged {
                    prop_assert_eq!(block_on(store.durable()).unwrap(), t);
                }
            }
            Step::Compact { group, keep } => {
                let Some(m) = model.get_mut(&group) else {
                    continue;
                };
                let to = m.last().saturating_sub(keep);
                if to <= m.compacted.0 {
                    prop_assert!(
                        matches!(
                            store.compact(group, to),
                            Err(LogStoreError::Compacted { .. })
                        ),
                        "compact below the compaction point must fail"
                    );
                    continue;
                }
                store.compact(group, to).unwrap();
                let n = (to - m.compacted.0) as usize;
                m.compacted = (to, m.entries[n - 1].term);
                m.entries.drain(..n);
            }
            Step::Remove(group) => {
                store.remove_group(group).unwrap();
                // A removed group reads as a new one.
                model.insert(group, GroupModel::default());
            }
            Step::Maintain => {
                let MaintenanceReport { segments_after, .. } = store.maintain().unwrap();
                // After a rewrite nothing older than the newest `segments_live_max`
                // segments is pinned, so at most that many plus the rewrite's own remain.
                prop_assert!(segments_after <= options().segments_live_max + 2 + model.len());
            }
            Step::Restart => {
                store = reopen(Some(store));
            }
        }
        check(&store, &model);
    }
    // A final restart after everything must give the same state.
    let store = reopen(Some(store));
    check(&store, &model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn log_store_matches_model(steps in prop::collection::vec(step(), 1..50)) {
        let log = MemLog::new(4);
        run_model(steps, |old| {
            drop(old);
            open(&log)
        })?;
    }
}

/// WAL options with the smallest segments, so that a few steps roll, purge and rewrite.
fn tiny_wal() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        record_bytes_max: 4 * 1024,
        batch_bytes_max: 60 * 1024,
        ..WalOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The same model over the real write-ahead log, reopened from disk at every restart.
    #[test]
    fn log_store_over_the_wal_matches_model(
        steps in prop::collection::vec(step(), 1..40),
        filler in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogStoreOptions { batch_bytes_max: 50 * 1024, entry_bytes_max: 4000, ..options() };
        let mut first = true;
        run_model(steps, |old| {
            drop(old);
            let wal = Arc::new(Wal::open(dir.path(), tiny_wal()).unwrap());
            let mut store = LogStore::open(wal, opts.clone(), &mut |_| {}).unwrap();
            // Pad the log with a filler group so that segments roll now and then.
            if first {
                first = false;
                for i in 0..filler as u64 * 20 {
                    let mut b = WriteBatch::new();
                    b.append(99, vec![Entry { index: i + 1, term: 1, data: vec![0; 3000] }]);
                    store.write(b).unwrap();
                }
                if filler > 0 {
                    store.compact(99, filler as u64 * 20).unwrap();
                }
            }
            store
        })?;
    }
}

fn entries(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
    range
        .map(|index| Entry {
            index,
            term,
            data: vec![index as u8; 10],
        })
        .collect()
}

#[test]
fn conflicting_suffix_is_truncated_across_restart() {
    let log = MemLog::new(100);
    let mut s = open(&log);
    let mut b = WriteBatch::new();
    b.append(1, entries(1..6, 1)).append(2, entries(1..3, 1));
    s.write(b).unwrap();
    let mut b = WriteBatch::new();
    b.append(1, entries(3..5, 2));
    s.write(b).unwrap();
    assert_eq!(s.last_index(1), 4);
    assert_eq!(s.term(1, 2).unwrap(), 1);
    assert_eq!(s.term(1, 3).unwrap(), 2);
    drop(s);
    let s = open(&log);
    assert_eq!(s.last_index(1), 4);
    assert_eq!(s.term(1, 4).unwrap(), 2);
    assert_eq!(s.last_index(2), 2);
}

#[test]
fn invalid_batches_write_nothing() {
    let log = MemLog::new(100);
    let mut s = open(&log);
    let mut b = WriteBatch::new();
    b.append(1, entries(1..3, 1));
    s.write(b).unwrap();
    let before = log.len();
    // One good group and one gap: the whole batch is rejected.
    let mut b = WriteBatch::new();
    b.append(2, entries(1..3, 1)).append(1, entries(5..6, 1));
    assert!(matches!(
        s.write(b),
        Err(LogStoreError::Gap {
            group: 1,
            index: 5,
            last_index: 2
        })
    ));
    let mut b = WriteBatch::new();
    b.append(
        1,
        vec![
            Entry {
                index: 3,
                term: 1,
                data: vec![],
            },
            Entry {
                index: 5,
                term: 1,
                data: vec![],
            },
        ],
    );
    assert!(matches!(
        s.write(b),
        Err(LogStoreError::NotContiguous { .. })
    ));
    assert_eq!(log.len(), before);
    assert_eq!(s.last_index(2), 0);
}

#[test]
fn entries_respect_max_bytes_and_read_through_the_log() {
    let log = MemLog::new(100);
    let mut s = LogStore::open(
        log,
        LogStoreOptions {
            cache_bytes_max: 0,
            ..options()
        },
        &mut |_| {},
    )
    .unwrap();
    let mut b = WriteBatch::new();
    b.append(7, entries(1..11, 3));
    s.write(b).unwrap();
    assert_eq!(s.cache_bytes(), 0);
    assert_eq!(s.entries(7, 1, 11, 25).unwrap().len(), 2);
    assert_eq!(
        s.entries(7, 1, 11, 0).unwrap().len(),
        1,
        "at least one entry"
    );
    assert_eq!(s.entries(7, 4, 11, u64::MAX).unwrap(), entries(4..11, 3));
}

#[test]
fn a_lagging_group_is_rewritten_so_segments_are_purged() {
    let log = MemLog::new(8);
    let mut s = open(&log);
    // Group 1 writes two entries and then goes quiet; group 2 keeps writing and compacting.
    let mut b = WriteBatch::new();
    b.append(1, entries(1..3, 1)).set_hard_state(
        1,
        HardState {
            term: 1,
            vote: 1,
            commit: 2,
        },
    );
    s.write(b).unwrap();
    for i in 1..200u64 {
        let mut b = WriteBatch::new();
        b.append(2, entries(i..i + 1, 1));
        s.write(b).unwrap();
        if i % 10 == 0 {
            s.compact(2, i - 1).unwrap();
        }
    }
    s.purge().unwrap();
    assert!(log.segments().len() > 20, "group 1 pins the first segment");
    let stats = s.stats();
    assert_eq!(
        (stats.groups, stats.pinned_lsn),
        (2, 1),
        "group 1 pins the first record"
    );
    let report = s.maintain().unwrap();
    assert_eq!(report.rewritten, vec![(1, 2)]);
    assert!(s.stats().pinned_lsn > 1);
    assert!(
        report.segments_after <= options().segments_live_max + 1,
        "{report:?}"
    );
    drop(s);
    let s = open(&log);
    assert_eq!(s.entries(1, 1, 3, u64::MAX).unwrap(), entries(1..3, 1));
    assert_eq!(s.hard_state(1).commit, 2);
    assert_eq!(s.last_index(2), 199);
}

#[test]
fn a_failed_append_poisons_and_recovery_reports_progress() {
    let log = MemLog::new(100);
    let mut s = open(&log);
    for i in 1..=10 {
        let mut b = WriteBatch::new();
        b.append(1, entries(i..i + 1, 1));
        s.write(b).unwrap();
    }
    log.set_fail_appends(true);
    let mut b = WriteBatch::new();
    b.append(1, entries(11..12, 1));
    assert!(matches!(s.write(b.clone()), Err(LogStoreError::Log { .. })));
    log.set_fail_appends(false);
    assert!(matches!(s.write(b), Err(LogStoreError::Poisoned { .. })));
    drop(s);
    let mut seen: Vec<ReplayProgress> = Vec::new();
    let opts = LogStoreOptions {
        progress_records_interval: 4,
        ..options()
    };
    let s = LogStore::open(log.clone(), opts, &mut |p| seen.push(p)).unwrap();
    assert_eq!(s.last_index(1), 10);
    assert_eq!(
        seen.iter().map(|p| p.records).collect::<Vec<_>>(),
        vec![4, 8, 10]
    );
}

#[test]
fn a_corrupt_record_is_reported_with_its_lsn() {
    let mut log = MemLog::new(100);
    let mut s = open(&log);
    let mut b = WriteBatch::new();
    b.append(1, entries(1..3, 1));
    s.write(b).unwrap();
    drop(s);
    log.append(&[&[9, 9, 9]]).unwrap();
    match LogStore::open(log.clone(), options(), &mut |_| {}) {
        Err(LogStoreError::Corruption { lsn: 3, .. }) => {}
        other => panic!("expected corruption at lsn 3, got {other:?}"),
    }
}

#[test]
fn a_lagging_group_is_rewritten_over_the_wal_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogStoreOptions {
        batch_bytes_max: 50 * 1024,
        entry_bytes_max: 4000,
        ..options()
    };
    let open_wal = || {
        let wal = Wal::open(dir.path(), tiny_wal()).unwrap();
        LogStore::open(wal, opts.clone(), &mut |_| {}).unwrap()
    };
    let mut s = open_wal();
    let mut b = WriteBatch::new();
    b.append(1, entries(1..4, 1)).set_hard_state(
        1,
        HardState {
            term: 1,
            vote: 2,
            commit: 3,
        },
    );
    s.write(b).unwrap();
    // Group 2 writes ~600 KiB and compacts as it goes; group 1 stays idle and pins segment 0.
    for i in 1..200u64 {
        let mut b = WriteBatch::new();
        b.append(
            2,
            vec![Entry {
                index: i,
                term: 1,
                data: vec![1; 3000],
            }],
        );
        s.write(b).unwrap();
        if i % 20 == 0 {
            s.compact(2, i - 5).unwrap();
            // Truncate a conflicting suffix now and then, as a new leader would.
            let mut b = WriteBatch::new();
            b.append(
                2,
                vec![Entry {
                    index: i,
                    term: 2,
                    data: vec![2; 3000],
                }],
            );
            s.write(b).unwrap();
        }
    }
    s.purge().unwrap();
    let before = s.log().segments().len();
    assert!(before > 8, "group 1 should pin old segments, got {before}");
    let report = s.maintain().unwrap();
    assert_eq!(report.rewritten, vec![(1, 3)]);
    assert!(
        report.segments_after <= options().segments_live_max + 1,
        "{report:?}"
    );
    drop(s);
    let s = open_wal();
    assert_eq!(s.entries(1, 1, 4, u64::MAX).unwrap(), entries(1..4, 1));
    assert_eq!(
        s.hard_state(1),
        HardState {
            term: 1,
            vote: 2,
            commit: 3
        }
    );
    assert_eq!(s.last_index(2), 199);
    assert_eq!(s.term(2, 180).unwrap(), 2);
    assert_eq!(s.first_index(2), 176);
}

#[test]
fn a_lagging_group_too_large_to_rewrite_is_reported_for_compaction() {
    let log = MemLog::new(4);
    let opts = LogStoreOptions {
        batch_bytes_max: 200,
        entry_bytes_max: 100,
        segments_live_max: 2,
        ..options()
    };
    let mut s = LogStore::open(log, opts, &mut |_| {}).unwrap();
    let mut b = WriteBatch::new();
    b.append(1, entries(1..2, 1));
    s.write(b).unwrap();
    for i in 1..4 {
        let mut b = WriteBatch::new();
        b.append(
            1,
            vec![Entry {
                index: i + 1,
                term: 1,
                data: vec![0; 90],
            }],
        );
        s.write(b).unwrap();
    }
    for i in 1..30 {
        let mut b = WriteBatch::new();
        b.append(2, entries(i..i + 1, 1));
        s.write(b).unwrap();
        s.compact(2, i).unwrap();
    }
    let report = s.maintain().unwrap();
    assert_eq!(report.must_compact, vec![1]);
    assert!(report.rewritten.is_empty());
    s.compact(1, 4).unwrap();
    let report = s.maintain().unwrap();
    assert!(report.segments_after <= 3, "{report:?}");
}

#[test]
fn a_removed_group_stops_pinning_and_stays_removed_after_restart() {
    let log = MemLog::new(4);
    let mut s = open(&log);
    let mut b = WriteBatch::new();
    b.append(1, entries(1..4, 1)).set_hard_state(
        1,
        HardState {
            term: 1,
            vote: 1,
            commit: 3,
        },
    );
    s.write(b).unwrap();
    for i in 1..40 {
        let mut b = WriteBatch::new();
        b.append(2, entries(i..i + 1, 1));
        s.write(b).unwrap();
        s.compact(2, i).unwrap();
    }
    s.purge().unwrap();
    assert!(log.segments().len() > 10);
    s.remove_group(1).unwrap();
    let before = log.segments().len();
    s.purge().unwrap();
    assert!(log.segments().len() < before, "removal unpinned nothing");
    assert_eq!(s.groups().collect::<Vec<_>>(), vec![2]);
    drop(s);
    let mut s = open(&log);
    assert_eq!((s.first_index(1), s.last_index(1)), (1, 0));
    assert_eq!(s.hard_state(1), HardState::default());
    // The group can start again from scratch.
    let mut b = WriteBatch::new();
    b.append(1, entries(1..2, 5));
    s.write(b).unwrap();
    drop(s);
    let s = open(&log);
    assert_eq!(s.term(1, 1).unwrap(), 5);
    assert_eq!(s.last_index(2), 39);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Recovery over arbitrary records (valid ones mixed with garbage) returns a store or an
    /// error, and never panics.
    #[test]
    fn recovery_over_garbage_never_panics(
        records in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                (0u64..3, 0u64..6, 0u64..3).prop_map(|(g, i, t)| {
                    let mut r = vec![1u8];
                    for v in [g, i, t] {
                        r.extend_from_slice(&v.to_le_bytes());
                    }
                    r
                }),
                (0u64..3, 0u64..6).prop_map(|(g, i)| {
                    let mut r = vec![3u8];
                    for v in [g, i, 1] {
                        r.extend_from_slice(&v.to_le_bytes());
                    }
                    r
                }),
            ],
            0..30,
        ),
    ) {
        let mut log = MemLog::new(4);
        for r in &records {
            log.append(&[r.as_slice()]).unwrap();
        }
        if let Ok(s) = LogStore::open(log, options(), &mut |_| {}) {
            for g in s.groups().collect::<Vec<_>>() {
                let _ = s.entries(g, s.first_index(g), s.last_index(g) + 1, u64::MAX);
            }
        }
    }
}

/// A cache miss reads the entry's frame, and a run of missing entries one read per segment
/// (not one read per entry).
#[test]
fn evicted_entries_are_read_back_one_read_per_segment() {
    let log = MemLog::new(20);
    let opts = LogStoreOptions {
        cache_bytes_max: 0,
        ..LogStoreOptions::default()
    };
    let mut s = LogStore::open(log.clone(), opts, &mut |_| {}).unwrap();
    // Five appends of ten entries; segments roll at 20 records: three segments.
    for k in 0..5u64 {
        let mut b = WriteBatch::new();
        b.append(1, entries(k * 10 + 1..k * 10 + 11, 1));
        // Another group's entry in the same frames, which the reads must skip.
        b.append(2, entries(k + 1..k + 2, 1));
        s.write(b).unwrap();
    }
    assert_eq!(s.cache_bytes(), 0);
    let before = log.reads();
    let got = s.entries(1, 1, 51, u64::MAX).unwrap();
    assert_eq!(got, entries(1..51, 1));
    assert_eq!(log.reads() - before, 3, "one read per segment");
    let before = log.reads();
    assert_eq!(s.entries(1, 17, 18, u64::MAX).unwrap(), entries(17..18, 1));
    assert_eq!(log.reads() - before, 1);
    // Reads stop at `max_bytes` without reading further.
    let before = log.reads();
    assert_eq!(s.entries(1, 21, 51, 25).unwrap(), entries(21..23, 1));
    assert_eq!(log.reads() - before, 1);
    // After a restart (the index is rebuilt from a scan) the entries read back the same.
    drop(s);
    let s = LogStore::open(log.clone(), opts_no_cache(), &mut |_| {}).unwrap();
    assert_eq!(s.entries(1, 1, 51, u64::MAX).unwrap(), entries(1..51, 1));
    assert_eq!(s.entries(2, 1, 6, u64::MAX).unwrap(), entries(1..6, 1));
}

fn opts_no_cache() -> LogStoreOptions {
    LogStoreOptions {
        cache_bytes_max: 0,
        ..LogStoreOptions::default()
    }
}
