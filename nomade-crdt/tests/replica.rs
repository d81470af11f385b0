//! Behaviour of one replica: conflicts, deletes, the causal buffer, bad
//! operations (BAD_INPUTS #21-#23), deltas, snapshots, incremental sync.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use nomade_crdt::{
    from_delta, to_delta, CrdtError, LocalEdit, MemoryOpLog, Replica, ReplicaConfig,
};
use nomade_wire::{CrdtOperation, Edit, EntityType, SyncOperation, Value, VersionVector};

const DOC: EntityType = EntityType::Document;
const CONV: EntityType = EntityType::Conversation;

fn set(r: &mut Replica, doc: &str, key: &str, v: impl Into<Value>) -> Vec<SyncOperation> {
    r.apply_local(
        DOC,
        doc,
        LocalEdit::Set {
            key: key.into(),
            value: v.into(),
        },
        0,
    )
    .unwrap()
}

fn deliver(to: &mut Replica, ops: &[SyncOperation]) {
    for op in ops {
        to.apply_remote(op.clone()).unwrap();
    }
}

/// A `skip` of `span` counters of `op`'s actor from `op`'s counter.
fn skip_of(op: &SyncOperation, span: u64) -> SyncOperation {
    SyncOperation {
        entity_id: "".into(),
        entity_type: EntityType::Document,
        operation: CrdtOperation {
            counter: op.operation.counter,
            deps: Default::default(),
            edit: Edit::Skip { span },
        },
        timestamp: 0,
        actor_id: op.actor_id.clone(),
    }
}

#[test]
fn concurrent_writes_keep_both_values_until_a_later_write_resolves_them() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    let oa = set(&mut a, "d", "k", "from a");
    let ob = set(&mut b, "d", "k", "from b");
    deliver(&mut a, &ob);
    deliver(&mut b, &oa);
    // Equal Lamport numbers: the higher actor name wins, everywhere.
    assert_eq!(
        a.field_values("d", "k"),
        vec![Value::from("from b"), Value::from("from a")]
    );
    assert_eq!(a.document("d").unwrap()["k"], Value::from("from b"));
    assert_eq!(a.state_hash(), b.state_hash());
    // A write that saw both supersedes both.
    let oc = set(&mut a, "d", "k", "resolved");
    deliver(&mut b, &oc);
    assert_eq!(b.field_values("d", "k"), vec![Value::from("resolved")]);
    assert_eq!(a.state_hash(), b.state_hash());
}

#[test]
fn delete_removes_what_it_saw_and_keeps_concurrent_writes() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    // Operations on other entities make counters and deps run ahead of this document.
    set(&mut a, "other", "z", 1);
    let first = set(&mut a, "d", "k", 1);
    deliver(&mut b, &a.take_applied());
    b.take_applied();
    set(&mut b, "elsewhere", "q", 2);
    let del = b
        .apply_local(DOC, "d", LocalEdit::Delete { key: "k".into() }, 0)
        .unwrap();
    let concurrent = set(&mut a, "d", "k", 2);
    deliver(&mut a, &b.take_applied());
    deliver(&mut b, &concurrent);
    assert_eq!(a.field_values("d", "k"), vec![Value::Int(2)]);
    assert_eq!(b.field_values("d", "k"), vec![Value::Int(2)]);
    assert_eq!(a.state_hash(), b.state_hash());
    // A delete that saw everything removes the field everywhere.
    let del2 = a
        .apply_local(DOC, "d", LocalEdit::Delete { key: "k".into() }, 0)
        .unwrap();
    deliver(&mut b, &del2);
    assert_eq!(b.document("d").unwrap().get("k"), None);
    assert_eq!(a.state_hash(), b.state_hash());
    let _ = (first, del);
}

