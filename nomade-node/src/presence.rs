//! Presence: what a peer announced (status, heartbeats), this device's own
//! announcements, and the liveness that ends a silent peer's session.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use nomade_transport::heartbeat::Liveness;
use nomade_transport::{Connection, DeviceId};
use nomade_wire::StreamRole;
use nomade_wire::{ConnectivityStatus, Heartbeat, PresenceStatus, PresenceUpdate};

use crate::core::now_ms;
use crate::error::NodeError;
use crate::lock;
use crate::node::Node;
use crate::sync::envelope;

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

impl Node {
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

    pub(crate) async fn watch_liveness(&self, liveness: &Arc<Mutex<Liveness>>) {
        loop {
            tokio::time::sleep(self.inner.config.heartbeat_period).await;
            let online = lock(liveness).is_online(Instant::now());
            if !online {
                return;
            }
        }
    }

    pub(crate) async fn send_heartbeats(&self, conn: &Connection) -> Result<(), NodeError> {
        let (mut tx, _) = conn.open(StreamRole::Presence).await?;
        let mut events = self.inner.session_events.subscribe();
        let mut last_status = None;
        loop {
            let status = lock(&self.inner.status).clone();
            if last_status.as_ref() != Some(&status) {
                tx.send(&envelope(status.clone())).await?;
                last_status = Some(status);
            }
            let power = self.power_state();
            let beat = Heartbeat {
                timestamp: now_ms(),
                battery_level: power.battery_level,
                connectivity: power.connectivity,
            };
            tx.send(&envelope(beat)).await?;
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.heartbeat_period) => {}
                _ = events.changed() => {}
            }
        }
    }
}
