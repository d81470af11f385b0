//! Replays the real editing traces of `tests/data/editing-traces` (see its
//! README for their origin and licence) through the text type.

mod common;

use common::traces::{load, replay_concurrent, replay_sequential};
use nomade_crdt::Replica;

/// The sequential traces: one author's every keystroke.
const SEQUENTIAL: [&str; 4] = [
    "automerge-paper.json.gz",
    "rustcode.json.gz",
    "sveltecomponent.json.gz",
    "seph-blog1.json.gz",
];

/// The concurrent traces: several people typing into one document at once.
const CONCURRENT: [&str; 2] = ["friendsforever.json.gz", "clownschool.json.gz"];

#[test]
fn sequential_traces_replay_to_their_end_content() {
    for file in SEQUENTIAL {
        replays_to_its_end_content(file);
    }
}

fn replays_to_its_end_content(file: &str) {
    let trace = load(file);
    assert!(trace.start_content.is_empty(), "{file}");
    let (author, ops) = replay_sequential(&trace);
    assert_eq!(
        author.text("paper", "text").as_deref(),
        Some(trace.end_content.as_str()),
        "{file}"
    );

    // A second device receiving every operation as remote ends identical.
    let mut reader = Replica::new("reader");
    for op in ops {
        reader.apply_remote(op).expect("valid op");
    }
    assert_eq!(
        reader.text("paper", "text").as_deref(),
        Some(trace.end_content.as_str()),
        "{file}"
    );
    assert_eq!(reader.state_hash(), author.state_hash(), "{file}");
}

#[test]
fn concurrent_traces_converge_with_each_agent_as_a_replica() {
    for file in CONCURRENT {
        converges_with_each_agent_as_a_replica(file);
    }
}

fn converges_with_each_agent_as_a_replica(file: &str) {
    let trace = load(file);
    assert!(trace.num_agents >= 2, "{file}");
    let (replicas, _) = replay_concurrent(&trace);
    let hash = replicas[0].state_hash();
    for r in &replicas {
        assert_eq!(
            r.text("paper", "text").as_deref(),
            Some(trace.end_content.as_str()),
            "{file}: {}",
            r.actor()
        );
        assert_eq!(r.state_hash(), hash);
        assert_eq!(r.buffered(), 0);
    }
}
