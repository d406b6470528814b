//! Staged writes: the caller appends through `Wal::append_async` (as the node's async runtime
//! does) and completes the write with the outcome.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use keel_engine::{Entry, LogStore, LogStoreError, LogStoreOptions, WriteBatch};
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

#[test]
fn staged_writes_through_append_async_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        record_bytes_max: 64 * 1024,
        batch_bytes_max: 256 * 1024,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    let mut store = LogStore::open(wal, LogStoreOptions::default(), &mut |_| {}).unwrap();
    for i in 1..=20u64 {
        let mut b = WriteBatch::new();
        // One round: two groups in one append.
        b.append(1, vec![entry(i)]).append(2, vec![entry(i)]);
        let staged = store.stage(b).unwrap();
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
        let outcome = block_on(store.log().append_async(staged.payloads()))
            .map(|a| a.first_lsn)
            .map_err(Into::into);
        store.complete(staged, outcome).unwrap();
        assert_eq!(store.last_index(2), i);
    }
    drop(store);
    let wal = Wal::open(dir.path(), opts).unwrap();
    let store = LogStore::open(wal, LogStoreOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(store.entries(1, 1, 21, u64::MAX).unwrap().len(), 20);
    assert_eq!(store.entries(2, 5, 6, u64::MAX).unwrap(), vec![entry(5)]);
}

fn open_store(dir: &std::path::Path, inflight: usize) -> LogStore {
    let wal = Wal::open(
        dir,
        WalOptions {
            segment_bytes: 1 << 20,
            record_bytes_max: 64 * 1024,
            batch_bytes_max: 256 * 1024,
            ..WalOptions::default()
        },
    )
    .unwrap();
    let opts = LogStoreOptions {
        inflight_writes_max: inflight,
        ..LogStoreOptions::default()
    };
    LogStore::open(wal, opts, &mut |_| {}).unwrap()
}

#[test]
fn pipelined_staged_writes_validate_against_the_ones_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path(), 3);
    // Three rounds staged before any is durable: 1..=3, then 4..=5, then a new leader's
    // entry 5 (term 2) that replaces the staged entry 5.
    let mut b = WriteBatch::new();
    b.append(1, (1..=3).map(entry).collect());
    let s1 = store.stage(b).unwrap();
    let mut b = WriteBatch::new();
    b.append(1, (4..=5).map(entry).collect());
    let s2 = store.stage(b).unwrap();
    let mut b = WriteBatch::new();
    b.append(
        1,
        vec![Entry {
            index: 5,
            term: 2,
            data: b"new".to_vec(),
        }],
    );
    let s3 = store.stage(b).unwrap();
    // A gap is detected against the staged state, not the applied one.
    let mut gap = WriteBatch::new();
    gap.append(1, vec![entry(9)]);
    assert!(matches!(
        store.stage(gap),
        Err(LogStoreError::TooManyInFlight { max: 3 })
    ));
    assert!(matches!(
        store.compact(1, 1),
        Err(LogStoreError::WriteInFlight)
    ));
    assert_eq!(store.last_index(1), 0, "nothing visible before completion");
    for s in [s1, s2, s3] {
        let first = block_on(store.log().append_async(s.payloads()))
            .unwrap()
            .first_lsn;
        store.complete(s, Ok(first)).unwrap();
    }
    assert_eq!(store.last_index(1), 5);
    assert_eq!(store.term(1, 5).unwrap(), 2);
    // Validation now sees the completed writes: 9 would leave a gap after 5.
    let mut gap = WriteBatch::new();
    gap.append(1, vec![entry(9)]);
    assert!(matches!(store.stage(gap), Err(LogStoreError::Gap { .. })));
    drop(store);
    let store = open_store(dir.path(), 3);
    assert_eq!(store.entries(1, 4, 6, u64::MAX).unwrap()[1].data, b"new");
}

#[test]
fn completing_out_of_stage_order_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path(), 4);
    let mut b = WriteBatch::new();
    b.append(1, vec![entry(1)]);
    let s1 = store.stage(b).unwrap();
    let mut b = WriteBatch::new();
    b.append(1, vec![entry(2)]);
    let s2 = store.stage(b).unwrap();
    let lsn2 = store.log().append(s2.payloads()).unwrap().first_lsn;
    assert!(matches!(
        store.complete(s2, Ok(lsn2)),
        Err(LogStoreError::OutOfOrder { .. })
    ));
    assert!(matches!(
        store.stage(WriteBatch::new()),
        Err(LogStoreError::Poisoned)
    ));
    drop(s1);
}
