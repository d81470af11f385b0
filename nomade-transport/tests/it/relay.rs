//! Relaying through a paired device: A reaches C through B over real QUIC,
//! end to end authenticated, and every bad request is refused with a code.

use std::time::Duration;

use nomade_transport::{
    Config, Connection, DeviceIdentity, RelayConfig, Transport, TransportError,
};
use nomade_wire::{
    Envelope, ErrorCode, Message, MessageId, RelayAccept, RelayOffer, RelayRequest, StreamRole,
};

use crate::{beat, config, node_with};

/// A line a - b - c: all three paired with each other, a and c each
/// connected to b (b holds its ends), not to each other.
struct Line {
    a: Transport,
    b: Transport,
    c: Transport,
    /// a's connection to b.
    ab: Connection,
    /// c's connection to b.
    cb: Connection,
    /// b's ends, held so the connections stay up.
    _at_b: Vec<Connection>,
}

async fn line_with(relay: RelayConfig) -> Line {
    line_of(relay, RelayConfig::default()).await
}

/// A line whose b relays with `relay` and whose c takes offers with `at_c`.
async fn line_of(relay: RelayConfig, at_c: RelayConfig) -> Line {
    let a = node_with(config());
    let b = node_with(Config { relay, ..config() });
    let c = node_with(Config {
        relay: at_c,
        ..config()
    });
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        x.pair(y.device_id());
        y.pair(x.device_id());
    }
    let b_addr = b.local_addr().expect("addr");
    let ab = a
        .connect(b_addr, Some(b.device_id()))
        .await
        .expect("a to b");
    let cb = c
        .connect(b_addr, Some(b.device_id()))
        .await
        .expect("c to b");
    let at_b = vec![
        b.accept().await.expect("accept"),
        b.accept().await.expect("accept"),
    ];
    Line {
        a,
        b,
        c,
        ab,
        cb,
        _at_b: at_b,
    }
}

async fn line() -> Line {
    line_with(RelayConfig {
        bytes_per_sec: None,
        ..RelayConfig::default()
    })
    .await
}

async fn accept(t: &Transport) -> Connection {
    tokio::time::timeout(Duration::from_secs(10), t.accept())
        .await
        .expect("accepted in time")
        .expect("accept")
}

/// Sends `n` heartbeats on a new sync stream of `from` and checks that
/// `to` receives them all, in order, and answers on the same stream.
async fn exchange(from: &Connection, to: &Connection, n: i64) {
    let (mut send, recv) = from.open(StreamRole::Sync).await.expect("open");
    let mut recv = recv.expect("bidirectional");
    for i in 0..n {
        send.send(&beat(i)).await.expect("send");
    }
    send.finish().await.expect("finish");
    let mut inc = tokio::time::timeout(Duration::from_secs(10), to.accept_stream())
        .await
        .expect("stream in time")
        .expect("accept stream");
    for i in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(20), inc.recv.recv())
            .await
            .expect("message in time")
            .expect("recv");
        assert_eq!(got, Some(beat(i)), "message {i}");
    }
    let mut back = inc.send.expect("reply half");
    back.send(&beat(-1)).await.expect("reply");
    back.finish().await.expect("finish");
    assert_eq!(recv.recv().await.expect("reply"), Some(beat(-1)));
}

