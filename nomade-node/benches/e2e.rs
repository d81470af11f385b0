//! End-to-end figures of two devices on loopback, each beside a baseline
//! measured in the same run:
//!
//! - artifact transfer (hash, verify, seal at rest, QUIC, write) vs raw quinn
//!   bulk bytes on a connection with the same settings;
//! - peak RSS of a process holding both ends of a large artifact transfer;
//! - full sync throughput (operations per second applied on the joining device);
//! - live sync latency (created on A -> applied on B), p50 / p99.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p nomade-node --bench e2e`;
//! `-- --quick` for small sizes). Writes `target/bench/e2e.json`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nomade_crdt::LocalEdit;
use nomade_node::{Node, NodeConfig};
use nomade_transport::{Config, DeviceIdentity, PairedSet, RateLimits, Transport};
use nomade_wire::{EntityType, StreamHeader, StreamRole, Value};

const MIB: u64 = 1 << 20;

fn config(name: &str) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits: RateLimits::OFF,
        ..NodeConfig::default()
    }
}

/// Raw bytes over one quinn stream of a connection with the transport's
/// default settings: the ceiling for the artifact figure.
async fn raw_quinn_mib_per_sec(bytes: u64) -> f64 {
    let bind = || {
        Transport::bind(
            DeviceIdentity::generate().unwrap(),
            PairedSet::new(),
            "127.0.0.1:0".parse().unwrap(),
            Config {
                rate_limits: RateLimits::OFF,
                ..Config::default()
            },
        )
        .unwrap()
    };
    let (a, b) = (bind(), bind());
    a.pair(b.device_id());
    b.pair(a.device_id());
    let ca = a.connect(b.local_addr().unwrap(), None).await.unwrap();
    let cb = b.accept().await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    let mut send = ca.quinn().open_uni().await.unwrap();
    let writer = async {
        send.write_all(&StreamHeader::new(StreamRole::Push).to_bytes())
            .await
            .unwrap();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            send.write_all(&chunk[..n]).await.unwrap();
            left -= n as u64;
        }
        send.finish().unwrap();
    };
    let reader = async {
        let mut recv = cb.accept_stream().await.unwrap().recv.into_inner();
        let mut n = 0u64;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
            n += c.bytes.len() as u64;
        }
        assert_eq!(n, bytes);
    };
    tokio::join!(writer, reader);
    let secs = start.elapsed().as_secs_f64();
    a.close().await;
    b.close().await;
    bytes as f64 / MIB as f64 / secs
}

fn write_pattern(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

async fn two_nodes(dir: &Path) -> (Node, Node) {
    let a = Node::open(&dir.join("a"), config("a")).unwrap();
    let b = Node::open(&dir.join("b"), config("b")).unwrap();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    b.connect(addr_a, a.device_id()).await.unwrap();
    (a, b)
}

/// Puts an artifact on A and fetches it on B; returns MiB/s of the fetch
/// (read and decrypt on A, QUIC, verify, seal and write on B).
async fn artifact_mib_per_sec(bytes: u64) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    write_pattern(&src, bytes);
    let (a, b) = two_nodes(tmp.path()).await;
    let id = a.put_artifact(&src, None).unwrap();
    let start = Instant::now();
    b.fetch_artifact(&a.device_id(), id, |_| {}).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(b.artifacts().has(&id));
    a.shutdown().await;
    b.shutdown().await;
    bytes as f64 / MIB as f64 / secs
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A fresh process running both ends of one transfer: its peak RSS.
fn artifact_peak_rss_mib(bytes: u64) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("NOMADE_BENCH_RSS_CHILD", bytes.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    kib as f64 / 1024.0
}

/// Full sync: A holds `ops` operations over `docs` documents; B joins.
/// Returns operations per second applied (durably) on B, and UDP bytes
/// received by B per operation.
async fn full_sync(ops: usize, docs: usize) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::open(&tmp.path().join("a"), config("a")).unwrap();
    let b = Node::open(&tmp.path().join("b"), config("b")).unwrap();
    for start in (0..ops).step_by(10_000) {
        let edits = (start..(start + 10_000).min(ops))
            .map(|i| {
                let edit = LocalEdit::Set {
                    key: format!("f{}", i % 8),
                    value: Value::Int(i as i64),
                };
                (EntityType::Document, format!("doc-{}", i % docs), edit)
            })
            .collect();
        a.core().edit_many(edits).unwrap();
    }
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    let target = a.core().version_vector();
    let start = Instant::now();
    b.connect(addr_a, a.device_id()).await.unwrap();
    while b.core().version_vector() != target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(a.state_hash(), b.state_hash());
    let bytes = b.status().metrics.bytes_received as f64;
    a.shutdown().await;
    b.shutdown().await;
    (ops as f64 / secs, bytes / ops as f64)
}

