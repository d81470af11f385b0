//! Artifacts on demand, over real QUIC between real data directories: each
//! device fetches what its policy wants and knows the rest by metadata
//! alone; content is fetched when asked, pinned, evicted; a holder's
//! metadata that contradicts itself is refused.

use std::time::Duration;

use nomade_artifact::ArtifactId;
use nomade_node::{ArtifactPolicy, ArtifactState, Node, NodeConfig, NodeError};
use nomade_wire::{ArtifactMetadata, Envelope, Message, MessageId, StreamRole};

mod common;
use common::{config, hand_driven_peer, link, online, wait_for};

fn entry(node: &Node, id: &ArtifactId) -> nomade_node::ArtifactEntry {
    node.artifact_entries()
        .expect("entries")
        .into_iter()
        .find(|e| e.id == id.to_hex())
        .expect("listed")
}

fn with_policy(name: &str, policy: ArtifactPolicy) -> NodeConfig {
    NodeConfig {
        artifact_policy: policy,
        ..config(name)
    }
}

/// A phone that fetches artifacts only when asked, in `dir`.
fn metadata_only_phone(dir: &std::path::Path) -> Node {
    Node::open(
        &dir.join("phone"),
        with_policy("phone", ArtifactPolicy::metadata_only()),
    )
    .expect("open")
}

/// A file of `len` bytes of a pattern (`step`), written as `name` in `dir`;
/// its path and its bytes.
fn film(dir: &std::path::Path, name: &str, len: u32, step: u32) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let data: Vec<u8> = (0..len).map(|i| (i * step % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write");
    (path, data)
}

/// A laptop holds a photo, a video and a text file, referenced by one
/// document. A phone that wants photos up to 1 MB fetches only the photo;
/// a desktop that wants metadata only fetches nothing, and lists all three
/// with their sizes and types; it fetches the video when asked, cannot
/// evict it while pinned, evicts it once unpinned (its metadata stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_holds_what_its_policy_wants_and_knows_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let phone_policy = ArtifactPolicy {
        max_size: Some(1 << 20),
        mime_types: vec!["image/".into()],
        ..ArtifactPolicy::default()
    };
    let phone = Node::open(
        &dir.path().join("phone"),
        with_policy("phone", phone_policy),
    )
    .expect("open");
    let desktop = Node::open(
        &dir.path().join("desktop"),
        with_policy("desktop", ArtifactPolicy::metadata_only()),
    )
    .expect("open");

    let put = |name: &str, len: usize, mime: &str| {
        let path = dir.path().join(name);
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, data).expect("write");
        laptop.put_artifact(&path, Some(mime)).expect("put")
    };
    let photo = put("photo.jpg", 300_000, "image/jpeg");
    let video = put("clip.mp4", 2_000_000, "video/mp4");
    let notes = put("notes.txt", 50_000, "text/plain");
    for (field, id) in [("photo", photo), ("video", video), ("notes", notes)] {
        laptop
            .set("trip", field, id.to_reference().as_str())
            .expect("reference");
    }

    let la = online(&laptop).await;
    online(&phone).await;
    online(&desktop).await;
    link(&laptop, la, &phone).await;
    link(&laptop, la, &desktop).await;

    wait_for(
        || phone.artifacts().has(&photo),
        "the phone to fetch the photo",
    )
    .await;
    wait_for(
        || {
            desktop
                .artifact_entries()
                .expect("entries")
                .iter()
                .filter(|e| e.size.is_some())
                .count()
                == 3
        },
        "the desktop to know all three by their metadata",
    )
    .await;
    // What the policies left alone stays remote.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!phone.artifacts().has(&video) && !phone.artifacts().has(&notes));
    assert_eq!(desktop.artifacts().used_bytes().expect("used"), 0);
    let v = entry(&desktop, &video);
    assert_eq!(v.state, ArtifactState::RemoteOnly);
    assert_eq!(v.size, Some(2_000_000));
    assert_eq!(v.mime_type.as_deref(), Some("video/mp4"));
    assert_eq!(v.referenced_by, vec!["document:trip".to_string()]);
    assert_eq!(entry(&phone, &photo).state, ArtifactState::Local);
    assert_eq!(entry(&phone, &notes).state, ArtifactState::RemoteOnly);

    // Opened by an application, it comes; pinned, it stays.
    let mut reader = desktop.open_artifact(video).await.expect("open");
    let first = reader.read_chunk(0).expect("first chunk");
    assert_eq!(first.len(), 65_536);
    assert_eq!(first[1], 31);
    assert_eq!(entry(&desktop, &video).state, ArtifactState::Local);
    desktop.pin_artifact(&video, true).expect("pin");
    assert!(entry(&desktop, &video).pinned);
    assert!(matches!(
        desktop.evict_artifact(&video),
        Err(NodeError::Invalid(_))
    ));
    desktop.pin_artifact(&video, false).expect("unpin");
    let freed = desktop.evict_artifact(&video).expect("evict");
    assert!(freed >= 2_000_000, "freed {freed}");
    assert_eq!(desktop.artifacts().used_bytes().expect("used"), 0);
    let v = entry(&desktop, &video);
    assert_eq!(
        (v.state, v.size),
        (ArtifactState::RemoteOnly, Some(2_000_000))
    );
    assert!(matches!(
        desktop.evict_artifact(&video),
        Err(NodeError::NotFound(_))
    ));

    for n in [&laptop, &phone, &desktop] {
        n.shutdown().await;
    }
}

