//! Selective sync over real QUIC between real data directories: a device
//! subscribed to some entities receives and holds only those, gets later
//! subscriptions' history filled in, keeps all of it across a restart, and
//! a peer's malformed subscription is refused and counted.

use nomade_crdt::Subscription;
use nomade_node::{Node, NodeError};
use nomade_wire::{EntityType, Envelope, Message, MessageId, StreamRole, SyncRequest};

mod common;
use common::{config, hand_driven_peer, link, online, wait_for};

/// Whether `node` holds `doc` with the title `title`.
fn title_is(node: &Node, doc: &str, title: &str) -> bool {
    node.document(doc)
        .and_then(|d| d.get("title").cloned())
        .is_some_and(|v| v == title.into())
}

fn doc_ids(node: &Node) -> Vec<String> {
    node.core()
        .entities()
        .into_iter()
        .map(|(t, id)| format!("{}:{id}", t.as_str()))
        .collect()
}

/// The scenario: a laptop holds ten documents and a family
/// conversation; a phone subscribed to one document and the family
/// conversations holds exactly those, its state equal to the laptop's for
/// them; live edits of other documents reach it only as skips; subscribing
/// to another document fills in that document's whole history (written
/// before and after the phone's first sync, text included); its own edits
/// reach the laptop; an edit of an entity it does not hold is refused; all
/// of it holds after a restart, and a full device pulling from the phone
/// gets the phone's edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_device_holds_its_entities_and_fills_in_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    for i in 0..10 {
        let doc = format!("doc{i}");
        laptop
            .set(&doc, "title", format!("document {i}"))
            .expect("set");
        laptop
            .replace_text(&doc, "body", "", &format!("the text of document {i}"))
            .expect("text");
    }
    laptop.conv_append("family-chat", "hello").expect("append");
    laptop.conv_append("work-chat", "standup").expect("append");
    // A photo referenced by doc3, a video by doc4: artifacts follow the
    // subscription (only those its entities refer to are known).
    let put = |name: &str, mime: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, name.repeat(1000)).expect("write");
        laptop.put_artifact(&path, Some(mime)).expect("put")
    };
    let photo = put("photo", "image/jpeg");
    let video = put("video", "video/mp4");
    laptop
        .set("doc3", "photo", photo.to_reference().as_str())
        .expect("set");
    laptop
        .set("doc4", "video", video.to_reference().as_str())
        .expect("set");

    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("open");
    let wanted = Subscription::parse(["document:doc3", "conversation:family-*"]).expect("ok");
    assert!(phone.set_subscription(wanted.clone()).expect("subscribe"));
    assert_eq!(phone.subscription(), wanted);

    let addr = online(&laptop).await;
    online(&phone).await;
    link(&laptop, addr, &phone).await;
    wait_for(
        || phone.text("doc3", "body").as_deref() == Some("the text of document 3"),
        "doc3 on the phone",
    )
    .await;
    wait_for(
        || phone.conversation("family-chat").is_some(),
        "the family chat on the phone",
    )
    .await;
    assert_eq!(
        doc_ids(&phone),
        vec!["document:doc3", "conversation:family-chat"],
        "the phone holds its subscription and nothing else"
    );
    assert_eq!(
        phone.core().state_hash_of(&wanted),
        laptop.core().state_hash_of(&wanted),
        "the subscribed entities are the same on both"
    );
    wait_for(
        || {
            phone
                .artifact_entries()
                .expect("entries")
                .iter()
                .any(|e| e.id == photo.to_hex() && e.state == nomade_node::ArtifactState::Local)
        },
        "the photo doc3 refers to, fetched",
    )
    .await;
    assert!(
        phone
            .artifact_entries()
            .expect("entries")
            .iter()
            .all(|e| e.id != video.to_hex()),
        "the video only doc4 refers to is not known"
    );
    // Counted to the laptop's last counter: nothing is asked for again.
    wait_for(
        || phone.core().version_vector() == laptop.core().version_vector(),
        "the phone's version vector to reach the laptop's",
    )
    .await;

    // Live: an edit of doc3 arrives, edits of doc5 do not.
    laptop
        .set("doc5", "title", "changed while the phone watches")
        .expect("set");
    laptop
        .replace_text(
            "doc5",
            "body",
            "the text of document 5",
            "a new body for five",
        )
        .expect("text");
    laptop.set("doc3", "title", "changed too").expect("set");
    wait_for(
        || title_is(&phone, "doc3", "changed too"),
        "the live edit of doc3",
    )
    .await;
    assert!(phone.document("doc5").is_none(), "doc5 is not held");
    assert_eq!(
        phone.core().version_vector(),
        laptop.core().version_vector()
    );

    // An edit of an entity the phone does not hold is refused.
    let refused = phone.set("doc5", "title", "from the phone");
    assert!(
        matches!(refused, Err(NodeError::NotSubscribed { .. })),
        "{refused:?}"
    );
    assert!(phone.document("doc5").is_none());

    // Subscribing to doc5 fills in its history: the text written before
    // the first sync and the edits skipped since.
    assert!(phone.subscribe_to("document:doc5").expect("subscribe"));
    wait_for(
        || phone.text("doc5", "body").as_deref() == Some("a new body for five"),
        "doc5's history on the phone",
    )
    .await;
    let wider = phone.subscription();
    wait_for(
        || phone.core().state_hash_of(&wider) == laptop.core().state_hash_of(&wider),
        "doc3, doc5 and the family chat equal on both",
    )
    .await;
    wait_for(|| !phone.core().refilling(), "the fill-in to end").await;
    assert!(phone.document("doc4").is_none(), "still no doc4");

    // The phone's own edits reach the laptop: a new document of its own
    // (which follows nothing), then an edit of doc5.
    phone.subscribe_to("document:phone-*").expect("subscribe");
    phone.set("phone-notes", "todo", "buy bread").expect("set");
    phone.set("doc5", "title", "from the phone").expect("set");
    wait_for(
        || title_is(&laptop, "doc5", "from the phone"),
        "the phone's edit on the laptop",
    )
    .await;

    // After a restart, the phone holds the same, and its subscription.
    let wider = phone.subscription();
    let held = phone.core().state_hash_of(&wider);
    phone.shutdown().await;
    drop(phone);
    let phone = Node::open(&dir.path().join("phone"), config("phone")).expect("reopen");
    assert_eq!(phone.subscription(), wider);
    assert_eq!(phone.core().state_hash_of(&wider), held);
    assert_eq!(
        doc_ids(&phone),
        vec![
            "document:doc3",
            "document:doc5",
            "document:phone-notes",
            "conversation:family-chat"
        ]
    );

    // A device holding everything that pulls from the phone alone gets
    // the phone's own new document, and nothing of the laptop's after the
    // first the phone skipped (the phone's edit of doc5 follows the
    // laptop's history of it, so it waits until the desktop has that).
    assert!(laptop.document("phone-notes").is_some());
    let desktop = Node::open(&dir.path().join("desktop"), config("desktop")).expect("open");
    let phone_addr = online(&phone).await;
    online(&desktop).await;
    link(&phone, phone_addr, &desktop).await;
    wait_for(
        || desktop.document("phone-notes").is_some(),
        "the phone's document on the desktop",
    )
    .await;
    assert!(
        desktop.document("doc4").is_none() && desktop.document("doc5").is_none(),
        "the phone relays nothing of what it skipped"
    );
    // Once the desktop meets the laptop, it holds everything.
    link(&laptop, addr, &desktop).await;
    wait_for(
        || desktop.state_hash() == laptop.state_hash(),
        "the desktop equal to the laptop",
    )
    .await;
    assert_eq!(
        desktop
            .document("doc5")
            .and_then(|d| d.get("title").cloned()),
        Some("from the phone".into())
    );
    phone.shutdown().await;
    desktop.shutdown().await;
    laptop.shutdown().await;
}

