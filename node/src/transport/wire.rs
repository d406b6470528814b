//! The peer wire format, byte by byte. Every integer is little-endian, and nothing on the
//! wire has the machine's width (`usize`): lengths and counts are `u32`, ids and indexes
//! `u64`.
//!
//! Two members talk over one connection that carries a stream of *frames*. The dialer's
//! first frame is a [`Hello`]; the acceptor answers it with a [`HelloReply`] (see
//! [`Hello::answer`]) and closes the connection after a refusal. Only after an accepting
//! reply does either side send [`Frame::Messages`]: batches of raft messages of any groups,
//! and [`Frame::SnapshotChunk`]: a piece of a checkpoint file on its way to a lagging
//! follower.
//!
//! # Frame
//!
//! ```text
//! offset size field
//!      0    4 magic            b"KPWR" (0x4b505752 read in byte order)
//!      4    2 wire version     WIRE_VERSION (1)
//!      6    1 frame kind       1 hello, 2 hello reply, 3 messages, 4 snapshot chunk,
//!                              5 join request, 6 join reply
//!      7    1 reserved         zero
//!      8    4 body length      bytes of the body, at most frame_bytes_max
//!     12    4 crc32            over bytes [0, 12) of this header, then over the body
//!     16    . body             `body length` bytes, laid out by kind as below
//! ```
//!
//! A decoder checks the header as soon as its 16 bytes are there, in this order: magic,
//! wire version, reserved byte, body length against `frame_bytes_max`. So a lying length
//! is refused before a byte of its body is buffered. Once the whole body is there it checks
//! the checksum, then the kind, then decodes the body, which must be consumed exactly.
//!
//! # Hello (kind 1), 26 bytes
//!
//! ```text
//!      0    2 wire version     the version the dialer speaks (today: equal to the header's)
//!      2    8 cluster id       the cluster the dialer belongs to
//!     10    8 from member      the dialer's member id (not zero)
//!     18    8 to member        the member id the dialer means to reach
//! ```
//!
//! # HelloReply (kind 2)
//!
//! ```text
//!      0    1 accepted         0 refused, 1 accepted; anything else is an error
//!      1    4 reason length R  at most reason_bytes_max
//!      5    R reason           UTF-8, for the dialer's log; empty when accepted
//! ```
//!
//! # Messages (kind 3)
//!
//! ```text
//!      0    4 message count M  at most messages_per_frame_max
//!      4    . M messages       back to back
//! ```
//!
//! An empty batch (M = 0) is valid, though the encoder never sends one.
//!
//! A message (82 bytes plus its variable parts):
//!
//! ```text
//!      0    8 group id
//!      8    1 message type     1 Append, 2 AppendResponse, 3 RequestVote,
//!                              4 RequestVoteResponse, 5 RequestPreVote,
//!                              6 RequestPreVoteResponse, 7 Snapshot, 8 Heartbeat,
//!                              9 HeartbeatResponse, 10 TimeoutNow, 11 Propose, 12 ReadIndex,
//!                              13 ReadIndexResponse, 14 TransferLeader; 0 is never valid
//!      9    1 flags            bit 0 reject, bit 1 a snapshot follows the entries; others zero
//!     10    8 to
//!     18    8 from
//!     26    8 term
//!     34    8 log term
//!     42    8 index
//!     50    8 commit
//!     58    8 reject hint
//!     66    8 read seq
//!     74    4 context length C at most context_bytes_max
//!     78    C context
//!      .    4 entry count N    at most entries_per_message_max
//!      .    . N entries
//!      .    . snapshot         only if flag bit 1 is set
//! ```
//!
//! An entry (21 bytes plus its data):
//!
//! ```text
//!      0    8 term
//!      8    8 index
//!     16    1 entry type       0 Normal, 1 ConfChange
//!     17    4 data length D    at most entry_bytes_max
//!     21    D data
//! ```
//!
//! A snapshot (37 bytes plus the member ids and its data):
//!
//! ```text
//!      0    8 index            of the last entry the snapshot includes
//!      8    8 term             of that entry
//!     16    . conf state       see below
//!      .    4 data length S    bounded only by the frame
//!      .    S data
//! ```
//!
//! A conf state (17 bytes plus the member ids), each list at most voters_max long:
//!
//! ```text
//!      0    4 voter count V, then V member ids (u64 each)
//!      .    4 learner count L, then L member ids
//!      .    4 outgoing voter count O, then O member ids
//!      .    4 next learner count X, then X member ids
//!      .    1 auto leave       0 or 1
//! ```
//!
//! # SnapshotChunk (kind 4), 68 bytes plus its data
//!
//! A leader sends a snapshot of a group (its checkpoint file, `keel_engine::checkpoint`) to
//! a follower as a run of chunks in order, on the connection that carries its messages;
//! the follower assembles them, verifies the whole file (its CRCs) and only then hands the
//! snapshot to raft. The chunk carries everything the follower needs to rebuild raft's
//! snapshot message, so no message of kind 3 goes with it.
//!
//! ```text
//!      0    8 group id
//!      8    8 to               the receiving member
//!     16    8 from             the sending member (the group's leader)
//!     24    8 term             the leader's term when it sent the snapshot
//!     32    8 index            the snapshot's index (last entry it covers)
//!     40    8 snapshot term    the term of the entry at `index`
//!     48    8 total bytes      of the whole checkpoint file; not zero
//!     56    8 offset           of this chunk in the file; offset + D <= total bytes
//!     64    4 data length D    at most snapshot_chunk_bytes_max; not zero
//!     68    D data
//! ```
//!
//! Kind 4 was reserved in version 1 for snapshot chunks; this is its definition, still
//! version 1 (the layout of every other kind is unchanged). A build from before it refuses
//! the kind with [`WireError::UnknownFrameKind`] and closes the connection, so it cannot
//! receive a snapshot from a newer member; everything else between them works.
//!
//! # JoinRequest (kind 5) and JoinReply (kind 6)
//!
//! A member started with `--initial-cluster-state existing` and an empty data directory
//! knows neither the cluster's id nor its own member id, so it cannot say a Hello. Instead
//! its first (and only) frame on a connection to a running member's peer port is a
//! [`JoinRequest`]: who it is. The acceptor answers with one [`JoinReply`] and closes the
//! connection; no Hello, no messages. A connection whose first frame is neither a Hello nor
//! a JoinRequest is closed.
//!
//! ```text
//! JoinRequest
//!      0    2 join version     JOIN_VERSION (1)
//!      2    1 name length N    at most NAME_BYTES_MAX (255)
//!      3    N name             UTF-8, the joiner's --name
//!      .    1 peer length P    then P bytes: the joiner's peer address, `ip:port` in ASCII
//!
//! JoinReply
//!      0    2 join version     JOIN_VERSION (1)
//!      2    1 status           0 refused (for good: another cluster, a member never added),
//!                              1 accepted, 2 not now (the member cannot answer yet: retry)
//!      3    4 reason length R  at most reason_bytes_max
//!      7    R reason           UTF-8; empty when accepted
//!   only when accepted:
//!      .    8 cluster id
//!      .    8 member id        the joiner's, as the cluster's member list has it
//!      .    4 groups           raft groups of the cluster
//!      .    4 shards           shards of every member
//!      .    4 bootstrap count B  at most voters_max, then B member ids (u64 each): every
//!                              group's voters at creation, which a new replica starts from
//!      .    4 member list bytes L  at most JOIN_MEMBER_LIST_BYTES_MAX, then L bytes: the
//!                              cluster's member list as group 0 holds it (`crate::members`)
//! ```
//!
//! Both kinds were added within wire version 1, as kind 4 was: the frame layout and every
//! other kind are unchanged, so members of either build keep talking. A build from before
//! them closes a connection whose first frame is a JoinRequest without a reply; the joiner
//! reports that member as not answering joins and asks another. The bodies carry a version
//! of their own (`JOIN_VERSION`): an acceptor refuses a join version it does not speak
//! with a refusing reply of its own version, which every later build is to keep able to
//! read (version, status and reason stay at the front).
//!
//! # Limits
//!
//! [`WireLimits`] bounds every length and count. The decoder checks each length it reads
//! against its limit and against the bytes left in the body *before* it allocates, so a
//! lying length costs an error, never memory. The encoder checks the same limits, so it
//! never writes a frame its peer refuses, as long as both sides use the same limits (a
//! receiver's limits must be at least the sender's). A batch of messages that does not fit
//! in one frame is split into several; one message that alone does not fit is an error
//! ([`WireError::MessageTooLarge`]).
//!
//! # Versions
//!
//! Version 1 is this layout. Any change to a body layout, or a new frame kind, takes a new
//! version. The header and the Hello and HelloReply bodies are to keep this layout in every
//! later version, and a later build is to read the handshake frames of older versions, so
//! that members of different versions can always exchange a refusal with a reason: an
//! acceptor whose decoder reports [`WireError::UnsupportedVersion`] for the first frame may
//! answer with a refusing HelloReply carrying the error's text before it closes.
//!
//! A snapshot may also travel whole inside its message (kind 3, flag bit 1), as long as it
//! fits in one frame; Keel's shards send snapshots as chunks (kind 4) and drop snapshot
//! messages that arrive whole.
//!
//! # Errors
//!
//! Every error from the decoder means the stream can no longer be trusted (a frame boundary
//! may be lost), so the connection is to be closed; the decoder keeps returning the error.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::consensus::{
    ConfState, Entry, EntryType, Message, MessageType, NodeId, Snapshot, SnapshotMetadata,
};
use crate::shard::SnapshotChunk;

