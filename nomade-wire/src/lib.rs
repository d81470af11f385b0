//! # nomade-wire
//!
//! The wire format of the Nomade synchronization protocol, version 1: the framed
//! envelope, every message type, the stream header, and a sans-IO streaming
//! decoder that survives any bytes. No I/O, no async: bytes in, messages out.
//!
//! `docs/PROTOCOL.md` at the repository root is the normative description.
//!
//! ```
//! use bytes::BytesMut;
//! use nomade_wire::{Decoder, Envelope, Heartbeat, ConnectivityStatus, Message, MessageId};
//!
//! let beat = Heartbeat { timestamp: 1_700_000_000_000, battery_level: Some(80),
//!                        connectivity: ConnectivityStatus::Wifi };
//! let env = Envelope::new(MessageId::from([7; 16]), 1_700_000_000_000, beat.clone());
//! let mut buf = BytesMut::new();
//! env.encode_into(&mut buf)?;
//!
//! // Bytes may arrive split anywhere: the decoder asks for more until a frame is whole.
//! let mut decoder = Decoder::new();
//! let mut incoming = BytesMut::new();
//! incoming.extend_from_slice(&buf[..10]);
//! assert!(decoder.decode(&mut incoming)?.is_none());
//! incoming.extend_from_slice(&buf[10..]);
//! let got = decoder.decode(&mut incoming)?.expect("a whole frame");
//! assert_eq!(got.message, Message::Heartbeat(beat));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Invariants
//!
//! - **Decoding never panics** and never allocates more than [`Limits::max_payload`]
//!   for one frame, whatever the bytes: `payload_length` is checked before any
//!   payload byte is buffered.
//! - **One canonical encoding**: a payload is accepted only if re-encoding the
//!   decoded message gives the same bytes, so every message has exactly one
//!   valid frame for a given envelope.
//! - The timestamp is carried, never interpreted.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod actor_id;
mod actor_table;
mod batch;
mod bytes_fixed;
mod checksum;
mod dedup;
mod deps;
mod error;
mod frame;
mod message;
pub mod samples;
mod stream;
mod value;

pub use actor_id::ActorId;
pub use batch::BatchEncoder;
pub use bytes_fixed::{FixedBytes, Hash32, MessageId};
pub use dedup::{RecentIds, DEFAULT_DEDUP_WINDOW};
pub use deps::Deps;
pub use error::{DecodeError, EncodeError};
pub use frame::{
    compress_frame, put_compressed_frame, put_frame, Decoder, Envelope, FrameHeader, Limits,
    Message, MessageType, CHECKSUM_LEN, COMPRESSED, DEFAULT_MAX_DEPTH, DEFAULT_MAX_PAYLOAD,
    HEADER_LEN, MAX_CHUNK_DATA, MIN_COMPRESSED_PAYLOAD, PROTOCOL_VERSION,
};
pub use message::*;
pub use stream::{StreamHeader, StreamRole};
pub use value::Value;

/// Result alias for decoding.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
