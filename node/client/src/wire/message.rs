//! The requests and responses, as values: what the frames carry.

use std::fmt;

use super::{KIND_DELETE, KIND_GET, KIND_PUT, KIND_RANGE, KIND_STATUS, KIND_TXN};

/// How a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// Confirmed by the leader with a quorum (read index) before it is served: sees every
    /// write acknowledged before the read began.
    #[default]
    Linearizable,
    /// Served by the leader under its lease, without a quorum round trip; linearizable as long
    /// as clocks drift less than the lease allows.
    Lease,
    /// Served by whichever member receives it from its own state: may be stale (etcd's
    /// `serializable`).
    Serializable,
}

/// The identity of a write for exactly-once execution: a client picks a random `client_id`
/// once and numbers its writes with `sequence`; a retry reuses both, so that a server that
/// already applied the write answers it again without applying it twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId {
    /// The client's random identity.
    pub client_id: u64,
    /// The write's number within the client, from 1, increasing.
    pub sequence: u64,
}

/// What every request that may write carries: its identity, and how far the client has
/// heard back, so that the server can forget the responses it keeps for retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Write {
    /// The write's identity, the same in every retry: the server deduplicates on it alone.
    pub id: WriteId,
    /// The smallest sequence of this client's writes still waiting for an answer when the
    /// request was built: every earlier write of the client has been answered, so the server
    /// may drop their stored responses and must refuse them if they arrive again. Never
    /// above `id.sequence` (this write is itself unanswered), and never decreasing from one
    /// write of a client to its next.
    pub first_unanswered: u64,
}

/// Write `value` under `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Return the key's previous key-value.
    pub prev_kv: bool,
}

impl PutRequest {
    /// A put of `value` under `key`, without the previous key-value.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
        }
    }
}

/// Read one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRequest {
    /// The key.
    pub key: Vec<u8>,
    /// How the read is served.
    pub consistency: ReadConsistency,
}

impl GetRequest {
    /// A linearizable read of `key`.
    pub fn new(key: impl Into<Vec<u8>>) -> GetRequest {
        GetRequest {
            key: key.into(),
            consistency: ReadConsistency::Linearizable,
        }
    }
}

/// Delete one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Return the deleted key-value.
    pub prev_kv: bool,
}

impl DeleteRequest {
    /// A delete of `key`, without the previous key-value.
    pub fn new(key: impl Into<Vec<u8>>) -> DeleteRequest {
        DeleteRequest {
            key: key.into(),
            prev_kv: false,
        }
    }
}

/// Read a key range, in etcd's terms: `range_end` empty means the single key `key`, `[0]`
/// every key from `key` on, anything else the keys in `[key, range_end)`.
///
/// Keys are spread over groups by hash, so a range sent to a server reads the keys of one
/// group (the frame's group); the client reads every group and merges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key of the range.
    pub key: Vec<u8>,
    /// Where the range ends (etcd convention, above).
    pub range_end: Vec<u8>,
    /// Most keys to return; 0 means no limit. `count` always counts every matching key.
    pub limit: u64,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Read at this store revision of the group; 0 means the current one. An older revision
    /// is read from the group's history; one below the group's compact revision (the
    /// history there was compacted, or the replica restarted from a checkpoint) is answered
    /// [`ErrorStatus::Compacted`], one beyond its store revision
    /// [`ErrorStatus::InvalidArgument`]. Inside a transaction it must be 0.
    pub revision: u64,
    /// How the read is served (ignored inside a transaction, which runs on the leader).
    pub consistency: ReadConsistency,
}

impl RangeRequest {
    /// Every key in `[key, range_end)`.
    pub fn between(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..RangeRequest::default()
        }
    }

    /// Every key starting with `prefix` (every key at all for an empty prefix).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> RangeRequest {
        let key = prefix.into();
        let mut range_end = key.clone();
        while let Some(last) = range_end.pop() {
            if last < 0xff {
                range_end.push(last + 1);
                return RangeRequest {
                    key,
                    range_end,
                    ..RangeRequest::default()
                };
            }
        }
        RangeRequest {
            key,
            range_end: vec![0],
            ..RangeRequest::default()
        }
    }

    /// The same request returning at most `limit` keys.
    pub fn with_limit(mut self, limit: u64) -> RangeRequest {
        self.limit = limit;
        self
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => key == self.key.as_slice(),
            [0] => key >= self.key.as_slice(),
            end => key >= self.key.as_slice() && key < end,
        }
    }
}

