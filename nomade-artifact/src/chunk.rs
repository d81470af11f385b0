//! Chunking and content ids.
//!
//! An artifact is cut into chunks of [`CHUNK_SIZE`] (64 KiB) bytes, the last one
//! shorter; an empty artifact has no chunk. Its id is the SHA-256 of the plaintext.

use std::fmt;
use std::str::FromStr;

use nomade_wire::{Hash32, MAX_CHUNK_DATA};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ArtifactError;

/// Size of every chunk but the last: 65,536 bytes.
pub const CHUNK_SIZE: usize = MAX_CHUNK_DATA;

/// The largest chunk count accepted (in metadata or a stored header): 2^20
/// chunks, i.e. artifacts up to 64 GiB. It bounds what a transfer may claim
/// and what a stored header may describe.
pub const MAX_CHUNK_COUNT: u32 = 1 << 20;

/// The largest artifact accepted: [`MAX_CHUNK_COUNT`] full chunks (64 GiB).
pub const MAX_ARTIFACT_SIZE: u64 = MAX_CHUNK_COUNT as u64 * CHUNK_SIZE as u64;

/// Prefix of the textual reference to an artifact inside documents.
pub const REFERENCE_PREFIX: &str = "nomade:artifact/";

/// The content id of an artifact: SHA-256 of its plaintext.
///
/// Displays as 64 lower-case hex digits; [`ArtifactId::to_reference`] gives the
/// `nomade:artifact/<hex>` form used to reference it from a document.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArtifactId(pub Hash32);

