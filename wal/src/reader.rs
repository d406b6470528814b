//! Reading records back: an iterator over the durable log from any position.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Result;
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
    /// Offset of the next frame in `views[seg]`, or `None` before seeking into it.
    offset: Option<u64>,
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
            offset: None,
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
            let Some(view) = self.views.get(self.seg) else {
                return Ok(false);
            };
            let offset = match self.offset {
                Some(offset) => offset,
                None => view.seek(self.next_lsn),
            };
            if offset >= view.end_off() || self.next_lsn >= view.end_lsn() {
                self.seg += 1;
                self.offset = None;
                continue;
            }
            let (bytes, info) = view.frame_at(offset)?;
            self.offset = Some(offset + info.len as u64);
            if info.end_lsn() <= self.next_lsn {
                continue;
            }
            for (i, data) in format::frame_records(&bytes, info.count).enumerate() {
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
