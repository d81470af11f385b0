//! Every message of protocol version 1, as typed Rust structs.
//!
//! Each struct is a MessagePack map keyed by its field names (snake_case).
//! Fields named by the protocol seed are always present (an absent `Option` is
//! `nil`); fields this implementation adds as extensions are marked
//! "extension"; an optional extension field is left out of the map when it is
//! `None`. `ACK`, `BATCHED_SYNC` and `DELTA_SYNC` are this implementation's own
//! messages (the seed names them without defining them): all their fields,
//! including `DELTA_SYNC`'s extensions, are required.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::actor_id::ActorId;
use crate::actor_table::{decoding_with, encoding_with, ActorTable};
use crate::bytes_fixed::{bin_bytes, FixedBytes, Hash32, MessageId};
use crate::deps::Deps;
use crate::value::Value;
pub use smol_str::SmolStr;

/// A version vector: for each actor (device id), the highest operation counter seen.
pub type VersionVector = BTreeMap<ActorId, u64>;

/// The kind of entity an operation applies to. Travels as a lower-case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntityType {
    /// A map of fields to values (registers) and collaborative text.
    Document,
    /// An ordered sequence of items (messages).
    Conversation,
}

impl EntityType {
    /// Every entity type this build knows.
    pub const ALL: [EntityType; 2] = [EntityType::Document, EntityType::Conversation];

    /// The name used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntityType::Document => "document",
            EntityType::Conversation => "conversation",
        }
    }
}

/// `HELLO` (0x0001): the first message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The sender's device id.
    pub device_id: String,
    /// A human-readable name ("Ana's laptop").
    pub device_name: String,
    /// The protocol version the sender speaks.
    pub protocol_version: u8,
    /// Features the sender supports, e.g. `"crdt-sync"`, `"artifact-transfer"`.
    pub capabilities: Vec<String>,
    /// BLAKE3 state hash of the sender's replica.
    pub sync_state_hash: Hash32,
}

/// `HELLO_ACK` (0x0002): the answer to `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloAck {
    /// The responder's device id.
    pub device_id: String,
    /// A human-readable name.
    pub device_name: String,
    /// The protocol version the responder speaks.
    pub protocol_version: u8,
    /// Features the responder supports.
    pub capabilities: Vec<String>,
    /// BLAKE3 state hash of the responder's replica.
    pub sync_state_hash: Hash32,
    /// True when the two state hashes differ.
    pub sync_required: bool,
    /// Extension: the UDP port of the responder's bulk endpoint, on the
    /// address the dialer reached (docs/PROTOCOL.md, "Bulk connections").
    /// Sent only to a dialer that announced `"bulk"`, and only on a direct
    /// connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_port: Option<u16>,
}

/// `SYNC_REQUEST` (0x0101): ask a peer for operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Entity types wanted; empty means all.
    pub entity_types: Vec<EntityType>,
    /// A hint only: operations created before this time (ms) may be skipped
    /// when `version_vector` is absent. Never decides what is missing.
    pub since_timestamp: Option<i64>,
    /// Ask for the whole state regardless of `version_vector`.
    pub full_sync: bool,
    /// Extension: what the requester already has. The responder sends every
    /// operation not covered by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_vector: Option<VersionVector>,
    /// Extension: the puller's subscription, as patterns (`type:id`,
    /// `type:prefix*` or `type:*`; docs/PROTOCOL.md, "Subscriptions"):
    /// the pusher sends the operations of matching entities and, for the
    /// others, `skip` operations in their place. Absent: everything. Sent
    /// only to a pusher that announced `"subscriptions"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Vec<String>>,
}

/// The identity of one sequence element (a conversation item or a
/// character): the dot of the operation that inserted it. An insertion of
/// `n` elements with counter `c` covers the counters `c..c+n`, one per
/// element, so element `i` is `(actor, c + i)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElementId {
    /// The device that inserted the element.
    #[serde(with = "crate::actor_table::actor_ref")]
    pub actor: ActorId,
    /// The element's counter.
    pub counter: u64,
}

/// Consecutive elements inserted by one actor: the ids `(actor, counter)`
/// to `(actor, counter + len - 1)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    /// The device that inserted the elements.
    #[serde(with = "crate::actor_table::actor_ref")]
    pub actor: ActorId,
    /// The counter of the first element.
    pub counter: u64,
    /// How many elements (at least 1).
    pub len: u64,
}

impl IdRange {
    /// The counter of the last element (saturating; a valid range does not wrap).
    pub fn last(&self) -> u64 {
        self.counter.saturating_add(self.len.saturating_sub(1))
    }
}