/// What a compare looks at, with the value it is compared with.
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

/// A condition of a transaction on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
    /// The relation.
    pub op: CompareOp,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A put.
    Put(PutRequest),
    /// A delete of one key.
    Delete(DeleteRequest),
    /// A read of the transaction's group's keys in a range; sees the earlier writes of the
    /// same transaction.
    Range(RangeRequest),
}

impl TxnOp {
    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, TxnOp::Range(_))
    }
}

/// An atomic compare-and-swap: if every compare holds, `success` runs, otherwise `failure`.
///
/// Every key it compares, puts or deletes must belong to one group; its range reads see only
/// that group's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// Conditions, all of which must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// Whether any branch may change the store.
    pub fn has_writes(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(TxnOp::is_write)
    }

    /// The keys that decide the transaction's group: those compared, put or deleted, or when
    /// there are none, the first key of its first range.
    pub fn routing_keys(&self) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self.compares.iter().map(|c| c.key.as_slice()).collect();
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Put(p) => keys.push(&p.key),
                TxnOp::Delete(d) => keys.push(&d.key),
                TxnOp::Range(_) => {}
            }
        }
        if keys.is_empty() {
            let first_range = self
                .success
                .iter()
                .chain(&self.failure)
                .find_map(|op| match op {
                    TxnOp::Range(r) => Some(r.key.as_slice()),
                    _ => None,
                });
            keys.extend(first_range);
        }
        keys
    }
}

/// A request as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Kind 1.
    Put(Write, PutRequest),
    /// Kind 2.
    Get(GetRequest),
    /// Kind 3.
    Delete(Write, DeleteRequest),
    /// Kind 4.
    Range(RangeRequest),
    /// Kind 5; the write is present when the transaction may write.
    Txn(Option<Write>, TxnRequest),
    /// Kind 6: the group map, for routing.
    Status,
}

impl Request {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Put(..) => KIND_PUT,
            Request::Get(_) => KIND_GET,
            Request::Delete(..) => KIND_DELETE,
            Request::Range(_) => KIND_RANGE,
            Request::Txn(..) => KIND_TXN,
            Request::Status => KIND_STATUS,
        }
    }

    /// The write, for a request that may write.
    pub fn write(&self) -> Option<Write> {
        match self {
            Request::Put(w, _) | Request::Delete(w, _) => Some(*w),
            Request::Txn(w, _) => *w,
            _ => None,
        }
    }

    /// The write's identity, for a request that may write.
    pub fn write_id(&self) -> Option<WriteId> {
        self.write().map(|w| w.id)
    }
}

/// A request with its id and the group it was routed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// The group the client routed the request to.
    pub group: u32,
    /// The request.
    pub request: Request,
}

/// A key with its value and etcd-style revision metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty when the read asked for keys only).
    pub value: Vec<u8>,
    /// Store revision of the transaction that created the key.
    pub create_revision: u64,
    /// Store revision of the last transaction that wrote the key.
    pub mod_revision: u64,
    /// Number of writes since the key's creation (1 after creation).
    pub version: u64,
}

/// What every successful response but status carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The group that served the request.
    pub group: u32,
    /// The group's store revision after the request (each group numbers its own revisions).
    pub revision: u64,
    /// The member that answered.
    pub member_id: u64,
}

/// The result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// Group, revision, member.
    pub header: ResponseHeader,
    /// The previous key-value, when asked and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// The result of a get.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetResponse {
    /// Group, revision, member.
    pub header: ResponseHeader,
    /// The key-value, when the key exists.
    pub kv: Option<KeyValue>,
}

/// The result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteResponse {
    /// Group, revision, member.
    pub header: ResponseHeader,
    /// Number of keys removed (0 or 1).
    pub deleted: u64,
    /// The removed key-values, when asked.
    pub prev_kvs: Vec<KeyValue>,
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Group, revision, member (for a read the client merged over every group, those of
    /// group 0: each group numbers its own revisions).
    pub header: ResponseHeader,
    /// Matching keys in ascending order, at most `limit` (none when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range, regardless of `limit`.
    pub count: u64,
    /// Whether more keys matched than were returned.
    pub more: bool,
}

