//! A node's history lives on disk: the replica starts from the latest
//! snapshot and the operations stored after it, and gets the state a full
//! replay would; a damaged snapshot stops it with a message saying so,
//! never a half-loaded state.

use std::path::Path;

use nomade_crdt::{LocalEdit, Replica, ReplicaConfig};
use nomade_node::core::{Core, SNAPSHOT_EVERY};
use nomade_node::store::Store;
use nomade_node::NodeError;
use nomade_wire::{EntityType, Value};

const ME: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";

/// Edit number `i` of a deterministic sequence of several kinds, each one
/// counter: the state after the first `n` is known whatever stored them.
fn edit_at(i: u64) -> (EntityType, String, LocalEdit) {
    match i % 3 {
        0 => (
            EntityType::Document,
            format!("doc-{}", i % 17),
            LocalEdit::Set {
                key: format!("k{}", i % 5),
                value: Value::Int(i as i64),
            },
        ),
        1 => (
            EntityType::Document,
            "notes".to_string(),
            LocalEdit::Splice {
                field: "body".into(),
                position: 0,
                delete: 0,
                insert: "x".into(),
            },
        ),
        _ => (
            EntityType::Conversation,
            "chat".to_string(),
            LocalEdit::Insert {
                index: 0,
                value: Value::Int(i as i64),
            },
        ),
    }
}

/// Edits `from..from + n` of [`edit_at`], committed 500 at a time.
fn edit(core: &Core, from: u64, n: u64) {
    let mut batch = Vec::new();
    for i in from..from + n {
        batch.push(edit_at(i));
        if batch.len() == 500 {
            core.edit_many(std::mem::take(&mut batch)).expect("edits");
        }
    }
    if !batch.is_empty() {
        core.edit_many(batch).expect("edits");
    }
}

/// The state hash of a replay of the first `n` edits on a fresh replica in
/// memory: what a node that stored them must hold, however its history was
/// snapshotted or compacted.
fn replayed_hash(n: u64) -> nomade_wire::Hash32 {
    let mut r = Replica::new(ME);
    for i in 0..n {
        let (t, id, e) = edit_at(i);
        r.apply_local(t, &id, e, 0).expect("edit");
    }
    r.state_hash()
}

/// How many edits a node holds: its own counter (each edit is one).
fn edits_held(core: &Core) -> u64 {
    core.version_vector().get(ME).copied().unwrap_or(0)
}

#[test]
fn a_node_starts_from_its_snapshot_and_the_tail_with_the_state_of_a_full_replay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a");
    let total = SNAPSHOT_EVERY + 2_345;
    let hash = {
        let core = Core::open(&dir, ME, ReplicaConfig::default()).expect("open");
        edit(&core, 0, total);
        core.state_hash()
    };
    // A snapshot was written on the way (the core was not shut down: no
    // checkpoint), covering part of the log; the rest is the tail.
    let store = Store::open(&dir.join("nomade.redb")).expect("store");
    let (covered, _) = store.snapshot().expect("read").expect("a snapshot");
    assert!(covered >= SNAPSHOT_EVERY && covered < total, "{covered}");
    drop(store);
    assert_eq!(replayed_hash(total), hash);
    let reopened = Core::open(&dir, ME, ReplicaConfig::default()).expect("reopen");
    assert_eq!(reopened.state_hash(), hash);
    assert_eq!(edits_held(&reopened), total);
    // Editing goes on where it stopped, and a later start agrees again.
    edit(&reopened, total, 10);
    let hash = reopened.state_hash();
    reopened.checkpoint();
    drop(reopened);
    assert_eq!(replayed_hash(total + 10), hash);
    let store = Store::open(&dir.join("nomade.redb")).expect("store");
    assert_eq!(
        store.snapshot().expect("read").expect("some").0,
        total + 10,
        "checkpointed"
    );
    drop(store);
    let again = Core::open(&dir, ME, ReplicaConfig::default()).expect("reopen");
    assert_eq!(again.state_hash(), hash);
}

