//! The frame: a fixed header, a MessagePack payload, a BLAKE3 checksum.
//!
//! ```text
//! version u8 | message_type u16 | message_id [16] | timestamp i64 | payload_length u32 | payload | blake3(payload) [32]
//! ```
//! All integers are big-endian. A frame whose `message_type` has its top
//! bit set ([`COMPRESSED`]) carries its payload compressed: the payload's
//! length as a `u32`, then the payload as an LZ4 block (see
//! [`compress_frame`]); the checksum covers the bytes on the wire.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bytes_fixed::MessageId;
use crate::checksum::AlignedHasher;
use crate::error::{DecodeError, EncodeError};
use crate::message::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 1 + 2 + 16 + 8 + 4;
/// Size of the trailing checksum in bytes.
pub const CHECKSUM_LEN: usize = 32;
/// Largest `chunk_data` an `ARTIFACT_CHUNK` may carry: 64 KiB.
pub const MAX_CHUNK_DATA: usize = 64 * 1024;
/// Default maximum payload: one full chunk plus room for its fields.
pub const DEFAULT_MAX_PAYLOAD: u32 = (MAX_CHUNK_DATA + 1024) as u32;
/// The bit of a frame's `message_type` that marks its payload compressed
/// (LZ4 block format, after the payload's length as a `u32`).
pub const COMPRESSED: u16 = 0x8000;
/// Payloads shorter than this are not worth compressing.
pub const MIN_COMPRESSED_PAYLOAD: usize = 256;
/// Default maximum MessagePack nesting depth (maps and arrays).
pub const DEFAULT_MAX_DEPTH: usize = 24;

/// Limits a decoder enforces on untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `payload_length`; checked before anything is buffered for it.
    pub max_payload: u32,
    /// Deepest accepted nesting of MessagePack maps and arrays.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

macro_rules! messages {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $code:literal, $name:literal; )*) => {
        /// Every message type code of protocol version 1.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum MessageType {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl MessageType {
            /// Every assigned message type.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant),*];

            /// The type for a wire code, if assigned.
            pub fn from_code(code: u16) -> Option<MessageType> {
                match code {
                    $( $code => Some(MessageType::$variant), )*
                    _ => None,
                }
            }

            /// The wire code.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The protocol's name for it, e.g. `"SYNC_OPERATION"`.
            pub fn name(self) -> &'static str {
                match self {
                    $( MessageType::$variant => $name, )*
                }
            }
        }

        /// A decoded message: one variant per message type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Message {
            $( $(#[$doc])* $variant($ty), )*
        }

        $(
            impl From<$ty> for Message {
                fn from(m: $ty) -> Self {
                    Message::$variant(m)
                }
            }
        )*

        impl Message {
            /// This message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( Message::$variant(_) => MessageType::$variant, )*
                }
            }

            /// Appends the MessagePack payload to `dst`.
            pub fn write_payload(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
                self.write_payload_to(&mut dst.writer())
            }

            /// Writes the MessagePack payload to `w`.
            fn write_payload_to(&self, w: &mut impl std::io::Write) -> Result<(), EncodeError> {
                match self {
                    $( Message::$variant(m) => write_payload(m, w), )*
                }
            }

            /// Decodes a payload of the given type under `limits`, accepting only
            /// its canonical encoding.
            pub fn decode_payload(
                message_type: MessageType,
                payload: &[u8],
                limits: &Limits,
            ) -> Result<Message, DecodeError> {
                match message_type {
                    $( MessageType::$variant => {
                        decode_payload::<$ty>(payload, limits, $name).map(Message::$variant)
                    } )*
                }
            }
        }
    };
}

