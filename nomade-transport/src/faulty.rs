//! An in-process faulty network for tests: a [`FaultySocket`] wraps the
//! normal UDP socket of quinn and drops, duplicates, delays and reorders
//! datagrams, independently in each direction, from a seeded RNG; a
//! [`Partition`] switch cuts every datagram in both directions while set.
//!
//! This machine's kernel has no `netem`, so this is how delay, reordering and
//! duplication reach QUIC (see `DESIGN.md`, known hazards). The socket
//! announces `max_transmit_segments() == 1`, so every send is one datagram and
//! every fault decision applies to exactly one QUIC packet.
//!
//! The decisions are a pure function of the seed and of the datagram's rank
//! in its direction ([`FaultInjector`], sans-IO); which packet gets which rank
//! depends on scheduling, so a seed replays the same fault pattern, not the
//! same byte-exact run.
//!
//! ```
//! use nomade_transport::faulty::{Fate, FaultConfig, FaultInjector};
//!
//! let lossy = FaultConfig { loss: 0.25, seed: 7, ..FaultConfig::default() };
//! let mut injector = FaultInjector::new(lossy);
//! let dropped = (0..10_000).filter(|_| injector.decide() == Fate::Drop).count();
//! assert!((2_000..3_000).contains(&dropped));
//! ```

use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Extra time a reordered datagram is held back (plus a random share of the
/// jitter), so that the datagrams sent after it overtake it.
pub const REORDER_HOLD: Duration = Duration::from_millis(5);

/// The faults of one direction. Probabilities are in `0.0..=1.0` (values
/// outside are clamped); the default is a perfect network.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a delivered datagram is delivered twice (the copy
    /// with its own jitter).
    pub duplicate: f64,
    /// Probability that a delivered datagram is held back by
    /// [`REORDER_HOLD`] plus jitter, so later ones overtake it.
    pub reorder: f64,
    /// Fixed delay added to every datagram.
    pub delay: Duration,
    /// Uniformly random extra delay in `0..=jitter` (also reorders).
    pub jitter: Duration,
    /// Seed of the decisions.
    pub seed: u64,
    /// The link's rate in bytes per second (`None`: as fast as the host):
    /// datagrams cross one after another, each taking `len / rate`, and
    /// wait in the link's queue meanwhile, as behind a slow router.
    pub rate: Option<u64>,
    /// With `rate`: the longest a datagram waits in the link's queue; one
    /// that would wait longer is dropped (the router's buffer is full).
    /// `None`: the queue has no end.
    pub queue_limit: Option<Duration>,
}

/// A slow link's bottleneck (see [`FaultConfig::rate`]), sans-IO: when
/// each datagram is through, or that it is dropped at a full queue.
///
/// ```
/// use std::time::{Duration, Instant};
/// use nomade_transport::faulty::Bottleneck;
///
/// // 1,000 bytes per second, at most 1.5 s of queue.
/// let mut link = Bottleneck::new(1_000, Some(Duration::from_millis(1_500)));
/// let now = Instant::now();
/// assert_eq!(link.admit(now, 500), Some(Duration::from_millis(500)));
/// assert_eq!(link.admit(now, 500), Some(Duration::from_millis(1_000)));
/// assert_eq!(link.admit(now, 1_000), Some(Duration::from_millis(2_000)));
/// assert_eq!(link.admit(now, 1), None, "would wait 2 s");
/// ```
#[derive(Debug, Clone)]
pub struct Bottleneck {
    bytes_per_sec: u64,
    queue_limit: Option<Duration>,
    busy_until: Option<std::time::Instant>,
}

impl Bottleneck {
    /// A link of `bytes_per_sec` (at least 1) whose queue holds at most
    /// `queue_limit` of waiting.
    pub fn new(bytes_per_sec: u64, queue_limit: Option<Duration>) -> Self {
        Bottleneck {
            bytes_per_sec: bytes_per_sec.max(1),
            queue_limit,
            busy_until: None,
        }
    }

    /// A datagram of `len` bytes enters the link at `now`: how long until
    /// it is through (its wait in the queue, then its own crossing), or
    /// `None` when the queue is full and it is dropped.
    pub fn admit(&mut self, now: std::time::Instant, len: usize) -> Option<Duration> {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if self.queue_limit.is_some_and(|q| start - now > q) {
            return None;
        }
        let done = start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        self.busy_until = Some(done);
        Some(done - now)
    }
}

