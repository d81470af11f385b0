//! Revoking a lost device, over real QUIC between real data directories:
//! the revocation spreads, every device refuses the revoked one and what
//! it writes afterwards, artifacts put afterwards are never readable with
//! its key, forged and replayed records change nothing, and the device
//! comes back only with a new identity.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use nomade_artifact::{ArtifactError, ArtifactStore, DeviceKey};
use nomade_crdt::LocalEdit;
use nomade_node::{Node, NodeError};
use nomade_transport::revocation::sign_revocation;
use nomade_transport::DeviceIdentity;
use nomade_wire::{
    EntityType, Envelope, Hash32, Hello, Message, MessageId, Revocation, StreamRole, Value,
};

mod common;
use common::{bare_transport_of, config, link, online, wait_for};

/// A laptop, a desktop and a phone in `dir`, online, the laptop and the
/// phone paired with the desktop and connected to it; the desktop's address.
async fn around_the_desktop(dir: &std::path::Path) -> (Node, Node, Node, SocketAddr) {
    let open = |name: &str| Node::open(&dir.join(name), config(name)).expect("open");
    let (laptop, desktop, phone) = (open("laptop"), open("desktop"), open("phone"));
    let da = online(&desktop).await;
    online(&laptop).await;
    online(&phone).await;
    link(&desktop, da, &laptop).await;
    link(&desktop, da, &phone).await;
    (laptop, desktop, phone, da)
}

fn title(node: &Node) -> Vec<Value> {
    node.core().field_values("trip", "title")
}

fn errors(node: &Node, kind: &str) -> u64 {
    node.metrics_snapshot()
        .errors
        .get(kind)
        .copied()
        .unwrap_or(0)
}

fn set_title(node: &Node, v: &str) -> Vec<nomade_wire::SyncOperation> {
    node.core()
        .edit(
            EntityType::Document,
            "trip",
            LocalEdit::Set {
                key: "title".into(),
                value: v.into(),
            },
        )
        .expect("edit")
}

