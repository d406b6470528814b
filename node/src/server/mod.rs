//! The client listener: the native protocol (keel-client's `wire`) on the client port.
//!
//! Every shard accepts on the same client port (`SO_REUSEPORT`: the kernel spreads
//! connections over the shards). A connection's first bytes tell the protocol: the native
//! preface is served here, HTTP/2's connection preface (`PRI * HTTP/2.0`) goes to the etcd
//! v3 gRPC API ([`etcd`]) on the same shard's runtime, and anything else is closed. A
//! request goes to the shard that hosts its group, through that shard's bounded request
//! queue, and its answer comes back on the connection; a connection carries many requests
//! at once (request ids), at most `in_flight_per_connection_max`.

pub mod convert;
pub mod etcd;
mod prefixed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_client::route::group_of;
use keel_client::wire::{
    self, CLIENT_PREFACE_BYTES, ClientLimits, ErrorStatus, PrefaceCode, Request, RequestDecoder,
    RequestFrame, Response, ResponseFrame, ResponseHeader, ServerPreface, Sniffed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::runtime::{ClusterView, ShardRequest, ShardWork};
use crate::shard::{Outcome, RequestError};

/// What every connection of a member shares.
pub struct ServerContext {
    /// This member's id.
    pub member_id: u64,
    /// Number of groups in the cluster.
    pub groups: u32,
    /// The request queue of each shard, by shard index (group `g` lives on shard `g mod n`).
    pub shards: Vec<mpsc::Sender<ShardRequest>>,
    /// Members, their client addresses and the groups' leaders, as this member knows them.
    pub view: Arc<ClusterView>,
    /// Protocol limits.
    pub limits: ClientLimits,
    /// Most client connections at once. Default 4096.
    pub connections_max: usize,
    /// Client connections open now.
    pub connections: AtomicUsize,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Every member: id, name and peer URLs (for the etcd API's member list).
    pub members: Vec<etcd::MemberRecord>,
    /// Limits of the etcd API.
    pub etcd_limits: etcd::EtcdLimits,
    /// This shard's HTTP/2 connections to other members, for forwarding etcd requests to a
    /// group's leader.
    pub forwards: etcd::Forwards,
    /// etcd `Snapshot` streams open on this shard's listener: at most
    /// [`etcd::SNAPSHOT_STREAMS_MAX`], since each holds a copy of the member's keys (past it
    /// `RESOURCE_EXHAUSTED`).
    pub snapshots_open: Arc<AtomicUsize>,
}

/// Reserved keys (cluster metadata lives under them); clients cannot write them.
pub const RESERVED_PREFIX: &[u8] = b"\0keel/";

/// Serves one client connection until it closes or breaks the protocol.
pub async fn serve(ctx: Arc<ServerContext>, mut stream: TcpStream, peer: SocketAddr) {
    if ctx.connections.fetch_add(1, Ordering::AcqRel) >= ctx.connections_max {
        ctx.connections.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(%peer, max = ctx.connections_max, "client connection refused: connections_max reached");
        return;
    }
    let _ = stream.set_nodelay(true);
    let first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&mut stream)).await;
    let result = match first {
        Ok(Ok(Protocol::Native(preface))) => serve_native(&ctx, &mut stream, preface).await,
        Ok(Ok(Protocol::Http2(preface))) => {
            etcd::serve(ctx.clone(), prefixed::Prefixed::new(preface, stream)).await
        }
        Ok(Ok(Protocol::Closed)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other(format!(
            "no protocol preface within {FIRST_BYTES_TIMEOUT:?}"
        ))),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection closed");
    }
    ctx.connections.fetch_sub(1, Ordering::AcqRel);
}

