//! The native client protocol: a versioned, length-prefixed, checksummed binary protocol over
//! TCP in which one connection carries many requests in flight, told apart by request ids.
//!
//! Everything is little-endian. Nothing is ever allocated for a length read from the wire
//! before that length has been checked against the bytes actually present and against the
//! [`ClientLimits`]; no input, however malformed, makes a decoder panic.
//!
//! # Connection preface
//!
//! The client speaks first. Its preface is 12 bytes:
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! | 0      | 8    | [`MAGIC`]: `CB 4B 45 45 4C 0D 0A 1A` (`\xCB` `KEEL\r\n\x1A`) |
//! | 8      | 2    | protocol version, u16 ([`VERSION`], 1)            |
//! | 10     | 2    | reserved, 0                                       |
//!
//! The listener also serves the etcd gRPC API on the same port and tells the two apart by the
//! first byte: an HTTP/2 connection preface starts with `P` (`PRI * HTTP/2.0`), TLS with
//! `0x16`, HTTP/1 with an ASCII method, the native protocol with `0xCB`, which is none of
//! them (it is not even ASCII). A server that has read eight bytes equal to [`MAGIC`] knows
//! it talks the native protocol.
//!
//! The server answers with its own preface of 20 bytes, then closes the connection if it
//! refused it:
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 0      | 8    | [`MAGIC`]                                                      |
//! | 8      | 2    | protocol version the server speaks, u16                         |
//! | 10     | 1    | [`PrefaceCode`]: 0 accepted, 1 version unsupported, 2 busy     |
//! | 11     | 1    | reserved, 0                                                    |
//! | 12     | 4    | the server's `request_bytes_max`, u32                           |
//! | 16     | 4    | the server's `in_flight_per_connection_max`, u32                |
//!
//! # Frames
//!
//! After the prefaces both sides send frames:
//!
//! | offset | size  | field                                                        |
//! |-------:|------:|--------------------------------------------------------------|
//! | 0      | 4     | `len`, u32: bytes of the body, `13..=request_bytes_max` for a request, `9..=response_bytes_max` for a response |
//! | 4      | 4     | CRC-32 (IEEE 802.3, as `crc32fast`) of the body               |
//! | 8      | `len` | body                                                         |
//!
//! A request body is `request id: u64 | kind: u8 | group: u32 | payload`; a response body
//! is `request id: u64 | status: u8 | payload`. The request id is chosen by the client and
//! echoed by the server; responses may come in any order. `group` is the raft group the
//! client routed the request to ([`crate::route::group_of`] of its key, or for a
//! [`Request::Range`] the group whose keys it reads; 0 for [`Request::Status`]): a server
//! that computes another group answers [`ErrorStatus::WrongGroup`].
//!
//! A frame whose length is out of bounds or whose checksum is wrong is fatal: the stream can
//! no longer be trusted and the connection is closed. A frame that is sound but whose body
//! does not decode (unknown kind, bad flag, trailing bytes, a key over `key_bytes_max`) is
//! not: the server answers that request id with [`ErrorStatus::InvalidArgument`] or
//! [`ErrorStatus::TooLarge`] and carries on ([`WireError::is_fatal`]).
//!
//! # Values
//!
//! `u8`, `u16`, `u32`, `u64` are little-endian. `bool` is one byte, 0 or 1. `bytes` is a u32
//! length and the bytes; `string` is `bytes` holding UTF-8. `option<T>` is a byte, 0 (none)
//! or 1 followed by `T`. `vec<T>` is a u32 count and the items. A write id is `client id: u64
//! | sequence: u64` ([`WriteId`]). Flag bytes must have their unused bits clear.
//!
//! # Requests
//!
//! | kind | request    | payload |
//! |-----:|------------|---------|
//! | 1    | Put        | write id \| key: bytes \| value: bytes \| flags: u8 (bit 0 `prev_kv`) |
//! | 2    | Get        | key: bytes \| consistency: u8 |
//! | 3    | Delete     | write id \| key: bytes \| flags: u8 (bit 0 `prev_kv`) |
//! | 4    | Range      | key: bytes \| range_end: bytes \| limit: u64 \| revision: u64 \| flags: u8 (bit 0 `keys_only`, bit 1 `count_only`) \| consistency: u8 |
//! | 5    | Txn        | option<write id> \| compares: vec<compare> \| success: vec<op> \| failure: vec<op> |
//! | 6    | Status     | empty |
//!
//! consistency: 0 linearizable, 1 lease, 2 serializable ([`ReadConsistency`]). A compare is
//! `key: bytes | target: u8 | op: u8 | against` where target is 0 value (`against` is bytes),
//! 1 version, 2 create revision, 3 mod revision (`against` is a u64), and op is 0 equal,
//! 1 not equal, 2 greater, 3 less. An op is its kind byte (1 put, 3 delete, 4 range) and the
//! payload of that request without the write id (the transaction's write id covers it).
//!
//! # Responses
//!
//! Status 0 is success, followed by the kind byte of the request it answers and:
//!
//! | kind | response | payload |
//! |-----:|----------|---------|
//! | 1    | Put      | header \| prev_kv: option<kv> |
//! | 2    | Get      | header \| kv: option<kv> |
//! | 3    | Delete   | header \| deleted: u64 \| prev_kvs: vec<kv> |
//! | 4    | Range    | header \| kvs: vec<kv> \| count: u64 \| more: bool |
//! | 5    | Txn      | header \| succeeded: bool \| responses: vec<op response> |
//! | 6    | Status   | member id: u64 \| groups: u32 \| members: vec<member id: u64 \| client address: string> \| leaders: vec<option<member id: u64>> (one per group) |
//!
//! A header is `group: u32 | revision: u64 | member id: u64` (the group's store revision
//! after the request, and the member that answered); a kv is `key: bytes | value: bytes |
//! create_revision: u64 | mod_revision: u64 | version: u64`; an op response is its kind byte
//! (1, 3 or 4) and the Put, Delete or Range payload without the header.
//!
//! Any other status is an error ([`ErrorStatus`]):
//!
//! | status | error            | payload |
//! |-------:|------------------|---------|
//! | 1      | NotLeader        | group: u32 \| leader: option<member id: u64 \| client address: string> |
//! | 2      | GroupUnavailable | group: u32 |
//! | 3      | InvalidArgument  | message: string |
//! | 4      | TooLarge         | message: string (names the limit) |
//! | 5      | TxnSpansGroups   | groups: vec<u32> |
//! | 6      | WrongGroup       | groups: u32 (the cluster's group count) |
//! | 7      | Compacted        | compact revision: u64 |
//! | 8      | Busy             | empty |
//! | 9      | Internal         | message: string |
//!
//! A payload must be consumed exactly: trailing bytes are an error.

