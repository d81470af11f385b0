//! Device keys and the wrapping of per-artifact data keys.
//!
//! Each device has a long-lived X25519 key pair ([`DeviceKey`]). Each artifact is
//! sealed under its own random 32-byte data key, and that key is *wrapped* once
//! for every recipient public key:
//!
//! 1. a fresh ephemeral X25519 key pair `e` is generated;
//! 2. `shared = X25519(e, recipient)`, rejected if non-contributory (a low-order
//!    recipient key);
//! 3. `kek = BLAKE3-derive_key(WRAP_CONTEXT, e_pub || recipient_pub || shared)`;
//! 4. `sealed = ChaCha20-Poly1305(kek, random 96-bit nonce,
//!    aad = artifact_id || recipient_pub).seal(data_key)` (32 + 16 bytes).
//!
//! The wrapped key stored is `(recipient_pub, e_pub, nonce, sealed)`. This is the
//! ECIES / HPKE "base mode" construction. BLAKE3's `derive_key` mode is used as
//! the KDF rather than HKDF-SHA256 because it is a KDF by design (a
//! context-string domain separation, one call, no extract/expand pair to get
//! wrong), it is already a workspace dependency (the wire checksum), and it needs
//! no extra crate; binding both public keys in the KDF input prevents key
//! re-use across recipients, and the AAD binds the wrap to one artifact.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use nomade_wire::{FixedBytes, Hash32};
use rand::rngs::OsRng;
use rand::RngCore;
pub use x25519_dalek::PublicKey;
use x25519_dalek::{EphemeralSecret, StaticSecret};

use crate::chunk::ArtifactId;
use crate::error::ArtifactError;

/// Name of the device key file inside the directory given to
/// [`DeviceKey::load_or_create`].
pub const DEVICE_KEY_FILE: &str = "artifact-device.key";

const WRAP_CONTEXT: &str = "nomade-artifact v1 2026-11 X25519 data key wrap";
const MAC_CONTEXT: &str = "nomade-artifact v1 2026-11 header MAC";
const RELAY_MAC_CONTEXT: &str = "nomade-artifact v1 2026-12 relay header MAC";

/// This device's long-lived X25519 key pair.
pub struct DeviceKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public", &hex::encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl Clone for DeviceKey {
    fn clone(&self) -> Self {
        DeviceKey::from_secret_bytes(self.secret.to_bytes())
    }
}

impl DeviceKey {
    /// A fresh random key pair (not persisted).
    pub fn generate() -> DeviceKey {
        Self::from_secret_bytes(StaticSecret::random_from_rng(OsRng).to_bytes())
    }

    /// The key pair for a 32-byte secret.
    pub fn from_secret_bytes(secret: [u8; 32]) -> DeviceKey {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        DeviceKey { secret, public }
    }

    /// Loads the key from `dir/artifact-device.key`, creating it (file mode
    /// 0600 on Unix, written atomically) if it does not exist.
    pub fn load_or_create(dir: &Path) -> Result<DeviceKey, ArtifactError> {
        fs::create_dir_all(dir)?;
        let path = dir.join(DEVICE_KEY_FILE);
        match fs::File::open(&path) {
            Ok(f) => Self::read_key(f, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let tmp = dir.join(format!("{DEVICE_KEY_FILE}.tmp{}", OsRng.next_u64()));
                let mut f = private_file(&tmp)?;
                f.write_all(&key.secret.to_bytes())?;
                f.sync_all()?;
                drop(f);
                // Never replace a key created concurrently: hard-link, then drop the temp.
                let linked = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_dir(dir)?;
                        Ok(key)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::read_key(fs::File::open(&path)?, &path)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read_key(f: fs::File, path: &Path) -> Result<DeviceKey, ArtifactError> {
        let mut buf = Vec::with_capacity(33);
        f.take(33).read_to_end(&mut buf)?;
        let bytes: [u8; 32] = buf.as_slice().try_into().map_err(|_| {
            ArtifactError::BadKeyFile(format!(
                "{}: {} bytes, expected 32",
                path.display(),
                buf.len()
            ))
        })?;
        Ok(Self::from_secret_bytes(bytes))
    }

    /// The public key, to be listed in other devices' `encrypted_for`.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// A MAC over a stored header body of a copy kept for others (a
    /// sealed relay: this device holds no data key to key it from), keyed
    /// from this device's secret.
    pub(crate) fn relay_header_mac(&self, body: &[u8]) -> Hash32 {
        let mac_key = blake3::derive_key(RELAY_MAC_CONTEXT, &self.secret.to_bytes());
        Hash32::from(*blake3::keyed_hash(&mac_key, body).as_bytes())
    }

    /// X25519 with this device's secret.
    fn diffie_hellman(&self, their: &PublicKey) -> x25519_dalek::SharedSecret {
        self.secret.diffie_hellman(their)
    }
}

fn private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Flushes a directory's entries (renames, creations) to disk.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A per-artifact symmetric key (ChaCha20-Poly1305).
#[derive(Clone)]
pub(crate) struct DataKey([u8; 32]);

impl DataKey {
    pub(crate) fn random() -> DataKey {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        DataKey(k)
    }

    /// Whether two keys are the same (not constant-time: no secret depends on it).
    pub(crate) fn same_as(&self, other: &DataKey) -> bool {
        self.0 == other.0
    }

    pub(crate) fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(self.0))
    }

    /// A MAC over a stored header body, keyed from the data key.
    pub(crate) fn header_mac(&self, body: &[u8]) -> Hash32 {
        let mac_key = blake3::derive_key(MAC_CONTEXT, &self.0);
        Hash32::from(*blake3::keyed_hash(&mac_key, body).as_bytes())
    }
}

/// A data key wrapped for one recipient device (the wire's type: the same
/// record travels in ARTIFACT_METADATA and is stored in headers).
pub(crate) type WrappedKey = nomade_wire::WrappedDataKey;

fn kek(ephemeral: &[u8; 32], recipient: &[u8; 32], shared: &[u8; 32]) -> [u8; 32] {
    let mut input = [0u8; 96];
    input[..32].copy_from_slice(ephemeral);
    input[32..64].copy_from_slice(recipient);
    input[64..].copy_from_slice(shared);
    blake3::derive_key(WRAP_CONTEXT, &input)
}

fn wrap_aad(id: &ArtifactId, recipient: &[u8; 32]) -> [u8; 64] {
    let mut aad = [0u8; 64];
    aad[..32].copy_from_slice(id.as_bytes());
    aad[32..].copy_from_slice(recipient);
    aad
}

/// Wraps `key` for `recipient`.
pub(crate) fn wrap(
    key: &DataKey,
    id: &ArtifactId,
    recipient: &PublicKey,
) -> Result<WrappedKey, ArtifactError> {
    let eph = EphemeralSecret::random_from_rng(OsRng);
    let eph_pub = PublicKey::from(&eph);
    let shared = eph.diffie_hellman(recipient);
    if !shared.was_contributory() {
        return Err(ArtifactError::BadMetadata(
            "recipient public key is a low-order point".into(),
        ));
    }
    let kek = kek(eph_pub.as_bytes(), recipient.as_bytes(), shared.as_bytes());
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let sealed = ChaCha20Poly1305::new(&Key::from(kek))
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &key.0,
                aad: &wrap_aad(id, recipient.as_bytes()),
            },
        )
        .ok()
        .and_then(|v| <[u8; 48]>::try_from(v).ok())
        .ok_or_else(|| ArtifactError::BadMetadata("key wrap failed".into()))?;
    Ok(WrappedKey {
        recipient: Hash32::from(*recipient.as_bytes()),
        ephemeral: Hash32::from(*eph_pub.as_bytes()),
        nonce: FixedBytes(nonce),
        sealed: FixedBytes(sealed),
    })
}

