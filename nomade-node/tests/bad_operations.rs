//! Operations from a peer that a node must refuse, hold back, or apply
//! without trusting their timestamps (BAD_INPUTS #20, #21, #23), through the
//! node's own apply path: the one its sync streams call, with the database
//! on disk. Each case is checked again after reopening the node, so what
//! was (or was not) stored is seen, not only what is in memory.

use std::collections::BTreeMap;
use std::path::Path;

use nomade_node::{Node, NodeConfig};
use nomade_wire::{ActorId, CrdtOperation, Edit, EntityType, IdRange, SyncOperation, Value};

fn open(dir: &Path) -> Node {
    Node::open(dir, NodeConfig::default()).expect("open")
}

/// `actor`'s operation number `counter` setting `key` of document `doc`,
/// made after the operations in `deps` (the actor's own previous one is
/// added).
fn set(actor: &str, counter: u64, deps: &[(&str, u64)], key: &str, value: i64) -> SyncOperation {
    let mut vv: BTreeMap<ActorId, u64> = deps.iter().map(|(a, c)| ((*a).into(), *c)).collect();
    if counter > 1 {
        vv.insert(actor.into(), counter - 1);
    }
    SyncOperation {
        entity_id: "doc".into(),
        entity_type: EntityType::Document,
        operation: CrdtOperation {
            counter,
            deps: vv.into(),
            edit: Edit::Set {
                key: key.into(),
                value: Value::Int(value),
            },
        },
        timestamp: 1_700_000_000_000,
        actor_id: actor.into(),
    }
}

/// `actor`'s run of `text` typed at the start of the text field `t` of
/// document `doc`, its first counter `counter`.
fn text(actor: &str, counter: u64, text: &str) -> SyncOperation {
    let mut op = set(actor, counter, &[], "k", 0);
    op.operation.edit = Edit::InsertText {
        field: "t".into(),
        after: None,
        before: None,
        text: text.into(),
    };
    op
}

/// `actor`'s character typed into the text field `t` of document `doc`
/// between the elements `after` and `before` (`(actor, counter)`, `None`:
/// the start, the end), its counter `counter`.
fn text_between(
    actor: &str,
    counter: u64,
    after: Option<(&str, u64)>,
    before: Option<(&str, u64)>,
) -> SyncOperation {
    let element = |(actor, counter): (&str, u64)| nomade_wire::ElementId {
        actor: actor.into(),
        counter,
    };
    let mut op = text(actor, counter, "x");
    op.operation.edit = Edit::InsertText {
        field: "t".into(),
        after: after.map(element),
        before: before.map(element),
        text: "x".into(),
    };
    op
}

/// `actor`'s removal, at `counter`, of `len` characters of the text field
/// `t` inserted by `of` from counter `from`.
fn remove(actor: &str, counter: u64, of: &str, from: u64, len: u64) -> SyncOperation {
    let mut op = set(actor, counter, &[], "k", 0);
    op.operation.edit = Edit::Remove {
        field: Some("t".into()),
        ranges: vec![IdRange {
            actor: of.into(),
            counter: from,
            len,
        }],
    };
    op
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
    node.core()
        .apply_remote("peer", vec![text("cat", 1, "ab")])
        .expect("a good text");
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
        ("far ahead of its actor", set("ana", 1 << 40, &[], "k", 2)),
        ("a field edit on a conversation", wrong_type),
        ("an empty run", text("ana", 2, "")),
        (
            "a run whose counters wrap",
            text("ana", u64::MAX - 2, "abc"),
        ),
        (
            "a removal beyond the text",
            remove("ana", 2, "ana", 1, 1_000),
        ),
        (
            "a removal of an unknown element",
            remove("ana", 2, "bob", 1, 1),
        ),
        (
            "an insertion after an unknown element",
            text_between("ana", 2, Some(("bob", 1)), None),
        ),
        (
            "an insertion before an unknown element",
            text_between("ana", 2, None, Some(("ana", 7))),
        ),
        (
            "an insertion whose right origin comes before its left one",
            text_between("ana", 2, Some(("cat", 2)), Some(("cat", 1))),
        ),
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

/// Sets a field locally; the encoded size of the operation made.
fn own_set_size(node: &Node, value: i64) -> usize {
    let edit = nomade_crdt::LocalEdit::Set {
        key: "mine".into(),
        value: Value::Int(value),
    };
    let ops = node
        .core()
        .edit(EntityType::Document, "doc", edit)
        .expect("local edit");
    rmp_serde::to_vec_named(&ops[0]).expect("encode").len()
}

/// Operations from more distinct actors than the node accepts
/// (`NodeConfig::max_actors`): refused, counted, nothing stored, and this
/// device's own editing and its operations' size are untouched.
#[test]
fn operations_from_more_actors_than_the_bound_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        max_actors: 3,
        ..NodeConfig::default()
    };
    let node = Node::open(dir.path(), config.clone()).expect("open");
    own_set_size(&node, 0);
    // With its own previous write in its deps, as every later one has.
    let own_size = own_set_size(&node, 1);
    // This device and two others fill the table (writing another document:
    // an operation's deps name only writers of its own entity).
    let elsewhere = |mut op: SyncOperation| {
        op.entity_id = "other".into();
        op
    };
    for actor in ["ana", "bob"] {
        node.core()
            .apply_remote("peer", vec![elsewhere(set(actor, 1, &[], actor, 1))])
            .expect("within the bound");
    }
    let (hash, ops) = (node.state_hash(), node.core().op_count());
    for (i, actor) in ["carol", "dave", "erin"].into_iter().enumerate() {
        let refused = node
            .core()
            .apply_remote("peer", vec![elsewhere(set(actor, 1, &[], actor, 1))]);
        assert!(refused.is_err(), "{actor}: accepted");
        let errors = node.metrics_snapshot().errors;
        assert_eq!(errors.get("TOO_MANY_ACTORS"), Some(&(i as u64 + 1)));
        assert_eq!(node.state_hash(), hash, "{actor}: changed the state");
        assert_eq!(node.core().op_count(), ops, "{actor}: stored");
    }
    // Known actors still sync, and local editing goes on, its operations
    // no larger than before the flood.
    node.core()
        .apply_remote("peer", vec![elsewhere(set("ana", 2, &[], "ana", 2))])
        .expect("a known actor");
    let size = own_set_size(&node, 2);
    assert!(
        size <= own_size + 2,
        "own operation grew from {own_size} to {size} bytes"
    );
    let hash = node.state_hash();
    drop(node);
    let reopened = Node::open(dir.path(), config).expect("reopen");
    assert_eq!(reopened.state_hash(), hash);
    let other = reopened.document("other").expect("the other document");
    assert_eq!(other.get("ana"), Some(&Value::Int(2)));
    assert!(
        !other.contains_key("carol"),
        "a refused actor's write was stored"
    );
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
