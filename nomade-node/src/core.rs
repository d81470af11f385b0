//! The embedding API's local half: a device's replica, persisted in its data
//! directory, with edits, reads and change subscriptions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use nomade_crdt::{LocalEdit, Replica, ReplicaConfig, Subscription};
use nomade_wire::{ActorId, EntityType, Hash32, SyncOperation, Value, VersionVector};
use tokio::sync::{broadcast, watch};

use crate::batch::check_op_size;
use crate::error::NodeError;
use crate::lock;
use crate::metrics::Metrics;
use crate::recent::{CounterJournal, RecentOps};
use crate::store::Store;
use crate::subscriptions::SkipState;

/// A change applied to the local replica. Operations applied together on
/// one entity by one device (a run of keystrokes arriving in one batch, say)
/// are reported as one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The entity that changed.
    pub entity_id: String,
    /// Its type.
    pub entity_type: EntityType,
    /// The device that made the change.
    pub actor_id: String,
    /// Whether it came from a peer (false: made on this device).
    pub remote: bool,
}

/// What a pusher's scan of the store found (see [`Core::push_items`]).
#[derive(Debug)]
pub struct PushScan {
    /// What to send, in order.
    pub items: Vec<PushItem>,
    /// The sequence number to continue from: everything up to it is sent or
    /// covered by what the peer has.
    pub next: u64,
    /// Whether the store goes on past what was read (the scan stopped at
    /// its limit).
    pub more: bool,
    /// Operations of other devices held back, with their sequence numbers
    /// in the order stored (at most the `hold_room` asked for): the caller
    /// sends them when their hold ends.
    pub held: Vec<(u64, Arc<SyncOperation>)>,
    /// Whether more operations were held than `hold_room` took: the scan
    /// stopped before the first of them (`next` is before it).
    pub held_back: bool,
}

/// Which operations of other devices a pusher may relay now (see
/// [`Core::push_items`] and docs/PROTOCOL.md, "Forwarding"): those stored
/// up to `after`, and, for the devices in `served` (the peer announced
/// getting their operations from elsewhere), up to `served_after`; none of
/// the devices in `direct` (the peer pulls from them directly).
#[derive(Debug, Clone, Copy)]
pub struct RelayCutoff<'a> {
    /// Rows up to this sequence number may be relayed.
    pub after: u64,
    /// For a device in `served`, rows up to this one (at most `after`).
    pub served_after: u64,
    /// Devices whose operations the peer gets from elsewhere.
    pub served: &'a BTreeSet<String>,
    /// Devices the peer pulls from directly: theirs are never relayed to
    /// it (passed over, as if the peer had them).
    pub direct: &'a BTreeSet<String>,
}

impl RelayCutoff<'_> {
    /// Whether operations of `actor` are never relayed to the peer (it
    /// pulls from `actor` directly; this device's own always go).
    pub fn skips(&self, actor: &str, own: &str) -> bool {
        actor != own && self.direct.contains(actor)
    }

    /// The last sequence number at which an operation of `actor` may be
    /// relayed now.
    pub fn for_actor(&self, actor: &str) -> u64 {
        if self.served.contains(actor) {
            self.served_after.min(self.after)
        } else {
            self.after
        }
    }
}

/// Operations from peers waiting to be committed together (see
/// [`Core::apply_remote`]).
#[derive(Default)]
struct CommitQueue {
    /// The last ticket handed out.
    last_ticket: u64,
    /// Waiting: ticket, peer, operations.
    pending: Vec<(u64, String, Vec<SyncOperation>)>,
    /// Committed by another caller, by ticket: how many of the operations
    /// were applied, or why not.
    done: HashMap<u64, Result<usize, NodeError>>,
}

/// A clock: ms since the Unix epoch (see [`Core::set_time_source`]).
pub(crate) type TimeSource = Box<dyn Fn() -> i64 + Send + Sync>;

/// Proof that the log's writer lock is held ([`Core::commit_lock`]).
struct CommitGuard<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

/// Sorts the operations a pusher's scan finds: to send, held back (see
/// [`Core::push_items`]), or already with the peer.
struct Sorter<'a> {
    own: &'a str,
    cursor: u64,
    peer: &'a VersionVector,
    relay: RelayCutoff<'a>,
    hold_room: usize,
    /// The first operation held back that did not fit the room.
    first_held: Option<u64>,
    held: Vec<(u64, Arc<SyncOperation>)>,
}

impl Sorter<'_> {
    /// Sorts the operation stored at `seq`: returns it if it is to be sent
    /// now; keeps it (made shared by `shared`) if it is held back.
    fn sort<'o>(
        &mut self,
        seq: u64,
        op: &'o SyncOperation,
        shared: impl FnOnce() -> Arc<SyncOperation>,
    ) -> Option<&'o SyncOperation> {
        let known = self.peer.get(&op.actor_id).copied().unwrap_or(0);
        if seq <= self.cursor
            || op.operation.last_counter() <= known
            || self.relay.skips(&op.actor_id, self.own)
        {
            return None;
        }
        if op.actor_id != self.own && seq > self.relay.for_actor(&op.actor_id) {
            if self.first_held.is_none() && self.held.len() < self.hold_room {
                self.held.push((seq, shared()));
            } else {
                self.first_held.get_or_insert(seq);
            }
            return None;
        }
        Some(op)
    }
}

/// What identifies a stored row's contents: its first sequence number, its
/// number of operations and the BLAKE3 hash of its payload.
type DecodedRowKey = (u64, u64, [u8; 32]);

/// Returned by [`Core::pulling_from`]: while it lives, the device counts
/// as pulling from the peer.
#[derive(Debug)]
pub struct PullingGuard {
    pulling: watch::Sender<BTreeMap<String, usize>>,
    peer: String,
}

impl Drop for PullingGuard {
    fn drop(&mut self) {
        self.pulling.send_modify(|m| {
            if let Some(n) = m.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.peer);
                }
            }
        });
    }
}

/// Something a pusher sends (see [`Core::push_items`]).
#[derive(Debug)]
pub enum PushItem {
    /// A stored row the peer lacks entirely, sent as stored: the payload of
    /// a `BATCHED_SYNC` frame.
    Run {
        /// The payload, canonical.
        payload: Vec<u8>,
        /// The same payload as stored compressed, if it is (the payload of
        /// a compressed frame, sent as it is to a peer that takes them).
        packed: Option<Vec<u8>>,
        /// How many operations it carries.
        count: u64,
        /// The highest counter of each actor in it: what the peer holds
        /// once it acknowledges the frame.
        covers: VersionVector,
    },
    /// Operations the peer lacks, decoded from stored rows it has part of.
    Operations(Vec<SyncOperation>),
}

