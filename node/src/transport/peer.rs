//! The outbound side: one task per peer that dials it, says hello, and writes everything
//! queued for it, redialing with backoff after a failure.
//!
//! The task's life, as a loop: wait for a message to send; dial (within
//! `connect_timeout`) and handshake (within `handshake_timeout`); while connected, take the
//! whole queue at each flush and write it as one encoded run of frames (within
//! `write_timeout`), closing the connection when the peer closes its side or sends
//! anything, or after `idle_timeout` with nothing to send. A failed dial, refused handshake
//! or broken connection drops what is queued (reported unreachable), marks the link down so
//! that [`Transport::send`](super::Transport::send) drops instead of queueing, and waits a
//! backoff: it starts at `backoff_min`, doubles per failure up to `backoff_max`, is drawn
//! from the upper half of that range, and resets once a handshake succeeds.

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::consensus::Message;
use crate::shard::SnapshotChunk;

use super::tcp::{Link, Peer, Shared, bump, lock};
use super::wire::{Frame, FrameDecoder, Hello};

/// Bytes read at a time while waiting for the handshake reply or watching for the peer
/// closing its side.
const READ_CHUNK_BYTES: usize = 4096;

/// A flush buffer larger than this is released after its write rather than kept for the
/// next flush, so that one burst does not pin its size for the connection's life.
const FLUSH_BUFFER_KEPT_BYTES_MAX: usize = 4 << 20;

/// Why a connection ended.
enum Ended {
    /// Nothing to send for `idle_timeout`: closed quietly, dialed again on demand.
    Idle,
    /// The transport is shutting down.
    Shutdown,
    /// The peer closed, an I/O error, or a timeout: back off.
    Broken(String),
}

/// Why a dial did not give a connection.
enum DialError {
    /// No TCP connection, or the handshake broke off.
    Failed(String),
    /// The peer answered with a refusal.
    Refused(String),
}

