//! A replica: every entity of one device, its version vector, the operations
//! it applied and not yet handed over, and the causal buffer for remote operations.

use std::collections::{BTreeMap, HashMap};

use nomade_wire::{
    ActorId, CrdtOperation, Deps, Edit, ElementId, EntityType, Hash32, IdRange, SmolStr,
    SyncOperation, Value, VersionVector,
};

use crate::actors::{ActorIdx, Actors};
use crate::document::Document;
use crate::error::CrdtError;
use crate::sequence::{Eid, SeqError, Sequence};
use crate::subscription::Subscription;

/// Tunables of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Most remote operations held while waiting for their dependencies.
    pub max_buffered: usize,
    /// Most counters a remote operation may be ahead of what was applied of
    /// its actor; one further ahead is refused ([`CrdtError::CounterJump`]).
    pub max_counter_jump: u64,
    /// Most distinct actors (devices) the replica accepts operations from;
    /// an operation from one more is refused ([`CrdtError::TooManyActors`]).
    pub max_actors: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            max_buffered: 100_000,
            max_counter_jump: 1 << 32,
            max_actors: 4096,
        }
    }
}

/// An edit made by the local user, in terms of the current state. It is turned
/// into a [`SyncOperation`] that identifies elements by id, never by index.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalEdit {
    /// Write a document field.
    Set {
        /// The field.
        key: String,
        /// The value.
        value: Value,
    },
    /// Remove a document field.
    Delete {
        /// The field.
        key: String,
    },
    /// Replace `delete` characters at `position` of a document text field by
    /// `insert` (positions and lengths in Unicode scalar values).
    Splice {
        /// The text field.
        field: String,
        /// Where the change starts.
        position: usize,
        /// How many characters are removed.
        delete: usize,
        /// The text inserted.
        insert: String,
    },
    /// Insert an item into a conversation at `index` (0 = first).
    Insert {
        /// The position the new item takes.
        index: usize,
        /// The item.
        value: Value,
    },
    /// Append an item to a conversation: after its last visible item as
    /// the replica holds it when the edit is applied (not at an index read
    /// earlier, which another edit may have changed meanwhile). Finds the
    /// last item without walking the conversation.
    Append {
        /// The item.
        value: Value,
    },
    /// Remove the conversation item at `index`.
    Remove {
        /// The item's position.
        index: usize,
    },
    /// Insert an item into a conversation right after the item `after`,
    /// wherever that item is now (even if it was removed since: the new
    /// item takes its place), or first when `after` is `None`. Unlike an
    /// index, an item id read earlier still means the same place after
    /// other devices' edits. The new item's id is its operation's author
    /// and counter.
    InsertAfter {
        /// The item to insert after (`None`: at the start).
        after: Option<ElementId>,
        /// The item.
        value: Value,
    },
    /// Remove the conversation item `item`, wherever it is now; nothing
    /// if it is removed already.
    RemoveItem {
        /// The item's id.
        item: ElementId,
    },
}

impl LocalEdit {
    fn name(&self) -> &'static str {
        match self {
            LocalEdit::Set { .. } => "Set",
            LocalEdit::Delete { .. } => "Delete",
            LocalEdit::Splice { .. } => "Splice",
            LocalEdit::Insert { .. } => "Insert",
            LocalEdit::Append { .. } => "Append",
            LocalEdit::Remove { .. } => "Remove",
            LocalEdit::InsertAfter { .. } => "InsertAfter",
            LocalEdit::RemoveItem { .. } => "RemoveItem",
        }
    }
}

/// One entity's state.
#[derive(Debug, Clone)]
pub(crate) enum Entity {
    Document(Document),
    Conversation(Sequence<Vec<Value>>),
}

impl Entity {
    fn new(t: EntityType) -> Entity {
        match t {
            EntityType::Conversation => Entity::Conversation(Sequence::new()),
            _ => Entity::Document(Document::default()),
        }
    }
}

/// The key of an entity: entities of different types never share state, even
/// with the same id, so concurrent creation can never conflict on type.
pub type EntityKey = (EntityType, String);

/// An entity key seen as its parts, so that maps keyed by [`EntityKey`] can
/// be searched with a borrowed id (`&(entity_type, id) as &dyn EntityKeyView`)
/// instead of an allocated one.
pub trait EntityKeyView {
    /// The entity's type and id.
    fn parts(&self) -> (EntityType, &str);
}

impl EntityKeyView for EntityKey {
    fn parts(&self) -> (EntityType, &str) {
        (self.0, &self.1)
    }
}

impl EntityKeyView for (EntityType, &str) {
    fn parts(&self) -> (EntityType, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn EntityKeyView + 'a> for EntityKey {
    fn borrow(&self) -> &(dyn EntityKeyView + 'a) {
        self
    }
}

impl PartialEq for dyn EntityKeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn EntityKeyView + '_ {}

impl PartialOrd for dyn EntityKeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn EntityKeyView + '_ {
    /// The order of [`EntityKey`]: type, then id byte-wise.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// Raises `actor`'s entry of `vv` to at least `counter`, cloning the actor's
/// name only when it is new to `vv` (so the common case allocates nothing).
pub fn raise_counter(vv: &mut VersionVector, actor: &ActorId, counter: u64) {
    match vv.get_mut(actor) {
        Some(c) => *c = (*c).max(counter),
        None => {
            vv.insert(actor.clone(), counter);
        }
    }
}

/// The highest last counter of each actor among `ops`: what a device that
/// holds them holds at least (each actor's counters are applied in order,
/// without gaps). A device id is copied once per actor, not per operation.
pub fn last_counters<'a>(ops: impl IntoIterator<Item = &'a SyncOperation>) -> VersionVector {
    let mut vv = VersionVector::new();
    for op in ops {
        raise_counter(&mut vv, &op.actor_id, op.operation.last_counter());
    }
    vv
}

/// The Lamport number of an operation (of its first element): one more
/// than the sum of its deps, saturating. Grows along causality within an
/// entity, so a field write's number exceeds that of every write it
/// supersedes; concurrent values of a field are ordered by it.
pub fn lamport(op: &SyncOperation) -> u64 {
    op.operation
        .deps
        .values()
        .fold(1u64, |acc, c| acc.saturating_add(*c))
}

/// Whether `op` is a `skip` (counters standing for operations on entities
/// the receiver does not hold).
fn is_skip(op: &SyncOperation) -> bool {
    matches!(op.operation.edit, Edit::Skip { .. })
}

