//! A replicated growable array (RGA) stored as runs in a counted B-tree.
//!
//! Elements inserted one after the other by one actor (a typed word, a
//! pasted paragraph, a batch of conversation items) are kept as one
//! [`Run`]: one id, one Lamport pair, one deleted flag and the run's
//! content (a `String` for text, a `Vec` for items), split only where
//! another insertion or a removal lands inside it. Runs sit in the leaves
//! of a B-tree whose inner nodes count the visible elements below each
//! child, so finding the `i`-th visible element, inserting and removing are
//! O(log n) in the number of runs; an index by `(actor, first counter)`
//! finds the run holding an element id in O(log n) as well. Removed
//! elements stay as tombstone runs (later insertions may refer to them).
//!
//! Ordering rule (RGA): a new element goes right after the element it was
//! inserted after, except that it skips over every element with a greater
//! [`OrderKey`]. An element's key is greater than the key of everything it
//! was inserted after (keys grow along causality), so this places concurrent
//! siblings in descending key order and keeps each sibling's subtree
//! together. Keys grow along a run, so a run whose first key is greater is
//! skipped whole, and the first run whose first key is smaller stops the
//! skip: the rule applied run by run places elements exactly as applied
//! element by element.
//!
//! ```
//! use nomade_crdt::sequence::{Eid, RunLamport, Sequence};
//!
//! let greater = |a: &nomade_crdt::sequence::OrderKey, b: &nomade_crdt::sequence::OrderKey| {
//!     (a.lamport, a.id) > (b.lamport, b.id)
//! };
//! let mut text: Sequence<String> = Sequence::new();
//! let first = Eid { actor: 0, counter: 1 };
//! text.insert(None, first, RunLamport { first: 1, next: 2 }, "hello", greater)
//!     .unwrap();
//! // One run, whatever its length.
//! assert_eq!(text.run_count(), 1);
//! // Remove "ell": one range of ids.
//! text.remove(&[(first.plus(1), 3)]).unwrap();
//! assert_eq!(text.to_text(), "ho");
//! assert_eq!(text.id_at(1), Some(first.plus(4)));
//! ```

use std::collections::BTreeMap;

use crate::actors::ActorIdx;

