//! # nomade-node
//!
//! A running Nomade device (under construction).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod handshake;
pub mod metrics;
pub mod store;