/// Items have stable ids: an application refers to an item by id (reply
/// after it, remove it) and means the same item after other devices' edits
/// moved it; removing it twice changes nothing; an id never in the
/// conversation is a typed error that changes nothing.
#[test]
fn conversation_items_are_edited_by_their_ids() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    let append = |r: &mut Replica, v: &str| {
        r.apply_local(CONV, "chat", LocalEdit::Append { value: v.into() }, 0)
            .unwrap()
    };
    let first = append(&mut a, "first");
    let question = append(&mut a, "question?");
    deliver(&mut b, &first);
    deliver(&mut b, &question);
    let items = b.conversation_items("chat").unwrap();
    let (question_id, value) = items[1].clone();
    assert_eq!(value, Value::from("question?"));
    assert_eq!((question_id.actor.as_str(), question_id.counter), ("a", 2));
    // a inserts two items before the question (its index moves); b, not
    // having seen them, answers right after the question, by its id.
    let before: Vec<SyncOperation> = (0..2)
        .flat_map(|i| {
            a.apply_local(
                CONV,
                "chat",
                LocalEdit::Insert {
                    index: 0,
                    value: Value::Int(i),
                },
                0,
            )
            .unwrap()
        })
        .collect();
    let answer = b
        .apply_local(
            CONV,
            "chat",
            LocalEdit::InsertAfter {
                after: Some(question_id.clone()),
                value: "answer".into(),
            },
            0,
        )
        .unwrap();
    deliver(&mut a, &answer);
    deliver(&mut b, &before);
    let want: Vec<Value> = vec![
        Value::Int(1),
        Value::Int(0),
        "first".into(),
        "question?".into(),
        "answer".into(),
    ];
    assert_eq!(a.conversation("chat").unwrap(), want);
    assert_eq!(a.state_hash(), b.state_hash());
    // The answer's id is its operation's author and counter.
    let answer_id = a.conversation_items("chat").unwrap()[4].0.clone();
    assert_eq!(
        (answer_id.actor.as_str(), answer_id.counter),
        ("b", answer[0].operation.counter)
    );
    // Removed by id, wherever it is; a second removal sends nothing.
    let remove = |r: &mut Replica, item: &nomade_wire::ElementId| {
        r.apply_local(
            CONV,
            "chat",
            LocalEdit::RemoveItem { item: item.clone() },
            0,
        )
        .unwrap()
    };
    assert_eq!(remove(&mut a, &question_id).len(), 1);
    assert!(remove(&mut a, &question_id).is_empty());
    // Inserting after a removed item puts the new one in its place.
    a.apply_local(
        CONV,
        "chat",
        LocalEdit::InsertAfter {
            after: Some(question_id),
            value: "edited question?".into(),
        },
        0,
    )
    .unwrap();
    assert_eq!(
        a.conversation("chat").unwrap()[2..],
        ["first".into(), "edited question?".into(), "answer".into()]
    );
    // An id never in the conversation: refused, nothing changes.
    let hash = a.state_hash();
    for bogus in [("a", 99), ("nobody", 1)] {
        let item = nomade_wire::ElementId {
            actor: bogus.0.into(),
            counter: bogus.1,
        };
        let err = a
            .apply_local(
                CONV,
                "chat",
                LocalEdit::RemoveItem { item: item.clone() },
                0,
            )
            .unwrap_err();
        assert_eq!(
            err,
            CrdtError::UnknownItem {
                actor: bogus.0.into(),
                counter: bogus.1
            }
        );
        let err = a
            .apply_local(
                CONV,
                "chat",
                LocalEdit::InsertAfter {
                    after: Some(item),
                    value: Value::Nil,
                },
                0,
            )
            .unwrap_err();
        assert!(matches!(err, CrdtError::UnknownItem { .. }), "{err:?}");
    }
    assert_eq!(a.state_hash(), hash);
}

