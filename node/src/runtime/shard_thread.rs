//! One shard's thread: its runtime, its WAL and log store, its transport, its share of the
//! client port, and the event loop that drives the shard.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::log_backend::AsyncLogBackend;
use keel_engine::txn::{Op, RangeRequest, Txn};
use keel_engine::{LogStore, LogStoreOptions};
use keel_wal::{Wal, WalOptions};
use tokio::sync::{mpsc, oneshot, watch};

use super::{ClusterView, ServerConfig, ShardRequest, ShardRuntime, ShardWork};
use crate::host::{self, HOUSEKEEPING_TICKS, SystemClock, Ticked, Ticker};
use crate::members::{MEMBERS_KEY, MemberList};
use crate::server::etcd::{Forwards, MemberRecord};
use crate::server::{self, RESERVED_PREFIX, ServerContext};
use crate::shard::{Outcome, RequestId, Shard, ShardError, ShardOptions, SnapshotOptions};
use crate::transport::{JoinAnswers, Transport, TransportOptions};

/// Everything a shard thread starts from.
pub(super) struct ShardContext {
    pub(super) index: u32,
    pub(super) config: ServerConfig,
    pub(super) identity: super::Identity,
    pub(super) view: Arc<ClusterView>,
    pub(super) senders: Vec<mpsc::Sender<ShardRequest>>,
    pub(super) requests: mpsc::Receiver<ShardRequest>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) ready: std::sync::mpsc::Sender<Result<(), String>>,
    /// Shard 0: housekeepings in a row that found this member removed from the member list
    /// (see [`removed_from_list`]).
    pub(super) unlisted_housekeepings: std::cell::Cell<u32>,
}

/// Housekeepings a member removed from the member list goes on serving while it still
/// leads groups (they hand leadership over before they remove it): 20, 10 s at the default
/// tick.
const REMOVED_LEADING_HOUSEKEEPINGS_MAX: u32 = 20;
/// How long a stopping shard waits for its appends in flight.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Pins the calling thread to one CPU. Threads it spawns afterwards (the WAL's writer and
/// preparer) inherit the CPU, so a shard's wake-ups of its own log stay on its core.
fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes a bit inside it for a
    // CPU below CPU_SETSIZE (checked); sched_setaffinity reads the set for this thread (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("cpu {cpu} is beyond CPU_SETSIZE"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(format!(
                "pinning to cpu {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

pub(super) fn run(ctx: ShardContext) -> Result<(), String> {
    let ready = ctx.ready.clone();
    if ctx.config.pin_shards {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = usize::try_from(ctx.index).unwrap_or(0) % cpus;
        if let Err(e) = pin_to_cpu(cpu) {
            tracing::warn!(shard = ctx.index, error = %e, "shard not pinned");
        }
    }
    let index = ctx.index;
    let result = match ctx.config.shard_runtime {
        ShardRuntime::Tokio => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(serve(ctx))),
        ShardRuntime::TokioUring => {
            tokio_uring::Runtime::new(&tokio_uring::builder()).map(|rt| rt.block_on(serve(ctx)))
        }
    };
    let result = match result {
        Ok(served) => served,
        Err(e) => {
            let e = format!("shard {index}: building its runtime: {e}");
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "shard stopped");
        let _ = ready.send(Err(e.clone()));
    }
    result
}

