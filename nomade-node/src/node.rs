//! A running device: identity, database, artifact store, and the network
//! sessions with paired peers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nomade_artifact::{ArtifactStore, DeviceKey};
use nomade_crdt::{LocalEdit, ReplicaConfig};
use nomade_transport::{
    Connection, DeviceId, DeviceIdentity, PairedSet, PairingCode, RateLimits, Transport,
    TransportEvent,
};
use nomade_wire::{EntityType, Hash32, PresenceStatus, PresenceUpdate, SyncOperation, Value};

use crate::ItemId;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::core::{Change, Core};
use crate::error::NodeError;
use crate::lock;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::sync::SyncSummary;

/// Settings of a node. The defaults suit a phone or laptop.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// A human-readable name shown to peers. Empty (the default): the name
    /// stored in the data directory, or "nomade device" if none was ever
    /// set. Not empty: this name, stored for the next start.
    pub device_name: String,
    /// Application rate limits (the protocol's defaults: 100 sync messages/s
    /// per stream, 10 MB/s of artifact bytes).
    pub rate_limits: RateLimits,
    /// How often heartbeats are sent.
    pub heartbeat_period: Duration,
    /// Heartbeats a peer may miss before it is reported offline.
    pub missed_heartbeats: u32,
    /// Most bytes the artifact store may use (`None`: no quota).
    pub artifact_quota: Option<u64>,
    /// Most operations from peers held in memory while they wait for their
    /// dependencies. Beyond it the sync stream that brought them is ended
    /// with `SYNC_CONFLICT` and the peer is asked to sync again (from this
    /// device's version vector, so in an order that applies).
    pub max_buffered_ops: usize,
    /// Most distinct devices whose operations this device accepts (its
    /// actor table). An operation from one more is refused and counted
    /// (`nomade_errors_total{type="TOO_MANY_ACTORS"}`), so a paired
    /// device inventing actors cannot grow this device's state without bound.
    pub max_actors: usize,
    /// Most revocation records kept (one per revoked device and signer;
    /// default [`crate::revocations::MAX_REVOCATIONS`]): one more is
    /// refused and counted (`REVOCATION_TOO_MANY`).
    pub max_revocations: usize,
    /// Which artifact contents this device fetches by itself after a sync
    /// (default: every referenced one); the others it knows by their
    /// metadata and fetches when asked.
    pub artifact_policy: crate::ArtifactPolicy,
    /// When background work (prefetching artifacts by the policy) may run:
    /// a battery floor, not on cellular, within windows of the day
    /// (see [`crate::schedule`]).
    pub background: crate::schedule::BackgroundPolicy,
    /// How long a paired device may stay silent and still hold back the
    /// compaction of the history it has not acknowledged (default 14 days).
    /// One silent longer is sent a snapshot when it returns.
    pub compaction_hold: Duration,
    /// First delay before redialing a lost peer; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between redials. A redial waiting out its delay tries
    /// at once when a session with any other peer comes up (the network is
    /// evidently back).
    pub max_backoff: Duration,
    /// Longest a connection handshake may take, dialing or accepting.
    pub handshake_timeout: Duration,
    /// Added to the system clock for operation timestamps. Timestamps are
    /// informational (ordering uses version vectors), so a skewed clock
    /// changes nothing; this exists to prove it in tests.
    pub clock_skew_ms: i64,
    /// Whether sync frames to a peer that takes them (the `"lz4"`
    /// capability) are compressed where that pays (default: yes). Frames
    /// from peers are taken compressed either way.
    pub compress: bool,
    /// The queueing delay the connections' congestion control aims at, so
    /// that live edits wait at most about this long behind artifact data
    /// (default 5 ms; `None`: quinn's Cubic alone, which fills the queues
    /// of a slow link). See `nomade_transport::congestion`.
    pub queue_target: Option<Duration>,
    /// Whether to announce this device and look for paired devices on the
    /// local network over mDNS ([`crate::discovery`]). Off by default in
    /// the library (an application turns it on where multicast is welcome);
    /// `nomade serve` turns it on unless told `--no-discovery`.
    pub discovery: bool,
    /// What this device does as a relay for its paired devices (on by
    /// default, with a quota and a rate limit: `nomade_transport::relay`),
    /// and whether it connects to a paired device it cannot reach directly
    /// through one it is connected to (always, when both relay).
    pub relay: nomade_transport::RelayConfig,
    /// A snapshot-first sync of at least this many bytes (a new device
    /// joining a large store, or one away past the history's hold) is
    /// background work: it waits, shown in `status`, until the
    /// [`background`](Self::background) policy allows it (default 8 MiB).
    pub deferred_snapshot_bytes: u64,
    /// Whether artifact transfers go on bulk connections: a second QUIC
    /// connection to each peer, on a UDP port and threads of lower
    /// priority of their own, so that a transfer's packet work yields the
    /// processor to live edits (`nomade_transport::bulk`; default on).
    /// Either side without it, or a relayed session: the main connection.
    pub bulk: bool,
    /// Test only (the `faults` feature): network faults injected under the
    /// QUIC endpoint, and the partition switch (`None`: the real network,
    /// untouched).
    #[cfg(feature = "faults")]
    pub faults: Option<(
        nomade_transport::faulty::FaultPlan,
        nomade_transport::faulty::Partition,
    )>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            device_name: String::new(),
            rate_limits: RateLimits::default(),
            heartbeat_period: Duration::from_secs(5),
            missed_heartbeats: 3,
            artifact_quota: None,
            max_buffered_ops: ReplicaConfig::default().max_buffered,
            max_actors: ReplicaConfig::default().max_actors,
            max_revocations: crate::revocations::MAX_REVOCATIONS,
            artifact_policy: crate::ArtifactPolicy::default(),
            background: crate::schedule::BackgroundPolicy::default(),
            compaction_hold: crate::core::DEFAULT_COMPACTION_HOLD,
            min_backoff: Duration::from_millis(200),
            clock_skew_ms: 0,
            compress: true,
            discovery: false,
            relay: nomade_transport::RelayConfig::default(),
            deferred_snapshot_bytes: 8 << 20,
            bulk: true,
            max_backoff: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            queue_target: nomade_transport::Config::default().queue_target,
            #[cfg(feature = "faults")]
            faults: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) core: Arc<Core>,
    pub(crate) identity: DeviceIdentity,
    pub(crate) device_id: DeviceId,
    pub(crate) config: NodeConfig,
    /// This device's name, as announced in HELLO (changeable at run time).
    pub(crate) name: Mutex<String>,
    pub(crate) paired: PairedSet,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) transport: Mutex<Option<Transport>>,
    pub(crate) sessions: Mutex<HashMap<DeviceId, Session>>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) status: Mutex<PresenceUpdate>,
    /// Fires when a session starts or ends, or an initial sync completes.
    pub(crate) session_events: watch::Sender<u64>,
    /// Fires when a session starts, or a paired device is found on the
    /// local network: wakes the redials waiting out a backoff (the count
    /// of sessions is the `sessions_started` metric).
    pub(crate) session_started: watch::Sender<()>,
    /// Bumped when a paired device's address is learned on the local
    /// network: a dial under way to an older address gives way to it.
    pub(crate) address_learned: watch::Sender<u64>,
    /// Redialing and its findings, per peer (see `peers.rs`).
    pub(crate) redial: crate::peers::Redial,
    /// The revocations this device holds (see `revocations.rs`).
    pub(crate) revocations: crate::revocations::Revocations,
    /// The runtime the node was started on, for work begun from a thread
    /// outside it (a revocation made by the application).
    pub(crate) runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// The device's power and network state, as the application reports it.
    pub(crate) power: watch::Sender<crate::schedule::PowerState>,
    /// Background work waiting for the device to allow it, by what it is.
    pub(crate) deferred: Mutex<BTreeMap<String, crate::schedule::DeferredWork>>,
    /// The bulk connection to each peer that has one (artifact streams).
    pub(crate) bulk: Mutex<HashMap<DeviceId, Connection>>,
}

