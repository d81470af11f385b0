//! Two devices over real QUIC on loopback, with real data directories.

use std::time::Duration;

use nomade_node::{Node, NodeConfig};
use nomade_wire::Value;

mod common;
use common::{bare_transport_paired_with, config, hand_driven_peer, online, wait_for};

/// Pairs `acceptor` (online at `addr`) and `dialer` both ways, and
/// connects the dialer to it.
async fn pair_and_dial(acceptor: &Node, addr: std::net::SocketAddr, dialer: &Node) {
    acceptor
        .add_peer(dialer.device_id(), &dialer.device_name(), &[])
        .expect("pair");
    dialer
        .add_peer(acceptor.device_id(), &acceptor.device_name(), &[addr])
        .expect("pair");
    dialer
        .connect(addr, acceptor.device_id())
        .await
        .expect("connect");
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

    let laddr = online(&laptop).await;
    online(&phone).await;
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

/// PROTOCOL.md, "Capabilities" and "device_id": a HELLO may carry the id in
/// its 32-character form, in upper case; a peer that does not announce
/// `presence` is neither sent heartbeats nor cut off for sending none, and
/// one that announces `crdt-sync` is pulled from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_id_is_accepted_and_what_a_peer_does_not_announce_is_not_asked_of_it() {
    use nomade_wire::{Message, StreamRole};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    let addr = online(&node).await;
    let (transport, conn, answer) = hand_driven_peer(&node, addr, |h| {
        h.device_id = h.device_id.replace('-', "").to_ascii_uppercase();
        h.capabilities = vec!["crdt-sync".into()];
    })
    .await;
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
    let mut others = Vec::new();
    let _sync = next_sync_stream(&conn, &mut others).await;
    // Several times the heartbeat timeout (4 periods of 500 ms) without a beat.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        node.is_connected(&transport.device_id()),
        "cut off for silence"
    );
    assert!(conn.close_reason().is_none());
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(200), conn.accept_stream()).await
    {
        others.push(s);
    }
    assert!(
        others.iter().all(|s| s.role != StreamRole::Presence),
        "a presence stream was opened: {:?}",
        others.iter().map(|s| s.role).collect::<Vec<_>>()
    );
    // The reserved push role is refused with STOP_SENDING 0x2, unread; the
    // connection goes on.
    let mut push = conn.quinn().open_uni().await.expect("uni");
    push.write_all(&[0x04, 0x01]).await.expect("header");
    let stopped = tokio::time::timeout(Duration::from_secs(5), push.stopped())
        .await
        .expect("in time");
    assert_eq!(stopped.expect("stopped"), Some(quinn::VarInt::from_u32(2)));
    assert!(conn.close_reason().is_none());
    node.shutdown().await;
}

/// PROTOCOL.md, "Presence": a peer that announced `presence` and sends no
/// heartbeat is cut off after `missed + 1` periods, with code 0 and the
/// reason `missed heartbeats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_announcing_presence_is_closed_with_missed_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    let addr = online(&node).await;
    let (_transport, conn, _answer) = hand_driven_peer(&node, addr, |_| {}).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.quinn().closed())
        .await
        .expect("cut off within 4 periods of 500 ms, and some slack");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), 0);
            assert_eq!(&c.reason[..], b"missed heartbeats");
        }
        other => panic!("{other:?}"),
    }
    node.shutdown().await;
}

