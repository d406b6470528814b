//! Behaviour of the log through its public API, against both backends.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::{BACKENDS, all_records, block_on, open, payload, small};
use keel_wal::{Error, Faults, Wal, WalOptions};

#[test]
fn append_read_and_reopen() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let mut expected = Vec::new();
        {
            let wal = open(dir.path(), &opts);
            for i in 0..500u64 {
                let records = [payload(i), payload(i + 1000)];
                let at = wal.append(&records).unwrap();
                assert_eq!(at.count, 2);
                expected.push(payload(i));
                expected.push(payload(i + 1000));
                assert_eq!(wal.read(at.first_lsn).unwrap(), payload(i));
                assert_eq!(wal.read(at.first_lsn + 1).unwrap(), payload(i + 1000));
            }
            assert!(wal.segments().len() > 2, "small segments must roll");
            let stats = wal.stats();
            assert_eq!(stats.records, 1000);
            assert_eq!(stats.appends, 500);
            assert!(stats.flushes >= 1 && stats.flushes <= 500);
        }
        let wal = open(dir.path(), &opts);
        let got: Vec<Vec<u8>> = all_records(&wal).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, expected, "backend {backend:?}");
        assert_eq!(wal.first_lsn(), 1);
        assert_eq!(wal.next_lsn(), 1001);
        // Reads from the middle of sealed segments use the sparse index.
        for lsn in [1, 2, 333, 777, 1000] {
            assert_eq!(wal.read(lsn).unwrap(), expected[(lsn - 1) as usize]);
        }
        assert!(matches!(wal.read(1001), Err(Error::OutOfRange { .. })));
        // Appending after reopen continues the positions.
        let at = wal.append(&[b"after".as_slice()]).unwrap();
        assert_eq!(at.first_lsn, 1001);
        drop(wal);
        let wal = open(dir.path(), &opts);
        assert_eq!(wal.read(1001).unwrap(), b"after");
    }
}

#[test]
fn iterate_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small(keel_wal::Backend::Auto));
    for i in 0..300u64 {
        wal.append(&[payload(i)]).unwrap();
    }
    for start in [1u64, 2, 50, 150, 299, 300] {
        let got: Vec<u64> = wal
            .iter_from(start)
            .unwrap()
            .map(|r| r.unwrap().lsn)
            .collect();
        assert_eq!(got, (start..=300).collect::<Vec<_>>());
    }
    assert_eq!(wal.iter_from(301).unwrap().count(), 0);
    assert!(matches!(wal.iter_from(302), Err(Error::OutOfRange { .. })));
}

#[test]
fn concurrent_appenders_are_ordered_durable_and_coalesced() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let wal = Arc::new(open(dir.path(), &opts));
        let threads = 16u64;
        let per_thread = 200u64;
        let acks: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let wal = wal.clone();
                    s.spawn(move || {
                        (0..per_thread)
                            .map(|i| {
                                let value = t * 1_000_000 + i;
                                let at = wal.append(&[value.to_le_bytes()]).unwrap();
                                (at.first_lsn, value)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let stats = wal.stats();
        drop(wal);
        // Each thread's positions increase; every acknowledged value is at its position.
        let reopened = open(dir.path(), &opts);
        let records: HashMap<u64, Vec<u8>> = all_records(&reopened).into_iter().collect();
        assert_eq!(records.len() as u64, threads * per_thread);
        for thread_acks in &acks {
            assert!(thread_acks.windows(2).all(|w| w[0].0 < w[1].0));
            for (lsn, value) in thread_acks {
                assert_eq!(records[lsn], value.to_le_bytes());
            }
        }
        assert!(
            stats.flushes < stats.appends,
            "{backend:?}: 16 appenders should share flushes ({} flushes for {} appends)",
            stats.flushes,
            stats.appends
        );
    }
}

/// Polls many append futures on one thread, the way one core's runtime would.
struct JoinAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future> Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.outputs.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    }
}

