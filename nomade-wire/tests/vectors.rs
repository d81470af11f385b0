//! The published test vectors (`tests/vectors.json`): every vector decodes and
//! re-encodes byte for byte, and the file matches the code's samples.
//!
//! Regenerate after a deliberate format change with
//! `NOMADE_WRITE_VECTORS=1 cargo test -p nomade-wire --test vectors`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use nomade_wire::{samples, Envelope, MessageType};
use serde_json::json;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json")
}

fn expected_vectors() -> serde_json::Value {
    let list: Vec<_> = samples::all()
        .into_iter()
        .map(|s| {
            let frame = samples::frame(&s).expect("samples encode");
            json!({
                "name": s.name,
                // As on the wire: with the compressed bit, if set.
                "message_type": u16::from_be_bytes([frame[1], frame[2]]),
                "frame_hex": hex::encode(&frame),
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

fn load() -> Vec<serde_json::Value> {
    static WRITE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("NOMADE_WRITE_VECTORS").is_some() {
        WRITE.call_once(write_vectors);
    }
    let text = std::fs::read_to_string(vectors_path()).expect("tests/vectors.json is present");
    serde_json::from_str::<Vec<serde_json::Value>>(&text).expect("vectors.json is a JSON array")
}

fn write_vectors() {
    {
        let text = serde_json::to_string_pretty(&expected_vectors()).expect("json") + "\n";
        std::fs::write(vectors_path(), text).expect("write vectors.json");
    }
}

#[test]
fn every_vector_decodes_and_reencodes_byte_for_byte() {
    let vectors = load();
    assert!(!vectors.is_empty());
    for v in &vectors {
        let name = v["name"].as_str().expect("name");
        let frame = hex::decode(v["frame_hex"].as_str().expect("frame_hex")).expect("hex");
        let env = Envelope::decode(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
        let code = u16::from_be_bytes([frame[1], frame[2]]);
        assert_eq!(
            env.message.message_type().code(),
            code & !nomade_wire::COMPRESSED,
            "{name}"
        );
        assert_eq!(
            u64::from(code),
            v["message_type"].as_u64().expect("message_type"),
            "{name}"
        );
        let mut again = env.to_bytes().expect("re-encode");
        if code & nomade_wire::COMPRESSED != 0 {
            again = nomade_wire::compress_frame(&again).expect("compresses again");
        }
        assert_eq!(hex::encode(&again), hex::encode(&frame), "{name}");
    }
}

#[test]
fn vectors_cover_every_message_type() {
    let covered: BTreeSet<u64> = load()
        .iter()
        .map(|v| v["message_type"].as_u64().expect("message_type") & 0x7fff)
        .collect();
    for t in MessageType::ALL {
        assert!(
            covered.contains(&u64::from(t.code())),
            "no vector for {}",
            t.name()
        );
    }
}

#[test]
fn vectors_file_matches_the_samples() {
    assert_eq!(
        serde_json::Value::Array(load()),
        expected_vectors(),
        "tests/vectors.json is stale: regenerate it (see this file's header)"
    );
}