/// Live sync latency: one operation at a time, created on A, applied on B.
async fn latency(n: usize) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path()).await;
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut changes = b.subscribe();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        a.set("lat", "n", i as i64).unwrap();
        loop {
            let c = changes.recv().await.unwrap();
            if c.remote && c.entity_id == "lat" {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(|x, y| x.total_cmp(y));
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    a.shutdown().await;
    b.shutdown().await;
    (p(0.5), p(0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(bytes) = std::env::var("NOMADE_BENCH_RSS_CHILD") {
        rt.block_on(artifact_mib_per_sec(bytes.parse().unwrap()));
        println!("{}", peak_rss_kib());
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick" || a == "--measurement-time");
    let (bulk, rss_bytes, ops, docs, lat_n) = if quick {
        (64 * MIB, 128 * MIB, 20_000, 200, 500)
    } else {
        (512 * MIB, 1024 * MIB, 1_000_000, 10_000, 10_000)
    };
    // `--only sync` (or `artifact`, `latency`) runs one part, for profiling.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if only.is_some() {
        if run("artifact") {
            let art = rt.block_on(artifact_mib_per_sec(bulk));
            println!("e2e: artifact {art:.0} MiB/s");
        }
        if run("sync") {
            let (ops_per_sec, bytes_per_op) = rt.block_on(full_sync(ops, docs));
            println!("e2e: full sync {ops_per_sec:.0} ops/s, {bytes_per_op:.0} bytes/op");
        }
        if run("latency") {
            let (p50, p99) = rt.block_on(latency(lat_n));
            println!("e2e: latency p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
        return;
    }
    let raw = rt.block_on(raw_quinn_mib_per_sec(bulk));
    let art = rt.block_on(artifact_mib_per_sec(bulk));
    let rss = artifact_peak_rss_mib(rss_bytes);
    let (ops_per_sec, bytes_per_op) = rt.block_on(full_sync(ops, docs));
    let (p50, p99) = rt.block_on(latency(lat_n));
    let report = serde_json::json!({
        "quick": quick,
        "raw_quinn_mib_per_sec": raw,
        "artifact_mib_per_sec": art,
        "artifact_vs_raw": art / raw,
        "artifact_bytes": bulk,
        "peak_rss_mib": rss,
        "peak_rss_artifact_bytes": rss_bytes,
        "full_sync_ops": ops,
        "full_sync_docs": docs,
        "full_sync_ops_per_sec": ops_per_sec,
        "full_sync_bytes_per_op": bytes_per_op,
        "latency_samples": lat_n,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    });
    println!(
        "e2e: raw quinn {raw:.0} MiB/s, artifact {art:.0} MiB/s (ratio {:.2}), peak RSS {rss:.0} MiB for a {} MiB artifact",
        art / raw,
        rss_bytes / MIB
    );
    println!(
        "e2e: full sync of {ops} ops over {docs} docs: {ops_per_sec:.0} ops/s, {bytes_per_op:.0} bytes/op on the wire; live latency p50 {p50:.2} ms, p99 {p99:.2} ms ({lat_n} ops)"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/e2e.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("e2e: written {}", path.display());
}