#[test]
fn conversation_inserts_and_removes_by_index() {
    let mut a = Replica::new("a");
    for (i, m) in ["hi", "there", "!"].iter().enumerate() {
        a.apply_local(
            CONV,
            "chat",
            LocalEdit::Insert {
                index: i,
                value: Value::from(*m),
            },
            0,
        )
        .unwrap();
    }
    a.apply_local(CONV, "chat", LocalEdit::Remove { index: 1 }, 0)
        .unwrap();
    assert_eq!(
        a.conversation("chat").unwrap(),
        vec![Value::from("hi"), Value::from("!")]
    );
    let err = a
        .apply_local(CONV, "chat", LocalEdit::Remove { index: 5 }, 0)
        .unwrap_err();
    assert_eq!(err, CrdtError::IndexOutOfRange { index: 5, len: 2 });
    let err = a
        .apply_local(
            CONV,
            "chat",
            LocalEdit::Set {
                key: "k".into(),
                value: Value::Nil,
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(err, CrdtError::WrongEntityType { .. }));
    let err = a
        .apply_local(
            DOC,
            "d",
            LocalEdit::Splice {
                field: "t".into(),
                position: 1,
                delete: 0,
                insert: "x".into(),
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(err, CrdtError::IndexOutOfRange { .. }));
}

#[test]
fn bad_input_21_an_op_with_missing_dependencies_waits_in_the_buffer() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    let o1 = set(&mut a, "d", "k", 1);
    let o2 = set(&mut a, "d", "k", 2);
    assert_eq!(b.apply_remote(o2[0].clone()).unwrap(), 0);
    assert_eq!(b.buffered(), 1);
    assert_eq!(b.document("d"), None, "never applied early");
    let applied = b.apply_remote(o1[0].clone()).unwrap();
    assert_eq!(applied, 2, "the buffered op follows its dependency");
    // Both are handed over to be stored, in the order applied.
    assert_eq!(b.take_applied(), vec![o1[0].clone(), o2[0].clone()]);
    assert_eq!(b.buffered(), 0);
    assert_eq!(b.field_values("d", "k"), vec![Value::Int(2)]);

    // Over the bound: a typed error, nothing buffered.
    let two_ops = |name: &str| {
        let mut r = Replica::new(name);
        let first = set(&mut r, "x", "k", 1).remove(0);
        let second = set(&mut r, "x", "k", 2).remove(0);
        (first, second)
    };
    let (c1, c2) = two_ops("c");
    let (_, d2) = two_ops("d");
    let (_, e2) = two_ops("e");
    let mut tiny = Replica::with_config(
        "t",
        ReplicaConfig {
            max_buffered: 2,
            ..ReplicaConfig::default()
        },
    );
    tiny.apply_remote(c2).unwrap();
    tiny.apply_remote(d2).unwrap();
    assert_eq!(tiny.buffered(), 2);
    let before = tiny.state_hash();
    assert_eq!(
        tiny.apply_remote(e2),
        Err(CrdtError::BufferFull { capacity: 2 })
    );
    assert_eq!(tiny.buffered(), 2);
    assert_eq!(tiny.state_hash(), before);
    assert_eq!(tiny.apply_remote(c1).unwrap(), 2);
    assert_eq!(tiny.buffered(), 1);
}

#[test]
fn bad_input_22_duplicates_and_reordering_give_the_same_state() {
    let mut a = Replica::new("a");
    let mut ops = Vec::new();
    for i in 0..20 {
        ops.extend(
            a.apply_local(
                DOC,
                "d",
                LocalEdit::Splice {
                    field: "t".into(),
                    position: 0,
                    delete: 0,
                    insert: format!("{i}"),
                },
                0,
            )
            .unwrap(),
        );
    }
    let mut b = Replica::new("b");
    for op in ops.iter().rev().chain(ops.iter()).chain(ops.iter().rev()) {
        b.apply_remote(op.clone()).unwrap();
    }
    assert_eq!(b.text("d", "t"), a.text("d", "t"));
    assert_eq!(b.state_hash(), a.state_hash());
}

#[test]
fn bad_input_23_malformed_ops_are_refused_and_change_nothing() {
    let mut a = Replica::new("a");
    let good = set(&mut a, "d", "k", 1).remove(0);
    let mut b = Replica::new("b");
    let empty_hash = b.state_hash();
    let mut zero = good.clone();
    zero.operation.counter = 0;
    let mut max = good.clone();
    max.operation.counter = u64::MAX;
    max.operation.deps.insert("a".into(), u64::MAX - 1);
    let mut bad_deps = good.clone();
    bad_deps.operation.deps.insert("a".into(), 7);
    let mut jump = good.clone();
    jump.operation.counter = 1 << 40;
    jump.operation.deps.insert("a".into(), (1 << 40) - 1);
    let mut wrong_type = good.clone();
    wrong_type.entity_type = CONV;
    // PROTOCOL.md: `insert` is for conversations only; text goes in with
    // `insert_text`. A run covers one counter per element: never none, and
    // never past 2^64-2.
    let with_edit = |entity_type, counter, edit| {
        let mut op = good.clone();
        op.entity_type = entity_type;
        op.operation.counter = counter;
        op.operation.edit = edit;
        op
    };
    let insert = |values: Vec<Value>| nomade_wire::Edit::Insert {
        after: None,
        before: None,
        values,
    };
    let remove = |counter, len| nomade_wire::Edit::Remove {
        field: None,
        ranges: vec![nomade_wire::IdRange {
            actor: "a".into(),
            counter,
            len,
        }],
    };
    let text = |text: &str| nomade_wire::Edit::InsertText {
        field: "t".into(),
        after: None,
        before: None,
        text: text.into(),
    };
    let insert_into_a_document = with_edit(DOC, 1, insert(vec![Value::from("x")]));
    let empty_insert = with_edit(CONV, 1, insert(vec![]));
    let empty_text = with_edit(DOC, 1, text(""));
    let wrapping_run = with_edit(DOC, u64::MAX - 2, text("abc"));
    let empty_range = with_edit(CONV, 1, remove(1, 0));
    let wrapping_range = with_edit(CONV, 1, remove(u64::MAX - 1, 2));
    let no_ranges = with_edit(
        CONV,
        1,
        nomade_wire::Edit::Remove {
            field: None,
            ranges: vec![],
        },
    );
    let mut dangling = a
        .apply_local(
            DOC,
            "d",
            LocalEdit::Splice {
                field: "t".into(),
                position: 0,
                delete: 0,
                insert: "x".into(),
            },
            0,
        )
        .unwrap()
        .remove(0);
    dangling.operation.edit = nomade_wire::Edit::Remove {
        field: Some("t".into()),
        ranges: vec![nomade_wire::IdRange {
            actor: "nobody".into(),
            counter: 1,
            len: 1,
        }],
    };
    let mut beyond = dangling.clone();
    beyond.operation.edit = nomade_wire::Edit::Remove {
        field: Some("t".into()),
        ranges: vec![nomade_wire::IdRange {
            actor: "a".into(),
            counter: 1,
            len: 1_000_000_000,
        }],
    };
    for (what, op) in [
        ("zero", zero),
        ("max", max),
        ("deps", bad_deps),
        ("type", wrong_type),
        ("insert on a document", insert_into_a_document),
        ("empty insert", empty_insert),
        ("empty text", empty_text),
        ("a run whose counters wrap", wrapping_run),
        ("an empty range", empty_range),
        ("a range whose counters wrap", wrapping_range),
        ("a removal of nothing", no_ranges),
    ] {
        assert!(
            matches!(b.apply_remote(op), Err(CrdtError::InvalidOperation { .. })),
            "{what}"
        );
    }
    assert!(matches!(
        b.apply_remote(jump),
        Err(CrdtError::CounterJump { .. })
    ));
    b.apply_remote(good).unwrap();
    let before = b.state_hash();
    for (what, op) in [("dangling", dangling), ("beyond the text", beyond)] {
        assert!(
            matches!(b.apply_remote(op), Err(CrdtError::InvalidOperation { .. })),
            "{what}"
        );
    }
    assert_eq!(b.state_hash(), before);
    assert_ne!(before, empty_hash);
    assert_eq!(b.buffered(), 0);
}

/// History lives with the caller: a log the replica hands its operations
/// to knows what a peer lacks.
#[test]
fn a_log_fed_by_take_applied_sends_exactly_what_a_peer_lacks() {
    let (mut a, mut log_a) = (Replica::new("a"), MemoryOpLog::default());
    let (mut b, mut log_b) = (Replica::new("b"), MemoryOpLog::default());
    set(&mut a, "d", "k", 1);
    set(&mut a, "d", "j", 2);
    log_a.record(&mut a);
    deliver(
        &mut b,
        &log_a
            .missing(&VersionVector::new())
            .cloned()
            .collect::<Vec<_>>(),
    );
    log_b.record(&mut b);
    set(&mut a, "d", "k", 3);
    set(&mut b, "e", "k", 4);
    log_a.record(&mut a);
    log_b.record(&mut b);
    let missing: Vec<_> = log_a.missing(b.version_vector()).cloned().collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].operation.counter, 3);
    deliver(&mut b, &missing);
    log_b.record(&mut b);
    let back: Vec<_> = log_b.missing(a.version_vector()).cloned().collect();
    deliver(&mut a, &back);
    log_a.record(&mut a);
    assert_eq!(a.state_hash(), b.state_hash());
    assert!(log_a.missing(b.version_vector()).next().is_none());
    assert!(a.applied().is_empty(), "the replica keeps no history");
}

