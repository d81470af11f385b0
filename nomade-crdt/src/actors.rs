//! The replica's table of actor names (device ids), interned to small integers.

use nomade_wire::ActorId;
use rustc_hash::FxHashMap;

/// An interned actor.
pub type ActorIdx = u32;

/// Maps actor names to dense indices and back. Indices are local to one
/// replica: anything compared across replicas uses the names.
#[derive(Debug, Clone, Default)]
pub struct Actors {
    names: Vec<ActorId>,
    /// Fx-hashed: a device id is hashed at every operation applied, and a
    /// replica holds at most a bounded number of actors (a peer cannot grow
    /// the table past the limit to make collisions costly).
    by_name: FxHashMap<ActorId, ActorIdx>,
}

impl Actors {
    /// The index of `name`, interning it if new (sharing its string).
    pub fn intern(&mut self, name: &ActorId) -> ActorIdx {
        if let Some(&i) = self.by_name.get(name.as_str()) {
            return i;
        }
        let i = self.names.len() as ActorIdx;
        self.names.push(name.clone());
        self.by_name.insert(name.clone(), i);
        i
    }

    /// The index of `name` if it is known.
    pub fn get(&self, name: &str) -> Option<ActorIdx> {
        self.by_name.get(name).copied()
    }

    /// How many actors are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Every name, by index.
    pub fn names(&self) -> &[ActorId] {
        &self.names
    }

    /// The name of an index.
    pub fn name(&self, i: ActorIdx) -> &str {
        self.names
            .get(i as usize)
            .map(ActorId::as_str)
            .unwrap_or("")
    }

    /// The name of an index, to keep (a shared string: cloning it copies
    /// a pointer).
    pub fn id(&self, i: ActorIdx) -> ActorId {
        self.names.get(i as usize).cloned().unwrap_or_default()
    }
}
