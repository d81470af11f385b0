//! Convergence under any interleaving: three replicas edit random entities
//! while operations are delivered to each other in random order, with
//! duplicates; in the end every replica holds the same state.

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, SyncOperation, Value};
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
enum Action {
    Edit {
        replica: usize,
        entity: u8,
        kind: u8,
        a: Index,
        b: Index,
        text: String,
        n: i64,
    },
    Deliver {
        op: Index,
        to: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..3usize, 0..3u8, 0..4u8, any::<Index>(), any::<Index>(), "[a-c]{0,3}", -3..3i64).prop_map(
            |(replica, entity, kind, a, b, text, n)| Action::Edit { replica, entity, kind, a, b, text, n }
        ),
        2 => (any::<Index>(), 0..3usize).prop_map(|(op, to)| Action::Deliver { op, to }),
    ]
}

fn local_edit(
    r: &Replica,
    entity: u8,
    kind: u8,
    a: &Index,
    b: &Index,
    text: &str,
    n: i64,
) -> (EntityType, &'static str, LocalEdit) {
    const FIELDS: [&str; 2] = ["x", "y"];
    match entity {
        0 | 1 => {
            let doc = if entity == 0 { "d0" } else { "d1" };
            let key = FIELDS[a.index(2)].to_string();
            match kind {
                0 => (
                    EntityType::Document,
                    doc,
                    LocalEdit::Set {
                        key,
                        value: Value::Int(n),
                    },
                ),
                1 => (EntityType::Document, doc, LocalEdit::Delete { key }),
                _ => {
                    let len = r.text(doc, "body").map(|t| t.chars().count()).unwrap_or(0);
                    let position = a.index(len + 1);
                    let delete = b.index(len - position + 1);
                    (
                        EntityType::Document,
                        doc,
                        LocalEdit::Splice {
                            field: "body".into(),
                            position,
                            delete,
                            insert: text.into(),
                        },
                    )
                }
            }
        }
        _ => {
            let len = r.conversation("c0").map(|c| c.len()).unwrap_or(0);
            if kind % 2 == 0 || len == 0 {
                (
                    EntityType::Conversation,
                    "c0",
                    LocalEdit::Insert {
                        index: a.index(len + 1),
                        value: Value::from(text),
                    },
                )
            } else {
                (
                    EntityType::Conversation,
                    "c0",
                    LocalEdit::Remove {
                        index: a.index(len),
                    },
                )
            }
        }
    }
}

fn view(r: &Replica) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        r.document("d0"),
        r.document("d1"),
        r.text("d0", "body"),
        r.text("d1", "body"),
        r.conversation("c0"),
        r.field_values("d0", "x"),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn three_replicas_converge_under_any_delivery_order(
        actions in proptest::collection::vec(action(), 1..60),
        final_order in proptest::collection::vec(any::<Index>(), 0..40),
    ) {
        let mut replicas: Vec<Replica> = ["ana", "bob", "cy"].into_iter().map(Replica::new).collect();
        let mut pool: Vec<SyncOperation> = Vec::new();
        for act in &actions {
            match act {
                Action::Edit { replica, entity, kind, a, b, text, n } => {
                    let (t, id, edit) = local_edit(&replicas[*replica], *entity, *kind, a, b, text, *n);
                    let ops = replicas[*replica].apply_local(t, id, edit, 0).expect("in-range local edit");
                    pool.extend(ops);
                }
                Action::Deliver { op, to } => {
                    if !pool.is_empty() {
                        let op = pool[op.index(pool.len())].clone();
                        replicas[*to].apply_remote(op).expect("valid op");
                    }
                }
            }
        }
        // Some more random (duplicate, out of order) deliveries, then everything.
        for (k, i) in final_order.iter().enumerate() {
            if !pool.is_empty() {
                let op = pool[i.index(pool.len())].clone();
                replicas[k % 3].apply_remote(op).expect("valid op");
            }
        }
        for r in replicas.iter_mut() {
            for op in pool.iter().rev() {
                r.apply_remote(op.clone()).expect("valid op");
            }
        }
        let hash = replicas[0].state_hash();
        let v = view(&replicas[0]);
        for r in &replicas {
            prop_assert_eq!(r.buffered(), 0);
            prop_assert_eq!(r.state_hash(), hash);
            prop_assert_eq!(view(r), v.clone());
        }
        // Applying every operation again changes nothing.
        let before = replicas[1].state_hash();
        for op in &pool {
            let applied = replicas[1].apply_remote(op.clone()).expect("valid op");
            prop_assert_eq!(applied, 0);
        }
        prop_assert_eq!(replicas[1].state_hash(), before);
    }
}
