//! Invariants of the codec over generated messages and streams.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use nomade_wire::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn hash32() -> impl Strategy<Value = Hash32> {
    any::<[u8; 32]>().prop_map(Hash32::from)
}

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId::from)
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        text().prop_map(Value::String),
        vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(Value::Map),
        ]
    })
}

fn entity_type() -> impl Strategy<Value = EntityType> {
    prop_oneof![Just(EntityType::Document), Just(EntityType::Conversation)]
}

fn version_vector() -> impl Strategy<Value = VersionVector> {
    btree_map(actor(), any::<u64>(), 0..4)
}

fn actor() -> impl Strategy<Value = ActorId> {
    text().prop_map(ActorId::from)
}

fn element_id() -> impl Strategy<Value = ElementId> {
    (actor(), any::<u64>()).prop_map(|(actor, counter)| ElementId { actor, counter })
}

fn id_range() -> impl Strategy<Value = IdRange> {
    (actor(), any::<u64>(), any::<u64>()).prop_map(|(actor, counter, len)| IdRange {
        actor,
        counter,
        len,
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (text(), value()).prop_map(|(key, value)| Edit::Set { key, value }),
        text().prop_map(|key| Edit::Delete { key }),
        (
            option::of(element_id()),
            option::of(element_id()),
            vec(value(), 0..4)
        )
            .prop_map(|(after, before, values)| Edit::Insert {
                after,
                before,
                values
            }),
        (
            text(),
            option::of(element_id()),
            option::of(element_id()),
            text()
        )
            .prop_map(|(field, after, before, text)| Edit::InsertText {
                field: field.into(),
                after,
                before,
                text: text.into()
            }),
        (option::of(text()), vec(id_range(), 0..4)).prop_map(|(field, ranges)| Edit::Remove {
            field: field.map(SmolStr::from),
            ranges
        }),
        any::<u64>().prop_map(|span| Edit::Skip { span }),
    ]
}

fn sync_operation() -> impl Strategy<Value = SyncOperation> {
    (
        text(),
        entity_type(),
        any::<u64>(),
        version_vector(),
        edit(),
        any::<i64>(),
        actor(),
    )
        .prop_map(
            |(entity_id, entity_type, counter, deps, edit, timestamp, actor_id)| SyncOperation {
                entity_id: entity_id.into(),
                entity_type,
                operation: CrdtOperation {
                    counter,
                    deps: deps.into(),
                    edit,
                },
                timestamp,
                actor_id,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (text(), text(), any::<u8>(), vec(text(), 0..3), hash32()).prop_map(|(a, b, v, c, h)| {
            Message::from(Hello {
                device_id: a,
                device_name: b,
                protocol_version: v,
                capabilities: c,
                sync_state_hash: h,
            })
        }),
        (
            text(),
            text(),
            any::<u8>(),
            vec(text(), 0..3),
            hash32(),
            any::<bool>(),
            proptest::option::of(any::<u16>())
        )
            .prop_map(|(a, b, v, c, h, r, p)| Message::from(HelloAck {
                device_id: a,
                device_name: b,
                protocol_version: v,
                capabilities: c,
                sync_state_hash: h,
                sync_required: r,
                bulk_port: p,
            })),
        (
            vec(entity_type(), 0..3),
            option::of(any::<i64>()),
            any::<bool>(),
            option::of(version_vector()),
            option::of(vec(text(), 0..4))
        )
            .prop_map(
                |(entity_types, since_timestamp, full_sync, version_vector, subscription)| {
                    Message::from(SyncRequest {
                        entity_types,
                        since_timestamp,
                        full_sync,
                        version_vector,
                        subscription,
                    })
                }
            ),
        sync_operation().prop_map(Message::from),
        (vec(entity_type(), 0..3), any::<u32>(), hash32()).prop_map(|(t, n, h)| {
            Message::from(SyncComplete {
                entity_types: t,
                operations_count: n,
                new_state_hash: h,
            })
        }),
        vec(message_id(), 0..5).prop_map(|message_ids| Message::from(Ack { message_ids })),
        vec(sync_operation(), 0..4)
            .prop_map(|operations| Message::from(BatchedSync { operations })),
        (
            text(),
            btree_map(text(), value(), 0..4),
            actor(),
            any::<u64>(),
            version_vector(),
            any::<i64>()
        )
            .prop_map(
                |(entity_id, changed_fields, actor_id, first_counter, deps, timestamp)| {
                    Message::from(DeltaSync {
                        entity_id,
                        changed_fields,
                        actor_id,
                        first_counter,
                        deps: deps.into(),
                        timestamp,
                    })
                }
            ),
        (
            hash32(),
            any::<u8>(),
            option::of(any::<u32>()),
            option::of(hash32()),
            option::of(any::<u32>())
        )
            .prop_map(
                |(artifact_id, priority, resume_from, sealed_for, end_before)| {
                    Message::from(ArtifactRequest {
                        artifact_id,
                        priority,
                        resume_from,
                        sealed_for,
                        metadata_only: false,
                        end_before,
                    })
                }
            ),
        (
            hash32(),
            any::<u64>(),
            any::<u32>(),
            option::of(text()),
            any::<bool>(),
            option::of((hash32(), hash32(), any::<[u8; 12]>(), any::<[u8; 48]>()))
        )
            .prop_map(
                |(artifact_id, size, chunk_count, mime_type, encrypted, key)| {
                    let data_key =
                        key.map(|(recipient, ephemeral, nonce, sealed)| WrappedDataKey {
                            recipient,
                            ephemeral,
                            nonce: FixedBytes(nonce),
                            sealed: FixedBytes(sealed),
                        });
                    Message::from(ArtifactMetadata {
                        artifact_id,
                        size,
                        chunk_count,
                        mime_type,
                        encrypted,
                        recipient_keys: data_key.clone().map(|k| vec![k.clone(), k]),
                        data_key,
                    })
                }
            ),
        (
            hash32(),
            any::<u32>(),
            vec(any::<u8>(), 0..300),
            any::<bool>(),
            option::of(hash32()),
            option::of(any::<[u8; 28]>())
        )
            .prop_map(
                |(artifact_id, chunk_index, data, is_final, chunk_hash, seal)| {
                    Message::from(ArtifactChunk {
                        artifact_id,
                        chunk_index,
                        chunk_data: Bytes::from(data),
                        is_final,
                        chunk_hash,
                        seal: seal.map(FixedBytes),
                    })
                }
            ),
        (hash32(), hash32()).prop_map(|(artifact_id, received_hash)| {
            Message::from(ArtifactComplete {
                artifact_id,
                received_hash,
            })
        }),
        (
            any::<i64>(),
            option::of(any::<u8>()),
            prop_oneof![
                Just(ConnectivityStatus::Wifi),
                Just(ConnectivityStatus::Cellular),
                Just(ConnectivityStatus::Ethernet),
                Just(ConnectivityStatus::Unknown)
            ]
        )
            .prop_map(|(timestamp, battery_level, connectivity)| {
                Message::from(Heartbeat {
                    timestamp,
                    battery_level,
                    connectivity,
                })
            }),
        (
            prop_oneof![
                Just(PresenceStatus::Online),
                Just(PresenceStatus::Away),
                Just(PresenceStatus::Busy),
                Just(PresenceStatus::Offline)
            ],
            option::of(text())
        )
            .prop_map(|(status, message)| Message::from(PresenceUpdate { status, message })),
        (any::<u16>(), text(), option::of(message_id())).prop_map(
            |(code, error_message, related)| {
                Message::from(ErrorMessage {
                    error_code: ErrorCode(code),
                    error_message,
                    related_message_id: related,
                })
            }
        ),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (message_id(), any::<i64>(), message()).prop_map(|(id, ts, m)| Envelope::new(id, ts, m))
}

fn big_limits() -> Limits {
    Limits {
        max_payload: 1 << 20,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(env in envelope()) {
        let frame = env.to_bytes().expect("encode");
        let back = Envelope::decode_with(&frame, &big_limits()).expect("decode");
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.to_bytes().expect("re-encode"), frame);
    }

    #[test]
    fn the_frame_in_pieces_is_the_same_bytes(env in envelope()) {
        let frame = env.to_bytes().expect("encode");
        let parts = env.encode_shared().expect("encode in pieces");
        prop_assert_eq!(parts.concat(), frame.to_vec());
    }

    #[test]
    fn a_stream_split_anywhere_decodes_to_the_same_frames(
        envs in vec(envelope(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for e in &envs {
            stream.extend_from_slice(&e.to_bytes().expect("encode"));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = Decoder::with_limits(big_limits());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for p in points {
            buf.extend_from_slice(&stream[from..p]);
            from = p;
            while let Some(e) = decoder.decode(&mut buf).expect("valid stream") {
                got.push(e);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, envs);
    }

    #[test]
    fn any_byte_flip_gives_an_error_or_a_frame(
        env in envelope(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut frame = env.to_bytes().expect("encode").to_vec();
        let i = at.index(frame.len());
        frame[i] ^= mask;
        // Only header bytes outside the checksum (id, timestamp) can change undetected.
        if let Ok(back) = Envelope::decode_with(&frame, &big_limits()) {
            prop_assert!((3..27).contains(&i), "flip at {} accepted: {:?}", i, back);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = Decoder::new();
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn values_round_trip_inside_documents(v in value(), key in text()) {
        let mut fields = BTreeMap::new();
        fields.insert(key, v);
        let m = Message::from(DeltaSync {
            entity_id: "e".into(),
            changed_fields: fields,
            actor_id: "a".into(),
            first_counter: 1,
            deps: Deps::new(),
            timestamp: 0,
        });
        let env = Envelope::new(MessageId::default(), 0, m);
        let back = Envelope::decode_with(&env.to_bytes().expect("encode"), &big_limits()).expect("decode");
        prop_assert_eq!(back, env);
    }
}
