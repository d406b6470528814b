//! Staged writes: the caller stages rounds and awaits them (as the node's async runtime
//! does); the store appends them itself, in stage order, through `Wal::append_async`.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use keel_engine::{Entry, LogStore, LogStoreError, LogStoreOptions, MemLog, WriteBatch};
use keel_wal::{Wal, WalOptions};

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

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        data: index.to_le_bytes().repeat(4),
    }
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        record_bytes_max: 64 * 1024,
        batch_bytes_max: 256 * 1024,
        ..WalOptions::default()
    }
}

fn open_store(dir: &std::path::Path, inflight: usize) -> LogStore<Arc<Wal>> {
    let wal = Arc::new(Wal::open(dir, wal_options()).unwrap());
    let opts = LogStoreOptions {
        inflight_writes_max: inflight,
        ..LogStoreOptions::default()
    };
    LogStore::open(wal, opts, &mut |_| {}).unwrap()
}

fn open_mem(log: &MemLog) -> LogStore<MemLog> {
    LogStore::open(log.clone(), LogStoreOptions::default(), &mut |_| {}).unwrap()
}

/// Polls `store.durable()` once, as an event loop would before going on with other work.
fn poll_once<B: keel_engine::AsyncLogBackend>(
    store: &mut LogStore<B>,
) -> Poll<Result<keel_engine::Ticket, LogStoreError>> {
    store.poll_durable(&mut Context::from_waker(Waker::noop()))
}

fn append(group: u64, entries: impl IntoIterator<Item = Entry>) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.append(group, entries.into_iter().collect());
    b
}

#[test]
fn staged_writes_through_append_async_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path(), 8);
    for i in 1..=20u64 {
        let mut b = WriteBatch::new();
        // One round: two groups in one append.
        b.append(1, vec![entry(i)]).append(2, vec![entry(i)]);
        let ticket = store.stage(b).unwrap();
        // Nothing else may write while the append is in flight.
        assert!(matches!(
            store.write(WriteBatch::new()),
            Err(LogStoreError::WriteInFlight)
        ));
        assert_eq!(
            store.last_index(1),
            i - 1,
            "staged entries are not visible yet"
        );
        assert_eq!(block_on(store.durable()).unwrap(), ticket);
        assert_eq!(store.last_index(2), i);
    }
    drop(store);
    let store = open_store(dir.path(), 8);
    assert_eq!(store.entries(1, 1, 21, u64::MAX).unwrap().len(), 20);
    assert_eq!(store.entries(2, 5, 6, u64::MAX).unwrap(), vec![entry(5)]);
}

#[test]
fn pipelined_staged_writes_validate_against_the_ones_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path(), 3);
    // Three rounds staged before any is durable: 1..=3, then 4..=5, then a new leader's
    // entry 5 (term 2) that replaces the staged entry 5.
    let t1 = store.stage(append(1, (1..=3).map(entry))).unwrap();
    let t2 = store.stage(append(1, (4..=5).map(entry))).unwrap();
    let new5 = Entry {
        index: 5,
        term: 2,
        data: b"new".to_vec(),
    };
    let t3 = store.stage(append(1, [new5])).unwrap();
    assert!(t1 < t2 && t2 < t3);
    assert!(matches!(
        store.stage(append(1, [entry(9)])),
        Err(LogStoreError::TooManyInFlight { max: 3 })
    ));
    assert!(matches!(
        store.compact(1, 1),
        Err(LogStoreError::WriteInFlight)
    ));
    assert_eq!(
        store.last_index(1),
        0,
        "nothing visible before it is durable"
    );
    for t in [t1, t2, t3] {
        assert_eq!(block_on(store.durable()).unwrap(), t);
    }
    assert_eq!(store.last_index(1), 5);
    assert_eq!(store.term(1, 5).unwrap(), 2);
    // Validation now sees the durable writes: 9 would leave a gap after 5.
    assert!(matches!(
        store.stage(append(1, [entry(9)])),
        Err(LogStoreError::Gap { .. })
    ));
    drop(store);
    let store = open_store(dir.path(), 3);
    assert_eq!(store.entries(1, 4, 6, u64::MAX).unwrap()[1].data, b"new");
}

