//! Example messages: one or more per message type.
//!
//! They are the source of the published test vectors
//! (`nomade-wire/tests/vectors.json`), the seeds of the fuzz corpus and the
//! inputs of the codec benchmark, so all three stay in step with the code.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::bytes_fixed::{FixedBytes, Hash32, MessageId};
use crate::frame::{Envelope, Message};
use crate::message::*;
use crate::value::Value;

/// A fixed envelope timestamp used by every sample (2023-11-14T22:13:20Z).
pub const SAMPLE_TIMESTAMP: i64 = 1_700_000_000_000;

/// A named sample envelope.
#[derive(Debug, Clone)]
pub struct Sample {
    /// A stable name, e.g. `"sync_operation_insert_text"`.
    pub name: &'static str,
    /// The envelope.
    pub envelope: Envelope,
}

fn id(n: u8) -> MessageId {
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = n.wrapping_mul(16).wrapping_add(i as u8);
    }
    MessageId::from(b)
}

fn hash(n: u8) -> Hash32 {
    Hash32::from([n; 32])
}

/// A valid device id (the worked vector of PROTOCOL.md, "Device identity").
const LAPTOP: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";
/// Another valid device id: 32 characters of `a-z2-7`, shown in groups of 4.
const PHONE: &str = "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals";

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    entries
        .iter()
        .map(|(k, v)| (crate::ActorId::from(*k), *v))
        .collect()
}

/// A small `SYNC_OPERATION` (a 259-byte payload, most of it the two
/// device ids): a short string written into a document field.
pub fn small_sync_operation() -> SyncOperation {
    SyncOperation {
        entity_id: "notes/todo".into(),
        entity_type: EntityType::Document,
        operation: CrdtOperation {
            counter: 42,
            deps: vv(&[(LAPTOP, 41), (PHONE, 7)]).into(),
            edit: Edit::Set {
                key: "title".into(),
                value: Value::String("Groceries".into()),
            },
        },
        timestamp: SAMPLE_TIMESTAMP,
        actor_id: LAPTOP.into(),
    }
}

/// A real `REVOCATION`: the device `nf2o-jmkl-...` (an ECDSA P-256 key,
/// `signer_key`) revokes `m7ae-dq3r-...`, keeping its changes up to 41. The
/// signature verifies (docs/PROTOCOL.md, "Revocation"); ECDSA signatures
/// are randomised, so this one was made once and is kept.
pub fn sample_revocation() -> Revocation {
    let hex = |s: &str| {
        Bytes::from(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
                .collect::<Vec<u8>>(),
        )
    };
    Revocation {
        revoked: PHONE.into(),
        cutoff: 41,
        issued_at: 1_764_000_000_000,
        signer: "nf2o-jmkl-m4qs-y3fv-27cq-lguv-qpki-26c6".into(),
        signer_key: hex("3059301306072a8648ce3d020106082a8648ce3d03010703420004c115d57e26b01b9295db991885889982ced638bd4a939768c2e59ce7301366a2a2fbf297f267451e9edf9dda0bf8bd4d90790ffc66327df65a4503e7377b865a"),
        scheme: 0x0403,
        signature: hex("3045022100cabe58bae72928fb84cc6ce10a7bd2a83cac082e408956b04222b7cb363529ab02205755872bee3b701503fdcba2c5b2983ba1b289671903cf250041cfc73da6364e"),
    }
}

/// A full 64 KiB `ARTIFACT_CHUNK` with a patterned payload.
pub fn full_chunk() -> ArtifactChunk {
    let data: Vec<u8> = (0..crate::MAX_CHUNK_DATA)
        .map(|i| (i % 251) as u8)
        .collect();
    ArtifactChunk {
        artifact_id: hash(0xa1),
        chunk_index: 3,
        chunk_data: Bytes::from(data),
        is_final: false,
        chunk_hash: None,
        seal: None,
    }
}

/// The frame a sample is published as: encoded, and compressed
/// ([`crate::compress_frame`]) when its name ends in `_lz4`.
pub fn frame(sample: &Sample) -> Result<Bytes, crate::EncodeError> {
    let plain = sample.envelope.to_bytes()?;
    match sample.name.ends_with("_lz4") {
        true => Ok(crate::compress_frame(&plain).unwrap_or(plain)),
        false => Ok(plain),
    }
}

