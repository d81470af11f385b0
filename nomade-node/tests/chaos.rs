//! Chaos suite: real nodes with real data directories, over QUIC on loopback
//! through `nomade_transport::faulty` sockets that lose, duplicate, delay and
//! reorder datagrams from a seed, and partition switches that cut devices off.
//!
//! Every scenario ends by checking that all devices converged: equal state
//! hashes, equal version vectors equal to their union, every operation created
//! present on every device, artifacts byte-identical to their source.
//!
//! - `NOMADE_CHAOS_SEEDS=N` runs every scenario with N seeds (default 1).
//! - `NOMADE_CHAOS_SEED=S` replays seed S only (a failure prints it).
//! - `NOMADE_CHAOS_SECS=S` makes the live-editing phases last S seconds
//!   (default: about one second).
//!
//! `cargo xtask chaos --seeds N --secs S` runs this file in release mode.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nomade_crdt::LocalEdit;
use nomade_node::{Node, NodeConfig};
use nomade_transport::faulty::{FaultConfig, FaultPlan, FaultStats, Partition};
use nomade_transport::{Config, DeviceIdentity, PairedSet, RateLimits, Transport};
use nomade_wire::{
    ConnectivityStatus, EntityType, Envelope, Hash32, Heartbeat, Hello, Message, MessageId,
    StreamRole, Value, VersionVector,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ----- knobs ----------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The seeds to run: `NOMADE_CHAOS_SEED` alone, or `NOMADE_CHAOS_SEEDS`
/// consecutive ones derived from the scenario's base.
fn seeds(base: u64) -> Vec<u64> {
    if let Some(s) = env_u64("NOMADE_CHAOS_SEED") {
        return vec![s];
    }
    let n = env_u64("NOMADE_CHAOS_SEEDS").unwrap_or(1).max(1);
    (0..n).map(|i| base * 1000 + i).collect()
}

/// How long live-editing phases last.
fn live_phase() -> Duration {
    env_u64("NOMADE_CHAOS_SECS")
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_millis(1000))
        .max(Duration::from_millis(300))
}

/// How long convergence may take once the network is healed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `scenario` once per seed, in its own task; a panic (failed assert)
/// is re-raised with the seed and the command that replays it.
async fn run_seeds<F, Fut>(name: &str, base: u64, scenario: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    for seed in seeds(base) {
        let started = std::time::Instant::now();
        let result = tokio::spawn(scenario(seed)).await;
        if let Err(e) = result {
            panic!(
                "chaos scenario `{name}` failed with seed {seed}: {e}\n\
                 replay: NOMADE_CHAOS_SEED={seed} cargo test -p nomade-node --test chaos {name}"
            );
        }
        let rss = rss_kib();
        eprintln!(
            "chaos {name}: seed {seed} converged in {:.1?} (process RSS {} KiB)",
            started.elapsed(),
            rss.map_or("?".into(), |k| k.to_string())
        );
        // Bounded memory: every scenario holds a few devices with small data;
        // a leak (buffers growing with retransmissions, tasks piling up) shows here.
        if let Some(kib) = rss {
            assert!(
                kib < MAX_RSS_KIB,
                "chaos `{name}` seed {seed}: process RSS {kib} KiB"
            );
        }
    }
}

/// Resident memory the test process may reach (1 GiB): scenarios use tens of MiB.
const MAX_RSS_KIB: u64 = 1024 * 1024;

/// The test process's resident memory (Linux), reported per seed so that a
/// long `cargo xtask chaos` run shows whether memory stays bounded.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ----- devices --------------------------------------------------------------

struct Dev {
    node: Node,
    addr: SocketAddr,
    partition: Partition,
    stats: FaultStats,
    /// Operations this device created (counted from what `edit` returned).
    created: Arc<AtomicU64>,
}

fn config(name: &str, plan: FaultPlan, partition: Partition) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits: RateLimits::OFF,
        heartbeat_period: Duration::from_millis(250),
        missed_heartbeats: 16,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        faults: Some((plan, partition)),
        ..NodeConfig::default()
    }
}

async fn device(dir: &Path, name: &str, plan: FaultPlan) -> Dev {
    device_with_clock(dir, name, plan, 0).await
}

/// A device whose clock is `skew_ms` off.
async fn device_with_clock(dir: &Path, name: &str, plan: FaultPlan, skew_ms: i64) -> Dev {
    let partition = Partition::new();
    let stats = plan.stats.clone();
    let config = NodeConfig {
        clock_skew_ms: skew_ms,
        ..config(name, plan, partition.clone())
    };
    let node = Node::open(&dir.join(name), config).expect("open");
    let addr = node
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    Dev {
        node,
        addr,
        partition,
        stats,
        created: Arc::new(AtomicU64::new(0)),
    }
}

/// Pairs `a` and `b` out of band; `a` keeps a session with `b` (redialing
/// with backoff), `b` only accepts.
fn link(a: &Dev, b: &Dev) {
    a.node
        .add_peer(b.node.device_id(), &b.node.device_name(), &[b.addr])
        .expect("pair");
    b.node
        .add_peer(a.node.device_id(), &a.node.device_name(), &[])
        .expect("pair");
}

impl Dev {
    fn edit(&self, t: EntityType, id: &str, edit: LocalEdit) {
        let ops = self.node.edit(t, id, edit).expect("local edit");
        self.created.fetch_add(ops.len() as u64, Ordering::Relaxed);
    }

