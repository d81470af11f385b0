//! The HELLO / HELLO_ACK exchange on the control stream, sans-IO.
//!
//! The dialer sends `HELLO`; the acceptor checks it and answers `HELLO_ACK`
//! (or `ERROR`); the dialer checks the answer. Both check that the device id
//! announced in the message is the one TLS authenticated, and that the
//! protocol versions match. The announced id may be written in either text
//! form (32 characters, or 39 with dashes, in either case): it is compared as
//! a device id, not as a string.

use nomade_transport::DeviceId;
use nomade_wire::{ErrorCode, ErrorMessage, Hash32, Hello, HelloAck, PROTOCOL_VERSION};

/// The capability of serving and pulling operations on sync streams.
pub const CRDT_SYNC: &str = "crdt-sync";
/// The capability of serving artifacts on artifact streams.
pub const ARTIFACT_TRANSFER: &str = "artifact-transfer";
/// The capability of sending and reading a presence stream (heartbeats).
pub const PRESENCE: &str = "presence";

/// The capability of taking `HAVE` on the sync streams it pushes on (what
/// the puller holds from elsewhere, so that it is not relayed).
pub const SYNC_HAVE: &str = "sync-have";

/// The capability of taking frames whose payload is compressed (LZ4,
/// docs/PROTOCOL.md, "Compressed frames").
pub const LZ4: &str = "lz4";

/// The capability of reading revocation streams (docs/PROTOCOL.md,
/// "Revocation").
pub const REVOCATION: &str = "revocation";

/// The capability of answering an artifact request for the metadata only
/// (`ARTIFACT_REQUEST.metadata_only`).
pub const ARTIFACT_METADATA: &str = "artifact-metadata";

/// The capability of taking a subscription in `SYNC_REQUEST` (sending the
/// operations of matching entities only, and `skip`s for the others;
/// docs/PROTOCOL.md, "Subscriptions").
pub const SUBSCRIPTIONS: &str = "subscriptions";

/// The capability of answering an artifact request for a range of chunks
/// (`ARTIFACT_REQUEST.end_before`): a fetcher takes the rest from another
/// holder at the same time.
pub const ARTIFACT_RANGES: &str = "artifact-ranges";

/// The capability of taking `ARTIFACT_METADATA.recipient_keys`: a device
/// that announces it is served restricted artifacts (sealed for some
/// devices only), and keeps and passes on those it is not a recipient of
/// without being able to open them (docs/PROTOCOL.md, "Sealed relays").
pub const SEALED_RELAY: &str = "sealed-relay";

/// The capability of serving relay streams: being asked to relay a
/// connection between two paired devices (which it may refuse, relaying
/// off, with `UNREACHABLE`), and accepting a relayed connection offered to
/// it (`nomade_transport::relay`).
pub const RELAY: &str = "relay";

/// The capability of bulk connections: the dialer announces that it can
/// open one, the responder names its bulk endpoint's port in `HELLO_ACK`
/// (`bulk_port`); artifact streams then go on it (docs/PROTOCOL.md, "Bulk
/// connections"). Announced only by a device that runs a bulk endpoint.
pub const BULK: &str = "bulk";

/// Capabilities this node always announces (and [`BULK`] when it runs a
/// bulk endpoint).
pub const CAPABILITIES: [&str; 11] = [
    CRDT_SYNC,
    ARTIFACT_TRANSFER,
    PRESENCE,
    SYNC_HAVE,
    LZ4,
    REVOCATION,
    ARTIFACT_METADATA,
    SUBSCRIPTIONS,
    ARTIFACT_RANGES,
    SEALED_RELAY,
    RELAY,
];

/// What a node says about itself in HELLO / HELLO_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    /// Its device id.
    pub device_id: String,
    /// Its name.
    pub device_name: String,
    /// Its current state hash.
    pub state_hash: Hash32,
    /// The port of its bulk endpoint, offered on this connection: `None`
    /// when it runs none, or on a relayed connection.
    pub bulk_port: Option<u16>,
}

impl LocalInfo {
    /// The capabilities it announces.
    fn capabilities(&self) -> Vec<String> {
        let bulk = self.bulk_port.map(|_| BULK);
        CAPABILITIES
            .iter()
            .copied()
            .chain(bulk)
            .map(str::to_string)
            .collect()
    }
}

/// What the handshake established about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's device id: the TLS-authenticated one, which the message
    /// announced (in whichever text form).
    pub device_id: DeviceId,
    /// The peer's name.
    pub device_name: String,
    /// The peer's capabilities.
    pub capabilities: Vec<String>,
    /// Whether the two states differed at handshake time.
    pub sync_required: bool,
    /// The port of the responder's bulk endpoint (the dialer's view only:
    /// a responder offers one, a dialer does not).
    pub bulk_port: Option<u16>,
}