/// The scenario: three devices; the phone is revoked on the laptop
/// while the phone is offline; the desktop learns it from the laptop; the
/// phone comes back and both refuse it; what it wrote afterwards is
/// applied nowhere; an artifact put afterwards cannot be opened with the
/// phone's key; the phone pairs again only with a new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_phone_is_revoked_everywhere_and_nothing_new_reaches_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| Node::open(&dir.path().join(name), config(name)).expect("open");
    let (laptop, desktop, phone) = (open("laptop"), open("desktop"), open("phone"));
    let (la, da) = (online(&laptop).await, online(&desktop).await);
    online(&phone).await;
    link(&laptop, la, &desktop).await;
    link(&laptop, la, &phone).await;
    link(&desktop, da, &phone).await;

    // Before: the phone's edit reaches both.
    set_title(&phone, "from the phone, before");
    for n in [&laptop, &desktop] {
        wait_for(|| !title(n).is_empty(), "the phone's edit").await;
    }
    let phone_id = phone.device_id();
    let phone_dir = dir.path().join("phone");
    phone.shutdown().await;
    drop(phone);

    // The phone, offline, keeps editing.
    let phone = Node::open(&phone_dir, config("phone")).expect("reopen");
    let later = set_title(&phone, "from the phone, after");

    // Revoked on the laptop; the desktop learns it from the laptop.
    let revoked = laptop.revoke_peer(&phone_id).expect("revoke");
    assert_eq!(revoked.device_id, phone_id.to_string());
    assert_eq!(revoked.cutoff, 1, "the phone's one edit the laptop had");
    let forgot_phone = |n: &Node| {
        n.peers()
            .expect("peers")
            .iter()
            .all(|p| p.device_id != phone_id.to_string())
    };
    wait_for(
        || !desktop.revoked_devices().is_empty() && forgot_phone(&desktop),
        "the desktop to learn the revocation",
    )
    .await;
    for n in [&laptop, &desktop] {
        assert!(forgot_phone(n));
        assert_eq!(n.revoked_devices()[0].device_id, phone_id.to_string());
    }
    // The record is kept: the laptop's own, the desktop's copy of it.
    assert_eq!(
        desktop.revoked_devices()[0].revoked_by[0].0,
        laptop.device_id().to_string()
    );

    // An artifact put after the revocation.
    let file = dir.path().join("after.bin");
    std::fs::write(&file, vec![42u8; 200_000]).expect("write");
    let artifact = laptop.put_artifact(&file, None).expect("put");

    // The phone comes back: both refuse it, whichever way it dials.
    online(&phone).await;
    for addr in [la, da] {
        let peer = if addr == la {
            laptop.device_id()
        } else {
            desktop.device_id()
        };
        let refused = phone.connect(addr, peer).await;
        assert!(refused.is_err(), "a revoked device is refused: {refused:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [&laptop, &desktop] {
        assert_eq!(
            title(n),
            vec![Value::from("from the phone, before")],
            "what the phone wrote after its revocation is applied nowhere"
        );
    }
    // Relayed by anyone (here handed straight to the desktop's log, as a
    // pull does), the phone's later edit is refused and counted.
    let before = errors(&desktop, "REVOKED_OPERATION");
    desktop
        .core()
        .apply_remote("someone", later)
        .expect("refused without an error");
    assert_eq!(errors(&desktop, "REVOKED_OPERATION"), before + 1);
    assert_eq!(title(&desktop), vec![Value::from("from the phone, before")]);

    // Pairing again: refused for the revoked identity, by code or by hand.
    let code = laptop.pairing_code().expect("code");
    assert!(phone.pair_with(la, &code).await.is_err());
    assert!(matches!(
        laptop.add_peer(phone_id, "phone", &[]),
        Err(NodeError::Invalid(_))
    ));
    // A new identity (a new data directory) pairs and syncs as any device.
    let fresh = open("phone-again");
    online(&fresh).await;
    let code = laptop.pairing_code().expect("code");
    let peer = fresh
        .pair_with(la, &code)
        .await
        .expect("pair the new identity");
    fresh
        .wait_initial_sync(&peer, Duration::from_secs(10))
        .await
        .expect("sync");
    assert_eq!(title(&fresh), vec![Value::from("from the phone, before")]);

    // After a restart, the revocation still holds.
    let laptop_dir = dir.path().join("laptop");
    for n in [&laptop, &desktop, &phone, &fresh] {
        n.shutdown().await;
    }
    drop((laptop, desktop));
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    assert_eq!(laptop.revoked_devices().len(), 1);
    assert!(matches!(
        laptop.add_peer(phone_id, "phone", &[]),
        Err(NodeError::Invalid(_))
    ));
    laptop.shutdown().await;
    drop(laptop);

    // The artifact put after the revocation: the laptop's store, opened
    // with the phone's key, refuses it.
    let phone_key = DeviceKey::load_or_create(&phone_dir.join("identity")).expect("key");
    let seen_by_phone =
        ArtifactStore::open(&laptop_dir.join("artifacts"), phone_key, None).expect("open");
    let out = dir.path().join("out.bin");
    assert!(matches!(
        seen_by_phone.export(&artifact, &out),
        Err(ArtifactError::NotARecipient { .. })
    ));
    assert!(!out.exists() || std::fs::read(&out).expect("read").is_empty());
}

/// Two devices revoke each other at once: both are revoked on the third,
/// whichever record it gets first, and it refuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_revoking_each_other_are_both_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (laptop, desktop, phone, da) = around_the_desktop(dir.path()).await;
    laptop
        .add_peer(phone.device_id(), "phone", &[])
        .expect("pair");
    phone
        .add_peer(laptop.device_id(), "laptop", &[])
        .expect("pair");

    let (l, p) = (laptop.clone(), phone.clone());
    let (pid, lid) = (phone.device_id(), laptop.device_id());
    let a = tokio::task::spawn_blocking(move || l.revoke_peer(&pid));
    let b = tokio::task::spawn_blocking(move || p.revoke_peer(&lid));
    a.await.expect("join").expect("laptop revokes the phone");
    b.await
        .expect("join")
        .expect("the phone revokes the laptop");

    wait_for(
        || desktop.revoked_devices().len() == 2,
        "the desktop to hold both revocations",
    )
    .await;
    wait_for(
        || desktop.peers().expect("peers").is_empty(),
        "the desktop to forget both",
    )
    .await;
    wait_for(
        || desktop.connected_peers().is_empty(),
        "both connections to close after the grace",
    )
    .await;
    // Each learned, from the desktop, that it was revoked.
    for n in [&laptop, &phone] {
        wait_for(|| n.is_revoked(), "a device to learn it was revoked").await;
    }
    for n in [&laptop, &phone] {
        assert!(n.connect(da, desktop.device_id()).await.is_err());
    }
    for n in [&laptop, &desktop, &phone] {
        n.shutdown().await;
    }
}