    /// Creates `n` document operations in batches (one disk sync per batch).
    fn bulk(&self, prefix: &str, n: usize) {
        for start in (0..n).step_by(500) {
            let edits = (start..(start + 500).min(n))
                .map(|i| {
                    (
                        EntityType::Document,
                        format!("{prefix}-{}", i % 50),
                        LocalEdit::Set {
                            key: format!("k{i}"),
                            value: Value::from(format!("{prefix} value {i}")),
                        },
                    )
                })
                .collect();
            let ops = self.node.core().edit_many(edits).expect("bulk edit");
            self.created.fetch_add(ops.len() as u64, Ordering::Relaxed);
        }
    }

    /// One random edit of the shared entities: a field, the text, the chat.
    fn random_edit(&self, rng: &mut StdRng, tag: &str) {
        match rng.gen_range(0..4) {
            0 => self.edit(
                EntityType::Document,
                "shared",
                LocalEdit::Set {
                    key: format!("f{}", rng.gen_range(0..5)),
                    value: Value::from(format!("{tag}-{}", rng.gen::<u32>())),
                },
            ),
            1 | 2 => {
                let len = self
                    .node
                    .text("shared", "body")
                    .map(|t| t.chars().count())
                    .unwrap_or(0);
                let position = rng.gen_range(0..=len);
                let delete = if position < len && rng.gen_bool(0.3) {
                    1
                } else {
                    0
                };
                self.edit(
                    EntityType::Document,
                    "shared",
                    LocalEdit::Splice {
                        field: "body".into(),
                        position,
                        delete,
                        insert: format!("<{tag}>"),
                    },
                );
            }
            _ => {
                let len = self.node.conversation("chat").map(|c| c.len()).unwrap_or(0);
                let index = rng.gen_range(0..=len);
                self.edit(
                    EntityType::Conversation,
                    "chat",
                    LocalEdit::Insert {
                        index,
                        value: Value::from(format!("{tag} says {}", rng.gen::<u16>())),
                    },
                );
            }
        }
    }
}

/// Each device edits the shared entities every few milliseconds for `dur`.
async fn live_edits(devs: &[&Dev], seed: u64, dur: Duration) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let deadline = tokio::time::Instant::now() + dur;
    let mut round = 0u64;
    while tokio::time::Instant::now() < deadline {
        for d in devs {
            d.random_edit(&mut rng, &format!("{}{round}", d.node.device_name()));
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
    }
}