/// PROTOCOL.md, "Where ERROR travels": nobody reads the control stream after
/// HELLO_ACK, so a dialer that refuses the answer says why in the
/// connection close: code 6 for an answer naming another device, 1 for
/// another protocol version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refusing_hello_ack_closes_with_the_error_code() {
    use nomade_transport::DeviceIdentity;
    use nomade_wire::{Envelope, Hash32, HelloAck, Message, MessageId, StreamRole};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    online(&node).await;
    for (case, expected_code) in [("another device", 6u32), ("another version", 1)] {
        let acceptor = bare_transport_paired_with(&node);
        let id = acceptor.device_id();
        node.add_peer(id, "acceptor", &[]).expect("pair");
        let addr = acceptor.local_addr().expect("addr");
        let dial = {
            let node = node.clone();
            tokio::spawn(async move { node.connect(addr, id).await })
        };
        let conn = acceptor.accept().await.expect("accept");
        let mut control = conn.accept_stream().await.expect("control");
        assert_eq!(control.role, StreamRole::Control);
        let hello = control.recv.recv().await.expect("recv").expect("HELLO");
        assert!(matches!(hello.message, Message::Hello(_)), "{hello:?}");
        let ack = HelloAck {
            device_id: if case == "another device" {
                DeviceIdentity::generate()
                    .expect("id")
                    .device_id()
                    .to_string()
            } else {
                id.to_string()
            },
            device_name: "acceptor".into(),
            protocol_version: if case == "another version" { 2 } else { 1 },
            capabilities: vec![],
            sync_state_hash: Hash32::default(),
            sync_required: true,
            bulk_port: None,
        };
        let mut tx = control.send.take().expect("bidirectional");
        tx.send(&Envelope::new(MessageId::from([9; 16]), 0, ack))
            .await
            .expect("send");
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.quinn().closed())
            .await
            .expect("the dialer closes");
        match closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code.into_inner(),
                    u64::from(expected_code),
                    "{case}"
                )
            }
            other => panic!("{case}: {other:?}"),
        }
        assert!(dial.await.expect("join").is_err(), "{case}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_protocol_version_is_told_to_update() {
    use nomade_wire::{ErrorCode, Message, MessageId};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    let addr = online(&node).await;
    // A future device, speaking protocol version 2, paired with the node.
    let (transport, conn, answer) = hand_driven_peer(&node, addr, |h| h.protocol_version = 2).await;
    let future_id = transport.device_id();
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
    let addr_a = online(&a).await;
    b.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    pair_and_dial(&a, addr_a, &b).await;
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
    let addr_a = online(&a).await;
    online(&stranger).await;
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

/// The next sync stream `conn`'s node opens, its `SYNC_REQUEST` read; other
/// streams it opens meanwhile are kept in `others`.
async fn next_sync_stream(
    conn: &nomade_transport::Connection,
    others: &mut Vec<nomade_transport::IncomingStream>,
) -> nomade_transport::IncomingStream {
    use nomade_wire::{Message, StreamRole};
    loop {
        let mut s = tokio::time::timeout(Duration::from_secs(10), conn.accept_stream())
            .await
            .expect("the node opens a sync stream")
            .expect("accept");
        if s.role != StreamRole::Sync {
            others.push(s);
            continue;
        }
        let request = s.recv.recv().await.expect("recv").expect("a request");
        assert!(
            matches!(request.message, Message::SyncRequest(_)),
            "{request:?}"
        );
        return s;
    }
}

/// BAD_INPUTS #21 over the network: a peer pushing operations whose
/// dependency never came overflows the node's causal buffer. The node
/// answers `SYNC_CONFLICT`, applies none of them, and asks again on a new
/// sync stream; sent in causal order this time, they all apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_21_a_peer_overflowing_the_causal_buffer_is_asked_to_resync() {
    use nomade_wire::{
        BatchedSync, ConnectivityStatus, CrdtOperation, Edit, EntityType, Envelope, ErrorCode,
        Heartbeat, Message, MessageId, StreamRole, SyncOperation,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(
        &dir.path().join("node"),
        NodeConfig {
            max_buffered_ops: 20,
            min_backoff: Duration::from_millis(50),
            ..config("node")
        },
    )
    .expect("open");
    let addr = online(&node).await;
    let (_transport, conn, answer) = hand_driven_peer(&node, addr, |_| {}).await;
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
    let mut presence = conn.open_uni(StreamRole::Presence).await.expect("presence");
    let beats = tokio::spawn(async move {
        for n in 0u64.. {
            let mut id = [2u8; 16];
            id[8..].copy_from_slice(&n.to_le_bytes());
            let beat = Heartbeat {
                timestamp: 0,
                battery_level: None,
                connectivity: ConnectivityStatus::Unknown,
            };
            if presence
                .send(&Envelope::new(MessageId::from(id), 0, beat))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Three devices' operations relayed by this one, 9 each.
    let op = |actor: &str, counter: u64| SyncOperation {
        entity_id: "doc".into(),
        entity_type: EntityType::Document,
        operation: CrdtOperation {
            counter,
            deps: (counter > 1)
                .then(|| (actor.into(), counter - 1))
                .into_iter()
                .collect(),
            edit: Edit::Set {
                key: actor.into(),
                value: Value::Int(counter as i64),
            },
        },
        timestamp: 0,
        actor_id: actor.into(),
    };
    let actors = ["ana", "bob", "cyd"];
    let batch = |operations: Vec<SyncOperation>, n: u8| {
        Envelope::new(MessageId::from([10 + n; 16]), 0, BatchedSync { operations })
    };
    // The node's other streams (presence) are kept open here.
    let mut others = Vec::new();

    // Operations 2..=9 of each, without 1: the twenty-first overflows the
    // buffer of 20.
    let without_first: Vec<SyncOperation> = actors
        .iter()
        .flat_map(|a| (2..=9).map(|c| op(a, c)))
        .collect();
    let mut first = next_sync_stream(&conn, &mut others).await;
    let mut tx = first.send.take().expect("bidirectional");
    tx.send(&batch(without_first, 0)).await.expect("send");
    let reply = first.recv.recv().await.expect("recv").expect("an answer");
    match reply.message {
        Message::Error(e) => assert_eq!(e.error_code, ErrorCode::SYNC_CONFLICT, "{e:?}"),
        other => panic!("expected SYNC_CONFLICT, got {other:?}"),
    }
    assert_eq!(node.core().op_count(), 0, "applied before their dependency");
    assert_eq!(node.document("doc"), None);

    // The node asks again; in causal order everything applies.
    let mut second = next_sync_stream(&conn, &mut others).await;
    let mut tx = second.send.take().expect("bidirectional");
    let in_order: Vec<SyncOperation> = actors
        .iter()
        .flat_map(|a| (1..=9).map(|c| op(a, c)))
        .collect();
    tx.send(&batch(in_order, 1)).await.expect("send");
    let ack = second.recv.recv().await.expect("recv").expect("an answer");
    assert!(matches!(ack.message, Message::Ack(_)), "{ack:?}");
    assert_eq!(node.core().op_count(), 27);
    let doc = node.document("doc").expect("applied");
    for a in actors {
        assert_eq!(doc.get(a), Some(&Value::Int(9)), "{a}");
    }
    beats.abort();
    node.shutdown().await;
}

/// BAD_INPUTS #26 between two nodes: a holder whose stored artifact was
/// tampered with on disk cannot pass it on. The fetch fails with a typed
/// error, is counted, and the fetcher keeps nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_artifact_is_refused_by_the_fetcher_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open");
    let file = dir.path().join("scan.bin");
    std::fs::write(&file, vec![0x42u8; 200_000]).expect("write");
    let id = laptop.put_artifact(&file, None).expect("put");
    // Flip one byte inside the second chunk of every stored copy.
    let mut stack = vec![dir.path().join("laptop")];
    let mut tampered = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "dat") {
                let mut bytes = std::fs::read(&path).expect("read");
                bytes[70_000] ^= 1;
                std::fs::write(&path, bytes).expect("write");
                tampered += 1;
            }
        }
    }
    assert_eq!(tampered, 1);
    let laddr = online(&laptop).await;
    online(&phone).await;
    let code = laptop.pairing_code().expect("code");
    phone.pair_with(laddr, &code).await.expect("pair");
    let err = phone
        .fetch_artifact(&laptop.device_id(), id, |_| {})
        .await
        .expect_err("a tampered artifact");
    assert!(
        matches!(
            err,
            nomade_node::NodeError::Artifact(nomade_artifact::ArtifactError::ChunkHashMismatch {
                index: 1
            })
        ),
        "{err}"
    );
    assert!(!phone.artifacts().has(&id));
    let counted = phone.metrics_snapshot().errors.get("ARTIFACT").copied();
    assert_eq!(counted, Some(1), "{err}");
    laptop.shutdown().await;
    phone.shutdown().await;
}