/// How long a new connection may take to send the bytes that tell its protocol; a
/// connection that stalls before them would hold one of `connections_max` for nothing.
const FIRST_BYTES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2's connection preface: every HTTP/2 (and so gRPC) client starts with it.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks, with the bytes read to tell.
enum Protocol {
    /// The native protocol's preface, whole.
    Native([u8; CLIENT_PREFACE_BYTES]),
    /// HTTP/2's connection preface, whole (replayed to the HTTP/2 server).
    Http2(Vec<u8>),
    /// The peer closed before saying.
    Closed,
}

/// Reads exactly as many bytes as it takes to tell the protocol (never past a preface), and
/// refuses anything that is neither protocol.
async fn first_bytes(stream: &mut TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    let mut got = 0;
    loop {
        let wanted = match wire::sniff(&buf[..got]) {
            Sniffed::NeedMore | Sniffed::Native if got >= CLIENT_PREFACE_BYTES => {
                let mut preface = [0u8; CLIENT_PREFACE_BYTES];
                preface.copy_from_slice(&buf[..CLIENT_PREFACE_BYTES]);
                return Ok(Protocol::Native(preface));
            }
            Sniffed::NeedMore | Sniffed::Native => CLIENT_PREFACE_BYTES,
            Sniffed::Other => {
                if buf[..got] != HTTP2_PREFACE[..got] {
                    return Err(std::io::Error::other(
                        "neither the native protocol nor HTTP/2 (the etcd API)",
                    ));
                }
                if got == HTTP2_PREFACE.len() {
                    return Ok(Protocol::Http2(buf.to_vec()));
                }
                HTTP2_PREFACE.len()
            }
        };
        let n = stream.read(&mut buf[got..wanted]).await?;
        if n == 0 {
            return Ok(Protocol::Closed);
        }
        got += n;
    }
}

