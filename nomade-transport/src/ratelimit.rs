//! Application rate limits: token buckets with backpressure.
//!
//! [`TokenBucket`] is the sans-IO core (time passed in); [`RateLimiter`] is
//! the async glue that makes a sender wait. Nothing is ever dropped: a caller
//! over its rate sleeps until the bucket has refilled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default: operations per second on one sync stream.
pub const DEFAULT_SYNC_OPS_PER_SEC: u32 = 100;
/// Default: artifact bytes per second (10 MB/s).
pub const DEFAULT_ARTIFACT_BYTES_PER_SEC: u64 = 10_000_000;

/// Rate limits of a transport; `None` switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Frames per second on each sync stream, each direction.
    pub sync_ops_per_sec: Option<u32>,
    /// Frame bytes per second over all artifact streams of a transport, each direction.
    pub artifact_bytes_per_sec: Option<u64>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sync_ops_per_sec: Some(DEFAULT_SYNC_OPS_PER_SEC),
            artifact_bytes_per_sec: Some(DEFAULT_ARTIFACT_BYTES_PER_SEC),
        }
    }
}

impl RateLimits {
    /// Every limit off.
    pub const OFF: RateLimits = RateLimits {
        sync_ops_per_sec: None,
        artifact_bytes_per_sec: None,
    };
}

/// A token bucket: `rate` tokens per second, holding at most `capacity`.
///
/// A request larger than the capacity is allowed once the bucket is full, and
/// leaves it in debt, so large items are slowed to the rate, never refused.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilling at `rate_per_sec`.
    pub fn new(rate_per_sec: u64, capacity: u64, now: Instant) -> Self {
        let rate = rate_per_sec.max(1) as f64;
        let capacity = capacity.max(1) as f64;
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// A bucket holding one second's worth of tokens.
    pub fn per_second(rate_per_sec: u64, now: Instant) -> Self {
        Self::new(rate_per_sec, rate_per_sec, now)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Takes `n` tokens at `now`, or says how long to wait before trying again.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = (n as f64).min(self.capacity);
        if self.tokens + 1e-9 >= need {
            self.tokens -= n as f64;
            Ok(())
        } else {
            let secs = (need - self.tokens) / self.rate;
            Err(Duration::from_secs_f64(secs).max(Duration::from_micros(100)))
        }
    }

    /// Tokens available at `now` (negative while in debt).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }
}

/// An async token bucket; clones share the bucket.
#[derive(Debug, Clone)]
pub struct RateLimiter(Arc<Mutex<TokenBucket>>);

impl RateLimiter {
    /// A limiter of `rate_per_sec` with one second of burst.
    pub fn per_second(rate_per_sec: u64) -> Self {
        RateLimiter(Arc::new(Mutex::new(TokenBucket::per_second(
            rate_per_sec,
            tokio::time::Instant::now().into_std(),
        ))))
    }

    /// Waits until `n` tokens are taken (backpressure: never refuses).
    pub async fn acquire(&self, n: u64) {
        loop {
            let wait = {
                let mut bucket = self.0.lock().unwrap_or_else(|e| e.into_inner());
                // tokio's clock, so a paused test clock drives the bucket too.
                match bucket.try_take(n, tokio::time::Instant::now().into_std()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tracing::trace!(?wait, n, "rate limited: waiting");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tokens_with_an_injected_clock() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(100, t0);
        // A full second's burst, then refusal.
        let taken = (0..1000).filter(|_| b.try_take(1, t0).is_ok()).count();
        assert_eq!(taken, 100);
        let wait = b.try_take(1, t0).expect_err("empty");
        assert!(wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11));
        // 250 ms later: 25 more.
        let t1 = t0 + Duration::from_millis(250);
        let taken = (0..1000).filter(|_| b.try_take(1, t1).is_ok()).count();
        assert_eq!(taken, 25);
        // Over 10 simulated seconds, exactly rate * time + burst ops pass.
        let mut b = TokenBucket::per_second(100, t0);
        let mut ok = 0;
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            while b.try_take(1, now).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 100 + 999);
    }

    #[test]
    fn large_requests_go_into_debt_instead_of_starving() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert!(b.try_take(500, t0).is_ok());
        assert!(b.available(t0) < -399.0);
        // Must wait for the debt plus one full bucket: 0.5 s.
        let wait = b.try_take(500, t0).expect_err("in debt");
        assert!(wait >= Duration::from_millis(499), "{wait:?}");
        assert!(b.try_take(500, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = TokenBucket::per_second(10, t0);
        for _ in 0..10 {
            b.try_take(1, t0).expect("burst");
        }
        assert!(b.try_take(1, t0 - Duration::from_secs(1)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_rather_than_dropping() {
        let limiter = RateLimiter::per_second(10);
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            limiter.acquire(1).await;
        }
        // All 30 went through (none dropped); with a paused clock the sleeps
        // advanced virtual time by about two seconds.
        assert!(tokio::time::Instant::now() - start >= Duration::from_millis(1900));
    }
}
