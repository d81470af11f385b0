//! Counters and a latency histogram, rendered as JSON (`nomade status --json`)
//! or in the Prometheus text exposition format (`--metrics-addr`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Upper bounds (microseconds) of the sync latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    100_000,
    1_000_000,
    10_000_000,
    u64::MAX,
];

/// The node's metrics. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Operations received from peers and applied.
    pub ops_applied: AtomicU64,
    /// Operations sent to peers.
    pub ops_sent: AtomicU64,
    /// Frames carrying operations received from peers (a `BATCHED_SYNC`
    /// carries many): what the sync rate limit counts.
    pub sync_frames_received: AtomicU64,
    /// Bytes sent on all streams.
    pub bytes_sent: AtomicU64,
    /// Bytes received on all streams.
    pub bytes_received: AtomicU64,
    /// Artifact bytes received and verified.
    pub artifact_bytes_received: AtomicU64,
    /// Sessions established with peers, dialed or accepted.
    pub sessions_started: AtomicU64,
    /// Dials to a known peer that failed (unreachable, timed out, refused).
    pub dial_failures: AtomicU64,
    /// Addresses of paired devices learned on the local network (mDNS).
    pub peers_discovered: AtomicU64,
    /// Stored operations read back from the database to find what peers
    /// lack (the history a pusher scanned; a pusher that is up to date
    /// reads the operations stored last from memory, not counted here).
    pub ops_scanned: AtomicU64,
    /// Stored operations dropped by compaction (below what every paired device holds, covered by the snapshot).
    pub ops_compacted: AtomicU64,
    /// Snapshots sent to peers that lacked compacted operations.
    pub snapshots_sent: AtomicU64,
    /// Snapshots received from peers and adopted.
    pub snapshots_adopted: AtomicU64,
    /// Stored rows of operations sent to peers as they are stored (a BATCHED_SYNC payload not decoded or encoded again).
    pub runs_sent_as_stored: AtomicU64,
    /// Commits of peers' operations to the log (operations that several
    /// pulls hand over at once go in one).
    pub remote_commits: AtomicU64,
    /// Revocation records received that this device held already (every
    /// device sends all it holds at each connection; a replay is one too):
    /// they change nothing.
    pub revocations_already_held: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            ops_applied: AtomicU64::new(0),
            ops_sent: AtomicU64::new(0),
            sync_frames_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            artifact_bytes_received: AtomicU64::new(0),
            sessions_started: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            peers_discovered: AtomicU64::new(0),
            ops_scanned: AtomicU64::new(0),
            ops_compacted: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            snapshots_adopted: AtomicU64::new(0),
            runs_sent_as_stored: AtomicU64::new(0),
            remote_commits: AtomicU64::new(0),
            revocations_already_held: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A point-in-time copy of the metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Operations applied from peers.
    pub ops_applied: u64,
    /// Operations sent to peers.
    pub ops_sent: u64,
    /// Frames carrying operations received from peers.
    pub sync_frames_received: u64,
    /// Operations applied per second since start.
    pub ops_applied_per_sec: f64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes received per second since start.
    pub bytes_received_per_sec: f64,
    /// Artifact bytes received and verified.
    pub artifact_bytes_received: u64,
    /// Sessions established with peers, dialed or accepted.
    pub sessions_started: u64,
    /// Dials to a known peer that failed.
    pub dial_failures: u64,
    /// Addresses of paired devices learned on the local network.
    pub peers_discovered: u64,
    /// Stored operations read back from the database to find what peers
    /// lack.
    pub ops_scanned: u64,
    /// Stored operations dropped by compaction (below what every paired device holds, covered by the snapshot).
    pub ops_compacted: u64,
    /// Snapshots sent to peers that lacked compacted operations.
    pub snapshots_sent: u64,
    /// Snapshots received from peers and adopted.
    pub snapshots_adopted: u64,
    /// Stored rows of operations sent to peers as they are stored (a BATCHED_SYNC payload not decoded or encoded again).
    pub runs_sent_as_stored: u64,
    /// Commits of peers' operations to the log.
    pub remote_commits: u64,
    /// Revocation records received that were held already.
    pub revocations_already_held: u64,
    /// Sync latency (created on the peer -> applied here) histogram: bucket
    /// upper bound in µs -> cumulative count.
    pub sync_latency_us: Vec<(u64, u64)>,
    /// Number of latency samples.
    pub sync_latency_count: u64,
    /// Mean sync latency in µs.
    pub sync_latency_mean_us: f64,
    /// Errors by message type (or stage).
    pub errors: BTreeMap<String, u64>,
    /// Bad input the transport turned away, by kind (`handshake`,
    /// `stream_header`, `frame`, `deadline`, `duplicate_message`); filled in
    /// by the node from its transport.
    pub rejected_input: BTreeMap<String, u64>,
    /// Retries the transport sent to validate a dialing device's address
    /// (a round trip each; a device that connected before presents a token
    /// instead); filled in by the node from its transport.
    pub retries_sent: u64,
    /// What this device did as a relay, and the relay streams it ended for
    /// bad input; filled in by the node from its transport.
    pub relay: RelayMetrics,
}

