//! Two devices over real QUIC on loopback, with real data directories.

use std::time::Duration;

use nomade_node::{Node, NodeConfig};
use nomade_transport::RateLimits;
use nomade_wire::Value;

fn config(name: &str) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits: RateLimits::OFF,
        heartbeat_period: Duration::from_millis(500),
        ..NodeConfig::default()
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_by_code_sync_both_ways_and_move_an_artifact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open laptop");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open phone");
    // Offline, concurrent, conflicting edits.
    laptop.set("trip", "hotel", "Ritz").expect("edit");
    laptop
        .splice_text("trip", "notes", 0, 0, "pack light")
        .expect("edit");
    phone.set("trip", "hotel", "Savoy").expect("edit");
    phone
        .conv_append("chat", "hello from the phone")
        .expect("edit");
    let file = dir.path().join("photo.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let id = laptop.put_artifact(&file, Some("image/jpeg")).expect("put");
    laptop
        .set("trip", "photo", id.to_reference())
        .expect("edit");

    let laddr = laptop
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    phone
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    let code = laptop.pairing_code().expect("code");
    let peer = phone.pair_with(laddr, &code).await.expect("pair");
    assert_eq!(peer, laptop.device_id());

    phone
        .wait_initial_sync(&laptop.device_id(), Duration::from_secs(10))
        .await
        .expect("phone synced");
    laptop
        .wait_initial_sync(&phone.device_id(), Duration::from_secs(10))
        .await
        .expect("laptop synced");
    wait_for(|| laptop.state_hash() == phone.state_hash(), "convergence").await;
    assert_eq!(laptop.document("trip"), phone.document("trip"));
    assert_eq!(phone.text("trip", "notes").as_deref(), Some("pack light"));
    assert_eq!(
        laptop.conversation("chat"),
        Some(vec![Value::from("hello from the phone")])
    );
    // Both devices were paired and remember each other.
    assert_eq!(laptop.peers().expect("peers").len(), 1);
    assert_eq!(phone.peers().expect("peers").len(), 1);

    // The artifact follows the sync.
    wait_for(|| phone.artifacts().has(&id), "artifact").await;
    let out = dir.path().join("out.bin");
    phone.export_artifact(&id, &out).expect("export");
    assert_eq!(std::fs::read(&out).expect("read"), data);

    // An id the laptop does not hold: a typed error, nothing kept, and the
    // connection goes on serving the next fetch.
    let unknown = nomade_artifact::ArtifactId::of(b"never stored anywhere");
    match phone.fetch_artifact(&peer, unknown, |_| {}).await {
        Err(nomade_node::NodeError::Artifact(nomade_artifact::ArtifactError::Peer {
            code,
            ..
        })) => assert_eq!(code, nomade_wire::ErrorCode::ARTIFACT_NOT_FOUND),
        other => panic!("expected ARTIFACT_NOT_FOUND, got {other:?}"),
    }
    assert!(!phone.artifacts().has(&unknown));
    assert!(!phone.artifacts().has_partial(&unknown));
    let big: Vec<u8> = (0..400_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let big_file = dir.path().join("big.bin");
    std::fs::write(&big_file, &big).expect("write");
    let big_id = laptop.put_artifact(&big_file, None).expect("put");
    assert!(!phone.artifacts().has(&big_id));
    let mut last = None;
    phone
        .fetch_artifact(&peer, big_id, |p| last = Some(*p))
        .await
        .expect("fetch after a refused one");
    let last = last.expect("progress reported");
    assert_eq!((last.bytes_done, last.bytes_total), (400_000, 400_000));
    assert_eq!(last.chunks_done, last.chunks_total);

    // A live edit reaches the other side.
    phone
        .splice_text("trip", "notes", 0, 0, "Please ")
        .expect("edit");
    wait_for(
        || laptop.text("trip", "notes").as_deref() == Some("Please pack light"),
        "live edit",
    )
    .await;
    assert_eq!(laptop.state_hash(), phone.state_hash());
    laptop.shutdown().await;
    phone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_protocol_version_is_told_to_update() {
    use nomade_transport::{Config, DeviceIdentity, PairedSet, Transport};
    use nomade_wire::{Envelope, ErrorCode, Hash32, Hello, Message, MessageId, StreamRole};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    let addr = node
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    // A future device, speaking protocol version 2, paired with the node.
    let future = DeviceIdentity::generate().expect("identity");
    let future_id = future.device_id();
    node.add_peer(future_id, "future", &[]).expect("pair");
    let paired = PairedSet::new();
    paired.insert(node.device_id());
    let transport = Transport::bind(
        future,
        paired,
        "127.0.0.1:0".parse().expect("addr"),
        Config::default(),
    )
    .expect("bind");
    let conn = transport
        .connect(addr, Some(node.device_id()))
        .await
        .expect("connect");
    let (mut tx, mut rx) = conn
        .open_bi(StreamRole::Control)
        .await
        .expect("control stream");
    let hello = Hello {
        device_id: future_id.to_string(),
        device_name: "future".into(),
        protocol_version: 2,
        capabilities: vec![],
        sync_state_hash: Hash32::default(),
    };
    tx.send(&Envelope::new(MessageId::from([1; 16]), 0, hello))
        .await
        .expect("send");
    let answer = rx.recv().await.expect("recv").expect("an answer");
    match answer.message {
        Message::Error(e) => {
            assert_eq!(e.error_code, ErrorCode::PROTOCOL_VERSION_MISMATCH);
            assert!(e.error_message.contains("update"), "{}", e.error_message);
            assert_eq!(e.related_message_id, Some(MessageId::from([1; 16])));
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // The connection is closed and no session is kept.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");
    assert!(!node.is_connected(&future_id));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_heartbeats_and_metrics_are_reported() {
    use nomade_wire::PresenceStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    let b = Node::open(&dir.path().join("b"), config("b")).expect("open");
    let addr_a = a
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    b.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    a.add_peer(b.device_id(), "b", &[]).expect("pair");
    b.add_peer(a.device_id(), "a", &[addr_a]).expect("pair");
    b.connect(addr_a, a.device_id()).await.expect("connect");
    a.set_presence(PresenceStatus::Busy, Some("in a meeting".into()));
    wait_for(
        || b.presence(&a.device_id()).status == Some(PresenceStatus::Busy),
        "presence update",
    )
    .await;
    let p = b.presence(&a.device_id());
    assert!(p.online);
    assert_eq!(p.message.as_deref(), Some("in a meeting"));
    assert!(p.last_heard_ms_ago.is_some());

    // Synced operations show up in the metrics and on the Prometheus endpoint.
    for i in 0..20 {
        a.set("doc", "n", i).expect("edit");
    }
    wait_for(|| b.state_hash() == a.state_hash(), "sync").await;
    let m = b.metrics().snapshot();
    assert!(m.ops_applied >= 20, "{m:?}");
    assert!(
        m.sync_frames_received >= 1 && m.sync_frames_received <= m.ops_applied,
        "{m:?}"
    );
    let http = nomade_node::metrics_http::serve(b.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let mut sock = tokio::net::TcpStream::connect(http).await.expect("connect");
    sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    sock.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("nomade_ops_applied_total"), "{body}");

    // A peer that goes away is reported offline.
    a.shutdown().await;
    wait_for(|| !b.presence(&a.device_id()).online, "offline").await;
    b.shutdown().await;
}

/// BAD_INPUTS #1 and #5 between two nodes: refused, counted, and cut off once unpaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaired_device_is_refused_and_an_unpaired_peer_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    let stranger = Node::open(&dir.path().join("s"), config("stranger")).expect("open");
    let addr_a = a
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    stranger
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    // The stranger pins the node, but the node never paired with it.
    stranger
        .add_peer(a.device_id(), "a", &[addr_a])
        .expect("pin");
    let err = stranger
        .connect(addr_a, a.device_id())
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("not paired") || err.to_string().contains("refused"),
        "{err}"
    );
    assert!(!a.is_connected(&stranger.device_id()));
    // Logged and counted (BAD_INPUTS #1), and exported with the metrics.
    let refused = || {
        a.metrics_snapshot()
            .rejected_input
            .get("handshake")
            .copied()
            .unwrap_or(0)
    };
    wait_for(|| refused() >= 1, "the refusal counted").await;
    let text = a.metrics_snapshot().to_prometheus();
    assert!(
        text.contains(&format!(
            "nomade_rejected_input_total{{kind=\"handshake\"}} {}",
            refused()
        )),
        "{text}"
    );
    a.set("d", "k", 1).expect("edit");
    assert_eq!(stranger.document("d"), None, "nothing leaked");

    // Paired, connected, then unpaired: the connection is closed.
    a.add_peer(stranger.device_id(), "s", &[]).expect("pair");
    stranger
        .connect(addr_a, a.device_id())
        .await
        .expect("now accepted");
    wait_for(|| stranger.document("d").is_some(), "sync once paired").await;
    a.remove_peer(&stranger.device_id()).expect("unpair");
    wait_for(
        || !stranger.is_connected(&a.device_id()),
        "connection closed",
    )
    .await;
    assert!(stranger.connect(addr_a, a.device_id()).await.is_err());
    a.shutdown().await;
    stranger.shutdown().await;
}
