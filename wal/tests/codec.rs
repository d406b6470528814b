//! Property tests of the frame codec.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

use keel_wal::format::{decode_frame, encode_frame, frame_len, frame_records};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn encode(seq: u64, first: u64, records: &[Vec<u8>]) -> Vec<u8> {
    encode_in(seq, first, 0, records)
}

fn encode_in(seq: u64, first: u64, write_start: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = vec![0u8; frame_len(records.iter().map(Vec::len))];
    encode_frame(&mut buf, seq, first, write_start, records);
    buf
}

proptest! {
    #[test]
    fn round_trip(
        seq in any::<u64>(),
        first in 0u64..u64::MAX / 2,
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..20),
    ) {
        let buf = encode(seq, first, &records);
        prop_assert_eq!(buf.len() % 8, 0);
        let info = decode_frame(&buf, seq, MAX).unwrap();
        prop_assert_eq!(info.len, buf.len());
        prop_assert_eq!(info.first_lsn, first);
        prop_assert_eq!(info.count as usize, records.len());
        let back: Vec<Vec<u8>> = frame_records(&buf, info.count).map(<[u8]>::to_vec).collect();
        prop_assert_eq!(back, records);
        // Trailing bytes after the frame do not matter.
        let mut longer = buf.clone();
        longer.extend_from_slice(&[0xFF; 16]);
        prop_assert_eq!(decode_frame(&longer, seq, MAX).unwrap(), info);
    }

    #[test]
    fn any_corrupted_byte_is_detected(
        seq in any::<u64>(),
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..8),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut buf = encode(seq, 42, &records);
        let at = at.index(buf.len());
        buf[at] ^= mask;
        prop_assert!(decode_frame(&buf, seq, MAX).is_err());
    }

    #[test]
    fn any_prefix_is_rejected(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let buf = encode(3, 1, &records);
        let cut = cut.index(buf.len());
        prop_assert!(decode_frame(&buf[..cut], 3, MAX).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame(&bytes, 1, MAX);
    }
}

/// A segment holding `records` as frames: each frame its own write (starting on a block
/// boundary) or all of them one write (the segment's first, starting at 0).
fn segment_with(records: &[Vec<Vec<u8>>], seq: u64, one_write: bool) -> (Vec<u8>, Vec<usize>) {
    use keel_wal::format::BLOCK_BYTES;
    let mut segment = vec![0u8; BLOCK_BYTES];
    keel_wal::SegmentHeader {
        seq,
        first_lsn: 1,
        recycled: false,
    }
    .encode(&mut segment);
    let mut lsn = 1;
    let mut starts = Vec::new();
    for (i, frame) in records.iter().enumerate() {
        if !one_write && i > 0 {
            segment.resize(segment.len().next_multiple_of(BLOCK_BYTES), 0);
        }
        let write_start = if one_write || i == 0 {
            0
        } else {
            segment.len() as u64
        };
        starts.push(segment.len());
        segment.extend_from_slice(&encode_in(seq, lsn, write_start, frame));
        lsn += frame.len() as u64;
    }
    segment.resize(segment.len() + 4096, 0);
    (segment, starts)
}

proptest! {
    #[test]
    fn segment_scanner_survives_any_bytes(seq in 0u64..4, bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        let summary = keel_wal::scan_segment_bytes(&bytes, seq);
        prop_assert!(summary.end_offset as usize <= bytes.len().max(4096));
    }

    #[test]
    fn damage_inside_a_segment_is_never_silently_accepted(
        frames in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4), 2..12),
        victim in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (mut segment, starts) = segment_with(&frames, 2, false);
        let clean = keel_wal::scan_segment_bytes(&segment, 2);
        prop_assert_eq!(clean.frames as usize, frames.len());
        prop_assert!(clean.damage.is_none());
        let v = victim.index(frames.len());
        let len = frame_len(frames[v].iter().map(Vec::len));
        let pos = starts[v] + at.index(len);
        segment[pos] ^= mask;
        let hurt = keel_wal::scan_segment_bytes(&segment, 2);
        // The scan stops at the damaged frame and reports it: corruption if valid frames
        // follow, a torn tail if it was the last.
        prop_assert_eq!(hurt.frames as usize, v);
        let (offset, _, corrupt) = hurt.damage.expect("damage is reported");
        prop_assert_eq!(offset as usize, starts[v]);
        prop_assert_eq!(corrupt, v + 1 < frames.len());
    }

    #[test]
    fn damage_inside_the_last_write_is_a_torn_tail(
        frames in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4), 2..12),
        victim in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        // All frames are one write, the segment's first: damage anywhere in it is a torn
        // write (never acknowledged), whatever valid frames of that write follow.
        let (mut segment, starts) = segment_with(&frames, 2, true);
        let clean = keel_wal::scan_segment_bytes(&segment, 2);
        prop_assert_eq!(clean.frames as usize, frames.len());
        let v = victim.index(frames.len());
        let end = starts.get(v + 1).copied().unwrap_or(clean.end_offset as usize);
        let pos = starts[v] + at.index(end - starts[v]);
        segment[pos] ^= mask;
        let hurt = keel_wal::scan_segment_bytes(&segment, 2);
        let (_, _, corrupt) = hurt.damage.expect("damage is reported");
        prop_assert!(!corrupt);
        prop_assert!(hurt.frames as usize <= v);
    }
}