/// A redial waiting out its backoff tries at once when a session with any
/// other peer starts (the network is evidently back), instead of sleeping out
/// a delay that grew while nothing worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_starting_wakes_the_redials_waiting_out_their_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    // After a failed dial the desk waits 15-30 s before the next; a dial
    // gives up after 1 s.
    let desk = Node::open(
        &dir.path().join("desk"),
        NodeConfig {
            min_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(1),
            ..config("desk")
        },
    )
    .expect("open desk");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open laptop");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open phone");
    // The laptop's address, where nothing listens yet.
    let laptop_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    desk.add_peer(laptop.device_id(), "laptop", &[laptop_addr])
        .expect("pin");
    desk.add_peer(phone.device_id(), "phone", &[]).expect("pin");
    laptop.add_peer(desk.device_id(), "desk", &[]).expect("pin");
    phone.add_peer(desk.device_id(), "desk", &[]).expect("pin");
    let desk_addr = online(&desk).await;
    desk.connect_known_peers().expect("dial");
    wait_for(
        || desk.metrics_snapshot().dial_failures >= 1,
        "the dial to the absent laptop to fail",
    )
    .await;

    // The laptop comes up; the desk is in its backoff and does not notice.
    laptop.start(laptop_addr).await.expect("laptop online");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!desk.is_connected(&laptop.device_id()));

    // The phone reaches the desk: that session wakes the desk's redial.
    online(&phone).await;
    phone
        .connect(desk_addr, desk.device_id())
        .await
        .expect("phone connects");
    wait_for(
        || desk.is_connected(&laptop.device_id()) && laptop.is_connected(&desk.device_id()),
        "the desk to redial the laptop (well before its 15 s backoff ends)",
    )
    .await;
    let metrics = desk.metrics_snapshot();
    assert_eq!(metrics.dial_failures, 1, "{metrics:?}");
    assert_eq!(metrics.sessions_started, 2, "{metrics:?}");
}