/// The result of one operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// A put; the previous key-value when asked.
    Put {
        /// The previous key-value.
        prev_kv: Option<KeyValue>,
    },
    /// A delete.
    Delete {
        /// Number of keys removed.
        deleted: u64,
        /// The removed key-values, when asked.
        prev_kvs: Vec<KeyValue>,
    },
    /// A read.
    Range {
        /// Matching keys.
        kvs: Vec<KeyValue>,
        /// Number of matching keys regardless of limit.
        count: u64,
        /// Whether more keys matched than were returned.
        more: bool,
    },
}

/// The result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Group, revision, member.
    pub header: ResponseHeader,
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// Results of the operations of the branch that ran, in order.
    pub responses: Vec<OpResponse>,
}

/// A member of the cluster as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's id.
    pub id: u64,
    /// Where it serves clients, `host:port`.
    pub client_address: String,
}

/// The group map: how many groups and who leads each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The member that answered.
    pub member_id: u64,
    /// Number of raft groups; a key's group is [`crate::route::group_of`]`(key, groups)`.
    pub groups: u32,
    /// Every member with its client address.
    pub members: Vec<MemberInfo>,
    /// For each group in order, the member id of its leader as far as the answering member
    /// knows (`groups` entries).
    pub leaders: Vec<Option<u64>>,
}

/// A successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Kind 1.
    Put(PutResponse),
    /// Kind 2.
    Get(GetResponse),
    /// Kind 3.
    Delete(DeleteResponse),
    /// Kind 4.
    Range(RangeResponse),
    /// Kind 5.
    Txn(TxnResponse),
    /// Kind 6.
    Status(ClusterStatus),
}

impl Response {
    /// The kind byte, that of the request it answers.
    pub fn kind(&self) -> u8 {
        match self {
            Response::Put(_) => KIND_PUT,
            Response::Get(_) => KIND_GET,
            Response::Delete(_) => KIND_DELETE,
            Response::Range(_) => KIND_RANGE,
            Response::Txn(_) => KIND_TXN,
            Response::Status(_) => KIND_STATUS,
        }
    }
}

/// Where the leader of a group can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's member id.
    pub member_id: u64,
    /// The leader's client address, `host:port`.
    pub client_address: String,
}

/// Why a server did not serve a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorStatus {
    /// Status 1: this member does not lead the group; the leader, when it knows one.
    NotLeader {
        /// The group.
        group: u32,
        /// Its leader, if known.
        leader: Option<LeaderHint>,
    },
    /// Status 2: the group has no leader for now (election, lost quorum).
    GroupUnavailable {
        /// The group.
        group: u32,
    },
    /// Status 3: the request is malformed or makes no sense.
    InvalidArgument(String),
    /// Status 4: the request or its response exceeds a limit; the message names it.
    TooLarge(String),
    /// Status 5: the transaction's keys belong to several groups.
    TxnSpansGroups {
        /// The groups, ascending.
        groups: Vec<u32>,
    },
    /// Status 6: the request was routed with another group count than the cluster's.
    WrongGroup {
        /// The cluster's group count.
        groups: u32,
    },
    /// Status 7: the revision asked for is no longer (or never was) kept.
    Compacted {
        /// Oldest revision that can be read.
        compact_revision: u64,
    },
    /// Status 8: the server is overloaded; retry later.
    Busy,
    /// Status 9: the server failed.
    Internal(String),
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorStatus::NotLeader {
                group,
                leader: Some(l),
            } => write!(
                f,
                "not the leader of group {group}; the leader is member {} at {}",
                l.member_id, l.client_address
            ),
            ErrorStatus::NotLeader {
                group,
                leader: None,
            } => {
                write!(f, "not the leader of group {group}; leader unknown")
            }
            ErrorStatus::GroupUnavailable { group } => write!(f, "group {group} has no leader"),
            ErrorStatus::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ErrorStatus::TooLarge(m) => write!(f, "too large: {m}"),
            ErrorStatus::TxnSpansGroups { groups } => {
                write!(f, "transaction spans groups {groups:?}")
            }
            ErrorStatus::WrongGroup { groups } => {
                write!(
                    f,
                    "routed with a stale group map: the cluster has {groups} groups"
                )
            }
            ErrorStatus::Compacted { compact_revision } => {
                write!(
                    f,
                    "revision compacted; oldest readable is {compact_revision}"
                )
            }
            ErrorStatus::Busy => write!(f, "server busy"),
            ErrorStatus::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// A response with the id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The response or why there is none.
    pub result: Result<Response, ErrorStatus>,
}
