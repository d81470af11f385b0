//! The real editing traces of `tests/data/editing-traces` (see its README for
//! their origin and licence): loading them and replaying them through the text
//! type. Shared by the trace tests and the CRDT benchmark.

#![allow(clippy::needless_range_loop, dead_code)] // indices name agents; not every user calls every helper

use std::io::Read;
use std::path::Path;

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, SyncOperation};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Patch(pub usize, pub usize, pub String);

#[derive(Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub parents: Vec<usize>,
    #[serde(default)]
    pub agent: usize,
    pub patches: Vec<Patch>,
}

#[derive(Deserialize)]
pub struct Trace {
    #[serde(default, rename = "startContent")]
    pub start_content: String,
    #[serde(rename = "endContent")]
    pub end_content: String,
    #[serde(default, rename = "numAgents")]
    pub num_agents: usize,
    pub txns: Vec<Txn>,
}

pub fn load(name: &str) -> Trace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/editing-traces")
        .join(name);
    let file = std::fs::File::open(&path).expect("trace file present");
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("gzip");
    serde_json::from_str(&json).expect("trace JSON")
}

pub fn splice(r: &mut Replica, p: &Patch) -> Vec<SyncOperation> {
    r.apply_local(
        EntityType::Document,
        "paper",
        LocalEdit::Splice {
            field: "text".into(),
            position: p.0,
            delete: p.1,
            insert: p.2.clone(),
        },
        0,
    )
    .expect("trace patches are in range")
}

/// Replays a sequential trace on one replica; returns it and its operations.
pub fn replay_sequential(trace: &Trace) -> (Replica, Vec<SyncOperation>) {
    let mut author = Replica::new("author");
    let mut ops = Vec::new();
    for txn in &trace.txns {
        for p in &txn.patches {
            ops.extend(splice(&mut author, p));
        }
    }
    (author, ops)
}

/// The operations of one actor, in counter order, that cover the counters
/// after `known` up to `target`.
fn counters_between(ops: &[SyncOperation], known: u64, target: u64) -> &[SyncOperation] {
    let start = ops.partition_point(|op| op.operation.last_counter() <= known);
    let end = ops.partition_point(|op| op.operation.last_counter() <= target);
    &ops[start..end.max(start)]
}

/// Replays a concurrent trace with each agent as a replica, delivering to an
/// agent, before each of its transactions, exactly the operations of its
/// parents; then a final full sync. Returns the replicas and each agent's
/// operations in counter order.
pub fn replay_concurrent(trace: &Trace) -> (Vec<Replica>, Vec<Vec<SyncOperation>>) {
    let n = trace.num_agents;
    let actors: Vec<String> = (0..n).map(|a| format!("agent-{a}")).collect();
    let mut replicas: Vec<Replica> = actors.iter().map(Replica::new).collect();
    let mut own_ops: Vec<Vec<SyncOperation>> = vec![Vec::new(); n];
    // For each agent, the replica counter reached after each of its transactions.
    let mut txn_end: Vec<Vec<u64>> = vec![Vec::new(); n];
    // For each transaction, how many transactions of each agent its state includes.
    let mut after: Vec<Vec<usize>> = Vec::with_capacity(trace.txns.len());
    for txn in &trace.txns {
        let a = txn.agent;
        let mut need = vec![0usize; n];
        for &p in &txn.parents {
            for (b, k) in after[p].iter().enumerate() {
                need[b] = need[b].max(*k);
            }
        }
        // Bring the agent's replica to exactly its parents' state.
        for b in (0..n).filter(|&b| b != a) {
            if need[b] == 0 {
                continue;
            }
            let target = txn_end[b][need[b] - 1];
            let known = replicas[a]
                .version_vector()
                .get(actors[b].as_str())
                .copied()
                .unwrap_or(0);
            assert!(
                known <= target,
                "replica {a} is ahead of the transaction's parents"
            );
            for op in counters_between(&own_ops[b], known, target) {
                replicas[a].apply_remote(op.clone()).expect("valid op");
            }
        }
        assert_eq!(
            txn_end[a].len(),
            need[a],
            "an agent's transactions are totally ordered"
        );
        for p in &txn.patches {
            let ops = splice(&mut replicas[a], p);
            own_ops[a].extend(ops);
        }
        // The counter the agent's operations reached (an operation covers
        // one counter per character it inserts or removes).
        let reached = own_ops[a]
            .last()
            .map_or(0, |op| op.operation.last_counter());
        txn_end[a].push(reached);
        need[a] += 1;
        after.push(need);
    }
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let known = replicas[a]
                .version_vector()
                .get(actors[b].as_str())
                .copied()
                .unwrap_or(0);
            for op in counters_between(&own_ops[b], known, u64::MAX) {
                replicas[a].apply_remote(op.clone()).expect("valid op");
            }
        }
    }
    (replicas, own_ops)
}