/// The history lives in the store: a node pushes it from there, and a
/// reconnecting peer that lacks one operation makes the pusher read about
/// that much (at most a frontier interval), not the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_reads_what_is_missing_not_the_history() {
    use nomade_crdt::LocalEdit;
    use nomade_wire::EntityType;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    for commit in 0..30 {
        let edits = (0..100)
            .map(|i| {
                (
                    EntityType::Document,
                    format!("doc-{}", commit % 7),
                    LocalEdit::Set {
                        key: format!("k{i}"),
                        value: Value::Int(commit * 100 + i),
                    },
                )
            })
            .collect();
        a.core().edit_many(edits).expect("edits");
    }
    // Opened again: the operations stored last are no longer in memory,
    // the history is read from the database.
    drop(a);
    let a = Node::open(&dir.path().join("a"), config("a")).expect("reopen");
    let a_addr = online(&a).await;
    let b_dir = dir.path().join("b");
    let b = Node::open(&b_dir, config("b")).expect("open");
    online(&b).await;
    pair_and_dial(&a, a_addr, &b).await;
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(30))
        .await
        .expect("initial sync");
    assert_eq!(b.state_hash(), a.state_hash());
    let full = a.metrics().ops_scanned.load(Ordering::Relaxed);
    assert!(full >= 3000, "the first sync read the history: {full}");

    // b goes away and comes back; one operation is new meanwhile.
    b.shutdown().await;
    drop(b);
    wait_for(|| !a.is_connected(&a.device_id()), "a to notice").await;
    a.set("doc-0", "late", 1).expect("edit");
    let before = a.metrics().ops_scanned.load(Ordering::Relaxed);
    let b = Node::open(&b_dir, config("b")).expect("reopen");
    online(&b).await;
    b.connect(a_addr, a.device_id()).await.expect("reconnect");
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(30))
        .await
        .expect("sync");
    assert_eq!(b.state_hash(), a.state_hash());
    let read = a.metrics().ops_scanned.load(Ordering::Relaxed) - before;
    assert!(read <= 400, "a reconnect read {read} stored operations");
    a.shutdown().await;
    b.shutdown().await;
}

/// What a paired device acknowledged is kept across restarts (history
/// issue: each device persists what every paired device holds), and the
/// floor below which every paired device holds the history leaves out a
/// device silent for longer than the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_survive_a_restart_and_give_the_compaction_floor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (laptop_dir, desk_dir) = (tmp.path().join("laptop"), tmp.path().join("desk"));
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("open");
    let desk = Node::open(&desk_dir, config("desk")).expect("open");
    for i in 0..30 {
        laptop.set("trip", &format!("k{i}"), i).expect("edit");
    }
    let me = laptop.device_id().to_string();
    let desk_id = desk.device_id().to_string();
    let addr = online(&laptop).await;
    online(&desk).await;
    pair_and_dial(&laptop, addr, &desk).await;
    let acked = || {
        laptop
            .core()
            .acked_by(&desk_id)
            .get(me.as_str())
            .copied()
            .unwrap_or(0)
    };
    wait_for(|| acked() >= 30, "the desk acknowledging 30 operations").await;
    // More, acknowledged within a second of the first: written at shutdown.
    laptop.set("trip", "late", 1).expect("edit");
    wait_for(|| acked() >= 31, "the desk acknowledging the last one").await;
    laptop.shutdown().await;
    desk.shutdown().await;
    drop(laptop);

    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    assert_eq!(
        laptop.core().acked_by(&desk_id).get(me.as_str()).copied(),
        Some(31),
        "what the desk acknowledged, after a restart"
    );
    let peers = laptop.peers().expect("peers");
    let now = nomade_node::core::now_ms();
    let hold = Duration::from_secs(30 * 24 * 3600);
    let own = laptop.core().version_vector();
    let floor = laptop.core().compaction_floor(&own, &peers, now, hold);
    assert_eq!(floor.get(me.as_str()).copied(), Some(31));
    // What this device itself holds bounds it too.
    let less = nomade_wire::VersionVector::from([(me.as_str().into(), 5)]);
    assert_eq!(
        laptop.core().compaction_floor(&less, &peers, now, hold),
        less
    );
    // A second paired device that never acknowledged anything holds it all back...
    let phone = nomade_transport::DeviceIdentity::generate().expect("identity");
    laptop
        .add_peer(phone.device_id(), "phone", &[])
        .expect("pair");
    let mut peers = laptop.peers().expect("peers");
    assert!(laptop
        .core()
        .compaction_floor(&own, &peers, now, hold)
        .is_empty());
    // ...until it has been silent for longer than the hold.
    for p in &mut peers {
        if p.device_id == phone.device_id().to_string() {
            p.last_seen_ms = Some(now - 31 * 24 * 3600 * 1000);
        }
    }
    assert_eq!(
        laptop
            .core()
            .compaction_floor(&own, &peers, now, hold)
            .get(me.as_str())
            .copied(),
        Some(31)
    );
}