#[test]
fn async_appenders_share_flushes() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            queue_appends_max: 8, // small, to exercise back-pressure for tasks
            ..small(backend)
        };
        let wal = open(dir.path(), &opts);
        let values: Vec<[u8; 8]> = (0..256u64).map(|i| i.to_le_bytes()).collect();
        let records: Vec<[&[u8]; 1]> = values.iter().map(|v| [v.as_slice()]).collect();
        let futures = records
            .iter()
            .map(|r| Some(Box::pin(wal.append_async(r))))
            .collect::<Vec<_>>();
        let outputs = (0..futures.len()).map(|_| None).collect();
        let results = block_on(JoinAll { futures, outputs });
        let mut lsns: Vec<u64> = results.into_iter().map(|r| r.unwrap().first_lsn).collect();
        lsns.sort_unstable();
        assert_eq!(lsns, (1..=256).collect::<Vec<_>>());
        let stats = wal.stats();
        assert!(
            stats.flushes < 256,
            "{backend:?}: tasks should share flushes"
        );
        assert!(stats.records_per_flush.quantile_upper_bound(1.0) <= 15);
        assert_eq!(all_records(&wal).len(), 256);
    }
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(keel_wal::Backend::Auto);
    let wal = open(dir.path(), &opts);
    let big = vec![0u8; opts.record_bytes_max + 1];
    let err = wal.append(&[big]).unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("record_bytes_max"));
    let many: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 6 << 10]).collect();
    let err = wal.append(&many).unwrap_err();
    assert!(matches!(err, Error::BatchTooLarge { .. }), "{err}");
    let none: [&[u8]; 0] = [];
    assert!(matches!(wal.append(&none), Err(Error::EmptyBatch)));
    // Nothing was written by the refused appends.
    assert_eq!(wal.next_lsn(), 1);
    // A second open of the same directory is refused.
    assert!(matches!(
        Wal::open(dir.path(), opts.clone()),
        Err(Error::Locked { .. })
    ));
    let bad = WalOptions {
        batch_bytes_max: 100,
        ..opts
    };
    assert!(matches!(
        Wal::open(tempfile::tempdir().unwrap().path(), bad),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn failed_write_poisons_the_log() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let opts = WalOptions {
            faults: Some(faults.clone()),
            ..small(backend)
        };
        {
            let wal = open(dir.path(), &opts);
            for i in 0..10u64 {
                wal.append(&[payload(i)]).unwrap();
            }
            faults.fail_writes_from(faults.writes());
            let err = wal.append(&[payload(10)]).unwrap_err();
            assert!(err.to_string().contains("Input/output error"), "{err}");
            for i in 11..13u64 {
                let err = wal.append(&[payload(i)]).unwrap_err();
                assert!(matches!(err, Error::Poisoned { .. }), "{err}");
            }
            assert!(wal.truncate_after(5).is_err());
        }
        faults.fail_writes_from(u64::MAX);
        let wal = open(dir.path(), &opts);
        let got = all_records(&wal);
        assert_eq!(got.len(), 10, "{backend:?}: what was acknowledged survives");
    }
}

#[test]
fn truncate_suffix_mid_frame_at_boundary_and_across_segments() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let wal = open(dir.path(), &opts);
        // Frames of three records each: positions 1..=600.
        for i in 0..200u64 {
            wal.append(&[payload(3 * i), payload(3 * i + 1), payload(3 * i + 2)])
                .unwrap();
        }
        let segments_before = wal.segments().len();
        // Mid-frame, far back: drops later segments.
        wal.truncate_after(100).unwrap();
        assert_eq!(wal.next_lsn(), 101);
        assert!(wal.segments().len() < segments_before);
        // At a frame boundary (frame 33 ends at 99).
        wal.truncate_after(99).unwrap();
        assert_eq!(wal.next_lsn(), 100);
        let at = wal.append(&[b"new".as_slice()]).unwrap();
        assert_eq!(at.first_lsn, 100);
        assert_eq!(wal.read(99).unwrap(), payload(98));
        drop(wal);
        let wal = open(dir.path(), &opts);
        let got = all_records(&wal);
        assert_eq!(got.len(), 100);
        assert_eq!(got[98].1, payload(98));
        assert_eq!(got[99].1, b"new");
        // Truncating everything empties the log; positions continue from there.
        wal.truncate_after(0).unwrap();
        assert_eq!(wal.next_lsn(), 1);
        assert_eq!(all_records(&wal).len(), 0);
        wal.append(&[b"again".as_slice()]).unwrap();
        drop(wal);
        let wal = open(dir.path(), &opts);
        assert_eq!(all_records(&wal), vec![(1, b"again".to_vec())]);
    }
}

#[test]
fn purge_drops_whole_segments_below_a_position() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let wal = open(dir.path(), &opts);
        for i in 0..2500u64 {
            wal.append(&[payload(i)]).unwrap();
        }
        let segments = wal.segments();
        assert!(segments.len() >= 4);
        let cut = segments[2].first_lsn;
        assert_eq!(wal.purge_before(cut).unwrap(), 2);
        assert_eq!(wal.first_lsn(), cut);
        assert!(matches!(wal.read(cut - 1), Err(Error::OutOfRange { .. })));
        // Purging never removes the segment being written.
        wal.purge_before(u64::MAX).unwrap();
        assert_eq!(wal.segments().len(), 1);
        let last_first = wal.first_lsn();
        wal.append(&[b"x".as_slice()]).unwrap();
        drop(wal);
        let wal = open(dir.path(), &opts);
        assert_eq!(wal.first_lsn(), last_first);
        assert_eq!(all_records(&wal).last().unwrap().1, b"x");
    }
}