/// A snapshot damaged on disk (one byte of it flipped in the file) stops
/// the node with a message naming the snapshot: it does not start on a
/// half-loaded or wrong state.
#[test]
fn a_damaged_snapshot_stops_the_node_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a");
    {
        let core = Core::open(&dir, ME, ReplicaConfig::default()).expect("open");
        edit(&core, 0, 1_500);
        core.checkpoint();
    }
    let path = dir.join("nomade.redb");
    let (_, bytes) = Store::open(&path)
        .expect("store")
        .snapshot()
        .expect("read")
        .expect("a snapshot");
    // Stored compressed: look for the compressed bytes.
    let stored = lz4_flex::block::compress(&bytes);
    let probe = &stored[stored.len() / 2..stored.len() / 2 + 48];
    let mut file = std::fs::read(&path).expect("read");
    let at = file
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("the snapshot's bytes are in the file");
    file[at + 20] ^= 0x40;
    std::fs::write(&path, &file).expect("write");
    match Core::open(&dir, ME, ReplicaConfig::default()) {
        Err(e) => {
            assert!(matches!(e, NodeError::Store(_)), "{e:?}");
            assert!(e.to_string().contains("snapshot"), "{e}");
        }
        Ok(_) => panic!("opened on a damaged snapshot"),
    }
}