/// Magic bytes at the start of every frame.
pub const MAGIC: [u8; 4] = *b"KPWR";
/// The wire version this build writes and reads.
pub const WIRE_VERSION: u16 = 1;
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 16;
/// Frame kind: [`Hello`].
pub const FRAME_KIND_HELLO: u8 = 1;
/// Frame kind: [`HelloReply`].
pub const FRAME_KIND_HELLO_REPLY: u8 = 2;
/// Frame kind: a batch of raft messages.
pub const FRAME_KIND_MESSAGES: u8 = 3;
/// Frame kind: a [`SnapshotChunk`].
pub const FRAME_KIND_SNAPSHOT_CHUNK: u8 = 4;
/// Bytes of a SnapshotChunk body before its data.
pub const SNAPSHOT_CHUNK_FIXED_BYTES: usize = 68;
/// Frame kind: [`JoinRequest`].
pub const FRAME_KIND_JOIN_REQUEST: u8 = 5;
/// Frame kind: [`JoinReply`].
pub const FRAME_KIND_JOIN_REPLY: u8 = 6;
/// The version of the JoinRequest and JoinReply bodies this build writes and reads.
pub const JOIN_VERSION: u16 = 1;
/// The longest member list a JoinReply carries, in bytes: [`crate::members::MEMBERS_MAX`]
/// members of at most 8 + 1 + 1 + 255 + 1 + 47 bytes (id, flags, the longest name, the
/// longest IPv6 `ip:port`) fit with room to spare.
pub const JOIN_MEMBER_LIST_BYTES_MAX: u32 = 32 << 10;
/// The longest peer address in a JoinRequest (`[v6%scope]:port` fits), in bytes.
const JOIN_PEER_BYTES_MAX: usize = 64;
/// Bytes of a JoinReply body without its reason.
const JOIN_REPLY_FIXED_BYTES: u64 = 7;
/// Bytes of an accepted JoinReply's facts before the bootstrap ids and the member list.
const JOIN_FACTS_FIXED_BYTES: u64 = 32;

/// Header bytes the checksum covers before the body: everything in front of the checksum.
const HEADER_CHECKED_BYTES: usize = 12;
/// Bytes of a Hello body.
const HELLO_BYTES: usize = 26;
/// Bytes of a HelloReply body without its reason.
const HELLO_REPLY_FIXED_BYTES: u64 = 5;
/// Bytes of a Messages body before its messages: the count.
const MESSAGES_FIXED_BYTES: u64 = 4;
/// Bytes of a message's fixed part, before the context.
const MESSAGE_HEAD_BYTES: usize = 74;
/// Bytes of a message without context, entries or snapshot.
const MESSAGE_FIXED_BYTES: u64 = 82;
/// Bytes of an entry's fixed part, before its data.
const ENTRY_HEAD_BYTES: usize = 21;
/// Bytes of a snapshot without member ids and data.
const SNAPSHOT_FIXED_BYTES: u64 = 37;
/// Bytes of a member id in a conf state.
const MEMBER_ID_BYTES: u64 = 8;

const FLAG_REJECT: u8 = 1;
const FLAG_SNAPSHOT: u8 = 2;
const FLAGS_KNOWN: u8 = FLAG_REJECT | FLAG_SNAPSHOT;

/// The largest `frame_bytes_max` [`WireLimits::validate`] accepts: a decoder buffers one
/// whole frame, so the bound is memory per connection.
pub const FRAME_BYTES_MAX_LIMIT: u32 = 1 << 30;
/// When the decoder is empty and its buffer has grown past this (after a large frame), the
/// buffer is released, so that an idle connection does not pin a frame's worth of memory.
const IDLE_BUFFER_BYTES_MAX: usize = 1 << 20;

// Lengths read from the wire are u32 and widened to usize for slicing; that needs at least
// 32-bit pointers. Encoded sizes are summed in u64, which holds any usize.
const _: () = assert!(usize::BITS >= 32 && usize::BITS <= 64);
const _: () = assert!(MESSAGE_FIXED_BYTES == MESSAGE_HEAD_BYTES as u64 + 8);
// Every member list fits a JoinReply (see JOIN_MEMBER_LIST_BYTES_MAX's doc), and the
// largest reply fits the default frame.
const _: () = assert!(
    crate::members::MEMBERS_MAX * (8 + 1 + 1 + crate::members::NAME_BYTES_MAX + 1 + 47) + 11
        <= JOIN_MEMBER_LIST_BYTES_MAX as usize
);
const _: () = assert!(
    JOIN_REPLY_FIXED_BYTES
        + DEFAULT_REASON_BYTES_MAX as u64
        + JOIN_FACTS_FIXED_BYTES
        + DEFAULT_VOTERS_MAX as u64 * MEMBER_ID_BYTES
        + JOIN_MEMBER_LIST_BYTES_MAX as u64
        <= DEFAULT_FRAME_BYTES_MAX as u64
);

