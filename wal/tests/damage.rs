//! Torn and corrupt files: what each recovery mode makes of them.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{all_records, payload, small};
use keel_wal::format::{BLOCK_BYTES, frame_len};
use keel_wal::{Appended, Backend, Error, RecoveryMode, Wal, WalOptions};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    frames: Vec<(Appended, u64)>,
    opts: WalOptions,
}

impl Fixture {
    /// A closed log of a few segments; each append is a frame of two records.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let opts = small(Backend::Blocking);
        let wal = Wal::open(&path, opts.clone()).unwrap();
        let mut frames = Vec::new();
        for i in 0..700u64 {
            let records = [payload(2 * i), payload(2 * i + 1)];
            let at = wal.append(&records).unwrap();
            let len = frame_len(records.iter().map(|r| r.len())) as u64;
            frames.push((at, len));
        }
        assert!(wal.segments().len() >= 3);
        drop(wal);
        Fixture {
            _dir: dir,
            path,
            frames,
            opts,
        }
    }

    /// A fresh copy of the log to damage.
    fn copy(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("log");
        fs::create_dir(&to).unwrap();
        for entry in fs::read_dir(&self.path).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        (dir, to)
    }

    fn last_segment(&self) -> u64 {
        self.frames.last().unwrap().0.segment
    }

    fn frames_in(&self, seq: u64) -> Vec<(Appended, u64)> {
        self.frames
            .iter()
            .copied()
            .filter(|(a, _)| a.segment == seq)
            .collect()
    }

    fn records_before(&self, frame: &Appended) -> usize {
        usize::try_from(frame.first_lsn - 1).unwrap()
    }

    fn open(&self, dir: &Path, mode: RecoveryMode) -> keel_wal::Result<Wal> {
        Wal::open(
            dir,
            WalOptions {
                recovery_mode: mode,
                ..self.opts.clone()
            },
        )
    }
}

fn segment_file(dir: &Path, seq: u64) -> PathBuf {
    keel_wal::segment_path(dir, seq)
}

fn write_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn zero_from(path: &Path, offset: u64) {
    let len = fs::metadata(path).unwrap().len();
    write_bytes(
        path,
        offset,
        &vec![0u8; usize::try_from(len - offset).unwrap()],
    );
}

fn flip(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    file.write_all_at(&[b[0] ^ 0x5A], offset).unwrap();
}

#[test]
fn cut_at_every_frame_boundary_of_the_tail_recovers_the_prefix() {
    let fx = Fixture::new();
    let seq = fx.last_segment();
    for (frame, _) in fx.frames_in(seq) {
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::AbsoluteConsistency,
        ] {
            let (_keep, dir) = fx.copy();
            zero_from(&segment_file(&dir, seq), frame.offset);
            let wal = fx.open(&dir, mode).unwrap();
            assert_eq!(
                all_records(&wal).len(),
                fx.records_before(&frame),
                "{mode:?}"
            );
        }
    }
}

#[test]
fn cut_inside_a_tail_frame_is_a_torn_tail() {
    let fx = Fixture::new();
    let seq = fx.last_segment();
    for (frame, len) in fx.frames_in(seq) {
        for cut in [
            frame.offset + 1,
            frame.offset + len / 2,
            frame.offset + len - 1,
        ] {
            // Garbage left after the cut: the rest of the frame.
            let (_keep, dir) = fx.copy();
            let file = segment_file(&dir, seq);
            zero_from(&file, frame.offset + len);
            zero_from(&file, cut);
            write_bytes(&file, cut - 1, &[0xEE]);
            let err = fx
                .open(&dir, RecoveryMode::AbsoluteConsistency)
                .unwrap_err();
            match &err {
                Error::TornTail { path, offset, .. } => {
                    assert_eq!(path, &file);
                    assert_eq!(*offset, frame.offset);
                }
                other => panic!("expected a torn tail, got {other}"),
            }
            let wal = fx.open(&dir, RecoveryMode::TolerateTornTail).unwrap();
            assert_eq!(all_records(&wal).len(), fx.records_before(&frame));
            drop(wal);
            // Recovering again finds a clean log, even in the strict mode.
            let wal = fx.open(&dir, RecoveryMode::AbsoluteConsistency).unwrap();
            assert_eq!(all_records(&wal).len(), fx.records_before(&frame));
        }
    }
}

