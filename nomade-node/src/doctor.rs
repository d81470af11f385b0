//! `nomade doctor`: why each paired device is syncing, or not, and what to
//! do about it.
//!
//! For each peer the diagnosis is one [`Cause`], the first that applies:
//! this device's disk is full; a session is up (syncing, perhaps only
//! through a relay, perhaps with a clock far off); no address is known; or how dialing it ends (nothing
//! answers, it refuses this device, it speaks another protocol version).
//! A peer without a session is dialed now, so the answer is first-hand.

use std::time::Duration;

use nomade_transport::DeviceId;
use serde::Serialize;

use crate::core::now_ms;
use crate::node::Node;
use crate::peers::DialOutcome;

/// Clocks further apart than this are reported (sync does not mind).
pub const CLOCK_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Why a peer is syncing or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// A session is up.
    Syncing {
        /// The peer's address on it.
        address: String,
        /// When operations last went either way (ms since the Unix epoch).
        last_sync_ms: Option<i64>,
    },
    /// A session is up, but only through a relay (a paired device
    /// connected to both): the peer's own addresses do not answer from
    /// here.
    Relayed {
        /// The relaying device's id.
        via: String,
        /// When operations last went either way (ms since the Unix epoch).
        last_sync_ms: Option<i64>,
        /// How the last direct dial ended, when one was made.
        direct: Option<String>,
    },
    /// A session is up, and the peer's clock is far from this one's.
    ClockFarOff {
        /// The peer's address.
        address: String,
        /// Its clock minus ours (ms).
        offset_ms: i64,
    },
    /// This device cannot store what it receives.
    DiskFull {
        /// Since when (ms since the Unix epoch).
        since_ms: i64,
    },
    /// No address is known for the peer, and it has not connected.
    NoAddress,
    /// Nothing answers at its address.
    Unreachable {
        /// The address tried.
        addr: String,
        /// What the network said.
        reason: String,
    },
    /// It answered and refused this device (it does not have it paired).
    Refused {
        /// The address tried.
        addr: String,
        /// What it said.
        reason: String,
    },
    /// It speaks another protocol version.
    VersionMismatch {
        /// The address tried.
        addr: String,
        /// Its version (0: it did not say).
        theirs: u8,
        /// This device's.
        ours: u8,
    },
    /// Something else failed.
    Failed {
        /// The address tried.
        addr: String,
        /// What.
        reason: String,
    },
}

/// The diagnosis of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerDiagnosis {
    /// Its device id.
    pub device_id: String,
    /// Its name, if known.
    pub name: Option<String>,
    /// Whether it syncs now.
    pub ok: bool,
    /// Why (not).
    #[serde(flatten)]
    pub cause: Cause,
    /// What to do, in one sentence.
    pub advice: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// This device's id.
    pub device_id: String,
    /// Whether a node runs (`nomade serve`): without one nothing syncs.
    pub serving: bool,
    /// Where it listens, when it does.
    pub listening: Option<String>,
    /// One diagnosis per paired device.
    pub peers: Vec<PeerDiagnosis>,
}

/// How long a doctor's own dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Diagnoses every paired device of `node`. `served`: the node runs and has
/// been redialing (its findings are used); otherwise each peer is dialed
/// now, from a node put online for the purpose.
pub async fn diagnose(node: &Node, served: bool) -> Report {
    let mut peers = Vec::new();
    for rec in node.peers().unwrap_or_default() {
        let Ok(id) = rec.device_id.parse::<DeviceId>() else {
            continue;
        };
        let cause = diagnose_peer(node, id, !rec.addresses.is_empty()).await;
        peers.push(PeerDiagnosis {
            ok: matches!(
                cause,
                Cause::Syncing { .. } | Cause::Relayed { .. } | Cause::ClockFarOff { .. }
            ),
            advice: advice(&cause, &rec.device_id),
            device_id: rec.device_id,
            name: rec.name,
            cause,
        });
    }
    Report {
        device_id: node.device_id().to_string(),
        serving: served,
        listening: node.listening_addr().map(|a| a.to_string()),
        peers,
    }
}

async fn diagnose_peer(node: &Node, peer: DeviceId, has_address: bool) -> Cause {
    if let Some(since_ms) = node.core().store().full_since_ms() {
        return Cause::DiskFull { since_ms };
    }
    if let Some(s) = node.session_status(&peer) {
        return session_cause(node, peer, s);
    }
    if !has_address {
        return Cause::NoAddress;
    }
    // Not connected: dial now, so the answer is first-hand (the last
    // redial may be old, or made before an address was added).
    if crate::control::ensure_online(node, None).await.is_ok() {
        for addr in node.addresses_of(peer) {
            let dial = tokio::time::timeout(DIAL_TIMEOUT, node.connect(addr, peer)).await;
            if dial.is_err() {
                node.note_dial_failure(
                    peer,
                    addr,
                    &crate::NodeError::Transport(
                        nomade_transport::TransportError::ConnectTimeout { addr },
                    ),
                );
            }
            if let Some(s) = node.session_status(&peer) {
                return session_cause(node, peer, s);
            }
        }
    }
    let tried = node.dial_reports().remove(&peer);
    match tried {
        None => Cause::NoAddress,
        Some(r) => match r.outcome {
            DialOutcome::Connected => Cause::Failed {
                addr: r.addr,
                reason: "connected, then the session ended".into(),
            },
            DialOutcome::Unreachable { reason } => Cause::Unreachable {
                addr: r.addr,
                reason,
            },
            DialOutcome::Refused { reason } => Cause::Refused {
                addr: r.addr,
                reason,
            },
            DialOutcome::VersionMismatch { theirs, ours } => Cause::VersionMismatch {
                addr: r.addr,
                theirs,
                ours,
            },
            DialOutcome::Failed { reason } => Cause::Failed {
                addr: r.addr,
                reason,
            },
        },
    }
}

