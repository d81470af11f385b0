//! Errors of the node.

/// Why the node's database could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No room to store more: the disk is full, or a quota or file-size
    /// limit was reached. Nothing was acknowledged; the node goes on once
    /// space is freed.
    #[error("no room to store data (free some space; nothing was acknowledged): {0}")]
    Full(std::io::Error),
    /// The disk refused a read or write. Nothing was acknowledged.
    #[error("storage I/O error: {0}")]
    Io(std::io::Error),
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
    /// The database was written in another store format: by an older
    /// Nomade (its operations are of an earlier protocol revision and cannot
    /// be converted) or by a newer one. Nothing was changed.
    #[error("{}", format_advice(*found, *supported))]
    Format {
        /// The format found.
        found: u32,
        /// The format this build reads and writes.
        supported: u32,
    },
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// What to do about a database of another format.
fn format_advice(found: u32, supported: u32) -> String {
    if found < supported {
        format!(
            "the database was written by an older Nomade (store format {found}; this build \
             reads {supported}) and its operations cannot be converted: move nomade.redb out \
             of the data directory and start again; the device keeps its identity, pairings \
             must be made again, and a paired device sends everything back"
        )
    } else {
        format!(
            "the database was written by a newer Nomade (store format {found}; this build \
             reads {supported}): update Nomade"
        )
    }
}

impl StoreError {
    /// The error for a failed read or write: [`StoreError::Full`] when the
    /// disk (or a quota or file-size limit) is full, [`StoreError::Io`]
    /// otherwise.
    pub fn from_io(e: std::io::Error) -> StoreError {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
                StoreError::Full(e)
            }
            _ => StoreError::Io(e),
        }
    }

    /// Whether the database must be reopened before its next use (redb
    /// refuses every transaction after a failed write).
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::Io(_))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::from_io(e)
    }
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
    /// A peer's snapshot was not adopted (nothing changed): the reason.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
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
    /// The peer refused this device: it does not (or no longer) have it
    /// paired. Pair the two again.
    #[error("peer {peer} refused this device ({reason}): pair the two devices again")]
    Refused {
        /// The peer.
        peer: String,
        /// What it said.
        reason: String,
    },
    /// The state moved on under an edit computed from an older one; nothing
    /// was changed.
    #[error("{0}")]
    Conflict(String),
    /// A request that cannot be carried out as asked (an empty name, a
    /// position past the end...); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A revocation was refused (see [`crate::revocations`]); nothing changed.
    #[error(transparent)]
    Revocation(#[from] crate::revocations::RevocationRefused),
    /// A subscription pattern was refused (malformed, too long, too many).
    #[error(transparent)]
    Subscription(#[from] nomade_crdt::SubscriptionError),
    /// A local edit of an entity this device does not subscribe to: it
    /// does not hold it, so an edit would not follow its history.
    /// Subscribe to it first; nothing was changed.
    #[error("{entity_type}:{entity_id} is not in this device's subscription ({subscription}): subscribe to it first")]
    NotSubscribed {
        /// The entity's type, as on the wire.
        entity_type: &'static str,
        /// The entity's id.
        entity_id: String,
        /// The subscription, as patterns.
        subscription: String,
    },
    /// An artifact was to be sealed for a device whose artifact key this
    /// device has not learned yet: it learns it from the device itself, at
    /// the start of each session with it. Connect to it once; nothing was
    /// stored.
    #[error("device {device} has not told this device its artifact key yet: connect to it once, then put the artifact again")]
    NoArtifactKey {
        /// The device.
        device: String,
    },
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
    fn a_full_disk_is_its_own_error() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::FileTooLarge,
        ] {
            let e = StoreError::from(Error::from(kind));
            assert!(matches!(e, StoreError::Full(_)), "{kind:?}: {e:?}");
            assert!(e.to_string().contains("free some space"), "{e}");
            assert!(e.needs_reopen());
        }
        let e = StoreError::from(Error::from(ErrorKind::PermissionDenied));
        assert!(matches!(e, StoreError::Io(_)), "{e:?}");
        assert!(e.needs_reopen());
        assert!(!StoreError::Locked.needs_reopen());
    }

    #[test]
    fn only_a_transport_connection_loss_is_one() {
        let lost = nomade_transport::TransportError::Connection(quinn::ConnectionError::TimedOut);
        assert!(NodeError::from(lost).is_connection_loss());
        assert!(!NodeError::from(nomade_transport::TransportError::NotPaired).is_connection_loss());
        assert!(!NodeError::NotFound("artifact".into()).is_connection_loss());
    }
}
