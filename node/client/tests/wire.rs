//! The native protocol through data: round trips of every request and response, streams
//! split anywhere, garbage and truncation that never panic, and lengths that lie refused
//! before anything is allocated for them.

use keel_client::wire::{
    self, ClientLimits, ClusterStatus, Compare, CompareOp, CompareTarget, DeleteRequest,
    DeleteResponse, ErrorStatus, GetRequest, GetResponse, KeyValue, LeaderHint, MemberInfo,
    OpResponse, PrefaceCode, PutRequest, PutResponse, RangeRequest, RangeResponse, ReadConsistency,
    Request, RequestDecoder, RequestFrame, Response, ResponseDecoder, ResponseFrame,
    ResponseHeader, ServerPreface, TxnOp, TxnRequest, TxnResponse, WireError, Write, WriteId,
};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn consistency() -> impl Strategy<Value = ReadConsistency> {
    prop_oneof![
        Just(ReadConsistency::Linearizable),
        Just(ReadConsistency::Lease),
        Just(ReadConsistency::Serializable),
    ]
}

fn write_id() -> impl Strategy<Value = Write> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(client_id, sequence, behind)| Write {
        id: WriteId {
            client_id,
            sequence,
        },
        first_unanswered: sequence.saturating_sub(behind),
    })
}

fn put() -> impl Strategy<Value = PutRequest> {
    (bytes(20), bytes(40), any::<bool>()).prop_map(|(key, value, prev_kv)| PutRequest {
        key,
        value,
        prev_kv,
    })
}

fn delete() -> impl Strategy<Value = DeleteRequest> {
    (bytes(20), any::<bool>()).prop_map(|(key, prev_kv)| DeleteRequest { key, prev_kv })
}

fn range() -> impl Strategy<Value = RangeRequest> {
    (
        bytes(20),
        bytes(20),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        consistency(),
    )
        .prop_map(
            |(key, range_end, limit, keys_only, count_only, revision, consistency)| RangeRequest {
                key,
                range_end,
                limit,
                keys_only,
                count_only,
                revision,
                consistency,
            },
        )
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        put().prop_map(TxnOp::Put),
        delete().prop_map(TxnOp::Delete),
        range().prop_map(TxnOp::Range),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        bytes(20).prop_map(CompareTarget::Value),
        any::<u64>().prop_map(CompareTarget::Version),
        any::<u64>().prop_map(CompareTarget::CreateRevision),
        any::<u64>().prop_map(CompareTarget::ModRevision),
    ];
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Greater),
        Just(CompareOp::Less),
    ];
    (bytes(20), target, op).prop_map(|(key, target, op)| Compare { key, target, op })
}

fn request() -> impl Strategy<Value = Request> {
    let txn = (
        prop::option::of(write_id()),
        prop::collection::vec(compare(), 0..4),
        prop::collection::vec(txn_op(), 0..4),
        prop::collection::vec(txn_op(), 0..4),
    )
        .prop_map(|(w, compares, success, failure)| {
            Request::Txn(
                w,
                TxnRequest {
                    compares,
                    success,
                    failure,
                },
            )
        });
    prop_oneof![
        (write_id(), put()).prop_map(|(w, p)| Request::Put(w, p)),
        (bytes(20), consistency())
            .prop_map(|(key, consistency)| Request::Get(GetRequest { key, consistency })),
        (write_id(), delete()).prop_map(|(w, d)| Request::Delete(w, d)),
        range().prop_map(Request::Range),
        txn,
        Just(Request::Status),
    ]
}

fn kv() -> impl Strategy<Value = KeyValue> {
    (
        bytes(20),
        bytes(40),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(key, value, create_revision, mod_revision, version)| KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
                version,
            },
        )
}

fn kvs() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(kv(), 0..4)
}

fn header() -> impl Strategy<Value = ResponseHeader> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(group, revision, member_id)| {
        ResponseHeader {
            group,
            revision,
            member_id,
        }
    })
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 .:]{0,30}"
}