impl ArtifactId {
    /// The id of `data` (SHA-256).
    pub fn of(data: &[u8]) -> ArtifactId {
        ArtifactId::from(<[u8; 32]>::from(Sha256::digest(data)))
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The wire form.
    pub fn hash32(&self) -> Hash32 {
        self.0
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ArtifactId> {
        Hash32::from_hex(s).map(ArtifactId)
    }

    /// The reference form, `nomade:artifact/<64 hex digits>`.
    pub fn to_reference(&self) -> String {
        format!("{REFERENCE_PREFIX}{}", self.to_hex())
    }

    /// Parses the reference form `nomade:artifact/<64 hex digits>`.
    pub fn from_reference(s: &str) -> Option<ArtifactId> {
        s.strip_prefix(REFERENCE_PREFIX)
            .and_then(ArtifactId::from_hex)
    }
}

impl From<[u8; 32]> for ArtifactId {
    fn from(b: [u8; 32]) -> Self {
        ArtifactId(Hash32::from(b))
    }
}

impl From<Hash32> for ArtifactId {
    fn from(h: Hash32) -> Self {
        ArtifactId(h)
    }
}

impl From<ArtifactId> for Hash32 {
    fn from(id: ArtifactId) -> Self {
        id.0
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactId({})", self.to_hex())
    }
}

impl FromStr for ArtifactId {
    type Err = ArtifactError;

    /// Accepts either 64 hex digits or the `nomade:artifact/<hex>` reference.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ArtifactId::from_reference(s)
            .or_else(|| ArtifactId::from_hex(s))
            .ok_or_else(|| ArtifactError::BadMetadata(format!("not an artifact id: {s:?}")))
    }
}

/// BLAKE3 of one chunk's plaintext (the `chunk_hash` of ARTIFACT_CHUNK).
///
/// The per-chunk hash of a plaintext transfer only catches damage in transit;
/// the whole artifact is still proven by its SHA-256 id. BLAKE3 does that job
/// at several times SHA-256's speed, which matters because the fetcher
/// hashes every byte twice. (A sealed chunk needs none: its AEAD tag
/// authenticates it.)
pub fn chunk_hash(data: &[u8]) -> Hash32 {
    Hash32::from(*blake3::hash(data).as_bytes())
}

/// Checks chunk `index`'s plaintext against the `chunk_hash` its sender
/// claimed, if any.
pub(crate) fn check_claimed_hash(
    index: u32,
    claimed: Option<Hash32>,
    plain: &[u8],
) -> Result<(), ArtifactError> {
    match claimed {
        Some(claimed) if claimed != chunk_hash(plain) => {
            Err(ArtifactError::ChunkHashMismatch { index })
        }
        _ => Ok(()),
    }
}

/// `ceil(size / 65536)`, 0 for an empty artifact; `None` above [`MAX_ARTIFACT_SIZE`].
pub fn chunk_count(size: u64) -> Option<u32> {
    if size > MAX_ARTIFACT_SIZE {
        return None;
    }
    u32::try_from(size.div_ceil(CHUNK_SIZE as u64)).ok()
}

/// Length of chunk `index` of an artifact of `size` bytes (`None` past the end).
pub fn chunk_len(size: u64, index: u32) -> Option<usize> {
    let start = u64::from(index).checked_mul(CHUNK_SIZE as u64)?;
    if start >= size {
        return None;
    }
    // At most CHUNK_SIZE, so it fits in usize.
    Some((size - start).min(CHUNK_SIZE as u64) as usize)
}

/// Checks that `size` and `chunk_count` agree and are within the limits.
pub fn validate_layout(size: u64, count: u32) -> Result<(), ArtifactError> {
    if count > MAX_CHUNK_COUNT {
        return Err(ArtifactError::BadMetadata(format!(
            "chunk_count {count} exceeds the maximum {MAX_CHUNK_COUNT}"
        )));
    }
    match chunk_count(size) {
        None => Err(ArtifactError::BadMetadata(format!(
            "size {size} exceeds the maximum {MAX_ARTIFACT_SIZE}"
        ))),
        Some(expected) if expected != count => Err(ArtifactError::BadMetadata(format!(
            "chunk_count {count} inconsistent with size {size} (expected {expected})"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_count_boundaries() {
        assert_eq!(chunk_count(0), Some(0));
        assert_eq!(chunk_count(1), Some(1));
        assert_eq!(chunk_count(65_536), Some(1));
        assert_eq!(chunk_count(65_537), Some(2));
        assert_eq!(chunk_count(MAX_ARTIFACT_SIZE), Some(MAX_CHUNK_COUNT));
        assert_eq!(chunk_count(MAX_ARTIFACT_SIZE + 1), None);
        assert_eq!(chunk_count(u64::MAX), None);
    }

    #[test]
    fn chunk_len_boundaries() {
        assert_eq!(chunk_len(0, 0), None);
        assert_eq!(chunk_len(1, 0), Some(1));
        assert_eq!(chunk_len(65_536, 0), Some(65_536));
        assert_eq!(chunk_len(65_536, 1), None);
        assert_eq!(chunk_len(65_537, 1), Some(1));
        assert_eq!(chunk_len(u64::MAX, u32::MAX), Some(65_536));
    }

    #[test]
    fn layout_validation() {
        assert!(validate_layout(0, 0).is_ok());
        assert!(validate_layout(65_537, 2).is_ok());
        assert!(validate_layout(0, 1).is_err());
        assert!(validate_layout(10, 0).is_err());
        assert!(validate_layout(65_537, 1).is_err());
        assert!(validate_layout(u64::MAX, u32::MAX).is_err());
        assert!(validate_layout(1, u32::MAX).is_err());
    }

    #[test]
    fn id_of_empty_is_sha256_of_nothing() {
        assert_eq!(
            ArtifactId::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chunk_hash_is_blake3() {
        // The BLAKE3 test vector for "abc".
        assert_eq!(
            chunk_hash(b"abc").to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn reference_round_trip() {
        let id = ArtifactId::of(b"hello");
        let r = id.to_reference();
        assert!(r.starts_with("nomade:artifact/"));
        assert_eq!(ArtifactId::from_reference(&r), Some(id));
        assert_eq!(r.parse::<ArtifactId>().ok(), Some(id));
        assert_eq!(id.to_hex().parse::<ArtifactId>().ok(), Some(id));
        assert!(ArtifactId::from_reference("nomade:artifact/xyz").is_none());
        assert!(ArtifactId::from_reference(&id.to_hex()).is_none());
        assert!("nomade:doc/00".parse::<ArtifactId>().is_err());
    }
}
