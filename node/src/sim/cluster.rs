//! A simulated cluster: members' shards over in-memory logs, hosted through the same round
//! logic as the runtime's shard threads, on a simulated network and clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use keel_engine::log_backend::{LogBackend, MemLog};
use keel_engine::txn::RangeRequest;
use keel_engine::{LogStore, LogStoreOptions};

use super::{NetworkOptions, Packet, SimClock, SimNetwork, SimTransport, TraceDigest};
use crate::consensus::NodeId;
use crate::consensus::prng::Prng;
use crate::host::{self, HOUSEKEEPING_TICKS, Ticked, Ticker};
use crate::shard::{
    Helpers, Membership, Outcome, RequestId, Shard, ShardError, ShardOptions, SnapshotOptions,
};

/// How a [`SimCluster`] is made and runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Where every random choice comes from: the network's delays and drops, and
    /// [`SimCluster::rng`] for the code driving the cluster.
    pub seed: u64,
    /// Members at the start, with ids `1..=members`: every group's bootstrap voters.
    pub members: u64,
    /// Groups `0..groups`; every member hosts every group (one shard each).
    pub groups: u64,
    /// Every member's snapshot options. `dir` is the cluster's directory (`None`: snapshots
    /// off): member `m` keeps its checkpoints in `<dir>/member-<m>`, which outlives its
    /// crashes. Default: off, with [`Helpers::Inline`] (with helper threads a seed no longer
    /// replays exactly).
    pub snapshots: SnapshotOptions,
    /// The network. Default [`NetworkOptions::default`].
    pub network: NetworkOptions,
    /// Simulated time per step. Default 1 ms.
    pub step: Duration,
    /// The raft tick period. Default 5 ms (a tick every 5 steps).
    pub tick: Duration,
    /// Ticks between housekeeping. Default [`HOUSEKEEPING_TICKS`], as the runtime.
    pub housekeeping_ticks: u64,
    /// Records per segment of every member's in-memory log. Default 64.
    pub log_segment_records: usize,
    /// Whether to record what happens into [`SimCluster::trace`]: every packet delivered,
    /// every answer, every crash, restart, join, removal and failure. Default off.
    pub trace: bool,
}

impl SimOptions {
    /// `members` members hosting `groups` groups, from `seed`, with the defaults.
    pub fn new(seed: u64, members: u64, groups: u64) -> SimOptions {
        SimOptions {
            seed,
            members,
            groups,
            snapshots: SnapshotOptions {
                helpers: Helpers::Inline,
                ..SnapshotOptions::default()
            },
            network: NetworkOptions::default(),
            step: Duration::from_millis(1),
            tick: Duration::from_millis(5),
            housekeeping_ticks: HOUSEKEEPING_TICKS,
            log_segment_records: 64,
            trace: false,
        }
    }
}

/// One member: its "disk" (log and checkpoint directory, kept across crashes) and, while
/// it is up, its shard and what hosts it.
struct SimMember {
    log: MemLog,
    dir: Option<PathBuf>,
    shard: Option<Shard<MemLog>>,
    transport: SimTransport,
    ticker: Ticker,
    /// Why its shard stopped, if it failed.
    failure: Option<String>,
}

/// A whole cluster in one thread, driven one [`step`](SimCluster::step) at a time from a
/// seed: with the snapshot helpers inline (the default), the same seed and the same calls
/// replay exactly.
///
/// Each member is a [`Shard`] over a [`MemLog`], hosted as the runtime hosts a shard —
/// through [`host::run_rounds`], [`host::poll_durable`], a [`Ticker`] on the cluster's
/// [`SimClock`], [`host::housekeeping`] and [`host::purge_log`] — with a [`SimTransport`] of
/// the cluster's [`SimNetwork`] for its TCP transport. A step:
/// 1. moves the clock on by [`SimOptions::step`] and the network by one step;
/// 2. hands every packet due to its member's shard (`step`, `receive_snapshot_chunk`);
/// 3. on every member that is up, in id order: runs its tick if one is due (and its
///    housekeeping and log purge on a housekeeping tick), runs rounds, then feeds it every
///    append its log completed, running rounds after each; collects the answers.
///
/// A member whose shard fails (its log failed) stops, as the runtime's shard would:
/// [`SimCluster::failure`] says why.
pub struct SimCluster {
    options: SimOptions,
    clock: SimClock,
    network: SimNetwork,
    members: BTreeMap<NodeId, SimMember>,
    bootstrap: Vec<NodeId>,
    groups: Vec<u64>,
    answers: BTreeMap<RequestId, Outcome>,
    next_request: RequestId,
    steps: u64,
    rng: Prng,
    trace: TraceDigest,
}

