//! # nomade-node
//!
//! A running Nomade device (under construction).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod artifact_io;
pub mod batch;
pub mod cli;
pub mod core;
pub mod demo;
pub mod error;
pub mod handshake;
pub mod json;
pub mod metrics;
pub mod metrics_http;
mod node;
pub mod progress;
pub mod store;
pub mod sync;

pub use error::NodeError;
pub use node::{Node, NodeConfig, NodeStatus, PeerPresence, PeerStatus};
