//! `Db`: the standalone durable key-value store — a memtable, its own write-ahead log and
//! checkpoints in one directory.
//!
//! # Layout
//!
//! ```text
//! <dir>/wal/           keel_wal segments; one record per logged transaction
//!                      (encoding in [`crate::txn_codec`]), the record's LSN is its index
//! <dir>/checkpoints/   checkpoint-<index>.ckpt files (format in [`crate::checkpoint`])
//! ```
//!
//! # Writes and group commit
//!
//! Writers queue their transactions; one of them becomes the leader, takes everything queued
//! (up to `group_commit_txns_max`), runs it against the memtable in queue order, and writes
//! the transactions that changed something as **one** log append (one flush). While it waits
//! for the flush the next writers queue up behind it and the next leader takes them all. Only
//! one leader runs at a time, so log order is exactly the order in which transactions were
//! applied, and replaying the log reproduces every revision.
//!
//! A transaction is applied to the memtable before its record is durable, but nobody sees
//! it before then: every read notes the revision it saw and waits until that revision is
//! durable. A failed log write poisons the store (the memtable is ahead of the log and
//! cannot be rolled back): every later call fails until the directory is reopened, which
//! recovers exactly what was durable.
//!
//! # Checkpoints and recovery
//!
//! A background thread writes a checkpoint once `checkpoint_log_bytes` of log were written
//! since the last one: it opens a snapshot of the memtable (writers go on; the snapshot keeps
//! the previous version of each key they overwrite), waits until the snapshot's last
//! transaction is durable, writes the file chunk by chunk under short read locks,
//! keeps the newest `checkpoints_kept`, and purges the log below the oldest kept one — so that
//! if the newest checkpoint turns out corrupt, recovery can still use the previous one and
//! replay the log after it. Recovery = newest valid checkpoint + replay of the later log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_wal::{Wal, WalOptions};

use crate::checkpoint::{CheckpointDir, CheckpointError, CheckpointMeta, sync_parent};
use crate::log_backend::{BackendError, LogBackend};
use crate::memtable::{KvError, KvLimits, Memtable, SnapshotInfo};
use crate::revision::{KeyMeta, KeyValue};
use crate::txn::{Op, OpResponse, RangeRequest, RangeResponse, Txn, TxnResponse};
use crate::txn_codec::{decode_txn, encode_txn};

/// What opening a store does with a checkpoint that fails verification (is corrupt). Any
/// other error opening a checkpoint — I/O, a format version this build does not read — fails
/// the open in every mode, naming the file and leaving it in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointRecovery {
    /// Report it in [`DbRecovery::skipped_checkpoints`], quarantine it (`<name>.corrupt`) and
    /// recover from the newest older one that verifies plus the log after it (the log is kept
    /// from the oldest retained checkpoint for this). The default.
    #[default]
    FallBack,
    /// Refuse to open: return the verification error and change nothing on disk.
    Strict,
}

/// Options of a [`Db`].
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
    /// [`Db::checkpoint`] writes them.
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
    /// The log (through its [`LogBackend`]) failed.
    #[error("log {op} failed: {source}")]
    Log {
        /// The operation.
        op: &'static str,
        /// The log's error.
        source: BackendError,
    },
    /// A log record could not be replayed.
    #[error("corrupt log record at lsn {lsn}: {reason}")]
    Corrupt {
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

/// Entries a checkpoint copies from the memtable per read lock.
const CHECKPOINT_CHUNK_ENTRIES: usize = 1024;

/// How long the checkpoint thread sleeps between looks when it is not woken.
const CHECKPOINT_IDLE_WAIT: Duration = Duration::from_millis(200);

/// How long after a failed background checkpoint the next attempt waits.
const CHECKPOINT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Replayed records between two progress reports during recovery.
const REPLAY_PROGRESS_RECORDS: u64 = 100_000;

/// How far the replay of the log has come while a store opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbReplayProgress {
    /// Records replayed so far.
    pub records: u64,
    /// LSN of the last record replayed.
    pub lsn: u64,
    /// LSN one past the last record of the log.
    pub end_lsn: u64,
}

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

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Transactions that changed the store and were logged.
    pub txns_logged: u64,
    /// Log appends (each one flush); fewer than `txns_logged` when writers were coalesced.
    pub log_appends: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoint attempts that failed (background or [`Db::checkpoint`]).
    pub checkpoints_failed: u64,
}

