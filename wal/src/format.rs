//! The on-disk format, byte by byte. Every integer is little-endian.
//!
//! # Segment
//!
//! A segment is a preallocated, zero-filled file named `{seq:020}.wal`. Its first
//! [`BLOCK_BYTES`] bytes hold the segment header; frames start at offset [`BLOCK_BYTES`].
//! A segment whose header block is all zeros has never been written (a spare).
//!
//! ```text
//! offset size field
//!      0    8 magic            b"KEELWAL\0"
//!      8    4 format version   FORMAT_VERSION (2)
//!     12    4 data offset      BLOCK_BYTES (4096): where the first frame starts
//!     16    8 segment seq      the number in the file name; salts every frame checksum
//!     24    8 first lsn        the position of the first record this segment holds
//!     32    4 flags            bit 0: recycled (see below); other bits zero
//!     36    4 header crc32     crc32 of bytes [0, 36)
//!     40 4056 zero
//! ```
//!
//! A *recycled* segment is the file of a purged segment reused under a new sequence
//! number, so that a new segment need not be zero-filled. Its old frames stay behind the
//! written part; their checksums are seeded with the old sequence number, so they never
//! verify as frames of this segment. Recovery therefore reads non-zero bytes after the
//! last frame of a recycled segment as old data, not as a torn write. A recycled segment
//! that has not been written yet has first lsn [`UNUSED_LSN`].
//!
//! # Write
//!
//! Frames reach the disk in *writes*: one group commit is one write of whole blocks. A
//! write never shares a block with an earlier write: it starts on a block boundary (the
//! first write of a segment at offset 0, with the header block), and the bytes after its
//! last frame up to the next block boundary are zeros (*padding*). So a write never
//! rewrites a block that holds acknowledged frames, and a write that a power loss tears —
//! any subset of its blocks holding new bytes, old bytes or zeros — can only damage
//! frames of that write, which was never acknowledged.
//!
//! Every frame names the offset where its write starts. Recovery uses it to tell a torn
//! last write (damage followed only by frames of the same write) from corruption (damage
//! followed by a frame of a later write, which was issued only after the damaged one was
//! durable). A zero length field at an offset that is not a block boundary is padding:
//! the next frame, if any, starts at the next block boundary.
//!
//! # Frame
//!
//! One append is one frame, so a batch of records is atomic: either its whole frame
//! verifies or none of its records is recovered. Frames start on 8-byte boundaries.
//!
//! ```text
//! offset size field
//!      0    4 crc32            over bytes [4, frame_len), seeded with salt(segment seq)
//!      4    4 frame_len        total length including this header and the padding, a multiple of 8
//!      8    8 first lsn        position of the first record; the others follow consecutively
//!     16    4 record count     at least 1
//!     20    1 kind             1 = records
//!     21    1 frame magic      0xA7
//!     22    2 reserved         zero
//!     24    4 write start      offset of the first byte of the write holding this frame (a block boundary)
//!     28    4 reserved         zero
//!     32    . records          `count` times: u32 length, then that many payload bytes
//!      .    . padding          zeros up to the next multiple of 8
//! ```
//!
//! Version 1 (before this layout) had a 24-byte frame header without the write start,
//! and writes that shared blocks; this build refuses version-1 segments with
//! [`crate::Error::UnsupportedFormat`].
//!
//! The checksum is seeded with the segment's sequence number so that a frame copied into
//! (or left over in) a segment with another sequence number never verifies.

use crate::error::FrameError;

/// Size of a disk block: the alignment of every write and of the first frame.
pub const BLOCK_BYTES: usize = 4096;
const BLOCK_BYTES_U32: u32 = 4096;
const _: () = assert!(BLOCK_BYTES_U32 as usize == BLOCK_BYTES);
/// Bytes of the segment header block.
pub const SEGMENT_HEADER_BYTES: usize = BLOCK_BYTES;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Bytes of the length prefix in front of each record.
pub const RECORD_PREFIX_BYTES: usize = 4;
/// Frames start on multiples of this.
pub const FRAME_ALIGN: usize = 8;
/// The on-disk format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// Magic bytes at the start of each segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";
/// Frame kind: a batch of records.
pub const FRAME_KIND_RECORDS: u8 = 1;
/// A fixed byte in every frame header, a cheap filter before the checksum.
pub const FRAME_MAGIC: u8 = 0xA7;
const SEGMENT_HEADER_USED: usize = 40;
/// Header flag: the file held an earlier segment (see the module documentation).
pub const SEGMENT_FLAG_RECYCLED: u32 = 1;
/// First lsn of a recycled segment that has not been written yet.
pub const UNUSED_LSN: Lsn = u64::MAX;