/// The change a CRDT operation makes. Travels as a map with one key, the
/// variant's snake_case name, whose value is the map of its fields.
///
/// An operation covers [`Edit::span`] consecutive counters of its actor:
/// one per inserted or removed element, one for a field write. A run is
/// shorthand for that many one-element operations, each following the
/// previous (see docs/PROTOCOL.md, "Operations").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Write a document field. Supersedes every earlier value of the field
    /// covered by the operation's `deps`.
    Set {
        /// The field name.
        key: String,
        /// The new value.
        value: Value,
    },
    /// Remove a document field: every value of it covered by `deps`.
    Delete {
        /// The field name.
        key: String,
    },
    /// Insert items into a conversation after an existing item (or at the
    /// start). Item `i` gets the id `(actor, counter + i)`.
    Insert {
        /// The item to insert after; `None` for the start.
        after: Option<ElementId>,
        /// The item that followed `after` where the author inserted (its
        /// right origin, removed or not); `None` for the end.
        before: Option<ElementId>,
        /// The inserted items (at least one).
        values: Vec<Value>,
    },
    /// Insert characters into a collaborative text field of a document.
    /// Character `i` (in Unicode scalar values) gets the id `(actor, counter + i)`.
    InsertText {
        /// The text field.
        field: SmolStr,
        /// The character to insert after; `None` for the start.
        after: Option<ElementId>,
        /// The character that followed `after` where the author inserted
        /// (its right origin, removed or not); `None` for the end.
        before: Option<ElementId>,
        /// The inserted text (at least one character).
        text: SmolStr,
    },
    /// Remove elements of a conversation or characters of a text field.
    Remove {
        /// The document text field, or `None` for the conversation itself.
        field: Option<SmolStr>,
        /// The removed elements, as ranges of ids (at least one).
        ranges: Vec<IdRange>,
    },
    /// Counters of the actor that carry nothing for the receiver: a pusher
    /// sends one in place of operations on entities the receiver did not
    /// subscribe to (docs/PROTOCOL.md, "Subscriptions"), so that each
    /// actor's counters still reach it in order, without gaps. Changes no
    /// entity; its entity is the document `""` and its `deps` are empty.
    Skip {
        /// How many counters it covers (at least one).
        span: u64,
    },
}

impl Edit {
    /// How many counters the edit covers: one per inserted or removed
    /// element, one for a field write (0 only for an invalid, empty edit).
    pub fn span(&self) -> u64 {
        match self {
            Edit::Set { .. } | Edit::Delete { .. } => 1,
            Edit::Insert { values, .. } => values.len() as u64,
            // Typed text is mostly ASCII: one byte, one character.
            Edit::InsertText { text, .. } if text.is_ascii() => text.len() as u64,
            Edit::InsertText { text, .. } => text.chars().count() as u64,
            Edit::Remove { ranges, .. } => {
                ranges.iter().fold(0u64, |acc, r| acc.saturating_add(r.len))
            }
            Edit::Skip { span } => *span,
        }
    }
}

/// A CRDT operation as it travels: its identity, its causal context, its edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdtOperation {
    /// The first counter the operation covers (its actor numbers its
    /// operations' counters 1, 2, 3... across the replica); it covers
    /// `edit.span()` counters. With `actor_id` it forms the operation's dot.
    pub counter: u64,
    /// The operation's causal context within its entity: for each actor
    /// that changed the entity, the highest counter of its changes to the
    /// entity that this operation follows. It is applied only after them.
    #[serde(with = "crate::actor_table::deps")]
    pub deps: Deps,
    /// The change.
    pub edit: Edit,
}

impl CrdtOperation {
    /// The last counter the operation covers (its first for an empty edit;
    /// saturating: a valid operation does not wrap).
    pub fn last_counter(&self) -> u64 {
        self.counter
            .saturating_add(self.edit.span().saturating_sub(1))
    }
}

/// `SYNC_OPERATION` (0x0102): one CRDT operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncOperation {
    /// The entity changed.
    pub entity_id: SmolStr,
    /// Its type.
    pub entity_type: EntityType,
    /// The operation.
    pub operation: CrdtOperation,
    /// Creation time (ms since the Unix epoch) on the author's clock. Informational.
    pub timestamp: i64,
    /// The device that made the operation.
    #[serde(with = "crate::actor_table::actor_ref")]
    pub actor_id: ActorId,
}

