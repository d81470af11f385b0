//! Errors of the transport layer.

use std::path::PathBuf;

use crate::identity::DeviceId;

/// Application close codes this crate puts on QUIC connections and streams.
///
/// They reuse the protocol's ERROR codes where one fits, so a peer can report
/// the reason without a frame.
pub mod close_code {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// A frame could not be decoded (`INVALID_MESSAGE`); used to reset a stream.
    pub const INVALID_MESSAGE: u32 = 2;
    /// The peer is not (or no longer) paired (`AUTHENTICATION_FAILED`).
    pub const AUTHENTICATION_FAILED: u32 = 6;
    /// A pairing attempt was refused: wrong or expired code, or no pairing window.
    pub const PAIRING_REFUSED: u32 = 0x100;
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Reading or writing the identity files failed.
    #[error("identity file {path}: {source}")]
    IdentityIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity files exist but cannot be used (bad PEM, key and
    /// certificate that do not match...).
    #[error("identity in {path} is unusable: {reason}")]
    IdentityCorrupt {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    /// A device id string is not 32 base32 characters.
    #[error("invalid device id {input:?}: {reason}")]
    InvalidDeviceId {
        /// The input.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Building the TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the UDP socket or another endpoint-level I/O failed.
    #[error("endpoint I/O: {0}")]
    Io(#[from] std::io::Error),
    /// quinn refused to start a connection (bad address, endpoint stopping...).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed. Authentication failures during
    /// the handshake show up here as a `TransportError` with a TLS alert.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer closed the connection because it does not (or no longer)
    /// accept this device: re-pairing is required.
    #[error("peer refused this device (not paired)")]
    NotPaired,
    /// We refused the peer's certificate during the handshake (unpaired,
    /// unknown or malformed).
    #[error("peer not accepted: {reason}")]
    PeerNotAccepted {
        /// What rustls or the pinning check reported.
        reason: String,
    },
    /// A stream role was opened in the wrong direction (presence and push
    /// are unidirectional, the others bidirectional).
    #[error("{role:?} streams cannot be opened that way")]
    WrongDirection {
        /// The role.
        role: nomade_wire::StreamRole,
    },
    /// The peer presented a certificate whose device id is not the expected one.
    #[error("peer is {actual}, expected {expected}")]
    UnexpectedPeer {
        /// The id the caller asked for.
        expected: DeviceId,
        /// The id the peer proved.
        actual: DeviceId,
    },
    /// A pairing attempt failed: wrong or expired code, or no open window.
    #[error("pairing refused: {0}")]
    PairingRefused(String),
    /// Writing to a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// A stream ended before the expected bytes.
    #[error("stream read: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    /// The stream was already closed locally.
    #[error("stream closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A frame or stream header from the peer could not be decoded; the
    /// stream was ended with an ERROR / reset, the connection lives on.
    #[error("bad input from peer: {0}")]
    Decode(#[from] nomade_wire::DecodeError),
    /// A frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] nomade_wire::EncodeError),
    /// The peer did not complete a message (or stream header) in time; the
    /// stream was reset.
    #[error("peer too slow: no complete message within {0:?}")]
    Deadline(std::time::Duration),
    /// A connect attempt did not finish in time.
    #[error("connect to {addr} timed out")]
    ConnectTimeout {
        /// The address dialed.
        addr: std::net::SocketAddr,
    },
    /// No endpoint could be dialed (all failed or are backing off).
    #[error("no endpoint reachable ({attempts} attempted)")]
    NoEndpointReachable {
        /// How many endpoints were attempted this round.
        attempts: usize,
    },
    /// The peer missed too many heartbeats.
    #[error("peer offline: {missed} heartbeat periods missed")]
    PeerOffline {
        /// Whole periods without a beat.
        missed: u32,
    },
    /// The endpoint was closed.
    #[error("endpoint closed")]
    EndpointClosed,
    /// A relay refused to relay, or the device offered a relayed
    /// connection refused it: `code` says why (`UNREACHABLE`: no direct
    /// connection to the target, or relaying off; `RATE_LIMITED`: the
    /// relay's quota is full; `AUTHENTICATION_FAILED`: not paired;
    /// `INVALID_MESSAGE`: to itself, or over a relayed connection).
    #[error("relay {relay} refused ({}): {reason}", code.name())]
    RelayRefused {
        /// The device asked to relay.
        relay: DeviceId,
        /// The protocol error code it answered.
        code: nomade_wire::ErrorCode,
        /// Its explanation.
        reason: String,
    },
    /// A relay stream broke the protocol (a bad packet length, an
    /// unexpected answer) or ended: the relayed connection is closed.
    #[error("relay stream: {0}")]
    RelayBroken(String),
    /// A relay that cannot be asked for: to this device itself, through the
    /// target itself, or over a connection that is itself relayed.
    #[error("invalid relay: {0}")]
    InvalidRelay(&'static str),
    /// A stream other than an artifact stream, on a bulk connection
    /// ([`crate::Connection::is_bulk`]), which carries artifact streams only.
    #[error("a bulk connection carries artifact streams only, not {0:?}")]
    NotOnBulk(nomade_wire::StreamRole),
}

impl TransportError {
    /// Whether the connection to the peer went away (closed, timed out,
    /// reset, the peer silent): routine for devices that sleep or roam, and
    /// what a reconnection fixes, unlike bad input or a refused device.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            TransportError::Connection(_)
                | TransportError::PeerOffline { .. }
                | TransportError::Read(quinn::ReadError::ConnectionLost(_))
                | TransportError::Write(quinn::WriteError::ConnectionLost(_))
                | TransportError::ReadExact(quinn::ReadExactError::ReadError(
                    quinn::ReadError::ConnectionLost(_),
                ))
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_told_apart_from_other_failures() {
        let lost = quinn::ConnectionError::TimedOut;
        assert!(TransportError::Connection(lost.clone()).is_connection_loss());
        assert!(
            TransportError::Read(quinn::ReadError::ConnectionLost(lost.clone()))
                .is_connection_loss()
        );
        assert!(
            TransportError::Write(quinn::WriteError::ConnectionLost(lost.clone()))
                .is_connection_loss()
        );
        assert!(TransportError::ReadExact(quinn::ReadExactError::ReadError(
            quinn::ReadError::ConnectionLost(lost)
        ))
        .is_connection_loss());
        assert!(TransportError::PeerOffline { missed: 3 }.is_connection_loss());
        assert!(!TransportError::NotPaired.is_connection_loss());
        assert!(!TransportError::Deadline(std::time::Duration::from_secs(1)).is_connection_loss());
        assert!(
            !TransportError::Read(quinn::ReadError::Reset(quinn::VarInt::from_u32(7)))
                .is_connection_loss()
        );
    }
}