/// BAD_INPUTS: a peer whose SYNC_REQUEST states a malformed subscription is
/// answered with ERROR INVALID_MESSAGE, counted, and sent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_subscription_from_a_peer_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = Node::open(&dir.path().join("laptop"), config("laptop")).expect("open");
    laptop.set("doc", "title", "secret").expect("set");
    let addr = online(&laptop).await;
    let (_transport, conn, _hello) = hand_driven_peer(&laptop, addr, |_| {}).await;
    let cases: [Vec<String>; 3] = [
        vec!["document:a*b".to_string()],
        vec!["file:x".to_string()],
        (0..=nomade_crdt::MAX_PATTERNS)
            .map(|i| format!("document:{i}"))
            .collect(),
    ];
    for (i, patterns) in cases.into_iter().enumerate() {
        let request = Envelope::new(
            MessageId::from([i as u8 + 2; 16]),
            0,
            SyncRequest {
                entity_types: vec![EntityType::Document],
                since_timestamp: None,
                full_sync: true,
                version_vector: None,
                subscription: Some(patterns),
            },
        );
        let (mut tx, mut rx) = conn.open_bi(StreamRole::Sync).await.expect("sync stream");
        tx.send(&request).await.expect("send");
        let answer = rx.recv().await.expect("recv").expect("an answer");
        match answer.message {
            Message::Error(e) => {
                assert_eq!(
                    e.error_code,
                    nomade_wire::ErrorCode::INVALID_MESSAGE,
                    "{e:?}"
                );
                assert!(e.error_message.contains("subscription"), "{e:?}");
            }
            other => panic!("expected an ERROR, got {other:?}"),
        }
    }
    let counted = laptop.metrics().snapshot();
    assert_eq!(
        counted.errors.get("SUBSCRIPTION_INVALID").copied(),
        Some(3),
        "{:?}",
        counted.errors
    );
    laptop.shutdown().await;
}
