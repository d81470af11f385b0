//! The pusher's side of a sync stream, sans-IO: what this device sends a
//! peer that asked, and what the peer's acknowledgements change.
//!
//! A [`Pusher`] is fed the messages the peer sends on the stream
//! ([`Pusher::receive`]: the `SYNC_REQUEST` first, then `ACK`s and `HAVE`s)
//! and asked for the frames to send ([`Pusher::poll`]) whenever the store may
//! hold something new or its timer ([`Pusher::poll_timeout`]) expires. It
//! reads the store through [`Core`], synchronously, and is told the time.
//!
//! Forwarding (docs/PROTOCOL.md, "Forwarding"): this device's own operations
//! go at once; operations of other devices that arrived while the peer was
//! connected are held for [`Pusher::relay_hold`] (about two round trips
//! and the peer's `HAVE` interval), then sent only if the peer is not known
//! to have them meanwhile. Once the peer has announced getting a device's
//! operations from elsewhere, that device's are held for
//! [`SERVED_RELAY_HOLD`]: in a mesh every device receives an operation from
//! its author, and announces it with `HAVE`, before a neighbour relays it,
//! however loaded the devices are.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nomade_crdt::{raise_counter, Subscription};
use nomade_wire::{
    ActorId, BatchEncoder, EntityType, Envelope, ErrorCode, Message, MessageId, MessageType,
    SyncComplete, SyncOperation, SyncSnapshot, VersionVector,
};

use super::{envelope, error_message, new_message_id, peer_error, refused_by, Transmit};
use crate::batch::MAX_BATCH_PAYLOAD;
use crate::core::{now_ms, Core, PushItem, RelayCutoff};
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::store::covers;

/// Most log entries examined per [`Pusher::poll`], so that a large backlog
/// is sent in pieces rather than copied at once.
pub const SCAN_LIMIT: usize = 20_000;

/// Frames a pusher sends without their acknowledgement before it waits for
/// one (1,024, about 60 MB of operations at most): what it remembers of
/// frames in flight stays bounded, whatever the peer does.
pub const MAX_UNACKED_FRAMES: usize = 1024;

/// Most operations a pusher keeps in memory while their relay hold runs;
/// beyond, its cursor waits before them in the store and reads them again
/// later.
pub const MAX_HELD_OPS: usize = 16_384;

/// How long a relayed operation is held at least, on top of two round
/// trips: the longest a puller waits between two `HAVE`s
/// ([`super::HAVE_INTERVAL`]) and a margin for its commit.
pub const RELAY_HOLD_BASE: Duration = Duration::from_millis(15);

/// The longest a relayed operation is held, however slow the round trips.
pub const MAX_RELAY_HOLD: Duration = Duration::from_secs(2);

/// How long an operation is held before it is relayed when its author is
/// one the peer announced getting operations from elsewhere (at least
/// [`Pusher::relay_hold`]): the peer is likely to get this one there too.
pub const SERVED_RELAY_HOLD: Duration = Duration::from_secs(1);

/// The longest [`Pusher::served_relay_hold`] grows to.
pub const MAX_SERVED_RELAY_HOLD: Duration = Duration::from_secs(60);

/// The relay hold before any round trip is measured (the first frames of a
/// stream): a mesh coming together is loaded, and its devices' first
/// operations take longer than on a quiet one.
pub const INITIAL_RELAY_HOLD: Duration = Duration::from_millis(200);