#[test]
fn delta_packs_consecutive_field_writes_and_unpacks_to_the_same_ops() {
    let mut a = Replica::new("a");
    set(&mut a, "other", "z", 0);
    let mut ops = Vec::new();
    for (k, v) in [("age", 3), ("name", 4), ("zip", 5)] {
        ops.extend(set(&mut a, "card", k, v));
    }
    let delta = to_delta(&ops).expect("qualifies");
    assert_eq!(delta.changed_fields.len(), 3);
    assert_eq!(from_delta(&delta).unwrap(), ops);
    // Smaller on the wire than the batch.
    let delta_len = rmp_serde::to_vec_named(&delta).unwrap().len();
    let batch_len = rmp_serde::to_vec_named(&nomade_wire::BatchedSync {
        operations: ops.clone(),
    })
    .unwrap()
    .len();
    assert!(delta_len < batch_len, "{delta_len} vs {batch_len}");
    // Keys out of order or a different document: not a delta.
    let mut rev = ops.clone();
    rev.reverse();
    assert!(to_delta(&rev).is_none());
    let mixed = [ops[0].clone(), set(&mut a, "other", "y", 1).remove(0)];
    assert!(to_delta(&mixed).is_none());
}

#[test]
fn snapshot_restores_the_same_state_and_editing_continues() {
    let mut a = Replica::new("a");
    set(&mut a, "d", "k", "v");
    a.apply_local(
        DOC,
        "d",
        LocalEdit::Splice {
            field: "t".into(),
            position: 0,
            delete: 0,
            insert: "hello world".into(),
        },
        0,
    )
    .unwrap();
    a.apply_local(
        DOC,
        "d",
        LocalEdit::Splice {
            field: "t".into(),
            position: 0,
            delete: 6,
            insert: "".into(),
        },
        0,
    )
    .unwrap();
    a.apply_local(
        CONV,
        "c",
        LocalEdit::Insert {
            index: 0,
            value: Value::from("m"),
        },
        0,
    )
    .unwrap();
    let bytes = a.snapshot().unwrap();
    let mut restored = Replica::from_snapshot("a", &bytes, ReplicaConfig::default()).unwrap();
    assert_eq!(restored.state_hash(), a.state_hash());
    assert_eq!(restored.text("d", "t").as_deref(), Some("world"));
    assert_eq!(
        restored.entity_version_vector(DOC, "d"),
        a.entity_version_vector(DOC, "d")
    );
    // One counter per field write, inserted and removed character: 1 + 11 + 6.
    assert_eq!(a.entity_version_vector(DOC, "d").get("a"), Some(&18));
    // Both continue identically.
    let op = a
        .apply_local(
            DOC,
            "d",
            LocalEdit::Splice {
                field: "t".into(),
                position: 5,
                delete: 0,
                insert: "!".into(),
            },
            0,
        )
        .unwrap();
    let op2 = restored
        .apply_local(
            DOC,
            "d",
            LocalEdit::Splice {
                field: "t".into(),
                position: 5,
                delete: 0,
                insert: "!".into(),
            },
            0,
        )
        .unwrap();
    assert_eq!(op, op2);
    assert_eq!(restored.state_hash(), a.state_hash());
    // Only what was applied after the snapshot is handed over.
    assert_eq!(restored.take_applied(), op);
    // Garbage is a typed error.
    assert!(matches!(
        Replica::from_snapshot("a", &bytes[..bytes.len() / 2], ReplicaConfig::default()),
        Err(CrdtError::BadSnapshot(_))
    ));
    assert!(matches!(
        Replica::from_snapshot(
            "a",
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            ReplicaConfig::default()
        ),
        Err(CrdtError::BadSnapshot(_))
    ));
}

