//! The simulated network: raft messages and snapshot chunks between the members of a
//! simulated cluster, delayed, reordered, dropped and cut off from a seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::consensus::prng::Prng;
use crate::consensus::{Message, NodeId};
use crate::host::PeerTransport;
use crate::shard::SnapshotChunk;
use crate::transport::{ChunkRefused, SNAPSHOT_CHUNKS_QUEUED_MAX};

/// How a [`SimNetwork`] carries packets. Delays count in network steps
/// ([`SimNetwork::advance`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    /// The fewest steps a packet takes (at least 1: nothing arrives in the step it was
    /// sent). Default 1.
    pub delay_min: u64,
    /// The most steps a packet takes. Each packet's delay is drawn in
    /// `[delay_min, delay_max]`, so raft messages overtake each other; chunks of snapshot
    /// transfers over one link never do (each arrives no earlier than the one sent before
    /// it, as over one TCP connection). Default 3.
    pub delay_max: u64,
    /// Percent of packets (messages and chunks) lost on the way, silently, as on a lossy
    /// link. Default 0.
    pub drop_percent: u64,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            delay_min: 1,
            delay_max: 3,
            drop_percent: 0,
        }
    }
}

/// What the simulated network carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// A raft message.
    Message(Message),
    /// A chunk of a snapshot transfer.
    Chunk(SnapshotChunk),
}

impl Packet {
    /// The sending member.
    pub fn from(&self) -> NodeId {
        match self {
            Packet::Message(m) => m.from,
            Packet::Chunk(c) => c.from,
        }
    }

    /// The receiving member.
    pub fn to(&self) -> NodeId {
        match self {
            Packet::Message(m) => m.to,
            Packet::Chunk(c) => c.to,
        }
    }

    /// The group it belongs to.
    pub fn group(&self) -> u64 {
        match self {
            Packet::Message(m) => m.group_id,
            Packet::Chunk(c) => c.group_id,
        }
    }
}

/// Counters of a [`SimNetwork`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Packets handed to the network (queued, dropped, or refused).
    pub sent: u64,
    /// Packets delivered.
    pub delivered: u64,
    /// Packets lost at random (`drop_percent`).
    pub dropped: u64,
    /// Packets sent across an isolation or partition, lost.
    pub cut: u64,
    /// Packets refused because their receiver was down (reported unreachable, or the
    /// chunk refused as unreachable).
    pub refused: u64,
    /// Chunks in flight lost when their receiver went down (reported lost to the sender).
    pub lost: u64,
}

/// A network between simulated members, driven one step at a time from a seed.
///
/// Each member sends through its own [`SimTransport`] ([`SimNetwork::transport`]), the
/// simulated twin of the TCP transport, with the same contract
/// ([`PeerTransport`]). What the network does to a packet:
/// - It arrives after a delay drawn from the seed (see [`NetworkOptions`]): raft messages
///   are reordered, chunks of one link stay in order.
/// - It is lost silently with `drop_percent`, or when a partition or isolation separates
///   its two members when it is sent ([`SimNetwork::isolate`], [`SimNetwork::partition`]):
///   the link stalls, as a TCP connection does until its timeouts. (What was on its way
///   when the cut came still arrives.)
/// - A member that is down ([`SimNetwork::set_up`]) refuses connections: a message to it is
///   dropped and reported unreachable to its sender, a chunk refused as unreachable; the
///   chunks in flight to it when it goes down are lost with the connection and reported to
///   their senders. Messages in flight to it are lost too.
/// - At most [`SNAPSHOT_CHUNKS_QUEUED_MAX`] chunks are in flight per link, as the TCP
///   transport queues at most that many per peer: one more is refused as busy.
///
/// Cloning gives another handle on the same network.
#[derive(Clone)]
pub struct SimNetwork {
    net: Rc<RefCell<Net>>,
}

struct Net {
    options: NetworkOptions,
    rng: Prng,
    now: u64,
    /// Packets on their way, by (delivery step, sequence): delivered in that order.
    in_flight: BTreeMap<(u64, u64), Packet>,
    sequence: u64,
    up: BTreeSet<NodeId>,
    isolated: BTreeSet<NodeId>,
    /// Each partitioned member's side; members on no side reach every side.
    sides: BTreeMap<NodeId, usize>,
    links: BTreeMap<(NodeId, NodeId), Link>,
    reports: BTreeMap<NodeId, Reports>,
    stats: NetworkStats,
}

