//! Progress of long operations (a `put` of a large file, a transfer), as
//! people expect it: on a terminal, a bar with bytes, rate and time left
//! (indicatif); into a file or a pipe, a plain line now and then, never a
//! redrawn bar.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use nomade_node::progress::bytes;

/// Shows the progress of one operation on stderr.
#[derive(Debug)]
pub struct ProgressBar {
    what: String,
    total: u64,
    started: Instant,
    display: Display,
}

#[derive(Debug)]
enum Display {
    /// A live bar on a terminal.
    Bar(indicatif::ProgressBar),
    /// Plain lines: at most one per `every`, and one at the end.
    Lines {
        every: Duration,
        last: Option<Instant>,
        done: bool,
    },
    /// Nothing (a caller that asked for quiet).
    Hidden,
}

/// A plain progress line is written at most this often.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

impl ProgressBar {
    /// Progress of `what` (`"put photo.jpg"`) over `total` bytes: a bar when
    /// stderr is a terminal and `enabled`, plain lines when it is not, and
    /// nothing at all when `enabled` is false.
    pub fn new(what: impl Into<String>, total: u64, enabled: bool) -> Self {
        let display = if !enabled {
            Display::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ({eta} left)",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            Display::Bar(bar)
        } else {
            Display::Lines {
                every: LINE_INTERVAL,
                last: None,
                done: false,
            }
        };
        let what = what.into();
        if let Display::Bar(b) = &display {
            b.set_message(what.clone());
        }
        ProgressBar {
            what,
            total,
            started: Instant::now(),
            display,
        }
    }

    /// A bar that writes plain lines whatever stderr is (for tests of the
    /// line format).
    #[cfg(test)]
    pub fn lines(what: impl Into<String>, total: u64, every: Duration) -> Self {
        ProgressBar {
            what: what.into(),
            total,
            started: Instant::now(),
            display: Display::Lines {
                every,
                last: None,
                done: false,
            },
        }
    }

    /// The plain line for `done` of `total` bytes after `secs` seconds:
    /// `put photo.jpg: 512.0 MiB of 1.0 GiB (50%), 180.2 MiB/s, 3 s left`.
    pub fn line(what: &str, done: u64, total: u64, secs: f64) -> String {
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let left = if done >= total {
            "done".to_string()
        } else if rate > 0.0 {
            format!("{:.0} s left", (total - done) as f64 / rate)
        } else {
            "time left unknown".to_string()
        };
        format!(
            "{what}: {} of {} ({pct:.0}%), {}/s, {left}",
            bytes(done),
            bytes(total),
            bytes(rate as u64)
        )
    }

    /// Changes the total (a transfer learns it from the first metadata).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Display::Bar(b) = &self.display {
            b.set_length(total);
        }
    }

    /// Reports `done` bytes. Returns the plain line written, if one was.
    pub fn update(&mut self, done: u64) -> Option<String> {
        let total = self.total;
        match &mut self.display {
            Display::Hidden => None,
            Display::Bar(b) => {
                b.set_position(done);
                if done >= total {
                    b.finish();
                }
                None
            }
            Display::Lines {
                every,
                last,
                done: finished,
            } => {
                let now = Instant::now();
                let at_end = done >= total;
                let due = last.is_none_or(|t| now.duration_since(t) >= *every);
                if *finished || !(due || at_end) {
                    return None;
                }
                *last = Some(now);
                *finished = at_end;
                let line = Self::line(
                    &self.what,
                    done,
                    total,
                    self.started.elapsed().as_secs_f64(),
                );
                eprintln!("{line}");
                Some(line)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_says_bytes_share_rate_and_time_left() {
        let s = ProgressBar::line("put a", 512 << 20, 1 << 30, 2.0);
        assert_eq!(
            s,
            "put a: 512.0 MiB of 1.0 GiB (50%), 256.0 MiB/s, 2 s left"
        );
        assert!(ProgressBar::line("get b", 0, 0, 0.0).ends_with("(100%), 0 B/s, done"));
        assert!(ProgressBar::line("x", 0, 10, 0.0).ends_with("time left unknown"));
    }

    #[test]
    fn plain_lines_are_few_and_the_last_one_is_written_once() {
        let mut p = ProgressBar::lines("put f", 100, Duration::from_secs(3600));
        assert!(p.update(1).is_some(), "the first report is shown");
        for done in 2..100 {
            assert!(
                p.update(done).is_none(),
                "{done}: no line before the interval"
            );
        }
        assert!(p.update(100).expect("the end is shown").contains("done"));
        assert!(p.update(100).is_none(), "and only once");
    }
}