#[test]
fn different_states_hash_differently() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("a");
    assert_eq!(a.state_hash(), b.state_hash());
    set(&mut a, "d", "k", 1);
    set(&mut b, "d", "k", 2);
    assert_ne!(a.state_hash(), b.state_hash());
    let mut c = Replica::new("a");
    c.apply_local(
        DOC,
        "d",
        LocalEdit::Splice {
            field: "k".into(),
            position: 0,
            delete: 0,
            insert: "1".into(),
        },
        0,
    )
    .unwrap();
    assert_ne!(a.state_hash(), c.state_hash());
}

/// An append goes after the last item the replica holds when it is
/// applied, and the last items removed, after the last one still there.
#[test]
fn append_goes_after_the_last_visible_item() {
    let mut r = Replica::new("a");
    let append = |r: &mut Replica, v: i64| {
        r.apply_local(
            CONV,
            "c",
            LocalEdit::Append {
                value: Value::Int(v),
            },
            0,
        )
        .unwrap()
    };
    for v in 0..1200 {
        append(&mut r, v);
    }
    let items: Vec<Value> = (0..1200).map(Value::Int).collect();
    assert_eq!(r.conversation("c"), Some(items));
    for _ in 0..3 {
        r.apply_local(CONV, "c", LocalEdit::Remove { index: 1196 }, 0)
            .unwrap();
    }
    append(&mut r, -1);
    let got = r.conversation("c").unwrap();
    assert_eq!(got.len(), 1198);
    assert_eq!(
        got[1195..],
        [Value::Int(1195), Value::Int(1199), Value::Int(-1)]
    );
    // Not on a document.
    let mut peer = Replica::new("b");
    assert!(matches!(
        peer.apply_local(
            DOC,
            "c",
            LocalEdit::Append {
                value: Value::Int(0)
            },
            0
        ),
        Err(CrdtError::WrongEntityType { .. })
    ));
}

