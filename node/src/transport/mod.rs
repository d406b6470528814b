//! The peer transport: how members carry raft messages to each other.
//!
//! Today this holds the wire format ([`wire`]): frames, the handshake that keeps members of
//! different clusters apart, and the limits on every length, with an encoder and a streaming
//! decoder that do no I/O. The TCP connections that carry the frames (one per peer, every
//! group's messages batched per flush, bounded send queues, reconnects with backoff) are to
//! be built on top of it.

pub mod wire;

pub use wire::{
    Frame, FrameDecoder, FrameEncoder, Hello, HelloReply, WIRE_VERSION, WireError, WireLimits,
};
