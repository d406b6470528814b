//! One-hop forwarding to a group's leader: this shard's HTTP/2 connections to the other
//! members' client ports, used through the generated etcd clients.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_etcd_proto::etcdserverpb::kv_client::KvClient;
use tonic::Status;

use super::errors;
use crate::runtime::ClusterView;

/// How long connecting to a leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded request may take, connection included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection to one member, as a service the generated clients call.
#[derive(Clone)]
pub struct Channel {
    send: SendRequest<tonic::body::Body>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}

/// `call`, a forwarded request, within [`FORWARD_TIMEOUT`] (the leader's answer is awaited
/// on this member's connection; without a deadline a stuck leader would hold it forever).
pub async fn within<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<tonic::Response<T>, Status> {
    tokio::time::timeout(FORWARD_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "keel: the group's leader did not answer a forwarded request within \
                 {FORWARD_TIMEOUT:?}"
            )))
        })
}

/// This shard's connections to other members (one each, opened on first use, replaced
/// once closed). The connections' tasks run on the shard's runtime.
#[derive(Default)]
pub struct Forwards {
    channels: Mutex<HashMap<u64, (Channel, http::Uri)>>,
}

impl Forwards {
    /// A Cluster client on the connection to `member`, opened if needed.
    pub async fn cluster(
        &self,
        view: &ClusterView,
        member: u64,
    ) -> Result<ClusterClient<Channel>, Status> {
        let (channel, origin) = self.channel(view, member).await?;
        Ok(ClusterClient::with_origin(channel, origin))
    }

    /// A KV client on the connection to `member`, opened if needed.
    pub async fn kv(&self, view: &ClusterView, member: u64) -> Result<KvClient<Channel>, Status> {
        let (channel, origin) = self.channel(view, member).await?;
        Ok(KvClient::with_origin(channel, origin))
    }

    async fn channel(
        &self,
        view: &ClusterView,
        member: u64,
    ) -> Result<(Channel, http::Uri), Status> {
        if let Ok(channels) = self.channels.lock() {
            if let Some((channel, origin)) = channels.get(&member) {
                if !channel.send.is_closed() {
                    return Ok((channel.clone(), origin.clone()));
                }
            }
        }
        let address = view
            .hint(member)
            .map(|h| h.client_address)
            .ok_or_else(|| Status::unavailable(errors::NO_LEADER))?;
        let unreachable = |e: String| {
            Status::unavailable(format!(
                "keel: forwarding to the leader (member {member} at {address}): {e}"
            ))
        };
        let origin: http::Uri = format!("http://{address}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| unreachable(e.to_string()))?;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "forwarding connection closed");
            }
        });
        let channel = Channel { send };
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(member, (channel.clone(), origin.clone()));
        }
        Ok((channel, origin))
    }
}
