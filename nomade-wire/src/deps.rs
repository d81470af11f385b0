//! [`Deps`]: an operation's causal context, held inline.
//!
//! An operation's `deps` names, for each device that changed its entity,
//! the highest counter of those changes it follows: one or two entries
//! nearly always. A `BTreeMap` would put them in a heap node of their own,
//! allocated when the operation is decoded, touched when it is applied and
//! freed when it is dropped; `Deps` keeps up to two entries inside the
//! operation (more spill to the heap) and answers the same questions. Its
//! entries stay sorted by device id, so it iterates, compares and encodes
//! exactly as the version vector it stands for (a MessagePack map in
//! byte-wise key order, docs/PROTOCOL.md).
//!
//! ```
//! use nomade_wire::{ActorId, Deps};
//!
//! let mut deps: Deps = [(ActorId::from("phone"), 7), (ActorId::from("laptop"), 41)].into();
//! deps.insert("laptop".into(), 42);
//! assert_eq!(deps.get("laptop"), Some(&42));
//! assert_eq!(deps.keys().map(|a| a.as_str()).collect::<Vec<_>>(), ["laptop", "phone"]);
//! assert_eq!(deps.len(), 2);
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::actor_id::ActorId;
use crate::message::VersionVector;

/// Entries held inside the operation before spilling to the heap.
const INLINE: usize = 2;

/// A small version vector sorted by device id (see the module documentation).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Deps(SmallVec<[(ActorId, u64); INLINE]>);

impl Deps {
    /// No entry.
    pub fn new() -> Deps {
        Deps(SmallVec::new())
    }

    fn find(&self, actor: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(a, _)| a.as_str().cmp(actor))
    }

    /// The counter of `actor`.
    pub fn get(&self, actor: &str) -> Option<&u64> {
        self.find(actor).ok().map(|i| &self.0[i].1)
    }

    /// Whether `actor` has an entry.
    pub fn contains_key(&self, actor: &str) -> bool {
        self.find(actor).is_ok()
    }

    /// Sets `actor`'s counter; returns the one it replaced.
    pub fn insert(&mut self, actor: ActorId, counter: u64) -> Option<u64> {
        match self.find(&actor) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, counter)),
            Err(i) => {
                self.0.insert(i, (actor, counter));
                None
            }
        }
    }

    /// The entries, by device id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ActorId, &u64)> + '_ {
        self.0.iter().map(|(a, c)| (a, c))
    }

    /// The device ids, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &ActorId> + '_ {
        self.0.iter().map(|(a, _)| a)
    }

    /// The counters, in the order of their device ids.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &u64> + '_ {
        self.0.iter().map(|(_, c)| c)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same entries as a version vector.
    pub fn to_version_vector(&self) -> VersionVector {
        self.0.iter().cloned().collect()
    }
}

impl FromIterator<(ActorId, u64)> for Deps {
    /// Entries in any order; of two for one device, the last wins (as
    /// collecting into a map).
    fn from_iter<I: IntoIterator<Item = (ActorId, u64)>>(iter: I) -> Self {
        let mut deps = Deps::new();
        for (actor, counter) in iter {
            deps.insert(actor, counter);
        }
        deps
    }
}

impl<const N: usize> From<[(ActorId, u64); N]> for Deps {
    fn from(entries: [(ActorId, u64); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl From<&VersionVector> for Deps {
    fn from(vv: &VersionVector) -> Self {
        // Already sorted and unique.
        Deps(vv.iter().map(|(a, c)| (a.clone(), *c)).collect())
    }
}

impl From<VersionVector> for Deps {
    fn from(vv: VersionVector) -> Self {
        Deps(vv.into_iter().collect())
    }
}

impl From<Deps> for VersionVector {
    fn from(deps: Deps) -> Self {
        deps.0.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Deps {
    type Item = (&'a ActorId, &'a u64);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (ActorId, u64)>,
        fn(&'a (ActorId, u64)) -> (&'a ActorId, &'a u64),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(a, c)| (a, c))
    }
}

impl fmt::Debug for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Deps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Deps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_keyed::<ActorId, D>(d)
    }
}

/// Reads a map whose keys decode as `K` (a device id, or an index into a
/// batch's actor table): entries in any order, of two for one device the
/// last kept, as a map decodes. Sorted once at the end, so that a peer's
/// map of many entries costs `n log n`, not `n` squared.
pub(crate) fn deserialize_keyed<'de, K, D>(d: D) -> Result<Deps, D::Error>
where
    K: Deserialize<'de> + Into<ActorId>,
    D: Deserializer<'de>,
{
    struct Entries<K>(std::marker::PhantomData<K>);
    impl<'de, K: Deserialize<'de> + Into<ActorId>> serde::de::Visitor<'de> for Entries<K> {
        type Value = Deps;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of device ids to counters")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Deps, A::Error> {
            let mut entries: SmallVec<[(ActorId, u64); INLINE]> = SmallVec::new();
            while let Some((key, counter)) = map.next_entry::<K, u64>()? {
                entries.push((key.into(), counter));
            }
            // Stable: of equal ids the last read stays last, and is kept.
            entries.sort_by(|x, y| x.0.cmp(&y.0));
            let mut deps: SmallVec<[(ActorId, u64); INLINE]> =
                SmallVec::with_capacity(entries.len());
            for (actor, counter) in entries {
                match deps.last_mut() {
                    Some(last) if last.0 == actor => last.1 = counter,
                    _ => deps.push((actor, counter)),
                }
            }
            Ok(Deps(deps))
        }
    }
    d.deserialize_map(Entries::<K>(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> ActorId {
        ActorId::from(s)
    }

    #[test]
    fn deps_behave_as_the_version_vector_they_stand_for() {
        let entries = [(a("c"), 3), (a("a"), 1), (a("b"), 2), (a("a"), 9)];
        let deps: Deps = entries.iter().cloned().collect();
        let vv: VersionVector = entries.iter().cloned().collect();
        assert_eq!(deps.to_version_vector(), vv);
        assert_eq!(Deps::from(&vv), deps);
        assert_eq!(
            deps.iter().collect::<Vec<_>>(),
            vv.iter().collect::<Vec<_>>()
        );
        assert_eq!(deps.get("a"), Some(&9));
        assert_eq!(deps.get("z"), None);
        assert_eq!(
            rmp_serde::to_vec(&deps).unwrap(),
            rmp_serde::to_vec(&vv).unwrap(),
            "encoded as the map"
        );
        let back: Deps = rmp_serde::from_slice(&rmp_serde::to_vec(&vv).unwrap()).unwrap();
        assert_eq!(back, deps);
    }

    /// A peer's map of many entries, out of order and with repeats, reads
    /// as a map would (sorted, the last of a repeat kept) in one sort.
    #[test]
    fn a_large_unordered_map_from_a_peer_reads_as_a_map_would() {
        let n = 50_000u64;
        let mut bytes = Vec::new();
        rmp::encode::write_map_len(&mut bytes, (n + 1) as u32).unwrap();
        for i in (0..n).rev() {
            rmp::encode::write_str(&mut bytes, &format!("d{i:06}")).unwrap();
            rmp::encode::write_uint(&mut bytes, i).unwrap();
        }
        rmp::encode::write_str(&mut bytes, "d000007").unwrap();
        rmp::encode::write_uint(&mut bytes, 1_000).unwrap();
        let deps: Deps = rmp_serde::from_slice(&bytes).unwrap();
        let vv: VersionVector = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(deps.len(), n as usize);
        assert_eq!(deps.get("d000007"), Some(&1_000), "the last of a repeat");
        assert_eq!(deps.to_version_vector(), vv);
    }
}
