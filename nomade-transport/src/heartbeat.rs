//! Heartbeats and liveness.
//!
//! [`Liveness`] is the sans-IO tracker (time passed in): a peer is online
//! while less than `missed_allowed` heartbeat periods have passed since its
//! last beat. [`spawn_heartbeats`] sends `HEARTBEAT` frames on a presence
//! stream; [`watch_heartbeats`] feeds a received presence stream into a
//! tracker and returns when the peer goes silent.
//!
//! Defaults match the QUIC settings of [`crate::Config`]: beats every 5 s,
//! offline after 3 missed (15 s), QUIC keep-alive 5 s, idle timeout 30 s, so
//! the application notices a silent peer before QUIC drops the connection.

use std::time::{Duration, Instant};

use nomade_wire::{Envelope, Heartbeat, Message, MessageId, StreamRole};

use crate::endpoint::Connection;
use crate::error::{Result, TransportError};
use crate::stream::{now_ms, FramedRecv};

/// Default heartbeat period.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
/// Default number of missed periods before a peer is offline.
pub const DEFAULT_MISSED: u32 = 3;

/// Tracks whether a peer is alive from its heartbeats.
#[derive(Debug, Clone)]
pub struct Liveness {
    period: Duration,
    missed_allowed: u32,
    last: Instant,
    beats: u64,
}

impl Liveness {
    /// A tracker started at `now` (the start counts as a beat).
    pub fn new(period: Duration, missed_allowed: u32, now: Instant) -> Self {
        Liveness {
            period,
            missed_allowed: missed_allowed.max(1),
            last: now,
            beats: 0,
        }
    }

    /// Records a beat received at `now`.
    pub fn beat(&mut self, now: Instant) {
        self.last = self.last.max(now);
        self.beats += 1;
    }

    /// When the last beat was received (the start if none was).
    pub fn last_beat(&self) -> Instant {
        self.last
    }

    /// Beats received so far.
    pub fn beats(&self) -> u64 {
        self.beats
    }

    /// The instant from which the peer counts as offline.
    pub fn offline_at(&self) -> Instant {
        self.last + self.period * self.missed_allowed
    }

    /// Whether the peer is online at `now`.
    pub fn is_online(&self, now: Instant) -> bool {
        now < self.offline_at()
    }

    /// Whole periods missed at `now`.
    pub fn missed(&self, now: Instant) -> u32 {
        let silent = now.saturating_duration_since(self.last);
        u32::try_from(silent.as_nanos() / self.period.as_nanos().max(1)).unwrap_or(u32::MAX)
    }
}

/// Opens a presence stream on `conn` and sends a `HEARTBEAT` from `make`
/// every `period`, until the connection or stream fails.
pub fn spawn_heartbeats<F>(
    conn: Connection,
    period: Duration,
    mut make: F,
) -> tokio::task::JoinHandle<Result<()>>
where
    F: FnMut() -> Heartbeat + Send + 'static,
{
    tokio::spawn(async move {
        let mut send = conn.open_uni(StreamRole::Presence).await?;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let env = Envelope::new(
                MessageId::from(rand::random::<[u8; 16]>()),
                now_ms(),
                make(),
            );
            send.send(&env).await?;
        }
    })
}

/// Reads a presence stream, counting `HEARTBEAT`s in a [`Liveness`] and
/// handing every other message to `on_message`. Returns `Ok(())` when the
/// peer finishes the stream, [`TransportError::PeerOffline`] when it misses
/// `missed_allowed` periods, or the stream's error.
pub async fn watch_heartbeats(
    mut recv: FramedRecv,
    period: Duration,
    missed_allowed: u32,
    mut on_message: impl FnMut(Envelope),
) -> Result<()> {
    let mut live = Liveness::new(period, missed_allowed, Instant::now());
    loop {
        let deadline = tokio::time::Instant::from_std(live.offline_at());
        match tokio::time::timeout_at(deadline, recv.recv()).await {
            Ok(Ok(Some(env))) => match env.message {
                Message::Heartbeat(_) => live.beat(Instant::now()),
                _ => on_message(env),
            },
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let missed = live.missed(Instant::now());
                tracing::warn!(
                    missed,
                    beats = live.beats(),
                    "peer missed heartbeats: offline"
                );
                return Err(TransportError::PeerOffline { missed });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_after_n_missed_periods() {
        let t0 = Instant::now();
        let p = Duration::from_secs(5);
        let mut l = Liveness::new(p, 3, t0);
        assert!(l.is_online(t0 + Duration::from_secs(14)));
        assert!(!l.is_online(t0 + Duration::from_secs(15)));
        l.beat(t0 + Duration::from_secs(12));
        assert!(l.is_online(t0 + Duration::from_secs(26)));
        assert!(!l.is_online(t0 + Duration::from_secs(27)));
        assert_eq!(l.missed(t0 + Duration::from_secs(23)), 2);
        // A late (reordered) beat does not move the clock back.
        l.beat(t0);
        assert!(l.is_online(t0 + Duration::from_secs(26)));
        assert_eq!(l.beats(), 2);
    }
}
