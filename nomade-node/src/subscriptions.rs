//! What the store keeps of this device's subscription (docs/PROTOCOL.md,
//! "Subscriptions"): the patterns, and where each actor's counters may
//! hide operations of entities subscribed to later (the first `skip` of
//! each since the subscription last grew, and the refill frontier while
//! the history of newly subscribed entities is filled in).

use nomade_crdt::{Pattern, Subscription};
use nomade_wire::VersionVector;
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, StoreError};
use crate::store::Store;
use crate::Node;

impl Node {
    /// The entities this device holds: everything (the default), or those
    /// its patterns match (docs/PROTOCOL.md, "Subscriptions").
    pub fn subscription(&self) -> Subscription {
        self.core().subscription()
    }

    /// Holds the entities `subscription` matches from now on, durably.
    /// Peers send the operations of those entities only (and `skip`s in
    /// place of the others); entities added are filled in from the
    /// connected peers that hold them, history included; an entity
    /// dropped stops changing here, and local edits of it are refused
    /// ([`NodeError::NotSubscribed`]). Returns whether it changed.
    ///
    /// ```no_run
    /// # async fn demo(node: nomade_node::Node) -> Result<(), nomade_node::NodeError> {
    /// use nomade_crdt::Subscription;
    /// node.set_subscription(Subscription::parse(["conversation:family-*", "document:trip"])?)?;
    /// node.subscribe_to("document:packing-list")?;
    /// # Ok(()) }
    /// ```
    pub fn set_subscription(&self, subscription: Subscription) -> Result<bool, NodeError> {
        self.core().set_subscription(subscription)
    }

    /// Adds one pattern (`type:id`, `type:prefix*`, `type:*`) to the
    /// subscription; from everything, nothing changes. Returns whether it
    /// changed.
    pub fn subscribe_to(&self, pattern: &str) -> Result<bool, NodeError> {
        let pattern = Pattern::parse(pattern)?;
        let next = self.subscription().with(pattern)?;
        self.set_subscription(next)
    }

    /// Removes one pattern from the subscription. Returns whether it
    /// changed (a device subscribed to everything is given patterns with
    /// [`Node::set_subscription`]).
    pub fn unsubscribe_from(&self, pattern: &str) -> Result<bool, NodeError> {
        let pattern = Pattern::parse(pattern)?;
        let next = self.subscription().without(&pattern);
        self.set_subscription(next)
    }
}

/// The `META` key of the subscription (absent: everything).
const SUBSCRIPTION_KEY: &str = "subscription";

/// The `META` key of the first skips and the refill frontier.
const SKIP_STATE_KEY: &str = "subscription-skips";

/// The `META` key set once a `skip` was ever stored: the log's rows may
/// hold skips, so they are never sent as they are stored.
const SKIPS_STORED_KEY: &str = "skips-stored";

/// The stored subscription.
#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    patterns: Option<Vec<String>>,
}

/// The stored first skips and refill frontier.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct SkipState {
    /// Per actor, the first counter of a skip since the subscription grew.
    pub first_skips: VersionVector,
    /// Per actor being filled in, how far everything is held.
    pub refill: VersionVector,
    /// Per actor being filled in, up to where.
    #[serde(default)]
    pub refill_until: VersionVector,
}

impl SkipState {
    /// What `replica` says now.
    pub(crate) fn of(replica: &nomade_crdt::Replica) -> SkipState {
        SkipState {
            first_skips: replica.first_skips().clone(),
            refill: replica.refill_frontier().clone(),
            refill_until: replica.refill_until().clone(),
        }
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Database(e.to_string()))
}

/// The stored subscription (everything when none was ever set). A damaged
/// record, or patterns that do not parse, are [`StoreError::Corrupt`].
pub(crate) fn load_subscription(store: &Store) -> Result<Subscription, StoreError> {
    let Some(bytes) = store.meta(SUBSCRIPTION_KEY)? else {
        return Ok(Subscription::Everything);
    };
    let stored: StoredSubscription = rmp_serde::from_slice(&bytes)
        .map_err(|e| corrupt(format!("the stored subscription: {e}")))?;
    Subscription::from_request(stored.patterns.as_deref())
        .map_err(|e| corrupt(format!("the stored subscription: {e}")))
}

/// Stores the subscription.
pub(crate) fn save_subscription(
    store: &Store,
    subscription: &Subscription,
) -> Result<(), StoreError> {
    let stored = StoredSubscription {
        patterns: subscription.to_request(),
    };
    store.set_meta(SUBSCRIPTION_KEY, &encode(&stored)?)
}

/// The stored first skips and refill frontier (empty when none).
pub(crate) fn load_skip_state(store: &Store) -> Result<SkipState, StoreError> {
    match store.meta(SKIP_STATE_KEY)? {
        None => Ok(SkipState::default()),
        Some(bytes) => rmp_serde::from_slice(&bytes)
            .map_err(|e| corrupt(format!("the stored subscription skips: {e}"))),
    }
}

/// Stores the first skips and the refill frontier.
pub(crate) fn save_skip_state(store: &Store, state: &SkipState) -> Result<(), StoreError> {
    store.set_meta(SKIP_STATE_KEY, &encode(state)?)
}

/// Whether a skip was ever stored.
pub(crate) fn skips_stored(store: &Store) -> Result<bool, StoreError> {
    Ok(store.meta(SKIPS_STORED_KEY)?.is_some())
}

/// Notes that a skip was stored.
pub(crate) fn note_skips_stored(store: &Store) -> Result<(), StoreError> {
    store.set_meta(SKIPS_STORED_KEY, &[1])
}