fn response() -> impl Strategy<Value = Result<Response, ErrorStatus>> {
    let op_response = prop_oneof![
        prop::option::of(kv()).prop_map(|prev_kv| OpResponse::Put { prev_kv }),
        (any::<u64>(), kvs())
            .prop_map(|(deleted, prev_kvs)| OpResponse::Delete { deleted, prev_kvs }),
        (kvs(), any::<u64>(), any::<bool>()).prop_map(|(kvs, count, more)| OpResponse::Range {
            kvs,
            count,
            more
        }),
    ];
    let status = (
        1u32..8,
        any::<u64>(),
        prop::collection::vec((any::<u64>(), text()), 0..4),
    )
        .prop_flat_map(|(groups, member_id, members)| {
            (
                Just(groups),
                Just(member_id),
                Just(members),
                prop::collection::vec(prop::option::of(any::<u64>()), groups as usize),
            )
        })
        .prop_map(|(groups, member_id, members, leaders)| {
            Response::Status(ClusterStatus {
                member_id,
                groups,
                members: members
                    .into_iter()
                    .map(|(id, client_address)| MemberInfo { id, client_address })
                    .collect(),
                leaders,
            })
        });
    let ok = prop_oneof![
        (header(), prop::option::of(kv()))
            .prop_map(|(header, prev_kv)| Response::Put(PutResponse { header, prev_kv })),
        (header(), prop::option::of(kv()))
            .prop_map(|(header, kv)| Response::Get(GetResponse { header, kv })),
        (header(), any::<u64>(), kvs()).prop_map(|(header, deleted, prev_kvs)| {
            Response::Delete(DeleteResponse {
                header,
                deleted,
                prev_kvs,
            })
        }),
        (header(), kvs(), any::<u64>(), any::<bool>()).prop_map(|(header, kvs, count, more)| {
            Response::Range(RangeResponse {
                header,
                kvs,
                count,
                more,
            })
        }),
        (
            header(),
            any::<bool>(),
            prop::collection::vec(op_response, 0..4)
        )
            .prop_map(|(header, succeeded, responses)| Response::Txn(TxnResponse {
                header,
                succeeded,
                responses
            })),
        status,
    ];
    let err = prop_oneof![
        (any::<u32>(), prop::option::of((any::<u64>(), text()))).prop_map(|(group, l)| {
            ErrorStatus::NotLeader {
                group,
                leader: l.map(|(member_id, client_address)| LeaderHint {
                    member_id,
                    client_address,
                }),
            }
        }),
        any::<u32>().prop_map(|group| ErrorStatus::GroupUnavailable { group }),
        text().prop_map(ErrorStatus::InvalidArgument),
        text().prop_map(ErrorStatus::TooLarge),
        prop::collection::vec(any::<u32>(), 0..4)
            .prop_map(|groups| ErrorStatus::TxnSpansGroups { groups }),
        any::<u32>().prop_map(|groups| ErrorStatus::WrongGroup { groups }),
        any::<u64>().prop_map(|compact_revision| ErrorStatus::Compacted { compact_revision }),
        Just(ErrorStatus::Busy),
        text().prop_map(ErrorStatus::Internal),
    ];
    prop_oneof![ok.prop_map(Ok), err.prop_map(Err)]
}

fn encode_requests(frames: &[RequestFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        wire::encode_request(f, &ClientLimits::default(), &mut out).unwrap();
    }
    out
}

fn encode_responses(frames: &[ResponseFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        wire::encode_response(f, &ClientLimits::default(), &mut out).unwrap();
    }
    out
}

/// Feeds `bytes` in pieces of `chunk` bytes and collects every request.
fn decode_requests(bytes: &[u8], chunk: usize) -> Result<Vec<RequestFrame>, WireError> {
    let mut decoder = RequestDecoder::new(ClientLimits::default());
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.extend(piece);
        while let Some(frame) = decoder.next_frame()? {
            out.push(frame);
        }
    }
    Ok(out)
}

fn decode_responses(bytes: &[u8], chunk: usize) -> Result<Vec<ResponseFrame>, WireError> {
    let mut decoder = ResponseDecoder::new(ClientLimits::default());
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.extend(piece);
        while let Some(frame) = decoder.next_frame()? {
            out.push(frame);
        }
    }
    Ok(out)
}