use std::fmt;

/// The first eight bytes of every native connection, from either side.
pub const MAGIC: [u8; 8] = [0xCB, b'K', b'E', b'E', b'L', b'\r', b'\n', 0x1A];

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;

/// Bytes of the client's preface.
pub const CLIENT_PREFACE_BYTES: usize = 12;

/// Bytes of the server's preface.
pub const SERVER_PREFACE_BYTES: usize = 20;

/// Bytes in front of every frame body: its length and its CRC.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Smallest request body: request id, kind and group.
const REQUEST_BODY_BYTES_MIN: usize = 8 + 1 + 4;

/// Smallest response body: request id and status (`Busy` has no payload).
const RESPONSE_BODY_BYTES_MIN: usize = 8 + 1;

/// No frame is ever larger than this, whatever the limits say: it keeps a misconfigured
/// limit from letting a peer make us buffer gigabytes.
pub const FRAME_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// The sizes the protocol accepts. Both sides check them: the client before sending, the
/// server before allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest request frame body, in bytes. Default 1.5 MiB, etcd's `--max-request-bytes`.
    pub request_bytes_max: u32,
    /// Largest response frame body, in bytes. Default 64 MiB; a server answers a read that
    /// would not fit with [`ErrorStatus::TooLarge`].
    pub response_bytes_max: u32,
    /// Largest key, in bytes. Default 64 KiB.
    pub key_bytes_max: u32,
    /// Largest value, in bytes. Default 1.5 MiB less 1 KiB, so that a put of a value this
    /// large and a small key fits in one request.
    pub value_bytes_max: u32,
    /// Most compares, and most operations in each branch, of a transaction. Default 128,
    /// etcd's `--max-txn-ops`.
    pub ops_per_txn_max: u32,
    /// Most requests in flight on one connection: the client waits for a slot before
    /// sending more, the server refuses more with [`ErrorStatus::Busy`]. Default 1024.
    pub in_flight_per_connection_max: u32,
    /// Longest string (error message, member address), in bytes. Default 4 KiB.
    pub string_bytes_max: u32,
    /// Most members in a status response. Default 1024.
    pub members_max: u32,
    /// Most raft groups. Default 65536.
    pub groups_max: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            ops_per_txn_max: 128,
            in_flight_per_connection_max: 1024,
            string_bytes_max: 4096,
            members_max: 1024,
            groups_max: 65536,
        }
    }
}

const REQUEST_BYTES_MAX_DEFAULT: u32 = 1536 * 1024;
const RESPONSE_BYTES_MAX_DEFAULT: u32 = 64 * 1024 * 1024;
const KEY_BYTES_MAX_DEFAULT: u32 = 64 * 1024;
const VALUE_BYTES_MAX_DEFAULT: u32 = 1535 * 1024;

// The defaults' relations that `validate` checks.
const _: () = assert!(KEY_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(VALUE_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(REQUEST_BYTES_MAX_DEFAULT <= RESPONSE_BYTES_MAX_DEFAULT);
const _: () = assert!(RESPONSE_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX);

impl ClientLimits {
    /// Checks every limit is non-zero and the limits fit together: a key and a value each fit
    /// in a request, requests and responses fit under [`FRAME_BYTES_MAX`], and a status
    /// response fits in a response.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
            ("key_bytes_max", self.key_bytes_max),
            ("value_bytes_max", self.value_bytes_max),
            ("ops_per_txn_max", self.ops_per_txn_max),
            (
                "in_flight_per_connection_max",
                self.in_flight_per_connection_max,
            ),
            ("string_bytes_max", self.string_bytes_max),
            ("members_max", self.members_max),
            ("groups_max", self.groups_max),
        ];
        if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        for (name, v) in [
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
        ] {
            if v > FRAME_BYTES_MAX {
                return Err(format!(
                    "{name} {v} exceeds the frame limit {FRAME_BYTES_MAX}"
                ));
            }
            if (v as usize) < REQUEST_BODY_BYTES_MIN.max(RESPONSE_BODY_BYTES_MIN) {
                return Err(format!("{name} {v} is too small for any frame"));
            }
        }
        for (name, v) in [
            ("key_bytes_max", self.key_bytes_max),
            ("value_bytes_max", self.value_bytes_max),
        ] {
            if v >= self.request_bytes_max {
                return Err(format!(
                    "{name} {v} must be below request_bytes_max {}",
                    self.request_bytes_max
                ));
            }
        }
        if self.response_bytes_max < self.request_bytes_max {
            return Err(format!(
                "response_bytes_max {} must be at least request_bytes_max {}, so that a \
                 read can return what a write stored",
                self.response_bytes_max, self.request_bytes_max
            ));
        }
        Ok(())
    }
}

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
    /// Read at this store revision; 0 means the current one. Keel keeps no history: any
    /// other revision than the current is answered [`ErrorStatus::Compacted`].
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
    Put(WriteId, PutRequest),
    /// Kind 2.
    Get(GetRequest),
    /// Kind 3.
    Delete(WriteId, DeleteRequest),
    /// Kind 4.
    Range(RangeRequest),
    /// Kind 5; the write id is present when the transaction may write.
    Txn(Option<WriteId>, TxnRequest),
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

    /// The write id, for a request that may write.
    pub fn write_id(&self) -> Option<WriteId> {
        match self {
            Request::Put(w, _) | Request::Delete(w, _) => Some(*w),
            Request::Txn(w, _) => *w,
            _ => None,
        }
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

/// The server's answer to a client preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefaceCode {
    /// 0: the connection is accepted.
    Accepted,
    /// 1: the server does not speak the client's version.
    VersionUnsupported,
    /// 2: the server takes no more connections.
    Busy,
}

