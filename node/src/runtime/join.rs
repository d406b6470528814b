//! Joining a running cluster (`--initial-cluster-state existing`): the starting member's
//! side, which asks the running members named in `--initial-cluster` who it is, and the
//! running member's side, which answers from its member list.
//!
//! A joiner with an empty data directory knows its name, its peer address and the other
//! members' peer addresses, nothing else: not the cluster's id, not its own member id
//! (given when `member add` added it), not the group and shard counts, not the voters its
//! groups started from. It sends a JoinRequest (the wire doc, `transport::wire`) to each
//! other member's peer port in turn until one accepts, waiting between rounds with a
//! doubling backoff (from [`JOIN_BACKOFF_MIN`] to [`JOIN_BACKOFF_MAX`]) and giving up after
//! `ServerConfig::join_wait_max`. A refusal for good — no member of the list has the
//! joiner's peer address, or it names a member that started before — ends the wait with the
//! reason once refusals stood, round after round with no member accepting, for
//! [`JOIN_REFUSAL_CONFIRM`] (the member asked may not have read the latest list yet); an
//! unreachable member, one that does not lead group 0 or does not know the list yet, or an
//! older build are retried.
//!
//! Only the member leading group 0 answers (the others answer "not now", naming it): its
//! replica of the member list is the newest. The member found is the list's entry with the
//! joiner's peer address (etcd finds a joining member by its peer URLs too), and its name
//! must be empty: added, never started. A named entry is a member that started before, so a
//! joiner asking for it lost its data directory — and with it its raft term and vote; let in
//! under its old id it could vote twice in one term and elect a leader missing acknowledged
//! writes. It is refused: remove the member and add it again. A name another member already
//! has is refused too. What the joiner learned is written to its data directory (`meta.rs`,
//! origin `joined`) before anything else, so that its restarts need no peer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClusterView, Identity};
use crate::members::MemberList;
use crate::transport::wire::{FrameDecoder, FrameEncoder, JOIN_VERSION, WireLimits};
use crate::transport::{Frame, JoinFacts, JoinReply, JoinRequest};

/// The first wait between two rounds of asking every member.
pub const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest wait between two rounds.
pub const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one member may take to connect and answer.
pub const JOIN_ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a refusal must stand before the joiner gives up on it. A running member reads
/// the member list into the view it answers from every few ticks (10 ticks, 500 ms by
/// default), so a joiner started right after `member add` may be refused by a member that
/// has not read the change yet: it asks again until a refusal outlasts this.
pub const JOIN_REFUSAL_CONFIRM: Duration = Duration::from_secs(3);

const _: () = assert!(JOIN_BACKOFF_MIN.as_nanos() <= JOIN_BACKOFF_MAX.as_nanos());

/// What a joiner learned, decoded and checked.
#[derive(Clone, Debug)]
pub struct Learned {
    /// The member that answered.
    pub from: SocketAddr,
    /// The facts it sent.
    pub facts: JoinFacts,
    /// Its member list, decoded.
    pub list: MemberList,
}