/// Many edits of several kinds, committed a thousand at a time.
fn history(node: &Node, tag: &str, n: usize) {
    let core = node.core();
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(match i % 3 {
            0 => (
                nomade_wire::EntityType::Document,
                format!("{tag}-doc-{}", i % 50),
                nomade_crdt::LocalEdit::Set {
                    key: format!("k{}", i % 7),
                    value: Value::Int(i as i64),
                },
            ),
            1 => (
                nomade_wire::EntityType::Document,
                format!("{tag}-notes"),
                nomade_crdt::LocalEdit::Splice {
                    field: "body".into(),
                    position: 0,
                    delete: usize::from(i % 4 == 1 && i > 4),
                    insert: "ab".into(),
                },
            ),
            _ => (
                nomade_wire::EntityType::Conversation,
                format!("{tag}-chat"),
                nomade_crdt::LocalEdit::Append {
                    value: Value::Int(i as i64),
                },
            ),
        });
        if batch.len() == 1_000 {
            core.edit_many(std::mem::take(&mut batch)).expect("edits");
        }
    }
    if !batch.is_empty() {
        core.edit_many(batch).expect("edits");
    }
}

/// The history issue: a device with no paired device compacts everything
/// its snapshot covers. A device paired with it afterwards (which made edits
/// of its own meanwhile) gets the snapshot first over real QUIC, then the
/// operations after it; it keeps its own edits, the two converge, and the
/// adopted state survives a restart of the newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_history_reaches_a_new_device_as_a_snapshot_then_the_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (laptop_dir, desk_dir) = (tmp.path().join("laptop"), tmp.path().join("desk"));
    {
        let laptop = Node::open(&laptop_dir, config("laptop")).expect("open");
        history(&laptop, "l", 30_000);
        laptop.shutdown().await;
    }
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    let compacted = laptop.core().compacted();
    let me = laptop.device_id().to_string();
    assert!(
        compacted.get(me.as_str()).copied().unwrap_or(0) >= 20_000,
        "compacted at the checkpoint: {compacted:?}"
    );
    let kept = laptop.status().history;
    assert!(
        kept.compacted >= 20_000 && kept.snapshot_bytes > 0,
        "{kept:?}"
    );
    let desk = Node::open(&desk_dir, config("desk")).expect("open");
    history(&desk, "d", 500);
    let desk_own = desk.core().version_vector();
    let addr = online(&laptop).await;
    online(&desk).await;
    pair_and_dial(&laptop, addr, &desk).await;
    wait_for(
        || {
            laptop.state_hash() == desk.state_hash()
                && desk.core().version_vector().get(me.as_str())
                    == laptop.core().version_vector().get(me.as_str())
        },
        "the two to converge",
    )
    .await;
    assert!(laptop.metrics_snapshot().snapshots_sent >= 1);
    assert_eq!(desk.metrics_snapshot().snapshots_adopted, 1);
    assert_eq!(
        desk.text("d-notes", "body"),
        laptop.text("d-notes", "body"),
        "the desk's own edits kept and sent"
    );
    assert!(nomade_node::store::covers(
        &desk.core().version_vector(),
        &desk_own
    ));
    // The tail: a live edit after the snapshot.
    laptop.set("after", "k", 1).expect("edit");
    wait_for(
        || desk.document("after").is_some(),
        "a live edit after the snapshot",
    )
    .await;
    wait_for(|| laptop.state_hash() == desk.state_hash(), "convergence").await;
    let hash = desk.state_hash();
    desk.shutdown().await;
    laptop.shutdown().await;
    drop(desk);
    let desk = Node::open(&desk_dir, config("desk")).expect("reopen");
    assert_eq!(
        desk.state_hash(),
        hash,
        "the adopted state, after a restart"
    );
}