/// Bounds on every length and count in a frame. Both sides of a connection should use the
/// same limits: the encoder refuses what the decoder would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// The largest frame body, in bytes; also the most a decoder buffers for one frame.
    /// A message, including its snapshot, must fit in one frame. Default 16 MiB.
    pub frame_bytes_max: u32,
    /// The most messages in one frame; a larger batch is split. Default 16384.
    pub messages_per_frame_max: u32,
    /// The most entries in one message. Default 65536.
    pub entries_per_message_max: u32,
    /// The largest entry payload, in bytes. Default 8 MiB.
    pub entry_bytes_max: u32,
    /// The largest message context, in bytes. Default 64 KiB.
    pub context_bytes_max: u32,
    /// The longest refusal reason in a HelloReply, in bytes; the encoder cuts longer ones.
    /// Default 1 KiB.
    pub reason_bytes_max: u32,
    /// The longest member list in a conf state (voters, learners, outgoing voters and next
    /// learners each). Default 1024.
    pub voters_max: u32,
    /// The most data bytes in one snapshot chunk. Default 1 MiB (a shard's
    /// `chunk_bytes_max` must not exceed it).
    pub snapshot_chunk_bytes_max: u32,
}

const DEFAULT_FRAME_BYTES_MAX: u32 = 16 << 20;
const DEFAULT_ENTRY_BYTES_MAX: u32 = 8 << 20;
const DEFAULT_CONTEXT_BYTES_MAX: u32 = 64 << 10;
const DEFAULT_REASON_BYTES_MAX: u32 = 1 << 10;
// The default voters_max.
const DEFAULT_VOTERS_MAX: u32 = 1 << 10;
const DEFAULT_SNAPSHOT_CHUNK_BYTES_MAX: u32 = 1 << 20;
// The defaults pass `validate`: the largest entry, the largest context and the longest
// reason each fit in a frame.
const _: () = assert!(
    (DEFAULT_ENTRY_BYTES_MAX as u64)
        + MESSAGES_FIXED_BYTES
        + MESSAGE_FIXED_BYTES
        + ENTRY_HEAD_BYTES as u64
        <= DEFAULT_FRAME_BYTES_MAX as u64
);
const _: () = assert!(
    (DEFAULT_CONTEXT_BYTES_MAX as u64) + MESSAGES_FIXED_BYTES + MESSAGE_FIXED_BYTES
        <= DEFAULT_FRAME_BYTES_MAX as u64
);
const _: () = assert!(DEFAULT_FRAME_BYTES_MAX <= FRAME_BYTES_MAX_LIMIT);
const _: () = assert!(
    (DEFAULT_SNAPSHOT_CHUNK_BYTES_MAX as u64) + SNAPSHOT_CHUNK_FIXED_BYTES as u64
        <= DEFAULT_FRAME_BYTES_MAX as u64
);

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            frame_bytes_max: DEFAULT_FRAME_BYTES_MAX,
            messages_per_frame_max: 16 << 10,
            entries_per_message_max: 64 << 10,
            entry_bytes_max: DEFAULT_ENTRY_BYTES_MAX,
            context_bytes_max: DEFAULT_CONTEXT_BYTES_MAX,
            reason_bytes_max: DEFAULT_REASON_BYTES_MAX,
            voters_max: DEFAULT_VOTERS_MAX,
            snapshot_chunk_bytes_max: DEFAULT_SNAPSHOT_CHUNK_BYTES_MAX,
        }
    }
}

impl WireLimits {
    /// Checks that every limit is positive, that `frame_bytes_max` is at most
    /// [`FRAME_BYTES_MAX_LIMIT`], and that a frame can hold a message with the largest
    /// entry, a message with the largest context, and a reply with the longest reason.
    pub fn validate(&self) -> Result<(), WireError> {
        let named = [
            ("frame_bytes_max", self.frame_bytes_max),
            ("messages_per_frame_max", self.messages_per_frame_max),
            ("entries_per_message_max", self.entries_per_message_max),
            ("entry_bytes_max", self.entry_bytes_max),
            ("context_bytes_max", self.context_bytes_max),
            ("reason_bytes_max", self.reason_bytes_max),
            ("voters_max", self.voters_max),
            ("snapshot_chunk_bytes_max", self.snapshot_chunk_bytes_max),
        ];
        for (name, value) in named {
            if value == 0 {
                return Err(WireError::InvalidLimits(format!("{name} must be positive")));
            }
        }
        if self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(WireError::InvalidLimits(format!(
                "frame_bytes_max ({}) exceeds {FRAME_BYTES_MAX_LIMIT}",
                self.frame_bytes_max
            )));
        }
        let frame = u64::from(self.frame_bytes_max);
        let needs = [
            (
                "entry_bytes_max",
                u64::from(self.entry_bytes_max)
                    + MESSAGES_FIXED_BYTES
                    + MESSAGE_FIXED_BYTES
                    + widen64(ENTRY_HEAD_BYTES),
            ),
            (
                "context_bytes_max",
                u64::from(self.context_bytes_max) + MESSAGES_FIXED_BYTES + MESSAGE_FIXED_BYTES,
            ),
            (
                "reason_bytes_max",
                u64::from(self.reason_bytes_max) + HELLO_REPLY_FIXED_BYTES,
            ),
            (
                "snapshot_chunk_bytes_max",
                u64::from(self.snapshot_chunk_bytes_max) + widen64(SNAPSHOT_CHUNK_FIXED_BYTES),
            ),
        ];
        for (name, bytes) in needs {
            if bytes > frame {
                return Err(WireError::InvalidLimits(format!(
                    "a frame holding the largest {name} needs {bytes} bytes, \
                     more than frame_bytes_max ({frame})"
                )));
            }
        }
        Ok(())
    }
}

