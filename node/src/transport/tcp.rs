//! TCP between members: the handle the owner holds ([`Transport`]), the queue of received
//! messages it reads ([`Inbound`]), and the state the outbound (`peer`) and
//! inbound (`listener`) tasks share with it.
//!
//! # Contract
//!
//! - [`Transport::start`] binds the listening socket and spawns the listener on the tokio
//!   runtime it is called in. Every task the transport spawns is `Send` and is spawned with
//!   that runtime's handle, so any flavour works, including a shard thread's current-thread
//!   runtime (tokio's, or tokio-uring's, which runs tokio's inside it): there the tasks run
//!   on the shard thread between the owner's own awaits, and nothing ever blocks it.
//! - [`Transport::send`] never blocks and never fails. It routes each message by `to` to
//!   that peer's bounded send queue. A message it cannot queue — to an unknown member, too
//!   large for a frame, over the queue's bounds, or to a peer that is backing off after a
//!   failure — is dropped, counted, and its `(peer, group)` recorded for
//!   [`Transport::take_unreachable`]; raft retries what matters (heartbeats, appends after
//!   a probe), so a drop is never an error. Messages queued for a connection that then
//!   breaks are dropped and reported the same way.
//! - One outbound connection per peer, dialed lazily on the first message to it. Its writer
//!   takes everything queued at each flush, encodes it as few frames as the limits allow
//!   and writes them with one `write_all`: every group's messages to a peer share frames.
//! - [`Transport::send_snapshot_chunk`] queues one chunk of a snapshot transfer for its peer
//!   (at most [`SNAPSHOT_CHUNKS_QUEUED_MAX`] per peer; a flush writes the queued messages,
//!   then one chunk) and says why when it cannot: the queue is full (send it again later) or
//!   the peer is unreachable (abandon the transfer). Chunks lost with a broken connection
//!   (queued, or in the failed write) are reported through
//!   [`Transport::take_lost_snapshot_chunks`]: the owner abandons those transfers, and raft
//!   sends the snapshot again later. [`Transport::snapshot_chunk_room`] tells whether a
//!   chunk would be queued, before the owner reads one.
//! - Chunks arrive through [`Inbound::take_chunks`], in order per connection, through a
//!   queue of their own ([`INBOUND_QUEUE_CHUNKS_MAX`] chunks).
//! - Messages arrive through [`Inbound::recv`] in the order each connection carried them;
//!   there is no order between different peers. Its queue is bounded, and a full queue
//!   stops the connections reading (TCP back-pressure), never grows.
//! - Each received message's `to` is this member and its `from` the member the connection
//!   was opened by; a connection that breaks this, or sends bytes that do not decode, is
//!   closed (and logged with the peer's address), and only that connection.
//! - Logs go through `tracing`: refusals and broken connections at `warn`, failed dials at
//!   `debug` (a peer that is down would otherwise fill the log).
//!
//! # Use
//!
//! ```no_run
//! # async fn shard() -> Result<(), keel_node::transport::TransportError> {
//! use keel_node::transport::{Transport, TransportOptions};
//!
//! let mut options = TransportOptions::new(0x6b65_656c, 1, "127.0.0.1:7001".parse().unwrap());
//! options.peers.insert(2, "127.0.0.1:7002".parse().unwrap());
//! let (transport, mut inbound) = Transport::start(options).await?;
//! // Each round of the shard: hand over every group's outgoing messages at once ...
//! transport.send(Vec::new() /* the messages of every group's Ready */);
//! // ... step what arrived ...
//! while let Some(message) = inbound.try_recv() {
//!     let _ = message; // groups[message.group_id].step(message)
//! }
//! // ... and tell raft which peers lost messages, so it probes them instead of streaming.
//! for (peer, group) in transport.take_unreachable() {
//!     let _ = (peer, group); // groups[group].report_unreachable(peer)
//! }
//! transport.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Memory
//!
//! Per peer: its send queue (`send_queue_bytes_max`) plus the flush being written (at most
//! as much again, encoded). Per inbound connection: the decoder's buffer (one frame, at most
//! `frame_bytes_max` plus a read) and one decoded frame waiting for room in the inbound
//! queue. Over all: `inbound_queue_messages_max` received messages, and one
//! `(peer, group)` entry per pair that lost messages since the owner last asked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::consensus::{Message, NodeId};
use crate::shard::SnapshotChunk;

use super::listener;
use super::options::{TransportError, TransportOptions};
use super::peer;
use super::wire::FrameEncoder;

