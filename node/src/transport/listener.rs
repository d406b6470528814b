//! The inbound side: accepts peers' connections, answers their hello, and hands the
//! messages they carry to the owner's [`Inbound`](super::Inbound).
//!
//! At most `inbound_connections_max` connections are open at once; one more is closed as
//! soon as it is accepted, before it costs a buffer. A connection must send its hello
//! within `handshake_timeout`; it is refused (with the reason, then closed) when the dialer
//! belongs to another cluster, means another member, speaks another version, or is not a
//! current peer. A peer that dials again (after a restart, or a connection it gave up on)
//! replaces its older connection, which is closed. Any bytes that do not decode, a message
//! not from the dialer or not to this member, or twice `idle_timeout` without a frame close
//! that connection alone; the listener and the other connections go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::consensus::NodeId;

use super::tcp::{InboundTx, Shared, bump, lock};
use super::wire::{Frame, FrameDecoder, Hello, HelloReply, JoinReply, JoinRequest, WireError};

/// Bytes read from a connection at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The established connection of each peer, to be closed when the peer dials again: an id
/// (to tell connections apart) and the sender whose drop closes it.
type Current = Arc<Mutex<HashMap<NodeId, (u64, oneshot::Sender<()>)>>>;

/// Accepts connections until shutdown, then closes them all.
pub(crate) async fn run(socket: TcpListener, shared: Arc<Shared>, tx: InboundTx) {
    let mut shutdown = shared.shutdown.clone();
    let slots = Arc::new(Semaphore::new(shared.options.inbound_connections_max));
    let current: Current = Arc::default();
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
            // Reap finished connections so the set stays as small as the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // nothing to do but go on (after a pause, so a persistent error does not
                // spin).
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(shared.options.backoff_min).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            bump(&shared.counters.inbound_over_limit, 1);
            tracing::warn!(
                %addr,
                max = shared.options.inbound_connections_max,
                "peer connection closed: inbound_connections_max are open"
            );
            drop(stream);
            continue;
        };
        next_id += 1;
        connections.spawn(serve(
            stream,
            addr,
            next_id,
            permit,
            Arc::clone(&shared),
            tx.clone(),
            Arc::clone(&current),
        ));
    }
    // Dropping the set aborts the connections, which drops their senders of `tx`.
    connections.shutdown().await;
}

