//! Transport behaviour over real QUIC endpoints on 127.0.0.1.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Instant;

use raft::eraftpb;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::tls::{CertificateAuthority, TlsMaterial};
use super::*;
use crate::proto::{kvpb, metapb, raft_serverpb::SnapshotMeta};

/// Transport logs, shown only for failing tests (the test writer is captured).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ringkv=debug")
        .with_test_writer()
        .try_init();
}

#[derive(Debug)]
enum InboxEvent {
    Delivered(RaftMessage),
    Unreachable { region_id: u64, to_peer_id: u64 },
    SnapshotReported { region_id: u64, ok: bool },
}

struct ChannelInbox(UnboundedSender<InboxEvent>);

impl RaftInbox for ChannelInbox {
    fn deliver(&self, msg: RaftMessage) {
        let _ = self.0.send(InboxEvent::Delivered(msg));
    }
    fn report_unreachable(&self, region_id: u64, to_peer_id: u64) {
        let _ = self.0.send(InboxEvent::Unreachable {
            region_id,
            to_peer_id,
        });
    }
    fn report_snapshot(&self, region_id: u64, _to_peer_id: u64, ok: bool) {
        let _ = self.0.send(InboxEvent::SnapshotReported { region_id, ok });
    }
}

/// Answers a get with the key as the value and a put with `done`.
struct EchoHandler;

impl ForwardHandler for EchoHandler {
    fn handle(&self, req: ForwardRequest) -> Pin<Box<dyn Future<Output = ForwardResponse> + Send>> {
        Box::pin(async move {
            let result = match req.request.and_then(|request| request.op) {
                Some(kvpb::kv_request::Op::Get(get)) => {
                    kvpb::kv_response::Result::Get(kvpb::GetResponse {
                        found: true,
                        value: get.key,
                    })
                }
                Some(_) => kvpb::kv_response::Result::Done(true),
                None => kvpb::kv_response::Result::OtherError("empty request".into()),
            };
            ForwardResponse {
                response: Some(kvpb::KvResponse {
                    result: Some(result),
                }),
            }
        })
    }
}

struct TestStore {
    transport: Transport,
    events: UnboundedReceiver<InboxEvent>,
    snap_dir: tempfile::TempDir,
}

impl TestStore {
    async fn start(
        store_id: u64,
        store_addrs: &HashMap<u64, SocketAddr>,
        tls: TlsMaterial,
        queue_capacity: usize,
    ) -> TestStore {
        init_tracing();
        let snap_dir = tempfile::tempdir().expect("snapshot dir");
        let (events_tx, events) = unbounded_channel();
        let config = TransportConfig {
            store_id,
            listen_addr: store_addrs[&store_id],
            store_addrs: store_addrs.clone(),
            tls,
            snap_dir: snap_dir.path().to_path_buf(),
            queue_capacity,
        };
        let transport = Transport::start(
            config,
            Arc::new(ChannelInbox(events_tx)),
            Arc::new(EchoHandler),
        )
        .await
        .expect("transport starts");
        TestStore {
            transport,
            events,
            snap_dir,
        }
    }

    /// Waits for `count` deliveries (ignoring other events) or panics at the deadline.
    async fn expect_deliveries(&mut self, count: usize, within: Duration) -> Vec<RaftMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut delivered = Vec::new();
        while delivered.len() < count {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(InboxEvent::Delivered(message))) => delivered.push(message),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!(
                    "only {} of {count} messages delivered within {within:?}",
                    delivered.len()
                ),
            }
        }
        delivered
    }

    /// Waits for the snapshot report of `region_id` or panics at the deadline.
    async fn expect_snapshot_report(&mut self, region_id: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(InboxEvent::SnapshotReported { region_id: r, ok })) if r == region_id => {
                    return ok
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    panic!("no snapshot report for region {region_id} within {within:?}")
                }
            }
        }
    }

    fn drain_events(&mut self) -> Vec<InboxEvent> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }
}