/// The server's preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerPreface {
    /// The version the server speaks.
    pub version: u16,
    /// Whether it accepts the connection.
    pub code: PrefaceCode,
    /// The server's `request_bytes_max`.
    pub request_bytes_max: u32,
    /// The server's `in_flight_per_connection_max`.
    pub in_flight_per_connection_max: u32,
}

/// Why bytes could not be decoded or a frame not encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A preface did not start with [`MAGIC`]: the peer does not speak this protocol.
    #[error("not a keel native connection: the preface starts with {found:02x?}")]
    BadMagic {
        /// The first bytes received.
        found: Vec<u8>,
    },
    /// A preface had a non-zero reserved field or an unknown code.
    #[error("malformed preface: {0}")]
    BadPreface(&'static str),
    /// A frame's length is out of bounds (fatal).
    #[error("frame of {len} bytes is outside {min}..={max} ({limit})")]
    FrameSize {
        /// The length read.
        len: u32,
        /// The smallest accepted: the body's fixed fields.
        min: usize,
        /// The largest accepted.
        max: u32,
        /// The limit that set `max`.
        limit: &'static str,
    },
    /// A frame's checksum does not match its body (fatal).
    #[error("frame checksum mismatch: header says {expected:#010x}, body has {found:#010x}")]
    Checksum {
        /// CRC from the header.
        expected: u32,
        /// CRC of the body.
        found: u32,
    },
    /// A frame body is too short to hold its fixed fields (fatal).
    #[error("frame body of {len} bytes is too short")]
    ShortBody {
        /// The body length.
        len: usize,
    },
    /// An earlier fatal error left the stream unusable.
    #[error("the stream is unusable after an earlier fatal error")]
    Poisoned,
    /// A sound frame whose body does not decode; answer the request and go on.
    #[error("request {request_id}: malformed: {reason}")]
    Malformed {
        /// The frame's request id.
        request_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// A field exceeds a limit; answer the request with `TooLarge` and go on.
    #[error("request {request_id}: {what} of {len} exceeds {limit} {max}")]
    TooLarge {
        /// The frame's request id (0 when encoding).
        request_id: u64,
        /// The field.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit's name.
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
}

impl WireError {
    /// Whether the connection must be closed: framing can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            WireError::Malformed { .. } | WireError::TooLarge { .. }
        )
    }

    /// The request the error concerns, for an error that is not fatal.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            WireError::Malformed { request_id, .. } | WireError::TooLarge { request_id, .. } => {
                Some(*request_id)
            }
            _ => None,
        }
    }

    /// The status a server answers a non-fatal decode error with.
    pub fn to_status(&self) -> ErrorStatus {
        match self {
            WireError::TooLarge { .. } => ErrorStatus::TooLarge(self.to_string()),
            _ => ErrorStatus::InvalidArgument(self.to_string()),
        }
    }
}

const KIND_PUT: u8 = 1;
const KIND_GET: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_RANGE: u8 = 4;
const KIND_TXN: u8 = 5;
const KIND_STATUS: u8 = 6;

// ---------------------------------------------------------------------------------------------
// Prefaces.

/// The client's preface for [`VERSION`].
pub fn client_preface() -> [u8; CLIENT_PREFACE_BYTES] {
    let mut out = [0u8; CLIENT_PREFACE_BYTES];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out
}

/// Decodes a client preface into the version it asks for.
pub fn decode_client_preface(bytes: &[u8; CLIENT_PREFACE_BYTES]) -> Result<u16, WireError> {
    if bytes[..8] != MAGIC {
        return Err(WireError::BadMagic {
            found: bytes[..8].to_vec(),
        });
    }
    if bytes[10..12] != [0, 0] {
        return Err(WireError::BadPreface("reserved bytes are not zero"));
    }
    Ok(u16::from_le_bytes([bytes[8], bytes[9]]))
}

impl ServerPreface {
    /// The 20 bytes of the preface.
    pub fn encode(&self) -> [u8; SERVER_PREFACE_BYTES] {
        let mut out = [0u8; SERVER_PREFACE_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10] = match self.code {
            PrefaceCode::Accepted => 0,
            PrefaceCode::VersionUnsupported => 1,
            PrefaceCode::Busy => 2,
        };
        out[12..16].copy_from_slice(&self.request_bytes_max.to_le_bytes());
        out[16..20].copy_from_slice(&self.in_flight_per_connection_max.to_le_bytes());
        out
    }

