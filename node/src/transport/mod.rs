//! The peer transport: how members carry raft messages to each other.
//!
//! - [`wire`]: the wire format, documented byte by byte: frames, the handshake that keeps
//!   members of different clusters apart, the limits on every length, an encoder and a
//!   streaming decoder that do no I/O.
//! - [`tcp`]: the [`Transport`] handle and the [`Inbound`] queue, with the transport's
//!   contract: TCP on tokio, one connection per peer, every group's messages batched per
//!   flush, bounded send queues that drop and report the peer unreachable when full. It is
//!   the production [`PeerTransport`](crate::host::PeerTransport) of a shard's host.
//! - `peer` (private): the outbound task of one peer: lazy dial, handshake, flushes,
//!   reconnects with exponential backoff and jitter.
//! - `listener` (private): the inbound side: the connection limit, the acceptor's half of
//!   the handshake, decoding and delivery with back-pressure.
//! - [`options`]: [`TransportOptions`], a named limit with a documented default for every
//!   queue, connection and wait.

mod listener;
pub mod options;
mod peer;
pub mod tcp;
pub mod wire;

pub use options::{JoinAnswers, TransportError, TransportOptions};
pub use tcp::{
    ChunkRefused, INBOUND_QUEUE_CHUNKS_MAX, Inbound, InboundChunks, SNAPSHOT_CHUNKS_QUEUED_MAX,
    Transport, TransportStats,
};
pub use wire::{
    Frame, FrameDecoder, FrameEncoder, Hello, HelloReply, JoinFacts, JoinReply, JoinRequest,
    WIRE_VERSION, WireError, WireLimits,
};
