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
//! joiner's peer address, or has it under another name — ends the wait at once with the
//! reason, once it stood for [`JOIN_REFUSAL_CONFIRM`] (the member asked may not have read
//! the latest list yet); an unreachable member, one that does not know the list yet, or an
//! older build are retried.
//!
//! The member found is the list's entry with the joiner's peer address (etcd finds a
//! joining member by its peer URLs too); its name must be empty (added, not started yet)
//! or the joiner's. What the joiner learned is written to its data directory
//! (`meta.rs`, origin `joined`) before anything else, so that its restarts need no peer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ClusterView;
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
        for (peer_name, addr) in peers {
            match ask(*addr, &request) {
                Ok(JoinReply::Accepted(facts)) => {
                    let list = check(name, own_peer, &facts)
                        .map_err(|e| format!("member {peer_name} at {addr} answered: {e}"))?;
                    return Ok(Learned {
                        from: *addr,
                        facts,
                        list,
                    });
                }
                Ok(JoinReply::Refused(reason)) => {
                    let since = *first_refusal.get_or_insert_with(Instant::now);
                    if since.elapsed() >= JOIN_REFUSAL_CONFIRM {
                        return Err(format!(
                            "member {peer_name} at {addr} refused {name} ({own_peer}) \
                             joining: {reason}"
                        ));
                    }
                    answers.push(format!(
                        "{peer_name} at {addr} refused (asked again for \
                         {JOIN_REFUSAL_CONFIRM:?}, in case it has not read the latest member \
                         list yet): {reason}"
                    ));
                }
                Ok(JoinReply::NotNow(reason)) => {
                    answers.push(format!("{peer_name} at {addr}: {reason}"));
                }
                Err(e) => answers.push(format!("{peer_name} at {addr}: {e}")),
            }
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
    let mut stream = TcpStream::connect_timeout(&addr, JOIN_ASK_TIMEOUT)
        .map_err(|e| format!("connecting: {e}"))?;
    let deadline = Instant::now() + JOIN_ASK_TIMEOUT;
    stream
        .set_write_timeout(Some(JOIN_ASK_TIMEOUT))
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

/// Checks an accepting reply: the facts hold together, and the list has the joiner at
/// `own_peer` with its id, unnamed or named `name`. Returns the decoded list.
fn check(name: &str, own_peer: SocketAddr, facts: &JoinFacts) -> Result<MemberList, String> {
    let list = MemberList::decode(&facts.member_list)
        .map_err(|e| format!("its member list does not decode: {e}"))?;
    if facts.cluster_id == 0 || facts.groups == 0 || facts.shards == 0 {
        return Err("a cluster id, group count or shard count of zero".into());
    }
    if facts.bootstrap.is_empty() || facts.bootstrap.contains(&0) {
        return Err("no bootstrap voters, or a voter id of zero".into());
    }
    match list.get(facts.member_id) {
        Some(m) if m.peer == own_peer && (m.name.is_empty() || m.name == name) => Ok(list),
        _ => Err(format!(
            "member id {} is not {name} at {own_peer} in the member list it sent",
            facts.member_id
        )),
    }
}

/// What a running member tells joiners besides its member list.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster's id.
    pub cluster_id: u64,
    /// Raft groups.
    pub groups: u32,
    /// Shards of every member.
    pub shards: u32,
    /// Every group's voters at creation.
    pub bootstrap: Vec<u64>,
}

/// The running member's answer to `request`, from the member list in `view` (see the
/// module doc for who is found).
pub fn answer(identity: &Identity, view: &Arc<ClusterView>, request: &JoinRequest) -> JoinReply {
    if request.join_version != JOIN_VERSION {
        return JoinReply::Refused(format!(
            "the joiner speaks join version {}, this member {JOIN_VERSION}",
            request.join_version
        ));
    }
    let Some(list) = view.member_list() else {
        return JoinReply::NotNow("this member has not read the member list yet".into());
    };
    let by_peer = list.members.iter().find(|m| m.peer == request.peer);
    let member = match by_peer {
        Some(m) if m.name.is_empty() || m.name == request.name => m,
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
