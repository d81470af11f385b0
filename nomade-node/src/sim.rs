//! A deterministic simulator of many devices syncing, in one process.
//!
//! Each simulated device is a real [`Core`] with its store on disk, and each
//! connected pair runs the real sync state machines ([`Pusher`] and
//! [`Puller`]) on both sides, exchanging encoded frames. Only the network
//! and the clock are simulated: a link carries each direction of a sync
//! stream in order (as a QUIC stream does) after a seeded latency; a lost
//! packet delays what follows it on that stream by a retransmission
//! timeout; links fail (a partition splitting the devices in two for a
//! while) and devices crash (their `Core` dropped mid-sync, with whatever
//! frames were in flight, and opened again from disk). Everything random
//! comes from the seed, so a failing run is replayed by its seed.
//!
//! A run checks what a mesh of devices must guarantee: every device ends
//! with the same state hash and every operation; each device applied each
//! other device's operation exactly once; after a crash, everything the
//! device had acknowledged is still there. It reports the traffic:
//! operations sent against the minimum (each operation once to each other
//! device), bytes of sync frames per delivered operation, and the simulated
//! time until everything converged.
//!
//! What the simulation leaves out: QUIC itself (handshakes, packet headers,
//! duplicated datagrams, which QUIC discards), presence, and artifacts.
//!
//! ```
//! use nomade_node::sim::{run, SimConfig, Topology};
//!
//! let dir = tempfile::tempdir()?;
//! let config = SimConfig {
//!     devices: 3,
//!     topology: Topology::Line,
//!     edits_per_device: 20,
//!     ..SimConfig::default()
//! };
//! let report = run(&config, dir.path())?;
//! assert_eq!(report.ops_made, 60);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nomade_crdt::{LocalEdit, ReplicaConfig};
use nomade_wire::{EntityType, Envelope, MessageType, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::Core;
use crate::error::NodeError;
use crate::store::PeerRecord;
use crate::sync::{Puller, Pusher, Transmit, MAX_UNACKED_FRAMES};

/// Which devices are paired (and connect when they can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every device with every other.
    FullMesh,
    /// Each device with its neighbours: 0 - 1 - 2 - ... - n-1.
    Line,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many devices.
    pub devices: usize,
    /// Which are paired.
    pub topology: Topology,
    /// Field writes each device makes, at random times within
    /// `edit_window`.
    pub edits_per_device: usize,
    /// When the edits happen.
    pub edit_window: Duration,
    /// One-way latency of a link: uniform between the two.
    pub latency: (Duration, Duration),
    /// Probability that a frame's packet is lost: the frame, and what
    /// follows it on its stream, waits a retransmission timeout.
    pub loss: f64,
    /// Split the devices in two halves for a while during the edits (the
    /// links between the halves fail, then come back).
    pub partition: bool,
    /// Crash one device during the edits and open it again from disk a
    /// little later.
    pub crash: bool,
    /// Compress operation frames where that pays, as a node does for a
    /// peer that takes them (the `"lz4"` capability).
    pub compress: bool,
    /// Device 0 holds part of the documents (docs/PROTOCOL.md,
    /// "Subscriptions"): `doc-1*` at first, `doc-2` too from the middle of
    /// the edits on (its history filled in then); it edits only its own.
    /// The run checks that it ends equal to the others on those documents.
    pub partial: bool,
    /// Everything random comes from it.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 4,
            topology: Topology::FullMesh,
            edits_per_device: 50,
            edit_window: Duration::from_millis(500),
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
            loss: 0.0,
            partition: false,
            crash: false,
            compress: true,
            partial: false,
            seed: 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// The seed (replay a run with it).
    pub seed: u64,
    /// Operations the devices made.
    pub ops_made: u64,
    /// Operations pushed, counting every copy.
    pub ops_sent: u64,
    /// The least that could be sent: each operation once to each other device.
    pub ops_minimum: u64,
    /// Bytes of sync frames, both ways (operations, acknowledgements, requests).
    pub bytes: u64,
    /// The same bytes by message type (`"BATCHED_SYNC"`, `"ACK"`, ...).
    pub bytes_by_type: BTreeMap<&'static str, u64>,
    /// Simulated time from the start until every device holds everything.
    pub converged_after: Duration,
    /// Connections made (first ones and reconnections).
    pub connections: u64,
}

