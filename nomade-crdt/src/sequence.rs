//! A replicated growable array (RGA) with order-statistic indexing.
//!
//! `crdts::List` finds positions by a linear walk (O(n) per operation, about
//! 15k ops/s at 50k elements), which is too slow for collaborative text. This
//! sequence keeps the same semantics with elements stored in blocks of at most
//! [`MAX_BLOCK`] elements, each block knowing how many of its elements are
//! visible: locating an element by id is a hash lookup plus a scan of one
//! block, and locating the `i`-th visible element is a walk over block counts.
//!
//! Ordering rule (RGA): a new element goes right after the element it was
//! inserted after, except that it skips over every element with a greater
//! [`OrderKey`]. An element's key is greater than the key of everything it was
//! inserted after (keys grow along causality), so this places concurrent
//! siblings in descending key order and keeps each sibling's subtree together.

use std::collections::HashMap;

use crate::actors::ActorIdx;

/// Largest number of elements in one block before it is split.
pub const MAX_BLOCK: usize = 512;

/// The identity of one element: `(actor, counter)` with the actor interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eid {
    /// The inserting actor (interned in the replica's actor table).
    pub actor: ActorIdx,
    /// The element's counter (an insertion of `n` elements covers `n` counters).
    pub counter: u64,
}

impl Eid {
    /// The id of the element `k` places after this one in the same run.
    pub fn plus(&self, k: u64) -> Eid {
        Eid {
            actor: self.actor,
            counter: self.counter.saturating_add(k),
        }
    }
}

/// The Lamport numbers of the elements of one run: element 0 has `first`,
/// element `k >= 1` has `next + k - 1` (a run is shorthand for one-element
/// insertions, each following the previous; see docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLamport {
    /// The first element's Lamport number.
    pub first: u64,
    /// The second element's.
    pub next: u64,
}

impl RunLamport {
    /// A run in which every element has the same Lamport number (tests).
    pub fn flat(lamport: u64) -> RunLamport {
        RunLamport {
            first: lamport,
            next: lamport,
        }
    }

    /// The Lamport number of element `k`.
    pub fn at(&self, k: u64) -> u64 {
        match k {
            0 => self.first,
            _ => self.next.saturating_add(k - 1),
        }
    }
}

/// The total order among concurrent siblings: `(lamport, actor name, counter)`,
/// compared with the actor's name, not its local index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    /// The operation's Lamport number (greater than that of everything it saw).
    pub lamport: u64,
    /// The element's id.
    pub id: Eid,
}

#[derive(Debug, Clone)]
struct Elem<T> {
    key: OrderKey,
    value: T,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct Block<T> {
    elems: Vec<Elem<T>>,
    visible: usize,
}

/// Why a sequence operation cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqError {
    /// The element to insert after, or to remove, is not in the sequence.
    UnknownElement(Eid),
    /// An element with this id already exists.
    DuplicateElement(Eid),
}

/// A replicated sequence of `T` (characters of a text, items of a conversation).
#[derive(Debug, Clone)]
pub struct Sequence<T> {
    blocks: Vec<Block<T>>,
    /// Block ids in document order.
    order: Vec<u32>,
    /// Which block holds each element.
    index: HashMap<Eid, u32>,
    visible: usize,
}

impl<T> Default for Sequence<T> {
    fn default() -> Self {
        Sequence {
            blocks: Vec::new(),
            order: Vec::new(),
            index: HashMap::new(),
            visible: 0,
        }
    }
}

impl<T: Clone> Sequence<T> {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of visible (not removed) elements.
    pub fn len(&self) -> usize {
        self.visible
    }

    /// True when no element is visible.
    pub fn is_empty(&self) -> bool {
        self.visible == 0
    }

    /// Number of elements including removed ones (tombstones).
    pub fn total_len(&self) -> usize {
        self.index.len()
    }

    /// True if an element with this id was ever inserted.
    pub fn contains(&self, id: &Eid) -> bool {
        self.index.contains_key(id)
    }

    fn locate(&self, id: &Eid) -> Option<(usize, usize)> {
        let block = *self.index.get(id)?;
        // From the end: appending, and typing at the end of a text, find
        // their block at once.
        let pos = self.order.iter().rposition(|&b| b == block)?;
        let i = self.blocks[block as usize]
            .elems
            .iter()
            .position(|e| e.key.id == *id)?;
        Some((pos, i))
    }