/// The silent-peer rule: a paired device silent for longer than the hold
/// no longer holds the history back; when it returns, with edits of its own
/// made while away, it is sent a snapshot, keeps its edits, and the two
/// converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_past_the_hold_returns_to_a_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (laptop_dir, desk_dir) = (tmp.path().join("laptop"), tmp.path().join("desk"));
    let hold = Duration::from_millis(300);
    let laptop_config = || NodeConfig {
        compaction_hold: hold,
        ..config("laptop")
    };
    let laptop = Node::open(&laptop_dir, laptop_config()).expect("open");
    let desk = Node::open(&desk_dir, config("desk")).expect("open");
    let addr = online(&laptop).await;
    online(&desk).await;
    pair_and_dial(&laptop, addr, &desk).await;
    laptop.set("trip", "day", 1).expect("edit");
    wait_for(|| desk.document("trip").is_some(), "the first sync").await;
    desk.shutdown().await;
    drop(desk);
    // Away longer than the hold: the laptop compacts what the desk lacks.
    tokio::time::sleep(hold * 3).await;
    history(&laptop, "l", 3_000);
    laptop.shutdown().await;
    drop(laptop);
    let laptop = Node::open(&laptop_dir, laptop_config()).expect("reopen");
    let me = laptop.device_id().to_string();
    assert!(
        laptop
            .core()
            .compacted()
            .get(me.as_str())
            .copied()
            .unwrap_or(0)
            > 1,
        "the silent desk did not hold the history back: {:?}",
        laptop.core().compacted()
    );
    let desk = Node::open(&desk_dir, config("desk")).expect("reopen");
    desk.set("away", "note", "written offline").expect("edit");
    let addr = online(&laptop).await;
    online(&desk).await;
    desk.connect(addr, laptop.device_id())
        .await
        .expect("connect");
    wait_for(
        || laptop.state_hash() == desk.state_hash() && laptop.document("away").is_some(),
        "the two to converge",
    )
    .await;
    assert_eq!(desk.metrics_snapshot().snapshots_adopted, 1);
    assert_eq!(
        laptop.document("away").and_then(|d| d.get("note").cloned()),
        Some(Value::from("written offline"))
    );
    desk.shutdown().await;
    laptop.shutdown().await;
}

/// The history issue: a pusher sends the rows of its log a peer lacks
/// entirely as they are stored (no operation decoded and encoded again),
/// and the peer, which checks every frame, converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rows_travel_as_stored_and_converge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&tmp.path().join("laptop"), config("laptop")).expect("open");
    let desk = Node::open(&tmp.path().join("desk"), config("desk")).expect("open");
    // Paired first: the laptop keeps the history the desk lacks.
    laptop
        .add_peer(desk.device_id(), "desk", &[])
        .expect("pair");
    history(&laptop, "l", 20_000);
    let addr = online(&laptop).await;
    online(&desk).await;
    desk.add_peer(laptop.device_id(), "laptop", &[addr])
        .expect("pair");
    desk.connect(addr, laptop.device_id())
        .await
        .expect("connect");
    wait_for(
        || desk.core().version_vector() == laptop.core().version_vector(),
        "the full sync",
    )
    .await;
    assert_eq!(desk.state_hash(), laptop.state_hash());
    let sent = laptop.metrics_snapshot();
    assert!(sent.runs_sent_as_stored > 0, "rows sent as stored");
    assert_eq!(sent.snapshots_sent, 0, "the history was kept");
    laptop.shutdown().await;
    desk.shutdown().await;
}

/// Nothing is echoed: what a device receives from a peer it does not send
/// back to that peer (the sync issue's line of devices at 1x).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_received_from_a_peer_are_not_sent_back_to_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&tmp.path().join("laptop"), config("laptop")).expect("open");
    let desk = Node::open(&tmp.path().join("desk"), config("desk")).expect("open");
    let addr = online(&laptop).await;
    online(&desk).await;
    pair_and_dial(&laptop, addr, &desk).await;
    desk.wait_initial_sync(&laptop.device_id(), Duration::from_secs(10))
        .await
        .expect("initial sync");
    for i in 0..200 {
        laptop
            .set("trip", &format!("k{}", i % 10), i)
            .expect("edit");
    }
    wait_for(
        || desk.core().version_vector() == laptop.core().version_vector(),
        "the edits to reach the desk",
    )
    .await;
    // Give an echo time to happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(laptop.metrics_snapshot().ops_sent, 200);
    assert_eq!(
        desk.metrics_snapshot().ops_sent,
        0,
        "the desk sent the laptop's operations back"
    );
    laptop.shutdown().await;
    desk.shutdown().await;
}

