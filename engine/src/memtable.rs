//! The memtable: the in-memory ordered key-value state machine with etcd-style revisions.
//!
//! The current version of every key lives in one `BTreeMap`. A transaction is validated in
//! full (sizes, counts) before it changes anything, so a rejected transaction leaves the store
//! exactly as it was; an accepted one is applied in one call and advances the store revision
//! by one if it changed any key.
//!
//! # History (MVCC)
//!
//! Beside the map, the memtable keeps the pre-image of every key change since its *compact
//! revision* (see `history.rs`), so that a [`RangeRequest`] with a `revision` reads the keys
//! as they were after that revision, as etcd's MVCC store does: values and metadata as of
//! then, deleted keys (tombstones) absent from their delete on, keys created later absent.
//! Reads below the compact revision fail with [`KvError::Compacted`], reads beyond the store
//! revision with [`KvError::FutureRevision`]. Transactions, their compares and their reads are
//! at the current revision only.
//!
//! History is compacted on request ([`Memtable::compact`], etcd's `Compact`, applied in log
//! order by whoever replicates it) and automatically: when its charged bytes pass
//! [`KvLimits::history_bytes_max`], whole revisions leave, oldest first, until it fits. Both
//! depend only on the commands applied and the limits, never on time, so replicas that
//! applied the same log agree on the compact revision — except that a store restored from a
//! checkpoint ([`Memtable::restore`]) starts with no history: its compact revision is the
//! checkpoint's revision, and it catches up with the others' compact revision as writes go on.
//! Snapshots and checkpoints hold the current state only.
//!
//! The memtable also remembers `applied_index`: the position in the log (raft index or WAL
//! sequence number) of the last command applied to it. A checkpoint records it, and recovery
//! replays only what follows.

use std::collections::BTreeMap;
use std::ops::Bound;

pub use crate::history::HISTORY_CHANGE_OVERHEAD_BYTES;
use crate::history::History;
use crate::revision::{KeyMeta, KeyValue};
use crate::txn::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, RangeEnd, RangeRequest, RangeResponse,
    SortOrder, SortTarget, TXN_DEPTH_MAX, Txn, TxnResponse,
};

/// Largest `key_bytes_max` a store accepts: on-disk key lengths are u32, and a bound far below
/// that keeps one key from dominating memory.
pub const KEY_BYTES_CAP: usize = 64 * 1024;
/// Largest `value_bytes_max` a store accepts; on-disk value lengths are u32.
pub const VALUE_BYTES_CAP: usize = 64 * 1024 * 1024;
/// Largest `txn_bytes_max` a store accepts; a transaction is one log record.
pub const TXN_BYTES_CAP: usize = 256 * 1024 * 1024;

const _: () = assert!(KEY_BYTES_CAP <= VALUE_BYTES_CAP);
const _: () = assert!(VALUE_BYTES_CAP < TXN_BYTES_CAP);
const _: () = assert!(TXN_BYTES_CAP <= u32::MAX as usize);

/// Size limits of the key-value store. Oversize input is rejected with [`KvError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest key, in bytes. Default 8 KiB. Keys must also be non-empty.
    pub key_bytes_max: usize,
    /// Largest value, in bytes. Default 1 MiB.
    pub value_bytes_max: usize,
    /// Most operations in one transaction, both branches counted, and a nested transaction
    /// counted as one operation plus its own. Default 1024.
    pub txn_ops_max: usize,
    /// Most key and value bytes in one transaction, both branches and compares counted.
    /// Default 8 MiB.
    pub txn_bytes_max: usize,
    /// Most bytes of MVCC history (the versions that reads at older revisions need), each
    /// change charged its key and previous value lengths plus
    /// [`HISTORY_CHANGE_OVERHEAD_BYTES`]. Past it the store compacts its oldest revisions
    /// until the history fits again (the revision of one transaction is kept whole or
    /// dropped whole; one transaction larger than the limit leaves no history). 0 keeps no
    /// history: only the current revision is readable. Default 32 MiB, per memtable (a node
    /// keeps one per raft group).
    pub history_bytes_max: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            key_bytes_max: 8 * 1024,
            value_bytes_max: 1024 * 1024,
            txn_ops_max: 1024,
            txn_bytes_max: 8 * 1024 * 1024,
            history_bytes_max: 32 * 1024 * 1024,
        }
    }
}

