//! Async appenders on tokio-uring, the runtime Keel's thread-per-core node runs on: many
//! tasks on one thread share group commits, and the thread is never blocked.
#![cfg(target_os = "linux")]

use std::rc::Rc;

use keel_wal::{Backend, Wal, WalOptions};

#[test]
fn tasks_on_a_tokio_uring_runtime_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Rc::new(
        Wal::open(
            dir.path(),
            WalOptions {
                segment_bytes: 256 << 10,
                batch_bytes_max: 64 << 10,
                record_bytes_max: 1024,
                backend: Backend::Uring,
                ..WalOptions::default()
            },
        )
        .unwrap(),
    );
    let tasks = 64u64;
    let per_task = 20u64;
    let acked = tokio_uring::start(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let wal = wal.clone();
                tokio_uring::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..per_task {
                        let value = (t << 32 | i).to_le_bytes();
                        let at = wal.append_async(&[value]).await.unwrap();
                        acked.push((at.first_lsn, value));
                    }
                    acked
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        all
    });
    let stats = wal.stats();
    assert_eq!(stats.records, tasks * per_task);
    assert!(
        stats.flushes * 4 < stats.appends,
        "64 tasks should coalesce: {} flushes for {} appends",
        stats.flushes,
        stats.appends
    );
    for (lsn, value) in acked {
        assert_eq!(wal.read(lsn).unwrap(), value);
    }
}
