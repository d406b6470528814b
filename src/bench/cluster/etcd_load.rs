//! The load of `keel bench cluster --api etcd`: the same closed-loop workloads as `load`,
//! through the etcd v3 gRPC API (keel-etcd-proto's generated `KvClient`), so that Keel and
//! etcd are measured with one client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use keel_etcd_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op, response_op,
};

use super::etcd_route::{ClientRoutes, Routes};
use super::load::{Counter, LoadOutcome, LoadSpec, SplitMix64, TaskOutcome, Workload, key, merge};
use crate::bench::{show_progress, thousands};

/// Most attempts at preloading one key when the cluster answers `UNAVAILABLE` (a member that
/// does not know a group's leader yet, just after start-up).
const PRELOAD_ATTEMPTS_MAX: u32 = 50;

/// The pause between those attempts.
const PRELOAD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes every key once with `concurrency` tasks, showing progress.
pub async fn preload(routes: &Routes, spec: &LoadSpec, concurrency: usize) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; spec.size];
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency.max(1) {
        let (mut client, next, value, keys) =
            (routes.client(t), next.clone(), value.clone(), spec.keys);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                let k = key(i);
                let mut attempt = 1;
                loop {
                    let request = PutRequest {
                        key: k.clone(),
                        value: value.clone(),
                        ..PutRequest::default()
                    };
                    match client.for_key(&k).put(request).await {
                        Ok(_) => break,
                        Err(e)
                            if e.code() == tonic::Code::Unavailable
                                && attempt < PRELOAD_ATTEMPTS_MAX =>
                        {
                            attempt += 1;
                            tokio::time::sleep(PRELOAD_RETRY_PAUSE).await;
                        }
                        Err(e) => {
                            return Err(format!(
                                "preloading key {i} (attempt {attempt}): {}",
                                failed(&e)
                            ));
                        }
                    }
                }
            }
        });
    }
    let mut last_shown = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        if last_shown.elapsed() >= std::time::Duration::from_secs(1) {
            last_shown = Instant::now();
            let done = next.load(Ordering::Relaxed).min(spec.keys);
            show_progress(&format!(
                "{:6.1}s  preloading {} of {} keys",
                started.elapsed().as_secs_f64(),
                thousands(done),
                thousands(spec.keys)
            ));
        }
    }
    crate::bench::clear_progress();
    Ok(())
}

/// Runs `spec.clients` closed-loop tasks for the spec's duration, task `c` on the
/// connections of `routes.client(c)`. `done` counts answered operations as they finish.
pub async fn run(routes: &Routes, spec: &LoadSpec, done: Arc<AtomicU64>) -> LoadOutcome {
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..spec.clients {
        let client = routes.client(c);
        let (spec, done) = (spec.clone(), done.clone());
        tasks.spawn(async move { client_loop(c, client, &spec, deadline, &done).await });
    }
    let mut outcomes = Vec::with_capacity(spec.clients);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    merge(outcomes, started.elapsed())
}

async fn client_loop(
    index: usize,
    mut client: ClientRoutes,
    spec: &LoadSpec,
    deadline: Instant,
    done: &AtomicU64,
) -> TaskOutcome {
    let mut rng = SplitMix64::seeded(index);
    let mut out = TaskOutcome::new();
    let value = vec![b'x'; spec.size];
    let serializable = matches!(spec.read, keel_client::ReadConsistency::Serializable);
    let mut counter = Counter::new(index, spec.size);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let result = match spec.workload {
            Workload::Put => put(&mut client, &mut rng, spec, &value).await,
            Workload::Get => get(&mut client, &mut rng, spec, serializable).await,
            Workload::Mixed if rng.next() & 1 == 0 => {
                put(&mut client, &mut rng, spec, &value).await
            }
            Workload::Mixed => get(&mut client, &mut rng, spec, serializable).await,
            Workload::Txn => counter.increment_etcd(&mut client).await.map(|swapped| {
                out.txn_conflicts += u64::from(!swapped);
            }),
        };
        out.record(t0, result, done);
    }
    out
}

fn failed(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn put(
    client: &mut ClientRoutes,
    rng: &mut SplitMix64,
    spec: &LoadSpec,
    value: &[u8],
) -> Result<(), String> {
    let k = key(rng.below(spec.keys));
    let request = PutRequest {
        value: value.to_vec(),
        ..PutRequest::default()
    };
    client
        .for_key(&k)
        .put(PutRequest { key: k, ..request })
        .await
        .map(|_| ())
        .map_err(|e| failed(&e))
}

async fn get(
    client: &mut ClientRoutes,
    rng: &mut SplitMix64,
    spec: &LoadSpec,
    serializable: bool,
) -> Result<(), String> {
    let k = key(rng.below(spec.keys));
    let request = RangeRequest {
        serializable,
        ..RangeRequest::default()
    };
    client
        .for_key(&k)
        .range(RangeRequest { key: k, ..request })
        .await
        .map(|_| ())
        .map_err(|e| failed(&e))
}

/// The txn workload through the etcd API, the native workload's shape: a `Txn` that compares
/// the counter's value with the one last seen (its version with 0 before the first) and
/// then puts the counter plus one and a value of the run's size beside it, or else reads the
/// counter for the next try.
impl Counter {
    /// One compare-and-swap; returns whether the swap happened.
    async fn increment_etcd(&mut self, client: &mut ClientRoutes) -> Result<bool, String> {
        let (target, target_union, next) = match &self.seen {
            Some(seen) => {
                let n: u64 = std::str::from_utf8(seen)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (
                    compare::CompareTarget::Value,
                    compare::TargetUnion::Value(seen.clone()),
                    n + 1,
                )
            }
            None => (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(0),
                1,
            ),
        };
        let next = next.to_string().into_bytes();
        let put = |key: &[u8], value: &[u8]| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..PutRequest::default()
            })),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal.into(),
                target: target.into(),
                key: self.counter_key.clone(),
                target_union: Some(target_union),
                ..Compare::default()
            }],
            success: vec![
                put(&self.counter_key, &next),
                put(&self.value_key, &self.value),
            ],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: self.counter_key.clone(),
                    ..RangeRequest::default()
                })),
            }],
        };
        let response = client
            .for_key(&self.counter_key)
            .txn(txn)
            .await
            .map_err(|e| failed(&e))?
            .into_inner();
        if response.succeeded {
            self.seen = Some(next);
        } else {
            self.seen = match response.responses.first().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.first().map(|kv| kv.value.clone())
                }
                _ => None,
            };
        }
        Ok(response.succeeded)
    }
}