#[test]
fn appends_wait_while_truncation_runs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(keel_wal::Backend::Auto);
    let wal = Arc::new(open(dir.path(), &opts));
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let wal = wal.clone();
            let acked = &acked;
            s.spawn(move || {
                for i in 0..100u64 {
                    let v = (t << 32 | i).to_le_bytes();
                    let at = wal.append(&[v]).unwrap();
                    acked.lock().unwrap().push((at.first_lsn, v));
                }
            });
        }
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let keep = wal.next_lsn().saturating_sub(3);
            wal.truncate_after(keep).unwrap();
        }
    });
    // Whatever survived at each position is a value acknowledged at that position (a
    // truncation lets a later append reuse a position).
    let records = all_records(&wal);
    assert!(!records.is_empty());
    let mut by_lsn: HashMap<u64, Vec<[u8; 8]>> = HashMap::new();
    for (lsn, v) in acked.into_inner().unwrap() {
        by_lsn.entry(lsn).or_default().push(v);
    }
    for (lsn, data) in records {
        assert!(
            by_lsn[&lsn].iter().any(|v| v[..] == data[..]),
            "position {lsn}"
        );
    }
}

#[test]
fn purged_segments_are_recycled_and_recover_cleanly() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            recovery_mode: keel_wal::RecoveryMode::AbsoluteConsistency,
            ..small(backend)
        };
        let wal = open(dir.path(), &opts);
        let mut max_files = 0;
        for i in 0..6000u64 {
            let at = wal.append(&[payload(i)]).unwrap();
            // Every write takes at least a block of its own, so a 64 KiB segment holds 15
            // single-record appends.
            if i % 10 == 9 {
                wal.purge_before(at.first_lsn.saturating_sub(30)).unwrap();
                max_files = max_files.max(std::fs::read_dir(dir.path()).unwrap().count());
            }
        }
        let stats = wal.stats();
        assert!(stats.segments_recycled > 3, "{backend:?}: {stats:?}");
        // Segments rolled many times, yet the directory stayed small: files were reused.
        assert!(stats.segments_created > 10);
        assert!(max_files <= 6, "{backend:?}: {max_files} files");
        let first = wal.first_lsn();
        drop(wal);
        // Old data behind the written part of recycled segments is not damage, even for
        // the strict mode.
        let wal = open(dir.path(), &opts);
        assert_eq!(wal.first_lsn(), first);
        for (lsn, data) in all_records(&wal) {
            assert_eq!(data, payload(lsn - 1), "position {lsn}");
        }
        assert_eq!(wal.next_lsn(), 6001);
        assert!(keel_wal::verify(dir.path()).is_ok());
    }
}

#[test]
fn frames_larger_than_a_read_chunk_read_back_from_active_and_sealed_segments() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 2 << 20,
            batch_bytes_max: 1 << 20,
            record_bytes_max: 8 << 10,
            backend,
            ..WalOptions::default()
        };
        let wal = open(dir.path(), &opts);
        let frame: Vec<Vec<u8>> = (0..64u8).map(|k| vec![k; 4096]).collect();
        let mut firsts = Vec::new();
        for _ in 0..20 {
            firsts.push(wal.append(&frame).unwrap().first_lsn);
        }
        assert!(wal.segments().len() >= 3, "sealed and active segments");
        for first in firsts {
            for k in [0u64, 31, 63] {
                assert_eq!(wal.read(first + k).unwrap(), frame[k as usize]);
            }
        }
        assert_eq!(all_records(&wal).len(), 20 * 64);
    }
}

#[test]
fn a_crash_after_the_intent_completes_truncation_and_purge_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let opts = WalOptions {
        faults: Some(faults.clone()),
        ..small(keel_wal::Backend::Blocking)
    };
    {
        let wal = open(dir.path(), &opts);
        for i in 0..2000u64 {
            wal.append(&[payload(2 * i), payload(2 * i + 1)]).unwrap();
        }
        faults.crash_after_next_intent();
        // Cut inside a frame, in an early segment: later segments go too.
        assert!(wal.truncate_after(1001).is_err());
    }
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.next_lsn(), 1002, "recovery finished the truncation");
    let got = all_records(&wal);
    assert_eq!(got.last().unwrap().1, payload(1000));
    let floor = wal.segments().last().unwrap().first_lsn;
    faults.crash_after_next_intent();
    assert!(wal.purge_before(floor).is_err());
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert!(wal.first_lsn() >= wal.segments()[0].first_lsn);
    assert_eq!(wal.segments().len(), 1, "recovery finished the purge");
    assert_eq!(wal.next_lsn(), 1002);
    let last = wal.segments()[0].first_lsn;
    assert!(
        all_records(&wal)
            .iter()
            .all(|(lsn, data)| *lsn >= last && data == &payload(lsn - 1))
    );
}