fn union(vvs: &[VersionVector]) -> VersionVector {
    let mut u = VersionVector::new();
    for vv in vvs {
        for (k, v) in vv {
            let e = u.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
    u
}

/// Waits (at most [`CONVERGE_TIMEOUT`]) until every device holds every
/// operation, then checks hashes, version vectors and contents.
async fn converge(devs: &[&Dev], seed: u64) {
    let total: u64 = devs.iter().map(|d| d.created.load(Ordering::Relaxed)).sum();
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let hashes: Vec<Hash32> = devs.iter().map(|d| d.node.state_hash()).collect();
        let vvs: Vec<VersionVector> = devs
            .iter()
            .map(|d| d.node.core().version_vector())
            .collect();
        // Every device holds what every device created (its own counter
        // at least the operations it made: an operation may cover several).
        let holds_all = |vv: &VersionVector| {
            devs.iter().all(|d| {
                vv.get(d.node.device_id().to_string().as_str())
                    .copied()
                    .unwrap_or(0)
                    >= d.created.load(Ordering::Relaxed)
            })
        };
        let done = hashes.windows(2).all(|w| w[0] == w[1]) && vvs.iter().all(holds_all);
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "seed {seed}: no convergence after {CONVERGE_TIMEOUT:?}: {total} ops created, \
                 hashes {hashes:?}, version vectors {vvs:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vvs: Vec<VersionVector> = devs
        .iter()
        .map(|d| d.node.core().version_vector())
        .collect();
    let all = union(&vvs);
    for (d, vv) in devs.iter().zip(&vvs) {
        assert_eq!(
            vv,
            &all,
            "seed {seed}: {} misses operations",
            d.node.device_name()
        );
        // Every operation a device created is present everywhere.
        let own = vv
            .get(d.node.device_id().to_string().as_str())
            .copied()
            .unwrap_or(0);
        let created = d.created.load(Ordering::Relaxed);
        assert!(
            own >= created,
            "seed {seed}: {} created {created} ops, its own counter is {own}",
            d.node.device_name()
        );
    }
    let first = devs[0];
    for d in &devs[1..] {
        assert_eq!(d.node.state_hash(), first.node.state_hash(), "seed {seed}");
        for doc in ["shared", "bulk-a-0", "bulk-b-0"] {
            assert_eq!(
                d.node.document(doc),
                first.node.document(doc),
                "seed {seed}"
            );
        }
        assert_eq!(
            d.node.text("shared", "body"),
            first.node.text("shared", "body")
        );
        assert_eq!(d.node.conversation("chat"), first.node.conversation("chat"));
    }
}

async fn wait_for(seed: u64, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown(devs: &[&Dev]) {
    for d in devs {
        // Node::shutdown ends with quinn's wait_idle, which under loss can
        // wait for most of the idle timeout (see docs/CHAOS.md): bounded here.
        let _ = tokio::time::timeout(Duration::from_secs(2), d.node.shutdown()).await;
    }
}

// ----- (a) packet loss --------------------------------------------------------

async fn lossy_full_sync(seed: u64, loss: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Faults on a's socket only, both directions: each direction of the
    // link loses `loss` of its datagrams.
    let a = device(
        dir.path(),
        "a",
        FaultPlan::symmetric(FaultConfig::lossy(loss, seed)),
    )
    .await;
    let b = device(dir.path(), "b", FaultPlan::default()).await;
    // A full sync of a few thousand operations, both ways.
    a.bulk("bulk-a", 3000);
    b.bulk("bulk-b", 500);
    link(&a, &b);
    a.node.connect_known_peers().expect("dial");
    // Live edits on both sides while the initial sync runs.
    let t = std::time::Instant::now();
    live_edits(&[&a, &b], seed, live_phase()).await;
    converge(&[&a, &b], seed).await;
    eprintln!("edits + convergence took {:.1?}", t.elapsed());
    let sa = a.stats.outgoing();
    if loss > 0.0 {
        assert!(
            sa.dropped > 0,
            "seed {seed}: the network lost nothing: {sa:?}"
        );
    } else {
        assert_eq!(sa.dropped, 0);
    }
    eprintln!(
        "loss {loss}: a sent {sa:?}, received {:?}",
        a.stats.incoming()
    );
    shutdown(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_0_full_sync_and_live_edits() {
    run_seeds("a_loss_0", 1, |s| lossy_full_sync(s, 0.0)).await;
}

/// BAD_INPUTS #33 (10% loss) and #24: all devices converge, nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_10_full_sync_and_live_edits() {
    run_seeds("a_loss_10", 2, |s| lossy_full_sync(s, 0.10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_30_full_sync_and_live_edits() {
    run_seeds("a_loss_30", 3, |s| lossy_full_sync(s, 0.30)).await;
}

// ----- (b) reordering, duplication, delay ------------------------------------

/// BAD_INPUTS #33 (duplication, reordering) and #22 over the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_reorder_duplicate_delay_jitter() {
    run_seeds("b_reorder", 4, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |s: u64| {
            FaultPlan::symmetric(FaultConfig {
                loss: 0.02,
                duplicate: 0.10,
                reorder: 0.20,
                delay: Duration::from_millis(2),
                jitter: Duration::from_millis(6),
                seed: s,
                ..FaultConfig::default()
            })
        };
        let a = device(dir.path(), "a", cfg(seed)).await;
        let b = device(dir.path(), "b", FaultPlan::default()).await;
        a.bulk("bulk-a", 2000);
        b.bulk("bulk-b", 300);
        link(&a, &b);
        a.node.connect_known_peers().expect("dial");
        live_edits(&[&a, &b], seed, live_phase()).await;
        converge(&[&a, &b], seed).await;
        for s in [a.stats.outgoing(), a.stats.incoming()] {
            assert!(s.duplicated > 0 && s.reordered > 0, "seed {seed}: {s:?}");
        }
        shutdown(&[&a, &b]).await;
    })
    .await;
}

// ----- (c) partitions ---------------------------------------------------------

/// BAD_INPUTS #33 (partitions) and #29: a silent peer is marked down, redialled, and the devices converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_partition_toggled_while_both_edit() {
    run_seeds("c_partition", 5, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = device(dir.path(), "a", FaultPlan::default()).await;
        let b = device(dir.path(), "b", FaultPlan::default()).await;
        a.bulk("bulk-a", 500);
        link(&a, &b);
        a.node.connect_known_peers().expect("dial");
        let (ida, idb) = (a.node.device_id(), b.node.device_id());
        wait_for(seed, "first session", CONVERGE_TIMEOUT, || {
            a.node.is_connected(&idb) && b.node.is_connected(&ida)
        })
        .await;
        let mut rng = StdRng::seed_from_u64(seed);
        for cycle in 0..4 {
            a.partition.set(true);
            if cycle == 0 {
                // A cut longer than the liveness limit: the session must die
                // on both sides (edits go on meanwhile).
                live_edits(&[&a, &b], seed + cycle, Duration::from_millis(200)).await;
                wait_for(seed, "the cut to be noticed", CONVERGE_TIMEOUT, || {
                    !a.node.is_connected(&idb) && !b.node.is_connected(&ida)
                })
                .await;
            } else {
                let cut = Duration::from_millis(rng.gen_range(200..1500));
                live_edits(&[&a, &b], seed + cycle, cut).await;
            }
            a.partition.set(false);
            let up = live_phase().mul_f64(rng.gen_range(0.2..0.6));
            live_edits(&[&a, &b], seed + 100 + cycle, up).await;
        }
        converge(&[&a, &b], seed).await;
        assert!(
            a.node.is_connected(&idb),
            "seed {seed}: a did not reconnect"
        );
        let st = a.stats.outgoing();
        assert!(st.partitioned > 0, "seed {seed}: {st:?}");
        shutdown(&[&a, &b]).await;
    })
    .await;
}

// ----- (d) three devices --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_three_devices_edit_the_same_entities_while_links_flap() {
    run_seeds("d_three", 6, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = |s: u64| FaultPlan::symmetric(FaultConfig::lossy(0.05, s));
        let a = device(dir.path(), "a", plan(seed)).await;
        let b = device(dir.path(), "b", plan(seed + 1)).await;
        let c = device(dir.path(), "c", plan(seed + 2)).await;
        link(&a, &b);
        link(&a, &c);
        link(&b, &c);
        a.node.connect_known_peers().expect("dial");
        b.node.connect_known_peers().expect("dial");
        let devs = [&a, &b, &c];
        let mut rng = StdRng::seed_from_u64(seed);
        let rounds = 6;
        for round in 0..rounds {
            // Cut one device off (or none), edit everywhere, heal.
            let victim = rng.gen_range(0..4usize);
            if let Some(d) = devs.get(victim) {
                d.partition.set(true);
            }
            let dur = live_phase().mul_f64(rng.gen_range(0.3..0.8));
            live_edits(&devs, seed + round, dur).await;
            for d in devs {
                d.partition.set(false);
            }
            live_edits(&devs, seed + 50 + round, Duration::from_millis(150)).await;
        }
        converge(&devs, seed).await;
        let text = a.node.text("shared", "body").unwrap_or_default();
        assert!(
            text.contains("<a") && text.contains("<b") && text.contains("<c"),
            "seed {seed}: {text}"
        );
        shutdown(&devs).await;
    })
    .await;
}

// ----- (h) a cut in the middle of a full sync ------------------------------------

/// The link is cut while a fresh device is in the middle of its full sync; it
/// stays cut past the liveness limit, so both sessions die; after the heal
/// the device redials and the sync finishes from where it stopped (its
/// version vector), with nothing lost or doubled.
///
/// BAD_INPUTS #24: a sync cut in the middle still finishes, and the gap is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_cut_in_the_middle_of_a_full_sync() {
    run_seeds("h_mid_sync_cut", 8, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = device(dir.path(), "a", FaultPlan::default()).await;
        let b = device(dir.path(), "b", FaultPlan::default()).await;
        // Far more than the receiver's apply queue (64 frames, about 19,000
        // operations) and QUIC's windows hold, so that the cut finds most of
        // the backlog still on the holder. Paired first: the holder keeps
        // the history its peer has not acknowledged (unpaired, it would
        // compact it and send a snapshot instead).
        link(&b, &a);
        a.bulk("bulk-a", 100_000);
        let (ida, idb) = (a.node.device_id(), b.node.device_id());
        let me = ida.to_string();
        let total = a.node.core().version_vector()[me.as_str()];
        b.node.connect_known_peers().expect("dial");
        // Cut as soon as part of the backlog is in.
        wait_for(seed, "the full sync to start", CONVERGE_TIMEOUT, || {
            b.node.core().version_vector().get(me.as_str()).copied().unwrap_or(0) > 0
        })
        .await;
        b.partition.set(true);
        let at_cut = b.node.core().version_vector().get(me.as_str()).copied().unwrap_or(0);
        wait_for(seed, "the cut to be noticed", CONVERGE_TIMEOUT, || {
            !a.node.is_connected(&idb) && !b.node.is_connected(&ida)
        })
        .await;
        let while_cut = b.node.core().version_vector().get(me.as_str()).copied().unwrap_or(0);
        assert!(while_cut < total, "seed {seed}: the sync finished before the cut ({at_cut}/{total})");
        b.partition.set(false);
        converge(&[&a, &b], seed).await;
        eprintln!("seed {seed}: cut at {at_cut}, {while_cut} of {total} held during the cut, then resumed");
        shutdown(&[&a, &b]).await;
    })
    .await;
}

