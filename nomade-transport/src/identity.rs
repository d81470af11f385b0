//! Device identity: a long-lived key pair, its self-signed certificate, and
//! the [`DeviceId`] derived from the public key.
//!
//! `device_id = base32_lower_nopad(SHA-256(SubjectPublicKeyInfo DER)[..20])`,
//! shown as 8 groups of 4 characters joined by `-`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Result, TransportError};

/// Number of hash bytes kept in a [`DeviceId`].
pub const DEVICE_ID_LEN: usize = 20;

/// File name of the private key (PKCS#8 PEM, mode 0600) in the identity directory.
pub const KEY_FILE: &str = "device.key";
/// File name of the self-signed certificate (PEM) in the identity directory.
pub const CERT_FILE: &str = "device.crt";

/// The identity of a device: the first 20 bytes of SHA-256 over its public key
/// (the DER `SubjectPublicKeyInfo` of its certificate).
///
/// Displayed as 32 lowercase base32 characters (RFC 4648 alphabet, no padding)
/// in 8 groups of 4 joined by `-`; parsing accepts upper or lower case, with
/// or without the dashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// The id of a public key given as DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(spki: &[u8]) -> DeviceId {
        let digest = Sha256::digest(spki);
        let mut id = [0u8; DEVICE_ID_LEN];
        id.copy_from_slice(&digest[..DEVICE_ID_LEN]);
        DeviceId(id)
    }

    /// The id of the key in an X.509 certificate (DER).
    pub fn from_cert_der(cert: &[u8]) -> Result<DeviceId> {
        Ok(DeviceId::from_spki_der(&spki_of_cert(cert)?))
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.0
    }

    /// Builds an id from its raw 20 bytes.
    pub fn from_bytes(bytes: [u8; DEVICE_ID_LEN]) -> DeviceId {
        DeviceId(bytes)
    }

    /// The 32 base32 characters without dashes (fits a DNS label).
    pub fn to_compact(&self) -> String {
        data_encoding::BASE32_NOPAD
            .encode(&self.0)
            .to_ascii_lowercase()
    }
}

/// The DER `SubjectPublicKeyInfo` of a DER certificate.
pub(crate) fn spki_of_cert(cert: &[u8]) -> Result<Vec<u8>> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TransportError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TransportError::BadCertificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(parsed.tbs_certificate.subject_pki.raw.to_vec())
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_compact();
        for (i, chunk) in s.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // base32 output is ASCII, so every 4-byte chunk is valid UTF-8.
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<DeviceId> {
        let compact: String = s
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let bad = |reason| TransportError::InvalidDeviceId {
            input: s.chars().take(80).collect(),
            reason,
        };
        if compact.len() != 32 {
            return Err(bad("expected 32 base32 characters"));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(compact.as_bytes())
            .map_err(|_| bad("not RFC 4648 base32"))?;
        let arr: [u8; DEVICE_ID_LEN] = bytes.try_into().map_err(|_| bad("expected 20 bytes"))?;
        Ok(DeviceId(arr))
    }
}

