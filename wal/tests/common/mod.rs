//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use keel_wal::{Backend, Wal, WalOptions};

/// Both backends; every behaviour test runs against each.
pub const BACKENDS: [Backend; 2] = [Backend::Blocking, Backend::Uring];

/// Small segments so that tests cross segment boundaries quickly.
pub fn small(backend: Backend) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        record_bytes_max: 8 << 10,
        batch_bytes_max: 16 << 10,
        backend,
        ..WalOptions::default()
    }
}

pub fn open(dir: &Path, opts: &WalOptions) -> Wal {
    Wal::open(dir, opts.clone()).expect("open")
}

/// The record written for position-independent test value `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let len = 1 + (i * 7919 % 300) as usize;
    let mut v = vec![0u8; len];
    for (k, b) in v.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(k as u8);
    }
    v[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
    v
}

/// Every record in the log, in order, checking positions are consecutive.
pub fn all_records(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut expect = wal.first_lsn();
    for record in wal.iter().expect("iter") {
        let record = record.expect("record");
        assert_eq!(record.lsn, expect, "positions must be consecutive");
        expect += 1;
        out.push((record.lsn, record.data));
    }
    assert_eq!(expect, wal.next_lsn());
    out
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
