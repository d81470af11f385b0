//! Background work, and when the device allows it.
//!
//! Work that can wait (prefetching artifacts by the artifact policy; the
//! periodic snapshot of the state and the compaction of the history after
//! it; taking a peer's snapshot of 8 MiB or more, when joining a large
//! store, `NodeConfig::deferred_snapshot_bytes`) runs only when the device's state allows it: its battery above a
//! floor (or charging), not on a cellular link, within the configured
//! windows of the day. The application tells the node its state
//! ([`Node::set_power_state`]: it also goes to peers in heartbeats); the
//! decision is a pure function ([`BackgroundPolicy::decide`]), and what is
//! waiting shows in `status` with the reason.
//!
//! ```
//! use nomade_node::schedule::{BackgroundPolicy, Deferral, PowerState, Window};
//! use nomade_wire::ConnectivityStatus;
//!
//! let night = BackgroundPolicy {
//!     windows: vec![Window { start_minute: 22 * 60, end_minute: 6 * 60 }],
//!     ..BackgroundPolicy::default()
//! };
//! let phone = PowerState { battery_level: Some(80), charging: false, connectivity: ConnectivityStatus::Wifi };
//! assert_eq!(night.decide(&phone, 23 * 60), Ok(()));
//! assert!(matches!(night.decide(&phone, 12 * 60), Err(Deferral::OutsideWindows { .. })));
//! let low = PowerState { battery_level: Some(10), ..phone };
//! assert!(matches!(night.decide(&low, 23 * 60), Err(Deferral::BatteryLow { level: 10, floor: 20 })));
//! ```

use std::time::Duration;

use nomade_wire::ConnectivityStatus;
use serde::{Deserialize, Serialize};

use crate::lock;
use crate::node::Node;

/// A stretch of the day, in minutes after midnight (of the device's own
/// time: see [`BackgroundPolicy::utc_offset_minutes`]). One whose end comes
/// before its start runs over midnight (22:00 to 06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Its first minute (0..1440).
    pub start_minute: u16,
    /// The minute it ends, not included (0..1440).
    pub end_minute: u16,
}

impl Window {
    /// Whether `minute` (after midnight) is in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }

    /// Parses `HH:MM-HH:MM` (24-hour clock).
    pub fn parse(s: &str) -> Option<Window> {
        let minute = |t: &str| {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-')?;
        Some(Window {
            start_minute: minute(a)?,
            end_minute: minute(b)?,
        })
    }
}

/// When background work may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundPolicy {
    /// Below this battery level (percent), and not charging, work waits
    /// (default 20). `None`: whatever the battery.
    pub battery_floor: Option<u8>,
    /// On a cellular link, work waits (default yes).
    pub defer_on_cellular: bool,
    /// Only within these stretches of the day; empty (the default): any
    /// time.
    pub windows: Vec<Window>,
    /// The device's offset from UTC, in minutes, to place the windows in
    /// its own day (default 0).
    pub utc_offset_minutes: i16,
}

impl Default for BackgroundPolicy {
    fn default() -> Self {
        BackgroundPolicy {
            battery_floor: Some(20),
            defer_on_cellular: true,
            windows: Vec::new(),
            utc_offset_minutes: 0,
        }
    }
}

/// The device's own state, as the application reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerState {
    /// Battery level in percent, where there is a battery.
    pub battery_level: Option<u8>,
    /// Whether it is charging.
    pub charging: bool,
    /// How it is connected.
    pub connectivity: ConnectivityStatus,
}

impl Default for PowerState {
    /// Not known: no battery reported, connectivity unknown (nothing waits).
    fn default() -> Self {
        PowerState {
            battery_level: None,
            charging: false,
            connectivity: ConnectivityStatus::Unknown,
        }
    }
}

