//! Values to frames.

use super::{
    ClientLimits, CompareOp, CompareTarget, DeleteRequest, ErrorStatus, FRAME_HEADER_BYTES,
    KIND_DELETE, KIND_PUT, KIND_RANGE, KeyValue, OpResponse, PutRequest, RangeRequest,
    ReadConsistency, Request, RequestFrame, Response, ResponseFrame, ResponseHeader, TxnOp,
    WireError, Write,
};

/// Appends one request frame to `out`. Checks the request against `limits` first, so that a
/// client learns of an oversized request without a round trip; on error `out` is unchanged.
pub fn encode_request(
    frame: &RequestFrame,
    limits: &ClientLimits,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    check_request(&frame.request, limits)?;
    let start = begin_frame(out);
    put_u64(out, frame.id);
    out.push(frame.request.kind());
    put_u32(out, frame.group);
    match &frame.request {
        Request::Put(w, p) => {
            put_write_id(out, *w);
            put_put(out, p);
        }
        Request::Get(g) => {
            put_bytes(out, &g.key);
            out.push(consistency_byte(g.consistency));
        }
        Request::Delete(w, d) => {
            put_write_id(out, *w);
            put_delete(out, d);
        }
        Request::Range(r) => put_range(out, r),
        Request::Txn(w, t) => {
            match w {
                None => out.push(0),
                Some(w) => {
                    out.push(1);
                    put_write_id(out, *w);
                }
            }
            put_len(out, t.compares.len());
            for c in &t.compares {
                put_bytes(out, &c.key);
                let (target, op) = (compare_target_byte(&c.target), compare_op_byte(c.op));
                out.extend([target, op]);
                match &c.target {
                    CompareTarget::Value(v) => put_bytes(out, v),
                    CompareTarget::Version(n)
                    | CompareTarget::CreateRevision(n)
                    | CompareTarget::ModRevision(n) => put_u64(out, *n),
                }
            }
            for branch in [&t.success, &t.failure] {
                put_len(out, branch.len());
                for op in branch {
                    match op {
                        TxnOp::Put(p) => {
                            out.push(KIND_PUT);
                            put_put(out, p);
                        }
                        TxnOp::Delete(d) => {
                            out.push(KIND_DELETE);
                            put_delete(out, d);
                        }
                        TxnOp::Range(r) => {
                            out.push(KIND_RANGE);
                            put_range(out, r);
                        }
                    }
                }
            }
        }
        Request::Status => {}
    }
    end_frame(out, start, limits.request_bytes_max, "request_bytes_max")
}

