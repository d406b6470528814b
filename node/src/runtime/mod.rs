//! The runtime: threads, the per-shard event loop, timers, and the channels between them —
//! the only part of the node that spawns threads or blocks.
//!
//! A member runs `shards` threads. Shard `s` hosts the groups `g` with `g mod shards == s`,
//! owns its own WAL (`DATA_DIR/shard-<s>/`) with one log store and its groups' checkpoints
//! (`DATA_DIR/shard-<s>/checkpoints/group-<g>/`), its own peer transport (it
//! listens on the member's peer port + `s` and talks to shard `s` of every other member),
//! and accepts client connections on the shared client port (`SO_REUSEPORT`). Each shard
//! thread runs a current-thread tokio runtime; its loop feeds the shard what arrived (peer
//! messages, client requests, ticks, durable appends) and runs a round after each event:
//! messages go out at once, and all groups' log work of the round is one asynchronous WAL
//! append (the WAL's own writer thread and io_uring ring make it durable; the shard thread
//! never blocks on it). Shards talk only through bounded channels.

pub mod join;
mod meta;
mod shard_thread;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_client::wire::{ClientLimits, ClusterStatus, LeaderHint, MemberInfo};
use keel_engine::txn::{RangeRequest, Txn};
use tokio::sync::{mpsc, oneshot, watch};

pub use meta::{Meta, MetaOrigin, Origin};

use crate::members::MemberList;

use crate::shard::{GroupFacts, Outcome, ReadConsistency};

/// Whether the member starts a new cluster or joins one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Every member of `initial_cluster` starts together (etcd's `new`): the member ids and
    /// the cluster id follow from the flags.
    New,
    /// Join a running cluster (etcd's `existing`) that added this member (`member add`):
    /// with an empty data directory, the member asks the other members of
    /// `initial_cluster` (their peer ports) for the cluster's id, its own member id, the
    /// group and shard counts and the groups' bootstrap voters ([`join`]), writes them to
    /// its data directory and starts as a learner of every group. With a data directory
    /// that has its identity already, it just starts from it (as a restart with `new`).
    Existing,
}

/// The async runtime a shard thread runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardRuntime {
    /// tokio's current-thread runtime (epoll); the shard's WAL writes on its own writer
    /// thread (through io_uring or pwrite, `wal_backend`). The default.
    Tokio,
    /// tokio-uring's runtime: the same tokio current-thread runtime driven from an io_uring
    /// instance of the shard thread. The shard's sockets and WAL are served as with
    /// [`ShardRuntime::Tokio`] (the WAL does not write on this ring): measured against it
    /// on the cluster benchmark (README, "Replicated cluster").
    TokioUring,
}

/// Most raft groups a cluster may have (`--groups`).
pub const GROUPS_MAX: u32 = 65_536;
/// Most shards a member may run (`--shards`).
pub const SHARDS_MAX: u32 = 256;

