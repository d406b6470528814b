//! One group-commit batch: the frames of one segment's next write, in an aligned buffer.

use crate::aligned::AlignedBuf;
use crate::format::{self, Lsn, SEGMENT_HEADER_BYTES};

/// One group-commit batch: frames for one segment, in an aligned buffer.
pub(super) struct Batch {
    pub(super) id: u64,
    pub(super) seq: u64,
    pub(super) capacity: u64,
    /// File offset of `buf[0]`, a multiple of [`BLOCK_BYTES`].
    pub(super) file_offset: u64,
    pub(super) buf: AlignedBuf,
    /// Bytes used in `buf`.
    pub(super) len: usize,
    /// Bytes at the start of `buf` that were there before this batch: the partial block
    /// of the previous write, or the segment header.
    pub(super) prefix: usize,
    pub(super) appends: u64,
    pub(super) records: u64,
    /// Position of the batch's first record (for a new segment, the header's first lsn).
    pub(super) first_lsn: Lsn,
    pub(super) end_lsn: Lsn,
    /// Sparse-index entries for frames in this batch.
    pub(super) index: Vec<(Lsn, u64)>,
    /// Blocking appenders waiting for this batch (see [`Inner::wake_words`]).
    pub(super) waiters: u32,
    /// This batch starts a new segment (its first block is the header).
    pub(super) new_segment: bool,
    /// The segment is full after this batch.
    pub(super) seals: bool,
}

impl Batch {
    pub(super) fn end_offset(&self) -> u64 {
        self.file_offset + self.len as u64
    }
    pub(super) fn payload(&self) -> usize {
        self.len - self.prefix
    }
}

/// A batch that continues segment `seq` after its last frame, which ends at byte `end`;
/// position `end_lsn` is next. It starts at the first block boundary at or after `end`: a
/// write never rewrites a block holding an earlier write's frames (see the format's
/// "Write" section), so a torn write cannot damage acknowledged data.
pub(super) fn continuation_batch(
    buf: AlignedBuf,
    id: u64,
    seq: u64,
    capacity: u64,
    end: u64,
    end_lsn: Lsn,
) -> Batch {
    Batch {
        id,
        seq,
        capacity,
        file_offset: format::align_up_u64(end),
        buf,
        len: 0,
        prefix: 0,
        appends: 0,
        records: 0,
        first_lsn: end_lsn,
        end_lsn,
        index: Vec::new(),
        waiters: 0,
        new_segment: false,
        seals: false,
    }
}

pub(super) fn new_segment_batch(
    mut buf: AlignedBuf,
    id: u64,
    seq: u64,
    capacity: u64,
    lsn: Lsn,
) -> Batch {
    // Buffers are reused without being cleared; the header block must be zero around the
    // header fields, which the writer fills in (see `write_batch`).
    buf.as_mut_slice()[..SEGMENT_HEADER_BYTES].fill(0);
    Batch {
        id,
        seq,
        capacity,
        file_offset: 0,
        buf,
        len: SEGMENT_HEADER_BYTES,
        prefix: SEGMENT_HEADER_BYTES,
        appends: 0,
        records: 0,
        first_lsn: lsn,
        end_lsn: lsn,
        index: Vec::new(),
        waiters: 0,
        new_segment: true,
        seals: false,
    }
}
