//! The etcd API side of `keel bench cluster --api etcd`: HTTP/2 connections of its own
//! (hyper, used through keel-etcd-proto's generated `KvClient`) and where each request goes.
//!
//! Two routings, chosen with `--route`:
//!
//! - **spread**, as etcd's benchmark tool does: `--conns` connections in all, connection `i`
//!   to endpoint `i mod endpoints`, client `c` on connection `c mod conns`. A write that
//!   reaches a member not leading is forwarded by the server (etcd hands the proposal to
//!   its leader; Keel forwards the request one hop).
//! - **leader** (the default): `--conns` connections to every member, and each request sent
//!   to the member leading its key's group, as the native bench does, so that neither
//!   system pays a forwarding hop. The leaders are learned once before the load: from a
//!   Keel cluster through the native status on the same port (every group's leader and
//!   every member's client address), from any other etcd-API cluster (one group) through
//!   `Maintenance.Status` on each endpoint, the endpoint whose member id is the leader's.
//!   A leader that changes during the load is not followed: requests then take the
//!   server's forwarding path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_client::route::group_of;
use keel_client::{Client, ClientOptions};
use keel_etcd_proto::etcdserverpb::StatusRequest;
use keel_etcd_proto::etcdserverpb::kv_client::KvClient;
use keel_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;

/// How long connecting to an endpoint (TCP and the HTTP/2 handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long learning the leaders may take, per endpoint asked.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// An HTTP/2 connection to one member, as the service the generated clients call.
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

/// `host:port` of an endpoint given as `host:port` or `http://host:port`; TLS is refused.
pub fn host_port(endpoint: &str) -> Result<&str, String> {
    if endpoint.starts_with("https://") {
        return Err(format!(
            "endpoint {endpoint}: TLS is not supported by the bench; use http://"
        ));
    }
    let address = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.is_empty() || address.contains('/') || !address.contains(':') {
        return Err(format!(
            "endpoint {endpoint:?}: expected host:port or http://host:port"
        ));
    }
    Ok(address)
}

/// A KV client on a new connection to `address` (`host:port`).
pub async fn connect(address: &str) -> Result<KvClient<Channel>, String> {
    let (channel, origin) = open(address).await?;
    Ok(KvClient::with_origin(channel, origin))
}