/// `SYNC_COMPLETE` (0x0103): the end of a sync response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncComplete {
    /// The entity types the sync covered.
    pub entity_types: Vec<EntityType>,
    /// How many operations were sent.
    pub operations_count: u32,
    /// The sender's state hash once the receiver has applied them all.
    pub new_state_hash: Hash32,
}

/// `ACK` (0x0104): the receiver has durably applied (or buffered) these messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The acknowledged message ids.
    pub message_ids: Vec<MessageId>,
}

/// `BATCHED_SYNC` (0x0105): several operations in one frame.
///
/// Travels as `{ actors, operations }`: `actors` lists each device id the
/// operations name once, in the order of first mention, and inside
/// `operations` every actor field is that device id's index in `actors`
/// (docs/PROTOCOL.md). In memory the operations name their actors as
/// usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchedSync {
    /// The operations, in the order they are to be applied.
    pub operations: Vec<SyncOperation>,
}

impl Serialize for BatchedSync {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut table = ActorTable::default();
        for op in &self.operations {
            table.note(op);
        }
        let mut st = s.serialize_struct("BatchedSync", 2)?;
        st.serialize_field("actors", table.names())?;
        encoding_with(&mut table, || {
            st.serialize_field("operations", &self.operations)
        })?;
        st.end()
    }
}

/// Reads the next key of a map, which must be `name`.
fn expect_key<'de, A: serde::de::MapAccess<'de>>(
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    use serde::de::Error;
    match map.next_key::<String>()? {
        Some(key) if key == name => Ok(()),
        Some(key) => Err(A::Error::custom(format!(
            "field {key:?} where {name:?} belongs"
        ))),
        None => Err(A::Error::missing_field(name)),
    }
}

impl<'de> Deserialize<'de> for BatchedSync {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = BatchedSync;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of actors, then operations")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BatchedSync, A::Error> {
                use serde::de::Error;
                expect_key(&mut map, "actors")?;
                let actors: Vec<ActorId> = map.next_value()?;
                expect_key(&mut map, "operations")?;
                let operations: Vec<SyncOperation> = decoding_with(actors, || map.next_value())?;
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom("fields after operations"));
                }
                Ok(BatchedSync { operations })
            }
        }
        d.deserialize_struct("BatchedSync", &["actors", "operations"], Fields)
    }
}

/// `DELTA_SYNC` (0x0106): several field writes of one document by one actor,
/// equivalent to consecutive `Set` operations in key order.
///
/// The write of the `i`-th key (0-based, in sorted key order) has the counter
/// `first_counter + i` and the deps `deps` with the actor's own entry set to
/// `first_counter + i - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSync {
    /// The document.
    pub entity_id: String,
    /// The new values, by field name.
    pub changed_fields: BTreeMap<String, Value>,
    /// Extension: the device that wrote them.
    pub actor_id: ActorId,
    /// Extension: the counter of the first write.
    pub first_counter: u64,
    /// Extension: the causal context of the first write.
    pub deps: Deps,
    /// Extension: creation time (ms), informational.
    pub timestamp: i64,
}

/// `SYNC_SNAPSHOT` (0x0107): one piece of a snapshot of the pusher's state
/// (docs/PROTOCOL.md, "Snapshots"), sent instead of operations it no longer
/// holds. The pieces go in order, each starting where the previous ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSnapshot {
    /// The whole snapshot's length in bytes.
    pub total_len: u64,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The piece: at most [`crate::MAX_CHUNK_DATA`] bytes, at least one.
    #[serde(with = "bin_bytes")]
    pub data: Bytes,
}

/// `HAVE` (0x0108): what the puller durably holds, sent on its sync stream
/// to the pusher (docs/PROTOCOL.md, "Forwarding"): counters of devices other
/// than the two ends, each raised since the previous `HAVE`, and the
/// devices the puller started or stopped pulling from directly since then.
/// The pusher counts the counters as known to the peer and does not relay
/// what they cover, nor anything of a device the puller pulls from
/// directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Have {
    /// The counters held, by device; devices not named are unchanged.
    pub version_vector: VersionVector,
    /// Devices the puller started pulling from directly (other than the
    /// pusher) since the previous `HAVE` on the stream (in the first: every
    /// one it pulls from); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_added: Option<Vec<String>>,
    /// Devices the puller stopped pulling from directly since the previous
    /// `HAVE`; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_removed: Option<Vec<String>>,
}