/// The local state of a device, shared by every task of a running node.
pub struct Core {
    dir: PathBuf,
    device_id: String,
    /// The replica's tunables, kept for reloading it from disk.
    replica_config: ReplicaConfig,
    replica: Mutex<Replica>,
    store: Store,
    metrics: Metrics,
    changes: broadcast::Sender<Change>,
    /// Bumped after every durable append; sync tasks wait on it to push new ops.
    appended: watch::Sender<u64>,
    /// Bumped when a revoked device's history was closed later than
    /// before: pulls start again, to fetch what was refused meanwhile.
    resync: watch::Sender<u64>,
    /// Bumped whenever an actor's history is closed (a device revoked):
    /// pushes to that device end.
    closures: watch::Sender<u64>,
    /// The sequence number the latest snapshot covers, and its size.
    snapshot_seq: std::sync::atomic::AtomicU64,
    snapshot_len: std::sync::atomic::AtomicU64,
    /// Per peer: the operations it acknowledged (stored durably), as a
    /// version vector, kept in the store too (see [`Core::record_ack`]).
    acked: Mutex<HashMap<String, VersionVector>>,
    /// Per peer: when its acknowledgements were last written to the store.
    acked_saved: Mutex<HashMap<String, std::time::Instant>>,
    /// Per peer: when operations last went either way (received from it and
    /// applied, or acknowledged by it), in ms since the Unix epoch.
    last_sync: Mutex<HashMap<String, i64>>,
    /// Added to the system clock for the timestamps of new operations (tests
    /// of skewed clocks; timestamps never decide anything).
    clock_skew_ms: std::sync::atomic::AtomicI64,
    /// Where the time comes from when not from the system clock (the
    /// simulator's clock, see [`Core::set_time_source`]).
    time_source: std::sync::OnceLock<TimeSource>,
    /// What the log no longer holds (the store's compacted frontier).
    compacted: Mutex<VersionVector>,
    /// Per peer: what it sent this device that is applied here (so the
    /// peer holds it): a pusher never sends it back. With it, a generation
    /// bumped whenever it rises (see [`Core::received_since`]).
    received: Mutex<HashMap<String, (u64, VersionVector)>>,
    /// Per peer: the last counters of what it sent that are not applied
    /// yet (they wait in the causal buffer); moved into `received` as they
    /// are, whichever peer's operations release them.
    claimed: Mutex<HashMap<String, VersionVector>>,
    /// The devices this one pulls operations from now (one entry per pull
    /// running, see [`Core::pulling_from`]): they send it their own
    /// operations directly.
    pulling: watch::Sender<BTreeMap<String, usize>>,
    /// How long operations of other devices recently took to get here, in
    /// ms (see [`Core::delivery_lag`]).
    delivery_lag_ms: std::sync::atomic::AtomicU64,
    /// The stored row decoded last, by its first sequence number, length
    /// and payload hash (see [`Core::row_operations`]).
    decoded_row: Mutex<Option<(DecodedRowKey, Arc<Vec<SyncOperation>>)>>,
    /// The operations stored last, decoded: pushers that are up to date
    /// read them here, not in the store.
    recent: Mutex<RecentOps>,
    /// Which devices' counters in the version vector rose, in order (see
    /// [`Core::counters_since`]).
    journal: Mutex<CounterJournal>,
    /// Bumped whenever `compacted` changes.
    compaction_generation: std::sync::atomic::AtomicU64,
    /// Held by whoever writes the log (see [`Core::apply_remote`]): the log
    /// is appended in the order the replica applied, while the replica
    /// itself is unlocked during the disk write.
    commit: Mutex<()>,
    /// Operations from peers waiting for the next commit, and the results
    /// of those committed for callers still waiting.
    commit_queue: Mutex<CommitQueue>,
    /// The version vector of what the log durably holds (the replica's
    /// may be ahead while a commit is being written).
    durable: Mutex<VersionVector>,
    /// How long a paired device may stay silent and still hold compaction
    /// back, in ms (see [`Core::compaction_hold`]).
    compaction_hold_ms: std::sync::atomic::AtomicU64,
    /// The entities this device holds (docs/PROTOCOL.md, "Subscriptions").
    subscription: Mutex<Subscription>,
    /// Whether the log may hold `skip` operations (a skip was stored once):
    /// its rows are then never sent as they are stored.
    skips_stored: std::sync::atomic::AtomicBool,
    /// Whether background work may run now (the device's state allows it):
    /// the periodic snapshot and compaction wait otherwise.
    background_allowed: std::sync::atomic::AtomicBool,
    /// Whether a periodic snapshot (and the compaction after it) is due and
    /// waits for background work to be allowed.
    snapshot_waiting: watch::Sender<bool>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("device_id", &self.device_id)
            .field("dir", &self.dir)
            .finish()
    }
}

pub use nomade_transport::stream::now_ms;

/// A snapshot is written once this many operations were stored after the
/// last one, or an eighth of the last snapshot's size in bytes if that is
/// more (writing the state again then costs at most about 8 bytes per
/// operation stored, against 400-500 for the operation itself), and when
/// the node shuts down. Opening replays the operations after it.
pub const SNAPSHOT_EVERY: u64 = 20_000;

/// Operations stored between two snapshots, at least, per byte of the last
/// snapshot.
const SNAPSHOT_BYTES_PER_OP: u64 = 8;

/// Acknowledgements from one peer are written to the store at most this
/// often (and at every checkpoint).
pub const ACKED_SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// At shutdown, a snapshot is written if at least this many operations were
/// stored since the last one.
pub const SNAPSHOT_AT_SHUTDOWN: u64 = 1_000;

/// How long a paired device may stay silent and still hold the history
/// back by default: 14 days. One silent longer no longer stops this
/// device from compacting what it has not acknowledged; when it returns it
/// is sent a snapshot (see [`Core::compaction_floor`]).
pub const DEFAULT_COMPACTION_HOLD: std::time::Duration =
    std::time::Duration::from_secs(14 * 24 * 3600);

/// Rebuilds the replica: from the latest snapshot, then the operations
/// stored after it. Returns it, the sequence number its snapshot covers and
/// the snapshot's size.
fn load_replica(
    store: &Store,
    device_id: &str,
    config: ReplicaConfig,
) -> Result<(Replica, u64, u64), NodeError> {
    let (mut replica, after, len) = match store.snapshot()? {
        Some((seq, bytes)) => {
            let r = Replica::from_snapshot(device_id, &bytes, config).map_err(|e| {
                NodeError::CorruptLog(format!("the snapshot of the first {seq} operations: {e}"))
            })?;
            (r, seq, bytes.len() as u64)
        }
        None => (Replica::with_config(device_id, config), 0, 0),
    };
    let mut failure = None;
    store.scan_ops(after, |seq, op| match replica.apply_remote(op) {
        Ok(_) => {
            // Stored already: nothing to hand over.
            replica.discard_applied();
            ControlFlow::Continue(())
        }
        Err(e) => {
            failure = Some(format!("stored operation {seq}: {e}"));
            ControlFlow::Break(())
        }
    })?;
    match failure {
        Some(what) => Err(NodeError::CorruptLog(what)),
        None => Ok((replica, after, len)),
    }
}

