//! `keel server`: one member of a replicated cluster, with etcd-style flags.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use keel_node::runtime::{ClusterState, Server, ServerConfig, ShardRuntime};

/// Run one member of a Keel cluster.
///
/// Every member of a new cluster is started with the same --initial-cluster, --groups and
/// --shards. A member restarts from its --data-dir (which remembers its cluster and member
/// and refuses another's). A member added with `etcdctl member add` starts with
/// --initial-cluster-state existing. SIGTERM or SIGINT drains in-flight requests, makes
/// everything durable and exits 0.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This member's name (one of --initial-cluster's).
    #[arg(long, default_value = "default")]
    name: String,
    /// Where the member keeps its data (created if missing).
    #[arg(long, default_value = "default.keel")]
    data_dir: PathBuf,
    /// Every member: name=peer-url, comma-separated (e.g. m1=http://127.0.0.1:12380,...).
    #[arg(long, default_value = "default=http://127.0.0.1:2380")]
    initial_cluster: String,
    /// Mixed into the cluster id (etcd's flag): give a restored cluster a token of its own
    /// (the same as `keel snapshot restore` was given). Default none.
    #[arg(long, default_value = "")]
    initial_cluster_token: String,
    /// new: every member of --initial-cluster starts a new cluster together (member ids and
    /// the cluster id follow from the flags).
    ///
    /// existing: join a running cluster that added this member (`etcdctl member add NAME
    /// --peer-urls=URL`, the URL being this member's in --initial-cluster). With an empty
    /// --data-dir the member asks the other members of --initial-cluster (their peer URLs,
    /// retrying with backoff for up to --join-timeout-ms) for the cluster id, its member id
    /// and the cluster's group and shard counts (used instead of --groups/--shards when
    /// they differ), writes them to its data directory, and catches up as a learner of
    /// every group before it becomes a voter. A name the cluster did not add is refused
    /// ("member not found").
    ///
    /// A data directory that has its identity already ignores this flag, as etcd does,
    /// except that a member of a new cluster restarted with `new` must be given the
    /// --initial-cluster it was created with (another cluster's data is refused);
    /// restart it with `existing` once the cluster's members changed.
    #[arg(long, value_enum, default_value_t = StateArg::New)]
    initial_cluster_state: StateArg,
    /// How long a joining member (--initial-cluster-state existing, empty --data-dir) keeps
    /// asking the running members before it exits with an error, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    join_timeout_ms: u64,
    /// Peer URL to listen on (shard s uses the port + s).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// Client URL to listen on (the native protocol and the etcd v3 gRPC API).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Client URL told to other members and clients (default: --listen-client-urls).
    #[arg(long)]
    advertise_client_urls: Option<String>,
    /// Raft groups of the cluster, fixed at creation (resharding is not supported yet).
    #[arg(long, default_value_t = 8)]
    groups: u32,
    /// Shards (threads) of this member, fixed at creation; default one per core.
    #[arg(long)]
    shards: Option<u32>,
    /// The raft tick, in milliseconds (elections after 10-20 ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// How the write-ahead logs write: auto (io_uring where available), uring or blocking
    /// (a writer thread with pwrite). Default from KEEL_WAL_BACKEND, else auto.
    #[arg(long, value_enum)]
    wal_backend: Option<BackendArg>,
    /// The shard threads' async runtime: tokio (current-thread, epoll) or tokio-uring (the
    /// same runtime driven from an io_uring instance). Default from KEEL_SHARD_RUNTIME,
    /// else tokio.
    #[arg(long, value_enum)]
    shard_runtime: Option<RuntimeArg>,
    /// Checkpoint a raft group (its snapshot, after which its log is compacted) once it
    /// applied this many entries since its last checkpoint (etcd's --snapshot-count).
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// Entries a group keeps in its log behind its checkpoint, so that a follower that lags
    /// a little catches up from the log instead of a snapshot (as etcd's flag).
    #[arg(long, default_value_t = 5_000)]
    snapshot_catchup_entries: u64,
    /// Do not pin shard threads to CPUs (by default shard s, with its log's threads, runs on
    /// CPU s mod cpus). Also KEEL_NO_PIN=1.
    #[arg(long)]
    no_pin: bool,
    /// etcd API: largest request in bytes (etcd's flag; default 1.5 MiB).
    #[arg(long, default_value_t = 3 << 19)]
    max_request_bytes: usize,
    /// etcd API: most operations in each list of a txn (etcd's flag).
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// etcd API: most concurrent requests (HTTP/2 streams) on one client connection.
    #[arg(long, default_value_t = 256)]
    max_concurrent_streams: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Uring,
    Blocking,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RuntimeArg {
    Tokio,
    TokioUring,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    New,
    Existing,
}

/// `host:port` or `http://host:port` (etcd's URL form; https is not served).
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let url = url.trim();
    let hostport = url.strip_prefix("http://").unwrap_or(url);
    if hostport.starts_with("https://") {
        return Err(format!("{url}: TLS is not supported yet; use http://"));
    }
    let hostport = hostport.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: not a host:port ({e})"))?
        .next()
        .ok_or_else(|| format!("{url}: resolves to no address"))
}

