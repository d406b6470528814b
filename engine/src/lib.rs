//! Keel storage engine: a multi-group raft log store, a memtable key-value store with
//! etcd-style revisions, checkpoints, and a standalone durable store.
//!
//! Module map:
//! - [`revision`], [`txn`], [`memtable`]: the key-value state machine.
//! - [`checkpoint`]: the memtable on disk (format documented byte by byte there).

pub mod checkpoint;
pub mod memtable;
pub mod revision;
pub mod txn;

pub use checkpoint::{CheckpointDir, CheckpointError, CheckpointMeta, CheckpointReader};
pub use memtable::{KvError, KvLimits, Memtable};
pub use revision::{KeyMeta, KeyValue};
pub use txn::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, RangeEnd, RangeRequest, RangeResponse, Txn,
    TxnResponse,
};