fn session_cause(node: &Node, peer: DeviceId, s: crate::SessionStatus) -> Cause {
    if let Some(via) = s.relayed_via {
        let direct = node.dial_reports().remove(&peer).and_then(|r| {
            let what = match r.outcome {
                DialOutcome::Unreachable { reason }
                | DialOutcome::Refused { reason }
                | DialOutcome::Failed { reason } => reason,
                DialOutcome::VersionMismatch { theirs, ours } => {
                    format!("it speaks protocol version {theirs}, this device {ours}")
                }
                _ => return None,
            };
            Some(format!("{}: {what}", r.addr))
        });
        return Cause::Relayed {
            via,
            last_sync_ms: s.last_sync_ms,
            direct,
        };
    }
    if s.clock_offset_ms.abs() > CLOCK_TOLERANCE_MS {
        Cause::ClockFarOff {
            address: s.address,
            offset_ms: s.clock_offset_ms,
        }
    } else {
        Cause::Syncing {
            address: s.address,
            last_sync_ms: s.last_sync_ms,
        }
    }
}

/// What to do about `cause`, in one sentence.
pub fn advice(cause: &Cause, device_id: &str) -> String {
    match cause {
        Cause::Syncing { address, last_sync_ms } => match last_sync_ms {
            Some(t) => format!(
                "in sync over {address}; last exchange {} ago",
                ago(now_ms().saturating_sub(*t))
            ),
            None => format!("connected over {address}; nothing needed syncing yet"),
        },
        Cause::Relayed { via, direct, .. } => format!(
            "in sync, but only through {via}, which relays: its own addresses do not answer from here{}; everything goes through the relay at its rate limit, and only while it is on. A firewall or a separate network is the usual cause: give it an address this device reaches (`nomade peers add {device_id} --addr HOST:PORT`)",
            direct.as_deref().map(|d| format!(" (last direct attempt: {d})")).unwrap_or_default()
        ),
        Cause::ClockFarOff { address, offset_ms } => format!(
            "connected over {address}, but its clock is {} {} this one: sync is unaffected (clocks never order anything) but times look wrong; set the clock of one device right",
            ago(offset_ms.abs()),
            if *offset_ms > 0 { "ahead of" } else { "behind" }
        ),
        Cause::DiskFull { .. } => "this device's disk is full, so nothing received can be stored: free some space (sync resumes by itself)".into(),
        Cause::NoAddress => format!(
            "no address is known for it: add one with `nomade peers add {device_id} --addr HOST:PORT`, or start `nomade serve` on it so that it connects here"
        ),
        Cause::Unreachable { addr, .. } => format!(
            "nothing answers at {addr}: is `nomade serve` running there, on that port, on a network this device reaches?"
        ),
        Cause::Refused { addr, .. } => format!(
            "the device at {addr} refused this one: it does not have it paired (unpaired, or reset); pair them again (`nomade pair show` on one, `nomade pair join` on the other). If this device was revoked (`nomade status` says so once it learned it), only a new identity can be paired: start it on a new data directory"
        ),
        Cause::VersionMismatch { theirs, ours, .. } => format!(
            "it speaks protocol version {theirs} and this device {ours}: update the older one"
        ),
        Cause::Failed { addr, reason } => format!("dialing {addr} failed: {reason}"),
    }
}

/// A duration for people: `12 s`, `4 min`, `3 h`, `2 days`.
pub fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_advice_that_names_what_to_do() {
        let id = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";
        let cases = [
            (Cause::NoAddress, "nomade peers add"),
            (
                Cause::Unreachable {
                    addr: "10.0.0.2:4433".into(),
                    reason: "timed out".into(),
                },
                "nomade serve",
            ),
            (
                Cause::Refused {
                    addr: "10.0.0.2:4433".into(),
                    reason: "not paired".into(),
                },
                "pair them again",
            ),
            (
                Cause::VersionMismatch {
                    addr: "a".into(),
                    theirs: 2,
                    ours: 1,
                },
                "update the older one",
            ),
            (Cause::DiskFull { since_ms: 0 }, "free some space"),
            (
                Cause::Relayed {
                    via: "m7ae".into(),
                    last_sync_ms: None,
                    direct: Some("10.0.0.2:4433: timed out".into()),
                },
                "only through m7ae",
            ),
            (
                Cause::ClockFarOff {
                    address: "a".into(),
                    offset_ms: -3_600_000,
                },
                "60 min behind",
            ),
        ];
        for (cause, says) in cases {
            let a = advice(&cause, id);
            assert!(a.contains(says), "{cause:?}: {a}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(ago(5_000), "5 s");
        assert_eq!(ago(600_000), "10 min");
        assert_eq!(ago(3 * 3_600_000), "3 h");
        assert_eq!(ago(5 * 86_400_000), "5 days");
    }
}
