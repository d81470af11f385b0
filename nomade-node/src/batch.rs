//! Packing operations into `BATCHED_SYNC` frames that fit the peer's payload limit.

use bytes::BytesMut;
use nomade_wire::{
    BatchedSync, EncodeError, Envelope, MessageId, SyncOperation, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};

/// Largest payload a batch may have: the default limit every peer accepts.
pub const MAX_BATCH_PAYLOAD: usize = DEFAULT_MAX_PAYLOAD as usize;

/// Appends frames carrying `ops` (in order) to `dst`, as few `BATCHED_SYNC`
/// frames as the payload limit allows. Returns the message id of each frame
/// with the number of operations it carries.
///
/// Fails with [`EncodeError::PayloadTooLarge`] only if a single operation is
/// larger than the limit (local edits are checked for that before they are
/// accepted, see [`check_op_size`]).
pub fn encode_batches(
    ops: &[SyncOperation],
    max_payload: usize,
    timestamp: i64,
    mut next_id: impl FnMut() -> MessageId,
    dst: &mut BytesMut,
) -> Result<Vec<(MessageId, usize)>, EncodeError> {
    let mut out = Vec::new();
    let mut rest = ops;
    while !rest.is_empty() {
        // Start optimistic (a typical operation is ~100-200 bytes), halve on overflow.
        let mut take = rest.len().min(256);
        loop {
            let id = next_id();
            let env = Envelope::new(
                id,
                timestamp,
                BatchedSync {
                    operations: rest[..take].to_vec(),
                },
            );
            let start = dst.len();
            env.encode_into(dst)?;
            let payload = dst.len() - start - HEADER_LEN - nomade_wire::CHECKSUM_LEN;
            if payload <= max_payload {
                out.push((id, take));
                rest = &rest[take..];
                break;
            }
            dst.truncate(start);
            if take == 1 {
                return Err(EncodeError::PayloadTooLarge {
                    len: payload,
                    max: max_payload,
                });
            }
            take /= 2;
        }
    }
    Ok(out)
}

/// Checks that one operation fits in a frame on its own.
pub fn check_op_size(op: &SyncOperation) -> Result<(), EncodeError> {
    let mut buf = BytesMut::new();
    encode_batches(
        std::slice::from_ref(op),
        MAX_BATCH_PAYLOAD,
        0,
        || MessageId::ZERO,
        &mut buf,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Decoder, Edit, EntityType, Message, Value};

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
        let mut buf = BytesMut::new();
        let mut n = 0u8;
        let frames = encode_batches(
            &ops,
            MAX_BATCH_PAYLOAD,
            5,
            || {
                n = n.wrapping_add(1);
                MessageId::from([n; 16])
            },
            &mut buf,
        )
        .unwrap();
        assert!(frames.len() > 1, "3000 ops must need several frames");
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        while let Some(env) = decoder.decode(&mut buf).unwrap() {
            match env.message {
                Message::BatchedSync(b) => got.extend(b.operations),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, ops);
        assert_eq!(frames.iter().map(|f| f.1).sum::<usize>(), ops.len());
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
