//! What history costs a node: its size on disk, the resident memory of a
//! node opened on it in a fresh process (above an empty node's, measured in
//! the same run), and the time `Node::open` takes.
//!
//! ```sh
//! cargo run --release -p nomade-node --example history [-- typing|fields|both] [--json FILE]
//! ```
//!
//! `cargo xtask bench` runs it with `--json target/bench/history.json` and
//! puts the figures in its report.
//!
//! - `typing`: the automerge-paper editing trace (259,778 keystrokes, Martin
//!   Kleppmann's, see `nomade-crdt/tests/data/editing-traces/README.md`)
//!   typed into one text field through the node API, committed every 100
//!   patches.
//! - `fields`: 1,000,000 field writes over 10,000 documents (7 fields each,
//!   overwritten), committed every 1,000.
//!
//! Each store is written by one child process, which stops cleanly (a
//! checkpoint: the snapshot is up to date), then opened by another (and an
//! empty directory by a third, the baseline), so that nothing of the writing
//! stays in the memory measured.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nomade_crdt::LocalEdit;
use nomade_node::{Node, NodeConfig};
use nomade_wire::{EntityType, Value};

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
struct Patch(usize, usize, String);

#[derive(serde::Deserialize)]
struct Txn {
    patches: Vec<Patch>,
}

#[derive(serde::Deserialize)]
struct Trace {
    txns: Vec<Txn>,
}

fn trace() -> Trace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nomade-crdt/tests/data/editing-traces/automerge-paper.json.gz");
    let mut json = String::new();
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("gzip");
    serde_json::from_str(&json).expect("trace JSON")
}

/// Writes the workload into `dir`; returns the number of edits (keystroke
/// patches or field writes) and of operations stored (typing joins
/// keystrokes into runs).
fn write(workload: &str, dir: &Path) -> (usize, usize) {
    let mut edits = 0;
    let node = Node::open(dir, NodeConfig::default()).expect("open");
    let core = node.core();
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<(EntityType, String, LocalEdit)>| {
        if !batch.is_empty() {
            core.edit_many(std::mem::take(batch)).expect("edit");
        }
    };
    match workload {
        "typing" => {
            for txn in trace().txns {
                for p in txn.patches {
                    edits += 1;
                    batch.push((
                        EntityType::Document,
                        "paper".into(),
                        LocalEdit::Splice {
                            field: "text".into(),
                            position: p.0,
                            delete: p.1,
                            insert: p.2,
                        },
                    ));
                    if batch.len() == 100 {
                        flush(&mut batch);
                    }
                }
            }
        }
        _ => {
            for i in 0..1_000_000usize {
                edits += 1;
                batch.push((
                    EntityType::Document,
                    format!("doc-{}", (i / 7) % 10_000),
                    LocalEdit::Set {
                        key: format!("field-{}", i % 7),
                        value: Value::Int(i as i64),
                    },
                ));
                if batch.len() == 1000 {
                    flush(&mut batch);
                }
            }
        }
    }
    flush(&mut batch);
    // What a clean stop does (Node::shutdown): a snapshot of what is new.
    let stored = core.store().last_seq().unwrap_or(0) as usize;
    core.checkpoint();
    (edits, stored)
}

/// Opens `dir` and prints `rss_before rss_after open_ms ops`.
fn open(dir: &Path) {
    let before = rss_kib();
    let t = Instant::now();
    let node = Node::open(dir, NodeConfig::default()).expect("open");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let after = rss_kib();
    println!("{before} {after} {ms:.1} {}", node.core().op_count());
}

fn child(args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("this program");
    let out = Command::new(exe).args(args).output().expect("child");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes and reopens one workload; prints its row and returns its figures.
fn measure(workload: &str, tmp: &Path) -> serde_json::Value {
    let dir = tmp.join(workload);
    let empty = tmp.join(format!("{workload}-empty"));
    let d = dir.to_str().expect("path");
    let written = child(&["--write", workload, d]);
    let mut counts = written
        .split_whitespace()
        .map(|n| n.parse::<usize>().expect("count"));
    let (edits, ops) = (counts.next().unwrap_or(0), counts.next().unwrap_or(0));
    let disk = std::fs::metadata(dir.join("nomade.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let snapshot = nomade_node::store::Store::open(&dir.join("nomade.redb"))
        .and_then(|s| s.snapshot())
        .ok()
        .flatten()
        .map_or(0, |(_, bytes)| bytes.len());
    let parse = |line: String| -> (i64, i64, f64) {
        let f: Vec<&str> = line.split_whitespace().collect();
        (
            f[0].parse().unwrap_or(0),
            f[1].parse().unwrap_or(0),
            f[2].parse().unwrap_or(0.0),
        )
    };
    let (b0, a0, _) = parse(child(&["--open", empty.to_str().expect("path")]));
    let (b1, a1, ms) = parse(child(&["--open", d]));
    let above_empty_kib = (a1 - b1) - (a0 - b0);
    let n = edits.max(1) as f64;
    println!(
        "| {workload} | {edits} | {ops} | {:.1} MB ({:.1} B/edit) | {:.1} MB | {:.1} MiB ({:.0} B/edit) | {ms:.0} ms |",
        disk as f64 / 1e6,
        disk as f64 / n,
        snapshot as f64 / 1e6,
        above_empty_kib as f64 / 1024.0,
        above_empty_kib as f64 * 1024.0 / n,
    );
    serde_json::json!({
        "workload": workload,
        "edits": edits,
        "operations_stored": ops,
        "disk_bytes": disk,
        "disk_bytes_per_edit": disk as f64 / n,
        "snapshot_bytes": snapshot,
        "resident_above_empty_bytes": above_empty_kib * 1024,
        "resident_bytes_per_edit": above_empty_kib as f64 * 1024.0 / n,
        "open_ms": ms,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, workload, dir] if flag == "--write" => {
            let (edits, ops) = write(workload, &PathBuf::from(dir));
            println!("{edits} {ops}");
            return;
        }
        [flag, dir] if flag == "--open" => {
            open(&PathBuf::from(dir));
            return;
        }
        _ => {}
    }
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let which = args
        .first()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .unwrap_or("both");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    println!("| store | edits | operations stored | on disk | of which the snapshot | resident after `Node::open`, above an empty node | `Node::open` |");
    println!("|---|---|---|---|---|---|---|");
    for workload in ["typing", "fields"] {
        if which == workload || which == "both" {
            rows.push(measure(workload, tmp.path()));
        }
    }
    if let Some(path) = json_out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the report's directory");
        }
        let text = serde_json::to_string_pretty(&rows).expect("JSON");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