// ----- (f) skewed clocks ---------------------------------------------------------

/// One device's clock three hours ahead, another's three hours behind: they
/// converge exactly as with true clocks, because timestamps decide nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_clocks_hours_apart_change_nothing() {
    run_seeds("f_clocks", 7, |seed| async move {
        const HOURS_3: i64 = 3 * 3600 * 1000;
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = |s: u64| FaultPlan::symmetric(FaultConfig::lossy(0.02, s));
        let ahead = device_with_clock(dir.path(), "ahead", plan(seed), HOURS_3).await;
        let behind = device_with_clock(dir.path(), "behind", plan(seed + 1), -HOURS_3).await;
        let right = device(dir.path(), "right", plan(seed + 2)).await;
        link(&ahead, &behind);
        link(&ahead, &right);
        link(&behind, &right);
        ahead.node.connect_known_peers().expect("dial");
        behind.node.connect_known_peers().expect("dial");
        let devs = [&ahead, &behind, &right];
        live_edits(&devs, seed, live_phase()).await;
        // The device that is behind writes last, after seeing the others'
        // writes: its value wins everywhere even though its timestamp is the
        // oldest (a last-writer-wins by clock would pick the device ahead).
        converge(&devs, seed).await;
        let ops = behind
            .node
            .edit(
                EntityType::Document,
                "clock",
                LocalEdit::Set {
                    key: "winner".into(),
                    value: Value::from("behind"),
                },
            )
            .expect("edit");
        let stamp = ops[0].timestamp;
        behind.created.fetch_add(ops.len() as u64, Ordering::SeqCst);
        ahead.node.set("other", "k", 1).expect("edit");
        ahead.created.fetch_add(1, Ordering::SeqCst);
        converge(&devs, seed).await;
        for d in devs {
            let winner = d
                .node
                .document("clock")
                .and_then(|m| m.get("winner").cloned());
            assert_eq!(winner, Some(Value::from("behind")), "seed {seed}");
        }
        let skew = nomade_node::core::now_ms() - stamp;
        assert!(
            skew > HOURS_3 - 60_000,
            "seed {seed}: the skew was not applied ({skew} ms)"
        );
        shutdown(&devs).await;
    })
    .await;
}

