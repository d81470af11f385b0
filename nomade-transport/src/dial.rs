//! Endpoint dialing: the seed's `Endpoint` list, tried in priority order
//! (lower number first: LAN before public addresses), with exponential backoff
//! and jitter per endpoint, reset on success.
//!
//! [`Backoff`] and the ordering in [`Dialer::plan`] are sans-IO (clock and
//! randomness passed in); [`Dialer::dial`] is the async glue.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

use crate::endpoint::{Connection, Transport};
use crate::error::{Result, TransportError};
use crate::identity::DeviceId;

/// One address of a device, as in the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to dial.
    pub address: SocketAddr,
    /// Lower is preferred: 0 = direct LAN, then gateway, public, manual.
    pub priority: u8,
    /// When a connection through this address last succeeded.
    pub last_success: Option<SystemTime>,
    /// Round-trip time measured on the last successful connection.
    pub rtt_ms: Option<u64>,
}

impl Endpoint {
    /// An endpoint never tried yet.
    pub fn new(address: SocketAddr, priority: u8) -> Self {
        Endpoint {
            address,
            priority,
            last_success: None,
            rtt_ms: None,
        }
    }
}

/// Exponential backoff with jitter for one endpoint.
///
/// After the n-th consecutive failure the endpoint waits
/// `d = min(max, base * 2^(n-1))`, jittered uniformly in `[d/2, d]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(60))
    }
}

impl Backoff {
    /// A backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
            retry_at: None,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the endpoint may be tried again (`None`: now).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether the endpoint may be tried at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// The un-jittered delay after `failures` consecutive failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Records a failure at `now`; returns the chosen delay.
    pub fn on_failure(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling(self.failures);
        let half = ceiling / 2;
        let jitter =
            rng.gen_range(0..=(ceiling - half).as_micros().min(u128::from(u64::MAX)) as u64);
        let delay = half + Duration::from_micros(jitter);
        self.retry_at = Some(now + delay);
        delay
    }