/// A pinned artifact is fetched at the next sync whatever the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_artifact_is_fetched_whatever_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let desktop = Node::open(
        &dir.path().join("desktop"),
        with_policy("desktop", ArtifactPolicy::metadata_only()),
    )
    .expect("open");
    let path = dir.path().join("a.bin");
    std::fs::write(&path, vec![9u8; 100_000]).expect("write");
    let id = laptop.put_artifact(&path, None).expect("put");
    laptop
        .set("d", "file", id.to_reference().as_str())
        .expect("reference");
    desktop
        .pin_artifact(&id, true)
        .expect("pin before it is known");
    let la = online(&laptop).await;
    online(&desktop).await;
    link(&laptop, la, &desktop).await;
    wait_for(|| desktop.artifacts().has(&id), "the pinned artifact").await;
    for n in [&laptop, &desktop] {
        n.shutdown().await;
    }
}

/// A holder whose metadata contradicts itself (a chunk count that does not
/// fit the size, another artifact's id): refused, counted, nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_contradicts_itself_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(&dir.path().join("node"), config("node")).expect("open");
    let addr = online(&node).await;
    let (_transport, conn, answer) = hand_driven_peer(&node, addr, |_| {}).await;
    assert!(matches!(answer.message, Message::HelloAck(_)));
    let peer = _transport.device_id();
    let id = ArtifactId::from_hex(&"ab".repeat(32)).expect("id");
    let other = ArtifactId::from_hex(&"cd".repeat(32)).expect("id");
    let lies = [
        ArtifactMetadata {
            artifact_id: id.hash32(),
            size: 1_000_000,
            chunk_count: 3,
            mime_type: None,
            encrypted: true,
            data_key: None,
            recipient_keys: None,
        },
        ArtifactMetadata {
            artifact_id: other.hash32(),
            size: 10,
            chunk_count: 1,
            mime_type: None,
            encrypted: true,
            data_key: None,
            recipient_keys: None,
        },
    ];
    let holder = tokio::spawn(async move {
        let mut served = 0;
        while served < 2 {
            let mut s = conn.accept_stream().await.expect("accept");
            if s.role != StreamRole::Artifact {
                continue;
            }
            let request = s.recv.recv().await.expect("recv").expect("request");
            match request.message {
                // The node's artifact key announcement: not a description.
                Message::ArtifactRequest(r) if r.artifact_id.as_bytes() == &[0; 32] => continue,
                Message::ArtifactRequest(r) => assert!(r.metadata_only),
                other => panic!("{other:?}"),
            }
            let mut tx = s.send.expect("bidirectional");
            tx.send(&Envelope::new(
                MessageId::from([served as u8 + 1; 16]),
                0,
                lies[served].clone(),
            ))
            .await
            .expect("send");
            let _ = tx.finish().await;
            served += 1;
        }
        conn
    });
    for _ in 0..2 {
        let refused = node.describe_artifact_from(&peer, id).await;
        assert!(
            matches!(refused, Err(NodeError::Artifact(_))),
            "{refused:?}"
        );
    }
    let _conn = holder.await.expect("holder");
    assert_eq!(
        node.metrics_snapshot().errors.get("ARTIFACT").copied(),
        Some(2)
    );
    assert!(node.artifact_entries().expect("entries").is_empty());
    node.shutdown().await;
}