async fn open(address: &str) -> Result<(Channel, http::Uri), String> {
    let failed = |e: String| format!("connecting to {address}: {e}");
    let origin: http::Uri = format!("http://{address}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| failed(e.to_string()))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| failed(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream));
    let (send, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| failed(format!("no HTTP/2 handshake within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| failed(format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        // The load notices a closed connection through its requests' errors.
        let _ = connection.await;
    });
    Ok((Channel { send }, origin))
}

/// How requests are spread over members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Connections round-robin over the endpoints, clients round-robin over connections.
    Spread,
    /// Each request to the leader of its key's group.
    Leader,
}

/// Who leads what, as learned before the load.
pub struct Leaders {
    /// The members' client addresses (`host:port`) the load connects to.
    pub members: Vec<String>,
    /// Raft groups: 1 for etcd.
    pub groups: u32,
    /// For each group, the index in `members` of its leader.
    pub leader_of: Vec<usize>,
    /// Whether the cluster answered Keel's native status (it is Keel).
    pub is_keel: bool,
}

/// Learns the leaders: through Keel's native status if the endpoints speak it, else through
/// the etcd API's `Maintenance.Status`.
pub async fn discover(endpoints: &[&str]) -> Result<Leaders, String> {
    if let Some(leaders) = keel_leaders(endpoints).await? {
        return Ok(leaders);
    }
    etcd_leader(endpoints).await
}

/// `None` when the endpoints do not answer the native protocol (not Keel).
async fn keel_leaders(endpoints: &[&str]) -> Result<Option<Leaders>, String> {
    let options = ClientOptions {
        connect_timeout: DISCOVER_TIMEOUT,
        request_timeout: DISCOVER_TIMEOUT,
        attempts_max: 1,
        ..ClientOptions::default()
    };
    let Ok(client) = Client::connect_with(endpoints, options).await else {
        return Ok(None);
    };
    let Ok(status) = client.status().await else {
        return Ok(None);
    };
    let members: Vec<String> = status
        .members
        .iter()
        .map(|m| m.client_address.clone())
        .collect();
    let mut leader_of = Vec::with_capacity(status.leaders.len());
    for (group, leader) in status.leaders.iter().enumerate() {
        let index = leader
            .and_then(|id| status.members.iter().position(|m| m.id == id))
            .ok_or_else(|| {
                format!(
                    "--route leader: group {group} has no known leader (member {}'s view); \
                     retry once the cluster has elected, or use --route spread",
                    status.member_id
                )
            })?;
        leader_of.push(index);
    }
    Ok(Some(Leaders {
        members,
        groups: status.groups,
        leader_of,
        is_keel: true,
    }))
}

async fn etcd_leader(endpoints: &[&str]) -> Result<Leaders, String> {
    let mut last = String::new();
    let mut leader_seen = None;
    for &address in endpoints {
        let status = async {
            let (channel, origin) = open(address).await?;
            let mut maintenance = MaintenanceClient::with_origin(channel, origin);
            tokio::time::timeout(DISCOVER_TIMEOUT, maintenance.status(StatusRequest {}))
                .await
                .map_err(|_| format!("{address}: no status within {DISCOVER_TIMEOUT:?}"))?
                .map(tonic::Response::into_inner)
                .map_err(|e| format!("{address}: Maintenance.Status: {}", e.message()))
        }
        .await;
        match status {
            Ok(s) => {
                let member = s.header.as_ref().map_or(0, |h| h.member_id);
                if s.leader != 0 && s.leader == member {
                    return Ok(Leaders {
                        members: vec![address.to_owned()],
                        groups: 1,
                        leader_of: vec![0],
                        is_keel: false,
                    });
                }
                leader_seen = Some(s.leader);
            }
            Err(e) => last = e,
        }
    }
    Err(match leader_seen {
        Some(0) => "--route leader: the cluster has no leader".to_owned(),
        Some(id) => format!(
            "--route leader: the leader (member {id:x}) is not among the endpoints given; \
             name it too, or use --route spread"
        ),
        None => format!("no endpoint answered Maintenance.Status (last: {last})"),
    })
}

/// The connections of the load and which one a request takes.
pub struct Routes {
    routing: Routing,
    /// `Spread`: `[conns]`, one connection each. `Leader`: `[conns][members]`.
    sets: Vec<Vec<KvClient<Channel>>>,
    groups: u32,
    leader_of: Vec<usize>,
}

/// One client task's connections.
#[derive(Clone)]
pub struct ClientRoutes {
    kvs: Vec<KvClient<Channel>>,
    groups: u32,
    leader_of: Vec<usize>,
}

impl Routes {
    /// Opens the connections: `conns` in all over `endpoints` (spread), or `conns` to each
    /// of `leaders`' members.
    pub async fn open(
        routing: Routing,
        endpoints: &[&str],
        leaders: Option<&Leaders>,
        conns: usize,
    ) -> Result<Routes, String> {
        let mut sets = Vec::with_capacity(conns);
        match (routing, leaders) {
            (Routing::Leader, Some(leaders)) => {
                for _ in 0..conns {
                    let mut set = Vec::with_capacity(leaders.members.len());
                    for m in &leaders.members {
                        set.push(connect(m).await?);
                    }
                    sets.push(set);
                }
                Ok(Routes {
                    routing,
                    sets,
                    groups: leaders.groups,
                    leader_of: leaders.leader_of.clone(),
                })
            }
            (Routing::Leader, None) => Err("--route leader needs the leaders".into()),
            (Routing::Spread, _) => {
                for i in 0..conns {
                    sets.push(vec![connect(endpoints[i % endpoints.len()]).await?]);
                }
                Ok(Routes {
                    routing,
                    sets,
                    groups: 1,
                    leader_of: vec![0],
                })
            }
        }
    }

    /// The connections of client task `c`.
    pub fn client(&self, c: usize) -> ClientRoutes {
        let kvs = self.sets[c % self.sets.len()].clone();
        match self.routing {
            Routing::Spread => ClientRoutes {
                kvs,
                groups: 1,
                leader_of: vec![0],
            },
            Routing::Leader => ClientRoutes {
                kvs,
                groups: self.groups,
                leader_of: self.leader_of.clone(),
            },
        }
    }
}

impl ClientRoutes {
    /// The client to send a request about `key` to.
    pub fn for_key(&mut self, key: &[u8]) -> &mut KvClient<Channel> {
        let member = if self.kvs.len() == 1 {
            0
        } else {
            let group = usize::try_from(group_of(key, self.groups)).unwrap_or(0);
            self.leader_of.get(group).copied().unwrap_or(0) % self.kvs.len()
        };
        &mut self.kvs[member]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_port_with_an_optional_http_scheme() {
        assert_eq!(host_port("127.0.0.1:2379"), Ok("127.0.0.1:2379"));
        assert_eq!(host_port("http://127.0.0.1:2379/"), Ok("127.0.0.1:2379"));
        assert!(
            host_port("https://127.0.0.1:2379")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(host_port("127.0.0.1").is_err());
        assert!(host_port("http://h:1/v3").is_err());
        assert!(host_port("").is_err());
    }
}
