//! A congestion controller that keeps the queues along the path short, so
//! that a live edit never waits long behind an artifact transfer sharing
//! its connection.
//!
//! QUIC stream priorities (see [`crate::stream::priority`]) order what the sender
//! puts on the wire; they cannot reorder what already waits in a queue
//! further on: a slow link's router buffer, or the receiver's socket buffer
//! when it is busy. A loss-based controller (Cubic, quinn's default) fills
//! those queues until a datagram is dropped, so a live edit sent during a
//! transfer waits for the whole queue: 100 ms and more on a home router,
//! about 10 ms in a 4 MiB socket buffer on loopback.
//!
//! [`LowDelayConfig`] wraps Cubic and caps its window with a second one
//! driven by delay, in the manner of LEDBAT (RFC 6817): the queueing delay
//! is the smoothed round trip less the least one seen. Below half the
//! target the cap grows as in slow start until the queue first reaches
//! that, then by four datagrams per round trip; below the target by one
//! datagram per round trip; above it, it shrinks in proportion to the
//! excess, at most by half per round trip.
//! The queues then hold about `target` of data, and the link stays full
//! (the cap leaves the window at least the bandwidth-delay product plus
//! `target`'s worth). Losses still halve Cubic's window as before.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use nomade_transport::congestion::LowDelayConfig;
//!
//! let mut transport = quinn::TransportConfig::default();
//! transport.congestion_controller_factory(Arc::new(LowDelayConfig::new(Duration::from_millis(5))));
//! ```

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Builds [`LowDelay`] controllers: Cubic capped to keep about `target` of
/// data queued along the path.
#[derive(Debug, Clone)]
pub struct LowDelayConfig {
    target: Duration,
    cubic: Arc<CubicConfig>,
}

impl LowDelayConfig {
    /// Controllers that aim at `target` of queueing delay (at least 1 ms).
    pub fn new(target: Duration) -> Self {
        LowDelayConfig {
            target: target.max(Duration::from_millis(1)),
            cubic: Arc::new(CubicConfig::default()),
        }
    }
}

impl ControllerFactory for LowDelayConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let cubic = self.cubic.clone().build(now, current_mtu);
        let cap = cubic.initial_window() as f64;
        Box::new(LowDelay {
            cubic,
            target: self.target,
            cap,
            mtu: u64::from(current_mtu),
            last_decrease: None,
            slow_start: true,
        })
    }
}

/// Cubic's window, capped by a window that follows the queueing delay
/// (see the module docs).
pub struct LowDelay {
    cubic: Box<dyn Controller>,
    target: Duration,
    /// The delay-driven window, in bytes.
    cap: f64,
    mtu: u64,
    /// When the cap began its last round trip of shrinking, and what it
    /// was then (it loses at most half of that per round trip).
    last_decrease: Option<(Instant, f64)>,
    /// Whether the queue has stayed under half the target so far (the cap
    /// then grows as in slow start).
    slow_start: bool,
}

impl LowDelay {
    /// The least the cap goes down to: two datagrams.
    fn floor(&self) -> f64 {
        (2 * self.mtu) as f64
    }