/// A fetch from two holders in turn: the first drops mid-transfer, and the
/// second goes on from the last chunk verified, not from the start; the
/// artifact is whole and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_goes_on_from_another_holder_when_one_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = NodeConfig {
        rate_limits: nomade_transport::RateLimits {
            sync_ops_per_sec: None,
            artifact_bytes_per_sec: Some(2_000_000),
        },
        ..config("laptop")
    };
    let laptop = Node::open(&dir.path().join("laptop"), slow).expect("open");
    let desktop = Node::open(&dir.path().join("desktop"), config("desktop")).expect("open");
    let phone = metadata_only_phone(dir.path());
    let (path, data) = film(dir.path(), "film.bin", 6_000_000, 7);
    // Both hold it: the same content is the same artifact.
    let id = laptop.put_artifact(&path, None).expect("put");
    assert_eq!(desktop.put_artifact(&path, None).expect("put"), id);
    let la = online(&laptop).await;
    let da = online(&desktop).await;
    online(&phone).await;
    link(&laptop, la, &phone).await;
    link(&desktop, da, &phone).await;

    let mut seen: Vec<(nomade_transport::DeviceId, u64)> = Vec::new();
    let (laptop_id, desktop_id) = (laptop.device_id(), desktop.device_id());
    let mut dropped = false;
    let holder = phone
        .fetch_artifact_from(&[laptop_id, desktop_id], id, |holder, p| {
            seen.push((*holder, p.bytes_done));
            if *holder == laptop_id && p.bytes_done > 1_000_000 && !dropped {
                dropped = true;
                let l = laptop.clone();
                tokio::spawn(async move { l.shutdown().await });
            }
        })
        .await
        .expect("fetched");
    assert_eq!(holder, desktop_id);
    let from_laptop = seen
        .iter()
        .filter(|(h, _)| *h == laptop_id)
        .map(|(_, b)| *b)
        .max()
        .expect("progress from the laptop");
    let resumed_at = seen
        .iter()
        .find(|(h, _)| *h == desktop_id)
        .map(|(_, b)| *b)
        .expect("progress from the desktop");
    assert!(
        from_laptop > 1_000_000 && from_laptop < 6_000_000,
        "{from_laptop}"
    );
    // The desktop starts where the chunks verified from the laptop end (a
    // chunk boundary; at least what the laptop's progress last reported).
    assert!(
        resumed_at >= from_laptop && resumed_at < 6_000_000 && resumed_at % 65_536 == 0,
        "resumed at {resumed_at}, the laptop's last report {from_laptop}"
    );
    let out = dir.path().join("out.bin");
    phone.export_artifact(&id, &out).expect("export");
    assert_eq!(std::fs::read(&out).expect("read"), data);
    for n in [&desktop, &phone] {
        n.shutdown().await;
    }
}

