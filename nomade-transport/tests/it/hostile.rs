//! Hostile traffic at the UDP and handshake level (BAD_INPUTS #6 and #7).

use std::time::Duration;

use nomade_transport::Transport;
use nomade_wire::StreamRole;
use rand::{Rng, SeedableRng};

use crate::raw_quic::{code, param, parameter, well_formed_parameters, HandBuiltClient};
use crate::{beat, local, node, pair, wait_event};

/// Connects `a` to `b` and checks a frame goes through.
async fn still_serves(a: &Transport, b: &Transport) {
    let addr = b.local_addr().expect("addr");
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        a.connect(addr, Some(b.device_id())),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let accepted = tokio::time::timeout(Duration::from_secs(10), b.accept())
        .await
        .expect("accept in time")
        .expect("accept");
    let mut tx = conn.open_uni(StreamRole::Presence).await.expect("open");
    tx.send(&beat(42)).await.expect("send");
    let mut inc = accepted.accept_stream().await.expect("stream");
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(42)));
}

/// BAD_INPUTS #7: malformed QUIC packets (random bytes; long headers with a
/// real version and garbage behind; empty, one-byte and maximum-size
/// datagrams) are dropped without a crash, and a paired device connects and
/// exchanges frames afterwards.
#[tokio::test]
async fn bad_input_7_malformed_quic_packets_are_dropped() {
    let (a, b) = pair();
    let target = b.local_addr().expect("addr");
    let socket = tokio::net::UdpSocket::bind(local()).await.expect("bind");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent = 0;
    for round in 0..3_000u32 {
        let packet: Vec<u8> = match round % 4 {
            // Anything at all.
            0 => {
                let len = rng.gen_range(0..1_500);
                (0..len).map(|_| rng.gen()).collect()
            }
            // A long header (Initial, QUIC v1, plausible connection ids) with
            // a garbage payload padded to the minimum Initial size.
            1 => {
                let mut p = vec![0xc0 | rng.gen_range(0..4u8), 0, 0, 0, 1, 8];
                p.extend((0..8).map(|_| rng.gen::<u8>()));
                p.push(8);
                p.extend((0..8).map(|_| rng.gen::<u8>()));
                p.push(0); // no token
                p.extend([0x44, 0xd0]); // length 1232
                p.extend((0..1_232).map(|_| rng.gen::<u8>()));
                p
            }
            // The same cut short anywhere.
            2 => {
                let len = rng.gen_range(1..40);
                let mut p = vec![0xc3, 0, 0, 0, 1, 20];
                p.extend((0..len).map(|_| rng.gen::<u8>()));
                p
            }
            // Short headers of random connection ids.
            _ => {
                let len = rng.gen_range(1..64);
                let mut p = vec![0x40 | rng.gen_range(0..0x40u8)];
                p.extend((0..len).map(|_| rng.gen::<u8>()));
                p
            }
        };
        if socket.send_to(&packet, target).await.is_ok() {
            sent += 1;
        }
    }
    for len in [0usize, 1, 65_507] {
        if socket.send_to(&vec![0xc0; len], target).await.is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 2_900, "only {sent} datagrams went out");
    still_serves(&a, &b).await;
    // Garbage never got as far as a handshake.
    assert_eq!(b.rejected_input().handshakes, 0);
}

/// BAD_INPUTS #6: a flood of handshakes from many addresses (100 devices,
/// each with its own socket, none of them paired) is refused, each refusal
/// counted; a paired device connecting in the middle of it gets through.
/// Every unvalidated address is first sent a Retry (address validation),
/// and quinn caps the pending handshakes (`Config::max_incoming`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_6_a_handshake_flood_is_refused_and_paired_devices_get_through() {
    const FLOOD: usize = 100;
    let (a, b) = pair();
    let target = b.local_addr().expect("addr");
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let attacker = node();
        attacker.pair(b.device_id()); // it trusts b; b does not know it
        flood.spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_secs(20), attacker.connect(target, None)).await;
            drop(attacker);
            r
        });
    }
    still_serves(&a, &b).await;
    let mut refused = 0;
    while let Some(r) = flood.join_next().await {
        match r.expect("task") {
            Ok(Err(_)) => refused += 1,
            Ok(Ok(conn)) => panic!("an unpaired device got in: {conn:?}"),
            Err(_) => panic!("a flooding handshake hung"),
        }
    }
    assert_eq!(refused, FLOOD);
    let counted = b.rejected_input().handshakes;
    // Those quinn turned away over its cap never reach the node's count.
    assert!(
        (1..=FLOOD as u64).contains(&counted),
        "{counted} handshakes counted for {FLOOD} attempts"
    );
    still_serves(&a, &b).await;
}