/// Why a connection closed, for the log.
enum Closed {
    /// The peer closed it, or dialed again.
    Normally(&'static str),
    /// This member refused the handshake.
    Refused(String),
    /// Bad bytes, a timeout, an I/O error.
    Error(String),
}

async fn serve(
    mut stream: TcpStream,
    addr: SocketAddr,
    id: u64,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    tx: InboundTx,
    current: Current,
) {
    let mut peer = None;
    let closed = converse(&mut stream, &shared, &tx, id, &current, &mut peer).await;
    if let Some(member) = peer {
        let mut current = lock(&current);
        if current.get(&member).is_some_and(|(c, _)| *c == id) {
            current.remove(&member);
        }
    }
    match closed {
        Closed::Normally(why) => {
            tracing::debug!(%addr, peer = ?peer, why, "peer connection closed");
        }
        Closed::Refused(reason) => {
            bump(&shared.counters.inbound_refused, 1);
            tracing::warn!(%addr, %reason, "peer handshake refused");
        }
        Closed::Error(error) => {
            bump(&shared.counters.inbound_errors, 1);
            tracing::warn!(%addr, peer = ?peer, %error, "peer connection closed on an error");
        }
    }
}

async fn converse(
    stream: &mut TcpStream,
    shared: &Shared,
    tx: &InboundTx,
    id: u64,
    current: &Current,
    peer: &mut Option<NodeId>,
) -> Closed {
    let options = &shared.options;
    let mut decoder = match FrameDecoder::new(options.limits) {
        Ok(decoder) => decoder,
        Err(e) => return Closed::Error(e.to_string()),
    };
    let mut buf = vec![0u8; 4096];
    let hello = match timeout(
        options.handshake_timeout,
        read_hello(stream, &mut decoder, &mut buf),
    )
    .await
    {
        Err(_) => {
            return Closed::Error(format!("no hello within {:?}", options.handshake_timeout));
        }
        Ok(Err(HelloError::Closed(closed))) => return closed,
        Ok(Err(HelloError::Join(request))) => {
            return answer_join(stream, shared, &request).await;
        }
        Ok(Err(HelloError::Version(error))) => {
            // The wire doc's promise to later versions: a dialer we cannot read still learns
            // why it is refused.
            let mut out = Vec::new();
            let reply = HelloReply::refuse(error.to_string());
            shared.encoder.encode_hello_reply(&reply, &mut out);
            let _ = timeout(options.handshake_timeout, async {
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
            })
            .await;
            return Closed::Refused(reply.reason);
        }
        Ok(Ok(hello)) => hello,
    };
    let mut reply = hello.answer(options.cluster_id, options.member_id);
    if reply.accepted && !shared.is_peer(hello.from_member) {
        reply = HelloReply::refuse(format!(
            "member {} is not a peer of member {}",
            hello.from_member, options.member_id
        ));
    }
    let mut out = Vec::new();
    shared.encoder.encode_hello_reply(&reply, &mut out);
    let written = timeout(options.handshake_timeout, stream.write_all(&out)).await;
    if !reply.accepted {
        // The dialer reads the reason before it sees the close; a failed write changes
        // nothing.
        let _ = stream.shutdown().await;
        return Closed::Refused(format!(
            "member {} of cluster {:#x}: {}",
            hello.from_member, hello.cluster_id, reply.reason
        ));
    }
    match written {
        Err(_) => return Closed::Error("the hello reply could not be written in time".into()),
        Ok(Err(e)) => return Closed::Error(format!("writing the hello reply: {e}")),
        Ok(Ok(())) => {}
    }
    let from = hello.from_member;
    *peer = Some(from);
    bump(&shared.counters.inbound_accepted, 1);
    let (replaced_tx, mut replaced) = oneshot::channel();
    // The peer's older connection, if any, ends when its sender is dropped here.
    let _older = lock(current).insert(from, (id, replaced_tx));
    drop(_older);

    // Established: only now is the full read buffer worth its memory.
    buf.resize(READ_CHUNK_BYTES, 0);
    let mut shutdown = shared.shutdown.clone();
    // Twice the dialer's idle time, so that the dialer, which knows it has nothing to send,
    // is the one that closes an idle connection, cleanly and without a backoff.
    let inbound_idle = options.idle_timeout.saturating_mul(2);
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Closed::Error(e.to_string()),
            };
            let msgs = match frame {
                Frame::Messages(msgs) => msgs,
                Frame::SnapshotChunk(chunk) => {
                    bump(&shared.counters.frames_received, 1);
                    if chunk.from != from || chunk.to != options.member_id {
                        return Closed::Error(format!(
                            "a snapshot chunk from {} to {} on member {from}'s connection to {}",
                            chunk.from, chunk.to, options.member_id
                        ));
                    }
                    if tx.chunks.send(chunk).await.is_err() {
                        return Closed::Normally("the owner dropped the inbound queue");
                    }
                    continue;
                }
                Frame::Hello(_)
                | Frame::HelloReply(_)
                | Frame::JoinRequest(_)
                | Frame::JoinReply(_) => {
                    return Closed::Error("a handshake frame after the handshake".into());
                }
            };
            bump(&shared.counters.frames_received, 1);
            for msg in msgs {
                if msg.from != from || msg.to != options.member_id {
                    return Closed::Error(format!(
                        "a message from {} to {} on member {from}'s connection to {}",
                        msg.from, msg.to, options.member_id
                    ));
                }
                // A full queue waits here, and so stops reading: back-pressure on this
                // connection, not growth.
                if tx.messages.send(msg).await.is_err() {
                    return Closed::Normally("the owner dropped the inbound queue");
                }
                bump(&shared.counters.messages_received, 1);
            }
        }
        let read = tokio::select! {
            read = timeout(inbound_idle, stream.read(&mut buf)) => read,
            _ = &mut replaced => return Closed::Normally("the peer dialed again"),
            _ = shutdown.wait_for(|stop| *stop) => return Closed::Normally("shutdown"),
        };
        match read {
            Err(_) => return Closed::Normally("idle"),
            Ok(Err(e)) => return Closed::Error(format!("reading: {e}")),
            Ok(Ok(0)) => {
                return if decoder.buffered() == 0 {
                    Closed::Normally("the peer closed it")
                } else {
                    Closed::Error(format!(
                        "the peer closed it in the middle of a frame ({} bytes buffered)",
                        decoder.buffered()
                    ))
                };
            }
            Ok(Ok(n)) => {
                bump(
                    &shared.counters.bytes_received,
                    u64::try_from(n).unwrap_or(u64::MAX),
                );
                decoder.extend(&buf[..n]);
            }
        }
    }
}

