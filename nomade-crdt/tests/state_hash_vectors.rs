//! The published state-hash vectors (`tests/state_hash_vectors.json`): sets
//! of operations, the state they converge to (what the hash covers, written
//! out) and its `sync_state_hash`. The file matches what this code computes;
//! `nomade-wire/tests/interop/check_vectors.py --state-hash` recomputes each
//! hash from the state with the rules of PROTOCOL.md ("State hash") alone.
//!
//! Each vector also carries the converged replica's snapshot
//! (`snapshot_hex`, the format of PROTOCOL.md "Snapshots"); the checker
//! decodes it and hashes the state it holds.
//!
//! Regenerate after a deliberate change with
//! `NOMADE_WRITE_VECTORS=1 cargo test -p nomade-crdt --test state_hash_vectors`.

use std::path::PathBuf;

use nomade_crdt::hash::{CanonicalElement, CanonicalState};
use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, Envelope, MessageId, SyncOperation, Value};
use serde_json::json;

const LAPTOP: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";
const PHONE: &str = "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals";
const TIMESTAMP: i64 = 1_700_000_000_000;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/state_hash_vectors.json")
}

fn load() -> serde_json::Value {
    let text = std::fs::read_to_string(path()).expect("tests/state_hash_vectors.json is present");
    serde_json::from_str(&text).expect("json")
}

fn edit(r: &mut Replica, t: EntityType, id: &str, e: LocalEdit) -> Vec<SyncOperation> {
    r.apply_local(t, id, e, TIMESTAMP).expect("local edit")
}

fn set(key: &str, value: impl Into<Value>) -> LocalEdit {
    LocalEdit::Set {
        key: key.into(),
        value: value.into(),
    }
}

fn splice(field: &str, position: usize, delete: usize, insert: &str) -> LocalEdit {
    LocalEdit::Splice {
        field: field.into(),
        position,
        delete,
        insert: insert.into(),
    }
}

/// Two devices edit concurrently, then exchange everything. The names are
/// chosen so that byte-wise order of the type names (`conversation` <
/// `document`) differs from the hashing order (documents first), and a text
/// field ends with every character removed.
fn scenario() -> (Vec<SyncOperation>, Replica) {
    use EntityType::{Conversation, Document};
    let mut laptop = Replica::new(LAPTOP);
    let mut phone = Replica::new(PHONE);
    let mut ops = Vec::new();
    ops.extend(edit(&mut laptop, Document, "trip", set("title", "Lisbon")));
    ops.extend(edit(&mut laptop, Document, "trip", set("nights", 4i64)));
    ops.extend(edit(
        &mut laptop,
        Document,
        "trip",
        splice("notes", 0, 0, "pack 🧳"),
    ));
    ops.extend(edit(
        &mut laptop,
        Conversation,
        "a-chat",
        LocalEdit::Insert {
            index: 0,
            value: Value::from("hello"),
        },
    ));
    for op in ops.clone() {
        phone.apply_remote(op).expect("phone applies");
    }
    // Concurrent: both write the title (two values stay); the phone empties
    // a text field it writes; the laptop writes bytes into a new document.
    let mut concurrent = Vec::new();
    concurrent.extend(edit(&mut phone, Document, "trip", set("title", "Porto")));
    concurrent.extend(edit(
        &mut phone,
        Document,
        "trip",
        splice("draft", 0, 0, "xy"),
    ));
    concurrent.extend(edit(
        &mut phone,
        Document,
        "trip",
        splice("draft", 0, 2, ""),
    ));
    concurrent.extend(edit(
        &mut phone,
        Conversation,
        "a-chat",
        LocalEdit::Insert {
            index: 1,
            value: Value::Array(vec![Value::from(1i64), Value::Nil]),
        },
    ));
    concurrent.extend(edit(&mut laptop, Document, "trip", set("title", "Faro")));
    concurrent.extend(edit(
        &mut laptop,
        Document,
        "b-doc",
        set("blob", Value::Bytes(vec![0, 1, 2])),
    ));
    for op in &concurrent {
        if op.actor_id == PHONE {
            laptop.apply_remote(op.clone()).expect("laptop applies");
        } else {
            phone.apply_remote(op.clone()).expect("phone applies");
        }
    }
    ops.extend(concurrent);
    assert_eq!(
        laptop.state_hash(),
        phone.state_hash(),
        "the scenario converges"
    );
    assert_eq!(
        laptop.field_values("trip", "title").len(),
        2,
        "a conflict is kept"
    );
    (ops, laptop)
}