/// Free loopback ports for a set of stores, so every transport can know every address up front.
fn reserve_addrs(store_ids: &[u64]) -> HashMap<u64, SocketAddr> {
    let sockets: Vec<_> = store_ids
        .iter()
        .map(|&id| {
            (
                id,
                UdpSocket::bind("127.0.0.1:0").expect("bind probe socket"),
            )
        })
        .collect();
    sockets
        .iter()
        .map(|(id, socket)| (*id, socket.local_addr().expect("probe address")))
        .collect()
}

fn peer(region_id: u64, store_id: u64) -> metapb::Peer {
    metapb::Peer {
        id: region_id * 100 + store_id,
        store_id,
        ..Default::default()
    }
}

fn raft_message(
    region_id: u64,
    from_store: u64,
    to_store: u64,
    inner: eraftpb::Message,
) -> RaftMessage {
    RaftMessage {
        region_id,
        from_peer: Some(peer(region_id, from_store)),
        to_peer: Some(peer(region_id, to_store)),
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: 1,
            version: 1,
        }),
        message: protobuf::Message::write_to_bytes(&inner)
            .expect("encode eraftpb message")
            .into(),
        is_tombstone: false,
        hibernate: false,
        disk_low: false,
        vote_refusal_ms: 0,
    }
}

fn heartbeat(region_id: u64, term: u64, from_store: u64, to_store: u64) -> RaftMessage {
    let mut inner = eraftpb::Message::default();
    inner.set_msg_type(eraftpb::MessageType::MsgHeartbeat);
    inner.set_term(term);
    raft_message(region_id, from_store, to_store, inner)
}

fn snapshot_message(
    region_id: u64,
    from_store: u64,
    to_store: u64,
    meta: &SnapshotMeta,
) -> RaftMessage {
    let mut snapshot = eraftpb::Snapshot::default();
    snapshot.set_data(prost::Message::encode_to_vec(meta).into());
    let mut inner = eraftpb::Message::default();
    inner.set_msg_type(eraftpb::MessageType::MsgSnapshot);
    inner.set_snapshot(snapshot);
    raft_message(region_id, from_store, to_store, inner)
}

