//! Property tests of the frame codec.
#![allow(clippy::cast_possible_truncation)] // Test arithmetic on small values.

use keel_wal::format::{decode_frame, encode_frame, frame_len, frame_records};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn encode(seq: u64, first: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = vec![0u8; frame_len(records.iter().map(Vec::len))];
    encode_frame(&mut buf, seq, first, records);
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