/// What can be wrong with bytes from a peer, or with what this member tried to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame did not start with [`MAGIC`]: the peer speaks another protocol, or a frame
    /// boundary was lost.
    #[error(
        "bad magic 0x{found:08x} (expected 0x{:08x})",
        u32::from_be_bytes(MAGIC)
    )]
    BadMagic {
        /// The first four bytes of the frame, read in byte order.
        found: u32,
    },
    /// A frame of a wire version this build does not speak.
    #[error("unsupported wire version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version in the frame header.
        found: u16,
        /// [`WIRE_VERSION`].
        supported: u16,
    },
    /// The reserved header byte is not zero.
    #[error("reserved header byte is {found}, not zero")]
    ReservedByte {
        /// Its value.
        found: u8,
    },
    /// A frame header announces a body longer than `frame_bytes_max`.
    #[error("frame body of {bytes} bytes exceeds frame_bytes_max ({max})")]
    FrameTooLarge {
        /// The announced body length.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// The frame's checksum does not match its header and body.
    #[error(
        "checksum mismatch in a frame of kind {kind} with a {body_bytes}-byte body: \
         stored 0x{stored:08x}, computed 0x{computed:08x}"
    )]
    ChecksumMismatch {
        /// The frame kind in the header (itself unverified).
        kind: u8,
        /// The body length in the header.
        body_bytes: u32,
        /// The checksum in the header.
        stored: u32,
        /// The checksum of what arrived.
        computed: u32,
    },
    /// A verified frame of a kind this build does not know (including the reserved ones).
    #[error("unknown frame kind {kind}")]
    UnknownFrameKind {
        /// The kind.
        kind: u8,
    },
    /// A message whose type code is not one of [`MessageType`]'s.
    #[error("message type {found} unknown")]
    UnknownMessageType {
        /// The code.
        found: u8,
    },
    /// An entry whose type code is not one of [`EntryType`]'s.
    #[error("entry type {found} unknown")]
    UnknownEntryType {
        /// The code.
        found: u8,
    },
    /// A flag or boolean byte with bits this version does not define.
    #[error("invalid {what} 0x{found:02x}")]
    InvalidByte {
        /// Which byte.
        what: &'static str,
        /// Its value.
        found: u8,
    },
    /// A length or count above its limit in [`WireLimits`].
    #[error("{found} {what} exceed {limit} ({max})")]
    LimitExceeded {
        /// What was counted, plural: "entries", "context bytes", "voters" ...
        what: &'static str,
        /// How many there were (or were announced).
        found: u64,
        /// The name of the limit in [`WireLimits`].
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
    /// A field or an announced length runs past the end of the frame body.
    #[error("frame body too short: {needed} bytes of {what} but only {remaining} left")]
    Truncated {
        /// The field, or the items a count announced.
        what: &'static str,
        /// Bytes it needs (at least).
        needed: u64,
        /// Bytes left in the body.
        remaining: u64,
    },
    /// A frame body longer than its content.
    #[error("{count} bytes left over after the content of a frame of kind {kind}")]
    TrailingBytes {
        /// The frame kind.
        kind: u8,
        /// The unread bytes.
        count: u64,
    },
    /// A string field that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        what: &'static str,
    },
    /// One message that does not fit in a frame on its own (the encoder's error). Its group
    /// cannot make progress until the limits or the message change.
    #[error(
        "a {msg_type:?} message of group {group_id} encodes to {bytes} bytes, \
         more than a frame of frame_bytes_max ({max}) holds"
    )]
    MessageTooLarge {
        /// The message's group.
        group_id: u64,
        /// The message's type.
        msg_type: MessageType,
        /// The frame body it would need.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// [`WireLimits`] that cannot work.
    #[error("invalid wire limits: {0}")]
    InvalidLimits(String),
    /// A snapshot chunk with no data, or with data beyond the file it announces.
    #[error(
        "snapshot chunk of {len} bytes at offset {offset} does not fit its file of {total} bytes \
         (or is empty)"
    )]
    BadSnapshotChunk {
        /// The chunk's offset.
        offset: u64,
        /// Its data length.
        len: u64,
        /// The announced size of the file.
        total: u64,
    },
}

/// The dialer's first frame: who it is and whom it means to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The wire version the dialer speaks.
    pub wire_version: u16,
    /// The cluster the dialer belongs to.
    pub cluster_id: u64,
    /// The dialer's member id; never zero.
    pub from_member: NodeId,
    /// The member the dialer means to reach.
    pub to_member: NodeId,
}

/// The acceptor's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// Whether the connection may carry messages. After a refusal the acceptor closes it.
    pub accepted: bool,
    /// Why the dialer was refused, for its log; empty when accepted.
    pub reason: String,
}

/// A starting member's request to join the cluster (see the module doc): its first frame
/// in place of a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// The body version the joiner speaks ([`JOIN_VERSION`]).
    pub join_version: u16,
    /// The joiner's name (`--name`), at most [`crate::members::NAME_BYTES_MAX`] bytes.
    pub name: String,
    /// Where the joiner listens for peers (its `--initial-cluster` entry), which the member
    /// list must hold: a member is found by its peer address, as etcd finds it.
    pub peer: SocketAddr,
}

/// What a running member answers a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinReply {
    /// Refused for good; the reason names what is wrong (for the joiner's error).
    Refused(String),
    /// The member cannot answer yet (it has not read the member list, say): ask again.
    NotNow(String),
    /// Welcome: what the joiner needs to start.
    Accepted(JoinFacts),
}

/// What a joiner learns from an accepting [`JoinReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinFacts {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The joiner's member id.
    pub member_id: NodeId,
    /// Raft groups of the cluster.
    pub groups: u32,
    /// Shards of every member.
    pub shards: u32,
    /// Every group's voters at creation, which a new replica of a group starts from.
    pub bootstrap: Vec<NodeId>,
    /// The member list, encoded as group 0 holds it (`crate::members::MemberList`).
    pub member_list: Vec<u8>,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`HelloReply`].
    HelloReply(HelloReply),
    /// Raft messages of any groups, in the order they were encoded.
    Messages(Vec<Message>),
    /// A piece of a snapshot transfer.
    SnapshotChunk(SnapshotChunk),
    /// See [`JoinRequest`].
    JoinRequest(JoinRequest),
    /// See [`JoinReply`].
    JoinReply(JoinReply),
}

impl Hello {
    /// A hello from `from_member` of cluster `cluster_id` to `to_member`, speaking
    /// [`WIRE_VERSION`].
    pub fn new(cluster_id: u64, from_member: NodeId, to_member: NodeId) -> Hello {
        Hello {
            wire_version: WIRE_VERSION,
            cluster_id,
            from_member,
            to_member,
        }
    }

    /// The reply of member `member_id` of cluster `cluster_id` to this hello: refused when
    /// the dialer speaks another version, belongs to another cluster, means another member,
    /// or claims id zero or the acceptor's own id. Whether `from_member` is a member at all
    /// is for the caller, which knows the membership.
    pub fn answer(&self, cluster_id: u64, member_id: NodeId) -> HelloReply {
        if self.wire_version != WIRE_VERSION {
            return HelloReply::refuse(format!(
                "dialer speaks wire version {}, member {member_id} speaks {WIRE_VERSION}",
                self.wire_version
            ));
        }
        if self.cluster_id != cluster_id {
            return HelloReply::refuse(format!(
                "dialer belongs to cluster {:#018x}, member {member_id} to cluster {cluster_id:#018x}",
                self.cluster_id
            ));
        }
        if self.to_member != member_id {
            return HelloReply::refuse(format!(
                "dialer means member {}, but this is member {member_id}",
                self.to_member
            ));
        }
        if self.from_member == 0 || self.from_member == member_id {
            return HelloReply::refuse(format!(
                "dialer claims member id {}, which is zero or member {member_id}'s own",
                self.from_member
            ));
        }
        HelloReply::accept()
    }
}

impl HelloReply {
    /// An accepting reply.
    pub fn accept() -> HelloReply {
        HelloReply {
            accepted: true,
            reason: String::new(),
        }
    }

    /// A refusal with a reason for the dialer's log.
    pub fn refuse(reason: impl Into<String>) -> HelloReply {
        HelloReply {
            accepted: false,
            reason: reason.into(),
        }
    }
}

/// Appends frames to a buffer. Encoding allocates nothing beyond growing that buffer, once
/// per frame.
#[derive(Clone, Debug)]
pub struct FrameEncoder {
    limits: WireLimits,
}

impl FrameEncoder {
    /// An encoder that keeps within `limits`, which must pass [`WireLimits::validate`].
    pub fn new(limits: WireLimits) -> Result<FrameEncoder, WireError> {
        limits.validate()?;
        Ok(FrameEncoder { limits })
    }