// ----- (e) artifacts ----------------------------------------------------------

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_artifact_under_loss_and_resumed_after_a_cut() {
    run_seeds("e_artifact", 7, |seed| async move {
        const MIB: usize = 1024 * 1024;
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = FaultPlan::symmetric(FaultConfig::lossy(0.10, seed));
        let a = device(dir.path(), "a", plan).await;
        let b = device(dir.path(), "b", FaultPlan::default()).await;

        // 1. A few MiB under 10% loss, fetched after the initial sync.
        let data1 = pattern(3 * MIB, seed);
        let file1 = dir.path().join("one.bin");
        std::fs::write(&file1, &data1).expect("write");
        let id1 = a.node.put_artifact(&file1, None).expect("put");
        a.edit(
            EntityType::Document,
            "shared",
            LocalEdit::Set { key: "one".into(), value: Value::from(id1.to_reference()) },
        );
        link(&a, &b);
        a.node.connect_known_peers().expect("dial");
        wait_for(seed, "artifact one", CONVERGE_TIMEOUT, || b.node.artifacts().has(&id1)).await;
        let out = dir.path().join("one.out");
        b.node.export_artifact(&id1, &out).expect("export");
        assert!(std::fs::read(&out).expect("read") == data1, "seed {seed}: artifact one differs");
        assert!(a.stats.outgoing().dropped > 0);

        converge(&[&a, &b], seed).await;
        shutdown(&[&a, &b]).await;

        // 2. Cut by a partition mid-transfer, then fetched again: resumes.
        // A clean network here, so that nothing but the cut interrupts it.
        let a = device(dir.path(), "a2", FaultPlan::default()).await;
        let b = device(dir.path(), "b2", FaultPlan::default()).await;
        let (ida, idb) = (a.node.device_id(), b.node.device_id());
        link(&a, &b);
        a.node.connect_known_peers().expect("dial");
        wait_for(seed, "session", CONVERGE_TIMEOUT, || {
            a.node.is_connected(&idb) && b.node.is_connected(&ida)
        })
        .await;
        let data2 = pattern(6 * MIB, seed + 1);
        let file2 = dir.path().join("two.bin");
        std::fs::write(&file2, &data2).expect("write");
        let id2 = a.node.put_artifact(&file2, None).expect("put");
        a.edit(
            EntityType::Document,
            "shared",
            LocalEdit::Set { key: "two".into(), value: Value::from(id2.to_reference()) },
        );
        wait_for(seed, "the reference", CONVERGE_TIMEOUT, || {
            b.node.document("shared").is_some_and(|d| d.contains_key("two"))
        })
        .await;
        let cut = b.partition.clone();
        let mut cut_at = 0;
        let first = b
            .node
            .fetch_artifact(&ida, id2, |p| {
                if p.bytes_done >= MIB as u64 && !cut.is_set() {
                    cut_at = p.bytes_done;
                    cut.set(true);
                }
            })
            .await;
        assert!(first.is_err(), "seed {seed}: the transfer survived the cut");
        assert!(cut_at > 0);
        assert!(!b.node.artifacts().has(&id2));
        assert!(b.node.artifacts().has_partial(&id2), "seed {seed}: no partial kept");
        wait_for(seed, "the cut to be noticed", CONVERGE_TIMEOUT, || !b.node.is_connected(&ida)).await;
        let before = b.node.metrics().snapshot().artifact_bytes_received;
        b.partition.set(false);
        wait_for(seed, "reconnection", CONVERGE_TIMEOUT, || {
            a.node.is_connected(&idb) && b.node.is_connected(&ida)
        })
        .await;
        // The new session may start fetching it by itself; both ways end stored.
        let mut started_at = None;
        let again = b
            .node
            .fetch_artifact(&ida, id2, |p| {
                started_at.get_or_insert(p.bytes_done);
            })
            .await;
        if again.is_err() {
            // A flap of the lossy network: the node retries on reconnection.
            wait_for(seed, "artifact two", CONVERGE_TIMEOUT, || b.node.artifacts().has(&id2)).await;
        }
        assert!(b.node.artifacts().has(&id2));
        let resumed = b.node.metrics().snapshot().artifact_bytes_received - before;
        assert!(
            resumed < data2.len() as u64,
            "seed {seed}: the second fetch moved {resumed} bytes: it did not resume (cut at {cut_at}, restarted at {started_at:?})"
        );
        eprintln!(
            "artifact two: cut at {cut_at} bytes, the second fetch moved {resumed} of {} bytes",
            data2.len()
        );
        let out = dir.path().join("two.out");
        b.node.export_artifact(&id2, &out).expect("export");
        assert!(std::fs::read(&out).expect("read") == data2, "seed {seed}: artifact two differs");
        converge(&[&a, &b], seed).await;
        shutdown(&[&a, &b]).await;
    })
    .await;
}

// ----- (i) the whole of BAD_INPUTS #33 at once ------------------------------------

