//! Persisting the operation log: the trait a store implements, an in-memory
//! implementation, and rebuilding a replica from a log.

use nomade_wire::{ActorId, SyncOperation};

use crate::error::CrdtError;
use crate::replica::{Replica, ReplicaConfig};

/// Durable storage for a replica's operations, in the order they were applied.
///
/// The node implements it on its database; an operation is acknowledged to a
/// peer only after `append` returned.
pub trait OpLog {
    /// The store's error.
    type Error;
    /// Appends operations durably, in order.
    fn append(&mut self, ops: &[SyncOperation]) -> Result<(), Self::Error>;
    /// Calls `f` with every stored operation, in order.
    fn for_each(&self, f: &mut dyn FnMut(SyncOperation)) -> Result<(), Self::Error>;
}

/// An operation log in memory (tests, and apps that persist elsewhere).
#[derive(Debug, Clone, Default)]
pub struct MemoryOpLog {
    ops: Vec<SyncOperation>,
}

impl MemoryOpLog {
    /// The stored operations.
    pub fn ops(&self) -> &[SyncOperation] {
        &self.ops
    }

    /// Stores what `replica` applied since it last handed it over
    /// ([`Replica::take_applied`]).
    pub fn record(&mut self, replica: &mut Replica) {
        self.ops.extend(replica.take_applied());
    }

    /// The operations a peer with version vector `peer` lacks, in the
    /// order stored (a causal order).
    pub fn missing<'a>(
        &'a self,
        peer: &'a nomade_wire::VersionVector,
    ) -> impl Iterator<Item = &'a SyncOperation> + 'a {
        self.ops.iter().filter(move |op| {
            op.operation.last_counter() > peer.get(&op.actor_id).copied().unwrap_or(0)
        })
    }
}

impl OpLog for MemoryOpLog {
    type Error = std::convert::Infallible;

    fn append(&mut self, ops: &[SyncOperation]) -> Result<(), Self::Error> {
        self.ops.extend_from_slice(ops);
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(SyncOperation)) -> Result<(), Self::Error> {
        self.ops.iter().cloned().for_each(f);
        Ok(())
    }
}

/// Why a replica could not be rebuilt from its log.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError<E> {
    /// The store failed.
    #[error("reading the op log: {0}")]
    Store(E),
    /// A stored operation was refused: the log is corrupt.
    #[error("stored operation refused: {0}")]
    Operation(CrdtError),
}

impl Replica {
    /// Rebuilds the replica of `actor` by applying every operation of `log`.
    /// Operations of `actor` itself are taken as its own (its counter resumes after them).
    pub fn restore<L: OpLog>(
        actor: impl Into<ActorId>,
        config: ReplicaConfig,
        log: &L,
    ) -> Result<Replica, RestoreError<L::Error>> {
        let mut replica = Replica::with_config(actor, config);
        let mut failure = None;
        log.for_each(&mut |op| {
            if failure.is_none() {
                if let Err(e) = replica.apply_remote(op) {
                    failure = Some(e);
                }
                // What the log holds is stored already: nothing to hand over.
                replica.discard_applied();
            }
        })
        .map_err(RestoreError::Store)?;
        match failure {
            Some(e) => Err(RestoreError::Operation(e)),
            None => Ok(replica),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalEdit;
    use nomade_wire::{EntityType, Value};

    #[test]
    fn a_replica_restored_from_its_log_continues_where_it_stopped() {
        let mut log = MemoryOpLog::default();
        let mut a = Replica::new("a");
        for i in 0..5 {
            let ops = a
                .apply_local(
                    EntityType::Document,
                    "d",
                    LocalEdit::Set {
                        key: format!("k{i}"),
                        value: Value::Int(i),
                    },
                    0,
                )
                .unwrap();
            log.append(&ops).unwrap();
        }
        let mut restored = Replica::restore("a", ReplicaConfig::default(), &log).unwrap();
        assert_eq!(restored.state_hash(), a.state_hash());
        let next = restored
            .apply_local(
                EntityType::Document,
                "d",
                LocalEdit::Delete { key: "k0".into() },
                0,
            )
            .unwrap();
        assert_eq!(next[0].operation.counter, 6);
    }
}
