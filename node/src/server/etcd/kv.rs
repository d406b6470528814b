//! The `KV` service: Range, Put, DeleteRange, Txn and Compact.

use std::collections::BTreeSet;
use std::sync::Arc;

use keel_client::route::group_of;
use keel_engine::txn::{self as kv, RangeEnd};
use keel_etcd_proto::etcdserverpb::kv_server::Kv;
use keel_etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse, compare, request_op, response_op,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::convert::{
    check_key, engine_key_value, engine_range, groups_of_range, key_value, merge_ranges,
    outside_reserved, signed, single_group, sort, touches_reserved, unsigned,
};
use super::forward::{FORWARD_TIMEOUT, within};
use super::{
    Answer, Etcd, FORWARDED_KEY, GROUP_KEY, check_size, errors, forwarded_group, is_forwarded,
    outcome_error,
};
use crate::runtime::ShardWork;
use crate::shard::{Outcome, ReadConsistency};

/// A write's fate at this member.
enum Write {
    /// Applied by this member, the group's leader.
    Applied(kv::TxnResponse),
    /// To be forwarded to this member, the group's leader.
    Forward(u64),
}

/// How one etcd transaction's branches became engine operations, to build its answer.
struct TxnShape {
    success: Vec<Shape>,
    failure: Vec<Shape>,
}

/// How one etcd operation of a transaction became engine operations, to build its answer.
enum Shape {
    /// A range read in `parts` engine reads (around the reserved keys).
    Range {
        parts: usize,
        sort: Option<kv::RangeSort>,
        limit: usize,
    },
    /// A put.
    Put,
    /// A delete in `parts` engine deletes.
    Delete { parts: usize },
    /// A nested transaction: one engine operation.
    Txn(TxnShape),
}

/// A request marked as forwarded, with the forwarding deadline.
pub(super) fn marked<T>(message: T, group: Option<u32>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_KEY, MetadataValue::from_static("1"));
    if let Some(g) = group {
        if let Ok(v) = MetadataValue::try_from(g.to_string()) {
            request.metadata_mut().insert(GROUP_KEY, v);
        }
    }
    request.set_timeout(FORWARD_TIMEOUT);
    request
}

fn spans_groups(groups: &BTreeSet<u32>, what: &str) -> Status {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    Status::failed_precondition(format!(
        "keel: the keys of this {what} span groups [{}]; a write must keep its keys in one \
         group (give them a common {{hash tag}})",
        list.join(", ")
    ))
}

/// The engine's ranges for `[start, end)` in `group`: group 0 hides the reserved keys. Never
/// empty: a range of reserved keys only becomes an empty read (which still names the
/// revision).
fn group_parts(group: u32, start: &[u8], end: &RangeEnd) -> Vec<(Vec<u8>, RangeEnd)> {
    let parts = if group == 0 {
        outside_reserved(start, end)
    } else {
        vec![(start.to_vec(), end.clone())]
    };
    if parts.is_empty() {
        vec![(start.to_vec(), RangeEnd::Exclusive(start.to_vec()))]
    } else {
        parts
    }
}

fn range_answer(
    header_revision: u64,
    resp: kv::RangeResponse,
    etcd: &Etcd,
    group: u32,
) -> RangeResponse {
    RangeResponse {
        header: Some(etcd.header(group, header_revision)),
        count: signed(resp.count),
        more: resp.more,
        kvs: resp.kvs.into_iter().map(key_value).collect(),
    }
}

