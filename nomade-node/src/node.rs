//! A running device: identity, database, artifact store, and the network
//! sessions with paired peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nomade_artifact::{
    ArtifactId, ArtifactStore, DeviceKey, Progress, Receiver, ReceiverEvent, Sender,
};
use nomade_crdt::{LocalEdit, ReplicaConfig};
use nomade_transport::dial::Backoff;
use nomade_transport::heartbeat::Liveness;
use nomade_transport::{
    Connection, DeviceId, DeviceIdentity, FramedRecv, FramedSend, IncomingStream, PairedSet,
    PairingCode, RateLimits, Transport, TransportEvent,
};
use nomade_wire::{
    ConnectivityStatus, EntityType, Envelope, ErrorCode, ErrorMessage, Hash32, Heartbeat, Message,
    PresenceStatus, PresenceUpdate, StreamRole, SyncOperation, Value,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::artifact_io;
use crate::core::{now_ms, Change, Core};
use crate::error::NodeError;
use crate::handshake::{self, HandshakeError, LocalInfo, PeerInfo};
use crate::lock;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::sync::{self, envelope, FrameSink, FrameSource, SyncSummary};

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
    /// Test only: network faults injected under the QUIC endpoint, and the
    /// partition switch (`None`: the real network, untouched).
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
            min_backoff: Duration::from_millis(200),
            clock_skew_ms: 0,
            max_backoff: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            faults: None,
        }
    }
}

/// What is known of a peer's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerPresence {
    /// Whether a session is up and heartbeats arrive.
    pub online: bool,
    /// The status the peer last announced.
    pub status: Option<PresenceStatus>,
    /// Its status message.
    pub message: Option<String>,
    /// Its battery level, where known.
    pub battery_level: Option<u8>,
    /// How it is connected.
    pub connectivity: Option<ConnectivityStatus>,
    /// Milliseconds since its last heartbeat (at the time of asking).
    pub last_heard_ms_ago: Option<u64>,
}

pub(crate) struct Session {
    pub(crate) conn: Connection,
    initial: watch::Receiver<Option<SyncSummary>>,
    liveness: Arc<Mutex<Liveness>>,
    presence: Arc<Mutex<(Option<PresenceUpdate>, Option<Heartbeat>)>>,
    /// When it started (ms since the Unix epoch).
    pub(crate) started_ms: i64,
    /// Whether this device dialed.
    pub(crate) dialed: bool,
    /// The peer's clock minus ours, from the timestamp of its HELLO or
    /// HELLO_ACK frame (ms; informational, as every timestamp).
    pub(crate) clock_offset_ms: i64,
}

pub(crate) struct Inner {
    pub(crate) core: Arc<Core>,
    identity: DeviceIdentity,
    pub(crate) device_id: DeviceId,
    pub(crate) config: NodeConfig,
    /// This device's name, as announced in HELLO (changeable at run time).
    pub(crate) name: Mutex<String>,
    pub(crate) paired: PairedSet,
    artifacts: ArtifactStore,
    transport: Mutex<Option<Transport>>,
    pub(crate) sessions: Mutex<HashMap<DeviceId, Session>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    status: Mutex<PresenceUpdate>,
    /// Fires when a session starts or ends, or an initial sync completes.
    pub(crate) session_events: watch::Sender<u64>,
    /// Fires when a session starts: wakes the redials waiting out a backoff
    /// (the count is the `sessions_started` metric).
    pub(crate) session_started: watch::Sender<()>,
    /// Redialing and its findings, per peer (see `peers.rs`).
    pub(crate) redial: crate::peers::Redial,
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

struct Sink(FramedSend);
struct Source(FramedRecv);

impl FrameSink for Sink {
    async fn send(&mut self, env: &Envelope) -> Result<(), NodeError> {
        Ok(self.0.send(env).await?)
    }

    async fn send_frame(&mut self, frame: bytes::Bytes) -> Result<(), NodeError> {
        Ok(self.0.send_frame(frame).await?)
    }
}

impl FrameSource for Source {
    async fn recv(&mut self) -> Result<Option<Envelope>, NodeError> {
        Ok(self.0.recv().await?)
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
        };
        let core = Core::open(dir, &device_id.to_string(), replica_config)?;
        core.set_clock_skew(config.clock_skew_ms);
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
                redial: crate::peers::Redial::default(),
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

