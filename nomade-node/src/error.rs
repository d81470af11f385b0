//! Errors of the node.

/// Why the node's database could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk refused a read or write (for example: disk full). Nothing was
    /// acknowledged.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The database file is damaged or is not a Nomade database.
    #[error("the database is corrupt or unreadable: {what}")]
    Corrupt {
        /// What was found damaged.
        what: String,
    },
    /// Another process has the database open (is `nomade serve` running?).
    #[error(
        "the database is in use by another process (is a node already running on this directory?)"
    )]
    Locked,
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The database failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An edit or operation was refused by the CRDT layer.
    #[error(transparent)]
    Crdt(#[from] nomade_crdt::CrdtError),
    /// An operation is too large to travel in one frame.
    #[error("operation too large to send: {0}")]
    TooLarge(#[from] nomade_wire::EncodeError),
    /// The stored operation log could not be replayed.
    #[error("the operation log is corrupt: {0}")]
    CorruptLog(String),
    /// The network layer failed.
    #[error(transparent)]
    Transport(#[from] nomade_transport::TransportError),
    /// The artifact layer failed.
    #[error(transparent)]
    Artifact(#[from] nomade_artifact::ArtifactError),
    /// A background task of the node (applying operations, running an
    /// artifact transfer) panicked or was cancelled; nothing it was doing was
    /// acknowledged.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A peer broke the protocol or reported an error.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer's device id.
        peer: String,
        /// What happened.
        reason: String,
    },
    /// The peer speaks another protocol version: update one of the devices.
    #[error("peer {peer} speaks protocol version {theirs}, this device speaks {ours}: update the older device")]
    VersionMismatch {
        /// The peer.
        peer: String,
        /// Its version.
        theirs: u8,
        /// Ours.
        ours: u8,
    },
    /// Local file I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Not found (an entity, a peer, an artifact).
    #[error("{0} not found")]
    NotFound(String),
}

impl NodeError {
    /// Whether the connection to the peer went away: the work resumes when
    /// the peer is back (see [`nomade_transport::TransportError::is_connection_loss`]).
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, NodeError::Transport(e) if e.is_connection_loss())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_transport_connection_loss_is_one() {
        let lost = nomade_transport::TransportError::Connection(quinn::ConnectionError::TimedOut);
        assert!(NodeError::from(lost).is_connection_loss());
        assert!(!NodeError::from(nomade_transport::TransportError::NotPaired).is_connection_loss());
        assert!(!NodeError::NotFound("artifact".into()).is_connection_loss());
    }
}
