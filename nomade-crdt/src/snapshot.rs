//! Compact snapshots: the whole state without the history that built it.

use std::collections::BTreeMap;

use nomade_wire::{EntityType, Value, VersionVector};
use serde::{Deserialize, Serialize};

use crate::actors::ActorIdx;
use crate::document::{Document, FieldMap};
use crate::error::CrdtError;
use crate::replica::{Entity, Replica, ReplicaConfig};
use crate::sequence::{Eid, OrderKey, Sequence};

/// The snapshot format: 2 since operations version 2 (element ids without
/// offsets, sequences as runs of elements, an actor table). A snapshot of
/// another format is refused, never misread.
pub const SNAPSHOT_VERSION: u8 = 2;

/// Depth limit when decoding a snapshot (values nest inside maps and arrays).
const MAX_DEPTH: usize = 64;

/// Consecutive elements of a sequence, in document order, that one run of
/// typing leaves: `(actor, counter, lamport, deleted, values)`, the `k`-th
/// value being the element `(actor, counter + k)` with Lamport number
/// `lamport + k`, all removed or all visible. The actor is an index into
/// the snapshot's actor table. Written as an array: a typed sentence is one
/// of these, not one map per character.
#[derive(Serialize, Deserialize)]
struct SnapRun<V>(u32, u64, u64, bool, V);

#[derive(Serialize, Deserialize)]
enum SnapEntity {
    Document {
        fields: FieldMap,
        write_counters: BTreeMap<ActorIdx, Vec<(u64, u64)>>,
        texts: BTreeMap<String, Vec<SnapRun<String>>>,
    },
    Conversation {
        items: Vec<SnapRun<Vec<Value>>>,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u8,
    /// The replica's actor table, by index.
    actors: Vec<String>,
    version_vector: VersionVector,
    entities: Vec<(EntityType, String, SnapEntity)>,
    entity_version_vectors: Vec<(EntityType, String, VersionVector)>,
}

/// A sequence as runs of elements (see [`SnapRun`]).
fn snap_seq<T: Clone, V: Default + Extend<T>>(s: &Sequence<T>) -> Vec<SnapRun<V>> {
    let mut runs: Vec<SnapRun<V>> = Vec::new();
    let mut last: Option<OrderKey> = None;
    for (key, value, deleted) in s.iter_all() {
        let continues = last.is_some_and(|prev| {
            prev.id.actor == key.id.actor
                && prev.id.counter.checked_add(1) == Some(key.id.counter)
                && prev.lamport.checked_add(1) == Some(key.lamport)
        }) && runs.last().is_some_and(|r| r.3 == deleted);
        match runs.last_mut() {
            Some(run) if continues => run.4.extend([value.clone()]),
            _ => {
                let mut values = V::default();
                values.extend([value.clone()]);
                runs.push(SnapRun(
                    key.id.actor,
                    key.id.counter,
                    key.lamport,
                    deleted,
                    values,
                ));
            }
        }
        last = Some(key);
    }
    runs
}

/// Rebuilds a sequence from its runs; `values` lists a run's values.
fn restore_seq<T: Clone, V, I: IntoIterator<Item = T>>(
    actors: &[ActorIdx],
    runs: Vec<SnapRun<V>>,
    values: impl Fn(V) -> I,
) -> Result<Sequence<T>, CrdtError> {
    let mut items: Vec<(OrderKey, T, bool)> = Vec::new();
    for SnapRun(actor, counter, lamport, deleted, run) in runs {
        let actor = *actors.get(actor as usize).ok_or_else(|| {
            CrdtError::BadSnapshot(format!(
                "actor {actor} outside the table of {}",
                actors.len()
            ))
        })?;
        for (k, value) in values(run).into_iter().enumerate() {
            let k = k as u64;
            let (Some(counter), Some(lamport)) = (counter.checked_add(k), lamport.checked_add(k))
            else {
                return Err(CrdtError::BadSnapshot("a run's counters overflow".into()));
            };
            items.push((
                OrderKey {
                    lamport,
                    id: Eid { actor, counter },
                },
                value,
                deleted,
            ));
        }
    }
    Ok(Sequence::from_ordered(items))
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
                            .map(|(k, v)| (*k, v.clone()))
                            .collect(),
                        texts: d
                            .texts
                            .iter()
                            .map(|(f, s)| (f.clone(), snap_seq(s)))
                            .collect(),
                    },
                    Entity::Conversation(s) => SnapEntity::Conversation { items: snap_seq(s) },
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
            actors: self.actors.names().to_vec(),
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
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
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
        let actors: Vec<ActorIdx> = snap.actors.iter().map(|a| r.actors.intern(a)).collect();
        // Field registers hold the indices as they were: the table must
        // intern to the same ones (it does, unless it repeats a name).
        if actors.iter().enumerate().any(|(i, &a)| a as usize != i) {
            return Err(CrdtError::BadSnapshot(
                "the actor table repeats a device id".into(),
            ));
        }
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
                    for (f, runs) in texts {
                        let seq = restore_seq(&actors, runs, |text: String| {
                            text.chars().collect::<Vec<_>>()
                        })?;
                        doc.texts.insert(f, seq);
                    }
                    Entity::Document(doc)
                }
                SnapEntity::Conversation { items } => {
                    Entity::Conversation(restore_seq(&actors, items, |values| values)?)
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
