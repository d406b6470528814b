//! [`DbOptions`] (every default documented, `validate()`) and [`CheckpointRecovery`].

use keel_wal::WalOptions;

use super::DbError;
use crate::memtable::KvLimits;

/// What opening a store does with a checkpoint that fails verification (is corrupt). Any
/// other error opening a checkpoint — I/O, a format version this build does not read — fails
/// the open in every mode, naming the file and leaving it in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointRecovery {
    /// Report it in [`DbRecovery::skipped_checkpoints`](super::DbRecovery::skipped_checkpoints), quarantine it (`<name>.corrupt`) and
    /// recover from the newest older one that verifies plus the log after it (the log is kept
    /// from the oldest retained checkpoint for this). The default.
    #[default]
    FallBack,
    /// Refuse to open: return the verification error and change nothing on disk.
    Strict,
}

/// Options of a [`Db`](super::Db).
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Key, value and transaction size limits. Default [`KvLimits::default`] except
    /// `txn_bytes_max` = 1.5 MiB, so that one transaction fits one default WAL record.
    pub limits: KvLimits,
    /// Options of the store's log. Default [`WalOptions::default`] (64 MiB segments).
    pub wal: WalOptions,
    /// Log bytes written since the last checkpoint that trigger the next one. Default 64 MiB.
    pub checkpoint_log_bytes: u64,
    /// Checkpoints kept on disk (the log is kept from the oldest of them). Default 2.
    pub checkpoints_kept: usize,
    /// Most transactions one leader writes in one log append. Default 512.
    pub group_commit_txns_max: usize,
    /// Whether a background thread writes checkpoints. Default true; when false, only
    /// [`Db::checkpoint`](super::Db::checkpoint) writes them.
    pub background_checkpoints: bool,
    /// Most key and value bytes the store holds (all data lives in memory). A transaction
    /// whose puts would take the store past it is refused with [`DbError::StoreFull`];
    /// deletes are always accepted so that space can be freed. The check counts a put's
    /// full size even when it overwrites, and concurrent writers may overshoot by one group
    /// commit, so it is a quota, not an exact bound. Default 2 GiB (etcd's default quota).
    pub data_bytes_max: u64,
    /// What to do with a checkpoint that fails verification. Default
    /// [`CheckpointRecovery::FallBack`].
    pub checkpoint_recovery: CheckpointRecovery,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            limits: KvLimits {
                txn_bytes_max: 1536 * 1024,
                ..KvLimits::default()
            },
            wal: WalOptions::default(),
            checkpoint_log_bytes: 64 << 20,
            checkpoints_kept: 2,
            group_commit_txns_max: 512,
            background_checkpoints: true,
            data_bytes_max: 2 << 30,
            checkpoint_recovery: CheckpointRecovery::FallBack,
        }
    }
}

impl DbOptions {
    /// Checks the options and their relations: one largest transaction must fit one log
    /// record, and at least one checkpoint is kept.
    pub fn validate(&self) -> Result<(), DbError> {
        self.limits.validate()?;
        self.wal.validate().map_err(DbError::Wal)?;
        let bad = |reason: String| Err(DbError::InvalidOptions { reason });
        // A transaction's encoding adds a few bytes per op to its key and value bytes.
        let txn_record_bytes_max = self.limits.txn_bytes_max + 32 * self.limits.txn_ops_max + 16;
        if txn_record_bytes_max > self.wal.record_bytes_max {
            return bad(format!(
                "the largest transaction ({txn_record_bytes_max} bytes encoded, from \
                 txn_bytes_max and txn_ops_max) exceeds the WAL's record_bytes_max ({})",
                self.wal.record_bytes_max
            ));
        }
        if self.checkpoints_kept == 0 {
            return bad("checkpoints_kept must be at least 1".into());
        }
        if self.group_commit_txns_max == 0 {
            return bad("group_commit_txns_max must be at least 1".into());
        }
        if self.checkpoint_log_bytes == 0 {
            return bad("checkpoint_log_bytes must be positive".into());
        }
        Ok(())
    }
}
