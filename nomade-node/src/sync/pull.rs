//! The puller's side of a sync stream, sans-IO: what this device asks of a
//! peer, and what it does with what the peer sends.
//!
//! A [`Puller`] is fed the messages that arrive (in order, in groups: one
//! group is applied in one database transaction) and answers with the
//! messages to send back (`ACK`, or `ERROR` before the pull ends). It reads
//! and writes the device's state through [`Core`], synchronously: a driver
//! on an async runtime calls it from a blocking thread.
//!
//! When the pusher takes them, the puller also announces what this device
//! got from elsewhere ([`Puller::poll_have`]: `HAVE`), so that the pusher
//! does not relay it (docs/PROTOCOL.md, "Forwarding").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use nomade_crdt::Subscription;
use nomade_wire::{
    Ack, ActorId, EntityType, Envelope, ErrorCode, Have, Message, MessageId, SyncOperation,
    SyncRequest, SyncSnapshot, VersionVector,
};

use super::{
    envelope, error_message, peer_error, refused_by, SyncSummary, DIRECT_HAVE_INTERVAL,
    HAVE_INTERVAL, SERVED_HAVE_INTERVAL,
};
use crate::core::{Core, PullingGuard};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::covers;

/// A message that carried operations: its id, and the last counter of each
/// actor among them.
type Carried = (MessageId, VersionVector);

/// Most messages held back from acknowledgement while their operations wait
/// for dependencies (the causal buffer bounds them too); beyond, the oldest
/// are never acknowledged: the pusher sends them again after a reconnection.
pub const MAX_PENDING_ACKS: usize = 4096;

/// Largest snapshot a puller accepts (1 GiB): a piece announcing more is
/// refused before anything is gathered.
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 30;

/// The puller's state on one sync stream.
#[derive(Debug)]
pub struct Puller {
    peer: String,
    snapshot: SnapshotAssembly,
    /// Messages whose operations are not all applied yet (some wait in the
    /// causal buffer, in memory only): acknowledged once they are.
    pending: Vec<Carried>,
    /// The summary of the initial exchange, once `SYNC_COMPLETE` came and
    /// until it is taken.
    summary: Option<SyncSummary>,
    /// Whether the pusher takes `HAVE`.
    announce: bool,
    /// What was announced with `HAVE` so far.
    announced: VersionVector,
    /// When the last `HAVE` was sent.
    last_have: Option<Instant>,
    /// When a `HAVE` that waited for its interval may go.
    next_have: Option<Instant>,
    /// The devices announced as pulled from directly, as last sent.
    announced_direct: BTreeSet<String>,
    /// The devices this device pulls from directly (other than the peer),
    /// as last looked at.
    direct: BTreeSet<String>,
    /// Devices whose counters rose here and may be announced, with their
    /// counters (gathered from [`Core::counters_since`], so a poll costs
    /// what changed since the last, not the version vector).
    candidates: VersionVector,
    /// How soon the candidates are to be announced: [`HAVE_INTERVAL`] when
    /// one names a device never announced, [`SERVED_HAVE_INTERVAL`] when
    /// one raises a device the puller does not pull from directly,
    /// [`DIRECT_HAVE_INTERVAL`] otherwise.
    urgency: Option<std::time::Duration>,
    /// The generation of [`Core::counters_since`] gathered up to.
    counters_seen: u64,
    /// Tells when the devices this one pulls from change.
    pulling_changes: Option<tokio::sync::watch::Receiver<BTreeMap<String, usize>>>,
    /// Whether the devices this one pulls from are to be looked at even if
    /// they did not change (at first, and after a `HAVE` naming new ones
    /// had to wait).
    look_at_pulling: bool,
    /// While it lives, this device counts as pulling from the peer (from
    /// the request on).
    pulling: Option<PullingGuard>,
    /// Whether the pusher takes a subscription (`"subscriptions"`).
    subscribes: bool,
    /// The subscription the request stated (everything when none).
    asked: Subscription,
}

impl Puller {
    /// A puller of operations from `peer`.
    pub fn new(peer: impl Into<String>) -> Puller {
        Puller {
            peer: peer.into(),
            snapshot: SnapshotAssembly::default(),
            pending: Vec::new(),
            summary: None,
            announce: false,
            announced: VersionVector::new(),
            last_have: None,
            next_have: None,
            announced_direct: BTreeSet::new(),
            direct: BTreeSet::new(),
            candidates: VersionVector::new(),
            counters_seen: 0,
            urgency: None,
            pulling_changes: None,
            look_at_pulling: true,
            pulling: None,
            subscribes: false,
            asked: Subscription::Everything,
        }
    }

