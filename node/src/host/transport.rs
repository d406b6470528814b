//! The transport seam: what a shard's host needs of the transport that carries its
//! messages to its peers.

use crate::consensus::{Message, NodeId};
use crate::shard::SnapshotChunk;
use crate::transport::{ChunkRefused, Transport};

/// What a shard's host needs of its peer transport: the sending side. The TCP
/// [`Transport`] is the production one, `sim::SimTransport` the simulated one. (Receiving
/// is the host's own business: the runtime awaits the TCP transport's `Inbound` queues,
/// the simulation hands over what its network delivers.)
///
/// The contract every implementation keeps (the TCP one's, in full, in
/// [`crate::transport::tcp`]):
/// - [`send`](PeerTransport::send) never blocks and never fails. A message that cannot go
///   (unknown or unreachable peer, full queue) is dropped and its `(peer, group)` reported
///   by [`take_unreachable`](PeerTransport::take_unreachable); raft retries what matters.
/// - Chunks of snapshot transfers to one peer arrive in the order they were sent, with at
///   most a few queued per peer ([`SNAPSHOT_CHUNKS_QUEUED_MAX`](crate::transport::SNAPSHOT_CHUNKS_QUEUED_MAX)
///   for TCP): [`send_snapshot_chunk`](PeerTransport::send_snapshot_chunk) refuses one more
///   as [`ChunkRefused::Busy`] (send it again later), and one to a peer it cannot reach as
///   [`ChunkRefused::Unreachable`] (abandon the transfer).
/// - Chunks lost once queued (a connection broke) are reported by
///   [`take_lost_snapshot_chunks`](PeerTransport::take_lost_snapshot_chunks): the owner
///   abandons those transfers.
///
/// Which peers a transport knows is not part of the seam: the runtime points its TCP
/// transport at the member list's addresses (`Transport::set_peer`, `remove_peer`), which
/// a simulation has none of; its network knows the members it connects.
pub trait PeerTransport {
    /// Queues a round's messages for their peers (by `to`).
    fn send(&self, messages: Vec<Message>);

    /// Whether a snapshot chunk to `to` would be queued now, or refused at once as
    /// unreachable, rather than refused as busy: checked before a chunk is read.
    fn snapshot_chunk_room(&self, to: NodeId) -> bool;

    /// Queues one chunk of a snapshot transfer for its peer (by `to`).
    fn send_snapshot_chunk(&self, chunk: SnapshotChunk) -> Result<(), ChunkRefused>;

    /// The `(peer, group)` pairs whose queued snapshot chunks were lost since the last
    /// call, each once, sorted.
    fn take_lost_snapshot_chunks(&self) -> Vec<(NodeId, u64)>;

    /// The `(peer, group)` pairs whose messages were dropped since the last call, each
    /// once, sorted.
    fn take_unreachable(&self) -> Vec<(NodeId, u64)>;
}

impl PeerTransport for Transport {
    fn send(&self, messages: Vec<Message>) {
        Transport::send(self, messages);
    }

    fn snapshot_chunk_room(&self, to: NodeId) -> bool {
        Transport::snapshot_chunk_room(self, to)
    }

    fn send_snapshot_chunk(&self, chunk: SnapshotChunk) -> Result<(), ChunkRefused> {
        Transport::send_snapshot_chunk(self, chunk)
    }

    fn take_lost_snapshot_chunks(&self) -> Vec<(NodeId, u64)> {
        Transport::take_lost_snapshot_chunks(self)
    }

    fn take_unreachable(&self) -> Vec<(NodeId, u64)> {
        Transport::take_unreachable(self)
    }
}