/// A device's key pair and self-signed certificate.
pub struct DeviceIdentity {
    id: DeviceId,
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for DeviceIdentity {
    fn clone(&self) -> Self {
        DeviceIdentity {
            id: self.id,
            cert: self.cert.clone(),
            key_pkcs8: self.key_pkcs8.clone(),
        }
    }
}

impl DeviceIdentity {
    /// Loads the identity stored in `dir` (`device.key`, `device.crt`), or makes
    /// a new ECDSA P-256 key pair and self-signed certificate and stores them
    /// (the key with file mode 0600). If only the key exists, a new certificate
    /// is made for it (the id, derived from the key, does not change).
    pub fn load_or_create(dir: &Path) -> Result<DeviceIdentity> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        fs::create_dir_all(dir).map_err(|source| TransportError::IdentityIo {
            path: dir.to_path_buf(),
            source,
        })?;
        let key_pem = match fs::read_to_string(&key_path) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(TransportError::IdentityIo {
                    path: key_path,
                    source,
                })
            }
        };
        let Some(key_pem) = key_pem else {
            if cert_path.exists() {
                return Err(TransportError::IdentityCorrupt {
                    path: cert_path,
                    reason: format!("certificate present without {KEY_FILE}"),
                });
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            let ident = Self::with_new_cert(&key)?;
            write_file(&cert_path, pem_cert(&ident.cert).as_bytes(), 0o644)?;
            tracing::info!(device_id = %ident.id, dir = %dir.display(), "created device identity");
            return Ok(ident);
        };
        let corrupt = |path: &PathBuf, reason: String| TransportError::IdentityCorrupt {
            path: path.clone(),
            reason,
        };
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| corrupt(&key_path, format!("bad private key: {e}")))?;
        match fs::read(&cert_path) {
            Ok(bytes) => {
                use rustls_pki_types::pem::PemObject;
                let cert = CertificateDer::from_pem_slice(&bytes)
                    .map_err(|e| corrupt(&cert_path, format!("bad certificate PEM: {e}")))?
                    .into_owned();
                let spki = spki_of_cert(&cert).map_err(|e| corrupt(&cert_path, e.to_string()))?;
                if spki != rcgen::PublicKeyData::subject_public_key_info(&key) {
                    return Err(corrupt(
                        &cert_path,
                        "certificate does not match device.key".into(),
                    ));
                }
                Ok(DeviceIdentity {
                    id: DeviceId::from_spki_der(&spki),
                    cert,
                    key_pkcs8: key.serialize_der(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ident = Self::with_new_cert(&key)?;
                write_file(&cert_path, pem_cert(&ident.cert).as_bytes(), 0o644)?;
                tracing::warn!(device_id = %ident.id, "device certificate was missing: re-issued for the existing key");
                Ok(ident)
            }
            Err(source) => Err(TransportError::IdentityIo {
                path: cert_path,
                source,
            }),
        }
    }

    /// A fresh identity kept only in memory (tests, ephemeral devices).
    pub fn generate() -> Result<DeviceIdentity> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::with_new_cert(&key)
    }

    fn with_new_cert(key: &rcgen::KeyPair) -> Result<DeviceIdentity> {
        let mut params = rcgen::CertificateParams::new(vec!["nomade".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nomade device");
        let cert = params.self_signed(key)?;
        let id = DeviceId::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(key));
        Ok(DeviceIdentity {
            id,
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.id
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A 32-byte secret for `context`, derived from the device's private
    /// key (BLAKE3's key derivation): stable for the device, unrelated
    /// between contexts and devices, and revealing nothing of the key.
    pub(crate) fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.key_pkcs8)
    }

    /// The DER `SubjectPublicKeyInfo` of the device key (its SHA-256
    /// starts with the device id).
    pub fn spki_der(&self) -> Result<Vec<u8>> {
        spki_of_cert(&self.cert)
    }

    /// Signs `message` with the device key, as its TLS handshakes are
    /// signed, with the first of `schemes` the key can use. Returns the
    /// scheme and the signature.
    pub fn sign(
        &self,
        message: &[u8],
        schemes: &[rustls::SignatureScheme],
    ) -> Result<(rustls::SignatureScheme, Vec<u8>)> {
        let key = crate::tls::provider()
            .key_provider
            .load_private_key(self.private_key())?;
        let signer = key.choose_scheme(schemes).ok_or(rustls::Error::General(
            "the device key signs with none of these schemes".into(),
        ))?;
        Ok((signer.scheme(), signer.sign(message)?))
    }

    /// The private key for rustls.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

fn pem_cert(cert: &CertificateDer<'_>) -> String {
    let b64 = data_encoding::BASE64.encode(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let io = |source| TransportError::IdentityIo {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked vector of docs/PROTOCOL.md, "Device identity".
    pub(crate) const VECTOR_SPKI_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200040102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    #[test]
    fn protocol_md_vector() {
        let spki = hex(VECTOR_SPKI_HEX);
        assert_eq!(spki.len(), 91);
        let id = DeviceId::from_spki_der(&spki);
        assert_eq!(id.to_string(), VECTOR_ID);
    }

    pub(crate) const VECTOR_ID: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";

    #[test]
    fn parse_accepts_dashes_and_case() {
        let id = DeviceId::from_spki_der(b"some key");
        let shown = id.to_string();
        assert_eq!(shown.len(), 39);
        assert_eq!(shown.matches('-').count(), 7);
        assert_eq!(shown.parse::<DeviceId>().expect("dashed"), id);
        assert_eq!(id.to_compact().parse::<DeviceId>().expect("compact"), id);
        assert_eq!(shown.to_uppercase().parse::<DeviceId>().expect("upper"), id);
        assert!("abcd".parse::<DeviceId>().is_err());
        assert!("1111-1111-1111-1111-1111-1111-1111-1111"
            .parse::<DeviceId>()
            .is_err());
    }

    #[test]
    fn load_or_create_persists_with_private_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = DeviceIdentity::load_or_create(dir.path()).expect("create");
        let b = DeviceIdentity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.device_id(), b.device_id());
        assert_eq!(a.cert_der(), b.cert_der());
        assert_eq!(
            DeviceId::from_cert_der(a.cert_der()).expect("parse"),
            a.device_id()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Certificate lost: re-issued for the same key, same id.
        fs::remove_file(dir.path().join(CERT_FILE)).expect("rm");
        let c = DeviceIdentity::load_or_create(dir.path()).expect("reissue");
        assert_eq!(c.device_id(), a.device_id());
    }

    #[test]
    fn mismatched_or_garbage_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        DeviceIdentity::load_or_create(dir.path()).expect("create");
        DeviceIdentity::load_or_create(other.path()).expect("create");
        fs::copy(other.path().join(CERT_FILE), dir.path().join(CERT_FILE)).expect("copy");
        assert!(matches!(
            DeviceIdentity::load_or_create(dir.path()),
            Err(TransportError::IdentityCorrupt { .. })
        ));
        fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        assert!(matches!(
            DeviceIdentity::load_or_create(dir.path()),
            Err(TransportError::IdentityCorrupt { .. })
        ));
        assert!(DeviceId::from_cert_der(b"\x30\x03\x02\x01\x00").is_err());
    }
}
