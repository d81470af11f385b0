//! Convergence under any interleaving: three replicas edit random entities
//! while operations are delivered to each other in random order, with
//! duplicates, some of them restarted from their own snapshot on the way;
//! in the end every replica holds the same state.

use nomade_crdt::{LocalEdit, Replica, ReplicaConfig};
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
    /// The replica is replaced by one restored from its snapshot (what a
    /// node does at every start, and a device that adopts a peer's).
    Restore {
        replica: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..3usize, 0..3u8, 0..4u8, any::<Index>(), any::<Index>(), "[a-c]{0,3}", -3..3i64).prop_map(
            |(replica, entity, kind, a, b, text, n)| Action::Edit { replica, entity, kind, a, b, text, n }
        ),
        2 => (any::<Index>(), 0..3usize).prop_map(|(op, to)| Action::Deliver { op, to }),
        1 => (0..3usize).prop_map(|replica| Action::Restore { replica }),
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
            if kind == 3 {
                (
                    EntityType::Conversation,
                    "c0",
                    LocalEdit::Append {
                        value: Value::from(text),
                    },
                )
            } else if kind % 2 == 0 || len == 0 {
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
                Action::Restore { replica } => {
                    let r = &replicas[*replica];
                    let bytes = r.snapshot().expect("a snapshot");
                    let restored = Replica::from_snapshot(r.actor(), &bytes, ReplicaConfig::default())
                        .expect("its own snapshot restores");
                    // What was applied is the same; only the causal buffer
                    // (never part of a snapshot) is gone.
                    prop_assert_eq!(restored.state_hash(), r.state_hash());
                    prop_assert_eq!(view(&restored), view(r));
                    prop_assert_eq!(restored.version_vector(), r.version_vector());
                    replicas[*replica] = restored;
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

/// What one of two devices does to a shared text field.
#[derive(Debug, Clone)]
enum TextAction {
    /// Type a character right after the device's cursor (where a run grows).
    Type { device: usize, c: char },
    /// Delete the character before the cursor (a backspace).
    Backspace { device: usize },
    /// Move the cursor anywhere.
    Jump { device: usize, to: Index },
    /// Deliver everything one device has to the other.
    Sync { from: usize },
}

fn text_action() -> impl Strategy<Value = TextAction> {
    prop_oneof![
        6 => (0..2usize, proptest::char::range('a', 'e')).prop_map(|(device, c)| TextAction::Type { device, c }),
        2 => (0..2usize).prop_map(|device| TextAction::Backspace { device }),
        1 => (0..2usize, any::<Index>()).prop_map(|(device, to)| TextAction::Jump { device, to }),
        1 => (0..2usize).prop_map(|from| TextAction::Sync { from }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A run is shorthand for its one-element operations (PROTOCOL.md,
    /// "Operations"): two devices typing concurrently, their keystrokes
    /// delivered one by one, joined into runs, or partly one by one and then
    /// as runs overlapping what arrived (the rest of each run applied) all
    /// give the state of the two devices.
    #[test]
    fn runs_apply_as_their_keystrokes_whole_or_in_part(
        actions in proptest::collection::vec(text_action(), 1..80),
        cut in any::<Index>(),
    ) {
        let mut devices = [Replica::new("ana"), Replica::new("bob")];
        let mut cursors = [0usize, 0];
        let mut authored: [Vec<SyncOperation>; 2] = [Vec::new(), Vec::new()];
        let mut delivered = [0usize, 0];
        let len = |r: &Replica| r.text("d", "t").map_or(0, |t| t.chars().count());
        let splice = |r: &mut Replica, position, delete, insert: &str| {
            let edit = LocalEdit::Splice { field: "t".into(), position, delete, insert: insert.into() };
            r.apply_local(EntityType::Document, "d", edit, 0).unwrap()
        };
        for action in actions {
            match action {
                TextAction::Type { device, c } => {
                    let at = cursors[device].min(len(&devices[device]));
                    authored[device].extend(splice(&mut devices[device], at, 0, &c.to_string()));
                    cursors[device] = at + 1;
                }
                TextAction::Backspace { device } => {
                    let at = cursors[device].min(len(&devices[device]));
                    if at > 0 {
                        authored[device].extend(splice(&mut devices[device], at - 1, 1, ""));
                        cursors[device] = at - 1;
                    }
                }
                TextAction::Jump { device, to } => {
                    cursors[device] = to.index(len(&devices[device]) + 1);
                }
                TextAction::Sync { from } => {
                    let to = 1 - from;
                    for op in authored[from][delivered[from]..].iter().cloned() {
                        devices[to].apply_remote(op).unwrap();
                    }
                    delivered[from] = authored[from].len();
                }
            }
        }
        for from in 0..2 {
            for op in authored[from][delivered[from]..].iter().cloned() {
                devices[1 - from].apply_remote(op).unwrap();
            }
        }
        let expected = devices[0].state_hash();
        prop_assert_eq!(devices[1].state_hash(), expected);

        let joined: Vec<Vec<SyncOperation>> =
            authored.iter().map(|ops| nomade_crdt::runs::join(ops.clone())).collect();
        // One by one, bob's first (the causal buffer orders them).
        let mut singles = Replica::new("carol");
        for op in authored[1].iter().chain(&authored[0]) {
            singles.apply_remote(op.clone()).unwrap();
        }
        prop_assert_eq!(singles.state_hash(), expected);
        // As runs.
        let mut runs = Replica::new("dave");
        for op in joined[0].iter().chain(&joined[1]) {
            runs.apply_remote(op.clone()).unwrap();
        }
        prop_assert_eq!(runs.state_hash(), expected);
        // Part of ana's keystrokes one by one, then all as runs.
        let mut parts = Replica::new("erin");
        let k = cut.index(authored[0].len() + 1);
        for op in authored[0][..k].iter().chain(&joined[0]).chain(&joined[1]) {
            parts.apply_remote(op.clone()).unwrap();
        }
        prop_assert_eq!(parts.state_hash(), expected);
        prop_assert_eq!(parts.buffered(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No interleaving: two devices type a word each, a keystroke at a
    /// time, forwards or backwards (each keystroke before the previous one,
    /// the word's last character first), at the same place of a shared
    /// text and at the same time; once both have everything, each word is
    /// whole, one after the other (which first is the same on both).
    #[test]
    fn words_typed_at_one_place_at_once_stay_whole(
        base in "[0-9]{0,12}",
        at in any::<Index>(),
        ana_word in "[A-E]{1,12}",
        bob_word in "[a-e]{1,12}",
        ana_backwards in any::<bool>(),
        bob_backwards in any::<bool>(),
        order in proptest::collection::vec(any::<bool>(), 0..30),
    ) {
        let mut ana = Replica::new("ana");
        let mut bob = Replica::new("bob");
        let splice = |r: &mut Replica, position, insert: &str| {
            let edit = LocalEdit::Splice { field: "t".into(), position, delete: 0, insert: insert.into() };
            r.apply_local(EntityType::Document, "d", edit, 0).unwrap()
        };
        for op in splice(&mut ana, 0, &base) {
            bob.apply_remote(op).unwrap();
        }
        let at = at.index(base.chars().count() + 1);
        let typed = |r: &mut Replica, word: &str, backwards: bool| -> Vec<SyncOperation> {
            if backwards {
                word.chars()
                    .rev()
                    .flat_map(|c| splice(r, at, &c.to_string()))
                    .collect()
            } else {
                word.chars()
                    .enumerate()
                    .flat_map(|(i, c)| splice(r, at + i, &c.to_string()))
                    .collect()
            }
        };
        let from_ana = typed(&mut ana, &ana_word, ana_backwards);
        let from_bob = typed(&mut bob, &bob_word, bob_backwards);
        // Delivered keystroke by keystroke, in an order the test picks.
        let (mut a, mut b) = (from_ana.into_iter(), from_bob.into_iter());
        for ana_first in order {
            if ana_first {
                if let Some(op) = a.next() { bob.apply_remote(op).unwrap(); }
            } else if let Some(op) = b.next() {
                ana.apply_remote(op).unwrap();
            }
        }
        for op in a { bob.apply_remote(op).unwrap(); }
        for op in b { ana.apply_remote(op).unwrap(); }
        let text = ana.text("d", "t").unwrap();
        prop_assert_eq!(bob.text("d", "t").unwrap(), text.clone());
        let both = [format!("{ana_word}{bob_word}"), format!("{bob_word}{ana_word}")];
        let (before, rest) = base.split_at(at);
        prop_assert!(
            both.iter().any(|words| text == format!("{before}{words}{rest}")),
            "{:?} and {:?} at {} of {:?}: {:?}", ana_word, bob_word, at, base, text
        );
    }
}

/// What a pusher sends a puller whose version vector is `asked` and whose
/// subscription is `subscription` (docs/PROTOCOL.md, "Subscriptions"): of
/// `ops` (in an order that applies), those it lacks, each as it is when its
/// entity matches, else as a `skip` of its counters, consecutive skips of
/// one actor joined.
fn pushed(
    ops: &[SyncOperation],
    asked: &nomade_wire::VersionVector,
    subscription: &nomade_crdt::Subscription,
) -> Vec<SyncOperation> {
    use nomade_wire::{CrdtOperation, Edit};
    let mut out: Vec<SyncOperation> = Vec::new();
    for op in ops {
        if op.operation.last_counter() <= asked.get(&op.actor_id).copied().unwrap_or(0) {
            continue;
        }
        if subscription.matches(op.entity_type, &op.entity_id) {
            out.push(op.clone());
            continue;
        }
        if let Some(prev) = out.last_mut() {
            let follows = prev.actor_id == op.actor_id
                && prev.operation.last_counter() + 1 == op.operation.counter;
            if let Edit::Skip { span } = &mut prev.operation.edit {
                if follows {
                    *span += op.operation.edit.span();
                    continue;
                }
            }
        }
        out.push(SyncOperation {
            entity_id: "".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: op.operation.counter,
                deps: Default::default(),
                edit: Edit::Skip {
                    span: op.operation.edit.span(),
                },
            },
            timestamp: op.timestamp,
            actor_id: op.actor_id.clone(),
        });
    }
    out
}

/// The subscription a mask of the test's three entities stands for.
fn subscription_of(mask: u8) -> nomade_crdt::Subscription {
    let patterns = ["document:d0", "document:d1", "conversation:c0"]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, p)| p);
    nomade_crdt::Subscription::parse(patterns).expect("valid patterns")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    /// Selective sync (docs/PROTOCOL.md, "Subscriptions"): three devices
    /// edit; a device subscribed to some entities is sent skips for the
    /// others (twice, as two pushers would), holds exactly its entities
    /// and counts every counter; its subscription grows, it asks again
    /// from its request vector and is sent the history again under the new
    /// subscription (the added entities filled in, the rest changing
    /// nothing); the devices edit on. It ends equal to a device holding
    /// everything on every entity it subscribes to, holding nothing else.
    #[test]
    fn a_subscribed_replica_equals_a_full_one_on_its_entities(
        actions in proptest::collection::vec(action(), 1..50),
        later in proptest::collection::vec(action(), 0..20),
        first in 0u8..8,
        added in 0u8..8,
    ) {
        let mut authors: Vec<Replica> = ["ana", "bob", "cy"].into_iter().map(Replica::new).collect();
        let mut pool: Vec<SyncOperation> = Vec::new();
        let act = |authors: &mut Vec<Replica>, pool: &mut Vec<SyncOperation>, a: &Action| {
            match a {
                Action::Edit { replica, entity, kind, a, b, text, n } => {
                    let (t, id, edit) = local_edit(&authors[*replica], *entity, *kind, a, b, text, *n);
                    let ops = authors[*replica].apply_local(t, id, edit, 0).expect("in-range local edit");
                    pool.extend(ops);
                }
                Action::Deliver { op, to } => {
                    if !pool.is_empty() {
                        let op = pool[op.index(pool.len())].clone();
                        authors[*to].apply_remote(op).expect("valid op");
                    }
                }
                Action::Restore { .. } => {}
            }
        };
        for a in &actions {
            act(&mut authors, &mut pool, a);
        }
        let before = subscription_of(first);
        let after = subscription_of(first | added);
        let mut phone = Replica::new("phone");
        for _ in 0..2 {
            for op in pushed(&pool, &Default::default(), &before) {
                phone.apply_remote(op).expect("valid op");
            }
        }
        let mut full = Replica::new("desk");
        for op in &pool {
            full.apply_remote(op.clone()).expect("valid op");
        }
        prop_assert_eq!(phone.version_vector(), full.version_vector());
        prop_assert_eq!(phone.state_hash_of(&before), full.state_hash_of(&before));

        phone.widen();
        let asked = phone.request_vector();
        for a in &later {
            act(&mut authors, &mut pool, a);
        }
        for op in pool.iter().skip(full.applied().len()) {
            full.apply_remote(op.clone()).expect("valid op");
        }
        for op in pushed(&pool, &asked, &after) {
            phone.apply_remote(op).expect("valid op");
        }
        prop_assert_eq!(phone.version_vector(), full.version_vector());
        prop_assert!(phone.refill_frontier().is_empty(), "filled in: {:?}", phone.refill_frontier());
        prop_assert_eq!(phone.buffered(), 0);
        prop_assert_eq!(phone.state_hash_of(&after), full.state_hash_of(&after));
        for (t, id) in phone.entities() {
            prop_assert!(after.matches(t, id), "{:?} {} is not subscribed to", t, id);
        }
    }
}