/// Two devices type at one place at once: the laptop a word forwards, the
/// phone a word backwards (each key before the last), between the same two
/// characters, and each appends to a conversation; then they exchange
/// everything. The placement rule of PROTOCOL.md ("Sequences") keeps each
/// word whole; the checker replays these operations with that rule alone.
fn typing_scenario() -> (Vec<SyncOperation>, Replica) {
    use EntityType::{Conversation, Document};
    let mut laptop = Replica::new(LAPTOP);
    let mut phone = Replica::new(PHONE);
    let mut ops = Vec::new();
    ops.extend(edit(
        &mut laptop,
        Document,
        "letter",
        splice("body", 0, 0, "[]"),
    ));
    for value in ["hi", "ho"] {
        ops.extend(edit(
            &mut laptop,
            Conversation,
            "chat",
            LocalEdit::Append {
                value: Value::from(value),
            },
        ));
    }
    for op in ops.clone() {
        phone.apply_remote(op).expect("phone applies");
    }
    let mut from_laptop = Vec::new();
    for (i, c) in "abc".chars().enumerate() {
        let key = splice("body", 1 + i, 0, &c.to_string());
        from_laptop.extend(edit(&mut laptop, Document, "letter", key));
    }
    from_laptop.extend(edit(
        &mut laptop,
        Conversation,
        "chat",
        LocalEdit::Insert {
            index: 1,
            value: Value::from("laptop"),
        },
    ));
    let mut from_phone = Vec::new();
    for c in "XYZ".chars().rev() {
        from_phone.extend(edit(
            &mut phone,
            Document,
            "letter",
            splice("body", 1, 0, &c.to_string()),
        ));
    }
    from_phone.extend(edit(
        &mut phone,
        Document,
        "letter",
        splice("body", 0, 1, ""),
    ));
    from_phone.extend(edit(
        &mut phone,
        Conversation,
        "chat",
        LocalEdit::Insert {
            index: 1,
            value: Value::from("phone"),
        },
    ));
    for op in &from_laptop {
        phone.apply_remote(op.clone()).expect("phone applies");
    }
    for op in &from_phone {
        laptop.apply_remote(op.clone()).expect("laptop applies");
    }
    ops.extend(from_laptop);
    ops.extend(from_phone);
    assert_eq!(
        laptop.state_hash(),
        phone.state_hash(),
        "the scenario converges"
    );
    let text = laptop.text("letter", "body").expect("the text");
    assert!(text == "abcXYZ]" || text == "XYZabc]", "{text}");
    (ops, laptop)
}

fn element<T>(e: &CanonicalElement<T>, content: serde_json::Value) -> serde_json::Value {
    json!({"actor": e.actor, "counter": e.counter, "content": content})
}

fn msgpack_hex(v: &Value) -> String {
    hex::encode(rmp_serde::to_vec_named(v).expect("a value encodes"))
}

