//! Operations from a peer that a node must refuse, hold back, or apply
//! without trusting their timestamps (BAD_INPUTS #20, #21, #23), through the
//! node's own apply path: the one its sync streams call, with the database
//! on disk. Each case is checked again after reopening the node, so what
//! was (or was not) stored is seen, not only what is in memory.

use std::collections::BTreeMap;
use std::path::Path;

use nomade_node::{Node, NodeConfig};
use nomade_wire::{CrdtOperation, Edit, EntityType, SyncOperation, Value};

fn open(dir: &Path) -> Node {
    Node::open(dir, NodeConfig::default()).expect("open")
}

/// `actor`'s operation number `counter` setting `key` of document `doc`,
/// made after the operations in `deps` (the actor's own previous one is
/// added).
fn set(actor: &str, counter: u64, deps: &[(&str, u64)], key: &str, value: i64) -> SyncOperation {
    let mut vv: BTreeMap<String, u64> = deps.iter().map(|(a, c)| (a.to_string(), *c)).collect();
    if counter > 1 {
        vv.insert(actor.to_string(), counter - 1);
    }
    SyncOperation {
        entity_id: "doc".into(),
        entity_type: EntityType::Document,
        operation: CrdtOperation {
            counter,
            deps: vv,
            edit: Edit::Set {
                key: key.into(),
                value: Value::Int(value),
            },
        },
        timestamp: 1_700_000_000_000,
        actor_id: actor.into(),
    }
}

fn refused_count(node: &Node) -> u64 {
    node.metrics_snapshot()
        .errors
        .get("SYNC_OPERATION")
        .copied()
        .unwrap_or(0)
}

/// BAD_INPUTS #23: a counter of 0 or 2^64-1, a deps entry of 2^64-1, a
/// wrong own entry, a counter far ahead of the actor, an edit that does not
/// fit the entity: each refused with an error, counted, and nothing changes,
/// in memory or on disk.
#[test]
fn bad_input_23_malformed_operations_are_refused_counted_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    node.core()
        .apply_remote("peer", vec![set("ana", 1, &[], "k", 1)])
        .expect("a good operation");
    let (hash, ops) = (node.state_hash(), node.core().op_count());

    let mut wrong_own_entry = set("ana", 2, &[], "k", 2);
    wrong_own_entry.operation.deps.insert("ana".into(), 5);
    let mut huge_dep = set("ana", 2, &[], "k", 2);
    huge_dep.operation.deps.insert("bob".into(), u64::MAX);
    let mut wrong_type = set("ana", 2, &[], "k", 2);
    wrong_type.entity_type = EntityType::Conversation;
    let bad = [
        ("counter 0", set("ana", 0, &[], "k", 2)),
        ("counter 2^64-1", set("ana", u64::MAX, &[], "k", 2)),
        ("wrong own deps entry", wrong_own_entry),
        ("deps entry 2^64-1", huge_dep),
        (
            "far ahead of its actor",
            set("ana", 10_000_000, &[], "k", 2),
        ),
        ("a field edit on a conversation", wrong_type),
    ];
    for (i, (what, op)) in bad.into_iter().enumerate() {
        let result = node.core().apply_remote("peer", vec![op]);
        assert!(result.is_err(), "{what}: accepted");
        assert_eq!(refused_count(&node), i as u64 + 1, "{what}: not counted");
        assert_eq!(node.state_hash(), hash, "{what}: changed the state");
        assert_eq!(node.core().op_count(), ops, "{what}: logged");
    }
    drop(node);
    let reopened = open(dir.path());
    assert_eq!(reopened.state_hash(), hash);
    assert_eq!(reopened.core().op_count(), ops);
}

/// BAD_INPUTS #21: an operation whose dependency has not arrived waits; it
/// is neither applied nor stored early, and is applied (and stored) as soon
/// as the dependency comes.
#[test]
fn bad_input_21_an_operation_waits_for_its_dependencies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let first = set("ana", 1, &[], "a", 1);
    let second = set("bob", 1, &[("ana", 1)], "b", 2);
    assert_eq!(
        node.core()
            .apply_remote("peer", vec![second.clone()])
            .expect("held back, not refused"),
        0
    );
    assert_eq!(node.document("doc"), None, "applied before its dependency");
    assert_eq!(node.core().op_count(), 0);
    drop(node);
    // A held-back operation is not stored: after a restart it is gone, and
    // the peer sends it again.
    let node = open(dir.path());
    assert_eq!(node.core().op_count(), 0);
    node.core()
        .apply_remote("peer", vec![second])
        .expect("held back again");
    assert_eq!(
        node.core()
            .apply_remote("peer", vec![first])
            .expect("apply"),
        2,
        "the dependency and the operation waiting for it"
    );
    let doc = node.document("doc").expect("applied");
    assert_eq!(doc.get("a"), Some(&Value::Int(1)));
    assert_eq!(doc.get("b"), Some(&Value::Int(2)));
    let hash = node.state_hash();
    drop(node);
    assert_eq!(open(dir.path()).state_hash(), hash);
}

/// BAD_INPUTS #20: timestamps at the extremes of i64, or hours off, are
/// carried and stored as they are and never order anything: two nodes
/// applying the same operations with wild timestamps, in either order,
/// agree, and the latency metric (the only use of a timestamp) does not
/// overflow.
#[test]
fn bad_input_20_extreme_timestamps_change_nothing_but_the_latency_histogram() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ops = vec![
        set("ana", 1, &[], "k", 1),
        set("bob", 1, &[], "k", 2),
        set("cyd", 1, &[], "k", 3),
    ];
    ops[0].timestamp = i64::MAX;
    ops[1].timestamp = i64::MIN;
    ops[2].timestamp = -3 * 3_600_000;
    let forward = open(&dir.path().join("forward"));
    let backward = open(&dir.path().join("backward"));
    assert_eq!(
        forward
            .core()
            .apply_remote("p", ops.clone())
            .expect("apply"),
        3
    );
    let reversed: Vec<_> = ops.iter().rev().cloned().collect();
    assert_eq!(
        backward.core().apply_remote("p", reversed).expect("apply"),
        3
    );
    assert_eq!(forward.state_hash(), backward.state_hash());
    // Concurrent writes of one field: the winner is decided by (Lamport
    // number, actor), never by timestamp; "cyd" wins though its timestamp
    // is the earliest but one.
    assert_eq!(
        forward.document("doc").and_then(|d| d.get("k").cloned()),
        Some(Value::Int(3))
    );
    let m = forward.metrics_snapshot();
    assert_eq!(m.sync_latency_count, 3);
    assert!(m.sync_latency_mean_us.is_finite());
    // Stored as they came.
    let hash = forward.state_hash();
    drop(forward);
    let reopened = open(&dir.path().join("forward"));
    assert_eq!(reopened.state_hash(), hash);
    assert_eq!(reopened.core().op_count(), 3);
}