#[test]
fn positioned_reads_visit_exactly_the_frames_asked_for() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let wal = open(dir.path(), &opts);
        // Frames of one to three records, over several segments (sealed and active), and a
        // frame larger than a block.
        let mut appended = Vec::new();
        let mut next = 0u64;
        for i in 0..600u64 {
            let n = 1 + i % 3;
            let records: Vec<Vec<u8>> = (next..next + n).map(payload).collect();
            let mut records = records;
            if i == 500 {
                records[0] = vec![7u8; 6000];
            }
            appended.push((wal.append(&records).unwrap(), records));
            next += n;
        }
        assert!(wal.segments().len() >= 3);
        let collect = |segment: u64, first: u64, last: u64| {
            let mut seen = Vec::new();
            wal.read_frames(segment, first, last, &mut |lsn, data| {
                seen.push((lsn, data.to_vec()));
                true
            })
            .map(|()| seen)
        };
        // Every frame alone, and runs of frames within a segment.
        for (at, records) in &appended {
            let seen = collect(at.segment, at.offset, at.offset).unwrap();
            let expected: Vec<(u64, Vec<u8>)> =
                (at.first_lsn..).zip(records.iter().cloned()).collect();
            assert_eq!(seen, expected);
        }
        for run in appended.windows(40).step_by(37) {
            let (first, last) = (&run[0].0, &run[run.len() - 1].0);
            if first.segment != last.segment {
                continue;
            }
            let seen = collect(first.segment, first.offset, last.offset).unwrap();
            let expected: Vec<(u64, Vec<u8>)> = run
                .iter()
                .flat_map(|(at, records)| (at.first_lsn..).zip(records.iter().cloned()))
                .collect();
            assert_eq!(seen, expected);
        }
        // Stopping early.
        let (at, _) = &appended[10];
        let mut count = 0;
        wal.read_frames(at.segment, at.offset, at.offset, &mut |_, _| {
            count += 1;
            false
        })
        .unwrap();
        assert_eq!(count, 1);
        // An offset inside a frame, past the durable end, or in a purged segment: an error.
        let (big, _) = &appended[500];
        assert!(collect(big.segment, big.offset + 8, big.offset + 8).is_err());
        assert!(matches!(
            collect(big.segment, u64::MAX - 8, u64::MAX - 8),
            Err(Error::NoFrame { .. })
        ));
        let first_segment = appended[0].0.segment;
        wal.purge_before(wal.segments()[1].first_lsn).unwrap();
        assert!(matches!(
            collect(first_segment, appended[0].0.offset, appended[0].0.offset),
            Err(Error::NoFrame { .. })
        ));
    }
}

/// A write that lands in part and then fails, and a write that lands whole but whose flush
/// fails, poison the log like a write that fails outright: nothing is retried, every later
/// append fails, and a reopen recovers the acknowledged records (the failed append, never
/// acknowledged, all or nothing: a failed flush may have left it on disk).
#[test]
fn a_partial_write_and_a_failed_flush_poison_the_log() {
    for backend in BACKENDS {
        for partial in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::new();
            let opts = WalOptions {
                faults: Some(faults.clone()),
                ..small(backend)
            };
            // A multi-block append, so that a partial write lands some of its blocks.
            let big: Vec<Vec<u8>> = (0..3u64)
                .map(|i| {
                    let mut r = payload(100 + i);
                    r.resize(3000, 9);
                    r
                })
                .collect();
            {
                let wal = open(dir.path(), &opts);
                for i in 0..10u64 {
                    wal.append(&[payload(i)]).unwrap();
                }
                if partial {
                    faults.partial_write_at(faults.writes());
                } else {
                    faults.flush_failure_at(faults.writes());
                }
                let writes = faults.writes();
                let err = wal.append(&big).unwrap_err();
                assert!(err.to_string().contains("Input/output error"), "{err}");
                for i in 11..13u64 {
                    let err = wal.append(&[payload(i)]).unwrap_err();
                    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
                }
                assert!(wal.truncate_after(5).is_err());
                // Nothing was retried: the failed write was the last one attempted.
                assert_eq!(faults.writes(), writes + 1, "{backend:?}");
            }
            let reopened = WalOptions {
                faults: None,
                ..opts.clone()
            };
            let wal = open(dir.path(), &reopened);
            let got: Vec<Vec<u8>> = all_records(&wal).into_iter().map(|(_, d)| d).collect();
            let acked: Vec<Vec<u8>> = (0..10).map(payload).collect();
            assert_eq!(
                &got[..10],
                &acked[..],
                "{backend:?}: acknowledged records survive"
            );
            let rest = &got[10..];
            if partial {
                assert!(rest.is_empty(), "{backend:?}: half a write must not verify");
            } else {
                assert!(
                    rest.is_empty() || rest == &big[..],
                    "{backend:?}: all or nothing"
                );
            }
            // The repaired log takes appends again.
            wal.append(&[b"after".as_slice()]).unwrap();
        }
    }
}

