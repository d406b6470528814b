//! Validation: a batch is checked against the state it will apply to (the applied state,
//! or the state once the staged writes ahead of it are applied) and against the store's and
//! the log's limits before anything is written.

use std::collections::HashMap;

use super::batch::BatchOp;
use super::error::log_err;
use super::{Entry, GroupId, HardState, LogStore, LogStoreError, WriteBatch};
use crate::log_backend::LogBackend;
use crate::log_record::LogRecord;

/// What validation needs to know of a group: its state once the writes before the one being
/// validated are applied.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) snapshot_index: Option<u64>,
    pub(super) hard_state: HardState,
}

/// A validated, encoded batch: what one log append will carry.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) records: Vec<LogRecord>,
    pub(super) encoded: Vec<Vec<u8>>,
}

impl Prepared {
    pub(super) fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    pub(super) fn bytes(&self) -> usize {
        self.encoded.iter().map(Vec::len).sum()
    }
}

impl<B: LogBackend> LogStore<B> {
    /// Encodes `records` and checks them against the store's and the log's limits.
    pub(super) fn prepare(&self, records: Vec<LogRecord>) -> Result<Prepared, LogStoreError> {
        let encoded: Vec<Vec<u8>> = records.iter().map(LogRecord::encode).collect();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        if bytes > self.options.batch_bytes_max {
            return Err(LogStoreError::BatchTooLarge {
                bytes,
                max: self.options.batch_bytes_max,
            });
        }
        if !encoded.is_empty() {
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            self.log.check_append(&refs).map_err(log_err("append"))?;
        }
        Ok(Prepared { records, encoded })
    }

    /// it touched, as they will be after it.
    pub(super) fn batch_records(
        &self,
        batch: WriteBatch,
    ) -> Result<(Vec<LogRecord>, HashMap<GroupId, View>), LogStoreError> {
        let mut views: HashMap<GroupId, View> = HashMap::new();
        let mut records = Vec::new();
        for (group, op) in batch.ops {
            let v = views.entry(group).or_insert_with(|| {
                self.pipeline.views.get(&group).cloned().unwrap_or(View {
                    first: self.first_index(group),
                    last: self.last_index(group),
                    snapshot_index: self.snapshot(group).map(|s| s.index),
                    hard_state: self.hard_state(group),
                })
            });
            match op {
                BatchOp::Append(entries) => {
                    for w in entries.windows(2) {
                        if w[1].index != w[0].index + 1 {
                            return Err(LogStoreError::NotContiguous {
                                group,
                                previous: w[0].index,
                                found: w[1].index,
                            });
                        }
                    }
                    for e in &entries {
                        if e.data.len() > self.options.entry_bytes_max {
                            return Err(LogStoreError::EntryTooLarge {
                                group,
                                index: e.index,
                                bytes: e.data.len(),
                                max: self.options.entry_bytes_max,
                            });
                        }
                    }
                    let live: Vec<Entry> =
                        entries.into_iter().filter(|e| e.index >= v.first).collect();
                    let (Some(head), Some(tail)) = (live.first(), live.last()) else {
                        continue;
                    };
                    if head.index > v.last + 1 {
                        return Err(LogStoreError::Gap {
                            group,
                            index: head.index,
                            last_index: v.last,
                        });
                    }
                    v.last = tail.index;
                    records.extend(
                        live.into_iter()
                            .map(|entry| LogRecord::Entry { group, entry }),
                    );
                }
                BatchOp::HardState(hard_state) => {
                    v.hard_state = hard_state;
                    records.push(LogRecord::HardState { group, hard_state });
                }
                BatchOp::SetSnapshot(meta) => {
                    if let Some(current) = v.snapshot_index.filter(|&c| meta.index < c) {
                        return Err(LogStoreError::SnapshotOutOfDate {
                            group,
                            index: meta.index,
                            current,
                        });
                    }
                    v.snapshot_index = Some(meta.index);
                    records.push(LogRecord::Snapshot { group, meta });
                }
                BatchOp::Compact(to) => {
                    if to + 1 < v.first {
                        continue;
                    }
                    if to > v.last {
                        return Err(LogStoreError::Unavailable {
                            group,
                            index: to,
                            last_index: v.last,
                        });
                    }
                    let term = match self.term(group, to) {
                        Ok(term) => term,
                        // The compaction point itself, set by a staged write whose state
                        // is not applied yet: nothing to write again.
                        Err(_) if to + 1 == v.first => continue,
                        Err(e) => return Err(e),
                    };
                    v.first = to + 1;
                    records.push(LogRecord::Compact {
                        group,
                        index: to,
                        term,
                    });
                }
                BatchOp::ApplySnapshot(meta) => {
                    if let Some(current) = v.snapshot_index.filter(|&c| meta.index <= c) {
                        return Err(LogStoreError::SnapshotOutOfDate {
                            group,
                            index: meta.index,
                            current,
                        });
                    }
                    v.snapshot_index = Some(meta.index);
                    v.first = meta.index + 1;
                    v.last = meta.index;
                    records.push(LogRecord::Reset {
                        group,
                        index: meta.index,
                        term: meta.term,
                        hard_state: v.hard_state,
                        snapshot: Some(meta),
                    });
                }
            }
        }
        Ok((records, views))
    }
}