fn state_json(s: &CanonicalState) -> serde_json::Value {
    let entities: Vec<_> = s
        .entities
        .iter()
        .map(|e| {
            let mut o = json!({"entity_type": e.entity_type.as_str(), "entity_id": e.entity_id});
            match e.entity_type {
                EntityType::Document => {
                    o["fields"] = e
                        .fields
                        .iter()
                        .map(|f| {
                            let values: Vec<_> = f
                                .values
                                .iter()
                                .map(|v| json!({"lamport": v.lamport, "actor": v.actor, "value_msgpack_hex": msgpack_hex(&v.value)}))
                                .collect();
                            json!({"key": f.key, "values": values})
                        })
                        .collect();
                    o["texts"] = e
                        .texts
                        .iter()
                        .map(|t| {
                            let chars: Vec<_> = t
                                .chars
                                .iter()
                                .map(|c| element(c, json!(u32::from(c.content))))
                                .collect();
                            json!({"field": t.field, "chars": chars})
                        })
                        .collect();
                }
                _ => {
                    o["items"] = e
                        .items
                        .iter()
                        .map(|i| element(i, json!(msgpack_hex(&i.content))))
                        .collect();
                }
            }
            o
        })
        .collect();
    json!({ "entities": entities })
}

fn vector(name: &str, (ops, replica): (Vec<SyncOperation>, Replica)) -> serde_json::Value {
    let frames: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let env = Envelope::new(MessageId::from([i as u8; 16]), TIMESTAMP, op);
            hex::encode(env.to_bytes().expect("encode"))
        })
        .collect();
    json!({
        "name": name,
        "operations_frame_hex": frames,
        "state": state_json(&replica.canonical_state()),
        "state_hash": hex::encode(replica.state_hash().as_bytes()),
        "snapshot_hex": hex::encode(replica.snapshot().expect("snapshot")),
    })
}

fn expected() -> serde_json::Value {
    json!([
        vector("two_devices_concurrent_edits", scenario()),
        vector("two_devices_typing_at_one_place", typing_scenario()),
    ])
}

#[test]
fn state_hash_vectors_file_matches_the_code() {
    if std::env::var_os("NOMADE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&expected()).expect("json") + "\n";
        std::fs::write(path(), text).expect("write state_hash_vectors.json");
    }
    let file = load();
    assert_eq!(
        file,
        expected(),
        "tests/state_hash_vectors.json is stale: regenerate it (see this file's header)"
    );
}

/// The operations of the vector, applied in the file's order to a fresh
/// replica, give the published hash: the vector is self-consistent.
#[test]
fn replaying_the_vector_operations_gives_its_hash() {
    for v in load().as_array().expect("array") {
        let mut r = Replica::new("cvml-efwx-x7jt-253v-yrk5-ma4a-aaaa-aaaa");
        for f in v["operations_frame_hex"].as_array().expect("frames") {
            let frame = hex::decode(f.as_str().expect("hex")).expect("hex");
            match Envelope::decode(&frame).expect("frame").message {
                nomade_wire::Message::SyncOperation(op) => {
                    r.apply_remote(op).expect("applies");
                }
                other => panic!("not a SYNC_OPERATION: {other:?}"),
            }
        }
        assert_eq!(
            hex::encode(r.state_hash().as_bytes()),
            v["state_hash"].as_str().expect("hash")
        );
    }
}

/// The vector's snapshot restores to a replica with its hash, which goes on
/// applying operations (a duplicate of the vector's changes nothing).
#[test]
fn the_vector_snapshot_restores_the_state_with_its_hash() {
    for v in load().as_array().expect("array") {
        let bytes = hex::decode(v["snapshot_hex"].as_str().expect("hex")).expect("hex");
        let mut r = Replica::from_snapshot(
            "cvml-efwx-x7jt-253v-yrk5-ma4a-aaaa-aaaa",
            &bytes,
            nomade_crdt::ReplicaConfig::default(),
        )
        .expect("restores");
        let hash = v["state_hash"].as_str().expect("hash");
        assert_eq!(hex::encode(r.state_hash().as_bytes()), hash);
        for f in v["operations_frame_hex"].as_array().expect("frames") {
            let frame = hex::decode(f.as_str().expect("hex")).expect("hex");
            if let nomade_wire::Message::SyncOperation(op) =
                Envelope::decode(&frame).expect("frame").message
            {
                assert_eq!(r.apply_remote(op).expect("a duplicate"), 0);
            }
        }
        assert_eq!(hex::encode(r.state_hash().as_bytes()), hash);
    }
}