/// The state hash is kept once computed: every change, local or remote,
/// must drop it, or a device would announce the hash of a state it left.
#[test]
fn the_state_hash_follows_every_change() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    let empty = a.state_hash();
    let ops = set(&mut a, "d", "k", 1);
    let after_local = a.state_hash();
    assert_ne!(after_local, empty, "a local edit changes the hash");
    assert_eq!(b.state_hash(), empty);
    deliver(&mut b, &ops);
    assert_eq!(b.state_hash(), after_local, "a remote operation changes it");
    let more = set(&mut b, "d", "k", 2);
    deliver(&mut a, &more);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(
        a.state_hash(),
        Replica::from_snapshot("c", &a.snapshot().unwrap(), ReplicaConfig::default())
            .unwrap()
            .state_hash(),
        "the kept hash is the hash of the state"
    );
}

/// A replica restored from a snapshot reads its documents' fields without
/// building their registers, and builds them on the first write: reads,
/// hashes, snapshots and later operations are the same as the original's.
#[test]
fn restored_fields_read_and_take_writes_as_the_original() {
    let mut a = Replica::new("a");
    let mut b = Replica::new("b");
    let oa = set(&mut a, "d", "k", "from a");
    let ob = set(&mut b, "d", "k", "from b");
    let more = set(&mut b, "d", "other", 7);
    deliver(&mut a, &ob);
    deliver(&mut a, &more);
    deliver(&mut b, &oa);
    let snapshot = a.snapshot().unwrap();
    let mut restored = Replica::from_snapshot("a", &snapshot, ReplicaConfig::default()).unwrap();
    assert_eq!(restored.document("d"), a.document("d"));
    assert_eq!(restored.field_values("d", "k"), a.field_values("d", "k"));
    assert_eq!(
        restored.field_values("d", "k").len(),
        2,
        "both concurrent values"
    );
    assert_eq!(restored.state_hash(), a.state_hash());
    assert_eq!(
        restored.snapshot().unwrap(),
        snapshot,
        "a snapshot of a snapshot"
    );
    // A write that has seen both values supersedes them, on both.
    let resolve = set(&mut b, "d", "k", "resolved");
    deliver(&mut a, &resolve);
    deliver(&mut restored, &resolve);
    assert_eq!(
        restored.field_values("d", "k"),
        vec![Value::from("resolved")]
    );
    assert_eq!(restored.state_hash(), a.state_hash());
    assert_eq!(restored.state_hash(), b.state_hash());
    // And a local write on the restored replica reaches the others.
    let local = set(&mut restored, "d", "other", 8);
    deliver(&mut a, &local);
    deliver(&mut b, &local);
    assert_eq!(a.state_hash(), restored.state_hash());
    assert_eq!(b.state_hash(), restored.state_hash());
}

