//! The client against a small fake cluster written here: members that speak the native
//! protocol through `keel_client::wire` and answer from a `BTreeMap` per group. A member that
//! does not lead a group answers `NotLeader` with the leader's address, as a real follower
//! does; the cluster can hold responses back to prove pipelining, and drop a connection after
//! applying a write to prove retries reuse the write id.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::wire::{
    self, ClientLimits, ClusterStatus, Compare, CompareOp, CompareTarget, DeleteResponse,
    ErrorStatus, GetResponse, KeyValue, LeaderHint, MemberInfo, OpResponse, PrefaceCode,
    PutRequest, PutResponse, RangeRequest, RangeResponse, Request, RequestDecoder, RequestFrame,
    Response, ResponseFrame, ResponseHeader, ServerPreface, TxnOp, TxnRequest, TxnResponse, Write,
    WriteId,
};
use keel_client::{Client, ClientOptions, Error, group_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One group's data.
#[derive(Default)]
struct Group {
    revision: u64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
}

#[derive(Default)]
struct State {
    groups: u32,
    addresses: Vec<String>,
    /// The member (index) leading each group.
    leader_of: Vec<usize>,
    /// What status answers say about leaders: may be stale on purpose.
    advertised_leaders: Vec<Option<u64>>,
    data: Vec<Group>,
    /// Responses of applied writes, by write id: the exactly-once table.
    applied: HashMap<WriteId, Response>,
    /// Every write received, by member, in order, with its key.
    writes_seen: Vec<(usize, Write, Vec<u8>)>,
    /// Requests each member received for each group (status excluded).
    requests: HashMap<(usize, u32), u64>,
    /// Connections each member accepted.
    connections: HashMap<usize, u64>,
    /// Apply the next put of this key, then drop the connection without answering.
    drop_after_applying: Option<Vec<u8>>,
    /// Hold responses back until this many are waiting, then send them in reverse order.
    hold: Option<usize>,
    /// Answer this many of the next requests (status excluded) with `Busy`.
    busy_for: u32,
    /// Refuse new connections in the preface with this code.
    refuse: Option<PrefaceCode>,
    /// Advertise this `request_bytes_max` in the preface instead of the default.
    request_bytes_max: Option<u32>,
}

#[derive(Clone)]
struct FakeCluster {
    state: Arc<Mutex<State>>,
}

fn member_id(index: usize) -> u64 {
    index as u64 + 1
}

impl FakeCluster {
    /// `members` members over `groups` groups; group g is led by member `g % members`.
    async fn start(members: usize, groups: u32) -> FakeCluster {
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..members {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.push(listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let leader_of: Vec<usize> = (0..groups as usize).map(|g| g % members).collect();
        let state = State {
            groups,
            addresses,
            advertised_leaders: leader_of.iter().map(|&m| Some(member_id(m))).collect(),
            leader_of,
            data: (0..groups).map(|_| Group::default()).collect(),
            ..State::default()
        };
        let cluster = FakeCluster {
            state: Arc::new(Mutex::new(state)),
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    *cluster.state().connections.entry(index).or_default() += 1;
                    tokio::spawn(cluster.clone().serve(index, stream));
                }
            });
        }
        cluster
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn address(&self, member: usize) -> String {
        self.state().addresses[member].clone()
    }

    /// One connection: prefaces, then requests in, responses out.
    async fn serve(self, me: usize, mut stream: TcpStream) {
        let mut preface = [0u8; wire::CLIENT_PREFACE_BYTES];
        stream.read_exact(&mut preface).await.unwrap();
        assert_eq!(
            wire::decode_client_preface(&preface).unwrap(),
            wire::VERSION
        );
        let limits = ClientLimits::default();
        let (refuse, request_bytes_max) = {
            let state = self.state();
            (state.refuse, state.request_bytes_max)
        };
        let answer = ServerPreface {
            version: wire::VERSION + u16::from(refuse == Some(PrefaceCode::VersionUnsupported)),
            code: refuse.unwrap_or(PrefaceCode::Accepted),
            request_bytes_max: request_bytes_max.unwrap_or(limits.request_bytes_max),
            in_flight_per_connection_max: limits.in_flight_per_connection_max,
        };
        stream.write_all(&answer.encode()).await.unwrap();
        if refuse.is_some() {
            return;
        }
        let mut decoder = RequestDecoder::new(limits.clone());
        let mut held: Vec<ResponseFrame> = Vec::new();
        let mut chunk = vec![0u8; 4096];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.extend(&chunk[..n]);
            let mut out = Vec::new();
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) if !e.is_fatal() => {
                        let id = e.request_id().unwrap();
                        let status = e.to_status();
                        held.push(ResponseFrame {
                            id,
                            result: Err(status),
                        });
                        continue;
                    }
                    Err(e) => panic!("fatal decode error: {e}"),
                };
                let Some(response) = self.handle(me, &frame) else {
                    return; // drop the connection without answering
                };
                held.push(response);
            }
            let hold = self.state().hold;
            match hold {
                Some(n) if held.len() < n => continue,
                Some(_) => {
                    self.state().hold = None;
                    held.reverse();
                }
                None => {}
            }
            for response in held.drain(..) {
                wire::encode_response(&response, &limits, &mut out).unwrap();
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// The response to one request, or `None` to drop the connection.
    fn handle(&self, me: usize, frame: &RequestFrame) -> Option<ResponseFrame> {
        let mut state = self.state();
        let result = state.answer(me, frame);
        let drop_now = matches!(&frame.request, Request::Put(_, p)
            if state.drop_after_applying.as_deref() == Some(p.key.as_slice()) && result.is_ok());
        if drop_now {
            state.drop_after_applying = None;
            return None;
        }
        Some(ResponseFrame {
            id: frame.id,
            result,
        })
    }
}