    /// The limits this encoder keeps within.
    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// Appends a [`Hello`] frame.
    pub fn encode_hello(&self, hello: &Hello, out: &mut Vec<u8>) {
        let mut body = [0u8; HELLO_BYTES];
        body[0..2].copy_from_slice(&hello.wire_version.to_le_bytes());
        body[2..10].copy_from_slice(&hello.cluster_id.to_le_bytes());
        body[10..18].copy_from_slice(&hello.from_member.to_le_bytes());
        body[18..26].copy_from_slice(&hello.to_member.to_le_bytes());
        let start = begin_frame(out, FRAME_KIND_HELLO, widen64(HELLO_BYTES));
        out.extend_from_slice(&body);
        finish_frame(out, start);
    }

    /// Appends a [`HelloReply`] frame. A reason longer than `reason_bytes_max` is cut at the
    /// last character boundary within it: a refusal must still go out.
    pub fn encode_hello_reply(&self, reply: &HelloReply, out: &mut Vec<u8>) {
        let mut end = reply.reason.len().min(widen(self.limits.reason_bytes_max));
        while !reply.reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reply.reason.as_bytes()[..end];
        let start = begin_frame(
            out,
            FRAME_KIND_HELLO_REPLY,
            HELLO_REPLY_FIXED_BYTES + widen64(end),
        );
        out.push(u8::from(reply.accepted));
        put_len(out, reason.len());
        out.extend_from_slice(reason);
        finish_frame(out, start);
    }

    /// Appends a [`JoinRequest`] frame; refuses (appending nothing) a name longer than
    /// [`crate::members::NAME_BYTES_MAX`].
    pub fn encode_join_request(
        &self,
        request: &JoinRequest,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let name = request.name.as_bytes();
        check_limit(
            widen64(name.len()),
            "name bytes",
            "NAME_BYTES_MAX",
            u32::try_from(crate::members::NAME_BYTES_MAX).unwrap_or(u32::MAX),
        )?;
        let peer = request.peer.to_string();
        check_limit(
            widen64(peer.len()),
            "peer address bytes",
            "JOIN_PEER_BYTES_MAX",
            u32::try_from(JOIN_PEER_BYTES_MAX).unwrap_or(u32::MAX),
        )?;
        let body = 2 + 1 + widen64(name.len()) + 1 + widen64(peer.len());
        let start = begin_frame(out, FRAME_KIND_JOIN_REQUEST, body);
        out.extend_from_slice(&request.join_version.to_le_bytes());
        for text in [name, peer.as_bytes()] {
            out.push(u8::try_from(text.len()).expect("checked against its limit above"));
            out.extend_from_slice(text);
        }
        finish_frame(out, start);
        Ok(())
    }

    /// Appends a [`JoinReply`] frame. A reason longer than `reason_bytes_max` is cut (a
    /// refusal must still go out); facts with more bootstrap ids than `voters_max` or a
    /// member list longer than [`JOIN_MEMBER_LIST_BYTES_MAX`] are refused (appending
    /// nothing).
    pub fn encode_join_reply(&self, reply: &JoinReply, out: &mut Vec<u8>) -> Result<(), WireError> {
        let (status, reason, facts) = match reply {
            JoinReply::Refused(r) => (0u8, r.as_str(), None),
            JoinReply::Accepted(f) => (1, "", Some(f)),
            JoinReply::NotNow(r) => (2, r.as_str(), None),
        };
        let mut end = reason.len().min(widen(self.limits.reason_bytes_max));
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason.as_bytes()[..end];
        let mut body = JOIN_REPLY_FIXED_BYTES + widen64(reason.len());
        if let Some(f) = facts {
            check_limit(
                widen64(f.bootstrap.len()),
                "bootstrap voters",
                "voters_max",
                self.limits.voters_max,
            )?;
            check_limit(
                widen64(f.member_list.len()),
                "member list bytes",
                "JOIN_MEMBER_LIST_BYTES_MAX",
                JOIN_MEMBER_LIST_BYTES_MAX,
            )?;
            body += JOIN_FACTS_FIXED_BYTES
                + widen64(f.bootstrap.len()) * MEMBER_ID_BYTES
                + widen64(f.member_list.len());
        }
        if body > u64::from(self.limits.frame_bytes_max) {
            return Err(WireError::FrameTooLarge {
                bytes: body,
                max: self.limits.frame_bytes_max,
            });
        }
        let start = begin_frame(out, FRAME_KIND_JOIN_REPLY, body);
        out.extend_from_slice(&JOIN_VERSION.to_le_bytes());
        out.push(status);
        put_len(out, reason.len());
        out.extend_from_slice(reason);
        if let Some(f) = facts {
            out.extend_from_slice(&f.cluster_id.to_le_bytes());
            out.extend_from_slice(&f.member_id.to_le_bytes());
            out.extend_from_slice(&f.groups.to_le_bytes());
            out.extend_from_slice(&f.shards.to_le_bytes());
            put_len(out, f.bootstrap.len());
            for id in &f.bootstrap {
                out.extend_from_slice(&id.to_le_bytes());
            }
            put_len(out, f.member_list.len());
            out.extend_from_slice(&f.member_list);
        }
        finish_frame(out, start);
        Ok(())
    }

    /// The bytes `msg` takes in a Messages frame body, after checking it against the limits.
    /// A transport calls this when it queues a message, so that a message no frame can
    /// carry is dropped and reported at once instead of failing a whole flush.
    pub fn message_bytes(&self, msg: &Message) -> Result<u64, WireError> {
        let limits = &self.limits;
        let context = widen64(msg.context.len());
        check_limit(
            context,
            "context bytes",
            "context_bytes_max",
            limits.context_bytes_max,
        )?;
        let count = widen64(msg.entries.len());
        check_limit(
            count,
            "entries",
            "entries_per_message_max",
            limits.entries_per_message_max,
        )?;
        let mut bytes = MESSAGE_FIXED_BYTES + context + count * widen64(ENTRY_HEAD_BYTES);
        for entry in &msg.entries {
            let data = widen64(entry.data.len());
            check_limit(
                data,
                "entry bytes",
                "entry_bytes_max",
                limits.entry_bytes_max,
            )?;
            bytes += data;
        }
        if let Some(snapshot) = &msg.snapshot {
            let conf = &snapshot.metadata.conf_state;
            let lists = [
                ("voters", conf.voters.len()),
                ("learners", conf.learners.len()),
                ("outgoing voters", conf.voters_outgoing.len()),
                ("next learners", conf.learners_next.len()),
            ];
            let mut ids = 0u64;
            for (what, len) in lists {
                check_limit(widen64(len), what, "voters_max", limits.voters_max)?;
                ids += widen64(len);
            }
            bytes = bytes
                .saturating_add(SNAPSHOT_FIXED_BYTES + ids * MEMBER_ID_BYTES)
                .saturating_add(widen64(snapshot.data.len()));
        }
        let frame_body = bytes.saturating_add(MESSAGES_FIXED_BYTES);
        if frame_body > u64::from(limits.frame_bytes_max) {
            return Err(WireError::MessageTooLarge {
                group_id: msg.group_id,
                msg_type: msg.msg_type,
                bytes: frame_body,
                max: limits.frame_bytes_max,
            });
        }
        Ok(bytes)
    }

