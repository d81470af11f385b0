//! Signed revocations: one device's statement, under its own device key,
//! that another device is revoked (docs/PROTOCOL.md, "Revocation").
//!
//! The statement signed is a fixed byte layout, so that an implementation
//! in another language builds the same bytes without a MessagePack
//! encoder:
//!
//! ```text
//! "nomade/1 revocation" 0x00      20 bytes (the context, NUL included)
//! revoked device id               20 bytes
//! signer device id                20 bytes
//! cutoff                          u64, big-endian
//! issued_at                       i64, big-endian
//! ```
//!
//! It is signed with the key of the signer's TLS certificate, by the same
//! code that signs its TLS handshakes (any TLS 1.3 signature scheme; the
//! reference signs ECDSA P-256 with SHA-256), and checked against the
//! `SubjectPublicKeyInfo` the record carries, whose SHA-256 must start
//! with the signer's device id.
//!
//! ```
//! use nomade_transport::revocation::{sign_revocation, verify_revocation};
//! use nomade_transport::{DeviceId, DeviceIdentity};
//!
//! let laptop = DeviceIdentity::generate()?;
//! let phone = DeviceId::from_bytes([7; 20]);
//! let record = sign_revocation(&laptop, &phone, 41, 1_764_000_000_000)?;
//! let checked = verify_revocation(&record)?;
//! assert_eq!((checked.revoked, checked.signer, checked.cutoff), (phone, laptop.device_id(), 41));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytes::Bytes;
use nomade_wire::Revocation;
use rustls::SignatureScheme;
use rustls_pki_types::SubjectPublicKeyInfoDer;

use crate::identity::{DeviceId, DeviceIdentity};
use crate::tls::provider;

/// The context that starts every signed statement (NUL included).
pub const REVOCATION_CONTEXT: &[u8; 20] = b"nomade/1 revocation\0";
/// The largest `signer_key` accepted (an RSA-4096 key is about 550 bytes).
pub const MAX_SIGNER_KEY_LEN: usize = 1024;
/// The largest `signature` accepted (RSA-4096: 512 bytes).
pub const MAX_SIGNATURE_LEN: usize = 512;

/// The TLS 1.3 signature schemes a revocation may be signed with: those a
/// device key may have (docs/PROTOCOL.md, "Key pair and certificate").
const SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

/// Why a revocation record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// `revoked` or `signer` is not a device id in its shown form.
    #[error("the record's {field} is not a device id in its shown form")]
    BadDeviceId {
        /// Which field.
        field: &'static str,
    },
    /// A device cannot revoke itself (the record would be its own word
    /// against itself; another device of the set revokes it).
    #[error("a device cannot revoke itself")]
    SelfRevocation,
    /// `signer_key` or `signature` is longer than any real key or signature.
    #[error("the record's {field} is {len} bytes, more than {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// `signer_key` is not the signer's key: its SHA-256 does not start with
    /// the signer's device id.
    #[error("the record's signer_key is not the key of {signer}")]
    KeyMismatch {
        /// The signer named.
        signer: String,
    },
    /// The scheme is not a TLS 1.3 signature scheme a device key may use.
    #[error("signature scheme 0x{0:04x} is not accepted")]
    UnsupportedScheme(u16),
    /// The signature does not verify: forged, altered, or signed by another key.
    #[error("the signature does not verify")]
    BadSignature,
    /// Signing failed (the device key cannot sign with any accepted scheme).
    #[error("could not sign: {0}")]
    Signing(String),
}

/// What a verified record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedRevocation {
    /// The revoked device.
    pub revoked: DeviceId,
    /// The device that signed.
    pub signer: DeviceId,
    /// The last counter of the revoked device's operations the signer keeps.
    pub cutoff: u64,
    /// When it was signed (ms since the Unix epoch, the signer's clock).
    pub issued_at: i64,
}

