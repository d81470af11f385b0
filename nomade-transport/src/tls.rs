//! rustls configuration: TLS 1.3 only, ALPN `nomade/1`, client certificates
//! required, and verifiers that pin peers to the [`PairedSet`].
//!
//! The verifiers never look at names, issuers or validity dates: a peer is
//! identified by its key alone ([`DeviceId`]). They still verify the TLS 1.3
//! handshake signature with the certificate's key, so holding a copy of a
//! paired device's certificate is not enough to impersonate it.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::Result;
use crate::identity::{DeviceId, DeviceIdentity};
use crate::pairing::PairingSlot;

/// The ALPN protocol id of Nomade v1.
pub const ALPN: &[u8] = b"nomade/1";
/// The largest end-entity certificate accepted from a peer (16 KiB).
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// The TLS server name a dialer sends. It is not checked: peers are pinned by key.
pub const SERVER_NAME: &str = "nomade";

/// The set of paired device ids, shared by the verifiers of an endpoint and
/// changeable while it runs (cloning shares the same set), and the revoked
/// ones, which are refused for good: never paired again, by code or out
/// of band (a revoked device comes back only with a new identity).
#[derive(Clone, Default)]
pub struct PairedSet(Arc<RwLock<Sets>>);

#[derive(Default)]
struct Sets {
    paired: HashSet<DeviceId>,
    revoked: HashSet<DeviceId>,
}

impl fmt::Debug for PairedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.list()).finish()
    }
}

impl PairedSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `id`; returns whether it was new. A revoked id is not added.
    pub fn insert(&self, id: DeviceId) -> bool {
        let mut sets = self.write();
        !sets.revoked.contains(&id) && sets.paired.insert(id)
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&self, id: &DeviceId) -> bool {
        self.write().paired.remove(id)
    }

    /// Removes `id` and refuses it from now on; returns whether it was
    /// paired.
    pub fn revoke(&self, id: DeviceId) -> bool {
        let mut sets = self.write();
        sets.revoked.insert(id);
        sets.paired.remove(&id)
    }

    /// Whether `id` was revoked.
    pub fn is_revoked(&self, id: &DeviceId) -> bool {
        self.read().revoked.contains(id)
    }

    /// Whether `id` is paired.
    pub fn contains(&self, id: &DeviceId) -> bool {
        self.read().paired.contains(id)
    }

    /// A snapshot of the paired ids, sorted.
    pub fn list(&self) -> Vec<DeviceId> {
        let mut v: Vec<DeviceId> = self.read().paired.iter().copied().collect();
        v.sort();
        v
    }
}

/// The crypto provider used everywhere: rustls' `ring` provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The device id of a peer's end-entity certificate, or the rustls error that
/// fails the handshake. Intermediates are ignored by the callers.
pub fn check_end_entity(cert: &CertificateDer<'_>) -> Result<DeviceId, rustls::Error> {
    if cert.len() > MAX_CERT_LEN {
        tracing::warn!(
            len = cert.len(),
            max = MAX_CERT_LEN,
            "peer certificate too large"
        );
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    }
    DeviceId::from_cert_der(cert).map_err(|e| {
        tracing::warn!(error = %e, "malformed peer certificate");
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
    })
}

fn not_paired(id: DeviceId) -> rustls::Error {
    tracing::warn!(peer = %id, "refused handshake: device not paired");
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// How a dialer accepts the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAcceptance {
    /// Any paired device; if `expected` is set, only that one.
    Paired {
        /// The device the caller means to reach.
        expected: Option<DeviceId>,
    },
    /// Any certificate whose handshake signature verifies: used only to join
    /// with a pairing code, where the code exchange authenticates the peer.
    Pairing,
}

