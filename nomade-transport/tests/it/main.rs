//! Integration tests: real quinn endpoints over UDP on 127.0.0.1.

#![allow(missing_docs)]

mod auth;
mod bulk;
mod dial;
#[cfg(feature = "faults")]
mod faulty;
mod hostile;
mod pairing;
mod paths;
mod raw_quic;
mod relay;
mod streams;

use std::net::SocketAddr;
use std::time::Duration;

use nomade_transport::{Config, DeviceIdentity, PairedSet, RateLimits, Transport, TransportEvent};
use nomade_wire::{ConnectivityStatus, Envelope, Heartbeat, MessageId};

pub const LOCAL: &str = "127.0.0.1:0";

pub fn local() -> SocketAddr {
    LOCAL.parse().expect("addr")
}

pub fn config() -> Config {
    Config {
        handshake_timeout: Duration::from_secs(5),
        rate_limits: RateLimits::OFF,
        ..Config::default()
    }
}

pub fn node() -> Transport {
    node_with(config())
}

/// A transport with a fresh identity, no paired device and `config`.
pub fn node_with(config: Config) -> Transport {
    Transport::bind(
        DeviceIdentity::generate().expect("identity"),
        PairedSet::new(),
        local(),
        config,
    )
    .expect("bind")
}

/// Two transports paired out of band.
pub fn pair() -> (Transport, Transport) {
    let (a, b) = (node(), node());
    a.pair(b.device_id());
    b.pair(a.device_id());
    (a, b)
}

/// A heartbeat whose `message_id` (and content) is a function of `n`: the
/// same `n` is the same message, a repeat for the receiver.
pub fn beat(n: i64) -> Envelope {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    Envelope::new(
        MessageId::from(id),
        n,
        Heartbeat {
            timestamp: n,
            battery_level: Some(50),
            connectivity: ConnectivityStatus::Wifi,
        },
    )
}

/// Waits (bounded) for an event matching `f`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<TransportEvent>,
    f: impl Fn(&TransportEvent) -> bool,
) -> TransportEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}
