//! A test cluster: raft nodes over `MemStorage`, a message network, and per-node queues of
//! storage and apply work so tests decide when writes become durable.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use keel_node::consensus::{
    AppendAck, AppendWork, ApplyWork, ConfChange, ConfState, Config, Entry, EntryType, LogStorage,
    MemStorage, Message, MessageType, RawNode, ReadState, StateRole,
};

/// The state machine of a test node: a running hash of every applied entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// The last applied index.
    pub index: u64,
    /// A hash chained over the applied entries.
    pub hash: u64,
}

/// Chains one entry into a hash.
pub fn chain(hash: u64, e: &Entry) -> u64 {
    let mut h = hash ^ 0xcbf2_9ce4_8422_2325;
    for b in e.term.to_le_bytes().iter().chain(e.data.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.rotate_left(17) ^ e.index
}

impl StateMachine {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.index.to_le_bytes().to_vec();
        v.extend_from_slice(&self.hash.to_le_bytes());
        v
    }

    fn decode(data: &[u8]) -> StateMachine {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        if data.len() == 16 {
            a.copy_from_slice(&data[..8]);
            b.copy_from_slice(&data[8..]);
        }
        StateMachine {
            index: u64::from_le_bytes(a),
            hash: u64::from_le_bytes(b),
        }
    }
}

/// One node of the test cluster.
pub struct Node {
    /// The running node; `None` while crashed.
    pub raw: Option<RawNode<MemStorage>>,
    /// The durable storage while crashed.
    pub disk: MemStorage,
    /// Storage work handed out and not yet durable.
    pub appends: VecDeque<AppendWork>,
    /// Acknowledgements of storage work already durable but not yet handed back to the node,
    /// in write order (a host whose storage thread reports back late).
    pub written: VecDeque<AppendAck>,
    /// Apply work handed out and not yet applied.
    pub applies: VecDeque<ApplyWork>,
    /// The state machine (volatile: rebuilt from the snapshot on restart).
    pub sm: StateMachine,
    /// The membership as applied by the state machine.
    pub conf_state: ConfState,
    /// Reads that became ready.
    pub reads: Vec<ReadState>,
    /// Applied entries (index, data) with non-empty normal payloads.
    pub applied_data: Vec<(u64, Vec<u8>)>,
    /// The config to restart with.
    pub config: Config,
}

/// Something observed while applying, for invariant checks.
pub struct Applied {
    /// The node.
    pub id: u64,
    /// The state machine after applying.
    pub sm: StateMachine,
}

/// A cluster plus network.
pub struct Env {
    /// The nodes by id.
    pub nodes: BTreeMap<u64, Node>,
    /// Messages in flight, in send order.
    pub net: Vec<Message>,
    /// Links (from, to) that drop messages.
    pub cut: BTreeSet<(u64, u64)>,
    /// Output for interaction tests.
    pub out: String,
    /// Whether to print Readies and message deliveries.
    pub verbose: bool,
    /// State-machine states observed when applying (drained by the simulation).
    pub applied_events: Vec<Applied>,
    /// Safety violations seen by the host (drained by the simulation): apply work holding an
    /// entry that is not durable in the node's storage.
    pub violations: Vec<String>,
    /// Acknowledgements handed back after a later write had already replaced their last entry
    /// in storage: the stale acknowledgements the core must ignore.
    pub overwritten_acks: u64,
}

/// A default test config for node `id`.
pub fn test_config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c.msg_bytes_max = 1 << 16;
    c.inflight_msgs_max = 8;
    c.inflight_bytes_max = 1 << 20;
    c
}

impl Env {
    /// An empty environment.
    pub fn new() -> Env {
        Env {
            nodes: BTreeMap::new(),
            net: Vec::new(),
            cut: BTreeSet::new(),
            out: String::new(),
            verbose: true,
            applied_events: Vec::new(),
            violations: Vec::new(),
            overwritten_acks: 0,
        }
    }

    /// Adds a node with a fresh storage bootstrapped to `voters` and `learners`.
    pub fn add_node(&mut self, config: Config, voters: &[u64], learners: &[u64]) {
        let storage = MemStorage::new_with_conf(voters, learners);
        self.add_node_with_storage(config, storage);
    }

    /// Adds a node restored from `storage`.
    pub fn add_node_with_storage(&mut self, config: Config, storage: MemStorage) {
        let conf_state = storage.initial_state().1;
        let id = config.id;
        let raw = RawNode::new(&config, storage.clone()).expect("valid config");
        self.nodes.insert(
            id,
            Node {
                raw: Some(raw),
                disk: storage,
                appends: VecDeque::new(),
                written: VecDeque::new(),
                applies: VecDeque::new(),
                sm: StateMachine::default(),
                conf_state,
                reads: Vec::new(),
                applied_data: Vec::new(),
                config,
            },
        );
    }

