//! Fixtures shared by the node's integration tests.

#![allow(dead_code)] // each test binary uses its own share of these

use std::time::Duration;

use nomade_node::{Node, NodeConfig};
use nomade_transport::{Config, DeviceIdentity, PairedSet, RateLimits, Transport};

/// A node's settings for tests: named, no rate limits, heartbeats every 500 ms.
pub fn config(name: &str) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits: RateLimits::OFF,
        heartbeat_period: Duration::from_millis(500),
        ..NodeConfig::default()
    }
}

/// A bare transport on loopback with a fresh identity that has `node`
/// paired: another device driven by hand. (Pair it on the node's side too
/// for the node to accept it.)
pub fn bare_transport_paired_with(node: &Node) -> Transport {
    bare_transport_of(DeviceIdentity::generate().expect("identity"), node)
}

/// [`bare_transport_paired_with`], with `identity` (to sign with it too).
pub fn bare_transport_of(identity: DeviceIdentity, node: &Node) -> Transport {
    let paired = PairedSet::new();
    paired.insert(node.device_id());
    Transport::bind(
        identity,
        paired,
        "127.0.0.1:0".parse().expect("addr"),
        Config::default(),
    )
    .expect("bind")
}

/// A device driven by hand: a bare transport paired with `node` (at `addr`)
/// and connected to it, which has sent a HELLO on a control stream: all
/// capabilities, the current protocol version, its id in the shown form,
/// then changed by `shape`. Returns the transport, the connection and what
/// the node answered.
pub async fn hand_driven_peer(
    node: &Node,
    addr: std::net::SocketAddr,
    shape: impl FnOnce(&mut nomade_wire::Hello),
) -> (
    nomade_transport::Transport,
    nomade_transport::Connection,
    nomade_wire::Envelope,
) {
    use nomade_wire::{Envelope, Hash32, Hello, MessageId, StreamRole};

    let transport = bare_transport_paired_with(node);
    let id = transport.device_id();
    node.add_peer(id, "by hand", &[]).expect("pair");
    let conn = transport
        .connect(addr, Some(node.device_id()))
        .await
        .expect("connect");
    let (mut tx, mut rx) = conn
        .open_bi(StreamRole::Control)
        .await
        .expect("control stream");
    let mut hello = Hello {
        device_id: id.to_string(),
        device_name: "by hand".into(),
        protocol_version: nomade_wire::PROTOCOL_VERSION,
        capabilities: nomade_node::handshake::CAPABILITIES
            .map(String::from)
            .to_vec(),
        sync_state_hash: Hash32::default(),
    };
    shape(&mut hello);
    tx.send(&Envelope::new(MessageId::from([1; 16]), 0, hello))
        .await
        .expect("send");
    let answer = rx.recv().await.expect("recv").expect("an answer");
    (transport, conn, answer)
}

/// Starts `node` on a free loopback port; returns its address.
pub async fn online(node: &Node) -> std::net::SocketAddr {
    node.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start")
}

/// Pairs `a` (online at `addr`) and `b` both ways and connects `b` to it.
pub async fn link(a: &Node, addr: std::net::SocketAddr, b: &Node) {
    a.add_peer(b.device_id(), &b.device_name(), &[])
        .expect("pair");
    b.add_peer(a.device_id(), &a.device_name(), &[addr])
        .expect("pair");
    b.connect(addr, a.device_id()).await.expect("connect");
}

/// Waits up to 15 s for `cond`.
pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