impl KvLimits {
    /// Checks that every limit is positive, below its cap, and that the limits agree with
    /// each other (a transaction can hold at least one largest key and value).
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |reason: &str| {
            Err(KvError::InvalidLimits {
                reason: reason.to_string(),
            })
        };
        if self.key_bytes_max == 0 || self.key_bytes_max > KEY_BYTES_CAP {
            return bad("key_bytes_max must be in 1..=KEY_BYTES_CAP");
        }
        if self.value_bytes_max > VALUE_BYTES_CAP {
            return bad("value_bytes_max must be at most VALUE_BYTES_CAP");
        }
        if self.txn_ops_max == 0 {
            return bad("txn_ops_max must be positive");
        }
        if self.txn_bytes_max > TXN_BYTES_CAP
            || self.txn_bytes_max < self.key_bytes_max + self.value_bytes_max
        {
            return bad(
                "txn_bytes_max must hold one largest key and value and be at most TXN_BYTES_CAP",
            );
        }
        Ok(())
    }
}

/// Errors of the key-value store layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key was empty.
    #[error("empty key")]
    EmptyKey,
    /// A key exceeded `key_bytes_max`.
    #[error("key of {len} bytes exceeds key_bytes_max = {max}")]
    KeyTooLarge {
        /// Length of the key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value exceeded `value_bytes_max`.
    #[error("value of {len} bytes exceeds value_bytes_max = {max}")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction had more operations than `txn_ops_max`.
    #[error("transaction of {ops} operations exceeds txn_ops_max = {max}")]
    TooManyOps {
        /// Operations in the transaction.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// Transactions were nested deeper than [`TXN_DEPTH_MAX`].
    #[error("transactions nested {depth} deep exceed TXN_DEPTH_MAX = {max}")]
    TxnTooDeep {
        /// Levels of the transaction, the outermost counted (as far as they were followed).
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// One branch of a transaction wrote a key twice (see [`Txn::check_duplicate_keys`]).
    #[error("duplicate key given in txn request: {}", String::from_utf8_lossy(key))]
    DuplicateKey {
        /// The key written twice.
        key: Vec<u8>,
    },
    /// A transaction carried more bytes than `txn_bytes_max`.
    #[error("transaction of {bytes} bytes exceeds txn_bytes_max = {max}")]
    TxnTooLarge {
        /// Key and value bytes in the transaction.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A read asked for a revision whose history has been compacted away.
    #[error(
        "mvcc: required revision has been compacted (revision {requested}, compacted at {compacted})"
    )]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The store's compact revision: the oldest revision still readable.
        compacted: u64,
    },
    /// A read or a compaction asked for a revision the store has not reached.
    #[error(
        "mvcc: required revision is a future revision (revision {requested}, current {current})"
    )]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store revision.
        current: u64,
    },
    /// A read inside a transaction asked for a revision: reads in transactions are at the
    /// current revision only.
    #[error(
        "a read inside a transaction asked for revision {revision}; only 0 (current) is served"
    )]
    RevisionInTxn {
        /// The revision asked for.
        revision: u64,
    },
    /// The limits themselves were inconsistent.
    #[error("invalid limits: {reason}")]
    InvalidLimits {
        /// What is wrong.
        reason: String,
    },
}

/// A stored value with its revision metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    value: Vec<u8>,
    meta: KeyMeta,
}

impl Stored {
    fn view(&self) -> VersionRef<'_> {
        VersionRef {
            value: &self.value,
            meta: self.meta,
        }
    }
}

/// A version of a key as a read sees it, borrowed from the live map or from the history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VersionRef<'a> {
    pub(crate) value: &'a [u8],
    pub(crate) meta: KeyMeta,
}

/// The in-memory key-value state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct Memtable {
    map: BTreeMap<Vec<u8>, Stored>,
    /// Store revision; `>= mod_revision` of every key.
    revision: u64,
    /// Log position of the last command applied.
    applied_index: u64,
    /// Sum of key and value lengths of live keys, for reporting and checkpoint sizing.
    data_bytes: u64,
    limits: KvLimits,
    /// The snapshot being read, if any (see [`Memtable::begin_snapshot`]).
    shadow: Option<Shadow>,
    /// Versions older than the current ones, for reads at older revisions.
    history: History,
}

/// A snapshot kept consistent while writes go on: the pre-image of every key written since
/// the snapshot began (`None` for a key that did not exist then). A key absent from
/// `pre_images` is unchanged since, so its live entry is the snapshot's.
#[derive(Clone, Debug)]
struct Shadow {
    info: SnapshotInfo,
    pre_images: BTreeMap<Vec<u8>, Option<Stored>>,
}