/// Largest number of runs in one leaf before it is split.
const LEAF_CAP: usize = 32;
/// Largest number of children of an inner node before it is split.
const INNER_CAP: usize = 32;
/// Largest number of elements in one run: a long insertion is kept as
/// several runs so that splitting one never copies more than this.
pub const MAX_RUN: usize = 1024;
/// How many runs a leaf's vector grows by when full: a step, not a
/// doubling, so that a leaf never holds room for twice what it holds.
const GROWTH: usize = 4;
/// "No node" in parent and next links.
const NONE: u32 = u32::MAX;

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

    /// The Lamport numbers of the run's elements from `k` on.
    fn from(&self, k: u64) -> RunLamport {
        RunLamport {
            first: self.at(k),
            next: self.at(k + 1),
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

/// What a run holds: the values of its elements, split and joined as the
/// run is (a `String` of characters for text, a `Vec` of items).
pub trait Content: Default {
    /// The borrowed form an insertion passes (`str`, a slice of items).
    type Slice: ?Sized;
    /// The number of elements (characters of a `String`, not bytes).
    fn count(&self) -> usize;
    /// The number of elements of a borrowed content.
    fn count_slice(slice: &Self::Slice) -> usize;
    /// The content as its borrowed form.
    fn as_slice(&self) -> &Self::Slice;
    /// Appends a borrowed content's elements.
    fn join_slice(&mut self, slice: &Self::Slice);
    /// Splits off the elements from `at` on; `count` is [`Content::count`],
    /// which the caller knows.
    fn split_at_element(&mut self, at: usize, count: usize) -> Self;
    /// Appends `other`'s elements.
    fn join(&mut self, other: Self);
    /// Copies a borrowed content into pieces of at most `max` elements, in order.
    fn chunks(slice: &Self::Slice, max: usize) -> Vec<Self>
    where
        Self: Sized;
}

impl Content for String {
    type Slice = str;

    fn count(&self) -> usize {
        self.chars().count()
    }

    fn count_slice(slice: &str) -> usize {
        slice.chars().count()
    }

    fn as_slice(&self) -> &str {
        self
    }

    fn join_slice(&mut self, slice: &str) {
        self.push_str(slice);
    }

    fn split_at_element(&mut self, at: usize, count: usize) -> Self {
        let byte = if self.len() == count {
            at
        } else {
            self.char_indices().nth(at).map_or(self.len(), |(b, _)| b)
        };
        self.split_off(byte)
    }

    fn join(&mut self, other: Self) {
        self.push_str(&other);
    }

    fn chunks(slice: &str, max: usize) -> Vec<Self> {
        let mut out = Vec::new();
        let mut start = 0;
        for (k, (byte, _)) in slice.char_indices().enumerate() {
            if k > 0 && k % max == 0 {
                out.push(slice[start..byte].to_string());
                start = byte;
            }
        }
        out.push(slice[start..].to_string());
        out
    }
}

impl<V: Clone> Content for Vec<V> {
    type Slice = [V];

    fn count(&self) -> usize {
        self.len()
    }

    fn count_slice(slice: &[V]) -> usize {
        slice.len()
    }

    fn as_slice(&self) -> &[V] {
        self
    }

    fn join_slice(&mut self, slice: &[V]) {
        self.extend_from_slice(slice);
    }

    fn split_at_element(&mut self, at: usize, _count: usize) -> Self {
        self.split_off(at.min(self.len()))
    }

    fn join(&mut self, mut other: Self) {
        self.append(&mut other);
    }

    fn chunks(slice: &[V], max: usize) -> Vec<Self> {
        slice.chunks(max).map(<[V]>::to_vec).collect()
    }
}

/// Consecutive elements `id`, `id.plus(1)`, ... inserted one after the
/// other, all visible or all removed.
///
/// Laid out in 56 bytes beside its content (the id's parts and the removed
/// flag packed), since a text holds one per run it keeps.
#[derive(Debug, Clone)]
pub struct Run<C> {
    counter: u64,
    actor: ActorIdx,
    /// The length, with [`REMOVED`] set for tombstones.
    len_and_removed: u32,
    /// The elements' Lamport numbers.
    pub lamport: RunLamport,
    /// Their values.
    pub content: C,
}

/// The bit of [`Run::len_and_removed`] that marks a removed run; a run is
/// at most [`MAX_RUN`] long, far below it.
const REMOVED: u32 = 1 << 31;

impl<C> Run<C> {
    /// A run of the elements of `content` from `id` on; `len` is
    /// `content`'s element count (at most [`MAX_RUN`]).
    fn with_len(id: Eid, lamport: RunLamport, len: u32, deleted: bool, content: C) -> Run<C> {
        Run {
            counter: id.counter,
            actor: id.actor,
            len_and_removed: len | if deleted { REMOVED } else { 0 },
            lamport,
            content,
        }
    }

    /// The first element's id.
    pub fn id(&self) -> Eid {
        Eid {
            actor: self.actor,
            counter: self.counter,
        }
    }

    /// How many elements.
    pub fn len(&self) -> u32 {
        self.len_and_removed & !REMOVED
    }

    /// Whether the run holds no element (never the case in a sequence).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the elements are removed (tombstones).
    pub fn deleted(&self) -> bool {
        self.len_and_removed & REMOVED != 0
    }

    fn set_len(&mut self, len: u32) {
        self.len_and_removed = len | (self.len_and_removed & REMOVED);
    }

    fn set_deleted(&mut self) {
        self.len_and_removed |= REMOVED;
    }
}

impl<C: Content> Run<C> {
    /// Runs of the elements of `content` from `first` on, with the Lamport
    /// numbers `lamport`, cut at [`MAX_RUN`] elements.
    pub fn pieces(
        first: Eid,
        lamport: RunLamport,
        deleted: bool,
        content: &C::Slice,
    ) -> Vec<Run<C>> {
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for part in C::chunks(content, MAX_RUN) {
            let len = part.count() as u32;
            pieces.push(Run::with_len(
                first.plus(offset),
                lamport.from(offset),
                len,
                deleted,
                part,
            ));
            offset += u64::from(len);
        }
        pieces
    }

    /// The first element's order key.
    pub fn key(&self) -> OrderKey {
        OrderKey {
            lamport: self.lamport.first,
            id: self.id(),
        }
    }

    fn end(&self) -> u64 {
        self.id().counter + u64::from(self.len())
    }

    fn visible(&self) -> usize {
        if self.deleted() {
            0
        } else {
            self.len() as usize
        }
    }

    /// Whether `next` continues this run: the same actor's next counters,
    /// the Lamport numbers of the elements that would follow, the same state.
    fn continued_by(&self, next: &Run<C>) -> bool {
        self.continues_into(next.id(), next.lamport, next.len() as usize, next.deleted())
    }

    /// Whether `len` elements from `id` with the Lamport numbers `lamport`
    /// and the state `deleted` continue this run.
    fn continues_into(&self, id: Eid, lamport: RunLamport, len: usize, deleted: bool) -> bool {
        let own = u64::from(self.len());
        self.id().actor == id.actor
            && self.end() == id.counter
            && self.deleted() == deleted
            && (self.len() as usize) + len <= MAX_RUN
            && lamport.first == self.lamport.at(own)
            && (len == 1 || lamport.next == self.lamport.at(own + 1))
    }

    /// Splits off the elements from `at` (0 < at < len) into a run of their own.
    fn split(&mut self, at: u32) -> Run<C> {
        let content = self
            .content
            .split_at_element(at as usize, self.len() as usize);
        let tail = Run::with_len(
            self.id().plus(u64::from(at)),
            self.lamport.from(u64::from(at)),
            self.len() - at,
            self.deleted(),
            content,
        );
        self.set_len(at);
        tail
    }
}

/// Inserts `run` into a leaf's runs at `at`, growing the vector by
/// [`GROWTH`] runs when it is full.
fn insert_run<C>(runs: &mut Vec<Run<C>>, at: usize, run: Run<C>) {
    if runs.len() == runs.capacity() {
        runs.reserve_exact(GROWTH);
    }
    runs.insert(at, run);
}

#[derive(Debug, Clone)]
struct Leaf<C> {
    runs: Vec<Run<C>>,
    parent: u32,
    next: u32,
    visible: usize,
}

#[derive(Debug, Clone)]
struct Inner {
    children: Vec<u32>,
    /// Visible elements below each child.
    counts: Vec<usize>,
    parent: u32,
    /// Whether the children are leaves.
    over_leaves: bool,
}

/// Why a sequence operation cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqError {
    /// The element to insert after, or to remove, is not in the sequence.
    UnknownElement(Eid),
    /// An element with this id already exists.
    DuplicateElement(Eid),
}

/// Where a run sits: its leaf and its index in the leaf.
#[derive(Debug, Clone, Copy)]
struct Place {
    leaf: u32,
    run: usize,
}

/// A replicated sequence of runs of `C` (characters of a text, items of a
/// conversation).
#[derive(Debug, Clone)]
pub struct Sequence<C> {
    leaves: Vec<Leaf<C>>,
    inners: Vec<Inner>,
    /// The root: a leaf when `height` is 0, else an inner node.
    root: u32,
    height: u32,
    /// Per actor: each run's first counter, and the leaf that holds it.
    index: Vec<BTreeMap<u64, u32>>,
    visible: usize,
    total: usize,
}

impl<C> Default for Sequence<C> {
    fn default() -> Self {
        Sequence {
            leaves: Vec::new(),
            inners: Vec::new(),
            root: 0,
            height: 0,
            index: Vec::new(),
            visible: 0,
            total: 0,
        }
    }
}

impl<C: Content> Sequence<C> {
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
        self.total
    }

    /// Number of runs the elements are kept in.
    pub fn run_count(&self) -> usize {
        self.leaves.iter().map(|l| l.runs.len()).sum()
    }

    /// True if an element with this id was ever inserted.
    pub fn contains(&self, id: &Eid) -> bool {
        self.locate(id).is_some()
    }

    /// The run holding `id`, and the element's offset in it.
    fn locate(&self, id: &Eid) -> Option<(Place, u32)> {
        let (&start, &leaf) = self
            .index
            .get(id.actor as usize)?
            .range(..=id.counter)
            .next_back()?;
        let runs = &self.leaves[leaf as usize].runs;
        let run = runs
            .iter()
            .position(|r| r.id().actor == id.actor && r.id().counter == start)?;
        let offset = id.counter - start;
        (offset < u64::from(runs[run].len())).then_some((Place { leaf, run }, offset as u32))
    }

    fn run(&self, place: Place) -> &Run<C> {
        &self.leaves[place.leaf as usize].runs[place.run]
    }

    /// Adds `delta` visible elements to the counts above `leaf`.
    fn add_visible(&mut self, leaf: u32, delta: isize) {
        let l = &mut self.leaves[leaf as usize];
        l.visible = l.visible.wrapping_add_signed(delta);
        let (mut child, mut parent) = (leaf, l.parent);
        while parent != NONE {
            let node = &mut self.inners[parent as usize];
            if let Some(i) = node.children.iter().position(|&c| c == child) {
                node.counts[i] = node.counts[i].wrapping_add_signed(delta);
            }
            child = parent;
            parent = node.parent;
        }
        self.visible = self.visible.wrapping_add_signed(delta);
    }

    fn index_run(&mut self, id: Eid, leaf: u32) {
        let actor = id.actor as usize;
        if self.index.len() <= actor {
            self.index.resize_with(actor + 1, BTreeMap::new);
        }
        self.index[actor].insert(id.counter, leaf);
    }

    fn unindex_run(&mut self, id: Eid) {
        if let Some(map) = self.index.get_mut(id.actor as usize) {
            map.remove(&id.counter);
        }
    }

    /// Splits the run at `place` so that a run starts at element `at`;
    /// returns that run's place.
    fn split_run(&mut self, place: Place, at: u32) -> Place {
        let tail = self.leaves[place.leaf as usize].runs[place.run].split(at);
        self.index_run(tail.id(), place.leaf);
        let next = Place {
            leaf: place.leaf,
            run: place.run + 1,
        };
        insert_run(&mut self.leaves[place.leaf as usize].runs, next.run, tail);
        next
    }

    /// The leaf that comes first in document order (leaves split to the
    /// right, so the first leaf made stays first).
    fn first_leaf(&mut self) -> u32 {
        if self.leaves.is_empty() {
            self.leaves.push(Leaf {
                runs: Vec::new(),
                parent: NONE,
                next: NONE,
                visible: 0,
            });
        }
        0
    }

    /// Checks that `insert` would succeed, without changing anything.
    pub fn check_insert(
        &self,
        after: Option<&Eid>,
        first: &Eid,
        count: usize,
    ) -> Result<(), SeqError> {
        if let Some(a) = after {
            if self.locate(a).is_none() {
                return Err(SeqError::UnknownElement(*a));
            }
        }
        let end = first.counter.saturating_add(count as u64);
        let overlapping = self
            .index
            .get(first.actor as usize)
            .and_then(|map| map.range(..end).next_back())
            .and_then(|(&start, _)| {
                let id = Eid {
                    actor: first.actor,
                    counter: start,
                };
                self.locate(&id).map(|(place, _)| self.run(place).end())
            })
            .is_some_and(|run_end| run_end > first.counter);
        if overlapping {
            return Err(SeqError::DuplicateElement(*first));
        }
        Ok(())
    }

    /// Inserts `content` after `after` (or at the start), its `i`-th element
    /// getting the id `first.plus(i)` and the Lamport number `lamport.at(i)`.
    /// `greater(a, b)` orders two keys (it resolves actor names). Returns
    /// how many elements were inserted.
    pub fn insert(
        &mut self,
        after: Option<&Eid>,
        first: Eid,
        lamport: RunLamport,
        content: &C::Slice,
        greater: impl Fn(&OrderKey, &OrderKey) -> bool,
    ) -> Result<usize, SeqError> {
        let n = C::count_slice(content);
        self.check_insert(after, &first, n)?;
        if n == 0 {
            return Ok(0);
        }
        let new_key = OrderKey {
            lamport: lamport.first,
            id: first,
        };
        // Start right after the reference element, or at the very beginning.
        let mut at = match after {
            Some(a) => {
                let (place, offset) = self.locate(a).ok_or(SeqError::UnknownElement(*a))?;
                if offset + 1 < self.run(place).len() {
                    self.split_run(place, offset + 1)
                } else {
                    Place {
                        leaf: place.leaf,
                        run: place.run + 1,
                    }
                }
            }
            None => Place {
                leaf: self.first_leaf(),
                run: 0,
            },
        };
        // Skip every run whose first key is greater (concurrent later
        // siblings and their subtrees); stay at the end of a leaf rather
        // than the start of the next, where the run before is at hand.
        loop {
            let leaf = &self.leaves[at.leaf as usize];
            match leaf.runs.get(at.run) {
                Some(run) if greater(&run.key(), &new_key) => at.run += 1,
                Some(_) => break,
                None => {
                    let next = leaf.next;
                    let next_first = self.leaves.get(next as usize).and_then(|l| l.runs.first());
                    match next_first {
                        Some(run) if greater(&run.key(), &new_key) => {
                            at = Place { leaf: next, run: 1 };
                        }
                        _ => break,
                    }
                }
            }
        }
        self.total += n;
        // Typing on: the run before takes the new elements.
        let leaf = &mut self.leaves[at.leaf as usize];
        if let Some(prev) = at.run.checked_sub(1).and_then(|p| leaf.runs.get_mut(p)) {
            if prev.continues_into(first, lamport, n, false) {
                prev.set_len(prev.len() + n as u32);
                prev.content.join_slice(content);
                self.add_visible(at.leaf, n as isize);
                return Ok(n);
            }
        }
        self.place_runs(at, Run::pieces(first, lamport, false, content));
        Ok(n)
    }

    /// Puts `runs` (in order) at `at`, joining the first to the run before
    /// when it continues it, then keeps the leaf within its capacity.
    fn place_runs(&mut self, at: Place, runs: Vec<Run<C>>) {
        let visible: usize = runs.iter().map(Run::visible).sum();
        let mut slot = at.run;
        for run in runs {
            let leaf = &mut self.leaves[at.leaf as usize];
            if let Some(prev) = slot.checked_sub(1).and_then(|p| leaf.runs.get_mut(p)) {
                if prev.continued_by(&run) {
                    prev.set_len(prev.len() + run.len());
                    prev.content.join(run.content);
                    continue;
                }
            }
            let id = run.id();
            insert_run(&mut leaf.runs, slot, run);
            self.index_run(id, at.leaf);
            slot += 1;
        }
        self.add_visible(at.leaf, visible as isize);
        self.fit_leaf(at.leaf);
    }

    /// Splits `leaf` while it holds more than [`LEAF_CAP`] runs.
    fn fit_leaf(&mut self, leaf: u32) {
        while self.leaves[leaf as usize].runs.len() > LEAF_CAP {
            let new = self.leaves.len() as u32;
            let l = &mut self.leaves[leaf as usize];
            let keep = l.runs.len() - LEAF_CAP / 2;
            let tail: Vec<Run<C>> = l.runs.split_off(keep);
            l.runs.shrink_to(keep + GROWTH);
            let moved: usize = tail.iter().map(Run::visible).sum();
            l.visible -= moved;
            let (parent, next) = (l.parent, l.next);
            l.next = new;
            let moved_ids: Vec<Eid> = tail.iter().map(|r| r.id()).collect();
            self.leaves.push(Leaf {
                runs: tail,
                parent,
                next,
                visible: moved,
            });
            for id in moved_ids {
                self.index_run(id, new);
            }
            self.attach(leaf, new, moved, true);
        }
    }

    /// Puts the new node `new` (holding `moved` visible elements, taken
    /// from `old`) right after `old` in `old`'s parent, splitting parents
    /// that overflow and growing a new root when the root splits.
    fn attach(&mut self, old: u32, new: u32, moved: usize, leaves: bool) {
        let parent = if leaves {
            self.leaves[old as usize].parent
        } else {
            self.inners[old as usize].parent
        };
        if parent == NONE {
            let old_count = if leaves {
                self.leaves[old as usize].visible
            } else {
                self.inners[old as usize].counts.iter().sum()
            };
            let root = self.inners.len() as u32;
            self.inners.push(Inner {
                children: vec![old, new],
                counts: vec![old_count, moved],
                parent: NONE,
                over_leaves: leaves,
            });
            self.set_parent(old, root, leaves);
            self.set_parent(new, root, leaves);
            self.root = root;
            self.height += 1;
            return;
        }
        let node = &mut self.inners[parent as usize];
        let i = node.children.iter().position(|&c| c == old).unwrap_or(0);
        node.counts[i] -= moved;
        node.children.insert(i + 1, new);
        node.counts.insert(i + 1, moved);
        self.set_parent(new, parent, leaves);
        if self.inners[parent as usize].children.len() > INNER_CAP {
            let node = &mut self.inners[parent as usize];
            let keep = node.children.len() / 2;
            let children = node.children.split_off(keep);
            let counts = node.counts.split_off(keep);
            let moved: usize = counts.iter().sum();
            let over_leaves = node.over_leaves;
            let sibling = self.inners.len() as u32;
            for &c in &children {
                self.set_parent(c, sibling, over_leaves);
            }
            self.inners.push(Inner {
                children,
                counts,
                parent: NONE,
                over_leaves,
            });
            self.attach(parent, sibling, moved, false);
        }
    }

    fn set_parent(&mut self, node: u32, parent: u32, leaf: bool) {
        if leaf {
            self.leaves[node as usize].parent = parent;
        } else {
            self.inners[node as usize].parent = parent;
        }
    }

    /// The place of the run holding the `index`-th visible element, and the
    /// element's offset in it.
    fn place_of_visible(&self, index: usize) -> Option<(Place, u32)> {
        if index >= self.visible || self.leaves.is_empty() {
            return None;
        }
        let mut left = index;
        let mut node = self.root;
        for _ in 0..self.height {
            let inner = &self.inners[node as usize];
            let mut next = None;
            for (&child, &count) in inner.children.iter().zip(&inner.counts) {
                if left < count {
                    next = Some(child);
                    break;
                }
                left -= count;
            }
            node = next?;
        }
        let runs = &self.leaves[node as usize].runs;
        for (i, run) in runs.iter().enumerate() {
            let v = run.visible();
            if left < v {
                return Some((Place { leaf: node, run: i }, left as u32));
            }
            left -= v;
        }
        None
    }

    /// The id of the `index`-th visible element.
    pub fn id_at(&self, index: usize) -> Option<Eid> {
        let (place, offset) = self.place_of_visible(index)?;
        Some(self.run(place).id().plus(u64::from(offset)))
    }

    /// The id of the last visible element, found from the root down: the
    /// last child with a visible element at each level.
    pub fn last_id(&self) -> Option<Eid> {
        self.visible.checked_sub(1).and_then(|i| self.id_at(i))
    }

    /// The visible elements from visible index `start`, `count` of them
    /// (fewer if the sequence ends first), as ranges of consecutive ids:
    /// `(first id, length)`, adjacent ids of one actor joined.
    pub fn visible_ranges(&self, start: usize, count: usize) -> Vec<(Eid, u64)> {
        let mut out: Vec<(Eid, u64)> = Vec::new();
        let Some((mut place, offset)) = self.place_of_visible(start) else {
            return out;
        };
        let mut skip = u64::from(offset);
        let mut left = count as u64;
        while left > 0 {
            let leaf = &self.leaves[place.leaf as usize];
            let Some(run) = leaf.runs.get(place.run) else {
                if leaf.next == NONE {
                    break;
                }
                place = Place {
                    leaf: leaf.next,
                    run: 0,
                };
                continue;
            };
            place.run += 1;
            if run.deleted() {
                continue;
            }
            let take = (u64::from(run.len()) - skip).min(left);
            let id = run.id().plus(skip);
            skip = 0;
            left -= take;
            match out.last_mut() {
                Some((prev, len))
                    if prev.actor == id.actor && prev.counter + *len == id.counter =>
                {
                    *len += take
                }
                _ => out.push((id, take)),
            }
        }
        out
    }

    /// Checks that every element the ranges `(first id, length)` name exists.
    pub fn check_remove(&self, ranges: &[(Eid, u64)]) -> Result<(), SeqError> {
        for &(first, len) in ranges {
            let end = first.counter.saturating_add(len);
            let mut at = first;
            while at.counter < end {
                let (place, _) = self.locate(&at).ok_or(SeqError::UnknownElement(at))?;
                at.counter = self.run(place).end();
            }
        }
        Ok(())
    }

    /// Marks the elements the ranges `(first id, length)` name removed
    /// (idempotent). Returns how many became invisible; changes nothing
    /// when one of them does not exist.
    pub fn remove(&mut self, ranges: &[(Eid, u64)]) -> Result<usize, SeqError> {
        self.check_remove(ranges)?;
        let mut removed = 0;
        for &(first, len) in ranges {
            let end = first.counter.saturating_add(len);
            let mut at = first;
            while at.counter < end {
                let (mut place, offset) = self.locate(&at).ok_or(SeqError::UnknownElement(at))?;
                let run = self.run(place);
                let run_end = run.end();
                if run.deleted() {
                    at.counter = run_end;
                    continue;
                }
                if offset > 0 {
                    place = self.split_run(place, offset);
                }
                let piece_end = run_end.min(end);
                let piece_len = (piece_end - at.counter) as u32;
                if piece_len < self.run(place).len() {
                    self.split_run(place, piece_len);
                }
                self.leaves[place.leaf as usize].runs[place.run].set_deleted();
                self.add_visible(place.leaf, -(piece_len as isize));
                removed += piece_len as usize;
                self.join_around(place);
                self.fit_leaf(place.leaf);
                at.counter = piece_end;
            }
        }
        Ok(removed)
    }

    /// Joins the run at `place` with its neighbours in the leaf where they
    /// continue one another (a word removed a character at a time becomes
    /// one tombstone run again).
    fn join_around(&mut self, place: Place) {
        let runs = &mut self.leaves[place.leaf as usize].runs;
        let mut gone = Vec::new();
        let mut i = place.run;
        if i + 1 < runs.len() && runs[i].continued_by(&runs[i + 1]) {
            let next = runs.remove(i + 1);
            gone.push(next.id());
            let len = runs[i].len() + next.len();
            runs[i].set_len(len);
            runs[i].content.join(next.content);
        }
        if i > 0 && runs[i - 1].continued_by(&runs[i]) {
            let run = runs.remove(i);
            gone.push(run.id());
            i -= 1;
            let len = runs[i].len() + run.len();
            runs[i].set_len(len);
            runs[i].content.join(run.content);
        }
        for id in gone {
            self.unindex_run(id);
        }
    }

    /// Whether the element `id` is in the sequence and not removed.
    pub fn is_visible(&self, id: &Eid) -> bool {
        self.locate(id)
            .is_some_and(|(place, _)| !self.run(place).deleted())
    }

    /// Every run in document order, tombstones included.
    pub fn runs(&self) -> impl Iterator<Item = &Run<C>> + '_ {
        let mut leaf = if self.leaves.is_empty() { NONE } else { 0 };
        std::iter::from_fn(move || {
            let current = self.leaves.get(leaf as usize)?;
            leaf = current.next;
            Some(current.runs.iter())
        })
        .flatten()
    }

    /// Builds a sequence from runs in document order (as [`Sequence::runs`]
    /// gives them). An id that two runs share is an error.
    pub fn from_runs(runs: impl IntoIterator<Item = Run<C>>) -> Result<Self, SeqError> {
        let mut seq = Sequence::new();
        let mut last = Place {
            leaf: seq.first_leaf(),
            run: 0,
        };
        for run in runs {
            let n = run.content.count();
            if n == 0 {
                continue;
            }
            seq.check_insert(None, &run.id(), n)?;
            seq.total += n;
            let pieces = Run::pieces(run.id(), run.lamport, run.deleted(), run.content.as_slice());
            // The last leaf: the one after the place of the last run.
            while seq.leaves[last.leaf as usize].next != NONE {
                last.leaf = seq.leaves[last.leaf as usize].next;
            }
            last.run = seq.leaves[last.leaf as usize].runs.len();
            seq.place_runs(last, pieces);
        }
        Ok(seq)
    }
}

