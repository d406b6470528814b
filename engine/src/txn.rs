//! Requests and responses of the key-value store: ranges, operations and transactions.
//!
//! The shapes follow the etcd v3 KV API (Range, Put, DeleteRange, Txn) so that a server can map
//! requests one to one. A range may read at an older revision while the memtable's bounded
//! history still holds it; reads inside transactions are at the current revision.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::memtable::KvError;
use crate::revision::{KeyMeta, KeyValue};

/// Most levels of transactions nested in one another, the outermost counted (1: a
/// transaction with no nested one). etcd has no such limit of its own (its `--max-txn-ops`
/// bounds the ops along a nesting path, so the depth too); Keel names one because applying,
/// validating, encoding and decoding a transaction recurse once per level. A constant, not a
/// configurable limit: it is part of the log format (every replica must accept every entry
/// another one wrote), so it may only ever grow. Default 32.
pub const TXN_DEPTH_MAX: usize = 32;

const _: () = assert!(TXN_DEPTH_MAX >= 2);

/// Where a key range ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// The range is the single key `start`.
    Single,
    /// The range is `[start, end)`. An `end <= start` selects nothing.
    Exclusive(Vec<u8>),
    /// The range is every key `>= start`.
    Unbounded,
}

impl RangeEnd {
    /// Maps etcd's `range_end` field: empty means a single key, `"\0"` means every key from
    /// `key` on, anything else is an exclusive end.
    pub fn from_etcd(range_end: &[u8]) -> RangeEnd {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Exclusive(end.to_vec()),
        }
    }

    /// The end of the range of all keys starting with `prefix`: the prefix with its last
    /// byte below 0xff incremented and what follows dropped, or unbounded when the prefix is
    /// empty or all 0xff.
    pub fn prefix_end(prefix: &[u8]) -> RangeEnd {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return RangeEnd::Exclusive(end);
            }
        }
        RangeEnd::Unbounded
    }
}

/// A read of a key range, at the current revision or an older one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key of the range.
    pub start: Vec<u8>,
    /// Where the range ends.
    pub end: RangeEnd,
    /// Most keys to return; 0 means no limit. `count` always counts every matching key.
    pub limit: usize,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// Return only the count of matching keys, no keys.
    pub count_only: bool,
    /// Keep only keys whose revisions lie within bounds (etcd's min/max mod/create
    /// revision). Filters apply to the returned keys, not to `count`, as in etcd.
    pub filter: RevisionFilter,
    /// Order of the returned keys; `None` is ascending by key.
    pub sort: Option<RangeSort>,
    /// Read the keys as they were after this store revision (etcd's `revision`); 0 means the
    /// current revision. Older revisions are served while the store's history holds them
    /// (from its compact revision on). Inside a transaction only 0 is accepted.
    pub revision: u64,
}

/// Revision bounds on the keys a range returns; 0 means no bound (etcd's convention).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionFilter {
    /// Smallest mod revision returned.
    pub min_mod_revision: u64,
    /// Largest mod revision returned.
    pub max_mod_revision: u64,
    /// Smallest create revision returned.
    pub min_create_revision: u64,
    /// Largest create revision returned.
    pub max_create_revision: u64,
}

impl RevisionFilter {
    /// Whether no bound is set.
    pub fn is_none(&self) -> bool {
        *self == RevisionFilter::default()
    }

    /// Whether a key with `meta` passes the bounds.
    pub fn admits(&self, meta: &KeyMeta) -> bool {
        let within = |v: u64, min: u64, max: u64| v >= min && (max == 0 || v <= max);
        within(
            meta.mod_revision,
            self.min_mod_revision,
            self.max_mod_revision,
        ) && within(
            meta.create_revision,
            self.min_create_revision,
            self.max_create_revision,
        )
    }
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    /// The key.
    Key,
    /// The version.
    Version,
    /// The create revision.
    CreateRevision,
    /// The mod revision.
    ModRevision,
    /// The value.
    Value,
}

