//! Finding paired devices on the local network, with no address typed by
//! hand (docs/PROTOCOL.md, "Local discovery").
//!
//! Each device announces one mDNS/DNS-SD service instance of type
//! [`SERVICE_TYPE`] at its QUIC port, named by a *tag*: 32 hex characters
//! derived from its device id and the current hour ([`tag`]). It carries no
//! TXT data. A device that recognises the tag of a device it is paired with
//! ([`recognise`]) learns the addresses it announced, keeps them first
//! among that device's addresses and dials it at once. An onlooker sees a
//! name that changes every hour and cannot be linked to a device without
//! knowing its id, which only paired devices learn (TLS 1.3 encrypts the
//! certificates). A device that moves to another address announces it
//! there, and is found again.
//!
//! ```
//! use nomade_node::discovery::{recognise, tag};
//! use nomade_transport::DeviceIdentity;
//!
//! let laptop = DeviceIdentity::generate()?.device_id();
//! let name = tag(&laptop, 493_000);
//! assert_eq!(name.len(), 32);
//! assert_ne!(name, tag(&laptop, 493_001), "a new name every hour");
//! assert_eq!(recognise(&name, [&laptop], 493_001), Some(laptop));
//! assert_eq!(recognise(&name, [&laptop], 493_005), None);
//! # Ok::<(), nomade_transport::TransportError>(())
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nomade_transport::DeviceId;

use crate::metrics::Metrics;
use crate::Node;

/// The DNS-SD service type devices announce.
pub const SERVICE_TYPE: &str = "_nomade._udp.local.";

/// How long one tag is announced: a new one every hour.
pub const TAG_PERIOD: Duration = Duration::from_secs(3600);

/// The context of the key the tags are derived with.
const TAG_CONTEXT: &str = "nomade/1 local discovery tag";

/// The tag period at `unix_ms` (ms since the Unix epoch).
pub fn period_at(unix_ms: i64) -> u64 {
    u64::try_from(unix_ms).unwrap_or(0) / TAG_PERIOD.as_millis() as u64
}

/// The name `device` announces during `period`: the first 16 bytes, as
/// lower-case hex, of BLAKE3 in key-derivation mode with the context
/// `"nomade/1 local discovery tag"` over the device id's 20 raw bytes and
/// the period as 8 bytes big-endian.
pub fn tag(device: &DeviceId, period: u64) -> String {
    let mut h = blake3::Hasher::new_derive_key(TAG_CONTEXT);
    h.update(device.as_bytes());
    h.update(&period.to_be_bytes());
    let digest = h.finalize();
    digest.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which of `paired` announces `name` in `period`, the one before or the
/// one after (clocks differ by minutes).
pub fn recognise<'a>(
    name: &str,
    paired: impl IntoIterator<Item = &'a DeviceId>,
    period: u64,
) -> Option<DeviceId> {
    let periods = [period.saturating_sub(1), period, period.saturating_add(1)];
    paired
        .into_iter()
        .find(|d| periods.iter().any(|&p| tag(d, p) == name))
        .copied()
}

/// The instance name of a service's full name (`<name>.<type>`), if it is
/// of [`SERVICE_TYPE`].
fn instance_of(fullname: &str) -> Option<&str> {
    fullname
        .strip_suffix(SERVICE_TYPE)
        .and_then(|n| n.strip_suffix('.'))
}