impl SimCluster {
    /// Starts the cluster: every member up with an empty log.
    pub fn new(options: SimOptions) -> Result<SimCluster, ShardError> {
        let bootstrap: Vec<NodeId> = (1..=options.members).collect();
        let mut cluster = SimCluster {
            clock: SimClock::new(),
            network: SimNetwork::new(options.seed, options.network.clone()),
            members: BTreeMap::new(),
            groups: (0..options.groups).collect(),
            answers: BTreeMap::new(),
            next_request: 1,
            steps: 0,
            rng: Prng::new(options.seed.rotate_left(32) ^ 0x5349_4D55_4C41_5445),
            trace: TraceDigest::new(),
            bootstrap,
            options,
        };
        for id in cluster.bootstrap.clone() {
            cluster.start(id, MemLog::new(cluster.options.log_segment_records))?;
        }
        Ok(cluster)
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.options.seed
    }

    /// The options it runs with.
    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// Steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The cluster's clock.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// The network (a handle: isolate or partition members, change its options).
    pub fn network(&self) -> &SimNetwork {
        &self.network
    }

    /// A generator for the choices of the code driving the cluster (which member to crash,
    /// what to write), from the seed.
    pub fn rng(&mut self) -> &mut Prng {
        &mut self.rng
    }

    /// The groups.
    pub fn groups(&self) -> &[u64] {
        &self.groups
    }

    /// The bootstrap voters.
    pub fn bootstrap(&self) -> &[NodeId] {
        &self.bootstrap
    }

