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
//! it talks the native protocol; [`sniff`] makes that decision.
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
//! | sequence: u64 | first unanswered: u64` ([`Write`], below). Flag bytes must have their
//! unused bits clear.
//!
//! # Requests
//!
//! | kind | request    | payload |
//! |-----:|------------|---------|
//! | 1    | Put        | write id \| key: bytes \| value: bytes \| flags: u8 (bit 0 `prev_kv`) |
//! | 2    | Get        | key: bytes \| consistency: u8 |
//! | 3    | Delete     | write id \| key: bytes \| flags: u8 (bit 0 `prev_kv`) |
//! | 4    | Range      | key: bytes \| range_end: bytes \| limit: u64 \| revision: u64 \| flags: u8 (bit 0 `keys_only`, bit 1 `count_only`) \| consistency: u8 |
//! | 5    | Txn        | `option<write id> \| compares: vec<compare> \| success: vec<op> \| failure: vec<op>` |
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
//! | 1    | Put      | `header \| prev_kv: option<kv>` |
//! | 2    | Get      | `header \| kv: option<kv>` |
//! | 3    | Delete   | `header \| deleted: u64 \| prev_kvs: vec<kv>` |
//! | 4    | Range    | `header \| kvs: vec<kv> \| count: u64 \| more: bool` |
//! | 5    | Txn      | `header \| succeeded: bool \| responses: vec<op response>` |
//! | 6    | Status   | `member id: u64 \| groups: u32 \| members: vec<member id: u64 \| client address: string> \| leaders: vec<option<member id: u64>> (one per group)` |
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
//! | 1      | NotLeader        | `group: u32 \| leader: option<member id: u64 \| client address: string>` |
//! | 2      | GroupUnavailable | group: u32 |
//! | 3      | InvalidArgument  | message: string |
//! | 4      | TooLarge         | message: string (names the limit) |
//! | 5      | TxnSpansGroups   | `groups: vec<u32>` |
//! | 6      | WrongGroup       | groups: u32 (the cluster's group count) |
//! | 7      | Compacted        | compact revision: u64 |
//! | 8      | Busy             | empty |
//! | 9      | Internal         | message: string |
//!
//! A payload must be consumed exactly: trailing bytes are an error.
//!
//! # Exactly-once writes
//!
//! Every request that may write carries a write id ([`Write`]). A client picks a random
//! non-zero client id, numbers its writes from 1, and sends every retry of a write, over any
//! connection to any member, with the same client id and sequence; `first unanswered` is the
//! smallest sequence of its writes still waiting for an answer (at most the write's own).
//! The server keeps, per client id and as part of each group's replicated state (so that a
//! new leader knows it too), the response of each applied write of that client whose
//! sequence is at least the highest `first unanswered` seen from it:
//!
//! - a write whose (client id, sequence) was already applied is answered with the stored
//!   response and not applied again;
//! - a write whose sequence is below that floor was answered already; it is refused with
//!   `InvalidArgument` and not applied;
//! - responses below the floor are dropped. The server bounds the clients it remembers
//!   (evicting the least recently seen); a retry from an evicted client can apply twice,
//!   which is why the bound is generous and the client id random. It also bounds each
//!   client's kept results (4,096, and bytes); a client past them has its floor raised past
//!   the results forgotten, so a retry of one is refused, never applied twice.
//!
//! Reads carry no write id: retrying them is harmless.
//!
//! # Code map
//!
//! `limits` ([`ClientLimits`]), `message` (the values), `preface`, `encode`, `decode` (the
//! streaming decoders), `error` ([`WireError`]).

mod decode;
mod encode;
mod error;
mod limits;
mod message;
mod preface;

pub use decode::{FrameDecoder, RequestDecoder, ResponseDecoder};
pub use encode::{check_request, encode_request, encode_response};
pub use error::WireError;
pub use limits::ClientLimits;
pub use message::{
    ClusterStatus, Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, ErrorStatus,
    GetRequest, GetResponse, KeyValue, LeaderHint, MemberInfo, OpResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ReadConsistency, Request, RequestFrame, Response, ResponseFrame,
    ResponseHeader, TxnOp, TxnRequest, TxnResponse, Write, WriteId,
};
pub use preface::{
    PrefaceCode, ServerPreface, Sniffed, client_preface, decode_client_preface, sniff,
};

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

// The kind bytes of requests and of the responses that answer them (the tables above).
pub(crate) const KIND_PUT: u8 = 1;
pub(crate) const KIND_GET: u8 = 2;
pub(crate) const KIND_DELETE: u8 = 3;
pub(crate) const KIND_RANGE: u8 = 4;
pub(crate) const KIND_TXN: u8 = 5;
pub(crate) const KIND_STATUS: u8 = 6;