/// A queued write: the transaction and, once the leader ran it, its outcome.
struct Pending {
    txn: Txn,
    /// The log record, encoded by the submitting thread.
    record: Vec<u8>,
    outcome: Option<Result<TxnResponse, DbError>>,
}

#[derive(Default)]
struct Queue {
    /// Queued writes with the length of their record.
    pending: Vec<(Arc<Mutex<Pending>>, usize)>,
    leader_active: bool,
}

/// Durability watermarks: what is on disk.
#[derive(Default)]
struct Durable {
    /// Store revision whose transactions are all durable.
    revision: u64,
    /// LSN of the last durable record applied.
    index: u64,
    /// Set when a log write failed.
    poison: Option<String>,
}

impl Durable {
    /// `Err(DbError::Poisoned)` with the first failure once the store is poisoned.
    fn check(&self) -> Result<(), DbError> {
        self.poison
            .as_deref()
            .map_or(Ok(()), |cause| Err(poisoned(cause)))
    }
}

/// The error of every call on a poisoned store: the one place a poison becomes an error.
fn poisoned(cause: &str) -> DbError {
    DbError::Poisoned {
        cause: cause.to_string(),
    }
}

struct Inner<B> {
    options: DbOptions,
    dir: PathBuf,
    /// A handle to the log; methods that need `&mut` run on a clone (same log).
    log: B,
    checkpoints: CheckpointDir,
    memtable: RwLock<Memtable>,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    durable: Mutex<Durable>,
    durable_cv: Condvar,
    /// Copy of `Durable::revision` for lock-free reads; written under the `durable` lock.
    durable_revision: AtomicU64,
    /// Set (under the `durable` lock) when `Durable::poison` is.
    poisoned: AtomicBool,
    /// Serializes checkpoint writers (background thread and `Db::checkpoint`).
    checkpoint_lock: Mutex<Option<u64>>,
    log_bytes_since_checkpoint: AtomicU64,
    txns_logged: AtomicU64,
    log_appends: AtomicU64,
    checkpoints_written: AtomicU64,
    checkpoints_failed: AtomicU64,
    shutdown: AtomicBool,
    /// Wakes the checkpoint thread; paired with `checkpoint_wake`.
    checkpoint_wake_lock: Mutex<()>,
    checkpoint_wake: Condvar,
}

fn lock_poisoned<T>(_: T) -> DbError {
    poisoned("a thread panicked while holding a store lock")
}

/// A log a [`Db`] can run on: a [`LogBackend`] whose clones are handles to the same log,
/// usable from several threads at once. `Arc<keel_wal::Wal>` (the default) and the
/// in-memory [`crate::MemLog`] are.
pub trait SharedLog: LogBackend + Clone + Send + Sync + 'static {}

impl<T: LogBackend + Clone + Send + Sync + 'static> SharedLog for T {}

/// The standalone durable key-value store. Cheap to share: wrap it in an `Arc` and call it
/// from any number of threads; concurrent writes are coalesced into shared log flushes.
/// The log is a type parameter so that tests can run it on an in-memory log; production
/// uses the default, Keel's WAL.
pub struct Db<B: SharedLog = Arc<Wal>> {
    inner: Arc<Inner<B>>,
    checkpointer: Option<JoinHandle<()>>,
    recovery: DbRecovery,
}

impl<B: SharedLog> std::fmt::Debug for Db<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the store in `dir` and recovers it: the newest valid
    /// checkpoint, then every later log record.
    pub fn open(dir: impl AsRef<Path>, options: DbOptions) -> Result<Db, DbError> {
        Db::open_with_progress(dir, options, &mut |_| {})
    }

    /// [`Db::open`], calling `progress` every 100,000 replayed log records and once at the end,
    /// so that a caller can show how far the recovery of a large log is.
    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        options: DbOptions,
        progress: &mut dyn FnMut(DbReplayProgress),
    ) -> Result<Db, DbError> {
        options.validate()?;
        let dir = dir.as_ref();
        let created = !dir.exists();
        // The WAL takes the directory's lock: open it first, so that a second opener fails
        // before it touches the checkpoint directory (which removes temporary files).
        let wal = Wal::open(dir.join("wal"), options.wal.clone())?;
        if created {
            // The store's directory itself is new: make its entry in the parent durable.
            sync_parent(dir)?;
        }
        Db::open_on(dir, options, Arc::new(wal), progress)
    }
}