/// Verifies the server's certificate on the dialing side.
pub struct PeerServerVerifier {
    paired: PairedSet,
    mode: ServerAcceptance,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerServerVerifier")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PeerServerVerifier {
    /// A verifier checking against `paired` in `mode`.
    pub fn new(paired: PairedSet, mode: ServerAcceptance) -> Self {
        PeerServerVerifier {
            paired,
            mode,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = check_end_entity(end_entity)?;
        match self.mode {
            ServerAcceptance::Pairing if self.paired.is_revoked(&id) => {
                tracing::warn!(peer = %id, "refused to pair: device revoked");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            ServerAcceptance::Pairing => Ok(ServerCertVerified::assertion()),
            ServerAcceptance::Paired { expected } => {
                if let Some(expected) = expected {
                    if expected != id {
                        tracing::warn!(peer = %id, %expected, "server is not the expected device");
                        return Err(rustls::Error::InvalidCertificate(
                            CertificateError::ApplicationVerificationFailure,
                        ));
                    }
                }
                if self.paired.contains(&id) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(not_paired(id))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies the client's certificate on the accepting side: paired devices,
/// plus one unknown device while a pairing window is open.
pub struct PeerClientVerifier {
    paired: PairedSet,
    pairing: PairingSlot,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClientVerifier").finish_non_exhaustive()
    }
}

impl PeerClientVerifier {
    /// A verifier checking against `paired`, and `pairing` for unknown devices.
    pub fn new(paired: PairedSet, pairing: PairingSlot) -> Self {
        PeerClientVerifier {
            paired,
            pairing,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = check_end_entity(end_entity)?;
        if self.paired.contains(&id) {
            return Ok(ClientCertVerified::assertion());
        }
        if self.paired.is_revoked(&id) {
            tracing::warn!(peer = %id, "refused handshake: device revoked");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if self.pairing.claim(id, std::time::Instant::now()) {
            tracing::info!(peer = %id, "unknown device admitted to the open pairing window");
            return Ok(ClientCertVerified::assertion());
        }
        Err(not_paired(id))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The rustls server configuration of a device.
pub fn server_config(
    identity: &DeviceIdentity,
    verifier: Arc<PeerClientVerifier>,
) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert_der().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The rustls client configuration of a device.
pub fn client_config(
    identity: &DeviceIdentity,
    verifier: Arc<PeerServerVerifier>,
) -> Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::pairing::{PairingCode, PairingWindow};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    /// BAD_INPUTS #4: only the end-entity certificate of a chain counts.
    #[test]
    fn client_verifier_pins_paired_ids_and_ignores_intermediates() {
        let me = DeviceIdentity::generate().expect("id");
        let other = DeviceIdentity::generate().expect("id");
        let paired = PairedSet::new();
        let v = PeerClientVerifier::new(paired.clone(), PairingSlot::default());
        let junk = CertificateDer::from(vec![0u8; 40_000]);
        assert!(v
            .verify_client_cert(me.cert_der(), std::slice::from_ref(&junk), now())
            .is_err());
        paired.insert(me.device_id());
        // Changes apply without rebuilding anything; intermediates never count.
        assert!(v
            .verify_client_cert(me.cert_der(), &[junk, other.cert_der().clone()], now())
            .is_ok());
        assert!(v.verify_client_cert(other.cert_der(), &[], now()).is_err());
        paired.remove(&me.device_id());
        assert!(v.verify_client_cert(me.cert_der(), &[], now()).is_err());
    }

    /// BAD_INPUTS #4: an oversized or malformed end-entity certificate is rejected.
    #[test]
    fn oversize_or_malformed_end_entity_is_rejected() {
        let big = CertificateDer::from(vec![0x30u8; MAX_CERT_LEN + 1]);
        assert!(check_end_entity(&big).is_err());
        let garbage = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(check_end_entity(&garbage).is_err());
        let me = DeviceIdentity::generate().expect("id");
        assert_eq!(check_end_entity(me.cert_der()).expect("ok"), me.device_id());
    }

    #[test]
    fn pairing_window_admits_exactly_one_unknown_device() {
        let a = DeviceIdentity::generate().expect("id");
        let b = DeviceIdentity::generate().expect("id");
        let slot = PairingSlot::default();
        let v = PeerClientVerifier::new(PairedSet::new(), slot.clone());
        assert!(v.verify_client_cert(a.cert_der(), &[], now()).is_err());
        let code = PairingCode::parse("abcdefgh").expect("code");
        slot.open(PairingWindow::open(
            code,
            Instant::now(),
            Duration::from_secs(60),
        ));
        assert!(v.verify_client_cert(a.cert_der(), &[], now()).is_ok());
        assert!(v.verify_client_cert(b.cert_der(), &[], now()).is_err());
        assert!(slot.is_claimed_by(&a.device_id()));
    }

    /// A revoked device is refused for good: not paired again, not admitted
    /// by an open pairing window on either side.
    #[test]
    fn a_revoked_device_is_refused_even_by_a_pairing_window() {
        let a = DeviceIdentity::generate().expect("id");
        let paired = PairedSet::new();
        paired.insert(a.device_id());
        assert!(paired.revoke(a.device_id()));
        assert!(paired.is_revoked(&a.device_id()));
        assert!(!paired.insert(a.device_id()), "never paired again");
        assert!(!paired.contains(&a.device_id()));
        let slot = PairingSlot::default();
        let v = PeerClientVerifier::new(paired.clone(), slot.clone());
        let code = PairingCode::parse("abcdefgh").expect("code");
        slot.open(PairingWindow::open(
            code,
            Instant::now(),
            Duration::from_secs(60),
        ));
        assert!(v.verify_client_cert(a.cert_der(), &[], now()).is_err());
        assert!(!slot.is_claimed_by(&a.device_id()), "the window stays open");
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        assert!(PeerServerVerifier::new(paired, ServerAcceptance::Pairing)
            .verify_server_cert(a.cert_der(), &[], &name, &[], now())
            .is_err());
    }

    #[test]
    fn server_verifier_checks_expected_and_paired() {
        let a = DeviceIdentity::generate().expect("id");
        let b = DeviceIdentity::generate().expect("id");
        let paired = PairedSet::new();
        paired.insert(a.device_id());
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let check = |mode, cert: &CertificateDer<'_>| {
            PeerServerVerifier::new(paired.clone(), mode)
                .verify_server_cert(cert, &[], &name, &[], now())
                .is_ok()
        };
        assert!(check(
            ServerAcceptance::Paired { expected: None },
            a.cert_der()
        ));
        assert!(check(
            ServerAcceptance::Paired {
                expected: Some(a.device_id())
            },
            a.cert_der()
        ));
        assert!(!check(
            ServerAcceptance::Paired {
                expected: Some(b.device_id())
            },
            a.cert_der()
        ));
        assert!(!check(
            ServerAcceptance::Paired { expected: None },
            b.cert_der()
        ));
        assert!(check(ServerAcceptance::Pairing, b.cert_der()));
    }
}
