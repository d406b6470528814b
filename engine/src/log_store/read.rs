//! Reads, shaped like etcd-raft's `Storage`: indexes, terms, hard state, snapshot metadata
//! and entries (from the cache, or read back from the log).

use super::error::log_err;
use super::index::GroupLog;
use super::{Entry, GroupId, HardState, LogStore, LogStoreError, SnapshotMeta};
use crate::log_backend::{FramePos, LogBackend};
use crate::log_record::LogRecord;

impl<B: LogBackend> LogStore<B> {
    pub(super) fn group(&self, group: GroupId) -> Option<&GroupLog> {
        self.state.groups.get(&group)
    }

    /// Index of the group's first available entry (1 for a new group).
    pub fn first_index(&self, group: GroupId) -> u64 {
        self.group(group).map_or(1, GroupLog::first_index)
    }

    /// Index of the group's last entry (its compaction point when it has none).
    pub fn last_index(&self, group: GroupId) -> u64 {
        self.group(group).map_or(0, GroupLog::last_index)
    }

    /// The group's hard state (all zero for a new group).
    pub fn hard_state(&self, group: GroupId) -> HardState {
        self.group(group)
            .map_or(HardState::default(), |g| g.hard_state)
    }

    /// The group's latest snapshot metadata.
    pub fn snapshot(&self, group: GroupId) -> Option<&SnapshotMeta> {
        self.group(group).and_then(|g| g.snapshot.as_ref())
    }

    /// Term of the entry at `index`: defined from the compaction point to the last index.
    pub fn term(&self, group: GroupId, index: u64) -> Result<u64, LogStoreError> {
        let Some(g) = self.group(group) else {
            return if index == 0 {
                Ok(0)
            } else {
                Err(LogStoreError::Unavailable {
                    group,
                    index,
                    last_index: 0,
                })
            };
        };
        if index < g.compacted_index {
            return Err(LogStoreError::Compacted {
                group,
                index,
                first_index: g.first_index(),
            });
        }
        if index == g.compacted_index {
            return Ok(g.compacted_term);
        }
        g.slot_of(index)
            .and_then(|k| g.entries.get(k))
            .map(|s| s.term)
            .ok_or(LogStoreError::Unavailable {
                group,
                index,
                last_index: g.last_index(),
            })
    }

    /// Entries `[lo, hi)` of `group`, stopping before the total payload exceeds `max_bytes`
    /// but always returning at least one entry when `lo < hi` (as etcd does).
    pub fn entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let first = self.first_index(group);
        let last = self.last_index(group);
        if lo < first {
            return Err(LogStoreError::Compacted {
                group,
                index: lo,
                first_index: first,
            });
        }
        if hi > last + 1 || lo > hi {
            return Err(LogStoreError::Unavailable {
                group,
                index: hi.saturating_sub(1),
                last_index: last,
            });
        }
        let Some(g) = self.group(group) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut misses = Vec::new();
        let mut bytes = 0u64;
        for index in lo..hi {
            let Some(slot) = g.slot_of(index).and_then(|k| g.entries.get(k)) else {
                break;
            };
            bytes = bytes.saturating_add(slot.len);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let data = match &slot.data {
                Some(d) => d.to_vec(),
                None => {
                    misses.push(Miss {
                        at: out.len(),
                        lsn: slot.lsn,
                        frame: slot.frame,
                    });
                    Vec::new()
                }
            };
            out.push(Entry {
                index,
                term: slot.term,
                data,
            });
        }
        let mut k = 0;
        while k < misses.len() {
            k += self.read_misses(group, &misses[k..], &mut out)?;
        }
        Ok(out)
    }

    /// Reads the payloads of the first misses of `misses` that one log read covers, into
    /// `out`; returns how many. Misses whose frame position is known (entries written since
    /// the store opened) and that lie in one segment, each frame at most
    /// `READ_GAP_BYTES_MAX` after the previous, take one `read_frames`; entries recovered
    /// from the log (whose scan gives no frame positions) take one scan from the first.
    fn read_misses(
        &self,
        group: GroupId,
        misses: &[Miss],
        out: &mut [Entry],
    ) -> Result<usize, LogStoreError> {
        let Some(first) = misses.first() else {
            return Ok(0);
        };
        let mut n = 1;
        match first.frame {
            Some(f) => {
                let mut last = f;
                while let Some(next) = misses.get(n).and_then(|m| m.frame) {
                    let near = next.segment == last.segment
                        && next.offset >= last.offset
                        && next.offset - last.offset <= READ_GAP_BYTES_MAX;
                    if !near {
                        break;
                    }
                    last = next;
                    n += 1;
                }
            }
            None => {
                while misses.get(n).is_some_and(|m| m.frame.is_none()) {
                    n += 1;
                }
            }
        }
        let run = &misses[..n];
        let mut next = 0;
        let mut failure = None;
        let mut visit = |lsn: u64, bytes: &[u8]| -> bool {
            let Some(miss) = run.get(next).filter(|m| m.lsn == lsn) else {
                // Another record of the frames read (another group's, or not needed).
                return run.get(next).is_some_and(|m| m.lsn > lsn);
            };
            match take_entry(group, &out[miss.at], lsn, bytes) {
                Ok(data) => out[miss.at].data = data,
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
            next += 1;
            next < run.len()
        };
        let read = match first.frame {
            Some(f) => {
                let last = run.last().and_then(|m| m.frame).unwrap_or(f);
                self.log
                    .read_frames(f.segment, f.offset, last.offset, &mut visit)
            }
            None => {
                let mut stopped = false;
                let scanned = self.log.scan(first.lsn, &mut |lsn, bytes| {
                    if visit(lsn, bytes) {
                        Ok(())
                    } else {
                        stopped = true;
                        Err("read complete".into())
                    }
                });
                // The visitor's stop is not a failure.
                if stopped { Ok(()) } else { scanned }
            }
        };
        if let Some(e) = failure {
            return Err(e);
        }
        read.map_err(log_err("read"))?;
        if let Some(missing) = run.get(next) {
            return Err(LogStoreError::Corruption {
                lsn: missing.lsn,
                reason: format!(
                    "entry {} of group {group} is not where the index puts it",
                    out[missing.at].index
                ),
            });
        }
        Ok(n)
    }
}

/// Most bytes between two frames read in one `read_frames`: misses further apart are read
/// separately, so that a few entries spread over a segment do not read all of it.
const READ_GAP_BYTES_MAX: u64 = 256 * 1024;

/// An entry to read from the log: its place in the output, its LSN and frame.
struct Miss {
    at: usize,
    lsn: u64,
    frame: Option<FramePos>,
}

/// Decodes the record at `lsn` and checks it is the entry `want` (index and term) of `group`.
fn take_entry(
    group: GroupId,
    want: &Entry,
    lsn: u64,
    bytes: &[u8],
) -> Result<Vec<u8>, LogStoreError> {
    match LogRecord::decode(bytes) {
        Ok(LogRecord::Entry { group: g, entry })
            if g == group && entry.index == want.index && entry.term == want.term =>
        {
            Ok(entry.data)
        }
        Ok(other) => Err(LogStoreError::Corruption {
            lsn,
            reason: format!(
                "expected entry {} of group {group}, found a record of group {}",
                want.index,
                other.group()
            ),
        }),
        Err(reason) => Err(LogStoreError::Corruption { lsn, reason }),
    }
}
