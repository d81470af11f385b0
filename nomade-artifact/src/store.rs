//! The on-disk artifact store: every chunk sealed at rest.
//!
//! Layout under the store directory:
//!
//! - `objects/<hex id>.hdr`: the header, MessagePack `{body: bin, mac: bin 32}`
//!   where `body` is the MessagePack of the id, size, chunk count, MIME type and
//!   the data key wrapped for each recipient,
//!   and `mac` is a keyed BLAKE3 of `body` under a key derived from the data key
//!   (so no one without the data key can alter the header unnoticed);
//! - `objects/<hex id>.dat`: the sealed chunks back to back, chunk `i` being
//!   `nonce (12) || ChaCha20-Poly1305 ciphertext (len_i) || tag (16)` with a fresh
//!   random nonce and AAD = `artifact id (32) || i as u32 BE || is_last (1 byte)`;
//!   chunk `i` starts at byte `i * (65,536 + 28)`;
//! - `partial/<hex id>.{hdr,dat}`: a transfer in progress (same formats),
//!   resumed from its last verified chunk;
//! - `tmp/`: files being written by [`ArtifactStore::put_file`], removed on open.
//!
//! The header is renamed into place last: it is the commit point.
//!
//! Threat model: someone who can edit the store's files but does not hold a
//! data key can flip, swap, reorder, truncate or splice chunks, or edit a
//! header; every such change is a typed error. Someone who can *replace* an
//! artifact's files wholesale can seal content of their choosing to this
//! device's public key (wrapping is unauthenticated, as in HPKE base mode):
//! single-chunk reads of such a replacement are self-consistent, but
//! [`ArtifactStore::export`] and any transfer check the whole SHA-256 against
//! the id, so the replacement is never exported or accepted as that artifact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use nomade_wire::{ArtifactMetadata, FixedBytes, Hash32, WrappedDataKey};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunk::{self, chunk_len, ArtifactId, CHUNK_SIZE, MAX_CHUNK_COUNT};
use crate::error::{ArtifactError, Result};
use crate::hashing::Hashing;
use crate::keys::{self, sync_dir, DataKey, DeviceKey, PublicKey, WrappedKey};
use crate::progress::Progress;

/// Version of the header layout written. 3: no per-chunk hashes (each chunk's
/// AEAD tag authenticates it; a plaintext transfer hashes the chunk it
/// opens). 2 (still read): with the BLAKE3 hash of every chunk, ignored.
const HEADER_FORMAT: u8 = 3;
/// The earlier layout, still read.
const HEADER_FORMAT_WITH_CHUNK_HASHES: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes added to each chunk when sealed: nonce and tag.
pub const RECORD_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const RECORD_STRIDE: u64 = (CHUNK_SIZE + RECORD_OVERHEAD) as u64;
/// Largest header read: room for the per-chunk hashes of format 2.
const MAX_HEADER_LEN: u64 = 40 * MAX_CHUNK_COUNT as u64 + (1 << 20);
/// A partial transfer is flushed to disk (fsync) every this many chunks.
pub const SYNC_EVERY_CHUNKS: u32 = 64;

/// Size on disk of the sealed chunks of an artifact of `size` bytes.
pub fn sealed_len(size: u64) -> u64 {
    let count = size.div_ceil(CHUNK_SIZE as u64);
    size + count * RECORD_OVERHEAD as u64
}

fn footprint(size: u64, recipients: usize, mime: Option<&str>) -> u64 {
    sealed_len(size) + 1024 + 160 * recipients as u64 + mime.map_or(0, |m| m.len() as u64)
}

fn chunk_aad(id: &ArtifactId, index: u32, is_last: bool) -> [u8; 37] {
    let mut aad = [0u8; 37];
    aad[..32].copy_from_slice(id.as_bytes());
    aad[32..36].copy_from_slice(&index.to_be_bytes());
    aad[36] = u8::from(is_last);
    aad
}

/// Seals `plain` as chunk `index` into `out` (cleared first): nonce || ct || tag.
fn seal_chunk(
    cipher: &ChaCha20Poly1305,
    id: &ArtifactId,
    index: u32,
    is_last: bool,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    out.clear();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &chunk_aad(id, index, is_last),
            (&mut out[NONCE_LEN..]).into(),
        )
        .map_err(|_| ArtifactError::ChunkTooLarge {
            len: plain.len(),
            max: CHUNK_SIZE,
        })?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Opens a sealed record in place; returns the plaintext.
fn open_chunk(
    cipher: &ChaCha20Poly1305,
    id: &ArtifactId,
    index: u32,
    is_last: bool,
    record: &mut [u8],
) -> Result<Bytes> {
    if record.len() < RECORD_OVERHEAD {
        return Err(ArtifactError::Tampered { index });
    }
    let (nonce, rest) = record.split_at_mut(NONCE_LEN);
    let (ct, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let tampered = |_| ArtifactError::Tampered { index };
    let nonce = <&Nonce>::try_from(&*nonce).map_err(tampered)?;
    let tag = <&Tag>::try_from(&*tag).map_err(tampered)?;
    cipher
        .decrypt_inout_detached(nonce, &chunk_aad(id, index, is_last), ct.into(), tag)
        .map_err(|_| ArtifactError::Tampered { index })?;
    Ok(Bytes::copy_from_slice(ct))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeaderBody {
    format: u8,
    id: ArtifactId,
    size: u64,
    chunk_count: u32,
    mime_type: Option<String>,
    /// Format 2 only: the BLAKE3 hash of every chunk (checked for count,
    /// otherwise unused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunk_hashes: Vec<Hash32>,
    wrapped: Vec<WrappedKey>,
    /// Sealed for the devices in `wrapped` only: served sealed, with the
    /// data key wrapped for a recipient only (docs/PROTOCOL.md, "Sealed
    /// relays"). Absent (false) in headers written before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    restricted: bool,
    /// A copy kept for the recipients by a device that is not one: no
    /// wrap is for this device, and the header's MAC is keyed from its
    /// own secret ([`DeviceKey::relay_header_mac`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    relay: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderFile {
    body: Bytes,
    mac: Hash32,
}

fn encode_header(body: &HeaderBody, key: &DataKey) -> Result<Vec<u8>> {
    encode_header_with(body, |bytes| key.header_mac(bytes))
}

/// The header of a copy kept for others, authenticated with this device's
/// own key (it holds no data key).
fn encode_relay_header(body: &HeaderBody, device: &DeviceKey) -> Result<Vec<u8>> {
    encode_header_with(body, |bytes| device.relay_header_mac(bytes))
}

fn encode_header_with(body: &HeaderBody, mac: impl FnOnce(&[u8]) -> Hash32) -> Result<Vec<u8>> {
    let bytes = rmp_serde::to_vec_named(body)
        .map_err(|e| ArtifactError::BadMetadata(format!("encoding header: {e}")))?;
    let mac = mac(&bytes);
    rmp_serde::to_vec_named(&HeaderFile {
        body: Bytes::from(bytes),
        mac,
    })
    .map_err(|e| ArtifactError::BadMetadata(format!("encoding header: {e}")))
}

/// Reads and authenticates a header of an artifact this device can open;
/// `full` requires one hash per chunk. A copy kept for others is
/// `NotARecipient`.
fn read_header(
    path: &Path,
    id: &ArtifactId,
    device: &DeviceKey,
    full: bool,
) -> Result<(HeaderBody, DataKey)> {
    let (body, key) = read_any_header(path, id, device, full)?;
    Ok((body, key.ok_or(ArtifactError::NotARecipient { id: *id })?))
}

/// Reads and authenticates a header, of a copy kept for others too (then
/// without a data key).
fn read_any_header(
    path: &Path,
    id: &ArtifactId,
    device: &DeviceKey,
    full: bool,
) -> Result<(HeaderBody, Option<DataKey>)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ArtifactError::NotFound { id: *id })
        }
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    if len > MAX_HEADER_LEN {
        return Err(ArtifactError::BadMetadata(format!(
            "header of {len} bytes exceeds {MAX_HEADER_LEN}"
        )));
    }
    let mut raw = Vec::with_capacity(len as usize);
    f.take(MAX_HEADER_LEN).read_to_end(&mut raw)?;
    let bad = |e: rmp_serde::decode::Error| ArtifactError::BadMetadata(format!("header: {e}"));
    let file: HeaderFile = rmp_serde::from_slice(&raw).map_err(bad)?;
    let body: HeaderBody = rmp_serde::from_slice(&file.body).map_err(bad)?;
    if body.format != HEADER_FORMAT && body.format != HEADER_FORMAT_WITH_CHUNK_HASHES {
        return Err(ArtifactError::BadMetadata(format!(
            "unknown header format {}",
            body.format
        )));
    }
    if body.id != *id {
        return Err(ArtifactError::BadMetadata(format!(
            "header is for {}, not {id}",
            body.id
        )));
    }
    chunk::validate_layout(body.size, body.chunk_count)?;
    let (key, mac) = if body.relay {
        (None, device.relay_header_mac(&file.body))
    } else {
        let key = keys::unwrap(&body.wrapped, id, device)?;
        let mac = key.header_mac(&file.body);
        (Some(key), mac)
    };
    if mac != file.mac {
        return Err(ArtifactError::BadMetadata(
            "header failed authentication".into(),
        ));
    }
    let expected_hashes = match body.format {
        HEADER_FORMAT_WITH_CHUNK_HASHES if full => body.chunk_count as usize,
        HEADER_FORMAT_WITH_CHUNK_HASHES => body.chunk_hashes.len(),
        _ => 0,
    };
    if body.chunk_hashes.len() != expected_hashes {
        return Err(ArtifactError::BadMetadata(format!(
            "{} chunk hashes for {} chunks",
            body.chunk_hashes.len(),
            body.chunk_count
        )));
    }
    Ok((body, key))
}

