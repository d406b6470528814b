//! A power loss tears the write in flight at block granularity: any subset of its blocks
//! may hold the new bytes, the old bytes or zeros. Such a write was never acknowledged, so
//! recovery must cut it as a torn tail and keep every acknowledged record; damage that a
//! later, complete write follows stays corruption.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{all_records, payload, small};
use keel_wal::format::BLOCK_BYTES;
use keel_wal::{Appended, Backend, Error, Faults, RecoveryMode, SegmentHeader, Wal, WalOptions};

type Snapshot = BTreeMap<String, Vec<u8>>;

fn snapshot(dir: &Path) -> Snapshot {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn restore(files: &Snapshot) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// Records with this many bytes make an append span several blocks.
fn big_records(seed: u64, count: u64, len: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut r = payload(seed * 100 + i);
            r.resize(len, (seed + i) as u8);
            r
        })
        .collect()
}

/// A log whose last write is `last`, with the files before and after it.
struct LastWrite {
    before: Snapshot,
    after: Snapshot,
    /// Every record acknowledged before the last write, by position.
    acked: Vec<(u64, Vec<u8>)>,
    last: Appended,
    last_records: Vec<Vec<u8>>,
    /// The appends of the last write (each all or nothing after recovery).
    last_appends: Vec<Vec<Vec<u8>>>,
    /// Blocks of the last write, when known otherwise than from `last`.
    last_blocks: Option<std::ops::Range<usize>>,
    opts: WalOptions,
}

impl LastWrite {
    fn file(&self) -> String {
        keel_wal::segment_path(Path::new(""), self.last.segment)
            .to_string_lossy()
            .into_owned()
    }

    /// The blocks the last write covered.
    fn blocks(&self) -> std::ops::Range<usize> {
        if let Some(blocks) = &self.last_blocks {
            return blocks.clone();
        }
        let after = &self.after[&self.file()];
        let first = if self.last.offset == BLOCK_BYTES as u64
            && SegmentHeader::decode(after).unwrap().unwrap().first_lsn == self.last.first_lsn
        {
            0 // The segment's first write carries the header block.
        } else {
            self.last.offset as usize / BLOCK_BYTES
        };
        let len: usize = self.last_records.iter().map(|r| 4 + r.len()).sum::<usize>() + 32;
        let end = (self.last.offset as usize + len).div_ceil(BLOCK_BYTES);
        first..end
    }

    /// The files with the blocks of the last write in `dropped` set to zeros or to what
    /// they held before the write.
    fn torn(&self, dropped: &[usize], to_zeros: bool) -> Snapshot {
        let mut files = self.after.clone();
        let name = self.file();
        let old = self
            .before
            .get(&name)
            .cloned()
            .unwrap_or_else(|| vec![0u8; files[&name].len()]);
        let bytes = files.get_mut(&name).unwrap();
        for &block in dropped {
            let range = block * BLOCK_BYTES..(block + 1) * BLOCK_BYTES;
            if to_zeros {
                bytes[range].fill(0);
            } else {
                bytes[range.clone()].copy_from_slice(&old[range]);
            }
        }
        files
    }

    /// Recovers the torn files and checks that every acknowledged record is back, the last
    /// write's records all or none, positions gap-free, and that the log takes appends.
    fn check(&self, files: &Snapshot, what: &str) {
        let dir = restore(files);
        let wal = Wal::open(dir.path(), self.opts.clone())
            .unwrap_or_else(|e| panic!("{what}: recovery refused a torn last write: {e}"));
        let got = all_records(&wal);
        assert!(
            got.len() >= self.acked.len(),
            "{what}: lost acknowledged records"
        );
        assert_eq!(&got[..self.acked.len()], &self.acked[..], "{what}");
        // What is left are whole appends of the torn write, each all or nothing.
        let mut rest: &[(u64, Vec<u8>)] = &got[self.acked.len()..];
        while !rest.is_empty() {
            let whole = self.last_appends.iter().find(|records| {
                records.len() <= rest.len() && records.iter().zip(rest).all(|(r, (_, d))| r == d)
            });
            let Some(whole) = whole else {
                panic!(
                    "{what}: the torn write is half visible at position {}",
                    rest[0].0
                );
            };
            rest = &rest[whole.len()..];
        }
        let at = wal.append(&[b"after".as_slice()]).unwrap();
        drop(wal);
        // The repair is complete: the strict mode finds nothing wrong.
        let strict = WalOptions {
            recovery_mode: RecoveryMode::AbsoluteConsistency,
            ..self.opts.clone()
        };
        let wal = Wal::open(dir.path(), strict).unwrap_or_else(|e| panic!("{what}: {e}"));
        let again = all_records(&wal);
        assert_eq!(again.len(), got.len() + 1, "{what}");
        assert_eq!(
            again.last().unwrap(),
            &(at.first_lsn, b"after".to_vec()),
            "{what}"
        );
    }
}