fn refused_code(r: Result<Connection, TransportError>) -> ErrorCode {
    match r {
        Err(TransportError::RelayRefused { code, .. }) => code,
        other => panic!("expected a relay refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_reaches_another_through_a_relay_both_ways() {
    let l = line().await;
    let ac =
        l.a.connect_relayed(&l.ab, l.c.device_id())
            .await
            .expect("relayed");
    let ca = accept(&l.c).await;
    // Authenticated end to end: each proved its own device id to the other.
    assert_eq!(ac.peer(), l.c.device_id());
    assert_eq!(ca.peer(), l.a.device_id());
    assert_eq!(ac.relayed_via(), Some(l.b.device_id()));
    assert_eq!(ca.relayed_via(), Some(l.b.device_id()));
    assert_eq!(l.ab.relayed_via(), None);
    // 5,000 frames one way, an answer the other.
    exchange(&ac, &ca, 5_000).await;
    exchange(&ca, &ac, 50).await;
    let stats = l.b.relay_stats();
    assert_eq!(
        (stats.sessions, stats.active_sessions, stats.refused),
        (1, 1, 0)
    );
    assert!(stats.bytes_forwarded > 5_000 * 60, "{stats:?}");
    // b's own connections carry on beside the relay.
    assert!(direct_connection_works(&l).await);
    // Closing the relayed connection ends the session at the relay.
    ac.close(0, "done");
    drop((ac, ca));
    wait_until(|| l.b.relay_stats().active_sessions == 0).await;
    // A relayed connection relays nothing further.
    let again =
        l.a.connect_relayed(&l.ab, l.c.device_id())
            .await
            .expect("again");
    let _ca = accept(&l.c).await;
    assert!(matches!(
        l.a.connect_relayed(&again, l.b.device_id()).await,
        Err(TransportError::InvalidRelay(_))
    ));
}

/// Whether a heartbeat from a reaches b on a's direct connection.
async fn direct_connection_works(l: &Line) -> bool {
    let mut presence = l.ab.open_uni(StreamRole::Presence).await.expect("open");
    presence.send(&beat(77)).await.expect("send");
    let end = l
        ._at_b
        .iter()
        .find(|c| c.peer() == l.a.device_id())
        .expect("b's end of a's connection");
    match tokio::time::timeout(Duration::from_secs(5), end.accept_stream()).await {
        Ok(Ok(mut inc)) => inc.recv.recv().await.expect("recv") == Some(beat(77)),
        _ => false,
    }
}

async fn wait_until(f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition in time");
}

/// BAD_INPUTS 34: relay requests a relay must refuse, each with its code,
/// counted, the relay's own connections unaffected.
#[tokio::test]
async fn a_relay_refuses_what_it_cannot_or_may_not_relay() {
    let l = line_with(RelayConfig {
        max_sessions_per_device: 1,
        bytes_per_sec: None,
        ..RelayConfig::default()
    })
    .await;
    // A device b does not know (a paired it, b did not).
    let stranger = DeviceIdentity::generate().expect("identity").device_id();
    l.a.pair(stranger);
    assert_eq!(
        refused_code(l.a.connect_relayed(&l.ab, stranger).await),
        ErrorCode::UNREACHABLE
    );
    // A device b knows but has no connection to.
    let absent = DeviceIdentity::generate().expect("identity").device_id();
    l.a.pair(absent);
    l.b.pair(absent);
    assert_eq!(
        refused_code(l.a.connect_relayed(&l.ab, absent).await),
        ErrorCode::UNREACHABLE
    );
    // The quota: one session per asking device.
    let first =
        l.a.connect_relayed(&l.ab, l.c.device_id())
            .await
            .expect("first");
    let _first_at_c = accept(&l.c).await;
    assert_eq!(
        refused_code(l.a.connect_relayed(&l.ab, l.c.device_id()).await),
        ErrorCode::RATE_LIMITED
    );
    // c may still ask (its own quota), for a.
    let _reverse =
        l.c.connect_relayed(&l.cb, l.a.device_id())
            .await
            .expect("c's own slot");
    let _at_a = accept(&l.a).await;
    drop(first);
    drop(_first_at_c);
    wait_until(|| l.b.relay_stats().active_sessions == 1).await;
    // Local checks: to itself, through the target.
    assert!(matches!(
        l.a.connect_relayed(&l.ab, l.a.device_id()).await,
        Err(TransportError::InvalidRelay(_))
    ));
    assert!(matches!(
        l.a.connect_relayed(&l.ab, l.b.device_id()).await,
        Err(TransportError::InvalidRelay(_))
    ));
    // What a device that skips those checks sends is refused by the relay.
    for (message, code) in [
        (
            Message::from(RelayRequest {
                target: l.a.device_id().to_string(),
            }),
            ErrorCode::INVALID_MESSAGE,
        ),
        (
            RelayRequest {
                target: l.b.device_id().to_string(),
            }
            .into(),
            ErrorCode::INVALID_MESSAGE,
        ),
        (
            RelayRequest {
                target: "not a device id".into(),
            }
            .into(),
            ErrorCode::INVALID_MESSAGE,
        ),
        (beat(1).message, ErrorCode::INVALID_MESSAGE),
        (RelayAccept {}.into(), ErrorCode::INVALID_MESSAGE),
        // An offer from b's own peer, as if it were someone else's relay.
        (
            RelayOffer {
                source: l.a.device_id().to_string(),
            }
            .into(),
            ErrorCode::INVALID_MESSAGE,
        ),
    ] {
        assert_eq!(raw_relay_stream(&l.ab, message).await, Some(code));
    }
    let stats = l.b.relay_stats();
    assert_eq!(stats.refused, 3 + 6, "{stats:?}");
    // b's own connection with a is unaffected.
    assert!(direct_connection_works(&l).await);
}

/// Opens a relay stream on `conn` with `message` and returns the code of
/// the ERROR it is answered with (`None` for another answer).
async fn raw_relay_stream(conn: &Connection, message: Message) -> Option<ErrorCode> {
    let (mut send, recv) = conn.open(StreamRole::Relay).await.expect("open");
    let mut recv = recv.expect("bidirectional");
    send.send(&Envelope::new(
        MessageId::from(rand::random::<[u8; 16]>()),
        0,
        message,
    ))
    .await
    .expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.recv())
        .await
        .expect("answer in time");
    match answer {
        Ok(Some(Envelope {
            message: Message::Error(e),
            ..
        })) => Some(e.error_code),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_with_relaying_off_refuses_every_request() {
    let l = line_with(RelayConfig {
        enabled: false,
        ..RelayConfig::default()
    })
    .await;
    assert_eq!(
        refused_code(l.a.connect_relayed(&l.ab, l.c.device_id()).await),
        ErrorCode::UNREACHABLE
    );
    assert_eq!(l.b.relay_stats().refused, 1);
}

/// The target refuses a relayed connection from a device it has not
/// paired: the asker learns it, and nothing is accepted.
#[tokio::test]
async fn the_target_refuses_a_device_it_does_not_know() {
    let l = line().await;
    l.c.unpair(&l.a.device_id());
    assert_eq!(
        refused_code(l.a.connect_relayed(&l.ab, l.c.device_id()).await),
        ErrorCode::AUTHENTICATION_FAILED
    );
    assert_eq!(l.c.relay_stats().refused, 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), l.c.accept())
            .await
            .is_err()
    );
}

/// BAD_INPUTS 34: a relay stream whose packets have a bad length ends that
/// stream, counted, and nothing else: the connection it came on carries on.
#[tokio::test]
async fn a_bad_packet_length_ends_the_relay_stream_only() {
    let l = line().await;
    // b offers c a relayed connection from a, then sends a length of 0xffff.
    let bc = if l._at_b[1].peer() == l.c.device_id() {
        &l._at_b[1]
    } else {
        &l._at_b[0]
    };
    let (mut send, recv) = bc.open(StreamRole::Relay).await.expect("open");
    let mut recv = recv.expect("bidirectional");
    let offer = RelayOffer {
        source: l.a.device_id().to_string(),
    };
    send.send(&Envelope::new(MessageId::from([3; 16]), 0, offer))
        .await
        .expect("offer");
    let answer = recv.recv().await.expect("answer");
    assert!(
        matches!(
            answer,
            Some(Envelope {
                message: Message::RelayAccept(_),
                ..
            })
        ),
        "{answer:?}"
    );
    send.send_raw(&[0xff, 0xff, 1, 2, 3])
        .await
        .expect("garbage");
    wait_until(|| l.c.relay_stats().bad_streams == 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), l.c.accept())
            .await
            .is_err()
    );
    // c's connection with b is unaffected.
    let mut presence = l.cb.open_uni(StreamRole::Presence).await.expect("open");
    presence.send(&beat(5)).await.expect("still up");
    let mut inc = tokio::time::timeout(Duration::from_secs(5), bc.accept_stream())
        .await
        .expect("in time")
        .expect("stream");
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(5)));
}

