//! The peer wire format: round trips of arbitrary messages, frames split anywhere across
//! reads, batches split by the limits, and hostile bytes — corrupted, truncated, random or
//! with lying lengths — refused with a named error, never a panic, a wrong decode or a large
//! allocation.

use std::sync::Arc;

use keel_node::consensus::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use keel_node::shard::SnapshotChunk;
use keel_node::transport::wire::{
    FRAME_KIND_HELLO, FRAME_KIND_HELLO_REPLY, FRAME_KIND_JOIN_REPLY, FRAME_KIND_JOIN_REQUEST,
    FRAME_KIND_MESSAGES, FRAME_KIND_SNAPSHOT_CHUNK, HEADER_BYTES, JOIN_VERSION, MAGIC,
};
use keel_node::transport::{
    Frame, FrameDecoder, FrameEncoder, Hello, HelloReply, JoinFacts, JoinReply, JoinRequest,
    WIRE_VERSION, WireError, WireLimits,
};
use proptest::collection::vec;
use proptest::prelude::*;

const TYPES: [MessageType; 14] = [
    MessageType::Append,
    MessageType::AppendResponse,
    MessageType::RequestVote,
    MessageType::RequestVoteResponse,
    MessageType::RequestPreVote,
    MessageType::RequestPreVoteResponse,
    MessageType::Snapshot,
    MessageType::Heartbeat,
    MessageType::HeartbeatResponse,
    MessageType::TimeoutNow,
    MessageType::Propose,
    MessageType::ReadIndex,
    MessageType::ReadIndexResponse,
    MessageType::TransferLeader,
];

// ---------------------------------------------------------------------------------------
// Helpers

fn encoder(limits: WireLimits) -> FrameEncoder {
    FrameEncoder::new(limits).expect("valid limits")
}

fn decoder(limits: WireLimits) -> FrameDecoder {
    FrameDecoder::new(limits).expect("valid limits")
}

fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    encoder(WireLimits::default())
        .encode_messages(msgs, &mut out)
        .expect("encodable");
    out
}

/// Every frame in `bytes`, then `Ok(None)`'s verdict: whether bytes were left over.
fn decode_all(bytes: &[u8], limits: WireLimits) -> Result<(Vec<Frame>, usize), WireError> {
    let mut d = decoder(limits);
    d.extend(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = d.next_frame()? {
        frames.push(frame);
    }
    Ok((frames, d.buffered()))
}

/// Frames that must all be Messages, flattened.
fn messages_of(frames: Vec<Frame>) -> Vec<Message> {
    frames
        .into_iter()
        .flat_map(|f| match f {
            Frame::Messages(m) => m,
            other => panic!("expected messages, got {other:?}"),
        })
        .collect()
}

/// A frame built from the module documentation alone, independent of the encoder.
fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    raw_frame_with(MAGIC, WIRE_VERSION, kind, 0, body)
}