    /// Appends an item to a conversation.
    pub fn conv_append(&self, conv: &str, value: impl Into<Value>) -> Result<(), NodeError> {
        let len = self.conversation(conv).map(|c| c.len()).unwrap_or(0);
        self.conv_insert(conv, len, value)
    }

    /// Removes the conversation item at `index`.
    pub fn conv_remove(&self, conv: &str, index: usize) -> Result<(), NodeError> {
        self.edit(EntityType::Conversation, conv, LocalEdit::Remove { index })
            .map(drop)
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

    // ----- artifacts ------------------------------------------------------

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// Stores a file as an artifact (sealed at rest for this device) and
    /// returns its id. Reference it in a document with
    /// [`ArtifactId::to_reference`]; peers fetch it after syncing.
    pub fn put_artifact(&self, path: &Path, mime: Option<&str>) -> Result<ArtifactId, NodeError> {
        self.put_artifact_with_progress(path, mime, |_, _| {})
    }

    /// [`Node::put_artifact`], calling `progress(done, total)` as the file
    /// is read: it is read twice (to hash it, then to seal it), so `total`
    /// is twice its size.
    pub fn put_artifact_with_progress(
        &self,
        path: &Path,
        mime: Option<&str>,
        progress: impl FnMut(u64, u64),
    ) -> Result<ArtifactId, NodeError> {
        let me = self.inner.artifacts.public_key();
        let file = std::fs::File::open(path)?;
        let total = file.metadata()?.len().saturating_mul(2);
        let reader = crate::progress::CountingReader::new(file, total, progress);
        Ok(self.inner.artifacts.put_reader(reader, mime, &[me])?)
    }

    /// Writes an artifact's plaintext to `out`, verified against its id.
    pub fn export_artifact(&self, id: &ArtifactId, out: &Path) -> Result<(), NodeError> {
        Ok(self.inner.artifacts.export(id, out)?)
    }

    // ----- peers ----------------------------------------------------------

    /// What is known of a peer's presence.
    pub fn presence(&self, peer: &DeviceId) -> PeerPresence {
        let sessions = self.sessions();
        let Some(s) = sessions.get(peer) else {
            return PeerPresence::default();
        };
        let liveness = lock(&s.liveness).clone();
        let (update, beat) = lock(&s.presence).clone();
        let online = s.conn.close_reason().is_none() && liveness.is_online(Instant::now());
        PeerPresence {
            online,
            status: update.as_ref().map(|u| u.status),
            message: update.and_then(|u| u.message),
            battery_level: beat.as_ref().and_then(|b| b.battery_level),
            connectivity: beat.map(|b| b.connectivity),
            last_heard_ms_ago: Some(liveness.last_beat().elapsed().as_millis() as u64),
        }
    }

    /// Announces a new presence to connected peers.
    pub fn set_presence(&self, status: PresenceStatus, message: Option<String>) {
        *lock(&self.inner.status) = PresenceUpdate { status, message };
        self.inner.session_events.send_modify(|n| *n += 1);
    }

    // ----- networking -----------------------------------------------------

    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Session>> {
        lock(&self.inner.sessions)
    }

    /// The live connection to `peer`, if a session is up.
    fn session_conn(&self, peer: &DeviceId) -> Option<Connection> {
        self.sessions().get(peer).map(|s| s.conn.clone())
    }

    pub(crate) fn transport(&self) -> Option<Transport> {
        lock(&self.inner.transport).clone()
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
        let config = nomade_transport::Config {
            rate_limits: self.inner.config.rate_limits,
            handshake_timeout: self.inner.config.handshake_timeout,
            ..Default::default()
        };
        let transport = match self.inner.config.faults.clone() {
            None => Transport::bind(
                self.inner.identity.clone(),
                self.inner.paired.clone(),
                listen,
                config,
            )?,
            Some((plan, partition)) => Transport::bind_faulty(
                self.inner.identity.clone(),
                self.inner.paired.clone(),
                listen,
                config,
                plan,
                partition,
            )?,
        };
        let addr = transport.local_addr()?;
        *lock(&self.inner.transport) = Some(transport.clone());
        let node = self.clone();
        let t = transport.clone();
        self.spawn(async move {
            loop {
                match t.accept().await {
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
        let t = self
            .transport()
            .ok_or_else(|| NodeError::NotFound("a started node".into()))?;
        let conn = match t.connect(addr, Some(peer)).await {
            Ok(c) => c,
            Err(e) => {
                let e = NodeError::from(e);
                self.note_dial_failure(peer, addr, &e);
                return Err(e);
            }
        };
        self.update_peer(peer, |p| p.remember_address(&addr.to_string()))?;
        let result = self.start_session(conn).await;
        match &result {
            Ok(()) => self.note_dial_success(peer, addr),
            Err(e) => self.note_dial_failure(peer, addr, e),
        }
        result
    }

    /// Whether a session with `peer` is up.
    pub fn is_connected(&self, peer: &DeviceId) -> bool {
        let sessions = self.sessions();
        sessions
            .get(peer)
            .is_some_and(|s| s.conn.close_reason().is_none())
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

    async fn start_session(&self, conn: Connection) -> Result<(), NodeError> {
        let peer = conn.peer();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let node = self.clone();
        tokio::spawn(async move { node.run_session_notify(conn, true, Some(ready_tx)).await });
        match ready_rx.await {
            Ok(r) => r,
            Err(_) => Err(peer_err(&peer, "session ended during the handshake")),
        }
    }

    async fn run_session(&self, conn: Connection, dialer: bool) {
        self.run_session_notify(conn, dialer, None).await
    }

    async fn run_session_notify(
        &self,
        conn: Connection,
        dialer: bool,
        ready: Option<tokio::sync::oneshot::Sender<Result<(), NodeError>>>,
    ) {
        let peer = conn.peer();
        let result = self.session(conn.clone(), dialer, ready).await;
        match &result {
            Ok(()) => tracing::info!(%peer, "session ended"),
            // The connection closing (either side, or the network) is routine.
            Err(NodeError::Transport(e)) => tracing::info!(%peer, reason = %e, "session ended"),
            Err(e) => tracing::warn!(%peer, error = %e, "session ended with an error"),
        }
        conn.close(0, "session over");
        // (Not for a peer unpaired meanwhile: its record is gone for good.)
        if self.inner.paired.contains(&peer) {
            if let Err(e) = self.update_peer(peer, |p| p.last_seen_ms = Some(now_ms())) {
                tracing::debug!(%peer, error = %e, "could not record when the peer was last seen");
            }
        }
        let stats = conn.quinn().stats();
        Metrics::add(&self.metrics().bytes_sent, stats.udp_tx.bytes);
        Metrics::add(&self.metrics().bytes_received, stats.udp_rx.bytes);
        let mut sessions = self.sessions();
        if sessions
            .get(&peer)
            .is_some_and(|s| s.conn.quinn().stable_id() == conn.quinn().stable_id())
        {
            sessions.remove(&peer);
        }
        drop(sessions);
        self.inner.session_events.send_modify(|n| *n += 1);
    }

    /// Runs HELLO / HELLO_ACK. Returns what the peer announced and its clock
    /// minus ours, read off its frame's timestamp (ms).
    async fn handshake(
        &self,
        conn: &Connection,
        dialer: bool,
    ) -> Result<(PeerInfo, i64), NodeError> {
        let peer = conn.peer();
        let local = LocalInfo {
            device_id: self.inner.device_id.to_string(),
            device_name: self.device_name(),
            state_hash: self.state_hash(),
        };
        let to_node_err = |e: HandshakeError| match e {
            HandshakeError::VersionMismatch { theirs, ours } => NodeError::VersionMismatch {
                peer: peer.to_string(),
                theirs,
                ours,
            },
            other => peer_err(&peer, other.to_string()),
        };
        if dialer {
            let (mut tx, mut rx) = conn.open_bi(StreamRole::Control).await?;
            tx.send(&envelope(handshake::hello(&local))).await?;
            let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .map_err(|_| peer_err(&peer, "no HELLO_ACK"))??;
            let offset = answer
                .as_ref()
                .map_or(0, |e| e.timestamp.saturating_sub(now_ms()));
            match answer.map(|e| e.message) {
                Some(Message::HelloAck(ack)) => match handshake::check_hello_ack(&ack, &peer) {
                    Ok(info) => Ok((info, offset)),
                    Err(e) => {
                        // Nobody reads the control stream after HELLO_ACK:
                        // the dialer says why in the connection close.
                        let code = e.to_error_message().error_code;
                        conn.close(u32::from(code.0), &e.to_string());
                        Err(to_node_err(e))
                    }
                },
                Some(Message::Error(e)) => {
                    if e.error_code == ErrorCode::PROTOCOL_VERSION_MISMATCH {
                        return Err(NodeError::VersionMismatch {
                            peer: peer.to_string(),
                            theirs: 0,
                            ours: nomade_wire::PROTOCOL_VERSION,
                        });
                    }
                    if e.error_code == ErrorCode::AUTHENTICATION_FAILED {
                        return Err(NodeError::Refused {
                            peer: peer.to_string(),
                            reason: e.error_message,
                        });
                    }
                    Err(to_node_err(HandshakeError::Refused(e)))
                }
                other => Err(peer_err(
                    &peer,
                    format!(
                        "expected HELLO_ACK, got {:?}",
                        other.map(|m| m.message_type().name())
                    ),
                )),
            }
        } else {
            let first = tokio::time::timeout(Duration::from_secs(10), conn.accept_stream())
                .await
                .map_err(|_| peer_err(&peer, "no control stream"))??;
            let IncomingStream {
                role: StreamRole::Control,
                send: Some(mut tx),
                mut recv,
            } = first
            else {
                return Err(peer_err(
                    &peer,
                    "the first stream was not the control stream",
                ));
            };
            let hello = tokio::time::timeout(Duration::from_secs(10), recv.recv())
                .await
                .map_err(|_| peer_err(&peer, "no HELLO"))??;
            let (hello, message_id, offset) = match hello {
                Some(Envelope {
                    message: Message::Hello(hello),
                    message_id,
                    timestamp,
                }) => (hello, message_id, timestamp.saturating_sub(now_ms())),
                other => {
                    let related = other.as_ref().map(|e| e.message_id);
                    let error = ErrorMessage {
                        error_code: ErrorCode::INVALID_MESSAGE,
                        error_message: "the control stream starts with HELLO".into(),
                        related_message_id: related,
                    };
                    let _ = tx.send(&envelope(error)).await;
                    let _ = tx.finish().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(peer_err(&peer, "expected HELLO"));
                }
            };
            match handshake::answer_hello(&local, &hello, &peer) {
                Ok((ack, info)) => {
                    tx.send(&envelope(ack)).await?;
                    Ok((info, offset))
                }
                Err(e) => {
                    let mut msg = e.to_error_message();
                    msg.related_message_id = Some(message_id);
                    let _ = tx.send(&envelope(msg)).await;
                    let _ = tx.finish().await;
                    // Give the ERROR a moment to reach the peer before closing.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(to_node_err(e))
                }
            }
        }
    }

    async fn session(
        &self,
        conn: Connection,
        dialer: bool,
        ready: Option<tokio::sync::oneshot::Sender<Result<(), NodeError>>>,
    ) -> Result<(), NodeError> {
        let peer = conn.peer();
        let (info, clock_offset_ms) = match self.handshake(&conn, dialer).await {
            Ok(answer) => answer,
            Err(e) => {
                // The dialer waiting on `ready` gets the error itself (its
                // kind decides whether to redial); the log gets its text.
                let logged = peer_err(&peer, e.to_string());
                return match ready {
                    Some(r) => {
                        let _ = r.send(Err(e));
                        Err(logged)
                    }
                    None => Err(e),
                };
            }
        };
        let name = info.device_name.clone();
        tracing::info!(%peer, name, dialer, capabilities = ?info.capabilities, "session established");
        let (initial_tx, initial_rx) = watch::channel(None);
        // Offline once more than `missed_heartbeats` periods pass without a beat.
        let liveness = Arc::new(Mutex::new(Liveness::new(
            self.inner.config.heartbeat_period,
            self.inner.config.missed_heartbeats + 1,
            Instant::now(),
        )));
        let presence = Arc::new(Mutex::new((None, None)));
        {
            let mut sessions = self.sessions();
            if let Some(old) = sessions.insert(
                peer,
                Session {
                    conn: conn.clone(),
                    initial: initial_rx,
                    liveness: liveness.clone(),
                    presence: presence.clone(),
                    started_ms: now_ms(),
                    dialed: dialer,
                    clock_offset_ms,
                },
            ) {
                if old.conn.quinn().stable_id() != conn.quinn().stable_id() {
                    old.conn.close(0, "replaced by a newer connection");
                }
            }
        }
        // What the session tells of the peer: its name, and, when it
        // dialed in, its address (a device dials from the socket it listens
        // on, so that is where to reach it back).
        let remote = conn.quinn().remote_address();
        if let Err(e) = self.update_peer(peer, |p| {
            if !name.is_empty() {
                p.name = Some(name.clone());
            }
            if !dialer {
                p.remember_address(&remote.to_string());
            }
            p.last_seen_ms = Some(now_ms());
        }) {
            tracing::warn!(%peer, error = %e, "could not update the peer's record");
        }
        self.inner.session_events.send_modify(|n| *n += 1);
        Metrics::add(&self.metrics().sessions_started, 1);
        self.inner.session_started.send_replace(());
        if let Some(r) = ready {
            let _ = r.send(Ok(()));
        }

        // Pull: our own sync stream asks for what we lack. A pull that fails
        // for anything but the connection (a full causal buffer, a full disk,
        // an operation refused) asks again on a new stream after a backoff:
        // the new SYNC_REQUEST carries this device's version vector, so the
        // peer resends what is missing in an order that applies.
        // What the peer did not announce is not asked of it (PROTOCOL.md,
        // "Capabilities").
        let first = if info.has(handshake::CRDT_SYNC) {
            Some(conn.open_bi(StreamRole::Sync).await?)
        } else {
            None
        };
        let core = self.inner.core.clone();
        let p = peer.to_string();
        let node = self.clone();
        let mut summary_rx = initial_tx.subscribe();
        let (pull_conn, config) = (conn.clone(), self.inner.config.clone());
        let puller = tokio::spawn(async move {
            let Some(first) = first else { return };
            let mut stream = Some(first);
            let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
            loop {
                let (tx, rx) = match stream.take() {
                    Some(s) => s,
                    None => match pull_conn.open_bi(StreamRole::Sync).await {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let (mut tx, mut rx) = (Sink(tx), Source(rx));
                let started = Instant::now();
                match sync::pull(core.clone(), p.clone(), &mut tx, &mut rx, &initial_tx).await {
                    Ok(()) | Err(NodeError::Transport(_)) => {
                        tracing::debug!(peer = %p, "pull ended");
                        break;
                    }
                    Err(e) => {
                        // A pull that ran for a while before failing asks
                        // again soon; repeated quick failures back off.
                        let delay = backoff.on_failure_of_attempt_started(
                            started,
                            Instant::now(),
                            &mut rand::thread_rng(),
                        );
                        tracing::warn!(peer = %p, error = %e, retry_in = ?delay, "sync from peer failed: asking again");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        // Once the initial sync is in, fetch the artifacts it references.
        let c2 = conn.clone();
        let fetches = info.has(handshake::ARTIFACT_TRANSFER);
        let fetcher = tokio::spawn(async move {
            while fetches && summary_rx.changed().await.is_ok() {
                if summary_rx.borrow().is_some() {
                    node.inner.session_events.send_modify(|n| *n += 1);
                    node.fetch_missing_artifacts(&c2).await;
                    break;
                }
            }
        });
        // Heartbeats and presence out.
        let hb = self.clone();
        let c3 = conn.clone();
        let presence_on = info.has(handshake::PRESENCE);
        let heart = tokio::spawn(async move {
            if !presence_on {
                return;
            }
            if let Err(e) = hb.send_heartbeats(&c3).await {
                tracing::debug!(peer = %c3.peer(), error = %e, "heartbeats stopped");
            }
        });
        // Streams the peer opens.
        let result = loop {
            let incoming = tokio::select! {
                s = conn.accept_stream() => s,
                _ = self.watch_liveness(&liveness), if presence_on => {
                    conn.close(0, "missed heartbeats");
                    break Err(peer_err(&peer, "missed heartbeats: peer offline"));
                }
            };
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => break Err(e.into()),
            };
            let node = self.clone();
            let lh = liveness.clone();
            let pr = presence.clone();
            tokio::spawn(async move { node.serve_stream(peer, stream, lh, pr).await });
        };
        puller.abort();
        fetcher.abort();
        heart.abort();
        result
    }

    async fn watch_liveness(&self, liveness: &Arc<Mutex<Liveness>>) {
        loop {
            tokio::time::sleep(self.inner.config.heartbeat_period).await;
            let online = lock(liveness).is_online(Instant::now());
            if !online {
                return;
            }
        }
    }

    async fn send_heartbeats(&self, conn: &Connection) -> Result<(), NodeError> {
        let (mut tx, _) = conn.open(StreamRole::Presence).await?;
        let mut events = self.inner.session_events.subscribe();
        let mut last_status = None;
        loop {
            let status = lock(&self.inner.status).clone();
            if last_status.as_ref() != Some(&status) {
                tx.send(&envelope(status.clone())).await?;
                last_status = Some(status);
            }
            let beat = Heartbeat {
                timestamp: now_ms(),
                battery_level: None,
                connectivity: ConnectivityStatus::Unknown,
            };
            tx.send(&envelope(beat)).await?;
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.heartbeat_period) => {}
                _ = events.changed() => {}
            }
        }
    }

    async fn serve_stream(
        &self,
        peer: DeviceId,
        stream: IncomingStream,
        liveness: Arc<Mutex<Liveness>>,
        presence: Arc<Mutex<(Option<PresenceUpdate>, Option<Heartbeat>)>>,
    ) {
        let IncomingStream {
            role,
            send,
            mut recv,
        } = stream;
        let result: Result<(), NodeError> = match (role, send) {
            (StreamRole::Sync, Some(tx)) => {
                let (mut tx, mut rx) = (Sink(tx), Source(recv));
                sync::push(self.inner.core.clone(), peer.to_string(), &mut tx, &mut rx).await
            }
            (StreamRole::Artifact, Some(tx)) => self.serve_artifact(peer, tx, recv).await,
            (StreamRole::Presence, _) => loop {
                match recv.recv().await {
                    Ok(Some(env)) => {
                        lock(&liveness).beat(Instant::now());
                        let mut p = lock(&presence);
                        match env.message {
                            Message::Heartbeat(b) => p.1 = Some(b),
                            Message::PresenceUpdate(u) => {
                                tracing::info!(%peer, status = ?u.status, "presence");
                                p.0 = Some(u)
                            }
                            other => {
                                tracing::debug!(%peer, kind = other.message_type().name(), "ignored on the presence stream")
                            }
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            },
            (role, _) => {
                // The push role (0x04) is reserved: version 1 pushes live
                // operations on the sync stream (PROTOCOL.md, "Roles").
                recv.refuse(ErrorCode::INVALID_MESSAGE, "no such stream is served")
                    .await;
                Err(peer_err(&peer, format!("unexpected {role:?} stream")))
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, ?role, error = %e, "stream ended");
        }
    }

    async fn serve_artifact(
        &self,
        peer: DeviceId,
        mut tx: FramedSend,
        mut rx: FramedRecv,
    ) -> Result<(), NodeError> {
        // Every paired (TLS-authenticated) device may fetch: the data key is
        // wrapped for the key it sends (a sealed transfer), or it seals the
        // plaintext under its own key (a plaintext one).
        let sender = Sender::new(
            self.inner.artifacts.clone(),
            self.inner.paired.contains(&peer),
        );
        let sender = artifact_io::drive(sender, &mut tx, &mut rx, |event| {
            tracing::debug!(%peer, ?event, "artifact");
        })
        .await?;
        if sender.is_finished() {
            let _ = tx.finish().await;
        }
        Ok(())
    }

    /// Artifact ids referenced by the values of every document and conversation.
    pub fn referenced_artifacts(&self) -> Vec<ArtifactId> {
        fn walk(v: &Value, out: &mut Vec<ArtifactId>) {
            match v {
                Value::String(s) => {
                    if let Some(id) = ArtifactId::from_reference(s) {
                        out.push(id);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Map(m) => m.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let core = &self.inner.core;
        let mut out = Vec::new();
        for (t, id) in core.entities() {
            match t {
                EntityType::Conversation => {
                    for v in core.conversation(&id).unwrap_or_default() {
                        walk(&v, &mut out);
                    }
                }
                _ => {
                    for v in core.document(&id).unwrap_or_default().values() {
                        walk(v, &mut out);
                    }
                }
            }
        }
        out.sort_by_key(|a| a.to_hex());
        out.dedup();
        out
    }

    async fn fetch_missing_artifacts(&self, conn: &Connection) {
        for id in self.referenced_artifacts() {
            if self.inner.artifacts.has(&id) {
                continue;
            }
            match self.fetch_on(conn, id, |_| {}).await {
                Ok(()) => tracing::info!(peer = %conn.peer(), artifact = %id, "artifact fetched"),
                // The partial file stays: the next session resumes from it.
                Err(e) if e.is_connection_loss() => tracing::info!(
                    peer = %conn.peer(), artifact = %id, error = %e,
                    "artifact fetch interrupted; it resumes when the peer is back"
                ),
                Err(e) => {
                    tracing::warn!(peer = %conn.peer(), artifact = %id, error = %e, "artifact fetch failed")
                }
            }
        }
    }

    /// Fetches an artifact from a connected peer, resuming a partial transfer.
    /// `progress` is called when the transfer starts, as chunks are verified
    /// and written (at most every 10 ms), and once at the end with the final
    /// figures.
    pub async fn fetch_artifact(
        &self,
        peer: &DeviceId,
        id: ArtifactId,
        progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        let conn = self.session_conn(peer);
        let conn = conn.ok_or_else(|| peer_err(peer, "not connected"))?;
        self.fetch_on(&conn, id, progress).await
    }

    /// Fetches on `conn`; a failure other than a lost connection (bad data,
    /// a refusal, a quota) is counted as an `ARTIFACT` error.
    async fn fetch_on(
        &self,
        conn: &Connection,
        id: ArtifactId,
        progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        let result = self.fetch_uncounted(conn, id, progress).await;
        if let Err(e) = &result {
            if !e.is_connection_loss() {
                self.metrics().record_error("ARTIFACT");
            }
        }
        result
    }

    async fn fetch_uncounted(
        &self,
        conn: &Connection,
        id: ArtifactId,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(), NodeError> {
        if self.inner.artifacts.has(&id) {
            return Ok(());
        }
        // Another task may be fetching it already: wait for that one to end,
        // then use its result or take over from its partial file.
        let receiver = loop {
            match Receiver::new(self.inner.artifacts.clone(), id, 128) {
                Ok(r) => break r,
                Err(nomade_artifact::ArtifactError::AlreadyStored { .. }) => return Ok(()),
                Err(nomade_artifact::ArtifactError::TransferInProgress { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (mut tx, mut rx) = conn.open_bi(StreamRole::Artifact).await?;
        let mut counted = receiver.progress().bytes_done;
        let metrics = self.metrics();
        let receiver = artifact_io::drive(receiver, &mut tx, &mut rx, |event| match event {
            ReceiverEvent::Started(p)
            | ReceiverEvent::Progress(p)
            | ReceiverEvent::Complete { progress: p, .. } => {
                Metrics::add(
                    &metrics.artifact_bytes_received,
                    p.bytes_done.saturating_sub(counted),
                );
                counted = p.bytes_done;
                progress(&p)
            }
            _ => {}
        })
        .await?;
        let _ = tx.finish().await;
        if receiver.is_complete() {
            Ok(())
        } else {
            Err(peer_err(&conn.peer(), "artifact stream ended early"))
        }
    }

    // ----- status and shutdown ---------------------------------------------

    /// A summary of the device for `nomade status`.
    pub fn status(&self) -> NodeStatus {
        let peers = self
            .peers()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let id = p.device_id.parse::<DeviceId>().ok();
                let presence = id.map(|id| self.presence(&id));
                let session = id.and_then(|id| self.session_status(&id));
                PeerStatus {
                    online: presence.as_ref().is_some_and(|x| x.online),
                    last_seen_ms: if session.is_some() {
                        Some(now_ms())
                    } else {
                        p.last_seen_ms
                    },
                    last_dial: id.and_then(|id| self.dial_reports().remove(&id)),
                    device_id: p.device_id,
                    name: p.name,
                    addresses: p.addresses,
                    presence,
                    session,
                }
            })
            .collect();
        NodeStatus {
            device_id: self.inner.device_id.to_string(),
            device_name: self.device_name(),
            listening: self
                .transport()
                .and_then(|t| t.local_addr().ok())
                .map(|a| a.to_string()),
            disk_full_since_ms: self.inner.core.store().full_since_ms(),
            dir: self.dir().to_path_buf(),
            state_hash: self.state_hash().to_hex(),
            version_vector: self.inner.core.version_vector(),
            operations: self.inner.core.op_count(),
            entities: self.inner.core.entities().len(),
            artifacts: self.inner.artifacts.list().map(|l| l.len()).unwrap_or(0),
            peers,
            metrics: self.metrics_snapshot(),
        }
    }

    /// The session with `peer`, while one is up.
    pub fn session_status(&self, peer: &DeviceId) -> Option<SessionStatus> {
        let sessions = self.sessions();
        let s = sessions.get(peer)?;
        if s.conn.close_reason().is_some() {
            return None;
        }
        let q = s.conn.quinn();
        let stats = q.stats();
        Some(SessionStatus {
            address: q.remote_address().to_string(),
            dialed: s.dialed,
            rtt_ms: q.rtt().as_secs_f64() * 1000.0,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            since_ms: s.started_ms,
            last_sync_ms: self.inner.core.last_sync_ms(&peer.to_string()),
            clock_offset_ms: s.clock_offset_ms,
        })
    }

    /// The metrics, with the bytes on the wire of every connection so far
    /// (ended sessions are folded into the counters when they end).
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut m = self.metrics().snapshot();
        for s in self.sessions().values() {
            let stats = s.conn.quinn().stats();
            m.bytes_sent += stats.udp_tx.bytes;
            m.bytes_received += stats.udp_rx.bytes;
        }
        m.bytes_received_per_sec = m.bytes_received as f64 / m.uptime_secs.max(1e-9);
        if let Some(t) = self.transport() {
            m.rejected_input = t
                .rejected_input()
                .by_kind()
                .iter()
                .map(|(kind, n)| (kind.to_string(), *n))
                .collect();
        }
        m
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
            t.close().await;
        }
    }
}

/// One peer in [`NodeStatus`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Its device id.
    pub device_id: String,
    /// Its name, as it announced it.
    pub name: Option<String>,
    /// Addresses it can be reached at, best first.
    pub addresses: Vec<String>,
    /// Whether a session is up and the peer is heard from.
    pub online: bool,
    /// When it was last seen (ms since the Unix epoch): now while a session
    /// is up.
    pub last_seen_ms: Option<i64>,
    /// Its presence, when known.
    pub presence: Option<PeerPresence>,
    /// The session with it, while one is up.
    pub session: Option<SessionStatus>,
    /// How the last attempt to dial it ended (since the node started).
    pub last_dial: Option<crate::peers::DialReport>,
}

/// A session with a peer, in [`PeerStatus`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStatus {
    /// The peer's address on this connection.
    pub address: String,
    /// Whether this device dialed it.
    pub dialed: bool,
    /// The connection's smoothed round-trip time, in milliseconds.
    pub rtt_ms: f64,
    /// Bytes sent to the peer on this connection (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// When the session started (ms since the Unix epoch).
    pub since_ms: i64,
    /// When operations last went either way (ms since the Unix epoch).
    pub last_sync_ms: Option<i64>,
    /// The peer's clock minus this device's, as read off its handshake (ms).
    /// Clocks never decide anything in Nomade; a large value only explains
    /// odd timestamps.
    pub clock_offset_ms: i64,
}

/// A summary of a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    /// This device's id.
    pub device_id: String,
    /// Its name.
    pub device_name: String,
    /// The address it listens on, when it is online.
    pub listening: Option<String>,
    /// When a write last failed for want of disk space, if nothing was
    /// stored since (ms since the Unix epoch).
    pub disk_full_since_ms: Option<i64>,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its state hash (hex).
    pub state_hash: String,
    /// The highest operation counter applied, per device.
    pub version_vector: nomade_wire::VersionVector,
    /// Operations applied.
    pub operations: usize,
    /// Entities held.
    pub entities: usize,
    /// Artifacts held.
    pub artifacts: usize,
    /// Paired devices.
    pub peers: Vec<PeerStatus>,
    /// Metrics.
    pub metrics: MetricsSnapshot,
}