/// Runs `prepare` on a fresh log, then appends `last_records` as its last write.
fn last_write(prepare: impl FnOnce(&Wal), last_records: Vec<Vec<u8>>) -> LastWrite {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(Backend::Blocking);
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    prepare(&wal);
    let acked = all_records(&wal);
    let before = snapshot(dir.path());
    let last = wal.append(&last_records).unwrap();
    drop(wal);
    LastWrite {
        before,
        after: snapshot(dir.path()),
        acked,
        last,
        last_appends: vec![last_records.clone()],
        last_records,
        last_blocks: None,
        opts,
    }
}

/// Every subset of the write's blocks (all of them up to 2^8, a seeded sample beyond).
fn subsets(blocks: std::ops::Range<usize>) -> Vec<Vec<usize>> {
    let all: Vec<usize> = blocks.collect();
    let n = all.len();
    let pick = |mask: u64| -> Vec<usize> {
        (0..n)
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| all[i])
            .collect()
    };
    if n <= 8 {
        (1..1u64 << n).map(pick).collect()
    } else {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..256)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pick(x & ((1 << n) - 1) | 1)
            })
            .collect()
    }
}

fn drop_every_subset(case: &LastWrite, name: &str) -> usize {
    let blocks = case.blocks();
    assert!(
        blocks.len() >= 3,
        "{name}: the last write spans {} blocks",
        blocks.len()
    );
    let mut checked = 0;
    for dropped in subsets(blocks) {
        for to_zeros in [true, false] {
            let files = case.torn(&dropped, to_zeros);
            let what = format!(
                "{name}: blocks {dropped:?} dropped to {}",
                if to_zeros { "zeros" } else { "old bytes" }
            );
            case.check(&files, &what);
            checked += 1;
        }
    }
    checked
}

#[test]
fn a_torn_write_in_the_middle_of_a_segment_is_a_torn_tail() {
    let case = last_write(
        |wal| {
            for i in 0..5u64 {
                wal.append(&[payload(i)]).unwrap();
            }
        },
        big_records(1, 3, 3000),
    );
    let n = drop_every_subset(&case, "middle of a segment");
    assert!(n >= 14);
}

#[test]
fn a_torn_first_write_of_a_fresh_segment_is_a_torn_tail() {
    let case = last_write(
        |wal| {
            // Fill the first segment so that the last append rolls to a new one.
            let mut i = 0;
            while wal.segments().len() < 2 {
                wal.append(&[payload(i)]).unwrap();
                i += 1;
            }
            let seq = wal.segments().last().unwrap().seq;
            while wal.append(&[payload(i)]).unwrap().segment == seq {
                i += 1;
            }
            // Now fill that one almost up, so the next multi-block append starts another.
            let seq = wal.segments().last().unwrap().seq;
            while wal.segments().last().unwrap().bytes < 60 << 10
                && wal.segments().last().unwrap().seq == seq
            {
                wal.append(&[payload(i)]).unwrap();
                i += 1;
            }
        },
        big_records(2, 3, 3000),
    );
    assert_eq!(case.blocks().start, 0, "the last write starts a segment");
    let header = SegmentHeader::decode(&case.after[&case.file()])
        .unwrap()
        .unwrap();
    assert!(!header.recycled);
    drop_every_subset(&case, "first write of a fresh segment");
}