/// A spare segment that cannot be prepared for a moment (a full disk) is retried; only a
/// failure that lasts poisons the log, at the roll that needs the segment.
#[test]
fn a_transient_failure_to_prepare_a_segment_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let opts = WalOptions {
        faults: Some(faults.clone()),
        recycle_segments: false,
        ..small(keel_wal::Backend::Blocking)
    };
    let wal = open(dir.path(), &opts);
    faults.fail_segment_preparations(3);
    for i in 0..200u64 {
        wal.append(&[payload(i)]).unwrap();
    }
    assert!(
        wal.segments().len() >= 5,
        "the log rolled through the failures"
    );
    // A lasting failure fails the roll that needs the segment, with a clear cause.
    faults.fail_segment_preparations(u64::MAX);
    let err = (200..400u64)
        .find_map(|i| wal.append(&[payload(i)]).err())
        .expect("a roll fails once preparing keeps failing");
    assert!(err.to_string().contains("No space left"), "{err}");
    drop(wal);
    let wal = open(
        dir.path(),
        &WalOptions {
            faults: None,
            ..opts
        },
    );
    assert!(all_records(&wal).len() >= 200);
}

/// An iterator made before a truncation and a purge keeps reading what it can and never
/// returns bytes the log wrote afterwards: records below the cut come back unchanged, and
/// reading what was cut or purged (whose file may be recycled and rewritten) is a clear
/// `NoFrame` error, not corruption and not new data.
#[test]
fn an_iterator_alive_across_truncate_and_purge_never_sees_rewritten_bytes() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(backend);
        let wal = open(dir.path(), &opts);
        for i in 0..400u64 {
            wal.append(&[payload(i)]).unwrap();
        }
        let segments = wal.segments();
        assert!(segments.len() >= 6);
        // Cut inside the third segment (sealed, so read through a map).
        let cut_at = segments[2].first_lsn + 3;
        let mut before_cut = wal.iter_from(segments[2].first_lsn).unwrap();
        let mut purged = wal.iter().unwrap();
        assert_eq!(
            before_cut.next().unwrap().unwrap().data,
            payload(segments[2].first_lsn - 1)
        );
        assert_eq!(purged.next().unwrap().unwrap().data, payload(0));
        wal.truncate_after(cut_at).unwrap();
        // Purge everything below the cut segment, and write over the recycled files.
        wal.purge_before(segments[2].first_lsn).unwrap();
        for i in 0..400u64 {
            wal.append(&[payload(10_000 + i)]).unwrap();
            if i % 20 == 19 {
                wal.purge_before(wal.next_lsn() - 20).unwrap();
            }
        }
        let mut seen = Vec::new();
        let mut error = None;
        for record in before_cut {
            match record {
                Ok(r) => seen.push(r),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        // What the iterator returns is what the log held when it was made (it may have
        // read ahead past the cut before the cut), never what was written afterwards.
        for r in &seen {
            assert_eq!(
                r.data,
                payload(r.lsn - 1),
                "{backend:?}: record {} changed",
                r.lsn
            );
        }
        assert!(
            seen.len() < 400,
            "{backend:?}: the iterator stopped at the truncation"
        );
        let error = error.expect("reading past the cut fails");
        assert!(
            matches!(error, Error::NoFrame { .. }),
            "{backend:?}: {error}"
        );
        assert!(error.to_string().contains("truncat"), "{error}");
        let error = purged
            .find_map(Result::err)
            .expect("reading a purged segment fails");
        assert!(
            matches!(error, Error::NoFrame { .. }),
            "{backend:?}: {error}"
        );
        assert!(error.to_string().contains("purged"), "{error}");
    }
}
