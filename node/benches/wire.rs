//! Criterion benchmarks of the peer wire codec, throughput in encoded bytes.
//!
//! - `encode/appends` and `decode/appends`: 64 Append messages of 16 entries of 256 bytes
//!   each (about 280 KB, one frame), the shape of a busy replication flush.
//! - `encode/heartbeats` and `decode/heartbeats`: 1000 heartbeats of different groups (one
//!   frame), the shape of an idle multi-group flush.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_node::consensus::{Entry, Message, MessageType};
use keel_node::transport::{Frame, FrameDecoder, FrameEncoder, WireLimits};

fn appends() -> Vec<Message> {
    (0..64u64)
        .map(|group| {
            let mut m = Message::new(MessageType::Append, 1, 2);
            m.group_id = group;
            m.term = 5;
            m.log_term = 5;
            m.index = 1000;
            m.commit = 990;
            m.entries = (1..=16u64)
                .map(|i| Entry {
                    term: 5,
                    index: 1000 + i,
                    data: Arc::from(vec![0xAB; 256]),
                    ..Entry::default()
                })
                .collect();
            m
        })
        .collect()
}

fn heartbeats() -> Vec<Message> {
    (0..1000u64)
        .map(|group| {
            let mut m = Message::new(MessageType::Heartbeat, 1, 2);
            m.group_id = group;
            m.term = 5;
            m.commit = 990;
            m
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let encoder = FrameEncoder::new(WireLimits::default()).expect("default limits");
    for (name, msgs) in [("appends", appends()), ("heartbeats", heartbeats())] {
        let mut bytes = Vec::new();
        encoder
            .encode_messages(&msgs, &mut bytes)
            .expect("encodable");
        let len = u64::try_from(bytes.len()).expect("fits");

        let mut group = c.benchmark_group("encode");
        group.throughput(Throughput::Bytes(len));
        let mut out = Vec::with_capacity(bytes.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder.encode_messages(&msgs, &mut out).expect("encodable");
            });
        });
        group.finish();

        let mut group = c.benchmark_group("decode");
        group.throughput(Throughput::Bytes(len));
        group.bench_function(name, |b| {
            let mut decoder = FrameDecoder::new(WireLimits::default()).expect("default limits");
            b.iter(|| {
                decoder.extend(&bytes);
                let Ok(Some(Frame::Messages(m))) = decoder.next_frame() else {
                    panic!("one frame of messages");
                };
                assert_eq!(m.len(), msgs.len());
                assert!(matches!(decoder.next_frame(), Ok(None)));
            });
        });
        group.finish();
    }
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, codec);
}
criterion_main!(group::benches);