/// A line of three devices (phone - laptop - desk, the phone and the desk
/// not paired): the phone's edits reach the desk through the laptop, and
/// each operation crosses each link once, forwards only: 2x the edits in
/// all, nothing echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_three_relays_each_operation_once_per_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let phone = Node::open(&tmp.path().join("phone"), config("phone")).expect("open");
    let laptop = Node::open(&tmp.path().join("laptop"), config("laptop")).expect("open");
    let desk = Node::open(&tmp.path().join("desk"), config("desk")).expect("open");
    let laptop_addr = online(&laptop).await;
    online(&phone).await;
    online(&desk).await;
    for (node, name) in [(&phone, "phone"), (&desk, "desk")] {
        laptop.add_peer(node.device_id(), name, &[]).expect("pair");
        node.add_peer(laptop.device_id(), "laptop", &[laptop_addr])
            .expect("pair");
        node.connect(laptop_addr, laptop.device_id())
            .await
            .expect("connect");
        node.wait_initial_sync(&laptop.device_id(), Duration::from_secs(10))
            .await
            .expect("initial sync");
    }
    for i in 0..100 {
        phone.set("note", &format!("k{}", i % 10), i).expect("edit");
    }
    wait_for(
        || desk.core().version_vector() == phone.core().version_vector(),
        "the phone's edits to reach the desk",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<u64> = [&phone, &laptop, &desk]
        .iter()
        .map(|n| n.metrics_snapshot().ops_sent)
        .collect();
    assert_eq!(sent, vec![100, 100, 0], "sent by the phone, laptop, desk");
    for node in [&phone, &laptop, &desk] {
        node.shutdown().await;
    }
}

/// A triangle (every device paired with every other): the phone's edits go
/// from the phone only, nothing is relayed, since each device says with
/// `HAVE` that it pulls from the phone directly. When the desk stops
/// pulling from the phone (it unpairs it), it says so, and the laptop
/// relays the phone's later edits to it, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triangle_relays_nothing_until_a_link_breaks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let names = ["phone", "laptop", "desk"];
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::open(&tmp.path().join(n), config(n)).expect("open"))
        .collect();
    let mut addrs = Vec::new();
    for node in &nodes {
        addrs.push(online(node).await);
    }
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                a.add_peer(b.device_id(), names[j], &[addrs[j]])
                    .expect("pair");
            }
        }
    }
    for j in 0..3 {
        for i in 0..j {
            nodes[j]
                .connect(addrs[i], nodes[i].device_id())
                .await
                .expect("connect");
        }
    }
    for a in &nodes {
        for b in &nodes {
            if a.device_id() != b.device_id() {
                a.wait_initial_sync(&b.device_id(), Duration::from_secs(10))
                    .await
                    .expect("initial sync");
            }
        }
    }
    let (phone, laptop, desk) = (&nodes[0], &nodes[1], &nodes[2]);
    let sent = || -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n.metrics_snapshot().ops_sent)
            .collect()
    };
    for i in 0..100 {
        phone.set("note", &format!("k{}", i % 10), i).expect("edit");
    }
    let all_hold = |nodes: &[Node]| {
        let want = nodes[0].core().version_vector();
        nodes.iter().all(|n| n.core().version_vector() == want)
    };
    wait_for(|| all_hold(&nodes), "the phone's edits to reach both").await;
    // Longer than any relay hold a pusher could use before the served one.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(sent(), vec![200, 0, 0], "sent by the phone, laptop, desk");

    // The desk's link to the phone breaks: the laptop relays.
    desk.remove_peer(&phone.device_id()).expect("unpair");
    wait_for(
        || !desk.is_connected(&phone.device_id()) && !phone.is_connected(&desk.device_id()),
        "the desk and the phone to be apart",
    )
    .await;
    for i in 0..50 {
        phone
            .set("later", &format!("k{}", i % 10), i)
            .expect("edit");
    }
    wait_for(|| all_hold(&nodes), "the later edits to reach the desk").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(sent(), vec![250, 50, 0], "after the desk dropped the phone");
    assert_eq!(laptop.state_hash(), desk.state_hash());
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Compression (the `"lz4"` capability, docs/PROTOCOL.md "Compressed
/// frames"): the same history synced to a new device with and without it
/// gives the same state, and with it far fewer bytes on the wire when the
/// operations repeat themselves (here: the same long values, field names
/// and device ids, as a document's history does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_sync_frames_carry_the_same_history_in_fewer_bytes() {
    async fn received(compress: bool) -> u64 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let with = |name: &str| NodeConfig {
            compress,
            ..config(name)
        };
        let laptop = Node::open(&tmp.path().join("laptop"), with("laptop")).expect("open");
        let note = "meet at the station at nine, bring the tickets and the map; ".repeat(4);
        let edits = (0..300)
            .map(|i| {
                (
                    nomade_wire::EntityType::Document,
                    format!("trip-{}", i % 3),
                    nomade_crdt::LocalEdit::Set {
                        key: format!("note-{}", i % 50),
                        value: Value::from(note.as_str()),
                    },
                )
            })
            .collect();
        laptop.core().edit_many(edits).expect("edits");
        let phone = Node::open(&tmp.path().join("phone"), with("phone")).expect("open");
        let addr = online(&laptop).await;
        online(&phone).await;
        let before = phone.metrics_snapshot().bytes_received;
        pair_and_dial(&laptop, addr, &phone).await;
        phone
            .wait_initial_sync(&laptop.device_id(), Duration::from_secs(20))
            .await
            .expect("initial sync");
        assert_eq!(phone.state_hash(), laptop.state_hash());
        let bytes = phone.metrics_snapshot().bytes_received - before;
        laptop.shutdown().await;
        phone.shutdown().await;
        bytes
    }
    let plain = received(false).await;
    let packed = received(true).await;
    eprintln!("initial sync of 300 operations: {packed} bytes compressed, {plain} without");
    assert!(
        packed * 2 < plain,
        "{packed} bytes compressed, {plain} without"
    );
}