/// The pusher's state on one sync stream.
#[derive(Debug)]
pub struct Pusher {
    peer: String,
    window: usize,
    /// When the store's last sequence number was first seen at each value,
    /// oldest first, while rows after `served_after` may be held.
    seen: VecDeque<(u64, Instant)>,
    /// How many entries at the front of `seen` are older than the relay
    /// hold (counted into `relay_after`).
    aged: usize,
    /// Rows up to this sequence number were stored before the request or
    /// long enough ago: every operation in them may be relayed.
    relay_after: u64,
    /// The same for the devices in `served`, after [`SERVED_RELAY_HOLD`].
    served_after: u64,
    /// Devices whose operations the peer announced getting from elsewhere
    /// (in its knowledge, so bounded as it is).
    served: BTreeSet<String>,
    /// Devices the peer pulls from directly, as it last said: nothing of
    /// theirs is relayed to it (at most the replica's bound on devices).
    direct: BTreeSet<String>,
    /// Operations of other devices read from the store and held until
    /// their hold ends, at most [`MAX_HELD_OPS`].
    held_ops: HeldOps,
    /// Whether operations are held back (in `held_ops`, or in the store
    /// after the cursor).
    held: bool,
    /// Round trips from a frame to its acknowledgement.
    rtt: RoundTrip,
    /// [`Core::delivery_lag`] at the last poll.
    delivery_lag: Duration,
    /// What the peer has, as far as this pusher knows: what it asked with,
    /// what was sent to it, and what it sent this device.
    knowledge: VersionVector,
    /// The generation of [`Core::received_since`] last merged into
    /// `knowledge`.
    received_generation: u64,
    /// The [`Core::compaction_generation`] at which `knowledge` was last
    /// found to cover what the log no longer holds.
    covers_compacted: Option<u64>,
    /// The store's sequence number up to which everything the peer lacks was
    /// sent. `None` until the `SYNC_REQUEST`.
    cursor: Option<u64>,
    /// Operations sent in the initial exchange, until `SYNC_COMPLETE`.
    initial: Option<usize>,
    /// The store's last sequence number when the request came: the initial
    /// exchange ends once everything up to it the peer lacks is sent.
    initial_upto: u64,
    /// Frames sent and not yet acknowledged.
    unacked: HashMap<MessageId, Unacked>,
    /// Snapshot pieces sent but the last (whose acknowledgement stands for
    /// the whole): their acknowledgements are expected, and change nothing.
    snapshot_pieces: std::collections::HashSet<MessageId>,
    batch: BatchEncoder,
    /// Whether operation frames are compressed where that pays (the peer
    /// takes compressed frames).
    compress: bool,
    /// The peer's subscription, from its request: operations of other
    /// entities go as `skip`s (docs/PROTOCOL.md, "Subscriptions").
    filter: Subscription,
    /// Devices whose operations stopped at a `skip` this device stored: it
    /// does not hold what the skip stands for, so nothing of theirs after
    /// it goes to the peer on this stream.
    stopped: BTreeSet<ActorId>,
}

/// Operations of other devices held back, in two queues by whether the
/// peer gets their author's operations from elsewhere (their holds end at
/// different times), each in the order stored: releasing what may go costs
/// what is released, not what is held.
#[derive(Debug, Default)]
struct HeldOps {
    unserved: VecDeque<(u64, Arc<SyncOperation>)>,
    served: VecDeque<(u64, Arc<SyncOperation>)>,
}

impl HeldOps {
    fn len(&self) -> usize {
        self.unserved.len() + self.served.len()
    }

    fn is_empty(&self) -> bool {
        self.unserved.is_empty() && self.served.is_empty()
    }

