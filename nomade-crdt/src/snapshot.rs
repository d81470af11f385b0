//! Compact snapshots: the whole state without the history that built it.

use nomade_wire::{ActorId, EntityType, Value, VersionVector};
use serde::{Deserialize, Serialize};

use crate::actors::ActorIdx;
use crate::document::{Document, Tagged};
use crate::error::CrdtError;
use crate::replica::{Entity, Replica, ReplicaConfig};
use crate::sequence::{Content, Eid, Run, Sequence, MAX_REMOVED};
use crate::subscription::Subscription;

/// The snapshot format: 3 since a snapshot became a message a device may
/// send another (docs/PROTOCOL.md, "Snapshots"): fields as their concurrent
/// values with their dots, sequences as runs of elements, an actor table;
/// 4 since sequence elements carry their origins instead of Lamport
/// numbers; 5 since removed runs carry their length instead of their
/// values. A snapshot of another format is refused, never misread.
pub const SNAPSHOT_VERSION: u8 = 5;

/// Depth limit when decoding a snapshot (values nest inside maps and arrays).
const MAX_DEPTH: usize = 64;

/// An element id in a snapshot: `(actor, counter)`, the actor an index
/// into the snapshot's actor table.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
struct SnapId(u32, u64);

/// Consecutive elements of a sequence, in document order, that one run of
/// typing leaves: `(actor, counter, origin, right, removed, values)`: the
/// elements `(actor, counter + k)`, whose left origin is `origin` for
/// `k = 0` and element `k - 1` after, and whose right origin is `right`
/// (nil: none). A visible run has `removed` 0 and one value per element; a
/// removed one (tombstones) has `removed` elements and no values. Actors
/// are indices into the snapshot's actor table. Written as an array: a
/// typed sentence is one of these, not one map per character.
#[derive(Serialize, Deserialize)]
struct SnapRun<V>(u32, u64, Option<SnapId>, Option<SnapId>, u64, V);

/// One concurrent value of a document field: `(actor, counter, lamport,
/// value)`, the write's dot (actor as an index into the actor table), its
/// Lamport number and the value written.
#[derive(Serialize, Deserialize)]
struct SnapValue(u32, u64, u64, Value);

/// One entity: `(type, id, entity version vector, fields, texts, items)`.
/// A document has fields (each with its concurrent values, the field's
/// name first) and texts (each a text field's runs); a conversation has
/// items (its runs). The parts another type has are empty.
#[derive(Serialize, Deserialize)]
#[allow(clippy::type_complexity)]
struct SnapEntity(
    EntityType,
    String,
    VersionVector,
    Vec<(String, Vec<SnapValue>)>,
    Vec<(String, Vec<SnapRun<String>>)>,
    Vec<SnapRun<Vec<Value>>>,
);

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u8,
    /// The replica's actor table, by index.
    actors: Vec<ActorId>,
    version_vector: VersionVector,
    entities: Vec<SnapEntity>,
}

/// Just the version vector of a snapshot (its other parts skipped, not
/// built).
#[derive(Deserialize)]
struct SnapshotCover {
    version: u8,
    version_vector: VersionVector,
}

/// The version vector of [`Replica::snapshot`] bytes: what the state it
/// holds covers, read without restoring it.
pub fn snapshot_version_vector(bytes: &[u8]) -> Result<VersionVector, CrdtError> {
    let cover = decode_checked(bytes, |c: &SnapshotCover| c.version)?;
    Ok(cover.version_vector)
}

/// Decodes snapshot bytes as `T` (the whole snapshot, or the parts of it
/// `T` names), under the depth limit, refusing another format `version`.
fn decode_checked<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    version: impl Fn(&T) -> u8,
) -> Result<T, CrdtError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let decoded = T::deserialize(&mut de).map_err(|e| CrdtError::BadSnapshot(e.to_string()))?;
    let found = version(&decoded);
    if found != SNAPSHOT_VERSION {
        return Err(CrdtError::BadSnapshot(format!(
            "unsupported snapshot version {found} (this build reads {SNAPSHOT_VERSION})"
        )));
    }
    Ok(decoded)
}