/// The direction of a sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// How a range orders its result (applied before `limit`, as in etcd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSort {
    /// The field.
    pub target: SortTarget,
    /// The direction.
    pub order: SortOrder,
}

impl RangeRequest {
    /// A read of the single key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> RangeRequest {
        RangeRequest {
            start: key.into(),
            end: RangeEnd::Single,
            limit: 0,
            keys_only: false,
            count_only: false,
            filter: RevisionFilter::default(),
            sort: None,
            revision: 0,
        }
    }

    /// A read of every key in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> RangeRequest {
        RangeRequest {
            start: start.into(),
            end: RangeEnd::Exclusive(end.into()),
            limit: 0,
            keys_only: false,
            count_only: false,
            filter: RevisionFilter::default(),
            sort: None,
            revision: 0,
        }
    }

    /// A read of every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> RangeRequest {
        let start = prefix.into();
        let end = RangeEnd::prefix_end(&start);
        RangeRequest {
            start,
            end,
            limit: 0,
            keys_only: false,
            count_only: false,
            filter: RevisionFilter::default(),
            sort: None,
            revision: 0,
        }
    }

    /// The same request with a limit on the number of keys returned.
    pub fn with_limit(mut self, limit: usize) -> RangeRequest {
        self.limit = limit;
        self
    }

    /// The same request read at store revision `revision` (0: the current one).
    pub fn at_revision(mut self, revision: u64) -> RangeRequest {
        self.revision = revision;
        self
    }
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Matching keys in ascending order, at most `limit` of them (none when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range, regardless of `limit` and filters. As in etcd, computing
    /// it visits every key of the range: bound the range, not only the limit, to keep a
    /// read cheap.
    pub count: u64,
    /// Whether more keys matched than were returned.
    pub more: bool,
    /// The store's current revision when the read was served (etcd's `header.revision`),
    /// also for a read at an older revision.
    pub revision: u64,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Return the key's previous value (etcd `prev_kv`).
        prev_kv: bool,
    },
    /// Delete every key of a range.
    DeleteRange {
        /// First key of the range.
        start: Vec<u8>,
        /// Where the range ends.
        end: RangeEnd,
        /// Return the deleted keys with their values (etcd `prev_kv`).
        prev_kv: bool,
    },
    /// Read a range; sees the writes of the earlier operations of the same transaction.
    Range(RangeRequest),
    /// A transaction nested in this one (etcd's `request_txn`): its compares are decided on
    /// the store as it was before the outermost transaction ran any operation, then the
    /// operations of its chosen branch run in order, at this point of the outer transaction
    /// and at its revision. At most [`TXN_DEPTH_MAX`] levels deep.
    Txn(Txn),
}

impl Op {
    /// A put of `value` under `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
        }
    }

    /// A delete of the single key `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::DeleteRange {
            start: key.into(),
            end: RangeEnd::Single,
            prev_kv: false,
        }
    }

    /// A delete of every key in `[start, end)`.
    pub fn delete_range(start: impl Into<Vec<u8>>, end: RangeEnd) -> Op {
        Op::DeleteRange {
            start: start.into(),
            end,
            prev_kv: false,
        }
    }

    /// The same put or delete, asking for the previous key-values in the response (etcd
    /// `prev_kv`); a read is returned unchanged.
    pub fn with_prev_kv(mut self) -> Op {
        match &mut self {
            Op::Put { prev_kv, .. } | Op::DeleteRange { prev_kv, .. } => *prev_kv = true,
            Op::Range(_) | Op::Txn(_) => {}
        }
        self
    }

    /// Whether the operation may change the store (a nested transaction when any of its
    /// branches may).
    pub fn is_write(&self) -> bool {
        match self {
            Op::Put { .. } | Op::DeleteRange { .. } => true,
            Op::Range(_) => false,
            Op::Txn(t) => t.has_writes(),
        }
    }
}