/// Appends one response frame to `out`; on error (the response exceeds `response_bytes_max`)
/// `out` is unchanged, and a server answers [`ErrorStatus::TooLarge`] instead.
pub fn encode_response(
    frame: &ResponseFrame,
    limits: &ClientLimits,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = begin_frame(out);
    put_u64(out, frame.id);
    match &frame.result {
        Ok(response) => {
            out.push(0);
            out.push(response.kind());
            match response {
                Response::Put(r) => {
                    put_header(out, &r.header);
                    put_option_kv(out, r.prev_kv.as_ref());
                }
                Response::Get(r) => {
                    put_header(out, &r.header);
                    put_option_kv(out, r.kv.as_ref());
                }
                Response::Delete(r) => {
                    put_header(out, &r.header);
                    put_u64(out, r.deleted);
                    put_kvs(out, &r.prev_kvs);
                }
                Response::Range(r) => {
                    put_header(out, &r.header);
                    put_kvs(out, &r.kvs);
                    put_u64(out, r.count);
                    out.push(u8::from(r.more));
                }
                Response::Txn(r) => {
                    put_header(out, &r.header);
                    out.push(u8::from(r.succeeded));
                    put_len(out, r.responses.len());
                    for op in &r.responses {
                        match op {
                            OpResponse::Put { prev_kv } => {
                                out.push(KIND_PUT);
                                put_option_kv(out, prev_kv.as_ref());
                            }
                            OpResponse::Delete { deleted, prev_kvs } => {
                                out.push(KIND_DELETE);
                                put_u64(out, *deleted);
                                put_kvs(out, prev_kvs);
                            }
                            OpResponse::Range { kvs, count, more } => {
                                out.push(KIND_RANGE);
                                put_kvs(out, kvs);
                                put_u64(out, *count);
                                out.push(u8::from(*more));
                            }
                        }
                    }
                }
                Response::Status(s) => {
                    put_u64(out, s.member_id);
                    put_u32(out, s.groups);
                    put_len(out, s.members.len());
                    for m in &s.members {
                        put_u64(out, m.id);
                        put_bytes(out, m.client_address.as_bytes());
                    }
                    put_len(out, s.leaders.len());
                    for l in &s.leaders {
                        match l {
                            None => out.push(0),
                            Some(id) => {
                                out.push(1);
                                put_u64(out, *id);
                            }
                        }
                    }
                }
            }
        }
        Err(status) => match status {
            ErrorStatus::NotLeader { group, leader } => {
                out.push(1);
                put_u32(out, *group);
                match leader {
                    None => out.push(0),
                    Some(l) => {
                        out.push(1);
                        put_u64(out, l.member_id);
                        put_bytes(out, l.client_address.as_bytes());
                    }
                }
            }
            ErrorStatus::GroupUnavailable { group } => {
                out.push(2);
                put_u32(out, *group);
            }
            ErrorStatus::InvalidArgument(m) => {
                out.push(3);
                put_bytes(out, m.as_bytes());
            }
            ErrorStatus::TooLarge(m) => {
                out.push(4);
                put_bytes(out, m.as_bytes());
            }
            ErrorStatus::TxnSpansGroups { groups } => {
                out.push(5);
                put_len(out, groups.len());
                for g in groups {
                    put_u32(out, *g);
                }
            }
            ErrorStatus::WrongGroup { groups } => {
                out.push(6);
                put_u32(out, *groups);
            }
            ErrorStatus::Compacted { compact_revision } => {
                out.push(7);
                put_u64(out, *compact_revision);
            }
            ErrorStatus::Busy => out.push(8),
            ErrorStatus::Internal(m) => {
                out.push(9);
                put_bytes(out, m.as_bytes());
            }
        },
    }
    end_frame(out, start, limits.response_bytes_max, "response_bytes_max")
}

/// Checks the sizes of a request against `limits`, as the decoder does.
pub fn check_request(request: &Request, limits: &ClientLimits) -> Result<(), WireError> {
    let key = |k: &[u8]| check_len("key", k.len(), "key_bytes_max", limits.key_bytes_max);
    let value = |v: &[u8]| check_len("value", v.len(), "value_bytes_max", limits.value_bytes_max);
    let range = |r: &RangeRequest| key(&r.key).and_then(|_| key(&r.range_end));
    let put = |p: &PutRequest| key(&p.key).and_then(|_| value(&p.value));
    let op = |op: &TxnOp| match op {
        TxnOp::Put(p) => put(p),
        TxnOp::Delete(d) => key(&d.key),
        TxnOp::Range(r) => range(r),
    };
    match request {
        Request::Put(_, p) => put(p),
        Request::Get(g) => key(&g.key),
        Request::Delete(_, d) => key(&d.key),
        Request::Range(r) => range(r),
        Request::Txn(_, t) => {
            for (what, n) in [
                ("compares", t.compares.len()),
                ("success ops", t.success.len()),
                ("failure ops", t.failure.len()),
            ] {
                check_len(what, n, "ops_per_txn_max", limits.ops_per_txn_max)?;
            }
            for c in &t.compares {
                key(&c.key)?;
                if let CompareTarget::Value(v) = &c.target {
                    value(v)?;
                }
            }
            t.success.iter().chain(&t.failure).try_for_each(op)
        }
        Request::Status => Ok(()),
    }
}

