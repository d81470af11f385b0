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