    /// The running node `id`.
    pub fn raw(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raw.as_mut())
            .expect("running node")
    }

    /// Whether node `id` is running.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raw.is_some())
    }

    /// The ids of all nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Takes node `id`'s Ready, if any: messages go to the network, work to the queues.
    pub fn process_ready(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        if !raw.has_ready() {
            return false;
        }
        let rd = raw.ready();
        if self.verbose {
            let _ = writeln!(self.out, "> {id} handling Ready");
            if let Some(ss) = rd.soft_state {
                let _ = writeln!(self.out, "  Lead:{} State:{:?}", ss.leader_id, ss.role);
            }
            if let Some(a) = &rd.append {
                let mut line = String::from("  Append:");
                if let Some(hs) = a.hard_state {
                    let _ = write!(
                        line,
                        " HardState Term:{} Vote:{} Commit:{}",
                        hs.term, hs.vote, hs.commit
                    );
                }
                if let Some(s) = &a.snapshot {
                    let _ = write!(line, " Snapshot {}/{}", s.metadata.index, s.metadata.term);
                }
                if !a.entries.is_empty() {
                    let _ = write!(line, " Entries:{}", fmt_entries(&a.entries));
                }
                let _ = writeln!(self.out, "{line}");
                for m in &a.ack.responses {
                    let _ = writeln!(self.out, "    after durable: {}", fmt_msg(m));
                }
            }
            if let Some(a) = &rd.apply {
                let _ = writeln!(self.out, "  Apply: {}", fmt_entries(&a.entries));
            }
            for m in &rd.messages {
                let _ = writeln!(self.out, "  {}", fmt_msg(m));
            }
            for r in &rd.read_states {
                let _ = writeln!(
                    self.out,
                    "  ReadState index:{} ctx:{}",
                    r.index,
                    String::from_utf8_lossy(&r.context)
                );
            }
        }
        if let Some(a) = &rd.apply {
            // Only entries durable locally may be applied.
            let storage = raw.storage();
            let snap_index = storage.snapshot_metadata().index;
            for e in a.entries.iter().filter(|e| e.index > snap_index) {
                let stored = storage.entries(e.index, e.index + 1, u64::MAX);
                if !stored.is_ok_and(|s| s.first() == Some(e)) {
                    self.violations.push(format!(
                        "node {id} applies {}/{}, which its storage does not hold",
                        e.index, e.term
                    ));
                }
            }
        }
        self.net.extend(rd.messages);
        if let Some(a) = rd.append {
            node.appends.push_back(a);
        }
        if let Some(a) = rd.apply {
            node.applies.push_back(a);
        }
        node.reads.extend(rd.read_states);
        true
    }

    /// Makes node `id`'s oldest storage work durable and acknowledges it, after handing back
    /// the acknowledgements of earlier writes still held (acknowledgements go in write order).
    pub fn process_append(&mut self, id: u64) -> bool {
        let mut progress = false;
        while self.ack_append(id) {
            progress = true;
        }
        let Some(work) = self.write(id) else {
            return progress;
        };
        self.acknowledge(id, work.ack);
        true
    }

    /// Makes node `id`'s oldest storage work durable but holds its acknowledgement back, the
    /// way a host's storage thread works: the responses for other nodes leave as soon as the
    /// write is durable, and the node hears about the write later ([`Env::ack_append`]).
    pub fn write_append(&mut self, id: u64) -> bool {
        let Some(work) = self.write(id) else {
            return false;
        };
        let mut ack = work.ack;
        let (mine, others): (Vec<Message>, Vec<Message>) =
            ack.responses.into_iter().partition(|m| m.to == id);
        ack.responses = mine;
        if self.verbose {
            let _ = writeln!(
                self.out,
                "> {id} append written up to {} (acknowledgement held)",
                fmt_last(&ack)
            );
            for m in &others {
                let _ = writeln!(self.out, "  {}", fmt_msg(m));
            }
        }
        self.net.extend(others);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.written.push_back(ack);
        }
        true
    }

    /// Whether node `id`'s newest storage work, not yet written, replaces entries its
    /// storage holds.
    pub fn overwrite_in_flight(&self, id: u64) -> bool {
        let Some(node) = self.nodes.get(&id) else {
            return false;
        };
        let (Some(raw), Some(work)) = (node.raw.as_ref(), node.appends.back()) else {
            return false;
        };
        work.entries
            .first()
            .is_some_and(|e| e.index <= raw.storage().last_index())
    }

    /// Hands node `id` the oldest held acknowledgement of a durable write.
    pub fn ack_append(&mut self, id: u64) -> bool {
        let Some(ack) = self
            .nodes
            .get_mut(&id)
            .filter(|n| n.raw.is_some())
            .and_then(|n| n.written.pop_front())
        else {
            return false;
        };
        self.acknowledge(id, ack);
        true
    }

    /// Writes node `id`'s oldest storage work into its storage.
    fn write(&mut self, id: u64) -> Option<AppendWork> {
        let node = self.nodes.get_mut(&id)?;
        let raw = node.raw.as_mut()?;
        let work = node.appends.pop_front()?;
        let storage = raw.storage_mut();
        if let Some(hs) = work.hard_state {
            storage.set_hard_state(hs);
        }
        if let Some(snap) = &work.snapshot {
            storage
                .apply_snapshot(snap.clone())
                .expect("snapshot newer than storage");
            node.sm = StateMachine::decode(&snap.data);
            node.conf_state = snap.metadata.conf_state.clone();
            self.applied_events.push(Applied { id, sm: node.sm });
        }
        storage.append(&work.entries).expect("contiguous append");
        Some(work)
    }

    fn acknowledge(&mut self, id: u64, ack: AppendAck) {
        if let Some(last) = ack.last {
            if self.raw(id).storage().term(last.index) != Ok(last.term) {
                self.overwritten_acks += 1;
            }
        }
        if self.verbose {
            let _ = writeln!(self.out, "> {id} append durable up to {}", fmt_last(&ack));
        }
        self.raw(id).on_append_durable(ack);
    }

    /// Applies node `id`'s oldest apply work and acknowledges it.
    pub fn process_apply(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        let Some(work) = node.applies.pop_front() else {
            return false;
        };
        for e in &work.entries {
            if e.index <= node.sm.index {
                // Already covered by a snapshot installed meanwhile.
                continue;
            }
            if e.entry_type == EntryType::ConfChange {
                if let Ok(cc) = ConfChange::decode(&e.data) {
                    if let Ok(cs) = raw.apply_conf_change(&cc) {
                        node.conf_state = cs;
                    }
                }
            } else if !e.data.is_empty() {
                node.applied_data.push((e.index, e.data.to_vec()));
            }
            node.sm.hash = chain(node.sm.hash, e);
            node.sm.index = e.index;
            self.applied_events.push(Applied { id, sm: node.sm });
        }
        if self.verbose {
            let _ = writeln!(self.out, "> {id} applied up to {}", work.ack.index);
        }
        raw.on_applied(work.ack);
        true
    }

    /// Delivers every in-flight message addressed to `id` (dropping ones on cut links).
    pub fn deliver(&mut self, id: u64) -> bool {
        let (mine, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|m| m.to == id);
        self.net = rest;
        let any = !mine.is_empty();
        for m in mine {
            self.deliver_one(m);
        }
        any
    }

    /// Delivers one message, honouring partitions and crashes.
    pub fn deliver_one(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) {
            if self.verbose {
                let _ = writeln!(self.out, "  dropped {}", fmt_msg(&m));
            }
            self.report_lost(&m);
            return;
        }
        let is_snap = m.msg_type == MessageType::Snapshot;
        let (from, to) = (m.from, m.to);
        let up = self.is_up(to);
        if up {
            let _ = self.raw(to).step(m);
        }
        if is_snap && self.is_up(from) {
            self.raw(from).report_snapshot(to, up);
        }
    }

    /// Tells the sender of a lost snapshot, as a transport would, so it can retry.
    pub fn report_lost(&mut self, m: &Message) {
        if m.msg_type == MessageType::Snapshot && self.is_up(m.from) {
            self.raw(m.from).report_snapshot(m.to, false);
        }
    }

    /// Runs everything until no node has work and no message is in flight.
    pub fn stabilize(&mut self) {
        let ids = self.ids();
        assert!(self.stabilize_only(&ids), "cluster did not stabilize");
    }

    /// Like [`Env::stabilize`], but only nodes in `ids` act; messages to others stay in flight.
    pub fn stabilize_only(&mut self, ids: &[u64]) -> bool {
        let verbose = self.verbose;
        for round in 0..10_000 {
            // Record the last rounds of a livelock for the failure message.
            self.verbose |= round >= 9_997;
            let mut progress = false;
            for &id in ids {
                progress |= self.process_ready(id);
                while self.process_append(id) {
                    progress = true;
                }
                while self.process_apply(id) {
                    progress = true;
                }
            }
            for &id in ids {
                progress |= self.deliver(id);
            }
            if !progress {
                self.verbose = verbose;
                return true;
            }
        }
        self.verbose = verbose;
        false
    }

    /// Ticks node `id` `n` times.
    pub fn tick(&mut self, id: u64, n: u64) {
        for _ in 0..n {
            self.raw(id).tick();
        }
    }

    /// Crashes node `id`: everything not yet durable is lost.
    pub fn crash(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if let Some(raw) = node.raw.take() {
            node.disk = raw.storage().clone();
        }
        node.appends.clear();
        node.written.clear();
        node.applies.clear();
        node.reads.clear();
        let (lost, kept): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|m| m.from == id || m.to == id);
        self.net = kept;
        for m in &lost {
            self.report_lost(m);
        }
    }

    /// Restarts node `id` from its durable storage; the state machine restarts from the
    /// storage snapshot.
    pub fn restart(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raw.is_some() {
            return;
        }
        let meta = node.disk.snapshot_metadata().clone();
        let snap = node.disk.snapshot().expect("mem snapshot");
        node.sm = if meta.index == 0 {
            StateMachine::default()
        } else {
            StateMachine::decode(&snap.data)
        };
        node.conf_state = meta.conf_state.clone();
        let mut config = node.config.clone();
        config.applied = meta.index;
        // A different seed after each restart keeps elections from repeating in lockstep.
        config.seed = config.seed.wrapping_mul(31).wrapping_add(7);
        node.config.seed = config.seed;
        node.raw = Some(RawNode::new(&config, node.disk.clone()).expect("valid config"));
    }

    /// Compacts node `id`'s storage up to its applied index with a state-machine snapshot.
    pub fn compact(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        // Only what the state machine applied, and what is durable, may be compacted.
        let index = node.sm.index.min(raw.basic_status().applied);
        let data = node.sm.encode();
        if index == node.sm.index
            && index > raw.storage().snapshot_metadata().index
            && index <= raw.storage().last_index()
        {
            return raw
                .storage_mut()
                .compact(index, node.conf_state.clone(), data)
                .is_ok();
        }
        false
    }

    /// The leader with the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raw.as_ref().map(|r| (id, r)))
            .map(|(id, r)| (id, r.basic_status()))
            .filter(|(_, st)| st.role == StateRole::Leader)
            .max_by_key(|(_, st)| st.term)
            .map(|(id, _)| id)
    }

    /// Node `id`'s log as "index/term" items.
    pub fn log_string(&mut self, id: u64) -> String {
        let raw = self.raw(id);
        let st = raw.basic_status();
        let (first, last) = (st.first_index, st.last_index);
        let ents = raw.entries(first, last + 1).unwrap_or_default();
        format!(
            "first:{first} last:{last} committed:{} applying:{} applied:{} entries:{}",
            st.commit,
            st.applying,
            st.applied,
            fmt_entries(&ents)
        )
    }
}