    /// Every member, up or down, in id order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Whether `id` is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.shard.is_some())
    }

    /// The shard of `id`, while it is up.
    pub fn shard(&self, id: NodeId) -> Option<&Shard<MemLog>> {
        self.members.get(&id).and_then(|m| m.shard.as_ref())
    }

    /// The shard of `id`, while it is up, to hand it requests or inputs directly.
    pub fn shard_mut(&mut self, id: NodeId) -> Option<&mut Shard<MemLog>> {
        self.members.get_mut(&id).and_then(|m| m.shard.as_mut())
    }

    /// The log of `id` (kept across its crashes; fail or hold its appends to inject faults).
    pub fn log(&self, id: NodeId) -> Option<&MemLog> {
        self.members.get(&id).map(|m| &m.log)
    }

    /// The checkpoint directory of `id`, when snapshots are on.
    pub fn checkpoint_dir(&self, id: NodeId) -> Option<&Path> {
        self.members.get(&id).and_then(|m| m.dir.as_deref())
    }

    /// Why the shard of `id` stopped, if it failed.
    pub fn failure(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).and_then(|m| m.failure.as_deref())
    }

    /// A new request id (request ids are unique over the cluster).
    pub fn next_request_id(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Hands member `id`'s shard a request under a new request id (`request` calls
    /// `write`, `read` or `compact` with it); its answer comes with a later step. `None` if
    /// the member is down.
    pub fn submit(
        &mut self,
        id: NodeId,
        request: impl FnOnce(&mut Shard<MemLog>, RequestId),
    ) -> Option<RequestId> {
        if !self.is_up(id) {
            return None;
        }
        let request_id = self.next_request_id();
        request(self.shard_mut(id)?, request_id);
        Some(request_id)
    }

    /// The answer to request `id`, once it came.
    pub fn answer(&self, id: RequestId) -> Option<&Outcome> {
        self.answers.get(&id)
    }

    /// Takes the answer to request `id`, once it came.
    pub fn take_answer(&mut self, id: RequestId) -> Option<Outcome> {
        self.answers.remove(&id)
    }

    /// The leader of `group` that every member up agrees on, if there is one and it is up
    /// (a member the group removed has no say).
    pub fn agreed_leader(&self, group: u64) -> Option<NodeId> {
        let mut leaders = self
            .members
            .values()
            .filter_map(|m| m.shard.as_ref())
            .filter(|s| !s.removed_groups().contains(&group))
            .map(|s| s.leader(group));
        let first = leaders.next()??;
        (leaders.all(|l| l == Some(first)) && self.is_up(first)).then_some(first)
    }

    /// The membership target the members up were given, if any.
    pub fn membership(&self) -> Option<Membership> {
        self.members
            .values()
            .filter_map(|m| m.shard.as_ref())
            .find_map(|s| s.membership().cloned())
    }

    /// Hands every member up the target membership.
    pub fn set_membership(&mut self, target: &Membership) -> Result<(), ShardError> {
        for shard in self.members.values_mut().filter_map(|m| m.shard.as_mut()) {
            shard.set_membership(target.clone())?;
        }
        Ok(())
    }

    /// Runs `steps` steps.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// One step (see the type's documentation).
    pub fn step(&mut self) {
        self.steps += 1;
        self.clock.advance(self.options.step);
        for packet in self.network.advance() {
            let Some(shard) = self
                .members
                .get_mut(&packet.to())
                .and_then(|m| m.shard.as_mut())
            else {
                continue;
            };
            if self.options.trace {
                self.trace
                    .record(format_args!("deliver {} {packet:?}", self.steps));
            }
            match packet {
                Packet::Message(m) => shard.step(m),
                Packet::Chunk(c) => {
                    // A dropped chunk abandons its transfer (the shard counts it); raft
                    // sends the snapshot again later.
                    let _ = shard.receive_snapshot_chunk(c);
                }
            }
        }
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.host(id);
        }
    }

    /// Hosts member `id` for one step.
    fn host(&mut self, id: NodeId) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let SimMember {
            log,
            shard,
            transport,
            ticker,
            ..
        } = member;
        let Some(shard) = shard.as_mut() else {
            return;
        };
        let mut answers = Vec::new();
        let hosted = host_step(shard, log, transport, ticker, &self.clock, &mut answers);
        answers.sort_by_key(|(request, _)| *request);
        for (request, outcome) in answers {
            if self.options.trace {
                self.trace.record(format_args!(
                    "answer {} {id} {request} {outcome:?}",
                    self.steps
                ));
            }
            self.answers.insert(request, outcome);
        }
        if let Err(error) = hosted {
            tracing::error!(member = id, %error, "simulated shard stopped");
            if self.options.trace {
                self.trace
                    .record(format_args!("failed {} {id} {error}", self.steps));
            }
            member.shard = None;
            member.failure = Some(error.to_string());
            self.network.set_up(id, false);
        }
    }

    /// Crashes member `id`: its shard is dropped with everything not in its log or its
    /// checkpoint directory, and what is in flight to it is lost.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(member) = self.members.get_mut(&id) {
            member.shard = None;
        }
        self.network.set_up(id, false);
        if self.options.trace {
            self.trace.record(format_args!("crash {} {id}", self.steps));
        }
    }

    /// Restarts member `id` from its log and checkpoints (crashing it first if it is up),
    /// with the membership target the members up were given.
    pub fn restart(&mut self, id: NodeId) -> Result<(), ShardError> {
        if self.is_up(id) {
            self.crash(id);
        }
        let Some(log) = self.members.get(&id).map(|m| m.log.clone()) else {
            return Err(ShardError::InvalidOptions(format!("no member {id}")));
        };
        if self.options.trace {
            self.trace
                .record(format_args!("restart {} {id}", self.steps));
        }
        self.start(id, log)
    }

    /// Starts member `id` with an empty log, as one joining the cluster: its groups start
    /// from the bootstrap membership, which does not include it, with the membership target
    /// the members up were given.
    pub fn join(&mut self, id: NodeId) -> Result<(), ShardError> {
        if self.members.contains_key(&id) {
            return Err(ShardError::InvalidOptions(format!(
                "member {id} exists already"
            )));
        }
        if self.options.trace {
            self.trace.record(format_args!("join {} {id}", self.steps));
        }
        self.start(id, MemLog::new(self.options.log_segment_records))
    }

    /// Takes member `id` out of the cluster for good: it is down, and its shard (if it was
    /// up) is handed back, to look at what a removed member answers.
    pub fn remove(&mut self, id: NodeId) -> Option<Shard<MemLog>> {
        let member = self.members.remove(&id)?;
        self.network.set_up(id, false);
        if self.options.trace {
            self.trace
                .record(format_args!("remove {} {id}", self.steps));
        }
        member.shard
    }

    /// Opens member `id`'s shard over `log` and brings it up.
    fn start(&mut self, id: NodeId, log: MemLog) -> Result<(), ShardError> {
        let dir = self
            .options
            .snapshots
            .dir
            .as_ref()
            .map(|d| d.join(format!("member-{id}")));
        let store = LogStore::open(log.clone(), LogStoreOptions::default(), &mut |_| {})?;
        let mut options = ShardOptions::new(id, self.bootstrap.clone());
        options.snapshots = SnapshotOptions {
            dir: dir.clone(),
            ..self.options.snapshots.clone()
        };
        let mut shard = Shard::new(options, store, &self.groups)?;
        if let Some(target) = self.membership() {
            shard.set_membership(target)?;
        }
        let member = SimMember {
            log,
            dir,
            shard: Some(shard),
            transport: self.network.transport(id),
            ticker: Ticker::new(
                self.options.tick,
                self.options.housekeeping_ticks,
                host::Clock::now(&self.clock),
            ),
            failure: None,
        };
        self.members.insert(id, member);
        self.network.set_up(id, true);
        Ok(())
    }

    /// What was recorded so far (with [`SimOptions::trace`]).
    pub fn trace(&self) -> TraceDigest {
        self.trace
    }

    /// Records the state of every member up into the trace: per group its raft facts,
    /// leader, membership and every key with its value and revisions.
    pub fn record_state(&mut self) {
        for (&id, member) in &self.members {
            let Some(shard) = member.shard.as_ref() else {
                self.trace.record(format_args!("state {id} down"));
                continue;
            };
            for &g in &self.groups {
                let kvs = shard
                    .local_range(g, &RangeRequest::prefix(Vec::new()))
                    .map(|r| r.kvs);
                self.trace.record(format_args!(
                    "state {id} {g} {:?} {:?} {:?} {kvs:?}",
                    shard.group_facts(g),
                    shard.leader(g),
                    shard.conf_state(g),
                ));
            }
        }
    }
}

/// One step of one member's host: the tick (and housekeeping) if due, rounds, and every
/// append the log completed with rounds after each.
fn host_step(
    shard: &mut Shard<MemLog>,
    log: &MemLog,
    transport: &SimTransport,
    ticker: &mut Ticker,
    clock: &SimClock,
    answers: &mut Vec<(RequestId, Outcome)>,
) -> Result<(), ShardError> {
    if ticker.run(shard, clock) == Ticked::Housekeeping {
        host::housekeeping(shard);
        host::purge_log(shard, false, |lsn| {
            if let Err(error) = log.clone().purge_before(lsn) {
                tracing::warn!(%error, "purging the simulated log failed");
            }
        });
    }
    let mut answer = |id, outcome| answers.push((id, outcome));
    host::run_rounds(shard, transport, &mut answer)?;
    // The in-memory log completes appends when polled (unless they are held).
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(done) = host::poll_durable(shard, &mut cx) {
        done?;
        host::run_rounds(shard, transport, &mut answer)?;
    }
    Ok(())
}
