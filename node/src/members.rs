//! The cluster's member list: every member's id, name, peer address and role (voter or
//! learner), replicated in group 0 under the reserved key [`MEMBERS_KEY`], so that every
//! member — and a member restarting — knows the cluster from its own replica of group 0.
//! Members' client addresses live beside it, one reserved key per member
//! (`\0keel/members/<id>`), written by each member about itself.
//!
//! # Member ids
//!
//! The members a cluster starts with (`--initial-cluster`) get the ids 1..=n in name
//! order, on every member alike, with no communication. A member added later gets the
//! list's [`MemberList::next_id`], which is above every id the list ever held: an id is
//! never reused, so a removed member's messages, votes and data can never be mistaken for
//! a newer member's. Id 0 is never a member's (raft's "no node").
//!
//! # Format (version 1)
//!
//! All integers are little-endian.
//!
//! ```text
//! offset size  field
//!      0    1  version      1
//!      1    8  next_id      the id the next added member gets (> every id ever held)
//!      9    2  count        members that follow, at most MEMBERS_MAX
//!     then per member, in ascending id order:
//!           8  id           not 0, below next_id
//!           1  flags        bit 0: learner; other bits 0
//!           1  name length  then that many bytes of UTF-8 (at most NAME_BYTES_MAX; empty
//!                           for a member added and not started yet)
//!           1  peer length  then the peer address as `ip:port` in ASCII
//! ```
//!
//! [`MemberList::decode`] checks every length, the order, the flags and the ids, and
//! names what is wrong; bytes that do not decode never reach a shard.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::consensus::NodeId;
use crate::shard::Membership;

/// Where group 0 keeps the member list.
pub const MEMBERS_KEY: &[u8] = b"\0keel/cluster/members";

/// The most members of a cluster (as the peer transport's default `peers_max`).
pub const MEMBERS_MAX: usize = 64;
/// The longest member name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

const VERSION: u8 = 1;
const FLAG_LEARNER: u8 = 1;

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id (see the module doc); never 0.
    pub id: NodeId,
    /// Its name (`--name`).
    pub name: String,
    /// Where shard 0 of the member listens for peers (shard `s`: the port + `s`).
    pub peer: SocketAddr,
    /// Whether it only receives the groups' logs (a joining member not yet promoted).
    pub is_learner: bool,
}

/// Why a change of the member list was refused. The messages are etcd's where etcd
/// clients look for them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberError {
    /// No member has the id.
    NotFound(NodeId),
    /// A member listens on the peer address already.
    PeerUrlExists(SocketAddr),
    /// A member has the name already.
    NameExists(String),
    /// Only a learner can be promoted.
    NotLearner(NodeId),
    /// The learner is not in sync with the leader yet.
    LearnerNotReady(NodeId),
    /// The list holds [`MEMBERS_MAX`] members.
    TooMany,
    /// The change would leave no voter.
    LastVoter(NodeId),
    /// A name or address that cannot be a member's.
    Invalid(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::NotFound(_) => f.write_str("etcdserver: member not found"),
            MemberError::PeerUrlExists(_) => f.write_str("etcdserver: peerURL exists"),
            MemberError::NameExists(name) => {
                write!(f, "etcdserver: a member named {name} exists")
            }
            MemberError::NotLearner(_) => {
                f.write_str("etcdserver: can only promote a learner member")
            }
            MemberError::LearnerNotReady(_) => f.write_str(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            MemberError::TooMany => write!(
                f,
                "etcdserver: the cluster has {MEMBERS_MAX} members, the most it may have"
            ),
            MemberError::LastVoter(_) => {
                f.write_str("etcdserver: re-configuration failed due to not enough started members")
            }
            MemberError::Invalid(why) => write!(f, "etcdserver: {why}"),
        }
    }
}

impl std::error::Error for MemberError {}

/// The member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberList {
    /// The id the next added member gets: above every id the list ever held.
    pub next_id: NodeId,
    /// The members, in ascending id order.
    pub members: Vec<Member>,
}

/// `ip:port` or `http://ip:port` (a trailing `/` allowed): a peer address as a member list
/// holds it. Host names are refused (resolving them would block, and every member must
/// read the same address).
pub fn parse_peer_url(url: &str) -> Result<SocketAddr, MemberError> {
    let trimmed = url.trim();
    if trimmed.starts_with("https://") {
        return Err(MemberError::Invalid(format!(
            "peer URL {url}: TLS is not supported; use http://"
        )));
    }
    let hostport = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    hostport.parse().map_err(|_| {
        MemberError::Invalid(format!(
            "peer URL {url:?} is not http://ip:port (an IP address and a port)"
        ))
    })
}