impl State {
    fn answer(&mut self, me: usize, frame: &RequestFrame) -> Result<Response, ErrorStatus> {
        let group = frame.group;
        let keys: Vec<&[u8]> = match &frame.request {
            Request::Status => {
                return Ok(Response::Status(ClusterStatus {
                    member_id: member_id(me),
                    groups: self.groups,
                    members: (0..self.addresses.len())
                        .map(|m| MemberInfo {
                            id: member_id(m),
                            client_address: self.addresses[m].clone(),
                        })
                        .collect(),
                    leaders: self.advertised_leaders.clone(),
                }));
            }
            Request::Put(_, p) => vec![&p.key],
            Request::Get(g) => vec![&g.key],
            Request::Delete(_, d) => vec![&d.key],
            Request::Range(_) => vec![],
            Request::Txn(_, t) => t.routing_keys(),
        };
        *self.requests.entry((me, group)).or_default() += 1;
        if group >= self.groups || keys.iter().any(|k| group_of(k, self.groups) != group) {
            return Err(ErrorStatus::WrongGroup {
                groups: self.groups,
            });
        }
        let leader = self.leader_of[group as usize];
        if leader != me {
            return Err(ErrorStatus::NotLeader {
                group,
                leader: Some(LeaderHint {
                    member_id: member_id(leader),
                    client_address: self.addresses[leader].clone(),
                }),
            });
        }
        if let Some(w) = frame.request.write() {
            let key = keys.first().map(|k| k.to_vec()).unwrap_or_default();
            self.writes_seen.push((me, w, key));
            if let Some(done) = self.applied.get(&w.id) {
                return Ok(done.clone());
            }
        }
        if self.busy_for > 0 {
            self.busy_for -= 1;
            return Err(ErrorStatus::Busy);
        }
        let data = &mut self.data[group as usize];
        let header = |data: &Group| ResponseHeader {
            group,
            revision: data.revision,
            member_id: member_id(me),
        };
        let response = match &frame.request {
            Request::Put(_, p) => {
                data.revision += 1;
                let prev_kv = put(data, p);
                Response::Put(PutResponse {
                    header: header(data),
                    prev_kv,
                })
            }
            Request::Get(g) => Response::Get(GetResponse {
                header: header(data),
                kv: data.kvs.get(&g.key).cloned(),
            }),
            Request::Delete(_, d) => {
                let prev = data.kvs.remove(&d.key);
                if prev.is_some() {
                    data.revision += 1;
                }
                Response::Delete(DeleteResponse {
                    header: header(data),
                    deleted: u64::from(prev.is_some()),
                    prev_kvs: prev.filter(|_| d.prev_kv).into_iter().collect(),
                })
            }
            Request::Range(r) => {
                if r.revision != 0 && r.revision != data.revision {
                    return Err(ErrorStatus::Compacted {
                        compact_revision: data.revision,
                    });
                }
                let (kvs, count, more) = range(data, r);
                Response::Range(RangeResponse {
                    header: header(data),
                    kvs,
                    count,
                    more,
                })
            }
            Request::Txn(_, t) => {
                let succeeded = t.compares.iter().all(|c| holds(data, c));
                let ops = if succeeded { &t.success } else { &t.failure };
                if t.has_writes() {
                    data.revision += 1;
                }
                let responses = ops
                    .iter()
                    .map(|op| match op {
                        TxnOp::Put(p) => OpResponse::Put {
                            prev_kv: put(data, p),
                        },
                        TxnOp::Delete(d) => {
                            let prev = data.kvs.remove(&d.key);
                            OpResponse::Delete {
                                deleted: u64::from(prev.is_some()),
                                prev_kvs: prev.filter(|_| d.prev_kv).into_iter().collect(),
                            }
                        }
                        TxnOp::Range(r) => {
                            let (kvs, count, more) = range(data, r);
                            OpResponse::Range { kvs, count, more }
                        }
                    })
                    .collect();
                Response::Txn(TxnResponse {
                    header: header(data),
                    succeeded,
                    responses,
                })
            }
            Request::Status => unreachable!("answered above"),
        };
        if let Some(w) = frame.request.write_id() {
            self.applied.insert(w, response.clone());
        }
        Ok(response)
    }
}

