//! The `Cluster` service over the replicated member list (see [`crate::members`]).
//!
//! A change is a compare-and-swap of the list in group 0, made by group 0's leader (a
//! request reaching another member is forwarded one hop): a linearizable read of the list,
//! the change, and a write that applies only if the list's mod revision is still the one
//! read (retried a few times otherwise). Every member's shards then drive their groups
//! toward the new list (`Shard::set_membership`): an added member joins every group as a
//! learner; `MemberAdd` without `isLearner` makes it a voter as soon as it is in sync
//! (etcd 3.4's `member add` adds a voter at once; Keel always lets it catch up first).

use keel_engine::txn::RangeRequest;
use keel_etcd_proto::etcdserverpb::cluster_server::Cluster;
use keel_etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::forward::within;
use super::kv::marked;
use super::{Answer, Etcd, MemberRecord, errors, is_forwarded};
use crate::members::{MEMBERS_KEY, MemberError, MemberList, parse_peer_url};
use crate::runtime::ShardWork;
use crate::shard::{Outcome, ReadConsistency};

/// How many times a change is tried when the list changed between its read and its write.
const CHANGE_ATTEMPTS_MAX: usize = 3;

/// What a change of the list came to.
enum Changed<T> {
    /// Written: the change's result and the new list.
    Done(T, MemberList),
    /// This member does not lead group 0: forward to this member.
    Forward(u64),
}