/// The bytes a revocation signs (see the module docs).
pub fn revocation_statement(
    revoked: &DeviceId,
    signer: &DeviceId,
    cutoff: u64,
    issued_at: i64,
) -> [u8; 76] {
    let mut out = [0u8; 76];
    out[..20].copy_from_slice(REVOCATION_CONTEXT);
    out[20..40].copy_from_slice(revoked.as_bytes());
    out[40..60].copy_from_slice(signer.as_bytes());
    out[60..68].copy_from_slice(&cutoff.to_be_bytes());
    out[68..76].copy_from_slice(&issued_at.to_be_bytes());
    out
}

/// A record by `identity` revoking `revoked`, keeping its operations up
/// to `cutoff`.
pub fn sign_revocation(
    identity: &DeviceIdentity,
    revoked: &DeviceId,
    cutoff: u64,
    issued_at: i64,
) -> Result<Revocation, RevocationError> {
    let signer = identity.device_id();
    if *revoked == signer {
        return Err(RevocationError::SelfRevocation);
    }
    let statement = revocation_statement(revoked, &signer, cutoff, issued_at);
    let (scheme, signature) = identity
        .sign(&statement, &SCHEMES)
        .map_err(|e| RevocationError::Signing(e.to_string()))?;
    Ok(Revocation {
        revoked: revoked.to_string(),
        cutoff,
        issued_at,
        signer: signer.to_string(),
        signer_key: Bytes::from(identity.spki_der()?),
        scheme: u16::from(scheme),
        signature: Bytes::from(signature),
    })
}

/// Checks a record: both ids in their shown form, not a self-revocation,
/// the key the signer's, the signature valid. Says nothing of whether the
/// signer is to be trusted: that is the caller's (a paired device).
pub fn verify_revocation(record: &Revocation) -> Result<VerifiedRevocation, RevocationError> {
    let shown = |s: &str, field| {
        s.parse::<DeviceId>()
            .ok()
            .filter(|id| id.to_string() == s)
            .ok_or(RevocationError::BadDeviceId { field })
    };
    let revoked = shown(&record.revoked, "revoked")?;
    let signer = shown(&record.signer, "signer")?;
    if revoked == signer {
        return Err(RevocationError::SelfRevocation);
    }
    for (field, len, max) in [
        ("signer_key", record.signer_key.len(), MAX_SIGNER_KEY_LEN),
        ("signature", record.signature.len(), MAX_SIGNATURE_LEN),
    ] {
        if len > max {
            return Err(RevocationError::TooLarge { field, len, max });
        }
    }
    if DeviceId::from_spki_der(&record.signer_key) != signer {
        return Err(RevocationError::KeyMismatch {
            signer: record.signer.clone(),
        });
    }
    let scheme = SignatureScheme::from(record.scheme);
    if !SCHEMES.contains(&scheme) {
        return Err(RevocationError::UnsupportedScheme(record.scheme));
    }
    let algs = provider().signature_verification_algorithms;
    let alg = algs
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .and_then(|(_, algs)| algs.first())
        .ok_or(RevocationError::UnsupportedScheme(record.scheme))?;
    let spki = SubjectPublicKeyInfoDer::from(record.signer_key.as_ref());
    let key =
        webpki::RawPublicKeyEntity::try_from(&spki).map_err(|_| RevocationError::BadSignature)?;
    let statement = revocation_statement(&revoked, &signer, record.cutoff, record.issued_at);
    key.verify_signature(*alg, &statement, &record.signature)
        .map_err(|_| RevocationError::BadSignature)?;
    Ok(VerifiedRevocation {
        revoked,
        signer,
        cutoff: record.cutoff,
        issued_at: record.issued_at,
    })
}

