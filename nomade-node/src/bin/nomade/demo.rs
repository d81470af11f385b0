//! `nomade demo`: three devices on loopback pair, edit concurrently, sync,
//! move an artifact, survive a crash and restart, and converge.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use std::net::SocketAddr;

use nomade_transport::RateLimits;

use nomade_node::error::{NodeError, StoreError};
use nomade_node::{Node, NodeConfig};

use crate::bar::ProgressBar;

/// One device in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoDevice {
    /// Its name.
    pub name: String,
    /// Its device id.
    pub device_id: String,
    /// Its final state hash (hex).
    pub state_hash: String,
}

/// The artifact part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoArtifact {
    /// Its id (SHA-256, hex).
    pub id: String,
    /// Its size.
    pub bytes: u64,
    /// Whether the copy on the receiving device is byte-identical.
    pub verified: bool,
    /// Transfer rate, MiB/s.
    pub mib_per_sec: f64,
}

/// What `nomade demo` found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// All devices ended with the same state hash and the same values.
    pub converged: bool,
    /// The devices.
    pub devices: Vec<DemoDevice>,
    /// Operations applied from peers, all devices together.
    pub ops_synced: u64,
    /// The artifact transfer.
    pub artifact: DemoArtifact,
    /// The crashed device came back from disk with everything it had acknowledged.
    pub restart_recovered: bool,
    /// The steps, in order, with how long each took.
    pub steps: Vec<String>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nNomade demo report")?;
        writeln!(f, "==================")?;
        for s in &self.steps {
            writeln!(f, "  {s}")?;
        }
        writeln!(f, "\nDevices:")?;
        for d in &self.devices {
            writeln!(
                f,
                "  {:<8} {}  state {}",
                d.name,
                d.device_id,
                &d.state_hash[..16]
            )?;
        }
        writeln!(f, "\nOperations synced:  {}", self.ops_synced)?;
        writeln!(
            f,
            "Artifact:           {} ({} bytes) {} at {:.0} MiB/s",
            &self.artifact.id[..16],
            self.artifact.bytes,
            if self.artifact.verified {
                "verified"
            } else {
                "NOT VERIFIED"
            },
            self.artifact.mib_per_sec
        )?;
        writeln!(
            f,
            "Restart from disk:  {}",
            if self.restart_recovered {
                "recovered"
            } else {
                "FAILED"
            }
        )?;
        writeln!(
            f,
            "Converged:          {}",
            if self.converged {
                "yes, all state hashes equal"
            } else {
                "NO"
            }
        )
    }
}

struct Steps {
    start: Instant,
    lines: Vec<String>,
    live: bool,
}

impl Steps {
    fn done(&mut self, what: String) {
        let line = format!("[{:>6.2}s] {what}", self.start.elapsed().as_secs_f64());
        if self.live {
            let mut err = std::io::stderr();
            let _ = writeln!(err, "{line}");
        }
        self.lines.push(line);
    }
}

