//! Counts of the bad input a transport turned away.
//!
//! Each rejection is logged where it happens (`tracing`, at warn for what a
//! peer did wrong, debug for repeats) and counted here, so that a node can
//! export the totals with its metrics ([`crate::Transport::rejected_input`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a transport counts; shared by its connections and streams.
#[derive(Debug, Default)]
pub(crate) struct InputCounters {
    handshakes: AtomicU64,
    stream_headers: AtomicU64,
    frames: AtomicU64,
    deadlines: AtomicU64,
    duplicates: AtomicU64,
}

/// One kind of rejected input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    Handshake,
    StreamHeader,
    Frame,
    Deadline,
    Duplicate,
}

impl InputCounters {
    /// Counts one rejection of `kind`.
    pub(crate) fn count(&self, kind: Rejected) {
        let counter = match kind {
            Rejected::Handshake => &self.handshakes,
            Rejected::StreamHeader => &self.stream_headers,
            Rejected::Frame => &self.frames,
            Rejected::Deadline => &self.deadlines,
            Rejected::Duplicate => &self.duplicates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals so far.
    pub(crate) fn snapshot(&self) -> RejectedInput {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RejectedInput {
            handshakes: load(&self.handshakes),
            stream_headers: load(&self.stream_headers),
            frames: load(&self.frames),
            deadlines: load(&self.deadlines),
            duplicates: load(&self.duplicates),
        }
    }
}

/// How much bad input a transport has turned away since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectedInput {
    /// Incoming connections refused: failed handshakes (unpaired or unknown
    /// device, bad certificate, timeout) and failed address validation.
    pub handshakes: u64,
    /// Streams reset for a bad or late stream header.
    pub stream_headers: u64,
    /// Frames that failed to decode; each ended its stream with an `ERROR`.
    pub frames: u64,
    /// Messages not completed within the per-message deadline.
    pub deadlines: u64,
    /// Messages dropped because a message with the same `message_id` was
    /// received on the same connection shortly before.
    pub duplicates: u64,
}

impl RejectedInput {
    /// The counts by name, for metrics (`handshake`, `stream_header`,
    /// `frame`, `deadline`, `duplicate_message`).
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("handshake", self.handshakes),
            ("stream_header", self.stream_headers),
            ("frame", self.frames),
            ("deadline", self.deadlines),
            ("duplicate_message", self.duplicates),
        ]
    }

    /// The total over every kind.
    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_counted_under_its_own_name() {
        let counters = InputCounters::default();
        counters.count(Rejected::Handshake);
        counters.count(Rejected::Frame);
        counters.count(Rejected::Frame);
        counters.count(Rejected::Duplicate);
        let s = counters.snapshot();
        assert_eq!(
            s.by_kind(),
            [
                ("handshake", 1),
                ("stream_header", 0),
                ("frame", 2),
                ("deadline", 0),
                ("duplicate_message", 1),
            ]
        );
        assert_eq!(s.total(), 4);
    }
}