/// Records that must change nothing: forged (signed by a device nobody
/// paired, or not signed by the key named), replayed, a device revoking
/// itself, and a revocation of this very device. Each is refused (or
/// handled) as documented and counted; the stream and the session go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_self_revocations_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    let addr = online(&laptop).await;
    // A paired device driven by hand, sending records on a revocation stream.
    let tablet_identity = DeviceIdentity::generate().expect("identity");
    let tablet_id = tablet_identity.device_id();
    let tablet = bare_transport_of(tablet_identity.clone(), &laptop);
    laptop.add_peer(tablet_id, "tablet", &[]).expect("pair");
    let conn = tablet
        .connect(addr, Some(laptop.device_id()))
        .await
        .expect("connect");
    let (mut control, mut answers) = conn.open_bi(StreamRole::Control).await.expect("control");
    let hello = Hello {
        device_id: tablet_id.to_string(),
        device_name: "tablet".into(),
        protocol_version: nomade_wire::PROTOCOL_VERSION,
        capabilities: vec![],
        sync_state_hash: Hash32::default(),
    };
    control
        .send(&Envelope::new(MessageId::from([1; 16]), 0, hello))
        .await
        .expect("hello");
    let answer = answers.recv().await.expect("recv").expect("an answer");
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");

    let stranger = DeviceIdentity::generate().expect("identity");
    let victim = DeviceIdentity::generate().expect("identity").device_id();
    laptop.add_peer(victim, "victim", &[]).expect("pair");
    let forged_by_stranger = sign_revocation(&stranger, &victim, 0, 1).expect("sign");
    let good = sign_revocation(&tablet_identity, &victim, 0, 2).expect("sign");
    let unsigned = Revocation {
        signature: Bytes::from_static(&[0u8; 70]),
        ..good.clone()
    };
    let self_revoking = Revocation {
        revoked: tablet_id.to_string(),
        ..good.clone()
    };
    let of_the_laptop = sign_revocation(&tablet_identity, &laptop.device_id(), 0, 3).expect("sign");

    let mut tx = conn.open_uni(StreamRole::Revocation).await.expect("open");
    let records = [
        forged_by_stranger,
        unsigned,
        self_revoking,
        good.clone(),
        good.clone(),
        of_the_laptop,
    ];
    for (i, r) in records.into_iter().enumerate() {
        tx.send(&Envelope::new(MessageId::from([10 + i as u8; 16]), 0, r))
            .await
            .expect("send");
    }
    tx.finish().await.expect("finish");
    wait_for(
        || laptop.metrics_snapshot().revocations_already_held == 1 && laptop.is_revoked(),
        "the records to be read",
    )
    .await;
    assert_eq!(errors(&laptop, "REVOCATION_UNKNOWN_SIGNER"), 1);
    assert_eq!(errors(&laptop, "REVOCATION_INVALID"), 1);
    assert_eq!(errors(&laptop, "REVOCATION_SELF"), 1);
    // The good one took effect; the revocation of the laptop itself is
    // kept and shown (the devices that know refuse it), not enforced on itself.
    let revoked: Vec<String> = laptop
        .revoked_devices()
        .into_iter()
        .map(|r| r.device_id)
        .collect();
    let mut expected = vec![victim.to_string(), laptop.device_id().to_string()];
    expected.sort();
    let mut got = revoked.clone();
    got.sort();
    assert_eq!(got, expected);
    assert!(laptop
        .peers()
        .expect("peers")
        .iter()
        .all(|p| p.device_id != victim.to_string()));
    // The tablet's session is still up.
    assert!(laptop.connected_peers().contains(&tablet_id));
    // And the laptop cannot revoke itself.
    assert!(matches!(
        laptop.revoke_peer(&laptop.device_id()),
        Err(NodeError::Invalid(_))
    ));
    laptop.shutdown().await;
}

