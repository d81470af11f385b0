//! What a device remembers about the network paths to its peers, from one
//! connection to the next and across restarts, so that a reconnection
//! does not pay again for what the last one learned.
//!
//! Two things are remembered:
//!
//! - **The path MTU per peer address.** Path MTU discovery probes with
//!   full-size datagrams (two probes each way, about 5.5 KB, on every new
//!   connection). A connection to an address whose MTU is remembered starts
//!   at that MTU and sends no probe. If the path has shrunk since, QUIC's
//!   black-hole detection falls back to the 1,200-byte minimum, as it would
//!   for any path that changes during a connection.
//! - **Address-validation tokens** (RFC 9000, 8.1.3): a server sends one in
//!   a `NEW_TOKEN` frame once it has validated the client's address; the
//!   client presents it on its next connection to that device, and the
//!   server accepts it without a Retry round trip. Each token is used once.
//!   Tokens are kept by the device that issued them when the dial names
//!   one (a device that restarts on another port is still recognised), by
//!   the address dialed otherwise.
//!
//! Both are hints: losing them costs a Retry and two probes, never
//! correctness. [`KnownPaths`] is their plain form, for the node to persist;
//! it is bounded when remembered and when loaded.
//!
//! ```
//! use nomade_transport::paths::{KnownPaths, PathMemory};
//! let memory = PathMemory::new(KnownPaths::default());
//! let peer = "192.0.2.7".parse().unwrap();
//! memory.learn_mtu(peer, 1452);
//! assert_eq!(memory.mtu(peer), Some(1452));
//! assert_eq!(memory.known().mtus, vec![(peer, 1452)]);
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::identity::{DeviceId, DEVICE_ID_LEN};

/// QUIC's minimum path MTU: every path carries 1,200-byte datagrams.
pub const MIN_MTU: u16 = 1200;
/// The largest MTU path MTU discovery searches for (quinn's default upper
/// bound: an Ethernet MTU of 1,500 less IPv6 and UDP headers).
pub const MAX_MTU: u16 = 1452;
/// At most this many peer addresses (MTUs) and token issuers are remembered.
pub const MAX_REMEMBERED_ADDRESSES: usize = 256;
/// At most this many tokens are kept for one issuer.
pub const MAX_TOKENS_PER_ADDRESS: usize = 2;
/// A token longer than this is not kept (quinn's are under 100 bytes).
pub const MAX_TOKEN_LEN: usize = 512;

/// Who issued an address-validation token: the device, when the dial
/// named the device it expected, or else the address dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenIssuer {
    /// A device, by its id's bytes.
    Device([u8; DEVICE_ID_LEN]),
    /// Whatever device answers at this address.
    Address(SocketAddr),
}

impl TokenIssuer {
    /// The issuer for a dial of `addr` expecting `expected`.
    pub fn of(addr: SocketAddr, expected: Option<DeviceId>) -> TokenIssuer {
        match expected {
            Some(device) => TokenIssuer::Device(*device.as_bytes()),
            None => TokenIssuer::Address(addr),
        }
    }
}

/// The remembered facts as plain data, to persist between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPaths {
    /// The path MTU last found to each peer IP address.
    pub mtus: Vec<(IpAddr, u16)>,
    /// Unused address-validation tokens, by the device that issued them.
    pub tokens: Vec<(TokenIssuer, Vec<u8>)>,
}

#[derive(Default)]
struct State {
    mtus: HashMap<IpAddr, u16>,
    tokens: HashMap<TokenIssuer, VecDeque<Bytes>>,
}

/// The live memory of a transport (shared by its connections).
#[derive(Default)]
pub struct PathMemory {
    state: Mutex<State>,
}

impl std::fmt::Debug for PathMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("PathMemory")
            .field("mtus", &s.mtus.len())
            .field("token_addresses", &s.tokens.len())
            .finish()
    }
}

/// Makes room for one more key in a bounded map: evicts an arbitrary
/// other entry when full.
fn make_room<K: Eq + std::hash::Hash + Copy, V>(map: &mut HashMap<K, V>, key: K) {
    if map.len() >= MAX_REMEMBERED_ADDRESSES && !map.contains_key(&key) {
        if let Some(evicted) = map.keys().next().copied() {
            map.remove(&evicted);
        }
    }
}

impl PathMemory {
    /// A memory holding what `known` says, less anything out of bounds
    /// (an MTU outside QUIC's range, an oversized token, entries beyond
    /// the limits): a damaged or hostile file cannot make it grow.
    pub fn new(known: KnownPaths) -> PathMemory {
        let memory = PathMemory::default();
        for (ip, mtu) in known.mtus {
            memory.learn_mtu(ip, mtu);
        }
        for (issuer, token) in known.tokens {
            memory.insert_token(issuer, Bytes::from(token));
        }
        memory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the MTU a connection to `ip` reached. Only an MTU above the
    /// minimum is worth remembering (at the minimum, discovery has nothing
    /// to skip); one above [`MAX_MTU`] is never searched for and is ignored.
    pub fn learn_mtu(&self, ip: IpAddr, mtu: u16) {
        let mut s = self.lock();
        if !(MIN_MTU < mtu && mtu <= MAX_MTU) {
            return;
        }
        make_room(&mut s.mtus, ip);
        s.mtus.insert(ip, mtu);
    }

    /// The MTU remembered for `ip`.
    pub fn mtu(&self, ip: IpAddr) -> Option<u16> {
        self.lock().mtus.get(&ip).copied()
    }

    fn insert_token(&self, issuer: TokenIssuer, token: Bytes) {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return;
        }
        let mut s = self.lock();
        make_room(&mut s.tokens, issuer);
        let queue = s.tokens.entry(issuer).or_default();
        if queue.len() >= MAX_TOKENS_PER_ADDRESS {
            queue.pop_front();
        }
        queue.push_back(token);
    }

