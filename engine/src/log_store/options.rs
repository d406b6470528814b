//! [`LogStoreOptions`]: every limit of the log store, with its unit and default.

use super::LogStoreError;

/// Options of a [`LogStore`](super::LogStore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// Most entry payload bytes kept in memory across all groups. Default 64 MiB.
    ///
    /// Entry and batch limits must also fit the log's own (for `keel_wal`, the defaults do:
    /// its `record_bytes_max` is 2 MiB and `batch_bytes_max` 4 MiB); an append the log would
    /// reject is refused before anything is written.
    pub cache_bytes_max: usize,
    /// Most entries kept in the cache, whatever their size. Default 1,048,576.
    pub cache_entries_max: usize,
    /// Largest entry payload accepted, in bytes. Default 1 MiB.
    pub entry_bytes_max: usize,
    /// Largest write batch (sum of encoded records), in bytes. Default 3 MiB.
    pub batch_bytes_max: usize,
    /// Live segments beyond which `maintain` rewrites lagging groups. Default 16.
    pub segments_live_max: usize,
    /// Recovery reports progress every this many records. Default 100,000.
    pub progress_records_interval: u64,
    /// Most staged writes in flight at once (see [`LogStore::stage`](super::LogStore::stage)). Default 8.
    pub inflight_writes_max: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            cache_bytes_max: 64 << 20,
            cache_entries_max: 1 << 20,
            entry_bytes_max: 1 << 20,
            batch_bytes_max: 3 << 20,
            segments_live_max: 16,
            progress_records_interval: 100_000,
            inflight_writes_max: 8,
        }
    }
}

impl LogStoreOptions {
    /// Checks the options: a batch must hold at least one largest entry, and at least two
    /// segments must stay live (the one being written and one before it).
    pub fn validate(&self) -> Result<(), LogStoreError> {
        let bad = |reason: &str| {
            Err(LogStoreError::InvalidOptions {
                reason: reason.into(),
            })
        };
        if self.entry_bytes_max == 0 || self.entry_bytes_max > u32::MAX as usize {
            return bad("entry_bytes_max must be in 1..=u32::MAX");
        }
        if self.batch_bytes_max < self.entry_bytes_max + RECORD_OVERHEAD_BYTES {
            return bad("batch_bytes_max must hold one largest entry");
        }
        if self.segments_live_max < 2 {
            return bad("segments_live_max must be at least 2");
        }
        if self.progress_records_interval == 0 {
            return bad("progress_records_interval must be positive");
        }
        if self.inflight_writes_max == 0 {
            return bad("inflight_writes_max must be at least 1");
        }
        Ok(())
    }
}

/// Bytes an entry record adds to its payload: kind, group, index, term.
pub(super) const RECORD_OVERHEAD_BYTES: usize = 1 + 3 * 8;