#[test]
fn a_closed_actor_keeps_what_it_did_before_and_nothing_after() {
    let mut phone = Replica::new("phone");
    let typed = phone
        .apply_local(
            DOC,
            "note",
            LocalEdit::Splice {
                field: "body".into(),
                position: 0,
                delete: 0,
                insert: "hello".into(),
            },
            0,
        )
        .unwrap();
    assert_eq!(typed.len(), 1, "one run of five characters");
    let written = set(&mut phone, "note", "title", "after");
    let all: Vec<SyncOperation> = typed.iter().chain(&written).cloned().collect();

    // Closed at 3: the run is cut after its third character, the write refused.
    let mut laptop = Replica::new("laptop");
    laptop.close_actor(&"phone".into(), 3);
    deliver(&mut laptop, &all);
    assert_eq!(laptop.text("note", "body").as_deref(), Some("hel"));
    assert!(laptop.field_values("note", "title").is_empty());
    assert_eq!(laptop.version_vector().get("phone"), Some(&3));
    assert_eq!(laptop.refused_after_close(), 2);

    // Another device had applied everything before it learned: it raises
    // the close to 6, and the laptop, told the same, takes the rest.
    laptop.close_actor(&"phone".into(), 6);
    laptop.close_actor(&"phone".into(), 2); // never lowered
    assert_eq!(laptop.closed_actors().get("phone"), Some(&6));
    deliver(&mut laptop, &all);
    assert_eq!(laptop.text("note", "body").as_deref(), Some("hello"));
    assert_eq!(laptop.state_hash(), phone.state_hash());

    // Operations waiting in the causal buffer are dropped when the close
    // comes before them.
    let mut desktop = Replica::new("desktop");
    deliver(&mut desktop, &written);
    assert_eq!(desktop.buffered(), 1);
    desktop.close_actor(&"phone".into(), 5);
    assert_eq!(desktop.buffered(), 0);
    deliver(&mut desktop, &typed);
    assert_eq!(desktop.text("note", "body").as_deref(), Some("hello"));
    assert!(desktop.field_values("note", "title").is_empty());
    assert_eq!(
        desktop.beyond_closed(phone.version_vector()),
        Some(("phone".into(), 6, 5))
    );
    assert_eq!(desktop.beyond_closed(desktop.version_vector()), None);

    // A replica rebuilt (from disk, from a snapshot) keeps the closures.
    let mut rebuilt = Replica::new("desktop");
    rebuilt.close_actors_of(&desktop);
    assert_eq!(rebuilt.closed_actors(), desktop.closed_actors());
}

/// A skip of a device's counters in place of operations on an entity not
/// subscribed to: it raises the version vector and changes no entity; after
/// the subscription grows, the request goes back before it, and the
/// skipped operation received again is applied by its entity. A skip that
/// names an entity or has deps is refused, changing nothing (BAD_INPUTS).
#[test]
fn a_skip_counts_counters_and_widening_fills_in_what_it_stood_for() {
    let mut laptop = Replica::new("laptop");
    let a = set(&mut laptop, "a", "k", 1);
    let b = set(&mut laptop, "b", "k", 2);
    let a2 = set(&mut laptop, "a", "k", 3);
    let skip = |op: &SyncOperation| skip_of(op, 1);
    let mut phone = Replica::new("phone");
    deliver(&mut phone, &a);
    deliver(&mut phone, &[skip(&b[0])]);
    deliver(&mut phone, &a2);
    assert_eq!(phone.version_vector(), laptop.version_vector());
    assert!(phone.document("b").is_none());
    assert_eq!(phone.document("a"), laptop.document("a"));
    assert_eq!(phone.first_skips().get("laptop"), Some(&2));

    let mut bad = skip(&b[0]);
    bad.entity_id = "b".into();
    assert!(phone.apply_remote(bad).is_err());
    let mut bad = skip(&b[0]);
    bad.operation.deps.insert("laptop".into(), 1);
    assert!(phone.apply_remote(bad).is_err());

    phone.widen();
    assert_eq!(phone.request_vector().get("laptop"), Some(&1));
    deliver(&mut phone, &b);
    deliver(&mut phone, &a2); // held already: changes nothing
    assert_eq!(phone.document("b"), laptop.document("b"));
    assert_eq!(phone.state_hash(), laptop.state_hash());
    assert!(phone.refill_frontier().is_empty(), "filled in");
    assert_eq!(phone.request_vector(), *laptop.version_vector());
}