fn offset_port(addr: SocketAddr, by: u32) -> Result<SocketAddr, String> {
    let port = u32::from(addr.port()) + by;
    let port = u16::try_from(port)
        .map_err(|_| format!("peer port {port} of shard {by} is out of range"))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

/// A listener on the client port that every shard binds (`SO_REUSEPORT`), so that the
/// kernel spreads connections over the shards.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on a descriptor this function owns; the address structures
    // are fully initialized before being passed with their exact sizes.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(format!(
                "client socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const one).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
            );
            if rc != 0 {
                return Err(format!(
                    "client socket option: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let rc = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    (&raw const sin).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>())
                        .unwrap_or(16),
                )
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                libc::bind(
                    fd,
                    (&raw const sin6).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in6>())
                        .unwrap_or(28),
                )
            }
        };
        if rc != 0 {
            return Err(format!(
                "binding the client port {addr}: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::listen(fd, 1024) != 0 {
            return Err(format!(
                "listening on {addr}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(listener)
    }
}

/// Where group 0 keeps each member's client address: the prefix, then the member id in 20
/// digits.
fn members_prefix() -> Vec<u8> {
    let mut prefix = RESERVED_PREFIX.to_vec();
    prefix.extend_from_slice(b"members/");
    prefix
}

fn member_key(id: u64) -> Vec<u8> {
    let mut key = members_prefix();
    key.extend_from_slice(format!("{id:020}").as_bytes());
    key
}

async fn serve(mut ctx: ShardContext) -> Result<(), String> {
    let index = ctx.index;
    let config = ctx.config.clone();
    let shard_dir = config.data_dir.join(format!("shard-{index}"));
    let wal_options = WalOptions {
        segment_bytes: config.wal_segment_bytes,
        backend: config.wal_backend,
        ..WalOptions::default()
    };
    let (wal, report) =
        Wal::open_with_progress(&shard_dir, wal_options, &mut |_| {}).map_err(|e| {
            format!(
                "shard {index}: opening its log in {}: {e}",
                shard_dir.display()
            )
        })?;
    tracing::info!(
        shard = index,
        records = report.records,
        segments = report.segments,
        "log recovered"
    );
    let wal = Arc::new(wal);
    let started = Instant::now();
    let store = LogStore::open(wal.clone(), LogStoreOptions::default(), &mut |_| {})
        .map_err(|e| format!("shard {index}: recovering its log store: {e}"))?;
    let groups: Vec<u64> = (0..u64::from(config.groups))
        .filter(|g| g % u64::from(config.shards) == u64::from(index))
        .collect();
    let member_id = ctx.identity.member_id;
    let cluster_id = ctx.identity.cluster_id;
    let mut options = ShardOptions::new(member_id, ctx.identity.bootstrap.clone());
    options.raft.election_ticks = 10;
    options.raft.heartbeat_ticks = 1;
    options.snapshots = SnapshotOptions {
        dir: Some(shard_dir.join("checkpoints")),
        snapshot_entries: config.snapshot_entries,
        catchup_entries: config.snapshot_catchup_entries,
        ..SnapshotOptions::default()
    };
    let mut shard =
        Shard::new(options, store, &groups).map_err(|e| format!("shard {index}: {e}"))?;
    tracing::info!(
        shard = index,
        millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "log store and groups recovered (from checkpoints and the log after them)"
    );
    // Helper threads (checkpoint writers, snapshot installs) wake the loop through this.
    let helpers = Arc::new(tokio::sync::Notify::new());
    shard.set_waker(std::task::Waker::from(Arc::new(NotifyWaker(
        helpers.clone(),
    ))));
    let mut purging: Option<tokio::task::JoinHandle<()>> = None;

    let mut transport_options = TransportOptions::new(
        cluster_id,
        member_id,
        offset_port(config.listen_peer, index)?,
    );
    for &(id, addr, _) in &ctx.identity.peers {
        if id != member_id {
            transport_options
                .peers
                .insert(id, offset_port(addr, index)?);
        }
    }
    if index == 0 {
        // Joiners dial the peer address of shard 0, the one the member list holds.
        let identity = ctx.identity.clone();
        let view = ctx.view.clone();
        transport_options.join_answers = Some(JoinAnswers(Arc::new(move |request| {
            super::join::answer(&identity, &view, request)
        })));
    }
    let (transport, mut inbound) = Transport::start(transport_options)
        .await
        .map_err(|e| format!("shard {index}: starting its peer transport: {e}"))?;
    let mut chunks = inbound
        .take_chunks()
        .ok_or_else(|| format!("shard {index}: the transport's chunk queue is gone"))?;

    let listener = reuseport_listener(config.listen_client)?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("shard {index}: client listener: {e}"))?;
    let server_ctx = Arc::new(ServerContext {
        member_id,
        groups: config.groups,
        shards: ctx.senders.clone(),
        view: ctx.view.clone(),
        limits: config.client_limits.clone(),
        connections_max: config.client_connections_max,
        connections: std::sync::atomic::AtomicUsize::new(0),
        cluster_id,
        members: ctx
            .identity
            .peers
            .iter()
            .map(|(id, peer, name)| MemberRecord {
                id: *id,
                name: name.clone(),
                peer_urls: vec![format!("http://{peer}")],
            })
            .collect(),
        etcd_limits: config.etcd_limits.clone(),
        forwards: Forwards::default(),
        snapshots_open: Arc::default(),
    });
    let accept = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(server::serve(server_ctx.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    let _ = ctx.ready.send(Ok(()));
    tracing::info!(shard = index, groups = groups.len(), "shard serving");

    let mut pending: HashMap<RequestId, oneshot::Sender<Outcome>> = HashMap::new();
    let mut next_request: RequestId = 1;
    // The interval wakes the loop; the clock says whether a tick is due (one per wake-up:
    // both start at the same instant, see `Ticker`).
    let clock = SystemClock::new();
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::from_std(clock.start()), config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticker = Ticker::new(config.tick, HOUSEKEEPING_TICKS, Duration::ZERO);
    let result = loop {
        let durable = std::future::poll_fn(|cx| host::poll_durable(&mut shard, cx));
        tokio::select! {
            biased;
            changed = ctx.shutdown.changed() => {
                if changed.is_err() || *ctx.shutdown.borrow() {
                    break Ok(());
                }
            }
            done = durable => match done {
                Ok(()) => {}
                Err(ShardError::Log(e)) => break Err(format!("shard {index}: its log failed: {e}")),
                Err(e) => break Err(e.to_string()),
            },
            Some(chunk) = chunks.recv() => {
                if let Err(error) = shard.receive_snapshot_chunk(chunk) {
                    tracing::warn!(shard = index, %error, "snapshot chunk dropped");
                }
            }
            _ = helpers.notified() => {}
            Some(m) = inbound.recv() => {
                shard.step(m);
                for _ in 0..4096 {
                    let Some(m) = inbound.try_recv() else { break };
                    shard.step(m);
                }
            }
            Some(r) = ctx.requests.recv(), if pending.len() < config.shard_pending_requests_max => {
                let mut r = Some(r);
                for _ in 0..4096 {
                    if pending.len() >= config.shard_pending_requests_max {
                        break;
                    }
                    let Some(req) = r.take().or_else(|| ctx.requests.try_recv().ok()) else { break };
                    let id = next_request;
                    next_request += 1;
                    pending.insert(id, req.reply);
                    match req.work {
                        ShardWork::Write { client_id, sequence, floor, txn } => {
                            shard.write(id, req.group, (client_id, sequence, floor), txn);
                        }
                        ShardWork::Read { range, consistency } => {
                            shard.read(id, req.group, range, consistency);
                        }
                        ShardWork::Compact { revision } => {
                            shard.compact(id, req.group, revision);
                        }
                    }
                }
            }
            _ = interval.tick() => {
                let ticked = ticker.run(&mut shard, &clock);
                if ctx.index == 0
                    && ticked != Ticked::Nothing
                    && ticker.ticks() % HOUSEKEEPING_TICKS == HOUSEKEEPING_TICKS / 2
                {
                    // A second look at group 0's active voters half-way between two
                    // housekeepings: the leader forgets who was active every election
                    // timeout, which may fall on the housekeeping's tick every time.
                    ctx.view.set_active_voters(shard.active_voters(0));
                }
                if ticked == Ticked::Housekeeping {
                    if let Err(e) = housekeeping(&mut shard, &ctx, &config, &transport) {
                        break Err(e);
                    }
                    purge_log(&mut shard, &wal, &mut purging, index);
                }
            }
        }
        if let Err(e) = host::run_rounds(&mut shard, &transport, &mut answer(&mut pending)) {
            break Err(format!("shard {index}: {e}"));
        }
    };
    accept.abort();
    // Drain: the appends in flight become durable before the shard stops.
    let deadline = Instant::now() + DRAIN_MAX;
    while shard.in_flight() > 0 && Instant::now() < deadline {
        let durable = std::future::poll_fn(|cx| host::poll_durable(&mut shard, cx));
        match tokio::time::timeout(Duration::from_millis(100), durable).await {
            Ok(Ok(())) => {
                let _ = host::run_rounds(&mut shard, &transport, &mut answer(&mut pending));
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    transport.shutdown().await;
    let stats = shard.stats();
    // The log store joins appends staged behind the one in flight: the WAL's flushes are the
    // durable writes.
    let wal_flushes = shard.store().borrow().log().stats().flushes;
    tracing::info!(
        shard = index,
        durable_writes = wal_flushes,
        writes = stats.writes,
        groups_written = stats.groups_written,
        entries_written = stats.entries_written,
        "shard write batching"
    );
    tracing::info!(shard = index, "shard stopped");
    result
}

/// Wakes the shard's loop from a helper thread.
struct NotifyWaker(Arc<tokio::sync::Notify>);

impl std::task::Wake for NotifyWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

/// Frees the log behind the groups' compactions: the purge (intent file, renames, fsyncs)
/// runs on a blocking thread, one at a time, never on the shard's.
fn purge_log<B: AsyncLogBackend>(
    shard: &mut Shard<B>,
    wal: &Arc<Wal>,
    purging: &mut Option<tokio::task::JoinHandle<()>>,
    index: u32,
) {
    let busy = purging.as_ref().is_some_and(|p| !p.is_finished());
    host::purge_log(shard, busy, |lsn| {
        let wal = wal.clone();
        *purging = Some(tokio::task::spawn_blocking(move || {
            match wal.purge_before(lsn) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(shard = index, segments = n, lsn, "log purged"),
                Err(error) => tracing::warn!(shard = index, %error, "purging the log failed"),
            }
        }));
    });
}

/// Hands an answer to the request that waits for it.
fn answer(
    pending: &mut HashMap<RequestId, oneshot::Sender<Outcome>>,
) -> impl FnMut(RequestId, Outcome) + '_ {
    |id, outcome| {
        if let Some(reply) = pending.remove(&id) {
            let _ = reply.send(outcome);
        }
    }
}

/// Every few ticks: move leadership to preferred members, publish this shard's leaders,
/// (shard 0, which hosts group 0) read the member list and publish and learn the members'
/// client addresses, and (every shard) drive the groups and the transport toward the
/// member list. An error means this member was removed from the cluster: the shard stops.
fn housekeeping<B: AsyncLogBackend>(
    shard: &mut Shard<B>,
    ctx: &ShardContext,
    config: &ServerConfig,
    transport: &Transport,
) -> Result<(), String> {
    let removed = shard.removed_groups();
    if !removed.is_empty() {
        tracing::error!(
            member = ctx.identity.member_id,
            groups = ?removed,
            "this member was removed from the cluster; it stops serving"
        );
        return Err(format!(
            "member {} was removed from the cluster (groups {removed:?} applied its removal); \
             it stops serving",
            ctx.identity.member_id
        ));
    }
    if ctx.index == 0 {
        read_member_list(shard, ctx);
        ctx.view.set_active_voters(shard.active_voters(0));
        removed_from_list(ctx)?;
    }
    if let Some(list) = ctx.view.member_list() {
        follow_member_list(shard, ctx, transport, &list);
    }
    host::housekeeping(shard);
    let groups: Vec<u64> = shard.groups().collect();
    for g in groups {
        let leader = shard.leader(g);
        let in_sync = (leader == Some(ctx.identity.member_id)).then(|| shard.learners_in_sync(g));
        ctx.view.set_learners_in_sync(g, in_sync);
        ctx.view.set_leader(g, leader.unwrap_or(0));
        if let Some(facts) = shard.group_facts(g) {
            ctx.view.set_facts(g, facts);
        }
    }
    if ctx.index != 0 {
        return Ok(());
    }
    let prefix = members_prefix();
    if let Some(found) = shard.local_range(0, &RangeRequest::prefix(prefix.clone())) {
        let mut published = false;
        for kv in found.kvs {
            let id = kv
                .key
                .get(prefix.len()..)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|s| s.parse::<u64>().ok());
            let address = String::from_utf8_lossy(&kv.value).into_owned();
            if let Some(id) = id {
                if id == ctx.identity.member_id && address == config.advertise_client {
                    published = true;
                }
                ctx.view.set_member(id, address);
            }
        }
        if !published && shard.leader(0).is_some() {
            let txn = Txn::batch(vec![Op::put(
                member_key(ctx.identity.member_id),
                config.advertise_client.clone(),
            )]);
            shard.propose_anywhere(0, txn);
        }
    }
    Ok(())
}

/// Shard 0: stops the member once the member list no longer holds it. A removed member
/// does not always apply its own removal in a group (the entry that leaves the joint
/// configuration commits without it, and a leader stops sending to a member it removed),
/// but it applies the member list's change, which comes first: once the list it applied
/// leaves it out — a list written after it was added (`next_id` above its id: a joiner
/// replaying its group 0 reads older lists without itself) — it stops as soon as it leads
/// no group, or after [`REMOVED_LEADING_HOUSEKEEPINGS_MAX`] housekeepings. The voters left
/// have a quorum of both configurations without it (`member remove` checked it), so the
/// groups finish removing it on their own.
fn removed_from_list(ctx: &ShardContext) -> Result<(), String> {
    let me = ctx.identity.member_id;
    let Some(list) = ctx.view.member_list() else {
        return Ok(());
    };
    if list.get(me).is_some() || list.next_id <= me {
        ctx.unlisted_housekeepings.set(0);
        return Ok(());
    }
    let unlisted = ctx.unlisted_housekeepings.get().saturating_add(1);
    ctx.unlisted_housekeepings.set(unlisted);
    let leading: Vec<u32> = (0..ctx.config.groups)
        .filter(|&g| ctx.view.leader(g) == Some(me))
        .collect();
    if !leading.is_empty() && unlisted < REMOVED_LEADING_HOUSEKEEPINGS_MAX {
        tracing::info!(
            member = me,
            leading = ?leading,
            "this member was removed from the member list; it stops once it leads no group"
        );
        return Ok(());
    }
    tracing::error!(
        member = me,
        "this member was removed from the cluster (the member list no longer holds it); it \
         stops serving"
    );
    Err(format!(
        "member {me} was removed from the cluster (the member list no longer holds it); it \
         stops serving"
    ))
}

/// Shard 0: reads the member list from this member's replica of group 0 into the cluster
/// view. A cluster without one (new, or created before the list existed) gets the
/// bootstrap list of the members it was created with written by group 0's leader, only if
/// the key is still absent (every member would write the same list). A member the list
/// holds without a name (added, and started since: this one) writes its name into it, as
/// an etcd member publishes its name once it starts.
fn read_member_list<B: AsyncLogBackend>(shard: &mut Shard<B>, ctx: &ShardContext) {
    let Some(found) = shard.local_range(0, &RangeRequest::key(MEMBERS_KEY)) else {
        return;
    };
    let me = ctx.identity.member_id;
    match found.kvs.first() {
        Some(kv) => match MemberList::decode(&kv.value) {
            Ok(mut list) => {
                ctx.view.set_member_list(list.clone());
                let unnamed = list
                    .members
                    .iter_mut()
                    .find(|m| m.id == me && m.name.is_empty());
                if let Some(entry) = unnamed {
                    entry.name = ctx.config.name.clone();
                    let txn = list.replace_txn(kv.meta.mod_revision);
                    tracing::info!(member = me, name = %ctx.config.name, "publishing this member's name in the member list");
                    shard.propose_anywhere(0, txn);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the member list in group 0 does not decode; ignored");
            }
        },
        None if ctx.identity.origin == super::Origin::Joined => {}
        None if shard.is_leader(0) => match MemberList::bootstrap(
            &ctx.identity
                .peers
                .iter()
                .map(|(_, peer, name)| (name.clone(), *peer))
                .collect::<Vec<_>>(),
        ) {
            Ok(list) => {
                shard.propose_anywhere(0, list.create_txn());
            }
            Err(error) => tracing::warn!(%error, "no bootstrap member list"),
        },
        None => {}
    }
}

/// Every shard: hands the member list's membership to the shard's groups, and makes the
/// transport's peers the list's members (shard `s` of each, at its peer port + `s`).
fn follow_member_list<B: AsyncLogBackend>(
    shard: &mut Shard<B>,
    ctx: &ShardContext,
    transport: &Transport,
    list: &MemberList,
) {
    if let Err(error) = shard.set_membership(list.membership()) {
        tracing::warn!(%error, "the member list's membership is refused");
    }
    let mut wanted = BTreeMap::new();
    for m in list
        .members
        .iter()
        .filter(|m| m.id != ctx.identity.member_id)
    {
        match offset_port(m.peer, ctx.index) {
            Ok(addr) => {
                wanted.insert(m.id, addr);
            }
            Err(error) => tracing::warn!(peer = m.id, %error, "member unreachable from this shard"),
        }
    }
    let current = transport.peers();
    for (&id, &addr) in &wanted {
        if current.get(&id) != Some(&addr) {
            tracing::info!(peer = id, %addr, "peer from the member list");
            transport.set_peer(id, addr);
        }
    }
    for id in current.keys().filter(|id| !wanted.contains_key(id)) {
        transport.remove_peer(*id);
    }
}