/// How long scenario (i) keeps a device cut off: 30 s, as BAD_INPUTS #33
/// says, unless `NOMADE_CHAOS_PARTITION_SECS` asks otherwise.
/// A slow link (500 kB/s, 10 ms each way, a 200 ms queue) full of
/// artifact data sent with Cubic alone, which fills the queue: heartbeats
/// (presence) go before artifact data, so the peer, which declares a
/// device offline after 400 ms without one, never does; a live edit made
/// during the transfer arrives during it; the artifact arrives whole. With
/// presence below artifact data, the heartbeats starved behind the
/// transfer and the session dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_heartbeats_and_live_edits_cross_a_slow_link_full_of_artifact_data() {
    run_seeds("j_slow_link", 9, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let slow = slow_link(seed);
        let open = |name: &str, plan: FaultPlan| {
            let config = NodeConfig {
                heartbeat_period: Duration::from_millis(100),
                missed_heartbeats: 4,
                queue_target: None,
                ..config(name, plan, Partition::new())
            };
            Node::open(&dir.path().join(name), config).expect("open")
        };
        let (a, b) = (open("a", slow), open("b", FaultPlan::default()));
        let (id, data) = share_a_film(&dir, &a, &b, 1_500_000, seed).await;
        wait_for(seed, "the transfer to start", CONVERGE_TIMEOUT, || {
            b.metrics_snapshot().artifact_bytes_received > 200_000
        })
        .await;
        a.set("shared", "live", 1).expect("live edit");
        wait_for(seed, "the live edit", CONVERGE_TIMEOUT, || {
            b.core().field_values("shared", "live").len() == 1
        })
        .await;
        assert!(
            !b.artifacts().has(&id),
            "seed {seed}: the edit came after the transfer, not during it"
        );
        wait_for(seed, "the artifact", CONVERGE_TIMEOUT, || {
            b.artifacts().has(&id)
        })
        .await;
        let out = dir.path().join("film.out");
        b.export_artifact(&id, &out).expect("export");
        assert!(
            std::fs::read(&out).expect("read") == data,
            "seed {seed}: the artifact differs"
        );
        assert_eq!(
            b.metrics_snapshot().sessions_started,
            1,
            "seed {seed}: the session dropped during the transfer"
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

// ----- (k) relay ---------------------------------------------------------------

/// A path broken between two devices only: a and c drop each other's
/// datagrams, both reach b. They connect through b (a relayed QUIC
/// connection, authenticated end to end), sync on it under loss while both
/// edit, and move to the direct path once it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_two_devices_cut_from_each_other_sync_through_a_third() {
    run_seeds("k_relay", 11, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = |s: u64| FaultPlan::symmetric(FaultConfig::lossy(0.02, s));
        let a = device(dir.path(), "a", plan(seed)).await;
        let b = device(dir.path(), "b", plan(seed + 1)).await;
        let c = device(dir.path(), "c", plan(seed + 2)).await;
        link(&a, &b);
        link(&c, &b);
        link(&a, &c);
        a.partition.cut_from(c.addr, true);
        c.partition.cut_from(a.addr, true);
        let (ida, idb, idc) = (a.node.device_id(), b.node.device_id(), c.node.device_id());
        a.node.connect_known_peers().expect("dial");
        c.node.connect_known_peers().expect("dial");
        wait_for(
            seed,
            "a and c connected through b",
            CONVERGE_TIMEOUT,
            || a.node.relayed_via(&idc) == Some(idb) && c.node.relayed_via(&ida) == Some(idb),
        )
        .await;
        a.bulk("relayed-a", 1_000);
        live_edits(&[&a, &c], seed, Duration::from_millis(600)).await;
        converge(&[&a, &b, &c], seed).await;
        // The relayed session itself carried operations, and b forwarded them.
        let session = a.node.session_status(&idc).expect("a's session with c");
        assert_eq!(session.relayed_via, Some(idb.to_string()), "seed {seed}");
        assert!(session.last_sync_ms.is_some(), "seed {seed}: {session:?}");
        // The doctor says so, and why.
        let report = nomade_node::doctor::diagnose(&a.node, true).await;
        let of_c = report
            .peers
            .iter()
            .find(|p| p.device_id == idc.to_string())
            .expect("c diagnosed");
        assert!(
            matches!(&of_c.cause, nomade_node::doctor::Cause::Relayed { via, .. } if *via == idb.to_string()),
            "seed {seed}: {of_c:?}"
        );
        assert!(of_c.ok && of_c.advice.contains("only through"), "seed {seed}: {}", of_c.advice);
        let relay = b.node.metrics_snapshot().relay;
        assert!(relay.sessions >= 1, "seed {seed}: {relay:?}");
        assert!(relay.bytes_forwarded > 20_000, "seed {seed}: {relay:?}");
        assert!(a.stats.outgoing().partitioned > 0, "seed {seed}");
        // The path heals: both move to it, and b relays nothing any more.
        a.partition.cut_from(c.addr, false);
        c.partition.cut_from(a.addr, false);
        wait_for(seed, "a and c on the direct path", CONVERGE_TIMEOUT, || {
            a.node.is_connected(&idc)
                && c.node.is_connected(&ida)
                && a.node.relayed_via(&idc).is_none()
                && c.node.relayed_via(&ida).is_none()
        })
        .await;
        wait_for(seed, "the relay session to end", CONVERGE_TIMEOUT, || {
            b.node.metrics_snapshot().relay.active_sessions == 0
        })
        .await;
        live_edits(&[&a, &c], seed + 50, Duration::from_millis(300)).await;
        converge(&[&a, &b, &c], seed).await;
        let session = c.node.session_status(&ida).expect("c's session with a");
        assert_eq!(session.address, a.addr.to_string(), "seed {seed}");
        shutdown(&[&a, &b, &c]).await;
    })
    .await;
}