/// Filling in a text an entity lacks when its characters arrive as one run
/// that straddles what the actor's counters cover (skipped in part, new in
/// part): the run is applied whole to the entity, not cut at the counter.
#[test]
fn a_run_straddling_skipped_counters_fills_in_its_entity_whole() {
    use nomade_crdt::runs;
    let splice = |r: &mut Replica, position: usize, text: &str| {
        r.apply_local(
            EntityType::Document,
            "t",
            LocalEdit::Splice {
                field: "body".into(),
                position,
                delete: 0,
                insert: text.into(),
            },
            0,
        )
        .unwrap()
    };
    let mut laptop = Replica::new("laptop");
    let a = set(&mut laptop, "a", "k", 1);
    let hey = splice(&mut laptop, 0, "hey");
    let mut phone = Replica::new("phone");
    deliver(&mut phone, &a);
    let skipped = skip_of(&hey[0], 3);
    deliver(&mut phone, &[skipped]);
    phone.widen();
    let more = splice(&mut laptop, 3, "!!");
    let joined = runs::join(hey.into_iter().chain(more));
    assert_eq!(joined.len(), 1, "one run of five characters");
    deliver(&mut phone, &joined);
    assert_eq!(phone.text("t", "body").as_deref(), Some("hey!!"));
    assert_eq!(phone.state_hash(), laptop.state_hash());
    assert!(phone.refill_frontier().is_empty());
}

/// While an actor is being filled in, a run that reaches beyond its
/// counters (here a skip of one skipped counter and one new) can arrive
/// before the operations it follows: it waits its turn, so that the refill
/// frontier passes over it and the refill ends. Applied at once, its
/// counters would never be seen again and the refill would never end (the
/// simulator found it with 8 devices).
#[test]
fn a_run_beyond_the_refill_frontier_waits_its_turn() {
    let mut laptop = Replica::new("laptop");
    let a = set(&mut laptop, "a", "k", 1);
    let b = set(&mut laptop, "b", "k", 2);
    let c = set(&mut laptop, "c", "k", 3);
    set(&mut laptop, "c", "k", 4);
    let mut phone = Replica::new("phone");
    deliver(&mut phone, &a);
    deliver(&mut phone, &[skip_of(&b[0], 2)]);
    assert_eq!(phone.version_vector().get("laptop"), Some(&3));
    phone.widen(); // now "a" and "b"
    assert_eq!(phone.request_vector().get("laptop"), Some(&1));

    // The skip of counters 3 and 4 comes first, then b.
    deliver(&mut phone, &[skip_of(&c[0], 2)]);
    assert_eq!(
        phone.version_vector().get("laptop"),
        Some(&3),
        "waits behind the frontier"
    );
    assert_eq!(phone.buffered(), 1);
    deliver(&mut phone, &b);
    assert_eq!(phone.buffered(), 0);
    assert_eq!(phone.version_vector(), laptop.version_vector());
    assert_eq!(phone.document("b"), laptop.document("b"));
    assert!(phone.document("c").is_none());
    assert!(phone.refill_frontier().is_empty(), "the refill ended");
    assert_eq!(phone.request_vector(), *laptop.version_vector());
}

/// A skip waiting in the causal buffer when the subscription grows was
/// sent for the smaller subscription: it is dropped, so that the operation
/// it stood for, arriving with the same counter under the new one, is
/// applied rather than skipped.
#[test]
fn a_waiting_skip_gives_way_to_the_operation_once_the_subscription_grows() {
    let mut laptop = Replica::new("laptop");
    let a = set(&mut laptop, "a", "k", 1);
    let a2 = set(&mut laptop, "a", "k", 2);
    let b = set(&mut laptop, "b", "k", 3);
    let mut phone = Replica::new("phone");
    deliver(&mut phone, &a);
    // The skip for b comes before a2 (another path): it waits.
    deliver(&mut phone, &[skip_of(&b[0], 1)]);
    assert_eq!(phone.buffered(), 1);
    phone.widen(); // now "a" and "b"
    assert_eq!(phone.buffered(), 0, "the stale skip is dropped");
    deliver(&mut phone, &b);
    deliver(&mut phone, &a2);
    assert_eq!(phone.version_vector(), laptop.version_vector());
    assert_eq!(phone.document("b"), laptop.document("b"));
    assert_eq!(phone.state_hash(), laptop.state_hash());

    // Without the subscription growing, a skip and the operation of the
    // same counters both waiting: the operation stays.
    let mut desktop = Replica::new("desktop");
    deliver(&mut desktop, &a);
    deliver(&mut desktop, &[skip_of(&b[0], 1)]);
    deliver(&mut desktop, &b);
    assert_eq!(desktop.buffered(), 1);
    deliver(&mut desktop, &a2);
    assert_eq!(desktop.document("b"), laptop.document("b"));
}