#[test]
fn truncated_file_recovers_the_prefix() {
    let fx = Fixture::new();
    let seq = fx.last_segment();
    let frames = fx.frames_in(seq);
    for (frame, len) in frames.iter().step_by(7) {
        for cut in [frame.offset, frame.offset + len / 2] {
            let (_keep, dir) = fx.copy();
            let file = segment_file(&dir, seq);
            OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let wal = fx.open(&dir, RecoveryMode::TolerateTornTail).unwrap();
            assert_eq!(all_records(&wal).len(), fx.records_before(frame));
            // The shortened segment still takes appends.
            for i in 0..50u64 {
                wal.append(&[payload(i)]).unwrap();
            }
            let n = all_records(&wal).len();
            drop(wal);
            let wal = fx.open(&dir, RecoveryMode::AbsoluteConsistency).unwrap();
            assert_eq!(all_records(&wal).len(), n);
        }
    }
}

#[test]
fn flipped_byte_in_the_last_frame_is_a_torn_tail() {
    let fx = Fixture::new();
    let (last, len) = *fx.frames.last().unwrap();
    let file_of = |dir: &Path| segment_file(dir, last.segment);
    for at in [0, 4, 9, 20, len / 2, len - 1] {
        let (_keep, dir) = fx.copy();
        flip(&file_of(&dir), last.offset + at);
        assert!(matches!(
            fx.open(&dir, RecoveryMode::AbsoluteConsistency),
            Err(Error::TornTail { .. })
        ));
        let wal = fx.open(&dir, RecoveryMode::TolerateTornTail).unwrap();
        assert_eq!(all_records(&wal).len(), fx.records_before(&last));
    }
}

#[test]
fn flipped_byte_in_the_middle_is_corruption_in_every_mode() {
    let fx = Fixture::new();
    let first_seq = fx.frames[0].0.segment;
    let last_seq = fx.last_segment();
    let middle_of_first = fx.frames_in(first_seq)[10];
    let tail_frames = fx.frames_in(last_seq);
    let middle_of_last = tail_frames[tail_frames.len() / 2];
    for (frame, len) in [middle_of_first, middle_of_last] {
        for at in [0, 5, 13, 22, len - 3] {
            let (_keep, dir) = fx.copy();
            let file = segment_file(&dir, frame.segment);
            flip(&file, frame.offset + at);
            for mode in [
                RecoveryMode::TolerateTornTail,
                RecoveryMode::AbsoluteConsistency,
            ] {
                match fx.open(&dir, mode) {
                    Err(Error::Corruption { path, offset, .. }) => {
                        assert_eq!(path, file);
                        assert_eq!(offset, frame.offset);
                    }
                    Err(other) => panic!("expected corruption, got {other}"),
                    Ok(_) => panic!("damage in the middle was accepted ({mode:?})"),
                }
            }
            // Nothing was changed by the refused opens.
            let err = keel_wal::verify(&dir).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("offset {}", frame.offset)),
                "{err}"
            );
        }
    }
}

#[test]
fn zeroed_block_in_the_middle_is_corruption() {
    let fx = Fixture::new();
    let seq = fx.frames[0].0.segment;
    let frame = fx.frames_in(seq)[10].0;
    let block = frame.offset / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
    let (_keep, dir) = fx.copy();
    let file = segment_file(&dir, seq);
    write_bytes(&file, block, &[0u8; BLOCK_BYTES]);
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let err = fx.open(&dir, mode).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
    }
    // A zeroed segment header with later segments is corruption too.
    let (_keep, dir) = fx.copy();
    write_bytes(&segment_file(&dir, seq), 0, &[0u8; BLOCK_BYTES]);
    let err = fx.open(&dir, RecoveryMode::TolerateTornTail).unwrap_err();
    assert!(matches!(err, Error::Corruption { offset: 0, .. }), "{err}");
}

#[test]
fn a_lost_middle_segment_is_reported() {
    let fx = Fixture::new();
    let (_keep, dir) = fx.copy();
    let middle = fx.frames[fx.frames.len() / 2].0.segment;
    assert_ne!(middle, fx.frames[0].0.segment);
    assert_ne!(middle, fx.last_segment());
    fs::remove_file(segment_file(&dir, middle)).unwrap();
    let err = fx.open(&dir, RecoveryMode::TolerateTornTail).unwrap_err();
    assert!(err.to_string().contains("previous one ends"), "{err}");
}