proptest! {
    #[test]
    fn requests_round_trip_in_any_split(
        requests in prop::collection::vec((any::<u64>(), any::<u32>(), request()), 1..6),
        chunk in 1usize..64,
    ) {
        let frames: Vec<RequestFrame> = requests
            .into_iter()
            .map(|(id, group, request)| RequestFrame { id, group, request })
            .collect();
        let bytes = encode_requests(&frames);
        prop_assert_eq!(decode_requests(&bytes, chunk).unwrap(), frames);
    }

    #[test]
    fn responses_round_trip_in_any_split(
        responses in prop::collection::vec((any::<u64>(), response()), 1..6),
        chunk in 1usize..64,
    ) {
        let frames: Vec<ResponseFrame> = responses
            .into_iter()
            .map(|(id, result)| ResponseFrame { id, result })
            .collect();
        let bytes = encode_responses(&frames);
        prop_assert_eq!(decode_responses(&bytes, chunk).unwrap(), frames);
    }

    #[test]
    fn garbage_never_panics(garbage in bytes(512), chunk in 1usize..64) {
        let _ = decode_requests(&garbage, chunk);
        let _ = decode_responses(&garbage, chunk);
        if let Some(preface) = garbage.first_chunk::<{ wire::SERVER_PREFACE_BYTES }>() {
            let _ = ServerPreface::decode(preface);
        }
        if let Some(preface) = garbage.first_chunk::<{ wire::CLIENT_PREFACE_BYTES }>() {
            let _ = wire::decode_client_preface(preface);
        }
    }

    /// Bodies with a valid length and checksum but arbitrary content reach the typed decoders,
    /// which must refuse them without panicking and without poisoning the stream.
    #[test]
    fn checksummed_garbage_is_refused_per_request(body in bytes(300)) {
        let mut framed = Vec::new();
        framed.extend(u32::try_from(body.len()).unwrap().to_le_bytes());
        framed.extend(crc32fast::hash(&body).to_le_bytes());
        framed.extend(&body);
        for result in [decode_requests(&framed, 7).map(|_| ()), decode_responses(&framed, 7).map(|_| ())] {
            if let Err(e) = result {
                // Only a body too short for its fixed fields is fatal.
                prop_assert!(!e.is_fatal() || body.len() < 13, "{e}");
            }
        }
    }

    #[test]
    fn truncation_and_bit_flips_never_panic(
        request in request(),
        response in response(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut req = encode_requests(&[RequestFrame { id: 7, group: 1, request }]);
        let mut resp = encode_responses(&[ResponseFrame { id: 7, result: response }]);
        // A truncated frame is incomplete, never an error or a frame.
        prop_assert_eq!(decode_requests(&req[..cut.index(req.len())], 5).unwrap(), vec![]);
        prop_assert_eq!(decode_responses(&resp[..cut.index(resp.len())], 5).unwrap(), vec![]);
        // A flipped bit in a body is caught by the checksum; in the header, by the length
        // or checksum check, or it leaves the frame incomplete.
        let at = flip.index(req.len());
        req[at] ^= 1 << bit;
        prop_assert!(decode_requests(&req, 9).map(|f| f.is_empty()).unwrap_or(true));
        let at = flip.index(resp.len());
        resp[at] ^= 1 << bit;
        prop_assert!(decode_responses(&resp, 9).map(|f| f.is_empty()).unwrap_or(true));
    }
}

/// A frame around `body` with a correct length and checksum.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend(crc32fast::hash(body).to_le_bytes());
    out.extend(body);
    out
}

#[test]
fn a_frame_length_over_the_limit_is_refused_from_its_header() {
    let limits = ClientLimits::default();
    let mut decoder = RequestDecoder::new(limits.clone());
    // Only the 8-byte header arrived; the claimed body is never waited for.
    decoder.extend(&u32::MAX.to_le_bytes());
    decoder.extend(&[0; 4]);
    let error = decoder.next_frame().unwrap_err();
    assert!(error.is_fatal());
    assert!(error.to_string().contains("request_bytes_max"), "{error}");
    // And the stream stays refused.
    assert_eq!(decoder.next_frame().unwrap_err(), WireError::Poisoned);

    let mut decoder = ResponseDecoder::new(limits.clone());
    decoder.extend(&(limits.response_bytes_max + 1).to_le_bytes());
    decoder.extend(&[0; 4]);
    assert!(
        decoder
            .next_frame()
            .unwrap_err()
            .to_string()
            .contains("response_bytes_max")
    );
}

