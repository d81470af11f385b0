//! End-to-end figures of two devices on loopback, each beside a baseline
//! measured in the same run:
//!
//! - artifact transfer (hash, verify, seal at rest, QUIC, write) vs raw quinn
//!   bulk bytes, the faster of a connection with the node's transport
//!   settings and one with quinn's defaults;
//! - peak RSS of a process holding both ends of a large artifact transfer;
//! - full sync throughput (operations per second applied on the joining device);
//! - live sync latency (created on A -> applied on B), p50 / p99;
//! - full meshes of 2, 8 and 32 devices: operations sent against the
//!   minimum, bytes per delivered operation, time to converge.
//!
//! - live latency while an artifact moves over the same connection, on
//!   loopback and on a simulated 10 Mbit/s, 50 ms link, against Cubic alone;
//! - an artifact fetch and a full sync through a relaying third device
//!   against the same directly, and the relay's CPU per GiB forwarded.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p nomade-node --features
//! faults --bench e2e`; `-- --quick` for small sizes). Writes
//! `target/bench/e2e.json`.

#![allow(missing_docs, clippy::unwrap_used)]
#![recursion_limit = "256"]

use std::path::Path;
use std::time::{Duration, Instant};

use nomade_crdt::LocalEdit;
use nomade_node::{Node, NodeConfig};
use nomade_transport::faulty::{FaultConfig, FaultPlan, Partition};
use nomade_transport::{Config, DeviceIdentity, PairedSet, RateLimits, Transport};
use nomade_wire::{EntityType, StreamHeader, StreamRole, Value};

const MIB: u64 = 1 << 20;

/// Interleaved rounds of raw quinn and artifact fetch; the report takes the
/// round with the median ratio.
const ARTIFACT_ROUNDS: usize = 3;

fn limited_config(name: &str, rate_limits: RateLimits) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits,
        ..NodeConfig::default()
    }
}

/// A bulk transfer's speed, and the CPU time (all threads of the process)
/// it took per GiB.
#[derive(Clone, Copy)]
struct Rate {
    mib_per_sec: f64,
    cpu_secs_per_gib: f64,
}

/// Times `transfer` of `bytes`, in wall-clock and CPU time.
async fn measure(bytes: u64, transfer: impl std::future::Future<Output = ()>) -> Rate {
    let (cpu0, start) = (cpu_secs(), Instant::now());
    transfer.await;
    let secs = start.elapsed().as_secs_f64();
    Rate {
        mib_per_sec: bytes as f64 / MIB as f64 / secs,
        cpu_secs_per_gib: (cpu_secs() - cpu0) / (bytes as f64 / (1u64 << 30) as f64),
    }
}

/// CPU seconds the calling thread has used (Linux).
fn thread_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// A relay node on a thread of its own (a single-threaded runtime), so that
/// its CPU time is its own: what relaying costs the device in the middle.
struct RelayThread {
    node: Node,
    addr: std::net::SocketAddr,
    cpu: std::sync::mpsc::Receiver<f64>,
    ask: tokio::sync::mpsc::UnboundedSender<bool>,
}

impl RelayThread {
    fn start(dir: &Path) -> RelayThread {
        let dir = dir.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
        let (ask_tx, mut ask_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = NodeConfig {
                    relay: nomade_transport::RelayConfig {
                        bytes_per_sec: None,
                        ..Default::default()
                    },
                    ..limited_config("b", RateLimits::OFF)
                };
                let node = Node::open(&dir.join("b"), config).unwrap();
                // The relay holds none of the documents, so that the
                // devices behind it get them from their own session, not
                // from the relay's copy.
                node.set_subscription(
                    nomade_crdt::Subscription::parse(["document:held-by-nobody"]).unwrap(),
                )
                .unwrap();
                let addr = node.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
                ready_tx.send((node.clone(), addr)).unwrap();
                // `true`: report this thread's CPU time; `false`: stop.
                while let Some(report) = ask_rx.recv().await {
                    if !report {
                        break;
                    }
                    cpu_tx.send(thread_cpu_secs()).unwrap();
                }
                node.shutdown().await;
            });
        });
        let (node, addr) = ready_rx.recv().unwrap();
        RelayThread {
            node,
            addr,
            cpu: cpu_rx,
            ask: ask_tx,
        }
    }

    fn cpu_secs(&self) -> f64 {
        self.ask.send(true).unwrap();
        self.cpu.recv().unwrap()
    }

    fn stop(self) {
        let _ = self.ask.send(false);
    }
}

/// What relaying costs against a direct connection, in the same run.
struct RelayFigures {
    relayed_artifact: Rate,
    direct_artifact: Rate,
    /// CPU seconds of the relay's thread per GiB it forwarded.
    relay_cpu_secs_per_gib: f64,
    relayed_sync_ops_per_sec: f64,
    direct_sync_ops_per_sec: f64,
}

/// A and C, paired, each connected to B only; C fetches an artifact of
/// `bytes` from A through B, then directly; then two fresh devices sync
/// `ops` operations from A, one through B and one directly. B holds none of
/// the documents (a subscription to none of them).
async fn relay_vs_direct(bytes: u64, ops: usize) -> RelayFigures {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayThread::start(tmp.path());
    let open = |name: &str| {
        Node::open(
            &tmp.path().join(name),
            limited_config(name, RateLimits::OFF),
        )
        .unwrap()
    };
    let a = open("a");
    let (c, d, e) = (open("c"), open("d"), open("e"));
    let b = relay.node.clone();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    for n in [&c, &d, &e] {
        n.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    }
    for n in [&a, &c, &d, &e] {
        n.add_peer(b.device_id(), "b", &[relay.addr]).unwrap();
        b.add_peer(n.device_id(), "", &[]).unwrap();
        if n.device_id() != a.device_id() {
            n.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
            a.add_peer(n.device_id(), "", &[]).unwrap();
        }
        n.connect(relay.addr, b.device_id()).await.unwrap();
    }
    // The artifact: through b, then directly.
    let src = tmp.path().join("src.bin");
    write_pattern(&src, bytes);
    let id = a.put_artifact(&src, None).unwrap();
    std::fs::remove_file(&src).unwrap();
    c.connect_through(b.device_id(), a.device_id())
        .await
        .unwrap();
    assert!(c
        .session_status(&a.device_id())
        .unwrap()
        .relayed_via
        .is_some());
    let (cpu0, fwd0) = (relay.cpu_secs(), b.metrics_snapshot().relay.bytes_forwarded);
    let relayed_artifact = measure(bytes, async {
        c.fetch_artifact(&a.device_id(), id, |_| {}).await.unwrap();
    })
    .await;
    let (cpu1, fwd1) = (relay.cpu_secs(), b.metrics_snapshot().relay.bytes_forwarded);
    c.artifacts().remove(&id).unwrap();
    c.connect(addr_a, a.device_id()).await.unwrap();
    assert!(c
        .session_status(&a.device_id())
        .unwrap()
        .relayed_via
        .is_none());
    let direct_artifact = measure(bytes, async {
        c.fetch_artifact(&a.device_id(), id, |_| {}).await.unwrap();
    })
    .await;
    // Full sync: d through b, e directly.
    fill(&a, ops, 100);
    let target = a.core().version_vector();
    let synced = |n: &Node| n.core().version_vector() == target;
    let start = Instant::now();
    d.connect_through(b.device_id(), a.device_id())
        .await
        .unwrap();
    while !synced(&d) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let relayed_sync = start.elapsed().as_secs_f64();
    assert!(d
        .session_status(&a.device_id())
        .unwrap()
        .relayed_via
        .is_some());
    let start = Instant::now();
    e.connect(addr_a, a.device_id()).await.unwrap();
    while !synced(&e) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let direct_sync = start.elapsed().as_secs_f64();
    for n in [&a, &c, &d, &e] {
        n.shutdown().await;
    }
    relay.stop();
    RelayFigures {
        relayed_artifact,
        direct_artifact,
        relay_cpu_secs_per_gib: (cpu1 - cpu0) / ((fwd1 - fwd0) as f64 / (1u64 << 30) as f64),
        relayed_sync_ops_per_sec: ops as f64 / relayed_sync,
        direct_sync_ops_per_sec: ops as f64 / direct_sync,
    }
}

