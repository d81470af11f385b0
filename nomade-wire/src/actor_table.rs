//! The actor table of a `BATCHED_SYNC` payload: each device id its
//! operations name is written once, in `actors`, and the operations refer
//! to it by index (docs/PROTOCOL.md, "BATCHED_SYNC").
//!
//! The operations stay [`SyncOperation`]s with device ids as strings in
//! memory; only their encoding inside a batch changes. The fields that name
//! an actor (`actor_id`, the keys of `deps`, `ElementId.actor`,
//! `IdRange.actor`) are written through [`actor_ref`] and [`deps`], which
//! write an index while a table is installed for the current thread (by
//! [`encoding_with`] or [`decoding_with`], around the operations of one
//! payload) and the device id itself otherwise (`SYNC_OPERATION`, which has
//! no table).

use std::cell::RefCell;
use std::collections::HashMap;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::actor_id::ActorId;
use crate::deps::Deps;
use crate::message::{Edit, SyncOperation};

thread_local! {
    /// The table actor ids are written against, while a batch is encoded.
    static ENCODING: RefCell<Option<ActorTable>> = const { RefCell::new(None) };
    /// The table actor indices are read against, while a batch is decoded.
    static DECODING: RefCell<Option<Vec<ActorId>>> = const { RefCell::new(None) };
}

/// The device ids of a batch, in the order of first mention (see
/// [`ActorTable::note`]), with their indices.
#[derive(Debug, Clone, Default)]
pub(crate) struct ActorTable {
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// Bytes the names take as MessagePack strings.
    encoded_len: usize,
}

/// Length of the MessagePack encoding of a string of `len` bytes.
fn str_len(len: usize) -> usize {
    len + match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

impl ActorTable {
    pub(crate) fn add(&mut self, name: &str) {
        if !self.index.contains_key(name) {
            self.index.insert(name.to_string(), self.names.len() as u32);
            self.names.push(name.to_string());
            self.encoded_len += str_len(name.len());
        }
    }

    /// Adds the device ids `op` names that are new, in the canonical order:
    /// its `actor_id`, the keys of its `deps` (in their byte-wise order),
    /// then its `after` and `before` elements' actors or its ranges'
    /// actors, in order.
    pub(crate) fn note(&mut self, op: &SyncOperation) {
        self.add(&op.actor_id);
        for actor in op.operation.deps.keys() {
            self.add(actor);
        }
        match &op.operation.edit {
            Edit::Insert { after, before, .. } | Edit::InsertText { after, before, .. } => {
                for e in [after, before].into_iter().flatten() {
                    self.add(&e.actor);
                }
            }
            Edit::Remove { ranges, .. } => {
                for r in ranges {
                    self.add(&r.actor);
                }
            }
            Edit::Set { .. } | Edit::Delete { .. } | Edit::Skip { .. } => {}
        }
    }

    /// How many device ids the table holds.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Forgets every device id from the `len`-th on (an operation that did
    /// not fit after all).
    pub(crate) fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len.min(self.names.len())..) {
            self.index.remove(&name);
            self.encoded_len -= str_len(name.len());
        }
    }

    /// The device ids, by index.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// Bytes the device ids take as MessagePack strings (without the
    /// array's header).
    pub(crate) fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Empties the table.
    pub(crate) fn clear(&mut self) {
        self.truncate(0);
    }
}

/// Runs `f` with `table` installed: the actor ids of the operations it
/// serializes are written as their index in `table`.
pub(crate) fn encoding_with<R>(table: &mut ActorTable, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut ActorTable);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            if let Some(t) = ENCODING.with(|c| c.borrow_mut().take()) {
                *self.0 = t;
            }
        }
    }
    let installed = std::mem::take(table);
    ENCODING.with(|c| *c.borrow_mut() = Some(installed));
    let _restore = Restore(table);
    f()
}

/// Runs `f` with `names` installed: the actor indices of the operations it
/// deserializes are read as those device ids.
pub(crate) fn decoding_with<R>(names: Vec<ActorId>, f: impl FnOnce() -> R) -> R {
    struct Uninstall(Option<Vec<ActorId>>);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let previous = self.0.take();
            DECODING.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = DECODING.with(|c| c.borrow_mut().replace(names));
    let _uninstall = Uninstall(previous);
    f()
}

/// A field naming an actor: its index in the installed table, or the
/// device id itself when no table is installed.
pub(crate) mod actor_ref {
    use super::*;

    /// Writes `name` as its index in the installed table, or as a string.
    pub(crate) fn serialize<S: Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
        let index = ENCODING.with(|c| {
            c.borrow()
                .as_ref()
                .map(|table| table.index.get(name).copied())
        });
        match index {
            None => s.serialize_str(name),
            Some(Some(i)) => s.serialize_u32(i),
            Some(None) => Err(S::Error::custom(format!(
                "actor {name:?} is not in the batch's table"
            ))),
        }
    }

    /// Reads an index into the installed table, or a device id.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ActorId, D::Error> {
        if !DECODING.with(|c| c.borrow().is_some()) {
            return ActorId::deserialize(d);
        }
        let i = u32::deserialize(d)?;
        let found = DECODING.with(|c| match c.borrow().as_ref() {
            Some(names) => names.get(i as usize).cloned().ok_or_else(|| {
                format!(
                    "actor index {i} outside the batch's table of {}",
                    names.len()
                )
            }),
            None => Err("no actor table".to_string()),
        });
        found.map_err(D::Error::custom)
    }
}

/// A key of `deps` being written: an actor, through [`actor_ref`].
struct ActorKeyRef<'a>(&'a str);

impl Serialize for ActorKeyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        actor_ref::serialize(self.0, s)
    }
}

/// A key of `deps` being read: an actor, through [`actor_ref`].
struct ActorKey(ActorId);

impl<'de> Deserialize<'de> for ActorKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        actor_ref::deserialize(d).map(ActorKey)
    }
}

impl From<ActorKey> for ActorId {
    fn from(key: ActorKey) -> ActorId {
        key.0
    }
}

/// A version vector whose keys are actors written through [`actor_ref`],
/// in the byte-wise order of the device ids (not of their indices).
pub(crate) mod deps {
    use super::*;

    /// Writes the entries in key order, each key through [`actor_ref`].
    pub(crate) fn serialize<S: Serializer>(deps: &Deps, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(deps.iter().map(|(actor, c)| (ActorKeyRef(actor), c)))
    }

    /// Reads the entries, each key through [`actor_ref`].
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Deps, D::Error> {
        crate::deps::deserialize_keyed::<ActorKey, D>(d)
    }
}
