//! Between the native protocol's requests and responses (keel-client's `wire`) and the
//! state machine's (keel-engine's `txn`).

use keel_client::wire;
use keel_engine::txn::{self as kv, RangeEnd};

use crate::shard::ReadConsistency;

/// The engine's range for a protocol range (etcd's `range_end` convention).
pub fn range(r: &wire::RangeRequest) -> kv::RangeRequest {
    let end = match r.range_end.as_slice() {
        [] => RangeEnd::Single,
        [0] => RangeEnd::Unbounded,
        end => RangeEnd::Exclusive(end.to_vec()),
    };
    kv::RangeRequest {
        start: r.key.clone(),
        end,
        limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
        keys_only: r.keys_only,
        count_only: r.count_only,
        filter: kv::RevisionFilter::default(),
        sort: None,
        // 0: the current revision. Another is read from the group's history; inside a
        // transaction the engine refuses it (reads there are at the transaction's revision).
        revision: r.revision,
    }
}

/// How a protocol read is served by a shard.
pub fn consistency(c: wire::ReadConsistency) -> ReadConsistency {
    match c {
        wire::ReadConsistency::Serializable => ReadConsistency::Serializable,
        wire::ReadConsistency::Lease => ReadConsistency::Lease,
        wire::ReadConsistency::Linearizable => ReadConsistency::Linearizable,
    }
}

/// The engine's put for a protocol put.
pub fn put(p: &wire::PutRequest) -> kv::Op {
    kv::Op::Put {
        key: p.key.clone(),
        value: p.value.clone(),
        prev_kv: p.prev_kv,
    }
}

/// The engine's delete for a protocol delete (one key).
pub fn delete(d: &wire::DeleteRequest) -> kv::Op {
    kv::Op::DeleteRange {
        start: d.key.clone(),
        end: RangeEnd::Single,
        prev_kv: d.prev_kv,
    }
}

/// A transaction of one unconditional operation.
pub fn single(op: kv::Op) -> kv::Txn {
    kv::Txn::batch(vec![op])
}

fn op(o: &wire::TxnOp) -> kv::Op {
    match o {
        wire::TxnOp::Put(p) => put(p),
        wire::TxnOp::Delete(d) => delete(d),
        wire::TxnOp::Range(r) => kv::Op::Range(range(r)),
    }
}

/// The engine's transaction for a protocol transaction.
pub fn txn(t: &wire::TxnRequest) -> kv::Txn {
    kv::Txn {
        compares: t
            .compares
            .iter()
            .map(|c| kv::Compare {
                key: c.key.clone(),
                // The native protocol compares single keys only.
                end: RangeEnd::Single,
                op: match c.op {
                    wire::CompareOp::Equal => kv::CompareOp::Equal,
                    wire::CompareOp::NotEqual => kv::CompareOp::NotEqual,
                    wire::CompareOp::Greater => kv::CompareOp::Greater,
                    wire::CompareOp::Less => kv::CompareOp::Less,
                },
                target: match &c.target {
                    wire::CompareTarget::Value(v) => kv::CompareTarget::Value(v.clone()),
                    wire::CompareTarget::Version(v) => kv::CompareTarget::Version(*v),
                    wire::CompareTarget::CreateRevision(v) => kv::CompareTarget::CreateRevision(*v),
                    wire::CompareTarget::ModRevision(v) => kv::CompareTarget::ModRevision(*v),
                },
            })
            .collect(),
        success: t.success.iter().map(op).collect(),
        failure: t.failure.iter().map(op).collect(),
    }
}

/// A protocol key-value.
pub fn key_value(kv: keel_engine::KeyValue) -> wire::KeyValue {
    wire::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.meta.create_revision,
        mod_revision: kv.meta.mod_revision,
        version: kv.meta.version,
    }
}

/// The protocol result of one operation; `None` for a nested transaction's, which the
/// native protocol cannot carry (see [`txn_response`]).
fn op_response(r: kv::OpResponse) -> Option<wire::OpResponse> {
    Some(match r {
        kv::OpResponse::Put { prev_kv, .. } => wire::OpResponse::Put {
            prev_kv: prev_kv.map(key_value),
        },
        kv::OpResponse::DeleteRange { deleted, prev_kvs } => wire::OpResponse::Delete {
            deleted,
            prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
        },
        kv::OpResponse::Range(r) => wire::OpResponse::Range {
            kvs: r.kvs.into_iter().map(key_value).collect(),
            count: r.count,
            more: r.more,
        },
        kv::OpResponse::Txn(_) => return None,
    })
}

/// The protocol response to `request` from the engine's transaction result. The native
/// protocol carries no nested transactions (its `TxnOp` has no kind for one, and a request
/// naming an unknown kind is refused when decoded), so a nested result is never the answer
/// to a native request; it is an error rather than a result in the wrong shape.
pub fn txn_response(
    request: &wire::Request,
    header: wire::ResponseHeader,
    resp: kv::TxnResponse,
) -> Result<wire::Response, String> {
    let header = wire::ResponseHeader {
        revision: resp.revision,
        ..header
    };
    if resp
        .responses
        .iter()
        .any(|r| matches!(r, kv::OpResponse::Txn(_)))
    {
        return Err("a nested transaction's result cannot travel in the native protocol".into());
    }
    let mut responses = resp.responses.into_iter().filter_map(op_response);
    Ok(match request {
        wire::Request::Put(..) => {
            let prev_kv = match responses.next() {
                Some(wire::OpResponse::Put { prev_kv }) => prev_kv,
                _ => None,
            };
            wire::Response::Put(wire::PutResponse { header, prev_kv })
        }
        wire::Request::Delete(..) => {
            let (deleted, prev_kvs) = match responses.next() {
                Some(wire::OpResponse::Delete { deleted, prev_kvs }) => (deleted, prev_kvs),
                _ => (0, Vec::new()),
            };
            wire::Response::Delete(wire::DeleteResponse {
                header,
                deleted,
                prev_kvs,
            })
        }
        _ => wire::Response::Txn(wire::TxnResponse {
            header,
            succeeded: resp.succeeded,
            responses: responses.collect(),
        }),
    })
}

/// The protocol response to a read.
pub fn read_response(
    request: &wire::Request,
    header: wire::ResponseHeader,
    resp: kv::RangeResponse,
) -> wire::Response {
    let header = wire::ResponseHeader {
        revision: resp.revision,
        ..header
    };
    match request {
        wire::Request::Get(_) => wire::Response::Get(wire::GetResponse {
            header,
            kv: resp.kvs.into_iter().next().map(key_value),
        }),
        _ => wire::Response::Range(wire::RangeResponse {
            header,
            count: resp.count,
            more: resp.more,
            kvs: resp.kvs.into_iter().map(key_value).collect(),
        }),
    }
}
