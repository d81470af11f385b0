//! Sequences edited by three devices, delivered in different orders: the
//! input is a program (each four bytes: a device, an edit or a sync, two
//! arguments) run on three replicas, which type into one text field and
//! insert into and remove from one conversation, catching up with each
//! other now and then. Every operation made is then applied to fresh
//! replicas in three orders (as made, reversed, and shuffled by the input);
//! all must converge to one state, the state of each device once it has
//! received everything, with no operation refused: any two orders of the
//! same set of operations converge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, SyncOperation, Value};

const DEVICES: usize = 3;
/// Steps run at most (each makes at most two operations).
const MAX_STEPS: usize = 400;

fn device(i: usize) -> String {
    format!("device-{i}")
}

fn text_len(r: &Replica) -> usize {
    r.text("doc", "body").map_or(0, |t| t.chars().count())
}

fn items(r: &Replica) -> usize {
    r.conversation("chat").map_or(0, |c| c.len())
}

/// One step of the program on device `d`; returns the operations it made.
fn step(r: &mut Replica, kind: u8, x: u8, y: u8) -> Vec<SyncOperation> {
    let (entity_type, id, edit) = match kind % 4 {
        0 | 1 => {
            let len = text_len(r);
            let position = usize::from(x) % (len + 1);
            let delete = (usize::from(y) % 4).min(len - position);
            let insert: String = (0..usize::from(y / 4) % 4)
                .map(|k| char::from(b'a' + (x.wrapping_add(k as u8)) % 26))
                .collect();
            let edit = LocalEdit::Splice {
                field: "body".into(),
                position,
                delete,
                insert,
            };
            (EntityType::Document, "doc", edit)
        }
        2 => {
            let index = usize::from(x) % (items(r) + 1);
            let value = Value::Int(i64::from(y));
            (EntityType::Conversation, "chat", LocalEdit::Insert { index, value })
        }
        _ => {
            let len = items(r);
            if len == 0 {
                return Vec::new();
            }
            let index = usize::from(x) % len;
            (EntityType::Conversation, "chat", LocalEdit::Remove { index })
        }
    };
    let ops = r
        .apply_local(entity_type, id, edit, 0)
        .expect("an edit within bounds applies");
    r.discard_applied();
    ops
}

/// A fresh replica with `ops` applied in the given order: none refused.
fn replay<'a>(ops: impl Iterator<Item = &'a SyncOperation>) -> Replica {
    let mut r = Replica::new("reader");
    for op in ops {
        r.apply_remote(op.clone())
            .expect("an operation another device made applies");
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let mut devices: Vec<Replica> = (0..DEVICES).map(|i| Replica::new(device(i))).collect();
    // Every operation made, in the order made (a causal order).
    let mut all: Vec<SyncOperation> = Vec::new();
    // How many of `all` each device has received.
    let mut received = [0usize; DEVICES];
    for chunk in data.chunks_exact(4).take(MAX_STEPS) {
        let d = usize::from(chunk[0]) % DEVICES;
        let r = &mut devices[d];
        if chunk[1] % 5 == 4 {
            // Catch up with everything made so far.
            for op in &all[received[d]..] {
                r.apply_remote(op.clone()).expect("a causal delivery applies");
            }
            r.discard_applied();
            received[d] = all.len();
            continue;
        }
        all.extend(step(r, chunk[1], chunk[2], chunk[3]));
    }
    for (d, r) in devices.iter_mut().enumerate() {
        for op in &all[received[d]..] {
            r.apply_remote(op.clone()).expect("a causal delivery applies");
        }
    }
    let expected = devices[0].state_hash();
    for r in &devices[1..] {
        assert_eq!(r.state_hash(), expected, "devices diverge");
    }
    let seed = data.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut shuffled: Vec<&SyncOperation> = all.iter().collect();
    shuffled.sort_by_key(|op| {
        (op.operation.counter ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ op.actor_id.len() as u64
    });
    for (order, r) in [
        ("as made", replay(all.iter())),
        ("reversed", replay(all.iter().rev())),
        ("shuffled", replay(shuffled.into_iter())),
    ] {
        assert_eq!(r.state_hash(), expected, "delivered {order}, the state differs");
        assert_eq!(r.text("doc", "body"), devices[0].text("doc", "body"));
    }
});
