//! Sequences at scale, through the `Replica` API an author's device uses:
//!
//! - a text of 100,000, 1,000,000 and 10,000,000 characters (typed as one
//!   paste), then single-character insertions at random positions: the time
//!   of each, p50 and p99 (it should grow with log n, not n);
//! - one conversation grown to 1,000,000 messages by `LocalEdit::Append`
//!   (what `Node::conv_append` does): the time per append over each stretch
//!   (it should stay flat, so that the total is linear in the count).
//!
//! ```sh
//! cargo run --release -p nomade-crdt --example scale [-- --json PATH]
//! ```

use std::time::{Duration, Instant};

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, Value};

const DEVICE: &str = "cvml-efwx-x7jt-253v-yrk5-ma4a-2orm-6ypr";

/// Text lengths measured.
const TEXT_SIZES: [usize; 3] = [100_000, 1_000_000, 10_000_000];
/// Insertions timed at each length.
const INSERTS: usize = 20_000;
/// Conversation lengths at which the append time is reported.
const APPEND_MARKS: [usize; 3] = [10_000, 100_000, 1_000_000];

/// A small deterministic generator (xorshift64*), so that runs compare.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn splice(r: &mut Replica, position: usize, insert: String) {
    r.apply_local(
        EntityType::Document,
        "book",
        LocalEdit::Splice {
            field: "text".into(),
            position,
            delete: 0,
            insert,
        },
        0,
    )
    .expect("a splice within the text");
    // The operations go to the caller's store; here, nowhere.
    r.discard_applied();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_nanos() as f64
}

/// `(length, p50 ns, p99 ns)` of a random single-character insertion.
fn text_at(len: usize) -> (usize, f64, f64) {
    let mut r = Replica::new(DEVICE);
    let paste: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    splice(&mut r, 0, paste);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut times = Vec::with_capacity(INSERTS);
    for k in 0..INSERTS {
        let position = rng.below(len + k + 1);
        let start = Instant::now();
        splice(&mut r, position, "x".into());
        times.push(start.elapsed());
    }
    let text_len = r.text("book", "text").map_or(0, |t| t.chars().count());
    assert_eq!(text_len, len + INSERTS, "every insertion landed");
    times.sort();
    (len, percentile(&times, 0.5), percentile(&times, 0.99))
}

/// `(messages so far, ns per append over the last stretch)`.
fn appends() -> Vec<(usize, f64)> {
    let mut r = Replica::new(DEVICE);
    let mut done = 0usize;
    let mut out = Vec::new();
    for mark in APPEND_MARKS {
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
            r.discard_applied();
            done += 1;
        }
        out.push((mark, start.elapsed().as_nanos() as f64 / stretch as f64));
    }
    let items = r.conversation("chat").map_or(0, |c| c.len());
    assert_eq!(items, done, "every append landed");
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut json_path = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json_path = args.next(),
            "--bench" => {}
            other => panic!("unknown argument {other:?}; use [--json PATH]"),
        }
    }
    println!("| text length | random 1-char insert p50 | p99 |");
    println!("|---|---|---|");
    let texts: Vec<(usize, f64, f64)> = TEXT_SIZES.iter().map(|&n| text_at(n)).collect();
    for (len, p50, p99) in &texts {
        println!("| {len} | {:.2} us | {:.2} us |", p50 / 1e3, p99 / 1e3);
    }
    println!("\n| messages so far | ns per append over the last stretch |");
    println!("|---|---|");
    let appended = appends();
    for (mark, ns) in &appended {
        println!("| {mark} | {ns:.0} |");
    }
    if let Some(path) = json_path {
        let json = format!(
            "{{\"text_insert\":[{}],\"conversation_append\":[{}]}}",
            texts
                .iter()
                .map(|(len, p50, p99)| format!(
                    "{{\"length\":{len},\"p50_ns\":{p50:.0},\"p99_ns\":{p99:.0}}}"
                ))
                .collect::<Vec<_>>()
                .join(","),
            appended
                .iter()
                .map(|(mark, ns)| format!("{{\"messages\":{mark},\"ns_per_append\":{ns:.0}}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        std::fs::write(&path, json).expect("writing the JSON report");
        println!("written {path}");
    }
}