impl SimReport {
    /// Operations sent per operation needed (1.0 is the least possible).
    pub fn traffic_ratio(&self) -> f64 {
        self.ops_sent as f64 / self.ops_minimum.max(1) as f64
    }

    /// Bytes of sync frames per operation delivered to a device.
    pub fn bytes_per_delivered_op(&self) -> f64 {
        self.bytes as f64 / self.ops_minimum.max(1) as f64
    }
}

/// Why a run failed: what a mesh must guarantee and did not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The devices did not end with the same state.
    #[error(
        "seed {seed}: device {device} ended with {held} of {made} operations, or another state"
    )]
    Diverged {
        /// The seed.
        seed: u64,
        /// The device that differs.
        device: usize,
        /// Operations it holds.
        held: u64,
        /// Operations made in all.
        made: u64,
    },
    /// A device applied other devices' operations more (or fewer) times
    /// than there were.
    #[error(
        "seed {seed}: device {device} applied {applied} operations of others, {expected} were made"
    )]
    NotExactlyOnce {
        /// The seed.
        seed: u64,
        /// The device.
        device: usize,
        /// How many it applied.
        applied: u64,
        /// How many the others made.
        expected: u64,
    },
    /// After a crash, a device lacked something it had acknowledged.
    #[error("seed {seed}: device {device} lost operations it had acknowledged to device {to}")]
    LostAcknowledged {
        /// The seed.
        seed: u64,
        /// The device that crashed.
        device: usize,
        /// The device it had acknowledged them to.
        to: usize,
    },
    /// A state machine or the store failed.
    #[error("seed {seed}: device {device}: {error}")]
    Node {
        /// The seed.
        seed: u64,
        /// The device.
        device: usize,
        /// What failed.
        error: NodeError,
    },
    /// A frame sent to a device did not decode.
    #[error("seed {seed}: a frame to device {device} does not decode: {error}")]
    Frame {
        /// The seed.
        seed: u64,
        /// The device it was sent to.
        device: usize,
        /// Why.
        error: nomade_wire::DecodeError,
    },
    /// The simulation ran past its bound of events without settling.
    #[error("seed {seed}: still busy after {0} events", .events)]
    Stalled {
        /// The seed.
        seed: u64,
        /// Events processed.
        events: u64,
    },
}

/// The partial device's first subscription (see [`SimConfig::partial`]).
fn first_subscription() -> nomade_crdt::Subscription {
    let p = nomade_crdt::Pattern::parse("document:doc-1*");
    nomade_crdt::Subscription::Patterns(p.into_iter().collect())
}

/// The partial device's subscription from the middle of the edits on.
fn last_subscription() -> nomade_crdt::Subscription {
    let p = ["document:doc-1*", "document:doc-2"].map(nomade_crdt::Pattern::parse);
    nomade_crdt::Subscription::Patterns(p.into_iter().flatten().collect())
}

/// The simulated clock's start, in ms since the Unix epoch (a fixed time,
/// 2026-01-01, so that timestamps, and the bytes they take, do not depend
/// on when the run happens).
const SIM_EPOCH_MS: i64 = 1_767_225_600_000;

/// Most events a run processes before it is declared stalled.
const MAX_EVENTS: u64 = 50_000_000;

/// A simulated device.
struct Device {
    id: String,
    dir: PathBuf,
    /// `None` while crashed.
    core: Option<Arc<Core>>,
    /// Operations of others applied, over every life of the device.
    applied: u64,
    /// Operations pushed, over every life.
    sent: u64,
    /// Edits made so far.
    edits: u64,
    /// Operations it holds (the sum of its version vector), as of the last
    /// change of its store.
    holds: u64,
}

/// One direction of sync between two connected devices: the pusher on
/// `from`, the puller on `to`, and the times the last frame in each direction
/// arrives (a stream delivers in order).
struct Flow {
    from: usize,
    to: usize,
    pusher: Pusher,
    puller: Puller,
    to_puller_at: Duration,
    to_pusher_at: Duration,
    /// The earliest timer scheduled for this flow, if any.
    wake_at: Option<Duration>,
}

