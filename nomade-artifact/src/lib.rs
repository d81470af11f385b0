//! # nomade-artifact
//!
//! Content-addressed, chunked, encrypted-at-rest artifacts and their transfer.
//!
//! - [`chunk`]: 64 KiB chunks, [`ArtifactId`] = SHA-256 of the plaintext, the
//!   `nomade:artifact/<hex>` reference form.
//! - [`keys`]: the device's X25519 key pair and the wrapping of per-artifact
//!   data keys for each device in `encrypted_for`.
//! - [`store`]: the on-disk store, every chunk sealed with ChaCha20-Poly1305.
//! - [`transfer`]: the sans-IO [`Sender`] and [`Receiver`] of the
//!   ARTIFACT_REQUEST / METADATA / CHUNK / COMPLETE exchange, resumable.
//!
//! File I/O, no networking: the node moves the messages.
//!
//! ```
//! use nomade_artifact::{ArtifactStore, DeviceKey, Receiver, Sender};
//!
//! let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let holder = ArtifactStore::open(dirs.0.path(), DeviceKey::generate(), None)?;
//! let fetcher = ArtifactStore::open(dirs.1.path(), DeviceKey::generate(), None)?;
//! let id = holder.put_bytes(b"hello, nomade", Some("text/plain"), &[fetcher.public_key()])?;
//!
//! let mut sender = Sender::new(holder.clone(), true);
//! let mut receiver = Receiver::new(fetcher.clone(), id, 128)?;
//! while !receiver.is_finished() {
//!     while let Some(m) = receiver.next_message()? { sender.handle_message(m)?; }
//!     while let Some(m) = sender.next_message()? { receiver.handle_message(m)?; }
//! }
//! while let Some(m) = receiver.next_message()? { sender.handle_message(m)?; }
//! assert!(sender.is_finished());
//! assert_eq!(fetcher.read_chunk(&id, 0)?, &b"hello, nomade"[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Invariants
//!
//! - **Nothing reaches the store's disk unencrypted**, and **no unverified byte
//!   is ever returned**: every chunk read is checked by its AEAD tag (bound to
//!   the artifact id, its index and whether it is last) and its plaintext hash;
//!   exports and transfers check the whole SHA-256 against the id.
//! - **Memory stays flat**: one chunk at a time, whatever the artifact size
//!   (plus 32 bytes of hash per chunk in the header).
//! - **The transfer state machines do no network I/O and never read the clock.**

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chunk;
mod error;
mod hashing;
pub mod keys;
mod progress;
pub mod store;
pub mod transfer;

pub use chunk::{chunk_count, ArtifactId, CHUNK_SIZE, MAX_CHUNK_COUNT};
pub use error::{ArtifactError, Result};
pub use hashing::{lower_thread_priority, BULK_NICENESS};
pub use keys::{DeviceKey, PublicKey};
pub use progress::Progress;
pub use store::{ArtifactInfo, ArtifactReader, ArtifactStore};
pub use transfer::{
    RangeEvent, RangeKey, RangeReceiver, Receiver, ReceiverEvent, Sender, SenderEvent,
};