    /// The sequence number of the first operation held, if any.
    fn first_seq(&self) -> Option<u64> {
        let first = |q: &VecDeque<(u64, Arc<SyncOperation>)>| q.front().map(|&(s, _)| s);
        match (first(&self.unserved), first(&self.served)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn clear(&mut self) {
        self.unserved.clear();
        self.served.clear();
    }

    /// Holds the operation stored at `seq` (after those held already).
    fn push(&mut self, seq: u64, op: Arc<SyncOperation>, served: &BTreeSet<String>) {
        if served.contains(op.actor_id.as_str()) {
            self.served.push_back((seq, op));
        } else {
            self.unserved.push_back((seq, op));
        }
    }

    /// Takes the operations whose hold ended under `cutoff` and that the
    /// peer still lacks (as `knowledge` says), in the order stored. One
    /// whose author became served while it was held moves to the longer
    /// hold; those the peer got meanwhile are dropped.
    fn release(
        &mut self,
        cutoff: RelayCutoff<'_>,
        knowledge: &VersionVector,
    ) -> Vec<Arc<SyncOperation>> {
        let lacks = |op: &SyncOperation| {
            op.operation.last_counter() > knowledge.get(&op.actor_id).copied().unwrap_or(0)
                && !cutoff.direct.contains(op.actor_id.as_str())
        };
        let mut released = Vec::new();
        while let Some((seq, _)) = self.unserved.front() {
            if *seq > cutoff.after {
                break;
            }
            let Some((seq, op)) = self.unserved.pop_front() else {
                break;
            };
            if !lacks(&op) {
                continue;
            }
            if seq <= cutoff.for_actor(&op.actor_id) {
                released.push((seq, op));
            } else {
                let at = self.served.partition_point(|(s, _)| *s < seq);
                self.served.insert(at, (seq, op));
            }
        }
        let from_unserved = released.len();
        while let Some((seq, _)) = self.served.front() {
            if *seq > cutoff.served_after.min(cutoff.after) {
                break;
            }
            if let Some((seq, op)) = self.served.pop_front() {
                if lacks(&op) {
                    released.push((seq, op));
                }
            }
        }
        if from_unserved > 0 && released.len() > from_unserved {
            released.sort_by_key(|(seq, _)| *seq);
        }
        released.into_iter().map(|(_, op)| op).collect()
    }
}

/// A smoothed round trip, the first sample taken as it is.
#[derive(Debug, Default)]
struct RoundTrip {
    smoothed: Option<Duration>,
}

impl RoundTrip {
    fn sample(&mut self, rtt: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => rtt,
            Some(srtt) => (srtt * 7 + rtt) / 8,
        });
    }
}

/// A frame sent and not yet acknowledged.
#[derive(Debug)]
struct Unacked {
    /// The last counter of each device's operations in it.
    carries: VersionVector,
    /// When it was sent (its acknowledgement measures the round trip).
    sent: Instant,
}

impl Pusher {
    /// A pusher to `peer`, keeping at most `window` frames unacknowledged.
    pub fn new(peer: impl Into<String>, window: usize) -> Pusher {
        Pusher {
            peer: peer.into(),
            window: window.max(1),
            seen: VecDeque::new(),
            aged: 0,
            relay_after: 0,
            served_after: 0,
            served: BTreeSet::new(),
            direct: BTreeSet::new(),
            held_ops: HeldOps::default(),
            held: false,
            rtt: RoundTrip::default(),
            delivery_lag: Duration::ZERO,
            knowledge: VersionVector::new(),
            received_generation: 0,
            covers_compacted: None,
            cursor: None,
            initial: Some(0),
            initial_upto: 0,
            unacked: HashMap::new(),
            snapshot_pieces: std::collections::HashSet::new(),
            batch: BatchEncoder::new(MAX_BATCH_PAYLOAD),
            compress: false,
            filter: Subscription::Everything,
            stopped: BTreeSet::new(),
        }
    }

    /// The peer's subscription, as its request stated it.
    pub fn filter(&self) -> &Subscription {
        &self.filter
    }

    /// This pusher, compressing its operation frames where that pays
    /// ([`nomade_wire::compress_frame`]) if `compress`: for a peer that
    /// announced the `"lz4"` capability.
    pub fn compressing(mut self, compress: bool) -> Pusher {
        self.compress = compress;
        self
    }

    /// An operation frame to send: compressed, if this pusher compresses
    /// and that pays.
    fn frame(&self, frame: Bytes) -> Transmit {
        let compressed = self.compress.then(|| nomade_wire::compress_frame(&frame));
        Transmit::Frame(compressed.flatten().unwrap_or(frame))
    }

    /// The device pushed to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the window of unacknowledged frames is full: [`Pusher::poll`]
    /// sends nothing until an acknowledgement comes.
    pub fn window_full(&self) -> bool {
        self.unacked.len() >= self.window
    }

    /// Frames sent and not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Whether the peer's `SYNC_REQUEST` has come: before, there is nothing
    /// to send.
    pub fn started(&self) -> bool {
        self.cursor.is_some()
    }