/// One end of a [`Flow`].
#[derive(Clone, Copy)]
enum Side {
    /// The device that pushes.
    Pusher,
    /// The device that pulls.
    Puller,
}

/// A pair of paired devices.
struct Link {
    ends: (usize, usize),
    /// Bumped each time the connection goes down: frames of an older
    /// connection are dropped.
    epoch: u64,
    /// The two flows while connected.
    flows: Option<[Flow; 2]>,
}

enum Event {
    Edit(usize),
    ToPuller {
        link: usize,
        flow: usize,
        epoch: u64,
        frame: Bytes,
    },
    ToPusher {
        link: usize,
        flow: usize,
        epoch: u64,
        frame: Bytes,
    },
    /// A flow's timer: the pusher's held operations may go, or the
    /// puller's `HAVE` that waited for its interval.
    Wake {
        link: usize,
        flow: usize,
        epoch: u64,
    },
    Crash(usize),
    Restart(usize),
    /// Device 0's subscription grows (see [`SimConfig::partial`]).
    Widen,
    Split,
    Heal,
}

struct Sim<'a> {
    config: &'a SimConfig,
    rng: StdRng,
    now: Duration,
    /// The simulated time as ms since the Unix epoch, [`SIM_EPOCH_MS`]
    /// at the start: every device's clock (operation timestamps, delivery
    /// lags), so that a run depends on its seed alone.
    clock_ms: Arc<AtomicI64>,
    start: Instant,
    queue: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    devices: Vec<Device>,
    links: Vec<Link>,
    /// Per device, the links it is an end of.
    links_of: Vec<Vec<usize>>,
    split: bool,
    /// Whether every device held every operation made, at the last check.
    converged: bool,
    bytes: u64,
    bytes_by_type: BTreeMap<&'static str, u64>,
    connections: u64,
    converged_after: Duration,
}