/// The chunks on one directed link.
#[derive(Default)]
struct Link {
    /// Chunks in flight.
    chunks: usize,
    /// When the last chunk sent arrives.
    last_chunk_at: u64,
}

/// What a member's transport reports next.
#[derive(Default)]
struct Reports {
    unreachable: BTreeSet<(NodeId, u64)>,
    lost: BTreeSet<(NodeId, u64)>,
}

impl Net {
    /// What `member`'s transport has to report next.
    fn reports_of(&mut self, member: NodeId) -> &mut Reports {
        self.reports.entry(member).or_default()
    }

    /// Takes one kind of `member`'s reports (`which` picks it).
    fn take_reports(
        &mut self,
        member: NodeId,
        which: fn(&mut Reports) -> &mut BTreeSet<(NodeId, u64)>,
    ) -> Vec<(NodeId, u64)> {
        self.reports
            .get_mut(&member)
            .map(|r| std::mem::take(which(r)).into_iter().collect())
            .unwrap_or_default()
    }

    fn cut(&self, from: NodeId, to: NodeId) -> bool {
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return true;
        }
        match (self.sides.get(&from), self.sides.get(&to)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }

    fn delay(&mut self) -> u64 {
        let min = self.options.delay_min.max(1);
        let max = self.options.delay_max.max(min);
        if max == min {
            min
        } else {
            min + self.rng.below(max - min + 1)
        }
    }

    fn dropped(&mut self) -> bool {
        self.options.drop_percent > 0 && self.rng.below(100) < self.options.drop_percent
    }

    fn queue(&mut self, at: u64, packet: Packet) {
        self.sequence += 1;
        self.in_flight.insert((at, self.sequence), packet);
    }

    /// A chunk left its link (delivered or lost).
    fn chunk_left(&mut self, from: NodeId, to: NodeId) {
        if let Some(link) = self.links.get_mut(&(from, to)) {
            link.chunks = link.chunks.saturating_sub(1);
        }
    }
}

impl SimNetwork {
    /// A network with no member up, whose random choices come from `seed`.
    pub fn new(seed: u64, options: NetworkOptions) -> SimNetwork {
        SimNetwork {
            net: Rc::new(RefCell::new(Net {
                options,
                rng: Prng::new(seed),
                now: 0,
                in_flight: BTreeMap::new(),
                sequence: 0,
                up: BTreeSet::new(),
                isolated: BTreeSet::new(),
                sides: BTreeMap::new(),
                links: BTreeMap::new(),
                reports: BTreeMap::new(),
                stats: NetworkStats::default(),
            })),
        }
    }

    /// The transport `member` sends through.
    pub fn transport(&self, member: NodeId) -> SimTransport {
        SimTransport {
            member,
            net: self.net.clone(),
        }
    }

    /// Brings `member` up or takes it down. Taking it down loses what is in flight to it
    /// (chunks are reported lost to their senders) and what its transport had to report;
    /// what it sent before stays on its way.
    pub fn set_up(&self, member: NodeId, up: bool) {
        let mut net = self.net.borrow_mut();
        if up {
            net.up.insert(member);
            return;
        }
        net.up.remove(&member);
        net.reports.remove(&member);
        let lost: Vec<(u64, u64)> = net
            .in_flight
            .iter()
            .filter(|(_, p)| p.to() == member)
            .map(|(&k, _)| k)
            .collect();
        for key in lost {
            let Some(packet) = net.in_flight.remove(&key) else {
                continue;
            };
            if let Packet::Chunk(c) = &packet {
                net.chunk_left(c.from, c.to);
                net.stats.lost += 1;
                net.reports_of(c.from).lost.insert((c.to, c.group_id));
            }
        }
    }

    /// Whether `member` is up.
    pub fn is_up(&self, member: NodeId) -> bool {
        self.net.borrow().up.contains(&member)
    }

    /// Cuts `member` off: nothing it sends and nothing sent to it from now on arrives,
    /// until [`SimNetwork::heal`].
    pub fn isolate(&self, member: NodeId) {
        self.net.borrow_mut().isolated.insert(member);
    }

    /// Splits the members into `sides`: packets sent from now on between members of
    /// different sides are lost, until [`SimNetwork::heal`]. A member on no side reaches
    /// every side. Replaces the previous partition.
    pub fn partition(&self, sides: &[&[NodeId]]) {
        let mut net = self.net.borrow_mut();
        net.sides.clear();
        for (side, members) in sides.iter().enumerate() {
            for &m in *members {
                net.sides.insert(m, side);
            }
        }
    }

