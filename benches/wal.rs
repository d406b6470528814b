//! Criterion benchmarks of the write-ahead log: appends (128 B, 1 KiB, 4 KiB; synced and
//! not; 1, 4 and 16 appenders) and recovery scan speed.
//!
//! Run with `cargo bench --bench wal`. Each append is timed as one element, so criterion's
//! throughput line reads as appends per second across all appenders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use keel_wal::{Wal, WalOptions};

fn open(dir: &std::path::Path, sync: bool) -> Wal {
    Wal::open(
        dir,
        WalOptions {
            sync,
            ..WalOptions::default()
        },
    )
    .expect("open the log")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for sync in [true, false] {
        for size in [128usize, 1024, 4096] {
            for appenders in [1usize, 4, 16] {
                let dir = tempfile::tempdir().unwrap();
                let wal = Arc::new(open(dir.path(), sync));
                let id = format!(
                    "{}/{size}B/{appenders}",
                    if sync { "synced" } else { "unsynced" }
                );
                group.throughput(Throughput::Elements(1));
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter_custom(|iters| {
                        let per = iters.div_ceil(appenders as u64);
                        let started = Instant::now();
                        std::thread::scope(|s| {
                            for _ in 0..appenders {
                                let wal = wal.clone();
                                s.spawn(move || {
                                    let record = vec![0x5Au8; size];
                                    for _ in 0..per {
                                        wal.append(&[record.as_slice()]).unwrap();
                                    }
                                });
                            }
                        });
                        // Report the time per append as if exactly `iters` were made.
                        started
                            .elapsed()
                            .mul_f64(iters as f64 / (per * appenders as u64) as f64)
                    });
                });
            }
        }
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_recovery");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let bytes = {
        let wal = open(dir.path(), false);
        let batch = vec![vec![0xA5u8; 4096]; 64];
        // About 256 MiB of log: four full segments and part of a fifth.
        for _ in 0..1000 {
            wal.append(&batch).unwrap();
        }
        wal.segments().iter().map(|s| s.bytes).sum::<u64>()
    };
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("open_and_verify_256MiB", |b| {
        b.iter(|| {
            let wal = open(dir.path(), false);
            assert!(wal.next_lsn() > 64_000);
        });
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::append, super::recovery);
}
criterion_main!(group::benches);