/// Why no hello was read.
enum HelloError {
    /// The first frame is of a wire version this build does not speak: answered with a
    /// refusal.
    Version(WireError),
    /// The first frame is a join request (a starting member's, see the wire doc): answered,
    /// then closed.
    Join(JoinRequest),
    /// Anything else: the connection is closed without a word.
    Closed(Closed),
}

/// Answers a join request with one reply and closes the connection.
async fn answer_join(stream: &mut TcpStream, shared: &Shared, request: &JoinRequest) -> Closed {
    let options = &shared.options;
    let reply = match &options.join_answers {
        Some(answers) => (answers.0)(request),
        None => JoinReply::Refused(format!(
            "member {} does not answer join requests (ask the member whose peer port is \
             the one in --initial-cluster, its shard 0)",
            options.member_id
        )),
    };
    let mut out = Vec::new();
    if let Err(e) = shared.encoder.encode_join_reply(&reply, &mut out) {
        out.clear();
        let refusal = JoinReply::NotNow(format!("the join reply does not encode: {e}"));
        let _ = shared.encoder.encode_join_reply(&refusal, &mut out);
    }
    let _ = timeout(options.handshake_timeout, async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
    match reply {
        JoinReply::Accepted(facts) => {
            tracing::info!(
                name = %request.name,
                peer = %request.peer,
                member_id = facts.member_id,
                "join request answered: welcome"
            );
            Closed::Normally("join request answered")
        }
        JoinReply::Refused(reason) | JoinReply::NotNow(reason) => Closed::Refused(format!(
            "join request of {:?} ({}): {reason}",
            request.name, request.peer
        )),
    }
}

async fn read_hello(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Hello, HelloError> {
    let closed = |c: Closed| Err(HelloError::Closed(c));
    loop {
        match decoder.next_frame() {
            Ok(Some(Frame::Hello(hello))) => return Ok(hello),
            Ok(Some(Frame::JoinRequest(request))) => return Err(HelloError::Join(request)),
            Ok(Some(_)) => return closed(Closed::Error("the first frame is not a hello".into())),
            Ok(None) => {}
            Err(e @ WireError::UnsupportedVersion { .. }) => return Err(HelloError::Version(e)),
            Err(e) => return closed(Closed::Error(format!("before the hello: {e}"))),
        }
        match stream.read(buf).await {
            Ok(0) => {
                return closed(if decoder.buffered() == 0 {
                    Closed::Normally("the peer closed it before its hello")
                } else {
                    Closed::Error("the peer closed it in the middle of its hello".into())
                });
            }
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => return closed(Closed::Error(format!("reading the hello: {e}"))),
        }
    }
}
