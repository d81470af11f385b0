//! # nomade-node
//!
//! A running Nomade device: the other crates composed into what an app embeds
//! and what the `nomade` program runs.
//!
//! A [`Node`] owns a data directory (a redb database holding the operation
//! log and the paired devices, and the encrypted artifact store), a QUIC
//! endpoint, and one session per connected peer. Local edits are durable when
//! the call returns; they are pushed to every connected peer at once, and a
//! peer acknowledges operations only after storing them, so a crash on
//! either side loses nothing that was acknowledged.
//!
//! - [`Node`]: open, edit, read, subscribe, pair, connect, fetch artifacts.
//! - [`core`]: the replica and its store, without any networking.
//! - [`sync`]: the sync flows (pull, push, acknowledgements) over any framed
//!   channel.
//! - [`handshake`]: `HELLO` / `HELLO_ACK` and version checks.
//! - [`store`]: the redb database.
//! - [`metrics`] and [`metrics_http`]: counters, the latency histogram, and
//!   the Prometheus endpoint.
//! - [`peers`]: what the node remembers of each paired device, redialing,
//!   and how each dial ended.
//! - [`control`]: the local control socket of a running node (the protocol
//!   is in `docs/CONTROL.md`), and [`doctor`]: why a peer syncs or not.
//!
//! The `nomade` program (`src/bin/nomade`: its command line, the progress
//! bars, `nomade demo`) is built with the default `cli` feature; an
//! application embedding the library can leave it out with
//! `default-features = false`, and clap, indicatif and tracing-subscriber
//! with it.
//!
//! ```
//! use std::time::Duration;
//! use nomade_node::{Node, NodeConfig};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let laptop = Node::open(&dir.path().join("laptop"), NodeConfig::default())?;
//! let phone = Node::open(&dir.path().join("phone"), NodeConfig::default())?;
//!
//! // Edits work offline and are durable on return.
//! laptop.set("trip", "title", "Lisbon")?;
//!
//! // Online: pair with a short code, then the phone catches up.
//! let addr = laptop.start("127.0.0.1:0".parse()?).await?;
//! phone.start("127.0.0.1:0".parse()?).await?;
//! let code = laptop.pairing_code()?;
//! let peer = phone.pair_with(addr, &code).await?;
//! phone.wait_initial_sync(&peer, Duration::from_secs(10)).await?;
//! assert_eq!(phone.state_hash(), laptop.state_hash());
//! assert_eq!(
//!     phone.document("trip").and_then(|d| d.get("title").cloned()),
//!     Some("Lisbon".into())
//! );
//! laptop.shutdown().await;
//! phone.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod artifact_io;
mod artifacts;
pub mod batch;
pub mod control;
pub mod core;
pub mod discovery;
pub mod doctor;
pub mod error;
pub mod handshake;
pub mod json;
pub mod metrics;
pub mod metrics_http;
mod node;
pub mod peers;
mod presence;
pub mod progress;
mod recent;
pub mod revocations;
pub mod schedule;
mod session;
pub mod sim;
mod status;
pub mod store;
mod subscriptions;
pub mod sync;

pub use artifacts::{ArtifactEntry, ArtifactPolicy, ArtifactState};
pub use error::NodeError;
pub use node::{Node, NodeConfig};
/// A conversation item's id: the device that wrote the item and its
/// operation's counter (see [`Node::conv_items`]).
pub use nomade_wire::ElementId as ItemId;
pub use presence::PeerPresence;
pub use status::{NodeStatus, PeerStatus, SessionStatus};

/// Locks `mutex`, recovering it if a panic elsewhere poisoned it. Every
/// update the node makes under one of its locks (the replica, the session
/// map, presence, status) is a single call that leaves the value consistent,
/// so a poisoned lock still guards valid data, and one panicking task must
/// not take the whole device down with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