/// `REVOCATION` (0x0109): a device's signed statement that another device
/// is revoked (lost or stolen), sent on a revocation stream
/// (docs/PROTOCOL.md, "Revocation"). Every device that accepts it refuses
/// the revoked device's connections and every operation it made after
/// `cutoff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The revoked device's id, in its shown form.
    pub revoked: String,
    /// The last counter of the revoked device's operations the signer
    /// keeps (those it had applied when it signed); later ones are refused.
    pub cutoff: u64,
    /// When it was signed (ms since the Unix epoch); informational.
    pub issued_at: i64,
    /// The signing device's id, in its shown form.
    pub signer: String,
    /// The signer's DER `SubjectPublicKeyInfo`, whose SHA-256 starts with
    /// the signer's id.
    #[serde(with = "bin_bytes")]
    pub signer_key: Bytes,
    /// The TLS 1.3 `SignatureScheme` code of `signature` (0x0403 for
    /// ECDSA P-256 with SHA-256).
    pub scheme: u16,
    /// The signature of the statement (docs/PROTOCOL.md, "Revocation").
    #[serde(with = "bin_bytes")]
    pub signature: Bytes,
}

/// `ARTIFACT_REQUEST` (0x0201): ask for an artifact by content id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRequest {
    /// SHA-256 of the artifact's plaintext.
    pub artifact_id: Hash32,
    /// 0 = low, 255 = high.
    pub priority: u8,
    /// Extension: resume from this chunk index (every earlier chunk is held and verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u32>,
    /// Extension: the requester's X25519 public key. Asks the holder to send
    /// the chunks sealed, as it stores them, with their data key wrapped for
    /// this key in [`ArtifactMetadata::data_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_for: Option<Hash32>,
    /// Extension: ask for the metadata only (size, chunk count, MIME type):
    /// the holder answers `ARTIFACT_METADATA` and sends no chunk. Left out
    /// of the map when false (so present only as `true`); sent only to a
    /// holder that announced `"artifact-metadata"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata_only: bool,
    /// Extension: send the chunks before this index only (from
    /// `resume_from`), then end the stream: one range of the artifact, the
    /// rest fetched from another holder at the same time. No
    /// `ARTIFACT_COMPLETE` follows a range. Sent only to a holder that
    /// announced `"artifact-ranges"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_before: Option<u32>,
}

/// A per-artifact data key wrapped for one device: X25519 with an ephemeral
/// key, a BLAKE3-derived key-encryption key, ChaCha20-Poly1305 (see
/// docs/PROTOCOL.md, "Artifacts at rest").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedDataKey {
    /// The X25519 public key of the device that can unwrap it.
    pub recipient: Hash32,
    /// The ephemeral X25519 public key.
    pub ephemeral: Hash32,
    /// The key-encryption nonce.
    pub nonce: FixedBytes<12>,
    /// The 32-byte data key sealed under the key-encryption key, with its tag.
    pub sealed: FixedBytes<48>,
}

/// `ARTIFACT_METADATA` (0x0202): what is about to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactMetadata {
    /// SHA-256 of the plaintext.
    pub artifact_id: Hash32,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Number of chunks: `ceil(size / 65536)`, and 0 for an empty artifact.
    pub chunk_count: u32,
    /// MIME type, if known.
    pub mime_type: Option<String>,
    /// Whether the sender holds it encrypted at rest.
    pub encrypted: bool,
    /// Extension: the data key the chunks are sealed under, wrapped for the
    /// requester's [`ArtifactRequest::sealed_for`] key. Present exactly when
    /// the chunks that follow are sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<WrappedDataKey>,
    /// Extension: for an artifact sealed for some devices only, the data
    /// key wrapped for each of them (at most [`MAX_RECIPIENT_KEYS`]), as its
    /// holders keep it. Sent, with sealed chunks, only to a requester that
    /// announced `"sealed-relay"`: a requester among them also gets
    /// `data_key`; one that is not keeps the records for them without being
    /// able to open them (docs/PROTOCOL.md, "Sealed relays").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_keys: Option<Vec<WrappedDataKey>>,
}

/// Most entries of [`ArtifactMetadata::recipient_keys`].
pub const MAX_RECIPIENT_KEYS: usize = 64;

/// `ARTIFACT_CHUNK` (0x0203): one chunk of at most 64 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactChunk {
    /// The artifact.
    pub artifact_id: Hash32,
    /// 0-based chunk index.
    pub chunk_index: u32,
    /// The bytes of the chunk (at most 65,536): plaintext, or ciphertext of
    /// the same length when `seal` is present.
    #[serde(with = "bin_bytes")]
    pub chunk_data: Bytes,
    /// True on the last chunk.
    pub is_final: bool,
    /// Extension: BLAKE3 digest of the chunk's plaintext, checked on arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_hash: Option<Hash32>,
    /// Extension: present when `chunk_data` is sealed (ChaCha20-Poly1305
    /// ciphertext under [`ArtifactMetadata::data_key`]): the 12-byte nonce
    /// followed by the 16-byte tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<FixedBytes<28>>,
}