/// A sequence as runs of elements (see [`SnapRun`]): the sequence's own
/// runs, joined where one continues the other.
fn snap_seq<C: Content + Clone>(s: &Sequence<C>) -> Vec<SnapRun<C>> {
    let snap_id = |e: Eid| SnapId(e.actor, e.counter);
    let mut runs: Vec<SnapRun<C>> = Vec::new();
    let mut last_len = 0u64;
    for run in s.runs() {
        let id = run.id();
        let len = u64::from(run.len());
        let (origin, right) = (run.origin().map(snap_id), run.right().map(snap_id));
        let removed = if run.deleted() { len } else { 0 };
        match runs.last_mut() {
            Some(last)
                if last.0 == id.actor
                    && last.1 + last_len == id.counter
                    && origin == Some(SnapId(id.actor, id.counter.wrapping_sub(1)))
                    && last.3 == right
                    && (last.4 > 0) == run.deleted() =>
            {
                if run.deleted() {
                    last.4 += len;
                } else {
                    last.5.join(run.content.clone());
                }
                last_len += len;
            }
            _ => {
                let values = if run.deleted() {
                    C::default()
                } else {
                    run.content.clone()
                };
                runs.push(SnapRun(
                    id.actor, id.counter, origin, right, removed, values,
                ));
                last_len = len;
            }
        }
    }
    runs
}

/// Rebuilds a sequence from its runs. `limits[i]` is the highest counter of
/// actor `i` the snapshot covers: an element (or an origin) above it is
/// refused (it would be an operation the snapshot's version vector says was
/// never applied).
fn restore_seq<C: Content>(
    actors: &[ActorIdx],
    limits: &[u64],
    runs: Vec<SnapRun<C>>,
) -> Result<Sequence<C>, CrdtError> {
    let local = |id: Option<SnapId>| -> Result<Option<Eid>, CrdtError> {
        let Some(SnapId(actor, counter)) = id else {
            return Ok(None);
        };
        let (index, limit) = checked_actor(actors, limits, actor)?;
        check_dot(counter, limit)?;
        Ok(Some(Eid {
            actor: index,
            counter,
        }))
    };
    let mut items = Vec::with_capacity(runs.len());
    for SnapRun(actor, counter, origin, right, removed, content) in runs {
        let (index, limit) = checked_actor(actors, limits, actor)?;
        let values = content.count() as u64;
        let n = match (removed, values) {
            (0, n) => n,
            (n, 0) if n <= MAX_REMOVED as u64 => n,
            (_, 0) => {
                return Err(CrdtError::BadSnapshot(format!(
                    "a removed run longer than {MAX_REMOVED}"
                )))
            }
            _ => return Err(CrdtError::BadSnapshot("a removed run lists values".into())),
        };
        if n == 0 {
            continue;
        }
        let Some(last) = counter.checked_add(n - 1) else {
            return Err(CrdtError::BadSnapshot("a run's counters overflow".into()));
        };
        check_dot(counter, limit)?;
        check_dot(last, limit)?;
        let first = Eid {
            actor: index,
            counter,
        };
        let (origin, right) = (local(origin)?, local(right)?);
        if removed > 0 {
            items.extend(Run::removed(first, origin, right, n));
        } else {
            items.extend(Run::of_content(first, origin, right, content));
        }
    }
    Sequence::from_runs(items)
        .map_err(|_| CrdtError::BadSnapshot("a sequence lists an element twice".into()))
}

/// The replica's index of the snapshot's actor `actor`, and the highest
/// counter of it the snapshot covers.
fn checked_actor(
    actors: &[ActorIdx],
    limits: &[u64],
    actor: u32,
) -> Result<(ActorIdx, u64), CrdtError> {
    match (actors.get(actor as usize), limits.get(actor as usize)) {
        (Some(&index), Some(&limit)) => Ok((index, limit)),
        _ => Err(CrdtError::BadSnapshot(format!(
            "actor {actor} outside the table of {}",
            actors.len()
        ))),
    }
}