/// Runs one simulation with its devices' stores under `dir`.
pub fn run(config: &SimConfig, dir: &Path) -> Result<SimReport, SimError> {
    let mut sim = Sim::new(config, dir)?;
    sim.run()?;
    sim.check()?;
    let ops_made = sim.devices.iter().map(|d| d.edits).sum::<u64>();
    Ok(SimReport {
        seed: config.seed,
        ops_made,
        ops_sent: sim.devices.iter().map(|d| d.sent).sum(),
        ops_minimum: ops_made * (config.devices as u64).saturating_sub(1),
        bytes: sim.bytes,
        bytes_by_type: std::mem::take(&mut sim.bytes_by_type),
        converged_after: sim.converged_after,
        connections: sim.connections,
    })
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig, dir: &Path) -> Result<Sim<'a>, SimError> {
        let n = config.devices;
        let mut pairs = Vec::new();
        for a in 0..n {
            for b in a + 1..n {
                if config.topology == Topology::FullMesh || b == a + 1 {
                    pairs.push((a, b));
                }
            }
        }
        let mut sim = Sim {
            config,
            rng: StdRng::seed_from_u64(config.seed),
            now: Duration::ZERO,
            clock_ms: Arc::new(AtomicI64::new(SIM_EPOCH_MS)),
            start: Instant::now(),
            queue: BTreeMap::new(),
            seq: 0,
            devices: Vec::new(),
            links: pairs
                .iter()
                .map(|&ends| Link {
                    ends,
                    epoch: 0,
                    flows: None,
                })
                .collect(),
            links_of: (0..n)
                .map(|d| {
                    (0..pairs.len())
                        .filter(|&l| pairs[l].0 == d || pairs[l].1 == d)
                        .collect()
                })
                .collect(),
            split: false,
            converged: false,
            bytes: 0,
            bytes_by_type: BTreeMap::new(),
            connections: 0,
            converged_after: Duration::ZERO,
        };
        for d in 0..n {
            let id = format!("device-{d:03}");
            let dir = dir.join(&id);
            let core = sim.open(d, &dir, &id)?;
            for &(a, b) in &pairs {
                let other = match (a == d, b == d) {
                    (true, _) => b,
                    (_, true) => a,
                    _ => continue,
                };
                let peer = PeerRecord::new(&format!("device-{other:03}"));
                sim.node(d, core.store().put_peer(&peer).map_err(NodeError::from))?;
            }
            sim.devices.push(Device {
                id,
                dir,
                core: Some(core),
                applied: 0,
                sent: 0,
                edits: 0,
                holds: 0,
            });
        }
        let window = config.edit_window;
        if config.partial {
            let core = sim.core(0).ok_or_else(|| SimError::Node {
                seed: config.seed,
                device: 0,
                error: NodeError::NotFound("device 0".into()),
            })?;
            sim.node(0, core.set_subscription(first_subscription()).map(drop))?;
            sim.schedule(window / 2, Event::Widen);
        }
        for d in 0..n {
            for _ in 0..config.edits_per_device {
                let at = sim.random_duration(Duration::ZERO, window);
                sim.schedule(at, Event::Edit(d));
            }
        }
        if config.partition {
            let from = sim.random_duration(Duration::ZERO, window / 2);
            sim.schedule(from, Event::Split);
            sim.schedule(from + window / 2, Event::Heal);
        }
        if config.crash {
            let device = sim.rng.gen_range(0..n);
            let at = sim.random_duration(Duration::ZERO, window);
            sim.schedule(at, Event::Crash(device));
            sim.schedule(at + window / 4, Event::Restart(device));
        }
        for l in 0..sim.links.len() {
            sim.connect(l)?;
        }
        Ok(sim)
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn random_duration(&mut self, from: Duration, to: Duration) -> Duration {
        if to <= from {
            return from;
        }
        let nanos = self
            .rng
            .gen_range(from.as_nanos() as u64..=to.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }

    /// `result`, with a failure named by device.
    fn node<T>(&self, device: usize, result: Result<T, NodeError>) -> Result<T, SimError> {
        result.map_err(|error| SimError::Node {
            seed: self.config.seed,
            device,
            error,
        })
    }

    /// Opens device `device`'s core, on the simulated clock.
    fn open(&self, device: usize, dir: &Path, id: &str) -> Result<Arc<Core>, SimError> {
        let core = self.node(device, Core::open(dir, id, ReplicaConfig::default()))?;
        let clock = self.clock_ms.clone();
        core.set_time_source(Box::new(move || clock.load(Ordering::Relaxed)));
        Ok(core)
    }

    /// A frame sent to `device`, decoded as a peer decodes it.
    fn decode(&self, device: usize, frame: &[u8]) -> Result<Envelope, SimError> {
        Envelope::decode(frame).map_err(|error| SimError::Frame {
            seed: self.config.seed,
            device,
            error,
        })
    }

    fn core(&self, device: usize) -> Option<Arc<Core>> {
        self.devices.get(device).and_then(|d| d.core.clone())
    }

    /// Whether a link can be up now: both ends running, not split apart.
    fn reachable(&self, link: usize) -> bool {
        let (a, b) = self.links[link].ends;
        let half = self.config.devices / 2;
        let apart = self.split && ((a < half) != (b < half));
        !apart && self.core(a).is_some() && self.core(b).is_some()
    }

    /// Connects a link if it can be up and is not: each side's puller sends
    /// its request.
    fn connect(&mut self, link: usize) -> Result<(), SimError> {
        if self.links[link].flows.is_some() || !self.reachable(link) {
            return Ok(());
        }
        self.connections += 1;
        let (a, b) = self.links[link].ends;
        let flow = |from: usize, to: usize| Flow {
            from,
            to,
            pusher: Pusher::new(self.devices[to].id.clone(), MAX_UNACKED_FRAMES)
                .compressing(self.config.compress),
            puller: Puller::announcing(self.devices[from].id.clone()).subscribing(true),
            to_puller_at: self.now,
            to_pusher_at: self.now,
            wake_at: None,
        };
        let mut flows = [flow(a, b), flow(b, a)];
        let requests: Vec<(usize, Envelope)> = flows
            .iter_mut()
            .filter_map(|f| self.core(f.to).map(|core| (f.to, f.puller.request(&core))))
            .collect();
        self.links[link].flows = Some(flows);
        for (f, (to, request)) in requests.into_iter().enumerate() {
            self.send(link, f, false, vec![Transmit::message(request)], to)?;
        }
        // Each end pulls from one more device: its other pullers say so.
        self.device_changed(a)?;
        self.device_changed(b)
    }

    fn disconnect(&mut self, link: usize) {
        let l = &mut self.links[link];
        if l.flows.take().is_some() {
            l.epoch += 1;
        }
    }

    fn flow(&self, link: usize, flow: usize) -> Option<&Flow> {
        self.links[link].flows.as_ref().map(|f| &f[flow])
    }

    fn flow_mut(&mut self, link: usize, flow: usize) -> Option<&mut Flow> {
        self.links[link].flows.as_mut().map(|f| &mut f[flow])
    }

    /// Puts frames on a flow's stream: towards its puller (`to_puller`) or
    /// back to its pusher. Each arrives after a latency, and after the
    /// previous frame in that direction; a lost packet adds a retransmission
    /// timeout.
    fn send(
        &mut self,
        link: usize,
        flow: usize,
        to_puller: bool,
        out: Vec<Transmit>,
        device: usize,
    ) -> Result<(), SimError> {
        let (min, max) = self.config.latency;
        let epoch = self.links[link].epoch;
        for t in out {
            let frame = self.node(device, t.into_frame().map_err(NodeError::from))?;
            self.bytes += frame.len() as u64;
            let name = frame
                .get(1..3)
                .and_then(|code| {
                    let code = u16::from_be_bytes([code[0], code[1]]);
                    MessageType::from_code(code & !nomade_wire::COMPRESSED)
                })
                .map_or("unknown", |t| t.name());
            *self.bytes_by_type.entry(name).or_default() += frame.len() as u64;
            let mut at = self.now + self.random_duration(min, max);
            if self.config.loss > 0.0 && self.rng.gen_bool(self.config.loss.min(1.0)) {
                at += max * 3;
            }
            let Some(f) = self.flow_mut(link, flow) else {
                return Ok(());
            };
            let last = if to_puller {
                &mut f.to_puller_at
            } else {
                &mut f.to_pusher_at
            };
            at = at.max(*last);
            *last = at;
            let event = if to_puller {
                Event::ToPuller {
                    link,
                    flow,
                    epoch,
                    frame,
                }
            } else {
                Event::ToPusher {
                    link,
                    flow,
                    epoch,
                    frame,
                }
            };
            self.schedule(at, event);
        }
        Ok(())
    }

    /// A flow's end on `side`: the device and its core, if the flow is up
    /// and the device running.
    fn end(&self, link: usize, flow: usize, side: Side) -> Option<(usize, Arc<Core>)> {
        let f = self.flow(link, flow)?;
        let device = match side {
            Side::Pusher => f.from,
            Side::Puller => f.to,
        };
        Some((device, self.core(device)?))
    }

    /// A frame arriving at a flow's `side`, decoded, with the device and its
    /// core; `None` when its connection or its device is gone.
    fn arrival(
        &self,
        link: usize,
        flow: usize,
        epoch: u64,
        side: Side,
        frame: &[u8],
    ) -> Result<Option<(usize, Arc<Core>, Envelope)>, SimError> {
        if self.links[link].epoch != epoch {
            return Ok(None);
        }
        let Some((device, core)) = self.end(link, flow, side) else {
            return Ok(None);
        };
        let env = self.decode(device, frame)?;
        Ok(Some((device, core, env)))
    }

    /// The simulated clock as an instant, for the state machines.
    fn instant(&self) -> Instant {
        self.start + self.now
    }

    /// Lets the state machines of `device` act on what changed: every
    /// pusher on it sends what it has, every puller on it announces what it
    /// holds; then their timers are set.
    fn device_changed(&mut self, device: usize) -> Result<(), SimError> {
        if let Some(core) = self.core(device) {
            self.devices[device].holds = core.version_vector().values().sum();
        }
        for i in 0..self.links_of[device].len() {
            let link = self.links_of[device][i];
            for flow in 0..2 {
                match self.flow(link, flow).map(|f| (f.from, f.to)) {
                    Some((from, _)) if from == device => self.push(link, flow)?,
                    Some((_, to)) if to == device => self.announce(link, flow)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Lets a flow's pusher send what it has.
    fn push(&mut self, link: usize, flow: usize) -> Result<(), SimError> {
        let Some((device, core)) = self.end(link, flow, Side::Pusher) else {
            return Ok(());
        };
        let now = self.instant();
        loop {
            let mut out = Vec::new();
            let polled = match self.flow_mut(link, flow) {
                Some(f) => f.pusher.poll(&core, now, &mut out),
                None => return Ok(()),
            };
            let more = self.node(device, polled)?;
            self.send(link, flow, true, out, device)?;
            if !more {
                break;
            }
        }
        let timeout = self.flow(link, flow).and_then(|f| f.pusher.poll_timeout());
        self.set_timer(link, flow, timeout);
        Ok(())
    }

    /// Lets a flow's puller announce what its device holds.
    fn announce(&mut self, link: usize, flow: usize) -> Result<(), SimError> {
        let Some((device, core)) = self.end(link, flow, Side::Puller) else {
            return Ok(());
        };
        let now = self.instant();
        let have = self
            .flow_mut(link, flow)
            .and_then(|f| f.puller.poll_have(&core, now));
        if let Some(env) = have {
            self.send(link, flow, false, vec![Transmit::message(env)], device)?;
        }
        let timeout = self.flow(link, flow).and_then(|f| f.puller.have_timeout());
        self.set_timer(link, flow, timeout);
        Ok(())
    }

    /// Schedules a flow's timer at `at`, unless one as early is pending.
    fn set_timer(&mut self, link: usize, flow: usize, at: Option<Instant>) {
        let Some(at) = at else { return };
        let at = at.saturating_duration_since(self.start).max(self.now);
        let epoch = self.links[link].epoch;
        let Some(f) = self.flow_mut(link, flow) else {
            return;
        };
        if f.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        f.wake_at = Some(at);
        self.schedule(at, Event::Wake { link, flow, epoch });
    }

    fn run(&mut self) -> Result<(), SimError> {
        let mut events = 0u64;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            events += 1;
            if events > MAX_EVENTS {
                return Err(SimError::Stalled {
                    seed: self.config.seed,
                    events,
                });
            }
            self.now = at;
            self.clock_ms.store(
                SIM_EPOCH_MS.saturating_add(at.as_millis() as i64),
                Ordering::Relaxed,
            );
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Edit(d) => {
                let Some(core) = self.core(d) else {
                    // A crashed device makes no edits: this one is made
                    // after its restart instead.
                    let later = self.now + self.config.edit_window / 4;
                    self.schedule(later, Event::Edit(d));
                    return Ok(());
                };
                let n = self.devices[d].edits;
                let edit = LocalEdit::Set {
                    key: format!("k{}", n % 7),
                    value: Value::Int(n as i64),
                };
                let doc = if self.config.partial && d == 0 {
                    format!("doc-1{}", n % 10)
                } else {
                    format!("doc-{}", n % 20)
                };
                self.node(d, core.edit(EntityType::Document, &doc, edit))?;
                self.devices[d].edits += 1;
                self.converged = false;
                self.device_changed(d)?;
            }
            Event::ToPuller {
                link,
                flow,
                epoch,
                frame,
            } => {
                let Some((to, core, env)) =
                    self.arrival(link, flow, epoch, Side::Puller, &frame)?
                else {
                    return Ok(());
                };
                let mut out = Vec::new();
                let received = match self.flow_mut(link, flow) {
                    Some(f) => f.puller.receive(&core, vec![env], &mut out),
                    None => return Ok(()),
                };
                self.node(to, received)?;
                let out = out.into_iter().map(Transmit::message).collect();
                self.send(link, flow, false, out, to)?;
                self.device_changed(to)?;
                self.note_convergence();
            }
            Event::ToPusher {
                link,
                flow,
                epoch,
                frame,
            } => {
                let Some((from, core, env)) =
                    self.arrival(link, flow, epoch, Side::Pusher, &frame)?
                else {
                    return Ok(());
                };
                let mut out = Vec::new();
                let now = self.instant();
                let received = match self.flow_mut(link, flow) {
                    Some(f) => f.pusher.receive(&core, env, now, &mut out),
                    None => return Ok(()),
                };
                self.node(from, received)?;
                self.send(link, flow, true, out, from)?;
                self.push(link, flow)?;
            }
            Event::Wake { link, flow, epoch } => {
                if self.links[link].epoch != epoch {
                    return Ok(());
                }
                let now = self.now;
                match self.flow_mut(link, flow) {
                    Some(f) if f.wake_at.is_some_and(|w| w <= now) => f.wake_at = None,
                    _ => return Ok(()),
                }
                self.push(link, flow)?;
                self.announce(link, flow)?;
            }
            Event::Crash(d) => {
                if let Some(core) = self.devices[d].core.take() {
                    let m = core.metrics();
                    self.devices[d].applied += m.ops_applied.load(Ordering::Relaxed);
                    self.devices[d].sent += m.ops_sent.load(Ordering::Relaxed);
                }
                for i in 0..self.links_of[d].len() {
                    self.disconnect(self.links_of[d][i]);
                }
            }
            Event::Restart(d) => {
                let (dir, id) = (self.devices[d].dir.clone(), self.devices[d].id.clone());
                let core = self.open(d, &dir, &id)?;
                // Nothing it acknowledged is lost.
                let vv = core.version_vector();
                for (other, dev) in self.devices.iter().enumerate() {
                    let Some(c) = &dev.core else { continue };
                    let acked = c.acked_by(&self.devices[d].id);
                    if !crate::store::covers(&vv, &acked) {
                        return Err(SimError::LostAcknowledged {
                            seed: self.config.seed,
                            device: d,
                            to: other,
                        });
                    }
                }
                self.devices[d].core = Some(core);
                for i in 0..self.links_of[d].len() {
                    self.connect(self.links_of[d][i])?;
                }
            }
            Event::Widen => {
                let Some(core) = self.core(0) else {
                    // Crashed: it grows once it is back.
                    let later = self.now + self.config.edit_window / 8;
                    self.schedule(later, Event::Widen);
                    return Ok(());
                };
                self.node(0, core.set_subscription(last_subscription()).map(drop))?;
                // Its pulls start again with the new subscription, as a
                // node's do.
                for i in 0..self.links_of[0].len() {
                    let link = self.links_of[0][i];
                    self.disconnect(link);
                    self.connect(link)?;
                }
            }
            Event::Split => {
                self.split = true;
                for l in 0..self.links.len() {
                    if !self.reachable(l) {
                        self.disconnect(l);
                    }
                }
            }
            Event::Heal => {
                self.split = false;
                for l in 0..self.links.len() {
                    self.connect(l)?;
                }
            }
        }
        Ok(())
    }

    /// Records the time at which every device held every operation made.
    fn note_convergence(&mut self) {
        let made: u64 = self.devices.iter().map(|d| d.edits).sum();
        let all = self.devices.iter().all(|d| {
            d.core
                .as_ref()
                .is_some_and(|c| d.holds == made && !c.refilling())
        });
        if all && !self.converged {
            self.converged_after = self.now;
        }
        self.converged = all;
    }

    /// What the run must guarantee, once everything settled.
    fn check(&mut self) -> Result<(), SimError> {
        let seed = self.config.seed;
        let made: u64 = self.devices.iter().map(|d| d.edits).sum();
        let mut hash = None;
        // What the partial device holds, as a device holding everything
        // holds it.
        let part = last_subscription();
        let part_hash = self
            .devices
            .iter()
            .skip(1)
            .find_map(|d| d.core.as_ref())
            .map(|c| c.state_hash_of(&part));
        for (d, dev) in self.devices.iter_mut().enumerate() {
            let Some(core) = dev.core.take() else {
                continue;
            };
            let held = core.version_vector().values().sum::<u64>();
            let partial = self.config.partial && d == 0;
            let same = if partial {
                !core.refilling() && Some(core.state_hash_of(&part)) == part_hash
            } else {
                let h = core.state_hash();
                *hash.get_or_insert(h) == h
            };
            if held != made || !same {
                return Err(SimError::Diverged {
                    seed,
                    device: d,
                    held,
                    made,
                });
            }
            if partial {
                // Skips count counters, not operations: not exactly once.
                continue;
            }
            let m = core.metrics();
            dev.applied += m.ops_applied.load(Ordering::Relaxed);
            dev.sent += m.ops_sent.load(Ordering::Relaxed);
            let expected = made - dev.edits;
            if dev.applied != expected {
                return Err(SimError::NotExactlyOnce {
                    seed,
                    device: d,
                    applied: dev.applied,
                    expected,
                });
            }
        }
        Ok(())
    }
}
