//! Compact snapshots: the whole state without the history that built it.

use std::collections::BTreeMap;

use nomade_wire::{EntityType, Value, VersionVector};
use serde::{Deserialize, Serialize};

use crate::document::{Document, FieldMap};
use crate::error::CrdtError;
use crate::replica::{Entity, Replica, ReplicaConfig};
use crate::sequence::{Eid, OrderKey, Sequence};

/// The snapshot format: 2 since operations version 2 (element ids without
/// offsets). A snapshot of another format is refused, never misread.
pub const SNAPSHOT_VERSION: u8 = 2;

/// Depth limit when decoding a snapshot (values nest inside maps and arrays).
const MAX_DEPTH: usize = 64;

#[derive(Serialize, Deserialize)]
struct SnapElem<T> {
    lamport: u64,
    actor: String,
    counter: u64,
    value: T,
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
enum SnapEntity {
    Document {
        fields: FieldMap,
        write_counters: BTreeMap<String, Vec<u64>>,
        texts: BTreeMap<String, Vec<SnapElem<char>>>,
    },
    Conversation {
        items: Vec<SnapElem<Value>>,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u8,
    version_vector: VersionVector,
    entities: Vec<(EntityType, String, SnapEntity)>,
    entity_version_vectors: Vec<(EntityType, String, VersionVector)>,
}

fn snap_seq<T: Clone>(r: &Replica, s: &Sequence<T>) -> Vec<SnapElem<T>> {
    s.iter_all()
        .map(|(key, value, deleted)| SnapElem {
            lamport: key.lamport,
            actor: r.actors.name(key.id.actor).to_string(),
            counter: key.id.counter,
            value: value.clone(),
            deleted,
        })
        .collect()
}

fn restore_seq<T: Clone>(r: &mut Replica, elems: Vec<SnapElem<T>>) -> Sequence<T> {
    let items: Vec<(OrderKey, T, bool)> = elems
        .into_iter()
        .map(|e| {
            let actor = r.actors.intern(&e.actor);
            let id = Eid {
                actor,
                counter: e.counter,
            };
            (
                OrderKey {
                    lamport: e.lamport,
                    id,
                },
                e.value,
                e.deleted,
            )
        })
        .collect();
    Sequence::from_ordered(items)
}

impl Replica {
    /// The whole state as MessagePack bytes: entities with their tombstones and
    /// the version vector (history is not part of a replica). A device restored from it
    /// continues exactly where this one stands.
    pub fn snapshot(&self) -> Result<Vec<u8>, CrdtError> {
        let entities = self
            .entities
            .iter()
            .map(|((t, id), e)| {
                let snap = match e {
                    Entity::Document(d) => SnapEntity::Document {
                        fields: d.fields.clone(),
                        write_counters: d
                            .write_counters
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        texts: d
                            .texts
                            .iter()
                            .map(|(f, s)| (f.clone(), snap_seq(self, s)))
                            .collect(),
                    },
                    Entity::Conversation(s) => SnapEntity::Conversation {
                        items: snap_seq(self, s),
                    },
                };
                (*t, id.clone(), snap)
            })
            .collect();
        let entity_version_vectors = self
            .entity_vv
            .iter()
            .map(|((t, id), vv)| (*t, id.clone(), vv.clone()))
            .collect();
        let snap = Snapshot {
            entity_version_vectors,
            version: SNAPSHOT_VERSION,
            version_vector: self.vv.clone(),
            entities,
        };
        rmp_serde::to_vec_named(&snap).map_err(|e| CrdtError::BadSnapshot(e.to_string()))
    }

    /// Restores a replica for `actor` from [`Replica::snapshot`] bytes; the
    /// operations after the snapshot are applied to it as to any replica.
    pub fn from_snapshot(
        actor: impl Into<String>,
        bytes: &[u8],
        config: ReplicaConfig,
    ) -> Result<Replica, CrdtError> {
        let mut de = rmp_serde::Deserializer::new(bytes);
        de.set_max_depth(MAX_DEPTH);
        let snap =
            Snapshot::deserialize(&mut de).map_err(|e| CrdtError::BadSnapshot(e.to_string()))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(CrdtError::BadSnapshot(format!(
                "unsupported snapshot version {}",
                snap.version
            )));
        }
        let mut r = Replica::with_config(actor, config);
        for (t, id, e) in snap.entities {
            let entity = match e {
                SnapEntity::Document {
                    fields,
                    write_counters,
                    texts,
                } => {
                    let mut doc = Document {
                        fields,
                        write_counters: write_counters.into_iter().collect(),
                        ..Document::default()
                    };
                    for (f, elems) in texts {
                        let seq = restore_seq(&mut r, elems);
                        doc.texts.insert(f, seq);
                    }
                    Entity::Document(doc)
                }
                SnapEntity::Conversation { items } => {
                    Entity::Conversation(restore_seq(&mut r, items))
                }
            };
            r.entities.insert((t, id), entity);
        }
        for (t, id, vv) in snap.entity_version_vectors {
            r.entity_vv.insert((t, id), vv);
        }
        r.vv = snap.version_vector;
        Ok(r)
    }
}
