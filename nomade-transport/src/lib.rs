//! # nomade-transport
//!
//! QUIC transport for Nomade (placeholder docs; see below).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dial;
pub mod endpoint;
pub mod heartbeat;
mod error;
pub mod identity;
pub mod pairing;
pub mod ratelimit;
pub mod stream;
pub mod tls;

pub use endpoint::{Config, Connection, Transport, TransportEvent};
pub use error::{close_code, Result, TransportError};
pub use identity::{DeviceId, DeviceIdentity};
pub use pairing::PairingCode;
pub use ratelimit::{RateLimiter, RateLimits, TokenBucket};
pub use stream::{FramedRecv, FramedSend, IncomingStream};
pub use tls::PairedSet;
