//! How much memory a replica holds per operation, by kind of edit.
//!
//! ```sh
//! cargo run --release -p nomade-crdt --example memory [-- OPS]
//! ```
//!
//! Each workload runs in a child process of its own (so that memory freed by
//! one is not reused by the next) and applies OPS local edits (default
//! 100,000) to a fresh replica, handing each edit's operations over as a
//! node does (to be stored: here they are measured and dropped). It prints,
//! per operation: the growth of the process's resident memory (Linux
//! `/proc/self/status`), which is the replica's state alone (a replica
//! keeps no history), and the size of an operation encoded as on the wire.

use std::process::Command;

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, Value};

const WORKLOADS: [&str; 4] = ["field-writes", "field-overwrites", "typing", "chat"];

fn rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn edit(workload: &str, i: usize) -> (EntityType, String, LocalEdit) {
    match workload {
        // Distinct fields across 50 documents.
        "field-writes" => (
            EntityType::Document,
            format!("doc-{}", i % 50),
            LocalEdit::Set {
                key: format!("k{i}"),
                value: Value::from(format!("value {i}")),
            },
        ),
        // The same 500 fields written over and over.
        "field-overwrites" => (
            EntityType::Document,
            format!("doc-{}", i % 50),
            LocalEdit::Set {
                key: format!("k{}", i % 500),
                value: Value::from(format!("value {i}")),
            },
        ),
        // One character at a time at the end of a text field.
        "typing" => (
            EntityType::Document,
            "essay".into(),
            LocalEdit::Splice {
                field: "body".into(),
                position: i,
                delete: 0,
                insert: char::from(b'a' + (i % 26) as u8).to_string(),
            },
        ),
        // Messages appended to 10 conversations.
        _ => (
            EntityType::Conversation,
            format!("chat-{}", i % 10),
            LocalEdit::Insert {
                index: i / 10,
                value: Value::from(format!("message {i}")),
            },
        ),
    }
}

fn measure(workload: &str, ops: usize) {
    let before = rss_kib().unwrap_or(0);
    let mut replica = Replica::new("abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4567");
    let (mut count, mut encoded) = (0usize, 0usize);
    for i in 0..ops {
        let (t, id, e) = edit(workload, i);
        if let Err(err) = replica.apply_local(t, &id, e, 0) {
            eprintln!("{workload}: edit {i} failed: {err}");
            std::process::exit(1);
        }
        for op in replica.take_applied() {
            count += 1;
            encoded += rmp_serde::to_vec_named(&op).map(|v| v.len()).unwrap_or(0);
        }
    }
    let with_replica = rss_kib().unwrap_or(0);
    let n = count.max(1) as f64;
    println!(
        "| {workload} | {count} | {:.0} | {:.0} |",
        (with_replica - before) as f64 * 1024.0 / n,
        encoded as f64 / n,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, workload, ops] = args.as_slice() {
        if flag == "--workload" {
            measure(workload, ops.parse().unwrap_or(100_000));
            return;
        }
    }
    let ops = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000usize);
    if rss_kib().is_none() {
        eprintln!("resident memory is read from /proc/self/status: Linux only");
        std::process::exit(1);
    }
    println!("| workload | operations | bytes/op, whole replica | one operation encoded |");
    println!("|---|---|---|---|");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this program to run the workloads: {e}");
            std::process::exit(1);
        }
    };
    for workload in WORKLOADS {
        let status = Command::new(&exe)
            .args(["--workload", workload, &ops.to_string()])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("workload {workload} failed: {status:?}");
            std::process::exit(1);
        }
    }
}