impl<B: SharedLog> Db<B> {
    /// Opens the store whose checkpoints are in `dir/checkpoints` over `log`, which must be
    /// this store's own log (and the caller must hold whatever lock guards `dir`: `Db::open`
    /// holds the WAL's). Recovers as [`Db::open`] does.
    pub fn open_on(
        dir: &Path,
        options: DbOptions,
        log: B,
        progress: &mut dyn FnMut(DbReplayProgress),
    ) -> Result<Db<B>, DbError> {
        options.validate()?;
        let checkpoints = CheckpointDir::open(&dir.join("checkpoints"))?;
        // `wal/` and `checkpoints/` may have just been created: make their entries durable,
        // or a crash could lose a directory whose files were already fsynced.
        sync_parent(checkpoints.path())?;
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
                .map_err(|reason| DbError::Corrupt { lsn, reason })
                .and_then(|txn| {
                    memtable.txn(&txn).map_err(|e| DbError::Corrupt {
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
                progress(DbReplayProgress {
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
        progress(DbReplayProgress {
            records: recovery.replayed_records,
            lsn: memtable.applied_index(),
            end_lsn: log_next,
        });
        let durable_revision = memtable.revision();
        let durable = Durable {
            revision: memtable.revision(),
            index: memtable.applied_index(),
            poison: None,
        };
        let inner = Arc::new(Inner {
            checkpoint_lock: Mutex::new(recovery.checkpoint_index),
            options,
            dir: dir.to_path_buf(),
            log,
            checkpoints,
            memtable: RwLock::new(memtable),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            durable: Mutex::new(durable),
            durable_cv: Condvar::new(),
            durable_revision: AtomicU64::new(durable_revision),
            poisoned: AtomicBool::new(false),
            log_bytes_since_checkpoint: AtomicU64::new(0),
            txns_logged: AtomicU64::new(0),
            log_appends: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            checkpoints_failed: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            checkpoint_wake_lock: Mutex::new(()),
            checkpoint_wake: Condvar::new(),
        });
        let checkpointer = if inner.options.background_checkpoints {
            let bg = Arc::clone(&inner);
            Some(
                std::thread::Builder::new()
                    .name("keel-checkpoint".into())
                    .spawn(move || bg.checkpoint_loop())
                    .map_err(|e| DbError::InvalidOptions {
                        reason: format!("cannot start the checkpoint thread: {e}"),
                    })?,
            )
        } else {
            None
        };
        Ok(Db {
            inner,
            checkpointer,
            recovery,
        })
    }

    /// What recovery found when the store was opened.
    pub fn recovery(&self) -> &DbRecovery {
        &self.recovery
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> DbStats {
        DbStats {
            txns_logged: self.inner.txns_logged.load(Ordering::Relaxed),
            log_appends: self.inner.log_appends.load(Ordering::Relaxed),
            checkpoints: self.inner.checkpoints_written.load(Ordering::Relaxed),
            checkpoints_failed: self.inner.checkpoints_failed.load(Ordering::Relaxed),
        }
    }

    /// The current (durable) store revision.
    pub fn revision(&self) -> Result<u64, DbError> {
        let d = self.inner.durable.lock().map_err(lock_poisoned)?;
        d.check()?;
        Ok(d.revision)
    }

    /// The value and metadata of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, DbError> {
        self.get_with(key, |found| {
            found.map(|(value, meta)| KeyValue {
                key: key.to_vec(),
                value: value.to_vec(),
                meta,
            })
        })
    }

    /// Point read without copying: `f` sees the value and metadata of `key` (or `None`)
    /// under the store's read lock, and its result is returned once what it saw is durable.
    /// Keep `f` short: writers wait while it runs.
    pub fn get_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<(&[u8], KeyMeta)>) -> R,
    ) -> Result<R, DbError> {
        let (out, revision) = {
            let m = self.inner.memtable.read().map_err(lock_poisoned)?;
            (f(m.get_ref(key)?), m.revision())
        };
        self.inner.wait_durable(revision)?;
        Ok(out)
    }

    /// Reads a range.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, DbError> {
        let resp = {
            let m = self.inner.memtable.read().map_err(lock_poisoned)?;
            m.range(req)?
        };
        self.inner.wait_durable(resp.revision)?;
        Ok(resp)
    }

    /// Writes `value` under `key`; returns the new store revision once durable.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, DbError> {
        Ok(self.txn(Txn::batch(vec![Op::put(key, value)]))?.revision)
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool, DbError> {
        let resp = self.txn(Txn::batch(vec![Op::delete(key)]))?;
        Ok(matches!(
            resp.responses.first(),
            Some(OpResponse::DeleteRange { deleted: 1.., .. })
        ))
    }

    /// Runs `ops` as one atomic batch.
    pub fn batch(&self, ops: Vec<Op>) -> Result<TxnResponse, DbError> {
        self.txn(Txn::batch(ops))
    }

    /// Runs a transaction atomically and durably (see [`Memtable::txn`] for the semantics).
    /// Returns once its effects are durable.
    pub fn txn(&self, txn: Txn) -> Result<TxnResponse, DbError> {
        self.inner.check_poison()?;
        {
            let m = self.inner.memtable.read().map_err(lock_poisoned)?;
            m.validate_txn(&txn)?;
            let needed: u64 = txn
                .success
                .iter()
                .chain(&txn.failure)
                .map(|op| match op {
                    Op::Put { key, value, .. } => (key.len() + value.len()) as u64,
                    _ => 0,
                })
                .sum();
            let max = self.inner.options.data_bytes_max;
            if needed > 0 && m.data_bytes().saturating_add(needed) > max {
                return Err(DbError::StoreFull {
                    used: m.data_bytes(),
                    needed,
                    max,
                });
            }
        }
        self.inner.submit(txn)
    }

    /// Writes a checkpoint now (if anything changed since the last one) and purges the log
    /// it makes unnecessary. Returns what the new checkpoint covers.
    pub fn checkpoint(&self) -> Result<Option<CheckpointMeta>, DbError> {
        self.inner.checkpoint()
    }

    /// Stops the background checkpoint thread and closes the store. Dropping does the same.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.inner.checkpoint_wake_lock.lock();
            self.inner.checkpoint_wake.notify_all();
        }
        if let Some(h) = self.checkpointer.take() {
            // A panic in the checkpoint thread has already been reported by the runtime;
            // closing carries on.
            let _ = h.join();
        }
    }
}

impl<B: SharedLog> Drop for Db<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<B: SharedLog> Inner<B> {
    fn check_poison(&self) -> Result<(), DbError> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        self.durable.lock().map_err(lock_poisoned)?.check()
    }