impl FaultConfig {
    /// The bottleneck of this direction's link, if its rate is limited.
    fn bottleneck(&self) -> Option<Bottleneck> {
        self.rate
            .map(|rate| Bottleneck::new(rate, self.queue_limit))
    }

    /// A direction that loses `loss` of its datagrams and nothing else.
    pub fn lossy(loss: f64, seed: u64) -> Self {
        FaultConfig {
            loss,
            seed,
            ..FaultConfig::default()
        }
    }
}

/// Counters of what a [`FaultySocket`] did, shared by clones (read them
/// while the endpoint runs).
#[derive(Debug, Clone, Default)]
pub struct FaultStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    seen: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    duplicated: [AtomicU64; 2],
    reordered: [AtomicU64; 2],
    partitioned: [AtomicU64; 2],
    overflowed: [AtomicU64; 2],
}

/// A snapshot of [`FaultStats`] for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that met the fault injector.
    pub seen: u64,
    /// Dropped by the loss probability.
    pub dropped: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Held back to be overtaken.
    pub reordered: u64,
    /// Dropped because the [`Partition`] was set.
    pub partitioned: u64,
    /// Dropped at the slow link's full queue ([`FaultConfig::queue_limit`]).
    pub overflowed: u64,
}

const OUT: usize = 0;
const IN: usize = 1;