fn raw_frame_with(magic: [u8; 4], version: u16, kind: u8, reserved: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&magic);
    f.extend_from_slice(&version.to_le_bytes());
    f.push(kind);
    f.push(reserved);
    f.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&f);
    h.update(body);
    f.extend_from_slice(&h.finalize().to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// Decodes one hand-built frame.
fn decode_one(frame: &[u8]) -> Result<Option<Frame>, WireError> {
    let mut d = decoder(WireLimits::default());
    d.extend(frame);
    d.next_frame()
}

fn decode_err(frame: &[u8]) -> WireError {
    match decode_one(frame) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The documented 82-byte fixed part of a message plus its context and entry count, from
/// the module documentation.
struct BodyWriter(Vec<u8>);

impl BodyWriter {
    fn new() -> Self {
        BodyWriter(Vec::new())
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A message's fields up to and including its context length, with the given type and
    /// flags and fields numbered 1..=9.
    fn message_head(self, msg_type: u8, flags: u8) -> Self {
        let mut w = self.u64(1).u8(msg_type).u8(flags);
        for v in 2..=9 {
            w = w.u64(v);
        }
        w
    }
}

// ---------------------------------------------------------------------------------------
// Strategies

fn entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(term, index, conf, data)| Entry {
            term,
            index,
            entry_type: if conf {
                EntryType::ConfChange
            } else {
                EntryType::Normal
            },
            data: Arc::from(data),
        })
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    vec(any::<u64>(), 0..5)
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<u64>(),
        any::<u64>(),
        (ids(), ids(), ids(), ids(), any::<bool>()),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(
                index,
                term,
                (voters, learners, voters_outgoing, learners_next, auto_leave),
                data,
            )| {
                Snapshot {
                    metadata: SnapshotMetadata {
                        index,
                        term,
                        conf_state: ConfState {
                            voters,
                            learners,
                            voters_outgoing,
                            learners_next,
                            auto_leave,
                        },
                    },
                    data,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            any::<u64>(),
            prop::sample::select(TYPES.to_vec()),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            vec(entry(), 0..4),
            any::<u64>(),
            prop::option::weighted(0.3, snapshot()),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            vec(any::<u8>(), 0..24),
        ),
    )
        .prop_map(
            |(
                (group_id, msg_type, to, from, term, log_term, index),
                (entries, commit, snapshot, reject, reject_hint, read_seq, context),
            )| Message {
                group_id,
                msg_type,
                to,
                from,
                term,
                log_term,
                index,
                entries,
                commit,
                snapshot,
                reject,
                reject_hint,
                read_seq,
                context,
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(wire_version, cluster_id, from_member, to_member)| Hello {
            wire_version,
            cluster_id,
            from_member,
            to_member,
        },
    )
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (any::<bool>(), ".{0,40}").prop_map(|(accepted, reason)| HelloReply { accepted, reason })
}

/// A Hello, a HelloReply and a batch of messages, encoded back to back, with the frames.
fn conversation() -> impl Strategy<Value = (Vec<u8>, Vec<Frame>)> {
    (hello(), hello_reply(), vec(message(), 1..4)).prop_map(|(hello, reply, msgs)| {
        let enc = encoder(WireLimits::default());
        let mut bytes = Vec::new();
        enc.encode_hello(&hello, &mut bytes);
        enc.encode_hello_reply(&reply, &mut bytes);
        assert_eq!(enc.encode_messages(&msgs, &mut bytes), Ok(1));
        let frames = vec![
            Frame::Hello(hello),
            Frame::HelloReply(reply),
            Frame::Messages(msgs),
        ];
        (bytes, frames)
    })
}

/// Re-encodes a decoded frame: the format is canonical, so accepted bytes must come back
/// unchanged — the proof that a decode was not a wrong one.
fn reencode(frame: &Frame) -> Vec<u8> {
    let enc = encoder(WireLimits::default());
    let mut out = Vec::new();
    match frame {
        Frame::Hello(h) => enc.encode_hello(h, &mut out),
        Frame::HelloReply(r) => enc.encode_hello_reply(r, &mut out),
        Frame::JoinRequest(r) => enc
            .encode_join_request(r, &mut out)
            .expect("a decoded join request re-encodes"),
        Frame::JoinReply(r) => enc
            .encode_join_reply(r, &mut out)
            .expect("a decoded join reply re-encodes"),
        Frame::SnapshotChunk(c) => enc
            .encode_snapshot_chunk(c, &mut out)
            .expect("a decoded chunk re-encodes"),
        Frame::Messages(m) => {
            if m.is_empty() {
                // The encoder sends no empty batch; the documented frame for one is a zero
                // count.
                out = raw_frame(FRAME_KIND_MESSAGES, &0u32.to_le_bytes());
            } else {
                enc.encode_messages(m, &mut out)
                    .expect("decoded messages re-encode");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(msgs in vec(message(), 0..12)) {
        let bytes = encode(&msgs);
        // The size the encoder promises per message is the size it writes.
        let enc = encoder(WireLimits::default());
        let promised: u64 = msgs.iter().map(|m| enc.message_bytes(m).unwrap()).sum();
        let framing = if msgs.is_empty() { 0 } else { HEADER_BYTES + 4 };
        prop_assert_eq!(u64::try_from(bytes.len() - framing).unwrap(), promised);
        let (frames, left) = decode_all(&bytes, WireLimits::default()).unwrap();
        prop_assert_eq!(left, 0);
        prop_assert_eq!(frames.len(), usize::from(!msgs.is_empty()));
        prop_assert_eq!(messages_of(frames), msgs);
    }

    #[test]
    fn hello_and_reply_round_trip(hello in hello(), reply in hello_reply()) {
        let enc = encoder(WireLimits::default());
        let mut bytes = Vec::new();
        enc.encode_hello(&hello, &mut bytes);
        enc.encode_hello_reply(&reply, &mut bytes);
        let (frames, left) = decode_all(&bytes, WireLimits::default()).unwrap();
        prop_assert_eq!(left, 0);
        prop_assert_eq!(frames, vec![Frame::Hello(hello), Frame::HelloReply(reply)]);
    }

    /// Any prefix of a stream decodes to exactly the frames it holds whole, then asks for
    /// more: never an error, never a panic.
    #[test]
    fn every_truncation_needs_more((bytes, frames) in conversation()) {
        let mut ends = Vec::new();
        let mut at = 0;
        for f in &frames {
            at += reencode(f).len();
            ends.push(at);
        }
        prop_assert_eq!(at, bytes.len());
        for len in 0..=bytes.len() {
            let (got, left) = decode_all(&bytes[..len], WireLimits::default()).unwrap();
            let whole = ends.iter().filter(|&&end| end <= len).count();
            prop_assert_eq!(&got[..], &frames[..whole]);
            prop_assert_eq!(left, len - ends[..whole].last().copied().unwrap_or(0));
        }
    }

    /// A stream cut in two at any byte, fed in two reads, decodes the same; so does a stream
    /// fed one byte at a time.
    #[test]
    fn split_at_every_boundary_decodes_the_same((bytes, frames) in conversation()) {
        for cut in 0..=bytes.len() {
            let mut d = decoder(WireLimits::default());
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                d.extend(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(&got, &frames);
            prop_assert_eq!(d.buffered(), 0);
        }
        let mut d = decoder(WireLimits::default());
        let mut got = Vec::new();
        for b in &bytes {
            d.extend(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }

    /// Any one corrupted byte is caught: by the checksum or a named header error, or (when
    /// it grew the length field) by waiting for bytes that never come. Never a frame.
    #[test]
    fn any_corrupted_byte_is_detected(
        msgs in vec(message(), 1..6),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = encode(&msgs);
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        match decode_one(&bytes) {
            Ok(Some(frame)) => prop_assert!(false, "corruption at {} decoded: {:?}", at, frame),
            Ok(None) => prop_assert!((8..12).contains(&at), "only a longer length waits, at {}", at),
            Err(_) => {}
        }
    }

    /// A valid frame whose body was changed and whose checksum was recomputed (what a buggy
    /// or hostile peer sends) decodes to an error or to exactly what re-encodes to it.
    #[test]
    fn mutated_bodies_with_valid_checksums_never_decode_wrong(
        msgs in vec(message(), 1..6),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let bytes = encode(&msgs);
        let mut body = bytes[HEADER_BYTES..].to_vec();
        let at = at.index(body.len());
        body[at] ^= flip;
        let frame = raw_frame(FRAME_KIND_MESSAGES, &body);
        if let Ok(Some(decoded)) = decode_one(&frame) {
            prop_assert_eq!(reencode(&decoded), frame);
        }
    }

    /// Random bytes never panic; behind a valid header, random bodies of every kind (and of
    /// kinds no version defines) reach the body decoder and either fail or decode
    /// canonically — but a JoinReply, which is read as far as its reason whatever join
    /// version it names and written with this build's, so it only must not panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        junk in vec(any::<u8>(), 0..600),
        kind in 0u8..9,
        body in vec(any::<u8>(), 0..600),
    ) {
        let _ = decode_all(&junk, WireLimits::default());
        let mut prefixed = MAGIC.to_vec();
        prefixed.extend_from_slice(&junk);
        let _ = decode_all(&prefixed, WireLimits::default());
        let frame = raw_frame(kind, &body);
        if let Ok(Some(decoded)) = decode_one(&frame) {
            if kind != FRAME_KIND_JOIN_REPLY {
                prop_assert_eq!(reencode(&decoded), frame);
            }
        }
    }

    /// A batch over the frame limit goes out as several frames, each within the limits, that
    /// decode to the same messages in the same order.
    #[test]
    fn a_batch_over_the_limits_splits_into_frames(
        msgs in vec(message(), 1..40),
        per_frame in 1u32..8,
    ) {
        let limits = WireLimits {
            frame_bytes_max: 1024,
            messages_per_frame_max: per_frame,
            entry_bytes_max: 256,
            context_bytes_max: 256,
            reason_bytes_max: 256,
            snapshot_chunk_bytes_max: 64,
        ..WireLimits::default()
        };
        let enc = encoder(limits);
        let msgs: Vec<Message> = msgs
            .into_iter()
            .filter(|m| enc.message_bytes(m).is_ok())
            .collect();
        let mut bytes = Vec::new();
        let frames = enc.encode_messages(&msgs, &mut bytes).unwrap();
        let (decoded, left) = decode_all(&bytes, limits).unwrap();
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded.len(), frames);
        let min_frames = msgs.len().div_ceil(usize::try_from(per_frame).unwrap());
        prop_assert!(frames >= min_frames);
        let mut at = 0;
        for f in &decoded {
            let len = reencode_with(&enc, f).len();
            prop_assert!(len - HEADER_BYTES <= 1024);
            let Frame::Messages(m) = f else { panic!("not messages") };
            prop_assert!(!m.is_empty() && m.len() <= usize::try_from(per_frame).unwrap());
            at += len;
        }
        prop_assert_eq!(at, bytes.len());
        prop_assert_eq!(messages_of(decoded), msgs);
    }
}

fn reencode_with(enc: &FrameEncoder, frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    if let Frame::Messages(m) = frame {
        assert_eq!(enc.encode_messages(m, &mut out), Ok(1));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The documented layout, byte by byte

#[test]
fn hello_bytes_are_the_documented_layout() {
    let mut out = Vec::new();
    encoder(WireLimits::default()).encode_hello(&Hello::new(0xC1, 2, 3), &mut out);
    let body = BodyWriter::new()
        .bytes(&1u16.to_le_bytes())
        .u64(0xC1)
        .u64(2)
        .u64(3)
        .0;
    assert_eq!(body.len(), 26);
    assert_eq!(out, raw_frame(FRAME_KIND_HELLO, &body));
    assert_eq!(&out[..8], b"KPWR\x01\x00\x01\x00");
    assert_eq!(&out[8..12], &26u32.to_le_bytes());
}

#[test]
fn join_frames_are_the_documented_layout_and_every_cut_is_refused() {
    let enc = encoder(WireLimits::default());
    let request = JoinRequest {
        join_version: JOIN_VERSION,
        name: "m4".into(),
        peer: "127.0.0.1:2380".parse().unwrap(),
    };
    let mut out = Vec::new();
    enc.encode_join_request(&request, &mut out).unwrap();
    let body = BodyWriter::new()
        .bytes(&1u16.to_le_bytes())
        .u8(2)
        .bytes(b"m4")
        .u8(14)
        .bytes(b"127.0.0.1:2380")
        .0;
    assert_eq!(out, raw_frame(FRAME_KIND_JOIN_REQUEST, &body));
    let facts = JoinFacts {
        cluster_id: 0xC1,
        member_id: 4,
        groups: 8,
        shards: 2,
        bootstrap: vec![1, 2, 3],
        member_list: b"list".to_vec(),
    };
    let mut reply = Vec::new();
    enc.encode_join_reply(&JoinReply::Accepted(facts.clone()), &mut reply)
        .unwrap();
    let body = BodyWriter::new()
        .bytes(&1u16.to_le_bytes())
        .u8(1)
        .u32(0)
        .u64(0xC1)
        .u64(4)
        .u32(8)
        .u32(2)
        .u32(3)
        .u64(1)
        .u64(2)
        .u64(3)
        .u32(4)
        .bytes(b"list")
        .0;
    assert_eq!(reply, raw_frame(FRAME_KIND_JOIN_REPLY, &body));
    for (frame, bytes) in [
        (Frame::JoinRequest(request), out),
        (Frame::JoinReply(JoinReply::Accepted(facts)), reply),
    ] {
        assert_eq!(decode_one(&bytes), Ok(Some(frame.clone())));
        assert_eq!(reencode(&frame), bytes);
        // Every shorter body (with a valid checksum) is refused, never misread.
        let body = &bytes[HEADER_BYTES..];
        for cut in 0..body.len() {
            let e = decode_err(&raw_frame(bytes[6], &body[..cut]));
            assert!(matches!(e, WireError::Truncated { .. }), "{cut}: {e}");
        }
    }
    // A refusal and a status no version defines.
    let mut out = Vec::new();
    enc.encode_join_reply(&JoinReply::NotNow("later".into()), &mut out)
        .unwrap();
    assert_eq!(
        decode_one(&out),
        Ok(Some(Frame::JoinReply(JoinReply::NotNow("later".into()))))
    );
    let bad = BodyWriter::new().bytes(&1u16.to_le_bytes()).u8(9).u32(0).0;
    assert!(matches!(
        decode_err(&raw_frame(FRAME_KIND_JOIN_REPLY, &bad)),
        WireError::InvalidByte { .. }
    ));
}

#[test]
fn hello_reply_bytes_are_the_documented_layout() {
    let mut out = Vec::new();
    encoder(WireLimits::default()).encode_hello_reply(&HelloReply::refuse("no"), &mut out);
    let body = BodyWriter::new().u8(0).u32(2).bytes(b"no").0;
    assert_eq!(out, raw_frame(FRAME_KIND_HELLO_REPLY, &body));
}

#[test]
fn message_bytes_are_the_documented_layout() {
    let msg = Message {
        group_id: 1,
        msg_type: MessageType::Snapshot,
        to: 2,
        from: 3,
        term: 4,
        log_term: 5,
        index: 6,
        entries: vec![Entry {
            term: 10,
            index: 11,
            entry_type: EntryType::ConfChange,
            data: Arc::from(&b"abc"[..]),
        }],
        commit: 7,
        snapshot: Some(Snapshot {
            metadata: SnapshotMetadata {
                index: 20,
                term: 21,
                conf_state: ConfState {
                    voters: vec![1, 2],
                    learners: vec![3],
                    voters_outgoing: vec![],
                    learners_next: vec![4],
                    auto_leave: true,
                },
            },
            data: b"state".to_vec(),
        }),
        reject: true,
        reject_hint: 8,
        read_seq: 9,
        context: b"ctx".to_vec(),
    };
    let body = BodyWriter::new()
        .u32(1)
        .message_head(7, 0b11)
        .u32(3)
        .bytes(b"ctx")
        .u32(1)
        .u64(10)
        .u64(11)
        .u8(1)
        .u32(3)
        .bytes(b"abc")
        .u64(20)
        .u64(21)
        .u32(2)
        .u64(1)
        .u64(2)
        .u32(1)
        .u64(3)
        .u32(0)
        .u32(1)
        .u64(4)
        .u8(1)
        .u32(5)
        .bytes(b"state")
        .0;
    let enc = encoder(WireLimits::default());
    assert_eq!(
        enc.message_bytes(&msg),
        Ok(u64::try_from(body.len()).unwrap() - 4)
    );
    let expected = raw_frame(FRAME_KIND_MESSAGES, &body);
    assert_eq!(encode(std::slice::from_ref(&msg)), expected);
    assert_eq!(decode_one(&expected), Ok(Some(Frame::Messages(vec![msg]))));
}

// ---------------------------------------------------------------------------------------
// Lying lengths: refused before any allocation (each would need gigabytes)

/// A Messages frame holding one message whose fixed part is valid, followed by `tail`,
/// padded with zeros to the 82 bytes a message takes at least (a shorter body is refused
/// before the message is read).
fn one_message_frame(flags: u8, tail: BodyWriter) -> Vec<u8> {
    let mut body = BodyWriter::new()
        .u32(1)
        .message_head(1, flags)
        .bytes(&tail.0)
        .0;
    if body.len() < 4 + 82 {
        body.resize(4 + 82, 0);
    }
    raw_frame(FRAME_KIND_MESSAGES, &body)
}

fn limit_exceeded(e: &WireError) -> (&'static str, u64, &'static str) {
    match e {
        WireError::LimitExceeded {
            what, found, limit, ..
        } => (*what, *found, *limit),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

fn truncated_what(e: &WireError) -> &'static str {
    match e {
        WireError::Truncated { what, .. } => what,
        other => panic!("expected a truncation error, got {other:?}"),
    }
}

#[test]
fn a_lying_frame_length_is_refused_from_the_header_alone() {
    let frame = raw_frame(FRAME_KIND_MESSAGES, &[]);
    let mut header = frame[..HEADER_BYTES].to_vec();
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut d = decoder(WireLimits::default());
    d.extend(&header);
    let e = d.next_frame().unwrap_err();
    assert_eq!(
        e,
        WireError::FrameTooLarge {
            bytes: u64::from(u32::MAX),
            max: 16 << 20
        }
    );
    assert_eq!(
        e.to_string(),
        "frame body of 4294967295 bytes exceeds frame_bytes_max (16777216)"
    );
}

#[test]
fn lying_counts_above_their_limits_are_refused() {
    let m = u32::MAX;
    let messages = raw_frame(FRAME_KIND_MESSAGES, &m.to_le_bytes());
    assert_eq!(
        limit_exceeded(&decode_err(&messages)),
        ("messages", u64::from(m), "messages_per_frame_max")
    );
    let context = one_message_frame(0, BodyWriter::new().u32(m));
    assert_eq!(
        limit_exceeded(&decode_err(&context)),
        ("context bytes", u64::from(m), "context_bytes_max")
    );
    let entries = one_message_frame(0, BodyWriter::new().u32(0).u32(m));
    let e = decode_err(&entries);
    assert_eq!(
        limit_exceeded(&e),
        ("entries", u64::from(m), "entries_per_message_max")
    );
    assert_eq!(
        e.to_string(),
        "4294967295 entries exceed entries_per_message_max (65536)"
    );
    let entry = one_message_frame(
        0,
        BodyWriter::new().u32(0).u32(1).u64(1).u64(1).u8(0).u32(m),
    );
    assert_eq!(
        limit_exceeded(&decode_err(&entry)),
        ("entry bytes", u64::from(m), "entry_bytes_max")
    );
    let voters = one_message_frame(2, BodyWriter::new().u32(0).u32(0).u64(1).u64(1).u32(m));
    assert_eq!(
        limit_exceeded(&decode_err(&voters)),
        ("voters", u64::from(m), "voters_max")
    );
    let reason = raw_frame(FRAME_KIND_HELLO_REPLY, &BodyWriter::new().u8(0).u32(m).0);
    assert_eq!(
        limit_exceeded(&decode_err(&reason)),
        ("reason bytes", u64::from(m), "reason_bytes_max")
    );
    // Join frames: version (u16), then their fields.
    let join = |kind: u8, body: BodyWriter| {
        let mut b = JOIN_VERSION.to_le_bytes().to_vec();
        b.extend_from_slice(&body.0);
        raw_frame(kind, &b)
    };
    let peer = join(
        FRAME_KIND_JOIN_REQUEST,
        BodyWriter::new().u8(2).u8(b'm').u8(b'1').u8(200),
    );
    assert_eq!(
        limit_exceeded(&decode_err(&peer)),
        ("peer address bytes", 200, "JOIN_PEER_BYTES_MAX")
    );
    let reason = join(FRAME_KIND_JOIN_REPLY, BodyWriter::new().u8(2).u32(m));
    assert_eq!(
        limit_exceeded(&decode_err(&reason)),
        ("reason bytes", u64::from(m), "reason_bytes_max")
    );
    let accepted = || BodyWriter::new().u8(1).u32(0).u64(7).u64(4).u32(8).u32(2);
    let bootstrap = join(FRAME_KIND_JOIN_REPLY, accepted().u32(m));
    assert_eq!(
        limit_exceeded(&decode_err(&bootstrap)),
        ("bootstrap voters", u64::from(m), "voters_max")
    );
    let list = join(FRAME_KIND_JOIN_REPLY, accepted().u32(0).u32(m));
    assert_eq!(
        limit_exceeded(&decode_err(&list)),
        (
            "member list bytes",
            u64::from(m),
            "JOIN_MEMBER_LIST_BYTES_MAX"
        )
    );
}

#[test]
fn lying_counts_within_their_limits_are_refused_by_the_bytes_left() {
    let messages = raw_frame(FRAME_KIND_MESSAGES, &BodyWriter::new().u32(16000).0);
    assert_eq!(truncated_what(&decode_err(&messages)), "messages");
    let entries = one_message_frame(0, BodyWriter::new().u32(0).u32(65536));
    let e = decode_err(&entries);
    assert_eq!(
        e,
        WireError::Truncated {
            what: "entries",
            needed: 65536 * 21,
            remaining: 0
        }
    );
    assert_eq!(
        e.to_string(),
        "frame body too short: 1376256 bytes of entries but only 0 left"
    );
    let entry = one_message_frame(
        0,
        BodyWriter::new()
            .u32(0)
            .u32(1)
            .u64(1)
            .u64(1)
            .u8(0)
            .u32(8 << 20)
            .bytes(b"short"),
    );
    assert_eq!(truncated_what(&decode_err(&entry)), "entry bytes");
    let learners = one_message_frame(
        2,
        BodyWriter::new()
            .u32(0)
            .u32(0)
            .u64(1)
            .u64(1)
            .u32(0)
            .u32(1000),
    );
    assert_eq!(truncated_what(&decode_err(&learners)), "learners");
    // The snapshot's data has no limit of its own, so even u32::MAX is only refused for
    // running past the body.
    let snapshot = one_message_frame(
        2,
        BodyWriter::new()
            .u32(0)
            .u32(0)
            .u64(1)
            .u64(1)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0)
            .u8(0)
            .u32(u32::MAX),
    );
    assert_eq!(truncated_what(&decode_err(&snapshot)), "snapshot bytes");
}

// ---------------------------------------------------------------------------------------
// Named errors

#[test]
fn header_errors_name_what_is_wrong() {
    let body = BodyWriter::new().u32(0).0;
    let e = decode_err(&raw_frame_with(*b"HTTP", 1, 3, 0, &body));
    assert_eq!(e, WireError::BadMagic { found: 0x4854_5450 });
    assert_eq!(e.to_string(), "bad magic 0x48545450 (expected 0x4b505752)");
    let e = decode_err(&raw_frame_with(MAGIC, 7, 3, 0, &body));
    assert_eq!(
        e.to_string(),
        "unsupported wire version 7 (this build speaks 1)"
    );
    let e = decode_err(&raw_frame_with(MAGIC, 1, 3, 5, &body));
    assert_eq!(e, WireError::ReservedByte { found: 5 });
    let mut bad_crc = raw_frame(3, &body);
    bad_crc[12] ^= 1;
    assert!(
        decode_err(&bad_crc)
            .to_string()
            .starts_with("checksum mismatch")
    );
    let e = decode_err(&raw_frame(9, &body));
    assert_eq!(e.to_string(), "unknown frame kind 9");
    let e = decode_err(&raw_frame(7, &body));
    assert_eq!(e, WireError::UnknownFrameKind { kind: 7 });
}

fn chunk(offset: u64, data: &[u8], total: u64) -> SnapshotChunk {
    SnapshotChunk {
        group_id: 3,
        to: 2,
        from: 1,
        term: 7,
        index: 900,
        snapshot_term: 6,
        total_bytes: total,
        offset,
        data: data.to_vec(),
    }
}

/// A SnapshotChunk body laid out by hand, as the module documentation gives it.
fn chunk_body(offset: u64, len_field: u32, data: &[u8], total: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [3u64, 2, 1, 7, 900, 6, total, offset] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&len_field.to_le_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn snapshot_chunks_round_trip_byte_for_byte() {
    let c = chunk(100, b"checkpoint bytes", 1000);
    let mut out = Vec::new();
    encoder(WireLimits::default())
        .encode_snapshot_chunk(&c, &mut out)
        .unwrap();
    assert_eq!(
        out,
        raw_frame(
            FRAME_KIND_SNAPSHOT_CHUNK,
            &chunk_body(100, 16, b"checkpoint bytes", 1000)
        )
    );
    assert_eq!(decode_one(&out), Ok(Some(Frame::SnapshotChunk(c))));
}

#[test]
fn bad_snapshot_chunks_are_refused_by_name() {
    let limits = WireLimits {
        snapshot_chunk_bytes_max: 8,
        ..WireLimits::default()
    };
    let enc = encoder(limits);
    let mut out = Vec::new();
    // The encoder refuses what the decoder would.
    for bad in [
        chunk(0, &[1; 9], 100),
        chunk(0, &[], 100),
        chunk(95, &[1; 8], 100),
        chunk(u64::MAX, &[1], u64::MAX),
    ] {
        assert!(
            enc.encode_snapshot_chunk(&bad, &mut out).is_err(),
            "{bad:?}"
        );
        assert!(out.is_empty());
    }
    let decode = |body: &[u8]| {
        let mut d = decoder(limits);
        d.extend(&raw_frame(FRAME_KIND_SNAPSHOT_CHUNK, body));
        d.next_frame()
    };
    // Longer than snapshot_chunk_bytes_max: refused before its bytes are looked at.
    assert!(matches!(
        decode(&chunk_body(0, 9, &[1; 9], 100)),
        Err(WireError::LimitExceeded {
            limit: "snapshot_chunk_bytes_max",
            ..
        })
    ));
    // A length that lies about the bytes that follow, and a truncated header.
    assert!(matches!(
        decode(&chunk_body(0, 8, &[1; 3], 100)),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        decode(&chunk_body(0, 8, &[1; 8], 100)[..40]),
        Err(WireError::Truncated { .. })
    ));
    // Data past the announced end of the file, an empty chunk, trailing bytes.
    assert_eq!(
        decode(&chunk_body(95, 8, &[1; 8], 100)),
        Err(WireError::BadSnapshotChunk {
            offset: 95,
            len: 8,
            total: 100
        })
    );
    assert!(matches!(
        decode(&chunk_body(u64::MAX, 1, &[1], u64::MAX)),
        Err(WireError::BadSnapshotChunk { .. })
    ));
    assert!(matches!(
        decode(&chunk_body(0, 0, &[], 100)),
        Err(WireError::BadSnapshotChunk { .. })
    ));
    let mut extra = chunk_body(0, 2, &[1; 2], 100);
    extra.push(0);
    assert!(matches!(
        decode(&extra),
        Err(WireError::TrailingBytes { kind: 4, count: 1 })
    ));
    // A flipped bit anywhere is a checksum mismatch.
    let mut frame = raw_frame(FRAME_KIND_SNAPSHOT_CHUNK, &chunk_body(0, 2, &[1; 2], 100));
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let mut d = decoder(limits);
    d.extend(&frame);
    assert!(matches!(
        d.next_frame(),
        Err(WireError::ChecksumMismatch { kind: 4, .. })
    ));
}

#[test]
fn body_errors_name_what_is_wrong() {
    let e = decode_err(&one_message_frame(0, BodyWriter::new().u32(5)));
    assert_eq!(truncated_what(&e), "context bytes");
    let short = BodyWriter::new().u32(1).message_head(1, 0).u32(0).0;
    let e = decode_err(&raw_frame(FRAME_KIND_MESSAGES, &short));
    assert_eq!(
        e,
        WireError::Truncated {
            what: "messages",
            needed: 82,
            remaining: 78
        }
    );
    let body = BodyWriter::new().u32(1).message_head(99, 0).u32(0).u32(0).0;
    let e = decode_err(&raw_frame(FRAME_KIND_MESSAGES, &body));
    assert_eq!(e.to_string(), "message type 99 unknown");
    let body = BodyWriter::new().u32(1).message_head(0, 0).u32(0).u32(0).0;
    assert_eq!(
        decode_err(&raw_frame(FRAME_KIND_MESSAGES, &body)),
        WireError::UnknownMessageType { found: 0 }
    );
    let e = decode_err(&one_message_frame(4, BodyWriter::new().u32(0).u32(0)));
    assert_eq!(e.to_string(), "invalid message flags 0x04");
    let e = decode_err(&one_message_frame(
        0,
        BodyWriter::new().u32(0).u32(1).u64(1).u64(1).u8(2).u32(0),
    ));
    assert_eq!(e, WireError::UnknownEntryType { found: 2 });
    let e = decode_err(&one_message_frame(0, BodyWriter::new().u32(0).u32(0).u8(0)));
    assert_eq!(e, WireError::TrailingBytes { kind: 3, count: 1 });
    let e = decode_err(&raw_frame(
        FRAME_KIND_HELLO_REPLY,
        &BodyWriter::new().u8(2).u32(0).0,
    ));
    assert_eq!(e.to_string(), "invalid hello reply accepted byte 0x02");
    let e = decode_err(&raw_frame(
        FRAME_KIND_HELLO_REPLY,
        &BodyWriter::new().u8(0).u32(1).u8(0xFF).0,
    ));
    assert_eq!(e, WireError::InvalidUtf8 { what: "reason" });
    let e = decode_err(&raw_frame(FRAME_KIND_HELLO, &[0; 25]));
    assert_eq!(truncated_what(&e), "hello");
}

#[test]
fn an_error_is_final() {
    let mut d = decoder(WireLimits::default());
    d.extend(&raw_frame(9, &[]));
    let e = d.next_frame().unwrap_err();
    d.extend(&encode(&[Message::new(MessageType::Heartbeat, 1, 2)]));
    assert_eq!(d.next_frame(), Err(e));
}

// ---------------------------------------------------------------------------------------
// Encoder limits

#[test]
fn a_message_no_frame_can_hold_is_refused_and_nothing_is_appended() {
    let limits = WireLimits {
        frame_bytes_max: 4096,
        entry_bytes_max: 1024,
        context_bytes_max: 1024,
        reason_bytes_max: 1024,
        snapshot_chunk_bytes_max: 64,
        ..WireLimits::default()
    };
    let enc = encoder(limits);
    let mut snapshot = Message::new(MessageType::Snapshot, 1, 2);
    snapshot.group_id = 77;
    snapshot.snapshot = Some(Snapshot {
        data: vec![0; 4096],
        ..Snapshot::default()
    });
    let small = Message::new(MessageType::Heartbeat, 1, 2);
    let mut out = b"earlier".to_vec();
    let e = enc
        .encode_messages(&[small.clone(), snapshot.clone()], &mut out)
        .unwrap_err();
    assert!(matches!(
        e,
        WireError::MessageTooLarge {
            group_id: 77,
            msg_type: MessageType::Snapshot,
            max: 4096,
            ..
        }
    ));
    assert!(e.to_string().contains("frame_bytes_max (4096)"), "{e}");
    assert_eq!(out, b"earlier");

    let mut big_entry = Message::new(MessageType::Append, 1, 2);
    big_entry.entries.push(Entry {
        data: Arc::from(vec![0; 1025]),
        ..Entry::default()
    });
    assert_eq!(
        enc.encode_messages(&[small, big_entry], &mut out),
        Err(WireError::LimitExceeded {
            what: "entry bytes",
            found: 1025,
            limit: "entry_bytes_max",
            max: 1024
        })
    );
    assert_eq!(out, b"earlier");
}

#[test]
fn a_long_reason_is_cut_at_a_character_boundary() {
    let limits = WireLimits {
        reason_bytes_max: 5,
        ..WireLimits::default()
    };
    let mut out = Vec::new();
    encoder(limits).encode_hello_reply(&HelloReply::refuse("abcdé!"), &mut out);
    let (frames, _) = decode_all(&out, limits).unwrap();
    assert_eq!(frames, vec![Frame::HelloReply(HelloReply::refuse("abcd"))]);
}

#[test]
fn no_messages_make_no_frame() {
    let mut out = Vec::new();
    assert_eq!(
        encoder(WireLimits::default()).encode_messages(&[], &mut out),
        Ok(0)
    );
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------------------
// The decoder's buffer

/// Fed in reads of any size and drained after each, the decoder holds (and has allocated)
/// at most one frame's bound plus one read.
#[test]
fn the_decoder_buffers_at_most_one_frame_and_one_read() {
    let limits = WireLimits {
        frame_bytes_max: 8192,
        entry_bytes_max: 4096,
        context_bytes_max: 1024,
        reason_bytes_max: 1024,
        snapshot_chunk_bytes_max: 64,
        ..WireLimits::default()
    };
    let msgs: Vec<Message> = (0..300u64)
        .map(|i| {
            let mut m = Message::new(MessageType::Append, 1, 2);
            m.group_id = i;
            m.entries.push(Entry {
                index: i,
                data: Arc::from(vec![7; usize::try_from(i * 13 % 4000).unwrap()]),
                ..Entry::default()
            });
            m
        })
        .collect();
    let mut bytes = Vec::new();
    let frames = encoder(limits).encode_messages(&msgs, &mut bytes).unwrap();
    assert!(frames > 50, "{frames} frames");
    for read in [1, 100, 1000, 3000, 20000] {
        let mut d = decoder(limits);
        let mut got = Vec::new();
        for chunk in bytes.chunks(read) {
            d.extend(chunk);
            assert!(d.buffered() <= HEADER_BYTES + 8192 + read);
            while let Some(Frame::Messages(m)) = d.next_frame().unwrap() {
                got.extend(m);
            }
            assert!(d.buffered() < HEADER_BYTES + 8192);
            assert!(
                d.buffer_capacity() <= HEADER_BYTES + 8192 + read,
                "capacity {} with reads of {read}",
                d.buffer_capacity()
            );
        }
        assert_eq!(d.buffered(), 0);
        assert_eq!(got, msgs);
    }
}

// ---------------------------------------------------------------------------------------
// Handshake

#[test]
fn hello_answers_accept_only_the_right_member_of_the_right_cluster() {
    let cluster = 0xC1;
    assert_eq!(
        Hello::new(cluster, 2, 1).answer(cluster, 1),
        HelloReply::accept()
    );
    let refusals = [
        (Hello::new(0xC2, 2, 1), "cluster"),
        (Hello::new(cluster, 2, 3), "means member 3"),
        (Hello::new(cluster, 0, 1), "member id 0"),
        (Hello::new(cluster, 1, 1), "member id 1"),
        (
            Hello {
                wire_version: 2,
                ..Hello::new(cluster, 2, 1)
            },
            "wire version 2",
        ),
    ];
    for (hello, needle) in refusals {
        let reply = hello.answer(cluster, 1);
        assert!(!reply.accepted, "{hello:?}");
        assert!(reply.reason.contains(needle), "{}", reply.reason);
    }
}

// ---------------------------------------------------------------------------------------
// Limits

#[test]
fn limits_are_validated() {
    assert_eq!(WireLimits::default().validate(), Ok(()));
    let zero = WireLimits {
        voters_max: 0,
        ..WireLimits::default()
    };
    assert!(
        matches!(zero.validate(), Err(WireError::InvalidLimits(r)) if r.contains("voters_max"))
    );
    let entry_too_big = WireLimits {
        entry_bytes_max: 16 << 20,
        ..WireLimits::default()
    };
    assert!(
        matches!(entry_too_big.validate(), Err(WireError::InvalidLimits(r)) if r.contains("entry_bytes_max"))
    );
    let huge = WireLimits {
        frame_bytes_max: u32::MAX,
        snapshot_chunk_bytes_max: 64,
        ..WireLimits::default()
    };
    assert!(huge.validate().is_err());
    assert!(FrameEncoder::new(zero).is_err());
    assert!(FrameDecoder::new(huge).is_err());
}