/// A device that learns of a revocation late, after it applied more of the
/// revoked device's edits than the revoker had, keeps them and raises the
/// cutoff with a record of its own: every device converges on the same
/// history, the revoker included (it pulls again what it refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_learned_late_raises_the_cutoff_and_all_converge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (laptop, desktop, phone, da) = around_the_desktop(dir.path()).await;
    set_title(&phone, "one");
    wait_for(|| !title(&laptop).is_empty(), "the first edit").await;

    // The laptop goes offline and revokes the phone there (cutoff 1).
    let laptop_dir = dir.path().join("laptop");
    laptop.shutdown().await;
    drop(laptop);
    let laptop = Node::open(&laptop_dir, config("laptop")).expect("reopen");
    let phone_id = phone.device_id();
    assert_eq!(laptop.revoke_peer(&phone_id).expect("revoke").cutoff, 1);

    // Meanwhile the desktop, not knowing, takes the phone's next edit.
    set_title(&phone, "two");
    wait_for(
        || title(&desktop) == vec![Value::from("two")],
        "the desktop to take the second edit",
    )
    .await;

    // They meet: the desktop keeps what it applied and says so; the
    // laptop takes the phone's second edit after all.
    online(&laptop).await;
    laptop
        .connect(da, desktop.device_id())
        .await
        .expect("connect");
    wait_for(
        || laptop.revoked_devices().first().map(|r| r.cutoff) == Some(2),
        "the laptop to learn the raised cutoff",
    )
    .await;
    wait_for(
        || title(&laptop) == vec![Value::from("two")],
        "the laptop to pull the second edit again",
    )
    .await;
    wait_for(
        || laptop.state_hash() == desktop.state_hash(),
        "the two to converge",
    )
    .await;
    let by: Vec<String> = desktop.revoked_devices()[0]
        .revoked_by
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(by.len(), 2, "the laptop's record and the desktop's: {by:?}");
    wait_for(
        || desktop.connected_peers() == vec![laptop.device_id()],
        "the phone to be dropped",
    )
    .await;
    // Nothing the phone writes now is taken.
    set_title(&phone, "three");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(title(&desktop), vec![Value::from("two")]);
    for n in [&laptop, &desktop, &phone] {
        n.shutdown().await;
    }
}

/// A device keeps at most `max_revocations` records: one more is refused
/// and counted, and changes nothing. A damaged list of records in the
/// store stops the node from opening (it must not start without knowing
/// whom it revoked), with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_bounded_and_a_damaged_list_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("laptop");
    let laptop = Node::open(
        &path,
        nomade_node::NodeConfig {
            max_revocations: 2,
            ..config("laptop")
        },
    )
    .expect("open");
    let others: Vec<_> = (0..3)
        .map(|_| DeviceIdentity::generate().expect("identity").device_id())
        .collect();
    for id in &others {
        laptop.add_peer(*id, "", &[]).expect("pair");
    }
    laptop.revoke_peer(&others[0]).expect("first");
    laptop.revoke_peer(&others[1]).expect("second");
    let third = laptop.revoke_peer(&others[2]);
    assert!(
        matches!(
            third,
            Err(NodeError::Revocation(
                nomade_node::revocations::RevocationRefused::TooMany { limit: 2 }
            ))
        ),
        "{third:?}"
    );
    assert_eq!(errors(&laptop, "REVOCATION_TOO_MANY"), 1);
    assert_eq!(laptop.revoked_devices().len(), 2);
    assert!(laptop
        .peers()
        .expect("peers")
        .iter()
        .any(|p| p.device_id == others[2].to_string()));

    laptop
        .core()
        .store()
        .set_meta("revocations", b"\x92\xa7garbage\x01")
        .expect("damage");
    laptop.shutdown().await;
    drop(laptop);
    match Node::open(&path, config("laptop")) {
        Err(NodeError::Store(nomade_node::error::StoreError::Corrupt { what })) => {
            assert!(what.contains("revocations"), "{what}")
        }
        other => panic!("expected a corrupt store, got {:?}", other.map(|_| ())),
    }
}