    /// How long an operation of another device is held before it is relayed
    /// to this peer: two smoothed round trips (a frame to its `ACK`) and
    /// [`RELAY_HOLD_BASE`], at most [`MAX_RELAY_HOLD`];
    /// [`INITIAL_RELAY_HOLD`] before any round trip is measured. (Not
    /// TCP's mean deviation: an `ACK` waits for the causal buffer, so round
    /// trips vary with what arrives out of order, not with the network.) For a device the peer gets operations of from
    /// elsewhere: [`Pusher::served_relay_hold`].
    pub fn relay_hold(&self) -> Duration {
        match self.rtt.smoothed {
            None => INITIAL_RELAY_HOLD,
            Some(srtt) => (srtt * 2 + RELAY_HOLD_BASE).min(MAX_RELAY_HOLD),
        }
    }

    /// How long an operation is held when its author is one the peer
    /// announced getting operations of from elsewhere:
    /// [`SERVED_RELAY_HOLD`], or twice the time operations recently took to
    /// reach this device ([`Core::delivery_lag`], as of the last poll: a
    /// loaded mesh takes as long to reach the peer), or
    /// [`Pusher::relay_hold`], whichever is longest; at most
    /// [`MAX_SERVED_RELAY_HOLD`].
    pub fn served_relay_hold(&self) -> Duration {
        SERVED_RELAY_HOLD
            .max(self.delivery_lag * 2)
            .min(MAX_SERVED_RELAY_HOLD)
            .max(self.relay_hold())
    }