fn put(data: &mut Group, p: &PutRequest) -> Option<KeyValue> {
    let revision = data.revision;
    let prev = data.kvs.get(&p.key).cloned();
    let kv = KeyValue {
        key: p.key.clone(),
        value: p.value.clone(),
        create_revision: prev.as_ref().map_or(revision, |kv| kv.create_revision),
        mod_revision: revision,
        version: prev.as_ref().map_or(1, |kv| kv.version + 1),
    };
    data.kvs.insert(p.key.clone(), kv);
    prev.filter(|_| p.prev_kv)
}

fn range(data: &Group, r: &RangeRequest) -> (Vec<KeyValue>, u64, bool) {
    let all: Vec<KeyValue> = data
        .kvs
        .values()
        .filter(|kv| r.contains(&kv.key))
        .cloned()
        .collect();
    let count = all.len() as u64;
    let limit = match r.limit {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let kvs: Vec<KeyValue> = all.into_iter().take(limit).collect();
    let more = (kvs.len() as u64) < count;
    (kvs, count, more)
}

fn holds(data: &Group, c: &Compare) -> bool {
    let kv = data.kvs.get(&c.key);
    let field = |f: fn(&KeyValue) -> u64| kv.map_or(0, f);
    let ordering = match &c.target {
        CompareTarget::Value(v) => match kv {
            Some(kv) => kv.value.cmp(v),
            None => return false,
        },
        CompareTarget::Version(n) => field(|kv| kv.version).cmp(n),
        CompareTarget::CreateRevision(n) => field(|kv| kv.create_revision).cmp(n),
        CompareTarget::ModRevision(n) => field(|kv| kv.mod_revision).cmp(n),
    };
    match c.op {
        CompareOp::Equal => ordering.is_eq(),
        CompareOp::NotEqual => ordering.is_ne(),
        CompareOp::Greater => ordering.is_gt(),
        CompareOp::Less => ordering.is_lt(),
    }
}

/// The `n`th key starting with `prefix` that falls in `group`.
fn key_in_group(prefix: &str, group: u32, groups: u32, n: usize) -> Vec<u8> {
    (0..)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .filter(|k| group_of(k, groups) == group)
        .nth(n)
        .unwrap()
}

fn quick() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn requests_reach_group_leaders_and_a_stale_leader_cache_is_refreshed() {
    let cluster = FakeCluster::start(2, 2).await;
    // Status answers claim member 1 (index 0) leads both groups; member 2 leads group 1.
    cluster.state().advertised_leaders = vec![Some(1), Some(1)];
    let seed = format!("http://{}", cluster.address(0));
    let client = Client::connect_with(&[seed.as_str()], quick())
        .await
        .unwrap();
    assert_eq!(client.groups(), 2);

    let (a0, a1) = (key_in_group("a", 0, 2, 0), key_in_group("a", 1, 2, 0));
    let (b0, b1) = (key_in_group("b", 0, 2, 0), key_in_group("b", 1, 2, 0));
    client.put(a0.clone(), "va0").await.unwrap();
    let put = client.put(a1.clone(), "va1").await.unwrap();
    assert_eq!((put.header.group, put.header.member_id), (1, 2));
    // The refused attempt taught the client the leader: the next request to group 1 goes
    // straight to member 2.
    client.put(b1.clone(), "vb1").await.unwrap();
    client.put(b0.clone(), "vb0").await.unwrap();
    {
        let state = cluster.state();
        assert_eq!(
            state.requests.get(&(0, 1)),
            Some(&1),
            "one NotLeader for group 1"
        );
        assert_eq!(state.requests.get(&(1, 1)), Some(&2));
        assert_eq!(state.requests.get(&(0, 0)), Some(&2));
        assert_eq!(state.requests.get(&(1, 0)), None);
    }

    let got = client.get(a1.clone()).await.unwrap();
    let kv = got.kv.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision),
        (&b"va1"[..], 1, 1)
    );
    assert!(client.get("missing").await.unwrap().kv.is_none());

    // A range reads both groups and merges.
    let all = client.range(RangeRequest::prefix("")).await.unwrap();
    let mut expected = vec![a0.clone(), a1.clone(), b0.clone(), b1.clone()];
    expected.sort();
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!((all.count, all.more), (4, false));
    let limited = client
        .range(RangeRequest::prefix("").with_limit(3))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.count, limited.more),
        (3, 4, true)
    );
    assert_eq!(limited.kvs[0].key, expected[0]);

    // A compare-and-swap on keys sharing a hash tag.
    let cas = |expect: &'static str, new: &'static str| TxnRequest {
        compares: vec![Compare {
            key: b"{acct}/balance".to_vec(),
            target: CompareTarget::Value(expect.into()),
            op: CompareOp::Equal,
        }],
        success: vec![
            TxnOp::Put(PutRequest::new("{acct}/balance", new)),
            TxnOp::Put(PutRequest::new("{acct}/log", new)),
        ],
        failure: vec![TxnOp::Range(RangeRequest::between("{acct}/balance", ""))],
    };
    client.put("{acct}/balance", "10").await.unwrap();
    let swapped = client.txn(cas("10", "0")).await.unwrap();
    assert!(swapped.succeeded);
    let refused = client.txn(cas("10", "5")).await.unwrap();
    assert!(!refused.succeeded);
    match &refused.responses[..] {
        [OpResponse::Range { kvs, .. }] => assert_eq!(kvs[0].value, b"0"),
        other => panic!("unexpected {other:?}"),
    }

    // A transaction across groups is refused before anything is sent.
    let before = cluster.state().requests.values().sum::<u64>();
    let spanning = TxnRequest {
        success: vec![
            TxnOp::Put(PutRequest::new(a0.clone(), "x")),
            TxnOp::Put(PutRequest::new(a1.clone(), "x")),
        ],
        ..TxnRequest::default()
    };
    match client.txn(spanning).await {
        Err(Error::TxnSpansGroups { groups }) => assert_eq!(groups, vec![0, 1]),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(cluster.state().requests.values().sum::<u64>(), before);

    // Errors that retrying cannot cure come back typed, at once.
    let stale = RangeRequest {
        revision: 1,
        ..RangeRequest::prefix("")
    };
    assert!(matches!(
        client.range(stale.clone()).await,
        Err(Error::InvalidArgument(_))
    ));
    let error = client.range_in_group(0, stale).await.unwrap_err();
    assert!(
        matches!(error.status(), Some(ErrorStatus::Compacted { .. })),
        "{error}"
    );
    let error = client.put(vec![b'k'; 70_000], "v").await.unwrap_err();
    assert!(error.to_string().contains("key_bytes_max"), "{error}");

    // Every write carried this client's id and a fresh sequence number.
    let state = cluster.state();
    // These writes were made one after the other: each found every earlier one answered.
    let mut sequences: Vec<u64> = state
        .writes_seen
        .iter()
        .inspect(|(_, w, _)| assert_eq!(w.id.client_id, client.client_id()))
        .inspect(|(_, w, _)| assert_eq!(w.first_unanswered, w.id.sequence))
        .map(|(_, w, _)| w.id.sequence)
        .collect();
    sequences.dedup();
    let mut sorted = sequences.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        sequences.len(),
        "no two writes share a sequence"
    );
}