/// The result of one operation, in the order of the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// A put; `prev` is the key's previous metadata (`KeyMeta::ABSENT` if it did not exist).
    Put {
        /// Metadata of the key before the put.
        prev: KeyMeta,
        /// The previous key-value, when asked with `prev_kv` and the key existed.
        prev_kv: Option<KeyValue>,
    },
    /// A delete; how many keys it removed.
    DeleteRange {
        /// Number of keys removed.
        deleted: u64,
        /// The removed key-values, when asked with `prev_kv`.
        prev_kvs: Vec<KeyValue>,
    },
    /// A read.
    Range(RangeResponse),
    /// A nested transaction: which branch ran and its operations' results.
    Txn(TxnResponse),
}

/// What a compare looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's value; an absent key fails every value compare (as in etcd).
    Value(Vec<u8>),
    /// The key's version (0 when absent).
    Version(u64),
    /// The key's create revision (0 when absent).
    CreateRevision(u64),
    /// The key's mod revision (0 when absent).
    ModRevision(u64),
}

/// How a compare relates the key's current field to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Current == target.
    Equal,
    /// Current != target.
    NotEqual,
    /// Current > target.
    Greater,
    /// Current < target.
    Less,
}

/// A condition of a transaction, on one key or a key range (the etcd Txn compare subset).
///
/// Over a range it holds when it holds for every key of the range; over a range holding no
/// key (an empty or inverted one included) it compares a missing key's fields, so a value
/// compare fails and the others see 0 — as etcd's `applyCompare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key whose field is compared, or the first key of the range.
    pub key: Vec<u8>,
    /// Where the range ends: [`RangeEnd::Single`] compares `key` alone.
    pub end: RangeEnd,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
}

/// An atomic transaction: if every compare holds, `success` runs, otherwise `failure`.
/// A transaction without compares is a plain atomic batch (`success` runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<Op>,
    /// Operations run when a compare fails.
    pub failure: Vec<Op>,
}

impl Txn {
    /// An unconditional atomic batch of operations.
    pub fn batch(ops: Vec<Op>) -> Txn {
        Txn {
            compares: Vec::new(),
            success: ops,
            failure: Vec::new(),
        }
    }

    /// Whether any branch may change the store; read-only transactions need no log write.
    pub fn has_writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(Op::is_write)
    }

    /// The operations that run when the compares hold (`true`) or not.
    pub fn branch(&self, succeeded: bool) -> &[Op] {
        if succeeded {
            &self.success
        } else {
            &self.failure
        }
    }

    /// Refuses the transaction, as etcd's API does, when one branch writes a key twice: two
    /// puts of one key, or a put of a key a delete of the same branch covers — also across
    /// nested transactions (where the nested one's success and failure branches may put the
    /// same key, only one of them runs). Deletes may overlap each other. The success and
    /// failure branches of the outermost transaction are checked apart. The error names the
    /// first key found twice.
    ///
    /// Where etcd 3.5 and this differ: a delete to the end of the key space (`range_end`
    /// `"\0"`, [`RangeEnd::Unbounded`]) covers the keys from its start here, while etcd's
    /// check reads that end literally, as the range `[key, "\0")` that covers nothing.
    ///
    /// The store applies a transaction with a key written twice (its operations run in
    /// order, the later write winning), so that logs written by clients that never made this
    /// check replay unchanged; the check is for the APIs that promise etcd's refusal. Takes
    /// O(n log n) in the number of operations; nesting must be within [`TXN_DEPTH_MAX`]
    /// (see `Memtable::validate_txn`).
    pub fn check_duplicate_keys(&self) -> Result<(), KvError> {
        writes_of(&self.success)?;
        writes_of(&self.failure)?;
        Ok(())
    }
}

/// The keys a branch puts and the ranges it deletes, its nested transactions' included.
#[derive(Default)]
struct Writes<'a> {
    puts: BTreeSet<&'a [u8]>,
    deletes: Cover,
}