async fn serve_native(
    ctx: &Arc<ServerContext>,
    stream: &mut TcpStream,
    preface: [u8; CLIENT_PREFACE_BYTES],
) -> std::io::Result<()> {
    let code = match wire::decode_client_preface(&preface) {
        Ok(_) => PrefaceCode::Accepted,
        Err(_) => PrefaceCode::VersionUnsupported,
    };
    let in_flight_max = ctx.limits.in_flight_per_connection_max;
    let answer = ServerPreface {
        version: wire::VERSION,
        code,
        request_bytes_max: ctx.limits.request_bytes_max,
        in_flight_per_connection_max: in_flight_max,
    };
    stream.write_all(&answer.encode()).await?;
    if code != PrefaceCode::Accepted {
        return Ok(());
    }
    let (mut reader, mut writer) = stream.split();
    // Answers come back in any order; one writer loop sends them, batching what is ready.
    let in_flight_max = usize::try_from(in_flight_max.max(1)).unwrap_or(1);
    let (answers_tx, mut answers_rx) = mpsc::channel::<ResponseFrame>(in_flight_max);
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let limits = ctx.limits.clone();
    let write_loop = async move {
        let mut out = Vec::new();
        while let Some(frame) = answers_rx.recv().await {
            encode_answer(&frame, &limits, &mut out);
            while let Ok(more) = answers_rx.try_recv() {
                encode_answer(&more, &limits, &mut out);
                if out.len() > 1 << 20 {
                    break;
                }
            }
            writer.write_all(&out).await?;
            out.clear();
        }
        Ok::<(), std::io::Error>(())
    };
    let ctx2 = ctx.clone();
    let read_loop = async move {
        let mut decoder = RequestDecoder::new(ctx2.limits.clone());
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            decoder.extend(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        // Bounded in flight: stop reading while the connection has its
                        // limit of requests outstanding.
                        let permit = in_flight
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(std::io::Error::other)?;
                        let (ctx, answers) = (ctx2.clone(), answers_tx.clone());
                        tokio::spawn(async move {
                            let answer = handle(&ctx, frame).await;
                            let _ = answers.send(answer).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(e) if !e.is_fatal() => {
                        if let Some(id) = e.request_id() {
                            let frame = ResponseFrame {
                                id,
                                result: Err(e.to_status()),
                            };
                            if answers_tx.send(frame).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        }
    };
    tokio::select! {
        r = read_loop => r,
        r = write_loop => r,
    }
}

fn encode_answer(frame: &ResponseFrame, limits: &ClientLimits, out: &mut Vec<u8>) {
    let len = out.len();
    if let Err(e) = wire::encode_response(frame, limits, out) {
        out.truncate(len);
        let fallback = ResponseFrame {
            id: frame.id,
            result: Err(ErrorStatus::TooLarge(e.to_string())),
        };
        if wire::encode_response(&fallback, limits, out).is_err() {
            out.truncate(len);
        }
    }
}

/// Carries out one request: checks its routing, hands it to the shard of its group, and
/// builds the protocol answer from the outcome.
async fn handle(ctx: &ServerContext, frame: RequestFrame) -> ResponseFrame {
    let id = frame.id;
    let result = execute(ctx, frame).await;
    ResponseFrame { id, result }
}

async fn execute(ctx: &ServerContext, frame: RequestFrame) -> Result<Response, ErrorStatus> {
    let RequestFrame { group, request, .. } = frame;
    if let Request::Status = request {
        return Ok(Response::Status(ctx.view.status(ctx.member_id, ctx.groups)));
    }
    if group >= ctx.groups {
        return Err(ErrorStatus::WrongGroup { groups: ctx.groups });
    }
    let keys: Vec<&[u8]> = match &request {
        Request::Put(_, p) => vec![&p.key],
        Request::Delete(_, d) => vec![&d.key],
        Request::Get(g) => vec![&g.key],
        Request::Txn(_, t) => t.routing_keys(),
        Request::Range(_) | Request::Status => Vec::new(),
    };
    for key in &keys {
        if group_of(key, ctx.groups) != group {
            let mut groups: Vec<u32> = keys.iter().map(|k| group_of(k, ctx.groups)).collect();
            groups.sort_unstable();
            groups.dedup();
            return Err(if groups.len() > 1 {
                ErrorStatus::TxnSpansGroups { groups }
            } else {
                ErrorStatus::WrongGroup { groups: ctx.groups }
            });
        }
    }
    // Only writes are refused on reserved keys (members read them through group 0).
    let writes_reserved = matches!(
        request,
        Request::Put(..) | Request::Delete(..) | Request::Txn(..)
    ) && keys.iter().any(|k| k.starts_with(RESERVED_PREFIX));
    if writes_reserved {
        return Err(ErrorStatus::InvalidArgument(
            "keys starting with \\0keel/ are reserved for cluster metadata".into(),
        ));
    }
    let work = match &request {
        Request::Put(w, p) => ShardWork::Write {
            client_id: w.id.client_id,
            sequence: w.id.sequence,
            floor: w.first_unanswered,
            txn: convert::single(convert::put(p)),
        },
        Request::Delete(w, d) => ShardWork::Write {
            client_id: w.id.client_id,
            sequence: w.id.sequence,
            floor: w.first_unanswered,
            txn: convert::single(convert::delete(d)),
        },
        Request::Txn(w, t) => {
            let (client_id, sequence, floor) = w.map_or((0, 0, 0), |w| {
                (w.id.client_id, w.id.sequence, w.first_unanswered)
            });
            ShardWork::Write {
                client_id,
                sequence,
                floor,
                txn: convert::txn(t),
            }
        }
        Request::Get(g) => ShardWork::Read {
            range: convert::range(&wire::RangeRequest {
                key: g.key.clone(),
                ..wire::RangeRequest::default()
            }),
            consistency: convert::consistency(g.consistency),
        },
        // A revision other than 0 is read from the group's history.
        Request::Range(r) => ShardWork::Read {
            range: convert::range(r),
            consistency: convert::consistency(r.consistency),
        },
        Request::Status => unreachable!("answered above"),
    };
    let shard_count = u32::try_from(ctx.shards.len()).unwrap_or(1).max(1);
    let shard = &ctx.shards[usize::try_from(group % shard_count).unwrap_or(0)];
    let (reply, answer) = oneshot::channel();
    let sent = shard.try_send(ShardRequest {
        group: u64::from(group),
        work,
        reply,
    });
    if sent.is_err() {
        return Err(ErrorStatus::Busy);
    }
    let outcome = answer
        .await
        .map_err(|_| ErrorStatus::Internal("the shard stopped".into()))?;
    let header = ResponseHeader {
        group,
        revision: 0,
        member_id: ctx.member_id,
    };
    match outcome {
        Outcome::Written(Ok(resp)) => {
            convert::txn_response(&request, header, resp).map_err(ErrorStatus::Internal)
        }
        Outcome::Written(Err(reason)) => Err(ErrorStatus::InvalidArgument(reason)),
        Outcome::Read(resp) => Ok(convert::read_response(&request, header, resp)),
        // A native write carries its (client id, sequence), so resending it to the new
        // leader is safe: the group's session table answers it if it was applied.
        Outcome::Failed(
            RequestError::NotLeader { leader } | RequestError::LeadershipLost { leader },
        ) => Err(ErrorStatus::NotLeader {
            group,
            leader: leader.and_then(|id| ctx.view.hint(id)),
        }),
        Outcome::Failed(RequestError::Busy) => Err(ErrorStatus::Busy),
        Outcome::Failed(RequestError::Compacted { compacted, .. }) => Err(ErrorStatus::Compacted {
            compact_revision: compacted,
        }),
        Outcome::Failed(e @ RequestError::FutureRevision { .. }) => {
            Err(ErrorStatus::InvalidArgument(e.to_string()))
        }
        Outcome::Failed(RequestError::Kv(reason)) => Err(ErrorStatus::InvalidArgument(reason)),
        Outcome::Compaction { .. } => Err(ErrorStatus::Internal(
            "the shard answered a request with a compaction".into(),
        )),
        Outcome::Failed(e) => Err(ErrorStatus::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `first_bytes` reads from a connection whose peer writes `pieces` one by one.
    async fn sniff(pieces: Vec<Vec<u8>>) -> std::io::Result<Protocol> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let writer = tokio::spawn(async move {
            let mut out = TcpStream::connect(address).await?;
            for piece in pieces {
                out.write_all(&piece).await?;
                out.flush().await?;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // Keep the connection open until the reader has decided.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(())
        });
        let (mut stream, _) = listener.accept().await?;
        let found = first_bytes(&mut stream).await;
        let _ = writer.await;
        found
    }

    #[tokio::test]
    async fn connections_are_told_apart_by_their_first_bytes() {
        // HTTP/2's preface, split across writes, then a frame that must not be read here.
        let h2 = HTTP2_PREFACE.to_vec();
        let pieces = vec![
            h2[..3].to_vec(),
            h2[3..20].to_vec(),
            h2[20..].to_vec(),
            vec![0; 9],
        ];
        match sniff(pieces).await {
            Ok(Protocol::Http2(bytes)) => assert_eq!(bytes, h2),
            _ => panic!("HTTP/2 not recognized"),
        }
        let native = wire::client_preface().to_vec();
        match sniff(vec![native[..5].to_vec(), native[5..].to_vec()]).await {
            Ok(Protocol::Native(bytes)) => assert_eq!(bytes.to_vec(), native),
            _ => panic!("native preface not recognized"),
        }
        assert!(sniff(vec![b"PRI * HTTP/1.1\r\n".to_vec()]).await.is_err());
        assert!(sniff(vec![b"GET / HTTP/1.1\r\n".to_vec()]).await.is_err());
        assert!(matches!(
            sniff(vec![b"PRI".to_vec()]).await,
            Ok(Protocol::Closed)
        ));
    }
}
