//! The envelope cases of BAD_INPUTS.md (numbers 10 to 18 and 20), one test
//! each: every one is a typed error, no panic, no allocation beyond the limit.

use bytes::BytesMut;
use nomade_wire::{
    samples, ArtifactChunk, DecodeError, Decoder, EncodeError, Envelope, ErrorCode, Heartbeat,
    Limits, Message, MessageId, MessageType, StreamHeader, StreamRole, CHECKSUM_LEN, HEADER_LEN,
    MAX_CHUNK_DATA,
};

fn heartbeat_frame() -> Vec<u8> {
    let sample = samples::all()
        .into_iter()
        .find(|s| s.name == "heartbeat")
        .expect("heartbeat sample");
    sample.envelope.to_bytes().expect("encode").to_vec()
}

fn heartbeat_payload(frame: &[u8]) -> Vec<u8> {
    frame[HEADER_LEN..frame.len() - CHECKSUM_LEN].to_vec()
}

#[test]
fn bad_input_10_payload_length_over_limit_rejected_from_header_alone() {
    let mut header = heartbeat_frame()[..HEADER_LEN].to_vec();
    header[27..31].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut buf = BytesMut::from(&header[..]);
    let capacity_before = buf.capacity();
    let err = Decoder::new().decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, DecodeError::PayloadTooLarge { len: u32::MAX, .. }),
        "{err}"
    );
    // Nothing was reserved for the announced payload.
    assert_eq!(buf.capacity(), capacity_before);
    // A configured smaller limit is honoured too.
    let frame = heartbeat_frame();
    let tight = Limits {
        max_payload: 10,
        ..Limits::default()
    };
    assert!(matches!(
        Envelope::decode_with(&frame, &tight),
        Err(DecodeError::PayloadTooLarge { max: 10, .. })
    ));
}

#[test]
fn bad_input_11_payload_length_disagreeing_with_bytes() {
    let frame = heartbeat_frame();
    // Announce one byte more than the payload: the checksum is read one byte late.
    let mut longer = frame.clone();
    let len = u32::from_be_bytes([frame[27], frame[28], frame[29], frame[30]]);
    longer[27..31].copy_from_slice(&(len + 1).to_be_bytes());
    assert!(Envelope::decode(&longer).is_err());
    longer.push(0);
    assert_eq!(
        Envelope::decode(&longer),
        Err(DecodeError::ChecksumMismatch)
    );
    // Announce one byte less: checksum mismatch, then trailing bytes.
    let mut shorter = frame.clone();
    shorter[27..31].copy_from_slice(&(len - 1).to_be_bytes());
    assert_eq!(
        Envelope::decode(&shorter),
        Err(DecodeError::ChecksumMismatch)
    );
}

#[test]
fn bad_input_12_truncated_frame_is_a_clear_error() {
    let frame = heartbeat_frame();
    for cut in 0..frame.len() {
        let err = Envelope::decode(&frame[..cut]).unwrap_err();
        if cut < HEADER_LEN {
            assert_eq!(
                err,
                DecodeError::TruncatedHeader {
                    have: cut,
                    need: HEADER_LEN
                }
            );
        } else {
            assert!(
                matches!(err, DecodeError::TruncatedBody { .. }),
                "cut {cut}: {err}"
            );
        }
    }
    // The streaming decoder waits and consumes nothing.
    let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
    assert_eq!(Decoder::new().decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), frame.len() - 1);
}

/// The allocation itself is measured in `bad_input_13_allocation.rs`.
#[test]
fn bad_input_13_huge_length_headers_inside_payload_do_not_allocate() {
    // A map with one key whose value claims to be a 4 GiB bin, an array32 and a map32.
    for claim in [
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut payload = vec![0x81, 0xa9];
        payload.extend_from_slice(b"timestamp");
        payload.extend_from_slice(&claim);
        let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &payload);
        let err = Envelope::decode(&frame).unwrap_err();
        assert!(matches!(err, DecodeError::MalformedPayload { .. }), "{err}");
    }
    // A whole payload that is just an array32 header claiming 4 billion entries.
    let frame =
        samples::frame_with_payload(MessageType::Ack.code(), &[0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        Envelope::decode(&frame),
        Err(DecodeError::MalformedPayload { .. })
    ));
}

