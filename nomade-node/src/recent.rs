//! What changed lately on a device, kept so that the sync state machines'
//! polls cost what changed, not what the device holds.
//!
//! A device connected to many peers runs a pusher and a puller per peer,
//! and every operation stored wakes all of them. If each poll read the
//! store's last row again, or went through the whole version vector, a
//! mesh of N devices would do work proportional to N for each of N polls
//! for each of the N² deliveries. Two structures keep a poll proportional
//! to what is new:
//!
//! - [`RecentOps`]: the operations stored last, decoded, by sequence number
//!   (a pusher whose cursor is among them reads them from memory);
//! - [`CounterJournal`]: which devices' counters rose, in order (a puller
//!   announcing what this device holds reads only those since its last
//!   look).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use nomade_wire::SyncOperation;

/// Most operations [`RecentOps`] keeps: a pusher further behind reads the
/// store.
pub const RECENT_OPS: usize = 4096;

/// The operations stored last, in order, each with its sequence number.
#[derive(Debug, Default)]
pub struct RecentOps {
    ops: VecDeque<(u64, Arc<SyncOperation>)>,
}

impl RecentOps {
    /// Notes operations stored with consecutive sequence numbers ending at
    /// `last`. If they do not follow the ones kept, those are forgotten.
    pub fn extend(&mut self, last: u64, ops: &[SyncOperation]) {
        let Some(first) = (last + 1).checked_sub(ops.len() as u64) else {
            self.ops.clear();
            return;
        };
        if self.ops.back().is_some_and(|&(seq, _)| seq + 1 != first) {
            self.ops.clear();
        }
        let skip = ops.len().saturating_sub(RECENT_OPS);
        for (i, op) in ops.iter().enumerate().skip(skip) {
            self.ops.push_back((first + i as u64, Arc::new(op.clone())));
        }
        let excess = self.ops.len().saturating_sub(RECENT_OPS);
        self.ops.drain(..excess);
    }

    /// The sequence number of the oldest operation kept, if any.
    pub fn first(&self) -> Option<u64> {
        self.ops.front().map(|&(seq, _)| seq)
    }

    /// Forgets everything (the store's sequence numbers changed).
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    /// The operations stored after `cursor`, at most `limit` of them, if
    /// every one after it up to `last` (the store's last sequence number)
    /// is kept here; `None` if the store must be read.
    pub fn after(
        &self,
        cursor: u64,
        last: u64,
        limit: usize,
    ) -> Option<Vec<(u64, Arc<SyncOperation>)>> {
        let &(front, _) = self.ops.front()?;
        let &(back, _) = self.ops.back()?;
        if back != last || cursor + 1 < front || cursor > back {
            return None;
        }
        let start = (cursor + 1 - front) as usize;
        Some(self.ops.range(start..).take(limit).cloned().collect())
    }
}

/// Which devices' counters rose, each under the generation of its latest
/// rise: [`CounterJournal::since`] a generation lists the devices that rose
/// after it, with their counters, in time proportional to their number.
#[derive(Debug, Default)]
pub struct CounterJournal {
    generation: u64,
    by_generation: BTreeMap<u64, (String, u64)>,
    generation_of: HashMap<String, u64>,
}

impl CounterJournal {
    /// Notes that `actor`'s counter is now `counter`.
    pub fn raise(&mut self, actor: &str, counter: u64) {
        self.generation += 1;
        match self.generation_of.get_mut(actor) {
            Some(g) => {
                let old = std::mem::replace(g, self.generation);
                self.by_generation.remove(&old);
            }
            None => {
                self.generation_of
                    .insert(actor.to_string(), self.generation);
            }
        }
        self.by_generation
            .insert(self.generation, (actor.to_string(), counter));
    }

    /// The current generation, and each device whose counter rose after
    /// `generation`, with its counter now.
    pub fn since(&self, generation: u64) -> (u64, Vec<(String, u64)>) {
        let changed = self
            .by_generation
            .range(generation + 1..)
            .map(|(_, entry)| entry.clone())
            .collect();
        (self.generation, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Edit, EntityType, SyncOperation, Value};

    fn op(counter: u64) -> SyncOperation {
        SyncOperation {
            entity_type: EntityType::Document,
            entity_id: "d".into(),
            actor_id: "a".into(),
            timestamp: 0,
            operation: CrdtOperation {
                counter,
                deps: Default::default(),
                edit: Edit::Set {
                    key: "k".into(),
                    value: Value::Int(1),
                },
            },
        }
    }

    #[test]
    fn recent_operations_are_read_after_a_cursor_while_kept() {
        let mut recent = RecentOps::default();
        recent.extend(3, &[op(1), op(2), op(3)]);
        let after = |r: &RecentOps, cursor, last| {
            r.after(cursor, last, 10)
                .map(|v| v.iter().map(|(s, _)| *s).collect::<Vec<_>>())
        };
        assert_eq!(after(&recent, 0, 3), Some(vec![1, 2, 3]));
        assert_eq!(after(&recent, 2, 3), Some(vec![3]));
        assert_eq!(after(&recent, 3, 3), Some(vec![]));
        // Stored since, not noted here: the store must be read.
        assert_eq!(after(&recent, 2, 4), None);
        recent.extend(5, &[op(4), op(5)]);
        assert_eq!(after(&recent, 3, 5), Some(vec![4, 5]));
        assert_eq!(recent.after(0, 5, 2).map(|v| v.len()), Some(2));
        // A gap (operations stored elsewhere): the older ones are dropped.
        recent.extend(9, &[op(9)]);
        assert_eq!(after(&recent, 5, 9), None);
        assert_eq!(after(&recent, 8, 9), Some(vec![9]));
    }

    #[test]
    fn recent_operations_are_bounded() {
        let mut recent = RecentOps::default();
        let ops: Vec<SyncOperation> = (1..=RECENT_OPS as u64 + 10).map(op).collect();
        recent.extend(ops.len() as u64, &ops);
        assert_eq!(recent.ops.len(), RECENT_OPS);
        assert_eq!(recent.after(0, ops.len() as u64, usize::MAX), None);
        assert_eq!(
            recent
                .after(10, ops.len() as u64, usize::MAX)
                .map(|v| v.len()),
            Some(RECENT_OPS)
        );
    }

    #[test]
    fn the_journal_lists_each_device_once_at_its_latest_counter() {
        let mut journal = CounterJournal::default();
        journal.raise("a", 1);
        journal.raise("b", 1);
        let (seen, all) = journal.since(0);
        assert_eq!(all, vec![("a".to_string(), 1), ("b".to_string(), 1)]);
        journal.raise("a", 2);
        journal.raise("a", 3);
        let (now, changed) = journal.since(seen);
        assert_eq!(changed, vec![("a".to_string(), 3)]);
        assert_eq!(journal.since(now).1, vec![]);
        assert_eq!(journal.by_generation.len(), 2);
    }
}
