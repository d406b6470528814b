//! The peer transport over real TCP on 127.0.0.1 (ports picked by the kernel), each test on a
//! tokio current-thread runtime like a shard's: batches of several groups between three
//! members, a member of another cluster refused, hostile bytes closing only their
//! connection, a restarted peer redialed, a peer that never reads kept bounded and reported
//! unreachable, and a connection flood refused without touching established peers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_node::consensus::{Entry, EntryType, Message, MessageType, NodeId};
use keel_node::shard::SnapshotChunk;
use keel_node::transport::{
    ChunkRefused, Frame, FrameDecoder, FrameEncoder, Hello, Inbound, SNAPSHOT_CHUNKS_QUEUED_MAX,
    Transport, TransportOptions, WireLimits,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

const CLUSTER: u64 = 0x6b65_656c;
/// Every test ends well within this, or fails.
const TEST_TIME: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Options with short waits, so that failures and backoffs play out quickly.
fn options(cluster_id: u64, member_id: NodeId) -> TransportOptions {
    let mut o = TransportOptions::new(cluster_id, member_id, loopback());
    o.connect_timeout = Duration::from_millis(500);
    o.handshake_timeout = Duration::from_millis(500);
    o.write_timeout = Duration::from_millis(500);
    o.backoff_min = Duration::from_millis(10);
    o.backoff_max = Duration::from_millis(100);
    o
}

fn message(group: u64, from: NodeId, to: NodeId, seq: u64) -> Message {
    let mut m = Message::new(MessageType::Append, from, to);
    m.group_id = group;
    m.term = 3;
    m.index = seq;
    m.entries = vec![Entry {
        term: 3,
        index: seq + 1,
        entry_type: EntryType::Normal,
        data: Arc::from(&b"payload"[..]),
    }];
    m
}

fn heartbeat(group: u64, from: NodeId, to: NodeId) -> Message {
    let mut m = Message::new(MessageType::Heartbeat, from, to);
    m.group_id = group;
    m
}

/// Receives `n` messages, or fails after `within`.
async fn recv_n(inbound: &mut Inbound, n: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, inbound.recv()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("inbound closed after {} of {n} messages", got.len()),
            Err(_) => panic!("only {} of {n} messages within {within:?}", got.len()),
        }
    }
    got
}

/// Starts members `ids` of one cluster, each knowing the others.
async fn cluster(
    ids: &[NodeId],
    tune: impl Fn(&mut TransportOptions),
) -> Vec<(Transport, Inbound)> {
    let mut members = Vec::new();
    for &id in ids {
        let mut o = options(CLUSTER, id);
        tune(&mut o);
        members.push(Transport::start(o).await.expect("start"));
    }
    let addrs: Vec<(NodeId, SocketAddr)> = members
        .iter()
        .map(|(t, _)| (t.member_id(), t.local_addr()))
        .collect();
    for (t, _) in &members {
        for &(id, addr) in &addrs {
            if id != t.member_id() {
                t.set_peer(id, addr);
            }
        }
    }
    members
}

/// Receives messages until `n` appends arrived (skipping heartbeats still in flight from
/// [`until_delivered`]), or fails after `within`.
async fn recv_appends(inbound: &mut Inbound, n: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, inbound.recv()).await {
            Ok(Some(m)) if m.msg_type == MessageType::Append => got.push(m),
            Ok(Some(_)) => {}
            Ok(None) => panic!("inbound closed after {} of {n} appends", got.len()),
            Err(_) => panic!("only {} of {n} appends within {within:?}", got.len()),
        }
    }
    got
}

/// Sends heartbeats from `from` to `to` every 10 ms until `inbound` gets one, or fails.
async fn until_delivered(from: &Transport, to: NodeId, inbound: &mut Inbound, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        from.send(vec![heartbeat(7, from.member_id(), to)]);
        match tokio::time::timeout(Duration::from_millis(10), inbound.recv()).await {
            Ok(Some(m)) if m.from == from.member_id() => return,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("inbound closed"),
        }
        assert!(
            Instant::now() < deadline,
            "nothing delivered within {within:?}"
        );
    }
}