/// Two holders at once: the desktop fetched the film from the laptop (so
/// both hold it under one data key); the phone fetches it from both, half
/// from each, and it is whole and verified. A third device asking a laptop
/// that holds it and a desktop that does not gets it whole from the laptop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_comes_from_two_holders_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let desktop = Node::open(&dir.path().join("desktop"), config("desktop")).expect("open");
    let phone = metadata_only_phone(dir.path());
    let (path, data) = film(dir.path(), "film.bin", 8_000_000, 13);
    let id = laptop.put_artifact(&path, None).expect("put");
    let la = online(&laptop).await;
    let da = online(&desktop).await;
    online(&phone).await;
    link(&laptop, la, &desktop).await;
    desktop
        .fetch_artifact_from(&[laptop.device_id()], id, |_, _| {})
        .await
        .expect("the desktop fetches it");
    link(&laptop, la, &phone).await;
    link(&desktop, da, &phone).await;
    // UDP bytes each holder sent the phone, on the session's connection
    // and on the bulk one (up or not yet when the fetch starts).
    let phone_id = phone.device_id();
    let sent = |n: &Node| {
        let main = n
            .connection_stats(&phone_id)
            .map(|s| s.udp_tx.bytes)
            .expect("connected to the phone");
        main + n
            .bulk_connection_stats(&phone_id)
            .map_or(0, |s| s.udp_tx.bytes)
    };
    let (laptop_before, desktop_before) = (sent(&laptop), sent(&desktop));
    let holders = [laptop.device_id(), desktop.device_id()];
    phone
        .fetch_artifact_from(&holders, id, |_, _| {})
        .await
        .expect("fetched");
    let out = dir.path().join("out.bin");
    phone.export_artifact(&id, &out).expect("export");
    assert_eq!(std::fs::read(&out).expect("read"), data);
    let (from_laptop, from_desktop) = (
        sent(&laptop) - laptop_before,
        sent(&desktop) - desktop_before,
    );
    assert!(
        from_laptop > 3_500_000 && from_desktop > 3_500_000,
        "each holder sent about half: {from_laptop} and {from_desktop} bytes"
    );
    assert!(
        from_laptop < 6_000_000 && from_desktop < 6_000_000,
        "neither sent the whole: {from_laptop} and {from_desktop} bytes"
    );

    // A desktop that does not hold it: the laptop sends it all.
    let (other, more) = film(dir.path(), "other.bin", 6_000_000, 3);
    let only_laptop = laptop.put_artifact(&other, None).expect("put");
    phone
        .fetch_artifact_from(&holders, only_laptop, |_, _| {})
        .await
        .expect("fetched from the laptop alone");
    let out = dir.path().join("out2.bin");
    phone.export_artifact(&only_laptop, &out).expect("export");
    assert_eq!(std::fs::read(&out).expect("read"), more);
    for n in [&laptop, &desktop, &phone] {
        n.shutdown().await;
    }
}

/// Prefetching waits while the battery is low (and says so in `status`),
/// and goes once the device reports it charged; the battery level reaches
/// the peer in heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetching_waits_for_the_battery_and_says_why() {
    use nomade_node::schedule::{Deferral, PowerState};
    use nomade_wire::ConnectivityStatus;

    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open");
    let path = dir.path().join("a.bin");
    std::fs::write(&path, vec![3u8; 300_000]).expect("write");
    let id = laptop.put_artifact(&path, None).expect("put");
    laptop
        .set("d", "file", id.to_reference().as_str())
        .expect("reference");
    let low = PowerState {
        battery_level: Some(8),
        charging: false,
        connectivity: ConnectivityStatus::Wifi,
    };
    phone.set_power_state(low);
    let la = online(&laptop).await;
    online(&phone).await;
    link(&laptop, la, &phone).await;
    wait_for(|| !phone.deferred_work().is_empty(), "the prefetch to wait").await;
    let waiting = &phone.status().deferred[0];
    assert_eq!(waiting.items, 1);
    assert_eq!(
        waiting.reason,
        Deferral::BatteryLow {
            level: 8,
            floor: 20
        }
    );
    wait_for(
        || laptop.presence(&phone.device_id()).battery_level == Some(8),
        "the battery level in the phone's heartbeats",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!phone.artifacts().has(&id), "nothing fetched meanwhile");

    phone.set_power_state(PowerState {
        charging: true,
        ..low
    });
    wait_for(|| phone.artifacts().has(&id), "the prefetch once charging").await;
    assert!(phone.deferred_work().is_empty());
    for n in [&laptop, &phone] {
        n.shutdown().await;
    }
}

/// An artifact referenced by an edit made while the devices are connected
/// (a photo sent in a chat) is fetched then, not at the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_referenced_during_the_session_is_fetched_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open");
    let la = online(&laptop).await;
    online(&phone).await;
    link(&laptop, la, &phone).await;
    phone
        .wait_initial_sync(&laptop.device_id(), Duration::from_secs(10))
        .await
        .expect("initial sync");
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, vec![7u8; 150_000]).expect("write");
    let id = laptop.put_artifact(&path, Some("image/jpeg")).expect("put");
    laptop
        .conv_append("chat", id.to_reference().as_str())
        .expect("send the photo");
    wait_for(|| phone.artifacts().has(&id), "the photo to arrive").await;
    for n in [&laptop, &phone] {
        n.shutdown().await;
    }
}

