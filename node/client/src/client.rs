//! The async client: routes each request to its group's leader over pooled, pipelined
//! connections, and retries what can be retried.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::route::group_of;
use crate::wire::{
    ClientLimits, ClusterStatus, DeleteRequest, DeleteResponse, ErrorStatus, GetRequest,
    GetResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, Request, Response,
    TxnRequest, TxnResponse, Write, WriteId,
};
use crate::wire::{KIND_DELETE, KIND_GET, KIND_PUT, KIND_RANGE, KIND_STATUS, KIND_TXN};

/// How a [`Client`] connects and retries. Every field has a default.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The protocol limits; the client checks requests against them before sending and uses
    /// the tighter of these and each server's. Default [`ClientLimits::default`].
    pub limits: ClientLimits,
    /// Longest wait to open a connection and exchange prefaces. Default 3 s.
    pub connect_timeout: Duration,
    /// Longest wait for one attempt's response. Default 5 s.
    pub request_timeout: Duration,
    /// Most attempts per request, the first included. Default 24: with the default
    /// backoff, about 5 s of retrying — long enough to ride out an election or a leadership
    /// transfer (a cluster's election timeout is 0.5–1 s by default), short enough to give up
    /// on a cluster that is gone.
    pub attempts_max: u32,
    /// Wait before the first retry that needs one (a retry towards a leader the server named
    /// needs none); it doubles up to `backoff_max`. Default 10 ms.
    pub backoff_initial: Duration,
    /// Longest wait between retries. Default 250 ms.
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            limits: ClientLimits::default(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            attempts_max: 24,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(250),
        }
    }
}

impl ClientOptions {
    /// Checks the limits, that there is at least one attempt, that the timeouts are not zero
    /// and that `backoff_initial <= backoff_max`.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        if self.attempts_max == 0 {
            return Err("attempts_max must be at least 1".into());
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("connect_timeout and request_timeout must not be zero".into());
        }
        if self.backoff_initial > self.backoff_max {
            return Err(format!(
                "backoff_initial {:?} exceeds backoff_max {:?}",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(())
    }
}

/// A client of a Keel cluster over the native protocol.
///
/// It learns the group map (how many groups, who leads each) from any endpoint, then sends
/// each request straight to the leader of its key's group ([`group_of`]), over one pooled
/// connection per server that carries many requests at once. It follows "not leader" answers
/// and refreshes its map, and retries a write whose fate it does not know (connection lost,
/// timeout) with the same write id, which the server uses to apply it at most once. Cloning a
/// `Client` is cheap and shares its connections and write numbering.
///
/// Retried, up to [`ClientOptions::attempts_max`] attempts with exponential backoff: a
/// connection that fails or breaks, a timeout, `NotLeader` (at once towards the named leader,
/// once per request), `GroupUnavailable`, `WrongGroup` (after reloading the group map) and
/// `Busy`. Returned at once: `InvalidArgument`, `TooLarge`, `TxnSpansGroups`, `Compacted`,
/// `Internal`, and the limits and routing errors found before sending.
///
/// # Examples
///
/// ```no_run
/// use keel_client::{
///     Client, Compare, CompareOp, CompareTarget, PutRequest, RangeRequest, TxnOp, TxnRequest,
/// };
///
/// # async fn example() -> Result<(), keel_client::Error> {
/// let client = Client::connect(&["127.0.0.1:2379", "http://10.0.0.2:2379"]).await?;
/// client.put("config/a", "1").await?;
/// let got = client.get("config/a").await?;
/// assert_eq!(got.kv.map(|kv| kv.value), Some(b"1".to_vec()));
///
/// // Keys with the same {hash tag} share a group, so one transaction can change them.
/// let swapped = client
///     .txn(TxnRequest {
///         compares: vec![Compare {
///             key: b"{user42}/balance".to_vec(),
///             target: CompareTarget::Value(b"10".to_vec()),
///             op: CompareOp::Equal,
///         }],
///         success: vec![
///             TxnOp::Put(PutRequest::new("{user42}/balance", "0")),
///             TxnOp::Put(PutRequest::new("{user42}/spent", "10")),
///         ],
///         failure: vec![],
///     })
///     .await?;
/// println!("swapped: {}", swapped.succeeded);
///
/// let all = client.range(RangeRequest::prefix("config/")).await?;
/// println!("{} keys", all.count);
/// # Ok(())
/// # }
/// ```
///
/// Errors are typed; a server's refusal carries its [`ErrorStatus`]:
///
/// ```no_run
/// # async fn example(client: keel_client::Client) {
/// use keel_client::{Error, wire::ErrorStatus};
/// match client.put(vec![0u8; 1 << 20], "v").await {
///     Err(Error::TooLarge { limit, max, .. }) => eprintln!("over {limit} ({max})"),
///     Err(e) if matches!(e.status(), Some(ErrorStatus::Busy)) => eprintln!("overloaded"),
///     Err(e) => eprintln!("{e}"),
///     Ok(_) => {}
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.client_id)
            .field("endpoints", &self.inner.seeds)
            .field("groups", &self.groups())
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: ClientOptions,
    client_id: u64,
    /// The last write sequence number handed out; writes number from 1. Advanced only under
    /// the `unanswered` lock, so that sequences enter that set in increasing order.
    sequence: AtomicU64,
    /// Sequences of the writes sent and not yet answered (or given up on): the smallest is
    /// each new write's `first_unanswered`, which therefore never decreases.
    unanswered: Mutex<BTreeSet<u64>>,
    /// The endpoints given to `connect`, normalized to `host:port`.
    seeds: Vec<String>,
    routing: Mutex<Routing>,
    pool: Mutex<HashMap<String, Arc<Connection>>>,
    /// Where the next request without a known leader goes, round robin.
    next_any: AtomicUsize,
}