    /// Waits until every transaction up to `revision` is durable.
    fn wait_durable(&self, revision: u64) -> Result<(), DbError> {
        // Fast path for reads of durable data, without the lock: a revision at or below the
        // durable one stays durable whatever happens later. A poisoned store takes the slow
        // path so that every call reports the poison.
        if !self.poisoned.load(Ordering::Acquire)
            && self.durable_revision.load(Ordering::Acquire) >= revision
        {
            return Ok(());
        }
        let mut d = self.durable.lock().map_err(lock_poisoned)?;
        loop {
            d.check()?;
            if d.revision >= revision {
                return Ok(());
            }
            d = self.durable_cv.wait(d).map_err(lock_poisoned)?;
        }
    }

    /// Queues a write and waits for its outcome, leading a group commit when no other
    /// writer is.
    fn submit(&self, txn: Txn) -> Result<TxnResponse, DbError> {
        let record = encode_txn(&txn);
        let record_len = record.len();
        let me = Arc::new(Mutex::new(Pending {
            txn,
            record,
            outcome: None,
        }));
        let mut q = self.queue.lock().map_err(lock_poisoned)?;
        q.pending.push((Arc::clone(&me), record_len));
        loop {
            if let Some(outcome) = me.lock().map_err(lock_poisoned)?.outcome.take() {
                return outcome;
            }
            if !q.leader_active {
                break;
            }
            q = self.queue_cv.wait(q).map_err(lock_poisoned)?;
        }
        // Lead: run groups until our own transaction is done.
        q.leader_active = true;
        loop {
            // Take what fits one log append: at most `group_commit_txns_max` transactions
            // and the WAL's `batch_bytes_max` (counting every record, even though those
            // that change nothing will not be written).
            // The frame length is kept as a running sum (`format::frame_len` of the lengths
            // so far), so sizing a group is linear in its length.
            let mut take = 0usize;
            let mut body = 0usize;
            for (_, len) in &q.pending {
                body += keel_wal::format::RECORD_PREFIX_BYTES + len;
                let frame = keel_wal::format::align_up(
                    keel_wal::format::FRAME_HEADER_BYTES + body,
                    keel_wal::format::FRAME_ALIGN,
                );
                if take + 1 > self.options.group_commit_txns_max
                    || (take >= 1 && frame > self.options.wal.batch_bytes_max)
                {
                    break;
                }
                take += 1;
            }
            let group: Vec<_> = q.pending.drain(..take).map(|(p, _)| p).collect();
            drop(q);
            self.commit_group(&group);
            q = self.queue.lock().map_err(lock_poisoned)?;
            self.queue_cv.notify_all();
            let outcome = me.lock().map_err(lock_poisoned)?.outcome.take();
            if let Some(outcome) = outcome {
                q.leader_active = false;
                self.queue_cv.notify_all();
                return outcome;
            }
        }
    }