/// Every sample, in a stable order, covering every message type and each
/// optional field both present and absent.
pub fn all() -> Vec<Sample> {
    let mut out = Vec::new();
    let mut n = 0u8;
    let mut push = |name: &'static str, m: Message| {
        n += 1;
        out.push(Sample {
            name,
            envelope: Envelope::new(id(n), SAMPLE_TIMESTAMP, m),
        });
    };
    push(
        "hello",
        Hello {
            device_id: LAPTOP.into(),
            device_name: "Ana's laptop".into(),
            protocol_version: 1,
            capabilities: vec!["crdt-sync".into(), "artifact-transfer".into()],
            sync_state_hash: hash(0x11),
        }
        .into(),
    );
    push(
        "hello_ack",
        HelloAck {
            device_id: PHONE.into(),
            device_name: "Ana's phone".into(),
            protocol_version: 1,
            capabilities: vec!["crdt-sync".into()],
            sync_state_hash: hash(0x22),
            sync_required: true,
            bulk_port: None,
        }
        .into(),
    );
    push(
        "hello_ack_bulk",
        HelloAck {
            device_id: PHONE.into(),
            device_name: "Ana's phone".into(),
            protocol_version: 1,
            capabilities: vec!["crdt-sync".into(), "bulk".into()],
            sync_state_hash: hash(0x22),
            sync_required: false,
            bulk_port: Some(52_001),
        }
        .into(),
    );
    push(
        "sync_request_full",
        SyncRequest {
            entity_types: vec![],
            since_timestamp: None,
            full_sync: true,
            version_vector: None,
            subscription: None,
        }
        .into(),
    );
    push(
        "sync_request_incremental",
        SyncRequest {
            entity_types: vec![EntityType::Document, EntityType::Conversation],
            since_timestamp: Some(SAMPLE_TIMESTAMP - 60_000),
            full_sync: false,
            version_vector: Some(vv(&[(LAPTOP, 41), (PHONE, 7)])),
            subscription: None,
        }
        .into(),
    );
    push("sync_operation_set", small_sync_operation().into());
    let mut fields = BTreeMap::new();
    fields.insert("done".to_string(), Value::Bool(false));
    fields.insert("n".to_string(), Value::Int(-3));
    fields.insert("score".to_string(), Value::Float(0.5));
    push(
        "sync_operation_set_map",
        SyncOperation {
            entity_id: "notes/todo".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 43,
                deps: vv(&[(LAPTOP, 42)]).into(),
                edit: Edit::Set {
                    key: "meta".into(),
                    value: Value::Map(fields.clone()),
                },
            },
            timestamp: SAMPLE_TIMESTAMP,
            actor_id: LAPTOP.into(),
        }
        .into(),
    );
    push(
        "sync_operation_delete",
        SyncOperation {
            entity_id: "notes/todo".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 8,
                deps: vv(&[(LAPTOP, 43), (PHONE, 7)]).into(),
                edit: Edit::Delete { key: "meta".into() },
            },
            timestamp: SAMPLE_TIMESTAMP,
            actor_id: PHONE.into(),
        }
        .into(),
    );
    push(
        "sync_operation_insert",
        SyncOperation {
            entity_id: "chat/family".into(),
            entity_type: EntityType::Conversation,
            operation: CrdtOperation {
                counter: 9,
                deps: vv(&[(PHONE, 8)]).into(),
                edit: Edit::Insert {
                    after: Some(crate::ElementId {
                        actor: LAPTOP.into(),
                        counter: 3,
                    }),
                    before: Some(crate::ElementId {
                        actor: PHONE.into(),
                        counter: 5,
                    }),
                    values: vec![
                        Value::String("see you at 8".into()),
                        Value::Bytes(vec![0, 1, 2]),
                        Value::Nil,
                        Value::Array(vec![Value::Int(1), Value::Int(300)]),
                    ],
                },
            },
            timestamp: SAMPLE_TIMESTAMP,
            actor_id: PHONE.into(),
        }
        .into(),
    );
    push(
        "sync_operation_insert_text",
        SyncOperation {
            entity_id: "notes/todo".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 44,
                deps: vv(&[(LAPTOP, 43)]).into(),
                edit: Edit::InsertText {
                    field: "body".into(),
                    after: None,
                    before: None,
                    text: "héllo 👋".into(),
                },
            },
            timestamp: SAMPLE_TIMESTAMP,
            actor_id: LAPTOP.into(),
        }
        .into(),
    );
    push(
        "sync_operation_remove",
        SyncOperation {
            entity_id: "notes/todo".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 51,
                deps: vv(&[(LAPTOP, 50)]).into(),
                edit: Edit::Remove {
                    field: Some("body".into()),
                    ranges: vec![crate::IdRange {
                        actor: LAPTOP.into(),
                        counter: 45,
                        len: 2,
                    }],
                },
            },
            timestamp: SAMPLE_TIMESTAMP,
            actor_id: LAPTOP.into(),
        }
        .into(),
    );
    push(
        "sync_complete",
        SyncComplete {
            entity_types: vec![EntityType::Document],
            operations_count: 1234,
            new_state_hash: hash(0x33),
        }
        .into(),
    );
    push(
        "ack",
        Ack {
            message_ids: vec![id(200), id(201)],
        }
        .into(),
    );
    push(
        "batched_sync",
        BatchedSync {
            operations: vec![small_sync_operation(), {
                let mut op = small_sync_operation();
                op.operation.counter = 43;
                op.operation.deps = vv(&[(LAPTOP, 42), (PHONE, 7)]).into();
                op.operation.edit = Edit::Delete {
                    key: "title".into(),
                };
                op
            }],
        }
        .into(),
    );
    push(
        "batched_sync_text",
        BatchedSync {
            operations: vec![
                SyncOperation {
                    entity_id: "notes/todo".into(),
                    entity_type: EntityType::Document,
                    operation: CrdtOperation {
                        counter: 9,
                        deps: vv(&[(LAPTOP, 43), (PHONE, 8)]).into(),
                        edit: Edit::InsertText {
                            field: "body".into(),
                            after: Some(crate::ElementId {
                                actor: LAPTOP.into(),
                                counter: 40,
                            }),
                            before: Some(crate::ElementId {
                                actor: LAPTOP.into(),
                                counter: 41,
                            }),
                            text: "abc".into(),
                        },
                    },
                    timestamp: SAMPLE_TIMESTAMP,
                    actor_id: PHONE.into(),
                },
                SyncOperation {
                    entity_id: "notes/todo".into(),
                    entity_type: EntityType::Document,
                    operation: CrdtOperation {
                        counter: 44,
                        deps: vv(&[(LAPTOP, 43), (PHONE, 11)]).into(),
                        edit: Edit::Remove {
                            field: Some("body".into()),
                            ranges: vec![crate::IdRange {
                                actor: PHONE.into(),
                                counter: 9,
                                len: 3,
                            }],
                        },
                    },
                    timestamp: SAMPLE_TIMESTAMP,
                    actor_id: LAPTOP.into(),
                },
            ],
        }
        .into(),
    );
    push(
        "delta_sync",
        DeltaSync {
            entity_id: "notes/todo".into(),
            changed_fields: fields,
            actor_id: LAPTOP.into(),
            first_counter: 50,
            deps: vv(&[(LAPTOP, 49), (PHONE, 7)]).into(),
            timestamp: SAMPLE_TIMESTAMP,
        }
        .into(),
    );
    push(
        "sync_snapshot",
        SyncSnapshot {
            total_len: 70_000,
            offset: 65_536,
            data: Bytes::from_static(b"\x85\xa7version\x03 the snapshot's last bytes"),
        }
        .into(),
    );
    push(
        "have",
        Have {
            version_vector: vv(&[(LAPTOP, 44)]),
            direct_added: None,
            direct_removed: None,
        }
        .into(),
    );
    push(
        "have_direct",
        Have {
            version_vector: vv(&[]),
            direct_added: Some(vec![LAPTOP.to_string()]),
            direct_removed: Some(vec![PHONE.to_string()]),
        }
        .into(),
    );
    push("revocation", sample_revocation().into());
    push(
        "artifact_request",
        ArtifactRequest {
            artifact_id: hash(0xa1),
            priority: 128,
            resume_from: None,
            sealed_for: None,
            metadata_only: false,
            end_before: None,
        }
        .into(),
    );
    push(
        "artifact_request_resume",
        ArtifactRequest {
            artifact_id: hash(0xa1),
            priority: 255,
            resume_from: Some(17),
            sealed_for: None,
            metadata_only: false,
            end_before: None,
        }
        .into(),
    );
    push(
        "artifact_request_sealed",
        ArtifactRequest {
            artifact_id: hash(0xa1),
            priority: 128,
            resume_from: Some(2),
            sealed_for: Some(hash(0xb5)),
            metadata_only: false,
            end_before: None,
        }
        .into(),
    );
    push(
        "artifact_request_metadata",
        ArtifactRequest {
            artifact_id: hash(0xa1),
            priority: 0,
            resume_from: None,
            sealed_for: None,
            metadata_only: true,
            end_before: None,
        }
        .into(),
    );
    push(
        "artifact_metadata",
        ArtifactMetadata {
            artifact_id: hash(0xa1),
            size: 200_000,
            chunk_count: 4,
            mime_type: Some("image/jpeg".into()),
            encrypted: true,
            data_key: None,
            recipient_keys: None,
        }
        .into(),
    );
    push(
        "artifact_metadata_sealed",
        ArtifactMetadata {
            artifact_id: hash(0xa1),
            size: 200_000,
            chunk_count: 4,
            mime_type: None,
            encrypted: true,
            data_key: Some(WrappedDataKey {
                recipient: hash(0xb5),
                ephemeral: hash(0xe0),
                nonce: FixedBytes([0x11; 12]),
                sealed: FixedBytes([0x5e; 48]),
            }),
            recipient_keys: None,
        }
        .into(),
    );
    push(
        "artifact_metadata_no_mime",
        ArtifactMetadata {
            artifact_id: hash(0xa2),
            size: 0,
            chunk_count: 0,
            mime_type: None,
            encrypted: false,
            data_key: None,
            recipient_keys: None,
        }
        .into(),
    );
    push(
        "artifact_chunk",
        ArtifactChunk {
            artifact_id: hash(0xa1),
            chunk_index: 3,
            chunk_data: Bytes::from_static(b"last bytes of the photo"),
            is_final: true,
            chunk_hash: None,
            seal: None,
        }
        .into(),
    );
    // Published compressed (a name ending in `_lz4`: see `compress_frame`).
    push(
        "artifact_chunk_lz4",
        ArtifactChunk {
            artifact_id: hash(0xa1),
            chunk_index: 4,
            chunk_data: Bytes::from_static(&[b'n'; 600]),
            is_final: false,
            chunk_hash: None,
            seal: None,
        }
        .into(),
    );
    push(
        "artifact_chunk_with_hash",
        ArtifactChunk {
            artifact_id: hash(0xa1),
            chunk_index: 0,
            chunk_data: Bytes::from_static(b"\xff\xd8\xff\xe0 jpeg start"),
            is_final: false,
            chunk_hash: Some(hash(0xc0)),
            seal: None,
        }
        .into(),
    );
    push(
        "artifact_chunk_sealed",
        ArtifactChunk {
            artifact_id: hash(0xa1),
            chunk_index: 1,
            chunk_data: Bytes::from_static(b"\x8a\x01\x7f ciphertext of the same length"),
            is_final: false,
            chunk_hash: Some(hash(0xc1)),
            seal: Some(FixedBytes([0x2c; 28])),
        }
        .into(),
    );
    push(
        "artifact_complete",
        ArtifactComplete {
            artifact_id: hash(0xa1),
            received_hash: hash(0xa1),
        }
        .into(),
    );
    push(
        "heartbeat",
        Heartbeat {
            timestamp: SAMPLE_TIMESTAMP,
            battery_level: Some(80),
            connectivity: ConnectivityStatus::Wifi,
        }
        .into(),
    );
    push(
        "heartbeat_unknown_battery",
        Heartbeat {
            timestamp: SAMPLE_TIMESTAMP,
            battery_level: None,
            connectivity: ConnectivityStatus::Ethernet,
        }
        .into(),
    );
    push(
        "presence_update",
        PresenceUpdate {
            status: PresenceStatus::Busy,
            message: Some("in a meeting".into()),
        }
        .into(),
    );
    push(
        "presence_update_no_message",
        PresenceUpdate {
            status: PresenceStatus::Online,
            message: None,
        }
        .into(),
    );
    push(
        "error",
        ErrorMessage {
            error_code: ErrorCode::ARTIFACT_NOT_FOUND,
            error_message: "artifact a1a1... is not held here".into(),
            related_message_id: Some(id(15)),
        }
        .into(),
    );
    push(
        "error_no_related",
        ErrorMessage {
            error_code: ErrorCode::RATE_LIMITED,
            error_message: "slow down".into(),
            related_message_id: None,
        }
        .into(),
    );
    // Added after the others, so that their message ids stay.
    push(
        "artifact_request_range",
        ArtifactRequest {
            artifact_id: hash(0xA1),
            priority: 128,
            resume_from: Some(8192),
            sealed_for: Some(hash(0xB5)),
            metadata_only: false,
            end_before: Some(16384),
        }
        .into(),
    );
    push(
        "sync_request_subscription",
        SyncRequest {
            entity_types: vec![EntityType::Document, EntityType::Conversation],
            since_timestamp: None,
            full_sync: false,
            version_vector: Some(vv(&[(LAPTOP, 41), (PHONE, 7)])),
            subscription: Some(vec!["document:trip".into(), "conversation:family-*".into()]),
        }
        .into(),
    );
    push(
        "batched_sync_skip",
        BatchedSync {
            operations: vec![
                SyncOperation {
                    entity_id: "".into(),
                    entity_type: EntityType::Document,
                    operation: CrdtOperation {
                        counter: 42,
                        deps: Default::default(),
                        edit: Edit::Skip { span: 17 },
                    },
                    timestamp: SAMPLE_TIMESTAMP,
                    actor_id: LAPTOP.into(),
                },
                SyncOperation {
                    entity_id: "trip".into(),
                    entity_type: EntityType::Document,
                    operation: CrdtOperation {
                        counter: 59,
                        deps: vv(&[(LAPTOP, 12)]).into(),
                        edit: Edit::Set {
                            key: "title".into(),
                            value: Value::String("Lisbon".into()),
                        },
                    },
                    timestamp: SAMPLE_TIMESTAMP,
                    actor_id: LAPTOP.into(),
                },
            ],
        }
        .into(),
    );
    let wrapped_for = |recipient: u8, fill: u8| WrappedDataKey {
        recipient: hash(recipient),
        ephemeral: hash(fill),
        nonce: FixedBytes([fill; 12]),
        sealed: FixedBytes([fill; 48]),
    };
    push(
        "artifact_metadata_sealed_relay",
        ArtifactMetadata {
            artifact_id: hash(0xa3),
            size: 200_000,
            chunk_count: 4,
            mime_type: Some("video/mp4".into()),
            encrypted: true,
            data_key: None,
            recipient_keys: Some(vec![wrapped_for(0xb1, 0x21), wrapped_for(0xb3, 0x23)]),
        }
        .into(),
    );
    push(
        "relay_request",
        RelayRequest {
            target: PHONE.into(),
        }
        .into(),
    );
    push(
        "relay_offer",
        RelayOffer {
            source: LAPTOP.into(),
        }
        .into(),
    );
    push("relay_accept", RelayAccept {}.into());
    push(
        "error_unreachable",
        ErrorMessage {
            error_code: ErrorCode::UNREACHABLE,
            error_message: "no direct connection to that device".into(),
            related_message_id: Some(id(40)),
        }
        .into(),
    );
    out
}

/// A frame around an arbitrary `payload`, with `message_type` as given and a
/// correct checksum (message id `[9; 16]`, timestamp 0): for tests and fuzz
/// seeds of payloads the encoder would never produce.
pub fn frame_with_payload(message_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(crate::HEADER_LEN + payload.len() + crate::CHECKSUM_LEN);
    frame.push(crate::PROTOCOL_VERSION);
    frame.extend_from_slice(&message_type.to_be_bytes());
    frame.extend_from_slice(&[9; 16]);
    frame.extend_from_slice(&0i64.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(blake3::hash(payload).as_bytes());
    frame
}