/// Drops the elements of a run that a replica which applied its actor's
/// counters up to `known` (at least the run's first counter, less than its
/// last) has already: what is left is the same run from `known + 1` on,
/// following element `known` (see docs/PROTOCOL.md, "Operations": a run is
/// shorthand for one-element operations, each following the previous).
pub fn trim_front(mut op: SyncOperation, known: u64) -> SyncOperation {
    let first = op.operation.counter;
    if known < first {
        return op;
    }
    let skip = known - first + 1;
    let after = Some(ElementId {
        actor: op.actor_id.clone(),
        counter: known,
    });
    match &mut op.operation.edit {
        Edit::Insert {
            after: a, values, ..
        } => {
            values.drain(..(skip as usize).min(values.len()));
            *a = after;
        }
        Edit::InsertText { after: a, text, .. } => {
            let cut = text
                .char_indices()
                .nth(skip as usize)
                .map_or(text.len(), |(i, _)| i);
            *text = SmolStr::from(&text[cut..]);
            *a = after;
        }
        Edit::Remove { ranges, .. } => {
            let mut left = skip;
            let mut kept = Vec::with_capacity(ranges.len());
            for r in ranges.drain(..) {
                if left >= r.len {
                    left -= r.len;
                    continue;
                }
                kept.push(IdRange {
                    counter: r.counter + left,
                    len: r.len - left,
                    actor: r.actor,
                });
                left = 0;
            }
            *ranges = kept;
        }
        Edit::Set { .. } | Edit::Delete { .. } => {}
        Edit::Skip { span } => {
            // Names no entity: no deps to follow the part before.
            *span -= skip.min(*span);
            op.operation.counter = known + 1;
            return op;
        }
    }
    op.operation.deps.insert(op.actor_id.clone(), known);
    op.operation.counter = known + 1;
    op
}

/// Cuts a run after counter `last` (at least its first counter, less than
/// its last): what is left is the same run's first elements, up to `last`
/// (a run is shorthand for one-element operations, so its first ones are
/// an operation of their own). Field writes cover one counter and are
/// never cut.
pub fn truncate_run(mut op: SyncOperation, last: u64) -> SyncOperation {
    let keep = last.saturating_sub(op.operation.counter).saturating_add(1);
    match &mut op.operation.edit {
        Edit::Insert { values, .. } => {
            values.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Edit::InsertText { text, .. } => {
            let cut = text
                .char_indices()
                .nth(usize::try_from(keep).unwrap_or(usize::MAX))
                .map_or(text.len(), |(i, _)| i);
            *text = SmolStr::from(&text[..cut]);
        }
        Edit::Remove { ranges, .. } => {
            let mut left = keep;
            ranges.retain_mut(|r| {
                if left == 0 {
                    return false;
                }
                r.len = r.len.min(left);
                left -= r.len;
                true
            });
        }
        Edit::Skip { span } => *span = keep.min(*span),
        Edit::Set { .. } | Edit::Delete { .. } => {}
    }
    op
}

/// What became of an operation its actor's counters already cover
/// ([`Replica::apply_known`]). Not boxed: made only while an entity is
/// filled in, and moved straight into the causal buffer.
#[allow(clippy::large_enum_variant)]
enum Known {
    /// Held now: how many operations were applied (0 or 1).
    Held(usize),
    /// Its entity lacks what its `deps` name: it waits.
    Waiting(SyncOperation),
}

/// Ranges `(first id, length)` as the wire's `IdRange`s.
fn ranges_of(ranges: &[(Eid, u64)], actors: &Actors) -> Vec<IdRange> {
    ranges
        .iter()
        .map(|(first, len)| IdRange {
            actor: actors.id(first.actor),
            counter: first.counter,
            len: *len,
        })
        .collect()
}

/// All the entities of one device, with causal delivery of remote operations.
///
/// ```
/// use nomade_crdt::{LocalEdit, Replica};
/// use nomade_wire::EntityType;
///
/// let mut laptop = Replica::new("laptop");
/// let mut phone = Replica::new("phone");
/// let ops = laptop.apply_local(EntityType::Document, "note", LocalEdit::Splice {
///     field: "body".into(), position: 0, delete: 0, insert: "hello".into() }, 0)?;
/// for op in ops {
///     phone.apply_remote(op)?;
/// }
/// assert_eq!(phone.text("note", "body").as_deref(), Some("hello"));
/// assert_eq!(phone.state_hash(), laptop.state_hash());
/// # Ok::<(), nomade_crdt::CrdtError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Replica {
    actor: ActorId,
    config: ReplicaConfig,
    pub(crate) actors: Actors,
    pub(crate) vv: VersionVector,
    pub(crate) entities: BTreeMap<EntityKey, Entity>,
    /// The operations applied since the last [`Replica::take_applied`], in
    /// the order applied (a causal order): for the caller to store. The
    /// replica keeps no history of its own.
    pub(crate) applied: Vec<SyncOperation>,
    /// Remote operations waiting for their dependencies, per actor by counter.
    buffer: HashMap<ActorId, BTreeMap<u64, SyncOperation>>,
    buffered: usize,
    /// Per entity: for each actor, the counter of its latest operation on it.
    pub(crate) entity_vv: BTreeMap<EntityKey, VersionVector>,
    /// The state hash, once computed for the current state: a handshake and
    /// the end of a sync ask for it, and it walks the whole state.
    state_hash: std::sync::OnceLock<Hash32>,
    /// Actors whose history is closed (a revoked device): the last counter
    /// of each that is still applied. See [`Replica::close_actor`].
    closed: HashMap<ActorId, u64>,
    /// Remote operations (or parts of runs) refused because their actor's
    /// history was closed before them.
    refused_after_close: u64,
    /// Per actor, the first counter of a `skip` applied since the
    /// subscription last grew: counters from there on may hide operations
    /// on entities subscribed to later. See [`Replica::widen`].
    first_skips: VersionVector,
    /// Per actor whose history is being filled in for entities subscribed
    /// to since (only those), the counter up to which everything is held
    /// under the current subscription: below the version vector.
    refill: VersionVector,
    /// Per actor being filled in, the counter up to which it is: its
    /// version vector entry when the subscription grew (what came after
    /// was sent for the grown subscription).
    refill_until: VersionVector,
    /// Whether `first_skips` or `refill` changed since the last
    /// [`Replica::take_subscription_changes`].
    subscription_changed: bool,
}

impl Replica {
    /// An empty replica for the device `actor`.
    pub fn new(actor: impl Into<ActorId>) -> Self {
        Self::with_config(actor, ReplicaConfig::default())
    }