/// A prefetch the link cannot carry within the policy's bound: a's link
/// delivers 500 kB/s, b's policy gives a prefetch 4 s. After its first
/// seconds b measures the rate, pauses the prefetch (what it verified
/// stays) and shows it deferred with the rate; the artifact, asked for,
/// is then fetched on demand, resuming after what the prefetch verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l_a_prefetch_the_link_cannot_carry_in_time_waits_and_is_fetched_on_demand() {
    run_seeds("l_slow_prefetch", 12, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let slow = slow_link(seed);
        let a =
            Node::open(&dir.path().join("a"), config("a", slow, Partition::new())).expect("open");
        let b_config = NodeConfig {
            artifact_policy: nomade_node::ArtifactPolicy {
                max_prefetch_secs: Some(4),
                ..Default::default()
            },
            ..config("b", FaultPlan::default(), Partition::new())
        };
        let b = Node::open(&dir.path().join("b"), b_config).expect("open");
        let (id, data) = share_a_film(&dir, &a, &b, 5_000_000, seed).await;
        let work = format!("artifact prefetch from {}", a.device_id());
        wait_for(seed, "the prefetch to be paused", CONVERGE_TIMEOUT, || {
            b.deferred_work().iter().any(|w| w.work == work)
        })
        .await;
        let deferred = b
            .deferred_work()
            .into_iter()
            .find(|w| w.work == work)
            .expect("listed");
        match deferred.reason {
            nomade_node::schedule::Deferral::SlowLink {
                bytes_per_sec,
                limit_secs,
                ..
            } => {
                assert!(
                    (100_000..=1_000_000).contains(&bytes_per_sec),
                    "seed {seed}: measured {bytes_per_sec} bytes/s"
                );
                assert_eq!(limit_secs, 4);
            }
            other => panic!("seed {seed}: deferred for {other:?}"),
        }
        assert!(!b.artifacts().has(&id), "seed {seed}");
        assert!(
            b.artifacts().has_partial(&id),
            "seed {seed}: what it verified stays"
        );
        let received = b.metrics_snapshot().artifact_bytes_received;
        b.fetch_artifact(&a.device_id(), id, |_| {})
            .await
            .expect("on demand");
        let out = dir.path().join("film.out");
        b.export_artifact(&id, &out).expect("export");
        assert!(std::fs::read(&out).expect("read") == data, "seed {seed}");
        let resumed = b.metrics_snapshot().artifact_bytes_received - received;
        assert!(
            resumed < data.len() as u64,
            "seed {seed}: {resumed} bytes after the pause: not resumed"
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// Puts a film of `size` bytes on `a`, referenced by a document, pairs
/// `a` and `b` and has `b` keep connected to `a`: the artifact's id and
/// bytes.
async fn share_a_film(
    dir: &tempfile::TempDir,
    a: &Node,
    b: &Node,
    size: usize,
    seed: u64,
) -> (nomade_artifact::ArtifactId, Vec<u8>) {
    let addr = a
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    b.start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start");
    let data = pattern(size, seed);
    let file = dir.path().join("film.bin");
    std::fs::write(&file, &data).expect("write");
    let id = a.put_artifact(&file, None).expect("put");
    a.set("shared", "film", id.to_reference().as_str())
        .expect("reference");
    a.add_peer(b.device_id(), "b", &[]).expect("pair");
    b.add_peer(a.device_id(), "a", &[addr]).expect("pair");
    b.connect_known_peers().expect("dial");
    (id, data)
}

/// A slow link on one socket, both ways: 500 kB/s, 10 ms each way, a
/// 200 ms router queue.
fn slow_link(seed: u64) -> FaultPlan {
    FaultPlan::symmetric(FaultConfig {
        delay: Duration::from_millis(10),
        rate: Some(500_000),
        queue_limit: Some(Duration::from_millis(200)),
        seed,
        ..FaultConfig::default()
    })
}

fn long_partition() -> Duration {
    Duration::from_secs(env_u64("NOMADE_CHAOS_PARTITION_SECS").unwrap_or(30))
}

/// BAD_INPUTS #33: three devices on a network with 10% loss, 10%
/// duplication and reordering on every socket; one of them is cut off for
/// 30 seconds while all three keep editing. After the heal all three
/// converge: every operation everywhere, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_thirty_second_partition_under_loss_and_duplication() {
    run_seeds("i_long_partition", 9, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = |s: u64| {
            FaultPlan::symmetric(FaultConfig {
                loss: 0.10,
                duplicate: 0.10,
                reorder: 0.10,
                delay: Duration::from_millis(1),
                jitter: Duration::from_millis(3),
                seed: s,
                ..FaultConfig::default()
            })
        };
        let a = device(dir.path(), "a", plan(seed)).await;
        let b = device(dir.path(), "b", plan(seed + 1)).await;
        let c = device(dir.path(), "c", plan(seed + 2)).await;
        a.bulk("bulk-a", 300);
        c.bulk("bulk-c", 100);
        link(&a, &b);
        link(&b, &c);
        link(&a, &c);
        for d in [&a, &b, &c] {
            d.node.connect_known_peers().expect("dial");
        }
        live_edits(&[&a, &b, &c], seed, live_phase()).await;
        // c is cut off; everyone edits through the whole cut.
        c.partition.set(true);
        let (idc, ida) = (c.node.device_id(), a.node.device_id());
        let cut = long_partition();
        let all = [&a, &b, &c];
        let edits_during_cut = live_edits(&all, seed + 1, cut);
        let noticed = wait_for(seed, "the cut to be noticed", CONVERGE_TIMEOUT, || {
            !a.node.is_connected(&idc) && !c.node.is_connected(&ida)
        });
        tokio::join!(edits_during_cut, noticed);
        c.partition.set(false);
        live_edits(&[&a, &b, &c], seed + 2, live_phase()).await;
        converge(&[&a, &b, &c], seed).await;
        for d in [&a, &b, &c] {
            let s = d.stats.outgoing();
            assert!(
                s.dropped > 0 && s.duplicated > 0 && s.reordered > 0,
                "seed {seed}: {s:?}"
            );
        }
        assert!(c.stats.outgoing().partitioned > 0, "seed {seed}");
        shutdown(&[&a, &b, &c]).await;
    })
    .await;
}

