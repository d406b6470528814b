//! Requests and responses of the key-value store: ranges, operations and transactions.
//!
//! The shapes follow the etcd v3 KV API (Range, Put, DeleteRange, Txn) so that a server can map
//! requests one to one. A range may read at an older revision while the memtable's bounded
//! history still holds it; reads inside transactions are at the current revision.

use crate::revision::{KeyMeta, KeyValue};

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
            Op::Range(_) => {}
        }
        self
    }

    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Range(_))
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

/// A condition of a transaction, on one key (the etcd Txn compare subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key whose field is compared.
    pub key: Vec<u8>,
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
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// Results of the operations of the branch that ran.
    pub responses: Vec<OpResponse>,
    /// Store revision after the transaction.
    pub revision: u64,
}
