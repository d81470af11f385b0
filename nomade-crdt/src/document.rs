//! A document: fields held in a `crdts::Map` of multi-value registers, and
//! collaborative text fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crdts::{CmRDT, Dot, MVReg, Map, VClock};
use nomade_wire::{Value, VersionVector};
use serde::{Deserialize, Serialize};

use crate::sequence::Sequence;

/// A register value tagged with the identity of the write that made it, so
/// that concurrent values can be ordered the same way on every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    /// Lamport number of the write.
    pub lamport: u64,
    /// The writing actor.
    pub actor: String,
    /// The value written.
    pub value: Value,
}

impl Tagged {
    /// The deterministic order of concurrent values: higher Lamport number
    /// first, then higher actor name.
    pub fn rank(&self) -> (u64, &str) {
        (self.lamport, &self.actor)
    }
}

/// The field map: field name -> multi-value register, with device ids as actors.
pub type FieldMap = Map<String, MVReg<Tagged, String>, String>;

/// A document entity.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// Register fields.
    pub(crate) fields: FieldMap,
    /// For each actor, the counters of its field writes on this document, in
    /// order. Used to project an operation's replica-wide `deps` onto the dots
    /// this map has seen (see [`Document::projected_clock`]).
    pub(crate) write_counters: HashMap<String, Vec<u64>>,
    /// Collaborative text fields.
    pub(crate) texts: BTreeMap<String, Sequence<char>>,
}

impl Document {
    /// `deps` restricted to this document's field writes: for each actor, the
    /// highest counter of one of its writes here that `deps` covers.
    ///
    /// Operation counters are per actor across the whole replica, so `deps`
    /// mentions operations on other entities that this map never sees. Giving
    /// `crdts` those would make removals wait forever in its deferred set and
    /// keep superseded values alive. The projection depends only on the
    /// operation's causal past, so every device computes the same clock.
    pub(crate) fn projected_clock(&self, deps: &VersionVector) -> VClock<String> {
        let mut clock = VClock::new();
        for (actor, counters) in &self.write_counters {
            let Some(&limit) = deps.get(actor) else {
                continue;
            };
            let seen = counters.partition_point(|&c| c <= limit);
            if seen > 0 {
                clock.apply(Dot::new(actor.clone(), counters[seen - 1]));
            }
        }
        clock
    }

    /// Applies a field write whose causal dependencies are all applied.
    pub(crate) fn set(
        &mut self,
        actor: &str,
        counter: u64,
        deps: &VersionVector,
        lamport: u64,
        key: String,
        value: Value,
    ) {
        let dot = Dot::new(actor.to_string(), counter);
        let mut clock = self.projected_clock(deps);
        clock.apply(dot.clone());
        let op = crdts::map::Op::Up {
            dot,
            key,
            op: crdts::mvreg::Op::Put {
                clock,
                val: Tagged {
                    lamport,
                    actor: actor.to_string(),
                    value,
                },
            },
        };
        self.fields.apply(op);
        match self.write_counters.get_mut(actor) {
            Some(counters) => counters.push(counter),
            None => {
                self.write_counters.insert(actor.to_string(), vec![counter]);
            }
        }
    }

    /// The text field `field`, created empty if it does not exist yet (the
    /// name is cloned only then).
    pub(crate) fn text_mut(&mut self, field: &str) -> &mut Sequence<char> {
        if !self.texts.contains_key(field) {
            self.texts.insert(field.to_string(), Sequence::default());
        }
        self.texts
            .get_mut(field)
            .expect("inserted just above when missing")
    }

    /// Applies a field removal whose causal dependencies are all applied.
    pub(crate) fn delete(&mut self, deps: &VersionVector, key: String) {
        let clock = self.projected_clock(deps);
        let op = crdts::map::Op::Rm {
            clock,
            keyset: BTreeSet::from([key]),
        };
        self.fields.apply(op);
    }

    /// The concurrent values of a field, best first.
    pub fn values(&self, key: &str) -> Vec<Tagged> {
        let mut vals = self
            .fields
            .get(&key.to_string())
            .val
            .map(|reg| reg.read().val)
            .unwrap_or_default();
        vals.sort_by(|a, b| b.rank().cmp(&a.rank()));
        vals
    }

    /// Every field with its winning value (the highest-ranked concurrent value).
    pub fn fields(&self) -> BTreeMap<String, Value> {
        self.fields
            .iter()
            .filter_map(|ctx| {
                let (key, reg) = ctx.val;
                let vals = reg.read().val;
                let best = vals.into_iter().max_by(|a, b| a.rank().cmp(&b.rank()))?;
                Some((key.clone(), best.value))
            })
            .collect()
    }

    /// Every field with all its concurrent values, best first.
    pub fn all_values(&self) -> BTreeMap<String, Vec<Tagged>> {
        self.fields
            .iter()
            .map(|ctx| {
                let (key, _) = ctx.val;
                (key.clone(), self.values(key))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}
