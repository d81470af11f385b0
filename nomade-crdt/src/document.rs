//! A document: fields held in a `crdts::Map` of multi-value registers, and
//! collaborative text fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crdts::{CmRDT, Dot, MVReg, Map, VClock};
use nomade_wire::{Deps, Value};
use serde::{Deserialize, Serialize};

use crate::actors::{ActorIdx, Actors};
use crate::sequence::Sequence;

/// A register value tagged with the identity of the write that made it, so
/// that concurrent values can be ordered the same way on every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    /// Lamport number of the write.
    pub lamport: u64,
    /// The writing actor, interned in the replica's actor table.
    pub actor: ActorIdx,
    /// The write's counter: with `actor`, its dot (what a snapshot keeps
    /// of the write besides the value).
    pub counter: u64,
    /// The value written.
    pub value: Value,
}

impl Tagged {
    /// The deterministic order of concurrent values: higher Lamport number
    /// first, then higher actor name (names, not local indices, so that
    /// every device agrees).
    pub fn rank<'a>(&self, actors: &'a Actors) -> (u64, &'a str) {
        (self.lamport, actors.name(self.actor))
    }
}

/// The field map: field name -> multi-value register, with interned actors
/// (a small integer per write instead of a device id).
pub type FieldMap = Map<String, MVReg<Tagged, ActorIdx>, ActorIdx>;

/// A document entity.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// Register fields.
    pub(crate) fields: FieldMap,
    /// Fields restored from a snapshot and not built into `fields` yet: by
    /// key (sorted, each key once), the concurrent values. A document is
    /// read from these as it is; the first write builds the registers from
    /// them ([`Document::thaw`]), exactly as a restore would have. Opening
    /// a store of many documents thus decodes them, without building tens
    /// of thousands of registers with two vector clocks each. Empty once
    /// built (and `fields` empty while not).
    pub(crate) frozen: Vec<(String, Vec<Tagged>)>,
    /// For each actor, the counters of its field writes on this document, in
    /// order, as ranges `(first, count)` of consecutive counters (a batch of
    /// field writes is one range). Used to project an operation's `deps`,
    /// which also count its changes to the document's text fields, onto the
    /// dots this map has seen (see [`Document::projected_clock`]).
    pub(crate) write_counters: HashMap<ActorIdx, Vec<(u64, u64)>>,
    /// Collaborative text fields.
    pub(crate) texts: BTreeMap<String, Sequence<String>>,
}

impl Document {
    /// `deps` restricted to this document's field writes: for each actor, the
    /// highest counter of one of its writes here that `deps` covers.
    ///
    /// An operation's deps count every change to the document, text
    /// included, which this map never sees. Giving `crdts` those would make
    /// removals wait forever in its deferred set and keep superseded values
    /// alive. The projection depends only on the operation's causal past, so
    /// every device computes the same clock.
    pub(crate) fn projected_clock(&self, deps: &Deps, actors: &Actors) -> VClock<ActorIdx> {
        let mut clock = VClock::new();
        for (&actor, counters) in &self.write_counters {
            let Some(&limit) = deps.get(actors.name(actor)) else {
                continue;
            };
            // The last range starting at or below the limit holds the
            // highest write the limit covers.
            let before = counters.partition_point(|&(first, _)| first <= limit);
            if let Some(&(first, count)) = before.checked_sub(1).and_then(|i| counters.get(i)) {
                let last = first.saturating_add(count.saturating_sub(1)).min(limit);
                clock.apply(Dot::new(actor, last));
            }
        }
        clock
    }

    /// A document whose fields are `frozen` (see the field), each key once
    /// and in order, every value with a dot of its own.
    pub(crate) fn with_frozen(frozen: Vec<(String, Vec<Tagged>)>) -> Document {
        Document {
            frozen,
            ..Document::default()
        }
    }