/// Why background work waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Deferral {
    /// The battery is below the floor and not charging.
    #[error("battery at {level}%, below {floor}% and not charging")]
    BatteryLow {
        /// The level.
        level: u8,
        /// The floor.
        floor: u8,
    },
    /// On a cellular link.
    #[error("on a cellular link")]
    Cellular,
    /// Outside every window of the day.
    #[error("outside the background windows (the next opens in {opens_in_minutes} min)")]
    OutsideWindows {
        /// Minutes until the next window opens.
        opens_in_minutes: u16,
    },
    /// The link to the holder is too slow for the prefetch to end within
    /// the policy's bound, at the rate measured on it ([`PrefetchPace`]).
    #[error("the link delivers {bytes_per_sec} bytes/s: about {seconds_needed} s more, over the {limit_secs} s a prefetch may take")]
    SlowLink {
        /// The rate measured.
        bytes_per_sec: u64,
        /// The time the rest would take at that rate.
        seconds_needed: u64,
        /// [`crate::ArtifactPolicy::max_prefetch_secs`].
        limit_secs: u64,
    },
}

/// Whether a prefetch keeps up with its bound, from the rate it achieves
/// (sans-IO: times and progress in, a verdict out). A prefetch is measured
/// for [`PrefetchPace::MEASURE`] first; then, if the rest would take it
/// past `limit` at the rate so far, it is paused (what it verified stays,
/// and a later attempt resumes after it).
#[derive(Debug, Clone, Copy)]
pub struct PrefetchPace {
    started: std::time::Instant,
    bytes_at_start: u64,
    limit: Duration,
}

impl PrefetchPace {
    /// How long a prefetch runs before its rate is judged.
    pub const MEASURE: Duration = Duration::from_secs(3);

    /// A prefetch that started at `started` with `bytes_at_start` already
    /// held, to end within `limit`.
    pub fn new(started: std::time::Instant, bytes_at_start: u64, limit: Duration) -> Self {
        PrefetchPace {
            started,
            bytes_at_start,
            limit,
        }
    }

    /// The verdict at `now`, `bytes_done` of `bytes_total` held: `Err`
    /// when the prefetch should pause.
    pub fn check(
        &self,
        now: std::time::Instant,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<(), Deferral> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < Self::MEASURE || bytes_done >= bytes_total {
            return Ok(());
        }
        let moved = bytes_done.saturating_sub(self.bytes_at_start);
        let rate = moved as f64 / elapsed.as_secs_f64();
        let rest = (bytes_total - bytes_done) as f64;
        let needed = if rate > 0.0 {
            rest / rate
        } else {
            f64::INFINITY
        };
        if elapsed.as_secs_f64() + needed <= self.limit.as_secs_f64() {
            return Ok(());
        }
        Err(Deferral::SlowLink {
            bytes_per_sec: rate as u64,
            seconds_needed: needed.min(u64::MAX as f64) as u64,
            limit_secs: self.limit.as_secs(),
        })
    }
}

impl BackgroundPolicy {
    /// Whether background work may run now, `minute` being the minute of
    /// the device's day; otherwise why not.
    pub fn decide(&self, power: &PowerState, minute: u16) -> Result<(), Deferral> {
        if let (Some(floor), Some(level)) = (self.battery_floor, power.battery_level) {
            if level < floor && !power.charging {
                return Err(Deferral::BatteryLow { level, floor });
            }
        }
        if self.defer_on_cellular && power.connectivity == ConnectivityStatus::Cellular {
            return Err(Deferral::Cellular);
        }
        if !self.windows.is_empty() && !self.windows.iter().any(|w| w.contains(minute)) {
            let opens_in_minutes = self
                .windows
                .iter()
                .map(|w| (w.start_minute + 1440 - minute % 1440) % 1440)
                .min()
                .unwrap_or(0);
            return Err(Deferral::OutsideWindows { opens_in_minutes });
        }
        Ok(())
    }

    /// The minute of the device's day at `unix_ms`.
    pub fn minute_of_day(&self, unix_ms: i64) -> u16 {
        let minutes = unix_ms.div_euclid(60_000) + i64::from(self.utc_offset_minutes);
        minutes.rem_euclid(1440) as u16
    }
}