/// What a connection learned about the path (its MTU, an address-validation
/// token) is kept in the store at shutdown, so that after both devices
/// restart the next connection needs neither a Retry nor MTU probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_after_both_restart_reuses_what_the_path_taught() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (laptop_dir, desk_dir) = (tmp.path().join("laptop"), tmp.path().join("desk"));
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("open");
    let desk = Node::open(&desk_dir, config("desk")).expect("open");
    laptop.set("trip", "day", 1).expect("edit");
    let addr = online(&laptop).await;
    online(&desk).await;
    pair_and_dial(&laptop, addr, &desk).await;
    desk.wait_initial_sync(&laptop.device_id(), Duration::from_secs(10))
        .await
        .expect("sync");
    assert_eq!(
        laptop.status().metrics.retries_sent,
        1,
        "a first dial is validated by a Retry"
    );
    // Path MTU discovery and the token take a few round trips after the
    // handshake: give them time before shutting down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    laptop.shutdown().await;
    desk.shutdown().await;
    let (laptop_id, desk_id) = (laptop.device_id(), desk.device_id());
    drop((laptop, desk));

    let known = |dir: &std::path::Path| {
        nomade_node::store::Store::open(&dir.join("nomade.redb"))
            .expect("store")
            .known_paths()
            .expect("known paths")
    };
    let (desk_known, laptop_known) = (known(&desk_dir), known(&laptop_dir));
    let loopback: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    assert!(desk_known
        .mtus
        .iter()
        .any(|(ip, mtu)| *ip == loopback && *mtu > 1200));
    assert!(laptop_known
        .mtus
        .iter()
        .any(|(ip, mtu)| *ip == loopback && *mtu > 1200));
    assert!(!desk_known.tokens.is_empty(), "the dialer kept a token");

    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    let desk = Node::open(&desk_dir, config("desk")).expect("reopen");
    laptop.set("trip", "night", 2).expect("edit");
    let addr = online(&laptop).await;
    online(&desk).await;
    desk.connect(addr, laptop_id).await.expect("reconnect");
    desk.wait_initial_sync(&laptop_id, Duration::from_secs(10))
        .await
        .expect("sync");
    assert_eq!(
        desk.document("trip").and_then(|d| d.get("night").cloned()),
        Some(Value::from(2))
    );
    assert_eq!(
        laptop.status().metrics.retries_sent,
        0,
        "the token spared the Retry"
    );
    let probes = |node: &Node, peer| {
        node.connection_stats(&peer)
            .map(|s| s.path.sent_plpmtud_probes)
    };
    assert_eq!(
        probes(&desk, laptop_id),
        Some(0),
        "no MTU probe from the dialer"
    );
    assert_eq!(
        probes(&laptop, desk_id),
        Some(0),
        "no MTU probe from the acceptor"
    );
    laptop.shutdown().await;
    desk.shutdown().await;
}