/// A Nomade device. Cheap to clone; every clone is the same device.
///
/// ```no_run
/// # async fn demo() -> Result<(), nomade_node::NodeError> {
/// use nomade_node::{Node, NodeConfig};
/// let laptop = Node::open("/tmp/laptop".as_ref(), NodeConfig::default())?;
/// laptop.set("trip", "hotel", "Ritz")?;
/// let addr = laptop.start("127.0.0.1:0".parse().unwrap()).await?;
/// let code = laptop.pairing_code()?; // shown to the user
/// # let _ = (addr, code);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device_id", &self.inner.device_id)
            .finish_non_exhaustive()
    }
}

/// Errors after which redialing is pointless until the user acts: the peer
/// speaks another protocol version (update), or no longer accepts this device
/// (pair again).
pub(crate) fn is_permanent(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::VersionMismatch { .. }
            | NodeError::Refused { .. }
            | NodeError::Transport(nomade_transport::TransportError::NotPaired)
    )
}

pub(crate) fn peer_err(peer: &DeviceId, reason: impl Into<String>) -> NodeError {
    NodeError::Peer {
        peer: peer.to_string(),
        reason: reason.into(),
    }
}

impl Node {
    /// Opens (creating on first use) the device in `dir`: its identity, its
    /// database (replaying the operation log) and its artifact store.
    pub fn open(dir: &Path, config: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(dir)?;
        let identity = DeviceIdentity::load_or_create(&dir.join("identity"))?;
        let device_id = identity.device_id();
        let replica_config = ReplicaConfig {
            max_buffered: config.max_buffered_ops,
            max_actors: config.max_actors,
            ..ReplicaConfig::default()
        };
        let core = Core::open(dir, &device_id.to_string(), replica_config)?;
        core.set_clock_skew(config.clock_skew_ms);
        core.set_compaction_hold(config.compaction_hold);
        let key = DeviceKey::load_or_create(&dir.join("identity"))?;
        let artifacts = ArtifactStore::open(&dir.join("artifacts"), key, config.artifact_quota)?;
        let paired = PairedSet::new();
        for p in core.store().peers()? {
            match p.device_id.parse::<DeviceId>() {
                Ok(id) => {
                    paired.insert(id);
                }
                Err(e) => {
                    tracing::warn!(peer = %p.device_id, error = %e, "ignoring a stored peer with a bad id")
                }
            }
        }
        // Revoked devices stay refused, and their histories closed, across
        // restarts.
        let revocations = crate::revocations::Revocations::load(core.store())?;
        for (id, cutoff) in revocations.cutoffs() {
            if id != device_id {
                paired.revoke(id);
                core.close_actor(&id.to_string(), cutoff);
            }
        }
        let name = crate::peers::settle_device_name(core.store(), &config.device_name)?;
        tracing::info!(device = %device_id, name, dir = %dir.display(), ops = core.op_count(), "node opened");
        Ok(Node {
            inner: Arc::new(Inner {
                core,
                identity,
                device_id,
                config,
                name: Mutex::new(name),
                paired,
                artifacts,
                transport: Mutex::new(None),
                sessions: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
                status: Mutex::new(PresenceUpdate {
                    status: PresenceStatus::Online,
                    message: None,
                }),
                session_events: watch::Sender::new(0),
                session_started: watch::Sender::new(()),
                address_learned: watch::Sender::new(0),
                redial: crate::peers::Redial::default(),
                revocations,
                runtime: Mutex::new(None),
                power: watch::Sender::new(crate::schedule::PowerState::default()),
                deferred: Mutex::new(BTreeMap::new()),
                bulk: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// This device's id, in the form people compare (`abcd-efgh-...`).
    pub fn device_id(&self) -> DeviceId {
        self.inner.device_id
    }

    /// This device's name.
    pub fn device_name(&self) -> String {
        lock(&self.inner.name).clone()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.inner.core.dir()
    }

    /// The local state (edits, reads, operation log).
    pub fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        self.inner.core.metrics()
    }

    /// Changes applied from now on, local and from peers.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.core.subscribe()
    }

    // ----- editing and reading -------------------------------------------

    /// Applies a local edit; it is durable when this returns, and is sent to
    /// connected peers at once.
    pub fn edit(
        &self,
        entity_type: EntityType,
        entity_id: &str,
        edit: LocalEdit,
    ) -> Result<Vec<SyncOperation>, NodeError> {
        self.inner.core.edit(entity_type, entity_id, edit)
    }

    /// Sets a document field.
    pub fn set(&self, doc: &str, key: &str, value: impl Into<Value>) -> Result<(), NodeError> {
        self.edit(
            EntityType::Document,
            doc,
            LocalEdit::Set {
                key: key.into(),
                value: value.into(),
            },
        )
        .map(drop)
    }

    /// Removes a document field.
    pub fn delete(&self, doc: &str, key: &str) -> Result<(), NodeError> {
        self.edit(
            EntityType::Document,
            doc,
            LocalEdit::Delete { key: key.into() },
        )
        .map(drop)
    }

    /// Turns the text field's `base` text into `new` by the splices of
    /// their difference (by character), if the field still holds `base`
    /// (an absent field counts as empty); otherwise nothing changes and the
    /// error says the text moved on. Returns the number of splices.
    pub fn replace_text(
        &self,
        doc: &str,
        field: &str,
        base: &str,
        new: &str,
    ) -> Result<usize, NodeError> {
        let old: Vec<char> = base.chars().collect();
        let wanted: Vec<char> = new.chars().collect();
        let ops = similar::capture_diff_slices(similar::Algorithm::Myers, &old, &wanted);
        // From the end backwards: each splice leaves the positions of the
        // ones before it as they were in `base`.
        let edits: Vec<_> = ops
            .iter()
            .rev()
            .filter_map(|op| {
                let (tag, from, to) = op.as_tag_tuple();
                (tag != similar::DiffTag::Equal).then(|| {
                    (
                        EntityType::Document,
                        doc.to_string(),
                        LocalEdit::Splice {
                            field: field.to_string(),
                            position: from.start,
                            delete: from.len(),
                            insert: wanted[to].iter().collect(),
                        },
                    )
                })
            })
            .collect();
        let count = edits.len();
        if count == 0 {
            return Ok(0);
        }
        self.inner.core.edit_many_if(
            |replica| {
                let current = replica.text(doc, field).unwrap_or_default();
                if current == base {
                    Ok(())
                } else {
                    Err(NodeError::Conflict(format!(
                        "{doc}/{field} changed while it was being edited: nothing was changed"
                    )))
                }
            },
            edits,
        )?;
        Ok(count)
    }

    /// Edits a collaborative text field: at `position` (in characters) removes
    /// `delete` characters and inserts `insert`.
    pub fn splice_text(
        &self,
        doc: &str,
        field: &str,
        position: usize,
        delete: usize,
        insert: &str,
    ) -> Result<(), NodeError> {
        let edit = LocalEdit::Splice {
            field: field.into(),
            position,
            delete,
            insert: insert.into(),
        };
        self.edit(EntityType::Document, doc, edit).map(drop)
    }

    /// Inserts an item into a conversation at `index`.
    pub fn conv_insert(
        &self,
        conv: &str,
        index: usize,
        value: impl Into<Value>,
    ) -> Result<(), NodeError> {
        self.edit(
            EntityType::Conversation,
            conv,
            LocalEdit::Insert {
                index,
                value: value.into(),
            },
        )
        .map(drop)
    }

    /// Appends an item to a conversation: after its last item as this device
    /// holds it when the edit is applied, in one step under the replica's
    /// lock (no length read beforehand that another edit could change, and
    /// no copy of the conversation). Returns the new item's id.
    pub fn conv_append(&self, conv: &str, value: impl Into<Value>) -> Result<ItemId, NodeError> {
        let value = value.into();
        let ops = self.edit(EntityType::Conversation, conv, LocalEdit::Append { value })?;
        item_made(&ops)
    }

    /// Inserts an item into a conversation right after the item `after`
    /// (a reply after the message it answers, say), wherever that item is
    /// now, or first with `None`; returns the new item's id. The id of an
    /// item no longer shown still places the new one where it was; one
    /// never in the conversation is [`nomade_crdt::CrdtError::UnknownItem`].
    ///
    /// ```
    /// # use nomade_node::{Node, NodeConfig};
    /// # let dir = tempfile::tempdir()?;
    /// # let node = Node::open(dir.path(), NodeConfig::default())?;
    /// let question = node.conv_append("chat", "lunch?")?;
    /// node.conv_append("chat", "(unrelated)")?;
    /// let answer = node.conv_insert_after("chat", Some(&question), "yes")?;
    /// let items = node.conv_items("chat").unwrap_or_default();
    /// assert_eq!(items[1], (answer.clone(), "yes".into()));
    /// node.conv_remove_item("chat", &answer)?;
    /// assert_eq!(node.conversation("chat").map(|c| c.len()), Some(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn conv_insert_after(
        &self,
        conv: &str,
        after: Option<&ItemId>,
        value: impl Into<Value>,
    ) -> Result<ItemId, NodeError> {
        let edit = LocalEdit::InsertAfter {
            after: after.cloned(),
            value: value.into(),
        };
        let ops = self.edit(EntityType::Conversation, conv, edit)?;
        item_made(&ops)
    }

    /// Removes the conversation item at `index`.
    pub fn conv_remove(&self, conv: &str, index: usize) -> Result<(), NodeError> {
        self.edit(EntityType::Conversation, conv, LocalEdit::Remove { index })
            .map(drop)
    }

    /// Removes the conversation item `item`, wherever it is now (nothing if
    /// it is removed already).
    pub fn conv_remove_item(&self, conv: &str, item: &ItemId) -> Result<(), NodeError> {
        let edit = LocalEdit::RemoveItem { item: item.clone() };
        self.edit(EntityType::Conversation, conv, edit).map(drop)
    }

    /// A conversation's items in order, each with its id: its author and
    /// counter, the same on every device and whatever is inserted or
    /// removed around it (for replies, removals, references).
    pub fn conv_items(&self, conv: &str) -> Option<Vec<(ItemId, Value)>> {
        self.inner.core.conversation_items(conv)
    }

    /// A document's fields, concurrent writes resolved the same way on every device.
    pub fn document(&self, doc: &str) -> Option<std::collections::BTreeMap<String, Value>> {
        self.inner.core.document(doc)
    }

    /// A collaborative text field.
    pub fn text(&self, doc: &str, field: &str) -> Option<String> {
        self.inner.core.text(doc, field)
    }

    /// A conversation's items.
    pub fn conversation(&self, conv: &str) -> Option<Vec<Value>> {
        self.inner.core.conversation(conv)
    }

    /// The deterministic hash of this device's state.
    pub fn state_hash(&self) -> Hash32 {
        self.inner.core.state_hash()
    }

    // ----- networking -----------------------------------------------------

    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Session>> {
        lock(&self.inner.sessions)
    }

    /// The live connection to `peer`, if a session is up.
    /// Whether `peer` is connected and announced `capability`.
    pub(crate) fn peer_has(&self, peer: &DeviceId, capability: &str) -> bool {
        self.sessions()
            .get(peer)
            .is_some_and(|s| s.info.has(capability))
    }

    pub(crate) fn session_conn(&self, peer: &DeviceId) -> Option<Connection> {
        self.sessions().get(peer).map(|s| s.conn.clone())
    }

    /// The connection for artifact streams to `peer`, if a session is up:
    /// its bulk connection when one is open, else the session's own.
    pub(crate) fn artifact_conn(&self, peer: &DeviceId) -> Option<Connection> {
        let main = self.session_conn(peer)?;
        Some(self.bulk_or(main))
    }

    /// The bulk connection to `main`'s peer when one is open, else `main`.
    pub(crate) fn bulk_or(&self, main: Connection) -> Connection {
        self.open_bulk_conn(&main.peer()).unwrap_or(main)
    }

    /// The bulk connection to `peer`, while one is open.
    fn open_bulk_conn(&self, peer: &DeviceId) -> Option<Connection> {
        let bulk = lock(&self.inner.bulk).get(peer).cloned()?;
        bulk.close_reason().is_none().then_some(bulk)
    }

    /// Adds the bytes `conn` moved to the counters, when it has ended
    /// (while it is open, [`Node::metrics_snapshot`] reads them from it).
    pub(crate) fn fold_traffic(&self, conn: &Connection) {
        let stats = conn.quinn().stats();
        Metrics::add(&self.metrics().bytes_sent, stats.udp_tx.bytes);
        Metrics::add(&self.metrics().bytes_received, stats.udp_rx.bytes);
    }

    pub(crate) fn transport(&self) -> Option<Transport> {
        lock(&self.inner.transport).clone()
    }

    /// The runtime to start work on: the caller's, or, from a thread
    /// outside any (an application's own), the one the node was started on.
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| lock(&self.inner.runtime).clone())
    }