/// A log sequence number: the position of one record. Records are numbered consecutively.
pub type Lsn = u64;

/// The checksum seed for frames in segment `seq`.
pub fn salt(seq: u64) -> u32 {
    // Both halves take part so that segments 2^32 apart still differ.
    let folded = (seq & 0xFFFF_FFFF) ^ (seq >> 32);
    let folded = u32::try_from(folded).expect("folded into 32 bits");
    folded.wrapping_mul(0x9E37_79B1) ^ 0x4B45_454C
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Rounds `n` down to a multiple of `align` (a power of two).
pub const fn align_down(n: usize, align: usize) -> usize {
    n & !(align - 1)
}

/// Rounds a file offset up to a whole block.
pub const fn align_up_u64(n: u64) -> u64 {
    (n + BLOCK_BYTES as u64 - 1) & !(BLOCK_BYTES as u64 - 1)
}

/// Rounds a file offset down to a whole block.
pub const fn align_down_u64(n: u64) -> u64 {
    n & !(BLOCK_BYTES as u64 - 1)
}

/// Something that can be written as one record without an intermediate copy.
///
/// The log asks for the length first, then hands out exactly that many bytes of its
/// write buffer. A raft log store implements this for its entries (group, index, term
/// and data) so that an entry is copied once, straight into the aligned write buffer.
pub trait Payload {
    /// Number of bytes `encode_into` writes.
    fn encoded_len(&self) -> usize;
    /// Writes the record into `out`, whose length is exactly `encoded_len()`.
    fn encode_into(&self, out: &mut [u8]);
}

impl Payload for [u8] {
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn encode_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
}

impl Payload for Vec<u8> {
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn encode_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
}

impl<const N: usize> Payload for [u8; N] {
    fn encoded_len(&self) -> usize {
        N
    }
    fn encode_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
}

impl<T: Payload + ?Sized> Payload for &T {
    fn encoded_len(&self) -> usize {
        (**self).encoded_len()
    }
    fn encode_into(&self, out: &mut [u8]) {
        (**self).encode_into(out);
    }
}

/// The decoded fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's sequence number.
    pub seq: u64,
    /// Position of the first record the segment holds (or will hold), or [`UNUSED_LSN`].
    pub first_lsn: Lsn,
    /// The file held an earlier segment: bytes after the last frame are old data.
    pub recycled: bool,
}

