//! The size limit of `BATCHED_SYNC` frames, and the check that one operation
//! fits a frame on its own. Packing itself is [`nomade_wire::BatchEncoder`].

use nomade_wire::{BatchEncoder, EncodeError, SyncOperation, DEFAULT_MAX_PAYLOAD};

/// Largest payload a batch may have: the default limit every peer accepts.
pub const MAX_BATCH_PAYLOAD: usize = DEFAULT_MAX_PAYLOAD as usize;

/// Checks that one operation fits in a frame on its own, so that it can
/// always be sent. Local edits are checked before they are accepted.
pub fn check_op_size(op: &SyncOperation) -> Result<(), EncodeError> {
    BatchEncoder::new(MAX_BATCH_PAYLOAD).push(op).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomade_wire::{CrdtOperation, Edit, EntityType, Value};

    fn op(value_len: usize) -> SyncOperation {
        SyncOperation {
            entity_id: "doc".into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter: 1,
                deps: Default::default(),
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
    fn an_op_larger_than_a_frame_is_refused() {
        assert!(check_op_size(&op(1000)).is_ok());
        assert!(check_op_size(&op(MAX_BATCH_PAYLOAD - 200)).is_ok());
        assert!(matches!(
            check_op_size(&op(MAX_BATCH_PAYLOAD + 10)),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
    }
}
