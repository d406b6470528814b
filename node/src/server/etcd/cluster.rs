//! The `Cluster` service: MemberList; membership changes are not served yet.

use keel_etcd_proto::etcdserverpb::cluster_server::Cluster;
use keel_etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Etcd;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "keel: {what} is not served yet (membership is fixed at the cluster's creation)"
    ))
}

impl Etcd {
    /// Every member with its peer URLs and, once it has published it, its client URL.
    fn members(&self) -> Vec<Member> {
        let status = self.ctx.view.status(self.ctx.member_id, self.ctx.groups);
        self.ctx
            .members
            .iter()
            .map(|m| {
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
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls,
                    is_learner: false,
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for Etcd {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.header(0, self.ctx.view.facts(0).revision)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