/// A name is at most [`NAME_BYTES_MAX`] bytes; it is empty for a member added and not
/// started yet (as etcd lists one).
/// Checks a member's name: at most [`NAME_BYTES_MAX`] bytes, no control characters (names
/// are written one per line in a member's identity file).
pub fn check_name(name: &str) -> Result<(), MemberError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(MemberError::Invalid(format!(
            "a member name has at most {NAME_BYTES_MAX} bytes, {name:?} has {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MemberError::Invalid(format!(
            "a member name has no control characters, {name:?} has"
        )));
    }
    Ok(())
}

impl MemberList {
    /// The list a new cluster starts with: ids 1..=n in name order, all voters. The
    /// error names a duplicate or invalid name, or too many members.
    pub fn bootstrap(initial: &[(String, SocketAddr)]) -> Result<MemberList, MemberError> {
        let mut sorted: Vec<&(String, SocketAddr)> = initial.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut list = MemberList {
            next_id: 1,
            members: Vec::new(),
        };
        for (name, peer) in sorted {
            if name.is_empty() {
                return Err(MemberError::Invalid(
                    "a member of --initial-cluster has no name".into(),
                ));
            }
            list.add(name, *peer, false)?;
        }
        Ok(list)
    }

    /// The member with id `id`.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member named `name` (empty: an unstarted member's).
    pub fn by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Adds a member with the next id and returns it.
    pub fn add(
        &mut self,
        name: &str,
        peer: SocketAddr,
        is_learner: bool,
    ) -> Result<Member, MemberError> {
        check_name(name)?;
        if self.members.len() >= MEMBERS_MAX {
            return Err(MemberError::TooMany);
        }
        if self.members.iter().any(|m| m.peer == peer) {
            return Err(MemberError::PeerUrlExists(peer));
        }
        if !name.is_empty() && self.by_name(name).is_some() {
            return Err(MemberError::NameExists(name.to_string()));
        }
        let member = Member {
            id: self.next_id,
            name: name.to_string(),
            peer,
            is_learner,
        };
        self.next_id += 1;
        self.members.push(member.clone());
        Ok(member)
    }