/// The relay part of [`MetricsSnapshot`] (`nomade_transport::RelayStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayMetrics {
    /// Relay sessions served now.
    pub active_sessions: u64,
    /// Relay sessions served in all.
    pub sessions: u64,
    /// Relay requests and offers refused.
    pub refused: u64,
    /// Bytes forwarded for other devices.
    pub bytes_forwarded: u64,
    /// Relay streams ended for bad input.
    pub bad_streams: u64,
}

impl From<nomade_transport::RelayStats> for RelayMetrics {
    fn from(s: nomade_transport::RelayStats) -> Self {
        RelayMetrics {
            active_sessions: s.active_sessions,
            sessions: s.sessions,
            refused: s.refused,
            bytes_forwarded: s.bytes_forwarded,
            bad_streams: s.bad_streams,
        }
    }
}

impl Metrics {
    /// Records one sync latency sample. Negative or absurd values (clock skew)
    /// are clamped, never trusted for anything but this histogram.
    pub fn record_latency_us(&self, us: i64) {
        let us = us.max(0) as u64;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            if us <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.latency_sum_us
            .fetch_add(us.min(u32::MAX as u64), Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error attributed to a message type or stage.
    pub fn record_error(&self, kind: &'static str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_insert(0) += 1;
        }
    }

    /// Counts `n` errors of `kind` at once.
    pub fn record_errors(&self, kind: &'static str, n: u64) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_insert(0) += n;
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let uptime = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut cumulative = 0;
        let sync_latency_us = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.latency_buckets)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        let count = self.latency_count.load(Ordering::Relaxed);
        let ops_applied = self.ops_applied.load(Ordering::Relaxed);
        let bytes_received = self.bytes_received.load(Ordering::Relaxed);
        MetricsSnapshot {
            uptime_secs: uptime,
            ops_applied,
            ops_sent: self.ops_sent.load(Ordering::Relaxed),
            sync_frames_received: self.sync_frames_received.load(Ordering::Relaxed),
            ops_applied_per_sec: ops_applied as f64 / uptime,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received,
            bytes_received_per_sec: bytes_received as f64 / uptime,
            artifact_bytes_received: self.artifact_bytes_received.load(Ordering::Relaxed),
            sessions_started: self.sessions_started.load(Ordering::Relaxed),
            dial_failures: self.dial_failures.load(Ordering::Relaxed),
            peers_discovered: self.peers_discovered.load(Ordering::Relaxed),
            ops_scanned: self.ops_scanned.load(Ordering::Relaxed),
            ops_compacted: self.ops_compacted.load(Ordering::Relaxed),
            snapshots_sent: self.snapshots_sent.load(Ordering::Relaxed),
            snapshots_adopted: self.snapshots_adopted.load(Ordering::Relaxed),
            runs_sent_as_stored: self.runs_sent_as_stored.load(Ordering::Relaxed),
            remote_commits: self.remote_commits.load(Ordering::Relaxed),
            revocations_already_held: self.revocations_already_held.load(Ordering::Relaxed),
            sync_latency_us,
            sync_latency_count: count,
            sync_latency_mean_us: if count == 0 {
                0.0
            } else {
                self.latency_sum_us.load(Ordering::Relaxed) as f64 / count as f64
            },
            errors: self
                .errors
                .lock()
                .map(|e| e.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
            rejected_input: BTreeMap::new(),
            retries_sent: 0,
            relay: RelayMetrics::default(),
        }
    }
}

impl MetricsSnapshot {
    /// The Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let counters = [
            (
                "nomade_ops_applied_total",
                "Operations applied from peers",
                self.ops_applied,
            ),
            (
                "nomade_ops_sent_total",
                "Operations sent to peers",
                self.ops_sent,
            ),
            (
                "nomade_sync_frames_received_total",
                "Frames carrying operations received from peers",
                self.sync_frames_received,
            ),
            ("nomade_bytes_sent_total", "Bytes sent", self.bytes_sent),
            (
                "nomade_bytes_received_total",
                "Bytes received",
                self.bytes_received,
            ),
            (
                "nomade_artifact_bytes_received_total",
                "Artifact bytes received and verified",
                self.artifact_bytes_received,
            ),
            (
                "nomade_sessions_started_total",
                "Sessions established with peers, dialed or accepted",
                self.sessions_started,
            ),
            (
                "nomade_dial_failures_total",
                "Dials to a known peer that failed",
                self.dial_failures,
            ),
            (
                "nomade_peers_discovered_total",
                "Addresses of paired devices learned on the local network (mDNS)",
                self.peers_discovered,
            ),
            (
                "nomade_ops_scanned_total",
                "Stored operations read back from the database to find what peers lack",
                self.ops_scanned,
            ),
            (
                "nomade_ops_compacted_total",
                "Stored operations dropped by compaction (below what every paired device holds, covered by the snapshot)",
                self.ops_compacted,
            ),
            (
                "nomade_snapshots_sent_total",
                "Snapshots sent to peers that lacked compacted operations",
                self.snapshots_sent,
            ),
            (
                "nomade_snapshots_adopted_total",
                "Snapshots received from peers and adopted",
                self.snapshots_adopted,
            ),
            (
                "nomade_runs_sent_as_stored_total",
                "Stored rows of operations sent to peers as they are stored (a BATCHED_SYNC payload not decoded or encoded again)",
                self.runs_sent_as_stored,
            ),
            (
                "nomade_remote_commits_total",
                "Commits of peers' operations to the log (operations several pulls hand over at once go in one)",
                self.remote_commits,
            ),
            (
                "nomade_revocations_already_held_total",
                "Revocation records received that this device held already (each device sends all it holds at every connection): they change nothing",
                self.revocations_already_held,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP nomade_sync_latency_seconds Operation created on a peer -> applied here\n# TYPE nomade_sync_latency_seconds histogram"
        );
        for (bound, count) in &self.sync_latency_us {
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1e6)
            };
            let _ = writeln!(
                s,
                "nomade_sync_latency_seconds_bucket{{le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            s,
            "nomade_sync_latency_seconds_sum {}\nnomade_sync_latency_seconds_count {}",
            self.sync_latency_mean_us * self.sync_latency_count as f64 / 1e6,
            self.sync_latency_count
        );
        let _ = writeln!(
            s,
            "# HELP nomade_errors_total Errors by message type\n# TYPE nomade_errors_total counter"
        );
        for (kind, n) in &self.errors {
            let _ = writeln!(s, "nomade_errors_total{{type=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP nomade_rejected_input_total Bad input turned away by the transport, by kind\n# TYPE nomade_rejected_input_total counter"
        );
        for (kind, n) in &self.rejected_input {
            let _ = writeln!(s, "nomade_rejected_input_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP nomade_retries_sent_total Address validations (QUIC Retry) sent to dialing devices\n# TYPE nomade_retries_sent_total counter\nnomade_retries_sent_total {}",
            self.retries_sent
        );
        let r = &self.relay;
        let _ = writeln!(
            s,
            "# HELP nomade_relay_sessions_active Relay sessions this device serves for paired devices
# TYPE nomade_relay_sessions_active gauge
nomade_relay_sessions_active {}
\
             # HELP nomade_relay_sessions_total Relay sessions served
# TYPE nomade_relay_sessions_total counter
nomade_relay_sessions_total {}
\
             # HELP nomade_relay_refused_total Relay requests and offers refused
# TYPE nomade_relay_refused_total counter
nomade_relay_refused_total {}
\
             # HELP nomade_relay_bytes_total Bytes forwarded for other devices
# TYPE nomade_relay_bytes_total counter
nomade_relay_bytes_total {}
\
             # HELP nomade_relay_bad_streams_total Relay streams ended for bad input
# TYPE nomade_relay_bad_streams_total counter
nomade_relay_bad_streams_total {}",
            r.active_sessions, r.sessions, r.refused, r.bytes_forwarded, r.bad_streams
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_clamps_skew() {
        let m = Metrics::default();
        m.record_latency_us(50);
        m.record_latency_us(700);
        m.record_latency_us(-5_000); // a peer clock ahead: clamped to 0
        let s = m.snapshot();
        assert_eq!(s.sync_latency_count, 3);
        assert_eq!(s.sync_latency_us[0], (100, 2));
        assert_eq!(s.sync_latency_us[3], (1_000, 3));
        assert_eq!(s.sync_latency_us.last().map(|b| b.1), Some(3));
    }

    #[test]
    fn prometheus_text_has_counters_and_errors() {
        let m = Metrics::default();
        Metrics::add(&m.ops_applied, 7);
        m.record_error("SYNC_OPERATION");
        m.record_error("SYNC_OPERATION");
        let mut snapshot = m.snapshot();
        snapshot
            .rejected_input
            .insert("duplicate_message".into(), 3);
        let text = snapshot.to_prometheus();
        assert!(text.contains("nomade_ops_applied_total 7"), "{text}");
        assert!(
            text.contains("nomade_sync_frames_received_total 0"),
            "{text}"
        );
        assert!(
            text.contains("nomade_errors_total{type=\"SYNC_OPERATION\"} 2"),
            "{text}"
        );
        assert!(text.contains("le=\"+Inf\"} 0"), "{text}");
        assert!(
            text.contains("nomade_rejected_input_total{kind=\"duplicate_message\"} 3"),
            "{text}"
        );
    }
}