fn check_len(
    what: &'static str,
    len: usize,
    limit: &'static str,
    max: u32,
) -> Result<(), WireError> {
    if len > max as usize {
        return Err(WireError::TooLarge {
            request_id: 0,
            what,
            len: len as u64,
            limit,
            max: u64::from(max),
        });
    }
    Ok(())
}

fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend([0u8; FRAME_HEADER_BYTES]);
    start
}

fn end_frame(
    out: &mut Vec<u8>,
    start: usize,
    max: u32,
    limit: &'static str,
) -> Result<(), WireError> {
    let body = start + FRAME_HEADER_BYTES;
    let len = out.len() - body;
    let Some(len32) = u32::try_from(len).ok().filter(|l| *l <= max) else {
        out.truncate(start);
        return Err(WireError::TooLarge {
            request_id: 0,
            what: "frame body",
            len: len as u64,
            limit,
            max: u64::from(max),
        });
    };
    let crc = crc32fast::hash(&out[body..]);
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend(v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend(v.to_le_bytes());
}

/// Writes a length or count. Callers only encode what fits in a frame, whose length is a
/// u32; a larger length would fail `end_frame` anyway, so saturating keeps the frame
/// rejected rather than silently wrapping.
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_write_id(out: &mut Vec<u8>, w: Write) {
    put_u64(out, w.id.client_id);
    put_u64(out, w.id.sequence);
    put_u64(out, w.first_unanswered);
}

fn put_put(out: &mut Vec<u8>, p: &PutRequest) {
    put_bytes(out, &p.key);
    put_bytes(out, &p.value);
    out.push(u8::from(p.prev_kv));
}

fn put_delete(out: &mut Vec<u8>, d: &DeleteRequest) {
    put_bytes(out, &d.key);
    out.push(u8::from(d.prev_kv));
}

fn put_range(out: &mut Vec<u8>, r: &RangeRequest) {
    put_bytes(out, &r.key);
    put_bytes(out, &r.range_end);
    put_u64(out, r.limit);
    put_u64(out, r.revision);
    out.push(u8::from(r.keys_only) | u8::from(r.count_only) << 1);
    out.push(consistency_byte(r.consistency));
}

fn put_header(out: &mut Vec<u8>, h: &ResponseHeader) {
    put_u32(out, h.group);
    put_u64(out, h.revision);
    put_u64(out, h.member_id);
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(out, &kv.key);
    put_bytes(out, &kv.value);
    put_u64(out, kv.create_revision);
    put_u64(out, kv.mod_revision);
    put_u64(out, kv.version);
}

fn put_option_kv(out: &mut Vec<u8>, kv: Option<&KeyValue>) {
    match kv {
        None => out.push(0),
        Some(kv) => {
            out.push(1);
            put_kv(out, kv);
        }
    }
}

fn put_kvs(out: &mut Vec<u8>, kvs: &[KeyValue]) {
    put_len(out, kvs.len());
    for kv in kvs {
        put_kv(out, kv);
    }
}

fn consistency_byte(c: ReadConsistency) -> u8 {
    match c {
        ReadConsistency::Linearizable => 0,
        ReadConsistency::Lease => 1,
        ReadConsistency::Serializable => 2,
    }
}

fn compare_target_byte(t: &CompareTarget) -> u8 {
    match t {
        CompareTarget::Value(_) => 0,
        CompareTarget::Version(_) => 1,
        CompareTarget::CreateRevision(_) => 2,
        CompareTarget::ModRevision(_) => 3,
    }
}

fn compare_op_byte(op: CompareOp) -> u8 {
    match op {
        CompareOp::Equal => 0,
        CompareOp::NotEqual => 1,
        CompareOp::Greater => 2,
        CompareOp::Less => 3,
    }
}
