//! Keel storage engine: a multi-group raft log store, a memtable key-value store with
//! etcd-style revisions, checkpoints, and a standalone durable store.
//!
//! Module map:
//! - [`revision`], [`txn`], [`memtable`]: the key-value state machine.
//! - [`log_store`], [`log_record`], [`log_backend`]: the multi-group raft log store over a
//!   log seam, with an in-memory log for tests.
//! - [`db`]: [`Db`], the standalone durable store (memtable + its own WAL + checkpoints).
//! - [`bench`]: the load generator behind `keel bench engine`.
//! - [`checkpoint`]: the memtable on disk (format documented byte by byte there).

pub mod bench;
pub mod checkpoint;
pub mod db;
pub mod log_backend;
pub mod log_record;
pub mod log_store;
pub mod memtable;
pub mod revision;
pub mod txn;
pub mod txn_codec;
mod wal_backend;

pub use checkpoint::{CheckpointDir, CheckpointError, CheckpointMeta, CheckpointReader};
pub use db::{Db, DbError, DbOptions, DbRecovery, DbStats};
pub use log_backend::{BackendError, LogBackend, MemLog, SegmentSpan};
pub use log_store::{
    Entry, GroupId, HardState, LogStore, LogStoreError, LogStoreOptions, SnapshotMeta, WriteBatch,
};
pub use memtable::{KvError, KvLimits, Memtable};
pub use revision::{KeyMeta, KeyValue};
pub use txn::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, RangeEnd, RangeRequest, RangeResponse, Txn,
    TxnResponse,
};