    /// A puller that announces what it holds with `HAVE` (the peer has the
    /// [`crate::handshake::SYNC_HAVE`] capability).
    pub fn announcing(peer: impl Into<String>) -> Puller {
        Puller {
            announce: true,
            ..Puller::new(peer)
        }
    }

    /// A `HAVE` to send now, if this device holds operations of devices
    /// other than itself and the peer beyond what the peer is known to have
    /// (announced before, or sent by the peer itself), or the devices it
    /// pulls from directly ([`Core::pulling_from`]) changed since it last
    /// said. Only the counters raised are named; the devices pulled from
    /// are listed whole when they changed. A `HAVE` naming a device for
    /// the first time or with a new list goes at most every
    /// [`HAVE_INTERVAL`]; one raising counters of devices named before at
    /// most every [`SERVED_HAVE_INTERVAL`], or every
    /// [`DIRECT_HAVE_INTERVAL`] when they are all devices this one pulls
    /// from directly (the pusher relays nothing of theirs).
    pub fn poll_have(&mut self, core: &Core, now: Instant) -> Option<Envelope> {
        self.next_have = None;
        if !self.announce {
            return None;
        }
        let own = core.device_id();
        let pulling_changed = match &mut self.pulling_changes {
            Some(rx) => rx.has_changed().unwrap_or(false),
            None => true,
        };
        if pulling_changed || self.look_at_pulling {
            if let Some(rx) = &mut self.pulling_changes {
                rx.mark_unchanged();
            }
            self.look_at_pulling = false;
            self.direct = core
                .pulling()
                .into_iter()
                .filter(|d| *d != self.peer && d != own)
                .collect();
            // What the candidates wait for depends on which are direct.
            let candidates = std::mem::take(&mut self.candidates);
            self.urgency = None;
            for (actor, c) in candidates {
                self.add_candidate(actor, c);
            }
        }
        // Devices whose history is being filled in are not announced: the
        // pusher would take their counters as held, and not send what is
        // asked for again below them.
        let refilling = core.refill_frontier();
        let changed: Vec<(String, u64)> = core
            .counters_since(&mut self.counters_seen)
            .into_iter()
            .filter(|(actor, _)| {
                actor != own && *actor != self.peer && !refilling.contains_key(actor.as_str())
            })
            .collect();
        // Beyond what the peer is known to have: announced before, or sent
        // by the peer itself.
        let from_peer = core.received_counters(&self.peer, changed.iter().map(|(a, _)| a.as_str()));
        for ((actor, c), sent) in changed.into_iter().zip(from_peer) {
            if c > sent {
                self.add_candidate(actor.into(), c);
            }
        }
        let new_list = self.direct != self.announced_direct;
        let interval = match (new_list, self.urgency) {
            (true, _) => HAVE_INTERVAL,
            (false, Some(interval)) => interval,
            (false, None) => return None,
        };
        if let Some(at) = self.last_have {
            if now.saturating_duration_since(at) < interval {
                self.next_have = Some(at + interval);
                return None;
            }
        }
        // What the peer sent meanwhile need not be announced.
        let mut raised = std::mem::take(&mut self.candidates);
        self.urgency = None;
        let from_peer = core.received_counters(&self.peer, raised.keys().map(|a| a.as_str()));
        let mut from_peer = from_peer.into_iter();
        raised.retain(|_, c| *c > from_peer.next().unwrap_or(0));
        let nonempty = |v: Vec<String>| (!v.is_empty()).then_some(v);
        let added = nonempty(
            self.direct
                .difference(&self.announced_direct)
                .cloned()
                .collect(),
        );
        let removed = nonempty(
            self.announced_direct
                .difference(&self.direct)
                .cloned()
                .collect(),
        );
        if raised.is_empty() && added.is_none() && removed.is_none() {
            return None;
        }
        if new_list {
            self.announced_direct = self.direct.clone();
        }
        for (actor, &c) in &raised {
            nomade_crdt::raise_counter(&mut self.announced, actor, c);
        }
        self.last_have = Some(now);
        Some(envelope(Have {
            version_vector: raised,
            direct_added: added,
            direct_removed: removed,
        }))
    }

