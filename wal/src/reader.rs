//! Reading records back: an iterator over the durable log from any position.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, FrameError, Result};
use crate::format::{self, BLOCK_BYTES, Lsn, SEGMENT_HEADER_BYTES};
use crate::segment::SegmentView;

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its position.
    pub lsn: Lsn,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Iterates records in position order, from a start position up to the durable end at the
/// time it was created. Each frame is verified again as it is read; a failure is returned
/// once and ends the iteration.
pub struct WalIter {
    views: Vec<Arc<SegmentView>>,
    seg: usize,
    /// Bytes of `views[seg]` from `chunk_offset`, read ahead; empty before seeking into
    /// the segment.
    chunk: Vec<u8>,
    chunk_offset: u64,
    /// Read position within `chunk`.
    pos: usize,
    seeked: bool,
    next_lsn: Lsn,
    end: Lsn,
    pending: VecDeque<Record>,
    failed: bool,
}

impl WalIter {
    pub(crate) fn new(views: Vec<Arc<SegmentView>>, lsn: Lsn, end: Lsn) -> WalIter {
        let seg = views
            .partition_point(|v| v.first_lsn <= lsn)
            .saturating_sub(1);
        WalIter {
            views,
            seg,
            chunk: Vec::new(),
            chunk_offset: 0,
            pos: 0,
            seeked: false,
            next_lsn: lsn,
            end,
            pending: VecDeque::new(),
            failed: false,
        }
    }

    fn fill(&mut self) -> Result<bool> {
        while self.pending.is_empty() {
            if self.next_lsn >= self.end {
                return Ok(false);
            }
            let Some(view) = self.views.get(self.seg).cloned() else {
                return Ok(false);
            };
            if !self.seeked {
                self.chunk_offset = view.seek(self.next_lsn);
                self.chunk = view.read_chunk(self.chunk_offset, 0)?;
                self.pos = 0;
                self.seeked = true;
            }
            let offset = self.chunk_offset + self.pos as u64;
            if offset >= view.end_off() || self.next_lsn >= view.end_lsn() {
                self.seg += 1;
                self.seeked = false;
                continue;
            }
            if self.chunk.len() < self.pos + 8 {
                self.chunk = view.read_chunk(offset, 0)?;
                self.chunk_offset = offset;
                self.pos = 0;
            }
            if format::is_padding(&self.chunk[self.pos..], offset) {
                // The write ended; the next one starts on the next block boundary.
                let skip =
                    usize::try_from(format::align_up_u64(offset) - offset).expect("below a block");
                self.pos += skip;
                continue;
            }
            let info = match format::decode_frame(
                &self.chunk[self.pos..],
                view.seq,
                view.frame_bytes_max(),
            ) {
                Ok(info) => info,
                Err(FrameError::Truncated | FrameError::Empty) => {
                    // Below the durable end there is a whole frame here: the chunk ended
                    // inside it. Read on from its start, with room for all of it; what
                    // does not decode then is damage.
                    self.chunk = view.read_chunk(offset, 0)?;
                    if self.chunk.len() >= 8 {
                        let need = format::read_u32(&self.chunk, 4) as usize;
                        if need > self.chunk.len() {
                            self.chunk = view.read_chunk(offset, need)?;
                        }
                    }
                    self.chunk_offset = offset;
                    self.pos = 0;
                    format::decode_frame(&self.chunk, view.seq, view.frame_bytes_max())
                        .map_err(|e| corrupt(&view, offset, e))?
                }
                Err(e) => return Err(corrupt(&view, offset, e)),
            };
            let frame = &self.chunk[self.pos..self.pos + info.len];
            self.pos += info.len;
            if info.end_lsn() <= self.next_lsn {
                continue;
            }
            for (i, data) in format::frame_records(frame, info.count).enumerate() {
                let lsn = info.first_lsn + i as u64;
                if lsn >= self.next_lsn && lsn < self.end {
                    self.pending.push_back(Record {
                        lsn,
                        data: data.to_vec(),
                    });
                }
            }
            self.next_lsn = info.end_lsn();
        }
        Ok(true)
    }
}

/// See [`crate::Wal::read_frames`].
pub(crate) fn read_frames(
    view: &SegmentView,
    first_frame: u64,
    last_frame: u64,
    visit: &mut dyn FnMut(Lsn, &[u8]) -> bool,
) -> Result<()> {
    let end = view.end_off();
    let no_frame = |offset: u64, reason: String| Error::NoFrame {
        segment: view.seq,
        offset,
        reason,
    };
    if first_frame > last_frame || last_frame >= end || first_frame < SEGMENT_HEADER_BYTES as u64 {
        return Err(no_frame(
            first_frame,
            format!(
                "frames {first_frame}..={last_frame} are not within the durable frames \
                 [{SEGMENT_HEADER_BYTES}, {end})"
            ),
        ));
    }
    // One read covers the frames before the last one and (usually) the last one: frames
    // hold raft entries, mostly far smaller than a block. A longer last frame costs a
    // second read of its remainder.
    let span = usize::try_from(last_frame - first_frame)
        .map_err(|_| no_frame(first_frame, "span beyond the address space".into()))?;
    let mut bytes = view.read_chunk_exact(first_frame, span + BLOCK_BYTES)?;
    let mut pos = 0usize;
    loop {
        let offset = first_frame + pos as u64;
        if bytes.len() >= pos + 8 {
            let need = pos + format::read_u32(&bytes, pos + 4) as usize;
            if need > bytes.len() && need <= pos + view.frame_bytes_max() {
                bytes = view.read_chunk_exact(first_frame, need)?;
            }
        }
        let info = format::decode_frame(&bytes[pos..], view.seq, view.frame_bytes_max())
            .map_err(|e| corrupt(view, offset, e))?;
        let frame = &bytes[pos..pos + info.len];
        for (i, data) in format::frame_records(frame, info.count).enumerate() {
            if !visit(info.first_lsn + i as u64, data) {
                return Ok(());
            }
        }
        pos += info.len;
        let mut next = first_frame + pos as u64;
        if next < end && format::is_padding(bytes.get(pos..).unwrap_or(&[]), next) {
            next = format::align_up_u64(next);
            pos = usize::try_from(next - first_frame).expect("within the span");
        }
        if next > last_frame {
            return Ok(());
        }
        if next >= end {
            return Err(no_frame(
                last_frame,
                "no frame starts at this offset (it lies inside another frame)".into(),
            ));
        }
    }
}

fn corrupt(view: &SegmentView, offset: u64, e: FrameError) -> Error {
    Error::Corruption {
        path: view.path.clone(),
        offset,
        reason: e.to_string(),
    }
}

impl Iterator for WalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.fill() {
            Ok(true) => self.pending.pop_front().map(Ok),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