impl Etcd {
    /// Reads `r` in one group, forwarding to the group's leader when the read must be
    /// linearizable and this member does not lead.
    pub(super) async fn range_group(
        &self,
        group: u32,
        r: &RangeRequest,
        forwarded: bool,
    ) -> Result<kv::RangeResponse, Status> {
        let consistency = if r.serializable {
            ReadConsistency::Serializable
        } else {
            ReadConsistency::Linearizable
        };
        let end = RangeEnd::from_etcd(&r.range_end);
        let mut answers = Vec::new();
        for (start, end) in group_parts(group, &r.key, &end) {
            let work = ShardWork::Read {
                range: engine_range(r, start, end, unsigned(r.revision)),
                consistency,
            };
            match self.call_shard(group, work).await? {
                Answer::Done(Outcome::Read(resp)) => answers.push(resp),
                Answer::Done(other) => return Err(outcome_error(other)),
                Answer::NotLeader(leader) => {
                    let to = self.forward_target(leader, forwarded)?;
                    return self.forward_range(to, group, r).await;
                }
            }
        }
        Ok(merge_ranges(
            answers,
            sort(r),
            usize::try_from(r.limit).unwrap_or(0),
        ))
    }

    async fn forward_range(
        &self,
        to: u64,
        group: u32,
        r: &RangeRequest,
    ) -> Result<kv::RangeResponse, Status> {
        let mut client = self.ctx.forwards.kv(&self.ctx.view, to).await?;
        let resp = within(client.range(marked(r.clone(), Some(group))))
            .await?
            .into_inner();
        Ok(kv::RangeResponse {
            revision: resp.header.map_or(0, |h| unsigned(h.revision)),
            count: unsigned(resp.count),
            more: resp.more,
            kvs: resp.kvs.into_iter().map(engine_key_value).collect(),
        })
    }

    /// Proposes `txn` to `group` if this member leads it.
    async fn write(&self, group: u32, txn: kv::Txn, forwarded: bool) -> Result<Write, Status> {
        let work = ShardWork::Write {
            client_id: 0,
            sequence: 0,
            floor: 0,
            txn,
        };
        match self.call_shard(group, work).await? {
            Answer::Done(Outcome::Written(Ok(resp))) => Ok(Write::Applied(resp)),
            Answer::Done(other) => Err(outcome_error(other)),
            Answer::NotLeader(leader) => {
                Ok(Write::Forward(self.forward_target(leader, forwarded)?))
            }
        }
    }
}

/// A read of every key (etcd's `"\0"`..`"\0"`), from the local replica when `serializable`.
pub(super) fn everything(serializable: bool) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        serializable,
        ..RangeRequest::default()
    }
}

impl Etcd {
    /// A forwarded answer as this member's: etcd's clients see the member they asked in the
    /// header, as a follower in etcd answers a write it had the leader commit.
    fn as_answering_member<T: HasHeader>(
        &self,
        answer: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        answer.map(|mut response| {
            if let Some(header) = response.get_mut().header_mut() {
                header.member_id = self.ctx.member_id;
            }
            response
        })
    }
}

/// A response with a header.
trait HasHeader {
    fn header_mut(&mut self) -> Option<&mut keel_etcd_proto::etcdserverpb::ResponseHeader>;
}

impl HasHeader for PutResponse {
    fn header_mut(&mut self) -> Option<&mut keel_etcd_proto::etcdserverpb::ResponseHeader> {
        self.header.as_mut()
    }
}

impl HasHeader for DeleteRangeResponse {
    fn header_mut(&mut self) -> Option<&mut keel_etcd_proto::etcdserverpb::ResponseHeader> {
        self.header.as_mut()
    }
}

impl HasHeader for TxnResponse {
    fn header_mut(&mut self) -> Option<&mut keel_etcd_proto::etcdserverpb::ResponseHeader> {
        self.header.as_mut()
    }
}

/// Checks a put as etcd would and builds its engine operation.
fn put_op(p: &PutRequest) -> Result<kv::Op, Status> {
    check_key(&p.key)?;
    if p.ignore_value || p.ignore_lease {
        return Err(Status::invalid_argument(
            "keel: ignore_value and ignore_lease are not supported (Keel has no leases and \
             does not reuse a key's current value): send the value and no lease",
        ));
    }
    if p.lease != 0 {
        return Err(Status::not_found(errors::LEASE_NOT_FOUND));
    }
    if touches_reserved(&p.key, &RangeEnd::Single) {
        return Err(reserved());
    }
    Ok(kv::Op::Put {
        key: p.key.clone(),
        value: p.value.clone(),
        prev_kv: p.prev_kv,
    })
}

