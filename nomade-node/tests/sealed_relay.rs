//! Sealed relays over QUIC (docs/PROTOCOL.md, "Sealed relays"): an
//! artifact sealed for some devices only reaches them through a device
//! that holds and passes on its records without being able to open them.

mod common;

use common::{config, link, online, wait_for};
use nomade_artifact::ArtifactError;
use nomade_node::{ArtifactState, Node, NodeError};

/// `len` bytes of a pattern that does not repeat within a chunk.
fn film(dir: &std::path::Path, name: &str, len: u32, seed: u32) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).expect("write");
    (path, data)
}

/// A line laptop - desktop - phone. The laptop puts a 64 MiB video for
/// itself and the phone only (it learned the phone's artifact key when
/// they last met), and a second, smaller one. The desktop fetches both by
/// its policy: it keeps their sealed records and cannot open them (typed
/// error; its disk holds no plaintext; `artifacts` lists them as held for
/// others). With the laptop offline, the phone gets the video through the
/// desktop and reads it. The desktop's copy of the second was altered: the
/// phone refuses it (counted), keeps nothing wrong, and gets it from the
/// laptop once that is back, resuming after the chunk before the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_sealed_for_the_phone_reaches_it_through_a_desktop_that_cannot_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop_dir = dir.path().join("laptop");
    let phone_dir = dir.path().join("phone");
    let mut laptop = Node::open(&laptop_dir, config("laptop")).expect("open");
    let desktop = Node::open(&dir.path().join("desktop"), config("desktop")).expect("open");
    let phone = Node::open(&phone_dir, config("phone")).expect("open");
    let (video_path, video) = film(dir.path(), "video.mp4", 64 << 20, 7);
    let (notes_path, notes) = film(dir.path(), "notes.bin", 3 << 20, 99);

    // Without having met the phone, the laptop cannot seal for it.
    laptop
        .add_peer(phone.device_id(), "phone", &[])
        .expect("pair");
    assert!(matches!(
        laptop.put_artifact_for(&video_path, Some("video/mp4"), &[phone.device_id()]),
        Err(NodeError::NoArtifactKey { .. })
    ));
    // They meet: each tells the other its artifact key.
    let laptop_addr = online(&laptop).await;
    online(&phone).await;
    link(&laptop, laptop_addr, &phone).await;
    let phone_id = phone.device_id().to_string();
    wait_for(
        || {
            laptop
                .peers()
                .expect("peers")
                .iter()
                .any(|p| p.device_id == phone_id && p.artifact_key.is_some())
        },
        "the laptop to learn the phone's artifact key",
    )
    .await;
    phone.shutdown().await;
    drop(phone);

    let video_id = laptop
        .put_artifact_for(
            &video_path,
            Some("video/mp4"),
            &[phone_id.parse().expect("id")],
        )
        .expect("put the video for the phone");
    let notes_id = laptop
        .put_artifact_for(&notes_path, None, &[phone_id.parse().expect("id")])
        .expect("put the notes for the phone");
    let info = laptop.artifacts().metadata(&video_id).expect("meta");
    assert!(info.restricted && info.recipients.len() == 2);
    laptop
        .set("trip", "video", video_id.to_reference().as_str())
        .expect("reference");
    laptop
        .set("trip", "notes", notes_id.to_reference().as_str())
        .expect("reference");

    // The desktop holds them for the others.
    let desktop_addr = online(&desktop).await;
    link(&laptop, laptop_addr, &desktop).await;
    wait_for(
        || desktop.artifacts().has(&video_id) && desktop.artifacts().has(&notes_id),
        "the desktop to hold both artifacts' records",
    )
    .await;
    let held = desktop.artifacts().metadata(&video_id).expect("meta");
    assert!(held.relay_copy && held.restricted);
    assert_eq!(held.recipients, info.recipients);
    assert!(!held.is_recipient(&desktop.artifacts().public_key()));
    let out = dir.path().join("desktop-out");
    assert!(matches!(
        desktop.export_artifact(&video_id, &out),
        Err(NodeError::Artifact(ArtifactError::NotARecipient { .. }))
    ));
    assert!(!out.exists());
    let entries = desktop.artifact_entries().expect("entries");
    assert!(entries
        .iter()
        .filter(|e| e.id == video_id.to_hex() || e.id == notes_id.to_hex())
        .all(|e| e.state == ArtifactState::HeldForOthers));
    // Only ciphertext on its disk: no 64-byte piece of the plaintext.
    let dat = |id: &nomade_artifact::ArtifactId| {
        dir.path()
            .join("desktop")
            .join("artifacts")
            .join("objects")
            .join(format!("{}.dat", id.to_hex()))
    };
    let on_disk = std::fs::read(dat(&video_id)).expect("the desktop's records");
    for at in [0usize, 1 << 20, 40 << 20, (64 << 20) - 64] {
        let piece = &video[at..at + 64];
        assert!(
            !on_disk.windows(64).any(|w| w == piece),
            "plaintext at {at}"
        );
    }
    // A relay that alters a sealed record (chunk 1 of the notes).
    let mut raw = std::fs::read(dat(&notes_id)).expect("read");
    raw[65_536 + 28 + 500] ^= 0x40;
    std::fs::write(dat(&notes_id), &raw).expect("write");

    // The laptop goes offline; the phone meets the desktop only.
    laptop.shutdown().await;
    drop(laptop);
    let phone = Node::open(&phone_dir, config("phone")).expect("open again");
    online(&phone).await;
    link(&desktop, desktop_addr, &phone).await;
    wait_for(
        || phone.artifacts().has(&video_id),
        "the phone to get the video",
    )
    .await;
    let out = dir.path().join("phone-video.mp4");
    phone
        .export_artifact(&video_id, &out)
        .expect("the phone opens it");
    assert!(
        std::fs::read(&out).expect("read") == video,
        "the video, byte for byte"
    );
    wait_for(
        || {
            phone
                .metrics_snapshot()
                .errors
                .get("ARTIFACT")
                .copied()
                .unwrap_or(0)
                > 0
        },
        "the altered record to be refused and counted",
    )
    .await;
    assert!(!phone.artifacts().has(&notes_id), "nothing wrong stored");

    // The laptop is back: the phone gets the notes from it.
    laptop = Node::open(&laptop_dir, config("laptop")).expect("open again");
    let laptop_addr = online(&laptop).await;
    phone
        .add_peer(laptop.device_id(), "laptop", &[laptop_addr])
        .expect("address");
    phone
        .connect(laptop_addr, laptop.device_id())
        .await
        .expect("connect");
    phone
        .fetch_artifact_from(&[laptop.device_id()], notes_id, |_, _| {})
        .await
        .expect("fetched from the laptop");
    let out = dir.path().join("phone-notes.bin");
    phone.export_artifact(&notes_id, &out).expect("export");
    assert!(std::fs::read(&out).expect("read") == notes);
    for n in [&laptop, &desktop, &phone] {
        n.shutdown().await;
    }
}