    fn take_token(&self, issuer: TokenIssuer) -> Option<Bytes> {
        let mut s = self.lock();
        let queue = s.tokens.get_mut(&issuer)?;
        let token = queue.pop_back();
        if queue.is_empty() {
            s.tokens.remove(&issuer);
        }
        token
    }

    /// What is remembered, as plain data (sorted, so that equal memories
    /// give equal values).
    pub fn known(&self) -> KnownPaths {
        let s = self.lock();
        let mut mtus: Vec<_> = s.mtus.iter().map(|(ip, mtu)| (*ip, *mtu)).collect();
        mtus.sort_unstable();
        let mut tokens: Vec<_> = s
            .tokens
            .iter()
            .flat_map(|(issuer, queue)| queue.iter().map(|t| (*issuer, t.to_vec())))
            .collect();
        tokens.sort();
        KnownPaths { mtus, tokens }
    }

    /// The token store for one connection to `issuer`: quinn names the
    /// server by its TLS name, which is the same for every Nomade device,
    /// so tokens are kept by device (or address) instead.
    pub fn token_store(self: &Arc<Self>, issuer: TokenIssuer) -> Arc<dyn quinn::TokenStore> {
        Arc::new(TokensFor {
            memory: self.clone(),
            issuer,
        })
    }
}

/// [`quinn::TokenStore`] for the connections to one issuer.
struct TokensFor {
    memory: Arc<PathMemory>,
    issuer: TokenIssuer,
}

impl quinn::TokenStore for TokensFor {
    fn insert(&self, _server_name: &str, token: Bytes) {
        self.memory.insert_token(self.issuer, token);
    }

    fn take(&self, _server_name: &str) -> Option<Bytes> {
        self.memory.take_token(self.issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> TokenIssuer {
        TokenIssuer::Address(s.parse().unwrap())
    }

    #[test]
    fn mtus_outside_what_discovery_finds_are_not_remembered() {
        let memory = PathMemory::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        memory.learn_mtu(ip, MIN_MTU);
        memory.learn_mtu(ip, MAX_MTU + 1);
        memory.learn_mtu(ip, 0);
        assert_eq!(memory.mtu(ip), None);
        memory.learn_mtu(ip, 1326);
        assert_eq!(memory.mtu(ip), Some(1326));
    }

    #[test]
    fn a_token_is_taken_once_and_only_for_its_server() {
        let memory = Arc::new(PathMemory::default());
        let a = memory.token_store(addr("10.0.0.1:7000"));
        let b = memory.token_store(addr("10.0.0.2:7000"));
        a.insert("nomade", Bytes::from_static(b"first"));
        a.insert("nomade", Bytes::from_static(b"second"));
        a.insert("nomade", Bytes::from_static(b"third"));
        assert_eq!(b.take("nomade"), None);
        assert_eq!(a.take("nomade").as_deref(), Some(&b"third"[..]));
        assert_eq!(a.take("nomade").as_deref(), Some(&b"second"[..]));
        assert_eq!(
            a.take("nomade"),
            None,
            "the oldest beyond the bound was dropped"
        );
    }

    #[test]
    fn known_paths_round_trip_and_a_hostile_one_stays_bounded() {
        let memory = Arc::new(PathMemory::default());
        memory.learn_mtu("10.0.0.1".parse().unwrap(), 1400);
        memory
            .token_store(addr("10.0.0.1:7000"))
            .insert("nomade", Bytes::from_static(b"token"));
        let known = memory.known();
        assert_eq!(PathMemory::new(known.clone()).known(), known);

        let hostile = KnownPaths {
            mtus: (0..10_000u32)
                .map(|i| (IpAddr::from(i.to_be_bytes()), 1400))
                .chain([("10.9.9.9".parse().unwrap(), u16::MAX)])
                .collect(),
            tokens: (0..10_000u16)
                .map(|p| {
                    (
                        TokenIssuer::Address(SocketAddr::from(([10, 0, 0, 1], p))),
                        vec![1; 16],
                    )
                })
                .chain([(addr("10.0.0.2:1"), vec![0; MAX_TOKEN_LEN + 1])])
                .collect(),
        };
        let loaded = PathMemory::new(hostile).known();
        assert_eq!(loaded.mtus.len(), MAX_REMEMBERED_ADDRESSES);
        assert_eq!(loaded.tokens.len(), MAX_REMEMBERED_ADDRESSES);
        assert!(loaded.mtus.iter().all(|(_, m)| *m <= MAX_MTU));
        assert!(loaded.tokens.iter().all(|(_, t)| t.len() <= MAX_TOKEN_LEN));
    }
}