/// Work waiting for the device to allow it, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeferredWork {
    /// What waits (`artifact prefetch from DEVICE`).
    pub work: String,
    /// How many items (artifacts).
    pub items: usize,
    /// Why it waits.
    pub reason: Deferral,
    /// The same, for people.
    pub why: String,
}

impl Node {
    /// Tells the node the device's power and network state: background
    /// work waits or goes by it ([`BackgroundPolicy`]), and heartbeats
    /// carry the battery level and connectivity to peers.
    pub fn set_power_state(&self, state: PowerState) {
        self.inner.power.send_replace(state);
        self.inner.session_events.send_modify(|n| *n += 1);
    }

    /// The device's power and network state, as last set.
    pub fn power_state(&self) -> PowerState {
        *self.inner.power.borrow()
    }

    /// Work waiting for the device to allow it.
    pub fn deferred_work(&self) -> Vec<DeferredWork> {
        lock(&self.inner.deferred).values().cloned().collect()
    }

    /// Whether background work may run now; otherwise why not.
    pub fn background_decision(&self) -> Result<(), Deferral> {
        self.decide_now(&self.power_state())
    }

    /// [`BackgroundPolicy::decide`] for `power` at this minute of the day.
    fn decide_now(&self, power: &PowerState) -> Result<(), Deferral> {
        let policy = &self.inner.config.background;
        policy.decide(power, policy.minute_of_day(crate::core::now_ms()))
    }