#[test]
fn a_torn_first_write_of_a_recycled_segment_is_a_torn_tail() {
    let case = last_write(
        |wal| {
            // Write a few segments, purge them so their files are recycled, and stop
            // right before the append that rolls onto a recycled file.
            let mut i = 0;
            while wal.segments().len() < 4 {
                wal.append(&[payload(i)]).unwrap();
                i += 1;
            }
            wal.purge_before(wal.next_lsn()).unwrap();
            let seq = wal.segments().last().unwrap().seq;
            while wal.segments().last().unwrap().bytes < 60 << 10
                && wal.segments().last().unwrap().seq == seq
            {
                wal.append(&[payload(i)]).unwrap();
                i += 1;
            }
        },
        big_records(3, 3, 3000),
    );
    assert_eq!(case.blocks().start, 0, "the last write starts a segment");
    let header = SegmentHeader::decode(&case.after[&case.file()])
        .unwrap()
        .unwrap();
    assert!(header.recycled, "the last write went into a recycled file");
    drop_every_subset(&case, "first write of a recycled segment");
}

#[test]
fn damage_before_a_complete_later_write_is_corruption() {
    // The write before the last one spans several blocks; the last one is complete.
    let mut previous = None;
    let case = last_write(
        |wal| {
            for i in 0..3u64 {
                wal.append(&[payload(i)]).unwrap();
            }
            previous = Some(wal.append(&big_records(4, 3, 3000)).unwrap());
        },
        vec![payload(99)],
    );
    let previous = previous.unwrap();
    assert_eq!(previous.segment, case.last.segment);
    let first = previous.offset as usize / BLOCK_BYTES;
    let end = case.last.offset as usize / BLOCK_BYTES;
    assert!(end - first >= 3);
    let name = case.file();
    for dropped in subsets(first..end) {
        let mut files = case.after.clone();
        for &block in &dropped {
            files.get_mut(&name).unwrap()[block * BLOCK_BYTES..(block + 1) * BLOCK_BYTES].fill(0);
        }
        let dir = restore(&files);
        match Wal::open(dir.path(), case.opts.clone()) {
            Err(Error::Corruption { .. }) => {}
            Err(other) => panic!("blocks {dropped:?}: expected corruption, got {other}"),
            Ok(_) => panic!("blocks {dropped:?}: damage before a complete write was accepted"),
        }
    }
}

#[test]
fn a_torn_write_of_several_appends_is_a_torn_tail() {
    // Concurrent appenders share one write; the device keeps that write back (it never
    // lands), so that every subset of its blocks can be landed by hand.
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let opts = WalOptions {
        faults: Some(faults.clone()),
        ..small(Backend::Blocking)
    };
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    for i in 0..3u64 {
        wal.append(&[payload(i)]).unwrap();
    }
    faults.capture_write_from(faults.writes(), 2);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..6u64 {
            let (wal, failed) = (&wal, &failed);
            s.spawn(move || {
                for k in 0..5000u64 {
                    // Over a block each, so any write of two or more spans three blocks.
                    let records = big_records(10 + w * 1000 + k, 1, 4200 + 300 * w as usize);
                    if wal.append(&records).is_err() {
                        failed.lock().unwrap().push(records);
                        return;
                    }
                }
            });
        }
    });
    let captured = faults
        .captured()
        .expect("a write with several appends was captured");
    let acked = all_records(&wal);
    drop(wal);
    let before = snapshot(dir.path());
    let name = keel_wal::segment_path(Path::new(""), captured.segment)
        .to_string_lossy()
        .into_owned();
    let mut after = before.clone();
    let offset = captured.offset as usize;
    after.get_mut(&name).unwrap()[offset..offset + captured.bytes.len()]
        .copy_from_slice(&captured.bytes);
    let first_block = offset / BLOCK_BYTES;
    let case = LastWrite {
        before,
        after,
        acked,
        last: Appended {
            first_lsn: 0,
            count: 0,
            segment: captured.segment,
            offset: captured.offset,
        },
        last_records: Vec::new(),
        last_appends: failed.into_inner().unwrap(),
        last_blocks: Some(first_block..first_block + captured.bytes.len() / BLOCK_BYTES),
        opts: WalOptions {
            faults: None,
            ..opts
        },
    };
    assert!(captured.appends >= 2);
    // The whole write landing is one of the outcomes too.
    case.check(&case.after, "the whole write landed");
    drop_every_subset(&case, "a write of several appends");
}