#[test]
fn inner_lengths_that_lie_are_refused_before_allocation() {
    let limits = ClientLimits::default();
    // A get whose key claims 4 GiB inside a 19-byte frame.
    let mut body = Vec::new();
    body.extend(42u64.to_le_bytes());
    body.push(2); // get
    body.extend(0u32.to_le_bytes());
    body.extend(u32::MAX.to_le_bytes());
    body.extend([1, 2]);
    let mut decoder = RequestDecoder::new(limits.clone());
    decoder.extend(&frame(&body));
    let error = decoder.next_frame().unwrap_err();
    assert!(!error.is_fatal());
    assert_eq!(error.request_id(), Some(42));
    assert!(matches!(error.to_status(), ErrorStatus::TooLarge(m) if m.contains("key_bytes_max")));

    // A key under the limit but longer than the frame: malformed, not an allocation.
    let mut body = Vec::new();
    body.extend(43u64.to_le_bytes());
    body.push(2);
    body.extend(0u32.to_le_bytes());
    body.extend(1000u32.to_le_bytes());
    body.extend([1, 2, 0]);
    decoder.extend(&frame(&body));
    let error = decoder.next_frame().unwrap_err();
    assert_eq!(error.request_id(), Some(43));
    assert!(matches!(error, WireError::Malformed { .. }), "{error}");

    // A transaction claiming a billion compares is refused by ops_per_txn_max, and one
    // claiming 100 compares in 3 bytes by the bytes left.
    for (n, id) in [(1_000_000_000u32, 44u64), (100, 45)] {
        let mut body = Vec::new();
        body.extend(id.to_le_bytes());
        body.push(5);
        body.extend(0u32.to_le_bytes());
        body.push(0); // no write id
        body.extend(n.to_le_bytes());
        body.extend([0, 0, 0]);
        decoder.extend(&frame(&body));
        let error = decoder.next_frame().unwrap_err();
        assert_eq!(error.request_id(), Some(id), "{error}");
    }

    // The stream is still usable: a good request after the bad ones decodes.
    let good = RequestFrame {
        id: 46,
        group: 0,
        request: Request::Status,
    };
    decoder.extend(&encode_requests(std::slice::from_ref(&good)));
    assert_eq!(decoder.next_frame().unwrap(), Some(good));

    // A response claiming four billion key-values in a few bytes.
    let mut body = Vec::new();
    body.extend(47u64.to_le_bytes());
    body.extend([0, 4]); // ok, range
    body.extend([0; 20]); // header
    body.extend(u32::MAX.to_le_bytes());
    let mut decoder = ResponseDecoder::new(limits);
    decoder.extend(&frame(&body));
    assert_eq!(decoder.next_frame().unwrap_err().request_id(), Some(47));
}

