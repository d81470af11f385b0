//! The deterministic state hash.
//!
//! BLAKE3 over a canonical byte encoding of every entity, in `(type, id)`
//! order. Strings are written as a big-endian `u64` length and their UTF-8
//! bytes; integers as big-endian `u64`; values as their canonical MessagePack
//! encoding (length-prefixed). A document contributes each field (in key
//! order) with all its concurrent values in rank order (each with its Lamport
//! number and actor), then each text field with its visible characters and
//! their ids. A conversation contributes its visible items with their ids.
//! Tombstones, buffers and the order operations arrived in do not enter it, so
//! two devices that applied the same operations have the same hash.

use nomade_wire::{Hash32, Value};

use crate::replica::{Entity, Replica};

struct Canon(blake3::Hasher);

impl Canon {
    fn u64(&mut self, n: u64) {
        self.0.update(&n.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }
    fn value(&mut self, v: &Value) {
        // A Value always encodes (no float32, no u64 above i64::MAX).
        let bytes = rmp_serde::to_vec_named(v).unwrap_or_default();
        self.u64(bytes.len() as u64);
        self.0.update(&bytes);
    }
}

pub(crate) fn state_hash(r: &Replica) -> Hash32 {
    let mut h = Canon(blake3::Hasher::new());
    h.0.update(b"nomade-state-v1");
    for ((entity_type, id), entity) in &r.entities {
        h.str(entity_type.as_str());
        h.str(id);
        match entity {
            Entity::Document(d) => {
                let fields = d.all_values();
                h.u64(fields.len() as u64);
                for (key, vals) in &fields {
                    h.str(key);
                    h.u64(vals.len() as u64);
                    for t in vals {
                        h.u64(t.lamport);
                        h.str(&t.actor);
                        h.value(&t.value);
                    }
                }
                h.u64(d.texts.len() as u64);
                for (field, text) in &d.texts {
                    h.str(field);
                    h.u64(text.len() as u64);
                    for (eid, c) in text.iter() {
                        h.str(r.actors.name(eid.actor));
                        h.u64(eid.counter);
                        h.u64(u64::from(eid.offset));
                        h.u64(u64::from(u32::from(*c)));
                    }
                }
            }
            Entity::Conversation(s) => {
                h.u64(s.len() as u64);
                for (eid, v) in s.iter() {
                    h.str(r.actors.name(eid.actor));
                    h.u64(eid.counter);
                    h.u64(u64::from(eid.offset));
                    h.value(v);
                }
            }
        }
    }
    Hash32::from(*h.0.finalize().as_bytes())
}
