//! Operations from a peer, whatever they say, applied to a replica: no
//! panic, bounded memory (a small causal buffer and actor table), and what
//! the replica applied is exactly what rebuilds it: replaying the applied
//! operations on a fresh replica (what a node's store does at start-up)
//! gives the same state, applying them again changes nothing, and a
//! snapshot restores the same state.
//!
//! The input is a frame (the corpus starts from the test vectors, among
//! them `BATCHED_SYNC` frames with runs and ranges), also tried as
//! `header | payload` with its length and checksum made right, as
//! `roundtrip` does, so that mutations reach the operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_crdt::Replica;
use nomade_wire::{Envelope, Message, SyncOperation};

fn operations(frame: &[u8]) -> Option<Vec<SyncOperation>> {
    match Envelope::decode(frame).ok()?.message {
        Message::BatchedSync(b) => Some(b.operations),
        Message::SyncOperation(op) => Some(vec![op]),
        _ => None,
    }
}

fn check(ops: Vec<SyncOperation>) {
    let mut replica = Replica::with_config("fuzz-device", nomade_fuzz::small_replica_config());
    for op in ops {
        let _ = replica.apply_remote(op);
    }
    let applied = replica.take_applied();
    let hash = replica.state_hash();
    let mut replay = Replica::with_config("fuzz-device", nomade_fuzz::small_replica_config());
    for op in applied.iter().cloned() {
        replay
            .apply_remote(op)
            .expect("what was applied applies again, in the order applied");
    }
    assert_eq!(
        replay.state_hash(),
        hash,
        "a replay of what was applied differs"
    );
    for op in applied {
        let _ = replica.apply_remote(op);
    }
    assert_eq!(
        replica.state_hash(),
        hash,
        "applying again changed the state"
    );
    let bytes = replica.snapshot().expect("a snapshot");
    let restored = Replica::from_snapshot("fuzz-device", &bytes, nomade_fuzz::small_replica_config()).expect("restores");
    assert_eq!(
        restored.state_hash(),
        hash,
        "the snapshot restores another state"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Some(ops) = operations(data) {
        check(ops);
    }
    if let Some(ops) =
        nomade_fuzz::with_length_and_checksum_fixed(data).and_then(|f| operations(&f))
    {
        check(ops);
    }
});