impl SegmentHeader {
    /// Writes the header into the first bytes of `out` (at least 40 bytes, zeroed).
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&BLOCK_BYTES_U32.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        let flags = if self.recycled {
            SEGMENT_FLAG_RECYCLED
        } else {
            0
        };
        out[32..36].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&out[0..36]);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
    }

    /// True for a recycled segment that has not been written yet: a spare.
    pub fn is_unused(&self) -> bool {
        self.first_lsn == UNUSED_LSN
    }

    /// Decodes a header block. `Ok(None)` means the block is all zeros: a spare segment.
    pub fn decode(block: &[u8]) -> Result<Option<SegmentHeader>, String> {
        if block.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "segment is {} bytes, shorter than its {SEGMENT_HEADER_BYTES}-byte header",
                block.len()
            ));
        }
        let block = &block[..SEGMENT_HEADER_BYTES];
        if is_zero(block) {
            return Ok(None);
        }
        if block[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        let stored = read_u32(block, 36);
        let actual = crc32fast::hash(&block[0..36]);
        if stored != actual {
            return Err(format!(
                "segment header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ));
        }
        let version = read_u32(block, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        let data_offset = read_u32(block, 12);
        if data_offset as usize != BLOCK_BYTES {
            return Err(format!("unsupported data offset {data_offset}"));
        }
        let flags = read_u32(block, 32);
        if flags & !SEGMENT_FLAG_RECYCLED != 0 {
            return Err(format!("unknown segment flags {flags:#x}"));
        }
        if !is_zero(&block[SEGMENT_HEADER_USED..]) {
            return Err("non-zero bytes in the reserved part of the segment header".into());
        }
        Ok(Some(SegmentHeader {
            seq: read_u64(block, 16),
            first_lsn: read_u64(block, 24),
            recycled: flags & SEGMENT_FLAG_RECYCLED != 0,
        }))
    }
}

/// The format version of a header block that is intact (magic and checksum verify) but
/// written by another version of the format; `None` for any other block.
pub fn other_version(block: &[u8]) -> Option<u32> {
    if block.len() < SEGMENT_HEADER_USED || block[0..8] != SEGMENT_MAGIC {
        return None;
    }
    let version = read_u32(block, 8);
    let intact = read_u32(block, 36) == crc32fast::hash(&block[0..36]);
    (intact && version != FORMAT_VERSION).then_some(version)
}

/// Length of the frame that holds records of the given payload lengths: the one place
/// frame sizes are computed (the log's size checks and its users' batching use it).
/// Saturates instead of overflowing, so a caller can compare any input with a limit.
pub fn frame_len(payload_lens: impl IntoIterator<Item = usize>) -> usize {
    let body = payload_lens.into_iter().fold(0usize, |sum, len| {
        sum.saturating_add(RECORD_PREFIX_BYTES).saturating_add(len)
    });
    align_up(
        FRAME_HEADER_BYTES
            .saturating_add(body)
            .min(usize::MAX - FRAME_ALIGN),
        FRAME_ALIGN,
    )
}

/// Encodes one frame into `out`, which must be exactly `frame_len` of the records. Every
/// byte is written, padding included, so `out` may hold anything before.
///
/// `write_start` is the offset where the write holding the frame starts (see the module
/// documentation); it is a block boundary that is not above the frame's own offset.
pub fn encode_frame<P: Payload>(
    out: &mut [u8],
    seq: u64,
    first_lsn: Lsn,
    write_start: u64,
    records: &[P],
) {
    let total = out.len();
    debug_assert_eq!(total % FRAME_ALIGN, 0);
    debug_assert_eq!(write_start % BLOCK_BYTES as u64, 0);
    let count = u32::try_from(records.len()).expect("record count is bounded by the batch size");
    out[4..8].copy_from_slice(&u32::try_from(total).expect("frame bounded").to_le_bytes());
    out[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    out[16..20].copy_from_slice(&count.to_le_bytes());
    out[20] = FRAME_KIND_RECORDS;
    out[21] = FRAME_MAGIC;
    out[22..24].fill(0);
    let write_start = u32::try_from(write_start).expect("segments are below 4 GiB");
    out[24..28].copy_from_slice(&write_start.to_le_bytes());
    out[28..32].fill(0);
    let mut at = FRAME_HEADER_BYTES;
    for record in records {
        let len = record.encoded_len();
        let len32 = u32::try_from(len).expect("record length is bounded by record_bytes_max");
        out[at..at + RECORD_PREFIX_BYTES].copy_from_slice(&len32.to_le_bytes());
        at += RECORD_PREFIX_BYTES;
        record.encode_into(&mut out[at..at + len]);
        at += len;
    }
    out[at..].fill(0);
    let mut hasher = crc32fast::Hasher::new_with_initial(salt(seq));
    hasher.update(&out[4..]);
    out[0..4].copy_from_slice(&hasher.finalize().to_le_bytes());
}

/// A frame that verified: where its records are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Total bytes of the frame.
    pub len: usize,
    /// Position of its first record.
    pub first_lsn: Lsn,
    /// Number of records.
    pub count: u32,
    /// Offset where the write holding this frame starts.
    pub write_start: u64,
}

impl FrameInfo {
    /// Position one past the frame's last record.
    pub fn end_lsn(&self) -> Lsn {
        self.first_lsn + u64::from(self.count)
    }
}

/// Reads the frame at the start of `bytes` (the rest of a segment) and verifies it.
///
/// Every length is checked against `bytes` and `frame_bytes_max` before it is used, so any
/// input returns an error instead of reading out of bounds. An all-zero header returns
/// [`FrameError::Empty`]: the end of the written part of a segment.
pub fn decode_frame(
    bytes: &[u8],
    seq: u64,
    frame_bytes_max: usize,
) -> Result<FrameInfo, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        if is_zero(bytes) {
            return Err(FrameError::Empty);
        }
        return Err(FrameError::Truncated);
    }
    let header = &bytes[..FRAME_HEADER_BYTES];
    if is_zero(header) {
        return Err(FrameError::Empty);
    }
    let len = read_u32(header, 4) as usize;
    let count = read_u32(header, 16);
    if header[20] != FRAME_KIND_RECORDS
        || header[21] != FRAME_MAGIC
        || header[22..24] != [0, 0]
        || header[28..32] != [0; 4]
        || read_u32(header, 24) % BLOCK_BYTES_U32 != 0
    {
        return Err(FrameError::BadHeader);
    }
    if len < FRAME_HEADER_BYTES + RECORD_PREFIX_BYTES
        || len % FRAME_ALIGN != 0
        || len > frame_bytes_max
        || count == 0
    {
        return Err(FrameError::BadHeader);
    }
    if len > bytes.len() {
        return Err(FrameError::Truncated);
    }
    let frame = &bytes[..len];
    let mut hasher = crc32fast::Hasher::new_with_initial(salt(seq));
    hasher.update(&frame[4..]);
    if hasher.finalize() != read_u32(frame, 0) {
        return Err(FrameError::Checksum);
    }
    // The checksum matched; still walk the record lengths so a frame written by a buggy
    // encoder cannot make a reader step outside it.
    let mut at = FRAME_HEADER_BYTES;
    for _ in 0..count {
        if at + RECORD_PREFIX_BYTES > len {
            return Err(FrameError::BadRecords);
        }
        let rec = read_u32(frame, at) as usize;
        at += RECORD_PREFIX_BYTES;
        if rec > len - at {
            return Err(FrameError::BadRecords);
        }
        at += rec;
    }
    if align_up(at, FRAME_ALIGN) != len || !is_zero(&frame[at..]) {
        return Err(FrameError::BadRecords);
    }
    Ok(FrameInfo {
        len,
        first_lsn: read_u64(frame, 8),
        count,
        write_start: u64::from(read_u32(frame, 24)),
    })
}

