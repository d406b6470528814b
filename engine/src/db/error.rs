//! [`DbError`], the standalone store's one error type.

use crate::checkpoint::CheckpointError;
use crate::log_backend::BackendError;
use crate::memtable::KvError;

/// Errors of the standalone store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The request broke a size limit; nothing was written.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The log failed.
    #[error("log: {0}")]
    Wal(#[from] keel_wal::Error),
    /// The log (through its [`LogBackend`](crate::LogBackend)) failed.
    #[error("log {op} failed: {source}")]
    Log {
        /// The operation.
        op: &'static str,
        /// The log's error.
        source: BackendError,
    },
    /// A log record could not be replayed.
    #[error("corrupt log record at lsn {lsn}: {reason}")]
    Corruption {
        /// Where.
        lsn: u64,
        /// What.
        reason: String,
    },
    /// The log ends before the newest checkpoint or starts after it: records the store
    /// needs are missing (the log directory was replaced or damaged).
    #[error(
        "log [{log_first}, {log_next}) does not continue checkpoint at index {checkpoint_index}"
    )]
    LogGap {
        /// Index the checkpoint covers.
        checkpoint_index: u64,
        /// First LSN in the log.
        log_first: u64,
        /// Next LSN of the log.
        log_next: u64,
    },
    /// The store holds `data_bytes_max` bytes already; delete something first.
    #[error("store full: {used} bytes held, the put needs {needed} more, data_bytes_max = {max}")]
    StoreFull {
        /// Key and value bytes held now.
        used: u64,
        /// Key and value bytes the transaction's puts add.
        needed: u64,
        /// The quota.
        max: u64,
    },
    /// An earlier log write failed; reopen the store to recover what was durable.
    #[error("store poisoned by an earlier failure: {cause}")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// Inconsistent options.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
}
