//! Recovery: the newest valid checkpoint, then every later log record replayed.

use std::path::PathBuf;

use super::{CheckpointRecovery, DbError, DbOptions};
use crate::checkpoint::CheckpointDir;
use crate::log_backend::LogBackend;
use crate::memtable::Memtable;
use crate::progress::ReplayProgress;
use crate::txn_codec::decode_txn;

/// Replayed records between two progress reports during recovery.
const REPLAY_PROGRESS_RECORDS: u64 = 100_000;

/// What recovery found when the store was opened.
#[derive(Debug, Default)]
pub struct DbRecovery {
    /// Index of the checkpoint loaded, if any.
    pub checkpoint_index: Option<u64>,
    /// Newer checkpoints that failed verification, with the reason; each was renamed to
    /// `<name>.corrupt` so that it is kept for inspection but never used or counted.
    pub skipped_checkpoints: Vec<(PathBuf, String)>,
    /// Log records replayed after the checkpoint.
    pub replayed_records: u64,
}

/// Rebuilds the memtable from the newest checkpoint that verifies and the log after it.
/// Corrupt newer checkpoints are quarantined ([`CheckpointRecovery::FallBack`]) or refused
/// ([`CheckpointRecovery::Strict`]).
pub(super) fn recover<B: LogBackend>(
    options: &DbOptions,
    checkpoints: &CheckpointDir,
    log: &B,
    progress: &mut dyn FnMut(ReplayProgress),
) -> Result<(Memtable, DbRecovery), DbError> {
    let mut recovery = DbRecovery::default();
    let (newest, mut skipped) = checkpoints.newest_valid()?;
    if options.checkpoint_recovery == CheckpointRecovery::Strict && !skipped.is_empty() {
        return Err(DbError::Checkpoint(skipped.swap_remove(0).error));
    }
    for s in skipped {
        checkpoints.quarantine(&s.path)?;
        recovery
            .skipped_checkpoints
            .push((s.path, s.error.to_string()));
    }
    let mut memtable = match &newest {
        Some(r) => {
            recovery.checkpoint_index = Some(r.meta().index);
            r.to_memtable(options.limits.clone())?
        }
        None => Memtable::new(options.limits.clone())?,
    };
    drop(newest);
    let from = memtable.applied_index() + 1;
    let (log_first, log_next) = (log.first_lsn(), log.next_lsn());
    // The log must hold every record after the checkpoint: it may not start later, and
    // a log that ends at or before the checkpoint means later appends would get
    // positions the checkpoint already claims.
    if log_first > from || (memtable.applied_index() > 0 && log_next < from) {
        return Err(DbError::LogGap {
            checkpoint_index: memtable.applied_index(),
            log_first,
            log_next,
        });
    }
    let mut failure: Option<DbError> = None;
    let scanned = log.scan(from.max(log_first), &mut |lsn, data| {
        let replayed = decode_txn(data)
            .map_err(|reason| DbError::Corruption { lsn, reason })
            .and_then(|txn| {
                memtable.txn(&txn).map_err(|e| DbError::Corruption {
                    lsn,
                    reason: format!("transaction no longer valid: {e}"),
                })
            });
        if let Err(e) = replayed {
            failure = Some(e);
            return Err("replay stopped".into());
        }
        memtable.set_applied_index(lsn);
        recovery.replayed_records += 1;
        if recovery.replayed_records % REPLAY_PROGRESS_RECORDS == 0 {
            progress(ReplayProgress {
                records: recovery.replayed_records,
                lsn,
                end_lsn: log_next,
            });
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    scanned.map_err(|source| DbError::Log { op: "scan", source })?;
    progress(ReplayProgress {
        records: recovery.replayed_records,
        lsn: memtable.applied_index(),
        end_lsn: log_next,
    });
    Ok((memtable, recovery))
}