    /// Appends a SnapshotChunk frame; refuses (appending nothing) a chunk with no data,
    /// more data than `snapshot_chunk_bytes_max`, or data beyond its announced total.
    pub fn encode_snapshot_chunk(
        &self,
        chunk: &SnapshotChunk,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let len = widen64(chunk.data.len());
        check_limit(
            len,
            "snapshot chunk bytes",
            "snapshot_chunk_bytes_max",
            self.limits.snapshot_chunk_bytes_max,
        )?;
        check_chunk_extent(chunk.offset, len, chunk.total_bytes)?;
        let start = begin_frame(
            out,
            FRAME_KIND_SNAPSHOT_CHUNK,
            widen64(SNAPSHOT_CHUNK_FIXED_BYTES) + len,
        );
        for v in [
            chunk.group_id,
            chunk.to,
            chunk.from,
            chunk.term,
            chunk.index,
            chunk.snapshot_term,
            chunk.total_bytes,
            chunk.offset,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_len(out, chunk.data.len());
        out.extend_from_slice(&chunk.data);
        finish_frame(out, start);
        Ok(())
    }

    /// Appends `msgs` as Messages frames, as many as fit in each frame (by
    /// `frame_bytes_max` and `messages_per_frame_max`), in order, and returns how many frames
    /// it appended (none for no messages). If a message breaks a limit
    /// ([`FrameEncoder::message_bytes`]), it appends nothing and returns that error.
    pub fn encode_messages(&self, msgs: &[Message], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let original = out.len();
        let frame_max = u64::from(self.limits.frame_bytes_max);
        let per_frame_max = widen(self.limits.messages_per_frame_max);
        let mut frames = 0;
        let mut first = 0;
        while first < msgs.len() {
            // Gather the messages of one frame; `message_bytes` guarantees that the first
            // one fits on its own.
            let mut body = MESSAGES_FIXED_BYTES;
            let mut end = first;
            while end < msgs.len() && end - first < per_frame_max {
                let bytes = match self.message_bytes(&msgs[end]) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        out.truncate(original);
                        return Err(e);
                    }
                };
                if body + bytes > frame_max {
                    break;
                }
                body += bytes;
                end += 1;
            }
            debug_assert!(end > first, "a checked message fits in a frame on its own");
            let start = begin_frame(out, FRAME_KIND_MESSAGES, body);
            put_len(out, end - first);
            for msg in &msgs[first..end] {
                put_message(msg, out);
            }
            finish_frame(out, start);
            frames += 1;
            first = end;
        }
        Ok(frames)
    }
}

/// Reassembles frames from the bytes of one connection as they arrive.
///
/// Feed it what each read returned with [`FrameDecoder::extend`], then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. Drained that way, it holds at
/// most one incomplete frame — whose header already passed the checks, so at most
/// [`HEADER_BYTES`] + `frame_bytes_max` bytes — plus the bytes of the next read. After an
/// error the connection is to be closed; the decoder returns the same error from then on.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: WireLimits,
    buf: Vec<u8>,
    /// Where the first unconsumed byte of `buf` is.
    pos: usize,
    failed: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder that refuses whatever breaks `limits`, which must pass
    /// [`WireLimits::validate`].
    pub fn new(limits: WireLimits) -> Result<FrameDecoder, WireError> {
        limits.validate()?;
        Ok(FrameDecoder {
            limits,
            buf: Vec::new(),
            pos: 0,
            failed: None,
        })
    }

    /// Appends bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        // Exact growth keeps the buffer's capacity at what it holds: the frame being
        // received already has its whole length reserved (see `decode_next`), so only a read
        // that runs past it grows the buffer, and only by that read.
        self.buf.reserve_exact(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes of memory the buffer holds, for a connection's memory accounting. Drained after
    /// every read, it stays within [`HEADER_BYTES`] + `frame_bytes_max` plus the largest
    /// read.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next complete frame, or `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decode_next() {
            Ok(Some(frame)) => Ok(Some(frame)),
            Ok(None) => {
                self.compact();
                Ok(None)
            }
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.pos = 0;
                Err(e)
            }
        }
    }

    fn decode_next(&mut self) -> Result<Option<Frame>, WireError> {
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let header = parse_header(header, &self.limits)?;
        let total = HEADER_BYTES + widen(header.body_len);
        let Some(body) = avail.get(HEADER_BYTES..total) else {
            // The header passed its checks, so the frame's length is bounded: make room for
            // all of it at once rather than growing the buffer read by read.
            let missing = total - avail.len();
            self.compact();
            self.buf.reserve_exact(missing);
            return Ok(None);
        };
        let computed = checksum(&avail[..HEADER_CHECKED_BYTES], body);
        if computed != header.crc {
            return Err(WireError::ChecksumMismatch {
                kind: header.kind,
                body_bytes: header.body_len,
                stored: header.crc,
                computed,
            });
        }
        let frame = decode_body(header.kind, body, &self.limits)?;
        self.pos += total;
        Ok(Some(frame))
    }

    /// Moves the incomplete frame, if any, to the front of the buffer. Called only when no
    /// complete frame is left, so it moves less than one frame, once per read.
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > IDLE_BUFFER_BYTES_MAX {
                self.buf = Vec::new();
            }
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
    }
}

struct Header {
    kind: u8,
    body_len: u32,
    crc: u32,
}

fn parse_header(h: &[u8; HEADER_BYTES], limits: &WireLimits) -> Result<Header, WireError> {
    if h[0..4] != MAGIC {
        return Err(WireError::BadMagic {
            found: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion {
            found: version,
            supported: WIRE_VERSION,
        });
    }
    if h[7] != 0 {
        return Err(WireError::ReservedByte { found: h[7] });
    }
    let body_len = le_u32(h, 8);
    if body_len > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            bytes: u64::from(body_len),
            max: limits.frame_bytes_max,
        });
    }
    Ok(Header {
        kind: h[6],
        body_len,
        crc: le_u32(h, 12),
    })
}

fn decode_body(kind: u8, body: &[u8], limits: &WireLimits) -> Result<Frame, WireError> {
    let mut r = Reader { rest: body };
    let frame = match kind {
        FRAME_KIND_HELLO => {
            let b = r.fixed::<HELLO_BYTES>("hello")?;
            Frame::Hello(Hello {
                wire_version: u16::from_le_bytes([b[0], b[1]]),
                cluster_id: le_u64(b, 2),
                from_member: le_u64(b, 10),
                to_member: le_u64(b, 18),
            })
        }
        FRAME_KIND_HELLO_REPLY => {
            let accepted = read_bool(&mut r, "hello reply accepted byte")?;
            let reason = read_reason(&mut r, limits)?;
            Frame::HelloReply(HelloReply { accepted, reason })
        }
        FRAME_KIND_MESSAGES => {
            let count = r.count(
                "messages",
                "messages_per_frame_max",
                limits.messages_per_frame_max,
                MESSAGE_FIXED_BYTES,
            )?;
            let mut msgs = Vec::with_capacity(count);
            for _ in 0..count {
                msgs.push(read_message(&mut r, limits)?);
            }
            Frame::Messages(msgs)
        }
        FRAME_KIND_SNAPSHOT_CHUNK => {
            let h = r.fixed::<64>("snapshot chunk header")?;
            let len = r.count(
                "snapshot chunk bytes",
                "snapshot_chunk_bytes_max",
                limits.snapshot_chunk_bytes_max,
                1,
            )?;
            let data = r.bytes(len, "snapshot chunk bytes")?;
            let (total_bytes, offset) = (le_u64(h, 48), le_u64(h, 56));
            check_chunk_extent(offset, widen64(len), total_bytes)?;
            Frame::SnapshotChunk(SnapshotChunk {
                group_id: le_u64(h, 0),
                to: le_u64(h, 8),
                from: le_u64(h, 16),
                term: le_u64(h, 24),
                index: le_u64(h, 32),
                snapshot_term: le_u64(h, 40),
                total_bytes,
                offset,
                data: data.to_vec(),
            })
        }
        FRAME_KIND_JOIN_REQUEST => Frame::JoinRequest(read_join_request(&mut r)?),
        FRAME_KIND_JOIN_REPLY => Frame::JoinReply(read_join_reply(&mut r, limits)?),
        _ => return Err(WireError::UnknownFrameKind { kind }),
    };
    if !r.rest.is_empty() {
        return Err(WireError::TrailingBytes {
            kind,
            count: widen64(r.rest.len()),
        });
    }
    Ok(frame)
}

