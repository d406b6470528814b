//! [`LogStoreError`], the log store's one error type.

use super::GroupId;
use crate::log_backend::BackendError;

/// Errors of the log store layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogStoreError {
    /// The index is at or below the group's compaction point.
    #[error("group {group}: index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: u64,
        /// The group's first index.
        first_index: u64,
    },
    /// The index is beyond the group's last entry.
    #[error("group {group}: index {index} is unavailable (last index {last_index})")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: u64,
        /// The group's last index.
        last_index: u64,
    },
    /// Appended entries would leave a hole after the group's last entry.
    #[error("group {group}: append at {index} leaves a gap after last index {last_index}")]
    Gap {
        /// The group.
        group: GroupId,
        /// First appended index.
        index: u64,
        /// The group's last index.
        last_index: u64,
    },
    /// Entries in one append were not consecutive.
    #[error("group {group}: entries not consecutive: {found} follows {previous}")]
    NotContiguous {
        /// The group.
        group: GroupId,
        /// Index of the earlier entry.
        previous: u64,
        /// Index of the entry after it.
        found: u64,
    },
    /// A snapshot older than the group's current one.
    #[error("group {group}: snapshot at {index} is older than the current one at {current}")]
    SnapshotOutOfDate {
        /// The group.
        group: GroupId,
        /// The offered snapshot index.
        index: u64,
        /// The current snapshot index.
        current: u64,
    },
    /// An entry payload exceeded `entry_bytes_max`.
    #[error("group {group}: entry {index} of {bytes} bytes exceeds entry_bytes_max = {max}")]
    EntryTooLarge {
        /// The group.
        group: GroupId,
        /// The entry index.
        index: u64,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A batch exceeded `batch_bytes_max`.
    #[error("write batch of {bytes} bytes exceeds batch_bytes_max = {max}")]
    BatchTooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A record in the log made no sense.
    #[error("corrupt log store record at lsn {lsn}: {reason}")]
    Corruption {
        /// Where.
        lsn: u64,
        /// What.
        reason: String,
    },
    /// The log failed.
    #[error("log {op} failed: {source}")]
    Log {
        /// The operation.
        op: &'static str,
        /// The log's error.
        source: BackendError,
    },
    /// An earlier append failed, so memory and log may disagree; reopen to recover.
    #[error("log store poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// Staged writes are queued or in flight; wait for them with [`LogStore::durable`](super::LogStore::durable).
    #[error("staged writes are in flight; wait until they are durable first")]
    WriteInFlight,
    /// `inflight_writes_max` staged writes are already in flight.
    #[error("{max} staged writes already in flight (inflight_writes_max)")]
    TooManyInFlight {
        /// The limit.
        max: usize,
    },
    /// Inconsistent options.
    #[error("invalid log store options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
}

pub(super) fn log_err(op: &'static str) -> impl FnOnce(BackendError) -> LogStoreError {
    move |source| LogStoreError::Log { op, source }
}
