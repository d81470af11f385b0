//! `nomade doctor`, cause by cause: each reason a paired device is not
//! syncing (no address, nothing answering, refused, another protocol
//! version, a clock far off), made real with nodes and hand-driven peers
//! over loopback, and the diagnosis it gets. (A full disk is in
//! `process.rs`, where a file-size limit makes writes fail.)

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use nomade_node::doctor::{diagnose, Cause};
use nomade_node::{Node, NodeConfig};
use nomade_wire::{
    Envelope, ErrorCode, ErrorMessage, Hash32, Hello, HelloAck, Message, MessageId, StreamRole,
};

mod common;
use common::bare_transport_paired_with as hand_driven;

fn config(name: &str) -> NodeConfig {
    NodeConfig {
        handshake_timeout: Duration::from_secs(1),
        ..common::config(name)
    }
}

async fn online(node: &Node) -> SocketAddr {
    node.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start")
}

fn closed_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

async fn only_cause(node: &Node) -> Cause {
    let report = diagnose(node, true).await;
    assert_eq!(report.peers.len(), 1, "{report:?}");
    report.peers[0].cause.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_no_address_and_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    online(&a).await;
    let b = Node::open(&dir.path().join("b"), config("b")).expect("open");
    let b_addr = online(&b).await;
    b.add_peer(a.device_id(), "", &[]).expect("pair");

    // Paired, no address, never connected.
    a.add_peer(b.device_id(), "b", &[]).expect("pair");
    assert_eq!(only_cause(&a).await, Cause::NoAddress);

    // An address where nothing listens.
    let nowhere = closed_port();
    a.add_peer(b.device_id(), "", &[nowhere]).expect("address");
    match only_cause(&a).await {
        Cause::Unreachable { addr, .. } => assert_eq!(addr, nowhere.to_string()),
        other => panic!("{other:?}"),
    }

    // Its real address: the doctor dials, and it syncs.
    a.add_peer(b.device_id(), "", &[b_addr]).expect("address");
    match only_cause(&a).await {
        Cause::Syncing { address, .. } => assert_eq!(address, b_addr.to_string()),
        other => panic!("{other:?}"),
    }
    let report = diagnose(&a, true).await;
    assert!(report.peers[0].ok);
    a.shutdown().await;
    b.shutdown().await;
}

/// The other device does not have this one paired (unpaired, or reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_a_device_that_does_not_have_this_one_paired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    online(&a).await;
    let b = Node::open(&dir.path().join("b"), config("b")).expect("open");
    let b_addr = online(&b).await;
    a.add_peer(b.device_id(), "b", &[b_addr]).expect("pair");
    match only_cause(&a).await {
        Cause::Refused { addr, .. } => assert_eq!(addr, b_addr.to_string()),
        other => panic!("{other:?}"),
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A device of a later version answers HELLO with PROTOCOL_VERSION_MISMATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    online(&a).await;
    let future = hand_driven(&a);
    let addr = future.local_addr().expect("addr");
    a.add_peer(future.device_id(), "future", &[addr])
        .expect("pair");
    let acceptor = tokio::spawn(async move {
        let conn = future.accept().await.expect("accept");
        let mut control = conn.accept_stream().await.expect("control");
        let hello = control.recv.recv().await.expect("recv").expect("HELLO");
        let mut tx = control.send.take().expect("bidirectional");
        let refusal = ErrorMessage {
            error_code: ErrorCode::PROTOCOL_VERSION_MISMATCH,
            error_message: "this device speaks version 2".into(),
            related_message_id: Some(hello.message_id),
        };
        tx.send(&Envelope::new(MessageId::from([5; 16]), 0, refusal))
            .await
            .expect("send");
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        future
    });
    match only_cause(&a).await {
        Cause::VersionMismatch { addr: at, ours, .. } => {
            assert_eq!(at, addr.to_string());
            assert_eq!(ours, nomade_wire::PROTOCOL_VERSION);
        }
        other => panic!("{other:?}"),
    }
    let _ = acceptor.await;
    a.shutdown().await;
}

/// A peer whose clock is two hours behind: syncing, and said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_far_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Node::open(&dir.path().join("a"), config("a")).expect("open");
    let a_addr = online(&a).await;
    let peer = hand_driven(&a);
    a.add_peer(peer.device_id(), "slow clock", &[])
        .expect("pair");
    let conn = peer
        .connect(a_addr, Some(a.device_id()))
        .await
        .expect("connect");
    let (mut tx, mut rx) = conn.open_bi(StreamRole::Control).await.expect("control");
    let two_hours_ago = nomade_node::core::now_ms() - 2 * 3600 * 1000;
    let hello = Hello {
        device_id: peer.device_id().to_string(),
        device_name: "slow clock".into(),
        protocol_version: nomade_wire::PROTOCOL_VERSION,
        capabilities: vec!["crdt-sync".into()],
        sync_state_hash: Hash32::default(),
    };
    tx.send(&Envelope::new(
        MessageId::from([1; 16]),
        two_hours_ago,
        hello,
    ))
    .await
    .expect("send");
    let ack = rx.recv().await.expect("recv").expect("answer");
    assert!(
        matches!(ack.message, Message::HelloAck(HelloAck { .. })),
        "{ack:?}"
    );
    match only_cause(&a).await {
        Cause::ClockFarOff { offset_ms, .. } => {
            assert!(
                (-2 * 3600 * 1000 - 60_000..-2 * 3600 * 1000 + 60_000).contains(&offset_ms),
                "{offset_ms}"
            )
        }
        other => panic!("{other:?}"),
    }
    let report = diagnose(&a, true).await;
    assert!(report.peers[0].ok, "a clock far off does not stop sync");
    assert!(
        report.peers[0].advice.contains("behind"),
        "{}",
        report.peers[0].advice
    );
    a.shutdown().await;
}