impl PeerInfo {
    /// Whether the peer announced `capability` (one of [`CAPABILITIES`]).
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version: one side must be updated.
    #[error("the peer speaks protocol version {theirs}, this node speaks {ours}: update the older device")]
    VersionMismatch {
        /// The peer's version.
        theirs: u8,
        /// Ours.
        ours: u8,
    },
    /// The device id in the message is not the one TLS authenticated.
    #[error("the peer announced device id {announced} but authenticated as {authenticated}")]
    IdentityMismatch {
        /// What the message said.
        announced: String,
        /// What TLS proved.
        authenticated: String,
    },
    /// The peer answered with an ERROR.
    #[error("the peer refused the handshake: {} ({})", .0.error_message, .0.error_code.name())]
    Refused(ErrorMessage),
    /// The peer sent something other than the expected message.
    #[error("unexpected {0} during the handshake")]
    Unexpected(&'static str),
}

impl HandshakeError {
    /// The ERROR to send the peer for this failure.
    pub fn to_error_message(&self) -> ErrorMessage {
        let error_code = match self {
            HandshakeError::VersionMismatch { .. } => ErrorCode::PROTOCOL_VERSION_MISMATCH,
            HandshakeError::IdentityMismatch { .. } => ErrorCode::AUTHENTICATION_FAILED,
            HandshakeError::Refused(e) => e.error_code,
            HandshakeError::Unexpected(_) => ErrorCode::INVALID_MESSAGE,
        };
        ErrorMessage {
            error_code,
            error_message: self.to_string(),
            related_message_id: None,
        }
    }

    /// True when retrying cannot help until the user acts.
    pub fn is_permanent(&self) -> bool {
        match self {
            HandshakeError::VersionMismatch { .. } | HandshakeError::IdentityMismatch { .. } => {
                true
            }
            HandshakeError::Refused(e) => e.error_code.is_permanent(),
            HandshakeError::Unexpected(_) => false,
        }
    }
}

/// The dialer's first message.
pub fn hello(local: &LocalInfo) -> Hello {
    Hello {
        device_id: local.device_id.clone(),
        device_name: local.device_name.clone(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: local.capabilities(),
        sync_state_hash: local.state_hash,
    }
}

fn check_peer(
    version: u8,
    announced: &str,
    authenticated: &DeviceId,
) -> Result<(), HandshakeError> {
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            theirs: version,
            ours: PROTOCOL_VERSION,
        });
    }
    if announced.parse::<DeviceId>().ok().as_ref() != Some(authenticated) {
        return Err(HandshakeError::IdentityMismatch {
            announced: announced.chars().take(80).collect(),
            authenticated: authenticated.to_string(),
        });
    }
    Ok(())
}