/// A dot a snapshot names must be one its version vector covers.
fn check_dot(counter: u64, limit: u64) -> Result<(), CrdtError> {
    if counter == 0 || counter > limit {
        return Err(CrdtError::BadSnapshot(format!(
            "counter {counter} outside what the version vector covers ({limit})"
        )));
    }
    Ok(())
}

/// A document's fields as their concurrent values.
fn snap_fields(doc: &Document) -> Vec<(String, Vec<SnapValue>)> {
    let snap = |key: &String, values: Vec<Tagged>| {
        let mut values: Vec<SnapValue> = values
            .into_iter()
            .map(|t| SnapValue(t.actor, t.counter, t.lamport, t.value))
            .collect();
        values.sort_by_key(|v| (v.0, v.1));
        (!values.is_empty()).then(|| (key.clone(), values))
    };
    doc.registers()
        .filter_map(|(key, values)| snap(key, values))
        .collect()
}

/// A snapshot (`bytes`, checked as a peer's would be) with only the
/// entities `subscription` matches ([`Replica::snapshot_of`]).
pub fn filter_snapshot(
    bytes: &[u8],
    subscription: &Subscription,
    config: ReplicaConfig,
) -> Result<Vec<u8>, CrdtError> {
    if subscription.is_everything() {
        return Ok(bytes.to_vec());
    }
    // The device id only names local edits, which a filter makes none of.
    Replica::from_snapshot("", bytes, config)?.snapshot_of(subscription)
}

impl Replica {
    /// The whole state as MessagePack bytes, in the snapshot format of
    /// docs/PROTOCOL.md ("Snapshots"): entities with their tombstones, the
    /// fields' concurrent values, the version vectors (history is not part
    /// of a replica). A device restored from it continues exactly where
    /// this one stands; a device that receives it from a peer adopts it
    /// ([`Replica::from_snapshot`]).
    pub fn snapshot(&self) -> Result<Vec<u8>, CrdtError> {
        self.snapshot_of(&Subscription::Everything)
    }

    /// [`Replica::snapshot`] of the entities `subscription` matches only,
    /// with the whole version vector (docs/PROTOCOL.md, "Subscriptions"):
    /// what a device subscribed to them holds, as of this state.
    pub fn snapshot_of(&self, subscription: &Subscription) -> Result<Vec<u8>, CrdtError> {
        let entities = self
            .entities
            .iter()
            .filter(|((t, id), _)| subscription.matches(*t, id))
            .map(|((t, id), e)| {
                let vv = self
                    .entity_vv
                    .get(&(*t, id.clone()))
                    .cloned()
                    .unwrap_or_default();
                match e {
                    Entity::Document(d) => SnapEntity(
                        *t,
                        id.clone(),
                        vv,
                        snap_fields(d),
                        d.texts
                            .iter()
                            .map(|(f, s)| (f.clone(), snap_seq(s)))
                            .collect(),
                        Vec::new(),
                    ),
                    Entity::Conversation(s) => {
                        SnapEntity(*t, id.clone(), vv, Vec::new(), Vec::new(), snap_seq(s))
                    }
                }
            })
            .collect();
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            actors: self.actors.names().to_vec(),
            version_vector: self.vv.clone(),
            entities,
        };
        rmp_serde::to_vec_named(&snap).map_err(|e| CrdtError::BadSnapshot(e.to_string()))
    }

    /// Restores a replica for `actor` from [`Replica::snapshot`] bytes (its
    /// own or a peer's); the operations after the snapshot are applied to
    /// it as to any replica. Bytes that are not a valid snapshot are a
    /// [`CrdtError::BadSnapshot`] saying what is wrong; more actors than
    /// `config.max_actors` is [`CrdtError::TooManyActors`].
    pub fn from_snapshot(
        actor: impl Into<ActorId>,
        bytes: &[u8],
        config: ReplicaConfig,
    ) -> Result<Replica, CrdtError> {
        let snap = decode_checked(bytes, |s: &Snapshot| s.version)?;
        if snap.actors.len() > config.max_actors {
            return Err(CrdtError::TooManyActors {
                actor: snap
                    .actors
                    .get(config.max_actors)
                    .map(ActorId::to_string)
                    .unwrap_or_default(),
                limit: config.max_actors,
            });
        }
        let mut r = Replica::with_config(actor, config);
        let actors: Vec<ActorIdx> = snap.actors.iter().map(|a| r.actors.intern(a)).collect();
        if r.actors.len() != snap.actors.len() {
            return Err(CrdtError::BadSnapshot(
                "the actor table repeats a device id".into(),
            ));
        }
        let limits: Vec<u64> = snap
            .actors
            .iter()
            .map(|a| snap.version_vector.get(a).copied().unwrap_or(0))
            .collect();
        let covered = |vv: &VersionVector| {
            vv.iter()
                .all(|(a, &c)| snap.version_vector.get(a).is_some_and(|&v| v >= c))
        };
        for SnapEntity(t, id, vv, fields, texts, items) in snap.entities {
            if !covered(&vv) {
                return Err(CrdtError::BadSnapshot(format!(
                    "entity {id}: its version vector exceeds the snapshot's"
                )));
            }
            let entity = match t {
                EntityType::Conversation if fields.is_empty() && texts.is_empty() => {
                    Entity::Conversation(restore_seq(&actors, &limits, items)?)
                }
                EntityType::Document if items.is_empty() => {
                    let mut doc = restore_fields(&actors, &limits, fields)?;
                    for (f, runs) in texts {
                        doc.texts.insert(f, restore_seq(&actors, &limits, runs)?);
                    }
                    Entity::Document(doc)
                }
                _ => {
                    return Err(CrdtError::BadSnapshot(format!(
                        "entity {id}: parts its type does not have"
                    )))
                }
            };
            if r.entities.insert((t, id.clone()), entity).is_some() {
                return Err(CrdtError::BadSnapshot(format!("entity {id} listed twice")));
            }
            r.entity_vv.insert((t, id), vv);
        }
        r.vv = snap.version_vector;
        Ok(r)
    }
}

