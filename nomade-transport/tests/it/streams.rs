use std::time::Duration;

use nomade_transport::{Connection, TransportError};
use nomade_wire::{Ack, Envelope, ErrorCode, Message, MessageId, StreamRole};

use crate::{beat, pair};

async fn connected() -> (
    nomade_transport::Transport,
    nomade_transport::Transport,
    Connection,
    Connection,
) {
    let (a, b) = pair();
    let ca = a
        .connect(b.local_addr().expect("addr"), Some(b.device_id()))
        .await
        .expect("connect");
    let cb = b.accept().await.expect("accept");
    (a, b, ca, cb)
}

#[tokio::test]
async fn frames_flow_on_every_role_both_ways() {
    let (_a, _b, ca, cb) = connected().await;
    // (Relay streams are served by the transport itself: tests/it/relay.rs.)
    let roles = StreamRole::ALL
        .into_iter()
        .filter(|r| *r != StreamRole::Relay);
    for (i, role) in roles.enumerate() {
        let n = i as i64 * 10;
        let (mut send, recv) = ca.open(role).await.expect("open");
        send.send(&beat(n)).await.expect("send");
        send.send(&beat(n + 1)).await.expect("send");
        let mut inc = tokio::time::timeout(Duration::from_secs(5), cb.accept_stream())
            .await
            .expect("in time")
            .expect("accept");
        assert_eq!(inc.role, role);
        assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(n)));
        assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(n + 1)));
        assert_eq!(inc.send.is_some(), role.is_bidirectional());
        assert_eq!(recv.is_some(), role.is_bidirectional());
        if let (Some(mut back), Some(mut recv)) = (inc.send, recv) {
            back.send(&beat(n + 2)).await.expect("reply");
            back.finish().await.expect("finish");
            assert_eq!(recv.recv().await.expect("reply"), Some(beat(n + 2)));
            assert_eq!(recv.recv().await.expect("end"), None);
        }
        send.finish().await.expect("finish");
        assert_eq!(inc.recv.recv().await.expect("end"), None);
    }
    // Direction is enforced by role.
    assert!(matches!(
        ca.open_bi(StreamRole::Presence).await,
        Err(TransportError::WrongDirection { .. })
    ));
    assert!(matches!(
        ca.open_uni(StreamRole::Sync).await,
        Err(TransportError::WrongDirection { .. })
    ));
}