    /// Ends every isolation and partition.
    pub fn heal(&self) {
        let mut net = self.net.borrow_mut();
        net.isolated.clear();
        net.sides.clear();
    }

    /// The network's options.
    pub fn options(&self) -> NetworkOptions {
        self.net.borrow().options.clone()
    }

    /// Changes the network's options from now on (packets on their way keep their delays).
    pub fn set_options(&self, options: NetworkOptions) {
        self.net.borrow_mut().options = options;
    }

    /// Steps run so far.
    pub fn now(&self) -> u64 {
        self.net.borrow().now
    }

    /// Packets on their way.
    pub fn in_flight(&self) -> usize {
        self.net.borrow().in_flight.len()
    }

    /// The counters now.
    pub fn stats(&self) -> NetworkStats {
        self.net.borrow().stats
    }

    /// One step: the packets due now, in the order they arrive (by delivery step, then in
    /// the order sent), without those whose receiver is down.
    pub fn advance(&self) -> Vec<Packet> {
        let mut net = self.net.borrow_mut();
        net.now += 1;
        let now = net.now;
        let later = net.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut net.in_flight, later);
        let mut delivered = Vec::with_capacity(due.len());
        for (_, packet) in due {
            let (from, to) = (packet.from(), packet.to());
            if let Packet::Chunk(_) = packet {
                net.chunk_left(from, to);
            }
            if !net.up.contains(&to) {
                continue;
            }
            net.stats.delivered += 1;
            delivered.push(packet);
        }
        delivered
    }
}

/// A member's end of a [`SimNetwork`]: the simulated twin of the TCP
/// [`Transport`](crate::transport::Transport), for the host's shared round logic
/// ([`crate::host::run_rounds`]).
#[derive(Clone)]
pub struct SimTransport {
    member: NodeId,
    net: Rc<RefCell<Net>>,
}

impl SimTransport {
    /// The member it sends for.
    pub fn member(&self) -> NodeId {
        self.member
    }
}

impl PeerTransport for SimTransport {
    fn send(&self, messages: Vec<Message>) {
        let mut net = self.net.borrow_mut();
        for m in messages {
            net.stats.sent += 1;
            if !net.up.contains(&m.to) {
                net.stats.refused += 1;
                net.reports_of(self.member)
                    .unreachable
                    .insert((m.to, m.group_id));
                continue;
            }
            if net.cut(self.member, m.to) {
                net.stats.cut += 1;
                continue;
            }
            if net.dropped() {
                net.stats.dropped += 1;
                continue;
            }
            let at = net.now + net.delay();
            net.queue(at, Packet::Message(m));
        }
    }

    fn snapshot_chunk_room(&self, to: NodeId) -> bool {
        let net = self.net.borrow();
        !net.up.contains(&to)
            || net
                .links
                .get(&(self.member, to))
                .is_none_or(|l| l.chunks < SNAPSHOT_CHUNKS_QUEUED_MAX)
    }

    fn send_snapshot_chunk(&self, chunk: SnapshotChunk) -> Result<(), ChunkRefused> {
        let mut net = self.net.borrow_mut();
        net.stats.sent += 1;
        if !net.up.contains(&chunk.to) {
            net.stats.refused += 1;
            return Err(ChunkRefused::Unreachable(chunk));
        }
        let key = (self.member, chunk.to);
        if net
            .links
            .get(&key)
            .is_some_and(|l| l.chunks >= SNAPSHOT_CHUNKS_QUEUED_MAX)
        {
            return Err(ChunkRefused::Busy(chunk));
        }
        if net.cut(self.member, chunk.to) {
            net.stats.cut += 1;
            return Ok(());
        }
        if net.dropped() {
            net.stats.dropped += 1;
            return Ok(());
        }
        let at = net.now + net.delay();
        let link = net.links.entry(key).or_default();
        let at = at.max(link.last_chunk_at);
        link.chunks += 1;
        link.last_chunk_at = at;
        net.queue(at, Packet::Chunk(chunk));
        Ok(())
    }

    fn take_lost_snapshot_chunks(&self) -> Vec<(NodeId, u64)> {
        self.net
            .borrow_mut()
            .take_reports(self.member, |r| &mut r.lost)
    }