/// The acceptor's answer to a `HELLO` from the TLS-authenticated `peer_id`.
pub fn answer_hello(
    local: &LocalInfo,
    hello: &Hello,
    peer_id: &DeviceId,
) -> Result<(HelloAck, PeerInfo), HandshakeError> {
    check_peer(hello.protocol_version, &hello.device_id, peer_id)?;
    let sync_required = hello.sync_state_hash != local.state_hash;
    let peer = PeerInfo {
        device_id: *peer_id,
        device_name: hello.device_name.clone(),
        capabilities: hello.capabilities.clone(),
        sync_required,
        bulk_port: None,
    };
    let ack = HelloAck {
        device_id: local.device_id.clone(),
        device_name: local.device_name.clone(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: local.capabilities(),
        sync_state_hash: local.state_hash,
        sync_required,
        // Only to a dialer that can use it.
        bulk_port: local.bulk_port.filter(|_| peer.has(BULK)),
    };
    Ok((ack, peer))
}

/// The dialer's check of the acceptor's `HELLO_ACK`.
pub fn check_hello_ack(ack: &HelloAck, peer_id: &DeviceId) -> Result<PeerInfo, HandshakeError> {
    check_peer(ack.protocol_version, &ack.device_id, peer_id)?;
    let mut peer = PeerInfo {
        device_id: *peer_id,
        device_name: ack.device_name.clone(),
        capabilities: ack.capabilities.clone(),
        sync_required: ack.sync_required,
        bulk_port: None,
    };
    // A port without the capability, or port 0, is not an offer.
    peer.bulk_port = ack.bulk_port.filter(|&p| p != 0 && peer.has(BULK));
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 20])
    }

    fn info(n: u8, hash: u8) -> LocalInfo {
        LocalInfo {
            device_id: id(n).to_string(),
            device_name: format!("device {n}"),
            state_hash: Hash32::from([hash; 32]),
            bulk_port: None,
        }
    }

    fn with_bulk(mut info: LocalInfo, port: u16) -> LocalInfo {
        info.bulk_port = Some(port);
        info
    }

    /// The responder names its bulk port to a dialer that announced
    /// `"bulk"`, and only to such a dialer; the dialer takes it only with
    /// the capability, and never port 0.
    #[test]
    fn the_bulk_port_is_offered_only_to_a_dialer_that_can_use_it() {
        let dialer = with_bulk(info(1, 1), 9);
        let responder = with_bulk(info(2, 1), 4_000);
        let h = hello(&dialer);
        assert!(h.capabilities.iter().any(|c| c == BULK));
        let (ack, _) = answer_hello(&responder, &h, &id(1)).unwrap();
        assert_eq!(ack.bulk_port, Some(4_000));
        assert_eq!(
            check_hello_ack(&ack, &id(2)).unwrap().bulk_port,
            Some(4_000)
        );
        // A dialer without a bulk endpoint is not offered one.
        let (ack, _) = answer_hello(&responder, &hello(&info(1, 1)), &id(1)).unwrap();
        assert_eq!(ack.bulk_port, None);
        assert!(ack.capabilities.iter().any(|c| c == BULK));
        // A responder without one offers none, nor announces it.
        let (ack, _) = answer_hello(&info(2, 1), &h, &id(1)).unwrap();
        assert_eq!(ack.bulk_port, None);
        assert!(!ack.capabilities.iter().any(|c| c == BULK));
        // What the dialer does not take: a port without the capability, 0.
        let mut odd = ack.clone();
        odd.bulk_port = Some(4_000);
        assert_eq!(check_hello_ack(&odd, &id(2)).unwrap().bulk_port, None);
        let (mut zero, _) = answer_hello(&responder, &h, &id(1)).unwrap();
        zero.bulk_port = Some(0);
        assert_eq!(check_hello_ack(&zero, &id(2)).unwrap().bulk_port, None);
    }

    #[test]
    fn equal_hashes_need_no_sync_and_different_ones_do() {
        let a = info(1, 1);
        let (ack, peer) = answer_hello(&info(2, 1), &hello(&a), &id(1)).unwrap();
        assert!(!ack.sync_required);
        assert_eq!(peer.device_id, id(1));
        let (ack, _) = answer_hello(&info(2, 2), &hello(&a), &id(1)).unwrap();
        assert!(ack.sync_required);
        let peer = check_hello_ack(&ack, &id(2)).unwrap();
        assert!(peer.sync_required);
        assert_eq!(peer.device_name, "device 2");
    }

    #[test]
    fn version_mismatch_is_permanent_and_maps_to_its_code() {
        let mut h = hello(&info(1, 1));
        h.protocol_version = 2;
        let err = answer_hello(&info(2, 1), &h, &id(1)).unwrap_err();
        assert_eq!(err, HandshakeError::VersionMismatch { theirs: 2, ours: 1 });
        assert!(err.is_permanent());
        assert_eq!(
            err.to_error_message().error_code,
            ErrorCode::PROTOCOL_VERSION_MISMATCH
        );
    }

    #[test]
    fn announced_id_must_match_the_tls_identity() {
        let err = answer_hello(&info(2, 1), &hello(&info(3, 1)), &id(1)).unwrap_err();
        assert!(matches!(err, HandshakeError::IdentityMismatch { .. }));
        assert_eq!(
            err.to_error_message().error_code,
            ErrorCode::AUTHENTICATION_FAILED
        );
        let mut not_an_id = hello(&info(1, 1));
        not_an_id.device_id = "mallory".into();
        assert!(matches!(
            answer_hello(&info(2, 1), &not_an_id, &id(1)),
            Err(HandshakeError::IdentityMismatch { .. })
        ));
        let (ack, _) = answer_hello(&info(2, 1), &hello(&info(1, 1)), &id(1)).unwrap();
        assert!(check_hello_ack(&ack, &id(3)).is_err());
    }

    /// Issue: a HELLO carrying the 32-character form (or upper case) was
    /// refused with a permanent AUTHENTICATION_FAILED, though a parser must
    /// accept either form.
    #[test]
    fn the_announced_id_is_accepted_in_either_text_form_and_either_case() {
        let me = id(1);
        for form in [
            me.to_string(),
            me.to_compact(),
            me.to_string().to_ascii_uppercase(),
            me.to_compact().to_ascii_uppercase(),
        ] {
            let mut h = hello(&info(1, 1));
            h.device_id = form.clone();
            let (mut ack, peer) =
                answer_hello(&info(2, 1), &h, &me).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(peer.device_id, me, "{form}");
            ack.device_id = id(2).to_compact();
            assert_eq!(check_hello_ack(&ack, &id(2)).unwrap().device_id, id(2));
        }
    }
}