fn single(urls: &str, flag: &str) -> Result<SocketAddr, String> {
    let mut list = urls.split(',').filter(|u| !u.trim().is_empty());
    let first = list.next().ok_or_else(|| format!("{flag} is empty"))?;
    if list.next().is_some() {
        return Err(format!(
            "{flag}: one URL per member is served for now, got {urls}"
        ));
    }
    parse_url(first).map_err(|e| format!("{flag}: {e}"))
}

/// `--initial-cluster`: `name=peer-url`, comma-separated.
pub fn parse_initial_cluster(list: &str) -> Result<Vec<(String, SocketAddr)>, String> {
    let mut cluster = Vec::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {item} is not name=peer-url"))?;
        cluster.push((
            name.trim().to_string(),
            parse_url(url).map_err(|e| format!("--initial-cluster: {e}"))?,
        ));
    }
    Ok(cluster)
}

fn config(args: &ServerArgs) -> Result<ServerConfig, String> {
    let cluster = parse_initial_cluster(&args.initial_cluster)?;
    let listen_peer = single(&args.listen_peer_urls, "--listen-peer-urls")?;
    let listen_client = single(&args.listen_client_urls, "--listen-client-urls")?;
    let mut config = ServerConfig::new(
        args.name.clone(),
        args.data_dir.clone(),
        cluster,
        listen_peer,
        listen_client,
    );
    if let Some(a) = &args.advertise_client_urls {
        config.advertise_client = single(a, "--advertise-client-urls")?.to_string();
    }
    config.initial_cluster_state = match args.initial_cluster_state {
        StateArg::New => ClusterState::New,
        StateArg::Existing => ClusterState::Existing,
    };
    config.initial_cluster_token = args.initial_cluster_token.clone();
    config.join_wait_max = Duration::from_millis(args.join_timeout_ms);
    config.groups = args.groups;
    if let Some(s) = args.shards {
        config.shards = s;
    }
    if args.tick_ms == 0 {
        return Err("--tick-ms must be positive".into());
    }
    config.tick = Duration::from_millis(args.tick_ms);
    config.snapshot_entries = args.snapshot_entries;
    config.snapshot_catchup_entries = args.snapshot_catchup_entries;
    let backend = match args.wal_backend {
        Some(b) => b,
        None => match std::env::var("KEEL_WAL_BACKEND").as_deref() {
            Ok("uring") => BackendArg::Uring,
            Ok("blocking") => BackendArg::Blocking,
            Ok("auto") | Err(_) => BackendArg::Auto,
            Ok(other) => {
                return Err(format!(
                    "KEEL_WAL_BACKEND={other}: expected auto, uring or blocking"
                ));
            }
        },
    };
    config.etcd_limits.request_bytes_max = args.max_request_bytes;
    config.etcd_limits.txn_ops_max = args.max_txn_ops;
    config.etcd_limits.streams_per_connection_max = args.max_concurrent_streams;
    config.pin_shards = !(args.no_pin || std::env::var_os("KEEL_NO_PIN").is_some());
    config.wal_backend = match backend {
        BackendArg::Auto => keel_wal::Backend::Auto,
        BackendArg::Uring => keel_wal::Backend::Uring,
        BackendArg::Blocking => keel_wal::Backend::Blocking,
    };
    config.shard_runtime = match args.shard_runtime {
        Some(RuntimeArg::Tokio) => ShardRuntime::Tokio,
        Some(RuntimeArg::TokioUring) => ShardRuntime::TokioUring,
        None => match std::env::var("KEEL_SHARD_RUNTIME").as_deref() {
            Ok("tokio") | Err(_) => ShardRuntime::Tokio,
            Ok("tokio-uring") => ShardRuntime::TokioUring,
            Ok(other) => {
                return Err(format!(
                    "KEEL_SHARD_RUNTIME={other}: expected tokio or tokio-uring"
                ));
            }
        },
    };
    config.validate()?;
    Ok(config)
}

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts afterwards), so that
/// they are taken with `sigtimedwait` instead of killing the process.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set, and pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `timeout` for SIGTERM or SIGINT.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999) as i32),
    };
    // SAFETY: the set and timespec are valid for the call; no siginfo is requested.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &raw const ts) };
    (sig > 0).then_some(sig)
}

pub fn run(args: ServerArgs) -> Result<ExitCode, String> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let config = config(&args)?;
    let signals = block_signals();
    let server = Server::start(config.clone())?;
    tracing::info!(
        name = %config.name,
        member_id = server.member_id,
        cluster_id = format!("{:#x}", server.cluster_id),
        client = %config.listen_client,
        peer = %config.listen_peer,
        groups = server.groups,
        shards = server.shards,
        "member serving"
    );
    loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(500)) {
            tracing::info!(signal = sig, "stopping: draining in-flight requests");
            break;
        }
        if server.failed() {
            break;
        }
    }
    let failed = server.failed();
    server.shutdown()?;
    if failed {
        return Err("a shard stopped".into());
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