    /// Moves the cap for `bytes` newly acknowledged at `now`, the queueing
    /// delay being `queue` and the round trip `rtt`; `app_limited` when the
    /// sender had less to send than the window allowed.
    fn follow_delay(
        &mut self,
        now: Instant,
        bytes: u64,
        queue: Duration,
        rtt: Duration,
        app_limited: bool,
    ) {
        let target = self.target.as_secs_f64();
        let off = (target - queue.as_secs_f64()) / target;
        if off <= 0.5 {
            self.slow_start = false;
        }
        if off >= 0.0 {
            if app_limited {
                // The window was not used up: it says nothing of the path.
                return;
            }
            // Never far above what Cubic allows, so that a shrink takes
            // effect at once.
            let ceiling = 2.0 * self.cubic.window() as f64;
            if off > 0.5 && self.slow_start {
                // Little queue, and never any yet: as fast as slow start.
                self.cap += bytes as f64;
            } else if off > 0.5 {
                // Little queue: four datagrams per round trip, without
                // the overshoot of a doubling (a round trip's worth of
                // queue before the delay shows it).
                self.cap += (4 * self.mtu * bytes) as f64 / self.cap;
            } else {
                self.cap += (self.mtu * bytes) as f64 / self.cap;
            }
            self.cap = self.cap.min(ceiling).max(self.floor());
        } else {
            // In proportion to the excess (a window's worth acknowledged
            // at twice the target takes one datagram per window off), and
            // at most half a window per round trip.
            let base = self.cap.min(self.cubic.window() as f64);
            let step = (-off).min(1.0) * (self.mtu * bytes) as f64 / base;
            let start = match self.last_decrease {
                Some((t, cap)) if now.saturating_duration_since(t) < rtt => cap,
                _ => {
                    self.last_decrease = Some((now, base));
                    base
                }
            };
            self.cap = (base - step).max(start / 2.0).max(self.floor());
        }
    }
}

impl Controller for LowDelay {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        let queue = rtt.get().saturating_sub(rtt.min());
        self.follow_delay(now, bytes, queue, rtt.get(), app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.cap = self.cap.min(self.cubic.window() as f64).max(self.floor());
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
        self.mtu = u64::from(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window().min(self.cap as u64).max(2 * self.mtu)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.cubic.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LowDelay {
            cubic: self.cubic.clone_box(),
            target: self.target,
            cap: self.cap,
            mtu: self.mtu,
            last_decrease: self.last_decrease,
            slow_start: self.slow_start,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> LowDelay {
        let b = Arc::new(LowDelayConfig::new(Duration::from_millis(5))).build(Instant::now(), 1200);
        match b.into_any().downcast::<LowDelay>() {
            Ok(c) => *c,
            Err(_) => panic!("a LowDelay"),
        }
    }

    #[test]
    fn the_cap_grows_while_the_queue_is_short_and_shrinks_beyond_the_target() {
        let mut c = controller();
        let (t, rtt, ms) = (
            Instant::now(),
            Duration::from_millis(10),
            Duration::from_millis,
        );
        let cubic = c.cubic.window() as f64;
        // No queue: grows by what is acknowledged (as in slow start), up to
        // twice Cubic's window.
        c.cap = 6000.0;
        c.follow_delay(t, 3000, Duration::ZERO, rtt, false);
        assert_eq!(c.cap, 9000.0);
        c.follow_delay(t, 1_000_000, Duration::ZERO, rtt, false);
        assert_eq!(c.cap, 2.0 * cubic);
        // Near the target: one datagram per window acknowledged.
        c.cap = 6000.0;
        c.follow_delay(t, 6000, ms(4), rtt, false);
        assert_eq!(c.cap, 7200.0);
        // The window not used up: unchanged.
        c.follow_delay(t, 50_000, Duration::ZERO, rtt, true);
        assert_eq!(c.cap, 7200.0);
        // Little queue again, after some: four datagrams per window
        // acknowledged, no longer as in slow start.
        c.follow_delay(t, 7200, Duration::ZERO, rtt, false);
        assert_eq!(c.cap, 12_000.0);
        c.cap = 7200.0;
        // At twice the target: one datagram per window acknowledged off...
        c.follow_delay(t, 7200, ms(10), rtt, false);
        assert_eq!(c.cap, 6000.0);
        // ...and at most half of it per round trip.
        for _ in 0..100 {
            c.follow_delay(t + ms(1), 7200, ms(10), rtt, false);
        }
        assert_eq!(c.cap, 3600.0);
        c.follow_delay(t + ms(11), 1200, ms(10), rtt, false);
        assert!(c.cap < 3600.0, "{}", c.cap);
        // Never below two datagrams; the window is the smaller of the two.
        for i in 0..1000 {
            c.follow_delay(
                t + ms(20 + 11 * i),
                100_000,
                Duration::from_secs(1),
                rtt,
                false,
            );
        }
        assert_eq!(c.cap, 2400.0);
        assert_eq!(c.window(), 2400);
    }
}