/// The sequence that used to corrupt the log: round 2 staged while round 1 is in flight,
/// round 2's append started (and finished) before round 1's. The caller can no longer
/// append a staged write itself, so it cannot choose that order: round 2 waits behind round
/// 1's append, and the log holds them in stage order.
#[test]
fn a_round_staged_behind_one_in_flight_reaches_the_log_after_it() {
    let log = MemLog::new(64);
    let mut store = open_mem(&log);
    log.set_hold_appends(true);
    let t1 = store.stage(append(1, [entry(1)])).unwrap();
    assert!(poll_once(&mut store).is_pending(), "round 1 is in flight");
    let t2 = store.stage(append(1, [entry(2)])).unwrap();
    let mut hs = WriteBatch::new();
    hs.set_hard_state(
        1,
        keel_engine::HardState {
            term: 1,
            vote: 1,
            commit: 2,
        },
    );
    let t3 = store.stage(hs).unwrap();
    for _ in 0..3 {
        assert!(poll_once(&mut store).is_pending());
    }
    assert!(
        log.is_empty(),
        "nothing reached the log behind the held append"
    );
    log.set_hold_appends(false);
    assert_eq!(block_on(store.durable()).unwrap(), t1);
    assert_eq!(block_on(store.durable()).unwrap(), t2);
    assert_eq!(block_on(store.durable()).unwrap(), t3);
    assert_eq!(store.last_index(1), 2);
    // Round 1 went alone; rounds 2 and 3, queued behind it, shared the next append.
    assert_eq!(log.appends(), 2);
    drop(store);
    let store = open_mem(&log);
    assert_eq!(
        store.entries(1, 1, 3, u64::MAX).unwrap(),
        vec![entry(1), entry(2)]
    );
    assert_eq!(store.hard_state(1).commit, 2);
}

#[test]
fn a_failed_append_poisons_and_nothing_staged_behind_it_reaches_the_log() {
    let log = MemLog::new(64);
    let mut store = open_mem(&log);
    store.write(append(1, [entry(1)])).unwrap();
    log.set_hold_appends(true);
    store.stage(append(1, [entry(2)])).unwrap();
    assert!(poll_once(&mut store).is_pending());
    store.stage(append(1, [entry(3)])).unwrap();
    log.set_fail_appends(true);
    log.set_hold_appends(false);
    assert!(matches!(
        block_on(store.durable()),
        Err(LogStoreError::Log { op: "append", .. })
    ));
    let err = block_on(store.durable()).unwrap_err();
    assert!(
        matches!(&err, LogStoreError::Poisoned { cause } if cause.contains("injected")),
        "{err}"
    );
    assert!(matches!(
        store.stage(append(1, [entry(2)])),
        Err(LogStoreError::Poisoned { .. })
    ));
    log.set_fail_appends(false);
    assert_eq!(
        log.len(),
        1,
        "the write staged behind the failure was never appended"
    );
    drop(store);
    let store = open_mem(&log);
    assert_eq!(store.last_index(1), 1);
}

#[test]
fn dropping_the_durable_future_loses_nothing() {
    let log = MemLog::new(64);
    let mut store = open_mem(&log);
    log.set_hold_appends(true);
    let t1 = store.stage(append(1, [entry(1)])).unwrap();
    {
        let mut waiting = pin!(store.durable());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
    }
    log.set_hold_appends(false);
    assert_eq!(block_on(store.durable()).unwrap(), t1);
    assert_eq!(log.appends(), 1);
    assert_eq!(store.last_index(1), 1);
}

#[test]
fn a_batch_with_nothing_to_append_is_durable_in_its_turn() {
    let log = MemLog::new(64);
    let mut store = open_mem(&log);
    log.set_hold_appends(true);
    let t1 = store.stage(append(1, [entry(1)])).unwrap();
    let t2 = store.stage(WriteBatch::new()).unwrap();
    assert!(poll_once(&mut store).is_pending());
    log.set_hold_appends(false);
    assert_eq!(block_on(store.durable()).unwrap(), t1);
    assert_eq!(block_on(store.durable()).unwrap(), t2);
}

