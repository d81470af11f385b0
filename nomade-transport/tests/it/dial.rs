use std::time::Duration;

use nomade_transport::dial::{Dialer, Endpoint};
use nomade_transport::TransportError;

use crate::pair;

/// A dead endpoint (a bound UDP socket that never answers) listed ahead of a
/// live one: it is tried first, fails, backs off, and the live one connects.
#[tokio::test]
async fn dead_endpoint_first_then_live_one() {
    let (a, b) = pair();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dead");
    let dead_addr = dead.local_addr().expect("addr");
    let live_addr = b.local_addr().expect("addr");
    let mut dialer = Dialer::new(vec![
        Endpoint::new(live_addr, 2),
        Endpoint::new(dead_addr, 0),
    ])
    .with_connect_timeout(Duration::from_millis(300));
    let conn = dialer.dial(&a, Some(b.device_id())).await.expect("dial");
    assert_eq!(conn.peer(), b.device_id());
    let round: Vec<_> = dialer
        .last_round()
        .iter()
        .map(|t| (t.address, t.outcome.is_ok()))
        .collect();
    assert_eq!(round, vec![(dead_addr, false), (live_addr, true)]);
    assert_eq!(dialer.backoff(dead_addr).expect("dead").failures(), 1);
    assert!(dialer
        .backoff(dead_addr)
        .expect("dead")
        .retry_at()
        .is_some());
    let live = dialer
        .endpoints()
        .find(|e| e.address == live_addr)
        .expect("live");
    assert!(live.last_success.is_some());
    assert!(live.rtt_ms.is_some());
    // Next round: the dead endpoint is still backing off, so only the live one is tried.
    let _again = dialer
        .dial(&a, Some(b.device_id()))
        .await
        .expect("dial again");
    let round: Vec<_> = dialer.last_round().iter().map(|t| t.address).collect();
    assert_eq!(round, vec![live_addr]);
    drop(dead);
}

#[tokio::test]
async fn all_dead_reports_no_endpoint() {
    let (a, _b) = pair();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dead");
    let mut dialer = Dialer::new(vec![Endpoint::new(dead.local_addr().expect("addr"), 0)])
        .with_connect_timeout(Duration::from_millis(200));
    let err = dialer.dial(&a, None).await.expect_err("dead");
    assert!(
        matches!(err, TransportError::NoEndpointReachable { attempts: 1 }),
        "{err:?}"
    );
    let err = dialer.dial(&a, None).await.expect_err("backing off");
    assert!(
        matches!(err, TransportError::NoEndpointReachable { attempts: 0 }),
        "{err:?}"
    );
}