/// The point a snapshot of the memtable was taken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Store revision of the snapshot.
    pub revision: u64,
    /// Log position of the last command the snapshot contains.
    pub applied_index: u64,
    /// Number of live keys in the snapshot.
    pub len: usize,
}

impl Memtable {
    /// An empty store at revision 0 with the given limits.
    pub fn new(limits: KvLimits) -> Result<Memtable, KvError> {
        limits.validate()?;
        Ok(Memtable {
            map: BTreeMap::new(),
            revision: 0,
            applied_index: 0,
            data_bytes: 0,
            limits,
            shadow: None,
            history: History::new(0),
        })
    }

    /// Begins a snapshot of the current state that stays readable, through
    /// [`Memtable::snapshot_chunk`], while later transactions are applied — so a checkpoint
    /// can be written without stopping writers for a copy of the whole store. Each key
    /// written while the snapshot is open has its previous version kept aside once, so the
    /// extra memory is proportional to the keys written meanwhile. Returns `None` if a
    /// snapshot is already open (one at a time); close it with [`Memtable::end_snapshot`].
    pub fn begin_snapshot(&mut self) -> Option<SnapshotInfo> {
        if self.shadow.is_some() {
            return None;
        }
        let info = SnapshotInfo {
            revision: self.revision,
            applied_index: self.applied_index,
            len: self.map.len(),
        };
        self.shadow = Some(Shadow {
            info,
            pre_images: BTreeMap::new(),
        });
        Some(info)
    }