    /// The id of the `index`-th visible element.
    pub fn id_at(&self, index: usize) -> Option<Eid> {
        let mut left = index;
        for &b in &self.order {
            let block = &self.blocks[b as usize];
            if left < block.visible {
                return block
                    .elems
                    .iter()
                    .filter(|e| !e.deleted)
                    .nth(left)
                    .map(|e| e.key.id);
            }
            left -= block.visible;
        }
        None
    }

    /// The id of the last visible element, found from the end: the last
    /// block with a visible element, then that element.
    pub fn last_id(&self) -> Option<Eid> {
        let block = self
            .order
            .iter()
            .rev()
            .map(|&b| &self.blocks[b as usize])
            .find(|b| b.visible > 0)?;
        block
            .elems
            .iter()
            .rev()
            .find(|e| !e.deleted)
            .map(|e| e.key.id)
    }

    /// The ids of `count` visible elements starting at visible index `start`
    /// (fewer if the sequence ends first).
    pub fn ids_from(&self, start: usize, count: usize) -> Vec<Eid> {
        let mut out = Vec::with_capacity(count.min(self.visible));
        let mut skip = start;
        for &b in &self.order {
            let block = &self.blocks[b as usize];
            if skip >= block.visible {
                skip -= block.visible;
                continue;
            }
            for e in block.elems.iter().filter(|e| !e.deleted) {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if out.len() == count {
                    return out;
                }
                out.push(e.key.id);
            }
        }
        out
    }

    /// Checks that `insert` would succeed, without changing anything.
    pub fn check_insert(
        &self,
        after: Option<&Eid>,
        first: &Eid,
        count: usize,
    ) -> Result<(), SeqError> {
        if let Some(a) = after {
            if !self.index.contains_key(a) {
                return Err(SeqError::UnknownElement(*a));
            }
        }
        for k in 0..count as u64 {
            let id = first.plus(k);
            if self.index.contains_key(&id) {
                return Err(SeqError::DuplicateElement(id));
            }
        }
        Ok(())
    }

    /// Inserts `values` after `after` (or at the start), the `i`-th getting the
    /// id `first.plus(i)` and the Lamport number `lamport.at(i)`.
    /// `greater(a, b)` orders two keys (it resolves actor names).
    pub fn insert(
        &mut self,
        after: Option<&Eid>,
        first: Eid,
        lamport: RunLamport,
        values: impl IntoIterator<Item = T>,
        greater: impl Fn(&OrderKey, &OrderKey) -> bool,
    ) -> Result<usize, SeqError> {
        let values: Vec<T> = values.into_iter().collect();
        self.check_insert(after, &first, values.len())?;
        if values.is_empty() {
            return Ok(0);
        }
        let new_key = OrderKey {
            lamport: lamport.first,
            id: first,
        };
        // Start right after the reference element, or at the very beginning.
        let (mut pos, mut i) = match after {
            Some(a) => {
                let (p, i) = self.locate(a).ok_or(SeqError::UnknownElement(*a))?;
                (p, i + 1)
            }
            None => (0, 0),
        };
        // Skip every element with a greater key (concurrent later siblings and
        // their subtrees).
        while let Some(&b) = self.order.get(pos) {
            let block = &self.blocks[b as usize];
            if i >= block.elems.len() {
                if pos + 1 < self.order.len() {
                    pos += 1;
                    i = 0;
                    continue;
                }
                break;
            }
            if greater(&block.elems[i].key, &new_key) {
                i += 1;
            } else {
                break;
            }
        }
        if self.order.is_empty() {
            self.blocks.push(Block {
                elems: Vec::new(),
                visible: 0,
            });
            self.order.push((self.blocks.len() - 1) as u32);
            pos = 0;
            i = 0;
        }
        let b = self.order[pos];
        let n = values.len();
        let block = &mut self.blocks[b as usize];
        let new_elems = values.into_iter().enumerate().map(|(k, value)| Elem {
            key: OrderKey {
                lamport: lamport.at(k as u64),
                id: first.plus(k as u64),
            },
            value,
            deleted: false,
        });
        block.elems.splice(i..i, new_elems);
        block.visible += n;
        for k in 0..n as u64 {
            self.index.insert(first.plus(k), b);
        }
        self.visible += n;
        if self.blocks[b as usize].elems.len() > MAX_BLOCK {
            self.split(pos);
        }
        Ok(n)
    }

