//! The crate's error type.

use nomade_wire::{ErrorCode, ErrorMessage};

use crate::chunk::ArtifactId;

/// Everything that can go wrong in the artifact store or a transfer.
///
/// Whatever the variant, no unverified byte was returned to the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The artifact is not in the store (or the peer does not hold it).
    #[error("artifact {id} not found")]
    NotFound {
        /// The artifact asked for.
        id: ArtifactId,
    },
    /// The artifact is already complete in the store; there is nothing to fetch.
    #[error("artifact {id} is already stored")]
    AlreadyStored {
        /// The artifact.
        id: ArtifactId,
    },
    /// A receiver for this artifact is already running on this store.
    #[error("a transfer of artifact {id} is already in progress")]
    TransferInProgress {
        /// The artifact.
        id: ArtifactId,
    },
    /// This device's key is not among the artifact's recipients (`encrypted_for`).
    #[error("this device is not a recipient of artifact {id}")]
    NotARecipient {
        /// The artifact.
        id: ArtifactId,
    },
    /// A stored chunk failed authentication or its plaintext hash: the file was
    /// modified (or chunks swapped or reordered). Re-fetch the artifact.
    #[error("stored chunk {index} failed authentication")]
    Tampered {
        /// Index of the chunk that failed.
        index: u32,
    },
    /// A stored data file is shorter than its header says.
    #[error("data file truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The SHA-256 of the whole artifact is not its id.
    #[error("artifact hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The artifact id (what the content should hash to).
        expected: ArtifactId,
        /// What it hashed to.
        actual: ArtifactId,
    },
    /// A received chunk does not verify: its plaintext does not match its
    /// `chunk_hash`, or, sealed, it fails authentication under the data key.
    /// Nothing was stored for it; the transfer can resume from that chunk.
    #[error("chunk {index} failed verification (seal or chunk_hash)")]
    ChunkHashMismatch {
        /// The chunk index.
        index: u32,
    },
    /// Storing this would exceed the store's quota; nothing was written.
    #[error("quota exceeded: need {need} bytes, {available} available")]
    QuotaExceeded {
        /// Bytes needed on disk.
        need: u64,
        /// Bytes left under the quota.
        available: u64,
    },
    /// A received chunk is larger than 64 KiB.
    #[error("chunk of {len} bytes exceeds the maximum of {max}")]
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
        /// The maximum (65,536).
        max: usize,
    },
    /// A received chunk is out of order, of the wrong length for its position,
    /// or wrongly flagged final.
    #[error("bad chunk {index}: {reason}")]
    BadChunk {
        /// The chunk index received.
        index: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// Metadata (received, or a stored header) is inconsistent or absurd.
    #[error("bad artifact metadata: {0}")]
    BadMetadata(String),
    /// The device key file is unreadable or malformed.
    #[error("bad device key file: {0}")]
    BadKeyFile(String),
    /// The peer broke the transfer protocol (unexpected message, wrong id).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer reported an error with an ERROR message.
    #[error("peer error {code:?}: {message}")]
    Peer {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
    /// A file system error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ArtifactError {
    /// The wire error code to report this error to the peer of a transfer.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ArtifactError::NotFound { .. } | ArtifactError::NotARecipient { .. } => {
                ErrorCode::ARTIFACT_NOT_FOUND
            }
            ArtifactError::QuotaExceeded { .. } => ErrorCode::QUOTA_EXCEEDED,
            ArtifactError::HashMismatch { .. }
            | ArtifactError::ChunkHashMismatch { .. }
            | ArtifactError::ChunkTooLarge { .. }
            | ArtifactError::BadChunk { .. }
            | ArtifactError::BadMetadata(_)
            | ArtifactError::Protocol(_) => ErrorCode::INVALID_MESSAGE,
            _ => ErrorCode::UNKNOWN_ERROR,
        }
    }

    /// An ERROR message describing this error, to send to the peer.
    pub fn to_error_message(&self) -> ErrorMessage {
        ErrorMessage {
            error_code: self.error_code(),
            error_message: self.to_string(),
            related_message_id: None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;