// ----- (g) a peer sending garbage -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_garbage_frames_do_not_disturb_a_good_peer() {
    run_seeds("g_garbage", 8, |seed| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = device(dir.path(), "n", FaultPlan::default()).await;
        let m = device(dir.path(), "m", FaultPlan::default()).await;
        link(&m, &n);
        m.node.connect_known_peers().expect("dial");
        n.bulk("bulk-a", 300);

        // The bad peer: paired with n, speaks a correct HELLO, then garbage.
        let bad = DeviceIdentity::generate().expect("identity");
        let bad_id = bad.device_id();
        n.node.add_peer(bad_id, "bad", &[]).expect("pair");
        let paired = PairedSet::new();
        paired.insert(n.node.device_id());
        let t = Transport::bind(
            bad,
            paired,
            "127.0.0.1:0".parse().expect("addr"),
            Config::default(),
        )
        .expect("bind");
        let conn = t
            .connect(n.addr, Some(n.node.device_id()))
            .await
            .expect("connect");
        let (mut ctl, mut ctl_rx) = conn.open_bi(StreamRole::Control).await.expect("control");
        let hello = Hello {
            device_id: bad_id.to_string(),
            device_name: "bad".into(),
            protocol_version: nomade_wire::PROTOCOL_VERSION,
            capabilities: nomade_node::handshake::CAPABILITIES
                .map(String::from)
                .to_vec(),
            sync_state_hash: Hash32::default(),
        };
        ctl.send(&Envelope::new(MessageId::from([1; 16]), 0, hello))
            .await
            .expect("hello");
        let ack = ctl_rx.recv().await.expect("recv").expect("an answer");
        assert!(matches!(ack.message, Message::HelloAck(_)), "{ack:?}");
        // Heartbeats, so n keeps the session for as long as the test runs.
        let mut beat = conn.open_uni(StreamRole::Presence).await.expect("presence");
        // Each with its own message id: a repeated id would be dropped.
        let beats = tokio::spawn(async move {
            for n in 0u64.. {
                let hb = Heartbeat {
                    timestamp: 0,
                    battery_level: None,
                    connectivity: ConnectivityStatus::Unknown,
                };
                let mut id = [2u8; 16];
                id[8..].copy_from_slice(&n.to_le_bytes());
                if beat
                    .send(&Envelope::new(MessageId::from(id), 0, hb))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });

        let mut rng = StdRng::seed_from_u64(seed);
        let valid = Envelope::new(
            MessageId::from([3; 16]),
            0,
            nomade_wire::SyncRequest {
                entity_types: vec![EntityType::Document],
                since_timestamp: None,
                full_sync: true,
                version_vector: None,
                subscription: None,
            },
        )
        .to_bytes()
        .expect("encode");
        let mut answered = 0;
        let rounds = 15;
        let garbage_edits = async {
            for round in 0..rounds {
                let (mut tx, mut rx) = conn.open_bi(StreamRole::Sync).await.expect("sync stream");
                let bytes: Vec<u8> = match round % 5 {
                    // Random bytes.
                    0 => (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect(),
                    // A valid frame cut short, then the stream ends.
                    1 => valid[..rng.gen_range(1..valid.len())].to_vec(),
                    // A valid frame with random bytes flipped.
                    2 => {
                        let mut v = valid.to_vec();
                        for _ in 0..3 {
                            let i = rng.gen_range(0..v.len());
                            v[i] ^= rng.gen_range(1..=255u8);
                        }
                        v
                    }
                    // A header claiming a payload of 4 GiB.
                    3 => {
                        let mut v = valid[..nomade_wire::HEADER_LEN].to_vec();
                        v[27..31].copy_from_slice(&[0xff; 4]);
                        v
                    }
                    // A well-formed frame of the wrong kind (HEARTBEAT) first.
                    _ => Envelope::new(
                        MessageId::from([4 + round as u8; 16]),
                        0,
                        Heartbeat {
                            timestamp: 0,
                            battery_level: None,
                            connectivity: ConnectivityStatus::Unknown,
                        },
                    )
                    .to_bytes()
                    .expect("encode")
                    .to_vec(),
                };
                let _ = tx.send_raw(&bytes).await;
                let _ = tx.finish().await;
                // n ends the stream (ERROR, reset or end), it never hangs it.
                match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                    Ok(_) => answered += 1,
                    Err(_) => {
                        panic!("seed {seed}: n left a garbage stream hanging (round {round})")
                    }
                }
                // Meanwhile the good peer keeps editing.
                m.random_edit(&mut rng, "m");
                n.random_edit(&mut rng, "n");
            }
        };
        garbage_edits.await;
        assert_eq!(answered, rounds);
        live_edits(&[&m, &n], seed, live_phase()).await;
        converge(&[&m, &n], seed).await;
        // The bad peer's connection survived its bad streams; n still serves it.
        assert!(
            conn.close_reason().is_none(),
            "seed {seed}: {:?}",
            conn.close_reason()
        );
        assert!(
            n.node.is_connected(&bad_id),
            "seed {seed}: n dropped the session"
        );
        assert!(n.node.is_connected(&m.node.device_id()));
        beats.abort();
        conn.close(0, "done");
        shutdown(&[&m, &n]).await;
    })
    .await;
}
