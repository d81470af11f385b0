//! Packing operations into `BATCHED_SYNC` messages that fit the peer's payload limit.

use nomade_wire::{BatchedSync, EncodeError, SyncOperation, DEFAULT_MAX_PAYLOAD};

/// Largest payload a batch may have: the default limit every peer accepts.
pub const MAX_BATCH_PAYLOAD: usize = DEFAULT_MAX_PAYLOAD as usize;

/// Bytes of a `BATCHED_SYNC` payload around its operations: the one-entry map
/// header, the `"operations"` key, and an array header of at most 5 bytes.
const BATCH_OVERHEAD: usize = 1 + 11 + 5;

fn encoded_len(op: &SyncOperation) -> Result<usize, EncodeError> {
    rmp_serde::to_vec_named(op)
        .map(|v| v.len())
        .map_err(|e| EncodeError::Serialize(e.to_string()))
}

/// Splits `ops` (kept in order) into as few `BATCHED_SYNC` messages as fit a
/// payload of `max_payload` bytes each. The payload of a batch is exactly its
/// overhead plus the canonical encodings of its operations, so the sizes are
/// computed, not guessed.
///
/// Fails with [`EncodeError::PayloadTooLarge`] if one operation alone is too
/// large (local edits are checked for that before they are accepted, see
/// [`check_op_size`]).
pub fn split_batches(
    ops: &[SyncOperation],
    max_payload: usize,
) -> Result<Vec<BatchedSync>, EncodeError> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = BATCH_OVERHEAD;
    for op in ops {
        let len = encoded_len(op)?;
        if BATCH_OVERHEAD + len > max_payload {
            return Err(EncodeError::PayloadTooLarge {
                len: BATCH_OVERHEAD + len,
                max: max_payload,
            });
        }
        if size + len > max_payload {
            out.push(BatchedSync {
                operations: std::mem::take(&mut current),
            });
            size = BATCH_OVERHEAD;
        }
        size += len;
        current.push(op.clone());
    }
    if !current.is_empty() {
        out.push(BatchedSync {
            operations: current,
        });
    }
    Ok(out)
}

/// Checks that one operation fits in a frame on its own.
pub fn check_op_size(op: &SyncOperation) -> Result<(), EncodeError> {
    split_batches(std::slice::from_ref(op), MAX_BATCH_PAYLOAD).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Edit, EntityType, Envelope, Message, MessageId, Value};

    fn op(counter: u64, value_len: usize) -> SyncOperation {
        SyncOperation {
            entity_id: format!("doc-{}", counter % 7),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter,
                deps: [("dev-a".to_string(), counter - 1)].into(),
                edit: Edit::Set {
                    key: "body".into(),
                    value: Value::String("x".repeat(value_len)),
                },
            },
            timestamp: 1,
            actor_id: "dev-a".into(),
        }
    }

    #[test]
    fn batches_fit_the_limit_and_keep_every_op_in_order() {
        let ops: Vec<_> = (1..=3000).map(|c| op(c, (c as usize * 37) % 900)).collect();
        let batches = split_batches(&ops, MAX_BATCH_PAYLOAD).unwrap();
        assert!(batches.len() > 1, "3000 ops must need several frames");
        let mut got = Vec::new();
        for b in batches {
            // Every batch encodes and decodes under the default limits, and is
            // reasonably full (never one op per frame).
            let frame = Envelope::new(MessageId::default(), 0, b)
                .to_bytes()
                .unwrap();
            assert!(frame.len() > MAX_BATCH_PAYLOAD / 2 || got.len() > 2000);
            match Envelope::decode(&frame).unwrap().message {
                Message::BatchedSync(b) => got.extend(b.operations),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, ops);
    }

    #[test]
    fn an_op_larger_than_a_frame_is_refused() {
        assert!(check_op_size(&op(1, 1000)).is_ok());
        assert!(matches!(
            check_op_size(&op(1, MAX_BATCH_PAYLOAD + 10)),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
    }
}