/// A relay that alters or drops packets cannot alter or lose what
/// arrives: QUIC's AEAD refuses each altered packet, and it is sent again
/// as a lost one is.
#[cfg(feature = "faults")]
#[tokio::test]
async fn a_relay_that_alters_packets_delivers_nothing_altered() {
    let l = line_with(RelayConfig {
        bytes_per_sec: None,
        corrupt_every: Some(7),
        drop_every: Some(11),
        ..RelayConfig::default()
    })
    .await;
    let ac =
        l.a.connect_relayed(&l.ab, l.c.device_id())
            .await
            .expect("relayed despite the alterations");
    let ca = accept(&l.c).await;
    exchange(&ac, &ca, 2_000).await;
    assert_eq!(l.b.relay_stats().bad_streams, 0);
}

/// A relay cannot make a device hold relayed endpoints without bound: the
/// offers it makes count in the device's own quota, and one that ends
/// gives its place back.
#[tokio::test]
async fn offers_beyond_the_quota_are_refused() {
    let l = line_of(
        RelayConfig::default(),
        RelayConfig {
            max_sessions_per_device: 2,
            ..RelayConfig::default()
        },
    )
    .await;
    let bc = l
        ._at_b
        .iter()
        .find(|c| c.peer() == l.c.device_id())
        .expect("b's end of c's connection");
    let offer = || {
        Message::from(RelayOffer {
            source: l.a.device_id().to_string(),
        })
    };
    let open_offer = || async {
        let (mut send, recv) = bc.open(StreamRole::Relay).await.expect("open");
        let mut recv = recv.expect("bidirectional");
        let env = Envelope::new(MessageId::from(rand::random::<[u8; 16]>()), 0, offer());
        send.send(&env).await.expect("offer");
        let accepted = matches!(
            recv.recv().await,
            Ok(Some(Envelope {
                message: Message::RelayAccept(_),
                ..
            }))
        );
        (accepted, send, recv)
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (accepted, send, recv) = open_offer().await;
        assert!(accepted);
        held.push((send, recv));
    }
    assert_eq!(
        raw_relay_stream(bc, offer()).await,
        Some(ErrorCode::RATE_LIMITED)
    );
    assert_eq!(l.c.relay_stats().refused, 1);
    // An offer ended (its stream dropped) gives its place back at once:
    // c does not wait out the handshake timeout (5 s here) for a
    // connection that can no longer come.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if open_offer().await.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a place again once an offer ended");
}