/// Snapshot chunks queued for one peer and not yet written, at most. With the wire's
/// `snapshot_chunk_bytes_max` (1 MiB by default), the memory one peer's transfers hold.
pub const SNAPSHOT_CHUNKS_QUEUED_MAX: usize = 2;
/// Received snapshot chunks waiting for [`InboundChunks::recv`], at most, over all
/// connections; a full queue stops the connection reading, like the message queue.
pub const INBOUND_QUEUE_CHUNKS_MAX: usize = 4;

/// Why [`Transport::send_snapshot_chunk`] did not queue a chunk; it is handed back.
#[derive(Debug)]
pub enum ChunkRefused {
    /// The peer's queue holds [`SNAPSHOT_CHUNKS_QUEUED_MAX`] chunks: send it again later.
    Busy(SnapshotChunk),
    /// The peer is unknown or backing off after a failure, or the chunk breaks the wire's
    /// limits: abandon the transfer.
    Unreachable(SnapshotChunk),
}

/// Where the inbound connections hand over what they received.
#[derive(Clone, Debug)]
pub(crate) struct InboundTx {
    pub(crate) messages: mpsc::Sender<Message>,
    pub(crate) chunks: mpsc::Sender<SnapshotChunk>,
}

/// Locks a mutex whose holders never leave its data half-changed, so a panic elsewhere
/// (which poisons it) is no reason to stop.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters of everything the transport did, read with [`Transport::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) handshakes_refused_by_peer: AtomicU64,
    pub(crate) inbound_accepted: AtomicU64,
    pub(crate) inbound_over_limit: AtomicU64,
    pub(crate) inbound_refused: AtomicU64,
    pub(crate) inbound_errors: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A snapshot of the transport's counters and queue depths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Messages written to peers.
    pub messages_sent: u64,
    /// Messages dropped: unknown peer, too large, queue full, peer backing off, or lost with
    /// a broken connection.
    pub messages_dropped: u64,
    /// Messages received and handed to [`Inbound`].
    pub messages_received: u64,
    /// Messages frames written (handshake frames not counted).
    pub frames_sent: u64,
    /// Bytes written by flushes.
    pub bytes_sent: u64,
    /// Messages frames received.
    pub frames_received: u64,
    /// Bytes read on established inbound connections.
    pub bytes_received: u64,
    /// Outbound connections established (handshake accepted).
    pub connects: u64,
    /// Dials that failed or timed out, and handshakes that broke off.
    pub connect_failures: u64,
    /// Outbound handshakes a peer refused.
    pub handshakes_refused_by_peer: u64,
    /// Inbound connections accepted by the handshake.
    pub inbound_accepted: u64,
    /// Inbound connections closed at once because `inbound_connections_max` were open.
    pub inbound_over_limit: u64,
    /// Inbound handshakes this member refused (other cluster, wrong member, unknown peer).
    pub inbound_refused: u64,
    /// Inbound connections closed on an error: bytes that do not decode, a timeout, a
    /// message not meant for this member.
    pub inbound_errors: u64,
    /// Messages queued for peers and not yet written, over all peers.
    pub queued_messages: u64,
    /// Bytes of those messages.
    pub queued_bytes: u64,
}

/// Whether an outbound link is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// Connected, or not yet dialed, or dialing: messages are queued.
    Open,
    /// Backing off after a failure: messages are dropped and reported.
    Down,
}

/// One peer's send queue, shared by [`Transport::send`] and the peer's task.
#[derive(Debug)]
pub(crate) struct SendQueue {
    pub(crate) msgs: Vec<Message>,
    /// Snapshot chunks, at most [`SNAPSHOT_CHUNKS_QUEUED_MAX`], in the order queued.
    pub(crate) chunks: std::collections::VecDeque<SnapshotChunk>,
    /// Encoded bytes of `msgs`; at most `send_queue_bytes_max`.
    pub(crate) bytes: u64,
    pub(crate) link: Link,
}

/// What the owner and one peer's task share.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    pub(crate) addr: Mutex<SocketAddr>,
    pub(crate) queue: Mutex<SendQueue>,
    /// Woken when messages are queued.
    pub(crate) wake: Notify,
    /// The peer's task, started on the first message.
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
}