fn print_relay(r: &RelayFigures) {
    println!(
        "e2e: relayed through a third device: artifact {:.0} MiB/s against {:.0} direct (ratio {:.2}), the relay using {:.2} CPU s per GiB forwarded; full sync {:.0} ops/s against {:.0} direct (ratio {:.2})",
        r.relayed_artifact.mib_per_sec,
        r.direct_artifact.mib_per_sec,
        r.relayed_artifact.mib_per_sec / r.direct_artifact.mib_per_sec,
        r.relay_cpu_secs_per_gib,
        r.relayed_sync_ops_per_sec,
        r.direct_sync_ops_per_sec,
        r.relayed_sync_ops_per_sec / r.direct_sync_ops_per_sec,
    );
}

/// The transport settings of the nodes in these benchmarks.
fn node_transport() -> Config {
    Config {
        rate_limits: RateLimits::OFF,
        ..Config::default()
    }
}

/// The same with quinn's own default flow-control windows (1.25 MB per
/// stream, 10 MB of unacknowledged data sent) and the system's default UDP
/// socket buffers: for a single stream, a connection as quinn sets it up out
/// of the box.
fn quinn_defaults() -> Config {
    Config {
        stream_receive_window: 1_250_000,
        receive_window: 10_000_000,
        udp_buffer: None,
        ..node_transport()
    }
}

/// Raw bytes over one quinn stream of a connection with `config`: the
/// ceiling for the artifact figure.
async fn raw_quinn(bytes: u64, config: Config) -> Rate {
    let bind = || {
        Transport::bind(
            DeviceIdentity::generate().unwrap(),
            PairedSet::new(),
            "127.0.0.1:0".parse().unwrap(),
            config.clone(),
        )
        .unwrap()
    };
    let (a, b) = (bind(), bind());
    a.pair(b.device_id());
    b.pair(a.device_id());
    let ca = a.connect(b.local_addr().unwrap(), None).await.unwrap();
    let cb = b.accept().await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let rate = measure(bytes, async {
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
    })
    .await;
    a.close().await;
    b.close().await;
    rate
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
    // On disk before anything is timed: otherwise the kernel writes this
    // source back while the transfer runs, and the transfer pays for it.
    f.into_inner().unwrap().sync_all().unwrap();
}

/// A metadata-only device and `count` artifacts of `total` bytes in all,
/// referenced by a document of A: B syncs and asks each one's metadata,
/// fetching no content. Returns the seconds until B knew all of them, and
/// the bytes B's artifact store then uses on disk (its directory).
async fn metadata_only(total: u64, count: u64) -> (f64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::open(&tmp.path().join("a"), limited_config("a", RateLimits::OFF)).unwrap();
    let file = tmp.path().join("artifact.bin");
    write_pattern(&file, total / count);
    for i in 0..count {
        // Each its own content (its first 8 bytes), so its own artifact.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all(&i.to_le_bytes()).unwrap();
        drop(f);
        let id = a.put_artifact(&file, Some("video/mp4")).unwrap();
        a.set("library", &format!("film-{i}"), id.to_reference().as_str())
            .unwrap();
    }
    std::fs::remove_file(&file).unwrap();
    let b = Node::open(
        &tmp.path().join("b"),
        NodeConfig {
            artifact_policy: nomade_node::ArtifactPolicy::metadata_only(),
            ..limited_config("b", RateLimits::OFF)
        },
    )
    .unwrap();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    let start = Instant::now();
    b.connect(addr_a, a.device_id()).await.unwrap();
    let known = |b: &Node| {
        let entries = b.artifact_entries().unwrap();
        entries.len() as u64 == count && entries.iter().all(|e| e.size.is_some())
    };
    while !known(&b) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let described: u64 = b
        .artifact_entries()
        .unwrap()
        .iter()
        .filter_map(|e| e.size)
        .sum();
    assert_eq!(described, total / count * count);
    let disk = dir_bytes(&tmp.path().join("b").join("artifacts"));
    a.shutdown().await;
    b.shutdown().await;
    (secs, disk)
}

/// An artifact of `bytes` fetched by C from one holder (A), then, evicted,
/// from two at once (A, and B which fetched it from A), in one run, the
/// holders limited by `limits` (each as if on a slow link; C is not): the
/// two rates.
async fn two_holders(bytes: u64, limits: RateLimits) -> (Rate, Rate) {
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str, limits| {
        Node::open(&tmp.path().join(name), limited_config(name, limits)).unwrap()
    };
    let (a, b, c) = (
        open("a", limits),
        open("b", limits),
        open("c", RateLimits::OFF),
    );
    let file = tmp.path().join("artifact.bin");
    write_pattern(&file, bytes);
    let id = a.put_artifact(&file, None).unwrap();
    std::fs::remove_file(&file).unwrap();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr_b = b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    c.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    for (holder, addr) in [(&a, addr_a), (&b, addr_b)] {
        holder.add_peer(c.device_id(), "c", &[]).unwrap();
        c.add_peer(holder.device_id(), "holder", &[addr]).unwrap();
        c.connect(addr, holder.device_id()).await.unwrap();
    }
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    b.connect(addr_a, a.device_id()).await.unwrap();
    b.fetch_artifact_from(&[a.device_id()], id, |_, _| {})
        .await
        .unwrap();
    let one = measure(bytes, async {
        c.fetch_artifact_from(&[a.device_id()], id, |_, _| {})
            .await
            .unwrap();
    })
    .await;
    c.evict_artifact(&id).unwrap();
    let both = measure(bytes, async {
        c.fetch_artifact_from(&[a.device_id(), b.device_id()], id, |_, _| {})
            .await
            .unwrap();
    })
    .await;
    assert!(c.artifacts().has(&id));
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
    (one, both)
}