    /// An empty replica with explicit tunables.
    pub fn with_config(actor: impl Into<ActorId>, config: ReplicaConfig) -> Self {
        Replica {
            actor: actor.into(),
            config,
            actors: Actors::default(),
            vv: VersionVector::new(),
            entities: BTreeMap::new(),
            applied: Vec::new(),
            buffer: HashMap::new(),
            buffered: 0,
            entity_vv: BTreeMap::new(),
            state_hash: std::sync::OnceLock::new(),
            closed: HashMap::new(),
            refused_after_close: 0,
            first_skips: VersionVector::new(),
            refill: VersionVector::new(),
            refill_until: VersionVector::new(),
            subscription_changed: false,
        }
    }

    /// The subscription grew (docs/PROTOCOL.md, "Subscriptions"): the
    /// counters of each actor from its first `skip` on may hide operations
    /// on the entities added, so they are held again only as far as before
    /// it, until they are received again ([`Replica::request_vector`]).
    /// Operations received again that this replica holds are recognised by
    /// their entity and change nothing; those of entities it lacked are
    /// applied.
    pub fn widen(&mut self) {
        for (actor, first) in std::mem::take(&mut self.first_skips) {
            let held = first.saturating_sub(1);
            let known = self.vv.get(&actor).copied().unwrap_or(0);
            if held < known {
                let frontier = self.refill.entry(actor.clone()).or_insert(held);
                *frontier = (*frontier).min(held);
                let until = self.refill_until.entry(actor).or_insert(known);
                *until = (*until).max(known);
            }
        }
        // Skips waiting in the causal buffer were sent for the smaller
        // subscription and may stand for operations now wanted: dropped.
        // Their counters come again, being beyond the version vector.
        for waiting in self.buffer.values_mut() {
            waiting.retain(|_, op| !is_skip(op));
        }
        self.buffer.retain(|_, waiting| !waiting.is_empty());
        self.buffered = self.buffer.values().map(BTreeMap::len).sum();
        self.subscription_changed = true;
    }

    /// What to ask peers with: the version vector, lowered for the actors
    /// whose history is being filled in ([`Replica::widen`]).
    pub fn request_vector(&self) -> VersionVector {
        let mut vv = self.vv.clone();
        for (actor, &held) in &self.refill {
            match held {
                0 => vv.remove(actor),
                c => vv.insert(actor.clone(), c),
            };
        }
        vv
    }

    /// Per actor, the first counter of a `skip` applied since the
    /// subscription last grew (for the caller to keep with the history).
    pub fn first_skips(&self) -> &VersionVector {
        &self.first_skips
    }

    /// Per actor being filled in, how far everything is held under the
    /// current subscription (empty when nothing is being filled in).
    pub fn refill_frontier(&self) -> &VersionVector {
        &self.refill
    }

    /// Per actor being filled in, the counter up to which it is
    /// ([`Replica::refill_frontier`] moves on towards it).
    pub fn refill_until(&self) -> &VersionVector {
        &self.refill_until
    }

    /// Restores what [`Replica::first_skips`], [`Replica::refill_frontier`]
    /// and [`Replica::refill_until`] said when they were stored: the first
    /// skips are merged with those the replay found, each refill entry kept
    /// where still below where it goes (at most the version vector).
    pub fn restore_subscription_state(
        &mut self,
        first_skips: VersionVector,
        refill: VersionVector,
        until: VersionVector,
    ) {
        for (actor, first) in first_skips {
            let at = self.first_skips.entry(actor).or_insert(first);
            *at = (*at).min(first);
        }
        self.refill_until = until
            .into_iter()
            .filter_map(|(a, u)| {
                let known = self.vv.get(&a).copied().unwrap_or(0);
                let held = refill.get(&a).copied()?;
                let u = u.min(known);
                (held < u).then_some((a, u))
            })
            .collect();
        self.refill = refill
            .into_iter()
            .filter(|(a, _)| self.refill_until.contains_key(a))
            .collect();
    }

    /// Whether the first skips or the refill frontier changed since the
    /// last call (for the caller to store them).
    pub fn take_subscription_changes(&mut self) -> bool {
        std::mem::take(&mut self.subscription_changed)
    }

    /// Notes that `actor`'s counters `counter..=last` are held under the
    /// current subscription: the refill frontier moves on when they follow it.
    fn refilled(&mut self, actor: &ActorId, counter: u64, last: u64) {
        let Some(held) = self.refill.get_mut(actor) else {
            return;
        };
        if counter > *held + 1 || last <= *held {
            return;
        }
        *held = last;
        let until = self.refill_until.get(actor).copied().unwrap_or(0);
        if last >= until {
            self.refill.remove(actor);
            self.refill_until.remove(actor);
        }
        self.subscription_changed = true;
    }

    /// Notes a `skip` of `actor` from `counter`.
    fn note_skip(&mut self, actor: &ActorId, counter: u64) {
        match self.first_skips.get_mut(actor) {
            Some(first) if *first <= counter => {}
            Some(first) => {
                *first = counter;
                self.subscription_changed = true;
            }
            None => {
                self.first_skips.insert(actor.clone(), counter);
                self.subscription_changed = true;
            }
        }
    }

    /// An operation whose counters its actor's version vector entry
    /// covers: a duplicate, unless its entity lacks it (the entity was
    /// subscribed to after the operation was skipped: it is filled in
    /// now, [`Replica::widen`]). Applied when the entity holds everything
    /// its `deps` name ([`Known::Held`], with how many operations were
    /// applied); otherwise handed back to wait ([`Known::Waiting`]).
    fn apply_known(&mut self, op: SyncOperation, last: u64) -> Result<Known, CrdtError> {
        if is_skip(&op) {
            self.note_skip(&op.actor_id, op.operation.counter);
            return Ok(Known::Held(0));
        }
        let have = self
            .entity_vv
            .get(&(op.entity_type, op.entity_id.as_str()) as &dyn EntityKeyView)
            .and_then(|vv| vv.get(&op.actor_id).copied())
            .unwrap_or(0);
        if last <= have {
            return Ok(Known::Held(0));
        }
        let Some(op) = self.within_close(op) else {
            return Ok(Known::Held(0));
        };
        // Cloned on this path only (filling in an entity): a waiting
        // operation keeps its first counter, by which it waits its turn.
        let rest = trim_front(op.clone(), have);
        if !self.deps_applied(&rest) {
            return Ok(Known::Waiting(op));
        }
        self.check_applicable(&rest)?;
        let last = rest.operation.last_counter();
        self.apply_ready(rest, last);
        Ok(Known::Held(1))
    }