impl From<crate::TransportError> for RevocationError {
    fn from(e: crate::TransportError) -> Self {
        RevocationError::Signing(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record() -> (DeviceIdentity, Revocation) {
        let laptop = DeviceIdentity::generate().unwrap();
        let phone = DeviceIdentity::generate().unwrap().device_id();
        let r = sign_revocation(&laptop, &phone, 41, 1_764_000_000_000).unwrap();
        (laptop, r)
    }

    #[test]
    fn a_signed_record_verifies_and_says_what_was_signed() {
        let (laptop, r) = record();
        let v = verify_revocation(&r).unwrap();
        assert_eq!(v.signer, laptop.device_id());
        assert_eq!(v.cutoff, 41);
        assert_eq!(v.issued_at, 1_764_000_000_000);
        assert_eq!(r.scheme, 0x0403, "ECDSA P-256 with SHA-256");
    }

    #[test]
    fn an_altered_record_does_not_verify() {
        let (_, r) = record();
        let other = DeviceIdentity::generate().unwrap();
        let cases: Vec<(Revocation, RevocationError)> = vec![
            (
                Revocation {
                    cutoff: 1_000,
                    ..r.clone()
                },
                RevocationError::BadSignature,
            ),
            (
                Revocation {
                    issued_at: 0,
                    ..r.clone()
                },
                RevocationError::BadSignature,
            ),
            (
                Revocation {
                    revoked: other.device_id().to_string(),
                    ..r.clone()
                },
                RevocationError::BadSignature,
            ),
            // Another key, named as its own signer, did not sign this.
            (
                Revocation {
                    signer: other.device_id().to_string(),
                    signer_key: Bytes::from(other.spki_der().unwrap()),
                    ..r.clone()
                },
                RevocationError::BadSignature,
            ),
            // The key of another device under the signer's name.
            (
                Revocation {
                    signer_key: Bytes::from(other.spki_der().unwrap()),
                    ..r.clone()
                },
                RevocationError::KeyMismatch {
                    signer: r.signer.clone(),
                },
            ),
            (
                Revocation {
                    signature: Bytes::new(),
                    ..r.clone()
                },
                RevocationError::BadSignature,
            ),
            (
                Revocation {
                    scheme: 0x0401, // RSA PKCS#1: not a TLS 1.3 handshake scheme
                    ..r.clone()
                },
                RevocationError::UnsupportedScheme(0x0401),
            ),
            (
                Revocation {
                    signature: Bytes::from(vec![0u8; 600]),
                    ..r.clone()
                },
                RevocationError::TooLarge {
                    field: "signature",
                    len: 600,
                    max: MAX_SIGNATURE_LEN,
                },
            ),
            (
                Revocation {
                    revoked: r.revoked.replace('-', ""),
                    ..r.clone()
                },
                RevocationError::BadDeviceId { field: "revoked" },
            ),
            (
                Revocation {
                    revoked: r.signer.clone(),
                    ..r.clone()
                },
                RevocationError::SelfRevocation,
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(verify_revocation(&bad), Err(why));
        }
    }

    /// The record of the wire's test vectors verifies: what an
    /// implementation in another language checks against.
    #[test]
    fn the_sample_record_verifies() {
        let r = nomade_wire::samples::sample_revocation();
        let v = verify_revocation(&r).unwrap();
        assert_eq!(v.cutoff, 41);
        assert_eq!(v.signer.to_string(), r.signer);
    }

    #[test]
    fn a_device_cannot_sign_its_own_revocation() {
        let me = DeviceIdentity::generate().unwrap();
        assert_eq!(
            sign_revocation(&me, &me.device_id(), 1, 0),
            Err(RevocationError::SelfRevocation)
        );
    }

    #[test]
    fn the_statement_layout_is_fixed() {
        let a = DeviceId::from_bytes([0x11; 20]);
        let b = DeviceId::from_bytes([0x22; 20]);
        let s = revocation_statement(&a, &b, 0x0102, -1);
        assert_eq!(&s[..20], b"nomade/1 revocation\0");
        assert_eq!(&s[20..40], &[0x11; 20]);
        assert_eq!(&s[40..60], &[0x22; 20]);
        assert_eq!(&s[60..68], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&s[68..76], &[0xff; 8]);
    }
}