/// Bytes on the wire of a device subscribed to 1 of `docs` documents.
#[derive(Debug)]
struct SubscribedShare {
    /// UDP bytes a device holding everything received.
    full_bytes: u64,
    /// UDP bytes the device subscribed to one document received.
    one_bytes: u64,
    /// Entities the subscribed device holds after the sync.
    one_entities: usize,
}

impl SubscribedShare {
    /// The subscribed device's bytes against its share of the full sync.
    fn ratio(&self, docs: usize) -> f64 {
        self.one_bytes as f64 / (self.full_bytes as f64 / docs as f64)
    }
}

/// A holds `docs` documents of `ops_per_doc` field writes each, written in
/// bursts of `burst` writes to one document, the documents taking turns (a
/// burst of `ops_per_doc` writes each document whole, one after the
/// other). B, holding everything, and C, subscribed to one document, each
/// sync from A on their own. Returns the bytes each received.
async fn subscribed_share(docs: usize, ops_per_doc: usize, burst: usize) -> SubscribedShare {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::open(&tmp.path().join("a"), limited_config("a", RateLimits::OFF)).unwrap();
    let one = nomade_crdt::Subscription::parse([format!("document:doc-{}", docs / 2)]).unwrap();
    let subscribers: Vec<(Node, nomade_crdt::Subscription)> =
        [("b", nomade_crdt::Subscription::Everything), ("c", one)]
            .into_iter()
            .map(|(name, subscription)| {
                let config = limited_config(name, RateLimits::OFF);
                let n = Node::open(&tmp.path().join(name), config).unwrap();
                n.set_subscription(subscription.clone()).unwrap();
                // Paired before the edits: A keeps the history they lack.
                a.add_peer(n.device_id(), name, &[]).unwrap();
                (n, subscription)
            })
            .collect();
    for round in 0..ops_per_doc.div_ceil(burst) {
        for d in 0..docs {
            let edits = (round * burst..((round + 1) * burst).min(ops_per_doc))
                .map(|i| {
                    let edit = LocalEdit::Set {
                        key: format!("f{}", i % 8),
                        value: Value::Int(i as i64),
                    };
                    (EntityType::Document, format!("doc-{d}"), edit)
                })
                .collect();
            a.core().edit_many(edits).unwrap();
        }
    }
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut received = Vec::new();
    let mut one_entities = 0;
    for (n, subscription) in subscribers {
        n.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        n.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
        let target = a.core().version_vector();
        n.connect(addr_a, a.device_id()).await.unwrap();
        while n.core().version_vector() != target {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            n.core().state_hash_of(&subscription),
            a.core().state_hash_of(&subscription)
        );
        received.push(n.status().metrics.bytes_received);
        if !subscription.is_everything() {
            one_entities = n.core().entities().len();
        }
        n.shutdown().await;
    }
    a.shutdown().await;
    SubscribedShare {
        full_bytes: received[0],
        one_bytes: received[1],
        one_entities,
    }
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

async fn two_nodes(dir: &Path, limits: RateLimits) -> (Node, Node) {
    let a = Node::open(&dir.join("a"), limited_config("a", limits)).unwrap();
    let b = Node::open(&dir.join("b"), limited_config("b", limits)).unwrap();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    b.connect(addr_a, a.device_id()).await.unwrap();
    (a, b)
}

/// Puts an artifact on A and fetches it on B; returns the fetch's rate (read
/// on A, QUIC, open and verify on B, write).
async fn artifact_fetch(bytes: u64, limits: RateLimits) -> Rate {
    let bench = ArtifactBench::new(bytes, limits).await;
    let rate = bench.fetch().await;
    bench.shutdown().await;
    rate
}

/// Two nodes and an artifact of `bytes` on A, fetched by B as often as asked.
struct ArtifactBench {
    _tmp: tempfile::TempDir,
    a: Node,
    b: Node,
    id: nomade_artifact::ArtifactId,
    bytes: u64,
}

impl ArtifactBench {
    async fn new(bytes: u64, limits: RateLimits) -> ArtifactBench {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.bin");
        write_pattern(&src, bytes);
        let (a, b) = two_nodes(tmp.path(), limits).await;
        let id = a.put_artifact(&src, None).unwrap();
        std::fs::remove_file(&src).unwrap();
        ArtifactBench {
            _tmp: tmp,
            a,
            b,
            id,
            bytes,
        }
    }

    /// One fetch, timed; B's copy is removed afterwards.
    async fn fetch(&self) -> Rate {
        let rate = measure(self.bytes, async {
            self.b
                .fetch_artifact(&self.a.device_id(), self.id, |_| {})
                .await
                .unwrap();
        })
        .await;
        assert!(self.b.artifacts().has(&self.id));
        self.b.artifacts().remove(&self.id).unwrap();
        rate
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// One round of the artifact comparison.
#[derive(Clone, Copy)]
struct Round {
    /// Raw quinn with the nodes' transport settings.
    raw_node_settings: Rate,
    /// Raw quinn with quinn's defaults (windows, socket buffers).
    raw_quinn_defaults: Rate,
    /// The artifact fetch.
    artifact: Rate,
}

impl Round {
    /// The baseline: the faster raw transfer.
    fn raw(&self) -> Rate {
        if self.raw_node_settings.mib_per_sec >= self.raw_quinn_defaults.mib_per_sec {
            self.raw_node_settings
        } else {
            self.raw_quinn_defaults
        }
    }

    fn ratio(&self) -> f64 {
        self.artifact.mib_per_sec / self.raw().mib_per_sec
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "raw_mib_per_sec": self.raw().mib_per_sec,
            "raw_node_settings_mib_per_sec": self.raw_node_settings.mib_per_sec,
            "raw_quinn_defaults_mib_per_sec": self.raw_quinn_defaults.mib_per_sec,
            "artifact_mib_per_sec": self.artifact.mib_per_sec,
            "ratio": self.ratio(),
            "raw_cpu_secs_per_gib": self.raw().cpu_secs_per_gib,
            "artifact_cpu_secs_per_gib": self.artifact.cpu_secs_per_gib,
        })
    }
}

/// Raw quinn (both settings) and the artifact fetch, `rounds` times each,
/// interleaved (raw, raw, fetch, raw, raw, fetch...) so that all see the
/// same moments of a shared, noisy machine.
async fn artifact_vs_raw(bytes: u64, rounds: usize) -> Vec<Round> {
    let bench = ArtifactBench::new(bytes, RateLimits::OFF).await;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let raw_node_settings = raw_quinn(bytes, node_transport()).await;
        let raw_quinn_defaults = raw_quinn(bytes, quinn_defaults()).await;
        let artifact = bench.fetch().await;
        out.push(Round {
            raw_node_settings,
            raw_quinn_defaults,
            artifact,
        });
    }
    bench.shutdown().await;
    out
}