#[test]
fn bad_input_14_deep_nesting_rejected_at_small_depth() {
    // A document Set whose value is 100,000 nested arrays: must not overflow the stack.
    let mut payload = Vec::new();
    payload.push(0x85);
    for (k, v) in [("entity_id", "e"), ("entity_type", "document")] {
        payload.push(0xa0 | k.len() as u8);
        payload.extend_from_slice(k.as_bytes());
        payload.push(0xa0 | v.len() as u8);
        payload.extend_from_slice(v.as_bytes());
    }
    payload.push(0xa9);
    payload.extend_from_slice(b"operation");
    payload.extend_from_slice(&[0x83, 0xa7]);
    payload.extend_from_slice(b"counter");
    payload.push(1);
    payload.push(0xa4);
    payload.extend_from_slice(b"deps");
    payload.push(0x80);
    payload.push(0xa4);
    payload.extend_from_slice(b"edit");
    payload.extend_from_slice(&[0x81, 0xa3]);
    payload.extend_from_slice(b"set");
    payload.extend_from_slice(&[0x82, 0xa3]);
    payload.extend_from_slice(b"key");
    payload.extend_from_slice(&[0xa1, b'k', 0xa5]);
    payload.extend_from_slice(b"value");
    payload.extend(std::iter::repeat_n(0x91u8, 100_000));
    payload.push(0xc0);
    let frame = samples::frame_with_payload(MessageType::SyncOperation.code(), &payload);
    let limits = Limits {
        max_payload: 1 << 20,
        ..Limits::default()
    };
    let err = Envelope::decode_with(&frame, &limits).unwrap_err();
    assert!(matches!(err, DecodeError::TooDeep { .. }), "{err}");
}

#[test]
fn bad_input_15_trailing_bytes_after_payload_value() {
    let mut payload = heartbeat_payload(&heartbeat_frame());
    payload.push(0xc0);
    let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &payload);
    assert_eq!(
        Envelope::decode(&frame),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    // And bytes after a whole frame when exactly one frame is expected.
    let mut two = heartbeat_frame();
    two.push(1);
    assert_eq!(
        Envelope::decode(&two),
        Err(DecodeError::TrailingFrameBytes { extra: 1 })
    );
}

fn heartbeat_map(entries: &[(&str, rmpv_like::V)]) -> Vec<u8> {
    rmpv_like::map(entries)
}