    /// Keeps the store's periodic snapshot and compaction to the times
    /// background work may run ([`Core::set_background_allowed`]), as the
    /// device's state and the time of day change; while one waits, `status`
    /// shows it as deferred work `compaction`, with the operations stored
    /// since the last snapshot. Runs until the node shuts down.
    ///
    /// [`Core::set_background_allowed`]: crate::core::Core::set_background_allowed
    pub(crate) async fn schedule_compaction(&self) {
        const WORK: &str = "compaction";
        let mut power = self.inner.power.subscribe();
        let mut waiting = self.core().snapshot_waiting();
        loop {
            let decision = self.decide_now(&power.borrow_and_update());
            let core = self.core().clone();
            let allowed = decision.is_ok();
            // Writing a waiting snapshot reads the whole state: not on an
            // async worker.
            if tokio::task::spawn_blocking(move || core.set_background_allowed(allowed))
                .await
                .is_err()
            {
                return;
            }
            let is_waiting = *waiting.borrow_and_update();
            match decision {
                Err(reason) if is_waiting => {
                    let items = self.core().history_status().operations_after_snapshot as usize;
                    lock(&self.inner.deferred).insert(
                        WORK.to_string(),
                        DeferredWork {
                            work: WORK.to_string(),
                            items,
                            why: reason.to_string(),
                            reason,
                        },
                    );
                }
                _ => {
                    lock(&self.inner.deferred).remove(WORK);
                }
            }
            tokio::select! {
                changed = power.changed() => if changed.is_err() { return },
                changed = waiting.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }

    /// Waits until background work may run: returns at once when it may;
    /// otherwise shows `work` (of `items` items) as deferred in `status`
    /// until the device's state (or the time of day) allows it.
    pub(crate) async fn background_allowed(&self, work: &str, items: usize) {
        /// Takes the entry out of `status` however the wait ends (a
        /// session ending drops it midway).
        struct Shown<'a>(&'a Node, &'a str);
        impl Drop for Shown<'_> {
            fn drop(&mut self) {
                lock(&self.0.inner.deferred).remove(self.1);
            }
        }
        let _shown = Shown(self, work);
        let mut power = self.inner.power.subscribe();
        loop {
            let state = *power.borrow_and_update();
            match self.decide_now(&state) {
                Ok(()) => break,
                Err(reason) => {
                    tracing::info!(work, items, %reason, "background work deferred");
                    lock(&self.inner.deferred).insert(
                        work.to_string(),
                        DeferredWork {
                            work: work.to_string(),
                            items,
                            why: reason.to_string(),
                            reason,
                        },
                    );
                    tokio::select! {
                        changed = power.changed() => if changed.is_err() { break },
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_is_measured_first_then_paused_only_if_it_would_overrun() {
        let t0 = std::time::Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let limit = Duration::from_secs(60);
        // 100 MB, resumed at 10 MB.
        let pace = PrefetchPace::new(t0, 10_000_000, limit);
        let total = 100_000_000;
        // Not judged before the measuring time, however slow.
        assert_eq!(pace.check(at(2.9), 10_000_000, total), Ok(()));
        // 3 MB/s: 30 s more after 3 s, within 60.
        assert_eq!(pace.check(at(3.0), 19_000_000, total), Ok(()));
        // 1 MB/s: 87 s more after 3 s: paused, with the rate and the need.
        assert_eq!(
            pace.check(at(3.0), 13_000_000, total),
            Err(Deferral::SlowLink {
                bytes_per_sec: 1_000_000,
                seconds_needed: 87,
                limit_secs: 60
            })
        );
        // Nothing moved at all: paused.
        assert!(pace.check(at(5.0), 10_000_000, total).is_err());
        // Done is done.
        assert_eq!(pace.check(at(100.0), total, total), Ok(()));
    }

    fn power(battery: Option<u8>, charging: bool, c: ConnectivityStatus) -> PowerState {
        PowerState {
            battery_level: battery,
            charging,
            connectivity: c,
        }
    }

    #[test]
    fn the_battery_floor_the_link_and_the_windows_decide() {
        let p = BackgroundPolicy::default();
        let wifi = ConnectivityStatus::Wifi;
        assert_eq!(p.decide(&PowerState::default(), 0), Ok(()));
        assert_eq!(p.decide(&power(Some(20), false, wifi), 0), Ok(()));
        assert_eq!(
            p.decide(&power(Some(19), false, wifi), 0),
            Err(Deferral::BatteryLow {
                level: 19,
                floor: 20
            })
        );
        assert_eq!(p.decide(&power(Some(5), true, wifi), 0), Ok(()));
        assert_eq!(
            p.decide(&power(Some(90), false, ConnectivityStatus::Cellular), 0),
            Err(Deferral::Cellular)
        );
        let anywhere = BackgroundPolicy {
            battery_floor: None,
            defer_on_cellular: false,
            ..p.clone()
        };
        assert_eq!(
            anywhere.decide(&power(Some(1), false, ConnectivityStatus::Cellular), 0),
            Ok(())
        );
        let night = BackgroundPolicy {
            windows: vec![Window::parse("22:00-06:30").expect("window")],
            ..p
        };
        let ok = power(None, false, wifi);
        assert_eq!(night.decide(&ok, 22 * 60), Ok(()));
        assert_eq!(night.decide(&ok, 3 * 60), Ok(()));
        assert_eq!(
            night.decide(&ok, 6 * 60 + 30),
            Err(Deferral::OutsideWindows {
                opens_in_minutes: 15 * 60 + 30
            })
        );
    }

    #[test]
    fn windows_parse_and_place_the_device_day() {
        assert_eq!(
            Window::parse("01:05-02:00"),
            Some(Window {
                start_minute: 65,
                end_minute: 120
            })
        );
        for bad in ["", "1-2", "24:00-01:00", "01:60-02:00", "01:00", "a:b-c:d"] {
            assert_eq!(Window::parse(bad), None, "{bad}");
        }
        let p = BackgroundPolicy {
            utc_offset_minutes: 60,
            ..BackgroundPolicy::default()
        };
        // 23:30 UTC is 00:30 an hour east.
        assert_eq!(p.minute_of_day((23 * 60 + 30) * 60_000), 30);
        let west = BackgroundPolicy {
            utc_offset_minutes: -120,
            ..BackgroundPolicy::default()
        };
        assert_eq!(west.minute_of_day(60 * 60_000), 23 * 60);
    }
}
