//! CRDT throughput and the real editing traces.
//!
//! - local edits/s and remote applies/s for document fields, text and
//!   conversations;
//! - replay time (ns per keystroke) and peak memory of both editing traces,
//!   locally (as typed) and remotely (the operations as another device
//!   receives them), each replay in a fresh process so that its peak RSS is
//!   its own.
//!
//! Run: `cargo xtask bench` or `cargo bench -p nomade-crdt --bench crdt`.
//! Writes `target/bench/crdt.json`.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/traces.rs"]
mod traces;

use std::path::Path;
use std::time::Instant;

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, SyncOperation, Value};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Local edits of one kind, then the same operations applied remotely:
/// (local ops/s, remote ops/s).
fn edits(kind: &str, n: usize) -> (f64, f64) {
    let mut r = Replica::new("author");
    let mut ops: Vec<SyncOperation> = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let (t, id, edit) = match kind {
            "document" => (
                EntityType::Document,
                format!("doc-{}", i % 1000),
                LocalEdit::Set {
                    key: format!("f{}", i % 8),
                    value: Value::Int(i as i64),
                },
            ),
            "text" => (
                EntityType::Document,
                "note".to_string(),
                LocalEdit::Splice {
                    field: "body".into(),
                    position: (i * 7919) % (i + 1),
                    delete: 0,
                    insert: "x".into(),
                },
            ),
            _ => (
                EntityType::Conversation,
                "chat".to_string(),
                LocalEdit::Insert {
                    index: i,
                    value: Value::from("a message of moderate length"),
                },
            ),
        };
        ops.extend(r.apply_local(t, &id, edit, 0).unwrap());
    }
    let local = n as f64 / start.elapsed().as_secs_f64();
    let mut remote = Replica::new("reader");
    let start = Instant::now();
    for op in ops {
        remote.apply_remote(op).unwrap();
    }
    let remote_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(remote.state_hash(), r.state_hash());
    (local, remote_rate)
}

/// Runs one trace replay in this process and prints `seconds peak_rss_mib keystrokes`.
fn child(which: &str) {
    match which {
        "sequential-local" | "sequential-remote" => {
            let trace = traces::load("automerge-paper.json.gz");
            let keystrokes: usize = trace.txns.iter().map(|t| t.patches.len()).sum();
            let (secs, ok) = if which == "sequential-local" {
                let start = Instant::now();
                let (r, _) = traces::replay_sequential(&trace);
                (
                    start.elapsed().as_secs_f64(),
                    r.text("paper", "text").as_deref() == Some(trace.end_content.as_str()),
                )
            } else {
                let (_, ops) = traces::replay_sequential(&trace);
                let start = Instant::now();
                let mut r = Replica::new("reader");
                for op in ops {
                    r.apply_remote(op).unwrap();
                }
                (
                    start.elapsed().as_secs_f64(),
                    r.text("paper", "text").as_deref() == Some(trace.end_content.as_str()),
                )
            };
            assert!(ok);
            println!("{secs} {} {keystrokes}", peak_rss_mib());
        }
        _ => {
            let trace = traces::load("friendsforever.json.gz");
            let keystrokes: usize = trace.txns.iter().map(|t| t.patches.len()).sum();
            if which == "concurrent-local" {
                let start = Instant::now();
                let (replicas, _) = traces::replay_concurrent(&trace);
                let secs = start.elapsed().as_secs_f64();
                assert_eq!(
                    replicas[0].text("paper", "text").as_deref(),
                    Some(trace.end_content.as_str())
                );
                println!("{secs} {} {keystrokes}", peak_rss_mib());
            } else {
                let (_, own) = traces::replay_concurrent(&trace);
                // Interleave the agents' operations as a third device receives them.
                let mut all: Vec<SyncOperation> = Vec::new();
                let longest = own.iter().map(Vec::len).max().unwrap_or(0);
                for i in 0..longest {
                    for agent in &own {
                        if let Some(op) = agent.get(i) {
                            all.push(op.clone());
                        }
                    }
                }
                let start = Instant::now();
                let mut r = Replica::new("reader");
                for op in all {
                    r.apply_remote(op).unwrap();
                }
                let secs = start.elapsed().as_secs_f64();
                assert_eq!(
                    r.text("paper", "text").as_deref(),
                    Some(trace.end_content.as_str())
                );
                println!("{secs} {} {keystrokes}", peak_rss_mib());
            }
        }
    }
}

fn run_child(which: &str) -> (f64, f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("NOMADE_BENCH_CHILD", which)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

fn main() {
    if let Ok(which) = std::env::var("NOMADE_BENCH_CHILD") {
        child(&which);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick" || a == "--measurement-time");
    let n = if quick { 20_000 } else { 200_000 };
    let mut report = serde_json::Map::new();
    for kind in ["document", "text", "conversation"] {
        let (local, remote) = edits(kind, n);
        println!(
            "crdt: {kind:<12} local {local:>10.0} ops/s   remote {remote:>10.0} ops/s   ({n} ops)"
        );
        report.insert(format!("{kind}_local_ops_per_sec"), local.into());
        report.insert(format!("{kind}_remote_ops_per_sec"), remote.into());
    }
    for which in [
        "sequential-local",
        "sequential-remote",
        "concurrent-local",
        "concurrent-remote",
    ] {
        let (secs, rss, keystrokes) = run_child(which);
        let ns = secs * 1e9 / keystrokes;
        println!("crdt: trace {which:<18} {secs:>7.3} s  {ns:>8.0} ns/keystroke  peak RSS {rss:>6.1} MiB");
        report.insert(format!("trace_{which}_secs"), secs.into());
        report.insert(format!("trace_{which}_ns_per_keystroke"), ns.into());
        report.insert(format!("trace_{which}_peak_rss_mib"), rss.into());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/crdt.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("crdt: written {}", path.display());
}