/// How a member is configured (`keel server`'s flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This member's name; one of `initial_cluster`'s.
    pub name: String,
    /// Where the member keeps its data.
    pub data_dir: PathBuf,
    /// Every member of the cluster: name and peer address. Member ids are the 1-based
    /// positions in name order; the cluster id is a hash of the list and the group count.
    pub initial_cluster: Vec<(String, SocketAddr)>,
    /// New cluster or joining one.
    pub initial_cluster_state: ClusterState,
    /// Mixed into the cluster id when not empty (etcd's `--initial-cluster-token`), so that
    /// two clusters of the same members and groups — a cluster restored from a backup and
    /// the one it was taken from — have different ids. Default empty.
    pub initial_cluster_token: String,
    /// Where the peer listener of shard 0 binds (shard `s`: port + `s`).
    pub listen_peer: SocketAddr,
    /// Where clients connect.
    pub listen_client: SocketAddr,
    /// The client address other members and clients are told (default: `listen_client`).
    pub advertise_client: String,
    /// Raft groups of the cluster (fixed at creation). Default 8.
    pub groups: u32,
    /// Shards of this member (fixed at creation). Default: one per core.
    pub shards: u32,
    /// The logical clock's tick. Default 50 ms (elections after 10–20 ticks, heartbeats
    /// every tick).
    pub tick: Duration,
    /// Client protocol limits.
    pub client_limits: ClientLimits,
    /// Limits of the etcd API on the client port.
    pub etcd_limits: crate::server::etcd::EtcdLimits,
    /// Most client connections at once. Default 4096.
    pub client_connections_max: usize,
    /// Most requests queued at one shard. Default 8192.
    pub shard_queue_requests_max: usize,
    /// Most requests a shard has taken and not answered yet (proposed writes, reads waiting
    /// for their read index); past it the shard stops taking requests, its queue fills, and
    /// new requests are answered `Busy`. Default 65,536.
    pub shard_pending_requests_max: usize,
    /// WAL segment size. Default 64 MiB.
    pub wal_segment_bytes: u64,
    /// Whether shard `s` pins its thread (and its WAL's threads) to CPU `s mod cpus`.
    /// Default true.
    pub pin_shards: bool,
    /// How the shards' WALs write. Default [`keel_wal::Backend::Auto`] (io_uring where the
    /// kernel allows it).
    pub wal_backend: keel_wal::Backend,
    /// The runtime of the shard threads. Default [`ShardRuntime::Tokio`].
    pub shard_runtime: ShardRuntime,
    /// A group checkpoints (its raft snapshot) once it applied this many entries since its
    /// last one (`--snapshot-entries`, etcd's `--snapshot-count`). Default 10,000.
    pub snapshot_entries: u64,
    /// Entries a group keeps in its log behind its checkpoint for followers that lag a
    /// little (`--snapshot-catchup-entries`, as etcd's). Default 5,000.
    pub snapshot_catchup_entries: u64,
    /// How long a joining member (`existing`, empty data directory) keeps asking the
    /// running members before it gives up with an error (`--join-timeout-ms`). Default
    /// 60 s.
    pub join_wait_max: Duration,
}

/// Default [`ServerConfig::join_wait_max`].
pub const DEFAULT_JOIN_WAIT_MAX: Duration = Duration::from_secs(60);

/// Who a member is, from its data directory (or the cluster it joined): what the shards
/// start from.
#[derive(Clone, Debug)]
struct Identity {
    cluster_id: u64,
    member_id: u64,
    groups: u32,
    shards: u32,
    /// Every group's voters at creation.
    bootstrap: Vec<u64>,
    /// The members the transports dial at first: id, peer address, name.
    peers: Vec<(u64, SocketAddr, String)>,
    origin: Origin,
    /// The member list learned when joining (seeds the cluster view until the member's
    /// own replica of group 0 has it).
    joined_list: Option<MemberList>,
}

