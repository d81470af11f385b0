//! Replays the real editing traces of `tests/data/editing-traces` (see its
//! README for their origin and licence) through the text type.

mod common;

use common::traces::{load, replay_concurrent, replay_sequential};
use nomade_crdt::Replica;

#[test]
fn automerge_paper_replays_to_its_end_content() {
    let trace = load("automerge-paper.json.gz");
    assert!(trace.start_content.is_empty());
    let (author, ops) = replay_sequential(&trace);
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
    assert!(trace.num_agents >= 2);
    let (replicas, _) = replay_concurrent(&trace);
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