/// Whether a device can be dialed at `ip` from another host: not a
/// loopback address, nor an IPv6 link-local one (it needs its interface).
fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Shuts the mDNS daemon down when the discovery task ends (or is aborted
/// when the node shuts down).
struct Daemon(mdns_sd::ServiceDaemon);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

impl Node {
    /// Announces this device and looks for paired devices on the local
    /// network, until the node shuts down. `listen` is where the node
    /// listens: an unspecified address announces every address of the
    /// host's interfaces, a specific one only itself. mDNS being
    /// unavailable (no multicast, the port refused) is logged and leaves
    /// the node as it is.
    pub(crate) fn start_discovery(&self, listen: SocketAddr) {
        let daemon = match mdns_sd::ServiceDaemon::new() {
            Ok(d) => Daemon(d),
            Err(e) => {
                tracing::warn!(error = %e, "local discovery is off: mDNS is not available here");
                return;
            }
        };
        let browse = match daemon.0.browse(SERVICE_TYPE) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "local discovery is off: cannot browse");
                return;
            }
        };
        let node = self.clone();
        self.spawn(async move {
            let own = node.device_id();
            let mut announced: Option<(u64, String)> = None;
            loop {
                let now = crate::core::now_ms();
                let period = period_at(now);
                if announced.as_ref().map(|(p, _)| *p) != Some(period) {
                    if let Some((_, old)) = announced.take() {
                        let _ = daemon.0.unregister(&old);
                    }
                    match announce(&daemon.0, &own, period, listen) {
                        Ok(fullname) => announced = Some((period, fullname)),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not announce this device on the local network")
                        }
                    }
                }
                let next_period_ms =
                    (period + 1) * TAG_PERIOD.as_millis() as u64 - u64::try_from(now).unwrap_or(0);
                tokio::select! {
                    event = browse.recv_async() => match event {
                        Ok(mdns_sd::ServiceEvent::ServiceResolved(service)) => {
                            node.on_service(&service, period);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    () = tokio::time::sleep(Duration::from_millis(next_period_ms)) => {}
                }
            }
        });
    }

    /// A service resolved on the local network: if a paired device
    /// announced it, its addresses go first among that device's, and the
    /// device is dialed at once.
    fn on_service(&self, service: &mdns_sd::ResolvedService, period: u64) {
        let Some(name) = instance_of(&service.fullname) else {
            return;
        };
        let paired = self.inner.paired.list();
        let Some(peer) = recognise(name, paired.iter(), period) else {
            return;
        };
        if peer == self.device_id() {
            return;
        }
        let addrs: Vec<SocketAddr> = service
            .addresses
            .iter()
            .map(|ip| ip.to_ip_addr())
            .filter(dialable)
            .map(|ip| SocketAddr::new(ip, service.port))
            .collect();
        if addrs.is_empty() {
            return;
        }
        let known = self.addresses_of(peer);
        let new: Vec<SocketAddr> = addrs.into_iter().filter(|a| !known.contains(a)).collect();
        if new.is_empty() {
            return;
        }
        let stored = self.update_peer(peer, |p| {
            for a in new.iter().rev() {
                p.remember_address(&a.to_string());
            }
        });
        if let Err(e) = stored {
            tracing::warn!(%peer, error = %e, "could not store a discovered address");
            return;
        }
        Metrics::add(&self.metrics().peers_discovered, 1);
        tracing::info!(%peer, addresses = ?new, "found a paired device on the local network");
        // Redials waiting out a backoff try now, and a dial under way to
        // an older address gives way.
        self.inner.address_learned.send_modify(|n| *n += 1);
        self.inner.session_started.send_replace(());
        self.ensure_redial(peer);
    }
}

/// Registers this device's service for `period`; returns its full name.
fn announce(
    daemon: &mdns_sd::ServiceDaemon,
    device: &DeviceId,
    period: u64,
    listen: SocketAddr,
) -> Result<String, mdns_sd::Error> {
    let name = tag(device, period);
    let host = format!("{name}.local.");
    let info = if listen.ip().is_unspecified() {
        mdns_sd::ServiceInfo::new(SERVICE_TYPE, &name, &host, (), listen.port(), None)?
            .enable_addr_auto()
    } else {
        mdns_sd::ServiceInfo::new(SERVICE_TYPE, &name, &host, listen.ip(), listen.port(), None)?
    };
    let fullname = info.get_fullname().to_string();
    daemon.register(info)?;
    Ok(fullname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_transport::DeviceIdentity;

    fn id() -> DeviceId {
        DeviceIdentity::generate().expect("identity").device_id()
    }

    #[test]
    fn tags_change_every_period_and_differ_between_devices() {
        let (a, b) = (id(), id());
        assert_ne!(tag(&a, 7), tag(&b, 7));
        assert_ne!(tag(&a, 7), tag(&a, 8));
        assert_eq!(tag(&a, 7), tag(&a, 7));
        assert!(tag(&a, 7)
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(period_at(0), 0);
        assert_eq!(period_at(3_600_000 * 5 + 1), 5);
        assert_eq!(period_at(-5), 0);
    }

    /// The vector of docs/PROTOCOL.md ("Local discovery"), also checked by
    /// the independent Python checker.
    #[test]
    fn the_tag_of_the_protocol_vector() {
        let laptop: DeviceId = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr"
            .parse()
            .expect("device id");
        assert_eq!(tag(&laptop, 493_000), "c45b4d0363ae0cf445e7f8de55b43aad");
        assert_eq!(period_at(1_774_800_000_000), 493_000);
    }

    #[test]
    fn only_paired_devices_are_recognised_within_a_period_either_side() {
        let (a, b, stranger) = (id(), id(), id());
        let paired = [a, b];
        assert_eq!(recognise(&tag(&b, 100), &paired, 100), Some(b));
        assert_eq!(recognise(&tag(&b, 99), &paired, 100), Some(b));
        assert_eq!(recognise(&tag(&b, 101), &paired, 100), Some(b));
        assert_eq!(recognise(&tag(&b, 102), &paired, 100), None);
        assert_eq!(recognise(&tag(&stranger, 100), &paired, 100), None);
        assert_eq!(recognise("not a tag", &paired, 100), None);
    }

    #[test]
    fn instance_names_and_dialable_addresses() {
        assert_eq!(instance_of("abc._nomade._udp.local."), Some("abc"),);
        assert_eq!(instance_of("abc._http._tcp.local."), None);
        assert!(dialable(&"192.168.1.4".parse().expect("ip")));
        assert!(!dialable(&"127.0.0.1".parse().expect("ip")));
        assert!(!dialable(&"fe80::1".parse().expect("ip")));
        assert!(dialable(&"fd00::1".parse().expect("ip")));
    }
}
