//! Appending to a long conversation: the time per append as the
//! conversation grows (it should stay flat: an append finds the last item
//! from the end and inserts into the last block).
//!
//! ```sh
//! cargo run --release -p nomade-crdt --example append
//! ```

use std::time::Instant;

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, Value};

fn main() {
    let mut r = Replica::new("cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr");
    let marks = [10_000usize, 100_000, 1_000_000];
    let mut done = 0usize;
    println!("| messages so far | ns per append over the last stretch |");
    println!("|---|---|");
    for mark in marks {
        let start = Instant::now();
        let stretch = mark - done;
        while done < mark {
            let value = Value::String(format!("message {done}"));
            r.apply_local(
                EntityType::Conversation,
                "chat",
                LocalEdit::Append { value },
                0,
            )
            .expect("append");
            // The operations go to the caller's store; here, nowhere.
            r.discard_applied();
            done += 1;
        }
        let ns = start.elapsed().as_nanos() as f64 / stretch as f64;
        println!("| {mark} | {ns:.0} |");
    }
    let items = r.conversation("chat").map_or(0, |c| c.len());
    assert_eq!(items, done);
}
