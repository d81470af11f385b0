//! `DELTA_SYNC`: consecutive field writes of one document by one actor, sent as
//! one message instead of one operation each.

use nomade_wire::{ActorId, CrdtOperation, DeltaSync, Deps, Edit, EntityType, SyncOperation};

use crate::error::CrdtError;

/// The deps of the `i`-th write of a delta whose first write has `deps`:
/// those, and for every later write the actor's entry set to the write
/// before it (each write follows the previous one).
fn write_deps(deps: &Deps, actor: &ActorId, i: usize, counter: u64) -> Deps {
    let mut deps = deps.clone();
    if i > 0 {
        deps.insert(actor.into(), counter - 1);
    }
    deps
}

/// Packs operations into a [`DeltaSync`] when they qualify: all `Set` on the
/// same document by the same actor, consecutive counters, keys in strictly
/// increasing order, each write's deps those of the first with the actor's
/// own entry set to the write before it, the same
/// timestamp. Returns `None` otherwise (send them as `BATCHED_SYNC`).
pub fn to_delta(ops: &[SyncOperation]) -> Option<DeltaSync> {
    let first = ops.first()?;
    if first.entity_type != EntityType::Document {
        return None;
    }
    let mut changed_fields = std::collections::BTreeMap::new();
    let mut last_key: Option<&str> = None;
    for (i, op) in ops.iter().enumerate() {
        let Edit::Set { key, value } = &op.operation.edit else {
            return None;
        };
        let counter = first.operation.counter.checked_add(i as u64)?;
        let expected_deps = write_deps(&first.operation.deps, &first.actor_id, i, counter);
        if op.entity_id != first.entity_id
            || op.entity_type != first.entity_type
            || op.actor_id != first.actor_id
            || op.timestamp != first.timestamp
            || op.operation.counter != counter
            || op.operation.deps != expected_deps
            || last_key.is_some_and(|k| k >= key.as_str())
        {
            return None;
        }
        last_key = Some(key);
        changed_fields.insert(key.clone(), value.clone());
    }
    Some(DeltaSync {
        entity_id: first.entity_id.to_string(),
        changed_fields,
        actor_id: first.actor_id.clone(),
        first_counter: first.operation.counter,
        deps: first.operation.deps.clone(),
        timestamp: first.timestamp,
    })
}

/// Expands a [`DeltaSync`] back into its operations (see `docs/PROTOCOL.md`).
pub fn from_delta(delta: &DeltaSync) -> Result<Vec<SyncOperation>, CrdtError> {
    let mut ops = Vec::with_capacity(delta.changed_fields.len());
    for (i, (key, value)) in delta.changed_fields.iter().enumerate() {
        let counter = delta
            .first_counter
            .checked_add(i as u64)
            .filter(|c| *c >= 1 && *c < u64::MAX)
            .ok_or_else(|| CrdtError::InvalidOperation {
                actor: delta.actor_id.to_string(),
                counter: delta.first_counter,
                reason: "delta counters out of range".into(),
            })?;
        let deps = write_deps(&delta.deps, &delta.actor_id, i, counter);
        ops.push(SyncOperation {
            entity_id: delta.entity_id.as_str().into(),
            entity_type: EntityType::Document,
            operation: CrdtOperation {
                counter,
                deps,
                edit: Edit::Set {
                    key: key.clone(),
                    value: value.clone(),
                },
            },
            timestamp: delta.timestamp,
            actor_id: delta.actor_id.clone(),
        });
    }
    Ok(ops)
}