fn get_request(key: &'static [u8]) -> ForwardRequest {
    ForwardRequest {
        request: Some(kvpb::KvRequest {
            op: Some(kvpb::kv_request::Op::Get(kvpb::GetRequest {
                key: bytes::Bytes::from_static(key),
                ..Default::default()
            })),
        }),
    }
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_many_regions_arrive_and_forward_round_trips() {
    let ca = CertificateAuthority::generate("test cluster").expect("CA");
    let addrs = reserve_addrs(&[1, 2]);
    let mut store_a = TestStore::start(1, &addrs, ca.issue("a").expect("cert a"), 8192).await;
    let mut store_b = TestStore::start(2, &addrs, ca.issue("b").expect("cert b"), 8192).await;

    let mut sent = BTreeSet::new();
    for region_id in 1..=5 {
        for term in 1..=4 {
            store_a.transport.send(heartbeat(region_id, term, 1, 2));
            sent.insert((region_id, term));
        }
    }
    let delivered = store_b
        .expect_deliveries(sent.len(), Duration::from_secs(5))
        .await;
    let received: BTreeSet<_> = delivered
        .iter()
        .map(|message| {
            let inner: eraftpb::Message =
                protobuf::Message::parse_from_bytes(&message.message).expect("inner message");
            assert_eq!(message.to_peer, Some(peer(message.region_id, 2)));
            (message.region_id, inner.get_term())
        })
        .collect();
    assert_eq!(received, sent, "every message of every region arrives once");

    let response = store_a
        .transport
        .forward(2, get_request(b"k1"), Duration::from_secs(3))
        .await
        .expect("forward A -> B");
    assert_eq!(
        response.response.and_then(|response| response.result),
        Some(kvpb::kv_response::Result::Get(kvpb::GetResponse {
            found: true,
            value: bytes::Bytes::from_static(b"k1"),
        }))
    );
    store_b
        .transport
        .forward(1, get_request(b"k2"), Duration::from_secs(3))
        .await
        .expect("forward B -> A");
    assert!(
        store_a
            .drain_events()
            .iter()
            .all(|event| !matches!(event, InboxEvent::Unreachable { .. })),
        "a healthy link reports nothing unreachable"
    );

    store_a.transport.shutdown().await;
    store_b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_with_certificates_from_another_ca_are_refused() {
    let cluster_ca = CertificateAuthority::generate("test cluster").expect("CA");
    // Same name, different key: only the signature tells them apart.
    let foreign_ca = CertificateAuthority::generate("test cluster").expect("foreign CA");
    let addrs = reserve_addrs(&[2, 3, 4]);
    let mut store_b =
        TestStore::start(2, &addrs, cluster_ca.issue("b").expect("cert b"), 8192).await;
    // Store 3 lives entirely under the foreign CA: it also refuses B's certificate.
    let mut foreign =
        TestStore::start(3, &addrs, foreign_ca.issue("foreign").expect("cert"), 8192).await;
    // Store 4 trusts the cluster CA but presents a foreign certificate: only B's
    // client-certificate check stands in its way.
    let impostor_tls = TlsMaterial {
        ca_cert_pem: cluster_ca.cert_pem().to_owned(),
        ..foreign_ca.issue("impostor").expect("cert")
    };
    let mut impostor = TestStore::start(4, &addrs, impostor_tls, 8192).await;

    // Keep sending for the whole window: every message must vanish or be reported, never arrive.
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut term = 0;
    let mut unreachable = HashMap::from([(3u64, 0usize), (4, 0)]);
    while started.elapsed() < window {
        term += 1;
        foreign.transport.send(heartbeat(1, term, 3, 2));
        impostor.transport.send(heartbeat(1, term, 4, 2));
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (store_id, intruder) in [(3, &mut foreign), (4, &mut impostor)] {
            for event in intruder.drain_events() {
                if let InboxEvent::Unreachable {
                    region_id,
                    to_peer_id,
                } = event
                {
                    assert_eq!((region_id, to_peer_id), (1, peer(1, 2).id));
                    *unreachable.entry(store_id).or_default() += 1;
                }
            }
        }
        let delivered = store_b
            .drain_events()
            .into_iter()
            .filter(|event| matches!(event, InboxEvent::Delivered(_)))
            .count();
        assert_eq!(
            delivered, 0,
            "a store with a foreign certificate got a message through"
        );
    }
    for (store_id, count) in &unreachable {
        assert!(
            *count > 0,
            "refused store {store_id} must report its messages unreachable ({term} sent)"
        );
    }

    for intruder in [&foreign, &impostor] {
        let result = intruder
            .transport
            .forward(2, get_request(b"k"), Duration::from_secs(2))
            .await;
        assert!(
            result.is_err(),
            "forward from a foreign store must fail, got {result:?}"
        );
    }
    for store_id in [3, 4] {
        let result = store_b
            .transport
            .forward(store_id, get_request(b"k"), Duration::from_secs(2))
            .await;
        assert!(
            result.is_err(),
            "forward to foreign store {store_id} must fail, got {result:?}"
        );
    }

    foreign.transport.shutdown().await;
    impostor.transport.shutdown().await;
    store_b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_files_stream_intact_and_corruption_is_refused() {
    let ca = CertificateAuthority::generate("test cluster").expect("CA");
    let addrs = reserve_addrs(&[1, 2]);
    let mut store_a = TestStore::start(1, &addrs, ca.issue("a").expect("cert a"), 8192).await;
    let mut store_b = TestStore::start(2, &addrs, ca.issue("b").expect("cert b"), 8192).await;

    let data = pseudo_random_bytes(3 * 1024 * 1024 + 123);
    let good = SnapshotMeta {
        file_name: "region-7-5-100.snap".into(),
        size_bytes: data.len() as u64,
        checksum: xxhash_rust::xxh3::xxh3_64(&data),
        kv_count: 42,
        ..Default::default()
    };
    let corrupt = SnapshotMeta {
        file_name: "region-8-5-100.snap".into(),
        checksum: good.checksum ^ 1,
        ..good.clone()
    };
    for meta in [&good, &corrupt] {
        std::fs::write(store_a.snap_dir.path().join(&meta.file_name), &data).expect("write file");
    }

    store_a.transport.send(snapshot_message(7, 1, 2, &good));
    let delivered = store_b.expect_deliveries(1, Duration::from_secs(10)).await;
    assert_eq!(delivered[0].region_id, 7);
    let received = std::fs::read(store_b.snap_dir.path().join(&good.file_name))
        .expect("snapshot file on the receiver");
    assert!(received == data, "snapshot file differs after transfer");
    assert!(
        store_a
            .expect_snapshot_report(7, Duration::from_secs(10))
            .await,
        "a verified snapshot reports success"
    );

    store_a.transport.send(snapshot_message(8, 1, 2, &corrupt));
    assert!(
        !store_a
            .expect_snapshot_report(8, Duration::from_secs(10))
            .await,
        "a snapshot failing its checksum reports failure"
    );
    // The receiver delivers before it acks, so by now any delivery would be queued.
    assert!(
        store_b
            .drain_events()
            .iter()
            .all(|event| !matches!(event, InboxEvent::Delivered(_))),
        "a corrupt snapshot must not reach raft"
    );
    let leftovers: Vec<_> = std::fs::read_dir(store_b.snap_dir.path())
        .expect("list receiver snap dir")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != &good.file_name)
        .collect();
    assert!(
        leftovers.is_empty(),
        "corrupt snapshot left files: {leftovers:?}"
    );

    store_a.transport.shutdown().await;
    store_b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_never_blocks_and_reports_unreachable_when_the_store_is_away() {
    let ca = CertificateAuthority::generate("test cluster").expect("CA");
    // Store 9 is a UDP socket that never answers: the handshake hangs until CONNECT_TIMEOUT.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("silent socket");
    let mut addrs = reserve_addrs(&[1]);
    addrs.insert(9, silent.local_addr().expect("silent address"));
    let queue_capacity = 16;
    let mut store_a =
        TestStore::start(1, &addrs, ca.issue("a").expect("cert a"), queue_capacity).await;

    const MESSAGES: u64 = 10_000;
    let transport = store_a.transport.clone();
    // From a plain thread, as the raftstore pollers call it.
    let elapsed = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for term in 1..=MESSAGES {
            transport.send(heartbeat(1, term, 1, 9));
        }
        transport.send(heartbeat(2, 1, 1, 77)); // store 77 has no address
        started.elapsed()
    })
    .await
    .expect("sending thread");
    assert!(
        elapsed < Duration::from_secs(2),
        "send blocked: {elapsed:?} for {MESSAGES} messages"
    );

    // All but the queued ones are reported at once, the queued ones once the connect attempt
    // fails: the queue must not stall while the store is away.
    let expected = MESSAGES as usize + 1;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(3);
    let mut unreachable = 0;
    let mut unknown_store_reported = false;
    while unreachable < expected {
        match tokio::time::timeout_at(deadline, store_a.events.recv()).await {
            Ok(Some(InboxEvent::Unreachable { region_id, .. })) => {
                unreachable += 1;
                unknown_store_reported |= region_id == 2;
            }
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(
        unreachable, expected,
        "every dropped message is reported unreachable"
    );
    assert!(
        unknown_store_reported,
        "a message for an unknown store is reported"
    );

    store_a.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_queue_capacity_is_rejected() {
    let ca = CertificateAuthority::generate("test cluster").expect("CA");
    let addrs = reserve_addrs(&[1]);
    let (events_tx, _events) = unbounded_channel();
    let config = TransportConfig {
        store_id: 1,
        listen_addr: addrs[&1],
        store_addrs: addrs.clone(),
        tls: ca.issue("a").expect("cert"),
        snap_dir: std::env::temp_dir(),
        queue_capacity: 0,
    };
    let result = Transport::start(
        config,
        Arc::new(ChannelInbox(events_tx)),
        Arc::new(EchoHandler),
    )
    .await;
    assert!(matches!(result, Err(TransportError::InvalidConfig(_))));
}