fn reserved() -> Status {
    Status::invalid_argument("keel: keys starting with \\0keel/ are reserved for cluster metadata")
}

/// The engine's compare for an etcd compare: over the key, or the range `[key, range_end)`
/// (`"\0"`: every key from `key` on).
fn compare(c: &Compare) -> Result<kv::Compare, Status> {
    check_key(&c.key)?;
    let end = RangeEnd::from_etcd(&c.range_end);
    // A compare reads its keys: on reserved keys it would tell the cluster's metadata.
    if touches_reserved(&c.key, &end) {
        return Err(reserved());
    }
    let number = |n: Option<i64>| unsigned(n.unwrap_or(0));
    let target = match c.target() {
        compare::CompareTarget::Version => {
            kv::CompareTarget::Version(number(match c.target_union {
                Some(compare::TargetUnion::Version(v)) => Some(v),
                _ => None,
            }))
        }
        compare::CompareTarget::Create => {
            kv::CompareTarget::CreateRevision(number(match c.target_union {
                Some(compare::TargetUnion::CreateRevision(v)) => Some(v),
                _ => None,
            }))
        }
        compare::CompareTarget::Mod => {
            kv::CompareTarget::ModRevision(number(match c.target_union {
                Some(compare::TargetUnion::ModRevision(v)) => Some(v),
                _ => None,
            }))
        }
        compare::CompareTarget::Value => kv::CompareTarget::Value(match &c.target_union {
            Some(compare::TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        compare::CompareTarget::Lease => {
            return Err(Status::unimplemented(
                "keel: Keel has no leases; a compare on a key's lease is not served",
            ));
        }
    };
    let op = match c.result() {
        compare::CompareResult::Equal => kv::CompareOp::Equal,
        compare::CompareResult::NotEqual => kv::CompareOp::NotEqual,
        compare::CompareResult::Greater => kv::CompareOp::Greater,
        compare::CompareResult::Less => kv::CompareOp::Less,
    };
    Ok(kv::Compare {
        key: c.key.clone(),
        end,
        op,
        target,
    })
}

/// etcd's `checkTxnRequest` limit: each level spends the longest of its compare, success and
/// failure lists from `budget` (`--max-txn-ops`), and its nested txns get what is left.
/// Nesting deeper than the engine's [`kv::TXN_DEPTH_MAX`] is refused here too, before the
/// request goes further. `depth` is the level of `t` (1: the outermost).
fn check_txn_ops(t: &TxnRequest, budget: usize, depth: usize) -> Result<(), Status> {
    if depth > kv::TXN_DEPTH_MAX {
        return Err(Status::invalid_argument(format!(
            "keel: txns nested {depth} deep exceed the limit of {} levels (TXN_DEPTH_MAX)",
            kv::TXN_DEPTH_MAX
        )));
    }
    let spent = t.compare.len().max(t.success.len()).max(t.failure.len());
    if spent > budget {
        // etcd's exact message: clients map it to their typed error by string.
        return Err(Status::invalid_argument(errors::TOO_MANY_OPS));
    }
    for op in t.success.iter().chain(&t.failure) {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            check_txn_ops(nested, budget - spent, depth + 1)?;
        }
    }
    Ok(())
}

/// Checks a transaction's compares and operations as etcd would, refuses reserved keys, and
/// adds the groups its keys (nested transactions' included) belong to.
fn txn_groups(t: &TxnRequest, group_count: u32, groups: &mut BTreeSet<u32>) -> Result<(), Status> {
    for c in &t.compare {
        let c = compare(c)?;
        groups.extend(groups_of_range(&c.key, &c.end, group_count));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                check_key(&r.key)?;
                if r.revision > 0 {
                    return Err(Status::invalid_argument(
                        "keel: a range inside a txn reads the transaction's own revision; \
                         its revision must be 0",
                    ));
                }
                let end = RangeEnd::from_etcd(&r.range_end);
                groups.extend(groups_of_range(&r.key, &end, group_count));
            }
            Some(request_op::Request::RequestPut(p)) => {
                put_op(p)?;
                groups.insert(group_of(&p.key, group_count));
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                check_key(&d.key)?;
                let end = RangeEnd::from_etcd(&d.range_end);
                // A ranged delete skips the reserved keys (see `engine_ops`); a single one
                // naming a reserved key is refused.
                if matches!(end, RangeEnd::Single) && touches_reserved(&d.key, &end) {
                    return Err(reserved());
                }
                groups.extend(groups_of_range(&d.key, &end, group_count));
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                txn_groups(nested, group_count, groups)?;
            }
            None => {
                return Err(Status::invalid_argument(
                    "keel: a txn operation names no request",
                ));
            }
        }
    }
    Ok(())
}