impl FaultStats {
    fn count(&self, dir: usize, fate: &Fate) {
        let s = &self.0;
        s.seen[dir].fetch_add(1, Ordering::Relaxed);
        match fate {
            Fate::Drop => {
                s.dropped[dir].fetch_add(1, Ordering::Relaxed);
            }
            Fate::Deliver {
                reordered,
                duplicate,
                ..
            } => {
                if *reordered {
                    s.reordered[dir].fetch_add(1, Ordering::Relaxed);
                }
                if duplicate.is_some() {
                    s.duplicated[dir].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn partitioned(&self, dir: usize) {
        self.0.partitioned[dir].fetch_add(1, Ordering::Relaxed);
    }

    fn overflowed(&self, dir: usize) {
        self.0.overflowed[dir].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, dir: usize) -> DirectionStats {
        let s = &self.0;
        DirectionStats {
            seen: s.seen[dir].load(Ordering::Relaxed),
            dropped: s.dropped[dir].load(Ordering::Relaxed),
            duplicated: s.duplicated[dir].load(Ordering::Relaxed),
            reordered: s.reordered[dir].load(Ordering::Relaxed),
            partitioned: s.partitioned[dir].load(Ordering::Relaxed),
            overflowed: s.overflowed[dir].load(Ordering::Relaxed),
        }
    }

    /// What happened to the datagrams this socket sent.
    pub fn outgoing(&self) -> DirectionStats {
        self.snapshot(OUT)
    }

    /// What happened to the datagrams this socket received.
    pub fn incoming(&self) -> DirectionStats {
        self.snapshot(IN)
    }
}

/// The faults of both directions of one socket, and where to count them.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Faults of the datagrams this socket sends.
    pub outgoing: FaultConfig,
    /// Faults of the datagrams this socket receives.
    pub incoming: FaultConfig,
    /// Counters, shared with whoever keeps a clone.
    pub stats: FaultStats,
    /// The rate-limited links of both directions, shared by every socket
    /// built from clones of this plan: a device's main and bulk sockets
    /// ([`crate::Transport::bind_faulty`]) sit behind one link, as they
    /// would behind one router.
    pub links: SharedLinks,
}

/// One rate-limited link, shared by the sockets behind it.
type Link = Arc<Mutex<Bottleneck>>;

/// The links of a [`FaultPlan`], made by the first socket built from it
/// and shared by the others. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct SharedLinks(Arc<Mutex<Option<LinkPair>>>);

/// The outgoing and incoming links (each `None` when not rate-limited).
type LinkPair = (Option<Link>, Option<Link>);

impl SharedLinks {
    /// The outgoing and incoming links of `plan`.
    fn of(&self, plan: &FaultPlan) -> LinkPair {
        let mut made = self.0.lock().unwrap_or_else(|e| e.into_inner());
        made.get_or_insert_with(|| {
            let link = |c: &FaultConfig| c.bottleneck().map(|b| Arc::new(Mutex::new(b)));
            (link(&plan.outgoing), link(&plan.incoming))
        })
        .clone()
    }
}

impl FaultPlan {
    /// The same faults both ways; the incoming direction gets a seed derived
    /// from `config.seed` so the two directions are not correlated.
    pub fn symmetric(config: FaultConfig) -> Self {
        FaultPlan {
            outgoing: config,
            incoming: FaultConfig {
                seed: config.seed ^ 0x9e37_79b9_7f4a_7c15,
                ..config
            },
            stats: FaultStats::default(),
            links: SharedLinks::default(),
        }
    }
}

/// A runtime switch: while set, every datagram in both directions is dropped
/// (a cable pulled); and a list of addresses cut off alone (a path between
/// two devices broken, others working). Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct Partition(Arc<PartitionState>);

#[derive(Debug, Default)]
struct PartitionState {
    all: AtomicBool,
    /// Whether `from` is not empty (read without the lock).
    some: AtomicBool,
    from: Mutex<std::collections::HashSet<SocketAddr>>,
}

impl Partition {
    /// A switch, not set.
    pub fn new() -> Self {
        Partition::default()
    }

    /// Cuts (`true`) or restores (`false`) the network.
    pub fn set(&self, cut: bool) {
        self.0.all.store(cut, Ordering::SeqCst);
    }

    /// Whether the network is cut.
    pub fn is_set(&self) -> bool {
        self.0.all.load(Ordering::SeqCst)
    }

    /// Cuts (`true`) or restores (`false`) the path to and from `peer`
    /// alone.
    pub fn cut_from(&self, peer: SocketAddr, cut: bool) {
        let mut from = self.0.from.lock().unwrap_or_else(|e| e.into_inner());
        if cut {
            from.insert(peer);
        } else {
            from.remove(&peer);
        }
        self.0.some.store(!from.is_empty(), Ordering::SeqCst);
    }

    /// Whether datagrams to or from `peer` are dropped now.
    pub fn blocks(&self, peer: SocketAddr) -> bool {
        self.is_set()
            || (self.0.some.load(Ordering::SeqCst)
                && self
                    .0
                    .from
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&peer))
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is lost.
    Drop,
    /// It arrives after `delay`.
    Deliver {
        /// When it arrives, from now.
        delay: Duration,
        /// Whether it was held back to be overtaken.
        reordered: bool,
        /// When its duplicate arrives, if it is duplicated.
        duplicate: Option<Duration>,
    },
}

/// The sans-IO decisions of one direction: a seeded RNG turned into [`Fate`]s.
/// Every decision draws the same number of values, so the n-th datagram's
/// fate depends only on the seed and n.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    config: FaultConfig,
    rng: StdRng,
}

impl FaultInjector {
    /// An injector seeded with `config.seed`.
    pub fn new(config: FaultConfig) -> Self {
        FaultInjector {
            config,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Whether this injector never changes anything.
    pub fn is_transparent(&self) -> bool {
        let c = &self.config;
        c.loss <= 0.0
            && c.duplicate <= 0.0
            && c.reorder <= 0.0
            && c.delay.is_zero()
            && c.jitter.is_zero()
            && c.rate.is_none()
    }

    /// The fate of the next datagram.
    pub fn decide(&mut self) -> Fate {
        let c = self.config;
        let lost = self.rng.gen::<f64>() < c.loss;
        let dup = self.rng.gen::<f64>() < c.duplicate;
        let reordered = self.rng.gen::<f64>() < c.reorder;
        let j1: f64 = self.rng.gen();
        let j2: f64 = self.rng.gen();
        if lost {
            return Fate::Drop;
        }
        let mut delay = c.delay + c.jitter.mul_f64(j1);
        if reordered {
            delay += REORDER_HOLD;
        }
        Fate::Deliver {
            delay,
            reordered,
            duplicate: dup.then(|| c.delay + c.jitter.mul_f64(j2)),
        }
    }
}

/// A datagram waiting for its delivery time.
struct Held {
    due: Instant,
    seq: u64,
    peer: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct Outgoing {
    injector: FaultInjector,
    seq: u64,
    bottleneck: Option<Link>,
}

struct Incoming {
    injector: FaultInjector,
    seq: u64,
    bottleneck: Option<Link>,
    held: BinaryHeap<Held>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    fn hold(&mut self, due: Instant, meta: &RecvMeta, data: &[u8]) {
        self.seq += 1;
        self.held.push(Held {
            due,
            seq: self.seq,
            peer: meta.addr,
            local_ip: meta.dst_ip,
            ecn: meta.ecn,
            data: data.to_vec(),
        });
    }
}

/// A quinn socket that injects faults; build one with [`FaultySocket::new`]
/// and hand it to `quinn::Endpoint::new_with_abstract_socket` (or use
/// `Transport::bind_faulty`).
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    partition: Partition,
    stats: FaultStats,
    outgoing: Mutex<Outgoing>,
    incoming: Mutex<Incoming>,
    delayed: mpsc::UnboundedSender<Held>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .field("partitioned", &self.partition.is_set())
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner` (from `quinn::Runtime::wrap_udp_socket`). Must be called
    /// inside a tokio runtime: a task sends the delayed datagrams.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, plan: FaultPlan, partition: Partition) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_delayed(inner.clone(), partition.clone(), rx));
        let (outgoing_link, incoming_link) = plan.links.of(&plan);
        FaultySocket {
            inner,
            partition,
            stats: plan.stats,
            outgoing: Mutex::new(Outgoing {
                bottleneck: outgoing_link,
                injector: FaultInjector::new(plan.outgoing),
                seq: 0,
            }),
            incoming: Mutex::new(Incoming {
                bottleneck: incoming_link,
                injector: FaultInjector::new(plan.incoming),
                seq: 0,
                held: BinaryHeap::new(),
                timer: None,
            }),
            delayed: tx,
        }
    }

    fn send_now(&self, t: &Transmit<'_>, contents: &[u8]) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: t.destination,
            ecn: t.ecn,
            contents,
            segment_size: None,
            src_ip: t.src_ip,
        })
    }

    fn send_later(&self, t: &Transmit<'_>, contents: &[u8], delay: Duration, seq: u64) {
        let held = Held {
            due: Instant::now() + delay,
            seq,
            peer: t.destination,
            local_ip: t.src_ip,
            ecn: t.ecn,
            data: contents.to_vec(),
        };
        // The task ends only when this socket is dropped.
        let _ = self.delayed.send(held);
    }
}

/// Sends the delayed outgoing datagrams when they are due.
async fn send_delayed(
    socket: Arc<dyn AsyncUdpSocket>,
    partition: Partition,
    mut rx: mpsc::UnboundedReceiver<Held>,
) {
    let mut heap: BinaryHeap<Held> = BinaryHeap::new();
    let mut poller = socket.clone().create_io_poller();
    loop {
        let next = heap
            .peek()
            .map(|h| h.due)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            item = rx.recv() => match item {
                Some(h) => heap.push(h),
                None => return,
            },
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                while heap.peek().is_some_and(|h| h.due <= now) {
                    let Some(h) = heap.pop() else { break };
                    if partition.blocks(h.peer) {
                        continue;
                    }
                    let t = Transmit {
                        destination: h.peer,
                        ecn: h.ecn,
                        contents: &h.data,
                        segment_size: None,
                        src_ip: h.local_ip,
                    };
                    loop {
                        match socket.try_send(&t) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                if let Err(e) = std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await {
                                    tracing::debug!(error = %e, "faulty socket: delayed send failed");
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "faulty socket: delayed send failed");
                                break;
                            }
                            Ok(()) => break,
                        }
                    }
                }
            }
        }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            if self.partition.blocks(transmit.destination) {
                self.stats.partitioned(OUT);
                continue;
            }
            let (fate, seq, through) = {
                let mut out = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
                out.seq += 1;
                let fate = out.injector.decide();
                let now = std::time::Instant::now();
                let through = match (&fate, out.bottleneck.as_ref()) {
                    (Fate::Deliver { .. }, Some(link)) => link
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .admit(now, datagram.len()),
                    _ => Some(Duration::ZERO),
                };
                (fate, out.seq, through)
            };
            self.stats.count(OUT, &fate);
            let Fate::Deliver {
                delay, duplicate, ..
            } = fate
            else {
                continue;
            };
            let Some(through) = through else {
                self.stats.overflowed(OUT);
                continue;
            };
            let delay = delay + through;
            if delay.is_zero() {
                // WouldBlock makes quinn retry the transmit later (a new decision).
                self.send_now(transmit, datagram)?;
            } else {
                self.send_later(transmit, datagram, delay, seq);
            }
            match duplicate {
                Some(d) if d.is_zero() => {
                    // A blocked duplicate is just not duplicated.
                    let _ = self.send_now(transmit, datagram);
                }
                Some(d) => self.send_later(transmit, datagram, d, seq),
                None => {}
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Hand over what is due.
            let now = Instant::now();
            let mut n = 0;
            while n < bufs.len().min(meta.len()) {
                if st.held.peek().is_none_or(|h| h.due > now) {
                    break;
                }
                let Some(h) = st.held.pop() else { break };
                if self.partition.blocks(h.peer) {
                    self.stats.partitioned(IN);
                    continue;
                }
                let len = h.data.len().min(bufs[n].len());
                bufs[n][..len].copy_from_slice(&h.data[..len]);
                meta[n] = RecvMeta {
                    addr: h.peer,
                    len,
                    stride: len,
                    ecn: h.ecn,
                    dst_ip: h.local_ip,
                };
                n += 1;
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // Take in what the network brought.
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => {
                    let now = Instant::now();
                    for (m, buf) in meta.iter().zip(bufs.iter()).take(count) {
                        let data = &buf[..m.len.min(buf.len())];
                        let stride = if m.stride == 0 { m.len } else { m.stride }.max(1);
                        for datagram in data.chunks(stride) {
                            if self.partition.blocks(m.addr) {
                                self.stats.partitioned(IN);
                                continue;
                            }
                            let fate = st.injector.decide();
                            self.stats.count(IN, &fate);
                            if let Fate::Deliver {
                                delay, duplicate, ..
                            } = fate
                            {
                                let through = match st.bottleneck.as_ref() {
                                    Some(link) => link
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .admit(now.into_std(), datagram.len()),
                                    None => Some(Duration::ZERO),
                                };
                                let Some(through) = through else {
                                    self.stats.overflowed(IN);
                                    continue;
                                };
                                st.hold(now + delay + through, m, datagram);
                                if let Some(d) = duplicate {
                                    st.hold(now + d, m, datagram);
                                }
                            }
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let Some(due) = st.held.peek().map(|h| h.due) else {
                        return Poll::Pending;
                    };
                    let timer = st
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    timer.as_mut().reset(due);
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fates(config: FaultConfig, n: usize) -> Vec<Fate> {
        let mut inj = FaultInjector::new(config);
        (0..n).map(|_| inj.decide()).collect()
    }

    #[test]
    fn a_perfect_network_delivers_everything_at_once() {
        let cfg = FaultConfig::default();
        assert!(FaultInjector::new(cfg).is_transparent());
        for f in fates(cfg, 10_000) {
            assert_eq!(
                f,
                Fate::Deliver {
                    delay: Duration::ZERO,
                    reordered: false,
                    duplicate: None
                }
            );
        }
    }

    #[test]
    fn loss_drops_about_the_configured_share() {
        for (loss, lo, hi) in [
            (0.1, 900, 1_100),
            (0.3, 2_800, 3_200),
            (1.0, 10_000, 10_000),
        ] {
            let dropped = fates(FaultConfig::lossy(loss, 42), 10_000)
                .iter()
                .filter(|f| **f == Fate::Drop)
                .count();
            assert!((lo..=hi).contains(&dropped), "loss {loss}: {dropped}");
        }
    }

    #[test]
    fn duplication_reordering_and_jitter_follow_the_config() {
        let cfg = FaultConfig {
            duplicate: 0.2,
            reorder: 0.1,
            delay: Duration::from_millis(3),
            jitter: Duration::from_millis(4),
            seed: 9,
            ..FaultConfig::default()
        };
        let all = fates(cfg, 10_000);
        let (mut dups, mut reord) = (0, 0);
        for f in &all {
            let Fate::Deliver {
                delay,
                reordered,
                duplicate,
            } = *f
            else {
                panic!("nothing may be lost: {f:?}");
            };
            let max = Duration::from_millis(7)
                + if reordered {
                    REORDER_HOLD
                } else {
                    Duration::ZERO
                };
            assert!(
                delay >= Duration::from_millis(3) && delay <= max,
                "{delay:?}"
            );
            if reordered {
                reord += 1;
                assert!(delay >= Duration::from_millis(3) + REORDER_HOLD);
            }
            if let Some(d) = duplicate {
                dups += 1;
                assert!(d >= Duration::from_millis(3) && d <= Duration::from_millis(7));
            }
        }
        assert!((1_800..=2_200).contains(&dups), "{dups}");
        assert!((850..=1_150).contains(&reord), "{reord}");
        // The jitter spreads: not every delay is the same.
        let distinct: std::collections::BTreeSet<_> = all
            .iter()
            .filter_map(|f| match f {
                Fate::Deliver { delay, .. } => Some(*delay),
                Fate::Drop => None,
            })
            .collect();
        assert!(distinct.len() > 1_000);
    }

    #[test]
    fn the_same_seed_replays_the_same_fates_and_another_does_not() {
        let cfg = FaultConfig {
            loss: 0.3,
            duplicate: 0.1,
            reorder: 0.1,
            jitter: Duration::from_millis(2),
            seed: 1234,
            ..FaultConfig::default()
        };
        assert_eq!(fates(cfg, 2_000), fates(cfg, 2_000));
        assert_ne!(
            fates(cfg, 2_000),
            fates(FaultConfig { seed: 1235, ..cfg }, 2_000)
        );
    }

    #[test]
    fn the_n_th_decision_does_not_depend_on_earlier_outcomes() {
        // Same seed, different loss: the duplicate draws line up datagram by
        // datagram because every decision draws the same count of values.
        let a = fates(
            FaultConfig {
                duplicate: 0.5,
                seed: 5,
                ..FaultConfig::default()
            },
            500,
        );
        let b = fates(
            FaultConfig {
                duplicate: 0.5,
                loss: 0.5,
                seed: 5,
                ..FaultConfig::default()
            },
            500,
        );
        for (x, y) in a.iter().zip(&b) {
            if let (Fate::Deliver { duplicate: dx, .. }, Fate::Deliver { duplicate: dy, .. }) =
                (x, y)
            {
                assert_eq!(dx.is_some(), dy.is_some());
            }
        }
        assert!(b.contains(&Fate::Drop));
    }

    #[test]
    fn symmetric_plans_use_different_seeds_per_direction() {
        let plan = FaultPlan::symmetric(FaultConfig::lossy(0.1, 3));
        assert_eq!(plan.outgoing.loss, plan.incoming.loss);
        assert_ne!(plan.outgoing.seed, plan.incoming.seed);
    }

    #[test]
    fn the_partition_switch_is_shared_by_clones() {
        let p = Partition::new();
        let q = p.clone();
        assert!(!q.is_set());
        p.set(true);
        assert!(q.is_set());
        p.set(false);
        assert!(!q.is_set());
        let (x, y) = (
            "127.0.0.1:1000".parse().expect("addr"),
            "127.0.0.1:2000".parse().expect("addr"),
        );
        p.cut_from(x, true);
        assert!(q.blocks(x) && !q.blocks(y) && !q.is_set());
        p.set(true);
        assert!(q.blocks(y));
        p.set(false);
        p.cut_from(x, false);
        assert!(!q.blocks(x) && !q.blocks(y));
    }

    #[test]
    fn stats_count_per_direction() {
        let stats = FaultStats::default();
        stats.count(OUT, &Fate::Drop);
        stats.count(
            IN,
            &Fate::Deliver {
                delay: Duration::ZERO,
                reordered: true,
                duplicate: Some(Duration::ZERO),
            },
        );
        stats.partitioned(IN);
        assert_eq!(
            stats.outgoing(),
            DirectionStats {
                seen: 1,
                dropped: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            stats.incoming(),
            DirectionStats {
                seen: 1,
                duplicated: 1,
                reordered: 1,
                partitioned: 1,
                ..Default::default()
            }
        );
    }
}