#[tokio::test]
async fn many_requests_share_one_connection_in_flight() {
    let cluster = FakeCluster::start(1, 1).await;
    let client = Client::connect_with(&[cluster.address(0).as_str()], quick())
        .await
        .unwrap();
    const REQUESTS: usize = 64;
    // The member answers nothing until all of them are waiting, then answers in reverse
    // order: a client sending one request at a time would hang here.
    cluster.state().hold = Some(REQUESTS);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let client = client.clone();
        calls.spawn(async move {
            let key = format!("k{i:03}");
            let put = client.put(key.clone(), format!("v{i}")).await.unwrap();
            (key, put.header.revision)
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(10), calls.join_all())
        .await
        .expect("the requests were not pipelined");
    assert_eq!(done.len(), REQUESTS);
    for i in 0..REQUESTS {
        let kv = client.get(format!("k{i:03}")).await.unwrap().kv.unwrap();
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    assert_eq!(cluster.state().connections.get(&0), Some(&1));

    // Concurrent writes told the server how far the client had heard back: never past a
    // write still waiting, and, once all were answered, up to the next write.
    let seen: Vec<Write> = cluster
        .state()
        .writes_seen
        .iter()
        .map(|(_, w, _)| *w)
        .collect();
    assert_eq!(seen.len(), REQUESTS);
    assert!(
        seen.iter()
            .all(|w| w.first_unanswered >= 1 && w.first_unanswered <= w.id.sequence)
    );
    client.put("after", "all").await.unwrap();
    let last = cluster.state().writes_seen.last().unwrap().1;
    assert_eq!(last.first_unanswered, last.id.sequence);
    assert_eq!(last.id.sequence, REQUESTS as u64 + 1);
}

#[tokio::test]
async fn a_write_whose_connection_drops_is_retried_with_the_same_id_and_applied_once() {
    let cluster = FakeCluster::start(2, 1).await;
    let endpoints = [cluster.address(0), cluster.address(1)];
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let client = Client::connect_with(&endpoints, quick()).await.unwrap();
    client.put("before", "1").await.unwrap();
    cluster.state().drop_after_applying = Some(b"fragile".to_vec());

    let put = client.put("fragile", "once").await.unwrap();
    assert_eq!(put.header.member_id, 1);

    let state = cluster.state();
    let attempts: Vec<Write> = state
        .writes_seen
        .iter()
        .filter(|(_, _, key)| key == b"fragile")
        .map(|(_, w, _)| *w)
        .collect();
    assert_eq!(
        attempts.len(),
        2,
        "the first attempt and one retry: {attempts:?}"
    );
    assert_eq!(
        attempts[0], attempts[1],
        "the retry reused (client id, sequence)"
    );
    assert_eq!(attempts[0].id.client_id, client.client_id());
    assert_eq!(
        attempts[0].id.sequence, 2,
        "the second write of this client"
    );
    // Applied once: version 1, and the group's revision moved by one for it.
    let kv = &state.data[0].kvs[&b"fragile"[..]];
    assert_eq!((kv.version, state.data[0].revision), (1, 2));
    assert_eq!(
        state.connections.get(&0),
        Some(&2),
        "the client reconnected"
    );
}

#[tokio::test]
async fn busy_answers_are_retried_with_the_same_write_and_then_given_up_typed() {
    let cluster = FakeCluster::start(1, 1).await;
    let client = Client::connect_with(&[cluster.address(0).as_str()], quick())
        .await
        .unwrap();
    cluster.state().busy_for = 3;
    client.put("k", "v").await.unwrap();
    {
        let state = cluster.state();
        let ids: Vec<WriteId> = state.writes_seen.iter().map(|(_, w, _)| w.id).collect();
        assert_eq!(ids.len(), 4, "three refusals and a success");
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert_eq!(state.data[0].kvs[&b"k"[..]].version, 1);
    }

    cluster.state().busy_for = u32::MAX;
    let error = client.get("k").await.unwrap_err();
    match &error {
        Error::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, quick().attempts_max);
            assert!(matches!(last.status(), Some(ErrorStatus::Busy)), "{last}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(error.to_string().contains(&cluster.address(0)), "{error}");
}

#[tokio::test]
async fn a_refused_handshake_is_a_typed_error_naming_the_endpoint() {
    let cluster = FakeCluster::start(1, 1).await;
    let address = cluster.address(0);
    cluster.state().refuse = Some(PrefaceCode::VersionUnsupported);
    let error = Client::connect_with(&[address.as_str()], quick())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Handshake { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&address) && message.contains("version"),
        "{message}"
    );

    cluster.state().refuse = Some(PrefaceCode::Busy);
    let error = Client::connect_with(&[address.as_str()], quick())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no more connections"), "{error}");

    let error = Client::connect(&["db-1"]).await.unwrap_err();
    assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_client_recovers_on_a_new_connection() {
    let cluster = FakeCluster::start(1, 1).await;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(100),
        attempts_max: 2,
        ..quick()
    };
    let client = Client::connect_with(&[cluster.address(0).as_str()], options)
        .await
        .unwrap();
    cluster.state().hold = Some(usize::MAX);
    let error = client.put("k", "v").await.unwrap_err();
    match &error {
        Error::RetriesExhausted { attempts: 2, last } => {
            assert!(matches!(**last, Error::Timeout { .. }), "{last}");
        }
        other => panic!("unexpected {other}"),
    }
    // The timed-out connection was given up; the next request opens a new one.
    cluster.state().hold = None;
    client.put("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().kv.unwrap().value, b"v");
    assert!(cluster.state().connections[&0] >= 2);
}

#[tokio::test]
async fn the_servers_smaller_request_limit_is_checked_before_sending() {
    let cluster = FakeCluster::start(1, 1).await;
    cluster.state().request_bytes_max = Some(1024);
    let client = Client::connect_with(&[cluster.address(0).as_str()], quick())
        .await
        .unwrap();
    let error = client.put("k", vec![7u8; 2000]).await.unwrap_err();
    match &error {
        Error::TooLarge { limit, max, .. } => {
            assert_eq!((*limit, *max), ("request_bytes_max", 1024))
        }
        other => panic!("unexpected {other}"),
    }
    assert!(cluster.state().writes_seen.is_empty(), "nothing was sent");
    client.put("k", vec![7u8; 500]).await.unwrap();
}
