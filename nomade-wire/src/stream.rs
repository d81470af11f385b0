//! The stream header that opens every QUIC stream.
//!
//! Two bytes: `role u8 | version u8`. QUIC's own stream ids say who opened a
//! stream and in which direction; the role says what it carries.

use crate::error::DecodeError;
use crate::frame::PROTOCOL_VERSION;

/// What a QUIC stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StreamRole {
    /// Bidirectional, opened first by the dialer: HELLO / HELLO_ACK, ERROR.
    Control = 0,
    /// Bidirectional: SYNC_* , ACK, BATCHED_SYNC, DELTA_SYNC.
    Sync = 1,
    /// Bidirectional, one per transfer: ARTIFACT_*.
    Artifact = 2,
    /// Unidirectional: HEARTBEAT, PRESENCE_UPDATE.
    Presence = 3,
    /// Unidirectional: pushed notifications (SYNC_OPERATION, PRESENCE_UPDATE).
    Push = 4,
    /// Unidirectional: REVOCATION records.
    Revocation = 5,
    /// Bidirectional: RELAY_REQUEST or RELAY_OFFER, its answer, then the
    /// relayed connection's packets (see `docs/PROTOCOL.md`, "Relay").
    Relay = 6,
}

impl StreamRole {
    /// Every role.
    pub const ALL: [StreamRole; 7] = [
        StreamRole::Control,
        StreamRole::Sync,
        StreamRole::Artifact,
        StreamRole::Presence,
        StreamRole::Push,
        StreamRole::Revocation,
        StreamRole::Relay,
    ];

    /// Whether streams of this role are bidirectional.
    pub fn is_bidirectional(self) -> bool {
        matches!(
            self,
            StreamRole::Control | StreamRole::Sync | StreamRole::Artifact | StreamRole::Relay
        )
    }

    /// The role for a wire byte.
    pub fn from_u8(b: u8) -> Option<StreamRole> {
        StreamRole::ALL.into_iter().find(|r| *r as u8 == b)
    }
}

/// The two bytes that open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// What the stream carries.
    pub role: StreamRole,
    /// The protocol version of the frames that follow.
    pub version: u8,
}

impl StreamHeader {
    /// Length on the wire.
    pub const LEN: usize = 2;

    /// A header for `role` at this build's protocol version.
    pub fn new(role: StreamRole) -> Self {
        StreamHeader {
            role,
            version: PROTOCOL_VERSION,
        }
    }

    /// The wire bytes.
    pub fn to_bytes(self) -> [u8; 2] {
        [self.role as u8, self.version]
    }

    /// Parses the two header bytes; the version must be this build's.
    pub fn parse(b: [u8; 2]) -> Result<StreamHeader, DecodeError> {
        let role =
            StreamRole::from_u8(b[0]).ok_or(DecodeError::UnknownStreamRole { role: b[0] })?;
        if b[1] != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version: b[1],
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(StreamHeader {
            role,
            version: b[1],
        })
    }
}
