//! Errors of the wire layer.

/// Why a frame or stream header could not be decoded.
///
/// Every variant means the bytes were rejected as a whole: nothing of the frame
/// may be acted on. The variants carry the numbers that explain the failure so a
/// caller can log them and pick an ERROR code (see [`DecodeError::error_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside the fixed-size frame header.
    #[error("truncated frame header: {have} of {need} bytes")]
    TruncatedHeader {
        /// Bytes available.
        have: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The input ended inside the payload or checksum.
    #[error("truncated frame body: {have} of {need} bytes after the header")]
    TruncatedBody {
        /// Bytes available after the header.
        have: usize,
        /// Bytes the header announced (payload plus checksum).
        need: usize,
    },
    /// The frame's version byte is not one this implementation speaks.
    #[error("unsupported protocol version {version} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version found on the wire.
        version: u8,
        /// The version this build supports.
        supported: u8,
    },
    /// The frame's message type code is not assigned.
    #[error("unknown message type 0x{message_type:04x}")]
    UnknownMessageType {
        /// The code found on the wire.
        message_type: u16,
    },
    /// `payload_length` is above the configured limit; nothing was read or allocated.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The announced payload length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The BLAKE3 checksum does not match the payload.
    #[error("payload checksum mismatch")]
    ChecksumMismatch,
    /// The payload is not the MessagePack map this message type requires
    /// (wrong types, missing or unknown fields, invalid UTF-8, bad markers).
    #[error("malformed {message} payload: {reason}")]
    MalformedPayload {
        /// The message type being decoded.
        message: &'static str,
        /// What the MessagePack decoder reported.
        reason: String,
    },
    /// The payload nests deeper than the configured limit.
    #[error("payload nests deeper than {max_depth} levels")]
    TooDeep {
        /// The configured maximum depth.
        max_depth: usize,
    },
    /// Bytes remain inside the payload after one complete value.
    #[error("{extra} trailing bytes after the payload value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The payload decoded, but is not in the one canonical encoding
    /// (struct sent as an array, non-minimal integers, fields out of order,
    /// an optional extension field sent as nil, float32 where float64 is required...).
    #[error("non-canonical {message} payload encoding")]
    NonCanonical {
        /// The message type being decoded.
        message: &'static str,
    },
    /// An `ARTIFACT_CHUNK` or a `SYNC_SNAPSHOT` carries more than 64 KiB of data.
    #[error("chunk of {len} bytes exceeds {max} bytes")]
    ChunkTooLarge {
        /// The chunk's data length.
        len: usize,
        /// The maximum ([`crate::MAX_CHUNK_DATA`]).
        max: usize,
    },
    /// Bytes follow a complete frame where exactly one frame was expected.
    #[error("{extra} trailing bytes after the frame")]
    TrailingFrameBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A compressed payload that does not expand to what it announces
    /// (truncated, corrupt, or of another length).
    #[error("compressed payload does not expand: {reason}")]
    Decompression {
        /// What is wrong.
        reason: String,
    },
    /// A stream header names a role this build does not know.
    #[error("unknown stream role {role}")]
    UnknownStreamRole {
        /// The role byte found on the wire.
        role: u8,
    },
}

impl DecodeError {
    /// The protocol ERROR code a node should send back when a peer's frame fails
    /// to decode with this error.
    pub fn error_code(&self) -> crate::ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => crate::ErrorCode::PROTOCOL_VERSION_MISMATCH,
            _ => crate::ErrorCode::INVALID_MESSAGE,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded payload is larger than `u32::MAX` or the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The encoded payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An `ARTIFACT_CHUNK` or a `SYNC_SNAPSHOT` carries more than 64 KiB of data.
    #[error("chunk of {len} bytes exceeds {max} bytes")]
    ChunkTooLarge {
        /// The chunk's data length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A value could not be represented in MessagePack.
    #[error("cannot encode payload: {0}")]
    Serialize(String),
}
