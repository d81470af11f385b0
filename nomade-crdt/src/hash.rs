//! The deterministic state hash (PROTOCOL.md, "State hash").
//!
//! BLAKE3 over a canonical byte encoding of every entity, documents first
//! then conversations, each type's entities by id (byte-wise). Strings are
//! written as a big-endian `u64` length and their UTF-8 bytes; integers as
//! big-endian `u64`; values as their canonical MessagePack encoding
//! (length-prefixed). A document contributes each field (in key order) with
//! all its concurrent values in rank order (each with its Lamport number and
//! actor), then each text field with its visible characters and their ids.
//! A conversation contributes its visible items with their ids. Tombstones,
//! buffers and the order operations arrived in do not enter it, so two
//! devices that applied the same operations have the same hash.
//!
//! [`CanonicalState`] is the same walk written out as data: what the hash
//! covers, to compare two devices whose hashes differ, and the published
//! state-hash vectors.

use nomade_wire::{EntityType, Hash32, Value};

use crate::replica::{Entity, Replica};
use crate::subscription::Subscription;

/// Everything the state hash covers, in hashing order.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalState {
    /// The entities, documents first, then conversations, each by id.
    pub entities: Vec<CanonicalEntity>,
}

/// One entity of a [`CanonicalState`].
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalEntity {
    /// Its type.
    pub entity_type: EntityType,
    /// Its id.
    pub entity_id: String,
    /// A document's fields that have a value, in key order (empty for a conversation).
    pub fields: Vec<CanonicalField>,
    /// A document's text fields in name order, including those with no
    /// visible character left (empty for a conversation).
    pub texts: Vec<CanonicalText>,
    /// A conversation's visible items in order (empty for a document).
    pub items: Vec<CanonicalElement<Value>>,
}

/// A document field and its concurrent values, highest `(lamport, actor)` first.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalField {
    /// The field name.
    pub key: String,
    /// Its concurrent values.
    pub values: Vec<CanonicalValue>,
}

/// One concurrent value of a field.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalValue {
    /// The Lamport number of the write.
    pub lamport: u64,
    /// The writing actor.
    pub actor: String,
    /// The value.
    pub value: Value,
}

/// A text field and its visible characters in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalText {
    /// The field name.
    pub field: String,
    /// The visible characters.
    pub chars: Vec<CanonicalElement<char>>,
}

/// A visible sequence element with its id `(actor, counter)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalElement<T> {
    /// The inserting actor.
    pub actor: String,
    /// The element's counter.
    pub counter: u64,
    /// The character or item.
    pub content: T,
}

/// The steps of the canonical walk, in order: the hasher and
/// [`CanonicalState`] are its two consumers, so they cannot disagree.
trait Walk {
    fn entity(&mut self, entity_type: EntityType, id: &str, fields: usize);
    fn field(&mut self, key: &str, values: usize);
    fn value(&mut self, lamport: u64, actor: &str, value: &Value);
    fn texts(&mut self, count: usize);
    fn text(&mut self, field: &str, visible: usize);
    fn char(&mut self, actor: &str, counter: u64, c: char);
    fn items(&mut self, visible: usize);
    fn item(&mut self, actor: &str, counter: u64, value: &Value);
}

/// The replica's entities in hashing order: documents, then conversations
/// (the order of [`EntityType::ALL`]), each type's by id byte-wise.
fn walk(r: &Replica, subscription: &Subscription, w: &mut impl Walk) {
    let held = r
        .entities
        .iter()
        .filter(|((t, id), _)| subscription.matches(*t, id));
    for ((entity_type, id), entity) in held {
        match entity {
            Entity::Document(d) => {
                let fields = d.all_values(&r.actors);
                w.entity(*entity_type, id, fields.len());
                for (key, vals) in &fields {
                    w.field(key, vals.len());
                    for t in vals {
                        w.value(t.lamport, r.actors.name(t.actor), &t.value);
                    }
                }
                w.texts(d.texts.len());
                for (field, text) in &d.texts {
                    w.text(field, text.len());
                    for (eid, c) in text.chars() {
                        w.char(r.actors.name(eid.actor), eid.counter, c);
                    }
                }
            }
            Entity::Conversation(s) => {
                w.entity(*entity_type, id, 0);
                w.items(s.len());
                for (eid, v) in s.items() {
                    w.item(r.actors.name(eid.actor), eid.counter, v);
                }
            }
        }
    }
}