/// What the owner and every task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: TransportOptions,
    pub(crate) encoder: FrameEncoder,
    pub(crate) peers: Mutex<BTreeMap<NodeId, Arc<Peer>>>,
    /// `(peer, group)` pairs that lost messages since the owner last asked. At most one
    /// entry per peer and group.
    pub(crate) unreachable: Mutex<BTreeSet<(NodeId, u64)>>,
    /// `(peer, group)` pairs whose snapshot chunks were lost with a broken connection since
    /// the owner last asked.
    pub(crate) chunks_lost: Mutex<BTreeSet<(NodeId, u64)>>,
    pub(crate) counters: Counters,
    /// Set to true once at shutdown; every task watches it.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Whether `id` is a current peer (may dial in).
    pub(crate) fn is_peer(&self, id: NodeId) -> bool {
        lock(&self.peers).contains_key(&id)
    }

    /// Records snapshot chunks of `groups` as lost on the way to `peer`.
    pub(crate) fn lose_chunks(&self, peer: NodeId, groups: impl IntoIterator<Item = u64>) {
        let mut lost = lock(&self.chunks_lost);
        for group in groups {
            lost.insert((peer, group));
        }
    }

    /// Records `msgs` as dropped on the way to `peer` and their groups as unreachable.
    pub(crate) fn drop_messages(&self, peer: NodeId, msgs: &[Message]) {
        self.drop_groups(peer, msgs.len(), msgs.iter().map(|m| m.group_id));
    }

    /// Records `count` messages of `groups` as dropped on the way to `peer`.
    pub(crate) fn drop_groups(
        &self,
        peer: NodeId,
        count: usize,
        groups: impl IntoIterator<Item = u64>,
    ) {
        if count == 0 {
            return;
        }
        bump(
            &self.counters.messages_dropped,
            u64::try_from(count).unwrap_or(u64::MAX),
        );
        let mut unreachable = lock(&self.unreachable);
        for group in groups {
            unreachable.insert((peer, group));
        }
    }
}

/// The owner's handle on the peer transport. See the [module doc](self) for the contract.
///
/// Dropping it stops every task without waiting; [`Transport::shutdown`] also waits.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    runtime: Handle,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    listener: Option<JoinHandle<()>>,
}

/// The messages peers sent to this member, in the order each connection carried them.
#[derive(Debug)]
pub struct Inbound {
    rx: mpsc::Receiver<Message>,
    chunks: Option<mpsc::Receiver<SnapshotChunk>>,
}

/// The snapshot chunks peers sent to this member, in the order each connection carried
/// them; taken from [`Inbound::take_chunks`] so that an event loop can wait on both.
#[derive(Debug)]
pub struct InboundChunks {
    rx: mpsc::Receiver<SnapshotChunk>,
}

impl InboundChunks {
    /// The next snapshot chunk; `None` once the transport has shut down and every chunk
    /// received before has been returned.
    pub async fn recv(&mut self) -> Option<SnapshotChunk> {
        self.rx.recv().await
    }
}

impl Inbound {
    /// The next message; `None` once the transport has shut down and every message
    /// received before has been returned.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// The queue of received snapshot chunks (`None` after the first call). Until it is
    /// taken, chunks wait in it (at most [`INBOUND_QUEUE_CHUNKS_MAX`], then the connection
    /// stops reading).
    pub fn take_chunks(&mut self) -> Option<InboundChunks> {
        self.chunks.take().map(|rx| InboundChunks { rx })
    }
}

impl Transport {
    /// Validates `options`, binds the listening socket and starts accepting peers on the
    /// current tokio runtime (it panics outside one, like `tokio::spawn`). Peers are dialed
    /// lazily, on the first message to each.
    pub async fn start(options: TransportOptions) -> Result<(Transport, Inbound), TransportError> {
        options.validate()?;
        let encoder = FrameEncoder::new(options.limits)?;
        let socket =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let local_addr = socket.local_addr().map_err(|source| TransportError::Bind {
            addr: options.listen,
            source,
        })?;
        let (stop, shutdown) = watch::channel(false);
        let (tx, rx) = mpsc::channel(options.inbound_queue_messages_max);
        let (chunk_tx, chunk_rx) = mpsc::channel(INBOUND_QUEUE_CHUNKS_MAX);
        let tx = InboundTx {
            messages: tx,
            chunks: chunk_tx,
        };
        let peers = options
            .peers
            .iter()
            .map(|(&id, &addr)| (id, new_peer(id, addr)))
            .collect();
        let shared = Arc::new(Shared {
            options,
            encoder,
            peers: Mutex::new(peers),
            unreachable: Mutex::new(BTreeSet::new()),
            chunks_lost: Mutex::new(BTreeSet::new()),
            counters: Counters::default(),
            shutdown,
        });
        let runtime = Handle::current();
        let listener = runtime.spawn(listener::run(socket, Arc::clone(&shared), tx));
        Ok((
            Transport {
                shared,
                runtime,
                local_addr,
                stop,
                listener: Some(listener),
            },
            Inbound {
                rx,
                chunks: Some(chunk_rx),
            },
        ))
    }

