//! Bulk connections: a second endpoint per device, for artifact streams
//! only, authenticated as the main one.

use std::time::Duration;

use nomade_transport::{Config, TransportError};
use nomade_wire::{Envelope, ErrorCode, Message, StreamRole};

/// An artifact stream on a bulk connection carries frames both ways; the
/// accepting side sees a bulk connection from the dialer, and the two
/// devices' main connection is another one, unaffected.
#[tokio::test]
async fn a_bulk_connection_carries_artifact_streams_between_paired_devices() {
    let (a, b) = crate::pair();
    let port = b.bulk_port().expect("a bulk endpoint by default");
    assert_ne!(Some(port), b.local_addr().ok().map(|x| x.port()));
    let main = a
        .connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("connect");
    let accepted_main = b.accept().await.expect("accept");
    assert!(!main.is_bulk() && !accepted_main.is_bulk());
    let addr = std::net::SocketAddr::new(b.local_addr().expect("addr").ip(), port);
    let bulk = a.connect_bulk(addr, b.device_id()).await.expect("bulk");
    let accepted = b.accept().await.expect("accept bulk");
    assert!(bulk.is_bulk() && accepted.is_bulk());
    assert_eq!(accepted.peer(), a.device_id());
    let (mut tx, mut rx) = bulk.open_bi(StreamRole::Artifact).await.expect("open");
    for n in 0..200 {
        tx.send(&crate::beat(n)).await.expect("send");
    }
    let mut incoming = accepted.accept_stream().await.expect("stream");
    assert_eq!(incoming.role, StreamRole::Artifact);
    for n in 0..200 {
        assert_eq!(
            incoming.recv.recv().await.expect("recv"),
            Some(crate::beat(n))
        );
    }
    let mut back = incoming.send.take().expect("bidirectional");
    back.send(&crate::beat(-1)).await.expect("reply");
    assert_eq!(rx.recv().await.expect("recv"), Some(crate::beat(-1)));
    // What runs on the bulk connection's side runs there.
    let on_bulk = bulk
        .spawn(async { std::thread::current().name().map(str::to_string) })
        .await
        .expect("ran");
    assert_eq!(on_bulk.as_deref(), Some("nomade-bulk"));
    // The main connection is another, and still works.
    assert_ne!(main.quinn().stable_id(), bulk.quinn().stable_id());
    let mut s = main.open_uni(StreamRole::Presence).await.expect("open");
    s.send(&crate::beat(9)).await.expect("send");
    let mut inc = accepted_main.accept_stream().await.expect("accept");
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(crate::beat(9)));
}

/// A bulk connection carries artifact streams only: this side will not
/// open another kind, and a peer that does gets an ERROR (code 2) on it,
/// counted as a bad stream header, the connection going on.
#[tokio::test]
async fn a_bulk_connection_refuses_every_stream_but_artifact_streams() {
    let (a, b) = crate::pair();
    let addr = std::net::SocketAddr::new(
        b.local_addr().expect("addr").ip(),
        b.bulk_port().expect("port"),
    );
    let bulk = a.connect_bulk(addr, b.device_id()).await.expect("bulk");
    let accepted = b.accept().await.expect("accept bulk");
    for role in [StreamRole::Control, StreamRole::Sync, StreamRole::Presence] {
        assert!(matches!(
            bulk.open(role).await,
            Err(TransportError::NotOnBulk(r)) if r == role
        ));
    }
    for role in [StreamRole::Control, StreamRole::Sync, StreamRole::Relay] {
        let (mut raw, mut raw_recv) = bulk.quinn().open_bi().await.expect("raw stream");
        raw.write_all(&nomade_wire::StreamHeader::new(role).to_bytes())
            .await
            .expect("header");
        let reply = tokio::time::timeout(Duration::from_secs(5), raw_recv.read_to_end(4096))
            .await
            .expect("in time")
            .expect("an ERROR then FIN");
        match Envelope::decode(&reply).expect("one ERROR frame").message {
            Message::Error(e) => assert_eq!(e.error_code, ErrorCode::INVALID_MESSAGE, "{role:?}"),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    assert_eq!(b.rejected_input().stream_headers, 3);
    // An artifact stream afterwards is the first one delivered.
    let (mut tx, _rx) = bulk.open_bi(StreamRole::Artifact).await.expect("open");
    tx.send(&crate::beat(1)).await.expect("send");
    let mut inc = accepted.accept_stream().await.expect("stream");
    assert_eq!(inc.role, StreamRole::Artifact);
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(crate::beat(1)));
}

/// A device not paired with the bulk endpoint's owner is refused there as
/// on the main endpoint, and no pairing code opens it; a device running
/// no bulk endpoint has no port and cannot dial one.
#[tokio::test]
async fn the_bulk_endpoint_admits_paired_devices_only() {
    let (a, b) = crate::pair();
    let stranger = crate::node();
    stranger.pair(b.device_id());
    let _code = b.start_pairing();
    let addr = std::net::SocketAddr::new(
        b.local_addr().expect("addr").ip(),
        b.bulk_port().expect("port"),
    );
    assert!(stranger.connect_bulk(addr, b.device_id()).await.is_err());
    assert!(b.rejected_input().handshakes >= 1);
    // The paired one still gets in.
    a.connect_bulk(addr, b.device_id()).await.expect("paired");
    // Off: no port, no dial.
    let off = crate::node_with(Config {
        bulk: false,
        ..crate::config()
    });
    assert_eq!(off.bulk_port(), None);
    off.pair(b.device_id());
    assert!(matches!(
        off.connect_bulk(addr, b.device_id()).await,
        Err(TransportError::EndpointClosed)
    ));
}