/// Runs peer `peer`'s outbound side until shutdown.
pub(crate) async fn run(peer: Arc<Peer>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = Backoff::new(&shared, peer.id);
    loop {
        if !wait_for_work(&peer, &mut shutdown).await {
            return;
        }
        let addr = *lock(&peer.addr);
        let failure = match dial(&peer, &shared, &mut shutdown).await {
            None => return,
            Some(Ok(stream)) => {
                backoff.reset();
                bump(&shared.counters.connects, 1);
                tracing::debug!(peer = peer.id, %addr, "connected");
                match connected(stream, &peer, &shared, &mut shutdown).await {
                    Ended::Shutdown => return,
                    Ended::Idle => {
                        tracing::debug!(peer = peer.id, %addr, "idle connection closed");
                        continue;
                    }
                    Ended::Broken(reason) => {
                        tracing::warn!(peer = peer.id, %addr, %reason, "connection to peer broken");
                        reason
                    }
                }
            }
            Some(Err(DialError::Refused(reason))) => {
                bump(&shared.counters.handshakes_refused_by_peer, 1);
                tracing::warn!(peer = peer.id, %addr, %reason, "peer refused the handshake");
                reason
            }
            Some(Err(DialError::Failed(reason))) => {
                bump(&shared.counters.connect_failures, 1);
                tracing::debug!(peer = peer.id, %addr, %reason, "dial failed");
                reason
            }
        };
        // Down: what is queued is lost, and so is what comes until the backoff ends.
        let (lost, chunks_lost) = {
            let mut queue = lock(&peer.queue);
            queue.link = Link::Down;
            queue.bytes = 0;
            let chunks: Vec<u64> = queue.chunks.drain(..).map(|c| c.group_id).collect();
            (std::mem::take(&mut queue.msgs), chunks)
        };
        shared.drop_messages(peer.id, &lost);
        shared.lose_chunks(peer.id, chunks_lost);
        let wait = backoff.next();
        tracing::trace!(peer = peer.id, ?wait, %failure, "backing off");
        tokio::select! {
            _ = sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        lock(&peer.queue).link = Link::Open;
    }
}

/// Waits until something is queued for the peer. False at shutdown.
async fn wait_for_work(peer: &Peer, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        {
            let queue = lock(&peer.queue);
            if !queue.msgs.is_empty() || !queue.chunks.is_empty() {
                return true;
            }
        }
        tokio::select! {
            _ = peer.wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}

/// Dials the peer and says hello. `None` at shutdown.
async fn dial(
    peer: &Peer,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<TcpStream, DialError>> {
    let options = &shared.options;
    let addr = *lock(&peer.addr);
    let attempt = async {
        let mut stream = match timeout(options.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(DialError::Failed(format!(
                    "no connection within {:?}",
                    options.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(DialError::Failed(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        // Flushes are already batched; waiting for more would only add latency.
        let _ = stream.set_nodelay(true);
        match timeout(
            options.handshake_timeout,
            handshake(&mut stream, peer, shared),
        )
        .await
        {
            Err(_) => Err(DialError::Failed(format!(
                "no handshake reply within {:?}",
                options.handshake_timeout
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(stream),
        }
    };
    tokio::select! {
        result = attempt => Some(result),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}

async fn handshake(stream: &mut TcpStream, peer: &Peer, shared: &Shared) -> Result<(), DialError> {
    let options = &shared.options;
    let mut out = Vec::new();
    shared.encoder.encode_hello(
        &Hello::new(options.cluster_id, options.member_id, peer.id),
        &mut out,
    );
    stream
        .write_all(&out)
        .await
        .map_err(|e| DialError::Failed(format!("sending hello: {e}")))?;
    let mut decoder = FrameDecoder::new(options.limits)
        .map_err(|e| DialError::Failed(format!("decoder: {e}")))?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match decoder.next_frame() {
            Err(e) => return Err(DialError::Failed(format!("bad handshake reply: {e}"))),
            Ok(Some(Frame::HelloReply(reply))) if reply.accepted => return Ok(()),
            Ok(Some(Frame::HelloReply(reply))) => return Err(DialError::Refused(reply.reason)),
            Ok(Some(other)) => {
                return Err(DialError::Failed(format!(
                    "expected a hello reply, got {}",
                    frame_name(&other)
                )));
            }
            Ok(None) => {}
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| DialError::Failed(format!("reading the hello reply: {e}")))?;
        if n == 0 {
            return Err(DialError::Failed(
                "peer closed the connection before replying to hello".into(),
            ));
        }
        decoder.extend(&buf[..n]);
    }
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a hello",
        Frame::HelloReply(_) => "a hello reply",
        Frame::Messages(_) => "messages",
        Frame::SnapshotChunk(_) => "a snapshot chunk",
        Frame::JoinRequest(_) => "a join request",
        Frame::JoinReply(_) => "a join reply",
    }
}

/// Writes what is queued until the connection ends.
async fn connected(
    mut stream: TcpStream,
    peer: &Peer,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let options = &shared.options;
    let (mut rd, mut wr) = stream.split();
    let mut out = Vec::new();
    let mut probe = [0u8; 64];
    let mut last_flush = Instant::now();
    loop {
        let (batch, chunk): (Vec<Message>, Option<SnapshotChunk>) = {
            let mut queue = lock(&peer.queue);
            queue.bytes = 0;
            (std::mem::take(&mut queue.msgs), queue.chunks.pop_front())
        };
        if !batch.is_empty() || chunk.is_some() {
            out.clear();
            let mut frames = match shared.encoder.encode_messages(&batch, &mut out) {
                Ok(frames) => frames,
                Err(error) => {
                    // `send` checked every message, so this is a bug; drop the batch
                    // rather than the connection.
                    tracing::error!(peer = peer.id, %error, "a queued message does not encode");
                    shared.drop_messages(peer.id, &batch);
                    continue;
                }
            };
            // One chunk per flush, after the messages: a transfer never holds raft's
            // messages back by more than one chunk.
            let chunk_group = chunk.as_ref().map(|c| c.group_id);
            if let Some(chunk) = chunk {
                match shared.encoder.encode_snapshot_chunk(&chunk, &mut out) {
                    Ok(()) => frames += 1,
                    Err(error) => {
                        // `send_snapshot_chunk` checked it, so this is a bug; the receiver
                        // drops the incomplete transfer and raft sends it again.
                        tracing::error!(peer = peer.id, %error, "a queued snapshot chunk does not encode");
                    }
                }
            }
            // Only the count and the groups are needed from here on: let the messages go
            // before the write, so a peer holds at most its queue and one encoded flush.
            let count = batch.len();
            let groups: BTreeSet<u64> = batch.iter().map(|m| m.group_id).collect();
            drop(batch);
            let written = tokio::select! {
                w = timeout(options.write_timeout, wr.write_all(&out)) => w,
                _ = shutdown.wait_for(|stop| *stop) => return Ended::Shutdown,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shared.drop_groups(peer.id, count, groups);
                    shared.lose_chunks(peer.id, chunk_group);
                    return Ended::Broken(format!("writing: {e}"));
                }
                Err(_) => {
                    shared.drop_groups(peer.id, count, groups);
                    shared.lose_chunks(peer.id, chunk_group);
                    return Ended::Broken(format!(
                        "a flush of {} bytes took longer than {:?}",
                        out.len(),
                        options.write_timeout
                    ));
                }
            }
            let c = &shared.counters;
            bump(&c.messages_sent, u64::try_from(count).unwrap_or(u64::MAX));
            bump(&c.frames_sent, u64::try_from(frames).unwrap_or(u64::MAX));
            bump(&c.bytes_sent, u64::try_from(out.len()).unwrap_or(u64::MAX));
            last_flush = Instant::now();
            // Give back the memory of an unusually large flush.
            if out.capacity() > FLUSH_BUFFER_KEPT_BYTES_MAX {
                out = Vec::new();
            }
            continue;
        }
        tokio::select! {
            _ = peer.wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ended::Shutdown,
            _ = sleep_until(last_flush + options.idle_timeout) => {
                // A message may have been queued just as the timer fired.
                let queue = lock(&peer.queue);
                if queue.msgs.is_empty() && queue.chunks.is_empty() {
                    return Ended::Idle;
                }
            }
            // The acceptor sends nothing after its reply: a read that returns is the peer
            // closing (or breaking the protocol).
            read = rd.read(&mut probe) => {
                return Ended::Broken(match read {
                    Ok(0) => "peer closed the connection".into(),
                    Ok(n) => format!("peer sent {n} unexpected bytes"),
                    Err(e) => format!("reading: {e}"),
                });
            }
        }
    }
}

/// Exponential backoff with jitter, per peer.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(shared: &Shared, peer: u64) -> Backoff {
        // Seeded per process, member and peer, so that members restarted together do not
        // redial in step.
        let seed = RandomState::new().hash_one((shared.options.member_id, peer));
        Backoff {
            min: shared.options.backoff_min,
            max: shared.options.backoff_max,
            current: shared.options.backoff_min,
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next wait: uniform in the upper half of the current step; then the step doubles.
    fn next(&mut self) -> Duration {
        // xorshift64: enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = u64::try_from(self.current.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        let wait = Duration::from_nanos(half + self.rng % (nanos - half + 1));
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }
}