#[test]
fn a_snapshot_damaged_under_its_header_is_refused_by_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("s.redb");
    let store = Store::open(&path).expect("store");
    assert!(store.snapshot().expect("read").is_none());
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    store.put_snapshot(42, &big).expect("write");
    assert_eq!(store.snapshot().expect("read"), Some((42, big.clone())));
    // A smaller one replaces it whole.
    store.put_snapshot(50, b"small").expect("write");
    assert_eq!(
        store.snapshot().expect("read"),
        Some((50, b"small".to_vec()))
    );
    drop(store);
    // Damage the chunk on disk behind the header's back: find its bytes in
    // the file and flip one.
    let mut file = std::fs::read(&path).expect("read");
    let at = file
        .windows(5)
        .position(|w| w == b"small")
        .expect("the chunk is in the file");
    file[at] ^= 1;
    std::fs::write(&path, &file).expect("write");
    let store = Store::open(&path).expect("store");
    match store.snapshot() {
        Err(nomade_node::error::StoreError::Corrupt { what }) => {
            assert!(what.contains("snapshot"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

/// Set in the environment of the process that
/// [`bad_input_killed_while_snapshots_are_written_and_history_compacted_loses_nothing_acknowledged`]
/// starts (this same test binary): it then edits its directory until killed.
const CHILD_DIR: &str = "NOMADE_TEST_SNAPSHOT_CHILD_DIR";

/// The child's part: edits in commits of 2,000 (a snapshot every 20,000
/// operations, so about a tenth of the commits write one), printing each
/// commit's last sequence number once it is durable.
fn edit_until_killed(dir: &Path) -> ! {
    use std::io::Write;
    let core = Core::open(dir, ME, ReplicaConfig::default()).expect("child open");
    let mut next = edits_held(&core);
    loop {
        edit(&core, next, 2_000);
        next += 2_000;
        println!("durable {}", edits_held(&core));
        std::io::stdout().flush().expect("stdout");
    }
}

/// kill -9 while snapshots are written and the history is compacted (a
/// device with no paired device compacts everything its snapshot covers):
/// after each restart everything acknowledged is there, and the state
/// equals a replay of every edit (a half-written snapshot or a half-done
/// compaction is never seen).
#[test]
fn bad_input_killed_while_snapshots_are_written_and_history_compacted_loses_nothing_acknowledged() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        edit_until_killed(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a");
    let mut snapshots_seen = std::collections::BTreeSet::new();
    let mut compactions_seen = 0;
    // Kill after a varying number of durable commits, so that the kills
    // fall at different points of the commit and snapshot cycle.
    for (round, commits) in [3usize, 7, 12, 4, 9, 15].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "--exact",
                "bad_input_killed_while_snapshots_are_written_and_history_compacted_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child");
        let out = child.stdout.take().expect("stdout");
        let mut acknowledged = 0u64;
        let mut lines = std::io::BufReader::new(out).lines();
        let mut seen = 0;
        while seen < commits {
            let line = lines.next().expect("the child runs").expect("a line");
            if let Some(n) = line.strip_prefix("durable ") {
                acknowledged = n.parse().expect("a count");
                seen += 1;
            }
        }
        // Mid-commit, or mid-snapshot: wherever the next write is.
        std::thread::sleep(std::time::Duration::from_millis(3 * round as u64));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let core = Core::open(&dir, ME, ReplicaConfig::default()).expect("reopen after kill -9");
        let held = edits_held(&core);
        assert!(
            held >= acknowledged,
            "round {round}: {held} stored, {acknowledged} acknowledged",
        );
        let hash = core.state_hash();
        drop(core);
        assert_eq!(
            replayed_hash(held),
            hash,
            "round {round}: not the state of a replay"
        );
        let store = Store::open(&dir.join("nomade.redb")).expect("store");
        // With no paired device, everything a snapshot covers is compacted
        // as it is written: kills fall during compactions too.
        if !store.compacted().expect("readable").is_empty() {
            compactions_seen += 1;
        }
        if let Some((covered, _)) = store.snapshot().expect("a readable snapshot") {
            snapshots_seen.insert(covered);
        }
    }
    assert!(
        snapshots_seen.len() >= 2,
        "snapshots were written along the way: {snapshots_seen:?}"
    );
    assert!(
        compactions_seen >= 2,
        "the history was compacted along the way"
    );
}

const OTHER: &str = "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals";

/// A peer's snapshot adopted by a device that has its own edits: the state
/// becomes the snapshot's with those edits on top, stored in one
/// transaction (the log restarts after it), and it survives a restart. One
/// that would lose operations this device compacted is refused, and bytes
/// that are not a snapshot are a typed error; both change nothing, in
/// memory or on disk.
#[test]
fn adopting_a_peer_snapshot_keeps_own_edits_and_refuses_to_lose_any() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The peer: its whole history in a snapshot.
    let peer = Core::open(&tmp.path().join("peer"), OTHER, ReplicaConfig::default()).expect("open");
    peer.edit_many((0..3_000).map(edit_at).collect())
        .expect("edits");
    peer.checkpoint();
    let (_, _, peer_state) = peer.stored_snapshot().expect("read").expect("a snapshot");

    // A device with a few edits of its own, not compacted (a paired device
    // that holds none of them holds compaction back).
    let dir = tmp.path().join("mine");
    let mine = Core::open(&dir, ME, ReplicaConfig::default()).expect("open");
    mine.store().update_peer(OTHER, |_| {}).expect("pair");
    mine.edit(
        EntityType::Document,
        "mine",
        LocalEdit::Set {
            key: "k".into(),
            value: Value::Int(7),
        },
    )
    .expect("edit");
    // Garbage: a typed error, nothing changes.
    let before = mine.state_hash();
    assert!(matches!(
        mine.adopt_snapshot(OTHER, b"\x93not a snapshot"),
        Err(NodeError::Crdt(_))
    ));
    assert_eq!(mine.state_hash(), before);
    // Adopted: the peer's state and this device's edit.
    mine.adopt_snapshot(OTHER, &peer_state).expect("adopted");
    assert_eq!(mine.document("mine").expect("kept")["k"], Value::Int(7));
    assert_eq!(mine.document("doc-3"), peer.document("doc-3"));
    let hash = mine.state_hash();
    assert_eq!(mine.compacted().get(OTHER).copied(), Some(3_000));
    drop(mine);
    let mine = Core::open(&dir, ME, ReplicaConfig::default()).expect("reopen");
    assert_eq!(mine.state_hash(), hash, "after a restart");

    // A device that compacted its own edits (no paired device) cannot adopt
    // a snapshot that lacks them.
    let alone_dir = tmp.path().join("alone");
    let alone = Core::open(&alone_dir, ME, ReplicaConfig::default()).expect("open");
    edit(&alone, 0, SNAPSHOT_EVERY + 10);
    assert!(
        alone.compacted().get(ME).copied().unwrap_or(0) > 0,
        "compacted"
    );
    let before = alone.state_hash();
    match alone.adopt_snapshot(OTHER, &peer_state) {
        Err(NodeError::SnapshotRefused(why)) => assert!(why.contains("compacted"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(alone.state_hash(), before);
    drop(alone);
    let alone = Core::open(&alone_dir, ME, ReplicaConfig::default()).expect("reopen");
    assert_eq!(alone.state_hash(), before, "nothing stored");
}