/// Reads until the other side closes; fails if it is still open after `within`.
async fn expect_closed(stream: &mut TcpStream, within: Duration, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// Dials `addr` as member `from` and completes the handshake by hand.
async fn raw_handshake(addr: SocketAddr, from: NodeId, to: NodeId) -> TcpStream {
    let encoder = FrameEncoder::new(WireLimits::default()).expect("encoder");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    encoder.encode_hello(&Hello::new(CLUSTER, from, to), &mut out);
    stream.write_all(&out).await.expect("hello");
    let mut decoder = FrameDecoder::new(WireLimits::default()).expect("decoder");
    let mut buf = [0u8; 1024];
    loop {
        if let Some(frame) = decoder.next_frame().expect("reply decodes") {
            match frame {
                Frame::HelloReply(reply) => {
                    assert!(reply.accepted, "refused: {}", reply.reason);
                    return stream;
                }
                other => panic!("expected a reply, got {other:?}"),
            }
        }
        let n = stream.read(&mut buf).await.expect("read reply");
        assert!(n > 0, "closed before replying");
        decoder.extend(&buf[..n]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn three_members_exchange_batches_of_many_groups() {
    timeout(TEST_TIME, async {
        let mut members = cluster(&[1, 2, 3], |_| {}).await;
        let ids = [1u64, 2, 3];
        const PER_PAIR: u64 = 300;
        const GROUPS: u64 = 6;
        // Each member sends to each other member in batches of 30 messages over 6 groups,
        // numbering the messages of each (from, to) pair in order.
        for round in 0..PER_PAIR / 30 {
            for (t, _) in &members {
                let from = t.member_id();
                let mut batch = Vec::new();
                for &to in ids.iter().filter(|&&to| to != from) {
                    for i in 0..30 {
                        let seq = round * 30 + i;
                        batch.push(message(seq % GROUPS, from, to, seq));
                    }
                }
                t.send(batch);
            }
            tokio::task::yield_now().await;
        }
        for (t, inbound) in &mut members {
            let me = t.member_id();
            let got = recv_n(
                inbound,
                usize::try_from(2 * PER_PAIR).unwrap(),
                Duration::from_secs(10),
            )
            .await;
            let mut next: BTreeMap<NodeId, u64> = BTreeMap::new();
            for m in got {
                assert_eq!(m.to, me);
                assert_eq!(m.group_id, m.index % GROUPS);
                assert_eq!(m.entries.len(), 1);
                let expected = next.entry(m.from).or_insert(0);
                assert_eq!(m.index, *expected, "messages from {} out of order", m.from);
                *expected += 1;
            }
            assert_eq!(next.len(), 2);
            assert!(next.values().all(|&n| n == PER_PAIR));
            assert!(inbound.try_recv().is_none(), "nothing more than was sent");
        }
        for (t, _) in &members {
            let stats = t.stats();
            assert_eq!(stats.messages_sent, 2 * PER_PAIR);
            assert_eq!(stats.messages_received, 2 * PER_PAIR);
            assert_eq!(stats.messages_dropped, 0);
            assert!(
                stats.frames_sent < stats.messages_sent,
                "batched: {} frames for {} messages",
                stats.frames_sent,
                stats.messages_sent
            );
            assert_eq!(stats.connects, 2, "one connection per peer");
            assert_eq!((stats.queued_messages, stats.queued_bytes), (0, 0));
            assert!(t.take_unreachable().is_empty());
        }
        for (t, _) in members {
            t.shutdown().await;
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn another_cluster_and_an_unknown_member_are_refused() {
    timeout(TEST_TIME, async {
        let (b, mut b_in) = Transport::start(options(CLUSTER, 2))
            .await
            .expect("start b");
        // A member of another cluster, with an id b knows as a peer.
        let (x, _x_in) = Transport::start(options(CLUSTER + 1, 3))
            .await
            .expect("start x");
        // A member of b's cluster that b does not know.
        let (u, _u_in) = Transport::start(options(CLUSTER, 4))
            .await
            .expect("start u");
        b.set_peer(3, x.local_addr());
        x.set_peer(2, b.local_addr());
        u.set_peer(2, b.local_addr());

        let deadline = Instant::now() + Duration::from_secs(5);
        while x.stats().handshakes_refused_by_peer < 2 || u.stats().handshakes_refused_by_peer < 2 {
            assert!(
                Instant::now() < deadline,
                "not refused: {:?} {:?}",
                x.stats(),
                u.stats()
            );
            x.send(vec![heartbeat(5, 3, 2)]);
            u.send(vec![heartbeat(6, 4, 2)]);
            sleep(Duration::from_millis(10)).await;
        }
        // A dialer of a later wire version is refused with a reason it can read.
        let mut hello = Vec::new();
        FrameEncoder::new(WireLimits::default())
            .expect("encoder")
            .encode_hello(&Hello::new(CLUSTER, 3, 2), &mut hello);
        hello[4..6].copy_from_slice(&2u16.to_le_bytes());
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&hello).await.expect("write");
        let mut reply = Vec::new();
        timeout(Duration::from_secs(3), s.read_to_end(&mut reply))
            .await
            .expect("closed after the refusal")
            .expect("read");
        let mut decoder = FrameDecoder::new(WireLimits::default()).expect("decoder");
        decoder.extend(&reply);
        match decoder.next_frame() {
            Ok(Some(Frame::HelloReply(r))) => {
                assert!(!r.accepted);
                assert!(r.reason.contains("wire version 2"), "{}", r.reason);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }

        assert!(x.take_unreachable().contains(&(2, 5)));
        assert!(u.take_unreachable().contains(&(2, 6)));
        assert_eq!(x.stats().connects, 0);
        assert!(b.stats().inbound_refused >= 5);
        assert_eq!(b.stats().inbound_accepted, 0);
        assert!(
            b_in.try_recv().is_none(),
            "a refused member's message was delivered"
        );
        assert_eq!(b.stats().messages_received, 0);
        b.shutdown().await;
        assert!(b_in.recv().await.is_none());
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_bytes_close_only_their_connection() {
    timeout(TEST_TIME, async {
        // Member 9 is a peer of b that only this test's raw connections speak for.
        let mut members = cluster(&[1, 2], |_| {}).await;
        let (b, b_in) = members.pop().expect("b");
        let (a, mut a_in) = members.pop().expect("a");
        let mut b_in = b_in;
        b.set_peer(9, loopback());
        until_delivered(&a, 2, &mut b_in, Duration::from_secs(5)).await;
        until_delivered(&b, 1, &mut a_in, Duration::from_secs(5)).await;

        let limits = WireLimits::default();
        let encoder = FrameEncoder::new(limits).expect("encoder");
        let mut valid = Vec::new();
        encoder
            .encode_messages(&[message(1, 9, 2, 0)], &mut valid)
            .expect("encode");
        let close = Duration::from_secs(3);

        // Garbage instead of a hello.
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&[0xa5; 300]).await.expect("write");
        expect_closed(&mut s, close, "garbage").await;

        // A hello cut short, then the dialer closes its side.
        let mut hello = Vec::new();
        encoder.encode_hello(&Hello::new(CLUSTER, 9, 2), &mut hello);
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&hello[..hello.len() - 3]).await.expect("write");
        s.shutdown().await.expect("shutdown");
        expect_closed(&mut s, close, "truncated hello").await;

        // After a good handshake: a frame cut short.
        let mut s = raw_handshake(b.local_addr(), 9, 2).await;
        s.write_all(&valid[..valid.len() - 5]).await.expect("write");
        s.shutdown().await.expect("shutdown");
        expect_closed(&mut s, close, "truncated frame").await;

        // A header announcing a body over frame_bytes_max.
        let mut s = raw_handshake(b.local_addr(), 9, 2).await;
        let mut big = valid[..16].to_vec();
        big[8..12].copy_from_slice(&(limits.frame_bytes_max + 1).to_le_bytes());
        s.write_all(&big).await.expect("write");
        expect_closed(&mut s, close, "oversized frame").await;

        // A frame with a flipped bit in its body.
        let mut s = raw_handshake(b.local_addr(), 9, 2).await;
        let mut flipped = valid.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        s.write_all(&flipped).await.expect("write");
        expect_closed(&mut s, close, "corrupt frame").await;

        // A well-formed message that claims to come from another member.
        let mut s = raw_handshake(b.local_addr(), 9, 2).await;
        let mut forged = Vec::new();
        encoder
            .encode_messages(&[message(1, 1, 2, 0)], &mut forged)
            .expect("encode");
        s.write_all(&forged).await.expect("write");
        expect_closed(&mut s, close, "forged sender").await;

        // Random bytes after a good handshake, many times, in pieces.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20 {
            let mut s = raw_handshake(b.local_addr(), 9, 2).await;
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed.to_le_bytes()[0]
                })
                .collect();
            for piece in junk.chunks(7) {
                if s.write_all(piece).await.is_err() {
                    break;
                }
            }
            expect_closed(&mut s, close, "random bytes").await;
        }

        // A connection that never says hello is closed after handshake_timeout (500 ms).
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        let opened = Instant::now();
        expect_closed(&mut s, close, "silent").await;
        assert!(opened.elapsed() >= Duration::from_millis(400));

        // Every raw connection broke before a whole valid frame from member 9 arrived, and
        // the established connections went on.
        assert!(b.stats().inbound_errors >= 26, "{:?}", b.stats());
        let before = b.stats().connects;
        a.send((0..50).map(|i| message(i % 3, 1, 2, i)).collect());
        let got = recv_appends(&mut b_in, 50, Duration::from_secs(5)).await;
        assert!(got.iter().all(|m| m.from == 1));
        assert!(got.iter().map(|m| m.index).eq(0..50));
        assert!(
            b_in.try_recv().is_none(),
            "nothing from member 9 was delivered"
        );
        b.send(vec![heartbeat(4, 2, 1)]);
        recv_n(&mut a_in, 1, Duration::from_secs(5)).await;
        assert_eq!(a.stats().connects, 1, "a's connection to b never broke");
        assert_eq!(b.stats().connects, before);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn a_restarted_peer_is_dialed_again() {
    timeout(TEST_TIME, async {
        let mut members = cluster(&[1, 2], |_| {}).await;
        let (b, mut b_in) = members.pop().expect("b");
        let (a, _a_in) = members.pop().expect("a");
        let b_addr = b.local_addr();
        until_delivered(&a, 2, &mut b_in, Duration::from_secs(5)).await;
        b.shutdown().await;
        drop(b_in);

        // While b is down, a's messages are dropped and b reported unreachable.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            a.send(vec![heartbeat(7, 1, 2)]);
            sleep(Duration::from_millis(10)).await;
            if a.take_unreachable().contains(&(2, 7)) {
                break;
            }
            assert!(Instant::now() < deadline, "b never reported unreachable");
        }
        assert!(a.stats().messages_dropped > 0);

        // b comes back on the same address; a dials again after its backoff.
        let mut o = options(CLUSTER, 2);
        o.listen = b_addr;
        o.peers.insert(1, a.local_addr());
        let (b, mut b_in) = Transport::start(o).await.expect("restart b");
        until_delivered(&a, 2, &mut b_in, Duration::from_secs(5)).await;
        assert!(a.stats().connects >= 2, "{:?}", a.stats());
        a.send((0..20).map(|i| message(i % 2, 1, 2, i)).collect());
        let got = recv_appends(&mut b_in, 20, Duration::from_secs(5)).await;
        assert!(got.iter().map(|m| m.index).eq(0..20));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_never_reads_stays_bounded_and_is_reported() {
    timeout(TEST_TIME, async {
        const QUEUE_MESSAGES: usize = 64;
        const QUEUE_BYTES: u64 = 1 << 20;
        // A fake member 2 that accepts the handshake and then never reads.
        let fake = TcpListener::bind(loopback()).await.expect("bind");
        let fake_addr = fake.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = fake.accept().await.expect("accept");
                let mut decoder = FrameDecoder::new(WireLimits::default()).expect("decoder");
                let mut buf = [0u8; 64];
                let mut open = true;
                while open && decoder.next_frame().expect("hello").is_none() {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    decoder.extend(&buf[..n]);
                    open = n > 0;
                }
                if !open {
                    continue;
                }
                let mut out = Vec::new();
                FrameEncoder::new(WireLimits::default())
                    .expect("encoder")
                    .encode_hello_reply(&Hello::new(CLUSTER, 1, 2).answer(CLUSTER, 2), &mut out);
                s.write_all(&out).await.expect("reply");
                held.push(s);
            }
        });

        let mut o = options(CLUSTER, 1);
        o.limits.frame_bytes_max = 1 << 20;
        o.limits.entry_bytes_max = 64 << 10;
        o.limits.snapshot_chunk_bytes_max = 64 << 10;
        o.send_queue_messages_max = QUEUE_MESSAGES;
        o.send_queue_bytes_max = QUEUE_BYTES;
        o.peers.insert(2, fake_addr);
        let (a, _a_in) = Transport::start(o).await.expect("start");
        let big = |seq: u64| {
            let mut m = message(seq % 4, 1, 2, seq);
            m.entries[0].data = Arc::from(vec![7u8; 32 << 10]);
            m
        };
        // About 64 MiB offered, far more than the socket buffers and the queue hold.
        let mut seq = 0;
        for _ in 0..100 {
            a.send(
                (0..20)
                    .map(|_| {
                        seq += 1;
                        big(seq)
                    })
                    .collect(),
            );
            let stats = a.stats();
            assert!(stats.queued_messages <= u64::try_from(QUEUE_MESSAGES).unwrap());
            assert!(stats.queued_bytes <= QUEUE_BYTES);
            sleep(Duration::from_millis(2)).await;
        }
        let stats = a.stats();
        assert!(stats.messages_dropped > 0, "{stats:?}");
        assert!(stats.messages_sent + stats.messages_dropped + stats.queued_messages <= seq);
        let unreachable = a.take_unreachable();
        assert!(
            (0..4).all(|g| unreachable.contains(&(2, g))),
            "{unreachable:?}"
        );
        held.abort();
        a.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_flood_is_refused_without_touching_established_peers() {
    timeout(TEST_TIME, async {
        const MAX: usize = 4;
        const FLOOD: usize = 40;
        let mut members = cluster(&[1, 2], |o| {
            o.inbound_connections_max = MAX;
            o.handshake_timeout = Duration::from_secs(10);
        })
        .await;
        let (b, mut b_in) = members.pop().expect("b");
        let (a, _a_in) = members.pop().expect("a");
        until_delivered(&a, 2, &mut b_in, Duration::from_secs(5)).await;

        // a's connection holds one of b's slots; the flood can take the others and no more.
        let mut flood = Vec::new();
        for _ in 0..FLOOD {
            flood.push(TcpStream::connect(b.local_addr()).await.expect("connect"));
        }
        let mut closed = 0;
        for s in &mut flood {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(300), s.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert!(
            closed >= FLOOD - (MAX - 1),
            "only {closed} of {FLOOD} closed"
        );
        assert!(b.stats().inbound_over_limit >= u64::try_from(FLOOD - (MAX - 1)).unwrap());

        // a's established connection still carries messages while the flood is open.
        a.send((0..30).map(|i| message(i % 3, 1, 2, i)).collect());
        let got = recv_appends(&mut b_in, 30, Duration::from_secs(5)).await;
        assert!(got.iter().map(|m| m.index).eq(0..30));
        assert_eq!(a.stats().connects, 1);
        assert_eq!(a.stats().messages_dropped, 0);
        drop(flood);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_owner_pushes_back_without_losing_messages() {
    timeout(TEST_TIME, async {
        const INBOUND: usize = 8;
        const SENT: u64 = 2000;
        let mut members = cluster(&[1, 2], |o| o.inbound_queue_messages_max = INBOUND).await;
        let (b, mut b_in) = members.pop().expect("b");
        let (a, _a_in) = members.pop().expect("a");
        for chunk in 0..SENT / 100 {
            a.send(
                (0..100)
                    .map(|i| message(i % 5, 1, 2, chunk * 100 + i))
                    .collect(),
            );
            tokio::task::yield_now().await;
        }
        // b's owner does not read for a while: b's connection stops at the full queue.
        sleep(Duration::from_millis(200)).await;
        let received = b.stats().messages_received;
        assert!(
            received <= u64::try_from(INBOUND).unwrap(),
            "{received} messages taken off the connection with a queue of {INBOUND}"
        );
        let got = recv_appends(
            &mut b_in,
            usize::try_from(SENT).unwrap(),
            Duration::from_secs(10),
        )
        .await;
        assert!(got.iter().map(|m| m.index).eq(0..SENT));
        assert_eq!(a.stats().messages_dropped, 0);
        assert_eq!(a.stats().connects, 1);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn idle_connections_are_closed_and_dialed_again_on_demand() {
    timeout(TEST_TIME, async {
        let mut members = cluster(&[1, 2], |o| o.idle_timeout = Duration::from_millis(150)).await;
        let (b, mut b_in) = members.pop().expect("b");
        let (a, _a_in) = members.pop().expect("a");
        a.send(vec![message(1, 1, 2, 0)]);
        recv_appends(&mut b_in, 1, Duration::from_secs(5)).await;
        sleep(Duration::from_millis(500)).await;
        a.send(vec![message(1, 1, 2, 1)]);
        let got = recv_appends(&mut b_in, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].index, 1);
        let stats = a.stats();
        assert_eq!(stats.connects, 2, "{stats:?}");
        assert_eq!(stats.messages_dropped, 0, "an idle close loses nothing");
        assert!(a.take_unreachable().is_empty());
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test took too long");
}

fn snapshot_chunk(offset: u64, len: usize, total: u64) -> SnapshotChunk {
    SnapshotChunk {
        group_id: 4,
        to: 2,
        from: 1,
        term: 3,
        index: 77,
        snapshot_term: 2,
        total_bytes: total,
        offset,
        data: vec![u8::try_from(offset % 251).unwrap(); len],
    }
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_chunks_arrive_in_order_and_bad_chunk_frames_close_only_their_connection() {
    timeout(TEST_TIME, async {
        // Member 3 only dials in by hand, with bad frames.
        let mut members = cluster(&[1, 2, 3], |_| {}).await;
        let (c3, _c3_in) = members.pop().expect("c");
        let (b, mut b_in) = members.pop().expect("b");
        let (a, _a_in) = members.pop().expect("a");
        let mut chunks = b_in.take_chunks().expect("chunk queue");
        // A transfer of 5 chunks, sent as the queue takes them (a full queue hands the
        // chunk back to send later).
        let mut next = 0u64;
        let mut got = Vec::new();
        while got.len() < 5 {
            if next < 5 {
                match a.send_snapshot_chunk(snapshot_chunk(next * 1000, 1000, 5000)) {
                    Ok(()) => next += 1,
                    Err(ChunkRefused::Busy(c)) => assert_eq!(c.offset, next * 1000),
                    Err(ChunkRefused::Unreachable(c)) => panic!("unreachable: {c:?}"),
                }
            }
            if let Ok(Some(c)) = timeout(Duration::from_millis(20), chunks.recv()).await {
                got.push(c);
            }
        }
        assert!(got.iter().map(|c| c.offset).eq((0..5).map(|i| i * 1000)));
        assert_eq!(got[3], snapshot_chunk(3000, 1000, 5000));
        // The per-peer bound: at most SNAPSHOT_CHUNKS_QUEUED_MAX wait; to an unknown
        // member, or breaking the wire's limits, a chunk is unreachable at once.
        let mut unknown = snapshot_chunk(0, 10, 10);
        unknown.to = 9;
        assert!(matches!(
            a.send_snapshot_chunk(unknown),
            Err(ChunkRefused::Unreachable(_))
        ));
        assert!(matches!(
            a.send_snapshot_chunk(snapshot_chunk(0, 10, 5)),
            Err(ChunkRefused::Unreachable(_))
        ));
        // A peer that never answers the handshake: its chunks wait in the queue, and one
        // more than SNAPSHOT_CHUNKS_QUEUED_MAX is handed back as busy.
        let silent = TcpListener::bind(loopback()).await.expect("bind");
        a.set_peer(9, silent.local_addr().unwrap());
        let to_nine = |offset: u64| SnapshotChunk {
            to: 9,
            ..snapshot_chunk(offset, 10, 1000)
        };
        for i in 0..SNAPSHOT_CHUNKS_QUEUED_MAX {
            a.send_snapshot_chunk(to_nine(10 * u64::try_from(i).unwrap()))
                .expect("room in the queue");
        }
        assert!(matches!(
            a.send_snapshot_chunk(to_nine(500)),
            Err(ChunkRefused::Busy(c)) if c.offset == 500
        ));

        let encoder = FrameEncoder::new(WireLimits::default()).expect("encoder");
        let mut good = Vec::new();
        encoder
            .encode_snapshot_chunk(&snapshot_chunk(0, 64, 64), &mut good)
            .unwrap();
        let errors_before = b.stats().inbound_errors;
        // A corrupted chunk frame (a flipped data byte: the checksum fails).
        let mut corrupt = good.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x40;
        let mut s = raw_handshake(b.local_addr(), 3, 2).await;
        s.write_all(&corrupt).await.unwrap();
        expect_closed(&mut s, Duration::from_secs(5), "corrupted chunk").await;
        // A truncated chunk frame, then the peer closes.
        let mut s = raw_handshake(b.local_addr(), 3, 2).await;
        s.write_all(&good[..good.len() - 10]).await.unwrap();
        s.shutdown().await.unwrap();
        expect_closed(&mut s, Duration::from_secs(5), "truncated chunk").await;
        // A sound chunk that claims to come from another member than the connection's.
        let mut s = raw_handshake(b.local_addr(), 3, 2).await;
        s.write_all(&good).await.unwrap();
        expect_closed(&mut s, Duration::from_secs(5), "chunk from another member").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.stats().inbound_errors < errors_before + 3 && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.stats().inbound_errors, errors_before + 3);
        // None of them reached the owner, and a's connection still carries chunks.
        a.send_snapshot_chunk(snapshot_chunk(0, 8, 8))
            .expect("queued");
        let c = timeout(Duration::from_secs(5), chunks.recv())
            .await
            .expect("a chunk arrives")
            .expect("queue open");
        assert_eq!(c, snapshot_chunk(0, 8, 8));
        a.shutdown().await;
        b.shutdown().await;
        c3.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[test]
fn options_that_cannot_work_are_refused_by_name() {
    let base = || TransportOptions::new(CLUSTER, 1, loopback());
    assert!(base().validate().is_ok());
    type Change = Box<dyn Fn(&mut TransportOptions)>;
    let cases: Vec<(&str, Change)> = vec![
        ("member_id", Box::new(|o| o.member_id = 0)),
        (
            "own id",
            Box::new(|o| {
                o.peers.insert(1, loopback());
            }),
        ),
        (
            "peer id zero",
            Box::new(|o| {
                o.peers.insert(0, loopback());
            }),
        ),
        (
            "send_queue_messages_max",
            Box::new(|o| o.send_queue_messages_max = 0),
        ),
        (
            "inbound_connections_max",
            Box::new(|o| o.inbound_connections_max = 0),
        ),
        (
            "inbound_queue_messages_max",
            Box::new(|o| o.inbound_queue_messages_max = 0),
        ),
        (
            "send_queue_bytes_max",
            Box::new(|o| o.send_queue_bytes_max = 1 << 20),
        ),
        (
            "handshake_timeout",
            Box::new(|o| o.handshake_timeout = Duration::ZERO),
        ),
        (
            "backoff_min",
            Box::new(|o| o.backoff_max = Duration::from_millis(1)),
        ),
        (
            "frame_bytes_max",
            Box::new(|o| o.limits.frame_bytes_max = 0),
        ),
    ];
    for (name, change) in cases {
        let mut o = base();
        change(&mut o);
        let error = o.validate().expect_err(name).to_string();
        assert!(error.contains(name), "{name}: {error}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_chunks_lost_with_a_connection_are_reported() {
    timeout(TEST_TIME, async {
        let (a, _a_in) = Transport::start(options(CLUSTER, 1)).await.expect("start");
        // A peer whose dials fail: the queued chunk is lost when the link goes down.
        let closed = TcpListener::bind(loopback()).await.expect("bind");
        let addr = closed.local_addr().unwrap();
        drop(closed);
        a.set_peer(2, addr);
        assert!(a.snapshot_chunk_room(2));
        a.send_snapshot_chunk(snapshot_chunk(0, 10, 1000))
            .expect("queued while the link is not known down");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lost = Vec::new();
        while lost.is_empty() && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
            lost = a.take_lost_snapshot_chunks();
        }
        assert_eq!(lost, vec![(2, 4)]);
        // A peer that never answers the handshake: once its queue is full there is no
        // room, and the owner need not read a chunk to hear it.
        let silent = TcpListener::bind(loopback()).await.expect("bind");
        a.set_peer(9, silent.local_addr().unwrap());
        for i in 0..SNAPSHOT_CHUNKS_QUEUED_MAX {
            assert!(a.snapshot_chunk_room(9));
            a.send_snapshot_chunk(SnapshotChunk {
                to: 9,
                ..snapshot_chunk(10 * u64::try_from(i).unwrap(), 10, 1000)
            })
            .expect("room in the queue");
        }
        assert!(!a.snapshot_chunk_room(9));
        a.shutdown().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "current_thread")]
async fn peers_are_added_and_removed_at_runtime_within_peers_max() {
    timeout(TEST_TIME, async {
        let mut members = cluster(&[1, 2], |o| o.peers_max = 2).await;
        let (b, mut b_in) = members.pop().expect("b");
        let (a, mut a_in) = members.pop().expect("a");
        until_delivered(&a, 2, &mut b_in, Duration::from_secs(5)).await;
        // A third member joins: a learns its address at runtime and talks to it.
        let (c, mut c_in) = Transport::start(options(CLUSTER, 3))
            .await
            .expect("start c");
        c.set_peer(1, a.local_addr());
        assert!(
            a.set_peer(3, c.local_addr()),
            "a has room for a second peer"
        );
        until_delivered(&a, 3, &mut c_in, Duration::from_secs(5)).await;
        until_delivered(&c, 1, &mut a_in, Duration::from_secs(5)).await;
        // Past peers_max, and for ids that are no peer's, set_peer refuses.
        assert!(
            !a.set_peer(4, loopback()),
            "a fourth member exceeds peers_max"
        );
        assert!(!a.set_peer(0, loopback()));
        assert!(!a.set_peer(1, loopback()));
        assert_eq!(a.peers().keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        // Member 2 is removed: a drops what it sends there, and 2 may not dial in again.
        assert!(a.remove_peer(2));
        assert!(!a.remove_peer(2), "removed once");
        let dropped = a.stats().messages_dropped;
        a.send(vec![heartbeat(8, 1, 2)]);
        assert_eq!(a.stats().messages_dropped, dropped + 1);
        assert!(a.take_unreachable().contains(&(2, 8)));
        // Its connection to a is new after the removal (b's outbound one may still be up
        // until it breaks): let b dial again by sending to a through a fresh transport.
        let (b2, _b2_in) = Transport::start(options(CLUSTER, 2))
            .await
            .expect("start b2");
        b2.set_peer(1, a.local_addr());
        let deadline = Instant::now() + Duration::from_secs(5);
        while b2.stats().handshakes_refused_by_peer == 0 {
            assert!(Instant::now() < deadline, "not refused: {:?}", b2.stats());
            b2.send(vec![heartbeat(9, 2, 1)]);
            sleep(Duration::from_millis(10)).await;
        }
        // And the freed slot takes another peer.
        assert!(a.set_peer(4, loopback()));
        for t in [a, b, b2, c] {
            t.shutdown().await;
        }
    })
    .await
    .expect("test took too long");
}