    /// Decodes the 20 bytes of a server preface.
    pub fn decode(bytes: &[u8; SERVER_PREFACE_BYTES]) -> Result<ServerPreface, WireError> {
        if bytes[..8] != MAGIC {
            return Err(WireError::BadMagic {
                found: bytes[..8].to_vec(),
            });
        }
        let code = match bytes[10] {
            0 => PrefaceCode::Accepted,
            1 => PrefaceCode::VersionUnsupported,
            2 => PrefaceCode::Busy,
            _ => return Err(WireError::BadPreface("unknown preface code")),
        };
        if bytes[11] != 0 {
            return Err(WireError::BadPreface("reserved byte is not zero"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Ok(ServerPreface {
            version: u16::from_le_bytes([bytes[8], bytes[9]]),
            code,
            request_bytes_max: u32_at(12),
            in_flight_per_connection_max: u32_at(16),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Appends one request frame to `out`. Checks the request against `limits` first, so that a
/// client learns of an oversized request without a round trip; on error `out` is unchanged.
pub fn encode_request(
    frame: &RequestFrame,
    limits: &ClientLimits,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_request(&frame.request, limits)?;
    let start = begin_frame(out);
    put_u64(out, frame.id);
    out.push(frame.request.kind());
    put_u32(out, frame.group);
    match &frame.request {
        Request::Put(w, p) => {
            put_write_id(out, *w);
            put_put(out, p);
        }
        Request::Get(g) => {
            put_bytes(out, &g.key);
            out.push(consistency_byte(g.consistency));
        }
        Request::Delete(w, d) => {
            put_write_id(out, *w);
            put_delete(out, d);
        }
        Request::Range(r) => put_range(out, r),
        Request::Txn(w, t) => {
            match w {
                None => out.push(0),
                Some(w) => {
                    out.push(1);
                    put_write_id(out, *w);
                }
            }
            put_len(out, t.compares.len());
            for c in &t.compares {
                put_bytes(out, &c.key);
                let (target, op) = (compare_target_byte(&c.target), compare_op_byte(c.op));
                out.extend([target, op]);
                match &c.target {
                    CompareTarget::Value(v) => put_bytes(out, v),
                    CompareTarget::Version(n)
                    | CompareTarget::CreateRevision(n)
                    | CompareTarget::ModRevision(n) => put_u64(out, *n),
                }
            }
            for branch in [&t.success, &t.failure] {
                put_len(out, branch.len());
                for op in branch {
                    match op {
                        TxnOp::Put(p) => {
                            out.push(KIND_PUT);
                            put_put(out, p);
                        }
                        TxnOp::Delete(d) => {
                            out.push(KIND_DELETE);
                            put_delete(out, d);
                        }
                        TxnOp::Range(r) => {
                            out.push(KIND_RANGE);
                            put_range(out, r);
                        }
                    }
                }
            }
        }
        Request::Status => {}
    }
    end_frame(out, start, limits.request_bytes_max, "request_bytes_max")
}

/// Appends one response frame to `out`; on error (the response exceeds `response_bytes_max`)
/// `out` is unchanged, and a server answers [`ErrorStatus::TooLarge`] instead.
pub fn encode_response(
    frame: &ResponseFrame,
    limits: &ClientLimits,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = begin_frame(out);
    put_u64(out, frame.id);
    match &frame.result {
        Ok(response) => {
            out.push(0);
            out.push(response.kind());
            match response {
                Response::Put(r) => {
                    put_header(out, &r.header);
                    put_option_kv(out, r.prev_kv.as_ref());
                }
                Response::Get(r) => {
                    put_header(out, &r.header);
                    put_option_kv(out, r.kv.as_ref());
                }
                Response::Delete(r) => {
                    put_header(out, &r.header);
                    put_u64(out, r.deleted);
                    put_kvs(out, &r.prev_kvs);
                }
                Response::Range(r) => {
                    put_header(out, &r.header);
                    put_kvs(out, &r.kvs);
                    put_u64(out, r.count);
                    out.push(u8::from(r.more));
                }
                Response::Txn(r) => {
                    put_header(out, &r.header);
                    out.push(u8::from(r.succeeded));
                    put_len(out, r.responses.len());
                    for op in &r.responses {
                        match op {
                            OpResponse::Put { prev_kv } => {
                                out.push(KIND_PUT);
                                put_option_kv(out, prev_kv.as_ref());
                            }
                            OpResponse::Delete { deleted, prev_kvs } => {
                                out.push(KIND_DELETE);
                                put_u64(out, *deleted);
                                put_kvs(out, prev_kvs);
                            }
                            OpResponse::Range { kvs, count, more } => {
                                out.push(KIND_RANGE);
                                put_kvs(out, kvs);
                                put_u64(out, *count);
                                out.push(u8::from(*more));
                            }
                        }
                    }
                }
                Response::Status(s) => {
                    put_u64(out, s.member_id);
                    put_u32(out, s.groups);
                    put_len(out, s.members.len());
                    for m in &s.members {
                        put_u64(out, m.id);
                        put_bytes(out, m.client_address.as_bytes());
                    }
                    put_len(out, s.leaders.len());
                    for l in &s.leaders {
                        match l {
                            None => out.push(0),
                            Some(id) => {
                                out.push(1);
                                put_u64(out, *id);
                            }
                        }
                    }
                }
            }
        }
        Err(status) => match status {
            ErrorStatus::NotLeader { group, leader } => {
                out.push(1);
                put_u32(out, *group);
                match leader {
                    None => out.push(0),
                    Some(l) => {
                        out.push(1);
                        put_u64(out, l.member_id);
                        put_bytes(out, l.client_address.as_bytes());
                    }
                }
            }
            ErrorStatus::GroupUnavailable { group } => {
                out.push(2);
                put_u32(out, *group);
            }
            ErrorStatus::InvalidArgument(m) => {
                out.push(3);
                put_bytes(out, m.as_bytes());
            }
            ErrorStatus::TooLarge(m) => {
                out.push(4);
                put_bytes(out, m.as_bytes());
            }
            ErrorStatus::TxnSpansGroups { groups } => {
                out.push(5);
                put_len(out, groups.len());
                for g in groups {
                    put_u32(out, *g);
                }
            }
            ErrorStatus::WrongGroup { groups } => {
                out.push(6);
                put_u32(out, *groups);
            }
            ErrorStatus::Compacted { compact_revision } => {
                out.push(7);
                put_u64(out, *compact_revision);
            }
            ErrorStatus::Busy => out.push(8),
            ErrorStatus::Internal(m) => {
                out.push(9);
                put_bytes(out, m.as_bytes());
            }
        },
    }
    end_frame(out, start, limits.response_bytes_max, "response_bytes_max")
}

/// Checks the sizes of a request against `limits`, as the decoder does.
pub fn check_request(request: &Request, limits: &ClientLimits) -> Result<(), WireError> {
    let key = |k: &[u8]| check_len("key", k.len(), "key_bytes_max", limits.key_bytes_max);
    let value = |v: &[u8]| check_len("value", v.len(), "value_bytes_max", limits.value_bytes_max);
    let range = |r: &RangeRequest| key(&r.key).and_then(|_| key(&r.range_end));
    let op = |op: &TxnOp| match op {
        TxnOp::Put(p) => key(&p.key).and_then(|_| value(&p.value)),
        TxnOp::Delete(d) => key(&d.key),
        TxnOp::Range(r) => range(r),
    };
    match request {
        Request::Put(_, p) => op(&TxnOp::Put(p.clone())),
        Request::Get(g) => key(&g.key),
        Request::Delete(_, d) => key(&d.key),
        Request::Range(r) => range(r),
        Request::Txn(_, t) => {
            for (what, n) in [
                ("compares", t.compares.len()),
                ("success ops", t.success.len()),
                ("failure ops", t.failure.len()),
            ] {
                check_len(what, n, "ops_per_txn_max", limits.ops_per_txn_max)?;
            }
            for c in &t.compares {
                key(&c.key)?;
                if let CompareTarget::Value(v) = &c.target {
                    value(v)?;
                }
            }
            t.success.iter().chain(&t.failure).try_for_each(op)
        }
        Request::Status => Ok(()),
    }
}

fn check_len(
    what: &'static str,
    len: usize,
    limit: &'static str,
    max: u32,
) -> Result<(), WireError> {
    if len > max as usize {
        return Err(WireError::TooLarge {
            request_id: 0,
            what,
            len: len as u64,
            limit,
            max: u64::from(max),
        });
    }
    Ok(())
}

fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend([0u8; FRAME_HEADER_BYTES]);
    start
}

fn end_frame(
    out: &mut Vec<u8>,
    start: usize,
    max: u32,
    limit: &'static str,
) -> Result<(), WireError> {
    let body = start + FRAME_HEADER_BYTES;
    let len = out.len() - body;
    let Some(len32) = u32::try_from(len).ok().filter(|l| *l <= max) else {
        out.truncate(start);
        return Err(WireError::TooLarge {
            request_id: 0,
            what: "frame body",
            len: len as u64,
            limit,
            max: u64::from(max),
        });
    };
    let crc = crc32fast::hash(&out[body..]);
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend(v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend(v.to_le_bytes());
}

/// Writes a length or count. Callers only encode what fits in a frame, whose length is a
/// u32; a larger length would fail `end_frame` anyway, so saturating keeps the frame
/// rejected rather than silently wrapping.
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_write_id(out: &mut Vec<u8>, w: WriteId) {
    put_u64(out, w.client_id);
    put_u64(out, w.sequence);
}

fn put_put(out: &mut Vec<u8>, p: &PutRequest) {
    put_bytes(out, &p.key);
    put_bytes(out, &p.value);
    out.push(u8::from(p.prev_kv));
}

fn put_delete(out: &mut Vec<u8>, d: &DeleteRequest) {
    put_bytes(out, &d.key);
    out.push(u8::from(d.prev_kv));
}

fn put_range(out: &mut Vec<u8>, r: &RangeRequest) {
    put_bytes(out, &r.key);
    put_bytes(out, &r.range_end);
    put_u64(out, r.limit);
    put_u64(out, r.revision);
    out.push(u8::from(r.keys_only) | u8::from(r.count_only) << 1);
    out.push(consistency_byte(r.consistency));
}

fn put_header(out: &mut Vec<u8>, h: &ResponseHeader) {
    put_u32(out, h.group);
    put_u64(out, h.revision);
    put_u64(out, h.member_id);
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(out, &kv.key);
    put_bytes(out, &kv.value);
    put_u64(out, kv.create_revision);
    put_u64(out, kv.mod_revision);
    put_u64(out, kv.version);
}

fn put_option_kv(out: &mut Vec<u8>, kv: Option<&KeyValue>) {
    match kv {
        None => out.push(0),
        Some(kv) => {
            out.push(1);
            put_kv(out, kv);
        }
    }
}

fn put_kvs(out: &mut Vec<u8>, kvs: &[KeyValue]) {
    put_len(out, kvs.len());
    for kv in kvs {
        put_kv(out, kv);
    }
}

fn consistency_byte(c: ReadConsistency) -> u8 {
    match c {
        ReadConsistency::Linearizable => 0,
        ReadConsistency::Lease => 1,
        ReadConsistency::Serializable => 2,
    }
}

fn compare_target_byte(t: &CompareTarget) -> u8 {
    match t {
        CompareTarget::Value(_) => 0,
        CompareTarget::Version(_) => 1,
        CompareTarget::CreateRevision(_) => 2,
        CompareTarget::ModRevision(_) => 3,
    }
}

fn compare_op_byte(op: CompareOp) -> u8 {
    match op {
        CompareOp::Equal => 0,
        CompareOp::NotEqual => 1,
        CompareOp::Greater => 2,
        CompareOp::Less => 3,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Splits a byte stream into checked frame bodies. Feed it what the socket returns with
/// [`FrameDecoder::extend`] and then call [`FrameDecoder::next_frame`] until it returns
/// `Ok(None)`; doing so after every read bounds the buffer by one frame plus one read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out; `start <= buf.len()`.
    start: usize,
    body_bytes_min: usize,
    body_bytes_max: u32,
    limit: &'static str,
    poisoned: bool,
}

impl FrameDecoder {
    fn new(body_bytes_min: usize, body_bytes_max: u32, limit: &'static str) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            body_bytes_min,
            body_bytes_max: body_bytes_max.min(FRAME_BYTES_MAX),
            limit,
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame's body, after checking its length (before waiting for the
    /// body) and its checksum. Any error is fatal, and so are all later calls.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        let pending = &self.buf[self.start..];
        let Some(header) = pending.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > self.body_bytes_max || (len as usize) < self.body_bytes_min {
            self.poisoned = true;
            return Err(WireError::FrameSize {
                len,
                min: self.body_bytes_min,
                max: self.body_bytes_max,
                limit: self.limit,
            });
        }
        let Some(body) = pending[FRAME_HEADER_BYTES..].get(..len as usize) else {
            return Ok(None);
        };
        let found = crc32fast::hash(body);
        if found != expected {
            self.poisoned = true;
            return Err(WireError::Checksum { expected, found });
        }
        let body = body.to_vec();
        self.start += FRAME_HEADER_BYTES + body.len();
        Ok(Some(body))
    }
}

/// The server's decoder: bytes in, requests out.
#[derive(Debug)]
pub struct RequestDecoder {
    frames: FrameDecoder,
    limits: ClientLimits,
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ClientLimits) -> RequestDecoder {
        RequestDecoder {
            frames: FrameDecoder::new(
                REQUEST_BODY_BYTES_MIN,
                limits.request_bytes_max,
                "request_bytes_max",
            ),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.frames.extend(bytes);
    }

    /// The next request; on an error that is not [fatal](WireError::is_fatal) answer its
    /// request id and call again.
    pub fn next_frame(&mut self) -> Result<Option<RequestFrame>, WireError> {
        let Some(body) = self.frames.next_frame()? else {
            return Ok(None);
        };
        decode_request(&body, &self.limits).map(Some)
    }
}

/// The client's decoder: bytes in, responses out.
#[derive(Debug)]
pub struct ResponseDecoder {
    frames: FrameDecoder,
    limits: ClientLimits,
}

impl ResponseDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ClientLimits) -> ResponseDecoder {
        ResponseDecoder {
            frames: FrameDecoder::new(
                RESPONSE_BODY_BYTES_MIN,
                limits.response_bytes_max,
                "response_bytes_max",
            ),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.frames.extend(bytes);
    }

    /// The next response; on an error that is not fatal, fail the request with its id.
    pub fn next_frame(&mut self) -> Result<Option<ResponseFrame>, WireError> {
        let Some(body) = self.frames.next_frame()? else {
            return Ok(None);
        };
        decode_response(&body, &self.limits).map(Some)
    }
}

/// Reads a frame body front to back; every read checks the bytes are there.
struct Reader<'a> {
    rest: &'a [u8],
    request_id: u64,
}

type Decoded<T> = Result<T, WireError>;

impl<'a> Reader<'a> {
    fn malformed(&self, reason: impl Into<String>) -> WireError {
        WireError::Malformed {
            request_id: self.request_id,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Decoded<&'a [u8]> {
        if self.rest.len() < n {
            return Err(self.malformed(format!("truncated {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Decoded<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Decoded<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Decoded<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bool(&mut self, what: &str) -> Decoded<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(format!("{what} is {b}, not a bool"))),
        }
    }

    fn flag(&mut self, what: &str) -> Decoded<bool> {
        self.bool(what)
    }

    fn option(&mut self, what: &str) -> Decoded<bool> {
        self.bool(what)
    }

    /// A length-prefixed byte string of at most `max` bytes (`limit` names the limit).
    fn bytes(&mut self, what: &'static str, limit: &'static str, max: u32) -> Decoded<Vec<u8>> {
        let len = self.u32(what)?;
        if len > max {
            return Err(WireError::TooLarge {
                request_id: self.request_id,
                what,
                len: u64::from(len),
                limit,
                max: u64::from(max),
            });
        }
        Ok(self.take(len as usize, what)?.to_vec())
    }

    fn string(&mut self, what: &'static str, max: u32) -> Decoded<String> {
        let bytes = self.bytes(what, "string_bytes_max", max)?;
        String::from_utf8(bytes).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    /// A count of items each at least `item_bytes_min` long, at most `max`: checked against
    /// the bytes left before anything is allocated for them.
    fn count(
        &mut self,
        what: &'static str,
        item_bytes_min: usize,
        limit: &'static str,
        max: u32,
    ) -> Decoded<usize> {
        let n = self.u32(what)?;
        if n > max {
            return Err(WireError::TooLarge {
                request_id: self.request_id,
                what,
                len: u64::from(n),
                limit,
                max: u64::from(max),
            });
        }
        let n = n as usize;
        if n.saturating_mul(item_bytes_min) > self.rest.len() {
            return Err(self.malformed(format!("{what} claims {n} items, more than fit")));
        }
        Ok(n)
    }

    fn finish<T>(self, value: T) -> Decoded<T> {
        if !self.rest.is_empty() {
            return Err(self.malformed(format!("{} trailing bytes", self.rest.len())));
        }
        Ok(value)
    }
}

fn decode_request(body: &[u8], limits: &ClientLimits) -> Decoded<RequestFrame> {
    let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
        return Err(WireError::ShortBody { len: body.len() });
    };
    let mut r = Reader {
        rest,
        request_id: u64::from_le_bytes(*id_bytes),
    };
    let kind = r.u8("kind")?;
    let group = r.u32("group")?;
    let request = match kind {
        KIND_PUT => Request::Put(write_id(&mut r)?, put_request(&mut r, limits)?),
        KIND_GET => Request::Get(GetRequest {
            key: key(&mut r, limits)?,
            consistency: consistency(&mut r)?,
        }),
        KIND_DELETE => Request::Delete(write_id(&mut r)?, delete_request(&mut r, limits)?),
        KIND_RANGE => Request::Range(range_request(&mut r, limits)?),
        KIND_TXN => {
            let w = if r.option("write id")? {
                Some(write_id(&mut r)?)
            } else {
                None
            };
            Request::Txn(w, txn_request(&mut r, limits)?)
        }
        KIND_STATUS => Request::Status,
        k => return Err(r.malformed(format!("unknown request kind {k}"))),
    };
    let id = r.request_id;
    r.finish(RequestFrame { id, group, request })
}

fn key(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<Vec<u8>> {
    r.bytes("key", "key_bytes_max", limits.key_bytes_max)
}

fn write_id(r: &mut Reader<'_>) -> Decoded<WriteId> {
    Ok(WriteId {
        client_id: r.u64("client id")?,
        sequence: r.u64("sequence")?,
    })
}

fn consistency(r: &mut Reader<'_>) -> Decoded<ReadConsistency> {
    match r.u8("consistency")? {
        0 => Ok(ReadConsistency::Linearizable),
        1 => Ok(ReadConsistency::Lease),
        2 => Ok(ReadConsistency::Serializable),
        c => Err(r.malformed(format!("unknown consistency {c}"))),
    }
}

fn put_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<PutRequest> {
    Ok(PutRequest {
        key: key(r, limits)?,
        value: r.bytes("value", "value_bytes_max", limits.value_bytes_max)?,
        prev_kv: r.flag("put flags")?,
    })
}

fn delete_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<DeleteRequest> {
    Ok(DeleteRequest {
        key: key(r, limits)?,
        prev_kv: r.flag("delete flags")?,
    })
}

fn range_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<RangeRequest> {
    let key = key(r, limits)?;
    let range_end = r.bytes("range_end", "key_bytes_max", limits.key_bytes_max)?;
    let limit = r.u64("limit")?;
    let revision = r.u64("revision")?;
    let flags = r.u8("range flags")?;
    if flags & !0b11 != 0 {
        return Err(r.malformed(format!("unknown range flags {flags:#04x}")));
    }
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        keys_only: flags & 1 != 0,
        count_only: flags & 2 != 0,
        revision,
        consistency: consistency(r)?,
    })
}

fn txn_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<TxnRequest> {
    // A compare is at least key length (4), target, op and a u64 or a length (4): 10 bytes.
    let n = r.count("compares", 10, "ops_per_txn_max", limits.ops_per_txn_max)?;
    let mut compares = Vec::with_capacity(n);
    for _ in 0..n {
        let key = key(r, limits)?;
        let target = r.u8("compare target")?;
        let op = match r.u8("compare op")? {
            0 => CompareOp::Equal,
            1 => CompareOp::NotEqual,
            2 => CompareOp::Greater,
            3 => CompareOp::Less,
            o => return Err(r.malformed(format!("unknown compare op {o}"))),
        };
        let target = match target {
            0 => CompareTarget::Value(r.bytes(
                "compare value",
                "value_bytes_max",
                limits.value_bytes_max,
            )?),
            1 => CompareTarget::Version(r.u64("compare version")?),
            2 => CompareTarget::CreateRevision(r.u64("compare create revision")?),
            3 => CompareTarget::ModRevision(r.u64("compare mod revision")?),
            t => return Err(r.malformed(format!("unknown compare target {t}"))),
        };
        compares.push(Compare { key, target, op });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for (branch, what) in branches.iter_mut().zip(["success ops", "failure ops"]) {
        // The smallest op is a delete: kind, key length, flags.
        let n = r.count(what, 6, "ops_per_txn_max", limits.ops_per_txn_max)?;
        branch.reserve_exact(n);
        for _ in 0..n {
            branch.push(match r.u8("op kind")? {
                KIND_PUT => TxnOp::Put(put_request(r, limits)?),
                KIND_DELETE => TxnOp::Delete(delete_request(r, limits)?),
                KIND_RANGE => TxnOp::Range(range_request(r, limits)?),
                k => return Err(r.malformed(format!("unknown txn op kind {k}"))),
            });
        }
    }
    let [success, failure] = branches;
    Ok(TxnRequest {
        compares,
        success,
        failure,
    })
}

fn decode_response(body: &[u8], limits: &ClientLimits) -> Decoded<ResponseFrame> {
    let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
        return Err(WireError::ShortBody { len: body.len() });
    };
    let mut r = Reader {
        rest,
        request_id: u64::from_le_bytes(*id_bytes),
    };
    // Responses carry what the server stored, so their keys and values are bounded by the
    // frame (checked against the bytes left), not by the request limits.
    let result = match r.u8("status")? {
        0 => Ok(match r.u8("kind")? {
            KIND_PUT => Response::Put(PutResponse {
                header: header(&mut r)?,
                prev_kv: option_kv(&mut r)?,
            }),
            KIND_GET => Response::Get(GetResponse {
                header: header(&mut r)?,
                kv: option_kv(&mut r)?,
            }),
            KIND_DELETE => Response::Delete(DeleteResponse {
                header: header(&mut r)?,
                deleted: r.u64("deleted")?,
                prev_kvs: kvs(&mut r)?,
            }),
            KIND_RANGE => Response::Range(RangeResponse {
                header: header(&mut r)?,
                kvs: kvs(&mut r)?,
                count: r.u64("count")?,
                more: r.bool("more")?,
            }),
            KIND_TXN => {
                let header = header(&mut r)?;
                let succeeded = r.bool("succeeded")?;
                let n = r.count("op responses", 2, "ops_per_txn_max", limits.ops_per_txn_max)?;
                let mut responses = Vec::with_capacity(n);
                for _ in 0..n {
                    responses.push(match r.u8("op response kind")? {
                        KIND_PUT => OpResponse::Put {
                            prev_kv: option_kv(&mut r)?,
                        },
                        KIND_DELETE => OpResponse::Delete {
                            deleted: r.u64("deleted")?,
                            prev_kvs: kvs(&mut r)?,
                        },
                        KIND_RANGE => OpResponse::Range {
                            kvs: kvs(&mut r)?,
                            count: r.u64("count")?,
                            more: r.bool("more")?,
                        },
                        k => return Err(r.malformed(format!("unknown op response kind {k}"))),
                    });
                }
                Response::Txn(TxnResponse {
                    header,
                    succeeded,
                    responses,
                })
            }
            KIND_STATUS => {
                let member_id = r.u64("member id")?;
                let groups = r.u32("groups")?;
                if groups == 0 || groups > limits.groups_max {
                    return Err(r.malformed(format!(
                        "status names {groups} groups, outside 1..={} (groups_max)",
                        limits.groups_max
                    )));
                }
                let n = r.count("members", 12, "members_max", limits.members_max)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberInfo {
                        id: r.u64("member id")?,
                        client_address: r.string("client address", limits.string_bytes_max)?,
                    });
                }
                let n = r.count("leaders", 1, "groups_max", limits.groups_max)?;
                if n != groups as usize {
                    return Err(r.malformed(format!("{n} leaders for {groups} groups")));
                }
                let mut leaders = Vec::with_capacity(n);
                for _ in 0..n {
                    leaders.push(if r.option("leader")? {
                        Some(r.u64("leader")?)
                    } else {
                        None
                    });
                }
                Response::Status(ClusterStatus {
                    member_id,
                    groups,
                    members,
                    leaders,
                })
            }
            k => return Err(r.malformed(format!("unknown response kind {k}"))),
        }),
        1 => Err(ErrorStatus::NotLeader {
            group: r.u32("group")?,
            leader: if r.option("leader")? {
                Some(LeaderHint {
                    member_id: r.u64("leader id")?,
                    client_address: r.string("leader address", limits.string_bytes_max)?,
                })
            } else {
                None
            },
        }),
        2 => Err(ErrorStatus::GroupUnavailable {
            group: r.u32("group")?,
        }),
        3 => Err(ErrorStatus::InvalidArgument(
            r.string("message", limits.string_bytes_max)?,
        )),
        4 => Err(ErrorStatus::TooLarge(
            r.string("message", limits.string_bytes_max)?,
        )),
        5 => {
            let n = r.count("groups", 4, "groups_max", limits.groups_max)?;
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                groups.push(r.u32("group")?);
            }
            Err(ErrorStatus::TxnSpansGroups { groups })
        }
        6 => Err(ErrorStatus::WrongGroup {
            groups: r.u32("groups")?,
        }),
        7 => Err(ErrorStatus::Compacted {
            compact_revision: r.u64("compact revision")?,
        }),
        8 => Err(ErrorStatus::Busy),
        9 => Err(ErrorStatus::Internal(
            r.string("message", limits.string_bytes_max)?,
        )),
        s => return Err(r.malformed(format!("unknown status {s}"))),
    };
    let id = r.request_id;
    r.finish(ResponseFrame { id, result })
}

fn header(r: &mut Reader<'_>) -> Decoded<ResponseHeader> {
    Ok(ResponseHeader {
        group: r.u32("group")?,
        revision: r.u64("revision")?,
        member_id: r.u64("member id")?,
    })
}

fn kv(r: &mut Reader<'_>) -> Decoded<KeyValue> {
    Ok(KeyValue {
        key: r.bytes("key", "response_bytes_max", u32::MAX)?,
        value: r.bytes("value", "response_bytes_max", u32::MAX)?,
        create_revision: r.u64("create revision")?,
        mod_revision: r.u64("mod revision")?,
        version: r.u64("version")?,
    })
}

fn option_kv(r: &mut Reader<'_>) -> Decoded<Option<KeyValue>> {
    if r.option("key-value")? {
        Ok(Some(kv(r)?))
    } else {
        Ok(None)
    }
}

fn kvs(r: &mut Reader<'_>) -> Decoded<Vec<KeyValue>> {
    // A key-value is at least two lengths and three u64s: 32 bytes.
    let n = r.count("key-values", 32, "response_bytes_max", u32::MAX)?;
    let mut kvs = Vec::with_capacity(n);
    for _ in 0..n {
        kvs.push(kv(r)?);
    }
    Ok(kvs)
}