    /// When [`Pusher::poll`] should run again although nothing new was
    /// stored and nothing was received: when held operations may go.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.held || self.window_full() {
            return None;
        }
        let served = self
            .seen
            .front()
            .map(|&(_, at)| at + self.served_relay_hold());
        let unserved = self
            .seen
            .get(self.aged)
            .map(|&(_, at)| at + self.relay_hold());
        served.into_iter().chain(unserved).min()
    }

    /// How many devices the pusher knows something of the peer holds
    /// (bounded by the replica's bound on devices).
    pub fn known_devices(&self) -> usize {
        self.knowledge.len()
    }

    /// How many devices the peer said it pulls from directly (at most the
    /// replica's bound on devices, whatever it sends).
    pub fn direct_devices(&self) -> usize {
        self.direct.len()
    }

    /// The smoothed round trip measured so far, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.smoothed
    }

    /// Takes a message from the peer: the `SYNC_REQUEST` first, then `ACK`s.
    /// An `ERROR`, or anything else, ends the push (`Err`; for anything else
    /// an `ERROR` is appended to `out` first).
    pub fn receive(
        &mut self,
        core: &Core,
        env: Envelope,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Result<(), NodeError> {
        match (env.message, self.cursor) {
            (Message::SyncRequest(request), None) => {
                self.filter = match Subscription::from_request(request.subscription.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        core.metrics().record_error("SUBSCRIPTION_INVALID");
                        out.push(Transmit::message(error_message(
                            ErrorCode::INVALID_MESSAGE,
                            e.to_string(),
                            Some(env.message_id),
                        )));
                        return Err(peer_error(&self.peer, format!("asked with {e}")));
                    }
                };
                self.knowledge = if request.full_sync {
                    VersionVector::new()
                } else {
                    request.version_vector.unwrap_or_default()
                };
                // Everything up to the resume point is covered by what the
                // peer has.
                self.cursor = Some(core.resume_point(&self.knowledge)?);
                // What is stored now is the peer's catch-up: nothing of it
                // is held, but for the relays among the operations stored
                // last (kept in memory), which are held from now like new
                // ones: the peer, connecting, may well pull from their
                // authors too, and say so with `HAVE` meanwhile.
                let last = core.last_seq();
                self.initial_upto = last;
                self.relay_after = core
                    .recent_start()
                    .map_or(last, |first| last.min(first.saturating_sub(1)));
                self.served_after = self.relay_after;
                if self.relay_after < last {
                    self.seen.push_back((last, now));
                }
                // What the peer says it holds counts as acknowledged: with
                // what it acknowledges later, it is what compaction may drop.
                core.record_ack(&self.peer, &self.knowledge);
                Ok(())
            }
            (Message::Ack(a), Some(_)) => {
                for id in &a.message_ids {
                    if let Some(frame) = self.unacked.remove(id) {
                        core.record_ack(&self.peer, &frame.carries);
                        self.rtt.sample(now.saturating_duration_since(frame.sent));
                    } else if !self.snapshot_pieces.remove(id) {
                        // A frame never sent, or acknowledged already:
                        // nothing to do but count it.
                        core.metrics().record_error("ACK_UNKNOWN");
                    }
                }
                tracing::trace!(peer = %self.peer, unacked = self.unacked.len(), "ack");
                Ok(())
            }
            (Message::Have(h), Some(_)) => {
                // What the peer holds is not sent to it, even beyond what
                // this device holds yet (it may announce a device's
                // operations before they reach this one: they must not be
                // relayed when they do). Claiming more than it holds only
                // keeps operations from the peer itself. Devices this one
                // does not know count up to the replica's bound on devices:
                // a peer naming others cannot grow this map beyond it. The
                // devices named are served elsewhere: theirs are held
                // longer.
                let ours = core.counters_of(h.version_vector.keys().map(ActorId::as_str));
                let bound = core.replica_config().max_actors;
                let mut held = VersionVector::new();
                for ((actor, &c), own) in h.version_vector.iter().zip(ours) {
                    if own > 0 {
                        held.insert(actor.clone(), c.min(own));
                    } else if !self.knowledge.contains_key(actor) && self.knowledge.len() >= bound {
                        continue;
                    }
                    raise_counter(&mut self.knowledge, actor, c);
                    if !self.served.contains(actor.as_str()) {
                        self.served.insert(actor.to_string());
                    }
                }
                // Durably held by the peer, as far as it exists here: as
                // good as acknowledged.
                core.record_ack(&self.peer, &held);
                let mut stopped = false;
                for device in h.direct_removed.into_iter().flatten() {
                    stopped |= self.direct.remove(&device);
                }
                for device in h.direct_added.into_iter().flatten() {
                    if self.direct.len() >= bound {
                        break;
                    }
                    self.direct.insert(device);
                }
                // A device the peer no longer pulls from: what it lacks of
                // it was passed over, so the scan goes back to where
                // everything is covered by what the peer is known to have.
                if stopped {
                    if let Some(cursor) = self.cursor {
                        let back = core.resume_point(&self.knowledge)?;
                        self.cursor = Some(cursor.min(back));
                        // Found again by the scan.
                        self.held_ops.clear();
                    }
                }
                Ok(())
            }
            (Message::Error(e), _) => Err(refused_by(&self.peer, &e)),
            (other, cursor) => {
                let name = other.message_type().name();
                let (said, reason) = match cursor {
                    None => (
                        format!("expected SYNC_REQUEST, got {name}"),
                        format!("opened a sync stream with {name}"),
                    ),
                    Some(_) => (
                        format!("{name} not expected here"),
                        format!("sent {name} to a pusher"),
                    ),
                };
                out.push(Transmit::message(error_message(
                    ErrorCode::INVALID_MESSAGE,
                    said,
                    Some(env.message_id),
                )));
                Err(peer_error(&self.peer, reason))
            }
        }
    }

    /// Appends to `out` the frames that send the peer what it lacks, reading
    /// at most about [`SCAN_LIMIT`] stored operations: the stored snapshot
    /// first when the peer lacks operations compacted away, then operations
    /// (stored rows the peer lacks entirely as they are stored), then, at
    /// the end of the initial exchange, `SYNC_COMPLETE`. Returns whether
    /// more is waiting (call again). Sends nothing before the request or
    /// while the window is full.
    pub fn poll(
        &mut self,
        core: &Core,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Result<bool, NodeError> {
        let Some(mut cursor) = self.cursor else {
            return Ok(false);
        };
        if self.window_full() {
            return Ok(false);
        }
        self.delivery_lag = core.delivery_lag();
        self.age_relayed(core.last_seq(), now);
        // What the peer sent this device since: not sent back.
        if let Some(received) = core.received_since(&self.peer, &mut self.received_generation) {
            for (actor, &c) in &received {
                raise_counter(&mut self.knowledge, actor, c);
            }
        }
        // Knowledge only grows: once it covers what the log no longer
        // holds, it does until the log is compacted again.
        let compaction = core.compaction_generation();
        if self.covers_compacted != Some(compaction) {
            if !covers(&self.knowledge, &core.compacted()) {
                // The peer lacks operations this device no longer holds (it
                // was away longer than the hold, or is new): the snapshot
                // first, then the operations after it.
                match self.send_snapshot(core, now, out)? {
                    Some(seq) => {
                        cursor = seq;
                        self.held_ops.clear();
                    }
                    None => {
                        // No snapshot for this peer: nothing goes of the
                        // devices whose compacted operations it lacks
                        // (they would wait forever for them).
                        for (actor, &c) in &core.compacted() {
                            if self.knowledge.get(actor).copied().unwrap_or(0) < c {
                                self.stopped.insert(actor.clone());
                            }
                        }
                    }
                }
            }
            self.covers_compacted = Some(compaction);
        }

        // Held operations whose hold ended go first (they were stored
        // before anything the scan finds), if the peer still lacks them.
        let cutoff = RelayCutoff {
            after: self.relay_after,
            served_after: self.served_after,
            served: &self.served,
            direct: &self.direct,
        };
        let released = self.held_ops.release(cutoff, &self.knowledge);
        if !released.is_empty() {
            if let Some(n) = &mut self.initial {
                *n += released.len();
            }
            let frames = self.send_batches(&released, now, out)?;
            Metrics::add(&core.metrics().ops_sent, released.len() as u64);
            tracing::debug!(peer = %self.peer, ops = released.len(), frames, "relayed held operations");
        }
        let room = MAX_HELD_OPS.saturating_sub(self.held_ops.len());
        // Rows go as they are stored only when every operation in them may
        // go as it is: to a peer that holds everything, from a log without
        // skips.
        let whole_rows = self.filter.is_everything() && !core.holds_part();
        let scan = core.push_items(
            cursor,
            &self.knowledge,
            SCAN_LIMIT,
            self.relay_cutoff(),
            room,
            whole_rows,
        )?;
        self.cursor = Some(scan.next);
        for (seq, op) in scan.held {
            self.held_ops.push(seq, op, &self.served);
        }
        self.held = !self.held_ops.is_empty() || scan.held_back;
        let more = scan.more;
        for item in scan.items {
            let (count, frames) = match item {
                PushItem::Run {
                    payload,
                    packed,
                    count,
                    covers,
                } => {
                    // As stored: no operation decoded or encoded again, and
                    // to a peer that takes compressed frames, not compressed
                    // again either.
                    let id = new_message_id();
                    let mut buf = BytesMut::new();
                    let frame = match packed.filter(|_| self.compress) {
                        Some(packed) => {
                            nomade_wire::put_compressed_frame(
                                &mut buf,
                                MessageType::BatchedSync,
                                id,
                                now_ms(),
                                &packed,
                            )?;
                            Transmit::Frame(buf.freeze())
                        }
                        None => {
                            nomade_wire::put_frame(
                                &mut buf,
                                MessageType::BatchedSync,
                                id,
                                now_ms(),
                                &payload,
                            )?;
                            self.frame(buf.freeze())
                        }
                    };
                    self.sent(id, covers, now);
                    out.push(frame);
                    Metrics::add(&core.metrics().runs_sent_as_stored, 1);
                    (count as usize, 1)
                }
                PushItem::Operations(ops) => (ops.len(), self.send_batches(&ops, now, out)?),
            };
            Metrics::add(&core.metrics().ops_sent, count as u64);
            if let Some(n) = &mut self.initial {
                *n += count;
            }
            tracing::debug!(peer = %self.peer, ops = count, frames, "pushed operations");
        }
        if more {
            return Ok(true);
        }
        // The initial exchange ends when nothing stored before the request
        // waits any more (held, or after the cursor).
        let pending = scan.held_back && self.cursor.is_some_and(|c| c < self.initial_upto)
            || self
                .held_ops
                .first_seq()
                .is_some_and(|s| s <= self.initial_upto);
        if pending {
            return Ok(false);
        }
        if let Some(count) = self.initial.take() {
            out.push(Transmit::message(envelope(SyncComplete {
                entity_types: vec![EntityType::Document, EntityType::Conversation],
                operations_count: u32::try_from(count).unwrap_or(u32::MAX),
                new_state_hash: core.state_hash_of(&self.filter),
            })));
        }
        Ok(false)
    }

    /// Which operations of other devices may be relayed now.
    fn relay_cutoff(&self) -> RelayCutoff<'_> {
        RelayCutoff {
            after: self.relay_after,
            served_after: self.served_after,
            served: &self.served,
            direct: &self.direct,
        }
    }

    /// Notes that the store's last sequence number is `last` at `now`, and
    /// lets relayed operations go: those stored at least
    /// [`Pusher::relay_hold`] ago, and, of devices in `served`, those stored
    /// at least [`Pusher::served_relay_hold`] ago.
    fn age_relayed(&mut self, last: u64, now: Instant) {
        if last > self.seen.back().map_or(self.relay_after, |&(s, _)| s) {
            self.seen.push_back((last, now));
        }
        let hold = self.relay_hold();
        while let Some(&(seq, at)) = self.seen.get(self.aged) {
            if now.saturating_duration_since(at) < hold {
                break;
            }
            self.relay_after = self.relay_after.max(seq);
            self.aged += 1;
        }
        let served_hold = self.served_relay_hold();
        while let Some(&(seq, at)) = self.seen.front() {
            if now.saturating_duration_since(at) < served_hold {
                break;
            }
            self.relay_after = self.relay_after.max(seq);
            self.served_after = self.served_after.max(seq);
            self.seen.pop_front();
            self.aged = self.aged.saturating_sub(1);
        }
    }

    /// Records a frame sent: what it carries is awaited in an ACK, and the
    /// peer will have it (later scans skip it).
    fn sent(&mut self, id: MessageId, carries: VersionVector, now: Instant) {
        for (actor, &c) in &carries {
            raise_counter(&mut self.knowledge, actor, c);
        }
        self.unacked.insert(id, Unacked { carries, sent: now });
    }

    /// Appends `ops` (in order) in as few `BATCHED_SYNC` frames as fit the
    /// payload limit, each operation encoded once. Returns the number of
    /// frames.
    fn send_batches(
        &mut self,
        ops: &[impl Borrow<SyncOperation>],
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Result<usize, NodeError> {
        let plain = self.filter.is_everything()
            && self.stopped.is_empty()
            && !ops.iter().any(|op| is_skip(op.borrow()));
        if plain {
            return self.encode_batches(ops, now, out);
        }
        let ops = self.filtered(ops);
        self.encode_batches(&ops, now, out)
    }

    /// `ops` as this peer is to get them (docs/PROTOCOL.md,
    /// "Subscriptions"): those of entities it subscribes to as they are,
    /// the others as `skip`s of the same counters (consecutive ones of a
    /// device joined into one); nothing of a device from a `skip` this
    /// device stored on (it does not hold what the skip stands for).
    fn filtered<'o>(
        &mut self,
        ops: &'o [impl Borrow<SyncOperation>],
    ) -> Vec<std::borrow::Cow<'o, SyncOperation>> {
        use std::borrow::Cow;
        let mut sent: Vec<Cow<'o, SyncOperation>> = Vec::with_capacity(ops.len());
        for op in ops {
            let op: &SyncOperation = op.borrow();
            if self.stopped.contains(&op.actor_id) {
                continue;
            }
            if is_skip(op) {
                self.stopped.insert(op.actor_id.clone());
                continue;
            }
            if self.filter.matches(op.entity_type, &op.entity_id) {
                sent.push(Cow::Borrowed(op));
                continue;
            }
            let (counter, span) = (op.operation.counter, op.operation.edit.span());
            if let Some(Cow::Owned(prev)) = sent.last_mut() {
                let follows = prev.actor_id == op.actor_id
                    && prev.operation.last_counter().saturating_add(1) == counter;
                if let nomade_wire::Edit::Skip { span: s } = &mut prev.operation.edit {
                    if follows {
                        *s += span;
                        continue;
                    }
                }
            }
            sent.push(Cow::Owned(skip_of(op)));
        }
        sent
    }

    /// Appends `ops` (in order) in as few `BATCHED_SYNC` frames as fit,
    /// each operation encoded once. Returns the number of frames.
    fn encode_batches(
        &mut self,
        ops: &[impl Borrow<SyncOperation>],
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Result<usize, NodeError> {
        let mut frames = 0;
        let mut covered = VersionVector::new();
        let mut buf = BytesMut::new();
        let mut i = 0;
        while i < ops.len() {
            let op: &SyncOperation = ops[i].borrow();
            let added = self.batch.push(op)?;
            if added {
                raise_counter(&mut covered, &op.actor_id, op.operation.last_counter());
                i += 1;
            }
            if !added || i == ops.len() {
                let id = new_message_id();
                self.batch.finish_frame(id, now_ms(), &mut buf)?;
                self.sent(id, std::mem::take(&mut covered), now);
                out.push(self.frame(buf.split().freeze()));
                frames += 1;
            }
        }
        Ok(frames)
    }

    /// Appends the stored snapshot in `SYNC_SNAPSHOT` pieces of at most
    /// [`nomade_wire::MAX_CHUNK_DATA`] bytes; the last piece's
    /// acknowledgement stands for the whole. Returns the sequence number it
    /// covers (where the operations after it start).
    fn send_snapshot(
        &mut self,
        core: &Core,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Result<Option<u64>, NodeError> {
        if core.holds_part() && (!core.subscription().covers(&self.filter) || core.refilling()) {
            // This device's snapshot holds part of the entities, and the
            // peer asks for more (or the history of entities subscribed to
            // lately is still being filled in): it gets the history from
            // one that holds it.
            tracing::info!(peer = %self.peer, "no snapshot for a peer that subscribes to more than this device holds");
            return Ok(None);
        }
        let Some((seq, vv, raw)) = core.stored_snapshot()? else {
            return Err(NodeError::CorruptLog(
                "operations were compacted but no snapshot is stored".into(),
            ));
        };
        let raw = if self.filter.is_everything() {
            raw
        } else {
            nomade_crdt::filter_snapshot(&raw, &self.filter, core.replica_config())
                .map_err(|e| NodeError::CorruptLog(format!("the stored snapshot: {e}")))?
        };
        if raw.is_empty() {
            return Err(NodeError::CorruptLog("the stored snapshot is empty".into()));
        }
        let raw = Bytes::from(raw);
        let total_len = raw.len() as u64;
        let mut offset = 0usize;
        while offset < raw.len() {
            let end = raw.len().min(offset + nomade_wire::MAX_CHUNK_DATA);
            let id = new_message_id();
            let piece = SyncSnapshot {
                total_len,
                offset: offset as u64,
                data: raw.slice(offset..end),
            };
            out.push(Transmit::message(Envelope::new(id, now_ms(), piece)));
            if end == raw.len() {
                self.sent(id, vv.clone(), now);
            } else {
                self.snapshot_pieces.insert(id);
            }
            offset = end;
        }
        Metrics::add(&core.metrics().snapshots_sent, 1);
        tracing::info!(peer = %self.peer, bytes = total_len, seq, "sent a snapshot");
        Ok(Some(seq))
    }
}

/// Whether `op` is a `skip`.
fn is_skip(op: &SyncOperation) -> bool {
    matches!(op.operation.edit, nomade_wire::Edit::Skip { .. })
}

/// The `skip` that stands for `op` to a peer that does not subscribe to
/// its entity: the same counters, no entity, no deps.
fn skip_of(op: &SyncOperation) -> SyncOperation {
    SyncOperation {
        entity_id: Default::default(),
        entity_type: EntityType::Document,
        operation: nomade_wire::CrdtOperation {
            counter: op.operation.counter,
            deps: Default::default(),
            edit: nomade_wire::Edit::Skip {
                span: op.operation.edit.span(),
            },
        },
        timestamp: op.timestamp,
        actor_id: op.actor_id.clone(),
    }
}