/// The round with the median ratio.
fn median_round(rounds: &[Round]) -> Round {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|x, y| x.ratio().total_cmp(&y.ratio()));
    sorted[sorted.len() / 2]
}

/// CPU time (user + system, all threads) this process has used, in seconds
/// (Linux; 0 elsewhere).
fn cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat")
}

/// User and system CPU seconds from a `/proc/.../stat` file.
fn stat_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
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

/// `ops` field writes over `docs` documents on `node`, in commits of 10,000.
fn fill(node: &Node, ops: usize, docs: usize) {
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
        node.core().edit_many(edits).unwrap();
    }
}

/// Puts A (paired with B already) and B online, B pairs with A and dials
/// it; returns the seconds until B holds everything A holds (checked by
/// their state hashes) and B's metrics.
async fn sync_from(a: &Node, b: &Node) -> (f64, nomade_node::metrics::MetricsSnapshot) {
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    let target = a.core().version_vector();
    let start = Instant::now();
    b.connect(addr_a, a.device_id()).await.unwrap();
    while b.core().version_vector() != target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(a.state_hash(), b.state_hash());
    (secs, b.status().metrics)
}

/// Full sync: A holds `ops` operations over `docs` documents, made while
/// paired with B (so A keeps the history B has not acknowledged); B joins.
/// Returns operations per second applied (durably) on B, and UDP bytes
/// received by B per operation.
async fn full_sync(ops: usize, docs: usize, limits: RateLimits, compress: bool) -> FullSync {
    let tmp = tempfile::tempdir().unwrap();
    let config = |name: &str| NodeConfig {
        compress,
        ..limited_config(name, limits)
    };
    let a = Node::open(&tmp.path().join("a"), config("a")).unwrap();
    let b = Node::open(&tmp.path().join("b"), config("b")).unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    fill(&a, ops, docs);
    let (secs, m) = sync_from(&a, &b).await;
    a.shutdown().await;
    b.shutdown().await;
    drop((a, b));
    // Reconnect: both devices hold the whole history. First with nothing
    // new (what a reconnect costs: the QUIC and TLS handshake, HELLO, both
    // sync requests), then with one new operation on A made while apart.
    let (idle_bytes, _) = reconnect(tmp.path(), limits, false).await;
    let (reconnect_bytes, reconnect_ms) = reconnect(tmp.path(), limits, true).await;
    FullSync {
        ops_per_sec: ops as f64 / secs,
        bytes_per_op: m.bytes_received as f64 / ops as f64,
        frames_per_sec: m.sync_frames_received as f64 / secs,
        secs,
        reconnect_bytes,
        reconnect_ms,
        reconnect_idle_bytes: idle_bytes,
    }
}

/// A snapshot-first sync: A made `ops` operations over `docs` documents with
/// no paired device, so that its history was compacted (only its snapshot
/// is left); B, new, pairs and is sent the snapshot. Returns the seconds
/// from the dial until B holds everything, and the bytes B received.
async fn snapshot_sync(ops: usize, docs: usize) -> (f64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    {
        let a = Node::open(&tmp.path().join("a"), limited_config("a", RateLimits::OFF)).unwrap();
        fill(&a, ops, docs);
        a.shutdown().await;
    }
    let a = Node::open(&tmp.path().join("a"), limited_config("a", RateLimits::OFF)).unwrap();
    assert!(
        !a.core().compacted().is_empty(),
        "the history was compacted"
    );
    let b = Node::open(&tmp.path().join("b"), limited_config("b", RateLimits::OFF)).unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    let (secs, m) = sync_from(&a, &b).await;
    assert_eq!(m.snapshots_adopted, 1, "a snapshot-first sync");
    a.shutdown().await;
    b.shutdown().await;
    (secs, m.bytes_received)
}

/// Reopens the two devices of [`full_sync`] and connects them, A having
/// made one new operation while apart if `change`. Returns the bytes that
/// went between them (UDP, both ways, every stream) and the time from the
/// dial until B completed its sync from A with that operation.
async fn reconnect(dir: &Path, limits: RateLimits, change: bool) -> (u64, f64) {
    let a = Node::open(&dir.join("a"), limited_config("a", limits)).unwrap();
    let b = Node::open(&dir.join("b"), limited_config("b", limits)).unwrap();
    if change {
        a.set("doc-0", "after", 1).unwrap();
    }
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let target = a.core().version_vector();
    let start = Instant::now();
    b.connect(addr_a, a.device_id()).await.unwrap();
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(30))
        .await
        .unwrap();
    while b.core().version_vector() != target {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let m = b.status().metrics;
    a.shutdown().await;
    b.shutdown().await;
    (m.bytes_received + m.bytes_sent, ms)
}

/// A full mesh of devices on loopback, each making edits while all are online.
struct Mesh {
    devices: usize,
    ops_made: u64,
    /// Operations sent, by all devices together.
    ops_sent: u64,
    /// Each operation sent once to each other device.
    ops_minimum: u64,
    /// UDP bytes received by all devices during the burst, per operation
    /// delivered (the minimum).
    bytes_per_delivered_op: f64,
    /// From the last edit until every device holds every edit.
    converge_ms: f64,
    /// Sessions started during the burst (reconnections: 0 on a quiet
    /// machine).
    sessions_started: u64,
}

impl Mesh {
    fn ratio(&self) -> f64 {
        self.ops_sent as f64 / self.ops_minimum as f64
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "devices": self.devices,
            "ops_made": self.ops_made,
            "ops_sent": self.ops_sent,
            "ops_minimum": self.ops_minimum,
            "ops_sent_vs_minimum": self.ratio(),
            "bytes_per_delivered_op": self.bytes_per_delivered_op,
            "sessions_started": self.sessions_started,
            "converge_ms": self.converge_ms,
        })
    }
}