impl Core {
    /// Opens the database in `dir` for the device `device_id`, rebuilding the
    /// replica (with `replica_config`) from the durable operation log.
    pub fn open(
        dir: &Path,
        device_id: &str,
        replica_config: ReplicaConfig,
    ) -> Result<Arc<Core>, NodeError> {
        std::fs::create_dir_all(dir)?;
        let store = Store::open(&dir.join("nomade.redb"))?;
        let (mut replica, snapshot_seq, snapshot_len) =
            load_replica(&store, device_id, replica_config)?;
        let subscription = crate::subscriptions::load_subscription(&store)?;
        let skips = crate::subscriptions::load_skip_state(&store)?;
        replica.restore_subscription_state(skips.first_skips, skips.refill, skips.refill_until);
        replica.take_subscription_changes();
        let skips_stored = crate::subscriptions::skips_stored(&store)?;
        let last = store.last_seq()?;
        let acked = store.acked()?.into_iter().collect();
        let compacted = store.compacted()?;
        let mut journal = CounterJournal::default();
        for (actor, &c) in replica.version_vector() {
            journal.raise(actor, c);
        }
        let durable = replica.version_vector().clone();
        let (changes, _) = broadcast::channel(4096);
        Ok(Arc::new(Core {
            dir: dir.to_path_buf(),
            device_id: device_id.to_string(),
            replica_config,
            replica: Mutex::new(replica),
            store,
            metrics: Metrics::default(),
            changes,
            appended: watch::Sender::new(last),
            resync: watch::Sender::new(0),
            closures: watch::Sender::new(0),
            snapshot_seq: std::sync::atomic::AtomicU64::new(snapshot_seq),
            snapshot_len: std::sync::atomic::AtomicU64::new(snapshot_len),
            acked: Mutex::new(acked),
            acked_saved: Mutex::new(HashMap::new()),
            last_sync: Mutex::new(HashMap::new()),
            clock_skew_ms: std::sync::atomic::AtomicI64::new(0),
            time_source: std::sync::OnceLock::new(),
            compacted: Mutex::new(compacted),
            received: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashMap::new()),
            pulling: watch::Sender::new(BTreeMap::new()),
            decoded_row: Mutex::new(None),
            recent: Mutex::new(RecentOps::default()),
            journal: Mutex::new(journal),
            compaction_generation: std::sync::atomic::AtomicU64::new(0),
            commit: Mutex::new(()),
            commit_queue: Mutex::new(CommitQueue::default()),
            durable: Mutex::new(durable),
            delivery_lag_ms: std::sync::atomic::AtomicU64::new(0),
            compaction_hold_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_COMPACTION_HOLD.as_millis() as u64,
            ),
            subscription: Mutex::new(subscription),
            skips_stored: std::sync::atomic::AtomicBool::new(skips_stored),
            background_allowed: std::sync::atomic::AtomicBool::new(true),
            snapshot_waiting: watch::Sender::new(false),
        }))
    }

    /// Snapshots `replica`, which holds every operation up to `seq`. A
    /// failure is logged, not returned: the operations are stored, and the
    /// next start replays more of them.
    fn write_snapshot(&self, replica: &Replica, seq: u64) {
        let started = std::time::Instant::now();
        let result = replica
            .snapshot()
            .map_err(NodeError::from)
            .and_then(|bytes| {
                self.store.put_snapshot(seq, &bytes)?;
                Ok(bytes.len())
            });
        match result {
            Ok(len) => {
                self.snapshot_seq.store(seq, Ordering::Relaxed);
                self.snapshot_len.store(len as u64, Ordering::Relaxed);
                tracing::debug!(seq, bytes = len, took = ?started.elapsed(), "snapshot written");
                self.compact_history(replica);
            }
            Err(e) => tracing::warn!(seq, error = %e, "could not write a snapshot"),
        }
    }

    /// Drops the stored operations that this device and every paired
    /// device hold and that the snapshot covers ([`Store::compact_log`],
    /// below [`Core::compaction_floor`]). A failure is logged: the history
    /// stays, nothing is lost.
    fn compact_history(&self, replica: &Replica) {
        let result = self.store.peers().and_then(|peers| {
            let floor = self.compaction_floor(
                replica.version_vector(),
                &peers,
                now_ms(),
                self.compaction_hold(),
            );
            let dropped = self.store.compact_log(&floor)?;
            if dropped > 0 {
                *lock(&self.compacted) = self.store.compacted()?;
                self.compaction_generation.fetch_add(1, Ordering::Relaxed);
            }
            Ok(dropped)
        });
        match result {
            Ok(0) => {}
            Ok(dropped) => {
                Metrics::add(&self.metrics.ops_compacted, dropped);
                tracing::debug!(dropped, "history compacted");
            }
            Err(e) => tracing::warn!(error = %e, "could not compact the history"),
        }
    }

    /// How long a paired device may stay silent and still hold the history
    /// back ([`DEFAULT_COMPACTION_HOLD`] unless set).
    pub fn compaction_hold(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.compaction_hold_ms.load(Ordering::Relaxed))
    }

    /// Sets [`Core::compaction_hold`].
    pub fn set_compaction_hold(&self, hold: std::time::Duration) {
        self.compaction_hold_ms.store(
            u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// What the log no longer holds: the version vector of the operations
    /// compacted away (or adopted in a snapshot). A peer whose version
    /// vector does not cover it is sent a snapshot.
    pub fn compacted(&self) -> VersionVector {
        lock(&self.compacted).clone()
    }

    /// Changes whenever [`Core::compacted`] does: a caller that found a
    /// version vector covering it need not look again until then.
    pub fn compaction_generation(&self) -> u64 {
        self.compaction_generation.load(Ordering::Relaxed)
    }

    /// The latest stored snapshot, for a peer that lacks compacted
    /// operations: the sequence number it covers, its version vector and
    /// its bytes (the format of docs/PROTOCOL.md, "Snapshots"). Read from
    /// the store: the replica is not locked.
    pub fn stored_snapshot(&self) -> Result<Option<(u64, VersionVector, Vec<u8>)>, NodeError> {
        let Some((seq, raw)) = self.store.snapshot()? else {
            return Ok(None);
        };
        let vv = nomade_crdt::snapshot_version_vector(&raw).map_err(|e| {
            NodeError::CorruptLog(format!("the snapshot of the first {seq} operations: {e}"))
        })?;
        Ok(Some((seq, vv, raw)))
    }

    /// Adopts a peer's snapshot (`bytes`, received whole): the state it holds
    /// replaces this device's, and the operations this device holds that it
    /// does not cover are applied again on top, so nothing is lost. Decoded
    /// and checked before the replica is locked; stored in one transaction
    /// ([`Store::rebase`]: the peer's bytes as the snapshot, this device's
    /// operations after it) before it is visible. Under the lock: only the
    /// operations applied again and that write, so the application's reads
    /// and edits wait for no decoding. Returns the snapshot's
    /// version vector, what the peer can be told this device now holds.
    ///
    /// Refused ([`NodeError::SnapshotRefused`], nothing changed) when this
    /// device compacted operations the snapshot lacks: adopting it would
    /// lose them.
    pub fn adopt_snapshot(&self, peer: &str, bytes: &[u8]) -> Result<VersionVector, NodeError> {
        let incoming = Replica::from_snapshot(self.device_id.as_str(), bytes, self.replica_config)
            .map_err(|e| match e {
                nomade_crdt::CrdtError::TooManyActors { .. } => {
                    self.metrics.record_error("TOO_MANY_ACTORS");
                    NodeError::from(e)
                }
                e => NodeError::from(e),
            })?;
        let base = incoming.version_vector().clone();
        let _writer = self.commit_lock();
        let mut replica = self.replica();
        if let Some((actor, held, cut)) = replica.beyond_closed(&base) {
            return Err(NodeError::SnapshotRefused(format!(
                "{peer}'s snapshot holds operations of the revoked device {actor} up to {held}, beyond {cut}, where its history was closed"
            )));
        }
        if crate::store::covers(&replica.request_vector(), &base) {
            // Nothing this device lacks (another peer brought it meanwhile).
            return Ok(base);
        }
        if !crate::store::covers(&base, &self.compacted()) {
            return Err(NodeError::SnapshotRefused(format!(
                "{peer}'s snapshot lacks operations this device compacted: adopting it would lose them"
            )));
        }
        let mut next = incoming;
        next.close_actors_of(&replica);
        let start = self.store.resume_point(&base)?;
        let mut failure = None;
        self.store.scan_ops(start, |seq, op| {
            if op.operation.last_counter() > base.get(&op.actor_id).copied().unwrap_or(0) {
                if let Err(e) = next.apply_remote(op) {
                    failure = Some(format!(
                        "stored operation {seq} on top of the snapshot: {e}"
                    ));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(what) = failure {
            return Err(NodeError::SnapshotRefused(what));
        }
        let tail = next.take_applied();
        if !crate::store::covers(next.version_vector(), replica.version_vector()) {
            return Err(NodeError::SnapshotRefused(format!(
                "{peer}'s snapshot and this device's log do not rebuild everything it holds"
            )));
        }
        // The peer's bytes are the snapshot; the tail is replayed after it
        // at the next start.
        let (snapshot_seq, seq) = self.store.rebase(bytes, &base, &tail)?;
        *lock(&self.compacted) = base.clone();
        self.compaction_generation.fetch_add(1, Ordering::Relaxed);
        // The log was written again: its sequence numbers changed.
        lock(&self.recent).clear();
        {
            let mut journal = lock(&self.journal);
            for (actor, &c) in next.version_vector() {
                if replica.version_vector().get(actor) != Some(&c) {
                    journal.raise(actor, c);
                }
            }
        }
        self.snapshot_seq.store(snapshot_seq, Ordering::Relaxed);
        self.snapshot_len
            .store(bytes.len() as u64, Ordering::Relaxed);
        *lock(&self.durable) = next.version_vector().clone();
        // What the snapshot covers is held under the subscription it was
        // asked with; one holding part of the entities hides the others'
        // operations, as skips do.
        let mut first_skips = replica.first_skips().clone();
        if !lock(&self.subscription).is_everything() {
            for actor in base.keys() {
                first_skips.insert(actor.clone(), 1);
            }
        }
        let mut refill = replica.refill_frontier().clone();
        for (actor, held) in refill.iter_mut() {
            *held = (*held).max(base.get(actor).copied().unwrap_or(0));
        }
        next.restore_subscription_state(first_skips, refill, replica.refill_until().clone());
        next.take_subscription_changes();
        crate::subscriptions::save_skip_state(&self.store, &SkipState::of(&next))?;
        *replica = next;
        self.appended.send_replace(seq);
        Metrics::add(&self.metrics.snapshots_adopted, 1);
        // Any entity may have changed.
        let changed: Vec<(EntityType, String)> = replica
            .entities()
            .map(|(t, id)| (t, id.to_string()))
            .collect();
        drop(replica);
        for (entity_type, entity_id) in changed {
            let _ = self.changes.send(Change {
                entity_id,
                entity_type,
                actor_id: peer.to_string(),
                remote: true,
            });
        }
        self.note_sync(peer);
        tracing::info!(%peer, seq, tail = tail.len(), "adopted a snapshot");
        Ok(base)
    }

    /// Says whether background work may run now: while it may not, the
    /// periodic snapshot and the compaction after it wait
    /// ([`Core::snapshot_waiting`]); when it may again, a waiting snapshot
    /// is written at once.
    pub fn set_background_allowed(&self, allowed: bool) {
        self.background_allowed.store(allowed, Ordering::Relaxed);
        if allowed && *self.snapshot_waiting.borrow() {
            let _writer = self.commit_lock();
            let seq = *self.appended.borrow();
            self.write_snapshot(&self.replica(), seq);
            self.snapshot_waiting.send_replace(false);
        }
    }

    /// Whether background work may run now, as last said
    /// ([`Core::set_background_allowed`]).
    pub fn background_allowed(&self) -> bool {
        self.background_allowed.load(Ordering::Relaxed)
    }

    /// Whether a periodic snapshot waits for background work to be
    /// allowed (it changes as one starts or stops waiting).
    pub fn snapshot_waiting(&self) -> watch::Receiver<bool> {
        self.snapshot_waiting.subscribe()
    }

    /// Writes a snapshot if [`SNAPSHOT_AT_SHUTDOWN`] operations or more were
    /// stored since the last one, so that the next start loads it instead of
    /// replaying them (called when the node shuts down).
    pub fn checkpoint(&self) {
        self.save_acked();
        let _writer = self.commit_lock();
        let replica = self.replica();
        let seq = *self.appended.borrow();
        // A few edits (a command-line `doc set`) are quicker replayed than
        // a whole state written again.
        if seq >= self.snapshot_seq.load(Ordering::Relaxed) + SNAPSHOT_AT_SHUTDOWN {
            self.write_snapshot(&replica, seq);
            // The replaced snapshot's pages, and those every commit left,
            // go back to the file system.
            let before = std::fs::metadata(self.dir.join("nomade.redb")).map_or(0, |m| m.len());
            match self.store.compact() {
                Ok(_) => {
                    let after =
                        std::fs::metadata(self.dir.join("nomade.redb")).map_or(0, |m| m.len());
                    tracing::debug!(before, after, "database compacted");
                }
                Err(e) => tracing::warn!(error = %e, "could not compact the database"),
            }
        }
    }

    /// Skews this device's clock by `ms` for the timestamps of new operations.
    pub fn set_clock_skew(&self, ms: i64) {
        self.clock_skew_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// This device's clock (ms since the Unix epoch), skew included.
    pub fn clock(&self) -> i64 {
        self.now().saturating_add(
            self.clock_skew_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The time now, ms since the Unix epoch: the system clock's, or the
    /// source set with [`Core::set_time_source`].
    fn now(&self) -> i64 {
        match self.time_source.get() {
            Some(source) => source(),
            None => now_ms(),
        }
    }

    /// Takes the time from `source` instead of the system clock, for the
    /// timestamps of new operations and the delivery lag of applied ones
    /// (the simulator's clock: a run then depends on its seed alone). Once:
    /// a later call changes nothing.
    pub(crate) fn set_time_source(&self, source: TimeSource) {
        let _ = self.time_source.set(source);
    }

    pub(crate) fn replica(&self) -> MutexGuard<'_, Replica> {
        lock(&self.replica)
    }

    /// This device's id (its actor id in operations).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The bounds of the replica (devices, sizes) it was opened with.
    pub fn replica_config(&self) -> ReplicaConfig {
        self.replica_config
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A receiver that changes value after every durable append.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// A receiver that changes when pulls are to start again: a revoked
    /// device's history was closed later than before, and what it did up
    /// to there, refused meanwhile, is to be asked for again.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Closes `actor`'s history at `cutoff` (a revoked device,
    /// [`Replica::close_actor`]): its operations after it are refused from
    /// now on. When it was closed before at a lower counter, pulls start
    /// again ([`Core::resyncs`]).
    pub fn close_actor(&self, actor: &str, cutoff: u64) {
        let actor = ActorId::from(actor);
        let mut replica = self.replica();
        let before = replica.closed_actors().get(&actor).copied();
        replica.close_actor(&actor, cutoff);
        drop(replica);
        if before.is_some_and(|b| b < cutoff) {
            self.resync.send_modify(|n| *n += 1);
        }
        self.closures.send_modify(|n| *n += 1);
    }

    /// Replaces `replica` with what the store holds (undoing what was
    /// applied and not stored), keeping the histories it closed.
    fn reload(&self, replica: &mut Replica) -> Result<(), NodeError> {
        let (mut stored, ..) = load_replica(&self.store, &self.device_id, self.replica_config)?;
        stored.close_actors_of(replica);
        let skips = crate::subscriptions::load_skip_state(&self.store)?;
        stored.restore_subscription_state(skips.first_skips, skips.refill, skips.refill_until);
        stored.take_subscription_changes();
        *replica = stored;
        Ok(())
    }

    /// A receiver that changes whenever an actor's history is closed.
    pub fn closures(&self) -> watch::Receiver<u64> {
        self.closures.subscribe()
    }

    /// Whether `actor`'s history is closed (a revoked device).
    pub fn is_closed(&self, actor: &str) -> bool {
        self.replica().closed_actors().contains_key(actor)
    }

    /// The last counter of `actor`'s operations applied here (0 if none).
    pub fn applied_counter(&self, actor: &str) -> u64 {
        self.replica()
            .version_vector()
            .get(actor)
            .copied()
            .unwrap_or(0)
    }

    /// Changes applied from now on (local and from peers).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Takes the log's writer lock: whoever holds it is the only one to
    /// apply operations to the replica and append them to the log.
    fn commit_lock(&self) -> CommitGuard<'_> {
        CommitGuard(lock(&self.commit))
    }

    /// Stores the operations the replica just applied durably, and returns
    /// them; if that fails, rebuilds the replica from the store so that
    /// memory never runs ahead of the disk for long. The history is the
    /// store's: the replica holds none. The replica is unlocked (`replica`
    /// dropped) while the disk syncs, so that reads go on; the writer lock
    /// keeps anything else from applying meanwhile.
    ///
    /// `join_runs` (for this device's own edits) stores operations that
    /// continue one another as one run ([`nomade_crdt::runs`]): a hundred
    /// keystrokes typed in a row are one operation on disk and on the wire.
    /// Operations from peers are stored as they came, so that every device
    /// holds the same operations.
    fn write_log(
        &self,
        _writer: &CommitGuard<'_>,
        mut replica: MutexGuard<'_, Replica>,
        join_runs: bool,
    ) -> Result<Vec<SyncOperation>, NodeError> {
        let mut ops = replica.take_applied();
        let skip_state = replica
            .take_subscription_changes()
            .then(|| SkipState::of(&replica));
        let new_skips = !self.skips_stored.load(Ordering::Relaxed)
            && ops
                .iter()
                .any(|op| matches!(op.operation.edit, nomade_wire::Edit::Skip { .. }));
        if ops.is_empty() {
            drop(replica);
            if let Some(state) = skip_state {
                crate::subscriptions::save_skip_state(&self.store, &state)?;
            }
            return Ok(ops);
        }
        if join_runs {
            let joined = nomade_crdt::runs::join(ops.iter().cloned());
            // Each operation fits a frame; a run of them must too.
            if joined.iter().all(|op| check_op_size(op).is_ok()) {
                ops = joined;
            }
        }
        // What was stored before them: the replica's version vector without
        // them (each device's counters in a batch follow what came before).
        let mut before = replica.version_vector().clone();
        for op in &ops {
            let prior = op.operation.counter - 1;
            if before.get(&op.actor_id).is_some_and(|&c| c > prior) {
                before.insert(op.actor_id.clone(), prior);
            }
        }
        before.retain(|_, c| *c > 0);
        drop(replica);
        if new_skips {
            // Before the rows that hold them: a pusher reading them must
            // know.
            crate::subscriptions::note_skips_stored(&self.store)?;
            self.skips_stored.store(true, Ordering::Relaxed);
        }
        match self.store.append_ops(&ops, Some(&before)) {
            Ok(seq) => {
                if let Some(state) = skip_state {
                    // Before a snapshot may cover the skips.
                    crate::subscriptions::save_skip_state(&self.store, &state)?;
                }
                lock(&self.recent).extend(seq, &ops);
                {
                    let mut journal = lock(&self.journal);
                    let mut durable = lock(&self.durable);
                    for op in &ops {
                        let last = op.operation.last_counter();
                        journal.raise(&op.actor_id, last);
                        nomade_crdt::raise_counter(&mut durable, &op.actor_id, last);
                    }
                }
                self.appended.send_replace(seq);
                let every = SNAPSHOT_EVERY
                    .max(self.snapshot_len.load(Ordering::Relaxed) / SNAPSHOT_BYTES_PER_OP);
                if seq >= self.snapshot_seq.load(Ordering::Relaxed) + every {
                    if self.background_allowed.load(Ordering::Relaxed) {
                        // Under the writer lock: the replica holds what the
                        // log holds, up to `seq`.
                        self.write_snapshot(&self.replica(), seq);
                    } else if !*self.snapshot_waiting.borrow() {
                        tracing::info!(seq, "the periodic snapshot and compaction wait until background work is allowed");
                        self.snapshot_waiting.send_replace(true);
                    }
                }
                Ok(ops)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store operations; reloading the replica from disk");
                let mut replica = self.replica();
                if let Err(e) = self.reload(&mut replica) {
                    tracing::error!(error = %e, "could not reload the replica");
                }
                Err(e.into())
            }
        }
    }

    /// The version vector of what this device durably holds: its log
    /// (the replica's, [`Core::version_vector`], may be ahead while a
    /// commit is being written). What a peer is told this device holds.
    pub fn durable_version_vector(&self) -> VersionVector {
        lock(&self.durable).clone()
    }

    /// What to ask peers with in a `SYNC_REQUEST`: what this device durably
    /// holds, lowered for the devices whose history is being filled in for
    /// entities subscribed to since ([`Replica::widen`]).
    pub fn request_vector(&self) -> VersionVector {
        let mut vv = self.durable_version_vector();
        for (actor, &held) in self.replica().refill_frontier() {
            if vv.get(actor).is_some_and(|&c| c > held) {
                match held {
                    0 => vv.remove(actor),
                    c => vv.insert(actor.clone(), c),
                };
            }
        }
        vv
    }

    /// Per device whose history is being filled in for entities subscribed
    /// to since, how far everything is held (empty when none is).
    pub fn refill_frontier(&self) -> VersionVector {
        self.replica().refill_frontier().clone()
    }

    /// The entities this device holds.
    pub fn subscription(&self) -> Subscription {
        lock(&self.subscription).clone()
    }

    /// Whether this device's history is being filled in for entities it
    /// subscribed to since (some of its counters are asked for again).
    pub fn refilling(&self) -> bool {
        !self.replica().refill_frontier().is_empty()
    }

    /// Changes the entities this device holds, durably. When the
    /// subscription grows, what was skipped since it last grew is asked
    /// for again ([`Replica::widen`]); either way pulls start again with
    /// the new subscription ([`Core::resyncs`]). Returns whether it changed.
    pub fn set_subscription(&self, new: Subscription) -> Result<bool, NodeError> {
        let _writer = self.commit_lock();
        let mut current = lock(&self.subscription);
        if *current == new {
            return Ok(false);
        }
        if !current.covers(&new) {
            // The refill first: a crash before the subscription is stored
            // leaves the old one asking for more than it needs, never the
            // new one asking for less.
            let mut replica = self.replica();
            replica.widen();
            replica.take_subscription_changes();
            crate::subscriptions::save_skip_state(&self.store, &SkipState::of(&replica))?;
        }
        crate::subscriptions::save_subscription(&self.store, &new)?;
        tracing::info!(from = %current, to = %new, "subscription changed");
        *current = new;
        drop(current);
        self.resync.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Whether the log may hold operations in part: this device holds part
    /// of the entities, or a `skip` was stored once. Its rows are then
    /// never sent as they are stored, and its snapshot goes only to a
    /// device that holds no more than it.
    pub fn holds_part(&self) -> bool {
        self.skips_stored.load(Ordering::Relaxed) || !lock(&self.subscription).is_everything()
    }

    /// The state hash of the entities `subscription` matches.
    pub fn state_hash_of(&self, subscription: &Subscription) -> Hash32 {
        self.replica().state_hash_of(subscription)
    }

    /// Applies a local edit and stores its operations durably before returning them.
    pub fn edit(
        &self,
        entity_type: EntityType,
        entity_id: &str,
        edit: LocalEdit,
    ) -> Result<Vec<SyncOperation>, NodeError> {
        self.edit_many(vec![(entity_type, entity_id.to_string(), edit)])
    }

    /// Applies several local edits and stores their operations in one
    /// transaction (one disk sync for all). All or nothing: on error nothing
    /// is kept.
    pub fn edit_many(
        &self,
        edits: Vec<(EntityType, String, LocalEdit)>,
    ) -> Result<Vec<SyncOperation>, NodeError> {
        self.edit_many_if(|_| Ok(()), edits)
    }

    /// [`Core::edit_many`], if `check` accepts the replica as it is when the
    /// edits are applied (under the same lock, so nothing comes in between):
    /// for edits computed against a state read earlier, such as splices
    /// computed from the text a user edited.
    pub fn edit_many_if(
        &self,
        check: impl FnOnce(&Replica) -> Result<(), NodeError>,
        edits: Vec<(EntityType, String, LocalEdit)>,
    ) -> Result<Vec<SyncOperation>, NodeError> {
        let writer = self.commit_lock();
        {
            let subscription = lock(&self.subscription);
            if let Some((t, id, _)) = edits
                .iter()
                .find(|(t, id, _)| !subscription.matches(*t, id))
            {
                return Err(NodeError::NotSubscribed {
                    entity_type: t.as_str(),
                    entity_id: id.clone(),
                    subscription: subscription.to_string(),
                });
            }
        }
        let mut replica = self.replica();
        check(&replica)?;
        let mut ops = Vec::new();
        let mut changed = Vec::with_capacity(edits.len());
        let mut failure = None;
        for (entity_type, entity_id, edit) in edits {
            match replica.apply_local(entity_type, &entity_id, edit, self.clock()) {
                Ok(new) => ops.extend(new),
                Err(e) => {
                    failure = Some(NodeError::from(e));
                    break;
                }
            }
            changed.push((entity_type, entity_id));
        }
        if failure.is_none() {
            failure = ops
                .iter()
                .try_for_each(check_op_size)
                .err()
                .map(NodeError::from);
        }
        if let Some(e) = failure {
            // Undo what was applied (nothing is on disk yet) by reloading.
            if !ops.is_empty() {
                self.reload(&mut replica)?;
            }
            return Err(e);
        }
        let ops = self.write_log(&writer, replica, true)?;
        drop(writer);
        for (entity_type, entity_id) in changed {
            let _ = self.changes.send(Change {
                entity_id,
                entity_type,
                actor_id: self.device_id.clone(),
                remote: false,
            });
        }
        Ok(ops)
    }

    /// Applies operations received from `peer` (through the causal buffer) and
    /// stores every operation that became applied, durably, before returning
    /// how many of these were applied. Only then may they be acknowledged.
    ///
    /// Commits are grouped: operations that peers' pulls hand over while a
    /// commit is being written wait, and the next caller to take the
    /// writer lock applies all of them and stores them in one transaction
    /// (one disk sync for many peers), then hands each caller its result.
    pub fn apply_remote(&self, peer: &str, ops: Vec<SyncOperation>) -> Result<usize, NodeError> {
        let ticket = {
            let mut queue = lock(&self.commit_queue);
            queue.last_ticket += 1;
            let ticket = queue.last_ticket;
            queue.pending.push((ticket, peer.to_string(), ops));
            ticket
        };
        let writer = self.commit_lock();
        // Committed by the caller that held the lock before?
        if let Some(result) = lock(&self.commit_queue).done.remove(&ticket) {
            return result;
        }
        let group = std::mem::take(&mut lock(&self.commit_queue).pending);
        Metrics::add(&self.metrics.remote_commits, 1);
        let mut results = self.commit_remote(&writer, group);
        let mine = results.remove(&ticket);
        // Handed over before the lock goes: the next to take it looks
        // for its result first.
        if !results.is_empty() {
            lock(&self.commit_queue).done.extend(results);
        }
        drop(writer);
        mine.unwrap_or_else(|| Err(NodeError::CorruptLog("a commit lost its operations".into())))
    }

    /// Applies a group of peers' operations and stores what became applied
    /// in one transaction; returns each caller's result by ticket.
    fn commit_remote(
        &self,
        writer: &CommitGuard<'_>,
        group: Vec<(u64, String, Vec<SyncOperation>)>,
    ) -> HashMap<u64, Result<usize, NodeError>> {
        let mut replica = self.replica();
        let refused_before = replica.refused_after_close();
        let mut outcomes = Vec::with_capacity(group.len());
        for (ticket, peer, ops) in group {
            let before = replica.applied().len();
            let mut first_err = None;
            let sent = nomade_crdt::last_counters(&ops);
            for op in ops {
                if let Err(e) = replica.apply_remote(op) {
                    self.metrics.record_error("SYNC_OPERATION");
                    if matches!(e, nomade_crdt::CrdtError::TooManyActors { .. }) {
                        self.metrics.record_error("TOO_MANY_ACTORS");
                    }
                    tracing::warn!(%peer, error = %e, "refused an operation");
                    first_err.get_or_insert(e);
                }
            }
            self.note_received(&replica, &peer, &sent);
            let applied = replica.applied().len() - before;
            outcomes.push((ticket, peer, applied, first_err));
        }
        // Counted while the replica is still locked: whoever sees the new
        // state also sees it in the metrics.
        let refused = replica.refused_after_close() - refused_before;
        if refused > 0 {
            self.metrics.record_errors("REVOKED_OPERATION", refused);
            tracing::info!(
                refused,
                "refused operations a revoked device made after its revocation"
            );
        }
        let applied = replica.applied().len() as u64;
        Metrics::add(&self.metrics.ops_applied, applied);
        // What was applied (these and buffered ones they released), in the
        // order applied.
        let stored = match self.write_log(writer, replica, false) {
            Ok(ops) => ops,
            Err(e) => {
                // Nothing of it is kept.
                self.metrics
                    .ops_applied
                    .fetch_sub(applied, Ordering::Relaxed);
                let why = e.to_string();
                let mut e = Some(e);
                return outcomes
                    .into_iter()
                    .map(|(ticket, ..)| {
                        let error = e.take().unwrap_or_else(|| {
                            NodeError::Store(crate::error::StoreError::Database(why.clone()))
                        });
                        (ticket, Err(error))
                    })
                    .collect();
            }
        };
        self.announce_applied(&stored);
        outcomes
            .into_iter()
            .map(|(ticket, peer, applied, first_err)| {
                if applied > 0 {
                    self.note_sync(&peer);
                }
                let result = match first_err {
                    Some(e) if applied == 0 => Err(e.into()),
                    _ => Ok(applied),
                };
                (ticket, result)
            })
            .collect()
    }

    /// Notes what `peer` sent (`sent`: the last counter of each device in
    /// it) as far as the replica now holds it: the peer holds it too
    /// (noted before the store wakes the pushers; beyond what is applied
    /// here, operations may never be valid). What any peer sent that
    /// waited in the causal buffer and is applied now counts too: sending
    /// it back would be an echo.
    fn note_received(&self, replica: &Replica, peer: &str, sent: &VersionVector) {
        let vv = replica.version_vector();
        let mut claimed = lock(&self.claimed);
        let mut received = lock(&self.received);
        let theirs = claimed.entry(peer.to_string()).or_default();
        for (actor, &last) in sent {
            nomade_crdt::raise_counter(theirs, actor, last);
        }
        claimed.retain(|p, claims| {
            let (generation, got) = received.entry(p.clone()).or_default();
            claims.retain(|actor, last| {
                let held = vv.get(actor).copied().unwrap_or(0);
                let now = (*last).min(held);
                if got.get(actor).is_none_or(|&had| had < now) {
                    got.insert(actor.clone(), now);
                    *generation += 1;
                }
                *last > held
            });
            !claims.is_empty()
        });
    }

    /// Tells subscribers about operations from peers just stored, and
    /// notes how long they took to arrive.
    fn announce_applied(&self, ops: &[SyncOperation]) {
        let now = self.now();
        let mut last: Option<&SyncOperation> = None;
        for op in ops {
            tracing::debug!(entity = %op.entity_id, actor = %op.actor_id, counter = op.operation.counter, "applied");
            self.metrics
                .record_latency_us(now.saturating_sub(op.timestamp).saturating_mul(1000));
            self.note_delivery_lag(now.saturating_sub(op.timestamp));
            // A run of operations on one entity by one device is one change.
            let same = last.is_some_and(|l| {
                l.entity_id == op.entity_id
                    && l.entity_type == op.entity_type
                    && l.actor_id == op.actor_id
            });
            if !same {
                let _ = self.changes.send(Change {
                    entity_id: op.entity_id.to_string(),
                    entity_type: op.entity_type,
                    actor_id: op.actor_id.to_string(),
                    remote: true,
                });
            }
            last = Some(op);
        }
    }

    /// Notes that this device pulls from `peer` until the guard returned is
    /// dropped: `peer` sends it its own operations directly, which other
    /// peers' pushers need not relay (pullers announce it with `HAVE`).
    pub fn pulling_from(&self, peer: &str) -> PullingGuard {
        self.pulling
            .send_modify(|m| *m.entry(peer.to_string()).or_default() += 1);
        PullingGuard {
            pulling: self.pulling.clone(),
            peer: peer.to_string(),
        }
    }

    /// The devices this device pulls from now.
    pub fn pulling(&self) -> Vec<String> {
        self.pulling.borrow().keys().cloned().collect()
    }

    /// Changes whenever the devices this device pulls from change.
    pub fn pulling_changes(&self) -> watch::Receiver<BTreeMap<String, usize>> {
        self.pulling.subscribe()
    }

    /// What `peer` sent this device that is applied here (it holds it:
    /// sending it back would be an echo).
    pub fn received_from(&self, peer: &str) -> VersionVector {
        lock(&self.received)
            .get(peer)
            .map(|(_, vv)| vv.clone())
            .unwrap_or_default()
    }

    /// Of [`Core::received_from`], the counters of `actors` (0 for one the
    /// peer sent nothing of), in order, without copying the rest.
    pub fn received_counters<'a>(
        &self,
        peer: &str,
        actors: impl IntoIterator<Item = &'a str>,
    ) -> Vec<u64> {
        let received = lock(&self.received);
        let vv = received.get(peer).map(|(_, vv)| vv);
        actors
            .into_iter()
            .map(|a| vv.and_then(|vv| vv.get(a)).copied().unwrap_or(0))
            .collect()
    }

    /// [`Core::received_from`], if it rose since `*generation` (0 at first),
    /// which is updated: a caller polling often copies it only when it
    /// changed.
    pub fn received_since(&self, peer: &str, generation: &mut u64) -> Option<VersionVector> {
        let received = lock(&self.received);
        let (current, vv) = received.get(peer)?;
        if *current == *generation {
            return None;
        }
        *generation = *current;
        Some(vv.clone())
    }

    /// Of the devices in this device's version vector, those whose counter
    /// rose after `*generation` (0: every device), with their counter now;
    /// `*generation` is updated. It costs what changed, not the version
    /// vector.
    pub fn counters_since(&self, generation: &mut u64) -> Vec<(String, u64)> {
        let (current, changed) = lock(&self.journal).since(*generation);
        *generation = current;
        changed
    }

    /// The counters of `actors` in this device's version vector (0 for one
    /// it holds nothing of), read without copying the version vector.
    pub fn counters_of<'a>(&self, actors: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
        let replica = self.replica();
        let vv = replica.version_vector();
        actors
            .into_iter()
            .map(|a| vv.get(a).copied().unwrap_or(0))
            .collect()
    }

    /// Forgets what `peer` sent (it is no longer paired). A new sync stream
    /// from it does not: what a peer sent it stored durably before, and
    /// still holds.
    pub fn forget_received(&self, peer: &str) {
        lock(&self.received).remove(peer);
        lock(&self.claimed).remove(peer);
    }

    fn note_sync(&self, peer: &str) {
        lock(&self.last_sync).insert(peer.to_string(), now_ms());
    }

    /// When operations last went between this device and `peer` (applied
    /// from it, or acknowledged by it) since the node started, in ms since
    /// the Unix epoch.
    pub fn last_sync_ms(&self, peer: &str) -> Option<i64> {
        lock(&self.last_sync).get(peer).copied()
    }

    /// Where to start scanning for a peer whose version vector is `peer`:
    /// every operation stored up to it is covered by `peer` (see
    /// [`Store::resume_point`]), so a reconnect reads what is missing, not
    /// the history.
    pub fn resume_point(&self, peer: &VersionVector) -> Result<u64, NodeError> {
        Ok(self.store.resume_point(peer)?)
    }

    /// What to send a peer whose version vector is `peer`, from the
    /// operations stored after sequence number `cursor`, reading at most
    /// about `limit` stored operations, in the order stored (a causal
    /// order). The operations stored last are kept decoded in memory (at
    /// most 4,096): a pusher that is up to date
    /// reads them there; one further behind reads the database (a node's
    /// memory holds no history).
    ///
    /// From the database, a stored row the peer lacks entirely (its
    /// frontiers show the peer has none of it) goes as it is stored, a
    /// `BATCHED_SYNC` payload already encoded ([`PushItem::Run`]); from the
    /// others, the operations the peer lacks are decoded
    /// ([`PushItem::Operations`]).
    ///
    /// Operations of other devices stored after their cutoff in
    /// `relay` are held back (docs/PROTOCOL.md, "Forwarding"): the scan goes
    /// on past them, sending this device's own, and returns them, at most
    /// `hold_room` of them; if there are more, the cursor it returns stops
    /// before the first that did not fit, so a later scan finds it.
    ///
    /// Without `whole_rows` (a peer subscribed to part of the entities, or
    /// a log that may hold skips), every row is decoded.
    pub fn push_items(
        &self,
        cursor: u64,
        peer: &VersionVector,
        limit: usize,
        relay: RelayCutoff<'_>,
        hold_room: usize,
        whole_rows: bool,
    ) -> Result<PushScan, NodeError> {
        let mut sorter = Sorter {
            own: self.device_id.as_str(),
            cursor,
            peer,
            relay,
            hold_room,
            first_held: None,
            held: Vec::new(),
        };
        let mut scan = PushScan {
            items: Vec::new(),
            next: cursor,
            more: false,
            held: Vec::new(),
            held_back: false,
        };
        let last = self.last_seq();
        let recent = if cursor >= last {
            Some(Vec::new())
        } else {
            lock(&self.recent).after(cursor, last, limit)
        };
        let read = match recent {
            Some(recent) => {
                let mut wanted = Vec::new();
                for (seq, op) in recent {
                    if let Some(op) = sorter.sort(seq, &op, || op.clone()) {
                        wanted.push(op.clone());
                    }
                    scan.next = seq;
                }
                scan.more = scan.next < last;
                if !wanted.is_empty() {
                    scan.items.push(PushItem::Operations(wanted));
                }
                // Nothing read from the database.
                0
            }
            None => self.scan_stored(&mut sorter, &mut scan, limit, whole_rows)?,
        };
        scan.held = sorter.held;
        if let Some(seq) = sorter.first_held {
            scan.next = scan.next.min(seq - 1);
            scan.held_back = true;
        }
        Metrics::add(&self.metrics.ops_scanned, read);
        Ok(scan)
    }

    /// [`Core::push_items`] from the database: fills `scan` and returns how
    /// many stored operations were read.
    fn scan_stored(
        &self,
        sorter: &mut Sorter<'_>,
        scan: &mut PushScan,
        limit: usize,
        whole_rows: bool,
    ) -> Result<u64, NodeError> {
        let (own, cursor, peer, relay) = (sorter.own, sorter.cursor, sorter.peer, sorter.relay);
        let mut read = 0u64;
        let mut failure = None;
        let lacks = |actor: &str, counter: u64| counter > peer.get(actor).copied().unwrap_or(0);
        let items = &mut scan.items;
        self.store.scan_runs(cursor, |run| {
            if read >= limit as u64 {
                scan.more = true;
                return ControlFlow::Break(());
            }
            read += run.count;
            let end = run.first + run.count - 1;
            // The actors with operations in the row, if its frontiers say.
            let written: Option<Vec<(&ActorId, u64)>> = match (&run.before, &run.after) {
                (Some(before), Some(after)) => Some(
                    after
                        .iter()
                        .filter_map(|(a, &c)| {
                            let b = before.get(a).copied().unwrap_or(0);
                            (c > b).then_some((a, b))
                        })
                        .collect(),
                ),
                _ => None,
            };
            let relayed_held = match &written {
                Some(w) => w.iter().any(|(a, _)| {
                    a.as_str() != own && (relay.skips(a, own) || end > relay.for_actor(a))
                }),
                None => end > relay.after.min(relay.served_after) || !relay.direct.is_empty(),
            };
            let whole = whole_rows
                && run.first > cursor
                && !relayed_held
                && run.payload.len() <= crate::batch::MAX_BATCH_PAYLOAD
                // Each actor with operations in the row: the peer has none
                // of them (it stops at or before the row's start).
                && written.as_ref().is_some_and(|w| {
                    w.iter()
                        .all(|(a, b)| peer.get(a.as_str()).copied().unwrap_or(0) <= *b)
                });
            // A row the peer has all of (or gets directly) is passed over
            // without decoding it.
            let covered = match (&written, &run.after) {
                (Some(w), Some(after)) => w.iter().all(|(a, _)| {
                    relay.skips(a, own) || !lacks(a, after.get(a.as_str()).copied().unwrap_or(0))
                }),
                _ => false,
            };
            if covered {
                scan.next = end;
                return ControlFlow::Continue(());
            }
            if whole {
                let (Some(after), Some(w)) = (&run.after, &written) else {
                    return ControlFlow::Break(());
                };
                let covers = w
                    .iter()
                    .map(|(a, _)| ((*a).clone(), after.get(a.as_str()).copied().unwrap_or(0)))
                    .collect();
                items.push(PushItem::Run {
                    payload: run.payload,
                    packed: run.packed,
                    count: run.count,
                    covers,
                });
            } else {
                match self.row_operations(&run) {
                    Ok(ops) => {
                        let mut wanted = Vec::new();
                        for (i, op) in ops.iter().enumerate() {
                            let seq = run.first + i as u64;
                            if let Some(op) = sorter.sort(seq, op, || Arc::new(op.clone())) {
                                wanted.push(op.clone());
                            }
                        }
                        match items.last_mut() {
                            Some(PushItem::Operations(ops)) => ops.extend(wanted),
                            _ if wanted.is_empty() => {}
                            _ => items.push(PushItem::Operations(wanted)),
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            scan.next = end;
            ControlFlow::Continue(())
        })?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(read),
        }
    }

    /// How long operations of other devices recently took from their
    /// creation to being applied here: the largest lately seen, decaying
    /// by a sixteenth with each operation applied (from the authors'
    /// clocks: a skewed clock makes it wrong, never negative). Pushers hold
    /// relays longer when it is long (a loaded mesh: see
    /// [`crate::sync::Pusher::served_relay_hold`]).
    pub fn delivery_lag(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delivery_lag_ms.load(Ordering::Relaxed))
    }

    fn note_delivery_lag(&self, lag_ms: i64) {
        let lag = u64::try_from(lag_ms).unwrap_or(0);
        let _ = self
            .delivery_lag_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |est| {
                Some(lag.max(est - est / 16))
            });
    }

    /// The operations of a stored row, decoded once for every pusher: the
    /// last row grows as small commits join it, and each pusher reads it
    /// again after each one.
    fn row_operations(
        &self,
        run: &crate::store::StoredRun,
    ) -> Result<Arc<Vec<SyncOperation>>, crate::error::StoreError> {
        let key = (run.first, run.count, *blake3::hash(&run.payload).as_bytes());
        if let Some((k, ops)) = lock(&self.decoded_row).as_ref() {
            if *k == key {
                return Ok(ops.clone());
            }
        }
        let ops = Arc::new(run.operations()?);
        *lock(&self.decoded_row) = Some((key, ops.clone()));
        Ok(ops)
    }

    /// The sequence number of the oldest of the operations stored last
    /// that are kept in memory (4,096 at most), if
    /// any: a pusher holds relays among them when a peer connects, since
    /// the peer may well get them from their authors.
    pub fn recent_start(&self) -> Option<u64> {
        lock(&self.recent).first()
    }

    /// The sequence number of the last operation stored.
    pub fn last_seq(&self) -> u64 {
        *self.appended.borrow()
    }

    /// Records that `peer` acknowledged (durably stored) the operations `vv`
    /// covers. It is written to the store at most every
    /// [`ACKED_SAVE_EVERY`] per peer (and at [`Core::checkpoint`]), without
    /// a disk sync of its own: what a device is known to hold survives
    /// restarts, which is what compacting the history below what every
    /// paired device holds needs ([`Core::compaction_floor`]).
    pub fn record_ack(&self, peer: &str, vv: &VersionVector) {
        let due = {
            let mut saved = lock(&self.acked_saved);
            let now = std::time::Instant::now();
            match saved.get(peer) {
                Some(at) if now.duration_since(*at) < ACKED_SAVE_EVERY => false,
                _ => {
                    saved.insert(peer.to_string(), now);
                    true
                }
            }
        };
        let merged = {
            let mut acked = lock(&self.acked);
            let entry = acked.entry(peer.to_string()).or_default();
            for (actor, &c) in vv {
                nomade_crdt::raise_counter(entry, actor, c);
            }
            // Copied only when it is written.
            due.then(|| entry.clone())
        };
        if let Some(merged) = merged {
            if let Err(e) = self.store.put_acked(&[(peer.to_string(), merged)], false) {
                tracing::debug!(%peer, error = %e, "could not record an acknowledgement");
            }
        }
        self.note_sync(peer);
    }

    /// Writes every acknowledgement recorded, synced to disk (at a
    /// checkpoint: the node is stopping).
    fn save_acked(&self) {
        let rows: Vec<(String, VersionVector)> = lock(&self.acked)
            .iter()
            .map(|(peer, vv)| (peer.clone(), vv.clone()))
            .collect();
        if let Err(e) = self.store.put_acked(&rows, true) {
            tracing::warn!(error = %e, "could not record acknowledgements");
        }
    }

    /// What `peer` has acknowledged (kept across restarts).
    pub fn acked_by(&self, peer: &str) -> VersionVector {
        let acked = lock(&self.acked);
        acked.get(peer).cloned().unwrap_or_default()
    }

    /// What this device (`own`, its version vector) and every one of
    /// `peers` (the paired devices) hold: the pointwise minimum of `own` and
    /// their acknowledgements, the history below it being held by all of
    /// them. A device not seen for longer than `hold` no longer holds it
    /// back: the history it lacks may be compacted, and when it returns it
    /// is sent a snapshot first. With no paired device the floor is `own`.
    pub fn compaction_floor(
        &self,
        own: &VersionVector,
        peers: &[crate::store::PeerRecord],
        now_ms: i64,
        hold: std::time::Duration,
    ) -> VersionVector {
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        let acked = lock(&self.acked);
        let mut floor: Option<VersionVector> = Some(own.clone());
        for peer in peers {
            let silent = peer
                .last_seen_ms
                .is_some_and(|seen| now_ms.saturating_sub(seen) > hold_ms);
            if silent {
                continue;
            }
            let theirs = acked.get(&peer.device_id).cloned().unwrap_or_default();
            floor = Some(match floor {
                None => theirs,
                Some(f) => f
                    .into_iter()
                    .filter_map(|(actor, c)| {
                        let t = theirs.get(&actor).copied().unwrap_or(0);
                        (c.min(t) > 0).then_some((actor, c.min(t)))
                    })
                    .collect(),
            });
        }
        floor.unwrap_or_default()
    }

    /// A document's fields (concurrent writes resolved deterministically).
    pub fn document(&self, doc: &str) -> Option<BTreeMap<String, Value>> {
        self.replica().document(doc)
    }

    /// Every concurrent value of a document field, the winner first.
    pub fn field_values(&self, doc: &str, key: &str) -> Vec<Value> {
        self.replica().field_values(doc, key)
    }

    /// A collaborative text field.
    pub fn text(&self, doc: &str, field: &str) -> Option<String> {
        self.replica().text(doc, field)
    }

    /// The names of a document's text fields.
    pub fn text_fields(&self, doc: &str) -> Vec<String> {
        self.replica().text_fields(doc)
    }

    /// A conversation's items.
    pub fn conversation(&self, conv: &str) -> Option<Vec<Value>> {
        self.replica().conversation(conv)
    }

    /// A conversation's items with their ids (see
    /// [`Replica::conversation_items`]).
    pub fn conversation_items(&self, conv: &str) -> Option<Vec<(nomade_wire::ElementId, Value)>> {
        self.replica().conversation_items(conv)
    }

    /// Every entity held.
    pub fn entities(&self) -> Vec<(EntityType, String)> {
        self.replica()
            .entities()
            .map(|(t, id)| (t, id.to_string()))
            .collect()
    }

    /// The deterministic hash of the replica's state.
    pub fn state_hash(&self) -> Hash32 {
        self.replica().state_hash()
    }

    /// What this device has: the highest counter applied per device.
    pub fn version_vector(&self) -> VersionVector {
        self.replica().version_vector().clone()
    }

    /// How the history is kept: the snapshot's size, the operations stored
    /// after it, what was compacted away.
    pub fn history_status(&self) -> crate::status::HistoryStatus {
        let snapshot_seq = self.snapshot_seq.load(Ordering::Relaxed);
        crate::status::HistoryStatus {
            snapshot_bytes: self.snapshot_len.load(Ordering::Relaxed),
            operations_after_snapshot: self.appended.borrow().saturating_sub(snapshot_seq),
            compacted: self
                .compacted()
                .values()
                .fold(0u64, |sum, &c| sum.saturating_add(c)),
        }
    }

    /// The changes this device holds: the sum of its version vector, one
    /// per field write and per element inserted or removed (a run of
    /// keystrokes counts each), however they were stored, compacted or
    /// received in a snapshot.
    pub fn op_count(&self) -> usize {
        let total = self
            .replica()
            .version_vector()
            .values()
            .fold(0u64, |sum, &c| sum.saturating_add(c));
        usize::try_from(total).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Edit};

    fn op(actor: &str) -> SyncOperation {
        SyncOperation {
            entity_id: format!("doc-{actor}").into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 1,
                deps: Default::default(),
                edit: Edit::Set {
                    key: "k".into(),
                    value: Value::Int(1),
                },
            },
            timestamp: now_ms(),
            actor_id: actor.into(),
        }
    }

    /// Group commit: operations that pulls hand over while a commit is
    /// being written wait, and go to the disk together in the next one;
    /// each caller gets its own result once they are durable.
    #[test]
    fn operations_handed_over_during_a_commit_go_in_the_next_one_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = Core::open(dir.path(), "me", ReplicaConfig::default()).expect("open");
        // A commit being written.
        let writer = core.commit_lock();
        let pulls: Vec<_> = (0..8)
            .map(|i| {
                let core = core.clone();
                std::thread::spawn(move || {
                    let peer = format!("p{i}");
                    core.apply_remote(&peer, vec![op(&peer)])
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while lock(&core.commit_queue).pending.len() < 8 {
            assert!(std::time::Instant::now() < deadline, "pulls never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            core.durable_version_vector().is_empty(),
            "nothing is durable yet"
        );
        drop(writer);
        for pull in pulls {
            let applied = pull.join().expect("no panic").expect("applied");
            assert_eq!(applied, 1, "each caller gets its own count");
        }
        assert_eq!(core.metrics().snapshot().remote_commits, 1, "one commit");
        assert_eq!(core.durable_version_vector().len(), 8);
        assert!(lock(&core.commit_queue).done.is_empty());
        // Without a commit in the way, many pulls at once: each gets its
        // own result, whoever commits it.
        let pulls: Vec<_> = (0..8)
            .map(|i| {
                let core = core.clone();
                std::thread::spawn(move || {
                    let peer = format!("q{i}");
                    (1..=100).all(|counter| {
                        let mut next = op(&peer);
                        next.operation.counter = counter;
                        matches!(core.apply_remote(&peer, vec![next]), Ok(1))
                    })
                })
            })
            .collect();
        for pull in pulls {
            assert!(pull.join().expect("no panic"), "a pull lost its result");
        }
        assert_eq!(core.durable_version_vector().len(), 16);
        // Durable: all of them are there after reopening.
        let hash = core.state_hash();
        drop(core);
        let core = Core::open(dir.path(), "me", ReplicaConfig::default()).expect("reopen");
        assert_eq!(core.version_vector().len(), 16);
        assert_eq!(core.state_hash(), hash);
    }

    /// A snapshot holding operations of a revoked device beyond where its
    /// history was closed is refused, and nothing changes.
    #[test]
    fn a_snapshot_beyond_a_closed_history_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = Core::open(dir.path(), "me", ReplicaConfig::default()).expect("open");
        let mut phone = Replica::new("phone");
        for i in 0..3 {
            phone
                .apply_local(
                    EntityType::Document,
                    "d",
                    nomade_crdt::LocalEdit::Set {
                        key: "k".into(),
                        value: Value::from(i),
                    },
                    0,
                )
                .expect("edit");
        }
        let bytes = phone.snapshot().expect("snapshot");
        core.close_actor("phone", 2);
        let refused = core.adopt_snapshot("laptop", &bytes);
        assert!(
            matches!(&refused, Err(NodeError::SnapshotRefused(why)) if why.contains("revoked")),
            "{refused:?}"
        );
        assert!(core.version_vector().is_empty());
        // Closed at 3 (a device that applied more raised it), it is taken.
        core.close_actor("phone", 3);
        core.adopt_snapshot("laptop", &bytes).expect("adopted");
        assert_eq!(core.version_vector().get("phone"), Some(&3));
    }
}