    /// Receives an operation whose counters its actor's version vector
    /// entry covers ([`Replica::apply_known`]). While the actor is being
    /// filled in, its operations are taken in the order of their counters
    /// from the refill frontier on (those further on, or whose entity's
    /// history has not come yet, wait in the causal buffer), so that the
    /// frontier moves on as each is held.
    fn receive_known(&mut self, op: SyncOperation, last: u64) -> Result<usize, CrdtError> {
        let actor = op.actor_id.clone();
        let counter = op.operation.counter;
        let Some(&frontier) = self.refill.get(&actor) else {
            // Not being filled in: a duplicate (or a part of an entity it
            // lacks, applied if it can be).
            return match self.apply_known(op, last)? {
                Known::Held(0) | Known::Waiting(_) => Ok(0),
                Known::Held(n) => Ok(n + self.drain_buffer()),
            };
        };
        if last <= frontier {
            return Ok(0);
        }
        if counter > frontier + 1 {
            self.hold(op)?;
            return Ok(0);
        }
        match self.apply_known(op, last)? {
            Known::Held(n) => {
                self.refilled(&actor, counter, last);
                Ok(n + self.drain_buffer())
            }
            Known::Waiting(op) => {
                self.hold(op)?;
                Ok(0)
            }
        }
    }

    /// Puts `op` in the causal buffer, by its actor and first counter (of
    /// two with the same start, the longer run stays).
    fn hold(&mut self, op: SyncOperation) -> Result<(), CrdtError> {
        let waiting = self.buffer.entry(op.actor_id.clone()).or_default();
        if let Some(held) = waiting.get_mut(&op.operation.counter) {
            // The same start: keep the longer run (a run and its first
            // keystroke may both arrive, the keystroke first).
            // Of two as long, an operation stays rather than a skip of its
            // counters.
            let (new_last, held_last) =
                (op.operation.last_counter(), held.operation.last_counter());
            if new_last > held_last || (new_last == held_last && is_skip(held) && !is_skip(&op)) {
                *held = op;
            }
            return Ok(());
        }
        if self.buffered >= self.config.max_buffered {
            return Err(CrdtError::BufferFull {
                capacity: self.config.max_buffered,
            });
        }
        waiting.insert(op.operation.counter, op);
        self.buffered += 1;
        Ok(())
    }

    /// Closes `actor`'s history at `last`: from now on its remote operations
    /// beyond counter `last` are refused (dropped and counted, not an
    /// error: whoever relays them may not know yet), a run that straddles
    /// `last` is cut there, and such operations waiting in the causal
    /// buffer are dropped. Used for a revoked device (docs/PROTOCOL.md,
    /// "Revocation"): what it did before stays, nothing after is taken.
    ///
    /// Closing an actor again keeps the higher of the two counters: a
    /// device that applied more of it before it learned of the revocation
    /// raises what every device keeps, so that all converge.
    pub fn close_actor(&mut self, actor: &ActorId, last: u64) {
        let cut = self.closed.get(actor).map_or(last, |&c| c.max(last));
        self.closed.insert(actor.clone(), cut);
        let Some(held) = self.buffer.remove(actor) else {
            return;
        };
        self.buffered -= held.len();
        let kept: BTreeMap<u64, SyncOperation> = held
            .into_iter()
            .filter_map(|(first, op)| self.within_close(op).map(|op| (first, op)))
            .collect();
        if !kept.is_empty() {
            self.buffered += kept.len();
            self.buffer.insert(actor.clone(), kept);
        }
    }

    /// `op` as far as its actor's closed history takes it (see
    /// [`Replica::close_actor`]): as it is when it ends by the cut, cut
    /// there when it straddles it, `None` when it starts after it; either
    /// of the last two is counted.
    fn within_close(&mut self, op: SyncOperation) -> Option<SyncOperation> {
        let Some(&cut) = self.closed.get(&op.actor_id) else {
            return Some(op);
        };
        if op.operation.last_counter() <= cut {
            return Some(op);
        }
        self.refused_after_close += 1;
        (op.operation.counter <= cut).then(|| truncate_run(op, cut))
    }

    /// Closes every actor `other` closed, where `other` closed it (a
    /// replica rebuilt from a snapshot or from disk keeps the closures of
    /// the one it replaces).
    pub fn close_actors_of(&mut self, other: &Replica) {
        for (actor, &cut) in &other.closed {
            self.close_actor(actor, cut);
        }
    }

    /// The closed actors and the last counter applied of each
    /// ([`Replica::close_actor`]).
    pub fn closed_actors(&self) -> &HashMap<ActorId, u64> {
        &self.closed
    }

    /// How many remote operations (or tails of runs) were refused because
    /// their actor's history was closed before them.
    pub fn refused_after_close(&self) -> u64 {
        self.refused_after_close
    }

    /// The first closed actor whose counter in `vv` goes beyond where its
    /// history was closed, with both counters: a state (a snapshot) that
    /// holds operations this replica refuses.
    pub fn beyond_closed(&self, vv: &VersionVector) -> Option<(ActorId, u64, u64)> {
        self.closed.iter().find_map(|(actor, &cut)| {
            let held = vv.get(actor).copied().unwrap_or(0);
            (held > cut).then(|| (actor.clone(), held, cut))
        })
    }

