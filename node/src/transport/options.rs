//! What a [`Transport`](super::Transport) is told at start: who this member is, where its
//! peers are, and a named limit on every queue, connection and wait.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::consensus::NodeId;

use super::wire::{JoinReply, JoinRequest, WireError, WireLimits};

/// How a member answers a starting member's [`JoinRequest`] (see the wire doc): called on
/// the connection's task with the request, it returns the reply at once (it must not
/// block).
#[derive(Clone)]
pub struct JoinAnswers(pub std::sync::Arc<dyn Fn(&JoinRequest) -> JoinReply + Send + Sync>);

impl std::fmt::Debug for JoinAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinAnswers(..)")
    }
}

/// Default [`TransportOptions::send_queue_messages_max`].
pub const DEFAULT_SEND_QUEUE_MESSAGES_MAX: usize = 4096;
/// Default [`TransportOptions::send_queue_bytes_max`]: 64 MiB.
pub const DEFAULT_SEND_QUEUE_BYTES_MAX: u64 = 64 << 20;
/// Default [`TransportOptions::inbound_queue_messages_max`].
pub const DEFAULT_INBOUND_QUEUE_MESSAGES_MAX: usize = 4096;
/// Default [`TransportOptions::inbound_connections_max`].
pub const DEFAULT_INBOUND_CONNECTIONS_MAX: usize = 64;
/// Default [`TransportOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`TransportOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`TransportOptions::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`TransportOptions::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`TransportOptions::backoff_min`].
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Default [`TransportOptions::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Default [`TransportOptions::peers_max`].
pub const DEFAULT_PEERS_MAX: usize = 64;

// A send queue must be able to hold the largest message a frame carries, or such a message
// could never be sent; the defaults keep that relation.
const _: () = assert!(DEFAULT_SEND_QUEUE_BYTES_MAX >= 16 << 20);
const _: () = assert!(DEFAULT_BACKOFF_MIN.as_nanos() <= DEFAULT_BACKOFF_MAX.as_nanos());

/// The options of a [`Transport`](super::Transport). Build them with
/// [`TransportOptions::new`] and change the fields that differ from the defaults; every
/// default is in the field's doc. [`TransportOptions::validate`] checks them at start.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// The cluster this member belongs to; a dialer of another cluster is refused. No
    /// default.
    pub cluster_id: u64,
    /// This member's id; never zero. No default.
    pub member_id: NodeId,
    /// Where to listen for peers; port 0 picks a free port (see
    /// [`Transport::local_addr`](super::Transport::local_addr)). No default.
    pub listen: SocketAddr,
    /// The other members and where they listen. Only these may dial in, and messages to any
    /// other member are dropped. Can change later with
    /// [`Transport::set_peer`](super::Transport::set_peer). Default empty.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Bounds on every length and count on the wire; both sides must use the same (a
    /// receiver's at least the sender's). Default [`WireLimits::default`].
    pub limits: WireLimits,
    /// The most messages queued for one peer and not yet written. A message that would
    /// exceed it is dropped and its group reported unreachable. Default 4096.
    pub send_queue_messages_max: usize,
    /// The most bytes (as encoded, see [`FrameEncoder::message_bytes`]) queued for one peer
    /// and not yet written; at least `limits.frame_bytes_max`, so that every message that
    /// fits in a frame can be queued. Default 64 MiB.
    ///
    /// [`FrameEncoder::message_bytes`]: super::FrameEncoder::message_bytes
    pub send_queue_bytes_max: u64,
    /// The most received messages waiting for the owner's
    /// [`Inbound::recv`](super::Inbound::recv), over all connections. When it is full the
    /// connections stop reading, so a slow owner pushes back on its peers' TCP windows
    /// instead of growing memory. Default 4096.
    pub inbound_queue_messages_max: usize,
    /// The most inbound connections open at once, handshaking or established; one more is
    /// closed as soon as it is accepted. Outbound connections are one per peer and need no
    /// limit of their own. Default 64.
    pub inbound_connections_max: usize,
    /// How long a dial may take before the peer counts as unreachable. Default 2 s.
    pub connect_timeout: Duration,
    /// How long either side waits for the other's half of the handshake (the dialer for
    /// the reply, the acceptor for the hello). Default 2 s.
    pub handshake_timeout: Duration,
    /// How long one flush to a peer may take; a peer that stops reading for longer is
    /// treated as broken and its connection closed. Default 5 s.
    pub write_timeout: Duration,
    /// The idle policy. An outbound connection with nothing to send for this long is
    /// closed, and dialed again on the next send; an inbound connection that receives no
    /// frame for twice this long is closed (twice, so that the dialer closes first). Raft's heartbeats keep a live peer's connections
    /// busy, so this only reaps connections to peers that went silent (or half-open
    /// connections whose peer vanished). Default 60 s.
    pub idle_timeout: Duration,
    /// The first wait before dialing a peer again after a failed dial, refused handshake or
    /// broken connection. The wait doubles after each failure up to `backoff_max` and is
    /// drawn at random from its upper half (jitter), so members do not redial in step.
    /// While waiting, messages to the peer are dropped and reported unreachable.
    /// Default 50 ms.
    pub backoff_min: Duration,
    /// The longest wait between dials; at least `backoff_min`. Default 2 s.
    pub backoff_max: Duration,
    /// The most peers at once (each has a send queue and, once used, a task and an
    /// outbound connection): the initial `peers`, and those added later with
    /// [`Transport::set_peer`](super::Transport::set_peer), which refuses one more.
    /// Default 64.
    pub peers_max: usize,
    /// How this member answers join requests; `None` refuses them ("this member does not
    /// answer join requests", the joiner asks another). Default `None`.
    pub join_answers: Option<JoinAnswers>,
}

impl TransportOptions {
    /// Options with every default, for member `member_id` of cluster `cluster_id`
    /// listening on `listen`.
    pub fn new(cluster_id: u64, member_id: NodeId, listen: SocketAddr) -> TransportOptions {
        TransportOptions {
            cluster_id,
            member_id,
            listen,
            peers: BTreeMap::new(),
            limits: WireLimits::default(),
            send_queue_messages_max: DEFAULT_SEND_QUEUE_MESSAGES_MAX,
            send_queue_bytes_max: DEFAULT_SEND_QUEUE_BYTES_MAX,
            inbound_queue_messages_max: DEFAULT_INBOUND_QUEUE_MESSAGES_MAX,
            inbound_connections_max: DEFAULT_INBOUND_CONNECTIONS_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            peers_max: DEFAULT_PEERS_MAX,
            join_answers: None,
        }
    }

    /// Checks that the member id is not zero and not among the peers, that no peer id is
    /// zero, that the wire limits pass [`WireLimits::validate`], that every limit and
    /// timeout is positive, that a send queue can hold a full frame, and that
    /// `backoff_min <= backoff_max`.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |why: String| Err(TransportError::InvalidOptions(why));
        if self.member_id == 0 {
            return invalid("member_id must not be zero".into());
        }
        if self.peers.contains_key(&0) {
            return invalid("peer id zero is not a member id".into());
        }
        if self.peers.contains_key(&self.member_id) {
            return invalid(format!(
                "peers include this member's own id {}",
                self.member_id
            ));
        }
        if self.peers.len() > self.peers_max {
            return invalid(format!(
                "{} peers exceed peers_max ({})",
                self.peers.len(),
                self.peers_max
            ));
        }
        self.limits.validate()?;
        let counts = [
            ("send_queue_messages_max", self.send_queue_messages_max),
            (
                "inbound_queue_messages_max",
                self.inbound_queue_messages_max,
            ),
            ("inbound_connections_max", self.inbound_connections_max),
            ("peers_max", self.peers_max),
        ];
        for (name, value) in counts {
            if value == 0 {
                return invalid(format!("{name} must be positive"));
            }
        }
        // tokio's bounded channel and semaphore take at most this many permits.
        if self.inbound_queue_messages_max > tokio::sync::Semaphore::MAX_PERMITS
            || self.inbound_connections_max > tokio::sync::Semaphore::MAX_PERMITS
        {
            return invalid(
                "inbound_queue_messages_max or inbound_connections_max is too large".into(),
            );
        }
        if self.send_queue_bytes_max < u64::from(self.limits.frame_bytes_max) {
            return invalid(format!(
                "send_queue_bytes_max ({}) is below limits.frame_bytes_max ({}): the largest \
                 message could never be queued",
                self.send_queue_bytes_max, self.limits.frame_bytes_max
            ));
        }
        let waits = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("write_timeout", self.write_timeout),
            ("idle_timeout", self.idle_timeout),
            ("backoff_min", self.backoff_min),
        ];
        for (name, value) in waits {
            if value.is_zero() {
                return invalid(format!("{name} must be positive"));
            }
        }
        if self.backoff_min > self.backoff_max {
            return invalid(format!(
                "backoff_min ({:?}) exceeds backoff_max ({:?})",
                self.backoff_min, self.backoff_max
            ));
        }
        Ok(())
    }
}

/// Why a [`Transport`](super::Transport) could not start. Once started it never fails: a
/// peer that cannot be reached is reported, not returned as an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// [`TransportOptions`] that cannot work.
    #[error("invalid transport options: {0}")]
    InvalidOptions(String),
    /// The wire limits in the options are invalid.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the options.
        addr: SocketAddr,
        /// The error from the operating system.
        source: std::io::Error,
    },
}
