//! Transfer progress, for progress bars.

use std::time::Duration;

/// How far a transfer has come. Carries no clock: the caller measures the
/// elapsed time and asks for a [`rate`](Progress::rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Plaintext bytes held and verified (including those of an earlier,
    /// interrupted attempt).
    pub bytes_done: u64,
    /// Plaintext size of the artifact.
    pub bytes_total: u64,
    /// Chunks held and verified.
    pub chunks_done: u32,
    /// Chunks in the artifact.
    pub chunks_total: u32,
    /// Bytes already held when this attempt started (resumed from).
    pub bytes_at_start: u64,
}

impl Progress {
    /// Fraction done, 0.0 to 1.0 (1.0 for an empty artifact).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            if self.chunks_done >= self.chunks_total {
                1.0
            } else {
                0.0
            }
        } else {
            self.bytes_done as f64 / self.bytes_total as f64
        }
    }

    /// Bytes transferred by this attempt (not counting resumed bytes).
    pub fn bytes_this_attempt(&self) -> u64 {
        self.bytes_done.saturating_sub(self.bytes_at_start)
    }

    /// Bytes per second of this attempt, given the time since it started
    /// (`None` for a zero duration).
    pub fn rate(&self, elapsed: Duration) -> Option<f64> {
        let secs = elapsed.as_secs_f64();
        (secs > 0.0).then(|| self.bytes_this_attempt() as f64 / secs)
    }

    /// Estimated time left at the current rate (`None` until there is a rate).
    pub fn eta(&self, elapsed: Duration) -> Option<Duration> {
        let rate = self.rate(elapsed)?;
        if rate <= 0.0 {
            return None;
        }
        let left = self.bytes_total.saturating_sub(self.bytes_done) as f64;
        Duration::try_from_secs_f64(left / rate).ok()
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.chunks_done >= self.chunks_total && self.bytes_done >= self.bytes_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta() {
        let p = Progress {
            bytes_done: 3_000,
            bytes_total: 5_000,
            chunks_done: 1,
            chunks_total: 2,
            bytes_at_start: 1_000,
        };
        assert_eq!(p.rate(Duration::from_secs(2)), Some(1_000.0));
        assert_eq!(p.eta(Duration::from_secs(2)), Some(Duration::from_secs(2)));
        assert_eq!(p.rate(Duration::ZERO), None);
        assert!((p.fraction() - 0.6).abs() < 1e-9);
        assert!(!p.is_complete());
        let empty = Progress::default();
        assert_eq!(empty.fraction(), 1.0);
        assert!(empty.is_complete());
    }
}