/// Writes `bytes` to `path` durably (create or truncate, then fsync).
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Writes every byte of `parts`, in order, in as few calls as the writer
/// allows (one, for a file).
fn write_all_vectored(w: &mut impl Write, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !parts.is_empty() {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Removes the listed files when dropped, unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// What the store knows about an artifact (from its authenticated header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Content id.
    pub id: ArtifactId,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Number of 64 KiB chunks.
    pub chunk_count: u32,
    /// MIME type, if known.
    pub mime_type: Option<String>,
    /// The devices (public keys) the data key is wrapped for.
    pub recipients: Vec<[u8; 32]>,
    /// Sealed for `recipients` only (put with
    /// [`ArtifactStore::put_file_for`]): served sealed, and its data key
    /// only to them.
    pub restricted: bool,
    /// This copy is kept for the recipients: this device is not one and
    /// cannot open it (docs/PROTOCOL.md, "Sealed relays").
    pub relay_copy: bool,
}

impl ArtifactInfo {
    /// The ARTIFACT_METADATA message announcing this artifact.
    pub fn to_wire(&self) -> ArtifactMetadata {
        ArtifactMetadata {
            artifact_id: self.id.hash32(),
            size: self.size,
            chunk_count: self.chunk_count,
            mime_type: self.mime_type.clone(),
            encrypted: true,
            data_key: None,
            recipient_keys: None,
        }
    }

    /// Whether `key` is among the recipients.
    pub fn is_recipient(&self, key: &PublicKey) -> bool {
        self.recipients.iter().any(|r| r == key.as_bytes())
    }

    fn from_body(b: &HeaderBody) -> ArtifactInfo {
        ArtifactInfo {
            id: b.id,
            size: b.size,
            chunk_count: b.chunk_count,
            mime_type: b.mime_type.clone(),
            recipients: b.wrapped.iter().map(|w| *w.recipient.as_bytes()).collect(),
            restricted: b.restricted,
            relay_copy: b.relay,
        }
    }
}

struct Inner {
    root: PathBuf,
    device: DeviceKey,
    quota: Option<u64>,
    reserved: Mutex<u64>,
    /// Ids with a `Receiver` running, so that two never share a partial file.
    receiving: Mutex<std::collections::HashSet<ArtifactId>>,
}

/// Exclusive right to fetch one artifact into the store, released when dropped.
pub(crate) struct ReceiveClaim {
    inner: Arc<Inner>,
    id: ArtifactId,
}

impl Drop for ReceiveClaim {
    fn drop(&mut self) {
        let mut set = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set.remove(&self.id);
    }
}

/// Bytes promised to an operation in progress, released when dropped.
pub(crate) struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self
            .inner
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r = r.saturating_sub(self.bytes);
    }
}

