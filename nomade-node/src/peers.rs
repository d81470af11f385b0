//! Paired devices: what the node remembers of each (name, addresses, when
//! last seen), keeping a session with each (redialing with backoff), and
//! what went wrong when it could not (for `status` and `doctor`).
//!
//! Every change to a peer's record goes through [`Node::update_peer`], one
//! database transaction that merges into what is stored: a pairing, a
//! session starting and the user adding an address never overwrite each
//! other.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use nomade_transport::dial::Backoff;
use nomade_transport::{DeviceId, TransportError};
use serde::Serialize;

use crate::core::now_ms;
use crate::error::NodeError;
use crate::handshake;
use crate::lock;
use crate::metrics::Metrics;
use crate::node::{is_permanent, Node};
use crate::store::{PeerRecord, Store};

/// The name a device has before anyone names it.
pub const DEFAULT_DEVICE_NAME: &str = "nomade device";

/// Where the device's name is kept in the database.
const NAME_KEY: &str = "device_name";
/// Where the address it serves on is kept.
const LISTEN_KEY: &str = "listen_addr";

/// The device name to use: `configured` if it is not empty (and stored for
/// the next start), else the stored one, else [`DEFAULT_DEVICE_NAME`].
pub(crate) fn settle_device_name(store: &Store, configured: &str) -> Result<String, NodeError> {
    let stored = store
        .meta(NAME_KEY)?
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|n| !n.is_empty());
    if configured.is_empty() {
        return Ok(stored.unwrap_or_else(|| DEFAULT_DEVICE_NAME.to_string()));
    }
    if stored.as_deref() != Some(configured) {
        store.set_meta(NAME_KEY, configured.as_bytes())?;
    }
    Ok(configured.to_string())
}

/// How the last attempt to reach a peer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DialOutcome {
    /// A session started.
    Connected,
    /// Nothing answered at the address (no node listening, a firewall, the
    /// device off or on another network).
    Unreachable {
        /// What the network layer said.
        reason: String,
    },
    /// The device answered and refused this one: it does not (or no longer)
    /// have it paired.
    Refused {
        /// What it said.
        reason: String,
    },
    /// The device speaks another protocol version.
    VersionMismatch {
        /// Its version (0 when it did not say).
        theirs: u8,
        /// This device's.
        ours: u8,
    },
    /// Something else went wrong.
    Failed {
        /// What.
        reason: String,
    },
}

impl DialOutcome {
    /// Classifies a failed dial.
    pub fn of_error(e: &NodeError) -> DialOutcome {
        use TransportError as T;
        match e {
            NodeError::VersionMismatch { theirs, ours, .. } => DialOutcome::VersionMismatch {
                theirs: *theirs,
                ours: *ours,
            },
            NodeError::Refused { reason, .. } => DialOutcome::Refused {
                reason: reason.clone(),
            },
            NodeError::Transport(t) => match t {
                T::NotPaired | T::PeerNotAccepted { .. } | T::UnexpectedPeer { .. } => {
                    DialOutcome::Refused {
                        reason: t.to_string(),
                    }
                }
                T::ConnectTimeout { .. } | T::NoEndpointReachable { .. } | T::Connect(_) => {
                    DialOutcome::Unreachable {
                        reason: t.to_string(),
                    }
                }
                T::Connection(quinn::ConnectionError::TimedOut) => DialOutcome::Unreachable {
                    reason: t.to_string(),
                },
                other => DialOutcome::Failed {
                    reason: other.to_string(),
                },
            },
            other => DialOutcome::Failed {
                reason: other.to_string(),
            },
        }
    }

    /// Whether retrying cannot help until the user acts.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DialOutcome::Refused { .. } | DialOutcome::VersionMismatch { .. }
        )
    }
}

/// The last attempt to reach a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DialReport {
    /// The address dialed.
    pub addr: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// How it ended.
    pub outcome: DialOutcome,
    /// Failed attempts since the last success.
    pub failures_in_a_row: u32,
}

/// The node's redialing: whether it keeps sessions up (a serving node
/// does), the peers a redial task runs for, and the last dial of each.
#[derive(Debug, Default)]
pub(crate) struct Redial {
    on: AtomicBool,
    running: Mutex<HashSet<DeviceId>>,
    reports: Mutex<HashMap<DeviceId, DialReport>>,
}

