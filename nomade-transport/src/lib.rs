//! # nomade-transport
//!
//! QUIC transport for Nomade (placeholder docs; see below).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod identity;

pub use error::{close_code, Result, TransportError};
pub use identity::{DeviceId, DeviceIdentity};