messages! {
    /// `HELLO`
    Hello(Hello) = 0x0001, "HELLO";
    /// `HELLO_ACK`
    HelloAck(HelloAck) = 0x0002, "HELLO_ACK";
    /// `SYNC_REQUEST`
    SyncRequest(SyncRequest) = 0x0101, "SYNC_REQUEST";
    /// `SYNC_OPERATION`
    SyncOperation(SyncOperation) = 0x0102, "SYNC_OPERATION";
    /// `SYNC_COMPLETE`
    SyncComplete(SyncComplete) = 0x0103, "SYNC_COMPLETE";
    /// `ACK`
    Ack(Ack) = 0x0104, "ACK";
    /// `BATCHED_SYNC`
    BatchedSync(BatchedSync) = 0x0105, "BATCHED_SYNC";
    /// `DELTA_SYNC`
    DeltaSync(DeltaSync) = 0x0106, "DELTA_SYNC";
    /// `SYNC_SNAPSHOT`
    SyncSnapshot(SyncSnapshot) = 0x0107, "SYNC_SNAPSHOT";
    /// `HAVE`
    Have(Have) = 0x0108, "HAVE";
    /// `REVOCATION`
    Revocation(Revocation) = 0x0109, "REVOCATION";
    /// `ARTIFACT_REQUEST`
    ArtifactRequest(ArtifactRequest) = 0x0201, "ARTIFACT_REQUEST";
    /// `ARTIFACT_METADATA`
    ArtifactMetadata(ArtifactMetadata) = 0x0202, "ARTIFACT_METADATA";
    /// `ARTIFACT_CHUNK`
    ArtifactChunk(ArtifactChunk) = 0x0203, "ARTIFACT_CHUNK";
    /// `ARTIFACT_COMPLETE`
    ArtifactComplete(ArtifactComplete) = 0x0204, "ARTIFACT_COMPLETE";
    /// `HEARTBEAT`
    Heartbeat(Heartbeat) = 0x0301, "HEARTBEAT";
    /// `PRESENCE_UPDATE`
    PresenceUpdate(PresenceUpdate) = 0x0302, "PRESENCE_UPDATE";
    /// `ERROR`
    Error(ErrorMessage) = 0x0401, "ERROR";
    /// `RELAY_REQUEST`
    RelayRequest(RelayRequest) = 0x0501, "RELAY_REQUEST";
    /// `RELAY_OFFER`
    RelayOffer(RelayOffer) = 0x0502, "RELAY_OFFER";
    /// `RELAY_ACCEPT`
    RelayAccept(RelayAccept) = 0x0503, "RELAY_ACCEPT";
}

impl Message {
    /// The length of the bulk bytes a message carries (an `ARTIFACT_CHUNK`'s
    /// data, a `SYNC_SNAPSHOT`'s piece), which may not exceed
    /// [`MAX_CHUNK_DATA`]; `None` for the other types.
    pub fn bulk_data_len(&self) -> Option<usize> {
        match self {
            Message::ArtifactChunk(c) => Some(c.chunk_data.len()),
            Message::SyncSnapshot(s) => Some(s.data.len()),
            _ => None,
        }
    }
}

fn write_payload<T: Serialize>(msg: &T, w: &mut impl std::io::Write) -> Result<(), EncodeError> {
    rmp_serde::encode::write_named(w, msg).map_err(|e| EncodeError::Serialize(e.to_string()))
}

fn decode_payload<T: DeserializeOwned + Serialize>(
    payload: &[u8],
    limits: &Limits,
    name: &'static str,
) -> Result<T, DecodeError> {
    // Read in place: `bin` fields borrow the payload (and, inside
    // `bin_bytes::decoding_from`, share the frame's memory).
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    de.set_max_depth(limits.max_depth);
    let value = T::deserialize(&mut de).map_err(|e| match e {
        rmp_serde::decode::Error::DepthLimitExceeded => DecodeError::TooDeep {
            max_depth: limits.max_depth,
        },
        other => DecodeError::MalformedPayload {
            message: name,
            reason: other.to_string(),
        },
    })?;
    // One canonical encoding: what we would have written must be what we
    // read. Compared as it is written, without building a copy. A value
    // that re-encodes to a strict prefix of the payload was followed by
    // trailing bytes.
    let mut check = SameBytes {
        expected: payload,
        pos: 0,
    };
    match rmp_serde::encode::write_named(&mut check, &value) {
        Ok(()) if check.pos == payload.len() => Ok(value),
        Ok(()) => Err(DecodeError::TrailingBytes {
            extra: payload.len() - check.pos,
        }),
        Err(_) => Err(DecodeError::NonCanonical { message: name }),
    }
}