struct Canon(blake3::Hasher);

impl Canon {
    fn u64(&mut self, n: u64) {
        self.0.update(&n.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }
    fn msgpack(&mut self, v: &Value) {
        // A Value always encodes (no float32, no u64 above i64::MAX).
        let bytes = rmp_serde::to_vec_named(v).unwrap_or_default();
        self.u64(bytes.len() as u64);
        self.0.update(&bytes);
    }
    fn element_id(&mut self, actor: &str, counter: u64) {
        self.str(actor);
        self.u64(counter);
    }
}

impl Walk for Canon {
    fn entity(&mut self, entity_type: EntityType, id: &str, fields: usize) {
        self.str(entity_type.as_str());
        self.str(id);
        if entity_type == EntityType::Document {
            self.u64(fields as u64);
        }
    }
    fn field(&mut self, key: &str, values: usize) {
        self.str(key);
        self.u64(values as u64);
    }
    fn value(&mut self, lamport: u64, actor: &str, value: &Value) {
        self.u64(lamport);
        self.str(actor);
        self.msgpack(value);
    }
    fn texts(&mut self, count: usize) {
        self.u64(count as u64);
    }
    fn text(&mut self, field: &str, visible: usize) {
        self.str(field);
        self.u64(visible as u64);
    }
    fn char(&mut self, actor: &str, counter: u64, c: char) {
        self.element_id(actor, counter);
        self.u64(u64::from(u32::from(c)));
    }
    fn items(&mut self, visible: usize) {
        self.u64(visible as u64);
    }
    fn item(&mut self, actor: &str, counter: u64, value: &Value) {
        self.element_id(actor, counter);
        self.msgpack(value);
    }
}

pub(crate) fn state_hash(r: &Replica, subscription: &Subscription) -> Hash32 {
    let mut h = Canon(blake3::Hasher::new());
    h.0.update(b"nomade-state-v2");
    walk(r, subscription, &mut h);
    Hash32::from(*h.0.finalize().as_bytes())
}

/// Collects the walk into a [`CanonicalState`].
struct Collect(CanonicalState);

impl Collect {
    fn last(&mut self) -> Option<&mut CanonicalEntity> {
        self.0.entities.last_mut()
    }
}

impl Walk for Collect {
    fn entity(&mut self, entity_type: EntityType, id: &str, _fields: usize) {
        self.0.entities.push(CanonicalEntity {
            entity_type,
            entity_id: id.to_string(),
            fields: Vec::new(),
            texts: Vec::new(),
            items: Vec::new(),
        });
    }
    fn field(&mut self, key: &str, _values: usize) {
        if let Some(e) = self.last() {
            e.fields.push(CanonicalField {
                key: key.to_string(),
                values: Vec::new(),
            });
        }
    }
    fn value(&mut self, lamport: u64, actor: &str, value: &Value) {
        if let Some(f) = self.last().and_then(|e| e.fields.last_mut()) {
            f.values.push(CanonicalValue {
                lamport,
                actor: actor.to_string(),
                value: value.clone(),
            });
        }
    }
    fn texts(&mut self, _count: usize) {}
    fn text(&mut self, field: &str, _visible: usize) {
        if let Some(e) = self.last() {
            e.texts.push(CanonicalText {
                field: field.to_string(),
                chars: Vec::new(),
            });
        }
    }
    fn char(&mut self, actor: &str, counter: u64, c: char) {
        if let Some(t) = self.last().and_then(|e| e.texts.last_mut()) {
            t.chars.push(element(actor, counter, c));
        }
    }
    fn items(&mut self, _visible: usize) {}
    fn item(&mut self, actor: &str, counter: u64, value: &Value) {
        if let Some(e) = self.last() {
            e.items.push(element(actor, counter, value.clone()));
        }
    }
}

fn element<T>(actor: &str, counter: u64, content: T) -> CanonicalElement<T> {
    CanonicalElement {
        actor: actor.to_string(),
        counter,
        content,
    }
}

pub(crate) fn canonical_state(r: &Replica) -> CanonicalState {
    let mut c = Collect(CanonicalState {
        entities: Vec::new(),
    });
    walk(r, &Subscription::Everything, &mut c);
    c.0
}