/// True when `bytes`, found at segment offset `offset` below the durable end, are a
/// write's padding: a zero length field at an offset that is not a block boundary. The
/// next frame, if any, starts at the next block boundary. (A real frame's length is never
/// zero.) Recovery also checks that the whole padding is zeros; readers of verified data
/// need not.
pub fn is_padding(bytes: &[u8], offset: u64) -> bool {
    offset % BLOCK_BYTES as u64 != 0 && bytes.len() >= 8 && read_u32(bytes, 4) == 0
}

/// Iterates the records of a frame that [`decode_frame`] verified.
pub fn frame_records(frame: &[u8], count: u32) -> impl Iterator<Item = &[u8]> {
    let mut at = FRAME_HEADER_BYTES;
    (0..count).map(move |_| {
        let len = read_u32(frame, at) as usize;
        at += RECORD_PREFIX_BYTES;
        let record = &frame[at..at + len];
        at += len;
        record
    })
}

/// True when every byte is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    // Word-at-a-time: recovery checks whole segments with this.
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64, and align_to only reinterprets the
        // aligned middle part of the slice.
        unsafe { bytes.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Reads a little-endian u32 at `at` (the caller checked the bounds).
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads a little-endian u64 at `at` (the caller checked the bounds).
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut block = vec![0u8; BLOCK_BYTES];
        let header = SegmentHeader {
            seq: 7,
            first_lsn: 99,
            recycled: true,
        };
        header.encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block).unwrap(), Some(header));
        block[20] ^= 1;
        assert!(SegmentHeader::decode(&block).is_err());
        assert_eq!(SegmentHeader::decode(&[0u8; BLOCK_BYTES]).unwrap(), None);
    }

    #[test]
    fn salt_differs_per_segment() {
        let records: [&[u8]; 1] = [b"hello"];
        let len = frame_len([5]);
        let mut a = vec![0u8; len];
        encode_frame(&mut a, 1, 10, 0, &records);
        assert!(decode_frame(&a, 1, 1 << 20).is_ok());
        assert_eq!(decode_frame(&a, 2, 1 << 20), Err(FrameError::Checksum));
    }
}
