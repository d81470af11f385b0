//! # nomade-crdt
//!
//! Conflict-free entities for Nomade, sans-IO: no sockets, no disk, no clock.
//!
//! - A **document** is a map of fields to multi-value registers (`crdts::Map`
//!   of `crdts::MVReg`): concurrent writes to a field are all kept until a
//!   later write supersedes them, and every device picks the same winner (the
//!   higher Lamport number, then the higher device id). Documents also hold
//!   **collaborative text** fields edited by `(position, deleted, inserted)`
//!   splices.
//! - A **conversation** is a sequence of items. Texts and conversations are
//!   [`sequence`]s: each element is placed between the element it was
//!   inserted after and the one that followed it (YATA, as in Yjs), so two
//!   devices typing at one place at once never interleave their characters.
//! - A [`Replica`] holds every entity of a device. Local edits return the
//!   [`SyncOperation`](nomade_wire::SyncOperation)s to send; remote operations
//!   go through a bounded causal buffer keyed by version vectors: duplicates
//!   are ignored, an operation waits until everything it depends on is applied.
//! - [`Replica::state_hash`] is equal on two devices exactly when they hold the
//!   same state, whatever order operations arrived in.
//!
//! Operations identify elements by id, never by index. Each operation carries
//! its actor's first counter (1, 2, 3... across the replica, one per element
//! inserted or removed, so a run of keystrokes is one operation, see
//! [`runs`]) and `deps`, what it follows within its entity; clocks never
//! decide anything.
//!
//! ```
//! use nomade_crdt::{LocalEdit, Replica};
//! use nomade_wire::{EntityType, Value};
//!
//! let mut laptop = Replica::new("laptop");
//! let mut phone = Replica::new("phone");
//! // Concurrent writes to the same field, made offline.
//! let a = laptop.apply_local(EntityType::Document, "trip",
//!     LocalEdit::Set { key: "hotel".into(), value: Value::from("Ritz") }, 0)?;
//! let b = phone.apply_local(EntityType::Document, "trip",
//!     LocalEdit::Set { key: "hotel".into(), value: Value::from("Savoy") }, 0)?;
//! // Exchanged in any order...
//! for op in b { laptop.apply_remote(op)?; }
//! for op in a { phone.apply_remote(op)?; }
//! // ...both devices agree, and both values stay visible as a conflict.
//! assert_eq!(laptop.document("trip"), phone.document("trip"));
//! assert_eq!(laptop.field_values("trip", "hotel").len(), 2);
//! assert_eq!(laptop.state_hash(), phone.state_hash());
//! # Ok::<(), nomade_crdt::CrdtError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod actors;
mod delta;
mod document;
mod error;
pub mod hash;
mod oplog;
mod replica;
pub mod runs;
pub mod sequence;
mod snapshot;
mod subscription;

pub use delta::{from_delta, to_delta};
pub use document::Tagged;
pub use error::CrdtError;
pub use oplog::{MemoryOpLog, OpLog, RestoreError};
pub use replica::{
    lamport, last_counters, raise_counter, trim_front, truncate_run, EntityKey, EntityKeyView,
    LocalEdit, Replica, ReplicaConfig,
};
pub use snapshot::{filter_snapshot, snapshot_version_vector, SNAPSHOT_VERSION};
pub use subscription::{Pattern, Subscription, SubscriptionError, MAX_PATTERNS, MAX_PATTERN_LEN};