    fn split(&mut self, pos: usize) {
        let b = self.order[pos] as usize;
        while self.blocks[b].elems.len() > MAX_BLOCK {
            let keep = self.blocks[b].elems.len() - MAX_BLOCK / 2;
            // Split off the tail, possibly several times for one large insert.
            let tail: Vec<Elem<T>> = self.blocks[b].elems.split_off(keep.max(MAX_BLOCK / 2));
            let moved_visible = tail.iter().filter(|e| !e.deleted).count();
            self.blocks[b].visible -= moved_visible;
            let new_id = self.blocks.len() as u32;
            for e in &tail {
                self.index.insert(e.key.id, new_id);
            }
            self.blocks.push(Block {
                elems: tail,
                visible: moved_visible,
            });
            self.order.insert(pos + 1, new_id);
            if self.blocks[new_id as usize].elems.len() > MAX_BLOCK {
                self.split(pos + 1);
            }
        }
    }

    /// Checks that every target exists.
    pub fn check_remove(&self, targets: &[Eid]) -> Result<(), SeqError> {
        match targets.iter().find(|t| !self.index.contains_key(t)) {
            Some(t) => Err(SeqError::UnknownElement(*t)),
            None => Ok(()),
        }
    }

    /// Marks the targets removed (idempotent). Returns how many became invisible.
    pub fn remove(&mut self, targets: &[Eid]) -> Result<usize, SeqError> {
        self.check_remove(targets)?;
        let mut removed = 0;
        for t in targets {
            let block = *self.index.get(t).ok_or(SeqError::UnknownElement(*t))?;
            let block = &mut self.blocks[block as usize];
            if let Some(e) = block.elems.iter_mut().find(|e| e.key.id == *t) {
                if !e.deleted {
                    e.deleted = true;
                    block.visible -= 1;
                    removed += 1;
                }
            }
        }
        self.visible -= removed;
        Ok(removed)
    }

    /// Whether the element `id` is in the sequence and not removed.
    pub fn is_visible(&self, id: &Eid) -> bool {
        self.index.get(id).is_some_and(|&block| {
            self.blocks[block as usize]
                .elems
                .iter()
                .any(|e| e.key.id == *id && !e.deleted)
        })
    }

    /// Visible elements in order, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (Eid, &T)> + '_ {
        self.order.iter().flat_map(move |&b| {
            self.blocks[b as usize]
                .elems
                .iter()
                .filter(|e| !e.deleted)
                .map(|e| (e.key.id, &e.value))
        })
    }

    /// Every element in order, tombstones included: `(key, value, deleted)`.
    pub fn iter_all(&self) -> impl Iterator<Item = (OrderKey, &T, bool)> + '_ {
        self.order.iter().flat_map(move |&b| {
            self.blocks[b as usize]
                .elems
                .iter()
                .map(|e| (e.key, &e.value, e.deleted))
        })
    }

    /// Whether every element has an id of its own (a sequence rebuilt with
    /// [`Sequence::from_ordered`] from untrusted bytes may not).
    pub fn ids_are_unique(&self) -> bool {
        self.index.len() == self.blocks.iter().map(|b| b.elems.len()).sum::<usize>()
    }

    /// Rebuilds a sequence from elements in document order (as `iter_all` gave them).
    pub fn from_ordered(elems: impl IntoIterator<Item = (OrderKey, T, bool)>) -> Self {
        let mut seq = Sequence::new();
        let mut current = Block {
            elems: Vec::new(),
            visible: 0,
        };
        let flush = |seq: &mut Sequence<T>, block: Block<T>| {
            let id = seq.blocks.len() as u32;
            for e in &block.elems {
                seq.index.insert(e.key.id, id);
            }
            seq.visible += block.visible;
            seq.blocks.push(block);
            seq.order.push(id);
        };
        for (key, value, deleted) in elems {
            current.elems.push(Elem {
                key,
                value,
                deleted,
            });
            if !deleted {
                current.visible += 1;
            }
            if current.elems.len() == MAX_BLOCK / 2 {
                flush(
                    &mut seq,
                    std::mem::replace(
                        &mut current,
                        Block {
                            elems: Vec::new(),
                            visible: 0,
                        },
                    ),
                );
            }
        }
        if !current.elems.is_empty() {
            flush(&mut seq, current);
        }
        seq
    }
}