    pub(crate) fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Goes online: binds a QUIC endpoint on `listen` and accepts paired devices.
    /// Returns the bound address.
    pub async fn start(&self, listen: SocketAddr) -> Result<SocketAddr, NodeError> {
        *lock(&self.inner.runtime) = Some(tokio::runtime::Handle::current());
        // Path hints from the last run: a damaged record costs only the
        // probes and Retry they would have saved.
        let known_paths = self.inner.core.store().known_paths().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "forgetting the remembered network paths");
            Default::default()
        });
        let config = nomade_transport::Config {
            rate_limits: self.inner.config.rate_limits,
            handshake_timeout: self.inner.config.handshake_timeout,
            known_paths,
            queue_target: self.inner.config.queue_target,
            relay: self.inner.config.relay,
            bulk: self.inner.config.bulk,
            ..Default::default()
        };
        #[cfg(feature = "faults")]
        let faults = self.inner.config.faults.clone();
        #[cfg(not(feature = "faults"))]
        let faults: Option<std::convert::Infallible> = None;
        let transport = match faults {
            None => Transport::bind(
                self.inner.identity.clone(),
                self.inner.paired.clone(),
                listen,
                config,
            )?,
            #[cfg(feature = "faults")]
            Some((plan, partition)) => Transport::bind_faulty(
                self.inner.identity.clone(),
                self.inner.paired.clone(),
                listen,
                config,
                plan,
                partition,
            )?,
            #[cfg(not(feature = "faults"))]
            Some(never) => match never {},
        };
        let addr = transport.local_addr()?;
        *lock(&self.inner.transport) = Some(transport.clone());
        let node = self.clone();
        let t = transport.clone();
        self.spawn(async move {
            loop {
                match t.accept().await {
                    Ok(conn) if conn.is_bulk() => node.serve_bulk(conn),
                    Ok(conn) => {
                        let n = node.clone();
                        tokio::spawn(async move { n.run_session(conn, false).await });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "accept ended");
                        break;
                    }
                }
            }
        });
        // Artifacts that later edits reference, fetched as they come.
        let node = self.clone();
        let changes = self.subscribe();
        self.spawn(async move { node.watch_new_references(changes).await });
        // The periodic snapshot and compaction, when the device allows it.
        let node = self.clone();
        self.spawn(async move { node.schedule_compaction().await });
        let node = self.clone();
        let mut events = transport.events();
        self.spawn(async move {
            while let Ok(e) = events.recv().await {
                if let TransportEvent::Paired { peer, addr } = e {
                    // Merged into what the joiner's side of this process may
                    // have stored meanwhile, never over it.
                    if let Err(e) = node.add_peer(peer, "", &[addr]) {
                        tracing::error!(%peer, error = %e, "could not store the new peer");
                    }
                }
            }
        });
        if self.inner.config.discovery {
            self.start_discovery(addr);
        }
        tracing::info!(device = %self.inner.device_id, %addr, "node online");
        Ok(addr)
    }

    /// Opens a pairing window of the protocol's default length (5 minutes)
    /// and returns the short code to show the user.
    pub fn pairing_code(&self) -> Result<PairingCode, NodeError> {
        self.pairing_code_valid_for(nomade_transport::PAIRING_TTL)
    }

    /// Opens a pairing window that closes after `ttl` (or after one attempt)
    /// and returns the short code to show the user.
    pub fn pairing_code_valid_for(&self, ttl: Duration) -> Result<PairingCode, NodeError> {
        let t = self
            .transport()
            .ok_or_else(|| NodeError::NotFound("a started node".into()))?;
        Ok(t.start_pairing_for(ttl))
    }

    /// Pairs with the device at `addr` that shows `code`, then syncs with it.
    pub async fn pair_with(
        &self,
        addr: SocketAddr,
        code: &PairingCode,
    ) -> Result<DeviceId, NodeError> {
        let t = self
            .transport()
            .ok_or_else(|| NodeError::NotFound("a started node".into()))?;
        let conn = t.pair_with(addr, code).await?;
        let peer = conn.peer();
        self.add_peer(peer, "", &[addr])?;
        self.start_session(conn).await?;
        Ok(peer)
    }

    /// Connects to the paired device `peer` at `addr` and syncs with it.
    pub async fn connect(&self, addr: SocketAddr, peer: DeviceId) -> Result<(), NodeError> {
        let conn = self.dial(addr, peer).await?;
        self.run_dialed(conn, addr, peer).await
    }

    /// The QUIC and TLS handshake of [`Node::connect`], alone: dropping it
    /// leaves nothing behind.
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
        peer: DeviceId,
    ) -> Result<nomade_transport::Connection, NodeError> {
        let t = self
            .transport()
            .ok_or_else(|| NodeError::NotFound("a started node".into()))?;
        t.connect(addr, Some(peer)).await.map_err(|e| {
            let e = NodeError::from(e);
            self.note_dial_failure(peer, addr, &e);
            e
        })
    }

    /// The rest of [`Node::connect`] once `conn` is up: the address is
    /// remembered first, and the session runs.
    pub(crate) async fn run_dialed(
        &self,
        conn: nomade_transport::Connection,
        addr: SocketAddr,
        peer: DeviceId,
    ) -> Result<(), NodeError> {
        self.update_peer(peer, |p| p.remember_address(&addr.to_string()))?;
        let result = self.start_session(conn).await;
        match &result {
            Ok(()) => self.note_dial_success(peer, addr),
            Err(e) => self.note_dial_failure(peer, addr, e),
        }
        result
    }

    /// The QUIC statistics of the live connection to `peer` (bytes and
    /// datagrams each way, RTT, congestion window, path MTU and its
    /// probes): for diagnostics. `None` when no session is up.
    pub fn connection_stats(&self, peer: &DeviceId) -> Option<quinn::ConnectionStats> {
        self.session_conn(peer).map(|c| c.quinn().stats())
    }

    /// The QUIC statistics of the bulk connection to `peer`, on which
    /// artifact transfers go (`NodeConfig::bulk`): `None` when none is
    /// open.
    pub fn bulk_connection_stats(&self, peer: &DeviceId) -> Option<quinn::ConnectionStats> {
        self.open_bulk_conn(peer).map(|b| b.quinn().stats())
    }

    /// Whether a session with `peer` is up.
    pub fn is_connected(&self, peer: &DeviceId) -> bool {
        let sessions = self.sessions();
        sessions
            .get(peer)
            .is_some_and(|s| s.conn.close_reason().is_none())
    }

    /// The device relaying the live session with `peer`, `None` when the
    /// session is direct or there is none.
    pub fn relayed_via(&self, peer: &DeviceId) -> Option<DeviceId> {
        let sessions = self.sessions();
        sessions
            .get(peer)
            .filter(|s| s.conn.close_reason().is_none())
            .and_then(|s| s.conn.relayed_via())
    }

    pub(crate) async fn wait_disconnected(&self, peer: &DeviceId) {
        let conn = self.session_conn(peer);
        if let Some(c) = conn {
            let _ = c.closed().await;
        }
    }

    /// Waits until the first exchange with `peer` finished in the direction
    /// peer -> this device (all its operations at the time are applied here).
    pub async fn wait_initial_sync(
        &self,
        peer: &DeviceId,
        timeout: Duration,
    ) -> Result<SyncSummary, NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.inner.session_events.subscribe();
        loop {
            let rx = {
                let sessions = self.sessions();
                sessions.get(peer).map(|s| s.initial.clone())
            };
            if let Some(mut rx) = rx {
                if let Some(s) = rx.borrow_and_update().clone() {
                    return Ok(s);
                }
                tokio::select! {
                    _ = rx.changed() => continue,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            tokio::select! {
                _ = events.changed() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(peer_err(peer, "no initial sync before the timeout"))
    }

    /// Closes every connection and stops the node's tasks. The data directory
    /// stays consistent (every acknowledged operation was committed).
    pub async fn shutdown(&self) {
        let transport = lock(&self.inner.transport).take();
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            t.abort();
        }
        let sessions: Vec<_> = self.sessions().drain().collect();
        for (_, s) in sessions {
            s.conn.close(0, "shutting down");
        }
        if let Some(t) = transport {
            let known = t.known_paths();
            t.close().await;
            if let Err(e) = self.inner.core.store().set_known_paths(&known) {
                tracing::warn!(error = %e, "could not keep the network paths for the next run");
            }
        }
        self.inner.core.checkpoint();
    }
}

/// The id of the item the operations of one conversation insertion made.
fn item_made(ops: &[SyncOperation]) -> Result<ItemId, NodeError> {
    ops.first()
        .map(|op| ItemId {
            actor: op.actor_id.clone(),
            counter: op.operation.counter,
        })
        .ok_or_else(|| NodeError::CorruptLog("an insertion made no operation".into()))
}
