//! What `nomade status` shows: the device, its peers and their sessions
//! (address, RTT, bytes, last sync), and the metrics.

use std::path::PathBuf;

use nomade_transport::{Connection, DeviceId};

use crate::core::now_ms;
use crate::metrics::MetricsSnapshot;
use crate::node::Node;
use crate::presence::PeerPresence;

impl Node {
    // ----- status and shutdown ---------------------------------------------

    /// A summary of the device for `nomade status`.
    pub fn status(&self) -> NodeStatus {
        let peers = self.peer_statuses();
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
            history: self.inner.core.history_status(),
            peers,
            revoked: self.revoked_devices(),
            this_device_revoked: self.is_revoked(),
            subscription: self.inner.core.subscription().to_string(),
            subscription_filling_in: self.inner.core.refilling(),
            artifact_policy: self.inner.config.artifact_policy.clone(),
            power: self.power_state(),
            deferred: self.deferred_work(),
            metrics: self.metrics_snapshot(),
        }
    }

    /// Each paired device, as `peers list` and `status` show it (without
    /// the state hash, metrics or artifact count a whole status computes).
    pub fn peer_statuses(&self) -> Vec<PeerStatus> {
        let mut dials = self.dial_reports();
        self.peers()
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
                    last_dial: id.and_then(|id| dials.remove(&id)),
                    device_id: p.device_id,
                    name: p.name,
                    addresses: p.addresses,
                    presence,
                    session,
                }
            })
            .collect()
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
            address: match s.conn.relayed_via() {
                Some(_) => "relayed".to_string(),
                None => q.remote_address().to_string(),
            },
            relayed_via: s.conn.relayed_via().map(|r| r.to_string()),
            dialed: s.dialed,
            rtt_ms: q.rtt().as_secs_f64() * 1000.0,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            bulk_bytes_received: self.bulk_connection_stats(peer).map(|b| b.udp_rx.bytes),
            since_ms: s.started_ms,
            last_sync_ms: self.inner.core.last_sync_ms(&peer.to_string()),
            clock_offset_ms: s.clock_offset_ms,
        })
    }

    /// The metrics, with the bytes on the wire of every connection so far
    /// (ended sessions are folded into the counters when they end).
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut m = self.metrics().snapshot();
        let sessions: Vec<Connection> = self.sessions().values().map(|s| s.conn.clone()).collect();
        let bulk: Vec<Connection> = crate::lock(&self.inner.bulk).values().cloned().collect();
        for conn in sessions.iter().chain(&bulk) {
            let stats = conn.quinn().stats();
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
            m.retries_sent = t.retries_sent();
            m.relay = t.relay_stats().into();
        }
        m
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
    /// The peer's address on this connection (`"relayed"` for a relayed
    /// one).
    pub address: String,
    /// The paired device relaying this connection, `None` when it is
    /// direct.
    pub relayed_via: Option<String>,
    /// Whether this device dialed it.
    pub dialed: bool,
    /// The connection's smoothed round-trip time, in milliseconds.
    pub rtt_ms: f64,
    /// Bytes sent to the peer on this connection (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// Bytes received from the peer on the bulk connection (artifact
    /// transfers), `None` when there is none and artifacts go on this one
    /// (docs/PROTOCOL.md, "Bulk connections").
    pub bulk_bytes_received: Option<u64>,
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
    /// Changes held: the sum of the version vector (one per field write and
    /// per element inserted or removed).
    pub operations: usize,
    /// Entities held.
    pub entities: usize,
    /// Artifacts held.
    pub artifacts: usize,
    /// How its history is kept.
    pub history: HistoryStatus,
    /// Paired devices.
    pub peers: Vec<PeerStatus>,
    /// Revoked devices: refused for good, their operations after the
    /// cutoff refused (see [`crate::revocations`]).
    pub revoked: Vec<crate::revocations::RevokedDevice>,
    /// Whether another device revoked this one (the devices that know
    /// refuse it; it syncs again only with a new identity).
    pub this_device_revoked: bool,
    /// The entities this device holds: `everything`, or its patterns.
    pub subscription: String,
    /// Whether the history of entities subscribed to since is still being
    /// filled in from peers.
    pub subscription_filling_in: bool,
    /// Which artifact contents this device fetches by itself.
    pub artifact_policy: crate::ArtifactPolicy,
    /// The device's power and network state, as the application reported it.
    pub power: crate::schedule::PowerState,
    /// Background work waiting for the device to allow it, and why.
    pub deferred: Vec<crate::schedule::DeferredWork>,
    /// Metrics.
    pub metrics: MetricsSnapshot,
}

/// How a device keeps its history (see docs/PROTOCOL.md, "Snapshots").
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryStatus {
    /// The size of its latest snapshot, unpacked, in bytes (0: none yet).
    pub snapshot_bytes: u64,
    /// Operations stored after that snapshot, replayed at the next start.
    pub operations_after_snapshot: u64,
    /// The changes compacted away from the log (the sum of the compacted
    /// frontier): a peer lacking any of them is sent the snapshot.
    pub compacted: u64,
}