impl Sequence<char> {
    /// The visible characters as a string.
    pub fn to_text(&self) -> String {
        self.iter().map(|(_, c)| *c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eid(actor: u32, counter: u64) -> Eid {
        Eid { actor, counter }
    }

    fn by_lamport_then_actor(a: &OrderKey, b: &OrderKey) -> bool {
        (a.lamport, a.id.actor, a.id.counter) > (b.lamport, b.id.actor, b.id.counter)
    }

    #[test]
    fn inserts_and_removes_by_position() {
        let mut s = Sequence::new();
        s.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            "hello".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        let after_o = s.id_at(4).unwrap();
        s.insert(
            Some(&after_o),
            eid(0, 6),
            RunLamport::flat(6),
            " world".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(s.to_text(), "hello world");
        let ids = s.ids_from(0, 6);
        assert_eq!(s.remove(&ids).unwrap(), 6);
        assert_eq!(s.to_text(), "world");
        // Removing again changes nothing.
        assert_eq!(s.remove(&ids).unwrap(), 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s.total_len(), 11);
    }

    #[test]
    fn concurrent_siblings_order_by_key_and_keep_subtrees_together() {
        // Two actors insert after the same element at the same Lamport time.
        let mut a = Sequence::new();
        a.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            "x".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        let x = eid(0, 1);
        let mut b = a.clone();
        a.insert(
            Some(&x),
            eid(1, 1),
            RunLamport::flat(2),
            "AA".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        a.insert(
            Some(&x),
            eid(2, 1),
            RunLamport::flat(2),
            "BB".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        b.insert(
            Some(&x),
            eid(2, 1),
            RunLamport::flat(2),
            "BB".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        b.insert(
            Some(&x),
            eid(1, 1),
            RunLamport::flat(2),
            "AA".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(a.to_text(), b.to_text());
        assert_eq!(a.to_text(), "xBBAA");
    }

    #[test]
    fn unknown_reference_is_an_error_and_changes_nothing() {
        let mut s: Sequence<char> = Sequence::new();
        let err = s.insert(
            Some(&eid(0, 9)),
            eid(0, 10),
            RunLamport::flat(5),
            "z".chars(),
            by_lamport_then_actor,
        );
        assert_eq!(err, Err(SeqError::UnknownElement(eid(0, 9))));
        assert_eq!(
            s.remove(&[eid(1, 1)]),
            Err(SeqError::UnknownElement(eid(1, 1)))
        );
        assert_eq!(s.total_len(), 0);
        s.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            "a".chars(),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(
            s.insert(
                None,
                eid(0, 1),
                RunLamport::flat(1),
                "a".chars(),
                by_lamport_then_actor
            ),
            Err(SeqError::DuplicateElement(eid(0, 1)))
        );
    }

    #[test]
    fn large_sequences_split_blocks_and_stay_consistent() {
        let mut s = Sequence::new();
        let mut expected = String::new();
        let mut counter = 0;
        for i in 0..5000u32 {
            counter += 1;
            let c = char::from(b'a' + (i % 26) as u8);
            let pos = (i as usize * 7919) % (expected.len() + 1);
            let after = if pos == 0 { None } else { s.id_at(pos - 1) };
            s.insert(
                after.as_ref(),
                eid(0, counter),
                RunLamport::flat(counter),
                [c],
                by_lamport_then_actor,
            )
            .unwrap();
            expected.insert(pos, c);
        }
        assert_eq!(s.to_text(), expected);
        // A big single insert splits into several blocks.
        let tail = s.id_at(s.len() - 1);
        s.insert(
            tail.as_ref(),
            eid(1, 1),
            RunLamport::flat(10_000),
            std::iter::repeat_n('z', 3000),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(s.len(), 8000);
        assert!(s.blocks.iter().all(|b| b.elems.len() <= MAX_BLOCK));
        let rebuilt = Sequence::from_ordered(s.iter_all().map(|(k, v, d)| (k, *v, d)));
        assert_eq!(rebuilt.to_text(), s.to_text());
        assert_eq!(rebuilt.id_at(4321), s.id_at(4321));
    }
}