/// The engine's transaction for `t` in `group` (checked by [`txn_groups`]), and its shape.
fn engine_txn(group: u32, t: &TxnRequest) -> Result<(kv::Txn, TxnShape), Status> {
    let compares = t
        .compare
        .iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let (success, success_shapes) = engine_ops(group, &t.success)?;
    let (failure, failure_shapes) = engine_ops(group, &t.failure)?;
    let txn = kv::Txn {
        compares,
        success,
        failure,
    };
    let shape = TxnShape {
        success: success_shapes,
        failure: failure_shapes,
    };
    Ok((txn, shape))
}

/// The engine operations for one branch in `group`, and their shapes.
fn engine_ops(group: u32, ops: &[RequestOp]) -> Result<(Vec<kv::Op>, Vec<Shape>), Status> {
    let mut out = Vec::new();
    let mut shapes = Vec::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let end = RangeEnd::from_etcd(&r.range_end);
                let parts = group_parts(group, &r.key, &end);
                shapes.push(Shape::Range {
                    parts: parts.len(),
                    sort: sort(r),
                    limit: usize::try_from(r.limit).unwrap_or(0),
                });
                for (start, end) in parts {
                    // Reads inside a transaction are at its own revision (checked before).
                    out.push(kv::Op::Range(engine_range(r, start, end, 0)));
                }
            }
            Some(request_op::Request::RequestPut(p)) => {
                out.push(put_op(p)?);
                shapes.push(Shape::Put);
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                let end = RangeEnd::from_etcd(&d.range_end);
                let parts = if group == 0 {
                    outside_reserved(&d.key, &end)
                } else {
                    vec![(d.key.clone(), end)]
                };
                shapes.push(Shape::Delete { parts: parts.len() });
                for (start, end) in parts {
                    out.push(kv::Op::DeleteRange {
                        start,
                        end,
                        prev_kv: d.prev_kv,
                    });
                }
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                let (txn, shape) = engine_txn(group, nested)?;
                out.push(kv::Op::Txn(txn));
                shapes.push(Shape::Txn(shape));
            }
            // Refused when the groups were gathered.
            None => {
                return Err(Status::internal("keel: unchecked txn operation"));
            }
        }
    }
    Ok((out, shapes))
}

/// The etcd answer of a transaction (outer or nested) from the engine's, by its shape.
fn txn_answer(etcd: &Etcd, group: u32, shape: &TxnShape, resp: kv::TxnResponse) -> TxnResponse {
    let shapes = if resp.succeeded {
        &shape.success
    } else {
        &shape.failure
    };
    TxnResponse {
        header: Some(etcd.header(group, resp.revision)),
        succeeded: resp.succeeded,
        responses: op_answers(etcd, group, resp.revision, shapes, resp.responses),
    }
}

