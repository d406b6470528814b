//! Feeds arbitrary bytes to the segment scanner recovery uses: it must never panic or read
//! out of bounds, and what it accepts must decode again frame by frame.
#![no_main]

use keel_wal::format::{BLOCK_BYTES, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seq, rest)) = data.split_first() else { return };
    let seq = u64::from(seq % 4);
    // Give the scanner a plausible segment: a valid header block followed by the input.
    let mut segment = vec![0u8; BLOCK_BYTES];
    keel_wal::SegmentHeader { seq, first_lsn: 1, recycled: false }.encode(&mut segment);
    segment.extend_from_slice(rest);
    let summary = keel_wal::scan_segment_bytes(&segment, seq);
    let mut offset = BLOCK_BYTES;
    for _ in 0..summary.frames {
        let frame = decode_frame(&segment[offset..], seq, 1 << 31).expect("accepted frames decode");
        offset += frame.len;
    }
    assert_eq!(offset as u64, summary.end_offset);
    // The raw input as a whole segment, header and all.
    let _ = keel_wal::scan_segment_bytes(rest, seq);
});