/// A refusal reason: a `u32` length (at most `reason_bytes_max`), then UTF-8.
fn read_reason(r: &mut Reader<'_>, limits: &WireLimits) -> Result<String, WireError> {
    let len = r.count(
        "reason bytes",
        "reason_bytes_max",
        limits.reason_bytes_max,
        1,
    )?;
    std::str::from_utf8(r.bytes(len, "reason bytes")?)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8 { what: "reason" })
}

/// A one-byte length, then that many bytes of UTF-8 (at most `max`).
fn read_short_text(
    r: &mut Reader<'_>,
    what: &'static str,
    limit: &'static str,
    max: usize,
) -> Result<String, WireError> {
    let len = usize::from(r.fixed::<1>(what)?[0]);
    check_limit(
        widen64(len),
        what,
        limit,
        u32::try_from(max).unwrap_or(u32::MAX),
    )?;
    let bytes = r.bytes(len, what)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8 { what })
}

fn read_join_request(r: &mut Reader<'_>) -> Result<JoinRequest, WireError> {
    let join_version = u16::from_le_bytes(*r.fixed::<2>("join version")?);
    let name = read_short_text(
        r,
        "name bytes",
        "NAME_BYTES_MAX",
        crate::members::NAME_BYTES_MAX,
    )?;
    let peer = read_short_text(
        r,
        "peer address bytes",
        "JOIN_PEER_BYTES_MAX",
        JOIN_PEER_BYTES_MAX,
    )?;
    let peer = peer.parse().map_err(|_| WireError::InvalidByte {
        what: "join request peer address (not ip:port)",
        found: 0,
    })?;
    Ok(JoinRequest {
        join_version,
        name,
        peer,
    })
}

fn read_join_reply(r: &mut Reader<'_>, limits: &WireLimits) -> Result<JoinReply, WireError> {
    // The version and status come first in every join version: a reply of another version
    // is still read as far as its reason.
    let _version = u16::from_le_bytes(*r.fixed::<2>("join version")?);
    let status = r.fixed::<1>("join status")?[0];
    let reason = read_reason(r, limits)?;
    match status {
        0 => Ok(JoinReply::Refused(reason)),
        2 => Ok(JoinReply::NotNow(reason)),
        1 => {
            let h = r.fixed::<24>("join facts")?;
            let (cluster_id, member_id) = (le_u64(h, 0), le_u64(h, 8));
            let (groups, shards) = (le_u32(h, 16), le_u32(h, 20));
            let count = r.count(
                "bootstrap voters",
                "voters_max",
                limits.voters_max,
                MEMBER_ID_BYTES,
            )?;
            let bootstrap = (0..count)
                .map(|_| {
                    r.fixed::<8>("bootstrap voter")
                        .map(|b| u64::from_le_bytes(*b))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let len = r.count(
                "member list bytes",
                "JOIN_MEMBER_LIST_BYTES_MAX",
                JOIN_MEMBER_LIST_BYTES_MAX,
                1,
            )?;
            let member_list = r.bytes(len, "member list bytes")?.to_vec();
            Ok(JoinReply::Accepted(JoinFacts {
                cluster_id,
                member_id,
                groups,
                shards,
                bootstrap,
                member_list,
            }))
        }
        found => Err(WireError::InvalidByte {
            what: "join reply status",
            found,
        }),
    }
}

fn read_message(r: &mut Reader<'_>, limits: &WireLimits) -> Result<Message, WireError> {
    let h = r.fixed::<MESSAGE_HEAD_BYTES>("message header")?;
    let msg_type = message_type_from_code(h[8])?;
    let flags = h[9];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(WireError::InvalidByte {
            what: "message flags",
            found: flags,
        });
    }
    let context_len = r.count(
        "context bytes",
        "context_bytes_max",
        limits.context_bytes_max,
        1,
    )?;
    let context = r.bytes(context_len, "context bytes")?.to_vec();
    let entry_count = r.count(
        "entries",
        "entries_per_message_max",
        limits.entries_per_message_max,
        widen64(ENTRY_HEAD_BYTES),
    )?;
    let mut entries = Vec::with_capacity(entry_count);
    for _ in 0..entry_count {
        entries.push(read_entry(r, limits)?);
    }
    let snapshot = if flags & FLAG_SNAPSHOT != 0 {
        Some(read_snapshot(r, limits)?)
    } else {
        None
    };
    Ok(Message {
        group_id: le_u64(h, 0),
        msg_type,
        to: le_u64(h, 10),
        from: le_u64(h, 18),
        term: le_u64(h, 26),
        log_term: le_u64(h, 34),
        index: le_u64(h, 42),
        entries,
        commit: le_u64(h, 50),
        snapshot,
        reject: flags & FLAG_REJECT != 0,
        reject_hint: le_u64(h, 58),
        read_seq: le_u64(h, 66),
        context,
    })
}

fn read_entry(r: &mut Reader<'_>, limits: &WireLimits) -> Result<Entry, WireError> {
    let h = r.fixed::<ENTRY_HEAD_BYTES>("entry header")?;
    let entry_type = match h[16] {
        0 => EntryType::Normal,
        1 => EntryType::ConfChange,
        found => return Err(WireError::UnknownEntryType { found }),
    };
    let len = le_u32(h, 17);
    check_limit(
        u64::from(len),
        "entry bytes",
        "entry_bytes_max",
        limits.entry_bytes_max,
    )?;
    let data = r.bytes(widen(len), "entry bytes")?;
    Ok(Entry {
        term: le_u64(h, 0),
        index: le_u64(h, 8),
        entry_type,
        data: Arc::from(data),
    })
}

fn read_snapshot(r: &mut Reader<'_>, limits: &WireLimits) -> Result<Snapshot, WireError> {
    let h = r.fixed::<16>("snapshot header")?;
    let voters = read_ids(r, "voters", limits)?;
    let learners = read_ids(r, "learners", limits)?;
    let voters_outgoing = read_ids(r, "outgoing voters", limits)?;
    let learners_next = read_ids(r, "next learners", limits)?;
    let auto_leave = read_bool(r, "auto leave byte")?;
    // The snapshot's data is bounded by the frame alone: the body holding it is already in
    // memory, so its length is only checked against what is left.
    let len = u32::from_le_bytes(*r.fixed::<4>("snapshot bytes")?);
    let data = r.bytes(widen(len), "snapshot bytes")?.to_vec();
    Ok(Snapshot {
        metadata: SnapshotMetadata {
            index: le_u64(h, 0),
            term: le_u64(h, 8),
            conf_state: ConfState {
                voters,
                learners,
                voters_outgoing,
                learners_next,
                auto_leave,
            },
        },
        data,
    })
}

fn read_ids(
    r: &mut Reader<'_>,
    what: &'static str,
    limits: &WireLimits,
) -> Result<Vec<NodeId>, WireError> {
    let count = r.count(what, "voters_max", limits.voters_max, MEMBER_ID_BYTES)?;
    let bytes = r.bytes(count * 8, what)?;
    Ok(bytes.chunks_exact(8).map(|id| le_u64(id, 0)).collect())
}

fn read_bool(r: &mut Reader<'_>, what: &'static str) -> Result<bool, WireError> {
    match r.fixed::<1>(what)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        found => Err(WireError::InvalidByte { what, found }),
    }
}