/// An encrypted, content-addressed artifact store in one directory.
///
/// Cheap to clone (shared state); safe to use from several threads.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("root", &self.inner.root)
            .field("quota", &self.inner.quota)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// Opens (creating if needed) the store in `dir`, for the device owning
    /// `device_key`, limited to `quota_bytes` on disk if given. Leftovers of
    /// interrupted [`put_file`](Self::put_file)s are removed; partial transfers
    /// are kept for resumption.
    pub fn open(dir: &Path, device_key: DeviceKey, quota_bytes: Option<u64>) -> Result<Self> {
        for sub in ["objects", "partial", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for e in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        Ok(ArtifactStore {
            inner: Arc::new(Inner {
                root: dir.to_path_buf(),
                device: device_key,
                quota: quota_bytes,
                reserved: Mutex::new(0),
                receiving: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// This device's public key (always a recipient of what it stores).
    pub fn public_key(&self) -> PublicKey {
        self.inner.device.public()
    }

    fn path(&self, sub: &str, id: &ArtifactId, ext: &str) -> PathBuf {
        self.inner
            .root
            .join(sub)
            .join(format!("{}.{ext}", id.to_hex()))
    }

    /// Unwraps a data key a holder wrapped for this device (a sealed
    /// transfer's ARTIFACT_METADATA). A key for another device, or one that
    /// fails authentication, is `BadMetadata`.
    pub(crate) fn unwrap_key(&self, wrapped: &WrappedDataKey, id: &ArtifactId) -> Result<DataKey> {
        keys::unwrap(std::slice::from_ref(wrapped), id, &self.inner.device).map_err(|e| match e {
            ArtifactError::NotARecipient { .. } => {
                ArtifactError::BadMetadata("data key wrapped for another device".into())
            }
            e => e,
        })
    }

    /// Whether the artifact is complete in the store.
    pub fn has(&self, id: &ArtifactId) -> bool {
        self.path("objects", id, "hdr").exists()
    }

    /// The artifact's authenticated metadata.
    pub fn metadata(&self, id: &ArtifactId) -> Result<ArtifactInfo> {
        Ok(self.open_sealed(id)?.info().clone())
    }

    /// Whether `peer` is among the recipients of a stored artifact (the check a
    /// holder makes before serving it).
    pub fn is_recipient(&self, id: &ArtifactId, peer: &PublicKey) -> Result<bool> {
        Ok(self.metadata(id)?.is_recipient(peer))
    }

    /// Ids of every complete artifact, sorted.
    pub fn list(&self) -> Result<Vec<ArtifactId>> {
        let mut ids = Vec::new();
        for e in fs::read_dir(self.inner.root.join("objects"))? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".hdr").and_then(ArtifactId::from_hex) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Bytes on disk: complete artifacts, partial transfers and temporary files.
    pub fn used_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for sub in ["objects", "partial", "tmp"] {
            for e in fs::read_dir(self.inner.root.join(sub))? {
                let e = e?;
                match e.metadata() {
                    Ok(m) if m.is_file() => total += m.len(),
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(total)
    }

    /// Claims the right to fetch `id`; fails with `TransferInProgress` if a
    /// receiver for it is already running on this store.
    pub(crate) fn claim_receive(&self, id: &ArtifactId) -> Result<ReceiveClaim> {
        let mut set = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !set.insert(*id) {
            return Err(ArtifactError::TransferInProgress { id: *id });
        }
        Ok(ReceiveClaim {
            inner: self.inner.clone(),
            id: *id,
        })
    }

    /// Reserves `need` bytes under the quota, or fails with `QuotaExceeded`.
    pub(crate) fn reserve(&self, need: u64) -> Result<Reservation> {
        if let Some(quota) = self.inner.quota {
            let used = self.used_bytes()?;
            let mut reserved = self
                .inner
                .reserved
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let available = quota.saturating_sub(used.saturating_add(*reserved));
            if need > available {
                return Err(ArtifactError::QuotaExceeded { need, available });
            }
            *reserved += need;
        }
        Ok(Reservation {
            inner: self.inner.clone(),
            bytes: if self.inner.quota.is_some() { need } else { 0 },
        })
    }

    /// Opens a stored artifact for reading chunk by chunk. A copy kept for
    /// others is `NotARecipient` (see [`ArtifactStore::open_sealed`]).
    pub fn open_artifact(&self, id: &ArtifactId) -> Result<ArtifactReader> {
        let reader = self.open_sealed(id)?;
        if reader.key.is_none() {
            return Err(ArtifactError::NotARecipient { id: *id });
        }
        Ok(reader)
    }

    /// Opens a stored artifact for sending its records as they are stored,
    /// a copy kept for others included: its chunks then cannot be read
    /// ([`ArtifactReader::read_chunk`] is `NotARecipient`), only sent sealed.
    pub fn open_sealed(&self, id: &ArtifactId) -> Result<ArtifactReader> {
        let (body, key) = read_any_header(
            &self.path("objects", id, "hdr"),
            id,
            &self.inner.device,
            true,
        )?;
        let file = match File::open(self.path("objects", id, "dat")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::Truncated {
                    expected: sealed_len(body.size),
                    actual: 0,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let expected = sealed_len(body.size);
        let actual = file.metadata()?.len();
        if actual < expected {
            return Err(ArtifactError::Truncated { expected, actual });
        }
        if actual > expected {
            return Err(ArtifactError::BadMetadata(format!(
                "data file has {actual} bytes, expected {expected}"
            )));
        }
        Ok(ArtifactReader {
            info: ArtifactInfo::from_body(&body),
            cipher: key.as_ref().map(DataKey::cipher),
            key,
            wrapped: body.wrapped,
            file,
            buf: Vec::with_capacity(CHUNK_SIZE + RECORD_OVERHEAD),
        })
    }

    /// Reads and verifies one chunk (AEAD and plaintext hash).
    pub fn read_chunk(&self, id: &ArtifactId, index: u32) -> Result<Bytes> {
        self.open_artifact(id)?.read_chunk(index)
    }

    /// Stores the file at `path`, sealed for this device and every key in
    /// `encrypted_for`. Streams: memory stays at one chunk whatever the size.
    pub fn put_file(
        &self,
        path: &Path,
        mime_type: Option<&str>,
        encrypted_for: &[PublicKey],
    ) -> Result<ArtifactId> {
        self.put_reader(File::open(path)?, mime_type, encrypted_for)
    }

    /// Stores in-memory bytes (see [`put_file`](Self::put_file)).
    pub fn put_bytes(
        &self,
        data: &[u8],
        mime_type: Option<&str>,
        encrypted_for: &[PublicKey],
    ) -> Result<ArtifactId> {
        self.put_reader(io::Cursor::new(data), mime_type, encrypted_for)
    }

    /// Stores what `reader` yields (from its start), sealed for this device and
    /// every key in `encrypted_for`.
    ///
    /// Two streaming passes: the first computes the id (bound into every
    /// chunk's AAD) and the size (checked against the quota before anything is
    /// written), the second seals. If the content changed between the passes
    /// the put fails with `HashMismatch` and leaves nothing behind. An artifact
    /// already stored is kept as it is (its recipients unchanged).
    pub fn put_reader<R: Read + Seek>(
        &self,
        reader: R,
        mime_type: Option<&str>,
        encrypted_for: &[PublicKey],
    ) -> Result<ArtifactId> {
        self.put_sealed(reader, mime_type, encrypted_for, false)
    }

    /// Stores the file at `path` for this device and the devices of
    /// `recipients` only: it is *restricted*. Its holders serve it sealed,
    /// hand its data key to these devices only, and to any other device
    /// that asks the records and the recipients' wrapped keys, which it
    /// keeps and passes on without being able to open them (docs/
    /// PROTOCOL.md, "Sealed relays"). Content already stored is not
    /// stored again, restricted or not.
    pub fn put_file_for(
        &self,
        path: &Path,
        mime_type: Option<&str>,
        recipients: &[PublicKey],
    ) -> Result<ArtifactId> {
        self.put_reader_for(File::open(path)?, mime_type, recipients)
    }

    /// [`ArtifactStore::put_file_for`] from a reader (read twice, as by
    /// [`ArtifactStore::put_reader`]).
    pub fn put_reader_for<R: Read + Seek>(
        &self,
        reader: R,
        mime_type: Option<&str>,
        recipients: &[PublicKey],
    ) -> Result<ArtifactId> {
        self.put_sealed(reader, mime_type, recipients, true)
    }

    fn put_sealed<R: Read + Seek>(
        &self,
        mut reader: R,
        mime_type: Option<&str>,
        encrypted_for: &[PublicKey],
        restricted: bool,
    ) -> Result<ArtifactId> {
        let mut buf = vec![0u8; CHUNK_SIZE];
        // Pass 1: id and size.
        reader.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            hasher.update(&buf[..n]);
            size += n as u64;
            if size > chunk::MAX_ARTIFACT_SIZE {
                return Err(ArtifactError::BadMetadata(format!(
                    "artifact larger than {}",
                    chunk::MAX_ARTIFACT_SIZE
                )));
            }
            if n < CHUNK_SIZE {
                break;
            }
        }
        let id = ArtifactId::from(<[u8; 32]>::from(hasher.finalize()));
        if self.has(&id) {
            return Ok(id);
        }
        let count = chunk::chunk_count(size)
            .ok_or_else(|| ArtifactError::BadMetadata("artifact too large".into()))?;
        let mut recipients = vec![self.public_key()];
        for k in encrypted_for {
            if !recipients.iter().any(|r| r.as_bytes() == k.as_bytes()) {
                recipients.push(*k);
            }
        }
        let _reservation = self.reserve(footprint(size, recipients.len(), mime_type))?;

        // Pass 2: seal.
        let key = DataKey::random();
        let cipher = key.cipher();
        let tag = OsRng.next_u64();
        let tmp_dat = self
            .inner
            .root
            .join("tmp")
            .join(format!("{}.{tag:016x}.dat", id.to_hex()));
        let tmp_hdr = self
            .inner
            .root
            .join("tmp")
            .join(format!("{}.{tag:016x}.hdr", id.to_hex()));
        let cleanup = Cleanup(vec![tmp_dat.clone(), tmp_hdr.clone()]);
        let mut out = File::create(&tmp_dat)?;
        reader.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        let mut record = Vec::with_capacity(CHUNK_SIZE + RECORD_OVERHEAD);
        for index in 0..count {
            let len = chunk_len(size, index).unwrap_or(0);
            let n = read_full(&mut reader, &mut buf[..len])?;
            if n != len {
                return Err(ArtifactError::HashMismatch {
                    expected: id,
                    actual: ArtifactId::from(<[u8; 32]>::from(hasher.finalize())),
                });
            }
            let plain = &buf[..len];
            hasher.update(plain);
            seal_chunk(&cipher, &id, index, index + 1 == count, plain, &mut record)?;
            out.write_all(&record)?;
        }
        let actual = ArtifactId::from(<[u8; 32]>::from(hasher.finalize()));
        if actual != id {
            return Err(ArtifactError::HashMismatch {
                expected: id,
                actual,
            });
        }
        out.sync_all()?;
        drop(out);
        let wrapped = recipients
            .iter()
            .map(|r| keys::wrap(&key, &id, r))
            .collect::<Result<Vec<_>>>()?;
        let body = HeaderBody {
            format: HEADER_FORMAT,
            id,
            size,
            chunk_count: count,
            mime_type: mime_type.map(str::to_owned),
            chunk_hashes: Vec::new(),
            wrapped,
            restricted,
            relay: false,
        };
        write_durable(&tmp_hdr, &encode_header(&body, &key)?)?;
        fs::rename(&tmp_dat, self.path("objects", &id, "dat"))?;
        fs::rename(&tmp_hdr, self.path("objects", &id, "hdr"))?;
        cleanup.disarm();
        sync_dir(&self.inner.root.join("objects"))?;
        Ok(id)
    }

    /// Writes the verified plaintext to `out_path`. Streams chunk by chunk
    /// through a temporary file beside `out_path`, renamed into place only once
    /// the whole SHA-256 equals the id: `out_path` never holds wrong bytes.
    pub fn export(&self, id: &ArtifactId, out_path: &Path) -> Result<()> {
        let mut reader = self.open_artifact(id)?;
        let name = out_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact");
        let tmp =
            out_path.with_file_name(format!(".{name}.nomade-export-{:016x}", OsRng.next_u64()));
        let cleanup = Cleanup(vec![tmp.clone()]);
        let mut out = File::create(&tmp)?;
        let mut hasher = Sha256::new();
        for index in 0..reader.info().chunk_count {
            let chunk = reader.read_chunk(index)?;
            hasher.update(&chunk);
            out.write_all(&chunk)?;
        }
        let actual = ArtifactId::from(<[u8; 32]>::from(hasher.finalize()));
        if actual != *id {
            return Err(ArtifactError::HashMismatch {
                expected: *id,
                actual,
            });
        }
        out.sync_all()?;
        drop(out);
        fs::rename(&tmp, out_path)?;
        cleanup.disarm();
        Ok(())
    }

    /// Removes a stored artifact.
    pub fn remove(&self, id: &ArtifactId) -> Result<()> {
        match fs::remove_file(self.path("objects", id, "hdr")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound { id: *id })
            }
            Err(e) => return Err(e.into()),
        }
        match fs::remove_file(self.path("objects", id, "dat")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        sync_dir(&self.inner.root.join("objects"))?;
        Ok(())
    }

    /// Whether a partial transfer of `id` is on disk.
    pub fn has_partial(&self, id: &ArtifactId) -> bool {
        self.path("partial", id, "hdr").exists() || self.path("partial", id, "dat").exists()
    }

    /// Discards a partial transfer of `id`, if any.
    pub fn discard_partial(&self, id: &ArtifactId) -> Result<()> {
        for ext in ["hdr", "dat"] {
            match fs::remove_file(self.path("partial", id, ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Loads the partial transfer of `id`, verifying every chunk it holds; a
    /// torn or corrupt tail is cut off. An unusable partial is discarded.
    pub(crate) fn load_partial(&self, id: &ArtifactId) -> Result<Option<PartialArtifact>> {
        let hdr = self.path("partial", id, "hdr");
        let dat = self.path("partial", id, "dat");
        if !hdr.exists() {
            self.discard_partial(id)?;
            return Ok(None);
        }
        let (body, key) = match read_any_header(&hdr, id, &self.inner.device, false) {
            Ok(x) => x,
            Err(ArtifactError::Io(e)) => return Err(ArtifactError::Io(e)),
            Err(_) => {
                self.discard_partial(id)?;
                return Ok(None);
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&dat)?;
        let Some(key) = key else {
            // Kept for others: whole records are kept (they cannot be
            // opened here; their recipients check them).
            let on_disk = file.metadata()?.len();
            let mut valid_len = 0u64;
            let mut index = 0u32;
            while index < body.chunk_count {
                let len = (chunk_len(body.size, index).unwrap_or(0) + RECORD_OVERHEAD) as u64;
                if valid_len + len > on_disk {
                    break;
                }
                valid_len += len;
                index += 1;
            }
            file.set_len(valid_len)?;
            file.seek(SeekFrom::Start(valid_len))?;
            return Ok(Some(PartialArtifact::new(
                self,
                &body,
                DataKey::random(),
                file,
                Sha256::new(),
                index,
                None,
            )?));
        };
        let cipher = key.cipher();
        let mut hasher = Sha256::new();
        let mut record = vec![0u8; CHUNK_SIZE + RECORD_OVERHEAD];
        let mut valid_len = 0u64;
        file.seek(SeekFrom::Start(0))?;
        let mut index = 0u32;
        while index < body.chunk_count {
            let len = chunk_len(body.size, index).unwrap_or(0) + RECORD_OVERHEAD;
            if read_full(&mut file, &mut record[..len])? != len {
                break;
            }
            let Ok(plain) = open_chunk(
                &cipher,
                id,
                index,
                index + 1 == body.chunk_count,
                &mut record[..len],
            ) else {
                break;
            };
            hasher.update(&plain);
            valid_len += len as u64;
            index += 1;
        }
        file.set_len(valid_len)?;
        file.seek(SeekFrom::Start(valid_len))?;
        Ok(Some(PartialArtifact::new(
            self, &body, key, file, hasher, index, None,
        )?))
    }

    /// Starts a partial transfer for validated metadata, after the quota
    /// check, under `key` (the holder's in a sealed transfer, a fresh one
    /// otherwise). `sealing` says how the artifact is sealed when it is
    /// restricted: for this device among its recipients, or kept for them.
    pub(crate) fn create_partial(
        &self,
        id: &ArtifactId,
        size: u64,
        mime_type: Option<String>,
        key: Option<DataKey>,
        sealing: Sealing,
    ) -> Result<PartialArtifact> {
        let count = chunk::chunk_count(size)
            .ok_or_else(|| ArtifactError::BadMetadata("artifact too large".into()))?;
        let recipients = match &sealing {
            Sealing::Open => 1,
            Sealing::Recipient(w) | Sealing::Relay(w) => w.len() + 1,
        };
        let reservation = self.reserve(footprint(size, recipients, mime_type.as_deref()))?;
        let key = key.unwrap_or_else(DataKey::random);
        let (wrapped, restricted, relay) = match sealing {
            Sealing::Open => (
                vec![keys::wrap(&key, id, &self.public_key())?],
                false,
                false,
            ),
            Sealing::Recipient(mut wrapped) => {
                let me = self.public_key();
                if !wrapped
                    .iter()
                    .any(|w| w.recipient.as_bytes() == me.as_bytes())
                {
                    wrapped.push(keys::wrap(&key, id, &me)?);
                }
                (wrapped, true, false)
            }
            Sealing::Relay(wrapped) => (wrapped, true, true),
        };
        let body = HeaderBody {
            format: HEADER_FORMAT,
            id: *id,
            size,
            chunk_count: count,
            mime_type,
            chunk_hashes: Vec::new(),
            wrapped,
            restricted,
            relay,
        };
        let hdr = self.path("partial", id, "hdr");
        let dat = self.path("partial", id, "dat");
        let cleanup = Cleanup(vec![hdr.clone(), dat.clone()]);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dat)?;
        let header = if relay {
            encode_relay_header(&body, &self.inner.device)?
        } else {
            encode_header(&body, &key)?
        };
        write_durable(&hdr, &header)?;
        sync_dir(&self.inner.root.join("partial"))?;
        cleanup.disarm();
        PartialArtifact::new(self, &body, key, file, Sha256::new(), 0, Some(reservation))
    }
}

/// How a fetched artifact is sealed at rest.
#[derive(Debug, Clone)]
pub(crate) enum Sealing {
    /// For this device (any authorised device may ask its holders for it).
    Open,
    /// Restricted to the devices of these wrapped keys, this device among
    /// them (its own wrap is added if missing).
    Recipient(Vec<WrappedKey>),
    /// Restricted to the devices of these wrapped keys, this device not
    /// among them: the records are kept as received, unopened.
    Relay(Vec<WrappedKey>),
}

impl Sealing {
    /// Whether a partial transfer can go on under this sealing: a copy
    /// kept for others only with the same recipients' keys, since its
    /// records cannot be checked here.
    pub(crate) fn continues(&self, partial: &PartialArtifact) -> bool {
        match (partial.relay_keys(), self) {
            (Some(kept), Sealing::Relay(wrapped)) => kept == wrapped.as_slice(),
            (None, Sealing::Relay(_)) | (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

fn index_bytes(size: u64, chunks: u32) -> u64 {
    (u64::from(chunks) * CHUNK_SIZE as u64).min(size)
}

/// A stored artifact opened for verified, chunk-by-chunk reading.
pub struct ArtifactReader {
    info: ArtifactInfo,
    /// `None` for a copy kept for others.
    cipher: Option<ChaCha20Poly1305>,
    key: Option<DataKey>,
    /// The data key, wrapped for each recipient.
    wrapped: Vec<WrappedKey>,
    file: File,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ArtifactReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ArtifactReader {
    /// The artifact's metadata.
    pub fn info(&self) -> &ArtifactInfo {
        &self.info
    }

    /// Reads chunk `index`, checking its AEAD tag (with the id, index and
    /// last-chunk flag as AAD).
    pub fn read_chunk(&mut self, index: u32) -> Result<Bytes> {
        let Some(cipher) = &self.cipher else {
            return Err(ArtifactError::NotARecipient { id: self.info.id });
        };
        read_record(&mut self.file, &self.info, index, &mut self.buf)?;
        let last = index + 1 == self.info.chunk_count;
        // No second hash pass: the AEAD tag already authenticates this chunk
        // with the artifact id, its index and whether it is the last bound in,
        // under a key only this store can unwrap. Exports and transfers still
        // check the whole artifact's SHA-256 against its id.
        open_chunk(cipher, &self.info.id, index, last, &mut self.buf)
    }

    /// Reads chunk `index` as stored, without opening it: the ciphertext
    /// (same length as the plaintext) and the nonce followed by the tag. This
    /// is what a sealed transfer sends; the receiver, holding the data key,
    /// authenticates it. The ciphertext is a view of a fresh buffer, so it
    /// can be handed on without a copy.
    pub fn read_sealed_chunk(&mut self, index: u32) -> Result<(Bytes, FixedBytes<28>)> {
        let mut record = Vec::new();
        read_record(&mut self.file, &self.info, index, &mut record)?;
        let ct_end = record.len() - TAG_LEN;
        let mut seal = [0u8; NONCE_LEN + TAG_LEN];
        seal[..NONCE_LEN].copy_from_slice(&record[..NONCE_LEN]);
        seal[NONCE_LEN..].copy_from_slice(&record[ct_end..]);
        let record = Bytes::from(record);
        Ok((record.slice(NONCE_LEN..ct_end), FixedBytes(seal)))
    }

    /// This artifact's data key wrapped for `recipient`: what a sealed
    /// transfer sends in its metadata. A copy kept for others has only the
    /// recipients' wraps: another key is `NotARecipient`.
    pub fn wrap_key_for(&self, recipient: &PublicKey) -> Result<WrappedDataKey> {
        match &self.key {
            Some(key) => keys::wrap(key, &self.info.id, recipient),
            None => self
                .wrapped
                .iter()
                .find(|w| w.recipient.as_bytes() == recipient.as_bytes())
                .cloned()
                .ok_or(ArtifactError::NotARecipient { id: self.info.id }),
        }
    }

    /// For a restricted artifact, its data key wrapped for each recipient
    /// (what ARTIFACT_METADATA's `recipient_keys` carries); `None`
    /// otherwise.
    pub fn recipient_keys(&self) -> Option<Vec<WrappedDataKey>> {
        self.info.restricted.then(|| self.wrapped.clone())
    }
}

/// Reads the sealed record of chunk `index` of the artifact `info` describes
/// from its data `file` into `buf` (resized to it).
fn read_record(file: &mut File, info: &ArtifactInfo, index: u32, buf: &mut Vec<u8>) -> Result<()> {
    let count = info.chunk_count;
    let len = chunk_len(info.size, index).ok_or_else(|| ArtifactError::BadChunk {
        index,
        reason: format!("past the last chunk ({count} chunks)"),
    })?;
    let rec_len = len + RECORD_OVERHEAD;
    buf.clear();
    buf.reserve_exact(rec_len);
    file.seek(SeekFrom::Start(u64::from(index) * RECORD_STRIDE))?;
    // Into the spare capacity: no zero-filling first.
    let n = (&mut *file).take(rec_len as u64).read_to_end(buf)?;
    if n != rec_len {
        return Err(ArtifactError::Truncated {
            expected: sealed_len(info.size),
            actual: file.metadata()?.len(),
        });
    }
    Ok(())
}

/// A transfer being written to `partial/`: verified chunks, sealed and appended.
pub(crate) struct PartialArtifact {
    store: ArtifactStore,
    pub(crate) id: ArtifactId,
    pub(crate) size: u64,
    pub(crate) chunk_count: u32,
    mime_type: Option<String>,
    key: DataKey,
    cipher: ChaCha20Poly1305,
    file: File,
    /// The whole SHA-256, on its own thread.
    hashing: Hashing,
    /// Chunks held and verified.
    chunks: u32,
    unsynced: u32,
    record: Vec<u8>,
    /// Set for a sealed transfer: the holder's data key.
    incoming: Option<Incoming>,
    reservation: Option<Reservation>,
    /// For a restricted artifact: the data key wrapped for each recipient.
    restricted: Option<Vec<WrappedKey>>,
    /// Kept for the recipients: records stored as received, unopened
    /// (`key` is then a placeholder, never used).
    relay: bool,
}

/// How a sealed transfer's chunks are opened and kept.
struct Incoming {
    /// The holder's data key, to open (authenticate) each chunk.
    cipher: ChaCha20Poly1305,
    /// Whether it is also this partial's key: the received record is then
    /// stored as it is. Otherwise (a resume from another holder) each chunk
    /// is sealed again under this partial's key.
    verbatim: bool,
}

/// Writes a range of a partial artifact's sealed records received from a
/// second holder at the same time as the partial's own transfer (docs/
/// PROTOCOL.md, "Two holders at once"): each record goes to its place in the
/// partial's file, as received, unverified until the partial reaches it
/// ([`PartialArtifact::absorb_written`]), which opens each one then. A
/// record that does not open is fetched again; nothing unverified is ever
/// read back as the artifact.
pub(crate) struct RangeWriter {
    file: File,
    size: u64,
    chunk_count: u32,
    /// The next chunk expected.
    next: u32,
    unsynced: u32,
}

impl RangeWriter {
    /// The next chunk this range expects.
    pub(crate) fn next(&self) -> u32 {
        self.next
    }

    /// Writes chunk `index` (the next one) as received: `ciphertext` and
    /// `seal` (nonce || tag), at its place in the partial's file.
    pub(crate) fn write(
        &mut self,
        index: u32,
        ciphertext: &[u8],
        seal: &[u8; NONCE_LEN + TAG_LEN],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let want = chunk_len(self.size, index).unwrap_or(0);
        if index != self.next || index >= self.chunk_count || ciphertext.len() != want {
            return Err(ArtifactError::BadChunk {
                index,
                reason: format!(
                    "expected chunk {} of {} bytes",
                    self.next,
                    chunk_len(self.size, self.next).unwrap_or(0)
                ),
            });
        }
        let at = u64::from(index) * RECORD_STRIDE;
        let (nonce, tag) = seal.split_at(NONCE_LEN);
        self.file.write_all_at(nonce, at)?;
        self.file.write_all_at(ciphertext, at + NONCE_LEN as u64)?;
        self.file
            .write_all_at(tag, at + (NONCE_LEN + ciphertext.len()) as u64)?;
        self.next += 1;
        sync_every(&self.file, &mut self.unsynced)
    }
}

/// Counts one more record written to `file`, and syncs it every
/// [`SYNC_EVERY_CHUNKS`] records.
fn sync_every(file: &File, unsynced: &mut u32) -> Result<()> {
    *unsynced += 1;
    if *unsynced >= SYNC_EVERY_CHUNKS {
        file.sync_data()?;
        *unsynced = 0;
    }
    Ok(())
}

impl ArtifactStore {
    /// What a [`crate::RangeReceiver`] needs to complete the partial
    /// transfer of `id` under way (its size and data key, from the
    /// partial's header): `NotFound` when none is.
    pub fn range_key(&self, id: &ArtifactId) -> Result<crate::RangeKey> {
        let hdr = self.path("partial", id, "hdr");
        if !hdr.exists() {
            return Err(ArtifactError::NotFound { id: *id });
        }
        let (body, key) = read_header(&hdr, id, &self.inner.device, false)?;
        Ok(crate::RangeKey::new(key, body.size))
    }

    /// A writer of the records of `partial`'s chunks from `start`, received
    /// from a second holder under the same data key `key` (a range received
    /// under another key cannot be kept as received: `BadMetadata`).
    pub(crate) fn range_writer(
        &self,
        id: &ArtifactId,
        size: u64,
        start: u32,
        key: &DataKey,
        partial_key: &DataKey,
    ) -> Result<RangeWriter> {
        if !key.same_as(partial_key) {
            return Err(ArtifactError::BadMetadata(
                "the second holder's data key is not the first's: its records cannot be kept as received".into(),
            ));
        }
        let chunk_count = chunk::chunk_count(size)
            .ok_or_else(|| ArtifactError::BadMetadata("artifact too large".into()))?;
        let file = OpenOptions::new()
            .write(true)
            .open(self.path("partial", id, "dat"))?;
        Ok(RangeWriter {
            file,
            size,
            chunk_count,
            next: start,
            unsynced: 0,
        })
    }
}

impl PartialArtifact {
    /// A partial of the artifact `body` describes, `chunks` of them held
    /// in `file` (and hashed into `hasher`).
    fn new(
        store: &ArtifactStore,
        body: &HeaderBody,
        key: DataKey,
        file: File,
        hasher: Sha256,
        chunks: u32,
        reservation: Option<Reservation>,
    ) -> Result<PartialArtifact> {
        Ok(PartialArtifact {
            store: store.clone(),
            id: body.id,
            size: body.size,
            chunk_count: body.chunk_count,
            mime_type: body.mime_type.clone(),
            cipher: key.cipher(),
            key,
            file,
            hashing: Hashing::start(hasher)?,
            chunks,
            unsynced: 0,
            record: Vec::with_capacity(CHUNK_SIZE + RECORD_OVERHEAD),
            incoming: None,
            reservation,
            restricted: body.restricted.then(|| body.wrapped.clone()),
            relay: body.relay,
        })
    }

    /// Whether this partial is kept for others (see [`Sealing::Relay`]),
    /// and then the recipients' wrapped keys it keeps.
    pub(crate) fn relay_keys(&self) -> Option<&[WrappedKey]> {
        self.restricted.as_deref().filter(|_| self.relay)
    }

    /// Takes the chunks that follow as sealed records for others: kept as
    /// received ([`Sealing::Relay`]).
    pub(crate) fn expect_relayed(&mut self) {
        self.incoming = Some(Incoming {
            cipher: self.key.cipher(),
            verbatim: true,
        });
    }

    /// Takes in the records a [`RangeWriter`] wrote after the chunks held,
    /// up to `end` (not included): each is read from its place, opened with
    /// this partial's key and hashed, as if it had just been received. Stops
    /// at the first that is missing or does not open (it is fetched again).
    /// Returns how many were taken in.
    pub(crate) fn absorb_written(&mut self, end: u32) -> Result<u32> {
        use std::os::unix::fs::FileExt;
        let first = self.chunks;
        let end = end.min(self.chunk_count);
        let mut record = vec![0u8; CHUNK_SIZE + RECORD_OVERHEAD];
        while self.chunks < end {
            let index = self.chunks;
            let len = chunk_len(self.size, index).unwrap_or(0) + RECORD_OVERHEAD;
            let at = u64::from(index) * RECORD_STRIDE;
            if self.file.read_exact_at(&mut record[..len], at).is_err() {
                break;
            }
            let last = index + 1 == self.chunk_count;
            let Ok(plain) = open_chunk(&self.cipher, &self.id, index, last, &mut record[..len])
            else {
                break;
            };
            let mut copy = self.hashing.buffer(plain.len());
            copy.copy_from_slice(&plain);
            self.account(copy)?;
        }
        // Appends go on after what was taken in; a record that did not open
        // is written over.
        self.file
            .seek(SeekFrom::Start(u64::from(self.chunks) * RECORD_STRIDE))?;
        Ok(self.chunks - first)
    }

    /// Chunks held and verified.
    pub(crate) fn chunks_done(&self) -> u32 {
        self.chunks
    }

    /// Plaintext bytes held and verified (those of the first `chunks_done`).
    pub(crate) fn bytes_done(&self) -> u64 {
        index_bytes(self.size, self.chunks)
    }

    /// Where a transfer into this partial stands, counted as starting here.
    pub(crate) fn progress(&self) -> Progress {
        let done = self.bytes_done();
        Progress {
            bytes_done: done,
            bytes_total: self.size,
            chunks_done: self.chunks,
            chunks_total: self.chunk_count,
            bytes_at_start: done,
        }
    }

    /// Reserves what is still to be written, for a resumed transfer.
    pub(crate) fn reserve_remaining(&mut self) -> Result<()> {
        if self.reservation.is_none() {
            let on_disk = sealed_len(self.bytes_done());
            let need = footprint(self.size, 1, self.mime_type.as_deref()).saturating_sub(on_disk);
            self.reservation = Some(self.store.reserve(need)?);
        }
        Ok(())
    }

    /// Takes the chunks that follow as sealed under the holder's `key`.
    pub(crate) fn expect_sealed(&mut self, key: &DataKey) {
        self.incoming = Some(Incoming {
            cipher: key.cipher(),
            verbatim: key.same_as(&self.key),
        });
    }

    /// Whether the chunks that follow are sealed.
    pub(crate) fn is_sealed(&self) -> bool {
        self.incoming.is_some()
    }

    /// Seals and appends the next chunk (already verified by the caller).
    pub(crate) fn append(&mut self, plain: &[u8]) -> Result<()> {
        self.seal_and_write(plain)?;
        let mut copy = self.hashing.buffer(plain.len());
        copy.copy_from_slice(plain);
        self.account(copy)
    }

    /// Seals `plain` as the next chunk under this partial's key and writes
    /// the record.
    fn seal_and_write(&mut self, plain: &[u8]) -> Result<()> {
        let index = self.chunks_done();
        seal_chunk(
            &self.cipher,
            &self.id,
            index,
            index + 1 == self.chunk_count,
            plain,
            &mut self.record,
        )?;
        self.file.write_all(&self.record)?;
        Ok(())
    }

    /// Opens the next chunk of a sealed transfer (`ciphertext`, and `seal` =
    /// nonce || tag) with the holder's key, checks it against `claimed_hash`,
    /// and appends it: the record as received when the keys are the same,
    /// sealed again otherwise. A chunk that fails authentication or its hash
    /// is `ChunkHashMismatch`, and nothing is written.
    pub(crate) fn append_sealed(
        &mut self,
        ciphertext: &[u8],
        seal: &[u8; NONCE_LEN + TAG_LEN],
        claimed_hash: Option<Hash32>,
    ) -> Result<()> {
        let index = self.chunks_done();
        let last = index + 1 == self.chunk_count;
        let Some(incoming) = &self.incoming else {
            return Err(ArtifactError::Protocol(
                "no data key for a sealed chunk".into(),
            ));
        };
        let verbatim = incoming.verbatim;
        let (nonce, tag) = seal.split_at(NONCE_LEN);
        if self.relay {
            // Not for this device: kept as received, opened by its
            // recipients (who check the tag, then the whole hash).
            write_all_vectored(
                &mut self.file,
                &mut [nonce, ciphertext, tag].map(IoSlice::new),
            )?;
            self.chunks += 1;
            return sync_every(&self.file, &mut self.unsynced);
        }
        let mismatch = |_| ArtifactError::ChunkHashMismatch { index };
        // Decrypted from the received bytes straight into a buffer that then
        // goes to the hashing thread.
        let mut plain = self.hashing.buffer(ciphertext.len());
        let buf = InOutBuf::new(ciphertext, &mut plain)
            .map_err(|_| ArtifactError::Protocol("chunk buffer of the wrong length".into()))?;
        incoming
            .cipher
            .decrypt_inout_detached(
                <&Nonce>::try_from(nonce).map_err(mismatch)?,
                &chunk_aad(&self.id, index, last),
                buf,
                <&Tag>::try_from(tag).map_err(mismatch)?,
            )
            .map_err(|_| ArtifactError::ChunkHashMismatch { index })?;
        // The tag authenticated the chunk; a claimed hash is checked too.
        chunk::check_claimed_hash(index, claimed_hash, &plain)?;
        if verbatim {
            // Written in place, without assembling the record first.
            write_all_vectored(
                &mut self.file,
                &mut [nonce, ciphertext, tag].map(IoSlice::new),
            )?;
        } else {
            self.seal_and_write(&plain)?;
        }
        self.account(plain)
    }

    /// Accounts for the next chunk, its record written: hands its plaintext
    /// to the hashing thread, counts it, and syncs every
    /// [`SYNC_EVERY_CHUNKS`].
    fn account(&mut self, plain: Vec<u8>) -> Result<()> {
        self.hashing.push(plain)?;
        self.chunks += 1;
        sync_every(&self.file, &mut self.unsynced)
    }

    /// Verifies the whole hash and moves the artifact into the store; on a
    /// mismatch the partial is discarded.
    pub(crate) fn finish(mut self) -> Result<ArtifactId> {
        let whole = self.hashing.finish()?;
        // A copy kept for others cannot be hashed here: its recipients do.
        let actual = if self.relay {
            self.id
        } else {
            ArtifactId::from(whole)
        };
        let store = self.store.clone();
        let id = self.id;
        if actual != id || self.chunks_done() != self.chunk_count {
            drop(self);
            store.discard_partial(&id)?;
            return Err(ArtifactError::HashMismatch {
                expected: id,
                actual,
            });
        }
        self.file.sync_all()?;
        let restricted = self.restricted.take();
        let body = HeaderBody {
            format: HEADER_FORMAT,
            id,
            size: self.size,
            chunk_count: self.chunk_count,
            mime_type: self.mime_type.clone(),
            chunk_hashes: Vec::new(),
            restricted: restricted.is_some(),
            wrapped: match restricted {
                Some(wrapped) => wrapped,
                None => vec![keys::wrap(&self.key, &id, &store.public_key())?],
            },
            relay: self.relay,
        };
        let tmp_hdr = store.inner.root.join("tmp").join(format!(
            "{}.{:016x}.hdr",
            id.to_hex(),
            OsRng.next_u64()
        ));
        let cleanup = Cleanup(vec![tmp_hdr.clone()]);
        let header = if self.relay {
            encode_relay_header(&body, &store.inner.device)?
        } else {
            encode_header(&body, &self.key)?
        };
        write_durable(&tmp_hdr, &header)?;
        drop(self);
        fs::rename(
            store.path("partial", &id, "dat"),
            store.path("objects", &id, "dat"),
        )?;
        fs::rename(&tmp_hdr, store.path("objects", &id, "hdr"))?;
        cleanup.disarm();
        sync_dir(&store.inner.root.join("objects"))?;
        store.discard_partial(&id)?;
        Ok(id)
    }

    /// Deletes the partial files.
    pub(crate) fn discard(self) -> Result<()> {
        let store = self.store.clone();
        let id = self.id;
        drop(self);
        store.discard_partial(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, quota: Option<u64>) -> ArtifactStore {
        ArtifactStore::open(dir, DeviceKey::generate(), quota).expect("open")
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn put_export_round_trip_at_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        for n in [0usize, 1, 65_536, 65_537, 3 * 65_536 + 5] {
            let d = data(n);
            let id = s
                .put_bytes(&d, Some("application/octet-stream"), &[])
                .expect("put");
            assert_eq!(id, ArtifactId::of(&d));
            assert!(s.has(&id));
            let info = s.metadata(&id).expect("meta");
            assert_eq!(info.size, n as u64);
            assert_eq!(Some(info.chunk_count), chunk::chunk_count(n as u64));
            let out = dir.path().join(format!("out-{n}"));
            s.export(&id, &out).expect("export");
            assert_eq!(fs::read(&out).expect("read"), d);
            // Nothing stored in the clear.
            if n >= 64 {
                let sealed = fs::read(s.path("objects", &id, "dat")).expect("dat");
                assert_eq!(sealed.len() as u64, sealed_len(n as u64));
                assert!(!sealed.windows(64).any(|w| w == &d[..64]));
            }
        }
        assert_eq!(s.list().expect("list").len(), 5);
    }

    /// BAD_INPUTS #26: at-rest ciphertext that fails authentication is an error, never plaintext.
    #[test]
    fn tampered_chunk_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let d = data(200_000);
        let id = s.put_bytes(&d, None, &[]).expect("put");
        let p = s.path("objects", &id, "dat");
        let mut sealed = fs::read(&p).expect("read");
        sealed[RECORD_STRIDE as usize + 40] ^= 1; // inside chunk 1's ciphertext
        fs::write(&p, &sealed).expect("write");
        assert!(s.read_chunk(&id, 0).is_ok());
        assert!(matches!(
            s.read_chunk(&id, 1),
            Err(ArtifactError::Tampered { index: 1 })
        ));
        let out = dir.path().join("out");
        assert!(matches!(
            s.export(&id, &out),
            Err(ArtifactError::Tampered { index: 1 })
        ));
        assert!(!out.exists());
    }

    /// BAD_INPUTS #26: nonces never repeat. Identical chunks of one artifact
    /// are sealed under distinct random nonces (so their ciphertexts
    /// differ), and the same content stored twice is sealed afresh.
    #[test]
    fn bad_input_26_identical_chunks_never_share_a_nonce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zeros = vec![0u8; CHUNK_SIZE * 16];
        let records = |s: &ArtifactStore, id: &ArtifactId| -> Vec<Vec<u8>> {
            let sealed = fs::read(s.path("objects", id, "dat")).expect("read");
            sealed
                .chunks(RECORD_STRIDE as usize)
                .map(<[u8]>::to_vec)
                .collect()
        };
        let first = store(&dir.path().join("one"), None);
        let id = first.put_bytes(&zeros, None, &[]).expect("put");
        let mine = records(&first, &id);
        assert_eq!(mine.len(), 16);
        let mut nonces: Vec<&[u8]> = mine.iter().map(|r| &r[..NONCE_LEN]).collect();
        let mut bodies: Vec<&[u8]> = mine.iter().map(|r| &r[NONCE_LEN..]).collect();
        nonces.sort_unstable();
        nonces.dedup();
        bodies.sort_unstable();
        bodies.dedup();
        assert_eq!(nonces.len(), 16, "a nonce was used twice");
        assert_eq!(bodies.len(), 16, "two identical chunks sealed alike");
        let second = store(&dir.path().join("two"), None);
        let again = records(&second, &second.put_bytes(&zeros, None, &[]).expect("put"));
        assert!(mine
            .iter()
            .all(|r| again.iter().all(|o| r[..NONCE_LEN] != o[..NONCE_LEN])));
    }

    #[test]
    fn swapped_chunks_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let d = data(3 * CHUNK_SIZE);
        let id = s.put_bytes(&d, None, &[]).expect("put");
        let p = s.path("objects", &id, "dat");
        let mut sealed = fs::read(&p).expect("read");
        let stride = RECORD_STRIDE as usize;
        let (a, b) = sealed.split_at_mut(stride);
        a.swap_with_slice(&mut b[..stride]);
        fs::write(&p, &sealed).expect("write");
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(ArtifactError::Tampered { index: 0 })
        ));
        assert!(matches!(
            s.read_chunk(&id, 1),
            Err(ArtifactError::Tampered { index: 1 })
        ));
        assert!(s.read_chunk(&id, 2).is_ok());
    }

    #[test]
    fn truncated_data_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let id = s.put_bytes(&data(150_000), None, &[]).expect("put");
        let p = s.path("objects", &id, "dat");
        let len = fs::metadata(&p).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open")
            .set_len(len - 100)
            .expect("trunc");
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(ArtifactError::Truncated { .. })
        ));
        assert!(matches!(
            s.export(&id, &dir.path().join("o")),
            Err(ArtifactError::Truncated { .. })
        ));
    }

    #[test]
    fn dropping_the_last_chunk_is_detected() {
        // Cut exactly one whole record and fix the header's size: the new last
        // chunk was sealed with is_last = false, so it fails.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let id = s.put_bytes(&data(2 * CHUNK_SIZE), None, &[]).expect("put");
        let (mut body, key) =
            read_header(&s.path("objects", &id, "hdr"), &id, &s.inner.device, true).expect("hdr");
        body.size = CHUNK_SIZE as u64;
        body.chunk_count = 1;
        // Even re-MACed with the right key (an insider), the AAD catches it.
        write_durable(
            &s.path("objects", &id, "hdr"),
            &encode_header(&body, &key).expect("enc"),
        )
        .expect("w");
        let p = s.path("objects", &id, "dat");
        OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open")
            .set_len(RECORD_STRIDE)
            .expect("trunc");
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(ArtifactError::Tampered { index: 0 })
        ));
    }

    #[test]
    fn vectored_writes_survive_short_writes() {
        /// Takes at most 3 bytes per call, from the first non-empty part.
        struct Trickle(Vec<u8>);
        impl Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Trickle(Vec::new());
        let parts: [&[u8]; 4] = [b"nonce", b"", b"ciphertext", b"tag!"];
        write_all_vectored(&mut w, &mut parts.map(IoSlice::new)).expect("write");
        assert_eq!(w.0, b"nonceciphertexttag!");
    }

    #[test]
    fn a_header_of_the_earlier_format_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let bytes = data(2 * CHUNK_SIZE + 5);
        let id = s.put_bytes(&bytes, None, &[]).expect("put");
        let hdr = s.path("objects", &id, "hdr");
        let (mut body, key) = read_header(&hdr, &id, &s.inner.device, true).expect("hdr");
        assert_eq!(body.format, HEADER_FORMAT);
        assert!(body.chunk_hashes.is_empty());
        let rewrite = |body: &HeaderBody| {
            write_durable(&hdr, &encode_header(body, &key).expect("enc")).expect("w");
        };
        // Format 2, as written before: one BLAKE3 hash per chunk.
        body.format = HEADER_FORMAT_WITH_CHUNK_HASHES;
        body.chunk_hashes = bytes.chunks(CHUNK_SIZE).map(chunk::chunk_hash).collect();
        rewrite(&body);
        let out = dir.path().join("out");
        s.export(&id, &out).expect("export");
        assert_eq!(fs::read(&out).expect("read"), bytes);
        // A format-2 header missing a hash is malformed...
        body.chunk_hashes.pop();
        rewrite(&body);
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(ArtifactError::BadMetadata(_))
        ));
        // ...and so is a format-3 header with hashes.
        body.format = HEADER_FORMAT;
        rewrite(&body);
        assert!(matches!(
            s.read_chunk(&id, 0),
            Err(ArtifactError::BadMetadata(_))
        ));
    }

    #[test]
    fn edited_header_fails_authentication() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let id = s
            .put_bytes(&data(10), Some("text/plain"), &[])
            .expect("put");
        let p = s.path("objects", &id, "hdr");
        let raw = fs::read(&p).expect("read");
        let text_at = raw
            .windows(10)
            .position(|w| w == b"text/plain")
            .expect("mime in header");
        let mut edited = raw.clone();
        edited[text_at] = b'T';
        fs::write(&p, &edited).expect("write");
        assert!(matches!(
            s.metadata(&id),
            Err(ArtifactError::BadMetadata(_))
        ));
    }

    #[test]
    fn not_a_recipient() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = DeviceKey::generate();
        let s = store(dir.path(), None);
        let id = s
            .put_bytes(&data(1000), None, &[other.public()])
            .expect("put");
        assert!(s.is_recipient(&id, &other.public()).expect("meta"));
        // The same files opened by a device that is not in encrypted_for.
        let stranger = ArtifactStore::open(dir.path(), DeviceKey::generate(), None).expect("open");
        assert!(matches!(
            stranger.read_chunk(&id, 0),
            Err(ArtifactError::NotARecipient { .. })
        ));
        // A recipient device can open them.
        let recipient = ArtifactStore::open(dir.path(), other, None).expect("open");
        assert_eq!(recipient.read_chunk(&id, 0).expect("read"), data(1000));
    }

    #[test]
    fn quota_exceeded_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), Some(100_000));
        let small = s.put_bytes(&data(10_000), None, &[]).expect("fits");
        let before = s.used_bytes().expect("used");
        let err = s
            .put_bytes(&data(200_000), None, &[])
            .expect_err("over quota");
        assert!(matches!(err, ArtifactError::QuotaExceeded { .. }));
        assert_eq!(s.used_bytes().expect("used"), before);
        assert_eq!(s.list().expect("list"), vec![small]);
    }

    #[test]
    fn remove_and_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), None);
        let a = s.put_bytes(b"a", None, &[]).expect("put");
        let b = s.put_bytes(b"b", None, &[]).expect("put");
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(s.list().expect("list"), both);
        s.remove(&a).expect("remove");
        assert!(!s.has(&a));
        assert!(matches!(s.remove(&a), Err(ArtifactError::NotFound { .. })));
        assert!(matches!(
            s.read_chunk(&a, 0),
            Err(ArtifactError::NotFound { .. })
        ));
        assert_eq!(s.list().expect("list"), vec![b]);
    }
}
