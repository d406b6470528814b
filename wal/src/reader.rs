//! Reading records back: an iterator over the durable log from any position.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, FrameError, Result};
use crate::format::{self, Lsn};
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