#[test]
fn a_blocking_write_after_the_appends_finish_is_seen_by_the_next_stage() {
    let log = MemLog::new(64);
    let mut store = open_mem(&log);
    let t1 = store.stage(append(1, (1..=3).map(entry))).unwrap();
    let t2 = store.stage(append(1, (4..=5).map(entry))).unwrap();
    // Both went in one append: once t1 is back, t2 is applied too and nothing is in
    // flight, so blocking writes are allowed again before t2 is handed back.
    assert_eq!(block_on(store.durable()).unwrap(), t1);
    store.write(append(1, [entry(6)])).unwrap();
    let t3 = store.stage(append(1, [entry(7)])).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t2);
    assert_eq!(block_on(store.durable()).unwrap(), t3);
    assert_eq!(store.last_index(1), 7);
}

#[test]
fn a_staged_compaction_drops_entries_and_survives_recovery() {
    let log = MemLog::new(4);
    let mut store = open_mem(&log);
    let t = store.stage(append(1, (1..=10).map(entry))).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    // Compaction rides with other work in one append; compacting again below is skipped.
    let mut b = append(1, (11..=12).map(entry));
    b.compact(1, 6);
    b.compact(1, 4);
    let t = store.stage(b).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    assert_eq!((store.first_index(1), store.last_index(1)), (7, 12));
    assert_eq!(store.term(1, 6).unwrap(), 1);
    // Beyond the last index is refused before anything is written.
    let mut b = WriteBatch::new();
    b.compact(1, 13);
    assert!(matches!(
        store.stage(b),
        Err(LogStoreError::Unavailable { index: 13, .. })
    ));
    drop(store);
    let store = open_mem(&log);
    assert_eq!((store.first_index(1), store.last_index(1)), (7, 12));
}

#[test]
fn groups_pinning_old_segments_are_named_and_freed_by_compaction() {
    // One record per segment: group 1's single entry soon lies in a segment far behind.
    let log = MemLog::new(1);
    let mut store = open_mem(&log);
    let t = store.stage(append(1, [entry(1)])).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    for i in 1..=20 {
        let t = store.stage(append(2, [entry(i)])).unwrap();
        assert_eq!(block_on(store.durable()).unwrap(), t);
    }
    assert_eq!(store.groups_pinning_old_segments(), vec![1, 2]);
    // Compacting both (with group 1's hard state written again) moves their pins forward:
    // nothing old is needed any more, and the log can be purged.
    let mut b = WriteBatch::new();
    b.set_hard_state(1, keel_engine::HardState::default());
    b.compact(1, 1);
    b.compact(2, 20);
    let t = store.stage(b).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    assert!(store.groups_pinning_old_segments().is_empty());
    let before = store.stats().segments;
    store.purge().unwrap();
    assert!(store.stats().segments < before);
}

#[test]
fn compacting_again_at_the_compaction_point_moves_its_record_forward() {
    let log = MemLog::new(1);
    let mut store = open_mem(&log);
    let t = store.stage(append(1, (1..=3).map(entry))).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    let mut b = WriteBatch::new();
    b.compact(1, 3);
    let t = store.stage(b).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    let pinned = store.pinned_lsn();
    for i in 1..=5 {
        let t = store.stage(append(2, [entry(i)])).unwrap();
        assert_eq!(block_on(store.durable()).unwrap(), t);
    }
    // Group 1 has no entries left; writing its compaction point (and hard state) again
    // moves what it pins to the head of the log.
    let mut b = WriteBatch::new();
    b.set_hard_state(1, keel_engine::HardState::default());
    b.compact(1, 3);
    b.compact(2, 5);
    let t = store.stage(b).unwrap();
    assert_eq!(block_on(store.durable()).unwrap(), t);
    assert!(store.pinned_lsn() > pinned + 5);
    assert_eq!((store.first_index(1), store.term(1, 3).unwrap()), (4, 1));
    drop(store);
    let store = open_mem(&log);
    assert_eq!((store.first_index(1), store.last_index(1)), (4, 3));
}
