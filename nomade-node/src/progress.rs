//! A text progress bar for long transfers.

use std::io::Write;
use std::time::Instant;

/// Draws `[=====>    ] 12.0/32.0 MiB 180 MiB/s` on stderr, at most ~10 times a second.
#[derive(Debug)]
pub struct ProgressBar {
    total: u64,
    started: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl ProgressBar {
    /// A bar for `total` bytes; draws nothing when `enabled` is false.
    pub fn new(total: u64, enabled: bool) -> Self {
        ProgressBar {
            total,
            started: Instant::now(),
            last_draw: None,
            enabled,
        }
    }

    /// The text for `done` bytes after `secs` seconds.
    pub fn render(done: u64, total: u64, secs: f64) -> String {
        const WIDTH: usize = 30;
        let frac = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).clamp(0.0, 1.0)
        };
        let filled = (frac * WIDTH as f64) as usize;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rate = if secs > 0.0 { mib(done) / secs } else { 0.0 };
        format!(
            "[{}{}] {:.1}/{:.1} MiB {:.0} MiB/s",
            "=".repeat(filled),
            " ".repeat(WIDTH - filled),
            mib(done),
            mib(total),
            rate
        )
    }

    /// Reports `done` bytes.
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let due = self
            .last_draw
            .is_none_or(|t| now.duration_since(t).as_millis() >= 100)
            || done >= self.total;
        if due {
            self.last_draw = Some(now);
            let line = Self::render(done, self.total, self.started.elapsed().as_secs_f64());
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{line}");
            if done >= self.total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fraction_and_rate() {
        let s = ProgressBar::render(16 << 20, 32 << 20, 2.0);
        assert!(s.starts_with("[==============="), "{s}");
        assert!(s.contains("16.0/32.0 MiB 8 MiB/s"), "{s}");
        assert!(ProgressBar::render(0, 0, 0.0).contains("0.0/0.0 MiB"));
    }
}