    /// Up to `entries_max` entries of the open snapshot with keys strictly after `after`
    /// (from the first key when `None`), in key order; empty once the snapshot is exhausted
    /// or when no snapshot is open.
    pub fn snapshot_chunk(&self, after: Option<&[u8]>, entries_max: usize) -> Vec<KeyValue> {
        let Some(shadow) = &self.shadow else {
            return Vec::new();
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut live = self
            .map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let mut pre = shadow
            .pre_images
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let mut out = Vec::new();
        while out.len() < entries_max {
            // Merge the live map and the pre-images by key; a pre-image wins over the live
            // entry of the same key, and a `None` pre-image hides a key created since.
            let (key, stored) = match (live.peek(), pre.peek()) {
                (None, None) => break,
                (Some(&(lk, ls)), None) => {
                    live.next();
                    (lk, Some(ls))
                }
                (None, Some(&(pk, ps))) => {
                    pre.next();
                    (pk, ps.as_ref())
                }
                (Some(&(lk, ls)), Some(&(pk, ps))) => {
                    if lk < pk {
                        live.next();
                        (lk, Some(ls))
                    } else {
                        if lk == pk {
                            live.next();
                        }
                        pre.next();
                        (pk, ps.as_ref())
                    }
                }
            };
            if let Some(s) = stored {
                out.push(KeyValue {
                    key: key.clone(),
                    value: s.value.clone(),
                    meta: s.meta,
                });
            }
        }
        out
    }

    /// Closes the open snapshot and frees the versions it kept.
    pub fn end_snapshot(&mut self) {
        self.shadow = None;
    }

    /// The open snapshot, if any.
    pub fn snapshot_info(&self) -> Option<SnapshotInfo> {
        self.shadow.as_ref().map(|s| s.info)
    }

    /// Keeps the current version of `key` for the open snapshot before it is written, the
    /// first time it is written since the snapshot began.
    fn preserve(&mut self, key: &[u8]) {
        if let Some(shadow) = &mut self.shadow {
            if !shadow.pre_images.contains_key(key) {
                shadow
                    .pre_images
                    .insert(key.to_vec(), self.map.get(key).cloned());
            }
        }
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// The current store revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The oldest revision reads may ask for: history below it has been compacted (0 for a
    /// new store, the checkpoint's revision for a restored one).
    pub fn compact_revision(&self) -> u64 {
        self.history.compact_revision()
    }

    /// Bytes of history kept, as charged against [`KvLimits::history_bytes_max`].
    pub fn history_bytes(&self) -> u64 {
        self.history.bytes()
    }

    /// Number of key changes kept in the history.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Drops the history older than `revision`, as etcd's `Compact`: afterwards reads at
    /// revisions below `revision` fail with [`KvError::Compacted`], and reads at `revision`
    /// and later still work. Fails, changing nothing, with [`KvError::Compacted`] when
    /// `revision` is at or below the compact revision already, and with
    /// [`KvError::FutureRevision`] when it is beyond the store revision. Neither the store
    /// revision nor any current key changes. Deterministic: a replicated store applies it in
    /// log order like a transaction. Costs O(versions dropped).
    pub fn compact(&mut self, revision: u64) -> Result<(), KvError> {
        self.check_compact(revision)?;
        self.history.compact(revision);
        Ok(())
    }

    /// Checks what [`Memtable::compact`] checks, without compacting.
    pub fn check_compact(&self, revision: u64) -> Result<(), KvError> {
        let compacted = self.history.compact_revision();
        if revision <= compacted {
            return Err(KvError::Compacted {
                requested: revision,
                compacted,
            });
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        Ok(())
    }

    /// The value and metadata of `key` at the current revision, borrowed: the point-read
    /// fast path, with no allocation.
    pub fn get_ref(&self, key: &[u8]) -> Result<Option<(&[u8], KeyMeta)>, KvError> {
        self.check_key(key)?;
        Ok(self.map.get(key).map(|s| (s.value.as_slice(), s.meta)))
    }

    /// Log position of the last command applied to the store.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Records that the command at log position `index` has been applied. Positions only move
    /// forward; a caller replaying the log skips what a checkpoint already covers.
    pub fn set_applied_index(&mut self, index: u64) {
        debug_assert!(index >= self.applied_index, "applied index moved backwards");
        self.applied_index = index;
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of the lengths of all live keys and values, in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The value and metadata of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.map.get(key).map(|s| KeyValue {
            key: key.to_vec(),
            value: s.value.clone(),
            meta: s.meta,
        })
    }

    /// Every live key in ascending order with its value and metadata, for checkpoints.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], KeyMeta)> {
        self.map
            .iter()
            .map(|(k, s)| (k.as_slice(), s.value.as_slice(), s.meta))
    }

    /// Reads a range at `req.revision` (0: the current revision). A read at an older
    /// revision costs a current read plus a visit of every change since that revision; one
    /// below the compact revision fails with [`KvError::Compacted`], one beyond the store
    /// revision with [`KvError::FutureRevision`]. The response's `revision` is the current
    /// store revision either way (etcd's `header.revision`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.check_key(&req.start)?;
        if req.revision == 0 || req.revision == self.revision {
            return Ok(self.range_unchecked(req));
        }
        if req.revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: req.revision,
                current: self.revision,
            });
        }
        let compacted = self.history.compact_revision();
        if req.revision < compacted {
            return Err(KvError::Compacted {
                requested: req.revision,
                compacted,
            });
        }
        Ok(self.range_at(req))
    }

    /// Writes `value` under `key` as a one-operation transaction; returns the new revision.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, KvError> {
        Ok(self.txn(&Txn::batch(vec![Op::put(key, value)]))?.revision)
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, KvError> {
        let resp = self.txn(&Txn::batch(vec![Op::delete(key)]))?;
        Ok(matches!(
            resp.responses.first(),
            Some(OpResponse::DeleteRange { deleted: 1.., .. })
        ))
    }

    /// Checks a transaction against the limits without running it: nesting within
    /// [`TXN_DEPTH_MAX`], operations (nested ones counted) within `txn_ops_max`, then every
    /// key, value and range end, then the bytes within `txn_bytes_max`.
    pub fn validate_txn(&self, txn: &Txn) -> Result<(), KvError> {
        let ops = count_ops(txn, 1)?;
        if ops > self.limits.txn_ops_max {
            return Err(KvError::TooManyOps {
                ops,
                max: self.limits.txn_ops_max,
            });
        }
        let bytes = self.validate_level(txn)?;
        if bytes > self.limits.txn_bytes_max {
            return Err(KvError::TxnTooLarge {
                bytes,
                max: self.limits.txn_bytes_max,
            });
        }
        Ok(())
    }

    /// Checks the keys, values and range ends of one transaction and those nested in it
    /// (whose depth [`count_ops`] bounded); returns their bytes.
    fn validate_level(&self, txn: &Txn) -> Result<usize, KvError> {
        let mut bytes = 0usize;
        for c in &txn.compares {
            self.check_key(&c.key)?;
            bytes += c.key.len() + self.check_range_end(&c.end)?;
            if let CompareTarget::Value(v) = &c.target {
                self.check_value(v)?;
                bytes += v.len();
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            bytes += match op {
                Op::Put { key, value, .. } => {
                    self.check_key(key)?;
                    self.check_value(value)?;
                    key.len() + value.len()
                }
                Op::DeleteRange { start, end, .. } => {
                    self.check_key(start)?;
                    start.len() + self.check_range_end(end)?
                }
                Op::Range(r) => {
                    self.check_key(&r.start)?;
                    if r.revision != 0 {
                        return Err(KvError::RevisionInTxn {
                            revision: r.revision,
                        });
                    }
                    r.start.len() + self.check_range_end(&r.end)?
                }
                Op::Txn(nested) => self.validate_level(nested)?,
            };
        }
        Ok(bytes)
    }

    /// Checks an exclusive range end like a key (it may be empty); returns its bytes.
    fn check_range_end(&self, end: &RangeEnd) -> Result<usize, KvError> {
        match end {
            RangeEnd::Exclusive(e) => {
                self.check_end(e)?;
                Ok(e.len())
            }
            RangeEnd::Single | RangeEnd::Unbounded => Ok(0),
        }
    }

    /// Runs a transaction atomically: validates it in full, decides the compares of it and
    /// of the transactions nested in its chosen branches (recursively) on the store as it is
    /// now, then runs the chosen branch, a nested transaction's chosen branch running where
    /// it stands among the operations. The store revision advances by one if the
    /// transaction changed any key (a put always does; a delete only if it removed
    /// something), and every key written by it, nested operations included, gets that
    /// revision as its `mod_revision`. Reads see the earlier operations' writes; a read
    /// asking for a revision fails validation with [`KvError::RevisionInTxn`]. The versions
    /// the transaction replaced join the history, which is then compacted to fit
    /// [`KvLimits::history_bytes_max`].
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, KvError> {
        self.validate_txn(txn)?;
        // As etcd's `compareToPath`: every outcome is decided before any operation runs, so a
        // nested transaction's compares never see the outer transaction's writes.
        let decision = self.decide(txn);
        let new_revision = self.revision + 1;
        let mut changed = false;
        let mut resp = self.run(txn, &decision, new_revision, &mut changed);
        if changed {
            self.revision = new_revision;
            self.history.compact_to_fit(self.limits.history_bytes_max);
        }
        stamp_revision(&mut resp, self.revision);
        Ok(resp)
    }

    /// The outcome of `txn`'s compares and, in order, of the transactions nested in the
    /// branch that outcome chooses.
    fn decide(&self, txn: &Txn) -> Decision {
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let nested = txn
            .branch(succeeded)
            .iter()
            .filter_map(|op| match op {
                Op::Txn(t) => Some(self.decide(t)),
                _ => None,
            })
            .collect();
        Decision { succeeded, nested }
    }

    /// Runs the branch of `txn` that `decision` chose, at `new_revision`; sets `changed` once
    /// a key changed. The response's revisions are stamped by the caller.
    fn run(
        &mut self,
        txn: &Txn,
        decision: &Decision,
        new_revision: u64,
        changed: &mut bool,
    ) -> TxnResponse {
        let ops = txn.branch(decision.succeeded);
        let mut nested = decision.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                Op::Put {
                    key,
                    value,
                    prev_kv,
                } => {
                    *changed = true;
                    let (prev, old) = self.put_at(key, value, new_revision, *prev_kv);
                    OpResponse::Put {
                        prev,
                        prev_kv: old.map(|value| KeyValue {
                            key: key.clone(),
                            value,
                            meta: prev,
                        }),
                    }
                }
                Op::DeleteRange {
                    start,
                    end,
                    prev_kv,
                } => {
                    let (deleted, prev_kvs) =
                        self.delete_range_at(start, end, new_revision, *prev_kv);
                    *changed |= deleted > 0;
                    OpResponse::DeleteRange { deleted, prev_kvs }
                }
                Op::Range(r) => {
                    let mut resp = self.range_unchecked(r);
                    // Reads inside a writing transaction report the revision the transaction
                    // will have, as etcd does.
                    if *changed {
                        resp.revision = new_revision;
                    }
                    OpResponse::Range(resp)
                }
                Op::Txn(t) => {
                    // `decide` made one decision per nested transaction of the chosen
                    // branch, in this order, so there is always one.
                    let d = nested.next();
                    debug_assert!(d.is_some(), "a nested txn without a decision");
                    OpResponse::Txn(self.run(t, d.unwrap_or(&NO_DECISION), new_revision, changed))
                }
            };
            responses.push(resp);
        }
        TxnResponse {
            succeeded: decision.succeeded,
            responses,
            revision: 0,
        }
    }

    /// Rebuilds a store from a checkpoint: `revision` and `applied_index` as recorded, and
    /// the live keys in strictly ascending order. A checkpoint holds no history, so the
    /// restored store's compact revision is `revision`: reads at older revisions fail with
    /// [`KvError::Compacted`]. Rejects input that breaks the store's
    /// invariants (unsorted keys, impossible metadata, oversize keys), so a corrupt source can
    /// never produce a store that later misbehaves.
    pub fn restore<I>(
        limits: KvLimits,
        revision: u64,
        applied_index: u64,
        entries: I,
    ) -> Result<Memtable, RestoreError>
    where
        I: IntoIterator<Item = Result<KeyValue, RestoreError>>,
    {
        let mut m = Memtable::new(limits).map_err(RestoreError::Limits)?;
        m.revision = revision;
        m.applied_index = applied_index;
        m.history = History::new(revision);
        // Collect first and build the map in one go: `BTreeMap::from_iter` bulk-loads sorted
        // input instead of descending the tree for every key.
        let mut sorted: Vec<(Vec<u8>, Stored)> = Vec::new();
        for kv in entries {
            let kv = kv?;
            m.check_key(&kv.key).map_err(RestoreError::Limits)?;
            m.check_value(&kv.value).map_err(RestoreError::Limits)?;
            if sorted
                .last()
                .is_some_and(|(l, _)| l.as_slice() >= kv.key.as_slice())
            {
                return Err(RestoreError::Invalid("keys not strictly ascending".into()));
            }
            if !kv.meta.is_valid_live(revision) {
                return Err(RestoreError::Invalid(format!(
                    "impossible metadata {:?} at store revision {revision}",
                    kv.meta
                )));
            }
            m.data_bytes += (kv.key.len() + kv.value.len()) as u64;
            sorted.push((
                kv.key,
                Stored {
                    value: kv.value,
                    meta: kv.meta,
                },
            ));
        }
        m.map = sorted.into_iter().collect();
        Ok(m)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        self.check_end(key)
    }

    /// Range ends may be empty (unlike keys) but are bounded like keys.
    fn check_end(&self, key: &[u8]) -> Result<(), KvError> {
        if key.len() > self.limits.key_bytes_max {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.limits.key_bytes_max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.limits.value_bytes_max {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.limits.value_bytes_max,
            });
        }
        Ok(())
    }

    /// Whether a compare holds on the current state: for every key of its range, or, when
    /// the range holds no key, for a missing key (a value compare then fails), as etcd's
    /// `applyCompare`.
    fn compare_holds(&self, c: &Compare) -> bool {
        match &c.end {
            RangeEnd::Single => compare_version(c, self.map.get(&c.key).map(Stored::view)),
            end => {
                let mut keys = self
                    .map
                    .range::<[u8], _>(bounds(&c.key, end))
                    .map(|(_, s)| s.view())
                    .peekable();
                if keys.peek().is_none() {
                    return compare_version(c, None);
                }
                keys.all(|v| compare_version(c, Some(v)))
            }
        }
    }

    /// Writes the key and records the version it replaces in the history; returns its
    /// previous metadata, and a copy of its previous value if `want` and it existed.
    fn put_at(
        &mut self,
        key: &[u8],
        value: &[u8],
        revision: u64,
        want: bool,
    ) -> (KeyMeta, Option<Vec<u8>>) {
        self.preserve(key);
        match self.map.get_mut(key) {
            Some(s) => {
                let prev = s.meta;
                self.data_bytes = self.data_bytes - s.value.len() as u64 + value.len() as u64;
                let copy = want.then(|| s.value.clone());
                // The history gets a copy of the old version, and the live value is
                // overwritten in place when its allocation fits (not more than twice the new
                // length): live values stay where they are instead of scattering among the
                // history's, so current reads keep their memory locality.
                self.history.record(revision, key, Some(s.view()));
                let cap = s.value.capacity();
                if value.len() <= cap && cap <= value.len().saturating_mul(2) {
                    s.value.clear();
                    s.value.extend_from_slice(value);
                } else {
                    s.value = value.to_vec();
                }
                s.meta = prev.after_write(revision);
                (prev, copy)
            }
            None => {
                self.history.record(revision, key, None);
                self.data_bytes += (key.len() + value.len()) as u64;
                self.map.insert(
                    key.to_vec(),
                    Stored {
                        value: value.to_vec(),
                        meta: KeyMeta::ABSENT.after_write(revision),
                    },
                );
                (KeyMeta::ABSENT, None)
            }
        }
    }

    /// Deletes the keys of a range, recording each removed version in the history (the
    /// tombstone of a read at an older revision); returns how many, and copies of the removed
    /// key-values if `want`.
    fn delete_range_at(
        &mut self,
        start: &[u8],
        end: &RangeEnd,
        revision: u64,
        want: bool,
    ) -> (u64, Vec<KeyValue>) {
        let keys: Vec<Vec<u8>> = match end {
            RangeEnd::Single => {
                if self.map.contains_key(start) {
                    vec![start.to_vec()]
                } else {
                    Vec::new()
                }
            }
            _ => self
                .map
                .range::<[u8], _>(bounds(start, end))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        let deleted = keys.len() as u64;
        let mut prev = Vec::new();
        for k in keys {
            self.preserve(&k);
            if let Some(s) = self.map.remove(&k) {
                self.data_bytes -= (k.len() + s.value.len()) as u64;
                self.history.record(revision, &k, Some(s.view()));
                if want {
                    prev.push(KeyValue {
                        key: k,
                        value: s.value,
                        meta: s.meta,
                    });
                }
            }
        }
        (deleted, prev)
    }

    /// Reads a range at the current revision.
    fn range_unchecked(&self, req: &RangeRequest) -> RangeResponse {
        let keys: Box<dyn Iterator<Item = (&[u8], VersionRef<'_>)>> = match &req.end {
            RangeEnd::Single => Box::new(
                self.map
                    .get_key_value(req.start.as_slice())
                    .map(|(k, s)| (k.as_slice(), s.view()))
                    .into_iter(),
            ),
            end => Box::new(
                self.map
                    .range::<[u8], _>(bounds(&req.start, end))
                    .map(|(k, s)| (k.as_slice(), s.view())),
            ),
        };
        self.respond(req, keys)
    }

    /// Reads a range at `req.revision`, which the caller has checked lies within
    /// `[compact revision, store revision)`: the current map overlaid with the versions the
    /// history holds for that revision.
    fn range_at(&self, req: &RangeRequest) -> RangeResponse {
        let at = req.revision;
        match &req.end {
            RangeEnd::Single => {
                let key = req.start.as_slice();
                let version = match self.history.version_at(at, key) {
                    Some(then) => then,
                    None => self.map.get(key).map(Stored::view),
                };
                self.respond(req, version.map(|v| (key, v)).into_iter())
            }
            end => {
                let b = bounds(&req.start, end);
                let then = self.history.versions_at(at, b);
                let live = self
                    .map
                    .range::<[u8], _>(b)
                    .map(|(k, s)| (k.as_slice(), s.view()));
                self.respond(req, overlay(live, then.into_iter()))
            }
        }
    }

    /// Builds the response of a read from the keys of its range (ascending, at the revision
    /// read): counts, filters, sorts and limits as etcd does.
    fn respond<'a>(
        &self,
        req: &RangeRequest,
        keys: impl Iterator<Item = (&'a [u8], VersionRef<'a>)>,
    ) -> RangeResponse {
        let mut resp = RangeResponse {
            revision: self.revision,
            ..RangeResponse::default()
        };
        let to_kv = |k: &[u8], s: VersionRef<'_>| KeyValue {
            key: k.to_vec(),
            value: if req.keys_only {
                Vec::new()
            } else {
                s.value.to_vec()
            },
            meta: s.meta,
        };
        if req.filter.is_none() && req.sort.is_none() {
            // The common case streams in key order and copies only what it returns.
            for (k, s) in keys {
                resp.count += 1;
                if req.count_only {
                    continue;
                }
                if req.limit != 0 && resp.kvs.len() >= req.limit {
                    resp.more = true;
                    continue;
                }
                resp.kvs.push(to_kv(k, s));
            }
            return resp;
        }
        // As in etcd: `count` counts the whole range; filters, then the sort, then the limit
        // shape what is returned.
        let mut picked: Vec<(&[u8], VersionRef<'_>)> = Vec::new();
        for (k, s) in keys {
            resp.count += 1;
            if !req.count_only && req.filter.admits(&s.meta) {
                picked.push((k, s));
            }
        }
        if let Some(sort) = req.sort {
            picked.sort_by(|a, b| {
                let (ma, mb) = (&a.1.meta, &b.1.meta);
                let o = match sort.target {
                    SortTarget::Key => a.0.cmp(b.0),
                    SortTarget::Version => ma.version.cmp(&mb.version),
                    SortTarget::CreateRevision => ma.create_revision.cmp(&mb.create_revision),
                    SortTarget::ModRevision => ma.mod_revision.cmp(&mb.mod_revision),
                    SortTarget::Value => a.1.value.cmp(b.1.value),
                };
                match sort.order {
                    SortOrder::Ascend => o,
                    SortOrder::Descend => o.reverse(),
                }
            });
        }
        if req.limit != 0 && picked.len() > req.limit {
            resp.more = true;
            picked.truncate(req.limit);
        }
        resp.kvs = picked.into_iter().map(|(k, s)| to_kv(k, s)).collect();
        resp
    }
}