    /// Adds a device's counter to what the next `HAVE` announces, if above
    /// what was announced, and notes how soon that must go.
    fn add_candidate(&mut self, actor: ActorId, counter: u64) {
        let announced = self.announced.get(actor.as_str()).copied();
        if counter <= announced.unwrap_or(0) {
            return;
        }
        let interval = if self.direct.contains(actor.as_str()) {
            DIRECT_HAVE_INTERVAL
        } else if announced.is_none() {
            HAVE_INTERVAL
        } else {
            SERVED_HAVE_INTERVAL
        };
        self.urgency = Some(self.urgency.map_or(interval, |u| u.min(interval)));
        self.candidates.insert(actor, counter);
    }

    /// When [`Puller::poll_have`] should run again although nothing new was
    /// stored: when a `HAVE` that had to wait for its interval may go.
    pub fn have_timeout(&self) -> Option<Instant> {
        self.next_have
    }

    /// The `SYNC_REQUEST` that opens the stream: everything this device's
    /// version vector does not cover (what it durably holds: the pusher
    /// counts it as acknowledged).
    ///
    /// To a pusher that takes subscriptions, the request states this
    /// device's ([`Core::subscription`]); while the history of entities
    /// subscribed to since is filled in, the version vector is lowered
    /// where it must be received again ([`Core::request_vector`]).
    pub fn request(&mut self, core: &Core) -> Envelope {
        self.pulling = Some(core.pulling_from(&self.peer));
        self.pulling_changes = Some(core.pulling_changes());
        let vv = core.request_vector();
        self.asked = if self.subscribes {
            core.subscription()
        } else {
            Subscription::Everything
        };
        envelope(SyncRequest {
            entity_types: vec![EntityType::Document, EntityType::Conversation],
            since_timestamp: None,
            full_sync: vv.is_empty(),
            version_vector: Some(vv),
            subscription: self.asked.to_request(),
        })
    }

    /// This puller, stating this device's subscription in its request if
    /// `subscribes` (the pusher announced `"subscriptions"`; one that did
    /// not sends everything, which is applied as it comes).
    pub fn subscribing(mut self, subscribes: bool) -> Puller {
        self.subscribes = subscribes;
        self
    }

    /// Takes a group of messages received in order: the operations they
    /// carry are applied and stored in one transaction (a snapshot, or a
    /// message that is not operations, first applies what came before it).
    /// Appends to `out` what to send back: one `ACK` naming every message
    /// whose operations are all durably stored, and, when the pull must end,
    /// an `ERROR` saying why, followed by `Err`.
    pub fn receive(
        &mut self,
        core: &Core,
        group: Vec<Envelope>,
        out: &mut Vec<Envelope>,
    ) -> Result<(), NodeError> {
        let mut ops: Vec<SyncOperation> = Vec::new();
        let mut carried: Vec<Carried> = Vec::new();
        for env in group {
            let before = ops.len();
            match env.message {
                Message::BatchedSync(b) => ops.extend(b.operations),
                Message::SyncOperation(op) => ops.push(op),
                Message::DeltaSync(d) => ops.extend(nomade_crdt::from_delta(&d)?),
                other => {
                    self.apply(
                        core,
                        std::mem::take(&mut ops),
                        std::mem::take(&mut carried),
                        out,
                    )?;
                    match other {
                        Message::SyncSnapshot(piece) => {
                            self.receive_piece(core, env.message_id, piece, out)?
                        }
                        other => self.handle_control(core, env.message_id, other, out)?,
                    }
                    continue;
                }
            }
            carried.push((env.message_id, nomade_crdt::last_counters(&ops[before..])));
            Metrics::add(&core.metrics().sync_frames_received, 1);
        }
        self.apply(core, ops, carried, out)
    }

    /// The summary of the initial exchange, once, when `SYNC_COMPLETE` has
    /// been received.
    pub fn take_summary(&mut self) -> Option<SyncSummary> {
        self.summary.take()
    }

    /// Messages held back from acknowledgement (their operations wait in
    /// the causal buffer).
    pub fn pending_acks(&self) -> usize {
        self.pending.len()
    }