fn member_status(e: &MemberError) -> Status {
    match e {
        MemberError::NotFound(_) => Status::not_found(e.to_string()),
        MemberError::Invalid(_) => Status::invalid_argument(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

impl Etcd {
    /// Reads the list linearizably on group 0's leader, changes it with `change`, and
    /// writes it back if it did not change meanwhile.
    async fn change_members<T>(
        &self,
        forwarded: bool,
        change: impl Fn(&mut MemberList) -> Result<T, MemberError>,
    ) -> Result<Changed<T>, Status> {
        // The change is decided where group 0 is led: its checks read that member's view of
        // the cluster (who is started, which learners are in sync), which only the leader
        // of group 0 has.
        let leader = self.ctx.view.leader(0);
        if leader != Some(self.ctx.member_id) {
            return Ok(Changed::Forward(self.forward_target(leader, forwarded)?));
        }
        for _ in 0..CHANGE_ATTEMPTS_MAX {
            let read = ShardWork::Read {
                range: RangeRequest::key(MEMBERS_KEY),
                consistency: ReadConsistency::Linearizable,
            };
            let found = match self.call_shard(0, read).await? {
                Answer::NotLeader(leader) => {
                    return Ok(Changed::Forward(self.forward_target(leader, forwarded)?));
                }
                Answer::Done(Outcome::Read(resp)) => resp,
                Answer::Done(other) => return Err(super::outcome_error(other)),
            };
            let Some(kv) = found.kvs.first() else {
                return Err(Status::unavailable(
                    "keel: the member list is not written yet (the cluster is starting); retry",
                ));
            };
            let mut list = MemberList::decode(&kv.value).map_err(|e| {
                Status::internal(format!(
                    "keel: the member list in group 0 does not decode: {e}"
                ))
            })?;
            let result = change(&mut list).map_err(|e| member_status(&e))?;
            let txn = list.replace_txn(kv.meta.mod_revision);
            let write = ShardWork::Write {
                client_id: 0,
                sequence: 0,
                floor: 0,
                txn,
            };
            match self.call_shard(0, write).await? {
                Answer::Done(Outcome::Written(Ok(resp))) if resp.succeeded => {
                    tracing::info!(members = ?list.members, "member list changed");
                    return Ok(Changed::Done(result, list));
                }
                Answer::Done(Outcome::Written(Ok(_))) => continue,
                Answer::NotLeader(_) => return Err(Status::unavailable(errors::NOT_LEADER)),
                Answer::Done(other) => return Err(super::outcome_error(other)),
            }
        }
        Err(Status::aborted(
            "keel: the member list kept changing concurrently; retry",
        ))
    }

    fn member_of(&self, m: &crate::members::Member) -> Member {
        let status = self.ctx.view.status(self.ctx.member_id, self.ctx.groups);
        Member {
            id: m.id,
            name: m.name.clone(),
            peer_urls: vec![format!("http://{}", m.peer)],
            client_urls: status
                .members
                .iter()
                .filter(|c| c.id == m.id)
                .map(|c| c.client_address.clone())
                .collect(),
            is_learner: m.is_learner,
        }
    }

    fn list_of(&self, list: &MemberList) -> Vec<Member> {
        list.members.iter().map(|m| self.member_of(m)).collect()
    }

    /// Every member with its peer URLs and, once it has published it, its client URL.
    fn members(&self) -> Vec<Member> {
        let status = self.ctx.view.status(self.ctx.member_id, self.ctx.groups);
        // The replicated member list once this member read it; the flags' list before.
        let listed: Option<Vec<(MemberRecord, bool)>> = self.ctx.view.member_list().map(|l| {
            l.members
                .into_iter()
                .map(|m| {
                    let record = MemberRecord {
                        id: m.id,
                        name: m.name,
                        peer_urls: vec![format!("http://{}", m.peer)],
                    };
                    (record, m.is_learner)
                })
                .collect()
        });
        let members = listed.unwrap_or_else(|| {
            self.ctx
                .members
                .iter()
                .map(|m| (m.clone(), false))
                .collect()
        });
        members
            .into_iter()
            .map(|(m, is_learner)| {
                // `host:port`, without a scheme: etcdctl 3.4 dials a listed URL with the
                // whole URL as HTTP/2's `:authority`, which a strict HTTP/2 server (hyper's)
                // refuses as malformed; every etcd client accepts a bare `host:port`.
                let client_urls = status
                    .members
                    .iter()
                    .filter(|c| c.id == m.id)
                    .map(|c| c.client_address.clone())
                    .collect();
                Member {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls,
                    is_learner,
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for Etcd {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let [url] = req.peer_urls.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "etcdserver: a member is added with one peer URL in Keel, got {}",
                req.peer_urls.len()
            )));
        };
        let peer = parse_peer_url(url).map_err(|e| member_status(&e))?;
        // The name is unknown until the member starts (etcd lists it empty meanwhile). A
        // voter too joins every group as a learner and is promoted there once in sync.
        match self
            .change_members(forwarded, |list| list.add("", peer, req.is_learner))
            .await?
        {
            Changed::Done(member, list) => Ok(Response::new(MemberAddResponse {
                header: Some(self.header(0, self.ctx.view.facts(0).revision)),
                member: Some(self.member_of(&member)),
                members: self.list_of(&list),
            })),
            Changed::Forward(to) => {
                let mut client = self.ctx.forwards.cluster(&self.ctx.view, to).await?;
                within(client.member_add(marked(req, None))).await
            }
        }
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        // Read on group 0's leader, where the change is made (elsewhere it is forwarded
        // before the closure runs).
        let started = self.ctx.view.started_members();
        match self
            .change_members(forwarded, |list| {
                let removed = list.remove_keeping_quorum(req.id, &started).map(|_| ());
                if removed.is_err() {
                    tracing::warn!(member = req.id, started = ?started, "member removal refused: the voters left would not have a quorum of started members");
                }
                removed
            })
            .await?
        {
            Changed::Done((), list) => Ok(Response::new(MemberRemoveResponse {
                header: Some(self.header(0, self.ctx.view.facts(0).revision)),
                members: self.list_of(&list),
            })),
            Changed::Forward(to) => {
                let mut client = self.ctx.forwards.cluster(&self.ctx.view, to).await?;
                within(client.member_remove(marked(req, None))).await
            }
        }
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "keel: MemberUpdate is not served (remove the member and add it again)",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // This member's replica of group 0 as it is now (a serializable read, as etcd
        // 3.4's member list); the cluster view's copy (every housekeeping) if it fails.
        let read = ShardWork::Read {
            range: RangeRequest::key(MEMBERS_KEY),
            consistency: ReadConsistency::Serializable,
        };
        let local = match self.call_shard(0, read).await {
            Ok(Answer::Done(Outcome::Read(resp))) => resp
                .kvs
                .first()
                .and_then(|kv| MemberList::decode(&kv.value).ok()),
            _ => None,
        };
        let members = match local {
            Some(list) => self.list_of(&list),
            None => self.members(),
        };
        Ok(Response::new(MemberListResponse {
            header: Some(self.header(0, self.ctx.view.facts(0).revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let in_sync = self.ctx.view.learners_in_sync();
        let id = req.id;
        let promote = |list: &mut MemberList| {
            if list.get(id).is_some_and(|m| m.is_learner) && !in_sync.contains(&id) {
                return Err(MemberError::LearnerNotReady(id));
            }
            list.promote(id)
        };
        match self.change_members(forwarded, promote).await? {
            Changed::Done((), list) => Ok(Response::new(MemberPromoteResponse {
                header: Some(self.header(0, self.ctx.view.facts(0).revision)),
                members: self.list_of(&list),
            })),
            Changed::Forward(to) => {
                let mut client = self.ctx.forwards.cluster(&self.ctx.view, to).await?;
                within(client.member_promote(marked(req, None))).await
            }
        }
    }
}