/// `ARTIFACT_COMPLETE` (0x0204): the receiver verified the whole artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactComplete {
    /// The artifact.
    pub artifact_id: Hash32,
    /// SHA-256 the receiver computed over what it stored.
    pub received_hash: Hash32,
}

/// How a device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectivityStatus {
    /// Wi-Fi.
    Wifi,
    /// Mobile data.
    Cellular,
    /// Wired.
    Ethernet,
    /// Not known.
    Unknown,
}

/// `HEARTBEAT` (0x0301): a periodic keep-alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Sender's clock (ms). Informational.
    pub timestamp: i64,
    /// Battery level 0-100, where known.
    pub battery_level: Option<u8>,
    /// How the sender is connected.
    pub connectivity: ConnectivityStatus,
}

/// A device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Available.
    Online,
    /// Idle.
    Away,
    /// Do not disturb.
    Busy,
    /// Going away.
    Offline,
}

/// `PRESENCE_UPDATE` (0x0302): the sender's presence changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceUpdate {
    /// The new status.
    pub status: PresenceStatus,
    /// An optional status message.
    pub message: Option<String>,
}

/// A protocol error code. Travels as an unsigned integer; unknown codes are
/// kept as they are so newer peers can add codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Anything not covered below.
    pub const UNKNOWN_ERROR: ErrorCode = ErrorCode(0);
    /// The peers speak different protocol versions: permanent, the user must update.
    pub const PROTOCOL_VERSION_MISMATCH: ErrorCode = ErrorCode(1);
    /// A frame or message could not be decoded or broke the protocol.
    pub const INVALID_MESSAGE: ErrorCode = ErrorCode(2);
    /// The requested artifact is not held.
    pub const ARTIFACT_NOT_FOUND: ErrorCode = ErrorCode(3);
    /// An operation could not be applied (for example, its causal buffer is full):
    /// the receiver asks for a resync.
    pub const SYNC_CONFLICT: ErrorCode = ErrorCode(4);
    /// A quota (storage, rate) is exceeded: permanent until the user acts.
    pub const QUOTA_EXCEEDED: ErrorCode = ErrorCode(5);
    /// The peer is not (or no longer) paired: re-pairing is required.
    pub const AUTHENTICATION_FAILED: ErrorCode = ErrorCode(6);
    /// The sender exceeded a rate limit and should slow down (transient).
    pub const RATE_LIMITED: ErrorCode = ErrorCode(7);
    /// A relay cannot reach the device asked for (no direct connection to
    /// it, or it refused), or does not relay at all: transient, try another
    /// path.
    pub const UNREACHABLE: ErrorCode = ErrorCode(8);

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self.0 {
            0 => "UnknownError",
            1 => "ProtocolVersionMismatch",
            2 => "InvalidMessage",
            3 => "ArtifactNotFound",
            4 => "SyncConflict",
            5 => "QuotaExceeded",
            6 => "AuthenticationFailed",
            7 => "RateLimited",
            8 => "Unreachable",
            _ => "Unassigned",
        }
    }

    /// True for errors after which retrying without user action is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(
            *self,
            ErrorCode::PROTOCOL_VERSION_MISMATCH
                | ErrorCode::QUOTA_EXCEEDED
                | ErrorCode::AUTHENTICATION_FAILED
        )
    }
}

/// `ERROR` (0x0401).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMessage {
    /// What went wrong.
    pub error_code: ErrorCode,
    /// A human-readable explanation.
    pub error_message: String,
    /// The message that caused it, if one did.
    pub related_message_id: Option<MessageId>,
}

/// `RELAY_REQUEST` (0x0501): the first message of a relay stream a device
/// opens to a paired device it is connected to, asking it to relay a QUIC
/// connection to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRequest {
    /// The device to reach (a device id, as in `HELLO`).
    pub target: String,
}

/// `RELAY_OFFER` (0x0502): the first message of a relay stream a relay
/// opens to the target of a [`RelayRequest`]: `source` asks to connect
/// through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayOffer {
    /// The device that asked (a device id, as in `HELLO`).
    pub source: String,
}

/// `RELAY_ACCEPT` (0x0503): the answer that opens a relay stream to
/// packets (an empty map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayAccept {}