    /// Builds the registers of frozen fields: each value written again as
    /// a write whose only context is its own dot, each actor's in counter
    /// order (the map ignores a dot at or below one it has seen of the
    /// same actor). A later operation removes a value exactly when its
    /// `deps` cover the value's dot, so this is the same state for every
    /// operation still to come.
    fn thaw(&mut self, actors: &Actors) {
        if self.frozen.is_empty() {
            return;
        }
        let mut writes: Vec<(String, Tagged)> = Vec::new();
        for (key, values) in std::mem::take(&mut self.frozen) {
            let n = values.len();
            let mut key = Some(key);
            for (i, value) in values.into_iter().enumerate() {
                // Usually one value: the key is moved, not copied.
                let key = match i + 1 == n {
                    true => key.take().unwrap_or_default(),
                    false => key.clone().unwrap_or_default(),
                };
                writes.push((key, value));
            }
        }
        writes.sort_by_key(|(_, t)| (t.actor, t.counter));
        let none = Deps::new();
        for (key, t) in writes {
            self.set(t.actor, t.counter, &none, t.lamport, key, t.value, actors);
        }
        // Written one by one, each register's vector of values has room
        // for four; a clone has room for what it holds.
        self.fields = self.fields.clone();
    }

    /// Applies a field write whose causal dependencies are all applied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set(
        &mut self,
        actor: ActorIdx,
        counter: u64,
        deps: &Deps,
        lamport: u64,
        key: String,
        value: Value,
        actors: &Actors,
    ) {
        self.thaw(actors);
        let dot = Dot::new(actor, counter);
        let mut clock = self.projected_clock(deps, actors);
        clock.apply(dot);
        let op = crdts::map::Op::Up {
            dot,
            key,
            op: crdts::mvreg::Op::Put {
                clock,
                val: Tagged {
                    lamport,
                    actor,
                    counter,
                    value,
                },
            },
        };
        self.fields.apply(op);
        let ranges = self.write_counters.entry(actor).or_default();
        match ranges.last_mut() {
            Some((first, count)) if first.saturating_add(*count) == counter => *count += 1,
            _ => ranges.push((counter, 1)),
        }
    }

    /// The text field `field`, created empty if it does not exist yet (the
    /// name is cloned only then).
    pub(crate) fn text_mut(&mut self, field: &str) -> &mut Sequence<String> {
        if !self.texts.contains_key(field) {
            self.texts.insert(field.to_string(), Sequence::default());
        }
        self.texts
            .get_mut(field)
            .expect("inserted just above when missing")
    }

    /// Applies a field removal whose causal dependencies are all applied.
    pub(crate) fn delete(&mut self, deps: &Deps, key: String, actors: &Actors) {
        self.thaw(actors);
        let clock = self.projected_clock(deps, actors);
        let op = crdts::map::Op::Rm {
            clock,
            keyset: BTreeSet::from([key]),
        };
        self.fields.apply(op);
    }

    /// Every field with its concurrent values (in no particular order),
    /// from the frozen values or the built registers, whichever holds them.
    pub(crate) fn registers(&self) -> Box<dyn Iterator<Item = (&String, Vec<Tagged>)> + '_> {
        if self.frozen.is_empty() {
            Box::new(self.fields.iter().map(|ctx| {
                let (key, reg) = ctx.val;
                (key, reg.read().val)
            }))
        } else {
            Box::new(self.frozen.iter().map(|(key, vals)| (key, vals.clone())))
        }
    }

    /// The concurrent values of a field, best first.
    pub fn values(&self, key: &str, actors: &Actors) -> Vec<Tagged> {
        let vals = if self.frozen.is_empty() {
            self.fields
                .get(&key.to_string())
                .val
                .map(|reg| reg.read().val)
                .unwrap_or_default()
        } else {
            self.frozen
                .binary_search_by(|(k, _)| k.as_str().cmp(key))
                .map(|i| self.frozen[i].1.clone())
                .unwrap_or_default()
        };
        best_first(vals, actors)
    }

    /// Every field with its winning value (the highest-ranked concurrent value).
    pub fn fields(&self, actors: &Actors) -> BTreeMap<String, Value> {
        self.registers()
            .filter_map(|(key, vals)| {
                let best = vals
                    .into_iter()
                    .max_by(|a, b| a.rank(actors).cmp(&b.rank(actors)))?;
                Some((key.clone(), best.value))
            })
            .collect()
    }

    /// Every field with all its concurrent values, best first.
    pub fn all_values(&self, actors: &Actors) -> BTreeMap<String, Vec<Tagged>> {
        self.registers()
            .filter(|(_, vals)| !vals.is_empty())
            .map(|(key, vals)| (key.clone(), best_first(vals, actors)))
            .collect()
    }
}

/// `vals` in rank order, highest first.
fn best_first(mut vals: Vec<Tagged>, actors: &Actors) -> Vec<Tagged> {
    vals.sort_by(|a, b| b.rank(actors).cmp(&a.rank(actors)));
    vals
}