fn fmt_last(ack: &AppendAck) -> String {
    ack.last
        .map_or(String::from("-"), |l| format!("{}/{}", l.index, l.term))
}

/// Formats entries compactly: `index/term` plus data.
pub fn fmt_entries(ents: &[Entry]) -> String {
    let items: Vec<String> = ents
        .iter()
        .map(|e| match e.entry_type {
            EntryType::ConfChange => format!("{}/{} conf", e.index, e.term),
            EntryType::Normal if e.data.is_empty() => format!("{}/{}", e.index, e.term),
            EntryType::Normal => format!(
                "{}/{} {}",
                e.index,
                e.term,
                String::from_utf8_lossy(&e.data)
            ),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Formats a message compactly.
pub fn fmt_msg(m: &Message) -> String {
    let mut s = format!("{}->{} {:?} Term:{}", m.from, m.to, m.msg_type, m.term);
    match m.msg_type {
        MessageType::Append => {
            let _ = write!(
                s,
                " Log:{}/{} Commit:{} Entries:{}",
                m.index,
                m.log_term,
                m.commit,
                fmt_entries(&m.entries)
            );
        }
        MessageType::AppendResponse if m.reject => {
            let _ = write!(
                s,
                " Rejected Index:{} Hint:{}/{}",
                m.index, m.reject_hint, m.log_term
            );
        }
        MessageType::AppendResponse => {
            let _ = write!(s, " Index:{}", m.index);
        }
        MessageType::RequestVote | MessageType::RequestPreVote => {
            let _ = write!(s, " Log:{}/{}", m.index, m.log_term);
        }
        MessageType::RequestVoteResponse | MessageType::RequestPreVoteResponse if m.reject => {
            s.push_str(" Rejected");
        }
        MessageType::Heartbeat => {
            let _ = write!(s, " Commit:{} ReadSeq:{}", m.commit, m.read_seq);
        }
        MessageType::HeartbeatResponse => {
            let _ = write!(s, " ReadSeq:{}", m.read_seq);
        }
        MessageType::Snapshot => {
            if let Some(snap) = &m.snapshot {
                let _ = write!(
                    s,
                    " Snapshot:{}/{}",
                    snap.metadata.index, snap.metadata.term
                );
            }
        }
        MessageType::ReadIndex | MessageType::ReadIndexResponse => {
            let _ = write!(
                s,
                " Index:{} ctx:{}",
                m.index,
                String::from_utf8_lossy(&m.context)
            );
        }
        _ => {}
    }
    s
}