impl ServerConfig {
    /// The defaults for a member `name` of `initial_cluster`.
    pub fn new(
        name: String,
        data_dir: PathBuf,
        initial_cluster: Vec<(String, SocketAddr)>,
        listen_peer: SocketAddr,
        listen_client: SocketAddr,
    ) -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerConfig {
            name,
            data_dir,
            initial_cluster,
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: String::new(),
            listen_peer,
            listen_client,
            advertise_client: listen_client.to_string(),
            groups: 8,
            shards: u32::try_from(cores).unwrap_or(1),
            tick: Duration::from_millis(50),
            client_limits: ClientLimits::default(),
            etcd_limits: crate::server::etcd::EtcdLimits::default(),
            client_connections_max: 4096,
            shard_queue_requests_max: 8192,
            shard_pending_requests_max: 65_536,
            wal_segment_bytes: 64 << 20,
            wal_backend: keel_wal::Backend::Auto,
            pin_shards: true,
            shard_runtime: ShardRuntime::Tokio,
            snapshot_entries: crate::shard::DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_catchup_entries: crate::shard::DEFAULT_CATCHUP_ENTRIES,
            join_wait_max: DEFAULT_JOIN_WAIT_MAX,
        }
    }

    /// The identity file of a member of a new cluster of `initial_cluster`.
    pub fn new_meta(&self) -> Meta {
        let ids = self.member_ids();
        let mut members: Vec<(u64, SocketAddr, String)> = self
            .initial_cluster
            .iter()
            .map(|(name, peer)| (ids[name], *peer, name.clone()))
            .collect();
        members.sort_unstable_by_key(|m| m.0);
        Meta {
            cluster_id: self.cluster_id(),
            member_id: ids.get(&self.name).copied().unwrap_or(0),
            name: self.name.clone(),
            groups: self.groups,
            shards: self.shards,
            origin: Some(MetaOrigin {
                origin: Origin::New,
                bootstrap: ids.values().copied().collect(),
                members,
            }),
        }
    }

    /// The member ids by name (1-based positions in name order).
    pub fn member_ids(&self) -> BTreeMap<String, u64> {
        let mut names: Vec<&String> = self.initial_cluster.iter().map(|(n, _)| n).collect();
        names.sort();
        names
            .into_iter()
            .zip(1u64..)
            .map(|(n, id)| (n.clone(), id))
            .collect()
    }

    /// The cluster id: FNV-1a of the sorted member list and the group count, and the
    /// token when there is one.
    pub fn cluster_id(&self) -> u64 {
        let mut members: Vec<String> = self
            .initial_cluster
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect();
        members.sort();
        let mut text = format!("{}|groups={}", members.join(","), self.groups);
        if !self.initial_cluster_token.is_empty() {
            text.push_str("|token=");
            text.push_str(&self.initial_cluster_token);
        }
        keel_client::route::fnv1a_64(text.as_bytes()).max(1)
    }

    /// Checks the configuration; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("--name must not be empty".into());
        }
        let Some((_, peer)) = self.initial_cluster.iter().find(|(n, _)| *n == self.name) else {
            return Err(format!(
                "--name {} is not a member of --initial-cluster",
                self.name
            ));
        };
        if peer.port() != self.listen_peer.port() {
            return Err(format!(
                "--listen-peer-urls port {} differs from this member's --initial-cluster URL {peer}",
                self.listen_peer.port()
            ));
        }
        let ids = self.member_ids();
        if ids.len() != self.initial_cluster.len() {
            return Err("--initial-cluster names a member twice".into());
        }
        if self.initial_cluster.len() > crate::members::MEMBERS_MAX {
            return Err(format!(
                "--initial-cluster names {} members; a cluster has at most {}",
                self.initial_cluster.len(),
                crate::members::MEMBERS_MAX
            ));
        }
        for (name, _) in &self.initial_cluster {
            crate::members::check_name(name).map_err(|e| format!("--initial-cluster: {e}"))?;
        }
        if self.groups == 0 || self.groups > GROUPS_MAX {
            return Err(format!(
                "--groups {} must be in 1..={GROUPS_MAX}",
                self.groups
            ));
        }
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(format!(
                "--shards {} must be in 1..={SHARDS_MAX}",
                self.shards
            ));
        }
        if self.snapshot_entries == 0 {
            return Err("--snapshot-entries must be positive".into());
        }
        if self.join_wait_max.is_zero() {
            return Err("--join-timeout-ms must be positive".into());
        }
        self.etcd_limits.validate()?;
        self.client_limits.validate()
    }
}

/// A request for the shard that hosts its group.
pub struct ShardRequest {
    /// The group.
    pub group: u64,
    /// What to do.
    pub work: ShardWork,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Outcome>,
}

/// What a request asks of a shard.
#[derive(Clone, Debug)]
pub enum ShardWork {
    /// A write, named for exactly-once (client id 0: anonymous).
    Write {
        /// The client.
        client_id: u64,
        /// The client's sequence number of the write.
        sequence: u64,
        /// The client's smallest unanswered sequence.
        floor: u64,
        /// The write.
        txn: Txn,
    },
    /// A read.
    Read {
        /// What to read.
        range: RangeRequest,
        /// How.
        consistency: ReadConsistency,
    },
    /// A compaction of the group's history below `revision` (etcd's `Compact`), replicated
    /// through the group's log.
    Compact {
        /// The revision.
        revision: u64,
    },
}

/// What a member knows of the cluster, shared by its shards and connections (not on the
/// hot path: updated every few ticks).
pub struct ClusterView {
    /// Member id -> client address, as published in group 0.
    members: RwLock<BTreeMap<u64, String>>,
    /// The member list as this member's replica of group 0 holds it (`None` until shard 0
    /// read it; a cluster created before the list existed gets it written at start).
    member_list: RwLock<Option<MemberList>>,
    /// Per group this member leads: the learners it saw in sync at the last housekeeping
    /// (a group it does not lead has no entry).
    learners_in_sync: RwLock<BTreeMap<u64, std::collections::BTreeSet<u64>>>,
    /// The voters group 0's leader (this member) heard from within an election timeout,
    /// at the last two looks, one at each housekeeping and one half-way between (the
    /// leader forgets who was active at every election timeout, which may fall on the
    /// housekeeping's tick every time: two looks half a period apart never both fall
    /// right after it).
    started: RwLock<[std::collections::BTreeSet<u64>; 2]>,
    /// Leader of each group (0: unknown).
    leaders: Vec<AtomicU64>,
    /// Raft and state-machine figures of each group as this member's replica had them at
    /// the last housekeeping (for status answers and response headers).
    facts: RwLock<Vec<GroupFacts>>,
}

