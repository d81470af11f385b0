//! The faulty socket under a real QUIC connection.

use std::time::Duration;

use nomade_transport::faulty::{FaultConfig, FaultPlan, Partition};
use nomade_transport::{Config, Connection, DeviceIdentity, PairedSet, Transport};
use nomade_wire::StreamRole;

use crate::{beat, config, local, node};

fn faulty(plan: FaultPlan, partition: Partition, config: Config) -> Transport {
    Transport::bind_faulty(
        DeviceIdentity::generate().expect("identity"),
        PairedSet::new(),
        local(),
        config,
        plan,
        partition,
    )
    .expect("bind")
}

/// Two paired transports, the first behind `plan`'s faults with `config`,
/// connected;
/// the transports (kept alive by the caller), the dialer's connection and
/// the acceptor's.
async fn connected_through(
    plan: FaultPlan,
    config: Config,
) -> ((Transport, Transport), Connection, Connection) {
    let a = faulty(plan, Partition::new(), config);
    let b = node();
    a.pair(b.device_id());
    b.pair(a.device_id());
    let conn = a
        .connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("connect through the faults");
    let accepted = b.accept().await.expect("accept");
    ((a, b), conn, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_whole_and_in_order_over_a_bad_network() {
    let plan = FaultPlan::symmetric(FaultConfig {
        loss: 0.15,
        duplicate: 0.1,
        reorder: 0.2,
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(3),
        seed: 11,
        ..FaultConfig::default()
    });
    let stats = plan.stats.clone();
    let (_ends, conn, accepted) = connected_through(plan, config()).await;
    let mut tx = conn.open_uni(StreamRole::Presence).await.expect("open");
    let sender = tokio::spawn(async move {
        for i in 0..400 {
            tx.send(&beat(i)).await.expect("send");
        }
        tx.finish().await.expect("finish");
    });
    let mut incoming = accepted.accept_stream().await.expect("stream");
    for i in 0..400 {
        assert_eq!(incoming.recv.recv().await.expect("recv"), Some(beat(i)));
    }
    assert_eq!(incoming.recv.recv().await.expect("end"), None);
    sender.await.expect("sender");
    let (out, inc) = (stats.outgoing(), stats.incoming());
    assert!(out.dropped > 0 && inc.dropped > 0, "{out:?} {inc:?}");
    assert!(out.duplicated > 0 && out.reordered > 0, "{out:?}");
    assert_eq!(out.partitioned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_stops_every_datagram_until_it_is_lifted() {
    let partition = Partition::new();
    let plan = FaultPlan::default();
    let stats = plan.stats.clone();
    let a = faulty(
        plan,
        partition.clone(),
        Config {
            handshake_timeout: Duration::from_millis(800),
            ..config()
        },
    );
    let b = node();
    a.pair(b.device_id());
    b.pair(a.device_id());
    let addr = b.local_addr().expect("addr");
    partition.set(true);
    assert!(a.connect(addr, Some(b.device_id())).await.is_err());
    let cut = stats.outgoing();
    assert!(cut.partitioned > 0 && cut.seen == 0, "{cut:?}");
    partition.set(false);
    let conn = a.connect(addr, Some(b.device_id())).await.expect("connect");
    assert_eq!(conn.peer(), b.device_id());
    assert!(stats.outgoing().seen > 0 && stats.incoming().seen > 0);
}

/// A slow link (2 MB/s, a queue of 20 ms) under 4 MB of chunks sent with
/// Cubic alone (which fills queues until a loss): its queue overflows and
/// drops datagrams, as a router's would; QUIC's congestion control and
/// retransmissions still deliver every chunk whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_queues_and_drops_what_overflows_and_everything_arrives() {
    use nomade_wire::{ArtifactChunk, Envelope, FixedBytes, MessageId};
    let plan = FaultPlan::symmetric(FaultConfig {
        delay: Duration::from_millis(5),
        rate: Some(2_000_000),
        queue_limit: Some(Duration::from_millis(20)),
        seed: 3,
        ..FaultConfig::default()
    });
    let stats = plan.stats.clone();
    let (_ends, conn, accepted) = connected_through(
        plan,
        Config {
            queue_target: None,
            ..config()
        },
    )
    .await;
    let chunk = |i: u32| {
        Envelope::new(
            MessageId::from([i as u8; 16]),
            0,
            ArtifactChunk {
                artifact_id: FixedBytes([7; 32]),
                chunk_index: i,
                chunk_data: vec![i as u8; 60_000].into(),
                is_final: i == 63,
                chunk_hash: None,
                seal: None,
            },
        )
    };
    let (mut tx, _rx) = conn.open_bi(StreamRole::Artifact).await.expect("open");
    let sender = tokio::spawn(async move {
        for i in 0..64 {
            tx.send(&chunk(i)).await.expect("send");
        }
        tx.finish().await.expect("finish");
    });
    let mut incoming = accepted.accept_stream().await.expect("stream");
    for i in 0..64 {
        assert_eq!(incoming.recv.recv().await.expect("recv"), Some(chunk(i)));
    }
    sender.await.expect("sender");
    let out = stats.outgoing();
    assert!(out.overflowed > 0, "the queue never overflowed: {out:?}");
    assert_eq!(out.dropped, 0, "no random loss configured");
}