    /// Applies a group of operations in one transaction, then acknowledges
    /// the messages whose operations are all applied, so durably stored:
    /// those of `carried`, and those pending that became so. The others wait:
    /// an operation held in the causal buffer is only in memory.
    fn apply(
        &mut self,
        core: &Core,
        ops: Vec<SyncOperation>,
        carried: Vec<Carried>,
        out: &mut Vec<Envelope>,
    ) -> Result<(), NodeError> {
        if carried.is_empty() {
            return Ok(());
        }
        if let Err(e) = core.apply_remote(&self.peer, ops) {
            let ids = carried.into_iter().map(|(id, _)| id).collect();
            return self.acknowledge(Err(e), ids, out);
        }
        self.pending.extend(carried);
        // Durably held, not only applied: another commit may be on its way
        // to the disk.
        let vv = core.durable_version_vector();
        let (ready, waiting): (Vec<Carried>, Vec<Carried>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, carried)| covers(&vv, carried));
        self.pending = waiting;
        let excess = self.pending.len().saturating_sub(MAX_PENDING_ACKS);
        self.pending.drain(..excess);
        if ready.is_empty() {
            return Ok(());
        }
        let ids = ready.into_iter().map(|(id, _)| id).collect();
        self.acknowledge(Ok(()), ids, out)
    }

    /// Takes one `SYNC_SNAPSHOT` piece; once the snapshot is whole, adopts
    /// it (see [`Core::adopt_snapshot`]) and acknowledges its pieces. A
    /// piece out of place ends the pull with `INVALID_MESSAGE`.
    fn receive_piece(
        &mut self,
        core: &Core,
        message_id: MessageId,
        piece: SyncSnapshot,
        out: &mut Vec<Envelope>,
    ) -> Result<(), NodeError> {
        match self.snapshot.add(message_id, piece) {
            Ok(None) => Ok(()),
            Ok(Some((bytes, ids))) => {
                let result = core.adopt_snapshot(&self.peer, &bytes).map(|_| ());
                if let Err(e) = &result {
                    core.metrics().record_error("SNAPSHOT_REFUSED");
                    tracing::warn!(peer = %self.peer, error = %e, "did not adopt the peer's snapshot");
                }
                self.acknowledge(result, ids, out)
            }
            Err(reason) => {
                out.push(error_message(
                    ErrorCode::INVALID_MESSAGE,
                    reason.clone(),
                    Some(message_id),
                ));
                Err(peer_error(&self.peer, reason))
            }
        }
    }

    /// Acknowledges `ids` when what they carried is durably applied
    /// (`result` is `Ok`); otherwise tells the peer why with an `ERROR` and
    /// ends the pull.
    fn acknowledge(
        &self,
        result: Result<(), NodeError>,
        ids: Vec<MessageId>,
        out: &mut Vec<Envelope>,
    ) -> Result<(), NodeError> {
        let related = ids.first().copied();
        let (code, text, error) = match result {
            Ok(()) => {
                out.push(envelope(Ack { message_ids: ids }));
                return Ok(());
            }
            Err(NodeError::Crdt(nomade_crdt::CrdtError::BufferFull { .. })) => (
                ErrorCode::SYNC_CONFLICT,
                "causal buffer full: resync needed".to_string(),
                peer_error(&self.peer, "causal buffer full"),
            ),
            Err(NodeError::SnapshotRefused(reason)) => (
                ErrorCode::SYNC_CONFLICT,
                reason.clone(),
                NodeError::SnapshotRefused(reason),
            ),
            // Not durable: not acknowledged. The peer sends it again after
            // reconnecting.
            Err(NodeError::Store(e)) => (
                ErrorCode::QUOTA_EXCEEDED,
                format!("cannot store operations: {e}"),
                NodeError::Store(e),
            ),
            Err(e) => (ErrorCode::INVALID_MESSAGE, e.to_string(), e),
        };
        out.push(error_message(code, text, related));
        Err(error)
    }

    /// Handles a message other than operations or snapshot pieces.
    fn handle_control(
        &mut self,
        core: &Core,
        message_id: MessageId,
        message: Message,
        out: &mut Vec<Envelope>,
    ) -> Result<(), NodeError> {
        match message {
            Message::SyncComplete(c) => {
                let summary = SyncSummary {
                    operations: c.operations_count,
                    hashes_match: core.state_hash_of(&self.asked) == c.new_state_hash,
                };
                tracing::info!(peer = %self.peer, operations = c.operations_count, hashes_match = summary.hashes_match, "initial sync received");
                self.summary = Some(summary);
                Ok(())
            }
            Message::Error(e) => Err(refused_by(&self.peer, &e)),
            other => {
                let name = other.message_type().name();
                out.push(error_message(
                    ErrorCode::INVALID_MESSAGE,
                    format!("{name} on a sync stream"),
                    Some(message_id),
                ));
                Err(peer_error(
                    &self.peer,
                    format!("sent {name} on a sync stream"),
                ))
            }
        }
    }
}

