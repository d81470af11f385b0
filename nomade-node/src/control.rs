//! The local control interface: how the `nomade` commands (and any other
//! program of the same user) drive a running node.
//!
//! `nomade serve` listens on a Unix domain socket, `control.sock` in its
//! data directory, with owner-only permissions; a connection from another
//! user is refused even if the permissions were loosened. Every command
//! talks to the running node through it when one runs, and opens the data
//! directory itself when none does: both go through [`handle`], so the
//! output is the same either way.
//!
//! # Protocol
//!
//! Line-delimited JSON, UTF-8, one object per line (`\n`-terminated). A
//! client sends a request:
//!
//! ```text
//! {"id": 1, "method": "doc_set", "params": {"doc": "trip", "key": "title", "value": "Lisbon"}}
//! ```
//!
//! and reads, for that `id`, zero or more events, then exactly one result or
//! error:
//!
//! ```text
//! {"id": 1, "event": {"progress": {"phase": "put", "done": 65536, "total": 131072}}}
//! {"id": 1, "result": null}
//! {"id": 1, "error": {"kind": "not_found", "message": "document trip not found"}}
//! ```
//!
//! `method` and `params` are the [`Request`] variants in snake case and their
//! fields (a method without fields takes no `params`). Requests on one
//! connection are answered in order. `watch` never ends: it sends a `change`
//! event per change until the client disconnects.
//!
//! Limits, each answered with a typed error ([`ErrorKind`]): a request line
//! over [`ControlLimits::max_request_bytes`] (`too_large`, the connection is
//! then closed), a line that does not parse (`bad_request`, the connection
//! goes on), a request not completed within
//! [`ControlLimits::request_deadline`] of its first byte or a connection
//! silent for [`ControlLimits::idle_timeout`] (`timeout`, closed), more than
//! [`ControlLimits::max_clients`] connections at once (`busy`, closed at
//! once), another user (`forbidden`, closed).

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nomade_artifact::ArtifactId;
use nomade_transport::{DeviceId, PairingCode, TransportError};
use nomade_wire::{EntityType, PresenceStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use crate::error::NodeError;
use crate::json;
use crate::node::Node;

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Where the node serving `dir` listens for commands.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// The bounds the control socket enforces.
#[derive(Debug, Clone)]
pub struct ControlLimits {
    /// Connections served at once; more are answered `busy` and closed.
    pub max_clients: usize,
    /// Longest request line, newline excluded.
    pub max_request_bytes: usize,
    /// Time from a request's first byte to its newline.
    pub request_deadline: Duration,
    /// Time a connection may stay silent between requests.
    pub idle_timeout: Duration,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            max_clients: 32,
            max_request_bytes: 1 << 20,
            request_deadline: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A conversation item's id as JSON: `{"actor", "counter"}`.
fn item_json(id: &crate::ItemId) -> Json {
    json!({"actor": id.actor, "counter": id.counter})
}

/// What a client asks. On the wire: `method` (the variant in snake case)
/// and `params` (its fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// The node's state: id, name, peers and their sessions, metrics.
    Status,
    /// This device's id.
    Id,
    /// This device's name; renames it when `name` is given.
    Name {
        /// The new name.
        #[serde(default)]
        name: Option<String>,
    },
    /// The paired devices.
    PeersList,
    /// Pins a device id compared out of band, with an address to reach it.
    PeersAdd {
        /// Its id (either text form).
        device_id: String,
        /// Where it listens (`HOST:PORT`).
        #[serde(default)]
        addr: Option<String>,
    },
    /// Unpairs a device.
    PeersRemove {
        /// Its id.
        device_id: String,
    },
    /// Every artifact this device knows of, with its state.
    ArtifactsList,
    /// Pins or unpins an artifact.
    ArtifactsPin {
        /// The artifact id (hex).
        id: String,
        /// Pin (true) or unpin (false).
        pinned: bool,
    },
    /// Drops an artifact's content, keeping its metadata.
    ArtifactsEvict {
        /// The artifact id (hex).
        id: String,
    },
    /// Revokes a device (lost or stolen): a signed record that every
    /// device it reaches enforces (docs/PROTOCOL.md, "Revocation").
    PeersRevoke {
        /// Its id.
        device_id: String,
    },
    /// Opens a pairing window: sends a `pairing_code` event, then answers
    /// once a device joined (or fails when the window closes).
    PairShow {
        /// How long the code stays valid, in seconds.
        ttl_secs: u64,
        /// Where to listen if the node is not online yet.
        #[serde(default)]
        listen: Option<String>,
    },
    /// Joins a device showing `code` at `addr`, then syncs with it.
    PairJoin {
        /// The code it shows.
        code: String,
        /// Its address.
        addr: String,
        /// Where to listen if the node is not online yet.
        #[serde(default)]
        listen: Option<String>,
    },
    /// Writes a document field (`value` is JSON).
    DocSet {
        /// The document.
        doc: String,
        /// The field.
        key: String,
        /// The value.
        value: Json,
    },
    /// Reads a field (a register, or a text field as a string).
    DocGet {
        /// The document.
        doc: String,
        /// The field.
        key: String,
    },
    /// Removes a field.
    DocDelete {
        /// The document.
        doc: String,
        /// The field.
        key: String,
    },
    /// A whole document as a JSON object (text fields as strings).
    DocShow {
        /// The document.
        doc: String,
    },
    /// Appends an item to a conversation.
    ConvAppend {
        /// The conversation.
        conv: String,
        /// The item (JSON).
        value: Json,
    },
    /// Inserts an item at `index`.
    ConvInsert {
        /// The conversation.
        conv: String,
        /// Its position (0 = first).
        index: usize,
        /// The item.
        value: Json,
    },
    /// Removes the item at `index`.
    ConvRemove {
        /// The conversation.
        conv: String,
        /// Its position.
        index: usize,
    },
    /// A conversation's items, in order.
    ConvShow {
        /// The conversation.
        conv: String,
    },
    /// A conversation's items, in order, each with its id.
    ConvItems {
        /// The conversation.
        conv: String,
    },
    /// Inserts an item right after the item `after` (by id; `null`: first).
    ConvInsertAfter {
        /// The conversation.
        conv: String,
        /// The item's id to insert after.
        after: Option<crate::ItemId>,
        /// The item.
        value: Json,
    },
    /// Removes the item `item` (by id).
    ConvRemoveItem {
        /// The conversation.
        conv: String,
        /// The item's id.
        item: crate::ItemId,
    },
    /// A text field's text.
    TextShow {
        /// The document.
        doc: String,
        /// The text field.
        field: String,
    },
    /// Replaces `delete` characters at `position` with `insert`.
    TextSplice {
        /// The document.
        doc: String,
        /// The text field.
        field: String,
        /// Where (in characters).
        position: usize,
        /// How many characters go.
        delete: usize,
        /// What comes in.
        insert: String,
    },
    /// Turns the text `base` into `new` by the splices of their difference,
    /// if the field still holds `base` (else `conflict`, nothing changed).
    TextReplace {
        /// The document.
        doc: String,
        /// The text field.
        field: String,
        /// The text the change was made from.
        base: String,
        /// The text wanted.
        new: String,
    },
    /// Stores a file (read by the node: an absolute path) as an artifact;
    /// sends `progress` events.
    Put {
        /// The file.
        path: PathBuf,
        /// Its MIME type.
        #[serde(default)]
        mime: Option<String>,
        /// Seal it for this device and these paired devices only (device
        /// ids); none: for every paired device.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        recipients: Vec<String>,
    },
    /// Writes an artifact to `out` (an absolute path), fetching it from a
    /// paired device first if needed; sends `progress` events.
    Get {
        /// The artifact id (hex, or a `nomade:artifact/` reference).
        id: String,
        /// Where to write it.
        out: PathBuf,
        /// The address of the device to fetch from.
        #[serde(default)]
        from: Option<String>,
        /// The device to fetch from.
        #[serde(default)]
        peer: Option<String>,
    },
    /// Announces this device's presence to its peers.
    PresenceSet {
        /// The status.
        status: PresenceStatus,
        /// An optional message.
        #[serde(default)]
        message: Option<String>,
    },
    /// Tells a running node the device's power and network state:
    /// background work waits or goes by it, heartbeats carry it.
    PowerSet {
        /// The state.
        #[serde(flatten)]
        state: crate::schedule::PowerState,
    },
    /// Changes the entities this device holds: adds `patterns`, or with
    /// `only` holds exactly them, or with `everything` every entity.
    Subscribe {
        /// Patterns (`type:id`, `type:prefix*`, `type:*`).
        #[serde(default)]
        patterns: Vec<String>,
        /// Hold exactly `patterns`.
        #[serde(default)]
        only: bool,
        /// Hold every entity.
        #[serde(default)]
        everything: bool,
    },
    /// Removes patterns from the subscription.
    Unsubscribe {
        /// Patterns to remove.
        patterns: Vec<String>,
    },
    /// The subscription: `{ subscription, patterns, filling_in }`.
    Subscriptions,
    /// Every change as it is applied, as `change` events (a running node only).
    Watch,
    /// Why each paired device is syncing or not (see [`crate::doctor`]).
    Doctor,
}

/// Something that happened while a request runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Bytes done of a long operation.
    Progress {
        /// `put`, `fetch` or `export`.
        phase: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A pairing window is open: show the code.
    PairingCode {
        /// The code.
        code: String,
        /// This device's id.
        device_id: String,
        /// The address it listens on.
        listening: String,
    },
    /// A change was applied (see [`crate::core::Change`]).
    Change {
        /// The entity's type.
        entity_type: EntityType,
        /// Its id.
        entity_id: String,
        /// The device that made the change.
        actor_id: String,
        /// Whether it came from a peer.
        remote: bool,
        /// When it was applied here (ms since the Unix epoch).
        at_ms: i64,
    },
    /// Changes were missed (the watcher read too slowly).
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// What went wrong, for a caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request does not parse, or names an unknown method.
    BadRequest,
    /// The request line is over the limit.
    TooLarge,
    /// A request took too long to arrive, or a connection stayed silent.
    Timeout,
    /// The client is another user.
    Forbidden,
    /// Too many clients at once.
    Busy,
    /// The request needs a running node (`nomade serve`).
    NoNode,
    /// Bad arguments (an id that does not parse, a position past the end).
    Invalid,
    /// What was asked for does not exist.
    NotFound,
    /// The state changed under an edit computed from an older one.
    Conflict,
    /// No answer from the peer.
    Unreachable,
    /// The peer refused this device (not paired, another version, a wrong code).
    Refused,
    /// The data directory cannot be used (corrupt, in use, disk full).
    Storage,
    /// Anything else.
    Failed,
}

/// A failed request: its kind and a one-line message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

impl ControlError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

impl From<NodeError> for ControlError {
    fn from(e: NodeError) -> Self {
        use TransportError as T;
        let kind = match &e {
            NodeError::NotFound(_)
            | NodeError::Crdt(nomade_crdt::CrdtError::UnknownItem { .. }) => ErrorKind::NotFound,
            NodeError::Invalid(_) => ErrorKind::Invalid,
            NodeError::Conflict(_) => ErrorKind::Conflict,
            NodeError::Crdt(
                nomade_crdt::CrdtError::IndexOutOfRange { .. }
                | nomade_crdt::CrdtError::WrongEntityType { .. },
            ) => ErrorKind::Invalid,
            NodeError::Refused { .. } | NodeError::VersionMismatch { .. } => ErrorKind::Refused,
            NodeError::Store(_) | NodeError::CorruptLog(_) => ErrorKind::Storage,
            NodeError::Transport(t) => match t {
                T::NotPaired
                | T::PairingRefused(_)
                | T::PeerNotAccepted { .. }
                | T::UnexpectedPeer { .. } => ErrorKind::Refused,
                T::ConnectTimeout { .. }
                | T::NoEndpointReachable { .. }
                | T::Connect(_)
                | T::Connection(quinn::ConnectionError::TimedOut) => ErrorKind::Unreachable,
                T::InvalidDeviceId { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Failed,
            },
            _ => ErrorKind::Failed,
        };
        ControlError::new(kind, e.to_string())
    }
}

impl From<nomade_artifact::ArtifactError> for ControlError {
    fn from(e: nomade_artifact::ArtifactError) -> Self {
        NodeError::from(e).into()
    }
}

fn invalid(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::Invalid, message)
}

/// Where a request's events go: to the socket, or to the local printer.
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::Sender<Event>);