/// The keys of one branch checked as etcd's `checkIntervals` does; see
/// [`Txn::check_duplicate_keys`].
fn writes_of(ops: &[Op]) -> Result<Writes<'_>, KvError> {
    let duplicate = |key: &[u8]| KvError::DuplicateKey { key: key.to_vec() };
    let mut writes = Writes::default();
    // This level's deletes first: a put is refused whether it comes before or after them.
    for op in ops {
        if let Op::DeleteRange { start, end, .. } = op {
            writes.deletes.insert(start, end);
        }
    }
    for op in ops {
        let Op::Txn(nested) = op else { continue };
        let then = writes_of(&nested.success)?;
        let otherwise = writes_of(&nested.failure)?;
        for &key in &then.puts {
            if writes.puts.contains(key) || writes.deletes.covers(key) {
                return Err(duplicate(key));
            }
            writes.puts.insert(key);
        }
        for &key in &otherwise.puts {
            // A key both branches of the nested transaction put is written once: only one
            // branch runs.
            let earlier = writes.puts.contains(key) && !then.puts.contains(key);
            if earlier || writes.deletes.covers(key) {
                return Err(duplicate(key));
            }
            writes.puts.insert(key);
        }
        writes.deletes.extend(then.deletes);
        writes.deletes.extend(otherwise.deletes);
    }
    for op in ops {
        if let Op::Put { key, .. } = op {
            if writes.puts.contains(key.as_slice()) || writes.deletes.covers(key) {
                return Err(duplicate(key));
            }
            writes.puts.insert(key);
        }
    }
    Ok(writes)
}

/// A union of key ranges, kept as disjoint ranges: start → end (`None`: unbounded).
#[derive(Default)]
struct Cover {
    ranges: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Cover {
    /// Adds the keys of `[start, end)`; an empty or inverted range adds nothing.
    fn insert(&mut self, start: &[u8], end: &RangeEnd) {
        let mut end = match end {
            RangeEnd::Single => {
                let mut next = start.to_vec();
                next.push(0);
                Some(next)
            }
            RangeEnd::Exclusive(e) if e.as_slice() <= start => return,
            RangeEnd::Exclusive(e) => Some(e.clone()),
            RangeEnd::Unbounded => None,
        };
        let mut start = start.to_vec();
        // Absorb the range that starts at or before `start` and reaches it, then every range
        // starting within the new one.
        if let Some((s, e)) = self.ranges.range(..=start.clone()).next_back() {
            if e.as_ref().is_none_or(|e| e.as_slice() >= start.as_slice()) {
                start = s.clone();
                end = max_end(end, e.clone());
            }
        }
        loop {
            let next = self
                .ranges
                .range(start.clone()..)
                .next()
                .map(|(s, e)| (s.clone(), e.clone()));
            let Some((s, e)) = next else { break };
            if end
                .as_ref()
                .is_some_and(|end| s.as_slice() > end.as_slice())
            {
                break;
            }
            self.ranges.remove(&s);
            end = max_end(end, e);
        }
        self.ranges.insert(start, end);
    }

    /// Adds every range of `other`.
    fn extend(&mut self, other: Cover) {
        for (start, end) in other.ranges {
            match end {
                Some(e) => self.insert(&start, &RangeEnd::Exclusive(e)),
                None => self.insert(&start, &RangeEnd::Unbounded),
            }
        }
    }

    /// Whether `key` lies in one of the ranges.
    fn covers(&self, key: &[u8]) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| end.as_ref().is_none_or(|e| key < e.as_slice()))
    }
}

/// The later of two range ends (`None`: unbounded).
fn max_end(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// Results of the operations of the branch that ran.
    pub responses: Vec<OpResponse>,
    /// Store revision after the transaction (for a nested one: after the outermost).
    pub revision: u64,
}