#[test]
fn a_checksum_mismatch_is_fatal() {
    let mut bytes = encode_requests(&[RequestFrame {
        id: 1,
        group: 0,
        request: Request::Get(GetRequest::new("k")),
    }]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let error = decode_requests(&bytes, 100).unwrap_err();
    assert!(
        matches!(error, WireError::Checksum { .. }) && error.is_fatal(),
        "{error}"
    );
}

#[test]
fn the_encoder_checks_limits_and_leaves_the_buffer_unchanged() {
    let limits = ClientLimits {
        key_bytes_max: 4,
        ..ClientLimits::default()
    };
    let mut out = vec![9];
    let frame = RequestFrame {
        id: 1,
        group: 0,
        request: Request::Put(Write::default(), PutRequest::new("too long", "v")),
    };
    let error = wire::encode_request(&frame, &limits, &mut out).unwrap_err();
    assert!(error.to_string().contains("key_bytes_max"), "{error}");
    assert_eq!(out, vec![9]);

    let ops = vec![TxnOp::Delete(DeleteRequest::new("k")); 129];
    let frame = RequestFrame {
        id: 1,
        group: 0,
        request: Request::Txn(
            None,
            TxnRequest {
                compares: vec![],
                success: ops,
                failure: vec![],
            },
        ),
    };
    let error = wire::encode_request(&frame, &ClientLimits::default(), &mut out).unwrap_err();
    assert!(error.to_string().contains("ops_per_txn_max"), "{error}");

    // A response over response_bytes_max is refused too; the server answers TooLarge.
    let small = ClientLimits {
        response_bytes_max: 64,
        request_bytes_max: 64,
        key_bytes_max: 8,
        value_bytes_max: 8,
        ..ClientLimits::default()
    };
    small.validate().unwrap();
    let frame = ResponseFrame {
        id: 1,
        result: Err(ErrorStatus::Internal("x".repeat(100))),
    };
    let error = wire::encode_response(&frame, &small, &mut out).unwrap_err();
    assert!(error.to_string().contains("response_bytes_max"), "{error}");
    assert_eq!(out, vec![9]);
}

#[test]
fn prefaces_are_fixed_and_checked() {
    let client = wire::client_preface();
    assert_eq!(
        client,
        [0xCB, b'K', b'E', b'E', b'L', b'\r', b'\n', 0x1A, 1, 0, 0, 0]
    );
    assert_eq!(wire::decode_client_preface(&client).unwrap(), 1);
    // What an etcd gRPC (HTTP/2) client sends first is told apart by the first byte.
    let http2: [u8; 12] = *b"PRI * HTTP/2";
    assert!(matches!(
        wire::decode_client_preface(&http2),
        Err(WireError::BadMagic { .. })
    ));

    assert_eq!(wire::sniff(b""), wire::Sniffed::NeedMore);
    assert_eq!(wire::sniff(&client[..5]), wire::Sniffed::NeedMore);
    assert_eq!(wire::sniff(&client), wire::Sniffed::Native);
    assert_eq!(wire::sniff(b"P"), wire::Sniffed::Other);
    assert_eq!(
        wire::sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        wire::Sniffed::Other
    );
    assert_eq!(wire::sniff(&[0x16, 3, 1]), wire::Sniffed::Other); // TLS
    assert_eq!(wire::sniff(b"\xCBKEEX"), wire::Sniffed::Other);

    let server = ServerPreface {
        version: 1,
        code: PrefaceCode::Busy,
        request_bytes_max: 1024,
        in_flight_per_connection_max: 16,
    };
    let bytes = server.encode();
    assert_eq!(&bytes[..8], &wire::MAGIC);
    assert_eq!(bytes[10], 2);
    assert_eq!(ServerPreface::decode(&bytes).unwrap(), server);
    let mut bad = bytes;
    bad[10] = 7;
    assert!(ServerPreface::decode(&bad).is_err());
}

#[test]
fn limits_validate_names_the_offending_limit() {
    ClientLimits::default().validate().unwrap();
    let cases = [
        (
            ClientLimits {
                ops_per_txn_max: 0,
                ..ClientLimits::default()
            },
            "ops_per_txn_max",
        ),
        (
            ClientLimits {
                key_bytes_max: 2 << 20,
                ..ClientLimits::default()
            },
            "key_bytes_max",
        ),
        (
            ClientLimits {
                request_bytes_max: u32::MAX,
                ..ClientLimits::default()
            },
            "request_bytes_max",
        ),
        (
            ClientLimits {
                response_bytes_max: 1024,
                ..ClientLimits::default()
            },
            "response_bytes_max",
        ),
    ];
    for (limits, name) in cases {
        let error = limits.validate().unwrap_err();
        assert!(error.contains(name), "{error}");
    }
}

#[test]
fn ranges_select_like_etcd() {
    let single = RangeRequest::between("b", "");
    assert!(single.contains(b"b") && !single.contains(b"ba"));
    let from = RangeRequest::between("b", [0]);
    assert!(from.contains(b"zzz") && !from.contains(b"a"));
    let prefix = RangeRequest::prefix(*b"a\xff");
    assert_eq!(prefix.range_end, b"b");
    assert!(prefix.contains(b"a\xff\x01") && !prefix.contains(b"b"));
    assert_eq!(RangeRequest::prefix("").range_end, vec![0]);
}

#[test]
fn a_write_claiming_answers_beyond_itself_is_refused() {
    let mut body = Vec::new();
    body.extend(9u64.to_le_bytes());
    body.push(3); // delete
    body.extend(0u32.to_le_bytes());
    body.extend(77u64.to_le_bytes()); // client id
    body.extend(5u64.to_le_bytes()); // sequence
    body.extend(6u64.to_le_bytes()); // first unanswered, above the sequence
    body.extend(1u32.to_le_bytes());
    body.extend([b'k', 0]);
    let mut decoder = RequestDecoder::new(ClientLimits::default());
    decoder.extend(&frame(&body));
    let error = decoder.next_frame().unwrap_err();
    assert!(
        matches!(error, WireError::Malformed { request_id: 9, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("first unanswered"), "{error}");
}