/// Waits until every node has the same state hash, or the timeout passes.
pub async fn wait_converged(nodes: &[&Node], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let first = nodes[0].state_hash();
        if nodes.iter().all(|n| n.state_hash() == first) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(name: &str, rate_limits: bool) -> NodeConfig {
    NodeConfig {
        device_name: name.into(),
        rate_limits: if rate_limits {
            RateLimits::default()
        } else {
            RateLimits::OFF
        },
        heartbeat_period: Duration::from_secs(1),
        ..NodeConfig::default()
    }
}

/// Opens a node, retrying while a crashed predecessor still holds its database.
async fn start(dir: &Path, name: &str, rate_limits: bool) -> Result<(Node, SocketAddr), NodeError> {
    let mut tries = 0;
    let node = loop {
        match Node::open(dir, config(name, rate_limits)) {
            Ok(n) => break n,
            Err(NodeError::Store(StoreError::Locked)) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let addr = node.start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    Ok((node, addr))
}

/// Runs the demonstration in a temporary directory. `live` prints each step
/// as it happens (on stderr) and draws a progress bar for the artifact.
pub async fn run(
    artifact_bytes: u64,
    live: bool,
    rate_limits: bool,
) -> Result<DemoReport, NodeError> {
    let tmp = tempfile::tempdir()?;
    let mut steps = Steps {
        start: Instant::now(),
        lines: Vec::new(),
        live,
    };
    let (dir_a, dir_b, dir_c) = (
        tmp.path().join("laptop"),
        tmp.path().join("phone"),
        tmp.path().join("desktop"),
    );

    // 1. Three devices, offline, edit the same entities concurrently.
    let (a, addr_a) = start(&dir_a, "laptop", rate_limits).await?;
    let (b, addr_b) = start(&dir_b, "phone", rate_limits).await?;
    let (c, addr_c) = start(&dir_c, "desktop", rate_limits).await?;
    steps.done(format!(
        "started laptop {} on {addr_a}, phone {} on {addr_b}, desktop {} on {addr_c}",
        a.device_id(),
        b.device_id(),
        c.device_id()
    ));
    a.set("trip", "title", "Lisbon in May")?;
    b.set("trip", "title", "Porto in June")?;
    c.set("trip", "budget", 1200)?;
    a.splice_text("trip", "notes", 0, 0, "Book the train. ")?;
    b.splice_text("trip", "notes", 0, 0, "Pack light. ")?;
    a.conv_append("chat", "laptop: shall we go?")?;
    b.conv_append("chat", "phone: yes!")?;
    c.conv_append("chat", "desktop: I'll book")?;
    steps.done("offline edits: conflicting titles, concurrent notes and chat messages".into());

    // 2. Pairing: laptop-phone and laptop-desktop with a code, phone-desktop
    //    out of band (device ids compared by eye).
    let code = a.pairing_code()?;
    b.pair_with(addr_a, &code).await?;
    let code2 = a.pairing_code()?;
    c.pair_with(addr_a, &code2).await?;
    b.add_peer(c.device_id(), "desktop", &[addr_c])?;
    c.add_peer(b.device_id(), "phone", &[addr_b])?;
    b.connect(addr_c, c.device_id()).await?;
    steps.done(format!("paired laptop-phone (code {code}), laptop-desktop (code {code2}), phone-desktop by device id"));

    let converged_1 = wait_converged(&[&a, &b, &c], Duration::from_secs(30)).await;
    let title = a.document("trip").and_then(|d| d.get("title").cloned());
    let conflict = a.core().field_values("trip", "title").len();
    steps.done(format!(
        "synced: {} (title: {} concurrent values, every device shows {})",
        if converged_1 {
            "all three converged"
        } else {
            "NOT converged"
        },
        conflict,
        title.map(|v| v.to_string()).unwrap_or_default()
    ));

    // 3. An artifact moves from laptop to phone, with a progress bar.
    let src = tmp.path().join("video.bin");
    write_pattern(&src, artifact_bytes)?;
    let id = a.put_artifact(&src, Some("video/mp4"))?;
    a.set("trip", "video", id.to_reference())?;
    let t = Instant::now();
    let mut bar = ProgressBar::new("laptop -> phone", artifact_bytes, live);
    b.fetch_artifact(&a.device_id(), id, |p| {
        bar.update(p.bytes_done);
    })
    .await?;
    let secs = t.elapsed().as_secs_f64().max(1e-6);
    let copy = tmp.path().join("video.copy");
    b.export_artifact(&id, &copy)?;
    let verified = files_equal(&src, &copy)?;
    steps.done(format!(
        "artifact {} ({:.1} MiB) laptop -> phone at {:.0} MiB/s, {}",
        &id.to_hex()[..12],
        artifact_bytes as f64 / 1048576.0,
        artifact_bytes as f64 / 1048576.0 / secs,
        if verified {
            "byte-identical, sealed at rest on both"
        } else {
            "MISMATCH"
        }
    ));

    // 4. The phone crashes (tasks killed, nothing flushed beyond what was
    //    committed), the others keep editing, the phone restarts from its
    //    directory and catches up.
    wait_converged(&[&a, &b, &c], Duration::from_secs(30)).await;
    let hash_before = b.state_hash();
    b.shutdown().await;
    drop(b);
    a.splice_text("trip", "notes", 0, 0, "Tickets booked! ")?;
    c.conv_append("chat", "desktop: done, see notes")?;
    let (b, _) = start(&dir_b, "phone", rate_limits).await?;
    let restart_recovered_state = b.state_hash() == hash_before && b.artifacts().has(&id);
    b.connect(addr_a, a.device_id()).await?;
    b.connect(addr_c, c.device_id()).await?;
    steps.done(format!(
        "phone stopped and restarted from disk: state {}",
        if restart_recovered_state {
            "intact (same state hash, artifact present)"
        } else {
            "LOST"
        }
    ));
    b.splice_text("trip", "notes", 0, 0, "[phone is back] ")?;
    let converged = wait_converged(&[&a, &b, &c], Duration::from_secs(30)).await;
    let same_values = a.document("trip") == b.document("trip")
        && b.document("trip") == c.document("trip")
        && a.conversation("chat") == c.conversation("chat")
        && a.text("trip", "notes") == b.text("trip", "notes");
    steps.done(format!(
        "after restart: {}; notes = {:?}",
        if converged && same_values {
            "converged"
        } else {
            "NOT converged"
        },
        b.text("trip", "notes").unwrap_or_default()
    ));

    let devices = [("laptop", &a), ("phone", &b), ("desktop", &c)]
        .iter()
        .map(|(name, n)| DemoDevice {
            name: name.to_string(),
            device_id: n.device_id().to_string(),
            state_hash: n.state_hash().to_hex(),
        })
        .collect();
    let ops_synced = [&a, &b, &c]
        .iter()
        .map(|n| n.metrics().snapshot().ops_applied)
        .sum();
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
    Ok(DemoReport {
        converged: converged && converged_1 && same_values,
        devices,
        ops_synced,
        artifact: DemoArtifact {
            id: id.to_hex(),
            bytes: artifact_bytes,
            verified,
            mib_per_sec: artifact_bytes as f64 / 1048576.0 / secs,
        },
        restart_recovered: restart_recovered_state && converged,
        steps: steps.lines,
    })
}

/// Writes `len` bytes of a deterministic, incompressible-looking pattern.
fn write_pattern(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

fn files_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