    /// Records the failure of an attempt that had been running since
    /// `started`: one that lasted at least the longest delay worked for a
    /// while (a sync stream that applied operations, a session that stayed
    /// up), so its failure starts from `base` again instead of from the
    /// delay that earlier failures grew. Returns the chosen delay.
    pub fn on_failure_of_attempt_started(
        &mut self,
        started: Instant,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Duration {
        if now.saturating_duration_since(started) >= self.max {
            self.on_success();
        }
        self.on_failure(now, rng)
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}

/// What happened to one endpoint in a dial round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialAttempt {
    /// The address tried.
    pub address: SocketAddr,
    /// `Ok(rtt)` or the error text.
    pub outcome: Result<Duration, String>,
}

/// Dials a device through its endpoints.
#[derive(Debug, Clone)]
pub struct Dialer {
    entries: Vec<(Endpoint, Backoff)>,
    connect_timeout: Duration,
    last_round: Vec<DialAttempt>,
}

impl Dialer {
    /// A dialer over `endpoints` with the default backoff and a 3 s connect timeout.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Dialer {
            entries: endpoints
                .into_iter()
                .map(|e| (e, Backoff::default()))
                .collect(),
            connect_timeout: Duration::from_secs(3),
            last_round: Vec::new(),
        }
    }

    /// Sets the per-attempt connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the backoff of every endpoint.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        for e in &mut self.entries {
            e.1 = backoff.clone();
        }
        self
    }

    /// The endpoints with what was learned about them.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.entries.iter().map(|e| &e.0)
    }

    /// The backoff state of `address`.
    pub fn backoff(&self, address: SocketAddr) -> Option<&Backoff> {
        self.entries
            .iter()
            .find(|e| e.0.address == address)
            .map(|e| &e.1)
    }

    /// The attempts of the last [`Dialer::dial`] round, in order.
    pub fn last_round(&self) -> &[DialAttempt] {
        &self.last_round
    }

    /// The indices of the endpoints to try at `now`, in order: lower priority
    /// number first, then lower known RTT; endpoints backing off are skipped.
    pub fn plan(&self, now: Instant) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].1.ready(now))
            .collect();
        idx.sort_by_key(|&i| {
            let e = &self.entries[i].0;
            (e.priority, e.rtt_ms.unwrap_or(u64::MAX))
        });
        idx
    }

    /// Records a failed attempt on endpoint `i`.
    pub fn record_failure(
        &mut self,
        i: usize,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        self.entries.get_mut(i).map(|e| e.1.on_failure(now, rng))
    }

    /// Records a successful attempt on endpoint `i`.
    pub fn record_success(&mut self, i: usize, rtt: Duration, at: SystemTime) {
        if let Some((e, b)) = self.entries.get_mut(i) {
            b.on_success();
            e.last_success = Some(at);
            e.rtt_ms = Some(u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Tries the ready endpoints in order until one connects to a paired
    /// device (`expected` if given).
    pub async fn dial(
        &mut self,
        transport: &Transport,
        expected: Option<DeviceId>,
    ) -> Result<Connection> {
        self.last_round.clear();
        let plan = self.plan(Instant::now());
        for i in plan {
            let addr = self.entries[i].0.address;
            tracing::debug!(%addr, priority = self.entries[i].0.priority, "dialing");
            let attempt =
                tokio::time::timeout(self.connect_timeout, transport.connect(addr, expected)).await;
            match attempt {
                Ok(Ok(conn)) => {
                    let rtt = conn.rtt();
                    self.record_success(i, rtt, SystemTime::now());
                    self.last_round.push(DialAttempt {
                        address: addr,
                        outcome: Ok(rtt),
                    });
                    tracing::info!(%addr, ?rtt, "dial succeeded");
                    return Ok(conn);
                }
                Ok(Err(e)) => self.fail(i, addr, e.to_string()),
                Err(_) => self.fail(i, addr, TransportError::ConnectTimeout { addr }.to_string()),
            }
        }
        Err(TransportError::NoEndpointReachable {
            attempts: self.last_round.len(),
        })
    }

    fn fail(&mut self, i: usize, addr: SocketAddr, why: String) {
        let delay = self.record_failure(i, Instant::now(), &mut rand::thread_rng());
        tracing::warn!(%addr, error = %why, ?delay, "dial failed: backing off");
        self.last_round.push(DialAttempt {
            address: addr,
            outcome: Err(why),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// BAD_INPUTS #29: reconnects back off with jitter and reset on success.
    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut delays = Vec::new();
        for n in 1..=8u32 {
            let d = b.on_failure(t0, &mut rng);
            let ceiling = b.ceiling(n);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{n}: {d:?} vs {ceiling:?}"
            );
            delays.push(ceiling);
            assert!(!b.ready(t0));
            assert!(b.ready(t0 + d));
        }
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[3], Duration::from_millis(800));
        assert_eq!(delays[7], Duration::from_secs(2), "capped");
        b.on_success();
        assert_eq!(b.failures(), 0);
        assert!(b.ready(t0));
        let d = b.on_failure(t0, &mut rng);
        assert!(d <= Duration::from_millis(100));
    }

    #[test]
    fn a_failure_after_a_long_attempt_starts_from_the_base_delay() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..6 {
            b.on_failure(t0, &mut rng);
        }
        // A short attempt: the delay keeps growing (capped at 2 s).
        let short = b.on_failure_of_attempt_started(t0, t0 + Duration::from_secs(1), &mut rng);
        assert_eq!(b.failures(), 7);
        assert!(short >= Duration::from_secs(1), "{short:?}");
        // An attempt that ran for the longest delay or more: from the base.
        let started = t0 + Duration::from_secs(1);
        let now = started + Duration::from_secs(2);
        let long = b.on_failure_of_attempt_started(started, now, &mut rng);
        assert_eq!(b.failures(), 1);
        assert!(long <= Duration::from_millis(100), "{long:?}");
        assert_eq!(b.retry_at(), Some(now + long));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        let ds: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
                b.on_failure(t0, &mut rng)
            })
            .collect();
        assert!(ds.len() > 10, "jitter must vary: {ds:?}");
    }

    #[test]
    fn plan_orders_by_priority_then_rtt_and_skips_backing_off() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut public = Endpoint::new(a(3), 2);
        public.rtt_ms = Some(5);
        let mut lan_slow = Endpoint::new(a(2), 0);
        lan_slow.rtt_ms = Some(40);
        let mut lan_fast = Endpoint::new(a(1), 0);
        lan_fast.rtt_ms = Some(2);
        let manual = Endpoint::new(a(4), 3);
        let mut d = Dialer::new(vec![public, manual, lan_slow, lan_fast]);
        let t0 = Instant::now();
        let order: Vec<u16> = d
            .plan(t0)
            .iter()
            .map(|&i| d.entries[i].0.address.port())
            .collect();
        assert_eq!(order, vec![1, 2, 3, 4]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        d.record_failure(3, t0, &mut rng); // lan_fast fails
        let order: Vec<u16> = d
            .plan(t0)
            .iter()
            .map(|&i| d.entries[i].0.address.port())
            .collect();
        assert_eq!(order, vec![2, 3, 4]);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(d.plan(later).len(), 4, "back after the backoff");
        d.record_success(3, Duration::from_millis(7), SystemTime::UNIX_EPOCH);
        assert_eq!(d.entries[3].0.rtt_ms, Some(7));
        assert_eq!(d.entries[3].0.last_success, Some(SystemTime::UNIX_EPOCH));
        assert_eq!(d.entries[3].1.failures(), 0);
    }
}
