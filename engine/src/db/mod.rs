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

//!
//! # Code map
//!
//! `options.rs` ([`DbOptions`]), `error.rs` ([`DbError`]), `commit.rs` (the commit queue and
//! group commit), `recovery.rs` (checkpoint + log replay), `checkpointer.rs` (background and
//! explicit checkpoints, log purge); this file holds [`Db`] and its read and write API.

mod checkpointer;
mod commit;
mod error;
mod options;
mod recovery;

pub use error::DbError;
pub use options::{CheckpointRecovery, DbOptions};
pub use recovery::DbRecovery;

use commit::Queue;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use keel_wal::Wal;

use crate::checkpoint::{CheckpointDir, CheckpointMeta, sync_parent};
use crate::log_backend::LogBackend;
use crate::memtable::Memtable;
use crate::progress::ReplayProgress;
use crate::revision::{KeyMeta, KeyValue};
use crate::txn::{Op, OpResponse, RangeRequest, RangeResponse, Txn, TxnResponse};

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
        progress: &mut dyn FnMut(ReplayProgress),
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
        progress: &mut dyn FnMut(ReplayProgress),
    ) -> Result<Db<B>, DbError> {
        options.validate()?;
        let checkpoints = CheckpointDir::open(&dir.join("checkpoints"))?;
        // `wal/` and `checkpoints/` may have just been created: make their entries durable,
        // or a crash could lose a directory whose files were already fsynced.
        sync_parent(checkpoints.path())?;
        let (memtable, recovery) = recovery::recover(&options, &checkpoints, &log, progress)?;
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
            let needed = put_bytes(&txn);
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
}

/// Bytes of keys and values every put of `txn` could write, both branches and nested
/// transactions included (validated: nesting is bounded by `TXN_DEPTH_MAX`).
fn put_bytes(txn: &Txn) -> u64 {
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(|op| match op {
            Op::Put { key, value, .. } => (key.len() + value.len()) as u64,
            Op::Txn(nested) => put_bytes(nested),
            _ => 0,
        })
        .sum()
}