impl Node {
    /// Pins a device id (compared out of band) and remembers its name (if
    /// not empty) and addresses (put first, in the order given). What was
    /// stored of it before is kept.
    pub fn add_peer(
        &self,
        id: DeviceId,
        name: &str,
        addresses: &[SocketAddr],
    ) -> Result<(), NodeError> {
        if self.inner.paired.is_revoked(&id) {
            return Err(NodeError::Invalid(format!(
                "{id} was revoked: it can be paired again only with a new identity"
            )));
        }
        self.update_peer(id, |p| {
            if !name.is_empty() {
                p.name = Some(name.to_string());
            }
            for a in addresses.iter().rev() {
                p.remember_address(&a.to_string());
            }
        })?;
        self.inner.paired.insert(id);
        if let Some(t) = self.transport() {
            t.pair(id);
        }
        self.ensure_redial(id);
        Ok(())
    }

    /// Changes what is stored of `id` (creating its record if needed) in
    /// one transaction; see the module docs.
    pub fn update_peer(
        &self,
        id: DeviceId,
        change: impl Fn(&mut PeerRecord),
    ) -> Result<PeerRecord, NodeError> {
        Ok(self
            .inner
            .core
            .store()
            .update_peer(&id.to_string(), change)?)
    }

    /// Unpairs a device: forgets it and closes its connections.
    pub fn remove_peer(&self, id: &DeviceId) -> Result<bool, NodeError> {
        let known = self.forget_peer(id)?;
        if let Some(t) = self.transport() {
            t.unpair(id);
        }
        Ok(known)
    }

    /// Unpairs a device without closing its connections yet (see
    /// [`Node::remove_peer`], which closes them): new handshakes are
    /// refused from now on.
    pub(crate) fn forget_peer(&self, id: &DeviceId) -> Result<bool, NodeError> {
        let known = self.inner.core.store().remove_peer(&id.to_string())?;
        self.inner.core.forget_received(&id.to_string());
        self.inner.paired.remove(id);
        lock(&self.inner.redial.reports).remove(id);
        Ok(known)
    }

    /// The paired devices.
    pub fn peers(&self) -> Result<Vec<PeerRecord>, NodeError> {
        Ok(self.inner.core.store().peers()?)
    }

    /// What is stored of `peer`, if it is paired.
    pub fn peer(&self, peer: DeviceId) -> Result<Option<PeerRecord>, NodeError> {
        Ok(self.inner.core.store().peer(&peer.to_string())?)
    }