/// `devices` nodes on loopback, every pair paired and connected (a full
/// mesh); each device sets `edits` fields (one commit each, the devices
/// taking turns) while all are online. Counts, from the first edit until
/// all state hashes agree and a settling time has passed, the operations
/// sent and the bytes received by all devices.
async fn mesh(devices: usize, edits: usize) -> Mesh {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::with_capacity(devices);
    let mut addrs = Vec::with_capacity(devices);
    for i in 0..devices {
        let name = format!("d{i}");
        let node = Node::open(
            &tmp.path().join(&name),
            limited_config(&name, RateLimits::OFF),
        )
        .unwrap();
        addrs.push(node.start("127.0.0.1:0".parse().unwrap()).await.unwrap());
        nodes.push(node);
    }
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                a.add_peer(b.device_id(), &format!("d{j}"), &[]).unwrap();
            }
        }
    }
    for j in 0..devices {
        for i in 0..j {
            let (a, b) = (&nodes[i], &nodes[j]);
            b.connect(addrs[i], a.device_id()).await.unwrap();
        }
    }
    for a in &nodes {
        for b in &nodes {
            if a.device_id() != b.device_id() {
                a.wait_initial_sync(&b.device_id(), Duration::from_secs(60))
                    .await
                    .unwrap();
            }
        }
    }
    let before: Vec<_> = nodes.iter().map(|n| n.metrics_snapshot()).collect();
    for e in 0..edits {
        for (i, node) in nodes.iter().enumerate() {
            node.set(
                &format!("doc-{}", e % 10),
                &format!("d{i}-f{}", e % 20),
                e as i64,
            )
            .unwrap();
        }
        // The edits come from the devices' users, not from the runtime's
        // workers: let the nodes run between rounds.
        tokio::task::yield_now().await;
    }
    let last_edit = Instant::now();
    let mut target = nomade_wire::VersionVector::new();
    for node in &nodes {
        for (actor, &counter) in &node.core().version_vector() {
            nomade_crdt::raise_counter(&mut target, actor, counter);
        }
    }
    while nodes.iter().any(|n| n.core().version_vector() != target) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let converge_ms = last_edit.elapsed().as_secs_f64() * 1e3;
    let hash = nodes[0].state_hash();
    assert!(nodes.iter().all(|n| n.state_hash() == hash), "converged");
    // Late sends (relays held back, then sent anyway) count too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut ops_sent, mut bytes, mut sessions_started) = (0, 0, 0);
    for (node, before) in nodes.iter().zip(&before) {
        let m = node.metrics_snapshot();
        ops_sent += m.ops_sent - before.ops_sent;
        bytes += m.bytes_received - before.bytes_received;
        sessions_started += m.sessions_started - before.sessions_started;
    }
    for node in &nodes {
        node.shutdown().await;
    }
    let ops_made = (devices * edits) as u64;
    let ops_minimum = ops_made * (devices as u64 - 1);
    Mesh {
        devices,
        ops_made,
        ops_sent,
        ops_minimum,
        bytes_per_delivered_op: bytes as f64 / ops_minimum as f64,
        converge_ms,
        sessions_started,
    }
}

fn print_mesh(m: &Mesh) {
    println!(
        "e2e: full mesh of {} devices, {} edits: {} ops sent for a minimum of {} ({:.2}x), {:.0} bytes per delivered op, converged {:.0} ms after the last edit, {} sessions started meanwhile",
        m.devices,
        m.ops_made,
        m.ops_sent,
        m.ops_minimum,
        m.ratio(),
        m.bytes_per_delivered_op,
        m.converge_ms,
        m.sessions_started
    );
}

/// The rate after the limiter's initial burst (one second's worth of tokens).
fn beyond_burst(total: f64, rate: f64, secs: f64) -> f64 {
    (total - rate) / secs
}

/// What a full sync measured.
struct FullSync {
    ops_per_sec: f64,
    bytes_per_op: f64,
    /// Frames carrying operations received per second (what the limit counts).
    frames_per_sec: f64,
    secs: f64,
    /// Bytes both ways when the two reconnect differing by one operation.
    reconnect_bytes: u64,
    /// From the reconnecting dial to the new operation applied.
    reconnect_ms: f64,
    /// Bytes both ways when the two reconnect with nothing new.
    reconnect_idle_bytes: u64,
}

/// Live sync latency: one operation at a time, created on A, applied on B.
async fn latency(n: usize) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path(), RateLimits::OFF).await;
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(10))
        .await
        .unwrap();
    let l = live_latency(&a, &b, n, || true).await.0;
    a.shutdown().await;
    b.shutdown().await;
    l
}

/// p50 and p99 in ms of `n` field writes made on `a` one at a time, each
/// timed until `b` applied it, while `going` says so; and how many were
/// timed.
async fn live_latency(
    a: &Node,
    b: &Node,
    n: usize,
    going: impl Fn() -> bool,
) -> ((f64, f64), usize) {
    let mut changes = b.subscribe();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        if !going() {
            break;
        }
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
    ((p(0.5), p(0.99)), samples.len())
}

/// Live latency with and without bulk data on the same connection.
struct BusyLatency {
    idle: (f64, f64),
    busy: (f64, f64),
    /// Writes timed during the transfer.
    busy_samples: usize,
    /// The artifact's rate while the edits were timed.
    bulk_mib_per_sec: f64,
}