    /// The address the listener is bound to (with the port picked, if the options said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This member's id.
    pub fn member_id(&self) -> NodeId {
        self.shared.options.member_id
    }

    /// Adds peer `id` at `addr`, or moves it there: the next dial goes to `addr` (an
    /// established connection stays until it breaks or idles out). From now on `id` may
    /// also dial in. `id` must not be zero or this member's own id, and a new peer must fit
    /// in [`TransportOptions::peers_max`]; such calls are refused (logged) and return
    /// false.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) -> bool {
        if id == 0 || id == self.shared.options.member_id {
            tracing::warn!(peer = id, "set_peer ignored: not a peer id");
            return false;
        }
        let mut peers = lock(&self.shared.peers);
        match peers.get(&id) {
            Some(peer) => *lock(&peer.addr) = addr,
            None if peers.len() >= self.shared.options.peers_max => {
                tracing::warn!(
                    peer = id,
                    peers_max = self.shared.options.peers_max,
                    "peer not added: the transport has peers_max peers"
                );
                return false;
            }
            None => {
                peers.insert(id, new_peer(id, addr));
            }
        }
        true
    }

    /// Forgets peer `id` (a member removed from the cluster): its queued messages are
    /// dropped, its task and outbound connection stop, and it may no longer dial in (an
    /// inbound connection it established stays until it breaks or idles out; what it
    /// sends there is delivered, and the groups ignore a non-member). Returns whether `id`
    /// was a peer.
    pub fn remove_peer(&self, id: NodeId) -> bool {
        let Some(peer) = lock(&self.shared.peers).remove(&id) else {
            return false;
        };
        if let Some(task) = lock(&peer.task).take() {
            task.abort();
        }
        tracing::info!(peer = id, "peer removed");
        true
    }

    /// The current peers and their addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        lock(&self.shared.peers)
            .iter()
            .map(|(&id, peer)| (id, *lock(&peer.addr)))
            .collect()
    }

    /// Queues `messages` for their peers (by `to`) and wakes the writers. Never blocks,
    /// never fails: what cannot be queued is dropped and reported through
    /// [`Transport::take_unreachable`].
    pub fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let options = &self.shared.options;
        let peers = lock(&self.shared.peers);
        // The peers whose queues got messages, woken once each after queueing.
        let mut woken: Vec<Arc<Peer>> = Vec::new();
        let mut dropped: Vec<(NodeId, Message)> = Vec::new();
        for msg in messages {
            let to = msg.to;
            let Some(peer) = peers.get(&to) else {
                tracing::debug!(
                    to,
                    group = msg.group_id,
                    "message to an unknown member dropped"
                );
                dropped.push((to, msg));
                continue;
            };
            let bytes = match self.shared.encoder.message_bytes(&msg) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(to, group = msg.group_id, %error, "message dropped");
                    dropped.push((to, msg));
                    continue;
                }
            };
            let mut queue = lock(&peer.queue);
            let fits = queue.msgs.len() < options.send_queue_messages_max
                && queue.bytes.saturating_add(bytes) <= options.send_queue_bytes_max;
            if queue.link == Link::Down || !fits {
                drop(queue);
                dropped.push((to, msg));
                continue;
            }
            queue.msgs.push(msg);
            queue.bytes += bytes;
            drop(queue);
            if !woken.iter().any(|p| p.id == to) {
                woken.push(Arc::clone(peer));
            }
        }
        drop(peers);
        for (to, msg) in &dropped {
            self.shared.drop_messages(*to, std::slice::from_ref(msg));
        }
        for peer in woken {
            let mut task = lock(&peer.task);
            if task.is_none() {
                *task = Some(
                    self.runtime
                        .spawn(peer::run(Arc::clone(&peer), Arc::clone(&self.shared))),
                );
            }
            drop(task);
            peer.wake.notify_one();
        }
    }

    /// Queues one chunk of a snapshot transfer for its peer (by `to`) and wakes the writer.
    /// Never blocks; see [`ChunkRefused`] for what a refusal means.
    pub fn send_snapshot_chunk(&self, chunk: SnapshotChunk) -> Result<(), ChunkRefused> {
        let peers = lock(&self.shared.peers);
        let Some(peer) = peers.get(&chunk.to).map(Arc::clone) else {
            return Err(ChunkRefused::Unreachable(chunk));
        };
        drop(peers);
        if let Err(error) = self
            .shared
            .encoder
            .encode_snapshot_chunk(&chunk, &mut Vec::new())
        {
            tracing::warn!(to = chunk.to, group = chunk.group_id, %error, "snapshot chunk dropped");
            return Err(ChunkRefused::Unreachable(chunk));
        }
        {
            let mut queue = lock(&peer.queue);
            if queue.link == Link::Down {
                return Err(ChunkRefused::Unreachable(chunk));
            }
            if queue.chunks.len() >= SNAPSHOT_CHUNKS_QUEUED_MAX {
                return Err(ChunkRefused::Busy(chunk));
            }
            queue.chunks.push_back(chunk);
        }
        let mut task = lock(&peer.task);
        if task.is_none() {
            *task = Some(
                self.runtime
                    .spawn(peer::run(Arc::clone(&peer), Arc::clone(&self.shared))),
            );
        }
        drop(task);
        peer.wake.notify_one();
        Ok(())
    }

    /// Whether a snapshot chunk to `to` would be queued now, or refused at once as
    /// unreachable, rather than refused as busy: check it before reading a chunk.
    pub fn snapshot_chunk_room(&self, to: NodeId) -> bool {
        let peers = lock(&self.shared.peers);
        let Some(peer) = peers.get(&to).map(Arc::clone) else {
            return true;
        };
        drop(peers);
        let queue = lock(&peer.queue);
        queue.link == Link::Down || queue.chunks.len() < SNAPSHOT_CHUNKS_QUEUED_MAX
    }

    /// The `(peer, group)` pairs whose snapshot chunks were lost with a broken connection
    /// since the last call (queued, or in the write that failed), each once, sorted. The
    /// owner abandons those transfers (the shard's `snapshot_transfer_lost`).
    pub fn take_lost_snapshot_chunks(&self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut *lock(&self.shared.chunks_lost))
            .into_iter()
            .collect()
    }

    /// The `(peer, group)` pairs whose messages were dropped since the last call, each
    /// once, sorted. The owner calls raft's `report_unreachable(peer)` on each group.
    pub fn take_unreachable(&self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut *lock(&self.shared.unreachable))
            .into_iter()
            .collect()
    }

    /// The counters and queue depths now.
    pub fn stats(&self) -> TransportStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = TransportStats {
            messages_sent: get(&c.messages_sent),
            messages_dropped: get(&c.messages_dropped),
            messages_received: get(&c.messages_received),
            frames_sent: get(&c.frames_sent),
            bytes_sent: get(&c.bytes_sent),
            frames_received: get(&c.frames_received),
            bytes_received: get(&c.bytes_received),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            handshakes_refused_by_peer: get(&c.handshakes_refused_by_peer),
            inbound_accepted: get(&c.inbound_accepted),
            inbound_over_limit: get(&c.inbound_over_limit),
            inbound_refused: get(&c.inbound_refused),
            inbound_errors: get(&c.inbound_errors),
            queued_messages: 0,
            queued_bytes: 0,
        };
        for peer in lock(&self.shared.peers).values() {
            let queue = lock(&peer.queue);
            stats.queued_messages += u64::try_from(queue.msgs.len()).unwrap_or(u64::MAX);
            stats.queued_bytes += queue.bytes;
        }
        stats
    }

    /// Stops accepting, closes every connection and waits for every task to end. Messages
    /// still queued are dropped (and not reported: the owner is going away). After it,
    /// [`Inbound::recv`] returns what was already received, then `None`.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
        }
        let tasks: Vec<JoinHandle<()>> = lock(&self.shared.peers)
            .values()
            .filter_map(|peer| lock(&peer.task).take())
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // The tasks see this and end on their own.
        let _ = self.stop.send(true);
    }
}

fn new_peer(id: NodeId, addr: SocketAddr) -> Arc<Peer> {
    Arc::new(Peer {
        id,
        addr: Mutex::new(addr),
        queue: Mutex::new(SendQueue {
            msgs: Vec::new(),
            chunks: std::collections::VecDeque::new(),
            bytes: 0,
            link: Link::Open,
        }),
        wake: Notify::new(),
        task: Mutex::new(None),
    })
}