impl ClusterView {
    fn new(groups: u32, member: u64, address: String) -> ClusterView {
        let mut members = BTreeMap::new();
        members.insert(member, address);
        ClusterView {
            members: RwLock::new(members),
            member_list: RwLock::new(None),
            learners_in_sync: RwLock::new(BTreeMap::new()),
            started: RwLock::new(Default::default()),
            leaders: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            facts: RwLock::new(vec![
                GroupFacts::default();
                usize::try_from(groups).unwrap_or(0)
            ]),
        }
    }

    fn set_facts(&self, group: u64, facts: GroupFacts) {
        if let (Ok(mut all), Ok(g)) = (self.facts.write(), usize::try_from(group)) {
            if let Some(slot) = all.get_mut(g) {
                *slot = facts;
            }
        }
    }

    /// The figures of `group` as of the last housekeeping (all zero: not known yet).
    pub fn facts(&self, group: u32) -> GroupFacts {
        self.facts
            .read()
            .ok()
            .and_then(|all| all.get(usize::try_from(group).ok()?).copied())
            .unwrap_or_default()
    }

    /// The leader of `group` as this member knows it (`None`: unknown).
    pub fn leader(&self, group: u32) -> Option<u64> {
        usize::try_from(group)
            .ok()
            .and_then(|g| self.leaders.get(g))
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != 0)
    }

    fn set_leader(&self, group: u64, leader: u64) {
        if let Some(slot) = usize::try_from(group)
            .ok()
            .and_then(|g| self.leaders.get(g))
        {
            slot.store(leader, Ordering::Relaxed);
        }
    }

    fn set_member_list(&self, list: MemberList) {
        if let Ok(mut m) = self.member_list.write() {
            *m = Some(list);
        }
    }

    /// The member list as this member's replica of group 0 last had it (`None`: not read
    /// yet).
    pub fn member_list(&self) -> Option<MemberList> {
        self.member_list.read().ok().and_then(|m| m.clone())
    }

    fn set_active_voters(&self, ids: std::collections::BTreeSet<u64>) {
        if let Ok(mut s) = self.started.write() {
            s[0] = std::mem::replace(&mut s[1], ids);
        }
    }

    /// The voters group 0's leader (this member) heard from lately (in either of the last
    /// two housekeepings); empty on other members.
    pub fn started_members(&self) -> std::collections::BTreeSet<u64> {
        self.started
            .read()
            .map(|s| s[0].union(&s[1]).copied().collect())
            .unwrap_or_default()
    }

    /// Records the learners in sync in `group` (`None`: this member does not lead it).
    fn set_learners_in_sync(&self, group: u64, ids: Option<std::collections::BTreeSet<u64>>) {
        if let Ok(mut l) = self.learners_in_sync.write() {
            match ids {
                Some(ids) => l.insert(group, ids),
                None => l.remove(&group),
            };
        }
    }

    /// The learners in sync in every group this member leads — within
    /// [`PROMOTE_LAG_ENTRIES_MAX`](crate::shard::PROMOTE_LAG_ENTRIES_MAX) entries of the
    /// group's commit index at the last housekeeping — provided it leads group 0 (where a
    /// promotion is decided); empty otherwise. The groups other members lead promote a
    /// learner only once it is in sync there too (`shard::membership`).
    pub fn learners_in_sync(&self) -> std::collections::BTreeSet<u64> {
        let Ok(l) = self.learners_in_sync.read() else {
            return Default::default();
        };
        let Some(first) = l.get(&0) else {
            return Default::default();
        };
        l.values().fold(first.clone(), |all, g| {
            all.intersection(g).copied().collect()
        })
    }

    fn set_member(&self, id: u64, address: String) {
        if let Ok(mut m) = self.members.write() {
            m.insert(id, address);
        }
    }

    /// The status answer: members with their client addresses, and each group's leader.
    pub fn status(&self, member_id: u64, groups: u32) -> ClusterStatus {
        let members = self
            .members
            .read()
            .map(|m| {
                m.iter()
                    .map(|(&id, a)| MemberInfo {
                        id,
                        client_address: a.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ClusterStatus {
            member_id,
            groups,
            members,
            leaders: self
                .leaders
                .iter()
                .map(|l| Some(l.load(Ordering::Relaxed)).filter(|&l| l != 0))
                .collect(),
        }
    }

    /// Where to find member `id`, for a "not leader" answer.
    pub fn hint(&self, id: u64) -> Option<LeaderHint> {
        let members = self.members.read().ok()?;
        members.get(&id).map(|a| LeaderHint {
            member_id: id,
            client_address: a.clone(),
        })
    }
}

/// A running member.
pub struct Server {
    threads: Vec<JoinHandle<Result<(), String>>>,
    shutdown: watch::Sender<bool>,
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Raft groups of the cluster (a joined member's are the cluster's, whatever its flags).
    pub groups: u32,
    /// Shards of this member (likewise).
    pub shards: u32,
}

/// Who this member is: from its data directory's identity file when it has one (checked
/// against the flags only for a member of a new cluster restarted with `new`: etcd ignores
/// the flags of an initialized data directory, Keel keeps refusing another cluster's data
/// when the flags say which cluster is meant); else from the flags (`new`) or from a
/// running member (`existing`), written to the data directory before anything else.
fn identity(config: &ServerConfig) -> Result<Identity, String> {
    let dir = &config.data_dir;
    let found = Meta::load(dir)?;
    let Some(found) = found else {
        let meta = match config.initial_cluster_state {
            ClusterState::New => config.new_meta(),
            ClusterState::Existing => return join_cluster(config),
        };
        meta.store(dir)?;
        return Ok(identity_of(&meta, None));
    };
    let wanted = config.new_meta();
    let same_cluster = found.cluster_id == wanted.cluster_id
        && found.member_id == wanted.member_id
        && found.name == wanted.name
        && found.groups == wanted.groups
        && found.shards == wanted.shards;
    let joined = found
        .origin
        .as_ref()
        .is_some_and(|o| o.origin == Origin::Joined);
    let check_flags =
        found.origin.is_none() || (!joined && config.initial_cluster_state == ClusterState::New);
    if found.name != config.name || (check_flags && !same_cluster) {
        return Err(format!(
            "{} belongs to member {} ({}) of cluster {:#x} with {} groups and {} shards; \
             this member is {} ({}) of cluster {:#x} with {} groups and {} shards — \
             refusing to start on another cluster's or member's data (a member whose \
             cluster changed members since it was created restarts with \
             --initial-cluster-state existing, which trusts its data directory)",
            dir.display(),
            found.member_id,
            found.name,
            found.cluster_id,
            found.groups,
            found.shards,
            wanted.member_id,
            wanted.name,
            wanted.cluster_id,
            wanted.groups,
            wanted.shards,
        ));
    }
    warn_counts_differ(found.groups, found.shards, config, "the data directory's");
    if joined {
        tracing::info!(
            member_id = found.member_id,
            cluster_id = format!("{:#x}", found.cluster_id),
            "this member joined its cluster: --initial-cluster and --initial-cluster-state \
             are ignored, its data directory says who it is"
        );
    }
    // A version 1 file: the identity the flags give (checked equal above).
    let meta = if found.origin.is_some() {
        found
    } else {
        wanted
    };
    Ok(identity_of(&meta, None))
}

/// Warns when the group and shard counts in use (`whose`: the data directory's, the
/// cluster's) differ from `--groups`/`--shards`: those in use win.
fn warn_counts_differ(groups: u32, shards: u32, config: &ServerConfig, whose: &str) {
    if groups != config.groups || shards != config.shards {
        tracing::warn!(
            groups,
            shards,
            flag_groups = config.groups,
            flag_shards = config.shards,
            "{whose} group and shard counts differ from --groups/--shards; {whose} are used"
        );
    }
}

fn identity_of(meta: &Meta, joined_list: Option<MemberList>) -> Identity {
    let origin = meta.origin.clone().unwrap_or(MetaOrigin {
        origin: Origin::New,
        bootstrap: Vec::new(),
        members: Vec::new(),
    });
    Identity {
        cluster_id: meta.cluster_id,
        member_id: meta.member_id,
        groups: meta.groups,
        shards: meta.shards,
        bootstrap: origin.bootstrap,
        peers: origin.members,
        origin: origin.origin,
        joined_list,
    }
}

/// `existing` with an empty data directory: learn the identity from a running member, and
/// write it down before the member starts.
fn join_cluster(config: &ServerConfig) -> Result<Identity, String> {
    let own_peer = config
        .initial_cluster
        .iter()
        .find(|(n, _)| *n == config.name)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("--name {} is not in --initial-cluster", config.name))?;
    let others: Vec<(String, SocketAddr)> = config
        .initial_cluster
        .iter()
        .filter(|(n, _)| *n != config.name)
        .cloned()
        .collect();
    tracing::info!(
        name = %config.name,
        peer = %own_peer,
        asking = ?others,
        wait_max_ms = u64::try_from(config.join_wait_max.as_millis()).unwrap_or(u64::MAX),
        "joining a running cluster: asking its members who this member is"
    );
    let learned = join::learn(&config.name, own_peer, &others, config.join_wait_max)?;
    let facts = &learned.facts;
    warn_counts_differ(facts.groups, facts.shards, config, "the cluster's");
    let meta = Meta {
        cluster_id: facts.cluster_id,
        member_id: facts.member_id,
        name: config.name.clone(),
        groups: facts.groups,
        shards: facts.shards,
        origin: Some(MetaOrigin {
            origin: Origin::Joined,
            bootstrap: facts.bootstrap.clone(),
            members: learned
                .list
                .members
                .iter()
                .map(|m| (m.id, m.peer, m.name.clone()))
                .collect(),
        }),
    };
    meta.store(&config.data_dir)?;
    tracing::info!(
        member_id = meta.member_id,
        cluster_id = format!("{:#x}", meta.cluster_id),
        from = %learned.from,
        groups = meta.groups,
        shards = meta.shards,
        bootstrap = ?facts.bootstrap,
        "joined: the cluster's identity is written to the data directory; starting as a \
         learner of every group"
    );
    Ok(identity_of(&meta, Some(learned.list)))
}

impl Server {
    /// Starts the member: checks (or writes) its data directory's identity, then starts one
    /// thread per shard. Returns once every shard listens.
    pub fn start(mut config: ServerConfig) -> Result<Server, String> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("creating {}: {e}", config.data_dir.display()))?;
        let identity = identity(&config)?;
        config.groups = identity.groups;
        config.shards = identity.shards;
        let (member_id, cluster_id) = (identity.member_id, identity.cluster_id);
        let view = Arc::new(ClusterView::new(
            config.groups,
            member_id,
            config.advertise_client.clone(),
        ));
        if let Some(list) = identity.joined_list.clone() {
            view.set_member_list(list);
        }
        let shards = usize::try_from(config.shards).unwrap_or(1);
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::channel(config.shard_queue_requests_max.max(1));
            senders.push(tx);
            receivers.push(rx);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (index, requests) in receivers.into_iter().enumerate() {
            let ctx = shard_thread::ShardContext {
                index: u32::try_from(index).unwrap_or(0),
                config: config.clone(),
                identity: identity.clone(),
                view: view.clone(),
                senders: senders.clone(),
                requests,
                shutdown: shutdown_rx.clone(),
                ready: ready_tx.clone(),
                unlisted_housekeepings: std::cell::Cell::new(0),
            };
            let thread = std::thread::Builder::new()
                .name(format!("keel-shard-{index}"))
                .spawn(move || shard_thread::run(ctx))
                .map_err(|e| format!("spawning shard thread {index}: {e}"))?;
            threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = shutdown.send(true);
                    return Err(e);
                }
                Err(_) => return Err("a shard thread stopped while starting".into()),
            }
        }
        Ok(Server {
            threads,
            shutdown,
            member_id,
            cluster_id,
            groups: identity.groups,
            shards: identity.shards,
        })
    }

    /// Stops accepting requests, lets the appends in flight become durable, and stops every
    /// shard. Returns the first shard error, if any.
    pub fn shutdown(self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => result = result.and(Err("a shard thread panicked".into())),
            }
        }
        result
    }

    /// Whether a shard stopped on its own (an error: the member should exit).
    pub fn failed(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }
}
