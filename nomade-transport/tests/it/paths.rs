//! What a transport remembers between runs: a reconnection after both
//! devices restarted skips the Retry and the path MTU probes.

use std::time::Duration;

use nomade_transport::paths::{TokenIssuer, MAX_MTU};
use nomade_transport::{Config, Connection, DeviceIdentity, KnownPaths, PairedSet, Transport};

use crate::{config, local};

/// A transport for `identity`, trusting `peer`, at `addr`, with `known`.
fn restart(identity: &DeviceIdentity, peer: &DeviceIdentity, known: KnownPaths) -> Transport {
    let paired = PairedSet::new();
    paired.insert(peer.device_id());
    let config = Config {
        known_paths: known,
        ..config()
    };
    Transport::bind(identity.clone(), paired, local(), config).expect("bind")
}

/// Waits (bounded) until `done` holds for `conn`.
async fn wait_for(conn: &Connection, what: &str, done: impl Fn(&quinn::ConnectionStats) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&conn.quinn().stats()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time: {:?}", conn.quinn().stats()));
}

/// Connects `a` to `b` and returns both ends.
async fn connect(
    a: &Transport,
    b: &Transport,
    ids: (&DeviceIdentity, &DeviceIdentity),
) -> (Connection, Connection) {
    let addr = b.local_addr().expect("addr");
    let dialed = a
        .connect(addr, Some(ids.1.device_id()))
        .await
        .expect("connect");
    let accepted = b.accept().await.expect("accept");
    assert_eq!(accepted.peer(), ids.0.device_id());
    (dialed, accepted)
}

#[tokio::test]
async fn a_reconnection_after_a_restart_skips_the_retry_and_the_mtu_probes() {
    let (ia, ib) = (
        DeviceIdentity::generate().expect("identity"),
        DeviceIdentity::generate().expect("identity"),
    );
    let (a, b) = (
        restart(&ia, &ib, KnownPaths::default()),
        restart(&ib, &ia, KnownPaths::default()),
    );

    // A first connection: a Retry, probes up to the largest MTU searched,
    // and one token for next time.
    let (dialed, accepted) = connect(&a, &b, (&ia, &ib)).await;
    wait_for(&dialed, "the token", |s| s.frame_rx.new_token >= 1).await;
    for end in [&dialed, &accepted] {
        wait_for(end, "path MTU discovery", |s| s.path.current_mtu == MAX_MTU).await;
    }
    assert_eq!(b.retries_sent(), 1);
    let first_probes = dialed.quinn().stats().path.sent_plpmtud_probes
        + accepted.quinn().stats().path.sent_plpmtud_probes;
    assert!(first_probes >= 2, "{first_probes} probes");

    let (known_a, known_b) = (a.known_paths(), b.known_paths());
    assert_eq!(known_a.mtus, vec![("127.0.0.1".parse().unwrap(), MAX_MTU)]);
    assert_eq!(known_b.mtus, known_a.mtus);
    assert!(!known_a.tokens.is_empty());
    let issued_by_b = TokenIssuer::Device(*ib.device_id().as_bytes());
    assert!(known_a
        .tokens
        .iter()
        .all(|(issuer, _)| *issuer == issued_by_b));
    assert!(known_b.tokens.is_empty(), "the accepting side got no token");
    a.close().await;
    b.close().await;

    // Both restart (B on another port): the next connection is validated
    // by the token and starts at the remembered MTU on both ends.
    let (a, b) = (restart(&ia, &ib, known_a), restart(&ib, &ia, known_b));
    let (dialed, accepted) = connect(&a, &b, (&ia, &ib)).await;
    assert_eq!(b.retries_sent(), 0, "the token spared the Retry");
    wait_for(&dialed, "the next token", |s| s.frame_rx.new_token >= 1).await;
    for end in [&dialed, &accepted] {
        let path = end.quinn().stats().path;
        assert_eq!(path.current_mtu, MAX_MTU);
        assert_eq!(path.sent_plpmtud_probes, 0, "no probe on a known path");
    }
    a.close().await;
    b.close().await;
}
