//! Keel storage engine: a multi-group raft log store, a memtable key-value store with
//! etcd-style revisions, checkpoints, and a standalone durable store.
//!
//! # Bird's-eye view
//!
//! ```text
//!  keel-node (consensus)                        embedded users
//!        │ entries, hard states, snapshots            │ get/put/delete/range/txn
//!        ▼                                            ▼
//!  LogStore<B = Wal> ── one WAL, many groups     Db ── Memtable + its own Wal
//!        │                                            │        │
//!        │   Memtable (state machine) ◄── apply ──────┘        ▼
//!        │        │                                     CheckpointDir
//!        ▼        ▼                                     (checkpoint-<index>.ckpt, mmap)
//!  LogBackend (trait) ── keel_wal::Wal | MemLog (tests)
//! ```
//!
//! # Examples
//!
//! The standalone store:
//!
//! ```
//! use keel_engine::{
//!     Compare, CompareOp, CompareTarget, Db, DbOptions, Op, RangeEnd, RangeRequest, Txn,
//! };
//!
//! let dir = tempfile::tempdir()?;
//! let db = Db::open(dir.path(), DbOptions::default())?;
//! db.put(b"config/a", b"1")?; // durable when it returns
//! let swapped = db.txn(Txn {
//!     compares: vec![Compare {
//!         key: b"config/a".to_vec(),
//!         end: RangeEnd::Single,
//!         op: CompareOp::Equal,
//!         target: CompareTarget::Version(1),
//!     }],
//!     success: vec![Op::put("config/a", "2")],
//!     failure: vec![],
//! })?;
//! assert!(swapped.succeeded);
//! let all = db.range(&RangeRequest::prefix("config/"))?;
//! assert_eq!((all.count, all.revision), (1, 2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Many raft groups in one log:
//!
//! ```
//! use keel_engine::{Entry, HardState, LogStore, LogStoreOptions, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = keel_wal::Wal::open(dir.path(), keel_wal::WalOptions::default())?;
//! let mut log: LogStore = LogStore::open(wal, LogStoreOptions::default(), &mut |_| {})?;
//! let mut round = WriteBatch::new(); // one append, atomic across groups
//! round
//!     .append(1, vec![Entry { index: 1, term: 1, data: b"a".to_vec() }])
//!     .append(2, vec![Entry { index: 1, term: 1, data: b"b".to_vec() }])
//!     .set_hard_state(1, HardState { term: 1, vote: 1, commit: 1 });
//! log.write(round)?;
//! assert_eq!(log.entries(2, 1, 2, u64::MAX)?[0].data, b"b");
//! assert_eq!(log.term(1, 1)?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Code map
//!
//! - [`revision`], [`txn`], [`memtable`]: the key-value state machine — ordered map, etcd
//!   revisions, ranges, transactions with compares, size limits ([`KvLimits`]);
//!   `history.rs`: its bounded MVCC history (the pre-images of changes since the compact
//!   revision) for reads at older revisions, compacted on request and past
//!   [`KvLimits::history_bytes_max`].
//! - [`checkpoint`]: the memtable as an immutable sorted file (format documented byte by
//!   byte there), verified on open and read through a memory map; [`CheckpointDir`] picks
//!   the newest valid one. A checkpoint file is also what a raft snapshot carries.
//! - [`log_store`] (a folder, one file per part), [`log_record`], [`log_backend`]: the
//!   multi-group raft log store over a log seam ([`LogBackend`], and [`AsyncLogBackend`]
//!   for appends from an async runtime; implemented for `keel_wal::Wal` / `Arc<Wal>` and by
//!   the in-memory [`MemLog`] for tests). Read API shaped like etcd-raft's `Storage`.
//! - [`db`] (a folder: options, errors, commit queue, recovery, checkpointer),
//!   [`txn_codec`]: [`Db`], the standalone durable store (memtable + its own WAL +
//!   background checkpoints), with group commit.
//! - `bytes.rs`: the one bounds-checked little-endian reader behind every decoder;
//!   `progress.rs`: [`ReplayProgress`], reported by both stores while they recover.
//!
//! # Invariants
//!
//! - Every write path validates completely before it writes: a rejected transaction or
//!   batch changes neither memory nor disk.
//! - One log append per write batch, and the log makes an append atomic: multi-group raft
//!   batches and `Db` transactions are all-or-nothing across crashes.
//! - Memory follows the log: state changes are applied only in log order (live and in
//!   recovery through the same code), so recovery reproduces exactly what was acknowledged.
//! - A failed log write poisons the writer (`LogStoreError::Poisoned`, `DbError::Poisoned`,
//!   both carrying the first failure); nothing retries an fsync, and a poisoned `Db` makes
//!   no more checkpoints. Reopening recovers what was durable.
//! - Staged log store writes reach the log in stage order: the store owns their appends
//!   (one in flight at a time) and the caller can only await them.
//! - A checkpoint only ever contains durable state, and the log is kept from the oldest
//!   retained checkpoint, so a corrupt newest checkpoint falls back to an older one. Only
//!   verified corruption makes a checkpoint fall back (and be quarantined); any other error
//!   opening one (I/O, a newer format version) fails the open, naming the file.
//! - Nothing read from disk is trusted: checkpoints and log records are bounds-checked and
//!   checksummed (the WAL frames records with CRCs), and bad data is an error naming where.
//!
//! # Deliberately absent
//!
//! - No unbounded MVCC history: reads at older revisions are served from a bounded
//!   in-memory history (from the compact revision on; see [`memtable`]), which checkpoints
//!   do not hold. No watch.
//! - No LSM: the memtable holds all data in memory; checkpoints are for durability,
//!   snapshots and fast restart, not for spilling data out of memory.
//! - No threads inside [`LogStore`]: the caller (the node's storage pipeline) drives writes,
//!   `maintain` and compaction requests. `Db` owns one background checkpoint thread.

mod bytes;
pub mod checkpoint;
pub mod db;
mod history;
pub mod log_backend;
pub mod log_record;
pub mod log_store;
pub mod memtable;
mod progress;
pub mod revision;
pub mod txn;
pub mod txn_codec;
mod wal_backend;

pub use checkpoint::{CheckpointDir, CheckpointError, CheckpointMeta, CheckpointReader};
pub use db::{CheckpointRecovery, Db, DbError, DbOptions, DbRecovery, DbStats};
pub use log_backend::{
    AppendFuture, AsyncLogBackend, BackendError, FramePos, FrameVisitor, LogBackend, MemLog,
    Placed, SegmentSpan,
};
pub use log_store::{
    Entry, GroupId, HardState, LogStore, LogStoreError, LogStoreOptions, LogStoreStats,
    SnapshotMeta, Ticket, WriteBatch,
};
pub use memtable::{HISTORY_CHANGE_OVERHEAD_BYTES, KvError, KvLimits, Memtable, SnapshotInfo};
pub use progress::ReplayProgress;
pub use revision::{KeyMeta, KeyValue};
pub use txn::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, RangeEnd, RangeRequest, RangeResponse,
    RangeSort, RevisionFilter, SortOrder, SortTarget, TXN_DEPTH_MAX, Txn, TxnResponse,
};