/// Finds this device's wrapped key in `wrapped` and unwraps it.
pub(crate) fn unwrap(
    wrapped: &[WrappedKey],
    id: &ArtifactId,
    device: &DeviceKey,
) -> Result<DataKey, ArtifactError> {
    let me = device.public();
    let w = wrapped
        .iter()
        .find(|w| w.recipient.as_bytes() == me.as_bytes())
        .ok_or(ArtifactError::NotARecipient { id: *id })?;
    let eph = PublicKey::from(*w.ephemeral.as_bytes());
    let shared = device.diffie_hellman(&eph);
    if !shared.was_contributory() {
        return Err(ArtifactError::BadMetadata(
            "wrapped key has a low-order ephemeral key".into(),
        ));
    }
    let kek = kek(eph.as_bytes(), me.as_bytes(), shared.as_bytes());
    let plain = ChaCha20Poly1305::new(&Key::from(kek))
        .decrypt(
            &Nonce::from(*w.nonce.as_bytes()),
            Payload {
                msg: w.sealed.as_bytes(),
                aad: &wrap_aad(id, me.as_bytes()),
            },
        )
        .map_err(|_| ArtifactError::BadMetadata("wrapped data key failed authentication".into()))?;
    let k: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| ArtifactError::BadMetadata("wrapped data key has the wrong length".into()))?;
    Ok(DataKey(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_for_each_recipient_only() {
        let a = DeviceKey::generate();
        let b = DeviceKey::generate();
        let c = DeviceKey::generate();
        let id = ArtifactId::of(b"x");
        let key = DataKey::random();
        let wrapped = vec![
            wrap(&key, &id, &a.public()).expect("wrap"),
            wrap(&key, &id, &b.public()).expect("wrap"),
        ];
        assert_eq!(unwrap(&wrapped, &id, &a).expect("a").0, key.0);
        assert_eq!(unwrap(&wrapped, &id, &b).expect("b").0, key.0);
        assert!(matches!(
            unwrap(&wrapped, &id, &c),
            Err(ArtifactError::NotARecipient { .. })
        ));
        // Bound to the artifact id.
        let other = ArtifactId::of(b"y");
        assert!(matches!(
            unwrap(&wrapped, &other, &a),
            Err(ArtifactError::BadMetadata(_))
        ));
    }

    #[test]
    fn low_order_recipient_rejected() {
        let key = DataKey::random();
        let id = ArtifactId::of(b"x");
        assert!(wrap(&key, &id, &PublicKey::from([0u8; 32])).is_err());
    }

    #[test]
    fn load_or_create_persists_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k1 = DeviceKey::load_or_create(dir.path()).expect("create");
        let k2 = DeviceKey::load_or_create(dir.path()).expect("load");
        assert_eq!(k1.public().as_bytes(), k2.public().as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(DEVICE_KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(dir.path().join(DEVICE_KEY_FILE), b"short").expect("write");
        assert!(matches!(
            DeviceKey::load_or_create(dir.path()),
            Err(ArtifactError::BadKeyFile(_))
        ));
    }
}