    /// This device's actor id.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The replica's version vector: for each actor, the highest counter applied.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The version vector of one entity: for each actor, the counter of its
    /// latest operation on that entity.
    pub fn entity_version_vector(&self, entity_type: EntityType, id: &str) -> VersionVector {
        self.entity_vv
            .get(&(entity_type, id.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// How many remote operations wait for their dependencies.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The operations applied (local edits and remote operations that left
    /// the causal buffer) since the last [`Replica::take_applied`], in the
    /// order applied, which is a causal order.
    pub fn applied(&self) -> &[SyncOperation] {
        &self.applied
    }

    /// Forgets the operations applied since the last [`Replica::take_applied`]
    /// (a caller replaying what it stored already).
    pub fn discard_applied(&mut self) {
        self.applied.clear();
    }

    /// Hands over the operations applied since the last call, for the
    /// caller to store or send: history lives with the caller (a database),
    /// not in the replica, whose memory holds the current state only.
    pub fn take_applied(&mut self) -> Vec<SyncOperation> {
        std::mem::take(&mut self.applied)
    }

    /// Applies a local edit and returns the operations to send to peers (one
    /// or two: a splice that deletes and inserts makes a removal and an insertion).
    pub fn apply_local(
        &mut self,
        entity_type: EntityType,
        entity_id: &str,
        edit: LocalEdit,
        now_ms: i64,
    ) -> Result<Vec<SyncOperation>, CrdtError> {
        let key = (entity_type, entity_id.to_string());
        let wrong = |edit: &LocalEdit| CrdtError::WrongEntityType {
            edit: edit.name(),
            entity_type,
        };
        let edits: Vec<Edit> = {
            let entity = self.entities.get(&key);
            let no_items = Sequence::new();
            let conversation = match entity {
                Some(Entity::Conversation(s)) => s,
                _ => &no_items,
            };
            match (&edit, entity_type) {
                (LocalEdit::Set { key, value }, EntityType::Document) => {
                    vec![Edit::Set {
                        key: key.clone(),
                        value: value.clone(),
                    }]
                }
                (LocalEdit::Delete { key }, EntityType::Document) => {
                    vec![Edit::Delete { key: key.clone() }]
                }
                (
                    LocalEdit::Splice {
                        field,
                        position,
                        delete,
                        insert,
                    },
                    EntityType::Document,
                ) => {
                    let empty = Sequence::new();
                    let text = match entity {
                        Some(Entity::Document(d)) => d.texts.get(field).unwrap_or(&empty),
                        _ => &empty,
                    };
                    let len = text.len();
                    if *position > len || delete.saturating_add(*position) > len {
                        return Err(CrdtError::IndexOutOfRange {
                            index: position + delete,
                            len,
                        });
                    }
                    let mut out = Vec::new();
                    if *delete > 0 {
                        let targets = text.visible_ranges(*position, *delete);
                        out.push(Edit::Remove {
                            field: Some(field.as_str().into()),
                            ranges: ranges_of(&targets, &self.actors),
                        });
                    }
                    if !insert.is_empty() {
                        let after = position.checked_sub(1).and_then(|p| text.id_at(p));
                        let before = text.next_id(after.as_ref());
                        out.push(Edit::InsertText {
                            field: field.as_str().into(),
                            after: after.map(|e| self.element_id(&e)),
                            before: before.map(|e| self.element_id(&e)),
                            text: insert.as_str().into(),
                        });
                    }
                    out
                }
                (LocalEdit::Insert { index, value }, EntityType::Conversation) => {
                    let seq = conversation;
                    if *index > seq.len() {
                        return Err(CrdtError::IndexOutOfRange {
                            index: *index,
                            len: seq.len(),
                        });
                    }
                    let after = index.checked_sub(1).and_then(|p| seq.id_at(p));
                    vec![self.insert_item(seq, after, value)]
                }
                (LocalEdit::Append { value }, EntityType::Conversation) => {
                    vec![self.insert_item(conversation, conversation.last_id(), value)]
                }
                (LocalEdit::InsertAfter { after, value }, EntityType::Conversation) => {
                    let after = match after {
                        Some(item) => Some(self.known_item(conversation, item)?),
                        None => None,
                    };
                    vec![self.insert_item(conversation, after, value)]
                }
                (LocalEdit::RemoveItem { item }, EntityType::Conversation) => {
                    let target = self.known_item(conversation, item)?;
                    if !conversation.is_visible(&target) {
                        Vec::new()
                    } else {
                        vec![Edit::Remove {
                            field: None,
                            ranges: ranges_of(&[(target, 1)], &self.actors),
                        }]
                    }
                }
                (LocalEdit::Remove { index }, EntityType::Conversation) => {
                    let target = conversation
                        .id_at(*index)
                        .ok_or(CrdtError::IndexOutOfRange {
                            index: *index,
                            len: conversation.len(),
                        })?;
                    vec![Edit::Remove {
                        field: None,
                        ranges: ranges_of(&[(target, 1)], &self.actors),
                    }]
                }
                _ => return Err(wrong(&edit)),
            }
        };
        let mut out = Vec::with_capacity(edits.len());
        for edit in edits {
            let counter = self.vv.get(&self.actor).copied().unwrap_or(0) + 1;
            // The causal context within the entity: what this device has
            // applied of it (a splice's insertion follows its removal).
            let deps = self.entity_vv.get(&key).map(Deps::from).unwrap_or_default();
            let op = SyncOperation {
                entity_id: entity_id.into(),
                entity_type,
                operation: CrdtOperation {
                    counter,
                    deps,
                    edit,
                },
                timestamp: now_ms,
                actor_id: self.actor.clone(),
            };
            self.check_applicable(&op)?;
            self.apply_ready(op.clone(), op.operation.last_counter());
            out.push(op);
        }
        Ok(out)
    }

    /// The insertion of `value` into `conversation` after the item
    /// `after` (`None`: at the start), before what follows it now.
    fn insert_item(
        &self,
        conversation: &Sequence<Vec<Value>>,
        after: Option<Eid>,
        value: &Value,
    ) -> Edit {
        let before = conversation.next_id(after.as_ref());
        Edit::Insert {
            after: after.map(|e| self.element_id(&e)),
            before: before.map(|e| self.element_id(&e)),
            values: vec![value.clone()],
        }
    }

    fn element_id(&self, e: &Eid) -> ElementId {
        ElementId {
            actor: self.actors.id(e.actor),
            counter: e.counter,
        }
    }

    /// The local id of the conversation item `item`, if it was ever in
    /// `conversation`.
    fn known_item(
        &self,
        conversation: &Sequence<Vec<Value>>,
        item: &ElementId,
    ) -> Result<Eid, CrdtError> {
        self.actors
            .get(&item.actor)
            .map(|actor| Eid {
                actor,
                counter: item.counter,
            })
            .filter(|eid| conversation.contains(eid))
            .ok_or_else(|| CrdtError::UnknownItem {
                actor: item.actor.to_string(),
                counter: item.counter,
            })
    }

    fn eid(&mut self, e: &ElementId) -> Eid {
        Eid {
            actor: self.actors.intern(&e.actor),
            counter: e.counter,
        }
    }

    /// A removal's ranges as `(first id, length)`; `None` when one of its
    /// actors is unknown (so it names elements that do not exist).
    fn local_ranges(&self, ranges: &[IdRange]) -> Option<Vec<(Eid, u64)>> {
        ranges
            .iter()
            .map(|r| {
                let actor = self.actors.get(&r.actor)?;
                Some((
                    Eid {
                        actor,
                        counter: r.counter,
                    },
                    r.len,
                ))
            })
            .collect()
    }

    fn invalid(op: &SyncOperation, reason: impl Into<String>) -> CrdtError {
        CrdtError::InvalidOperation {
            actor: op.actor_id.to_string(),
            counter: op.operation.counter,
            reason: reason.into(),
        }
    }

    /// Checks what can be checked without the operation's causal past.
    /// Checks what can be checked of `op` alone; returns its last counter
    /// (computed once: a text insertion counts its characters).
    fn validate_shape(&self, op: &SyncOperation) -> Result<u64, CrdtError> {
        let c = op.operation.counter;
        if op.actor_id.is_empty() {
            return Err(Self::invalid(op, "empty actor id"));
        }
        if c == 0 || c == u64::MAX {
            return Err(Self::invalid(op, "counter must be between 1 and 2^64-2"));
        }
        let span = op.operation.edit.span();
        if span == 0 {
            return Err(Self::invalid(op, "an edit that inserts or removes nothing"));
        }
        let Some(last) = c.checked_add(span - 1).filter(|&last| last != u64::MAX) else {
            return Err(Self::invalid(
                op,
                "the operation's counters wrap past 2^64-2",
            ));
        };
        if op
            .operation
            .deps
            .get(&op.actor_id)
            .is_some_and(|&own| own >= c)
        {
            return Err(Self::invalid(
                op,
                "deps name the actor's own operation at or after this one",
            ));
        }
        if op.operation.deps.values().any(|&d| d == u64::MAX) {
            return Err(Self::invalid(op, "dependency counter out of range"));
        }
        let skip = is_skip(op);
        if skip
            && (op.entity_type != EntityType::Document
                || !op.entity_id.is_empty()
                || !op.operation.deps.is_empty())
        {
            return Err(Self::invalid(
                op,
                "a skip names the document \"\" and has no deps",
            ));
        }
        let ok = matches!(
            (&op.operation.edit, op.entity_type),
            (
                Edit::Set { .. }
                    | Edit::Delete { .. }
                    | Edit::InsertText { .. }
                    | Edit::Remove { field: Some(_), .. },
                EntityType::Document,
            ) | (
                Edit::Insert { .. } | Edit::Remove { field: None, .. },
                EntityType::Conversation,
            ) | (Edit::Skip { .. }, EntityType::Document)
        );
        if !ok {
            return Err(Self::invalid(op, "edit does not apply to this entity type"));
        }
        if let Edit::Remove { ranges, .. } = &op.operation.edit {
            let bad = ranges.iter().any(|r| {
                r.len == 0
                    || r.counter == 0
                    || r.counter
                        .checked_add(r.len - 1)
                        .is_none_or(|last| last == u64::MAX)
            });
            if bad {
                return Err(Self::invalid(
                    op,
                    "a removed range is empty or its counters wrap past 2^64-2",
                ));
            }
        }
        if span > u64::from(u32::MAX) {
            return Err(Self::invalid(op, "too many elements in one operation"));
        }
        Ok(last)
    }

    /// Checks, once its dependencies are applied, that the operation refers
    /// only to what exists, and that its actor fits the actor table.
    fn check_applicable(&self, op: &SyncOperation) -> Result<(), CrdtError> {
        if self.actors.get(&op.actor_id).is_none() && self.actors.len() >= self.config.max_actors {
            return Err(CrdtError::TooManyActors {
                actor: op.actor_id.to_string(),
                limit: self.config.max_actors,
            });
        }
        let (field, after, before, ranges) = match &op.operation.edit {
            Edit::Insert { after, before, .. } => (None, after.as_ref(), before.as_ref(), None),
            Edit::InsertText {
                field,
                after,
                before,
                ..
            } => (Some(field), after.as_ref(), before.as_ref(), None),
            Edit::Remove { field, ranges } => (field.as_ref(), None, None, Some(ranges)),
            _ => return Ok(()),
        };
        let entity = self
            .entities
            .get(&(op.entity_type, op.entity_id.as_str()) as &dyn EntityKeyView);
        // The edit's shape was validated: text edits name a field of a
        // document, the others apply to a conversation.
        let (text, items) = match (field, entity) {
            (Some(f), Some(Entity::Document(d))) => (d.texts.get(f.as_str()), None),
            (None, Some(Entity::Conversation(s))) => (None, Some(s)),
            _ => (None, None),
        };
        let seq_len = text.map_or(0, |s| s.total_len()) + items.map_or(0, |s| s.total_len());
        // A sequence that does not exist yet holds no element: any origin
        // is unknown, as in an empty one.
        let origins = |after: Option<&Eid>, before: Option<&Eid>| match (text, items) {
            (Some(s), _) => s.check_origins(after, before),
            (_, Some(s)) => s.check_origins(after, before),
            _ => Sequence::<String>::new().check_origins(after, before),
        };
        let all_exist = |ranges: &[(Eid, u64)]| -> bool {
            match (text, items) {
                (Some(s), _) => s.check_remove(ranges).is_ok(),
                (_, Some(s)) => s.check_remove(ranges).is_ok(),
                _ => false,
            }
        };
        // Each origin as a local id; a device never seen makes it unknown.
        let local = |e: &ElementId| {
            self.actors.get(&e.actor).map(|actor| Eid {
                actor,
                counter: e.counter,
            })
        };
        let (after_id, before_id) = (after.map(local), before.map(local));
        if after_id.is_some_and(|a| a.is_none()) {
            return Err(Self::invalid(op, "inserts after an unknown element"));
        }
        if before_id.is_some_and(|b| b.is_none()) {
            return Err(Self::invalid(op, "inserts before an unknown element"));
        }
        let (after_id, before_id) = (after_id.flatten(), before_id.flatten());
        if after.is_some() || before.is_some() {
            match origins(after_id.as_ref(), before_id.as_ref()) {
                Ok(()) => {}
                Err(SeqError::UnknownElement(e)) if Some(e) == after_id => {
                    return Err(Self::invalid(op, "inserts after an unknown element"))
                }
                Err(SeqError::UnknownElement(_)) => {
                    return Err(Self::invalid(op, "inserts before an unknown element"))
                }
                Err(_) => {
                    return Err(Self::invalid(
                        op,
                        "its right origin (before) does not follow its left origin (after)",
                    ))
                }
            }
        }
        if let Some(ranges) = ranges {
            // Never expand more ids than the sequence holds.
            if op.operation.edit.span() > seq_len as u64 {
                return Err(Self::invalid(op, "removes more elements than exist"));
            }
            let all_known = self
                .local_ranges(ranges)
                .is_some_and(|ranges| all_exist(&ranges));
            if !all_known {
                return Err(Self::invalid(op, "removes an unknown element"));
            }
        }
        Ok(())
    }

    /// Receives a remote operation. Returns how many operations were applied
    /// as a result: none for a duplicate or an operation that must wait for
    /// its dependencies, possibly several when it unblocks buffered ones.
    /// Those are the last entries of [`applied`](Self::applied), in the
    /// order they were applied, for the caller to store
    /// ([`take_applied`](Self::take_applied)).
    ///
    /// An invalid operation is refused with an error and changes nothing.
    pub fn apply_remote(&mut self, op: SyncOperation) -> Result<usize, CrdtError> {
        let last = self.validate_shape(&op)?;
        let known = self.vv.get(&op.actor_id).copied().unwrap_or(0);
        let counter = op.operation.counter;
        if last <= known {
            // Counted already: a duplicate, or part of an entity this
            // replica fills in.
            return self.receive_known(op, last);
        }
        // Made after its device was revoked: refused, and the stream goes
        // on (the sender may not know yet).
        let Some(op) = self.within_close(op) else {
            return Ok(0);
        };
        let last = op.operation.last_counter();
        if counter.saturating_sub(known) > self.config.max_counter_jump {
            return Err(CrdtError::CounterJump {
                actor: op.actor_id.to_string(),
                counter,
                known,
            });
        }
        // A run partly counted already waits whole: it may carry counters
        // an actor being filled in has not reached yet, which take their
        // turn from the refill frontier ([`Replica::drain_buffer`]).
        let behind_refill = counter <= known
            && self
                .refill
                .get(&op.actor_id)
                .is_some_and(|&frontier| counter > frontier + 1);
        if counter > known + 1 || behind_refill || !self.deps_applied(&op) {
            self.hold(op)?;
            return Ok(0);
        }
        // A run partly applied already (it reached this device in pieces
        // another way): apply the rest.
        let op = self.trim_held(op, known);
        self.check_applicable(&op)?;
        let actor = op.actor_id.clone();
        self.apply_ready(op, last);
        if counter <= known {
            self.refilled(&actor, counter, last);
        }
        Ok(1 + self.drain_buffer())
    }

    /// `op` without the part this replica holds, `known` being its actor's
    /// counter: without the counters up to `known`, except that an
    /// operation on an entity keeps what its entity lacks (counters up to
    /// `known` that were skipped, the entity being subscribed to since).
    fn trim_held(&self, op: SyncOperation, known: u64) -> SyncOperation {
        if op.operation.counter > known || is_skip(&op) {
            return trim_front(op, known);
        }
        let have = self
            .entity_vv
            .get(&(op.entity_type, op.entity_id.as_str()) as &dyn EntityKeyView)
            .and_then(|vv| vv.get(&op.actor_id).copied())
            .unwrap_or(0);
        trim_front(op, have.min(known))
    }

    /// True when every operation named in `deps` is applied: `deps` name
    /// changes to the operation's entity, so the entity's version vector
    /// says (a device that skipped an entity's operations and subscribed
    /// to it since counts them in its version vector without holding them).
    fn deps_applied(&self, op: &SyncOperation) -> bool {
        if op.operation.deps.is_empty() {
            return true;
        }
        let Some(held) = self
            .entity_vv
            .get(&(op.entity_type, op.entity_id.as_str()) as &dyn EntityKeyView)
        else {
            return false;
        };
        op.operation
            .deps
            .iter()
            .all(|(actor, &c)| held.get(actor).copied().unwrap_or(0) >= c)
    }

    /// Applies every buffered operation that became ready; returns how many.
    fn drain_buffer(&mut self) -> usize {
        let mut applied = 0;
        loop {
            let mut progressed = false;
            let actors: Vec<ActorId> = self.buffer.keys().cloned().collect();
            for actor in actors {
                loop {
                    let known = self.vv.get(&actor).copied().unwrap_or(0);
                    let Some((&first, op)) = self.buffer.get(&actor).and_then(|w| w.iter().next())
                    else {
                        break;
                    };
                    let last = op.operation.last_counter();
                    let duplicate = last <= known;
                    let frontier = self.refill.get(&actor).copied();
                    if frontier.is_some_and(|f| first > f + 1 && first <= known && last > f) {
                        // Filling in: it waits its turn.
                        break;
                    }
                    if !duplicate && (first > known + 1 || !self.deps_applied(op)) {
                        break;
                    }
                    let Some(op) = self.buffer.get_mut(&actor).and_then(|w| w.remove(&first))
                    else {
                        break;
                    };
                    self.buffered -= 1;
                    if duplicate {
                        // Held by its entity, filling it in (or arrived
                        // again another way while it waited).
                        if frontier.is_some_and(|f| last <= f) {
                            continue;
                        }
                        match self.apply_known(op, last) {
                            Ok(Known::Held(n)) => {
                                if frontier.is_some() {
                                    self.refilled(&actor, first, last);
                                }
                                applied += n;
                                progressed = true;
                                continue;
                            }
                            Ok(Known::Waiting(op)) if frontier.is_some() => {
                                // Its entity's history has not come yet.
                                if let Some(w) = self.buffer.get_mut(&actor) {
                                    w.insert(first, op);
                                    self.buffered += 1;
                                }
                                break;
                            }
                            // Corrupt, or not filling in: dropped.
                            Ok(Known::Waiting(_)) | Err(_) => continue,
                        }
                    }
                    let op = self.trim_held(op, known);
                    if self.check_applicable(&op).is_err() {
                        // Its causal past is complete and it still refers to
                        // nothing: a corrupt operation. Drop it.
                        continue;
                    }
                    let last = op.operation.last_counter();
                    self.apply_ready(op, last);
                    if frontier.is_some() && first <= known {
                        self.refilled(&actor, first, last);
                    }
                    applied += 1;
                    progressed = true;
                }
            }
            self.buffer.retain(|_, w| !w.is_empty());
            if !progressed {
                return applied;
            }
        }
    }

    // (The per-actor buffer is kept in counter order: while an actor is
    // filled in, its operations below the version vector come first.)

    /// Applies an operation whose dependencies are all applied and which
    /// was checked; `last` is its last counter.
    fn apply_ready(&mut self, op: SyncOperation, last: u64) {
        if is_skip(&op) {
            // Counters that carry nothing for this device.
            self.note_skip(&op.actor_id, op.operation.counter);
            raise_counter(&mut self.vv, &op.actor_id, last);
            self.applied.push(op);
            return;
        }
        self.state_hash.take();
        let lamport = lamport(&op);
        let actor_idx = self.actors.intern(&op.actor_id);
        let key = (op.entity_type, op.entity_id.as_str());
        let key = &key as &dyn EntityKeyView;
        let counter = op.operation.counter;
        let first = Eid {
            actor: actor_idx,
            counter,
        };
        let (mut after_eid, mut before_eid) = (None, None);
        let mut targets = Vec::new();
        match &op.operation.edit {
            Edit::Insert { after, before, .. } | Edit::InsertText { after, before, .. } => {
                after_eid = after.as_ref().map(|a| self.eid(a));
                before_eid = before.as_ref().map(|b| self.eid(b));
            }
            Edit::Remove { ranges, .. } => {
                targets = self.local_ranges(ranges).unwrap_or_default();
            }
            _ => {}
        }
        let actors = &self.actors;
        // Concurrent insertions between the same origins order by actor name.
        let less = |a: ActorIdx, b: ActorIdx| actors.name(a) < actors.name(b);
        // The common case (a known entity, a known actor) allocates nothing.
        match self.entity_vv.get_mut(key) {
            Some(vv) => raise_counter(vv, &op.actor_id, last),
            None => {
                let vv = VersionVector::from([(op.actor_id.clone(), last)]);
                self.entity_vv
                    .insert((op.entity_type, op.entity_id.to_string()), vv);
            }
        }
        if !self.entities.contains_key(key) {
            self.entities.insert(
                (op.entity_type, op.entity_id.to_string()),
                Entity::new(op.entity_type),
            );
        }
        let Some(entity) = self.entities.get_mut(key) else {
            return;
        };
        let result: Result<usize, SeqError> = match (&op.operation.edit, entity) {
            (Edit::Set { key, value }, Entity::Document(d)) => {
                d.set(
                    actor_idx,
                    counter,
                    &op.operation.deps,
                    lamport,
                    key.clone(),
                    value.clone(),
                    actors,
                );
                Ok(0)
            }
            (Edit::Delete { key }, Entity::Document(d)) => {
                d.delete(&op.operation.deps, key.clone(), actors);
                Ok(0)
            }
            (Edit::InsertText { field, text, .. }, Entity::Document(d)) => d
                .text_mut(field)
                .insert_new(after_eid.as_ref(), before_eid.as_ref(), first, text, less),
            (Edit::Remove { field: Some(f), .. }, Entity::Document(d)) => {
                d.text_mut(f).remove(&targets)
            }
            (Edit::Insert { values, .. }, Entity::Conversation(s)) => {
                s.insert_new(after_eid.as_ref(), before_eid.as_ref(), first, values, less)
            }
            (Edit::Remove { .. }, Entity::Conversation(s)) => s.remove(&targets),
            _ => Ok(0),
        };
        debug_assert!(result.is_ok(), "checked before apply: {result:?}");
        raise_counter(&mut self.vv, &op.actor_id, last);
        self.applied.push(op);
    }

    /// The entities held, by type and id.
    pub fn entities(&self) -> impl Iterator<Item = (EntityType, &str)> + '_ {
        self.entities.keys().map(|(t, id)| (*t, id.as_str()))
    }

    /// A document's register fields with their winning values.
    pub fn document(&self, id: &str) -> Option<BTreeMap<String, Value>> {
        match self.entities.get(&(EntityType::Document, id.to_string()))? {
            Entity::Document(d) => Some(d.fields(&self.actors)),
            Entity::Conversation(_) => None,
        }
    }

    /// Every concurrent value of a document field, the winner first (empty
    /// when the field is absent). More than one means concurrent writes that
    /// no later write has resolved: an app may show them.
    pub fn field_values(&self, id: &str, key: &str) -> Vec<Value> {
        match self.entities.get(&(EntityType::Document, id.to_string())) {
            Some(Entity::Document(d)) => d
                .values(key, &self.actors)
                .into_iter()
                .map(|t| t.value)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A document's text field.
    pub fn text(&self, id: &str, field: &str) -> Option<String> {
        match self.entities.get(&(EntityType::Document, id.to_string()))? {
            Entity::Document(d) => d.texts.get(field).map(Sequence::to_text),
            Entity::Conversation(_) => None,
        }
    }

    /// The names of a document's text fields.
    pub fn text_fields(&self, id: &str) -> Vec<String> {
        match self.entities.get(&(EntityType::Document, id.to_string())) {
            Some(Entity::Document(d)) => d.texts.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// A conversation's items in order, each with its id (its author and
    /// counter: stable across devices and edits, for an application to
    /// refer to an item by, see [`LocalEdit::InsertAfter`] and
    /// [`LocalEdit::RemoveItem`]).
    pub fn conversation_items(&self, id: &str) -> Option<Vec<(ElementId, Value)>> {
        match self
            .entities
            .get(&(EntityType::Conversation, id.to_string()))?
        {
            Entity::Conversation(s) => Some(
                s.items()
                    .map(|(eid, v)| (self.element_id(&eid), v.clone()))
                    .collect(),
            ),
            Entity::Document(_) => None,
        }
    }

    /// A conversation's items in order.
    pub fn conversation(&self, id: &str) -> Option<Vec<Value>> {
        match self
            .entities
            .get(&(EntityType::Conversation, id.to_string()))?
        {
            Entity::Conversation(s) => Some(s.items().map(|(_, v)| v.clone()).collect()),
            Entity::Document(_) => None,
        }
    }

    /// The deterministic hash of the replica's state; see [`crate::hash`].
    pub fn state_hash(&self) -> Hash32 {
        *self
            .state_hash
            .get_or_init(|| crate::hash::state_hash(self, &Subscription::Everything))
    }

    /// The hash of the entities `subscription` matches only, computed as
    /// [`Replica::state_hash`] is: what a device subscribed to them
    /// compares with its own (docs/PROTOCOL.md, "Subscriptions").
    pub fn state_hash_of(&self, subscription: &Subscription) -> Hash32 {
        match subscription {
            Subscription::Everything => self.state_hash(),
            s => crate::hash::state_hash(self, s),
        }
    }

    /// Everything [`Replica::state_hash`] covers, in its order: what to
    /// compare when two devices' hashes differ.
    pub fn canonical_state(&self) -> crate::hash::CanonicalState {
        crate::hash::canonical_state(self)
    }
}
