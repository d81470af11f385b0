//! The actor table of `BATCHED_SYNC`: each device id once, in order of
//! first mention, operations naming it by index. A payload whose table is
//! out of order, repeats or leaves out a device id, or whose operations name
//! an index outside it, is a typed error; the canonical payload decodes to
//! the operations with their device ids.

use std::collections::BTreeMap;

use nomade_wire::{
    samples, BatchedSync, DecodeError, Deps, Envelope, Message, MessageId, SyncOperation,
};
use serde::Serialize;

const LAPTOP: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";
const PHONE: &str = "m7ae-dq3r-2x2k-fh7p-lwzc-u5tn-6jgb-vals";

/// A batch as it travels: the table, and operations naming actors by index.
struct RawBatch<'a> {
    actors: Vec<&'a str>,
    operations: Vec<RawOp>,
}

struct RawOp {
    entity_id: &'static str,
    entity_type: &'static str,
    operation: RawCrdt,
    timestamp: i64,
    actor_id: u32,
}

struct RawCrdt {
    counter: u64,
    deps: Vec<(u32, u64)>,
    edit: BTreeMap<&'static str, BTreeMap<&'static str, &'static str>>,
}

fn op(actor: u32, counter: u64, deps: &[(u32, u64)]) -> RawOp {
    RawOp {
        entity_id: "d",
        entity_type: "document",
        operation: RawCrdt {
            counter,
            deps: deps.to_vec(),
            edit: BTreeMap::from([("delete", BTreeMap::from([("key", "k")]))]),
        },
        timestamp: 0,
        actor_id: actor,
    }
}

/// The payload of `batch`, `deps` written as a map in the order given.
fn payload(batch: &RawBatch) -> Vec<u8> {
    #[derive(Serialize)]
    struct AsMap<'a>(#[serde(serialize_with = "pairs_as_map")] &'a [(u32, u64)]);
    fn pairs_as_map<S: serde::Serializer>(p: &&[(u32, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(p.iter().map(|(k, v)| (k, v)))
    }
    #[derive(Serialize)]
    struct Crdt<'a> {
        counter: u64,
        deps: AsMap<'a>,
        edit: &'a BTreeMap<&'static str, BTreeMap<&'static str, &'static str>>,
    }
    #[derive(Serialize)]
    struct Op<'a> {
        entity_id: &'static str,
        entity_type: &'static str,
        operation: Crdt<'a>,
        timestamp: i64,
        actor_id: u32,
    }
    #[derive(Serialize)]
    struct Batch<'a> {
        actors: &'a [&'a str],
        operations: Vec<Op<'a>>,
    }
    let ops = batch
        .operations
        .iter()
        .map(|o| Op {
            entity_id: o.entity_id,
            entity_type: o.entity_type,
            operation: Crdt {
                counter: o.operation.counter,
                deps: AsMap(&o.operation.deps),
                edit: &o.operation.edit,
            },
            timestamp: o.timestamp,
            actor_id: o.actor_id,
        })
        .collect();
    rmp_serde::to_vec_named(&Batch {
        actors: &batch.actors,
        operations: ops,
    })
    .expect("encode")
}

fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let frame = samples::frame_with_payload(0x0105, payload);
    Envelope::decode(&frame).map(|e| e.message)
}

#[test]
fn the_canonical_table_decodes_to_device_ids() {
    // Phone's operation first: phone is 0; laptop, first named in deps, is 1.
    let good = RawBatch {
        actors: vec![PHONE, LAPTOP],
        operations: vec![op(0, 8, &[(1, 43), (0, 7)]), op(1, 44, &[(1, 43), (0, 8)])],
    };
    let Ok(Message::BatchedSync(batch)) = decode(&payload(&good)) else {
        panic!("the canonical payload is refused");
    };
    let first: &SyncOperation = &batch.operations[0];
    assert_eq!(first.actor_id, PHONE);
    assert_eq!(
        first.operation.deps,
        Deps::from([(LAPTOP.into(), 43), (PHONE.into(), 7)])
    );
    assert_eq!(batch.operations[1].actor_id, LAPTOP);
    // And it is exactly what this implementation writes.
    let written = Envelope::new(MessageId::default(), 0, batch.clone())
        .to_bytes()
        .expect("encode");
    let frame = samples::frame_with_payload(0x0105, &payload(&good));
    assert_eq!(
        &written[31..written.len() - 32],
        &frame[31..frame.len() - 32]
    );
}

#[test]
fn a_table_out_of_order_repeated_or_incomplete_and_indices_outside_it_are_refused() {
    let cases = [
        (
            "laptop listed first though phone is named first",
            RawBatch {
                actors: vec![LAPTOP, PHONE],
                operations: vec![op(1, 8, &[(0, 43), (1, 7)])],
            },
        ),
        (
            "a device id listed twice",
            RawBatch {
                actors: vec![PHONE, PHONE],
                operations: vec![op(0, 8, &[(0, 7)])],
            },
        ),
        (
            "a device id no operation names",
            RawBatch {
                actors: vec![PHONE, LAPTOP],
                operations: vec![op(0, 8, &[(0, 7)])],
            },
        ),
        (
            "an index outside the table",
            RawBatch {
                actors: vec![PHONE],
                operations: vec![op(0, 8, &[(5, 7)])],
            },
        ),
        (
            "an author outside the table",
            RawBatch {
                actors: vec![],
                operations: vec![op(0, 8, &[])],
            },
        ),
        (
            "deps in the order of their indices, not of the device ids",
            RawBatch {
                actors: vec![PHONE, LAPTOP],
                operations: vec![op(0, 8, &[(0, 7), (1, 43)])],
            },
        ),
    ];
    for (what, batch) in cases {
        let result = decode(&payload(&batch));
        assert!(
            matches!(
                result,
                Err(DecodeError::MalformedPayload { .. } | DecodeError::NonCanonical { .. })
            ),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn operations_before_the_table_are_refused() {
    #[derive(Serialize)]
    struct Swapped<'a> {
        operations: Vec<u8>,
        actors: Vec<&'a str>,
    }
    let bytes = rmp_serde::to_vec_named(&Swapped {
        operations: vec![],
        actors: vec![],
    })
    .expect("encode");
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::MalformedPayload { .. })
    ));
    // The empty batch itself is fine.
    let empty = Envelope::new(MessageId::default(), 0, BatchedSync { operations: vec![] })
        .to_bytes()
        .expect("encode");
    assert!(Envelope::decode(&empty).is_ok());
}
