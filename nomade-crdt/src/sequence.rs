//! A replicated sequence (YATA, as in Yjs) stored as runs in a counted B-tree.
//!
//! Elements inserted one after the other by one actor (a typed word, a
//! pasted paragraph, a batch of conversation items) are kept as one
//! [`Run`]: one id, its origins, one removed flag and the run's content (a
//! `String` for text, a `Vec` for items), split only where another
//! insertion or a removal lands inside it. Runs sit in the leaves of a
//! B-tree whose inner nodes count the visible elements below each child, so
//! finding the `i`-th visible element, inserting and removing are O(log n)
//! in the number of runs; an index by `(actor, first counter)` finds the run
//! holding an element id in O(log n) as well. Removed elements stay as
//! tombstone runs (later insertions may refer to them).
//!
//! Ordering rule (YATA): every element has a left origin (the element it
//! was inserted after) and a right origin (the element that followed that
//! one where its author inserted it). A new element goes between its
//! origins; concurrent elements between the same origins are ordered by
//! the rule of docs/PROTOCOL.md ("Sequences"), which keeps each run typed
//! by one device together whichever way it was typed: two devices typing
//! words at one place at once never interleave their characters. Element
//! `k >= 1` of a run has element `k - 1` as its left origin and the run's
//! right origin, so the rule applied run by run places elements exactly as
//! applied element by element.
//!
//! ```
//! use nomade_crdt::sequence::{Eid, Sequence};
//!
//! let by_index = |a: u32, b: u32| a < b;
//! let mut text: Sequence<String> = Sequence::new();
//! let first = Eid { actor: 0, counter: 1 };
//! text.insert(None, None, first, "hello", by_index).unwrap();
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
        if slice.is_ascii() {
            slice.len()
        } else {
            slice.chars().count()
        }
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

/// The runs one insertion or one snapshot entry makes: nearly always one,
/// held inline (more when content is cut at [`MAX_RUN`]).
pub type Runs<C> = smallvec::SmallVec<[Run<C>; 1]>;

/// Consecutive elements `id`, `id.plus(1)`, ... inserted one after the
/// other, all visible or all removed: element 0 has the run's left origin,
/// element `k >= 1` has element `k - 1`, all have the run's right origin.
/// A removed run (a tombstone) holds no values: its content is empty and
/// its length says how many elements it stands for.
///
/// Laid out in 64 bytes beside its content (ids as their parts, the
/// removed flag packed in the length), since a text holds one per run.
#[derive(Debug, Clone)]
pub struct Run<C> {
    counter: u64,
    origin_counter: u64,
    right_counter: u64,
    actor: ActorIdx,
    /// The length, with [`REMOVED`] set for tombstones.
    len_and_removed: u32,
    /// [`NO_ACTOR`] when the run has no left origin (inserted at the start).
    origin_actor: ActorIdx,
    /// [`NO_ACTOR`] when the run has no right origin (inserted at the end).
    right_actor: ActorIdx,
    /// The elements' values.
    pub content: C,
}

/// The bit of [`Run::len_and_removed`] that marks a removed run; a run is
/// at most [`MAX_RUN`] long, or [`MAX_REMOVED`] when removed, below it.
const REMOVED: u32 = 1 << 31;
/// Largest number of elements in one removed run: it holds no values, so
/// splitting it copies nothing, and only the length field bounds it.
pub const MAX_REMOVED: usize = (REMOVED - 1) as usize;
/// No actor: an absent origin (actor indices are bounded far below it).
const NO_ACTOR: ActorIdx = ActorIdx::MAX;

fn pack(e: Option<Eid>) -> (ActorIdx, u64) {
    e.map_or((NO_ACTOR, 0), |e| (e.actor, e.counter))
}

fn unpack(actor: ActorIdx, counter: u64) -> Option<Eid> {
    (actor != NO_ACTOR).then_some(Eid { actor, counter })
}