/// Asks the members at `peers` (their shard 0 peer addresses) until one accepts `name`
/// at `own_peer`, for at most `wait_max`. The error names why no member accepted: the
/// refusal of one that refused for good, or the last answer of each member.
pub fn learn(
    name: &str,
    own_peer: SocketAddr,
    peers: &[(String, SocketAddr)],
    wait_max: Duration,
) -> Result<Learned, String> {
    if peers.is_empty() {
        return Err(format!(
            "--initial-cluster-state existing: --initial-cluster names no member but {name} \
             to ask for the cluster"
        ));
    }
    let request = JoinRequest {
        join_version: JOIN_VERSION,
        name: name.to_string(),
        peer: own_peer,
    };
    let started = Instant::now();
    let deadline = started + wait_max;
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut rounds = 0u32;
    let mut first_refusal: Option<Instant> = None;
    loop {
        rounds += 1;
        let mut answers = Vec::new();
        let mut refused = None;
        for (peer_name, addr) in peers {
            match ask(*addr, &request) {
                Ok(JoinReply::Accepted(facts)) => {
                    let list = check(own_peer, &facts)
                        .map_err(|e| format!("member {peer_name} at {addr} answered: {e}"))?;
                    warn_unlisted(peers, &list);
                    return Ok(Learned {
                        from: *addr,
                        facts,
                        list,
                    });
                }
                Ok(JoinReply::Refused(reason)) => {
                    answers.push(format!(
                        "{peer_name} at {addr} refused (asked again for \
                         {JOIN_REFUSAL_CONFIRM:?}, in case it has not read the latest member \
                         list yet): {reason}"
                    ));
                    refused.get_or_insert_with(|| {
                        format!(
                            "member {peer_name} at {addr} refused {name} ({own_peer}) \
                             joining: {reason}"
                        )
                    });
                }
                Ok(JoinReply::NotNow(reason)) => {
                    answers.push(format!("{peer_name} at {addr}: {reason}"));
                }
                Err(e) => answers.push(format!("{peer_name} at {addr}: {e}")),
            }
        }
        // Refusals are final only once they stood, with no member accepting, for the
        // whole window; a round without one starts the window again.
        match refused {
            Some(reason) => {
                let since = *first_refusal.get_or_insert_with(Instant::now);
                if since.elapsed() >= JOIN_REFUSAL_CONFIRM {
                    return Err(reason);
                }
            }
            None => first_refusal = None,
        }
        let waited = started.elapsed();
        // A standing refusal is confirmed at its deadline even when the overall wait is
        // longer; the overall wait bounds everything else.
        let confirm_at = first_refusal.map(|t| t + JOIN_REFUSAL_CONFIRM);
        let sleep = confirm_at.map_or(backoff, |at| {
            backoff.min(at.saturating_duration_since(Instant::now()))
        });
        if Instant::now() + sleep > deadline {
            return Err(format!(
                "no running member answered {name}'s join request within {:?} ({rounds} \
                 rounds); last answers: {}",
                wait_max,
                answers.join("; ")
            ));
        }
        tracing::warn!(
            name,
            waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            retry_in_ms = u64::try_from(sleep.as_millis()).unwrap_or(u64::MAX),
            answers = %answers.join("; "),
            "joining: no running member accepted yet (are they up, and was this member \
             added with `member add`?); asking again"
        );
        std::thread::sleep(sleep);
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
}

/// One JoinRequest to the member at `addr` and its reply.
fn ask(addr: SocketAddr, request: &JoinRequest) -> Result<JoinReply, String> {
    let limits = WireLimits::default();
    let encoder = FrameEncoder::new(limits).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    encoder
        .encode_join_request(request, &mut out)
        .map_err(|e| format!("the join request does not encode: {e}"))?;
    // One deadline for connecting, sending and the reply.
    let deadline = Instant::now() + JOIN_ASK_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&addr, JOIN_ASK_TIMEOUT)
        .map_err(|e| format!("connecting: {e}"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(&out))
        .map_err(|e| format!("sending the join request: {e}"))?;
    let mut decoder = FrameDecoder::new(limits).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match decoder.next_frame() {
            Ok(Some(Frame::JoinReply(reply))) => return Ok(reply),
            Ok(Some(_)) => return Err("answered with a frame that is not a join reply".into()),
            Ok(None) => {}
            Err(e) => return Err(format!("its reply does not decode: {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no join reply within {JOIN_ASK_TIMEOUT:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("reading its reply: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(
                    "it closed the connection without a join reply (a build that does not \
                     answer joins?)"
                        .into(),
                );
            }
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => return Err(format!("reading its reply: {e}")),
        }
    }
}

/// Checks an accepting reply: the facts hold together and within bounds, and the list has
/// the joiner at `own_peer` with its id, unnamed (never started). Returns the decoded list.
fn check(own_peer: SocketAddr, facts: &JoinFacts) -> Result<MemberList, String> {
    let list = MemberList::decode(&facts.member_list)
        .map_err(|e| format!("its member list does not decode: {e}"))?;
    if facts.cluster_id == 0 {
        return Err("a cluster id of zero".into());
    }
    if facts.groups == 0 || facts.groups > super::GROUPS_MAX {
        return Err(format!(
            "{} groups (a cluster has 1..={})",
            facts.groups,
            super::GROUPS_MAX
        ));
    }
    if facts.shards == 0 || facts.shards > super::SHARDS_MAX {
        return Err(format!(
            "{} shards per member (a member runs 1..={})",
            facts.shards,
            super::SHARDS_MAX
        ));
    }
    if facts.bootstrap.len() > crate::members::MEMBERS_MAX {
        return Err(format!(
            "{} bootstrap voters (a cluster has at most {})",
            facts.bootstrap.len(),
            crate::members::MEMBERS_MAX
        ));
    }
    if facts.bootstrap.is_empty() || facts.bootstrap.contains(&0) {
        return Err("no bootstrap voters, or a voter id of zero".into());
    }
    match list.get(facts.member_id) {
        Some(m) if m.peer == own_peer && m.name.is_empty() => Ok(list),
        _ => Err(format!(
            "member id {} is not an unstarted member at {own_peer} in the member list it sent",
            facts.member_id
        )),
    }
}

/// Warns about members of `--initial-cluster` the cluster does not list at their peer
/// address (a stale or mistyped flag: the joiner follows the cluster's list, not the flag).
fn warn_unlisted(peers: &[(String, SocketAddr)], list: &MemberList) {
    for (peer_name, addr) in peers {
        if !list.members.iter().any(|m| m.peer == *addr) {
            tracing::warn!(
                member = %peer_name,
                %addr,
                "--initial-cluster names a member the cluster does not list at this peer \
                 address; the cluster's member list is followed instead"
            );
        }
    }
}

/// The running member's answer to `request`, from the member list in `view` (see the
/// module doc for who is found).
pub(super) fn answer(
    identity: &Identity,
    view: &Arc<ClusterView>,
    request: &JoinRequest,
) -> JoinReply {
    if request.join_version != JOIN_VERSION {
        return JoinReply::Refused(format!(
            "the joiner speaks join version {}, this member {JOIN_VERSION}",
            request.join_version
        ));
    }
    match view.leader(0) {
        Some(leader) if leader == identity.member_id => {}
        Some(leader) => {
            let at = view
                .member_list()
                .and_then(|list| {
                    list.get(leader)
                        .map(|m| format!(" at peer URL http://{}", m.peer))
                })
                .unwrap_or_default();
            return JoinReply::NotNow(format!(
                "this member does not lead group 0; member {leader:x}{at} does: ask it (add it \
                 to --initial-cluster if it is not there)"
            ));
        }
        None => return JoinReply::NotNow("group 0 has no leader now".into()),
    }
    let Some(list) = view.member_list() else {
        return JoinReply::NotNow("this member has not read the member list yet".into());
    };
    let by_peer = list.members.iter().find(|m| m.peer == request.peer);
    let member = match by_peer {
        Some(m) if m.name.is_empty() => match list.by_name(&request.name) {
            Some(other) => {
                return JoinReply::Refused(format!(
                    "the name {} is taken by member {} at {}; start this member with the \
                     name it was added under, or another one",
                    request.name, other.id, other.peer
                ));
            }
            None => m,
        },
        Some(m) if m.name == request.name => {
            return JoinReply::Refused(format!(
                "member {} ({:#x}) at http://{} started before: a member that lost its data \
                 directory must not come back under its old id (it lost its raft term and \
                 vote); remove it (etcdctl member remove {:x}) and add it again",
                m.name, m.id, request.peer, m.id
            ));
        }
        Some(m) => {
            return JoinReply::Refused(format!(
                "etcdserver: member not found: peer URL http://{} belongs to member {} ({}), \
                 not to {}",
                request.peer, m.name, m.id, request.name
            ));
        }
        None => {
            let named = list
                .by_name(&request.name)
                .map(|m| format!(" (a member named {} listens on {})", m.name, m.peer))
                .unwrap_or_default();
            return JoinReply::Refused(format!(
                "etcdserver: member not found: no member of cluster {:#x} has peer URL \
                 http://{}{named}; add {} first (etcdctl member add {} --peer-urls=http://{})",
                identity.cluster_id, request.peer, request.name, request.name, request.peer
            ));
        }
    };
    JoinReply::Accepted(JoinFacts {
        cluster_id: identity.cluster_id,
        member_id: member.id,
        groups: identity.groups,
        shards: identity.shards,
        bootstrap: identity.bootstrap.clone(),
        member_list: list.encode(),
    })
}
