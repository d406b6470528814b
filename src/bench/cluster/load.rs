//! The load of `keel bench cluster`: closed-loop client tasks, each waiting for its
//! request's answer before sending the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_client::{
    Client, Compare, CompareOp, CompareTarget, GetRequest, OpResponse, PutRequest, RangeRequest,
    ReadConsistency, TxnOp, TxnRequest,
};

use crate::bench::{Latencies, show_progress, thousands};

/// What every client task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random preloaded keys.
    Get,
    /// Half puts, half gets, of random preloaded keys.
    Mixed,
    /// Compare-and-swap increments of a counter key per client, with a value written beside
    /// it in the same group (a `{hash tag}` per client).
    Txn,
}

/// The load's shape.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub workload: Workload,
    pub clients: usize,
    pub size: usize,
    pub keys: u64,
    pub duration: Duration,
    pub read: ReadConsistency,
}

/// What the tasks measured.
pub struct LoadOutcome {
    /// Operations answered (successful or not: a failed compare is an answered txn).
    pub ops: u64,
    pub elapsed: Duration,
    pub lat: Latencies,
    /// Operations that failed after the client's retries.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Transactions whose compare failed (the counter was not what the client last saw).
    pub txn_conflicts: u64,
}

/// The key of index `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

/// Writes every key once with `concurrency` tasks spread over `clients`, showing progress.
pub async fn preload(
    clients: &[Client],
    spec: &LoadSpec,
    concurrency: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; spec.size];
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency.max(1) {
        let (client, next, value, keys) = (
            clients[t % clients.len()].clone(),
            next.clone(),
            value.clone(),
            spec.keys,
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                client
                    .put(key(i), value.clone())
                    .await
                    .map_err(|e| format!("preloading key {i}: {e}"))?;
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
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if last_shown.elapsed() >= Duration::from_secs(1) {
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

/// Runs `spec.clients` closed-loop tasks, client task `i` on `clients[i % clients.len()]`,
/// for the spec's duration. `done` counts answered operations as they finish (for progress).
pub async fn run(clients: &[Client], spec: &LoadSpec, done: Arc<AtomicU64>) -> LoadOutcome {
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..spec.clients {
        let client = clients[c % clients.len()].clone();
        let (spec, done) = (spec.clone(), done.clone());
        tasks.spawn(async move { client_loop(c, &client, &spec, deadline, &done).await });
    }
    let mut outcomes = Vec::with_capacity(spec.clients);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    merge(outcomes, started.elapsed())
}

/// The load's outcome from its tasks' and its wall time.
pub fn merge(tasks: Vec<TaskOutcome>, elapsed: Duration) -> LoadOutcome {
    let mut outcome = LoadOutcome {
        ops: 0,
        elapsed,
        lat: Latencies::new(),
        errors: 0,
        first_error: None,
        txn_conflicts: 0,
    };
    for task in tasks {
        outcome.lat.merge(&task.lat);
        outcome.errors += task.errors;
        outcome.txn_conflicts += task.txn_conflicts;
        if outcome.first_error.is_none() {
            outcome.first_error = task.first_error;
        }
    }
    outcome.ops = outcome.lat.count();
    outcome
}

/// What one client task measured.
pub struct TaskOutcome {
    pub lat: Latencies,
    pub errors: u64,
    pub first_error: Option<String>,
    pub txn_conflicts: u64,
}

impl TaskOutcome {
    /// Counts one operation started at `t0`: its latency and the shared count when it
    /// succeeded, the error otherwise.
    pub fn record(&mut self, t0: Instant, result: Result<(), String>, done: &AtomicU64) {
        match result {
            Ok(()) => {
                self.lat.record(t0.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub fn new() -> TaskOutcome {
        TaskOutcome {
            lat: Latencies::new(),
            errors: 0,
            first_error: None,
            txn_conflicts: 0,
        }
    }
}

async fn client_loop(
    index: usize,
    client: &Client,
    spec: &LoadSpec,
    deadline: Instant,
    done: &AtomicU64,
) -> TaskOutcome {
    let mut rng = SplitMix64::seeded(index);
    let mut out = TaskOutcome::new();
    let value = vec![b'x'; spec.size];
    let mut counter = Counter::new(index, spec.size);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let result = match spec.workload {
            Workload::Put => put(client, &mut rng, spec, &value).await,
            Workload::Get => get(client, &mut rng, spec).await,
            Workload::Mixed if rng.next() & 1 == 0 => put(client, &mut rng, spec, &value).await,
            Workload::Mixed => get(client, &mut rng, spec).await,
            Workload::Txn => counter.increment(client).await.map(|swapped| {
                out.txn_conflicts += u64::from(!swapped);
            }),
        };
        out.record(t0, result, done);
    }
    out
}

async fn put(
    client: &Client,
    rng: &mut SplitMix64,
    spec: &LoadSpec,
    value: &[u8],
) -> Result<(), String> {
    let k = key(rng.below(spec.keys));
    client
        .put_request(PutRequest::new(k, value))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn get(client: &Client, rng: &mut SplitMix64, spec: &LoadSpec) -> Result<(), String> {
    let request = GetRequest {
        consistency: spec.read,
        ..GetRequest::new(key(rng.below(spec.keys)))
    };
    client
        .get_request(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One client's counter for the txn workload: `{bench-cN}/counter` holds a decimal count,
/// `{bench-cN}/value` a value of the run's size, both in the group of the tag.
/// Both keys share a `{hash tag}`, so a cluster of several groups holds them in one. The
/// etcd API's workload (`etcd_load.rs`) drives the same counters.
pub(super) struct Counter {
    pub(super) counter_key: Vec<u8>,
    pub(super) value_key: Vec<u8>,
    pub(super) value: Vec<u8>,
    /// The counter as last seen: `None` before the first read (the key may be absent or
    /// left by an earlier run).
    pub(super) seen: Option<Vec<u8>>,
}

impl Counter {
    pub(super) fn new(index: usize, size: usize) -> Counter {
        Counter {
            counter_key: format!("{{bench-c{index}}}/counter").into_bytes(),
            value_key: format!("{{bench-c{index}}}/value").into_bytes(),
            value: vec![b't'; size],
            seen: None,
        }
    }

    /// One compare-and-swap: if the counter is what was last seen, write it plus one and the
    /// value; otherwise read it (in the same transaction) for the next try. Returns whether
    /// the swap happened.
    async fn increment(&mut self, client: &Client) -> Result<bool, String> {
        let (compare, next) = match &self.seen {
            Some(seen) => {
                let n: u64 = std::str::from_utf8(seen)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (
                    Compare {
                        key: self.counter_key.clone(),
                        target: CompareTarget::Value(seen.clone()),
                        op: CompareOp::Equal,
                    },
                    n + 1,
                )
            }
            None => (
                Compare {
                    key: self.counter_key.clone(),
                    target: CompareTarget::Version(0),
                    op: CompareOp::Equal,
                },
                1,
            ),
        };
        let next = next.to_string().into_bytes();
        let txn = TxnRequest {
            compares: vec![compare],
            success: vec![
                TxnOp::Put(PutRequest::new(self.counter_key.clone(), next.clone())),
                TxnOp::Put(PutRequest::new(self.value_key.clone(), self.value.clone())),
            ],
            failure: vec![TxnOp::Range(RangeRequest {
                key: self.counter_key.clone(),
                ..RangeRequest::default()
            })],
        };
        let response = client.txn(txn).await.map_err(|e| e.to_string())?;
        if response.succeeded {
            self.seen = Some(next);
        } else {
            self.seen = match response.responses.first() {
                Some(OpResponse::Range { kvs, .. }) => kvs.first().map(|kv| kv.value.clone()),
                _ => None,
            };
        }
        Ok(response.succeeded)
    }
}

/// A small, fast generator for key choice; quality far beyond what picking keys needs.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator of client task `index`.
    pub fn seeded(index: usize) -> SplitMix64 {
        SplitMix64(0x9e37_79b9_7f4a_7c15 ^ index as u64)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for `n` far below 2^64.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