    /// Applies a group of queued transactions in order, logs those that changed the store
    /// in one append, publishes durability, and fills in every outcome.
    fn commit_group(&self, group: &[Arc<Mutex<Pending>>]) {
        let set = |p: &Arc<Mutex<Pending>>, outcome| {
            if let Ok(mut p) = p.lock() {
                p.outcome = Some(outcome);
            }
        };
        if let Err(e) = self.check_poison() {
            let cause = match e {
                DbError::Poisoned { cause } => cause,
                other => other.to_string(),
            };
            for p in group {
                set(p, Err(poisoned(&cause)));
            }
            return;
        }
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut outcomes: Vec<Result<TxnResponse, DbError>> = Vec::with_capacity(group.len());
        let (first_lsn, revision) = {
            let Ok(mut m) = self.memtable.write() else {
                for p in group {
                    set(p, Err(lock_poisoned(())));
                }
                return;
            };
            // Only the leader appends, so the next LSN is known before the append.
            let first_lsn = self.log.next_lsn();
            for p in group {
                let Ok(mut p) = p.lock() else {
                    outcomes.push(Err(lock_poisoned(())));
                    continue;
                };
                let before = m.revision();
                let outcome = m.txn(&p.txn).map_err(DbError::from);
                if outcome.as_ref().is_ok_and(|r| r.revision != before) {
                    records.push(std::mem::take(&mut p.record));
                    m.set_applied_index(first_lsn + records.len() as u64 - 1);
                }
                outcomes.push(outcome);
            }
            (first_lsn, m.revision())
        };
        let mut failure = None;
        if !records.is_empty() {
            let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            match self.log.clone().append(&refs) {
                Ok(first) if first == first_lsn => {
                    self.txns_logged
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.log_appends.fetch_add(1, Ordering::Relaxed);
                    let since = self
                        .log_bytes_since_checkpoint
                        .fetch_add(bytes, Ordering::Relaxed)
                        + bytes;
                    if since >= self.options.checkpoint_log_bytes {
                        let _g = self.checkpoint_wake_lock.lock();
                        self.checkpoint_wake.notify_all();
                    }
                }
                Ok(first) => {
                    failure = Some(format!(
                        "log placed the group at lsn {first} instead of {first_lsn}"
                    ))
                }
                Err(e) => failure = Some(format!("log append failed: {e}")),
            }
        }
        if let Ok(mut d) = self.durable.lock() {
            match &failure {
                Some(cause) => {
                    d.poison.get_or_insert_with(|| cause.clone());
                    self.poisoned.store(true, Ordering::Release);
                    // The checkpoint thread stops once it sees the poison.
                    let _g = self.checkpoint_wake_lock.lock();
                    self.checkpoint_wake.notify_all();
                }
                None => {
                    d.revision = revision;
                    self.durable_revision.store(revision, Ordering::Release);
                    if !records.is_empty() {
                        d.index = first_lsn + records.len() as u64 - 1;
                    }
                }
            }
            self.durable_cv.notify_all();
        }
        for (p, outcome) in group.iter().zip(outcomes) {
            let outcome = match &failure {
                Some(cause) => Err(poisoned(cause)),
                None => outcome,
            };
            set(p, outcome);
        }
    }