/// A tiny hand-rolled MessagePack writer for building malformed payloads.
mod rmpv_like {
    pub enum V {
        Int(u8),
        Str(&'static str),
        Nil,
    }
    pub fn map(entries: &[(&str, V)]) -> Vec<u8> {
        let mut out = vec![0x80 | entries.len() as u8];
        for (k, v) in entries {
            out.push(0xa0 | k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            match v {
                V::Int(i) => out.push(*i),
                V::Str(s) => {
                    out.push(0xa0 | s.len() as u8);
                    out.extend_from_slice(s.as_bytes());
                }
                V::Nil => out.push(0xc0),
            }
        }
        out
    }
}

#[test]
fn bad_input_16_missing_extra_mistyped_fields_and_arrays_rejected() {
    use rmpv_like::V;
    let good = heartbeat_map(&[
        ("timestamp", V::Int(5)),
        ("battery_level", V::Nil),
        ("connectivity", V::Str("wifi")),
    ]);
    let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &good);
    assert!(matches!(
        Envelope::decode(&frame).map(|e| e.message),
        Ok(Message::Heartbeat(_))
    ));

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing field",
            heartbeat_map(&[("timestamp", V::Int(5)), ("connectivity", V::Str("wifi"))]),
        ),
        (
            "extra field",
            heartbeat_map(&[
                ("timestamp", V::Int(5)),
                ("battery_level", V::Nil),
                ("connectivity", V::Str("wifi")),
                ("extra", V::Int(1)),
            ]),
        ),
        (
            "mistyped field",
            heartbeat_map(&[
                ("timestamp", V::Str("now")),
                ("battery_level", V::Nil),
                ("connectivity", V::Str("wifi")),
            ]),
        ),
        (
            "unknown enum value",
            heartbeat_map(&[
                ("timestamp", V::Int(5)),
                ("battery_level", V::Nil),
                ("connectivity", V::Str("5g")),
            ]),
        ),
        (
            "struct as array",
            vec![0x93, 0x05, 0xc0, 0xa4, b'w', b'i', b'f', b'i'],
        ),
        ("not a map at all", vec![0x2a]),
    ];
    for (what, payload) in cases {
        let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &payload);
        let err = Envelope::decode(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::MalformedPayload { .. } | DecodeError::NonCanonical { .. }
            ),
            "{what}: {err}"
        );
        assert_eq!(err.error_code(), ErrorCode::INVALID_MESSAGE, "{what}");
    }

    // Non-canonical: the same heartbeat with fields in another order, and an
    // integer in a wider encoding than needed.
    let reordered = heartbeat_map(&[
        ("battery_level", V::Nil),
        ("timestamp", V::Int(5)),
        ("connectivity", V::Str("wifi")),
    ]);
    let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &reordered);
    assert!(matches!(
        Envelope::decode(&frame),
        Err(DecodeError::NonCanonical { .. })
    ));
    let mut wide = good.clone();
    let pos = wide
        .iter()
        .position(|&b| b == 5)
        .expect("the timestamp byte");
    wide.splice(pos..pos + 1, [0xcd, 0x00, 0x05]);
    wide[0] = 0x83;
    let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &wide);
    assert!(matches!(
        Envelope::decode(&frame),
        Err(DecodeError::NonCanonical { .. })
    ));

    // Invalid UTF-8 in a string field.
    let mut bad_utf8 = good.clone();
    let pos = bad_utf8
        .windows(4)
        .position(|w| w == b"wifi")
        .expect("wifi");
    bad_utf8[pos] = 0xff;
    let frame = samples::frame_with_payload(MessageType::Heartbeat.code(), &bad_utf8);
    assert!(matches!(
        Envelope::decode(&frame),
        Err(DecodeError::MalformedPayload { .. })
    ));

    // float32 is not part of the format (values are float64 only).
    let mut op = samples::small_sync_operation();
    op.operation.edit = nomade_wire::Edit::Set {
        key: "k".into(),
        value: nomade_wire::Value::Float(1.5),
    };
    let frame = Envelope::new(MessageId::default(), 0, op)
        .to_bytes()
        .expect("encode")
        .to_vec();
    let mut payload = frame[HEADER_LEN..frame.len() - CHECKSUM_LEN].to_vec();
    let pos = payload
        .iter()
        .position(|&b| b == 0xcb)
        .expect("float64 marker");
    payload.splice(pos..pos + 9, [0xca, 0x3f, 0xc0, 0x00, 0x00]);
    let frame = samples::frame_with_payload(MessageType::SyncOperation.code(), &payload);
    assert!(Envelope::decode(&frame).is_err());
}

#[test]
fn bad_input_17_unknown_version_and_message_type() {
    let mut frame = heartbeat_frame();
    frame[0] = 2;
    let err = Envelope::decode(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            version: 2,
            supported: 1
        }
    );
    assert_eq!(err.error_code(), ErrorCode::PROTOCOL_VERSION_MISMATCH);
    // Detected from the first byte alone.
    let mut one = BytesMut::from(&[2u8][..]);
    assert!(Decoder::new().decode(&mut one).is_err());

    let mut frame = heartbeat_frame();
    frame[1..3].copy_from_slice(&0x0999u16.to_be_bytes());
    assert_eq!(
        Envelope::decode(&frame),
        Err(DecodeError::UnknownMessageType {
            message_type: 0x0999
        })
    );
    assert_eq!(
        StreamHeader::parse([9, 1]),
        Err(DecodeError::UnknownStreamRole { role: 9 })
    );
    assert!(matches!(
        StreamHeader::parse([StreamRole::Sync as u8, 7]),
        Err(DecodeError::UnsupportedVersion { version: 7, .. })
    ));
}