    fn take_unreachable(&self) -> Vec<(NodeId, u64)> {
        self.net
            .borrow_mut()
            .take_reports(self.member, |r| &mut r.unreachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::MessageType;

    fn message(from: NodeId, to: NodeId, index: u64) -> Message {
        let mut m = Message::new(MessageType::Heartbeat, from, to);
        m.index = index;
        m
    }

    fn chunk(from: NodeId, to: NodeId, offset: u64) -> SnapshotChunk {
        SnapshotChunk {
            group_id: 3,
            to,
            from,
            term: 1,
            index: 10,
            snapshot_term: 1,
            total_bytes: 100,
            offset,
            data: vec![0; 10],
        }
    }

    fn up(members: &[NodeId]) -> SimNetwork {
        let options = NetworkOptions {
            delay_min: 1,
            delay_max: 5,
            drop_percent: 0,
        };
        let net = SimNetwork::new(42, options);
        for &m in members {
            net.set_up(m, true);
        }
        net
    }

    fn run(net: &SimNetwork, steps: u64) -> Vec<Packet> {
        (0..steps).flat_map(|_| net.advance()).collect()
    }

    #[test]
    fn messages_are_reordered_and_chunks_of_a_link_stay_in_order_with_bounded_room() {
        let net = up(&[1, 2]);
        let t = net.transport(1);
        t.send((0..50).map(|i| message(1, 2, i)).collect());
        let got: Vec<u64> = run(&net, 10)
            .into_iter()
            .map(|p| match p {
                Packet::Message(m) => m.index,
                Packet::Chunk(_) => panic!("no chunk was sent"),
            })
            .collect();
        assert_eq!(got.len(), 50, "every message arrives");
        assert!(got.windows(2).any(|w| w[0] > w[1]), "some overtook others");

        let mut offsets = Vec::new();
        let mut next = 0;
        for _ in 0..200 {
            while next < 100 && t.snapshot_chunk_room(2) {
                t.send_snapshot_chunk(chunk(1, 2, next)).unwrap();
                next += 10;
            }
            if next < 100 {
                assert!(
                    matches!(
                        t.send_snapshot_chunk(chunk(1, 2, next)),
                        Err(ChunkRefused::Busy(_))
                    ),
                    "a link holds at most SNAPSHOT_CHUNKS_QUEUED_MAX chunks"
                );
            }
            offsets.extend(net.advance().into_iter().map(|p| match p {
                Packet::Chunk(c) => c.offset,
                Packet::Message(_) => panic!("no message was sent"),
            }));
        }
        assert_eq!(offsets, (0..10).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn a_member_that_is_down_refuses_and_loses_what_was_in_flight_to_it() {
        let net = up(&[1, 2, 3]);
        let t = net.transport(1);
        t.send_snapshot_chunk(chunk(1, 2, 0)).unwrap();
        t.send(vec![message(1, 2, 1)]);
        net.set_up(2, false);
        assert_eq!(t.take_lost_snapshot_chunks(), vec![(2, 3)]);
        assert!(t.take_lost_snapshot_chunks().is_empty(), "reported once");
        t.send(vec![message(1, 2, 2), message(1, 3, 3)]);
        assert_eq!(t.take_unreachable(), vec![(2, 0)]);
        assert!(t.snapshot_chunk_room(2), "refused as unreachable, not busy");
        assert!(matches!(
            t.send_snapshot_chunk(chunk(1, 2, 0)),
            Err(ChunkRefused::Unreachable(_))
        ));
        let delivered = run(&net, 10);
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].to(), 3);
    }

    #[test]
    fn packets_sent_across_a_cut_are_lost_until_it_heals() {
        let net = up(&[1, 2, 3]);
        net.partition(&[&[1], &[2, 3]]);
        net.transport(1)
            .send(vec![message(1, 2, 1), message(1, 3, 1)]);
        net.transport(2)
            .send(vec![message(2, 1, 1), message(2, 3, 1)]);
        let delivered = run(&net, 10);
        assert_eq!(delivered.len(), 1);
        assert_eq!((delivered[0].from(), delivered[0].to()), (2, 3));
        net.heal();
        net.isolate(3);
        net.transport(1)
            .send(vec![message(1, 2, 1), message(1, 3, 1)]);
        let delivered = run(&net, 10);
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].to(), 2);
        assert_eq!(net.stats().cut, 4);
    }

    #[test]
    fn one_seed_makes_the_same_choices() {
        let choices = |seed| {
            let net = SimNetwork::new(
                seed,
                NetworkOptions {
                    drop_percent: 30,
                    ..NetworkOptions::default()
                },
            );
            net.set_up(1, true);
            net.set_up(2, true);
            net.transport(1)
                .send((0..100).map(|i| message(1, 2, i)).collect());
            run(&net, 5)
        };
        assert_eq!(choices(7), choices(7));
        assert_ne!(choices(7), choices(8));
    }
}