/// A snapshot received whole, and the ids of the messages that carried it.
type WholeSnapshot = (Vec<u8>, Vec<MessageId>);

/// A snapshot being received, piece by piece.
#[derive(Debug, Default)]
struct SnapshotAssembly {
    total_len: u64,
    bytes: Vec<u8>,
    ids: Vec<MessageId>,
}

impl SnapshotAssembly {
    /// Takes the next piece; returns the whole snapshot and the ids of the
    /// messages that carried it once the last piece is in. A piece out of
    /// order, empty, past the announced length or announcing another one is
    /// an error naming what is wrong.
    fn add(&mut self, id: MessageId, piece: SyncSnapshot) -> Result<Option<WholeSnapshot>, String> {
        if self.ids.is_empty() {
            if piece.total_len > MAX_SNAPSHOT_LEN {
                return Err(format!(
                    "a snapshot of {} bytes (at most {MAX_SNAPSHOT_LEN} accepted)",
                    piece.total_len
                ));
            }
            self.total_len = piece.total_len;
        } else if piece.total_len != self.total_len {
            return Err(format!(
                "a snapshot piece announcing {} bytes in a snapshot of {}",
                piece.total_len, self.total_len
            ));
        }
        let expected = self.bytes.len() as u64;
        let end = piece.offset.saturating_add(piece.data.len() as u64);
        if piece.data.is_empty() || piece.offset != expected || end > self.total_len {
            return Err(format!(
                "a snapshot piece of {} bytes at offset {} (expected offset {expected} of {})",
                piece.data.len(),
                piece.offset,
                self.total_len
            ));
        }
        self.bytes.extend_from_slice(&piece.data);
        self.ids.push(id);
        if end == self.total_len {
            let done = std::mem::take(self);
            return Ok(Some((done.bytes, done.ids)));
        }
        Ok(None)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::new_message_id;

    fn piece(total_len: u64, offset: u64, data: &'static [u8]) -> SyncSnapshot {
        SyncSnapshot {
            total_len,
            offset,
            data: bytes::Bytes::from_static(data),
        }
    }

    #[test]
    fn a_snapshot_is_gathered_in_order_and_whole() {
        let mut a = SnapshotAssembly::default();
        let (one, two) = (new_message_id(), new_message_id());
        assert_eq!(a.add(one, piece(6, 0, b"abc")), Ok(None));
        let (bytes, ids) = a
            .add(two, piece(6, 3, b"def"))
            .expect("in order")
            .expect("whole");
        assert_eq!(bytes, b"abcdef");
        assert_eq!(ids, vec![one, two]);
        // Ready for the next one.
        assert_eq!(
            a.add(one, piece(1, 0, b"z")).expect("ok").expect("whole").0,
            b"z"
        );
    }

    /// BAD_INPUTS: snapshot pieces out of order, overlapping, empty, past
    /// their announced length, changing it, or announcing more than a
    /// puller accepts: refused with what is wrong, before anything large is
    /// held.
    #[test]
    fn bad_snapshot_pieces_are_refused() {
        let id = new_message_id();
        let cases: Vec<(&str, Vec<SyncSnapshot>, &str)> = vec![
            (
                "too large",
                vec![piece(MAX_SNAPSHOT_LEN + 1, 0, b"a")],
                "at most",
            ),
            (
                "not from the start",
                vec![piece(6, 3, b"def")],
                "expected offset 0",
            ),
            (
                "a gap",
                vec![piece(6, 0, b"ab"), piece(6, 3, b"def")],
                "expected offset 2",
            ),
            (
                "an overlap",
                vec![piece(6, 0, b"abc"), piece(6, 2, b"cde")],
                "expected offset 3",
            ),
            ("empty", vec![piece(6, 0, b"")], "of 0 bytes"),
            ("past the end", vec![piece(2, 0, b"abc")], "of 2"),
            (
                "another length",
                vec![piece(6, 0, b"abc"), piece(7, 3, b"def")],
                "announcing 7",
            ),
        ];
        for (what, pieces, says) in cases {
            let mut a = SnapshotAssembly::default();
            let mut result = Ok(None);
            for p in pieces {
                result = a.add(id, p);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Err(m) => assert!(m.contains(says), "{what}: {m}"),
                Ok(r) => panic!("{what}: accepted ({r:?})"),
            }
        }
    }
}
