//! Criterion micro-benchmarks of the engine's in-memory paths and files: memtable writes and
//! reads, checkpoint write and verified open, multi-group log store batches (in-memory log,
//! so the numbers are the engine's own cost without I/O), and the transaction codec.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use keel_engine::checkpoint::write_checkpoint;
use keel_engine::txn_codec::{decode_txn, encode_txn};
use keel_engine::{
    CheckpointReader, Entry, KvLimits, LogStore, LogStoreOptions, MemLog, Memtable, Op,
    RangeRequest, Txn, WriteBatch,
};

fn filled(n: u64) -> Memtable {
    let mut m = Memtable::new(KvLimits::default()).expect("limits");
    for i in 0..n {
        m.put(&i.to_be_bytes(), &[7; 128]).expect("put");
    }
    m.set_applied_index(n);
    m
}

fn memtable(c: &mut Criterion) {
    let mut g = c.benchmark_group("memtable");
    g.throughput(Throughput::Elements(1));
    let mut m = filled(100_000);
    let mut i = 0u64;
    g.bench_function("put_128B_into_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            m.put(&i.to_be_bytes(), &[1; 128]).expect("put")
        })
    });
    g.bench_function("get_from_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            black_box(m.get(&i.to_be_bytes()))
        })
    });
    g.bench_function("range_100_of_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let req = RangeRequest::between(i.to_be_bytes(), (i + 100).to_be_bytes());
            black_box(m.range(&req).expect("range"))
        })
    });
    // A read 1,000 revisions back visits the 1,000 changes since (the puts above keep the
    // history full, so this is the steady state).
    g.bench_function("range_100_of_100k_1k_revisions_back", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let req = RangeRequest::between(i.to_be_bytes(), (i + 100).to_be_bytes())
                .at_revision(m.revision() - 1_000);
            black_box(m.range(&req).expect("range"))
        })
    });
    g.finish();
}

fn checkpoint(c: &mut Criterion) {
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    let m = filled(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.ckpt");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("write_100k_keys_fsynced", |b| {
        b.iter(|| write_checkpoint(&path, &m, 1, b"").expect("write"))
    });
    g.bench_function("open_and_verify_100k_keys", |b| {
        b.iter(|| CheckpointReader::open(&path).expect("open").len())
    });
    let r = CheckpointReader::open(&path).expect("open");
    let mut i = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("mapped_get_from_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            black_box(r.get(&i.to_be_bytes()).expect("get").map(|e| e.value.len()))
        })
    });
    g.finish();
}

fn log_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_store");
    let groups = 256u64;
    g.throughput(Throughput::Elements(groups * 16));
    g.bench_function("16_batches_of_256_groups_x_1_entry_128B_memlog", |b| {
        b.iter_batched(
            || {
                let store =
                    LogStore::open(MemLog::new(4096), LogStoreOptions::default(), &mut |_| {})
                        .expect("open");
                (store, 1u64)
            },
            |(mut store, mut index)| {
                for _ in 0..16 {
                    let mut batch = WriteBatch::new();
                    for group in 0..groups {
                        batch.append(
                            group,
                            vec![Entry {
                                index,
                                term: 1,
                                data: vec![3; 128],
                            }],
                        );
                    }
                    store.write(batch).expect("write");
                    index += 1;
                }
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let txn = Txn::batch(
        (0..8u8)
            .map(|i| Op::put(vec![i; 16], vec![i; 128]))
            .collect(),
    );
    let bytes = encode_txn(&txn);
    c.bench_function("txn_codec/encode_8_puts", |b| {
        b.iter(|| encode_txn(black_box(&txn)))
    });
    c.bench_function("txn_codec/decode_8_puts", |b| {
        b.iter(|| decode_txn(black_box(&bytes)).expect("decode"))
    });
}

criterion_group!(benches, memtable, checkpoint, log_store, codec);
criterion_main!(benches);