/// The writer behind [`Envelope::encode_shared`]: collects the payload as
/// pieces (copying small writes into `scratch`, keeping offered `bin` fields
/// as they are) and its checksum as it goes.
struct Segments {
    scratch: BytesMut,
    parts: Vec<Bytes>,
    checksum: AlignedHasher,
    len: usize,
}

impl std::io::Write for Segments {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.checksum.update(buf);
        self.len += buf.len();
        match crate::bytes_fixed::bin_bytes::take_offered(buf) {
            Some(shared) => {
                if !self.scratch.is_empty() {
                    self.parts.push(self.scratch.split().freeze());
                }
                self.parts.push(shared);
            }
            None => self.scratch.extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that only checks that the bytes written are `expected`, and fails
/// at the first difference.
struct SameBytes<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl std::io::Write for SameBytes<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len();
        let same = match self.expected.get(self.pos..end) {
            // Most writes are a marker or a short string: compared inline,
            // byte by byte, they cost less than a call to memcmp each (which
            // was a seventh of a SYNC_OPERATION's encode and decode).
            Some(expected) if buf.len() <= 16 => expected.iter().zip(buf).all(|(a, b)| a == b),
            Some(expected) => expected == buf,
            None => false,
        };
        if !same {
            return Err(std::io::Error::other("not the bytes received"));
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends a frame header (version, type, id, timestamp, payload length).
pub(crate) fn put_header(
    dst: &mut BytesMut,
    message_type: MessageType,
    message_id: MessageId,
    timestamp: i64,
    payload_len: u32,
) {
    put_coded_header(dst, message_type.code(), message_id, timestamp, payload_len);
}

/// [`put_header`] with the type's code as it goes on the wire (with the
/// [`COMPRESSED`] bit, for a compressed frame).
fn put_coded_header(
    dst: &mut BytesMut,
    code: u16,
    message_id: MessageId,
    timestamp: i64,
    payload_len: u32,
) {
    dst.put_u8(PROTOCOL_VERSION);
    dst.put_u16(code);
    dst.put_slice(message_id.as_bytes());
    dst.put_i64(timestamp);
    dst.put_u32(payload_len);
}

/// Appends to `dst` the frame of a payload already encoded: its header,
/// `payload` as it is, and its checksum. For payloads this crate wrote and
/// that were kept as bytes (a node's stored `BATCHED_SYNC` runs), so that
/// they travel without being decoded and encoded again; a payload not in
/// the canonical encoding of its type makes a frame every receiver rejects.
pub fn put_frame(
    dst: &mut BytesMut,
    message_type: MessageType,
    message_id: MessageId,
    timestamp: i64,
    payload: &[u8],
) -> Result<(), EncodeError> {
    put_coded_frame(dst, message_type.code(), message_id, timestamp, payload)
}

/// [`put_frame`] with the type's code as it goes on the wire.
fn put_coded_frame(
    dst: &mut BytesMut,
    code: u16,
    message_id: MessageId,
    timestamp: i64,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let len = u32::try_from(payload.len()).map_err(|_| EncodeError::PayloadTooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    dst.reserve(HEADER_LEN + payload.len() + CHECKSUM_LEN);
    put_coded_header(dst, code, message_id, timestamp, len);
    dst.put_slice(payload);
    dst.put_slice(blake3::hash(payload).as_bytes());
    Ok(())
}

/// Appends to `dst` a compressed frame of `message_type` whose payload,
/// `packed`, is already compressed (the payload's length as a `u32`, then an
/// LZ4 block: docs/PROTOCOL.md, "Compressed frames"), as [`put_frame`] does
/// for a plain one: for payloads kept compressed (a node's stored rows).
pub fn put_compressed_frame(
    dst: &mut BytesMut,
    message_type: MessageType,
    message_id: MessageId,
    timestamp: i64,
    packed: &[u8],
) -> Result<(), EncodeError> {
    let code = message_type.code() | COMPRESSED;
    put_coded_frame(dst, code, message_id, timestamp, packed)
}

/// The frame `frame` (one whole frame, as this crate encodes them) with its
/// payload compressed (LZ4 block format, after its length as a `u32`; the
/// type's [`COMPRESSED`] bit set; the checksum over the compressed bytes),
/// if that saves at least an eighth of the payload: `None` for a short
/// payload ([`MIN_COMPRESSED_PAYLOAD`]), one that does not compress
/// (already-compressed media), or a frame already compressed. Send it only
/// to a peer that announced the `"lz4"` capability.
pub fn compress_frame(frame: &[u8]) -> Option<Bytes> {
    let unlimited = Limits {
        max_payload: u32::MAX,
        ..Limits::default()
    };
    let header = FrameHeader::parse(frame, &unlimited).ok().flatten()?;
    let payload = frame.get(HEADER_LEN..frame.len().checked_sub(CHECKSUM_LEN)?)?;
    if header.compressed || payload.len() < MIN_COMPRESSED_PAYLOAD {
        return None;
    }
    let mut packed = u32::try_from(payload.len()).ok()?.to_be_bytes().to_vec();
    packed.extend_from_slice(&lz4_flex::block::compress(payload));
    if packed.len() > payload.len() - payload.len() / 8 {
        return None;
    }
    let mut out = BytesMut::new();
    let (id, ts) = (header.message_id, header.timestamp);
    put_compressed_frame(&mut out, header.message_type, id, ts, &packed).ok()?;
    Some(out.freeze())
}

/// The payload a compressed frame carries, expanded: refused before
/// anything is expanded if it announces more than the payload limit, and if
/// the LZ4 block does not expand to exactly the length announced.
fn decompress_payload(wire: &[u8], limits: &Limits) -> Result<Bytes, DecodeError> {
    let malformed = |reason: String| DecodeError::Decompression { reason };
    let Some((len, block)) = wire.split_first_chunk::<4>() else {
        return Err(malformed(format!(
            "{} bytes, less than the 4 of the length",
            wire.len()
        )));
    };
    let len = u32::from_be_bytes(*len);
    if len > limits.max_payload {
        return Err(DecodeError::PayloadTooLarge {
            len,
            max: limits.max_payload,
        });
    }
    let mut plain = vec![0u8; len as usize];
    match lz4_flex::block::decompress_into(block, &mut plain) {
        Ok(n) if n == plain.len() => Ok(Bytes::from(plain)),
        Ok(n) => Err(malformed(format!(
            "expands to {n} bytes, not the {len} announced"
        ))),
        Err(e) => Err(malformed(e.to_string())),
    }
}

/// One protocol message with its envelope fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this message (for ACK, ERROR and de-duplication).
    pub message_id: MessageId,
    /// Sender's clock when sent (ms since the Unix epoch). Informational only:
    /// never used for ordering.
    pub timestamp: i64,
    /// The message.
    pub message: Message,
}

impl Envelope {
    /// An envelope around `message`.
    pub fn new(message_id: MessageId, timestamp: i64, message: impl Into<Message>) -> Self {
        Envelope {
            message_id,
            timestamp,
            message: message.into(),
        }
    }

    /// Appends the whole frame to `dst`. On error `dst` is left as it was.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check_chunk_size()?;
        let start = dst.len();
        dst.reserve(HEADER_LEN + 64 + CHECKSUM_LEN);
        // The payload length is patched in below, once known.
        put_header(
            dst,
            self.message.message_type(),
            self.message_id,
            self.timestamp,
            0,
        );
        let payload_start = dst.len();
        if let Err(e) = self.message.write_payload(dst) {
            dst.truncate(start);
            return Err(e);
        }
        let len = dst.len() - payload_start;
        let Ok(len32) = u32::try_from(len) else {
            dst.truncate(start);
            return Err(EncodeError::PayloadTooLarge {
                len,
                max: u32::MAX as usize,
            });
        };
        dst[payload_start - 4..payload_start].copy_from_slice(&len32.to_be_bytes());
        let checksum = blake3::hash(&dst[payload_start..]);
        dst.put_slice(checksum.as_bytes());
        Ok(())
    }

    /// Encodes the frame as a few pieces that, in order, are its bytes: an
    /// `ARTIFACT_CHUNK`'s `chunk_data` is not copied but included as the
    /// message's own `Bytes` (a reference count). For writers that take a
    /// list of buffers, such as a QUIC stream's `write_all_chunks`; the bytes
    /// are exactly those of [`Envelope::encode_into`].
    pub fn encode_shared(&self) -> Result<Vec<Bytes>, EncodeError> {
        self.check_chunk_size()?;
        let mut w = Segments {
            scratch: BytesMut::with_capacity(HEADER_LEN + 128 + CHECKSUM_LEN),
            parts: Vec::with_capacity(4),
            checksum: AlignedHasher::new(),
            len: 0,
        };
        w.parts.push(Bytes::new()); // the header, once the length is known
        crate::bytes_fixed::bin_bytes::encoding_shared(|| self.message.write_payload_to(&mut w))?;
        let len32 = u32::try_from(w.len).map_err(|_| EncodeError::PayloadTooLarge {
            len: w.len,
            max: u32::MAX as usize,
        })?;
        w.scratch.put_slice(w.checksum.finalize().as_bytes());
        w.parts.push(w.scratch.split().freeze());
        put_header(
            &mut w.scratch,
            self.message.message_type(),
            self.message_id,
            self.timestamp,
            len32,
        );
        w.parts[0] = w.scratch.split().freeze();
        Ok(w.parts)
    }

    fn check_chunk_size(&self) -> Result<(), EncodeError> {
        match self.message.bulk_data_len() {
            Some(len) if len > MAX_CHUNK_DATA => Err(EncodeError::ChunkTooLarge {
                len,
                max: MAX_CHUNK_DATA,
            }),
            _ => Ok(()),
        }
    }

    /// The whole frame as a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut b = BytesMut::new();
        self.encode_into(&mut b)?;
        Ok(b.freeze())
    }

    /// Decodes exactly one frame from `frame` under the default limits.
    pub fn decode(frame: &[u8]) -> Result<Envelope, DecodeError> {
        Self::decode_with(frame, &Limits::default())
    }

    /// Decodes exactly one frame from `frame` under `limits`.
    pub fn decode_with(frame: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
        let mut buf = BytesMut::from(frame);
        let mut decoder = Decoder::with_limits(*limits);
        match decoder.decode(&mut buf)? {
            Some(env) if buf.is_empty() => Ok(env),
            Some(_) => Err(DecodeError::TrailingFrameBytes { extra: buf.len() }),
            None => Err(decoder.truncation(&buf)),
        }
    }
}

/// The fixed header of a frame, parsed and checked against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type.
    pub message_type: MessageType,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's timestamp (ms).
    pub timestamp: i64,
    /// The payload length (on the wire: compressed, if it is).
    pub payload_length: u32,
    /// Whether the payload is compressed (the type's [`COMPRESSED`] bit).
    pub compressed: bool,
}