/// The etcd answers of one branch from the engine's, by the shapes the branch was built with.
fn op_answers(
    etcd: &Etcd,
    group: u32,
    revision: u64,
    shapes: &[Shape],
    responses: Vec<kv::OpResponse>,
) -> Vec<ResponseOp> {
    let mut responses = responses.into_iter();
    let mut out = Vec::with_capacity(shapes.len());
    for shape in shapes {
        let response = match shape {
            Shape::Range { parts, sort, limit } => {
                let reads: Vec<kv::RangeResponse> = responses
                    .by_ref()
                    .take(*parts)
                    .filter_map(|r| match r {
                        kv::OpResponse::Range(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                let merged = merge_ranges(reads, *sort, *limit);
                response_op::Response::ResponseRange(RangeResponse {
                    header: Some(etcd.header(group, revision)),
                    count: signed(merged.count),
                    more: merged.more,
                    kvs: merged.kvs.into_iter().map(key_value).collect(),
                })
            }
            Shape::Put => {
                let prev_kv = match responses.next() {
                    Some(kv::OpResponse::Put { prev_kv, .. }) => prev_kv.map(key_value),
                    _ => None,
                };
                response_op::Response::ResponsePut(PutResponse {
                    header: Some(etcd.header(group, revision)),
                    prev_kv,
                })
            }
            Shape::Txn(shape) => match responses.next() {
                Some(kv::OpResponse::Txn(nested)) => {
                    response_op::Response::ResponseTxn(txn_answer(etcd, group, shape, nested))
                }
                // The engine answers every operation in order, a nested txn with its result.
                _ => response_op::Response::ResponseTxn(TxnResponse::default()),
            },
            Shape::Delete { parts } => {
                let mut deleted = 0;
                let mut prev_kvs = Vec::new();
                for r in responses.by_ref().take(*parts) {
                    if let kv::OpResponse::DeleteRange {
                        deleted: d,
                        prev_kvs: p,
                    } = r
                    {
                        deleted += d;
                        prev_kvs.extend(p.into_iter().map(key_value));
                    }
                }
                response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                    header: Some(etcd.header(group, revision)),
                    deleted: signed(deleted),
                    prev_kvs,
                })
            }
        };
        out.push(ResponseOp {
            response: Some(response),
        });
    }
    out
}

#[tonic::async_trait]
impl Kv for Etcd {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let only = forwarded_group(&request);
        let r = request.into_inner();
        check_size(&self.ctx, &r)?;
        check_key(&r.key)?;
        let end = RangeEnd::from_etcd(&r.range_end);
        let groups = match only {
            Some(g) if g < self.groups() => vec![g],
            Some(g) => {
                return Err(Status::invalid_argument(format!(
                    "keel: group {g} does not exist (the cluster has {})",
                    self.groups()
                )));
            }
            None => groups_of_range(&r.key, &end, self.groups()),
        };
        let first = groups.first().copied().unwrap_or(0);
        if r.revision > 0 && groups.len() > 1 {
            return Err(Status::invalid_argument(format!(
                "keel: a range at revision {} cannot span {} groups: revisions belong to \
                 groups (read one group's keys, e.g. a {{hash tag}} prefix, or at revision 0)",
                r.revision,
                groups.len()
            )));
        }
        let merged = if groups.len() == 1 {
            self.range_group(first, &r, forwarded).await?
        } else {
            let shared = Arc::new(r.clone());
            let mut reads = tokio::task::JoinSet::new();
            for g in groups {
                let (etcd, r) = (
                    Etcd {
                        ctx: self.ctx.clone(),
                    },
                    shared.clone(),
                );
                reads.spawn(async move { etcd.range_group(g, &r, forwarded).await });
            }
            let mut parts = Vec::new();
            while let Some(read) = reads.join_next().await {
                parts.push(
                    read.map_err(|e| Status::internal(format!("keel: a read failed: {e}")))??,
                );
            }
            merge_ranges(parts, sort(&r), usize::try_from(r.limit).unwrap_or(0))
        };
        Ok(Response::new(range_answer(
            merged.revision,
            merged,
            self,
            first,
        )))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let p = request.into_inner();
        check_size(&self.ctx, &p)?;
        let op = put_op(&p)?;
        let group = group_of(&p.key, self.groups());
        match self
            .write(group, kv::Txn::batch(vec![op]), forwarded)
            .await?
        {
            Write::Applied(resp) => {
                let prev_kv = match resp.responses.into_iter().next() {
                    Some(kv::OpResponse::Put { prev_kv, .. }) => prev_kv.map(key_value),
                    _ => None,
                };
                Ok(Response::new(PutResponse {
                    header: Some(self.header(group, resp.revision)),
                    prev_kv,
                }))
            }
            Write::Forward(to) => {
                let mut client = self.ctx.forwards.kv(&self.ctx.view, to).await?;
                self.as_answering_member(within(client.put(marked(p, None))).await)
            }
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let d = request.into_inner();
        check_size(&self.ctx, &d)?;
        check_key(&d.key)?;
        let end = RangeEnd::from_etcd(&d.range_end);
        let Some(group) = single_group(&d.key, &end, self.groups()) else {
            return Err(spans_groups(&(0..self.groups()).collect(), "DeleteRange"));
        };
        if matches!(end, RangeEnd::Single) && touches_reserved(&d.key, &end) {
            return Err(reserved());
        }
        let parts = if group == 0 {
            outside_reserved(&d.key, &end)
        } else {
            vec![(d.key.clone(), end)]
        };
        let ops = parts
            .into_iter()
            .map(|(start, end)| kv::Op::DeleteRange {
                start,
                end,
                prev_kv: d.prev_kv,
            })
            .collect();
        match self.write(group, kv::Txn::batch(ops), forwarded).await? {
            Write::Applied(resp) => {
                let mut deleted = 0;
                let mut prev_kvs = Vec::new();
                for r in resp.responses {
                    if let kv::OpResponse::DeleteRange {
                        deleted: n,
                        prev_kvs: p,
                    } = r
                    {
                        deleted += n;
                        prev_kvs.extend(p.into_iter().map(key_value));
                    }
                }
                Ok(Response::new(DeleteRangeResponse {
                    header: Some(self.header(group, resp.revision)),
                    deleted: signed(deleted),
                    prev_kvs,
                }))
            }
            Write::Forward(to) => {
                let mut client = self.ctx.forwards.kv(&self.ctx.view, to).await?;
                self.as_answering_member(within(client.delete_range(marked(d, None))).await)
            }
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let t = request.into_inner();
        check_size(&self.ctx, &t)?;
        check_txn_ops(&t, self.ctx.etcd_limits.txn_ops_max, 1)?;
        let group_count = self.groups();
        let mut groups = BTreeSet::new();
        txn_groups(&t, group_count, &mut groups)?;
        if groups.len() > 1 {
            return Err(spans_groups(&groups, "Txn"));
        }
        let group = groups.first().copied().unwrap_or(0);
        let (txn, shape) = engine_txn(group, &t)?;
        // etcd refuses a branch that writes a key twice, nested txns included; the engine
        // states the rule (see `Txn::check_duplicate_keys`).
        if txn.check_duplicate_keys().is_err() {
            return Err(Status::invalid_argument(errors::DUPLICATE_KEY));
        }
        match self.write(group, txn, forwarded).await? {
            Write::Applied(resp) => Ok(Response::new(txn_answer(self, group, &shape, resp))),
            Write::Forward(to) => {
                let mut client = self.ctx.forwards.kv(&self.ctx.view, to).await?;
                self.as_answering_member(within(client.txn(marked(t, None))).await)
            }
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let only = forwarded_group(&request);
        let c = request.into_inner();
        let revision = unsigned(c.revision);
        // `physical` needs nothing more: the answer comes after the leader applied it.
        let current = match only {
            Some(g) if g < self.groups() => self.compact_group(g, revision, forwarded).await?,
            Some(g) => {
                return Err(Status::invalid_argument(format!(
                    "keel: group {g} does not exist (the cluster has {})",
                    self.groups()
                )));
            }
            None if self.groups() == 1 => self.compact_group(0, revision, forwarded).await?,
            None => self.compact_groups(revision).await?,
        };
        Ok(Response::new(CompactionResponse {
            header: Some(self.header(0, current)),
        }))
    }
}

impl Etcd {
    /// Compacts `group`'s history below `revision` through its log: the leader (this
    /// member, or the one the request is forwarded to) proposes it and answers with its own
    /// apply's result. Returns the group's revision then.
    async fn compact_group(
        &self,
        group: u32,
        revision: u64,
        forwarded: bool,
    ) -> Result<u64, Status> {
        match self
            .call_shard(group, ShardWork::Compact { revision })
            .await?
        {
            Answer::Done(Outcome::Compaction { revision }) => Ok(revision),
            Answer::Done(other) => Err(outcome_error(other)),
            Answer::NotLeader(leader) => {
                let to = self.forward_target(leader, forwarded)?;
                let mut client = self.ctx.forwards.kv(&self.ctx.view, to).await?;
                let request = CompactionRequest {
                    revision: signed(revision),
                    physical: true,
                };
                let resp = within(client.compact(marked(request, Some(group))))
                    .await?
                    .into_inner();
                Ok(resp.header.map_or(0, |h| unsigned(h.revision)))
            }
        }
    }

    /// `Compact(revision)` with several groups, whose revisions are their own: refused as a
    /// future revision when `revision` is beyond every group's revision (nothing changes);
    /// otherwise each group is compacted at `min(revision, its revision)` — everything a
    /// read at `revision` or later could need stays — and the answer is "compacted" only
    /// when no group had anything left to drop. Returns the largest group revision.
    async fn compact_groups(&self, revision: u64) -> Result<u64, Status> {
        // Each group's revision from its leader (a linearizable read): revisions only grow,
        // so a target at or below it is never a future revision when it applies.
        let probe = Arc::new(RangeRequest {
            key: vec![0],
            range_end: vec![0, 0],
            count_only: true,
            ..RangeRequest::default()
        });
        let mut reads = tokio::task::JoinSet::new();
        for g in 0..self.groups() {
            let (etcd, probe) = (
                Etcd {
                    ctx: self.ctx.clone(),
                },
                probe.clone(),
            );
            reads.spawn(async move { (g, etcd.range_group(g, &probe, false).await) });
        }
        let mut revisions = Vec::new();
        while let Some(read) = reads.join_next().await {
            let (g, read) =
                read.map_err(|e| Status::internal(format!("keel: a read failed: {e}")))?;
            revisions.push((g, read?.revision));
        }
        let newest = revisions.iter().map(|&(_, r)| r).max().unwrap_or(0);
        if revision > newest {
            return Err(Status::out_of_range(errors::FUTURE_REV));
        }
        let mut compactions = tokio::task::JoinSet::new();
        for (g, group_revision) in revisions {
            let etcd = Etcd {
                ctx: self.ctx.clone(),
            };
            let target = revision.min(group_revision);
            compactions.spawn(async move { etcd.compact_group(g, target, false).await });
        }
        let mut compacted = 0usize;
        let mut applied = 0usize;
        let mut failed = None;
        let mut current = newest;
        while let Some(done) = compactions.join_next().await {
            match done {
                Ok(Ok(r)) => {
                    applied += 1;
                    current = current.max(r);
                }
                Ok(Err(status))
                    if status.code() == tonic::Code::OutOfRange
                        && status.message() == errors::COMPACTED =>
                {
                    compacted += 1;
                }
                Ok(Err(status)) => failed = failed.or(Some(status)),
                Err(e) => {
                    failed = failed.or(Some(Status::internal(format!(
                        "keel: a compaction failed: {e}"
                    ))));
                }
            }
        }
        if let Some(status) = failed {
            // Groups compacted meanwhile stay compacted; the same Compact again finishes
            // the others.
            return Err(status);
        }
        if applied == 0 && compacted > 0 {
            return Err(Status::out_of_range(errors::COMPACTED));
        }
        Ok(current)
    }
}