/// Live latency (field writes from A applied on B) on an idle connection,
/// then while B fetches a `bulk`-byte artifact from A over the same
/// connection (the fetch is cut once the writes are timed). `link`: A's
/// socket behind a simulated link (its rate, delay and queue both ways).
async fn busy_latency(
    n: usize,
    bulk: u64,
    link: Option<FaultConfig>,
    queue_target: Option<Duration>,
) -> BusyLatency {
    let tmp = tempfile::tempdir().unwrap();
    let config = |name| NodeConfig {
        queue_target,
        ..limited_config(name, RateLimits::OFF)
    };
    let mut a_config = config("a");
    if let Some(link) = link {
        a_config.faults = Some((FaultPlan::symmetric(link), Partition::new()));
    }
    let a = Node::open(&tmp.path().join("a"), a_config).unwrap();
    let b = Node::open(&tmp.path().join("b"), config("b")).unwrap();
    let addr_a = a.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    b.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    a.add_peer(b.device_id(), "b", &[]).unwrap();
    b.add_peer(a.device_id(), "a", &[addr_a]).unwrap();
    b.connect(addr_a, a.device_id()).await.unwrap();
    b.wait_initial_sync(&a.device_id(), Duration::from_secs(30))
        .await
        .unwrap();
    let file = tmp.path().join("bulk");
    write_pattern(&file, bulk);
    let id = a.put_artifact(&file, None).unwrap();
    std::fs::remove_file(&file).unwrap();
    let idle = live_latency(&a, &b, n, || true).await.0;
    let fetching = {
        let (b, from) = (b.clone(), a.device_id());
        tokio::spawn(async move { b.fetch_artifact_from(&[from], id, |_, _| {}).await })
    };
    // Under way first.
    while b.metrics_snapshot().artifact_bytes_received < 4 * MIB {
        if fetching.is_finished() {
            panic!("the fetch ended at once: {:?}", fetching.await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (before, start) = (b.metrics_snapshot().artifact_bytes_received, Instant::now());
    let (busy, busy_samples) = live_latency(&a, &b, n, || !fetching.is_finished()).await;
    let moved = b.metrics_snapshot().artifact_bytes_received - before;
    let bulk_mib_per_sec = moved as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    fetching.abort();
    a.shutdown().await;
    b.shutdown().await;
    BusyLatency {
        idle,
        busy,
        busy_samples,
        bulk_mib_per_sec,
    }
}

/// A 10 Mbit/s link with 25 ms each way (50 ms round trip) and 100 ms of
/// queue, as A's socket sees it both ways.
fn slow_link() -> FaultConfig {
    FaultConfig {
        delay: Duration::from_millis(25),
        rate: Some(10_000_000 / 8),
        queue_limit: Some(Duration::from_millis(100)),
        seed: 1,
        ..FaultConfig::default()
    }
}

/// Live latency with and without bulk data, on loopback and on the slow
/// link, each with the node's congestion control and with Cubic alone
/// (the baseline); each with its description.
async fn busy_latencies(
    n: usize,
    bulk: u64,
    slow_n: usize,
    slow_bulk: u64,
) -> Vec<(String, BusyLatency)> {
    let ours = nomade_transport::Config::default().queue_target;
    let mut out = Vec::new();
    for (link, how, n, bulk) in [
        (None, "on loopback", n, bulk),
        (
            Some(slow_link()),
            "on a 10 Mbit/s, 50 ms link",
            slow_n,
            slow_bulk,
        ),
    ] {
        for (target, which) in [(ours, "low-delay"), (None, "cubic")] {
            let r = busy_latency(n, bulk, link, target).await;
            out.push((format!("{how}, {which}"), r));
        }
    }
    out
}

fn print_busy((how, r): &(String, BusyLatency)) {
    println!(
        "e2e: live latency {how}: idle p50 {:.2} ms, p99 {:.2} ms; during an artifact transfer ({:.1} MiB/s) p50 {:.2} ms, p99 {:.2} ms ({} writes)",
        r.idle.0, r.idle.1, r.bulk_mib_per_sec, r.busy.0, r.busy.1, r.busy_samples
    );
}

fn main() {
    // `NOMADE_BENCH_LOG=nomade_node=debug` (a tracing filter): the nodes'
    // logs on stderr.
    if let Ok(filter) = std::env::var("NOMADE_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(bytes) = std::env::var("NOMADE_BENCH_RSS_CHILD") {
        rt.block_on(artifact_fetch(bytes.parse().unwrap(), RateLimits::OFF));
        println!("{}", peak_rss_kib());
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick" || a == "--measurement-time");
    let (bulk, rss_bytes, ops, docs, lat_n) = if quick {
        (64 * MIB, 128 * MIB, 20_000, 200, 500)
    } else {
        (1024 * MIB, 1024 * MIB, 1_000_000, 10_000, 10_000)
    };
    // Two holders at once with each link limited (a holder on a slow link).
    let per_link = RateLimits {
        sync_ops_per_sec: None,
        artifact_bytes_per_sec: Some(25_000_000),
    };
    // Live latency under bulk: writes timed, and the artifact's size on the
    // slow link (enough to outlast the writes there).
    let (busy_n, busy_bulk, slow_n, slow_bulk) = if quick {
        (300, 512 * MIB, 50, 32 * MIB)
    } else {
        (2_000, 1024 * MIB, 200, 64 * MIB)
    };
    // Through a relay: the artifact's size and the operations synced.
    let (relay_bulk, relay_ops) = if quick {
        (64 * MIB, 20_000)
    } else {
        (256 * MIB, 200_000)
    };
    // One of 100 documents: field writes per document.
    let sub_ops = if quick { 200 } else { 2_000 };
    // A metadata-only device: referenced artifacts (bytes in all, count).
    let (referenced, referenced_count) = if quick {
        (64 * MIB, 16)
    } else {
        (10 * 1024 * MIB, 40)
    };
    // With the protocol's default limits: 100 sync frames/s, 10 MB/s of
    // artifacts, each with a burst of one second's worth; the sizes make the
    // transfers last well beyond the burst.
    // Full meshes: (devices, edits per device).
    let meshes: &[(usize, usize)] = if quick {
        &[(2, 50), (8, 50), (32, 10)]
    } else {
        &[(2, 200), (8, 200), (32, 50)]
    };
    let (limited_ops, limited_bytes) = if quick {
        (60_000, 24 * MIB)
    } else {
        (300_000, 64 * MIB)
    };
    // `--only sync` (or `artifact`, `latency`, `limited`, `two`, `subscription`, `metadata`) runs one part, for
    // profiling; `--only fetch` is the artifact fetch without its baseline,
    // `--only raw` the baseline alone.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if only.is_some() {
        if run("artifact") {
            let rounds = rt.block_on(artifact_vs_raw(bulk, ARTIFACT_ROUNDS));
            for r in &rounds {
                println!(
                    "e2e: raw quinn {:.0} MiB/s ({:.2} CPU s/GiB; node settings {:.0}, quinn defaults {:.0}), artifact {:.0} MiB/s ({:.2} CPU s/GiB), ratio {:.2}",
                    r.raw().mib_per_sec,
                    r.raw().cpu_secs_per_gib,
                    r.raw_node_settings.mib_per_sec,
                    r.raw_quinn_defaults.mib_per_sec,
                    r.artifact.mib_per_sec,
                    r.artifact.cpu_secs_per_gib,
                    r.ratio()
                );
            }
        }
        if run("raw") {
            // The raw quinn baseline alone, for profiling.
            let raw = rt.block_on(raw_quinn(bulk, node_transport()));
            println!(
                "e2e: raw quinn {:.0} MiB/s ({:.2} CPU s/GiB)",
                raw.mib_per_sec, raw.cpu_secs_per_gib
            );
        }
        if run("fetch") {
            // The fetch alone, for profiling.
            let art = rt.block_on(artifact_fetch(bulk, RateLimits::OFF));
            println!(
                "e2e: artifact {:.0} MiB/s ({:.2} CPU s/GiB)",
                art.mib_per_sec, art.cpu_secs_per_gib
            );
        }
        if run("sync") {
            let f = rt.block_on(full_sync(ops, docs, RateLimits::OFF, true));
            let plain = rt.block_on(full_sync(ops, docs, RateLimits::OFF, false));
            println!(
                "e2e: full sync {:.0} ops/s, {:.0} bytes/op, {:.0} frames/s (without compression: {:.0} ops/s, {:.0} bytes/op); reconnect differing by one operation: {} bytes ({} with nothing new), {:.1} ms",
                f.ops_per_sec, f.bytes_per_op, f.frames_per_sec, plain.ops_per_sec, plain.bytes_per_op, f.reconnect_bytes, f.reconnect_idle_bytes, f.reconnect_ms
            );
        }
        if run("snapshot") {
            let (secs, bytes) = rt.block_on(snapshot_sync(ops, docs));
            println!("e2e: snapshot-first sync of a compacted store of {ops} ops: {secs:.2} s, {bytes} bytes received");
        }
        if run("two") {
            for (bytes, limits, how) in [
                (bulk, RateLimits::OFF, "loopback"),
                (limited_bytes * 4, per_link, "each link at 25 MB/s"),
            ] {
                let (one, both) = rt.block_on(two_holders(bytes, limits));
                println!(
                    "e2e: {} MiB, {how}: from one holder {:.0} MiB/s ({:.2} CPU s/GiB), from two at once {:.0} MiB/s ({:.2} CPU s/GiB), ratio {:.2}",
                    bytes / MIB,
                    one.mib_per_sec,
                    one.cpu_secs_per_gib,
                    both.mib_per_sec,
                    both.cpu_secs_per_gib,
                    both.mib_per_sec / one.mib_per_sec
                );
            }
        }
        if run("subscription") {
            for burst in [sub_ops, 100] {
                let share = rt.block_on(subscribed_share(100, sub_ops, burst));
                println!(
                    "e2e: 1 of 100 documents ({sub_ops} writes each, in bursts of {burst}): {} bytes against {} for all, {:.2}x its share, holding {} entity",
                    share.one_bytes, share.full_bytes, share.ratio(100), share.one_entities
                );
            }
        }
        if run("metadata") {
            let (secs, disk) = rt.block_on(metadata_only(referenced, referenced_count));
            println!(
                "e2e: a metadata-only device knows {referenced_count} artifacts of {} MiB in all in {secs:.2} s, its artifact store using {disk} bytes",
                referenced / MIB
            );
        }
        if run("latency") {
            let (p50, p99) = rt.block_on(latency(lat_n));
            println!("e2e: latency p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
        if run("busy") {
            for r in rt.block_on(busy_latencies(busy_n, busy_bulk, slow_n, slow_bulk)) {
                print_busy(&r);
            }
        }
        if run("relay") {
            print_relay(&rt.block_on(relay_vs_direct(relay_bulk, relay_ops)));
        }
        if run("mesh") {
            for &(devices, edits) in meshes {
                print_mesh(&rt.block_on(mesh(devices, edits)));
            }
        }
        if run("limited") {
            let f = rt.block_on(full_sync(limited_ops, 100, RateLimits::default(), true));
            let art = rt
                .block_on(artifact_fetch(limited_bytes, RateLimits::default()))
                .mib_per_sec;
            println!(
                "e2e: default limits: sync {:.0} ops/s in {:.0} frames/s, artifact {:.2} MB/s",
                f.ops_per_sec,
                f.frames_per_sec,
                art * MIB as f64 / 1e6
            );
        }
        return;
    }
    // Sync first: after the artifact runs, the kernel is still writing
    // gigabytes of their files back to disk, which slows every commit's fsync.
    let sync = rt.block_on(full_sync(ops, docs, RateLimits::OFF, true));
    let plain = rt.block_on(full_sync(ops, docs, RateLimits::OFF, false));
    let (ops_per_sec, bytes_per_op) = (sync.ops_per_sec, sync.bytes_per_op);
    let (snapshot_secs, snapshot_bytes) = rt.block_on(snapshot_sync(ops, docs));
    let (p50, p99) = rt.block_on(latency(lat_n));
    let limited = rt.block_on(full_sync(limited_ops, 100, RateLimits::default(), true));
    let rounds = rt.block_on(artifact_vs_raw(bulk, ARTIFACT_ROUNDS));
    let median = median_round(&rounds);
    let (raw_rate, art_rate) = (median.raw(), median.artifact);
    let (raw, art) = (raw_rate.mib_per_sec, art_rate.mib_per_sec);
    let rss = artifact_peak_rss_mib(rss_bytes);
    let limited_art = rt
        .block_on(artifact_fetch(limited_bytes, RateLimits::default()))
        .mib_per_sec;
    let meshes: Vec<Mesh> = meshes
        .iter()
        .map(|&(devices, edits)| rt.block_on(mesh(devices, edits)))
        .collect();
    let (metadata_secs, metadata_disk) = rt.block_on(metadata_only(referenced, referenced_count));
    let (one_holder, two_at_once) = rt.block_on(two_holders(bulk, RateLimits::OFF));
    let (one_slow, two_slow) = rt.block_on(two_holders(limited_bytes * 4, per_link));
    let busy = rt.block_on(busy_latencies(busy_n, busy_bulk, slow_n, slow_bulk));
    let relayed = rt.block_on(relay_vs_direct(relay_bulk, relay_ops));
    let whole_docs = rt.block_on(subscribed_share(100, sub_ops, sub_ops));
    let bursts = rt.block_on(subscribed_share(100, sub_ops, 100));
    let report = serde_json::json!({
        "quick": quick,
        "raw_quinn_mib_per_sec": raw,
        "artifact_mib_per_sec": art,
        "artifact_vs_raw": art / raw,
        "raw_quinn_cpu_secs_per_gib": raw_rate.cpu_secs_per_gib,
        "artifact_cpu_secs_per_gib": art_rate.cpu_secs_per_gib,
        "artifact_rounds": rounds.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        "artifact_bytes": bulk,
        "peak_rss_mib": rss,
        "peak_rss_artifact_bytes": rss_bytes,
        "full_sync_ops": ops,
        "full_sync_docs": docs,
        "full_sync_secs": sync.secs,
        "reconnect_bytes": sync.reconnect_bytes,
        "reconnect_ms": sync.reconnect_ms,
        "reconnect_idle_bytes": sync.reconnect_idle_bytes,
        "full_sync_ops_per_sec": ops_per_sec,
        "full_sync_bytes_per_op": bytes_per_op,
        "full_sync_frames_per_sec": sync.frames_per_sec,
        "full_sync_uncompressed_ops_per_sec": plain.ops_per_sec,
        "full_sync_uncompressed_bytes_per_op": plain.bytes_per_op,
        "snapshot_sync_ops": ops,
        "snapshot_sync_secs": snapshot_secs,
        "snapshot_sync_bytes": snapshot_bytes,
        "mesh": meshes.iter().map(Mesh::to_json).collect::<Vec<_>>(),
        "metadata_only": {
            "artifacts": referenced_count,
            "bytes_referenced": referenced,
            "secs_to_know_all": metadata_secs,
            "artifact_store_bytes_on_disk": metadata_disk,
        },
        "two_holders": {
            "artifact_bytes": bulk,
            "one_holder_mib_per_sec": one_holder.mib_per_sec,
            "one_holder_cpu_secs_per_gib": one_holder.cpu_secs_per_gib,
            "two_at_once_mib_per_sec": two_at_once.mib_per_sec,
            "two_at_once_cpu_secs_per_gib": two_at_once.cpu_secs_per_gib,
            "ratio": two_at_once.mib_per_sec / one_holder.mib_per_sec,
            "each_link_25_mb_per_sec": {
                "artifact_bytes": limited_bytes * 4,
                "one_holder_mib_per_sec": one_slow.mib_per_sec,
                "two_at_once_mib_per_sec": two_slow.mib_per_sec,
                "ratio": two_slow.mib_per_sec / one_slow.mib_per_sec,
            },
        },
        "one_of_100_documents": {
            "writes_per_document": sub_ops,
            "written_whole": {
                "bytes": whole_docs.one_bytes,
                "full_sync_bytes": whole_docs.full_bytes,
                "ratio_to_share": whole_docs.ratio(100),
                "entities_held": whole_docs.one_entities,
            },
            "written_in_bursts_of_100": {
                "bytes": bursts.one_bytes,
                "full_sync_bytes": bursts.full_bytes,
                "ratio_to_share": bursts.ratio(100),
                "entities_held": bursts.one_entities,
            },
        },
        "relay": {
            "artifact_bytes": relay_bulk,
            "relayed_artifact_mib_per_sec": relayed.relayed_artifact.mib_per_sec,
            "direct_artifact_mib_per_sec": relayed.direct_artifact.mib_per_sec,
            "artifact_ratio": relayed.relayed_artifact.mib_per_sec / relayed.direct_artifact.mib_per_sec,
            "relay_cpu_secs_per_gib_forwarded": relayed.relay_cpu_secs_per_gib,
            "sync_ops": relay_ops,
            "relayed_sync_ops_per_sec": relayed.relayed_sync_ops_per_sec,
            "direct_sync_ops_per_sec": relayed.direct_sync_ops_per_sec,
            "sync_ratio": relayed.relayed_sync_ops_per_sec / relayed.direct_sync_ops_per_sec,
        },
        "live_latency_during_a_transfer": busy.iter().map(|(how, r)| serde_json::json!({
            "how": how,
            "idle_p50_ms": r.idle.0,
            "idle_p99_ms": r.idle.1,
            "busy_p50_ms": r.busy.0,
            "busy_p99_ms": r.busy.1,
            "busy_samples": r.busy_samples,
            "artifact_mib_per_sec": r.bulk_mib_per_sec,
        })).collect::<Vec<_>>(),
        "latency_samples": lat_n,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "default_limits": {
            "sync_ops": limited_ops,
            "sync_ops_per_sec": limited.ops_per_sec,
            "sync_frames_per_sec": limited.frames_per_sec,
            "sync_frames_per_sec_limit": nomade_transport::ratelimit::DEFAULT_SYNC_OPS_PER_SEC,
            "sync_frames_per_sec_beyond_burst": beyond_burst(
                limited.frames_per_sec * limited.secs,
                f64::from(nomade_transport::ratelimit::DEFAULT_SYNC_OPS_PER_SEC),
                limited.secs
            ),
            "artifact_bytes": limited_bytes,
            "artifact_bytes_per_sec": limited_art * MIB as f64,
            "artifact_bytes_per_sec_limit": nomade_transport::ratelimit::DEFAULT_ARTIFACT_BYTES_PER_SEC,
        },
    });
    println!(
        "e2e: raw quinn {raw:.0} MiB/s, artifact {art:.0} MiB/s (ratio {:.2}), peak RSS {rss:.0} MiB for a {} MiB artifact",
        art / raw,
        rss_bytes / MIB
    );
    println!(
        "e2e: full sync of {ops} ops over {docs} docs: {ops_per_sec:.0} ops/s ({:.1} s), {bytes_per_op:.0} bytes/op on the wire; reconnect differing by one operation: {} bytes, {:.1} ms; live latency p50 {p50:.2} ms, p99 {p99:.2} ms ({lat_n} ops)",
        sync.secs, sync.reconnect_bytes, sync.reconnect_ms
    );
    println!(
        "e2e: snapshot-first sync of a compacted store of {ops} ops over {docs} docs: {snapshot_secs:.2} s, {snapshot_bytes} bytes received"
    );
    println!(
        "e2e: with the default limits: sync {:.0} ops/s in {:.0} frames/s, {:.0} beyond the initial burst (limit {}), artifact {:.2} MB/s (limit {:.0} MB/s)",
        limited.ops_per_sec,
        limited.frames_per_sec,
        beyond_burst(
            limited.frames_per_sec * limited.secs,
            f64::from(nomade_transport::ratelimit::DEFAULT_SYNC_OPS_PER_SEC),
            limited.secs
        ),
        nomade_transport::ratelimit::DEFAULT_SYNC_OPS_PER_SEC,
        limited_art * MIB as f64 / 1e6,
        nomade_transport::ratelimit::DEFAULT_ARTIFACT_BYTES_PER_SEC as f64 / 1e6
    );
    for m in &meshes {
        print_mesh(m);
    }
    println!(
        "e2e: a metadata-only device knows {referenced_count} artifacts of {} MiB in all in {metadata_secs:.2} s, its artifact store using {metadata_disk} bytes",
        referenced / MIB
    );
    println!(
        "e2e: {} MiB from one holder {:.0} MiB/s, from two at once {:.0} MiB/s, ratio {:.2}; each link at 25 MB/s: {:.0} against {:.0} MiB/s, ratio {:.2}",
        bulk / MIB,
        one_holder.mib_per_sec,
        two_at_once.mib_per_sec,
        two_at_once.mib_per_sec / one_holder.mib_per_sec,
        two_slow.mib_per_sec,
        one_slow.mib_per_sec,
        two_slow.mib_per_sec / one_slow.mib_per_sec
    );
    for r in &busy {
        print_busy(r);
    }
    print_relay(&relayed);
    for (how, share) in [("whole", &whole_docs), ("in bursts of 100", &bursts)] {
        println!(
            "e2e: 1 of 100 documents ({sub_ops} writes each, written {how}): {} bytes against {} for all, {:.2}x its share, holding {} entity",
            share.one_bytes, share.full_bytes, share.ratio(100), share.one_entities
        );
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/e2e.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("e2e: written {}", path.display());
}