/// BAD_INPUTS #7, the transport parameters: a client Initial carrying
/// malformed transport parameters (built by hand around a real ClientHello,
/// so quinn's client cannot tidy them up) is refused with
/// TRANSPORT_PARAMETER_ERROR, counted and reported as a rejected handshake,
/// and the endpoint goes on serving. A control with well-formed parameters,
/// sent the same way, gets a ServerHello instead: the refusals come from the
/// parameters, not from the hand-built packet.
#[tokio::test]
async fn bad_input_7_malformed_transport_parameters_are_refused() {
    use param::*;
    let (a, b) = pair();
    let server = b.local_addr().expect("addr");
    let mut events = b.events();
    let wait = Duration::from_secs(5);

    type Params = fn(&[u8]) -> Vec<u8>;
    let malformed: [(&str, Params); 6] = [
        ("a value longer than the parameters", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            p.extend([INITIAL_MAX_DATA as u8, 0x20, 0x01, 0x02]);
            p
        }),
        ("a varint cut short", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            parameter(INITIAL_MAX_DATA, &[0xc0, 0x00, 0x01], &mut p);
            p
        }),
        ("a parameter only a server may send", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            parameter(ORIGINAL_DESTINATION_CONNECTION_ID, &[7; 8], &mut p);
            p
        }),
        ("the same parameter twice", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            parameter(MAX_IDLE_TIMEOUT, &[0x1e], &mut p);
            parameter(MAX_IDLE_TIMEOUT, &[0x1e], &mut p);
            p
        }),
        ("a datagram size under 1,200", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            parameter(MAX_UDP_PAYLOAD_SIZE, &[0x43, 0xe8], &mut p); // 1,000
            p
        }),
        ("an ack delay exponent over 20", |cid| {
            let mut p = Vec::new();
            parameter(INITIAL_SOURCE_CONNECTION_ID, cid, &mut p);
            parameter(ACK_DELAY_EXPONENT, &[21], &mut p);
            p
        }),
    ];
    let before = b.rejected_input().handshakes;
    for (what, params) in malformed {
        let mut client = HandBuiltClient::new(server, params).await;
        let answer = client.hello(wait).await;
        assert_eq!(
            answer.close_code,
            Some(code::TRANSPORT_PARAMETER_ERROR),
            "{what}: {answer:?}"
        );
        let event = wait_event(&mut events, |e| {
            matches!(
                e,
                nomade_transport::TransportEvent::HandshakeRejected { .. }
            )
        })
        .await;
        let nomade_transport::TransportEvent::HandshakeRejected { reason, .. } = event else {
            unreachable!("filtered above")
        };
        assert!(reason.contains("transport parameters"), "{what}: {reason}");
    }
    assert_eq!(
        b.rejected_input().handshakes - before,
        malformed.len() as u64
    );

    // The control: the same client with well-formed parameters.
    let mut control = HandBuiltClient::new(server, well_formed_parameters).await;
    let answer = control.hello(wait).await;
    assert_eq!(answer.close_code, None, "well-formed parameters refused");
    assert!(answer.crypto_bytes > 0, "no ServerHello: {answer:?}");
    still_serves(&a, &b).await;
}

/// BAD_INPUTS #8, the highest stream ids: a paired device that completes the
/// handshake by hand (so nothing holds it to the server's limits) and then
/// sends on a stream past the limit (the first one past it, or the highest
/// id QUIC can express, bidirectional or unidirectional) has its connection
/// closed with STREAM_LIMIT_ERROR; on a stream only the server may open,
/// with STREAM_STATE_ERROR. A control on stream 0 keeps its connection. The
/// endpoint goes on serving.
#[tokio::test]
async fn bad_input_8_a_stream_past_the_limit_closes_the_connection() {
    use crate::raw_quic::stream_frame;
    let (a, b) = pair();
    let server = b.local_addr().expect("addr");
    let wait = Duration::from_secs(5);
    let highest = (1u64 << 62) - 1;
    let cases = [
        ("stream 0, the first a client may open", 0, None),
        (
            "the first bidirectional stream past the limit of 64",
            64 * 4,
            Some(code::STREAM_LIMIT_ERROR),
        ),
        (
            "the first unidirectional stream past the limit of 64",
            64 * 4 + 2,
            Some(code::STREAM_LIMIT_ERROR),
        ),
        (
            "the highest bidirectional stream id",
            highest - 3,
            Some(code::STREAM_LIMIT_ERROR),
        ),
        (
            "the highest unidirectional stream id",
            highest - 1,
            Some(code::STREAM_LIMIT_ERROR),
        ),
        (
            "a stream only the server may open",
            1,
            Some(code::STREAM_STATE_ERROR),
        ),
    ];
    for (what, stream_id, expected) in cases {
        let identity = nomade_transport::DeviceIdentity::generate().expect("identity");
        b.pair(identity.device_id());
        let mut client =
            HandBuiltClient::with_identity(server, &identity, well_formed_parameters).await;
        assert!(
            client.connect(wait).await,
            "{what}: the handshake failed: {:?}",
            client.answer
        );
        let accepted = tokio::time::timeout(wait, b.accept())
            .await
            .expect("accept in time")
            .expect("accept");
        assert_eq!(accepted.peer(), identity.device_id(), "{what}");
        client.send_1rtt(&stream_frame(stream_id, b"hello")).await;
        match expected {
            Some(code) => {
                assert_eq!(client.close_code(wait).await, Some(code), "{what}");
                // The server's side of the connection ended for that reason.
                let reason = tokio::time::timeout(wait, accepted.quinn().closed())
                    .await
                    .expect("closed in time");
                let quinn::ConnectionError::TransportError(error) = reason else {
                    panic!("{what}: closed for {reason:?}")
                };
                assert_eq!(u64::from(error.code), code, "{what}");
            }
            None => {
                let listen = Duration::from_millis(500);
                assert_eq!(client.close_code(listen).await, None, "{what}");
                assert!(accepted.quinn().close_reason().is_none(), "{what}");
            }
        }
    }
    still_serves(&a, &b).await;
}
