//! A snapshot from a peer (`SYNC_SNAPSHOT`, or a damaged one on disk),
//! whatever its bytes: restoring it never panics and stays within the
//! bounds (actor table, depth); what restores is a state that snapshots
//! again to bytes restoring the same state, and that local editing goes on
//! from.
//!
//! The corpus starts from the snapshot of the state-hash vector
//! (`fuzz/seeds/restore_snapshot`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(mut replica) = Replica::from_snapshot("fuzz-device", data, nomade_fuzz::small_replica_config()) else {
        return;
    };
    let hash = replica.state_hash();
    let again = replica.snapshot().expect("a restored replica snapshots");
    let restored =
        Replica::from_snapshot("fuzz-device", &again, nomade_fuzz::small_replica_config()).expect("its own snapshot restores");
    assert_eq!(restored.state_hash(), hash, "a snapshot round trip changed the state");
    // Editing goes on (the actor table may be full: then refused, typed).
    let _ = replica.apply_local(
        EntityType::Document,
        "fuzz-doc",
        LocalEdit::Set {
            key: "k".into(),
            value: Value::Int(1),
        },
        0,
    );
});
