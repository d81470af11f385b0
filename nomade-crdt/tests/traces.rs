//! Replays the real editing traces of `tests/data/editing-traces` (see its
//! README for their origin and licence) through the text type.

#![allow(clippy::needless_range_loop)] // indices name agents in both vectors

use std::io::Read;
use std::path::Path;

use nomade_crdt::{LocalEdit, Replica};
use nomade_wire::{EntityType, SyncOperation};
use serde::Deserialize;

#[derive(Deserialize)]
struct Patch(usize, usize, String);

#[derive(Deserialize)]
struct Txn {
    #[serde(default)]
    parents: Vec<usize>,
    #[serde(default)]
    agent: usize,
    patches: Vec<Patch>,
}

#[derive(Deserialize)]
struct Trace {
    #[serde(default, rename = "startContent")]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    #[serde(default, rename = "numAgents")]
    num_agents: usize,
    txns: Vec<Txn>,
}

fn load(name: &str) -> Trace {
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

fn splice(r: &mut Replica, p: &Patch) -> Vec<SyncOperation> {
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

#[test]
fn automerge_paper_replays_to_its_end_content() {
    let trace = load("automerge-paper.json.gz");
    assert!(trace.start_content.is_empty());
    let mut author = Replica::new("author");
    let mut ops = Vec::new();
    for txn in &trace.txns {
        for p in &txn.patches {
            ops.extend(splice(&mut author, p));
        }
    }
    assert_eq!(
        author.text("paper", "text").as_deref(),
        Some(trace.end_content.as_str())
    );

    // A second device receiving every operation as remote ends identical.
    let mut reader = Replica::new("reader");
    for op in ops {
        reader.apply_remote(op).expect("valid op");
    }
    assert_eq!(
        reader.text("paper", "text").as_deref(),
        Some(trace.end_content.as_str())
    );
    assert_eq!(reader.state_hash(), author.state_hash());
}

#[test]
fn friendsforever_converges_with_each_agent_as_a_replica() {
    let trace = load("friendsforever.json.gz");
    let n = trace.num_agents;
    assert!(n >= 2);
    let actors: Vec<String> = (0..n).map(|a| format!("agent-{a}")).collect();
    let mut replicas: Vec<Replica> = actors.iter().map(Replica::new).collect();
    // Each agent's own operations, in counter order (counter k at index k-1).
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
                .get(&actors[b])
                .copied()
                .unwrap_or(0);
            assert!(
                known <= target,
                "replica {a} is ahead of the transaction's parents"
            );
            for op in &own_ops[b][known as usize..target as usize] {
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
        txn_end[a].push(own_ops[a].len() as u64);
        need[a] += 1;
        after.push(need);
    }

    // Final full sync, then every replica holds exactly the end content.
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let known = replicas[a]
                .version_vector()
                .get(&actors[b])
                .copied()
                .unwrap_or(0);
            for op in &own_ops[b][known as usize..] {
                replicas[a].apply_remote(op.clone()).expect("valid op");
            }
        }
    }
    let hash = replicas[0].state_hash();
    for r in &replicas {
        assert_eq!(
            r.text("paper", "text").as_deref(),
            Some(trace.end_content.as_str()),
            "{}",
            r.actor()
        );
        assert_eq!(r.state_hash(), hash);
        assert_eq!(r.buffered(), 0);
    }
}