impl FrameHeader {
    /// Checks the prefix of a frame. Returns `Ok(None)` when more bytes are
    /// needed, and fails as early as the bytes allow (version at byte 1,
    /// type at byte 3, length at byte 31).
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<FrameHeader>, DecodeError> {
        if let Some(&version) = buf.first() {
            if version != PROTOCOL_VERSION {
                return Err(DecodeError::UnsupportedVersion {
                    version,
                    supported: PROTOCOL_VERSION,
                });
            }
        }
        let (message_type, compressed) = match buf.get(1..3) {
            Some(b) => {
                let code = u16::from_be_bytes([b[0], b[1]]);
                let t = MessageType::from_code(code & !COMPRESSED)
                    .ok_or(DecodeError::UnknownMessageType { message_type: code })?;
                (t, code & COMPRESSED != 0)
            }
            None => return Ok(None),
        };
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut message_id = [0u8; 16];
        message_id.copy_from_slice(&header[3..19]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&header[19..27]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[27..31]);
        let payload_length = u32::from_be_bytes(len);
        if payload_length > limits.max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: payload_length,
                max: limits.max_payload,
            });
        }
        Ok(Some(FrameHeader {
            message_type,
            message_id: MessageId::from(message_id),
            timestamp: i64::from_be_bytes(ts),
            payload_length,
            compressed,
        }))
    }

    /// The `message_id` of the frame that `buf` starts, once its 31-byte
    /// header is there with a valid version and message type, whatever else
    /// is wrong with the frame: what an `ERROR` names as its
    /// `related_message_id`. `None` while the header is incomplete or unusable.
    pub fn peek_message_id(buf: &[u8]) -> Option<MessageId> {
        let header = buf.get(..HEADER_LEN)?;
        if header[0] != PROTOCOL_VERSION
            || MessageType::from_code(u16::from_be_bytes([header[1], header[2]]) & !COMPRESSED)
                .is_none()
        {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&header[3..19]);
        Some(MessageId::from(id))
    }

    /// Length of the whole frame this header starts.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_length as usize + CHECKSUM_LEN
    }
}