/// The outcome of a transaction's compares and of those nested in its chosen branch.
#[derive(Debug)]
struct Decision {
    succeeded: bool,
    /// One per nested transaction of the chosen branch, in order.
    nested: Vec<Decision>,
}

/// Stands in for a decision `decide` always makes (runs the failure branch, none nested).
static NO_DECISION: Decision = Decision {
    succeeded: false,
    nested: Vec::new(),
};

/// Counts the operations of `txn` (at nesting level `depth`) and of the transactions nested
/// in it, each nested one counted as one operation plus its own; refuses nesting deeper than
/// [`TXN_DEPTH_MAX`] before following it further.
fn count_ops(txn: &Txn, depth: usize) -> Result<usize, KvError> {
    if depth > TXN_DEPTH_MAX {
        return Err(KvError::TxnTooDeep {
            depth,
            max: TXN_DEPTH_MAX,
        });
    }
    let mut ops = 0;
    for op in txn.success.iter().chain(&txn.failure) {
        ops += 1;
        if let Op::Txn(nested) = op {
            ops += count_ops(nested, depth + 1)?;
        }
    }
    Ok(ops)
}

/// Sets the revision of the nested responses in `resp` and of `resp` itself: the store
/// revision after the outermost transaction.
fn stamp_revision(resp: &mut TxnResponse, revision: u64) {
    resp.revision = revision;
    for op in &mut resp.responses {
        if let OpResponse::Txn(nested) = op {
            stamp_revision(nested, revision);
        }
    }
}

