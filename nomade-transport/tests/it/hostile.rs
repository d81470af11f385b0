//! Hostile traffic at the UDP and handshake level (BAD_INPUTS #6 and #7).

use std::time::Duration;

use nomade_transport::Transport;
use nomade_wire::StreamRole;
use rand::{Rng, SeedableRng};

use crate::{beat, local, node, pair};

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