/// The unread part of a frame body. Every read checks the bytes left first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<&'a [u8; N], WireError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.truncated(what, widen64(N)));
        };
        self.rest = rest;
        Ok(head)
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if len > self.rest.len() {
            return Err(self.truncated(what, widen64(len)));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    /// Reads a `u32` count of items of at least `item_bytes` each, and checks it against
    /// `max` and against the bytes left before anyone allocates for the items.
    fn count(
        &mut self,
        what: &'static str,
        limit: &'static str,
        max: u32,
        item_bytes: u64,
    ) -> Result<usize, WireError> {
        let count = u32::from_le_bytes(*self.fixed::<4>(what)?);
        check_limit(u64::from(count), what, limit, max)?;
        let needed = u64::from(count) * item_bytes;
        if needed > widen64(self.rest.len()) {
            return Err(self.truncated(what, needed));
        }
        Ok(widen(count))
    }

    fn truncated(&self, what: &'static str, needed: u64) -> WireError {
        WireError::Truncated {
            what,
            needed,
            remaining: widen64(self.rest.len()),
        }
    }
}

/// A chunk holds data, and its data lies within the announced file.
fn check_chunk_extent(offset: u64, len: u64, total: u64) -> Result<(), WireError> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > total) {
        return Err(WireError::BadSnapshotChunk { offset, len, total });
    }
    Ok(())
}

fn check_limit(
    found: u64,
    what: &'static str,
    limit: &'static str,
    max: u32,
) -> Result<(), WireError> {
    if found > u64::from(max) {
        return Err(WireError::LimitExceeded {
            what,
            found,
            limit,
            max: u64::from(max),
        });
    }
    Ok(())
}

/// Appends a frame header whose checksum [`finish_frame`] fills in once the body follows,
/// and reserves room for the body. Returns where the frame starts.
fn begin_frame(out: &mut Vec<u8>, kind: u8, body_bytes: u64) -> usize {
    let body_len = u32::try_from(body_bytes).expect("bodies are checked against frame_bytes_max");
    out.reserve(HEADER_BYTES + widen(body_len));
    let start = out.len();
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    header[6] = kind;
    header[8..12].copy_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&header);
    start
}

fn finish_frame(out: &mut [u8], start: usize) {
    let (header, body) = out[start..].split_at_mut(HEADER_BYTES);
    debug_assert_eq!(
        widen64(body.len()),
        u64::from(le_u32(header, 8)),
        "the body matches the length begin_frame announced"
    );
    let crc = checksum(&header[..HEADER_CHECKED_BYTES], body);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(header_fields: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_fields);
    hasher.update(body);
    hasher.finalize()
}

fn put_message(msg: &Message, out: &mut Vec<u8>) {
    let mut h = [0u8; MESSAGE_HEAD_BYTES];
    h[0..8].copy_from_slice(&msg.group_id.to_le_bytes());
    h[8] = message_type_code(msg.msg_type);
    let mut flags = 0;
    if msg.reject {
        flags |= FLAG_REJECT;
    }
    if msg.snapshot.is_some() {
        flags |= FLAG_SNAPSHOT;
    }
    h[9] = flags;
    let fields = [
        msg.to,
        msg.from,
        msg.term,
        msg.log_term,
        msg.index,
        msg.commit,
        msg.reject_hint,
        msg.read_seq,
    ];
    for (i, value) in fields.into_iter().enumerate() {
        let at = 10 + 8 * i;
        h[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&h);
    put_len(out, msg.context.len());
    out.extend_from_slice(&msg.context);
    put_len(out, msg.entries.len());
    for entry in &msg.entries {
        let mut e = [0u8; ENTRY_HEAD_BYTES];
        e[0..8].copy_from_slice(&entry.term.to_le_bytes());
        e[8..16].copy_from_slice(&entry.index.to_le_bytes());
        e[16] = match entry.entry_type {
            EntryType::Normal => 0,
            EntryType::ConfChange => 1,
        };
        e[17..21].copy_from_slice(&len_u32(entry.data.len()).to_le_bytes());
        out.extend_from_slice(&e);
        out.extend_from_slice(&entry.data);
    }
    if let Some(snapshot) = &msg.snapshot {
        let meta = &snapshot.metadata;
        out.extend_from_slice(&meta.index.to_le_bytes());
        out.extend_from_slice(&meta.term.to_le_bytes());
        let conf = &meta.conf_state;
        for ids in [
            &conf.voters,
            &conf.learners,
            &conf.voters_outgoing,
            &conf.learners_next,
        ] {
            put_len(out, ids.len());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        out.push(u8::from(conf.auto_leave));
        put_len(out, snapshot.data.len());
        out.extend_from_slice(&snapshot.data);
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&len_u32(len).to_le_bytes());
}

/// A length the encoder already checked against a `u32` limit.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("lengths are checked against the limits before encoding")
}

fn message_type_code(t: MessageType) -> u8 {
    match t {
        MessageType::Append => 1,
        MessageType::AppendResponse => 2,
        MessageType::RequestVote => 3,
        MessageType::RequestVoteResponse => 4,
        MessageType::RequestPreVote => 5,
        MessageType::RequestPreVoteResponse => 6,
        MessageType::Snapshot => 7,
        MessageType::Heartbeat => 8,
        MessageType::HeartbeatResponse => 9,
        MessageType::TimeoutNow => 10,
        MessageType::Propose => 11,
        MessageType::ReadIndex => 12,
        MessageType::ReadIndexResponse => 13,
        MessageType::TransferLeader => 14,
    }
}

fn message_type_from_code(code: u8) -> Result<MessageType, WireError> {
    Ok(match code {
        1 => MessageType::Append,
        2 => MessageType::AppendResponse,
        3 => MessageType::RequestVote,
        4 => MessageType::RequestVoteResponse,
        5 => MessageType::RequestPreVote,
        6 => MessageType::RequestPreVoteResponse,
        7 => MessageType::Snapshot,
        8 => MessageType::Heartbeat,
        9 => MessageType::HeartbeatResponse,
        10 => MessageType::TimeoutNow,
        11 => MessageType::Propose,
        12 => MessageType::ReadIndex,
        13 => MessageType::ReadIndexResponse,
        14 => MessageType::TransferLeader,
        found => return Err(WireError::UnknownMessageType { found }),
    })
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Widens a length read from the wire; lossless, as pointers have at least 32 bits.
fn widen(n: u32) -> usize {
    n as usize
}

/// Widens an in-memory length for size arithmetic; lossless, as pointers have at most 64
/// bits.
fn widen64(n: usize) -> u64 {
    n as u64
}
