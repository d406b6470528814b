//! Reads, shaped like etcd-raft's `Storage`: indexes, terms, hard state, snapshot metadata
//! and entries (from the cache, or read back from the log).

use super::error::log_err;
use super::index::{GroupLog, Slot};
use super::{Entry, GroupId, HardState, LogStore, LogStoreError, SnapshotMeta};
use crate::log_backend::LogBackend;
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
                None => self.read_entry(group, index, slot)?,
            };
            out.push(Entry {
                index,
                term: slot.term,
                data,
            });
        }
        Ok(out)
    }

    /// Reads an entry's payload from the log and checks it is the entry the index expects.
    pub(super) fn read_entry(
        &self,
        group: GroupId,
        index: u64,
        slot: &Slot,
    ) -> Result<Vec<u8>, LogStoreError> {
        let lsn = slot.lsn;
        let bytes = self.log.read(lsn).map_err(log_err("read"))?;
        match LogRecord::decode(&bytes) {
            Ok(LogRecord::Entry { group: g, entry })
                if g == group && entry.index == index && entry.term == slot.term =>
            {
                Ok(entry.data)
            }
            Ok(other) => Err(LogStoreError::Corruption {
                lsn,
                reason: format!(
                    "expected entry {index} of group {group}, found a record of group {}",
                    other.group()
                ),
            }),
            Err(reason) => Err(LogStoreError::Corruption { lsn, reason }),
        }
    }
}