impl<C> Run<C> {
    /// A run of the `len` elements of `content` from `id` on, with the
    /// origins of its first element.
    fn with_len(
        id: Eid,
        origin: Option<Eid>,
        right: Option<Eid>,
        len: u32,
        deleted: bool,
        content: C,
    ) -> Run<C> {
        let (origin_actor, origin_counter) = pack(origin);
        let (right_actor, right_counter) = pack(right);
        Run {
            counter: id.counter,
            origin_counter,
            right_counter,
            actor: id.actor,
            len_and_removed: len | if deleted { REMOVED } else { 0 },
            origin_actor,
            right_actor,
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

    /// The first element's left origin: what it was inserted after.
    pub fn origin(&self) -> Option<Eid> {
        unpack(self.origin_actor, self.origin_counter)
    }

    /// The elements' right origin: what followed the left origin where
    /// they were inserted.
    pub fn right(&self) -> Option<Eid> {
        unpack(self.right_actor, self.right_counter)
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

    fn end(&self) -> u64 {
        self.counter + u64::from(self.len())
    }

    fn visible(&self) -> usize {
        if self.deleted() {
            0
        } else {
            self.len() as usize
        }
    }

    /// Whether `len` elements from `id`, the first with the left origin
    /// `origin`, with the right origin `right` and the state `deleted`,
    /// continue this run: the same actor's next counters, following its
    /// last element, between the same right origin.
    fn continues_into(
        &self,
        id: Eid,
        origin: Option<Eid>,
        right: Option<Eid>,
        len: usize,
        deleted: bool,
    ) -> bool {
        let cap = if deleted { MAX_REMOVED } else { MAX_RUN };
        self.actor == id.actor
            && self.end() == id.counter
            && self.deleted() == deleted
            && (self.len() as usize) + len <= cap
            && origin == Some(self.id().plus(u64::from(self.len()) - 1))
            && right == self.right()
    }

    /// Whether `next` continues this run.
    fn continued_by(&self, next: &Run<C>) -> bool {
        self.continues_into(
            next.id(),
            next.origin(),
            next.right(),
            next.len() as usize,
            next.deleted(),
        )
    }
}

impl<C: Content> Run<C> {
    /// Runs of the elements of `content` from `first` on, the first with
    /// the left origin `origin`, all with the right origin `right`, cut at
    /// [`MAX_RUN`] elements.
    pub fn pieces(
        first: Eid,
        origin: Option<Eid>,
        right: Option<Eid>,
        deleted: bool,
        content: &C::Slice,
    ) -> Runs<C> {
        let parts = C::chunks(content, MAX_RUN)
            .into_iter()
            .map(|part| (part.count() as u32, part));
        Run::consecutive(first, origin, right, deleted, parts)
    }

    /// Runs of the elements of `content`, taken as they are when they fit
    /// one run (no copy), cut at [`MAX_RUN`] elements otherwise (see
    /// [`Run::pieces`]).
    pub fn of_content(first: Eid, origin: Option<Eid>, right: Option<Eid>, content: C) -> Runs<C> {
        let n = content.count();
        if n <= MAX_RUN {
            smallvec::smallvec![Run::with_len(
                first, origin, right, n as u32, false, content,
            )]
        } else {
            Run::pieces(first, origin, right, false, content.as_slice())
        }
    }

    /// Tombstone runs for the `len` removed elements from `first` on, the
    /// first with the left origin `origin`, all with the right origin
    /// `right`, cut at [`MAX_REMOVED`] elements.
    pub fn removed(first: Eid, origin: Option<Eid>, right: Option<Eid>, len: u64) -> Runs<C> {
        let parts = (0..len)
            .step_by(MAX_REMOVED)
            .map(|start| ((len - start).min(MAX_REMOVED as u64) as u32, C::default()));
        Run::consecutive(first, origin, right, true, parts)
    }

    /// Runs of consecutive parts `(length, content)` from `first` on: the
    /// first with the left origin `origin`, each later one following the
    /// last element of the one before, all with the right origin `right`.
    fn consecutive(
        first: Eid,
        origin: Option<Eid>,
        right: Option<Eid>,
        deleted: bool,
        parts: impl IntoIterator<Item = (u32, C)>,
    ) -> Runs<C> {
        let mut offset = 0u64;
        parts
            .into_iter()
            .map(|(len, part)| {
                let left = match offset {
                    0 => origin,
                    _ => Some(first.plus(offset - 1)),
                };
                let run = Run::with_len(first.plus(offset), left, right, len, deleted, part);
                offset += u64::from(len);
                run
            })
            .collect()
    }

    /// Splits off the elements from `at` (0 < at < len) into a run of their own.
    fn split(&mut self, at: u32) -> Run<C> {
        let content = self
            .content
            .split_at_element(at as usize, self.len() as usize);
        let tail = Run::with_len(
            self.id().plus(u64::from(at)),
            Some(self.id().plus(u64::from(at) - 1)),
            self.right(),
            self.len() - at,
            self.deleted(),
            content,
        );
        self.set_len(at);
        tail
    }
}

/// Sets of element ids, as ranges of consecutive counters of one actor:
/// the runs an insertion's scan has passed.
#[derive(Default)]
struct IdRanges(BTreeMap<(ActorIdx, u64), u64>);

impl IdRanges {
    fn add(&mut self, first: Eid, len: u32) {
        self.0
            .insert((first.actor, first.counter), first.counter + u64::from(len));
    }

    fn contains(&self, id: Eid) -> bool {
        self.0
            .range(..=(id.actor, id.counter))
            .next_back()
            .is_some_and(|(&(actor, _), &end)| actor == id.actor && id.counter < end)
    }

    fn clear(&mut self) {
        self.0.clear();
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
    /// An insertion's right origin does not come after its left origin
    /// (no author ever sees them so: elements never move).
    MisorderedOrigins {
        /// The left origin.
        after: Eid,
        /// The right origin.
        before: Eid,
    },
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
        before: Option<&Eid>,
        first: &Eid,
        count: usize,
    ) -> Result<(), SeqError> {
        self.check_origins(after, before)?;
        self.check_new_ids(first, count)
    }

    /// Checks an insertion's origins: each exists, and the right origin
    /// comes after the left one.
    pub fn check_origins(&self, after: Option<&Eid>, before: Option<&Eid>) -> Result<(), SeqError> {
        let found = |e: &Eid| self.locate(e).ok_or(SeqError::UnknownElement(*e));
        let a = after.map(found).transpose()?;
        let b = before.map(found).transpose()?;
        if let (Some(a), Some(b), Some(after), Some(before)) = (a, b, after, before) {
            if !self.precedes(a, b) {
                return Err(SeqError::MisorderedOrigins {
                    after: *after,
                    before: *before,
                });
            }
        }
        Ok(())
    }

    /// Whether the element at `a` (a place and an offset) comes before the
    /// one at `b`: the same run, by offset; the same leaf, by run; else by
    /// the leaves' paths from the root.
    fn precedes(&self, a: (Place, u32), b: (Place, u32)) -> bool {
        let ((pa, oa), (pb, ob)) = (a, b);
        if pa.leaf == pb.leaf {
            return (pa.run, oa) < (pb.run, ob);
        }
        self.path(pa.leaf) < self.path(pb.leaf)
    }

    /// The child indices from the root down to `leaf`.
    fn path(&self, leaf: u32) -> Vec<usize> {
        let mut path = Vec::with_capacity(self.height as usize);
        let (mut child, mut parent) = (leaf, self.leaves[leaf as usize].parent);
        while parent != NONE {
            let node = &self.inners[parent as usize];
            path.push(node.children.iter().position(|&c| c == child).unwrap_or(0));
            child = parent;
            parent = node.parent;
        }
        path.reverse();
        path
    }

    /// Checks that no element has an id among the `count` from `first`.
    fn check_new_ids(&self, first: &Eid, count: usize) -> Result<(), SeqError> {
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

    /// The id of the element right after `after` (the first element when
    /// `after` is `None`), removed or not: the right origin of an insertion
    /// after `after`. `None` at the end.
    pub fn next_id(&self, after: Option<&Eid>) -> Option<Eid> {
        let mut at = match after {
            Some(a) => {
                let (place, offset) = self.locate(a)?;
                if offset + 1 < self.run(place).len() {
                    return Some(a.plus(1));
                }
                Place {
                    leaf: place.leaf,
                    run: place.run + 1,
                }
            }
            None => Place { leaf: 0, run: 0 },
        };
        loop {
            let leaf = self.leaves.get(at.leaf as usize)?;
            match leaf.runs.get(at.run) {
                Some(run) => return Some(run.id()),
                None if leaf.next == NONE => return None,
                None => {
                    at = Place {
                        leaf: leaf.next,
                        run: 0,
                    }
                }
            }
        }
    }

    /// Inserts `content` between `after` (its left origin; `None`: the
    /// start) and `before` (its right origin; `None`: the end), its `i`-th
    /// element getting the id `first.plus(i)`, among concurrent insertions
    /// by the rule of docs/PROTOCOL.md ("Sequences"). `less(a, b)` orders
    /// two actors (it compares their names). Returns how many elements were
    /// inserted.
    pub fn insert(
        &mut self,
        after: Option<&Eid>,
        before: Option<&Eid>,
        first: Eid,
        content: &C::Slice,
        less: impl Fn(ActorIdx, ActorIdx) -> bool,
    ) -> Result<usize, SeqError> {
        self.check_insert(after, before, &first, C::count_slice(content))?;
        self.insert_new(after, before, first, content, less)
    }

    /// [`Sequence::insert`] for elements whose ids are known to be new (a
    /// replica applies an actor's counters once each, in order, so an
    /// operation it applies names no element that exists).
    pub(crate) fn insert_new(
        &mut self,
        after: Option<&Eid>,
        before: Option<&Eid>,
        first: Eid,
        content: &C::Slice,
        less: impl Fn(ActorIdx, ActorIdx) -> bool,
    ) -> Result<usize, SeqError> {
        let n = C::count_slice(content);
        // The origins are checked as they are found below; splitting a run
        // at the right origin before finding an unknown left origin changes
        // how runs are cut, never the sequence.
        if n == 0 {
            return Ok(0);
        }
        let (origin, right) = (after.copied(), before.copied());
        // The right origin starts a run, so that the scan meets it.
        if let Some(b) = right {
            let (place, offset) = self.locate(&b).ok_or(SeqError::UnknownElement(b))?;
            if offset > 0 {
                self.split_run(place, offset);
            }
        }
        // Start right after the left origin, or at the very beginning.
        let start = match origin {
            Some(a) => {
                let (place, offset) = self.locate(&a).ok_or(SeqError::UnknownElement(a))?;
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
        let at = self.integration_place(start, first.actor, origin, right, &less);
        self.total += n;
        // Typing on: the run before takes the new elements.
        let leaf = &mut self.leaves[at.leaf as usize];
        if let Some(prev) = at.run.checked_sub(1).and_then(|p| leaf.runs.get_mut(p)) {
            if prev.continues_into(first, origin, right, n, false) {
                prev.set_len(prev.len() + n as u32);
                prev.content.join_slice(content);
                self.add_visible(at.leaf, n as isize);
                return Ok(n);
            }
        }
        self.place_runs(at, Run::pieces(first, origin, right, false, content));
        Ok(n)
    }

    /// Where elements of `actor` with the origins `origin` and `right` go,
    /// scanning from `start` (right after `origin`) towards `right`: YATA's
    /// rule, run by run. A run with the same left origin goes first when
    /// its actor is less; with a greater actor and the same right origin,
    /// the new elements go first. A run whose left origin was passed in the
    /// scan belongs to what is before it (unless that origin is among the
    /// runs passed since the place last moved). Anything else ends the
    /// scan. Stays at the end of a leaf rather than the start of the next,
    /// where the run before is at hand.
    fn integration_place(
        &self,
        start: Place,
        actor: ActorIdx,
        origin: Option<Eid>,
        right: Option<Eid>,
        less: &impl Fn(ActorIdx, ActorIdx) -> bool,
    ) -> Place {
        let mut place = start;
        let mut o = start;
        let mut passed = IdRanges::default();
        let mut conflicting = IdRanges::default();
        loop {
            let leaf = &self.leaves[o.leaf as usize];
            let Some(run) = leaf.runs.get(o.run) else {
                if leaf.next == NONE {
                    return place;
                }
                o = Place {
                    leaf: leaf.next,
                    run: 0,
                };
                continue;
            };
            if Some(run.id()) == right {
                return place;
            }
            passed.add(run.id(), run.len());
            conflicting.add(run.id(), run.len());
            let after_o = Place {
                leaf: o.leaf,
                run: o.run + 1,
            };
            match run.origin() {
                o_origin if o_origin == origin => {
                    if less(run.actor, actor) {
                        place = after_o;
                        conflicting.clear();
                    } else if run.right() == right {
                        return place;
                    }
                }
                Some(o_origin) if passed.contains(o_origin) => {
                    if !conflicting.contains(o_origin) {
                        place = after_o;
                        conflicting.clear();
                    }
                }
                _ => return place,
            }
            o.run += 1;
        }
    }

    /// Puts `runs` (in order) at `at`, joining the first to the run before
    /// when it continues it, then keeps the leaf within its capacity.
    fn place_runs(&mut self, at: Place, runs: Runs<C>) {
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
                let run = &mut self.leaves[place.leaf as usize].runs[place.run];
                run.set_deleted();
                // A tombstone keeps its ids and origins, not its values.
                run.content = C::default();
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
        // Runs of at most MAX_RUN elements, joined where one continues the
        // one before.
        let mut all: Vec<Run<C>> = Vec::new();
        let push = |all: &mut Vec<Run<C>>, piece: Run<C>| match all.last_mut() {
            Some(prev) if prev.continued_by(&piece) => {
                prev.set_len(prev.len() + piece.len());
                prev.content.join(piece.content);
            }
            _ => all.push(piece),
        };
        for mut run in runs {
            let n = if run.deleted() {
                run.len() as usize
            } else {
                run.content.count()
            };
            if n == 0 {
                continue;
            }
            let cap = if run.deleted() { MAX_REMOVED } else { MAX_RUN };
            if n <= cap {
                run.set_len(n as u32);
                if run.deleted() {
                    run.content = C::default();
                }
                push(&mut all, run);
            } else {
                let pieces = if run.deleted() {
                    Run::removed(run.id(), run.origin(), run.right(), n as u64)
                } else {
                    Run::pieces(
                        run.id(),
                        run.origin(),
                        run.right(),
                        false,
                        run.content.as_slice(),
                    )
                };
                for piece in pieces {
                    push(&mut all, piece);
                }
            }
        }
        // No id twice.
        let mut spans: Vec<(ActorIdx, u64, u64)> =
            all.iter().map(|r| (r.actor, r.counter, r.end())).collect();
        spans.sort_unstable();
        if let Some(w) = spans
            .windows(2)
            .find(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
        {
            return Err(SeqError::DuplicateElement(Eid {
                actor: w[1].0,
                counter: w[1].1,
            }));
        }
        // Leaves three quarters full, in order, then the inner levels
        // bottom up.
        let mut seq = Sequence::new();
        let mut index: Vec<Vec<(u64, u32)>> = Vec::new();
        let mut it = all.into_iter().peekable();
        while it.peek().is_some() {
            let runs: Vec<Run<C>> = it.by_ref().take(LEAF_CAP * 3 / 4).collect();
            let leaf = seq.leaves.len() as u32;
            let visible: usize = runs.iter().map(Run::visible).sum();
            for r in &runs {
                let actor = r.actor as usize;
                if index.len() <= actor {
                    index.resize_with(actor + 1, Vec::new);
                }
                index[actor].push((r.counter, leaf));
                seq.total += r.len() as usize;
            }
            seq.visible += visible;
            if let Some(prev) = seq.leaves.last_mut() {
                prev.next = leaf;
            }
            seq.leaves.push(Leaf {
                runs,
                parent: NONE,
                next: NONE,
                visible,
            });
        }
        seq.index = index.into_iter().map(BTreeMap::from_iter).collect();
        let mut level: Vec<(u32, usize)> = seq
            .leaves
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l.visible))
            .collect();
        let mut over_leaves = true;
        while level.len() > 1 {
            let mut above = Vec::with_capacity(level.len() / (INNER_CAP / 2) + 1);
            for group in level.chunks(INNER_CAP * 3 / 4) {
                let node = seq.inners.len() as u32;
                for &(child, _) in group {
                    seq.set_parent(child, node, over_leaves);
                }
                let counts: Vec<usize> = group.iter().map(|g| g.1).collect();
                above.push((node, counts.iter().sum()));
                seq.inners.push(Inner {
                    children: group.iter().map(|g| g.0).collect(),
                    counts,
                    parent: NONE,
                    over_leaves,
                });
            }
            level = above;
            over_leaves = false;
            seq.height += 1;
        }
        if let Some(&(root, _)) = level.first() {
            seq.root = root;
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

    fn by_index(a: ActorIdx, b: ActorIdx) -> bool {
        a < b
    }

    /// Inserts `text` by `first.actor` after `after`, before what follows
    /// it now (as the author's device does).
    fn type_at(s: &mut Sequence<String>, after: Option<Eid>, first: Eid, text: &str) {
        let before = s.next_id(after.as_ref());
        s.insert(after.as_ref(), before.as_ref(), first, text, by_index)
            .unwrap();
    }

    #[test]
    fn a_run_of_text_takes_64_bytes_beside_its_characters() {
        assert_eq!(std::mem::size_of::<Run<String>>(), 64);
    }

    #[test]
    fn inserts_and_removes_by_position() {
        let mut s = Sequence::new();
        type_at(&mut s, None, eid(0, 1), "hello");
        let after_o = s.id_at(4);
        type_at(&mut s, after_o, eid(0, 6), " world");
        assert_eq!(s.to_text(), "hello world");
        assert_eq!(s.run_count(), 1, "typing on joins the run");
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
    fn typing_one_character_at_a_time_is_one_run() {
        let mut s = Sequence::new();
        let mut after = None;
        for (k, c) in "a sentence typed one key at a time".chars().enumerate() {
            let id = eid(0, k as u64 + 1);
            type_at(&mut s, after, id, &c.to_string());
            after = Some(id);
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
    fn concurrent_runs_between_the_same_origins_order_by_actor_either_way() {
        let mut a = Sequence::new();
        type_at(&mut a, None, eid(0, 1), "xy");
        let x = Some(eid(0, 1));
        let mut b = a.clone();
        // Both insert between x and y, unaware of each other.
        let y = Some(eid(0, 2));
        let insert = |s: &mut Sequence<String>, actor: u32, text: &str| {
            s.insert(x.as_ref(), y.as_ref(), eid(actor, 1), text, by_index)
                .unwrap();
        };
        insert(&mut a, 1, "AA");
        insert(&mut a, 2, "BB");
        insert(&mut b, 2, "BB");
        insert(&mut b, 1, "AA");
        assert_eq!(a.to_text(), b.to_text());
        assert_eq!(a.to_text(), "xAABBy");
    }

    #[test]
    fn words_typed_backwards_at_one_place_at_once_stay_whole() {
        // Two devices type a word each backwards (each key before the last
        // one) between x and y, unaware of each other; delivered in either
        // order, neither word is cut by the other.
        let mut base = Sequence::new();
        type_at(&mut base, None, eid(0, 1), "xy");
        let word = |actor: u32, text: &str| -> Vec<(Option<Eid>, Option<Eid>, Eid, String)> {
            // The author's own view: each key goes after x, before the
            // key typed last (or y).
            let mut before = Some(eid(0, 2));
            let mut ops = Vec::new();
            for (k, c) in text.chars().rev().enumerate() {
                let id = eid(actor, k as u64 + 1);
                ops.push((Some(eid(0, 1)), before, id, c.to_string()));
                before = Some(id);
            }
            ops
        };
        let (abc, xyz) = (word(1, "abc"), word(2, "uvw"));
        let apply = |s: &mut Sequence<String>, ops: &[(Option<Eid>, Option<Eid>, Eid, String)]| {
            for (after, before, id, text) in ops {
                s.insert(after.as_ref(), before.as_ref(), *id, text, by_index)
                    .unwrap();
            }
        };
        let mut one = base.clone();
        apply(&mut one, &abc);
        apply(&mut one, &xyz);
        let mut two = base.clone();
        apply(&mut two, &xyz);
        apply(&mut two, &abc);
        assert_eq!(one.to_text(), two.to_text());
        assert_eq!(one.to_text(), "xabcuvwy");
    }

    #[test]
    fn unknown_reference_is_an_error_and_changes_nothing() {
        let mut s: Sequence<String> = Sequence::new();
        let err = s.insert(Some(&eid(0, 9)), None, eid(0, 10), "z", by_index);
        assert_eq!(err, Err(SeqError::UnknownElement(eid(0, 9))));
        let err = s.insert(None, Some(&eid(3, 1)), eid(0, 10), "z", by_index);
        assert_eq!(err, Err(SeqError::UnknownElement(eid(3, 1))));
        assert_eq!(
            s.remove(&[(eid(1, 1), 1)]),
            Err(SeqError::UnknownElement(eid(1, 1)))
        );
        assert_eq!(s.total_len(), 0);
        type_at(&mut s, None, eid(0, 1), "abc");
        // Any overlap with an existing run is a duplicate.
        assert_eq!(
            s.insert(None, None, eid(0, 3), "zz", by_index),
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
    fn a_right_origin_not_after_the_left_origin_is_refused() {
        let mut s = Sequence::new();
        type_at(&mut s, None, eid(0, 1), "abc");
        let misordered = |s: &mut Sequence<String>, after: u64, before: u64| {
            s.insert(
                Some(&eid(0, after)),
                Some(&eid(0, before)),
                eid(1, 1),
                "x",
                by_index,
            )
        };
        assert_eq!(
            misordered(&mut s, 3, 1),
            Err(SeqError::MisorderedOrigins {
                after: eid(0, 3),
                before: eid(0, 1)
            })
        );
        assert!(matches!(
            misordered(&mut s, 2, 2),
            Err(SeqError::MisorderedOrigins { .. })
        ));
        assert_eq!(s.to_text(), "abc");
        assert_eq!(misordered(&mut s, 1, 3), Ok(1));
    }

    #[test]
    fn large_sequences_split_nodes_and_stay_consistent() {
        let mut s = Sequence::new();
        let mut expected: Vec<char> = Vec::new();
        for i in 0..20_000u64 {
            let c = char::from(b'a' + (i % 26) as u8);
            let pos = (i as usize * 7919) % (expected.len() + 1);
            let after = if pos == 0 { None } else { s.id_at(pos - 1) };
            type_at(&mut s, after, eid(0, i + 1), &c.to_string());
            expected.insert(pos, c);
        }
        assert!(s.height >= 2, "height {}", s.height);
        assert_eq!(s.to_text(), expected.iter().collect::<String>());
        // Order across leaves and inner nodes: an element precedes every
        // later one and follows every earlier one.
        for (i, j) in [(0, 19_999), (17, 9_000), (4_000, 4_001), (12_345, 19_000)] {
            let (a, b) = (s.id_at(i), s.id_at(j));
            assert_eq!(s.check_origins(a.as_ref(), b.as_ref()), Ok(()));
            assert!(s.check_origins(b.as_ref(), a.as_ref()).is_err());
        }
        // A big single insert becomes several runs of at most MAX_RUN.
        let tail = s.last_id();
        type_at(&mut s, tail, eid(1, 1), &"z".repeat(3000));
        assert_eq!(s.len(), 23_000);
        assert!(s.runs().all(|r| r.len() as usize <= MAX_RUN));
        assert_eq!(s.last_id(), Some(eid(1, 3000)));
        let rebuilt = Sequence::from_runs(s.runs().cloned()).unwrap();
        assert_eq!(rebuilt.to_text(), s.to_text());
        assert_eq!(rebuilt.id_at(4321), s.id_at(4321));
        assert_eq!(rebuilt.visible_ranges(100, 50), s.visible_ranges(100, 50));
    }

    /// One element of the model: id, left origin, right origin, value,
    /// removed.
    type Elem = (Eid, Option<Eid>, Option<Eid>, char, bool);

    /// The sequence element by element, YATA's rule applied one element at
    /// a time as Yjs writes it: what the runs must always agree with.
    #[derive(Default, Clone)]
    struct Model {
        elems: Vec<Elem>,
    }

    impl Model {
        fn position(&self, id: Eid) -> usize {
            self.elems.iter().position(|e| e.0 == id).unwrap()
        }

        fn integrate(&mut self, id: Eid, origin: Option<Eid>, right: Option<Eid>, c: char) {
            let start = origin.map_or(0, |o| self.position(o) + 1);
            let end = right.map_or(self.elems.len(), |r| self.position(r));
            let mut left = start;
            let mut passed = std::collections::HashSet::new();
            let mut conflicting = std::collections::HashSet::new();
            let mut i = start;
            while i < end {
                let o = self.elems[i];
                passed.insert(o.0);
                conflicting.insert(o.0);
                if o.1 == origin {
                    if o.0.actor < id.actor {
                        left = i + 1;
                        conflicting.clear();
                    } else if o.2 == right {
                        break;
                    }
                } else if o.1.is_some_and(|p| passed.contains(&p)) {
                    if !o.1.is_some_and(|p| conflicting.contains(&p)) {
                        left = i + 1;
                        conflicting.clear();
                    }
                } else {
                    break;
                }
                i += 1;
            }
            self.elems.insert(left, (id, origin, right, c, false));
        }

        fn insert(&mut self, after: Option<Eid>, before: Option<Eid>, first: Eid, text: &str) {
            let mut origin = after;
            for (k, c) in text.chars().enumerate() {
                let id = first.plus(k as u64);
                self.integrate(id, origin, before, c);
                origin = Some(id);
            }
        }

        fn text(&self) -> String {
            self.elems.iter().filter(|e| !e.4).map(|e| e.3).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Insert `len` characters by `actor` after the visible element at
        /// `pos` (modulo the length; the start when the text is empty or
        /// `at_start`), before the element `skip` places after it (a
        /// concurrent insertion may have come between).
        Insert {
            actor: u32,
            pos: usize,
            len: usize,
            at_start: bool,
            skip: usize,
        },
        /// `actor` types on right after its last inserted element.
        Continue { actor: u32, len: usize },
        /// `actor` types backwards: before its last inserted element, after
        /// that one's left origin.
        Backwards { actor: u32 },
        /// Remove up to `len` visible elements from `pos`.
        Remove { pos: usize, len: usize },
        /// Remove an element by id, whether it exists or not.
        RemoveId { actor: u32, counter: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u32..3, any::<usize>(), 1usize..40, any::<bool>(), 0usize..3).prop_map(
                |(actor, pos, len, at_start, skip)| Step::Insert { actor, pos, len, at_start, skip }
            ),
            3 => (0u32..3, 1usize..4).prop_map(|(actor, len)| Step::Continue { actor, len }),
            2 => (0u32..3).prop_map(|actor| Step::Backwards { actor }),
            1 => (any::<usize>(), 1usize..30).prop_map(|(pos, len)| Step::Remove { pos, len }),
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
            // Each actor's last inserted element, with its left origin.
            let mut last: [Option<(Eid, Option<Eid>)>; 3] = [None; 3];
            let letters = |len: usize, actor: u32| -> String {
                (0..len).map(|k| char::from(b'a' + ((k + actor as usize * 7) % 26) as u8)).collect()
            };
            for step in steps {
                let (after, before, actor, len) = match step {
                    Step::Insert { actor, pos, len, at_start, skip } => {
                        let after = if at_start || s.is_empty() { None } else { s.id_at(pos % s.len()) };
                        let mut before = s.next_id(after.as_ref());
                        for _ in 0..skip {
                            if let Some(b) = before { before = s.next_id(Some(&b)); }
                        }
                        (after, before, actor, len)
                    }
                    Step::Continue { actor, len } => {
                        let Some((after, _)) = last[actor as usize] else { continue };
                        (Some(after), s.next_id(Some(&after)), actor, len)
                    }
                    Step::Backwards { actor } => {
                        let Some((previous, origin)) = last[actor as usize] else { continue };
                        (origin, Some(previous), actor, 1)
                    }
                    Step::Remove { pos, len } => {
                        if s.is_empty() { continue; }
                        let ranges = s.visible_ranges(pos % s.len(), len);
                        let removed = s.remove(&ranges).unwrap();
                        let mut model_removed = 0;
                        for (first, n) in &ranges {
                            for k in 0..*n {
                                let i = model.position(first.plus(k));
                                prop_assert!(!model.elems[i].4);
                                model.elems[i].4 = true;
                                model_removed += 1;
                            }
                        }
                        prop_assert_eq!(removed, model_removed);
                        continue;
                    }
                    Step::RemoveId { actor, counter } => {
                        let id = eid(actor, counter);
                        let exists = model.elems.iter().any(|e| e.0 == id);
                        let result = s.remove(&[(id, 1)]);
                        prop_assert_eq!(result.is_ok(), exists);
                        if exists {
                            let i = model.position(id);
                            model.elems[i].4 = true;
                        }
                        continue;
                    }
                };
                let first = eid(actor, counters[actor as usize] + 1);
                counters[actor as usize] += len as u64;
                let content = letters(len, actor);
                s.insert(after.as_ref(), before.as_ref(), first, &content, by_index).unwrap();
                model.insert(after, before, first, &content);
                let origin = if len == 1 { after } else { Some(first.plus(len as u64 - 2)) };
                last[actor as usize] = Some((first.plus(len as u64 - 1), origin));
                prop_assert_eq!(s.to_text(), model.text());
            }
            prop_assert_eq!(s.total_len(), model.elems.len());
            let visible: Vec<Eid> = model.elems.iter().filter(|e| !e.4).map(|e| e.0).collect();
            let from_runs: Vec<Eid> = s.chars().map(|(id, _)| id).collect();
            prop_assert_eq!(&from_runs, &visible);
            for (i, id) in visible.iter().enumerate().step_by(7) {
                prop_assert_eq!(s.id_at(i), Some(*id));
                prop_assert!(s.is_visible(id));
            }
            prop_assert_eq!(s.last_id(), visible.last().copied());
            // Every element, in order, with its origins: the tombstones too.
            let all: Vec<(Eid, Option<Eid>, Option<Eid>, bool)> = s
                .runs()
                .flat_map(|r| (0..u64::from(r.len())).map(move |k| {
                    let origin = if k == 0 { r.origin() } else { Some(r.id().plus(k - 1)) };
                    (r.id().plus(k), origin, r.right(), r.deleted())
                }))
                .collect();
            let model_all: Vec<(Eid, Option<Eid>, Option<Eid>, bool)> =
                model.elems.iter().map(|e| (e.0, e.1, e.2, e.4)).collect();
            prop_assert_eq!(all, model_all);
            // Rebuilt from its runs (as a snapshot restores it), the
            // sequence reads and edits the same.
            let mut rebuilt = Sequence::from_runs(s.runs().cloned()).unwrap();
            prop_assert_eq!(rebuilt.to_text(), s.to_text());
            prop_assert_eq!(rebuilt.total_len(), s.total_len());
            for k in 0..4u64 {
                let after = if s.is_empty() { None } else { s.id_at((k as usize * 37) % s.len()) };
                let before = s.next_id(after.as_ref());
                prop_assert_eq!(rebuilt.next_id(after.as_ref()), before);
                let id = eid(3, k * 10 + 1);
                s.insert(after.as_ref(), before.as_ref(), id, "new", by_index).unwrap();
                rebuilt.insert(after.as_ref(), before.as_ref(), id, "new", by_index).unwrap();
                if !s.is_empty() {
                    let ranges = s.visible_ranges((k as usize * 11) % s.len(), 5);
                    prop_assert_eq!(&rebuilt.visible_ranges((k as usize * 11) % s.len(), 5), &ranges);
                    s.remove(&ranges).unwrap();
                    rebuilt.remove(&ranges).unwrap();
                }
                prop_assert_eq!(rebuilt.to_text(), s.to_text());
            }
        }
    }
}