#[test]
fn bad_input_18_checksum_mismatch_rejected() {
    let frame = heartbeat_frame();
    for pos in [HEADER_LEN, frame.len() - CHECKSUM_LEN - 1, frame.len() - 1] {
        let mut bad = frame.clone();
        bad[pos] ^= 0x01;
        assert_eq!(
            Envelope::decode(&bad),
            Err(DecodeError::ChecksumMismatch),
            "byte {pos}"
        );
    }
}

#[test]
fn bad_input_20_extreme_timestamps_are_carried_untouched() {
    for ts in [i64::MIN, -1, 0, i64::MAX] {
        let beat = Heartbeat {
            timestamp: ts,
            battery_level: None,
            connectivity: nomade_wire::ConnectivityStatus::Unknown,
        };
        let env = Envelope::new(MessageId::from([1; 16]), ts, beat);
        let back = Envelope::decode(&env.to_bytes().expect("encode")).expect("decode");
        assert_eq!(back, env);
    }
}

#[test]
fn oversize_chunk_is_refused_by_encoder_and_decoder() {
    let mut chunk = samples::full_chunk();
    chunk.chunk_data = bytes::Bytes::from(vec![0u8; MAX_CHUNK_DATA + 1]);
    let env = Envelope::new(MessageId::default(), 0, chunk.clone());
    assert_eq!(
        env.to_bytes(),
        Err(EncodeError::ChunkTooLarge {
            len: MAX_CHUNK_DATA + 1,
            max: MAX_CHUNK_DATA
        })
    );
    // Hand-build the oversize frame and decode it with a generous payload limit.
    let mut payload = BytesMut::new();
    Message::ArtifactChunk(ArtifactChunk {
        chunk_data: chunk.chunk_data.clone(),
        ..chunk
    })
    .write_payload(&mut payload)
    .expect("payload");
    let frame = samples::frame_with_payload(MessageType::ArtifactChunk.code(), &payload);
    let limits = Limits {
        max_payload: 1 << 20,
        ..Limits::default()
    };
    assert_eq!(
        Envelope::decode_with(&frame, &limits),
        Err(DecodeError::ChunkTooLarge {
            len: MAX_CHUNK_DATA + 1,
            max: MAX_CHUNK_DATA
        })
    );
}

#[test]
fn a_full_64k_chunk_fits_the_default_limit() {
    let env = Envelope::new(MessageId::default(), 0, samples::full_chunk());
    let frame = env.to_bytes().expect("encode");
    assert_eq!(Envelope::decode(&frame).expect("decode"), env);
}

#[test]
fn decoder_recovers_frame_boundaries_after_a_bad_checksum() {
    // A bad frame is consumed whole, so the next frame still decodes.
    let good = heartbeat_frame();
    let mut bad = good.clone();
    bad[HEADER_LEN] ^= 0x80;
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&bad);
    buf.extend_from_slice(&good);
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::ChecksumMismatch));
    assert!(matches!(dec.decode(&mut buf), Ok(Some(_))));
    assert!(buf.is_empty());
}

/// An optional flag sent as `false` (it is left out when false): not the
/// one canonical encoding, refused.
#[test]
fn bad_input_16_a_flag_present_as_false_is_not_canonical() {
    let mut payload = vec![0x83]; // a map of three fields
    payload.extend([0xab]);
    payload.extend(b"artifact_id");
    payload.extend([0xc4, 32]);
    payload.extend([0xa1; 32]);
    payload.extend([0xa8]);
    payload.extend(b"priority");
    payload.push(0);
    payload.extend([0xad]);
    payload.extend(b"metadata_only");
    payload.push(0xc2); // false
    let frame = samples::frame_with_payload(MessageType::ArtifactRequest.code(), &payload);
    assert!(matches!(
        Envelope::decode(&frame),
        Err(DecodeError::NonCanonical { .. })
    ));
    // The same with `true` is the metadata request.
    let last = payload.len() - 1;
    payload[last] = 0xc3;
    let frame = samples::frame_with_payload(MessageType::ArtifactRequest.code(), &payload);
    match Envelope::decode(&frame).expect("decodes").message {
        Message::ArtifactRequest(r) => assert!(r.metadata_only),
        other => panic!("{other:?}"),
    }
}