    /// Makes learner `id` a voter.
    pub fn promote(&mut self, id: NodeId) -> Result<(), MemberError> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or(MemberError::NotFound(id))?;
        if !member.is_learner {
            return Err(MemberError::NotLearner(id));
        }
        member.is_learner = false;
        Ok(())
    }

    /// Removes member `id`; the last voter cannot be removed.
    pub fn remove(&mut self, id: NodeId) -> Result<Member, MemberError> {
        let pos = self
            .members
            .iter()
            .position(|m| m.id == id)
            .ok_or(MemberError::NotFound(id))?;
        let voters = self.members.iter().filter(|m| !m.is_learner).count();
        if !self.members[pos].is_learner && voters <= 1 {
            return Err(MemberError::LastVoter(id));
        }
        Ok(self.members.remove(pos))
    }

    /// Removes member `id` as [`MemberList::remove`] does, and refuses to remove a voter
    /// when the voters left would not have a quorum among the `started` members (the ones
    /// group 0's leader heard from lately), as etcd refuses it: the groups could not
    /// commit the change, or anything after it. A learner is removed regardless.
    pub fn remove_keeping_quorum(
        &mut self,
        id: NodeId,
        started: &BTreeSet<NodeId>,
    ) -> Result<Member, MemberError> {
        let member = self.get(id).ok_or(MemberError::NotFound(id))?;
        if !member.is_learner {
            let left: Vec<NodeId> = self
                .members
                .iter()
                .filter(|m| !m.is_learner && m.id != id)
                .map(|m| m.id)
                .collect();
            let up = left.iter().filter(|m| started.contains(m)).count();
            if up < left.len() / 2 + 1 {
                return Err(MemberError::LastVoter(id));
            }
        }
        self.remove(id)
    }

    /// The membership every group is driven toward. A member that has not started yet (no
    /// name in the list: added, never run) is a learner whatever it was added as; it becomes
    /// a voter once it has started and published its name. A voter that loses its data is
    /// refused when it asks to join again under its name, so no member can vote in a group
    /// before the list shows it started.
    pub fn membership(&self) -> Membership {
        let (learners, voters): (Vec<&Member>, Vec<&Member>) = self
            .members
            .iter()
            .partition(|m| m.is_learner || m.name.is_empty());
        Membership {
            voters: voters.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
            learners: learners.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
        }
    }

    /// The write that replaces the list in group 0 with this one only if the list there is
    /// still the one read at `mod_revision` (a compare-and-swap).
    pub fn replace_txn(&self, mod_revision: u64) -> keel_engine::txn::Txn {
        self.write_if(keel_engine::txn::CompareTarget::ModRevision(mod_revision))
    }

    /// The write that puts this list in group 0 only if group 0 holds none yet.
    pub fn create_txn(&self) -> keel_engine::txn::Txn {
        self.write_if(keel_engine::txn::CompareTarget::Version(0))
    }

    /// The write of this list to group 0 if the list key's `target` is as given.
    fn write_if(&self, target: keel_engine::txn::CompareTarget) -> keel_engine::txn::Txn {
        use keel_engine::txn::{Compare, CompareOp, Op, Txn};
        Txn {
            compares: vec![Compare {
                key: MEMBERS_KEY.to_vec(),
                end: keel_engine::txn::RangeEnd::Single,
                op: CompareOp::Equal,
                target,
            }],
            success: vec![Op::put(MEMBERS_KEY, self.encode())],
            failure: Vec::new(),
        }
    }

    /// The list's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.members.len() * 48);
        out.push(VERSION);
        out.extend_from_slice(&self.next_id.to_le_bytes());
        let count = u16::try_from(self.members.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for m in self.members.iter().take(usize::from(count)) {
            out.extend_from_slice(&m.id.to_le_bytes());
            out.push(if m.is_learner { FLAG_LEARNER } else { 0 });
            for text in [m.name.clone(), m.peer.to_string()] {
                let bytes = text.as_bytes();
                let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
                out.push(len);
                out.extend_from_slice(&bytes[..usize::from(len)]);
            }
        }
        out
    }

    /// The list encoded in `bytes`; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<MemberList, String> {
        let mut rest = bytes;
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(format!(
                    "member list truncated in {what}: {n} bytes needed, {} left",
                    rest.len()
                ));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let version = take(1, "the version")?[0];
        if version != VERSION {
            return Err(format!(
                "member list version {version} unknown (this build reads {VERSION})"
            ));
        }
        let u64_of = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        };
        let next_id = u64_of(take(8, "next_id")?);
        let count = take(2, "the count")?;
        let count = usize::from(u16::from_le_bytes([count[0], count[1]]));
        if count > MEMBERS_MAX {
            return Err(format!(
                "member list of {count} members exceeds MEMBERS_MAX ({MEMBERS_MAX})"
            ));
        }
        let mut members: Vec<Member> = Vec::with_capacity(count);
        for _ in 0..count {
            let id = u64_of(take(8, "a member id")?);
            if id == 0 || id >= next_id {
                return Err(format!(
                    "member id {id} is 0 or not below next_id {next_id}"
                ));
            }
            if members.last().is_some_and(|m| m.id >= id) {
                return Err(format!("member id {id} out of ascending order"));
            }
            let flags = take(1, "flags")?[0];
            if flags & !FLAG_LEARNER != 0 {
                return Err(format!("member {id}: unknown flags {flags:#04x}"));
            }
            let mut text = |what: &str| -> Result<String, String> {
                let len = usize::from(take(1, what)?[0]);
                let bytes = take(len, what)?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| format!("member {id}: {what} is not UTF-8"))
            };
            let name = text("the name")?;
            let peer_text = text("the peer address")?;
            check_name(&name).map_err(|e| format!("member {id}: {e}"))?;
            let peer = peer_text
                .parse()
                .map_err(|_| format!("member {id}: peer address {peer_text:?} is not ip:port"))?;
            members.push(Member {
                id,
                name,
                peer,
                is_learner: flags & FLAG_LEARNER != 0,
            });
        }
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes left over after the member list",
                rest.len()
            ));
        }
        Ok(MemberList { next_id, members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn bootstrap_ids_follow_names_and_added_ids_are_never_reused() {
        let list = MemberList::bootstrap(&[
            ("m3".into(), addr(3)),
            ("m1".into(), addr(1)),
            ("m2".into(), addr(2)),
        ])
        .unwrap();
        let ids: Vec<(u64, &str)> = list
            .members
            .iter()
            .map(|m| (m.id, m.name.as_str()))
            .collect();
        assert_eq!(ids, vec![(1, "m1"), (2, "m2"), (3, "m3")]);
        let mut list = list;
        let m4 = list.add("m4", addr(4), true).unwrap();
        assert_eq!((m4.id, m4.is_learner), (4, true));
        assert_eq!(
            list.membership(),
            Membership {
                voters: [1, 2, 3].into(),
                learners: [4].into(),
            }
        );
        list.promote(4).unwrap();
        assert_eq!(list.promote(4), Err(MemberError::NotLearner(4)));
        list.remove(4).unwrap();
        // A removed member's id is not given again.
        assert_eq!(list.add("m5", addr(4), false).unwrap().id, 5);
        assert_eq!(list.remove(4), Err(MemberError::NotFound(4)));
        assert_eq!(
            list.add("m6", addr(1), false),
            Err(MemberError::PeerUrlExists(addr(1)))
        );
        assert!(matches!(
            list.add("m1", addr(9), false),
            Err(MemberError::NameExists(_))
        ));
        assert_eq!(
            MemberError::NotFound(9).to_string(),
            "etcdserver: member not found"
        );
        assert_eq!(
            MemberError::PeerUrlExists(addr(1)).to_string(),
            "etcdserver: peerURL exists"
        );
        // The last voter stays.
        let mut one = MemberList::bootstrap(&[("a".into(), addr(1))]).unwrap();
        assert_eq!(one.remove(1), Err(MemberError::LastVoter(1)));
    }

    #[test]
    fn a_member_added_as_a_voter_is_a_learner_until_it_started() {
        let mut list = MemberList::bootstrap(&[("m1".into(), addr(1))]).unwrap();
        // etcd's MemberAdd names no member: the name comes when the member starts.
        let added = list.add("", addr(2), false).unwrap();
        assert_eq!(
            list.membership(),
            Membership {
                voters: [1].into(),
                learners: [added.id].into(),
            }
        );
        let entry = list.members.iter_mut().find(|m| m.id == added.id).unwrap();
        entry.name = "m2".into();
        assert_eq!(
            list.membership(),
            Membership {
                voters: [1, added.id].into(),
                learners: BTreeSet::new(),
            }
        );
    }

    #[test]
    fn a_voter_is_removed_only_if_the_started_voters_left_have_a_quorum() {
        let three = MemberList::bootstrap(&[
            ("m1".into(), addr(1)),
            ("m2".into(), addr(2)),
            ("m3".into(), addr(3)),
        ])
        .unwrap();
        // Member 3 is down: removing it leaves {1, 2}, both up.
        let up: BTreeSet<NodeId> = [1, 2].into();
        assert!(three.clone().remove_keeping_quorum(3, &up).is_ok());
        // Removing member 1 leaves {2, 3} with only 2 up: refused, with etcd's message.
        let refused = three.clone().remove_keeping_quorum(1, &up);
        assert_eq!(refused, Err(MemberError::LastVoter(1)));
        assert_eq!(
            refused.unwrap_err().to_string(),
            "etcdserver: re-configuration failed due to not enough started members"
        );
        // Nothing known started: no voter is removed; a learner is.
        let mut with_learner = three.clone();
        with_learner.add("", addr(4), true).unwrap();
        assert!(
            with_learner
                .clone()
                .remove_keeping_quorum(2, &BTreeSet::new())
                .is_err()
        );
        assert!(
            with_learner
                .remove_keeping_quorum(4, &BTreeSet::new())
                .is_ok()
        );
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        assert!(three.clone().remove_keeping_quorum(1, &all).is_ok());
        assert_eq!(
            three.clone().remove_keeping_quorum(9, &all),
            Err(MemberError::NotFound(9))
        );
    }

    #[test]
    fn peer_urls_are_ip_and_port() {
        assert_eq!(parse_peer_url("http://127.0.0.1:2380").unwrap(), addr(2380));
        assert_eq!(parse_peer_url("127.0.0.1:2380/").unwrap(), addr(2380));
        for bad in [
            "https://127.0.0.1:1",
            "localhost:2380",
            "http://1.2.3.4",
            "",
            "x",
        ] {
            assert!(parse_peer_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_list_round_trips_and_bad_bytes_are_errors() {
        let mut list = MemberList::bootstrap(&[
            ("m1".into(), addr(1)),
            ("m2".into(), "[::1]:2380".parse().unwrap()),
        ])
        .unwrap();
        list.add("joining", addr(7), true).unwrap();
        let bytes = list.encode();
        assert_eq!(MemberList::decode(&bytes).unwrap(), list);
        for cut in 0..bytes.len() {
            assert!(MemberList::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            MemberList::decode(&longer)
                .unwrap_err()
                .contains("left over")
        );
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(
            MemberList::decode(&version)
                .unwrap_err()
                .contains("version 2")
        );
        let mut next = bytes.clone();
        next[1..9].copy_from_slice(&2u64.to_le_bytes());
        assert!(MemberList::decode(&next).unwrap_err().contains("next_id"));
        let mut flags = bytes.clone();
        flags[19] = 0x80;
        assert!(MemberList::decode(&flags).unwrap_err().contains("flags"));
        for seed in 0..200u8 {
            let garbage: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(seed) ^ seed).collect();
            let _ = MemberList::decode(&garbage);
        }
    }
}