/// A device connected to several: an artifact referenced by an edit is
/// asked first of the device that made the edit (which holds it), not of
/// the others in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_referenced_artifact_is_asked_of_its_author_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| Node::open(&dir.path().join(name), config(name)).expect("open");
    let (laptop, desktop, phone) = (open("laptop"), open("desktop"), open("phone"));
    let la = online(&laptop).await;
    let da = online(&desktop).await;
    online(&phone).await;
    link(&laptop, la, &phone).await;
    link(&desktop, da, &phone).await;
    for holder in [&laptop, &desktop] {
        phone
            .wait_initial_sync(&holder.device_id(), Duration::from_secs(10))
            .await
            .expect("initial sync");
    }
    let path = dir.path().join("scan.pdf");
    std::fs::write(&path, vec![1u8; 120_000]).expect("write");
    let id = desktop.put_artifact(&path, None).expect("put");
    desktop
        .set("papers", "scan", id.to_reference().as_str())
        .expect("reference");
    wait_for(|| phone.artifacts().has(&id), "the scan to arrive").await;
    assert_eq!(
        phone.metrics_snapshot().errors.get("ARTIFACT"),
        None,
        "nothing was asked of the laptop, which does not hold it"
    );
    for n in [&laptop, &desktop, &phone] {
        n.shutdown().await;
    }
}

/// Artifact transfers go on the bulk connection (docs/PROTOCOL.md, "Bulk
/// connections"), whose packets are handled below the priority of live
/// work: the session's own connection carries almost nothing of an 8 MiB
/// fetch. A fetcher running no bulk endpoint is offered none, and the
/// session's own connection carries it all. The artifact arrives intact
/// either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_go_on_the_bulk_connection_and_on_the_session_without_one() {
    const SIZE: usize = 8 << 20;
    for bulk in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
        let phone_config = NodeConfig {
            bulk,
            ..config("phone")
        };
        let phone = Node::open(&dir.path().join("phone"), phone_config).expect("open");
        let addr = online(&laptop).await;
        online(&phone).await;
        link(&laptop, addr, &phone).await;
        let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4093) as u8).collect();
        let path = dir.path().join("film.bin");
        std::fs::write(&path, &content).expect("write");
        let id = laptop.put_artifact(&path, None).expect("put");
        let laptop_id = laptop.device_id();
        if bulk {
            wait_for(
                || phone.bulk_connection_stats(&laptop_id).is_some(),
                "the bulk connection",
            )
            .await;
        }
        let main_before = phone
            .connection_stats(&laptop_id)
            .expect("session")
            .udp_rx
            .bytes;
        phone
            .fetch_artifact(&laptop_id, id, |_| {})
            .await
            .expect("fetch");
        let on_main = phone
            .connection_stats(&laptop_id)
            .expect("session")
            .udp_rx
            .bytes
            - main_before;
        let on_bulk = phone
            .bulk_connection_stats(&laptop_id)
            .map(|s| s.udp_rx.bytes);
        let status = phone.session_status(&laptop_id).expect("session");
        if bulk {
            assert!(
                on_main < (SIZE / 8) as u64,
                "{on_main} bytes on the session's connection"
            );
            assert!(on_bulk.expect("bulk") >= SIZE as u64, "{on_bulk:?}");
            assert_eq!(status.bulk_bytes_received, on_bulk);
            // The holder's side has it too.
            assert!(laptop.bulk_connection_stats(&phone.device_id()).is_some());
        } else {
            assert!(
                on_main >= SIZE as u64,
                "{on_main} bytes on the session's connection"
            );
            assert_eq!(on_bulk, None);
            assert_eq!(status.bulk_bytes_received, None);
            assert!(laptop.bulk_connection_stats(&phone.device_id()).is_none());
        }
        let out = dir.path().join("out.bin");
        phone.export_artifact(&id, &out).expect("export");
        assert!(std::fs::read(&out).expect("read") == content, "bulk {bulk}");
        // The bytes of every connection are counted.
        assert!(phone.metrics_snapshot().bytes_received >= SIZE as u64);
        laptop.shutdown().await;
        phone.shutdown().await;
    }
}