/// Whether compare `c` holds for one version of a key (`None`: the key is missing, so a
/// value compare fails and the other fields are 0).
fn compare_version(c: &Compare, version: Option<VersionRef<'_>>) -> bool {
    let meta = version.map_or(KeyMeta::ABSENT, |v| v.meta);
    let ord = match &c.target {
        CompareTarget::Value(v) => match version {
            Some(s) => s.value.cmp(v.as_slice()),
            None => return false,
        },
        CompareTarget::Version(v) => meta.version.cmp(v),
        CompareTarget::CreateRevision(v) => meta.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => meta.mod_revision.cmp(v),
    };
    match c.op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
    }
}

/// Merges, by key, the current versions `live` with the versions `then` that a read at an older
/// revision sees instead (both ascending): a key in `then` takes its version from there, and
/// is absent when that is `None` (it did not exist at that revision).
fn overlay<'a>(
    live: impl Iterator<Item = (&'a [u8], VersionRef<'a>)>,
    then: impl Iterator<Item = (&'a [u8], Option<VersionRef<'a>>)>,
) -> impl Iterator<Item = (&'a [u8], VersionRef<'a>)> {
    let mut live = live.peekable();
    let mut then = then.peekable();
    std::iter::from_fn(move || {
        loop {
            let (key, stored) = match (live.peek(), then.peek()) {
                (None, None) => return None,
                (Some(_), None) => return live.next(),
                (None, Some(_)) => then.next()?,
                (Some(&(lk, _)), Some(&(tk, _))) => {
                    if lk < tk {
                        return live.next();
                    }
                    if lk == tk {
                        live.next();
                    }
                    then.next()?
                }
            };
            if let Some(s) = stored {
                return Some((key, s));
            }
        }
    })
}

/// Map bounds of a non-single range; an empty or inverted range yields no key (and, unlike
/// `BTreeMap::range`, never panics).
fn bounds<'a>(start: &'a [u8], end: &'a RangeEnd) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    match end {
        RangeEnd::Exclusive(e) if e.as_slice() > start => {
            (Bound::Included(start), Bound::Excluded(e.as_slice()))
        }
        // An empty range: `[start, start)` is valid for BTreeMap and selects nothing.
        RangeEnd::Exclusive(_) => (Bound::Included(start), Bound::Excluded(start)),
        RangeEnd::Unbounded | RangeEnd::Single => (Bound::Included(start), Bound::Unbounded),
    }
}

/// Why a store could not be rebuilt from a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The source data broke a store invariant.
    #[error("invalid checkpoint contents: {0}")]
    Invalid(String),
    /// A key or value in the source exceeded the limits in force.
    #[error("checkpoint contents exceed limits: {0}")]
    Limits(KvError),
    /// The source itself failed to read.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
}