    /// The checkpoint thread: writes a checkpoint whenever one is due. It stops at shutdown
    /// and as soon as the store is poisoned (a poisoned store makes no checkpoints: its
    /// memory may be ahead of the log). A failed attempt is retried no sooner than
    /// `CHECKPOINT_RETRY_DELAY` later, however often writers signal that one is due.
    fn checkpoint_loop(&self) {
        let mut retry_at: Option<Instant> = None;
        loop {
            if self.shutdown.load(Ordering::SeqCst) || self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let due = self.log_bytes_since_checkpoint.load(Ordering::Relaxed)
                >= self.options.checkpoint_log_bytes;
            let now = Instant::now();
            if retry_at.is_some_and(|at| now >= at) {
                retry_at = None;
            }
            if due && retry_at.is_none() {
                // A failure is not fatal here: the log still holds everything, a later
                // attempt retries, and `Db::checkpoint` reports errors to a caller.
                retry_at = match self.checkpoint() {
                    Ok(_) => None,
                    Err(_) => Some(now + CHECKPOINT_RETRY_DELAY),
                };
                continue;
            }
            let wait = retry_at.map_or(CHECKPOINT_IDLE_WAIT, |at| {
                at.saturating_duration_since(now).min(CHECKPOINT_IDLE_WAIT)
            });
            let Ok(g) = self.checkpoint_wake_lock.lock() else {
                return;
            };
            if self.shutdown.load(Ordering::SeqCst) || self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let _ = self.checkpoint_wake.wait_timeout(g, wait);
        }
    }

    fn checkpoint(&self) -> Result<Option<CheckpointMeta>, DbError> {
        let result = self.try_checkpoint();
        if result.is_err() {
            self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn try_checkpoint(&self) -> Result<Option<CheckpointMeta>, DbError> {
        let mut last = self.checkpoint_lock.lock().map_err(lock_poisoned)?;
        self.check_poison()?;
        // Open a snapshot of the memtable: writers go on, and the snapshot keeps the
        // previous version of whatever they overwrite, so nobody waits for a copy.
        let info = {
            let mut m = self.memtable.write().map_err(lock_poisoned)?;
            // Only this function opens snapshots, under `checkpoint_lock`; one left open by
            // a failed attempt is closed here.
            m.end_snapshot();
            m.begin_snapshot()
        };
        let Some(info) = info else {
            return Ok(None);
        };
        let result = self.write_snapshot(info, &mut last);
        if let Ok(mut m) = self.memtable.write() {
            m.end_snapshot();
        }
        result
    }

    /// Writes the open memtable snapshot as a checkpoint, chunk by chunk.
    fn write_snapshot(
        &self,
        info: SnapshotInfo,
        last: &mut Option<u64>,
    ) -> Result<Option<CheckpointMeta>, DbError> {
        if *last == Some(info.applied_index) || info.applied_index == 0 {
            self.log_bytes_since_checkpoint.store(0, Ordering::Relaxed);
            return Ok(None);
        }
        // The snapshot may include a group whose append is still in flight: only durable
        // state may be checkpointed, or recovery would skip records that never reached the
        // log.
        self.wait_durable(info.revision)?;
        self.log_bytes_since_checkpoint.store(0, Ordering::Relaxed);
        let header = CheckpointMeta {
            index: info.applied_index,
            term: 0,
            revision: info.revision,
            entry_count: 0,
            conf_state: Vec::new(),
        };
        let (_, meta) = self.checkpoints.write_with(header, &mut |sink| {
            let mut after: Option<Vec<u8>> = None;
            loop {
                // A short read lock per chunk: the leader can apply between chunks.
                let chunk = match self.memtable.read() {
                    Ok(m) => m.snapshot_chunk(after.as_deref(), CHECKPOINT_CHUNK_ENTRIES),
                    Err(_) => {
                        return Err(CheckpointError::BadSource {
                            reason: "memtable lock poisoned".into(),
                        });
                    }
                };
                let Some(tail) = chunk.last() else {
                    return Ok(());
                };
                after = Some(tail.key.clone());
                for kv in &chunk {
                    sink.push(&kv.key, &kv.value, kv.meta)?;
                }
            }
        })?;
        *last = Some(info.applied_index);
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        self.checkpoints.retain(self.options.checkpoints_kept)?;
        if let Some((oldest, _)) = self.checkpoints.list()?.first() {
            self.log
                .clone()
                .purge_before(oldest + 1)
                .map_err(|source| DbError::Log {
                    op: "purge",
                    source,
                })?;
        }
        Ok(Some(meta))
    }
}