/// BAD_INPUTS #18: a frame with a wrong checksum ends its stream with an
/// ERROR, is counted, and nothing else is affected.
#[tokio::test]
async fn garbage_on_one_stream_leaves_the_others_working() {
    let (_a, b, ca, cb) = connected().await;
    let (mut good_tx, good_rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    good_tx.send(&beat(1)).await.expect("send");
    let mut good = cb.accept_stream().await.expect("accept");
    assert_eq!(good.recv.recv().await.expect("recv"), Some(beat(1)));

    let (mut bad_tx, mut bad_rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    // A frame with a corrupted checksum.
    let mut frame = beat(2).to_bytes().expect("encode").to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    bad_tx.send_raw(&frame).await.expect("raw");
    let mut bad = cb.accept_stream().await.expect("accept");
    let err = bad.recv.recv().await.expect_err("bad frame");
    assert!(matches!(err, TransportError::Decode(_)), "{err:?}");
    assert_eq!(b.rejected_input().frames, 1);
    // The sender gets an ERROR (INVALID_MESSAGE) on that stream.
    let reply = bad_rx.recv().await.expect("error frame").expect("some");
    match reply.message {
        Message::Error(e) => {
            assert_eq!(e.error_code, ErrorCode::INVALID_MESSAGE);
            // The header was readable: the ERROR names the frame.
            assert_eq!(e.related_message_id, Some(beat(2).message_id));
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // The other stream and the connection still work.
    good_tx.send(&beat(3)).await.expect("send after garbage");
    assert_eq!(good.recv.recv().await.expect("recv"), Some(beat(3)));
    let mut back = good.send.take().expect("bi");
    back.send(&beat(4)).await.expect("reply");
    let mut good_rx = good_rx;
    assert_eq!(good_rx.recv().await.expect("recv"), Some(beat(4)));
    let mut p = ca.open_uni(StreamRole::Push).await.expect("new stream");
    p.send(&beat(5)).await.expect("send");
    let mut inc = cb.accept_stream().await.expect("accept");
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(5)));
    assert!(ca.close_reason().is_none());
}

/// An unknown stream role is answered with an ERROR (code 2) and FIN, never
/// RESET_STREAM (which may discard the ERROR), and the stream is not
/// delivered; an unsupported stream version gets code 1.
#[tokio::test]
async fn unknown_stream_role_is_refused_with_an_error_and_not_delivered() {
    let (_a, b, ca, cb) = connected().await;
    for (header, code) in [
        ([0x09, 0x01], ErrorCode::INVALID_MESSAGE),
        ([0x07, 0x01], ErrorCode::INVALID_MESSAGE),
        ([0x01, 0x02], ErrorCode::PROTOCOL_VERSION_MISMATCH),
    ] {
        let (mut raw, mut raw_recv) = ca.quinn().open_bi().await.expect("raw stream");
        raw.write_all(&header).await.expect("header");
        let reply = tokio::time::timeout(Duration::from_secs(5), raw_recv.read_to_end(4096))
            .await
            .expect("in time")
            .expect("an ERROR then FIN, not a reset");
        let env = Envelope::decode(&reply).expect("one ERROR frame");
        match env.message {
            Message::Error(e) => {
                assert_eq!(e.error_code, code, "{header:?}");
                assert_eq!(e.related_message_id, None);
            }
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    // A good stream afterwards is the first one delivered.
    let mut s = ca.open_uni(StreamRole::Presence).await.expect("open");
    s.send(&beat(7)).await.expect("send");
    let mut inc = cb.accept_stream().await.expect("accept");
    assert_eq!(inc.role, StreamRole::Presence);
    assert_eq!(inc.recv.recv().await.expect("recv"), Some(beat(7)));
    assert_eq!(b.rejected_input().stream_headers, 3);
}

/// A connection to a transport whose per-message deadline is `deadline`.
async fn connected_with_deadline(
    deadline: Duration,
) -> (nomade_transport::Transport, Connection, Connection) {
    let a = crate::node();
    let mut cfg = crate::config();
    cfg.message_deadline = deadline;
    let b2 = crate::node_with(cfg);
    a.pair(b2.device_id());
    b2.pair(a.device_id());
    let ca = a
        .connect(b2.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let cb = b2.accept().await.expect("accept");
    (b2, ca, cb)
}

/// Checks that the next stream `cb` accepts ends on the per-message
/// deadline: its `recv` fails with `Deadline`, `receiver` counted it, and the
/// sender got an ERROR on `rx`.
async fn expect_deadline(
    receiver: &nomade_transport::Transport,
    cb: &Connection,
    rx: &mut nomade_transport::FramedRecv,
) {
    let mut inc = cb.accept_stream().await.expect("accept");
    let err = inc.recv.recv().await.expect_err("deadline");
    assert!(matches!(err, TransportError::Deadline(_)), "{err:?}");
    assert_eq!(receiver.rejected_input().deadlines, 1);
    let reply = rx.recv().await.expect("error frame").expect("some");
    assert!(matches!(reply.message, Message::Error(_)));
}

/// BAD_INPUTS #9 (the per-message deadline): a message started and left
/// unfinished resets its stream with an ERROR, and is counted.
#[tokio::test]
async fn a_message_left_unfinished_hits_the_deadline() {
    let (b2, ca, cb) = connected_with_deadline(Duration::from_millis(200)).await;
    let (mut tx, mut rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    let frame = beat(1).to_bytes().expect("encode");
    tx.send_raw(&frame[..10]).await.expect("partial");
    expect_deadline(&b2, &cb, &mut rx).await;
    assert!(ca.close_reason().is_none());
}

/// BAD_INPUTS #27: over the allowed frames per second, a sync stream is slowed, nothing lost.
#[tokio::test]
async fn sync_rate_limit_delivers_everything_in_order() {
    use nomade_transport::RateLimits;
    let a = crate::node();
    let mut cfg = crate::config();
    cfg.rate_limits = RateLimits {
        sync_ops_per_sec: Some(5),
        artifact_bytes_per_sec: Some(1000),
    };
    let b = crate::node_with(cfg);
    a.pair(b.device_id());
    b.pair(a.device_id());
    let ca = b
        .connect(a.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let cb = a.accept().await.expect("accept");
    // b sends with a 5 ops/s limit (burst 5): 8 frames make it wait, none is lost.
    let (mut tx, _rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    let ack = |i: u8| {
        nomade_wire::Envelope::new(
            MessageId::from([i; 16]),
            0,
            Ack {
                message_ids: vec![MessageId::from([i; 16])],
            },
        )
    };
    let sender = tokio::spawn(async move {
        for i in 0..8u8 {
            tx.send(&ack(i)).await.expect("send");
        }
        tx
    });
    let mut inc = cb.accept_stream().await.expect("accept");
    for i in 0..8u8 {
        assert_eq!(inc.recv.recv().await.expect("recv"), Some(ack(i)));
    }
    sender.await.expect("sender");
}

/// BAD_INPUTS #29: when heartbeats stop, the peer is marked down.
#[tokio::test]
async fn heartbeats_flow_and_silence_means_offline() {
    use nomade_transport::heartbeat::{spawn_heartbeats, watch_heartbeats};
    use nomade_wire::{ConnectivityStatus, Heartbeat};
    let (_a, _b, ca, cb) = connected().await;
    let period = Duration::from_millis(20);
    let sender = spawn_heartbeats(ca.clone(), period, || Heartbeat {
        timestamp: 1,
        battery_level: None,
        connectivity: ConnectivityStatus::Ethernet,
    });
    let inc = cb.accept_stream().await.expect("presence stream");
    assert_eq!(inc.role, StreamRole::Presence);
    // Count a few beats, then stop the sender without finishing the stream.
    let (count_tx, mut count_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut recv = inc.recv;
    let mut seen = 0;
    while seen < 3 {
        match recv.recv().await.expect("beat") {
            Some(env) => {
                assert!(matches!(env.message, Message::Heartbeat(_)));
                seen += 1;
            }
            None => panic!("stream ended"),
        }
    }
    sender.abort();
    let _ = sender.await;

    // A presence stream that sends one beat and a presence update, then goes
    // silent while staying open: the watcher reports the peer offline.
    let mut quiet = ca.open_uni(StreamRole::Presence).await.expect("open");
    quiet.send(&crate::beat(1)).await.expect("beat");
    let update = nomade_wire::Envelope::new(
        nomade_wire::MessageId::from([3; 16]),
        0,
        nomade_wire::PresenceUpdate {
            status: nomade_wire::PresenceStatus::Away,
            message: None,
        },
    );
    quiet.send(&update).await.expect("update");
    let inc = cb.accept_stream().await.expect("quiet stream");
    let result = watch_heartbeats(inc.recv, period, 3, move |env| {
        let _ = count_tx.send(env);
    })
    .await;
    assert!(
        matches!(result, Err(TransportError::PeerOffline { missed }) if missed >= 3),
        "{result:?}"
    );
    assert_eq!(count_rx.try_recv().expect("update handed over"), update);
    assert!(
        ca.close_reason().is_none(),
        "liveness does not close by itself"
    );
    drop(quiet);
}

/// BAD_INPUTS #8: a peer cannot open more concurrent streams than the limit
/// (64 of each kind by default); a stream beyond it waits for credit.
#[tokio::test]
async fn concurrent_streams_are_capped() {
    let (_a, _b, ca, cb) = connected().await;
    let mut open = Vec::new();
    for i in 0..64 {
        let (mut tx, _rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
        tx.send(&beat(i)).await.expect("send");
        open.push(tx);
    }
    // The 65th cannot start while the 64 are open.
    let extra =
        tokio::time::timeout(Duration::from_millis(300), ca.open_bi(StreamRole::Sync)).await;
    assert!(
        extra.is_err(),
        "a 65th concurrent stream must wait for credit"
    );
    // The receiver sees exactly the 64 streams.
    let mut seen = Vec::new();
    for _ in 0..64 {
        let mut inc = cb.accept_stream().await.expect("accept");
        let env = inc.recv.recv().await.expect("recv").expect("a frame");
        seen.push(env.timestamp);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..64).collect::<Vec<i64>>());
    assert!(ca.close_reason().is_none());
}

/// `FramedRecv::recv` is cancel-safe: a receive abandoned while it waits for
/// the rate limiter (as in a `select!` with another event) loses no message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_recv_cancelled_while_waiting_loses_nothing() {
    use nomade_transport::RateLimits;
    let mut cfg = crate::config();
    cfg.rate_limits = RateLimits {
        sync_ops_per_sec: Some(20),
        artifact_bytes_per_sec: None,
    };
    let receiver = crate::node_with(cfg);
    let sender = crate::node();
    sender.pair(receiver.device_id());
    receiver.pair(sender.device_id());
    let cs = sender
        .connect(receiver.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let cr = receiver.accept().await.expect("accept");
    let (mut tx, _rx) = cs.open_bi(StreamRole::Sync).await.expect("open");
    let send_task = tokio::spawn(async move {
        for i in 0..60i64 {
            tx.send(&crate::beat(i)).await.expect("send");
        }
        tx
    });
    let mut inc = cr.accept_stream().await.expect("accept");
    let mut got = Vec::new();
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.len() < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 60 frames arrived",
            got.len()
        );
        tokio::select! {
            r = inc.recv.recv() => got.push(r.expect("recv").expect("a frame")),
            // Another event wins often: the pending receive is dropped.
            _ = tokio::time::sleep(std::time::Duration::from_millis(3)) => cancelled += 1,
        }
    }
    assert!(cancelled > 0, "the limiter never made a receive wait");
    let expected: Vec<_> = (0..60).map(crate::beat).collect();
    assert_eq!(got, expected);
    send_task.await.expect("sender");
}

/// BAD_INPUTS #19: a repeated `message_id` is delivered once, on the same
/// stream or another of the same connection; the repeats are counted and the
/// streams go on.
#[tokio::test]
async fn bad_input_19_a_repeated_message_id_is_delivered_once() {
    let (_a, b, ca, cb) = connected().await;
    let (mut tx, _rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    tx.send(&beat(1)).await.expect("send");
    tx.send(&beat(1))
        .await
        .expect("send the same message again");
    tx.send(&beat(2)).await.expect("send");
    let mut first = cb.accept_stream().await.expect("accept");
    assert_eq!(first.recv.recv().await.expect("recv"), Some(beat(1)));
    assert_eq!(first.recv.recv().await.expect("recv"), Some(beat(2)));

    // The same id on another stream of the connection is a repeat too.
    let mut other = ca.open_uni(StreamRole::Push).await.expect("open");
    other.send(&beat(1)).await.expect("send");
    other.send(&beat(3)).await.expect("send");
    other.finish().await.expect("finish");
    let mut second = cb.accept_stream().await.expect("accept");
    assert_eq!(second.recv.recv().await.expect("recv"), Some(beat(3)));
    assert_eq!(second.recv.recv().await.expect("end"), None);
    assert_eq!(b.rejected_input().duplicates, 2);
    assert_eq!(b.rejected_input().total(), 2);

    // A message with the same content but a fresh id is not a repeat.
    let mut fresh = beat(1);
    fresh.message_id = MessageId::from([0xee; 16]);
    tx.send(&fresh).await.expect("send");
    assert_eq!(first.recv.recv().await.expect("recv"), Some(fresh));
    assert_eq!(b.rejected_input().duplicates, 2);
}

/// BAD_INPUTS #9: a peer trickling a message one byte at a time, each byte
/// well within the deadline, still hits it: the deadline runs from the
/// message's first byte and is not reset by each new one.
#[tokio::test]
async fn bad_input_9_a_message_sent_one_byte_at_a_time_hits_the_deadline() {
    let deadline = Duration::from_millis(300);
    let (b2, ca, cb) = connected_with_deadline(deadline).await;
    let (mut tx, mut rx) = ca.open_bi(StreamRole::Sync).await.expect("open");
    let frame = beat(1).to_bytes().expect("encode");
    let trickle = tokio::spawn(async move {
        for byte in frame.iter() {
            if tx.send_raw(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // At this pace the whole frame takes over 2 s: a deadline reset by each
    // byte would let it through, and `recv` would return it.
    expect_deadline(&b2, &cb, &mut rx).await;
    trickle.abort();
}

/// BAD_INPUTS #28 (and #27's "other streams unaffected"): artifact traffic
/// above the receiver's rate is held back by QUIC flow control, not
/// buffered: the receiver stops reading, so what crossed the wire stays
/// within what it delivered plus one stream window, while the sender is
/// still blocked. A control stream of the same connection meanwhile works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_28_artifact_traffic_over_its_rate_is_held_back_not_buffered() {
    use nomade_transport::RateLimits;
    use nomade_wire::{ArtifactChunk, Envelope, Hash32};
    const RATE: u64 = 256 * 1024;
    const CHUNKS: u32 = 200; // 12.5 MiB: 50 s at the limit
    let fast = crate::node();
    let mut cfg = crate::config();
    cfg.rate_limits = RateLimits {
        sync_ops_per_sec: None,
        artifact_bytes_per_sec: Some(RATE),
    };
    let limited = crate::node_with(cfg);
    fast.pair(limited.device_id());
    limited.pair(fast.device_id());
    let sender_conn = fast
        .connect(limited.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let receiver_conn = limited.accept().await.expect("accept");

    let (mut tx, _rx) = sender_conn
        .open_bi(StreamRole::Artifact)
        .await
        .expect("open");
    let sender = tokio::spawn(async move {
        for i in 0..CHUNKS {
            let chunk = ArtifactChunk {
                artifact_id: Hash32::default(),
                chunk_index: i,
                chunk_data: vec![i as u8; 64 * 1024].into(),
                is_final: i + 1 == CHUNKS,
                chunk_hash: None,
                seal: None,
            };
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            if tx
                .send(&Envelope::new(MessageId::from(id), 0, chunk))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut inc = receiver_conn.accept_stream().await.expect("accept");
    let mut delivered = 0u64;
    let reading = tokio::time::Instant::now();
    while reading.elapsed() < Duration::from_millis(1500) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), inc.recv.recv()).await {
            let env = r.expect("recv").expect("a frame");
            delivered += env.to_bytes().expect("encode").len() as u64;
        }
    }
    // Another stream of the connection is not held up by the artifact one.
    let (mut control, _) = sender_conn
        .open_bi(StreamRole::Control)
        .await
        .expect("open control");
    control.send(&beat(9)).await.expect("send");
    let mut ctl = tokio::time::timeout(Duration::from_secs(5), receiver_conn.accept_stream())
        .await
        .expect("control stream in time")
        .expect("accept");
    assert_eq!(ctl.role, StreamRole::Control);
    assert_eq!(ctl.recv.recv().await.expect("recv"), Some(beat(9)));

    let on_the_wire = receiver_conn.quinn().stats().udp_rx.bytes;
    let total = u64::from(CHUNKS) * 64 * 1024;
    assert!(delivered > 0, "nothing delivered");
    assert!(
        delivered < total / 2,
        "the limit let {delivered} bytes through"
    );
    // One 2 MiB stream window beyond what was delivered, plus packet
    // overhead: the rest waits at the sender.
    assert!(
        on_the_wire < delivered + 3 * 1024 * 1024,
        "{on_the_wire} bytes received for {delivered} delivered: buffered, not held back"
    );
    assert!(!sender.is_finished(), "the sender was never held back");
    sender.abort();
}
