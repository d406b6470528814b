//! Bytes to values, checking every length before allocating for it.

use super::{
    ClientLimits, ClusterStatus, Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse,
    ErrorStatus, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, GetRequest, GetResponse, KIND_DELETE,
    KIND_GET, KIND_PUT, KIND_RANGE, KIND_STATUS, KIND_TXN, KeyValue, LeaderHint, MemberInfo,
    OpResponse, PutRequest, PutResponse, REQUEST_BODY_BYTES_MIN, RESPONSE_BODY_BYTES_MIN,
    RangeRequest, RangeResponse, ReadConsistency, Request, RequestFrame, Response, ResponseFrame,
    ResponseHeader, TxnOp, TxnRequest, TxnResponse, WireError, Write, WriteId,
};

/// Splits a byte stream into checked frame bodies. Feed it what the socket returns with
/// [`FrameDecoder::extend`] and then call [`FrameDecoder::next_frame`] until it returns
/// `Ok(None)`; doing so after every read bounds the buffer by one frame plus one read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out; `start <= buf.len()`.
    start: usize,
    body_bytes_min: usize,
    body_bytes_max: u32,
    limit: &'static str,
    poisoned: bool,
}

impl FrameDecoder {
    fn new(body_bytes_min: usize, body_bytes_max: u32, limit: &'static str) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            body_bytes_min,
            body_bytes_max: body_bytes_max.min(FRAME_BYTES_MAX),
            limit,
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame's body, after checking its length (before waiting for the
    /// body) and its checksum. Any error is fatal, and so are all later calls.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        let pending = &self.buf[self.start..];
        let Some(header) = pending.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > self.body_bytes_max || (len as usize) < self.body_bytes_min {
            self.poisoned = true;
            return Err(WireError::FrameSize {
                len,
                min: self.body_bytes_min,
                max: self.body_bytes_max,
                limit: self.limit,
            });
        }
        let Some(body) = pending[FRAME_HEADER_BYTES..].get(..len as usize) else {
            return Ok(None);
        };
        let found = crc32fast::hash(body);
        if found != expected {
            self.poisoned = true;
            return Err(WireError::Checksum { expected, found });
        }
        let body = body.to_vec();
        self.start += FRAME_HEADER_BYTES + body.len();
        Ok(Some(body))
    }
}

/// The server's decoder: bytes in, requests out.
#[derive(Debug)]
pub struct RequestDecoder {
    frames: FrameDecoder,
    limits: ClientLimits,
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ClientLimits) -> RequestDecoder {
        RequestDecoder {
            frames: FrameDecoder::new(
                REQUEST_BODY_BYTES_MIN,
                limits.request_bytes_max,
                "request_bytes_max",
            ),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.frames.extend(bytes);
    }

    /// The next request; on an error that is not [fatal](WireError::is_fatal) answer its
    /// request id and call again.
    pub fn next_frame(&mut self) -> Result<Option<RequestFrame>, WireError> {
        let Some(body) = self.frames.next_frame()? else {
            return Ok(None);
        };
        decode_request(&body, &self.limits).map(Some)
    }
}

/// The client's decoder: bytes in, responses out.
#[derive(Debug)]
pub struct ResponseDecoder {
    frames: FrameDecoder,
    limits: ClientLimits,
}

impl ResponseDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ClientLimits) -> ResponseDecoder {
        ResponseDecoder {
            frames: FrameDecoder::new(
                RESPONSE_BODY_BYTES_MIN,
                limits.response_bytes_max,
                "response_bytes_max",
            ),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.frames.extend(bytes);
    }

    /// The next response; on an error that is not fatal, fail the request with its id.
    pub fn next_frame(&mut self) -> Result<Option<ResponseFrame>, WireError> {
        let Some(body) = self.frames.next_frame()? else {
            return Ok(None);
        };
        decode_response(&body, &self.limits).map(Some)
    }
}

/// Reads a frame body front to back; every read checks the bytes are there.
struct Reader<'a> {
    rest: &'a [u8],
    request_id: u64,
}

type Decoded<T> = Result<T, WireError>;