impl Sequence<String> {
    /// The visible characters as a string.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.visible);
        for run in self.runs().filter(|r| !r.deleted()) {
            out.push_str(&run.content);
        }
        out
    }

    /// The visible characters in order, with their ids.
    pub fn chars(&self) -> impl Iterator<Item = (Eid, char)> + '_ {
        self.runs()
            .filter(|r| !r.deleted())
            .flat_map(|r| (0..).map(move |k| r.id().plus(k)).zip(r.content.chars()))
    }
}

impl<V: Clone> Sequence<Vec<V>> {
    /// The visible items in order, with their ids.
    pub fn items(&self) -> impl Iterator<Item = (Eid, &V)> + '_ {
        self.runs()
            .filter(|r| !r.deleted())
            .flat_map(|r| (0..).map(move |k| r.id().plus(k)).zip(r.content.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eid(actor: u32, counter: u64) -> Eid {
        Eid { actor, counter }
    }

    fn by_lamport_then_actor(a: &OrderKey, b: &OrderKey) -> bool {
        (a.lamport, a.id.actor, a.id.counter) > (b.lamport, b.id.actor, b.id.counter)
    }

    fn text(s: &str) -> &str {
        s
    }

    #[test]
    fn inserts_and_removes_by_position() {
        let mut s: Sequence<String> = Sequence::new();
        s.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            text("hello"),
            by_lamport_then_actor,
        )
        .unwrap();
        let after_o = s.id_at(4).unwrap();
        s.insert(
            Some(&after_o),
            eid(0, 6),
            RunLamport { first: 6, next: 7 },
            text(" world"),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(s.to_text(), "hello world");
        let ranges = s.visible_ranges(0, 6);
        assert_eq!(ranges, vec![(eid(0, 1), 6)]);
        assert_eq!(s.remove(&ranges).unwrap(), 6);
        assert_eq!(s.to_text(), "world");
        // Removing again changes nothing.
        assert_eq!(s.remove(&ranges).unwrap(), 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s.total_len(), 11);
    }

    #[test]
    fn a_run_of_text_takes_56_bytes_beside_its_characters() {
        assert_eq!(std::mem::size_of::<Run<String>>(), 56);
    }

    #[test]
    fn typing_one_character_at_a_time_is_one_run() {
        let mut s: Sequence<String> = Sequence::new();
        let mut after = None;
        for (k, c) in "a sentence typed one key at a time".chars().enumerate() {
            let counter = k as u64 + 1;
            s.insert(
                after.as_ref(),
                eid(0, counter),
                RunLamport {
                    first: counter,
                    next: counter + 1,
                },
                &c.to_string(),
                by_lamport_then_actor,
            )
            .unwrap();
            after = Some(eid(0, counter));
        }
        assert_eq!(s.run_count(), 1);
        // Backspacing the last word a character at a time leaves one
        // tombstone run next to the live one.
        for counter in (30..=34).rev() {
            s.remove(&[(eid(0, counter), 1)]).unwrap();
        }
        assert_eq!(s.to_text(), "a sentence typed one key at a");
        assert_eq!(s.run_count(), 2);
    }

    #[test]
    fn concurrent_siblings_order_by_key_and_keep_subtrees_together() {
        // Two actors insert after the same element at the same Lamport time.
        let mut a: Sequence<String> = Sequence::new();
        a.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            text("x"),
            by_lamport_then_actor,
        )
        .unwrap();
        let x = eid(0, 1);
        let mut b = a.clone();
        let aa = |s: &mut Sequence<String>| {
            s.insert(
                Some(&x),
                eid(1, 1),
                RunLamport::flat(2),
                text("AA"),
                by_lamport_then_actor,
            )
            .unwrap()
        };
        let bb = |s: &mut Sequence<String>| {
            s.insert(
                Some(&x),
                eid(2, 1),
                RunLamport::flat(2),
                text("BB"),
                by_lamport_then_actor,
            )
            .unwrap()
        };
        aa(&mut a);
        bb(&mut a);
        bb(&mut b);
        aa(&mut b);
        assert_eq!(a.to_text(), b.to_text());
        assert_eq!(a.to_text(), "xBBAA");
    }

    #[test]
    fn unknown_reference_is_an_error_and_changes_nothing() {
        let mut s: Sequence<String> = Sequence::new();
        let err = s.insert(
            Some(&eid(0, 9)),
            eid(0, 10),
            RunLamport::flat(5),
            text("z"),
            by_lamport_then_actor,
        );
        assert_eq!(err, Err(SeqError::UnknownElement(eid(0, 9))));
        assert_eq!(
            s.remove(&[(eid(1, 1), 1)]),
            Err(SeqError::UnknownElement(eid(1, 1)))
        );
        assert_eq!(s.total_len(), 0);
        s.insert(
            None,
            eid(0, 1),
            RunLamport::flat(1),
            text("abc"),
            by_lamport_then_actor,
        )
        .unwrap();
        // Any overlap with an existing run is a duplicate.
        assert_eq!(
            s.insert(
                None,
                eid(0, 3),
                RunLamport::flat(1),
                text("zz"),
                by_lamport_then_actor
            ),
            Err(SeqError::DuplicateElement(eid(0, 3)))
        );
        // A range reaching past what exists removes nothing.
        assert_eq!(
            s.remove(&[(eid(0, 2), 5)]),
            Err(SeqError::UnknownElement(eid(0, 4)))
        );
        assert_eq!(s.to_text(), "abc");
    }

    #[test]
    fn large_sequences_split_nodes_and_stay_consistent() {
        let mut s: Sequence<String> = Sequence::new();
        let mut expected: Vec<char> = Vec::new();
        for i in 0..20_000u64 {
            let c = char::from(b'a' + (i % 26) as u8);
            let pos = (i as usize * 7919) % (expected.len() + 1);
            let after = if pos == 0 { None } else { s.id_at(pos - 1) };
            s.insert(
                after.as_ref(),
                eid(0, i + 1),
                RunLamport::flat(i + 1),
                &c.to_string(),
                by_lamport_then_actor,
            )
            .unwrap();
            expected.insert(pos, c);
        }
        assert!(s.height >= 2, "height {}", s.height);
        assert_eq!(s.to_text(), expected.iter().collect::<String>());
        // A big single insert becomes several runs of at most MAX_RUN.
        let tail = s.last_id();
        s.insert(
            tail.as_ref(),
            eid(1, 1),
            RunLamport {
                first: 30_000,
                next: 30_001,
            },
            &"z".repeat(3000),
            by_lamport_then_actor,
        )
        .unwrap();
        assert_eq!(s.len(), 23_000);
        assert!(s.runs().all(|r| r.len() as usize <= MAX_RUN));
        assert_eq!(s.last_id(), Some(eid(1, 3000)));
        let rebuilt = Sequence::from_runs(s.runs().cloned()).unwrap();
        assert_eq!(rebuilt.to_text(), s.to_text());
        assert_eq!(rebuilt.id_at(4321), s.id_at(4321));
        assert_eq!(rebuilt.visible_ranges(100, 50), s.visible_ranges(100, 50));
    }

    /// The sequence element by element, the rule applied one element at a
    /// time: what the runs must always agree with.
    #[derive(Default, Clone)]
    struct Model {
        elems: Vec<(OrderKey, char, bool)>,
    }

    impl Model {
        fn insert(&mut self, after: Option<Eid>, first: Eid, lamport: RunLamport, text: &str) {
            let mut pos = match after {
                Some(a) => self.elems.iter().position(|e| e.0.id == a).unwrap() + 1,
                None => 0,
            };
            let key = OrderKey {
                lamport: lamport.first,
                id: first,
            };
            while pos < self.elems.len() && by_lamport_then_actor(&self.elems[pos].0, &key) {
                pos += 1;
            }
            for (k, c) in text.chars().enumerate() {
                let k = k as u64;
                let key = OrderKey {
                    lamport: lamport.at(k),
                    id: first.plus(k),
                };
                self.elems.insert(pos + k as usize, (key, c, false));
            }
        }

        fn text(&self) -> String {
            self.elems.iter().filter(|e| !e.2).map(|e| e.1).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Insert `len` characters by `actor` after the visible element at
        /// `pos` (modulo the length; the start when the text is empty or
        /// `at_start`).
        Insert {
            actor: u32,
            pos: usize,
            len: usize,
            at_start: bool,
            lamport_gap: u64,
        },
        /// `actor` types on right after its last inserted element, its
        /// Lamport numbers continuing (`jump` false) or not.
        Continue { actor: u32, len: usize, jump: bool },
        /// Remove up to `len` visible elements from `pos`.
        Remove { pos: usize, len: usize },
        /// Remove an element that is already removed, or a tombstone run's
        /// neighbour (by id).
        RemoveId { actor: u32, counter: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u32..3, any::<usize>(), 1usize..40, any::<bool>(), 0u64..3).prop_map(
                |(actor, pos, len, at_start, lamport_gap)| Step::Insert {
                    actor,
                    pos,
                    len,
                    at_start,
                    lamport_gap
                }
            ),
            1 => (any::<usize>(), 1usize..30).prop_map(|(pos, len)| Step::Remove { pos, len }),
            3 => (0u32..3, 1usize..4, any::<bool>()).prop_map(|(actor, len, jump)| Step::Continue { actor, len, jump }),
            1 => (0u32..3, 1u64..200).prop_map(|(actor, counter)| Step::RemoveId { actor, counter }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever insertions and removals happen, the runs hold exactly the
        /// elements, order and visibility of the element-by-element rule,
        /// and positions, ids and ranges read the same from both.
        #[test]
        fn runs_agree_with_the_element_by_element_rule(steps in prop::collection::vec(step(), 1..120)) {
            let mut s: Sequence<String> = Sequence::new();
            let mut model = Model::default();
            let mut counters = [0u64; 3];
            let mut lamport = 0u64;
            // Each actor's last inserted element and its Lamport number.
            let mut last: [Option<(Eid, u64)>; 3] = [None; 3];
            for step in steps {
                match step {
                    Step::Continue { actor, len, jump } => {
                        let Some((after, after_lamport)) = last[actor as usize] else { continue };
                        let first = eid(actor, counters[actor as usize] + 1);
                        counters[actor as usize] += len as u64;
                        let start = if jump { lamport + 1 } else { after_lamport + 1 };
                        let run_lamport = RunLamport { first: start, next: start + 1 };
                        lamport = lamport.max(start + len as u64);
                        let content: String = "xyz".chars().take(len).collect();
                        s.insert(Some(&after), first, run_lamport, &content, by_lamport_then_actor).unwrap();
                        model.insert(Some(after), first, run_lamport, &content);
                        last[actor as usize] = Some((first.plus(len as u64 - 1), run_lamport.at(len as u64 - 1)));
                    }
                    Step::Insert { actor, pos, len, at_start, lamport_gap } => {
                        let after = if at_start || s.is_empty() { None } else { s.id_at(pos % s.len()) };
                        let first = eid(actor, counters[actor as usize] + 1);
                        counters[actor as usize] += len as u64;
                        lamport += 1 + lamport_gap;
                        let run_lamport = RunLamport { first: lamport, next: lamport + 1 + lamport_gap };
                        lamport += len as u64 + lamport_gap;
                        let content: String = (0..len).map(|k| char::from(b'a' + ((k + actor as usize * 7) % 26) as u8)).collect();
                        s.insert(after.as_ref(), first, run_lamport, &content, by_lamport_then_actor).unwrap();
                        model.insert(after, first, run_lamport, &content);
                        last[actor as usize] = Some((first.plus(len as u64 - 1), run_lamport.at(len as u64 - 1)));
                    }
                    Step::Remove { pos, len } => {
                        if s.is_empty() { continue; }
                        let ranges = s.visible_ranges(pos % s.len(), len);
                        let removed = s.remove(&ranges).unwrap();
                        let mut model_removed = 0;
                        for (first, n) in &ranges {
                            for k in 0..*n {
                                let e = model.elems.iter_mut().find(|e| e.0.id == first.plus(k)).unwrap();
                                prop_assert!(!e.2);
                                e.2 = true;
                                model_removed += 1;
                            }
                        }
                        prop_assert_eq!(removed, model_removed);
                    }
                    Step::RemoveId { actor, counter } => {
                        let id = eid(actor, counter);
                        let exists = model.elems.iter().any(|e| e.0.id == id);
                        let result = s.remove(&[(id, 1)]);
                        prop_assert_eq!(result.is_ok(), exists);
                        if let Some(e) = model.elems.iter_mut().find(|e| e.0.id == id) {
                            e.2 = true;
                        }
                    }
                }
                prop_assert_eq!(s.to_text(), model.text());
            }
            prop_assert_eq!(s.total_len(), model.elems.len());
            let visible: Vec<Eid> = model.elems.iter().filter(|e| !e.2).map(|e| e.0.id).collect();
            let from_runs: Vec<Eid> = s.chars().map(|(id, _)| id).collect();
            prop_assert_eq!(&from_runs, &visible);
            for (i, id) in visible.iter().enumerate().step_by(7) {
                prop_assert_eq!(s.id_at(i), Some(*id));
                prop_assert!(s.is_visible(id));
            }
            prop_assert_eq!(s.last_id(), visible.last().copied());
            // Every element, in order, with its key: the tombstones too.
            let all: Vec<(OrderKey, bool)> = s
                .runs()
                .flat_map(|r| (0..u64::from(r.len())).map(move |k| (OrderKey { lamport: r.lamport.at(k), id: r.id().plus(k) }, r.deleted())))
                .collect();
            let model_all: Vec<(OrderKey, bool)> = model.elems.iter().map(|e| (e.0, e.2)).collect();
            prop_assert_eq!(all, model_all);
            let rebuilt = Sequence::from_runs(s.runs().cloned()).unwrap();
            prop_assert_eq!(rebuilt.to_text(), s.to_text());
        }
    }
}
