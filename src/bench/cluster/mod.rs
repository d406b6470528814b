//! `keel bench cluster`: a closed-loop load on a replicated cluster over the client protocol.
//!
//! By default it starts its own cluster of `keel server` child processes on 127.0.0.1
//! (`members`), waits until every group has a leader, runs the load (`load`), then stops
//! the members with SIGTERM and removes their directories. With `--endpoints` it drives a
//! cluster that is already running instead. The CPU time the members spend during the load
//! (`cpu`) is divided by the operations answered: the server's cost per operation; for a
//! cluster that is not ours, `--server-pids` names the processes to measure.
//!
//! `--api etcd` runs the same workloads through the etcd v3 gRPC API with a client of its
//! own (`etcd_route`, `etcd_load`), against Keel's members or, with `--endpoints`, any
//! etcd-API cluster, etcd itself included: one client, so that the two are compared fairly.

mod cpu;
mod etcd_load;
mod etcd_route;
mod load;
mod members;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_client::{Client, ClientOptions, ReadConsistency};

use super::{BenchDir, Progress, thousands, whole};
use load::{LoadOutcome, LoadSpec, Workload};
use members::{ClusterSpec, LocalCluster};

/// Longest wait for a cluster of our own to elect a leader in every group.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a member to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ApiArg {
    /// Keel's native protocol, through keel-client.
    Native,
    /// The etcd v3 gRPC API, through a client of the bench's own (keel-etcd-proto's
    /// generated one over hyper's HTTP/2): against Keel or any etcd-API cluster.
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RouteArg {
    /// Each request to the member leading its key's group (learned before the load: Keel's
    /// native status, or etcd's Maintenance.Status), --conns connections to each member.
    Leader,
    /// As etcd's benchmark tool: --conns connections in all, round-robin over the
    /// endpoints, clients round-robin over the connections; members not leading forward.
    Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Puts of random keys out of --keys.
    Put,
    /// Gets of random keys out of --keys, all written first.
    Get,
    /// Half puts, half gets, of random keys out of --keys, all written first.
    Mixed,
    /// Compare-and-swap increments of one counter key per client (hash-tagged, so that the
    /// counter and a value of --size bytes beside it share a group).
    Txn,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReadArg {
    /// Confirmed with a quorum by the leader (read index).
    Linearizable,
    /// Served by the leader under its lease (native API only).
    Lease,
    /// Served by any member from its own state.
    Serializable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// One thread runs every client task.
    CurrentThread,
    /// Two worker threads share the client tasks.
    MultiThread,
}

/// A replicated cluster over the client protocol.
#[derive(Args, Debug)]
pub struct ClusterBenchArgs {
    /// Drive this running cluster (comma-separated `host:port` or `http://host:port`)
    /// instead of starting one; the members' CPU time is then measured only with
    /// --server-pids. With --api etcd, any etcd-API cluster (etcd itself included).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// With --endpoints: the server processes (comma-separated pids on this machine) whose
    /// CPU time during the load, read from /proc, gives `cpu_us_per_op`.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Members of the cluster to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent closed-loop clients (async tasks), each waiting for its answer before
    /// sending again.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections to each member. keel-client keeps one pipelined connection per member
    /// in each `Client`, so this many `Client`s are made and the clients spread over them.
    /// With --api etcd, HTTP/2 connections to each member (--route leader) or in all
    /// (--route spread), the clients spread over them.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Distinct keys the put, get and mixed workloads choose from.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Seconds to run the load (after preloading).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// What each client does.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Put)]
    workload: WorkloadArg,
    /// How gets are served.
    #[arg(long, value_enum, default_value_t = ReadArg::Linearizable)]
    read: ReadArg,
    /// Raft groups of the cluster to start.
    #[arg(long, default_value_t = 8)]
    groups: u32,
    /// Shards per member of the cluster to start (default: the server's, one per core).
    #[arg(long)]
    shards: Option<u32>,
    /// The client API.
    #[arg(long, value_enum, default_value_t = ApiArg::Native)]
    api: ApiArg,
    /// With --api etcd: where requests go (the native client always sends each to its
    /// group's leader).
    #[arg(long, value_enum, default_value_t = RouteArg::Leader)]
    route: RouteArg,
    /// The client side's tokio runtime. One thread is the default: on a 2-core machine it
    /// spent about 30% less client CPU per linearizable get than two workers, the same per
    /// put, at the same throughput.
    #[arg(long, value_enum, default_value_t = RuntimeArg::CurrentThread)]
    client_runtime: RuntimeArg,
    /// Directory for the members' data and logs (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the members' data and logs afterwards.
    #[arg(long)]
    keep: bool,
}

impl ClusterBenchArgs {
    fn validate(&self) -> Result<(), String> {
        if matches!(self.api, ApiArg::Etcd)
            && matches!(self.read, ReadArg::Lease)
            && matches!(self.workload, WorkloadArg::Get | WorkloadArg::Mixed)
        {
            return Err(
                "--read lease is served by the native API only: etcd's Range is \
                        linearizable or serializable; use --api native or another --read"
                    .into(),
            );
        }
        if matches!(self.api, ApiArg::Native) && matches!(self.route, RouteArg::Spread) {
            return Err(
                "--route spread is for --api etcd: the native client sends every \
                        request to its group's leader"
                    .into(),
            );
        }
        if !self.server_pids.is_empty() {
            if self.endpoints.is_empty() {
                return Err(
                    "--server-pids is for --endpoints: the members the bench starts \
                            are measured anyway"
                        .into(),
                );
            }
            for pid in &self.server_pids {
                cpu::cpu_time(&pid.to_string())
                    .map_err(|e| format!("--server-pids: process {pid}: {e}"))?;
            }
        }
        for endpoint in &self.endpoints {
            etcd_route::host_port(endpoint)?;
        }
        if self.endpoints.is_empty() && !(1..=9).contains(&self.nodes) {
            return Err(format!("--nodes must be within [1, 9], got {}", self.nodes));
        }
        if !(1..=100_000).contains(&self.clients) {
            return Err(format!(
                "--clients must be within [1, 100000], got {}",
                self.clients
            ));
        }
        if !(1..=self.clients).contains(&self.conns) {
            return Err(format!(
                "--conns must be within [1, --clients = {}], got {}",
                self.clients, self.conns
            ));
        }
        if self.size == 0 || self.size > 1 << 20 {
            return Err(format!(
                "--size must be within [1, 1 MiB], got {}",
                self.size
            ));
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if !(self.secs.is_finite() && self.secs > 0.0 && self.secs <= 86_400.0) {
            return Err(format!(
                "--secs must be within (0, 86400], got {}",
                self.secs
            ));
        }
        if self.groups == 0 || self.groups > 65_536 {
            return Err(format!(
                "--groups must be within [1, 65536], got {}",
                self.groups
            ));
        }
        if self.shards == Some(0) {
            return Err("--shards must be at least 1".into());
        }
        Ok(())
    }

    fn spec(&self) -> LoadSpec {
        LoadSpec {
            workload: match self.workload {
                WorkloadArg::Put => Workload::Put,
                WorkloadArg::Get => Workload::Get,
                WorkloadArg::Mixed => Workload::Mixed,
                WorkloadArg::Txn => Workload::Txn,
            },
            clients: self.clients,
            size: self.size,
            keys: self.keys,
            duration: Duration::from_secs_f64(self.secs),
            read: match self.read {
                ReadArg::Linearizable => ReadConsistency::Linearizable,
                ReadArg::Lease => ReadConsistency::Lease,
                ReadArg::Serializable => ReadConsistency::Serializable,
            },
        }
    }
}

/// What the run measured besides the load itself.
struct Report {
    nodes: usize,
    groups: u32,
    outcome: LoadOutcome,
    /// The members' CPU time during the load, when they are ours.
    server_cpu: Option<Duration>,
    /// This process's CPU time during the load.
    client_cpu: Duration,
    /// The members' shards' (durable writes, groups in them, entries in them) over their
    /// lives, preload included, when they are ours.
    batching: Option<(u64, u64, u64)>,
}

pub fn run(args: &ClusterBenchArgs) -> Result<ExitCode, String> {
    args.validate()?;
    let runtime = match args.client_runtime {
        RuntimeArg::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        RuntimeArg::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .map_err(|e| format!("starting the client runtime: {e}"))?;
    let report = if args.endpoints.is_empty() {
        run_own_cluster(args, &runtime)?
    } else {
        let endpoints: Vec<&str> = args.endpoints.iter().map(String::as_str).collect();
        runtime.block_on(run_load(args, &endpoints, &args.server_pids))?
    };
    drop(runtime);
    print_report(args, &report);
    match &report.outcome.first_error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!(
                "keel: {} operations failed; the first: {e}",
                thousands(report.outcome.errors)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Starts the members, runs the load, stops them (SIGTERM) and removes their directory.
fn run_own_cluster(
    args: &ClusterBenchArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<Report, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("finding the keel binary to start members with: {e}"))?;
    let dir = BenchDir::new(args.dir.as_deref(), "cluster", args.keep)?;
    let spec = ClusterSpec {
        exe,
        nodes: args.nodes,
        groups: args.groups,
        shards: args.shards,
    };
    let mut cluster = LocalCluster::start(&spec, dir.path())?;
    let started = Instant::now();
    // The client that saw the cluster ready is not needed: the load connects its own.
    let _ready = runtime.block_on(cluster.wait_ready(READY_TIMEOUT))?;
    eprintln!(
        "cluster of {} members ready in {:.1} s ({}{})",
        args.nodes,
        started.elapsed().as_secs_f64(),
        dir.path().display(),
        if args.keep { ", kept" } else { "" }
    );
    let endpoints = cluster.endpoints();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let report = runtime.block_on(run_load(args, &endpoints, &cluster.pids()));
    // Stop the members whatever the load's outcome, and tell how they went.
    for (name, status) in cluster.stop(STOP_GRACE)? {
        if !status.success() {
            eprintln!("keel: member {name} exited with {status} after SIGTERM");
        }
    }
    let mut report = report?;
    report.batching = cluster.batching();
    Ok(report)
}

/// Runs the load through the API asked for, measuring the CPU time of `pids` (the
/// members, when ours or named by --server-pids) and of this process.
async fn run_load(
    args: &ClusterBenchArgs,
    endpoints: &[&str],
    pids: &[u32],
) -> Result<Report, String> {
    match args.api {
        ApiArg::Native => run_native_load(args, endpoints, pids).await,
        ApiArg::Etcd => run_etcd_load(args, endpoints, pids).await,
    }
}

/// Learns the leaders (--route leader), opens the HTTP/2 connections, preloads if the
/// workload reads, and runs the load through the etcd API.
async fn run_etcd_load(
    args: &ClusterBenchArgs,
    endpoints: &[&str],
    pids: &[u32],
) -> Result<Report, String> {
    let endpoints = endpoints
        .iter()
        .map(|e| etcd_route::host_port(e))
        .collect::<Result<Vec<_>, _>>()?;
    let routing = match args.route {
        RouteArg::Leader => etcd_route::Routing::Leader,
        RouteArg::Spread => etcd_route::Routing::Spread,
    };
    // Learned for both routings: the group count and the member count go in the report.
    let leaders = etcd_route::discover(&endpoints).await;
    let leaders = match (routing, leaders) {
        (_, Ok(l)) => Some(l),
        (etcd_route::Routing::Leader, Err(e)) => return Err(e),
        (etcd_route::Routing::Spread, Err(e)) => {
            eprintln!("keel: the leaders are unknown ({e}); spreading as asked");
            None
        }
    };
    let routes =
        etcd_route::Routes::open(routing, &endpoints, leaders.as_ref(), args.conns).await?;
    let spec = args.spec();
    if matches!(spec.workload, Workload::Get | Workload::Mixed) {
        let concurrency = (args.clients * 4).clamp(16, 256);
        etcd_load::preload(&routes, &spec, concurrency).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let progress = progress_line(done.clone());
    let server_before = cpu::cpu_time_of(pids)?;
    let client_before = cpu::cpu_time("self")?;
    let outcome = etcd_load::run(&routes, &spec, done).await;
    let server_after = cpu::cpu_time_of(pids)?;
    let client_after = cpu::cpu_time("self")?;
    drop(progress);
    let (members, groups) = match &leaders {
        Some(l) if l.is_keel => (l.members.len(), l.groups),
        _ => (endpoints.len(), 1),
    };
    Ok(Report {
        nodes: members.max(endpoints.len()),
        groups,
        outcome,
        server_cpu: (!pids.is_empty()).then(|| server_after.saturating_sub(server_before)),
        client_cpu: client_after.saturating_sub(client_before),
        batching: None,
    })
}

/// Connects `--conns` clients, preloads if the workload reads, and runs the load through
/// the native API.
async fn run_native_load(
    args: &ClusterBenchArgs,
    endpoints: &[&str],
    pids: &[u32],
) -> Result<Report, String> {
    let mut clients = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let client = Client::connect_with(endpoints, ClientOptions::default())
            .await
            .map_err(|e| format!("connecting to {}: {e}", endpoints.join(",")))?;
        clients.push(client);
    }
    let status = clients[0]
        .status()
        .await
        .map_err(|e| format!("asking {} for the cluster status: {e}", endpoints.join(",")))?;
    let spec = args.spec();
    if matches!(spec.workload, Workload::Get | Workload::Mixed) {
        let concurrency = (args.clients * 4).clamp(16, 256);
        load::preload(&clients, &spec, concurrency).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let progress = progress_line(done.clone());
    let server_before = cpu::cpu_time_of(pids)?;
    let client_before = cpu::cpu_time("self")?;
    let outcome = load::run(&clients, &spec, done).await;
    let server_after = cpu::cpu_time_of(pids)?;
    let client_after = cpu::cpu_time("self")?;
    drop(progress);
    Ok(Report {
        // A member may know of fewer members than were started (their addresses spread
        // through the cluster), and endpoints may name fewer than there are.
        nodes: status.members.len().max(endpoints.len()),
        groups: status.groups,
        outcome,
        server_cpu: (!pids.is_empty()).then(|| server_after.saturating_sub(server_before)),
        client_cpu: client_after.saturating_sub(client_before),
        batching: None,
    })
}

fn progress_line(done: Arc<AtomicU64>) -> Progress {
    let last = std::sync::Mutex::new((Duration::ZERO, 0u64));
    Progress::start(move |elapsed| {
        let n = done.load(Ordering::Relaxed);
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (t0, n0) = *last;
        *last = (elapsed, n);
        let window = (elapsed - t0).as_secs_f64().max(1e-9);
        format!(
            "{:6.1}s  ops {:>12}  ops/s {:>10} (last second {:>10})",
            elapsed.as_secs_f64(),
            thousands(n),
            thousands(whole(n as f64 / elapsed.as_secs_f64().max(1e-9))),
            thousands(whole((n - n0) as f64 / window)),
        )
    })
}

impl Report {
    fn ops_per_sec(&self) -> f64 {
        self.outcome.ops as f64 / self.outcome.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds per answered operation.
    fn per_op(&self, cpu: Duration) -> Option<f64> {
        (self.outcome.ops > 0).then(|| cpu.as_secs_f64() * 1e6 / self.outcome.ops as f64)
    }
}

fn show_per_op(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{v:.1}"))
}

fn workload_name(w: WorkloadArg) -> &'static str {
    match w {
        WorkloadArg::Put => "put",
        WorkloadArg::Get => "get",
        WorkloadArg::Mixed => "mixed",
        WorkloadArg::Txn => "txn",
    }
}

fn read_name(r: ReadArg) -> &'static str {
    match r {
        ReadArg::Linearizable => "linearizable",
        ReadArg::Lease => "lease",
        ReadArg::Serializable => "serializable",
    }
}

fn api_name(a: ApiArg) -> &'static str {
    match a {
        ApiArg::Native => "native",
        ApiArg::Etcd => "etcd",
    }
}

fn route_name(r: RouteArg) -> &'static str {
    match r {
        RouteArg::Leader => "leader",
        RouteArg::Spread => "spread",
    }
}

fn print_report(args: &ClusterBenchArgs, r: &Report) {
    let o = &r.outcome;
    let api = api_name(args.api);
    let conns = match (args.api, args.route) {
        (ApiArg::Etcd, RouteArg::Spread) => "in all",
        _ => "per member",
    };
    let server = r.server_cpu.and_then(|cpu| r.per_op(cpu));
    let client = r.per_op(r.client_cpu);
    let shards = args
        .shards
        .map_or_else(|| "server default".into(), |s| s.to_string());
    println!(
        "cluster: {} members, {} groups, shards {shards}; {api} API, routed to {}; {} clients \
         over {} connection(s) {conns}; workload {}, {} B values, {} keys, reads {}",
        r.nodes,
        r.groups,
        match (args.api, args.route) {
            (ApiArg::Etcd, RouteArg::Spread) => "any member",
            _ => "each key's leader",
        },
        args.clients,
        args.conns,
        workload_name(args.workload),
        args.size,
        thousands(args.keys),
        read_name(args.read),
    );
    println!(
        "{:<14} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>16} {:>16}",
        "",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "errors",
        "server cpu µs/op",
        "client cpu µs/op"
    );
    println!(
        "{:<14} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>16} {:>16}",
        format!("{api} {}", workload_name(args.workload)),
        thousands(whole(r.ops_per_sec())),
        o.lat.p(0.5),
        o.lat.p(0.99),
        o.lat.p(0.999),
        o.lat.max(),
        thousands(o.errors),
        show_per_op(server),
        show_per_op(client),
    );
    if args.workload == WorkloadArg::Txn {
        println!(
            "transactions whose compare failed: {}",
            thousands(o.txn_conflicts)
        );
    }
    let per_write = |n: u64| match r.batching {
        Some((writes, ..)) if writes > 0 => format!("{:.2}", n as f64 / writes as f64),
        _ => "n/a".to_string(),
    };
    let (groups_per_write, entries_per_write) = match r.batching {
        Some((writes, groups, entries)) => {
            println!(
                "durable writes of the members' shards: {}, groups per write {}, entries per \
                 write {} (over the members' lives, preload included)",
                thousands(writes),
                per_write(groups),
                per_write(entries)
            );
            (per_write(groups), per_write(entries))
        }
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    println!(
        "cluster api={api} nodes={} clients={} workload={} conns={} size={} groups={} \
         read={} route={} ops/s={:.0} p50_us={} p99_us={} p999_us={} cpu_us_per_op={} \
         client_cpu_us_per_op={} errors={} groups_per_write={groups_per_write} \
         entries_per_write={entries_per_write}",
        r.nodes,
        args.clients,
        workload_name(args.workload),
        args.conns,
        args.size,
        r.groups,
        read_name(args.read),
        route_name(args.route),
        r.ops_per_sec(),
        o.lat.p(0.5),
        o.lat.p(0.99),
        o.lat.p(0.999),
        show_per_op(server),
        show_per_op(client),
        o.errors,
    );
}