/// A sans-IO streaming decoder: feed it bytes split anywhere, get frames out.
///
/// After an error the stream's framing can no longer be trusted: the caller
/// closes the stream (sending `ERROR` with [`DecodeError::error_code`]).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    rejected: Option<MessageId>,
}

impl Decoder {
    /// A decoder with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            rejected: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one complete frame off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing was consumed). `Ok(Some)`: the
    /// frame's bytes were removed from `buf`. `Err`: the frame is invalid; its
    /// bytes (when complete) were removed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, DecodeError> {
        let id = FrameHeader::peek_message_id(buf);
        let result = self.decode_frame(buf);
        self.rejected = if result.is_err() { id } else { None };
        result
    }

    /// The `message_id` of the frame the last [`Decoder::decode`] rejected,
    /// when its header was readable (see [`FrameHeader::peek_message_id`]).
    pub fn rejected_message_id(&self) -> Option<MessageId> {
        self.rejected
    }

    fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, DecodeError> {
        let Some(header) = FrameHeader::parse(buf, &self.limits)? else {
            return Ok(None);
        };
        let frame_len = header.frame_len();
        if buf.len() < frame_len {
            buf.reserve(frame_len - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(frame_len).freeze();
        let payload = &frame[HEADER_LEN..frame_len - CHECKSUM_LEN];
        let checksum = &frame[frame_len - CHECKSUM_LEN..];
        if blake3::hash(payload).as_bytes()[..] != checksum[..] {
            return Err(DecodeError::ChecksumMismatch);
        }
        let message = if header.compressed {
            let plain = decompress_payload(payload, &self.limits)?;
            crate::bytes_fixed::bin_bytes::decoding_from(&plain, || {
                Message::decode_payload(header.message_type, &plain, &self.limits)
            })?
        } else {
            crate::bytes_fixed::bin_bytes::decoding_from(&frame, || {
                Message::decode_payload(header.message_type, payload, &self.limits)
            })?
        };
        if let Some(len) = message.bulk_data_len() {
            if len > MAX_CHUNK_DATA {
                return Err(DecodeError::ChunkTooLarge {
                    len,
                    max: MAX_CHUNK_DATA,
                });
            }
        }
        Ok(Some(Envelope {
            message_id: header.message_id,
            timestamp: header.timestamp,
            message,
        }))
    }

    /// The error to report when a stream ends with `leftover` undecoded bytes
    /// (call it after [`Decoder::decode`] returned `Ok(None)` at end of stream).
    pub fn truncation(&self, leftover: &[u8]) -> DecodeError {
        match FrameHeader::parse(leftover, &self.limits) {
            Ok(Some(h)) => DecodeError::TruncatedBody {
                have: leftover.len() - HEADER_LEN,
                need: h.frame_len() - HEADER_LEN,
            },
            Ok(None) => DecodeError::TruncatedHeader {
                have: leftover.len(),
                need: HEADER_LEN,
            },
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ERROR for a frame whose header was readable names that frame
    /// (`related_message_id`), whatever was wrong with its payload.
    #[test]
    fn the_rejected_frame_is_named_once_its_header_was_readable() {
        let mut dec = Decoder::new();
        let good = chunk_envelope(Bytes::from_static(b"abc"));
        let mut bad = BytesMut::from(&good.to_bytes().expect("encode")[..]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(dec.decode(&mut bad), Err(DecodeError::ChecksumMismatch));
        assert_eq!(dec.rejected_message_id(), Some(good.message_id));
        // A payload that is not the message's map: still named.
        let mut frame = BytesMut::from(&good.to_bytes().expect("encode")[..HEADER_LEN]);
        frame[27..31].copy_from_slice(&1u32.to_be_bytes());
        frame.extend_from_slice(&[0xc0]);
        frame.extend_from_slice(blake3::hash(&[0xc0]).as_bytes());
        assert!(matches!(
            dec.decode(&mut frame),
            Err(DecodeError::MalformedPayload { .. })
        ));
        assert_eq!(dec.rejected_message_id(), Some(good.message_id));
        // An unknown type: the header is not usable, nothing is named.
        let mut unknown = BytesMut::from(&good.to_bytes().expect("encode")[..]);
        unknown[1] = 0x7f;
        assert!(dec.decode(&mut unknown).is_err());
        assert_eq!(dec.rejected_message_id(), None);
        assert_eq!(
            FrameHeader::peek_message_id(&unknown[..HEADER_LEN - 1]),
            None
        );
    }

    fn chunk_envelope(data: Bytes) -> Envelope {
        Envelope::new(
            MessageId::from([7; 16]),
            1_700_000_000_000,
            ArtifactChunk {
                artifact_id: crate::Hash32::from([3; 32]),
                chunk_index: 5,
                chunk_data: data,
                is_final: false,
                chunk_hash: None,
                seal: Some(crate::FixedBytes([9; 28])),
            },
        )
    }

    #[test]
    fn a_decoded_chunk_shares_the_frame_memory() {
        let env = chunk_envelope(Bytes::from(vec![0xab; MAX_CHUNK_DATA]));
        let mut buf = BytesMut::new();
        env.encode_into(&mut buf).unwrap();
        let range = buf.as_ptr_range();
        let back = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, env);
        let Message::ArtifactChunk(c) = back.message else {
            panic!("not a chunk")
        };
        assert!(range.contains(&c.chunk_data.as_ptr()));
    }

    #[test]
    fn a_chunk_encoded_in_pieces_keeps_its_data_buffer() {
        let data = Bytes::from(vec![0xcd; 1000]);
        let env = chunk_envelope(data.clone());
        let parts = env.encode_shared().unwrap();
        assert!(parts
            .iter()
            .any(|p| p.as_ptr() == data.as_ptr() && p.len() == data.len()));
        assert_eq!(parts.concat(), env.to_bytes().unwrap().to_vec());
        // Outside `encode_shared`, nothing is kept: the plain encoding copies.
        let mut flat = BytesMut::new();
        env.encode_into(&mut flat).unwrap();
        assert!(!flat.as_ptr_range().contains(&data.as_ptr()));
    }

    #[test]
    fn a_too_large_chunk_is_refused_in_pieces_too() {
        let env = chunk_envelope(Bytes::from(vec![0; MAX_CHUNK_DATA + 1]));
        assert!(matches!(
            env.encode_shared(),
            Err(EncodeError::ChunkTooLarge { .. })
        ));
    }

    /// A payload that compresses: an artifact chunk of repeated text.
    fn compressible() -> Envelope {
        chunk_envelope(Bytes::from("the same words again and again; ".repeat(200)))
    }

    /// Compression: a frame compressed as `compress_frame` does decodes to
    /// the same envelope, whole or fed byte by byte, and names its message
    /// when refused; short, incompressible and already compressed payloads
    /// are left alone.
    #[test]
    fn a_compressed_frame_decodes_to_the_same_envelope() {
        let env = compressible();
        let plain = env.to_bytes().expect("encode");
        let packed = compress_frame(&plain).expect("compresses");
        assert!(
            packed.len() * 4 < plain.len(),
            "{} of {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(
            u16::from_be_bytes([packed[1], packed[2]]) & COMPRESSED,
            COMPRESSED
        );
        assert_eq!(Envelope::decode(&packed), Ok(env.clone()));
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in packed.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(e) = dec.decode(&mut buf).expect("decodes") {
                out.push(e);
            }
        }
        assert_eq!(out, vec![env.clone()]);
        assert_eq!(FrameHeader::peek_message_id(&packed), Some(env.message_id));
        // A payload kept compressed makes the same frame.
        let mut again = BytesMut::new();
        put_compressed_frame(
            &mut again,
            env.message.message_type(),
            env.message_id,
            env.timestamp,
            &packed[HEADER_LEN..packed.len() - CHECKSUM_LEN],
        )
        .expect("frame");
        assert_eq!(&again[..], &packed[..]);
        assert_eq!(compress_frame(&packed), None, "compressed twice");
        let short = chunk_envelope(Bytes::from_static(b"abc"))
            .to_bytes()
            .expect("encode");
        assert_eq!(compress_frame(&short), None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes with no repeats to find.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let noisy = chunk_envelope(Bytes::from(noise))
            .to_bytes()
            .expect("encode");
        assert_eq!(compress_frame(&noisy), None, "incompressible");
    }

    /// BAD_INPUTS: a compressed payload announcing more than the payload
    /// limit is refused before anything is expanded ("zip bomb"); one that
    /// is truncated, corrupt, or expands to another length than announced
    /// is a typed error; the checksum covers the compressed bytes.
    #[test]
    fn bad_compressed_payloads_are_typed_errors() {
        let env = compressible();
        let packed = compress_frame(&env.to_bytes().expect("encode")).expect("compresses");
        let wire = &packed[HEADER_LEN..packed.len() - CHECKSUM_LEN];
        // The frame with another compressed payload, checksum recomputed.
        let with = |payload: &[u8]| -> Vec<u8> {
            let mut f = packed[..HEADER_LEN].to_vec();
            f[27..31].copy_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f.extend_from_slice(blake3::hash(payload).as_bytes());
            f
        };
        let mut bomb = (u32::MAX).to_be_bytes().to_vec();
        bomb.extend_from_slice(&wire[4..]);
        assert!(matches!(
            Envelope::decode(&with(&bomb)),
            Err(DecodeError::PayloadTooLarge { len: u32::MAX, .. })
        ));
        let truncated = &wire[..wire.len() / 2];
        assert!(matches!(
            Envelope::decode(&with(truncated)),
            Err(DecodeError::Decompression { .. })
        ));
        let mut longer = wire.to_vec();
        let announced = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]);
        longer[..4].copy_from_slice(&(announced + 1).to_be_bytes());
        assert!(matches!(
            Envelope::decode(&with(&longer)),
            Err(DecodeError::Decompression { .. })
        ));
        assert!(matches!(
            Envelope::decode(&with(&[0, 0])),
            Err(DecodeError::Decompression { .. })
        ));
        let mut flipped = packed.to_vec();
        flipped[HEADER_LEN + 6] ^= 0x40;
        assert_eq!(
            Envelope::decode(&flipped),
            Err(DecodeError::ChecksumMismatch)
        );
    }
}
