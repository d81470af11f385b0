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