impl EventSink {
    /// A sink and the receiver of its events (buffering `capacity`).
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink(tx), rx)
    }

    /// Sends an event, waiting for room. `false` once nobody listens.
    pub async fn send(&self, event: Event) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// Sends a progress event if there is room (progress may be skipped).
    pub fn progress(&self, phase: &str, done: u64, total: u64) {
        let _ = self.0.try_send(Event::Progress {
            phase: phase.to_string(),
            done,
            total,
        });
    }
}

/// Progress events at most this often (and always the last one).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Forwards `(done, total)` reports to `events`, throttled.
fn throttled(events: &EventSink, phase: &'static str) -> impl FnMut(u64, u64) + Send + 'static {
    let events = events.clone();
    let mut last: Option<std::time::Instant> = None;
    move |done, total| {
        let now = std::time::Instant::now();
        if done >= total || last.is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL) {
            last = Some(now);
            events.progress(phase, done, total);
        }
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, ControlError> {
    s.parse().map_err(|_| {
        invalid(format!(
            "{s:?} is not an address: write HOST:PORT, e.g. 192.168.1.20:4433"
        ))
    })
}

fn parse_device_id(s: &str) -> Result<DeviceId, ControlError> {
    s.parse().map_err(|e: TransportError| {
        invalid(format!(
            "{e} (a device id is 32 characters of a-z and 2-7, dashes optional)"
        ))
    })
}

/// The default address a node listens on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Puts the node online if it is not yet: on `listen`, else on the address
/// it last served on, else on [`DEFAULT_LISTEN`]; if that address is taken
/// (another program uses the port), on any free port.
pub async fn ensure_online(node: &Node, listen: Option<&str>) -> Result<SocketAddr, ControlError> {
    if let Some(addr) = node.listening_addr() {
        return Ok(addr);
    }
    let wanted = match listen {
        Some(l) => parse_addr(l)?,
        None => match node.remembered_listen_addr() {
            Some(a) => a,
            None => parse_addr(DEFAULT_LISTEN)?,
        },
    };
    match node.start(wanted).await {
        Ok(a) => Ok(a),
        Err(NodeError::Transport(TransportError::Io(e))) if listen.is_none() => {
            tracing::info!(%wanted, error = %e, "listen address taken: using a free port");
            Ok(node.start(SocketAddr::new(wanted.ip(), 0)).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs an edit, whose durable commit waits for the disk, on the blocking
/// pool rather than on a runtime worker that serves other requests and the
/// sync streams.
async fn commit<T: Send + 'static>(
    node: &Node,
    edit: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ControlError> {
    let node = node.clone();
    Ok(tokio::task::spawn_blocking(move || edit(&node))
        .await
        .map_err(NodeError::from)??)
}

/// The subscription as the control protocol answers it.
fn subscription_json(node: &Node) -> Json {
    let subscription = node.subscription();
    serde_json::json!({
        "subscription": subscription.to_string(),
        "patterns": subscription.to_request(),
        "filling_in": node.core().refilling(),
    })
}

/// Carries out `request` on `node`. `served`: the node runs (`nomade
/// serve`), so requests that need a running node are allowed.
pub async fn handle(
    node: &Node,
    served: bool,
    request: Request,
    events: &EventSink,
) -> Result<Json, ControlError> {
    match request {
        Request::Status => Ok(to_json(&node.status())?),
        Request::Id => Ok(json!({ "device_id": node.device_id().to_string() })),
        Request::Name { name } => {
            if let Some(n) = name {
                node.set_device_name(&n)?;
            }
            Ok(json!({ "name": node.device_name() }))
        }
        Request::PeersList => Ok(to_json(&node.peer_statuses())?),
        Request::PeersAdd { device_id, addr } => {
            let id = parse_device_id(&device_id)?;
            let addrs = addr.as_deref().map(parse_addr).transpose()?;
            node.add_peer(id, "", addrs.as_slice())?;
            Ok(json!({ "device_id": id.to_string() }))
        }
        Request::PeersRemove { device_id } => {
            let id = parse_device_id(&device_id)?;
            if !node.remove_peer(&id)? {
                return Err(ControlError::new(
                    ErrorKind::NotFound,
                    format!("{id} is not paired"),
                ));
            }
            Ok(json!({ "device_id": id.to_string() }))
        }
        Request::ArtifactsList => Ok(to_json(&node.artifact_entries()?)?),
        Request::ArtifactsPin { id, pinned } => {
            node.pin_artifact(&parse_artifact_id(&id)?, pinned)?;
            Ok(json!({ "id": id, "pinned": pinned }))
        }
        Request::ArtifactsEvict { id } => {
            let freed = node.evict_artifact(&parse_artifact_id(&id)?)?;
            Ok(json!({ "id": id, "freed": freed }))
        }
        Request::PeersRevoke { device_id } => {
            let id = parse_device_id(&device_id)?;
            let node = node.clone();
            let revoked = tokio::task::spawn_blocking(move || node.revoke_peer(&id))
                .await
                .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))??;
            Ok(to_json(&revoked)?)
        }
        Request::PairShow { ttl_secs, listen } => {
            pair_show(node, served, ttl_secs, listen.as_deref(), events).await
        }
        Request::PairJoin { code, addr, listen } => {
            let addr = parse_addr(&addr)?;
            let code = PairingCode::parse(&code).ok_or_else(|| {
                invalid(
                    "a pairing code is 8 characters of a-z and 2-7, as the other device shows it",
                )
            })?;
            ensure_online(node, listen.as_deref()).await?;
            let peer = node.pair_with(addr, &code).await?;
            node.wait_initial_sync(&peer, Duration::from_secs(30))
                .await?;
            Ok(json!({ "device_id": peer.to_string(), "name": peer_name(node, &peer) }))
        }
        Request::DocSet { doc, key, value } => {
            let value = json::from_json(&value);
            commit(node, move |n| n.set(&doc, &key, value)).await?;
            Ok(Json::Null)
        }
        Request::DocDelete { doc, key } => {
            commit(node, move |n| n.delete(&doc, &key)).await?;
            Ok(Json::Null)
        }
        Request::DocGet { doc, key } => {
            match node.document(&doc).and_then(|d| d.get(&key).cloned()) {
                Some(v) => Ok(json::to_json(&v)),
                None => match node.text(&doc, &key) {
                    Some(t) => Ok(Json::String(t)),
                    None => Err(ControlError::new(
                        ErrorKind::NotFound,
                        format!("{doc} has no field {key}"),
                    )),
                },
            }
        }
        Request::DocShow { doc } => {
            let mut map: serde_json::Map<String, Json> = node
                .document(&doc)
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| (k.clone(), json::to_json(v)))
                .collect();
            for field in node.core().text_fields(&doc) {
                let text = node.text(&doc, &field).unwrap_or_default();
                map.insert(field, Json::String(text));
            }
            Ok(Json::Object(map))
        }
        Request::ConvAppend { conv, value } => {
            let value = json::from_json(&value);
            let id = commit(node, move |n| n.conv_append(&conv, value)).await?;
            Ok(item_json(&id))
        }
        Request::ConvInsertAfter { conv, after, value } => {
            let value = json::from_json(&value);
            let id = commit(node, move |n| {
                n.conv_insert_after(&conv, after.as_ref(), value)
            })
            .await?;
            Ok(item_json(&id))
        }
        Request::ConvRemoveItem { conv, item } => {
            commit(node, move |n| n.conv_remove_item(&conv, &item)).await?;
            Ok(Json::Null)
        }
        Request::ConvItems { conv } => Ok(Json::Array(
            node.conv_items(&conv)
                .unwrap_or_default()
                .iter()
                .map(|(id, value)| json!({"id": item_json(id), "value": json::to_json(value)}))
                .collect(),
        )),
        Request::ConvInsert { conv, index, value } => {
            let value = json::from_json(&value);
            commit(node, move |n| n.conv_insert(&conv, index, value)).await?;
            Ok(Json::Null)
        }
        Request::ConvRemove { conv, index } => {
            commit(node, move |n| n.conv_remove(&conv, index)).await?;
            Ok(Json::Null)
        }
        Request::ConvShow { conv } => Ok(Json::Array(
            node.conversation(&conv)
                .unwrap_or_default()
                .iter()
                .map(json::to_json)
                .collect(),
        )),
        Request::TextShow { doc, field } => match node.text(&doc, &field) {
            Some(t) => Ok(Json::String(t)),
            None => Err(ControlError::new(
                ErrorKind::NotFound,
                format!("{doc} has no text field {field}"),
            )),
        },
        Request::TextSplice {
            doc,
            field,
            position,
            delete,
            insert,
        } => {
            commit(node, move |n| {
                n.splice_text(&doc, &field, position, delete, &insert)
            })
            .await?;
            Ok(Json::Null)
        }
        Request::TextReplace {
            doc,
            field,
            base,
            new,
        } => {
            let splices = commit(node, move |n| n.replace_text(&doc, &field, &base, &new)).await?;
            Ok(json!({ "splices": splices }))
        }
        Request::Put {
            path,
            mime,
            recipients,
        } => {
            let recipients = recipients
                .iter()
                .map(|d| parse_device_id(d))
                .collect::<Result<Vec<_>, _>>()?;
            let node = node.clone();
            let progress = throttled(events, "put");
            let id = tokio::task::spawn_blocking(move || {
                node.put_artifact_for_with_progress(&path, mime.as_deref(), &recipients, progress)
            })
            .await
            .map_err(NodeError::from)??;
            Ok(json!({ "id": id.to_hex(), "reference": id.to_reference() }))
        }
        Request::Get {
            id,
            out,
            from,
            peer,
        } => get(node, &id, &out, from.as_deref(), peer.as_deref(), events).await,
        Request::PresenceSet { status, message } => {
            if !served {
                return Err(no_node(node));
            }
            node.set_presence(status, message);
            Ok(Json::Null)
        }
        Request::Subscribe {
            patterns,
            only,
            everything,
        } => {
            let next = || -> Result<nomade_crdt::Subscription, nomade_crdt::SubscriptionError> {
                if everything {
                    return Ok(nomade_crdt::Subscription::Everything);
                }
                if only {
                    return nomade_crdt::Subscription::parse(&patterns);
                }
                let mut next = node.subscription();
                for p in &patterns {
                    next = next.with(nomade_crdt::Pattern::parse(p)?)?;
                }
                Ok(next)
            };
            node.set_subscription(next().map_err(NodeError::from)?)?;
            Ok(subscription_json(node))
        }
        Request::Unsubscribe { patterns } => {
            let mut next = node.subscription();
            for p in &patterns {
                next = next.without(&nomade_crdt::Pattern::parse(p).map_err(NodeError::from)?);
            }
            node.set_subscription(next)?;
            Ok(subscription_json(node))
        }
        Request::Subscriptions => Ok(subscription_json(node)),
        Request::PowerSet { state } => {
            if !served {
                return Err(no_node(node));
            }
            node.set_power_state(state);
            Ok(to_json(&node.power_state())?)
        }
        Request::Watch => {
            if !served {
                return Err(no_node(node));
            }
            watch(node, events).await
        }
        Request::Doctor => Ok(to_json(&crate::doctor::diagnose(node, served).await)?),
    }
}

fn to_json(v: &impl Serialize) -> Result<Json, ControlError> {
    serde_json::to_value(v).map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))
}

/// The error for a request that needs `nomade serve` running.
pub fn no_node(node: &Node) -> ControlError {
    no_node_at(node.dir())
}

/// The error for a request that needs `nomade serve` running on `dir`.
pub fn no_node_at(dir: &Path) -> ControlError {
    ControlError::new(
        ErrorKind::NoNode,
        format!(
            "no node is running on {}: start it with `nomade --dir {} serve`",
            dir.display(),
            dir.display()
        ),
    )
}

fn peer_name(node: &Node, peer: &DeviceId) -> Option<String> {
    node.peer(*peer).ok()??.name
}

async fn pair_show(
    node: &Node,
    served: bool,
    ttl_secs: u64,
    listen: Option<&str>,
    events: &EventSink,
) -> Result<Json, ControlError> {
    let listening = ensure_online(node, listen).await?;
    let before: std::collections::HashSet<String> =
        node.peers()?.into_iter().map(|p| p.device_id).collect();
    let code = node.pairing_code_valid_for(Duration::from_secs(ttl_secs))?;
    events
        .send(Event::PairingCode {
            code: code.to_string(),
            device_id: node.device_id().to_string(),
            listening: listening.to_string(),
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl_secs);
    let joined = loop {
        if let Some(p) = node
            .peers()?
            .into_iter()
            .find(|p| !before.contains(&p.device_id))
        {
            break p.device_id;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ControlError::new(
                ErrorKind::Timeout,
                "no device joined before the code expired: run `nomade pair show` again",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peer = parse_device_id(&joined)?;
    // The joiner syncs at once; its name arrives with its HELLO. A node
    // that only runs for this pairing stays up for that first exchange.
    let wait = if served { 5 } else { 10 };
    if let Err(e) = node
        .wait_initial_sync(&peer, Duration::from_secs(wait))
        .await
    {
        tracing::info!(%peer, error = %e, "paired; the first sync is not complete yet");
    }
    Ok(json!({ "device_id": joined, "name": peer_name(node, &peer) }))
}

fn parse_artifact_id(id: &str) -> Result<ArtifactId, ControlError> {
    ArtifactId::from_hex(id)
        .or_else(|| ArtifactId::from_reference(id))
        .ok_or_else(|| {
            invalid("an artifact id is 64 hex characters (or a nomade:artifact/ reference)")
        })
}

async fn get(
    node: &Node,
    id: &str,
    out: &Path,
    from: Option<&str>,
    peer: Option<&str>,
    events: &EventSink,
) -> Result<Json, ControlError> {
    let id = parse_artifact_id(id)?;
    if !node.artifacts().has(&id) {
        let from = from.map(parse_addr).transpose()?;
        let peer = match peer {
            Some(p) => Some(parse_device_id(p)?),
            None => match from {
                Some(addr) => Some(
                    node.peers()?
                        .into_iter()
                        .find(|p| p.addresses.iter().any(|a| a == &addr.to_string()))
                        .ok_or_else(|| {
                            invalid("no paired device has that address: pass --peer DEVICE_ID")
                        })?
                        .device_id
                        .parse()
                        .map_err(|e: TransportError| invalid(e.to_string()))?,
                ),
                None => None,
            },
        };
        // Without --from or --peer: the connected devices, then the other
        // paired ones, until one has it.
        let candidates = match peer {
            Some(p) => vec![p],
            None => {
                let mut all = node.connected_peers();
                for rec in node.peers()? {
                    if let Ok(p) = rec.device_id.parse::<DeviceId>() {
                        if !all.contains(&p) {
                            all.push(p);
                        }
                    }
                }
                all
            }
        };
        let mut last_error = ControlError::new(
            ErrorKind::NotFound,
            format!(
                "artifact {} is not held here and there is no paired device to fetch it from",
                id.to_hex()
            ),
        );
        let mut fetched = false;
        for peer in candidates {
            match fetch_from(node, peer, from, id, events).await {
                Ok(()) => {
                    fetched = true;
                    break;
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "artifact not fetched from this device");
                    last_error = e;
                }
            }
        }
        if !fetched {
            return Err(last_error);
        }
    }
    let (node2, out2) = (node.clone(), out.to_path_buf());
    let size = node.artifacts().metadata(&id).map(|m| m.size).unwrap_or(0);
    events.progress("export", 0, size);
    tokio::task::spawn_blocking(move || node2.export_artifact(&id, &out2))
        .await
        .map_err(NodeError::from)??;
    events.progress("export", size, size);
    Ok(json!({ "path": out, "id": id.to_hex() }))
}

/// Fetches artifact `id` from `peer`, connecting first (at `from`, else at
/// its known addresses in order) if no session is up.
async fn fetch_from(
    node: &Node,
    peer: DeviceId,
    from: Option<SocketAddr>,
    id: ArtifactId,
    events: &EventSink,
) -> Result<(), ControlError> {
    if !node.is_connected(&peer) {
        ensure_online(node, None).await?;
        let addrs = match from {
            Some(a) => vec![a],
            None => node.addresses_of(peer),
        };
        let mut result = Err(ControlError::new(
            ErrorKind::NotFound,
            format!("no address known for {peer}: pass --from ADDR"),
        ));
        for addr in addrs {
            result = node.connect(addr, peer).await.map_err(ControlError::from);
            if result.is_ok() {
                break;
            }
        }
        result?;
    }
    let mut progress = throttled(events, "fetch");
    node.fetch_artifact(&peer, id, |p| progress(p.bytes_done, p.bytes_total))
        .await?;
    Ok(())
}

async fn watch(node: &Node, events: &EventSink) -> Result<Json, ControlError> {
    let mut changes = node.subscribe();
    loop {
        let event = match changes.recv().await {
            Ok(c) => Event::Change {
                entity_type: c.entity_type,
                entity_id: c.entity_id,
                actor_id: c.actor_id,
                remote: c.remote,
                at_ms: crate::core::now_ms(),
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Event::Lagged { missed: n },
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(Json::Null),
        };
        if !events.send(event).await {
            return Ok(Json::Null);
        }
    }
}

// ----- the server ------------------------------------------------------------

/// One line on the socket, as the server writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The request it answers (`None` for a request whose id was unreadable).
    pub id: Option<u64>,
    /// An event of a running request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// The request's result (present, possibly null, on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Json>,
    /// The request's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}

impl Reply {
    fn event(id: u64, event: Event) -> Reply {
        Reply {
            id: Some(id),
            event: Some(event),
            result: None,
            error: None,
        }
    }

    fn done(id: u64, r: Result<Json, ControlError>) -> Reply {
        let (result, error) = match r {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Reply {
            id: Some(id),
            event: None,
            result,
            error,
        }
    }

    fn error(id: Option<u64>, e: ControlError) -> Reply {
        Reply {
            id,
            event: None,
            result: None,
            error: Some(e),
        }
    }

    fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }
}

/// A request line: its id, method and params.
#[derive(Debug, Deserialize)]
struct RequestLine {
    id: u64,
    #[serde(flatten)]
    request: Request,
}

/// Parses one request line. The id is recovered, when it can be, for the
/// error of a request that does not parse.
fn parse_request(line: &[u8]) -> Result<(u64, Request), (Option<u64>, ControlError)> {
    match serde_json::from_slice::<RequestLine>(line) {
        Ok(r) => Ok((r.id, r.request)),
        Err(e) => {
            let id = serde_json::from_slice::<Json>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(Json::as_u64));
            Err((
                id,
                ControlError::new(ErrorKind::BadRequest, format!("bad request: {e}")),
            ))
        }
    }
}

/// Reads one request line within the limits: `Ok(None)` at a clean end of
/// the connection.
async fn read_request(
    reader: &mut (impl AsyncBufRead + Unpin),
    limits: &ControlLimits,
) -> Result<Option<Vec<u8>>, ControlError> {
    let first = tokio::time::timeout(limits.idle_timeout, reader.fill_buf()).await;
    match first {
        Err(_) => {
            return Err(ControlError::new(
                ErrorKind::Timeout,
                "connection idle for too long",
            ))
        }
        Ok(Err(_)) => return Ok(None),
        Ok(Ok([])) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let deadline = tokio::time::Instant::now() + limits.request_deadline;
    let mut line = Vec::new();
    loop {
        let available = match tokio::time::timeout_at(deadline, reader.fill_buf()).await {
            Err(_) => {
                return Err(ControlError::new(
                    ErrorKind::Timeout,
                    "request not completed in time (a request is one line ending in a newline)",
                ))
            }
            Ok(Err(e)) => return Err(ControlError::new(ErrorKind::BadRequest, e.to_string())),
            Ok(Ok(b)) => b,
        };
        if available.is_empty() {
            return Err(ControlError::new(
                ErrorKind::BadRequest,
                "the connection ended in the middle of a request",
            ));
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if line.len() + take > limits.max_request_bytes {
            return Err(ControlError::new(
                ErrorKind::TooLarge,
                format!("request over {} bytes", limits.max_request_bytes),
            ));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take + usize::from(end));
        if end {
            return Ok(Some(line));
        }
    }
}

/// The running control socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a node answers on `dir`'s control socket.
pub async fn node_serves(dir: &Path) -> bool {
    UnixStream::connect(socket_path(dir)).await.is_ok()
}

/// Listens for commands on `dir/control.sock` for `node` (which must be
/// the node of `dir`). Refuses if another node answers there; a socket file
/// left by a node that was killed is replaced.
pub async fn serve(node: &Node, limits: ControlLimits) -> Result<ControlServer, NodeError> {
    let path = socket_path(node.dir());
    if path.exists() {
        if node_serves(node.dir()).await {
            return Err(NodeError::Invalid(format!(
                "a node already serves {} (its control socket answers): stop it first",
                node.dir().display()
            )));
        }
        tracing::info!(path = %path.display(), "removing a stale control socket");
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    // The socket was made by this process: its owner is this user.
    let owner = std::fs::metadata(&path)?.uid();
    let node2 = node.clone();
    node.spawn(accept_loop(node2, listener, owner, limits));
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(ControlServer { path })
}

async fn accept_loop(node: Node, listener: UnixListener, owner: u32, limits: ControlLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_clients));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let limits = Arc::new(limits);
    let mut accept_errors = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "control socket: cannot accept");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid());
        if uid.as_ref().ok() != Some(&owner) {
            tracing::warn!(peer_uid = ?uid.as_ref().ok(), "control socket: refused a client of another user");
            refuse(
                stream,
                ControlError::new(
                    ErrorKind::Forbidden,
                    "this node takes commands from its own user only",
                ),
                &refusing,
            );
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(
                stream,
                ControlError::new(
                    ErrorKind::Busy,
                    format!(
                        "more than {} commands at once: try again",
                        limits.max_clients
                    ),
                ),
                &refusing,
            );
            continue;
        };
        let (node, limits) = (node.clone(), limits.clone());
        tokio::spawn(async move {
            serve_client(&node, stream, &limits).await;
            drop(permit);
        });
    }
}

/// Refusals being delivered at once, at most; past it a client is dropped
/// without a word.
const MAX_REFUSING: usize = 256;

/// Answers a client that is not served with one line. The line fits the
/// socket buffer, so it is written without waiting; then what the client
/// sent is read and thrown away for a moment (bounded in time and bytes)
/// before closing, since closing a Unix socket with unread bytes resets
/// it and the client might lose the line.
fn refuse(stream: UnixStream, e: ControlError, refusing: &Arc<Semaphore>) {
    let _ = stream.try_write(&Reply::error(None, e).to_line());
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let mut left = 64 * 1024usize;
            while left > 0 {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        drop(permit);
    });
}

async fn serve_client(node: &Node, stream: UnixStream, limits: &ControlLimits) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::with_capacity(8 * 1024, r);
    loop {
        let line = match read_request(&mut reader, limits).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "control socket: closing a client");
                let _ = w.write_all(&Reply::error(None, e).to_line()).await;
                return;
            }
        };
        let (id, request) = match parse_request(&line) {
            Ok(r) => r,
            Err((id, e)) => {
                tracing::debug!(error = %e, "control socket: bad request");
                if w.write_all(&Reply::error(id, e).to_line()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        tracing::debug!(id, ?request, "control request");
        let (sink, mut events) = EventSink::channel(64);
        let handling = handle(node, true, request, &sink);
        tokio::pin!(handling);
        let result = loop {
            tokio::select! {
                r = &mut handling => break r,
                Some(ev) = events.recv() => {
                    // A client gone ends the request (a `watch`, say).
                    if w.write_all(&Reply::event(id, ev).to_line()).await.is_err() {
                        return;
                    }
                }
            }
        };
        while let Ok(ev) = events.try_recv() {
            if w.write_all(&Reply::event(id, ev).to_line()).await.is_err() {
                return;
            }
        }
        if w.write_all(&Reply::done(id, result).to_line())
            .await
            .is_err()
        {
            return;
        }
    }
}

// ----- the client ------------------------------------------------------------

/// A connection to a running node's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the node serving `dir`; `Ok(None)` when none does (no
    /// socket, or one left by a node that is gone).
    pub async fn connect(dir: &Path) -> std::io::Result<Option<ControlClient>> {
        match UnixStream::connect(socket_path(dir)).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                Ok(Some(ControlClient {
                    reader: BufReader::new(r),
                    writer: w,
                    next_id: 1,
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `request` and waits for its answer, passing each event to
    /// `on_event` as it arrives.
    pub async fn request(
        &mut self,
        request: &Request,
        mut on_event: impl FnMut(Event),
    ) -> Result<Json, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_value(request)
            .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?;
        if let Json::Object(m) = &mut line {
            m.insert("id".into(), json!(id));
        }
        let mut bytes = serde_json::to_vec(&line)
            .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?;
        bytes.push(b'\n');
        let lost = |e: std::io::Error| {
            ControlError::new(
                ErrorKind::Failed,
                format!("lost the connection to the running node: {e}"),
            )
        };
        self.writer.write_all(&bytes).await.map_err(lost)?;
        let mut answer = String::new();
        loop {
            answer.clear();
            let n = self.reader.read_line(&mut answer).await.map_err(lost)?;
            if n == 0 {
                return Err(ControlError::new(
                    ErrorKind::Failed,
                    "the running node closed the connection (did it stop?)",
                ));
            }
            let reply: Reply = serde_json::from_str(&answer).map_err(|e| {
                ControlError::new(
                    ErrorKind::Failed,
                    format!("unreadable answer from the running node: {e}"),
                )
            })?;
            if reply.id.is_some() && reply.id != Some(id) {
                continue;
            }
            if let Some(ev) = reply.event {
                on_event(ev);
                continue;
            }
            if let Some(e) = reply.error {
                return Err(e);
            }
            return Ok(reply.result.unwrap_or(Json::Null));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_as_method_and_params() {
        let r = Request::DocSet {
            doc: "trip".into(),
            key: "title".into(),
            value: json!("Lisbon"),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"method": "doc_set", "params": {"doc": "trip", "key": "title", "value": "Lisbon"}})
        );
        let line = br#"{"id": 4, "method": "doc_set", "params": {"doc": "trip", "key": "title", "value": "Lisbon"}}"#;
        assert_eq!(parse_request(line).unwrap(), (4, r));
        assert_eq!(
            parse_request(br#"{"id": 5, "method": "status"}"#).unwrap(),
            (5, Request::Status)
        );
    }

    #[test]
    fn a_bad_request_is_a_typed_error_with_its_id_when_readable() {
        for (line, id) in [
            (&b"not json"[..], None),
            (br#"{"id": 3, "method": "launch_rockets"}"#, Some(3)),
            (
                br#"{"id": 9, "method": "doc_set", "params": {"doc": 1}}"#,
                Some(9),
            ),
            (br#"{"method": "status"}"#, None),
            (b"\xff\xfe", None),
        ] {
            let (got, e) = parse_request(line).unwrap_err();
            assert_eq!(got, id, "{}", String::from_utf8_lossy(line));
            assert_eq!(e.kind, ErrorKind::BadRequest);
        }
    }

    #[tokio::test]
    async fn request_lines_are_bounded_in_size_and_time() {
        let limits = ControlLimits {
            max_request_bytes: 16,
            request_deadline: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(100),
            ..ControlLimits::default()
        };
        let mut ok = BufReader::new(&b"{\"id\":1}\nrest"[..]);
        assert_eq!(
            read_request(&mut ok, &limits).await.unwrap(),
            Some(b"{\"id\":1}".to_vec())
        );
        let mut big = BufReader::new(&[b'x'; 100][..]);
        assert_eq!(
            read_request(&mut big, &limits).await.unwrap_err().kind,
            ErrorKind::TooLarge
        );
        let mut cut = BufReader::new(&b"{\"id\""[..]);
        assert_eq!(
            read_request(&mut cut, &limits).await.unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let mut empty = BufReader::new(&b""[..]);
        assert_eq!(read_request(&mut empty, &limits).await.unwrap(), None);
        // Half a request, then nothing: the deadline; nothing at all: idle.
        let (client, server) = tokio::io::duplex(64);
        let mut client = client;
        client.write_all(b"{\"id\"").await.unwrap();
        let mut reader = BufReader::new(server);
        assert_eq!(
            read_request(&mut reader, &limits).await.unwrap_err().kind,
            ErrorKind::Timeout
        );
        let (_client, server) = tokio::io::duplex(64);
        let mut reader = BufReader::new(server);
        assert_eq!(
            read_request(&mut reader, &limits).await.unwrap_err().kind,
            ErrorKind::Timeout
        );
    }
}