/// The group map and leader cache.
#[derive(Default)]
struct Routing {
    groups: u32,
    /// Client address of each group's leader, when known.
    leaders: Vec<Option<String>>,
    /// Client address of each member.
    members: HashMap<u64, String>,
}

/// Where a request goes.
enum Route {
    /// The group of these keys (all in one group); recomputed when the group count changes.
    Keys(Vec<Vec<u8>>),
    /// This group.
    Group(u32),
    /// Any member.
    Any,
}

impl Client {
    /// Connects with default options to a cluster through any of `endpoints` (`host:port` or
    /// `http://host:port`), learning its group map from the first that answers.
    pub async fn connect(endpoints: &[&str]) -> Result<Client> {
        Client::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(endpoints: &[&str], options: ClientOptions) -> Result<Client> {
        options.validate().map_err(Error::InvalidOptions)?;
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given",
            });
        }
        let seeds = endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        let client = Client {
            inner: Arc::new(Inner {
                options,
                client_id: random_client_id(),
                sequence: AtomicU64::new(0),
                unanswered: Mutex::new(BTreeSet::new()),
                seeds,
                routing: Mutex::new(Routing::default()),
                pool: Mutex::new(HashMap::new()),
                next_any: AtomicUsize::new(0),
            }),
        };
        client.refresh().await?;
        Ok(client)
    }

    /// This client's random identity, the first half of every write id it sends.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The number of groups of the cluster, as last learned.
    pub fn groups(&self) -> u32 {
        self.routing().groups
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse> {
        self.put_request(PutRequest::new(key, value)).await
    }

    /// Sends a put with every option.
    pub async fn put_request(&self, put: PutRequest) -> Result<PutResponse> {
        let route = Route::Keys(vec![put.key.clone()]);
        let write = self.begin_write();
        match self.call(route, Request::Put(write.write, put)).await? {
            Response::Put(r) => Ok(r),
            other => Err(unexpected(KIND_PUT, other)),
        }
    }

    /// Reads `key`, linearizably.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse> {
        self.get_request(GetRequest::new(key)).await
    }

    /// Sends a get with every option.
    pub async fn get_request(&self, get: GetRequest) -> Result<GetResponse> {
        let route = Route::Keys(vec![get.key.clone()]);
        match self.call(route, Request::Get(get)).await? {
            Response::Get(r) => Ok(r),
            other => Err(unexpected(KIND_GET, other)),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse> {
        self.delete_request(DeleteRequest::new(key)).await
    }

    /// Sends a delete with every option.
    pub async fn delete_request(&self, delete: DeleteRequest) -> Result<DeleteResponse> {
        let route = Route::Keys(vec![delete.key.clone()]);
        let write = self.begin_write();
        match self
            .call(route, Request::Delete(write.write, delete))
            .await?
        {
            Response::Delete(r) => Ok(r),
            other => Err(unexpected(KIND_DELETE, other)),
        }
    }

    /// Reads a key range. Keys are spread over groups by hash, so this reads every group at
    /// once and merges: keys ascending, at most `limit`, `count` summed, and the header of
    /// the first group (each group numbers its own revisions, so `revision` other than 0 is
    /// refused when the cluster has more than one group).
    pub async fn range(&self, range: RangeRequest) -> Result<RangeResponse> {
        let groups = self.groups();
        if groups <= 1 {
            return self.range_in_group(0, range).await;
        }
        if range.revision != 0 {
            return Err(Error::InvalidArgument(format!(
                "a range at revision {} cannot span {groups} groups, which number their \
                 revisions apart; read at the current revision (0)",
                range.revision
            )));
        }
        let mut reads = tokio::task::JoinSet::new();
        for group in 0..groups {
            let (client, range) = (self.clone(), range.clone());
            reads.spawn(async move { (group, client.range_in_group(group, range).await) });
        }
        let mut parts = Vec::new();
        while let Some(joined) = reads.join_next().await {
            // The set is never aborted, so a join fails only when a read panicked: pass the
            // panic on rather than turn a bug into an error value.
            let (group, part) =
                joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            parts.push((group, part?));
        }
        parts.sort_by_key(|(group, _)| *group);
        let mut merged = RangeResponse {
            header: parts.first().map(|(_, p)| p.header).unwrap_or_default(),
            ..RangeResponse::default()
        };
        for (_, part) in parts {
            merged.count += part.count;
            merged.more |= part.more;
            merged.kvs.extend(part.kvs);
        }
        merged.kvs.sort_by(|a, b| a.key.cmp(&b.key));
        if let Ok(limit) = usize::try_from(range.limit) {
            if limit > 0 && merged.kvs.len() > limit {
                merged.kvs.truncate(limit);
                merged.more = true;
            }
        }
        Ok(merged)
    }

    /// Reads the keys of one group in a range.
    pub async fn range_in_group(&self, group: u32, range: RangeRequest) -> Result<RangeResponse> {
        match self
            .call(Route::Group(group), Request::Range(range))
            .await?
        {
            Response::Range(r) => Ok(r),
            other => Err(unexpected(KIND_RANGE, other)),
        }
    }

    /// Runs a transaction. Its keys must belong to one group (give them a common `{hash
    /// tag}`), which is checked before sending.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse> {
        let keys: Vec<Vec<u8>> = txn.routing_keys().into_iter().map(<[u8]>::to_vec).collect();
        let write = txn.has_writes().then(|| self.begin_write());
        let request = Request::Txn(write.as_ref().map(|w| w.write), txn);
        match self.call(Route::Keys(keys), request).await? {
            Response::Txn(r) => Ok(r),
            other => Err(unexpected(KIND_TXN, other)),
        }
    }

    /// Asks any member for the group map, and updates the leader cache with it.
    pub async fn status(&self) -> Result<ClusterStatus> {
        match self.call(Route::Any, Request::Status).await? {
            Response::Status(s) => {
                self.learn_status(&s);
                Ok(s)
            }
            other => Err(unexpected(KIND_STATUS, other)),
        }
    }

    /// Reloads the group map from the first endpoint that answers, trying every seed and
    /// known member in turn.
    async fn refresh(&self) -> Result<ClusterStatus> {
        let mut candidates = self.inner.seeds.clone();
        candidates.extend(self.routing().members.values().cloned());
        let mut seen = BTreeSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        let mut last = None;
        for endpoint in candidates {
            match self.attempt(&endpoint, 0, Request::Status).await {
                Ok(Response::Status(s)) => {
                    self.learn_status(&s);
                    return Ok(s);
                }
                Ok(other) => last = Some(unexpected(KIND_STATUS, other)),
                Err(e) => {
                    self.forget_endpoint(&endpoint);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no endpoint given",
        }))
    }

    fn learn_status(&self, status: &ClusterStatus) {
        let mut routing = self.routing();
        routing.groups = status.groups.max(1);
        for m in &status.members {
            routing.members.insert(m.id, m.client_address.clone());
        }
        let leaders = status
            .leaders
            .iter()
            .map(|l| l.and_then(|id| routing.members.get(&id).cloned()))
            .collect();
        routing.leaders = leaders;
        let groups = routing.groups as usize;
        routing.leaders.resize(groups, None);
    }

    /// Sends `request` where `route` says, retrying what can be retried with the very same
    /// request (and so the same write id) up to `attempts_max` times.
    async fn call(&self, route: Route, request: Request) -> Result<Response> {
        let options = &self.inner.options;
        let mut backoff = options.backoff_initial;
        let mut last = None;
        // One retry per call may skip the backoff: following a leader hint or a new group map
        // once is cheap, but members naming each other in turn during an election must not
        // burn every attempt within a millisecond.
        let mut skipped_backoff = false;
        for _ in 0..options.attempts_max {
            let group = self.group_for(&route)?;
            let endpoint = self.endpoint_for(group, &route);
            let error = match self.attempt(&endpoint, group, request.clone()).await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            if !error.is_retryable() {
                return Err(error);
            }
            let at_once = self.learn_from(&endpoint, group, &error).await && !skipped_backoff;
            skipped_backoff |= at_once;
            last = Some(error);
            if !at_once {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.backoff_max);
            }
        }
        Err(Error::RetriesExhausted {
            attempts: options.attempts_max,
            last: Box::new(last.unwrap_or(Error::InvalidOptions("no attempt made".into()))),
        })
    }

    /// One try on one endpoint, within the request timeout.
    async fn attempt(&self, endpoint: &str, group: u32, request: Request) -> Result<Response> {
        let timeout = self.inner.options.request_timeout;
        let work = async {
            let connection = self.connection(endpoint).await?;
            connection.call(group, request).await
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(Error::Timeout {
                endpoint: endpoint.to_owned(),
                after: timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(status))) => Err(Error::Server {
                endpoint: endpoint.to_owned(),
                status,
            }),
            Ok(Ok(Ok(response))) => Ok(response),
        }
    }

    /// Updates the caches after a retryable failure; returns whether to retry without
    /// waiting (the server named the leader, or the group map changed).
    async fn learn_from(&self, endpoint: &str, group: u32, error: &Error) -> bool {
        match error.status() {
            Some(ErrorStatus::NotLeader {
                leader: Some(hint), ..
            }) => {
                let mut routing = self.routing();
                routing
                    .members
                    .insert(hint.member_id, hint.client_address.clone());
                if let Some(slot) = routing.leaders.get_mut(group as usize) {
                    let repeated = slot.as_deref() == Some(hint.client_address.as_str());
                    *slot = Some(hint.client_address.clone());
                    // A member naming itself or the same stale leader again gets a pause.
                    return !repeated && hint.client_address != endpoint;
                }
                false
            }
            Some(ErrorStatus::NotLeader { leader: None, .. })
            | Some(ErrorStatus::GroupUnavailable { .. }) => {
                if let Some(slot) = self.routing().leaders.get_mut(group as usize) {
                    *slot = None;
                }
                false
            }
            Some(ErrorStatus::WrongGroup { .. }) => self.refresh().await.is_ok(),
            Some(_) => false,
            None => {
                // The endpoint failed: forget its connection and any leadership it had, so
                // that the retry asks another member.
                self.forget_endpoint(endpoint);
                let mut routing = self.routing();
                for slot in &mut routing.leaders {
                    if slot.as_deref() == Some(endpoint) {
                        *slot = None;
                    }
                }
                false
            }
        }
    }

    fn group_for(&self, route: &Route) -> Result<u32> {
        let groups = self.groups();
        match route {
            Route::Any => Ok(0),
            Route::Group(g) if *g < groups.max(1) => Ok(*g),
            Route::Group(g) => Err(Error::InvalidArgument(format!(
                "group {g} does not exist; the cluster has {groups} groups"
            ))),
            Route::Keys(keys) => {
                let set: BTreeSet<u32> = keys.iter().map(|k| group_of(k, groups)).collect();
                match set.len() {
                    0 => Ok(0),
                    1 => Ok(set.into_iter().next().unwrap_or(0)),
                    _ => Err(Error::TxnSpansGroups {
                        groups: set.into_iter().collect(),
                    }),
                }
            }
        }
    }

    /// The group's leader if known, else any member, round robin.
    fn endpoint_for(&self, group: u32, route: &Route) -> String {
        let routing = self.routing();
        if !matches!(route, Route::Any) {
            if let Some(Some(leader)) = routing.leaders.get(group as usize) {
                return leader.clone();
            }
        }
        // The members the cluster named, and the endpoints the client was given: right after
        // a cluster starts a member may not know the others' addresses yet, so the seeds stay
        // in the rotation.
        let mut all: Vec<&String> = routing
            .members
            .values()
            .chain(self.inner.seeds.iter())
            .collect();
        all.sort();
        all.dedup();
        let turn = self.inner.next_any.fetch_add(1, Ordering::Relaxed);
        all[turn % all.len()].clone()
    }

    /// The pooled connection to `endpoint`, opened (again) when there is none or it broke.
    async fn connection(&self, endpoint: &str) -> Result<Arc<Connection>> {
        if let Some(c) = self.pool().get(endpoint).filter(|c| !c.is_broken()) {
            return Ok(Arc::clone(c));
        }
        let options = &self.inner.options;
        let opened =
            Arc::new(Connection::open(endpoint, &options.limits, options.connect_timeout).await?);
        // Another caller may have opened one meanwhile; keep the first, so that requests
        // share one connection.
        let mut pool = self.pool();
        let entry = pool
            .entry(endpoint.to_owned())
            .or_insert_with(|| Arc::clone(&opened));
        if entry.is_broken() {
            *entry = Arc::clone(&opened);
        }
        Ok(Arc::clone(entry))
    }

    fn forget_endpoint(&self, endpoint: &str) {
        self.pool().remove(endpoint);
    }

    /// Numbers a new write; it counts as unanswered until the returned guard is dropped,
    /// when its call returns (answered, failed or abandoned).
    fn begin_write(&self) -> PendingWrite<'_> {
        let mut unanswered = self
            .inner
            .unanswered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        unanswered.insert(sequence);
        let first_unanswered = unanswered.first().copied().unwrap_or(sequence);
        PendingWrite {
            client: self,
            write: Write {
                id: WriteId {
                    client_id: self.inner.client_id,
                    sequence,
                },
                first_unanswered,
            },
        }
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.inner
            .routing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Connection>>> {
        self.inner
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error for a response of another kind than its request's.
fn unexpected(request_kind: u8, response: Response) -> Error {
    Error::UnexpectedResponse {
        expected: request_kind,
        found: response.kind(),
    }
}

/// A write in progress: it leaves the unanswered set when dropped.
struct PendingWrite<'a> {
    client: &'a Client,
    write: Write,
}

impl Drop for PendingWrite<'_> {
    fn drop(&mut self) {
        let mut unanswered = self
            .client
            .inner
            .unanswered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unanswered.remove(&self.write.id.sequence);
    }
}

/// `host:port` from `host:port` or `http://host:port` (with an optional trailing `/`).
fn normalize_endpoint(endpoint: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    if endpoint.starts_with("https://") {
        return Err(invalid(
            "TLS is not supported yet; use http:// or host:port",
        ));
    }
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains("://") {
        return Err(invalid("expected host:port or http://host:port"));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(rest.to_owned())
        }
        _ => Err(invalid("expected host:port with a numeric port")),
    }
}

/// A random, non-zero client id: the standard library's per-process random hash keys mixed
/// with the time and the process id, so that two clients never share one in practice.
fn random_client_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::normalize_endpoint;

    #[test]
    fn endpoints_normalize_to_host_port() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://db-1:2379/").unwrap(),
            "db-1:2379"
        );
        assert_eq!(normalize_endpoint("[::1]:2379").unwrap(), "[::1]:2379");
        for bad in [
            "",
            "db-1",
            "db-1:http",
            "https://db-1:2379",
            "http://db-1:2379/v3",
            ":2379",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }
}
