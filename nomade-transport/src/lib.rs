//! # nomade-transport
//!
//! The QUIC transport of Nomade: quinn endpoints over UDP, device identities
//! made with rcgen, mutual TLS 1.3 (ALPN `nomade/1`) pinned to paired devices,
//! pairing by short-lived code, stream roles with priorities, framed streams
//! on `nomade-wire`'s decoder, token-bucket rate limits, heartbeats and
//! endpoint dialing with backoff, and relaying a connection between two
//! paired devices through a third ([`relay`]). For tests, the `faults` cargo feature adds
//! `faulty`, which injects loss, duplication, delay, reordering and
//! partitions under QUIC (`Transport::bind_faulty`).
//!
//! ```
//! use nomade_transport::{Config, DeviceIdentity, PairedSet, Transport};
//! use nomade_wire::{ConnectivityStatus, Envelope, Heartbeat, MessageId, StreamRole};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let local = "127.0.0.1:0".parse()?;
//! let laptop = Transport::bind(DeviceIdentity::generate()?, PairedSet::new(), local, Config::default())?;
//! let phone = Transport::bind(DeviceIdentity::generate()?, PairedSet::new(), local, Config::default())?;
//!
//! // Pair with a code shown on the laptop and typed on the phone.
//! let code = laptop.start_pairing();
//! let conn = phone.pair_with(laptop.local_addr()?, &code).await?;
//! let accepted = laptop.accept().await?;
//! assert_eq!(conn.peer(), laptop.device_id());
//! assert_eq!(accepted.peer(), phone.device_id());
//!
//! // Frames on a role's stream.
//! let mut presence = conn.open_uni(StreamRole::Presence).await?;
//! let beat = Envelope::new(MessageId::from([1; 16]), 0, Heartbeat {
//!     timestamp: 0, battery_level: Some(90), connectivity: ConnectivityStatus::Wifi });
//! presence.send(&beat).await?;
//! let mut incoming = accepted.accept_stream().await?;
//! assert_eq!(incoming.role, StreamRole::Presence);
//! assert_eq!(incoming.recv.recv().await?, Some(beat));
//!
//! // Later connections need no code: both sides pinned each other.
//! let again = phone.connect(laptop.local_addr()?, Some(laptop.device_id())).await?;
//! assert_eq!(again.peer(), laptop.device_id());
//! # Ok(()) }
//! ```
//!
//! ## Invariants
//!
//! - **A connection exists only with a paired device** (or the one device
//!   admitted by an open pairing window, which must then prove the code): the
//!   rustls verifiers check the peer's [`DeviceId`] against the shared
//!   [`PairedSet`] in both directions, and still verify the TLS 1.3 handshake
//!   signature, so a copied certificate is useless without its key.
//! - **Bad input ends a stream, not the connection**: a frame that fails to
//!   decode, or a message not completed within the deadline, makes that
//!   stream answer `ERROR` (when bidirectional) and stop; other streams go on.
//! - **Rate limits slow, never drop**: a sender over its budget waits.
//! - The sans-IO parts ([`TokenBucket`], [`heartbeat::Liveness`],
//!   [`dial::Backoff`], [`pairing::PairingWindow`]) take time and randomness
//!   as arguments.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bulk;
pub mod congestion;
mod counters;
pub mod dial;
pub mod endpoint;
mod error;
#[cfg(feature = "faults")]
pub mod faulty;
pub mod heartbeat;
pub mod identity;
pub mod pairing;
pub mod paths;
pub mod ratelimit;
pub mod relay;
pub mod revocation;
pub mod stream;
pub mod tls;

pub use counters::RejectedInput;
pub use endpoint::{Config, Connection, Transport, TransportEvent};
pub use error::{close_code, Result, TransportError};
pub use identity::{DeviceId, DeviceIdentity};
pub use pairing::{PairingCode, PAIRING_TTL};
pub use paths::KnownPaths;
pub use ratelimit::{RateLimiter, RateLimits, TokenBucket};
pub use relay::{RelayConfig, RelayStats};
pub use stream::{FramedRecv, FramedSend, IncomingStream};
pub use tls::PairedSet;
