//! Errors of the CRDT layer.

use nomade_wire::EntityType;

/// Why an edit or an operation was refused. Nothing was applied when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// A local edit names a position past the end of a sequence.
    #[error("index {index} is out of range (length {len})")]
    IndexOutOfRange {
        /// The requested index.
        index: usize,
        /// The sequence length.
        len: usize,
    },
    /// A local edit names a conversation item that was never in it (an id
    /// from another conversation, or made up).
    #[error("no item {actor}#{counter} in this conversation")]
    UnknownItem {
        /// The item's author.
        actor: String,
        /// The item's counter.
        counter: u64,
    },
    /// The edit does not apply to this kind of entity (e.g. text on a conversation).
    #[error("{edit} does not apply to a {entity_type:?}")]
    WrongEntityType {
        /// The edit's name.
        edit: &'static str,
        /// The entity's type.
        entity_type: EntityType,
    },
    /// A remote operation is malformed or contradicts the state its
    /// dependencies guarantee (unknown element, bad deps, zero counter...).
    #[error("invalid operation from {actor} #{counter}: {reason}")]
    InvalidOperation {
        /// The operation's actor.
        actor: String,
        /// The operation's counter.
        counter: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A remote operation's counter is implausibly far ahead of what is known
    /// of its actor (more than the causal buffer could ever hold).
    #[error("operation {actor} #{counter} jumps too far ahead (known up to {known})")]
    CounterJump {
        /// The operation's actor.
        actor: String,
        /// The operation's counter.
        counter: u64,
        /// The highest counter applied for that actor.
        known: u64,
    },
    /// The causal buffer is full: the operation was not accepted. The caller
    /// should ask the peer for a resync (ERROR SyncConflict).
    #[error("causal buffer full ({capacity} operations waiting for their dependencies)")]
    BufferFull {
        /// The buffer's capacity.
        capacity: usize,
    },
    /// The operation's actor would be one more distinct actor than the
    /// replica accepts ([`crate::ReplicaConfig::max_actors`]): refused, so
    /// that no peer can grow this device's actor table without bound.
    #[error("operation from {actor}: more than {limit} distinct actors")]
    TooManyActors {
        /// The new actor.
        actor: String,
        /// The bound.
        limit: usize,
    },
    /// A snapshot could not be encoded or decoded.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
}