    /// Renames this device: kept in its data directory, announced in every
    /// later handshake.
    pub fn set_device_name(&self, name: &str) -> Result<(), NodeError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(NodeError::Invalid("a device name cannot be empty".into()));
        }
        self.inner
            .core
            .store()
            .set_meta(NAME_KEY, name.as_bytes())?;
        *lock(&self.inner.name) = name.to_string();
        Ok(())
    }

    /// The peers a session is up with.
    pub fn connected_peers(&self) -> Vec<DeviceId> {
        let mut peers: Vec<DeviceId> = self
            .sessions()
            .iter()
            .filter(|(_, s)| s.conn.close_reason().is_none())
            .map(|(id, _)| *id)
            .collect();
        peers.sort();
        peers
    }

    /// The address the node listens on, while it is online.
    pub fn listening_addr(&self) -> Option<SocketAddr> {
        self.transport().and_then(|t| t.local_addr().ok())
    }

    /// Remembers `addr` as where this device serves (`nomade serve
    /// --listen`), so that a pairing made while it does not serve dials
    /// from there and the other device learns the address to reach it at.
    pub fn remember_listen_addr(&self, addr: SocketAddr) -> Result<(), NodeError> {
        Ok(self
            .inner
            .core
            .store()
            .set_meta(LISTEN_KEY, addr.to_string().as_bytes())?)
    }

    /// The address last given to [`Node::remember_listen_addr`].
    pub fn remembered_listen_addr(&self) -> Option<SocketAddr> {
        let bytes = self.inner.core.store().meta(LISTEN_KEY).ok()??;
        String::from_utf8(bytes).ok()?.parse().ok()
    }

    /// The last attempt to reach each peer, by device id.
    pub fn dial_reports(&self) -> HashMap<DeviceId, DialReport> {
        lock(&self.inner.redial.reports).clone()
    }

    pub(crate) fn note_dial_success(&self, peer: DeviceId, addr: SocketAddr) {
        let mut reports = lock(&self.inner.redial.reports);
        if let Some(r) = reports.get(&peer) {
            if r.failures_in_a_row > 1 {
                tracing::info!(%peer, %addr, failures = r.failures_in_a_row, "reachable again");
            }
        }
        reports.insert(
            peer,
            DialReport {
                addr: addr.to_string(),
                at_ms: now_ms(),
                outcome: DialOutcome::Connected,
                failures_in_a_row: 0,
            },
        );
    }

    /// Records a failed dial. The first failure of a kind is logged as a
    /// warning, repeats of it at debug level only: a device that is off
    /// does not fill the log with one line per attempt.
    pub(crate) fn note_dial_failure(&self, peer: DeviceId, addr: SocketAddr, e: &NodeError) {
        let outcome = DialOutcome::of_error(e);
        let mut reports = lock(&self.inner.redial.reports);
        let previous = reports.get(&peer);
        let same = previous.is_some_and(|r| {
            std::mem::discriminant(&r.outcome) == std::mem::discriminant(&outcome)
        });
        let failures_in_a_row = previous.map_or(0, |r| r.failures_in_a_row) + 1;
        if same {
            tracing::debug!(%peer, %addr, error = %e, failures_in_a_row, "dial failed again");
        } else {
            tracing::warn!(%peer, %addr, error = %e, "cannot reach peer (further failures like this one are logged at debug level)");
        }
        reports.insert(
            peer,
            DialReport {
                addr: addr.to_string(),
                at_ms: now_ms(),
                outcome,
                failures_in_a_row,
            },
        );
    }

    /// Keeps a session with every paired device, now and as devices are
    /// paired later: dials their addresses in order and redials with
    /// exponential backoff and jitter whenever the session drops. A device
    /// with no known address is waited for (it may dial in; its address is
    /// learned then).
    pub fn connect_known_peers(&self) -> Result<(), NodeError> {
        self.inner.redial.on.store(true, Ordering::SeqCst);
        for rec in self.peers()? {
            match rec.device_id.parse::<DeviceId>() {
                Ok(peer) => self.ensure_redial(peer),
                Err(e) => {
                    tracing::warn!(peer = %rec.device_id, error = %e, "ignoring a stored peer with a bad id")
                }
            }
        }
        Ok(())
    }

    /// Starts the redial task of `peer` if the node redials and none runs.
    pub(crate) fn ensure_redial(&self, peer: DeviceId) {
        if !self.inner.redial.on.load(Ordering::SeqCst) || self.transport().is_none() {
            return;
        }
        if !lock(&self.inner.redial.running).insert(peer) {
            return;
        }
        let node = self.clone();
        self.spawn(async move {
            node.keep_connected(peer).await;
            lock(&node.inner.redial.running).remove(&peer);
        });
    }

    /// The addresses to dial `peer` at, best first, as stored now (they
    /// change as the peer is seen at new ones).
    pub(crate) fn addresses_of(&self, peer: DeviceId) -> Vec<SocketAddr> {
        self.peer(peer)
            .ok()
            .flatten()
            .map(|p| p.addresses.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Connects to `peer` through a device with a direct session to this
    /// one that announced [`handshake::RELAY`] (each in turn until one
    /// relays), and runs the session. Returns whether one started.
    pub(crate) async fn connect_through_relay(&self, peer: DeviceId) -> bool {
        let Some(t) = self.transport() else {
            return false;
        };
        let relays: Vec<DeviceId> = self
            .sessions()
            .iter()
            .filter(|(id, s)| {
                **id != peer
                    && s.conn.relayed_via().is_none()
                    && s.conn.close_reason().is_none()
                    && s.info.has(handshake::RELAY)
            })
            .map(|(id, _)| *id)
            .collect();
        if relays.is_empty() {
            return false;
        }
        if self.inner.device_id > peer {
            // The smaller id goes first, as for a redial; the larger one
            // relays only if no session came meanwhile.
            tokio::time::sleep(self.tie_break_wait()).await;
            if self.is_connected(&peer) {
                return true;
            }
        }
        for relay in relays {
            match self.connect_via(&t, relay, peer).await {
                Ok(()) => {
                    tracing::info!(%peer, %relay, "connected through a relay: the direct path is tried again after each backoff");
                    return true;
                }
                Err(e) => {
                    tracing::debug!(%peer, %relay, error = %e, "no session through this relay")
                }
            }
        }
        false
    }

    /// Connects to the paired device `peer` through `relay`, a paired
    /// device with a live direct session to this one and to `peer`, and
    /// syncs with it as with a direct connection (authenticated end to
    /// end: `relay` forwards ciphertext). A node that keeps its peers
    /// connected ([`Node::connect_known_peers`]) does this by itself when
    /// it cannot reach a device directly, and moves to a direct path as
    /// soon as one works.
    pub async fn connect_through(&self, relay: DeviceId, peer: DeviceId) -> Result<(), NodeError> {
        let t = self
            .transport()
            .ok_or_else(|| NodeError::NotFound("a started node".into()))?;
        self.connect_via(&t, relay, peer).await
    }

    async fn connect_via(
        &self,
        t: &nomade_transport::Transport,
        relay: DeviceId,
        peer: DeviceId,
    ) -> Result<(), NodeError> {
        let via = self
            .session_conn(&relay)
            .ok_or_else(|| NodeError::NotFound(format!("a session with {relay}")))?;
        let conn = t.connect_relayed(&via, peer).await?;
        self.start_session(conn).await
    }

    /// How long the larger of two device ids leaves the smaller one to go
    /// first when both may connect through a relay, or move from one to
    /// the direct path: the minimum backoff (at most half a second), times
    /// 1 to 2.
    fn tie_break_wait(&self) -> std::time::Duration {
        let base = self
            .inner
            .config
            .min_backoff
            .min(std::time::Duration::from_millis(500));
        base.mul_f64(1.0 + rand::random::<f64>())
    }

    async fn keep_connected(&self, peer: DeviceId) {
        let config = &self.inner.config;
        let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
        let mut session_started = self.inner.session_started.subscribe();
        let mut address_learned = self.inner.address_learned.subscribe();
        let mut told_no_address = false;
        loop {
            if !self.inner.paired.contains(&peer) {
                return;
            }
            // A relayed session is kept until a direct path works: the
            // addresses are dialed again after each backoff.
            let relayed = self.relayed_via(&peer).is_some();
            if relayed && self.inner.device_id > peer {
                // Both sides try the direct path: the larger id leaves the
                // smaller one a moment (see the end of this loop).
                tokio::time::sleep(self.tie_break_wait()).await;
            }
            if !self.is_connected(&peer) || self.relayed_via(&peer).is_some() {
                let addrs = self.addresses_of(peer);
                if addrs.is_empty() && !told_no_address {
                    tracing::warn!(%peer, "no address known for this peer: waiting for it to connect (or add one: nomade peers add {peer} --addr HOST:PORT)");
                    told_no_address = true;
                }
                let mut ok = false;
                address_learned.borrow_and_update();
                for addr in &addrs {
                    let dialed = tokio::select! {
                        r = self.dial(*addr, peer) => Some(r),
                        // An address found on the local network meanwhile
                        // goes first: this handshake (perhaps with where the
                        // device was) gives way to it.
                        Ok(()) = address_learned.changed() => None,
                    };
                    let dialed = match dialed {
                        Some(Ok(conn)) => Some(self.run_dialed(conn, *addr, peer).await),
                        Some(Err(e)) => Some(Err(e)),
                        None => None,
                    };
                    match dialed {
                        None => break,
                        Some(Ok(())) => {
                            ok = true;
                            break;
                        }
                        Some(Err(e)) if is_permanent(&e) => {
                            tracing::error!(%peer, %addr, error = %e, "giving up on this peer until the user acts");
                            return;
                        }
                        Some(Err(_)) => Metrics::add(&self.metrics().dial_failures, 1),
                    }
                }
                if !ok && address_learned.has_changed().unwrap_or(false) {
                    // Dial the address just learned now, not after a backoff.
                    continue;
                }
                if !ok && !self.is_connected(&peer) {
                    // No direct path: through a paired device connected to both.
                    self.connect_through_relay(peer).await;
                }
                if ok {
                    backoff.on_success();
                    told_no_address = false;
                } else {
                    let delay = backoff.on_failure(Instant::now(), &mut rand::thread_rng());
                    // Only sessions that start from now on count.
                    session_started.borrow_and_update();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // A session with some peer just started: the network
                        // is back (a partition healed, the device woke up or
                        // changed networks), or this very peer dialed in, so
                        // it is worth a try now rather than at the end of a
                        // delay that grew while nothing worked. The delay
                        // itself keeps growing while the peer stays out of
                        // reach.
                        Ok(()) = session_started.changed() => {
                            tracing::debug!(%peer, "a session started: redialing now");
                        }
                    }
                    continue;
                }
            }
            self.wait_disconnected(&peer).await;
            if self.inner.device_id > peer {
                // Both sides notice a lost connection at about the same time.
                // Were both to redial at once, each would keep the newer of
                // the two connections, which is a different one on each side,
                // and both would close again. The larger id therefore leaves
                // the smaller one a moment to dial first.
                let wait = config.min_backoff.mul_f64(1.0 + rand::random::<f64>());
                tokio::time::sleep(wait).await;
            }
        }
    }
}