impl<'a> Reader<'a> {
    fn malformed(&self, reason: impl Into<String>) -> WireError {
        WireError::Malformed {
            request_id: self.request_id,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Decoded<&'a [u8]> {
        if self.rest.len() < n {
            return Err(self.malformed(format!("truncated {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Decoded<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Decoded<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Decoded<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bool(&mut self, what: &str) -> Decoded<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(format!("{what} is {b}, not a bool"))),
        }
    }

    fn flag(&mut self, what: &str) -> Decoded<bool> {
        self.bool(what)
    }

    fn option(&mut self, what: &str) -> Decoded<bool> {
        self.bool(what)
    }

    /// A length-prefixed byte string of at most `max` bytes (`limit` names the limit).
    fn bytes(&mut self, what: &'static str, limit: &'static str, max: u32) -> Decoded<Vec<u8>> {
        let len = self.u32(what)?;
        if len > max {
            return Err(WireError::TooLarge {
                request_id: self.request_id,
                what,
                len: u64::from(len),
                limit,
                max: u64::from(max),
            });
        }
        Ok(self.take(len as usize, what)?.to_vec())
    }

    fn string(&mut self, what: &'static str, max: u32) -> Decoded<String> {
        let bytes = self.bytes(what, "string_bytes_max", max)?;
        String::from_utf8(bytes).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    /// A count of items each at least `item_bytes_min` long, at most `max`: checked against
    /// the bytes left before anything is allocated for them.
    fn count(
        &mut self,
        what: &'static str,
        item_bytes_min: usize,
        limit: &'static str,
        max: u32,
    ) -> Decoded<usize> {
        let n = self.u32(what)?;
        if n > max {
            return Err(WireError::TooLarge {
                request_id: self.request_id,
                what,
                len: u64::from(n),
                limit,
                max: u64::from(max),
            });
        }
        let n = n as usize;
        if n.saturating_mul(item_bytes_min) > self.rest.len() {
            return Err(self.malformed(format!("{what} claims {n} items, more than fit")));
        }
        Ok(n)
    }

    fn finish<T>(self, value: T) -> Decoded<T> {
        if !self.rest.is_empty() {
            return Err(self.malformed(format!("{} trailing bytes", self.rest.len())));
        }
        Ok(value)
    }
}

fn decode_request(body: &[u8], limits: &ClientLimits) -> Decoded<RequestFrame> {
    let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
        return Err(WireError::ShortBody { len: body.len() });
    };
    let mut r = Reader {
        rest,
        request_id: u64::from_le_bytes(*id_bytes),
    };
    let kind = r.u8("kind")?;
    let group = r.u32("group")?;
    let request = match kind {
        KIND_PUT => Request::Put(write_id(&mut r)?, put_request(&mut r, limits)?),
        KIND_GET => Request::Get(GetRequest {
            key: key(&mut r, limits)?,
            consistency: consistency(&mut r)?,
        }),
        KIND_DELETE => Request::Delete(write_id(&mut r)?, delete_request(&mut r, limits)?),
        KIND_RANGE => Request::Range(range_request(&mut r, limits)?),
        KIND_TXN => {
            let w = if r.option("write id")? {
                Some(write_id(&mut r)?)
            } else {
                None
            };
            Request::Txn(w, txn_request(&mut r, limits)?)
        }
        KIND_STATUS => Request::Status,
        k => return Err(r.malformed(format!("unknown request kind {k}"))),
    };
    let id = r.request_id;
    r.finish(RequestFrame { id, group, request })
}

fn key(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<Vec<u8>> {
    r.bytes("key", "key_bytes_max", limits.key_bytes_max)
}

fn write_id(r: &mut Reader<'_>) -> Decoded<Write> {
    let id = WriteId {
        client_id: r.u64("client id")?,
        sequence: r.u64("sequence")?,
    };
    let first_unanswered = r.u64("first unanswered")?;
    if first_unanswered > id.sequence {
        return Err(r.malformed(format!(
            "first unanswered {first_unanswered} is above the write's own sequence {}",
            id.sequence
        )));
    }
    Ok(Write {
        id,
        first_unanswered,
    })
}

fn consistency(r: &mut Reader<'_>) -> Decoded<ReadConsistency> {
    match r.u8("consistency")? {
        0 => Ok(ReadConsistency::Linearizable),
        1 => Ok(ReadConsistency::Lease),
        2 => Ok(ReadConsistency::Serializable),
        c => Err(r.malformed(format!("unknown consistency {c}"))),
    }
}

fn put_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<PutRequest> {
    Ok(PutRequest {
        key: key(r, limits)?,
        value: r.bytes("value", "value_bytes_max", limits.value_bytes_max)?,
        prev_kv: r.flag("put flags")?,
    })
}

fn delete_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<DeleteRequest> {
    Ok(DeleteRequest {
        key: key(r, limits)?,
        prev_kv: r.flag("delete flags")?,
    })
}

fn range_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<RangeRequest> {
    let key = key(r, limits)?;
    let range_end = r.bytes("range_end", "key_bytes_max", limits.key_bytes_max)?;
    let limit = r.u64("limit")?;
    let revision = r.u64("revision")?;
    let flags = r.u8("range flags")?;
    if flags & !0b11 != 0 {
        return Err(r.malformed(format!("unknown range flags {flags:#04x}")));
    }
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        keys_only: flags & 1 != 0,
        count_only: flags & 2 != 0,
        revision,
        consistency: consistency(r)?,
    })
}

fn txn_request(r: &mut Reader<'_>, limits: &ClientLimits) -> Decoded<TxnRequest> {
    // A compare is at least key length (4), target, op and a u64 or a length (4): 10 bytes.
    let n = r.count("compares", 10, "ops_per_txn_max", limits.ops_per_txn_max)?;
    let mut compares = Vec::with_capacity(n);
    for _ in 0..n {
        let key = key(r, limits)?;
        let target = r.u8("compare target")?;
        let op = match r.u8("compare op")? {
            0 => CompareOp::Equal,
            1 => CompareOp::NotEqual,
            2 => CompareOp::Greater,
            3 => CompareOp::Less,
            o => return Err(r.malformed(format!("unknown compare op {o}"))),
        };
        let target = match target {
            0 => CompareTarget::Value(r.bytes(
                "compare value",
                "value_bytes_max",
                limits.value_bytes_max,
            )?),
            1 => CompareTarget::Version(r.u64("compare version")?),
            2 => CompareTarget::CreateRevision(r.u64("compare create revision")?),
            3 => CompareTarget::ModRevision(r.u64("compare mod revision")?),
            t => return Err(r.malformed(format!("unknown compare target {t}"))),
        };
        compares.push(Compare { key, target, op });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for (branch, what) in branches.iter_mut().zip(["success ops", "failure ops"]) {
        // The smallest op is a delete: kind, key length, flags.
        let n = r.count(what, 6, "ops_per_txn_max", limits.ops_per_txn_max)?;
        branch.reserve_exact(n);
        for _ in 0..n {
            branch.push(match r.u8("op kind")? {
                KIND_PUT => TxnOp::Put(put_request(r, limits)?),
                KIND_DELETE => TxnOp::Delete(delete_request(r, limits)?),
                KIND_RANGE => TxnOp::Range(range_request(r, limits)?),
                k => return Err(r.malformed(format!("unknown txn op kind {k}"))),
            });
        }
    }
    let [success, failure] = branches;
    Ok(TxnRequest {
        compares,
        success,
        failure,
    })
}

fn decode_response(body: &[u8], limits: &ClientLimits) -> Decoded<ResponseFrame> {
    let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
        return Err(WireError::ShortBody { len: body.len() });
    };
    let mut r = Reader {
        rest,
        request_id: u64::from_le_bytes(*id_bytes),
    };
    // Responses carry what the server stored, so their keys and values are bounded by the
    // frame (checked against the bytes left), not by the request limits.
    let result = match r.u8("status")? {
        0 => Ok(match r.u8("kind")? {
            KIND_PUT => Response::Put(PutResponse {
                header: header(&mut r)?,
                prev_kv: option_kv(&mut r)?,
            }),
            KIND_GET => Response::Get(GetResponse {
                header: header(&mut r)?,
                kv: option_kv(&mut r)?,
            }),
            KIND_DELETE => Response::Delete(DeleteResponse {
                header: header(&mut r)?,
                deleted: r.u64("deleted")?,
                prev_kvs: kvs(&mut r)?,
            }),
            KIND_RANGE => Response::Range(RangeResponse {
                header: header(&mut r)?,
                kvs: kvs(&mut r)?,
                count: r.u64("count")?,
                more: r.bool("more")?,
            }),
            KIND_TXN => {
                let header = header(&mut r)?;
                let succeeded = r.bool("succeeded")?;
                let n = r.count("op responses", 2, "ops_per_txn_max", limits.ops_per_txn_max)?;
                let mut responses = Vec::with_capacity(n);
                for _ in 0..n {
                    responses.push(match r.u8("op response kind")? {
                        KIND_PUT => OpResponse::Put {
                            prev_kv: option_kv(&mut r)?,
                        },
                        KIND_DELETE => OpResponse::Delete {
                            deleted: r.u64("deleted")?,
                            prev_kvs: kvs(&mut r)?,
                        },
                        KIND_RANGE => OpResponse::Range {
                            kvs: kvs(&mut r)?,
                            count: r.u64("count")?,
                            more: r.bool("more")?,
                        },
                        k => return Err(r.malformed(format!("unknown op response kind {k}"))),
                    });
                }
                Response::Txn(TxnResponse {
                    header,
                    succeeded,
                    responses,
                })
            }
            KIND_STATUS => {
                let member_id = r.u64("member id")?;
                let groups = r.u32("groups")?;
                if groups == 0 || groups > limits.groups_max {
                    return Err(r.malformed(format!(
                        "status names {groups} groups, outside 1..={} (groups_max)",
                        limits.groups_max
                    )));
                }
                let n = r.count("members", 12, "members_max", limits.members_max)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberInfo {
                        id: r.u64("member id")?,
                        client_address: r.string("client address", limits.string_bytes_max)?,
                    });
                }
                let n = r.count("leaders", 1, "groups_max", limits.groups_max)?;
                if n != groups as usize {
                    return Err(r.malformed(format!("{n} leaders for {groups} groups")));
                }
                let mut leaders = Vec::with_capacity(n);
                for _ in 0..n {
                    leaders.push(if r.option("leader")? {
                        Some(r.u64("leader")?)
                    } else {
                        None
                    });
                }
                Response::Status(ClusterStatus {
                    member_id,
                    groups,
                    members,
                    leaders,
                })
            }
            k => return Err(r.malformed(format!("unknown response kind {k}"))),
        }),
        1 => Err(ErrorStatus::NotLeader {
            group: r.u32("group")?,
            leader: if r.option("leader")? {
                Some(LeaderHint {
                    member_id: r.u64("leader id")?,
                    client_address: r.string("leader address", limits.string_bytes_max)?,
                })
            } else {
                None
            },
        }),
        2 => Err(ErrorStatus::GroupUnavailable {
            group: r.u32("group")?,
        }),
        3 => Err(ErrorStatus::InvalidArgument(
            r.string("message", limits.string_bytes_max)?,
        )),
        4 => Err(ErrorStatus::TooLarge(
            r.string("message", limits.string_bytes_max)?,
        )),
        5 => {
            let n = r.count("groups", 4, "groups_max", limits.groups_max)?;
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                groups.push(r.u32("group")?);
            }
            Err(ErrorStatus::TxnSpansGroups { groups })
        }
        6 => Err(ErrorStatus::WrongGroup {
            groups: r.u32("groups")?,
        }),
        7 => Err(ErrorStatus::Compacted {
            compact_revision: r.u64("compact revision")?,
        }),
        8 => Err(ErrorStatus::Busy),
        9 => Err(ErrorStatus::Internal(
            r.string("message", limits.string_bytes_max)?,
        )),
        s => return Err(r.malformed(format!("unknown status {s}"))),
    };
    let id = r.request_id;
    r.finish(ResponseFrame { id, result })
}

fn header(r: &mut Reader<'_>) -> Decoded<ResponseHeader> {
    Ok(ResponseHeader {
        group: r.u32("group")?,
        revision: r.u64("revision")?,
        member_id: r.u64("member id")?,
    })
}

fn kv(r: &mut Reader<'_>) -> Decoded<KeyValue> {
    Ok(KeyValue {
        key: r.bytes("key", "response_bytes_max", u32::MAX)?,
        value: r.bytes("value", "response_bytes_max", u32::MAX)?,
        create_revision: r.u64("create revision")?,
        mod_revision: r.u64("mod revision")?,
        version: r.u64("version")?,
    })
}

fn option_kv(r: &mut Reader<'_>) -> Decoded<Option<KeyValue>> {
    if r.option("key-value")? {
        Ok(Some(kv(r)?))
    } else {
        Ok(None)
    }
}

fn kvs(r: &mut Reader<'_>) -> Decoded<Vec<KeyValue>> {
    // A key-value is at least two lengths and three u64s: 32 bytes.
    let n = r.count("key-values", 32, "response_bytes_max", u32::MAX)?;
    let mut kvs = Vec::with_capacity(n);
    for _ in 0..n {
        kvs.push(kv(r)?);
    }
    Ok(kvs)
}