/// A document's fields from their concurrent values, checked (each actor
/// in the table, each dot within the version vector, no dot twice) and
/// kept frozen: the registers are built on the document's first write
/// (`Document::thaw`), each value written again as a write whose only
/// context is its own dot. A later operation removes a value exactly when
/// its `deps` cover the value's dot, so this is the same state for every
/// operation still to come, without the write history the registers'
/// clocks held.
fn restore_fields(
    actors: &[ActorIdx],
    limits: &[u64],
    fields: Vec<(String, Vec<SnapValue>)>,
) -> Result<Document, CrdtError> {
    let mut frozen: Vec<(String, Vec<Tagged>)> = Vec::with_capacity(fields.len());
    let mut dots = Vec::new();
    for (key, values) in fields {
        let mut tagged = Vec::with_capacity(values.len());
        for SnapValue(actor, counter, lamport, value) in values {
            let (index, limit) = checked_actor(actors, limits, actor)?;
            check_dot(counter, limit)?;
            dots.push((index, counter));
            tagged.push(Tagged {
                lamport,
                actor: index,
                counter,
                value,
            });
        }
        if !tagged.is_empty() {
            frozen.push((key, tagged));
        }
    }
    dots.sort_unstable();
    if dots.windows(2).any(|w| w[0] == w[1]) {
        return Err(CrdtError::BadSnapshot("two values with one dot".into()));
    }
    // Each key once, in order: a key listed twice holds the values of both.
    if !frozen.windows(2).all(|w| w[0].0 < w[1].0) {
        frozen.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(String, Vec<Tagged>)> = Vec::with_capacity(frozen.len());
        for (key, values) in frozen {
            match merged.last_mut() {
                Some((last, held)) if *last == key => held.extend(values),
                _ => merged.push((key, values)),
            }
        }
        frozen = merged;
    }
    Ok(Document::with_frozen(frozen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalEdit;

    fn sample() -> Snapshot {
        let mut a = Replica::new("a");
        for (t, id, edit) in [
            (
                EntityType::Document,
                "d",
                LocalEdit::Set {
                    key: "k".into(),
                    value: Value::from("v"),
                },
            ),
            (
                EntityType::Conversation,
                "c",
                LocalEdit::Insert {
                    index: 0,
                    value: Value::from("m"),
                },
            ),
        ] {
            a.apply_local(t, id, edit, 0).expect("edit");
        }
        rmp_serde::from_slice(&a.snapshot().expect("snapshot")).expect("decodes")
    }

    /// The sample's entity of type `t`.
    fn entity(s: &mut Snapshot, t: EntityType) -> &mut SnapEntity {
        s.entities
            .iter_mut()
            .find(|e| e.0 == t)
            .expect("the sample has one entity of each type")
    }

    fn refused(snap: &Snapshot, config: ReplicaConfig) -> CrdtError {
        let bytes = rmp_serde::to_vec_named(snap).expect("encodes");
        match Replica::from_snapshot("b", &bytes, config) {
            Err(e) => e,
            Ok(_) => panic!("a hostile snapshot was restored"),
        }
    }

    fn says(e: CrdtError, what: &str) {
        match e {
            CrdtError::BadSnapshot(m) => assert!(m.contains(what), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// A snapshot from a peer is checked before anything is built from it:
    /// another version, a dot beyond its version vector, an entity version
    /// vector beyond it, an actor named twice or an index outside the
    /// table, an element or a dot listed twice, a removed run with values
    /// or longer than 2^31-1, parts of another entity type, more actors
    /// than the bound: each a typed error saying what.
    #[test]
    fn hostile_snapshots_are_refused_with_what_is_wrong() {
        let config = ReplicaConfig::default();
        let mut s = sample();
        s.version = 9;
        says(refused(&s, config), "version 9");

        let mut s = sample();
        s.version_vector.insert("a".into(), 1);
        for e in &mut s.entities {
            e.2.insert("a".into(), 1);
        }
        says(
            refused(&s, config),
            "outside what the version vector covers",
        );

        let mut s = sample();
        s.entities[0].2.insert("a".into(), 99);
        says(refused(&s, config), "exceeds the snapshot's");

        let mut s = sample();
        s.actors.push("a".into());
        says(refused(&s, config), "repeats");

        let mut s = sample();
        s.actors.clear();
        says(refused(&s, config), "outside the table");

        let mut s = sample();
        let conv = entity(&mut s, EntityType::Conversation);
        let SnapRun(a, c, o, r, d, v) = &conv.5[0];
        let again = SnapRun(*a, *c, *o, *r, *d, v.clone());
        conv.5.push(again);
        says(refused(&s, config), "twice");

        // A removed run that lists values, or longer than a run can be.
        let removed_run = |removed: u64, values: Vec<Value>| {
            let mut s = sample();
            let conv = entity(&mut s, EntityType::Conversation);
            conv.5[0].4 = removed;
            conv.5[0].5 = values;
            s
        };
        says(
            refused(&removed_run(1, vec![Value::from("m")]), config),
            "lists values",
        );
        let huge = removed_run(1 << 40, Vec::new());
        says(refused(&huge, config), "longer than");
        // A removed run within bounds restores, as tombstones.
        let bytes = rmp_serde::to_vec_named(&removed_run(1, Vec::new())).expect("encodes");
        let restored = Replica::from_snapshot("b", &bytes, config).expect("restores");
        assert_eq!(restored.conversation("c"), Some(Vec::new()));

        let mut s = sample();
        let doc = entity(&mut s, EntityType::Document);
        let SnapValue(a, c, l, v) = &doc.3[0].1[0];
        let again = SnapValue(*a, *c, *l, v.clone());
        doc.3.push(("other".into(), vec![again]));
        says(refused(&s, config), "one dot");

        let mut s = sample();
        let conv = entity(&mut s, EntityType::Conversation);
        conv.3.push(("k".into(), Vec::new()));
        says(refused(&s, config), "does not have");

        let small = ReplicaConfig {
            max_actors: 0,
            ..config
        };
        assert!(matches!(
            refused(&sample(), small),
            CrdtError::TooManyActors { .. }
        ));
        // And the untouched one restores.
        let bytes = rmp_serde::to_vec_named(&sample()).expect("encodes");
        assert!(Replica::from_snapshot("b", &bytes, config).is_ok());
    }
}
