//! The replica's table of actor names (device ids), interned to small integers.

use rustc_hash::FxHashMap;

/// An interned actor.
pub type ActorIdx = u32;

/// Maps actor names to dense indices and back. Indices are local to one
/// replica: anything compared across replicas uses the names.
#[derive(Debug, Clone, Default)]
pub struct Actors {
    names: Vec<String>,
    /// Fx-hashed: a device id is hashed at every operation applied, and a
    /// replica holds at most a bounded number of actors (a peer cannot grow
    /// the table past the limit to make collisions costly).
    by_name: FxHashMap<String, ActorIdx>,
}

impl Actors {
    /// The index of `name`, interning it if new.
    pub fn intern(&mut self, name: &str) -> ActorIdx {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.names.len() as ActorIdx;
        self.names.push(name.to_string());
        self.by_name.insert(name.to_string(), i);
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
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of an index.
    pub fn name(&self, i: ActorIdx) -> &str {
        self.names.get(i as usize).map(String::as_str).unwrap_or("")
    }
}
